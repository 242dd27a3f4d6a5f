//! The run lock on either store: taking it, tying it to a run, beating, releasing, breaking,
//! and reading it, by the rules of `lease.rs`. Written once with the statements of `sql.rs`;
//! taking it needs a store's own transaction (`sqlite/`, `pg/`).

use super::lease::{Holder, Lease, LeaseView, alive, describe, may_take};
use super::sql::{Param, RowExt};
use super::{Backend, StateDb, StateError};
use crate::clock::now_ms;

impl StateDb {
    /// Takes the run lock for `me`. A lease held by a live process is refused; a dead holder's
    /// is taken over and returned.
    pub(crate) fn acquire_lock(&mut self, me: &Holder) -> Result<Option<Holder>, StateError> {
        let path = self.path.clone();
        let decide = |current, now| may_take(&path, me, current, now);
        match &mut self.backend {
            Backend::Sqlite(conn) => super::sqlite::acquire_lock(conn, &path, me, decide),
            Backend::Postgres(pg) => pg.acquire_lock(&path, me, decide),
        }
    }

    /// The state's clock, which leases and durable waits are stamped and judged by: this
    /// machine's for a SQLite file, the server's for PostgreSQL, so that operators' machines
    /// whose clocks disagree still agree on whether a lease is stale or a deadline has passed.
    pub(crate) fn clock_ms(&self) -> Result<i64, StateError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(now_ms()),
            Backend::Postgres(pg) => pg.server_now_ms().map_err(|e| self.pg_err(e)),
        }
    }

    /// The lease row, from either store.
    fn current_lease(&self) -> Result<Option<Lease>, StateError> {
        let sql = "SELECT run_id, host, pid, pid_started, acquired_at, heartbeat_at FROM run_lock WHERE id = 1";
        let rows = self.select(sql, &[], |r| {
            Ok(Lease {
                run: r.int(0)?,
                holder: Holder { host: r.text_of(1)?, pid: r.int_of(2)?, pid_started: r.int(3)? },
                since: r.int_of(4)?,
                heartbeat: r.int_of(5)?,
            })
        })?;
        Ok(rows.into_iter().next())
    }

    /// The current lease, if any, and whether its holder is alive as seen from `our_host`.
    pub(crate) fn lease(&self, our_host: &str) -> Result<Option<LeaseView>, StateError> {
        let now = self.clock_ms()?;
        Ok(self.current_lease()?.map(|l| LeaseView {
            alive: alive(our_host, &l.holder, l.heartbeat, now),
            run: l.run,
            heartbeat_age_s: (now - l.heartbeat) / 1000,
            holder: l.holder,
        }))
    }

    /// Whether a live process holds the lock for `run` (a run marked running may have died).
    pub(crate) fn run_is_live(&self, run: i64, our_host: &str) -> Result<bool, StateError> {
        let now = self.clock_ms()?;
        Ok(self.current_lease()?.is_some_and(|l| l.run == Some(run) && alive(our_host, &l.holder, l.heartbeat, now)))
    }

    /// Ties the lease to `run`; from now on every intent is recorded only while it is ours.
    pub(crate) fn lock_run(&mut self, me: &Holder, run: i64) -> Result<(), StateError> {
        let sql = "UPDATE run_lock SET run_id = $2 WHERE pid = $1 AND host = $3";
        let updated =
            self.execute(sql, &[Param::Int(Some(me.pid)), Param::Int(Some(run)), Param::text(Some(&me.host))])?;
        self.lease_kept(updated)?;
        self.holder = Some(me.clone());
        Ok(())
    }

    /// Beats, by the lease's clock; `Err(LeaseLost)` when someone broke or took the lease.
    pub(crate) fn heartbeat(&mut self, me: &Holder) -> Result<(), StateError> {
        let now = self.clock_ms()?;
        let sql = "UPDATE run_lock SET heartbeat_at = $2 WHERE pid = $1 AND host = $3";
        let updated =
            self.execute(sql, &[Param::Int(Some(me.pid)), Param::Int(Some(now)), Param::text(Some(&me.host))])?;
        self.lease_kept(updated)
    }

    /// An update of our lease row that matched nothing: the lease is someone else's now.
    fn lease_kept(&self, updated: u64) -> Result<(), StateError> {
        if updated > 0 {
            return Ok(());
        }
        let now = describe(self.current_lease()?);
        Err(StateError::LeaseLost { path: self.path.clone(), now })
    }

    pub(crate) fn release_lock(&mut self, me: &Holder) -> Result<(), StateError> {
        let sql = "DELETE FROM run_lock WHERE pid = $1 AND host = $2";
        self.execute(sql, &[Param::Int(Some(me.pid)), Param::text(Some(&me.host))]).map(drop)
    }

    /// Removes the lease of `seen` (as `lease` showed it); `false` when the lock changed hands
    /// in between, so that a lease nobody looked at is never broken.
    pub(crate) fn break_lock(&mut self, seen: &Holder) -> Result<bool, StateError> {
        let sql = "DELETE FROM run_lock WHERE host = $1 AND pid = $2";
        Ok(self.execute(sql, &[Param::text(Some(&seen.host)), Param::Int(Some(seen.pid))])? > 0)
    }
}
