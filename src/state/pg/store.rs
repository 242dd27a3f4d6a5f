//! The PostgreSQL store's reads and writes: the same rows as SQLite's `record`, `queries` and
//! `lease`, in PostgreSQL's dialect. Decisions (who may take the lease, what a lease row means)
//! stay in `lease.rs`, shared by both stores.

use std::collections::HashMap;
use std::path::Path;

use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Statement, Transaction};

use super::{PgConn, wait};
use crate::event::{Event, RunState, StepState};
use crate::state::lease::{Holder, Lease};
use crate::state::{NewRun, StateError};

type PgResult<T> = Result<T, tokio_postgres::Error>;

/// The server's time in ms since the epoch (the lease's clock).
const SERVER_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

pub(in crate::state) fn pg_err(path: &Path, e: tokio_postgres::Error) -> StateError {
    StateError::Postgres { path: path.to_path_buf(), message: crate::error_chain::error_chain(&e) }
}

impl PgConn {
    pub(in crate::state) fn create_run(&mut self, path: &Path, run: &NewRun<'_>, now: i64) -> Result<i64, StateError> {
        self.reconnect_if_closed();
        let e = |e| pg_err(path, e);
        let tx = wait(self.client.transaction()).map_err(e)?;
        let id: i64 = wait(tx.query_one(
            "INSERT INTO runs (runbook, env, runbook_hash, inputs_hash, vars_json, operator, host, started_at, status)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            &[
                &run.runbook,
                &run.env,
                &run.runbook_hash,
                &run.inputs_hash,
                &serde_json::to_string(run.vars).unwrap_or_default(),
                &run.operator,
                &run.host,
                &now,
                &RunState::Running.as_str(),
            ],
        ))
        .map_err(e)?
        .get(0);
        for step in run.steps {
            wait(tx.execute(
                "INSERT INTO steps (run_id, step, state) VALUES ($1, $2, $3)",
                &[&id, step, &StepState::Pending.as_str()],
            ))
            .map_err(e)?;
        }
        wait(tx.commit()).map_err(e)?;
        Ok(id)
    }

    /// Appends `events` in one transaction. With `holder`, and an intent among them, the lease
    /// is checked in the same transaction, its row share-locked until the commit: a takeover
    /// waits for the intent, or the intent sees the takeover.
    ///
    /// A transaction the server dropped the connection under (a restart, a failover) is written
    /// once more on a new connection, exactly once: one that failed before its COMMIT was sent
    /// committed nothing; one whose COMMIT got no answer is looked up by its transaction id
    /// (`txid_status`) and written again only if it did not commit. When that cannot be told,
    /// [`StateError::CommitUnknown`]: it may or may not be there, and is not written twice.
    pub(in crate::state) fn record_all(
        &mut self,
        path: &Path,
        events: &[(Option<i64>, &Event)],
        holder: Option<&Holder>,
        now: i64,
    ) -> Result<(), StateError> {
        self.reconnect_if_closed();
        let (error, xid) = match self.record_once(path, events, holder, now) {
            Ok(()) => return Ok(()),
            Err(Failure::Refused(refused)) => return Err(refused),
            Err(Failure::Sql(error)) => return Err(pg_err(path, error)),
            Err(Failure::Lost { error, xid }) => (error, xid),
        };
        self.reconnect().map_err(|message| StateError::ConnectionLost {
            path: path.to_path_buf(),
            message: format!("{}; connecting again: {message}", crate::error_chain::error_chain(&error)),
        })?;
        if let Some(xid) = xid {
            match self.commit_status(xid) {
                Ok(Some(true)) => return Ok(()),
                Ok(Some(false)) => {}
                Ok(None) | Err(_) => {
                    return Err(StateError::CommitUnknown {
                        path: path.to_path_buf(),
                        message: crate::error_chain::error_chain(&error),
                    });
                }
            }
        }
        self.record_once(path, events, holder, now).map_err(|failure| match failure {
            Failure::Refused(refused) => refused,
            Failure::Sql(error) => pg_err(path, error),
            Failure::Lost { error, .. } => StateError::ConnectionLost {
                path: path.to_path_buf(),
                message: format!("lost again after connecting again: {}", crate::error_chain::error_chain(&error)),
            },
        })
    }

    /// One try of `record_all`: the transaction, its statements pipelined, then its COMMIT.
    fn record_once(
        &mut self,
        path: &Path,
        events: &[(Option<i64>, &Event)],
        holder: Option<&Holder>,
        now: i64,
    ) -> Result<(), Failure> {
        let before_commit = |error| Failure::of(error, None);
        let tx = wait(self.client.transaction()).map_err(before_commit)?;
        if let Some(me) = holder.filter(|_| events.iter().any(|(_, e)| matches!(e, Event::StepIntent { .. }))) {
            let lease = read_lease(&tx, " FOR SHARE").map_err(before_commit)?;
            if !lease.as_ref().is_some_and(|l| l.holder.pid == me.pid && l.holder.host == me.host) {
                return Err(Failure::Refused(StateError::LeaseLost {
                    path: path.to_path_buf(),
                    now: crate::state::lease::describe(lease),
                }));
            }
        }
        let mut writer = Writer { tx: &tx, statements: &mut self.statements, pending: Vec::new() };
        for (run, event) in events {
            if !event.is_ephemeral() {
                apply(&mut writer, *run, event, now).map_err(before_commit)?;
            }
        }
        let xid = writer.flush_with_xid().map_err(before_commit)?;
        wait(tx.commit()).map_err(|error| Failure::of(error, Some(xid)))
    }

    /// Whether the transaction `xid` of a dropped connection committed (`None`: cannot tell,
    /// or still in progress after a few seconds, as a dying session may be).
    pub(in crate::state) fn commit_status(&self, xid: i64) -> PgResult<Option<bool>> {
        for _ in 0..50 {
            let row = wait(self.client.query_one("SELECT txid_status($1)", &[&xid]))?;
            match row.get::<_, Option<&str>>(0) {
                Some("committed") => return Ok(Some(true)),
                Some("aborted") => return Ok(Some(false)),
                Some("in progress") => std::thread::sleep(std::time::Duration::from_millis(100)),
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// The lease, as any reader sees it.
    /// The server's clock, in ms since the epoch: leases are stamped and judged by it.
    pub(in crate::state) fn server_now_ms(&self) -> PgResult<i64> {
        Ok(wait(self.client.query_one(&format!("SELECT {SERVER_NOW}"), &[]))?.get(0))
    }

    /// Takes the lease for `me` if `decide` (given the current lease, row-locked, and the
    /// server's time) allows it; a lease that comes or goes while we look is looked at again.
    pub(in crate::state) fn acquire_lock(
        &mut self,
        path: &Path,
        me: &Holder,
        decide: impl Fn(Option<Lease>, i64) -> Result<Option<Holder>, StateError>,
    ) -> Result<Option<Holder>, StateError> {
        self.reconnect_if_closed();
        let e = |e| pg_err(path, e);
        loop {
            let tx = wait(self.client.transaction()).map_err(e)?;
            let now: i64 = wait(tx.query_one(&format!("SELECT {SERVER_NOW}"), &[])).map_err(e)?.get(0);
            // Nobody holds it: the insert takes it. Another process inserting at the same moment
            // makes this one wait for its commit, then do nothing.
            let inserted = wait(tx.execute(
                "INSERT INTO run_lock (id, run_id, host, pid, pid_started, acquired_at, heartbeat_at)
                 VALUES (1, NULL, $1, $2, $3, $4, $4) ON CONFLICT (id) DO NOTHING",
                &[&me.host, &me.pid, &me.pid_started, &now],
            ))
            .map_err(e)?;
            if inserted == 1 {
                wait(tx.commit()).map_err(e)?;
                return decide(None, now);
            }
            let Some(current) = read_lease(&tx, " FOR UPDATE").map_err(e)? else {
                // Released between the insert and the look: try again.
                continue;
            };
            let taken_over = decide(Some(current), now)?;
            wait(tx.execute(
                "UPDATE run_lock SET run_id = NULL, host = $1, pid = $2, pid_started = $3, acquired_at = $4,
                 heartbeat_at = $4 WHERE id = 1",
                &[&me.host, &me.pid, &me.pid_started, &now],
            ))
            .map_err(e)?;
            wait(tx.commit()).map_err(e)?;
            return Ok(taken_over);
        }
    }

    /// The client, for a transaction of the caller's (`state copy`).
    pub(in crate::state) fn client(&mut self) -> &mut tokio_postgres::Client {
        &mut self.client
    }

    /// Runs `sql` as is (tests change rows behind the store's back).
    #[cfg(test)]
    pub(in crate::state) fn execute_for_tests(&mut self, sql: &str) -> PgResult<u64> {
        wait(self.client.execute(sql, &[]))
    }

    /// The first column of the first row of `sql`, as text (tests read settings).
    #[cfg(test)]
    pub(in crate::state) fn text_for_tests(&mut self, sql: &str) -> PgResult<String> {
        Ok(wait(self.client.query_one(sql, &[]))?.get(0))
    }

    /// Runs several statements (tests set up schemas).
    #[cfg(test)]
    pub(in crate::state) fn batch_for_tests(&mut self, sql: &str) -> PgResult<()> {
        wait(self.client.batch_execute(sql))
    }
}

fn read_lease<C: GenericClient + Sync>(client: &C, lock: &str) -> PgResult<Option<Lease>> {
    let row = wait(client.query_opt(
        &format!("SELECT run_id, host, pid, pid_started, acquired_at, heartbeat_at FROM run_lock WHERE id = 1{lock}"),
        &[],
    ))?;
    Ok(row.map(|r| Lease {
        run: r.get(0),
        holder: Holder { host: r.get(1), pid: r.get(2), pid_started: r.get(3) },
        since: r.get(4),
        heartbeat: r.get(5),
    }))
}

/// Why a try of an event transaction failed.
enum Failure {
    /// Not written, and writing again would not help: the lease is lost.
    Refused(StateError),
    /// Not written: the server refused a statement.
    Sql(tokio_postgres::Error),
    /// The connection was lost; `xid` when it was lost on the COMMIT of that transaction.
    Lost { error: tokio_postgres::Error, xid: Option<i64> },
}

impl Failure {
    fn of(error: tokio_postgres::Error, xid: Option<i64>) -> Self {
        if connection_lost(&error) { Failure::Lost { error, xid } } else { Failure::Sql(error) }
    }
}

/// The server closed the connection, or is closing it (a shutdown, a terminated session), or
/// it cannot be reached: a new connection may do what this one could not.
fn connection_lost(error: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    error.is_closed()
        || error.code().is_some_and(|code| {
            [SqlState::ADMIN_SHUTDOWN, SqlState::CRASH_SHUTDOWN, SqlState::CANNOT_CONNECT_NOW].contains(code)
                || code.code().starts_with("08")
        })
}

/// The statements of one event transaction, pipelined: each is prepared once per connection,
/// its parameters encoded as it is written, and all of them are sent together by `flush_with_xid`, in
/// order, so that a transaction of many events costs one round trip instead of one each.
struct Writer<'a, 't> {
    tx: &'a Transaction<'t>,
    statements: &'a mut HashMap<&'static str, Statement>,
    pending: Vec<(Statement, Vec<Encoded>)>,
}

impl Writer<'_, '_> {
    fn exec(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> PgResult<()> {
        let statement = self.prepared(sql)?;
        let encoded = params.iter().zip(statement.params()).map(|(p, ty)| Encoded::of(*p, ty)).collect();
        self.pending.push((statement, encoded));
        Ok(())
    }

    /// `sql`, prepared once per connection.
    fn prepared(&mut self, sql: &'static str) -> PgResult<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = wait(self.tx.prepare(sql))?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    /// Sends every statement written so far, after one that reads the transaction's id, and
    /// waits for all their answers; the id, or the first error (the server skips the rest of a
    /// failed transaction), is returned.
    fn flush_with_xid(&mut self) -> PgResult<i64> {
        let xid = self.prepared("SELECT txid_current()")?;
        let pending = std::mem::take(&mut self.pending);
        let tx = self.tx;
        let sent = pending.iter().map(|(statement, params)| tx.execute_raw(statement, params.iter()));
        let (row, _) =
            wait(futures_util::future::try_join(tx.query_one(&xid, &[]), futures_util::future::try_join_all(sent)))?;
        Ok(row.get(0))
    }
}

/// A parameter encoded in the statement's wire format when it was written (NULL as `None`), or
/// why it could not be, said when the statement is sent.
#[derive(Debug)]
struct Encoded(Result<Option<Vec<u8>>, String>);

impl Encoded {
    fn of(param: &(dyn ToSql + Sync), ty: &tokio_postgres::types::Type) -> Self {
        let mut buf = bytes::BytesMut::new();
        Encoded(match param.to_sql_checked(ty, &mut buf) {
            Ok(tokio_postgres::types::IsNull::Yes) => Ok(None),
            Ok(tokio_postgres::types::IsNull::No) => Ok(Some(buf.to_vec())),
            Err(e) => Err(e.to_string()),
        })
    }
}

impl ToSql for Encoded {
    fn to_sql(
        &self,
        _: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            Ok(None) => Ok(tokio_postgres::types::IsNull::Yes),
            Ok(Some(bytes)) => {
                out.extend_from_slice(bytes);
                Ok(tokio_postgres::types::IsNull::No)
            }
            Err(e) => Err(e.clone().into()),
        }
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Appends `event` and applies it to the tables it changes (`apply.rs`, shared with SQLite).
fn apply(w: &mut Writer<'_, '_>, run: Option<i64>, event: &Event, now: i64) -> PgResult<()> {
    for write in crate::state::apply::writes(run, event, now) {
        let texts = crate::state::sql::texts(&write.params);
        w.exec(write.sql, &crate::state::sql::pg_values(&write.params, &texts))?;
    }
    Ok(())
}
