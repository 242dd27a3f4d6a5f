//! The run lock: one row, a lease held by a process (host, pid and the pid's start time) that
//! beats while it runs. A live holder is never displaced by `acquire`; a dead one (same host:
//! no process with that pid and start time; other host: no heartbeat for the stale period) is
//! taken over, and the takeover is returned so that it is recorded.

use std::path::Path;

use super::sql::{Param, RowExt};
use super::{Backend, StateDb, StateError};
use crate::clock::{format_utc, now_ms};

/// A lease whose holder has not beaten for this long, on another host, may be taken over.
pub(crate) const LEASE_STALE_MS: i64 = 30_000;

/// Who holds (or held) the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) host: String,
    pub(crate) pid: i64,
    /// Start time of the pid (clock ticks since boot), when known.
    pub(crate) pid_started: Option<i64>,
}

impl Holder {
    /// This process on this host.
    pub(crate) fn me(host: &str) -> Self {
        let pid = i64::from(std::process::id());
        Holder { host: host.to_string(), pid, pid_started: process_start(pid) }
    }
}

/// The lease as `unlock` and `status` see it.
pub(crate) struct LeaseView {
    pub(crate) holder: Holder,
    pub(crate) run: Option<i64>,
    pub(crate) alive: bool,
    pub(crate) heartbeat_age_s: i64,
}

/// The lease row, as either store reads it.
pub(super) struct Lease {
    pub(super) run: Option<i64>,
    pub(super) holder: Holder,
    pub(super) since: i64,
    pub(super) heartbeat: i64,
}

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

    /// The clock leases are stamped and judged by: this machine's for a SQLite file, the
    /// server's for PostgreSQL, so that operators' machines whose clocks disagree by more than
    /// the stale period still agree on whether a lease is stale.
    fn lease_clock(&self) -> Result<i64, StateError> {
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
        let now = self.lease_clock()?;
        Ok(self.current_lease()?.map(|l| LeaseView {
            alive: alive(our_host, &l.holder, l.heartbeat, now),
            run: l.run,
            heartbeat_age_s: (now - l.heartbeat) / 1000,
            holder: l.holder,
        }))
    }

    /// Whether a live process holds the lock for `run` (a run marked running may have died).
    pub(crate) fn run_is_live(&self, run: i64, our_host: &str) -> Result<bool, StateError> {
        let now = self.lease_clock()?;
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
        let now = self.lease_clock()?;
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

/// Whether `me` may take the lease from `current` (nobody, itself, or a dead holder, which is
/// returned so that the takeover is recorded); a live holder's lease is refused.
fn may_take(path: &Path, me: &Holder, current: Option<Lease>, now: i64) -> Result<Option<Holder>, StateError> {
    let Some(lease) = current else { return Ok(None) };
    let same = lease.holder.pid == me.pid && lease.holder.host == me.host;
    if same {
        return Ok(None);
    }
    if alive(&me.host, &lease.holder, lease.heartbeat, now) {
        return Err(StateError::Locked {
            path: path.to_path_buf(),
            run: lease.run.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            host: lease.holder.host,
            pid: lease.holder.pid,
            since: format_utc(lease.since),
            heartbeat_age_s: (now - lease.heartbeat) / 1000,
        });
    }
    Ok(Some(lease.holder))
}

pub(super) fn describe(lease: Option<Lease>) -> String {
    match lease {
        None => "the lock was broken: nobody holds it".to_string(),
        Some(l) => format!(
            "held by pid {} on {}{} since {}",
            l.holder.pid,
            l.holder.host,
            l.run.map(|r| format!(" for run {r}")).unwrap_or_default(),
            format_utc(l.since)
        ),
    }
}

/// Same host: a process with that pid exists and, when the lease knows it, started when the
/// holder did (a reused pid is another process); a lease of the old format, which does not
/// know it, must also have beaten within the stale period (pid 1 with a heartbeat from 1970
/// is not a live run). Other host: it beat within the stale period.
fn alive(our_host: &str, holder: &Holder, heartbeat_at: i64, now: i64) -> bool {
    let beating = now - heartbeat_at < LEASE_STALE_MS;
    if holder.host != our_host {
        return beating;
    }
    match (holder.pid_started, process_start(holder.pid)) {
        (_, None) => false,
        (Some(then), Some(now_started)) => then == now_started,
        (None, Some(_)) => beating,
    }
}

/// Whether a process with this pid runs on this machine.
pub(crate) fn process_alive(pid: i64) -> bool {
    process_start(pid).is_some()
}

/// The start time of `pid` in clock ticks since boot (`/proc/<pid>/stat`, field 22), or
/// `None` when there is no such process.
pub(super) fn process_start(pid: i64) -> Option<i64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}
