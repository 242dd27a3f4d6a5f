//! Events into the state DB: each is appended to `events` and applied to the tables it
//! changes (runs, steps, attempts, outputs), in the caller's transaction.

use rusqlite::{Transaction, params};

use super::{Backend, NewRun, StateDb, StateError, immediate, sql_err};
use crate::clock::now_ms;
use crate::event::{Event, RunState, StepState};

impl StateDb {
    pub(crate) fn create_run(&mut self, run: &NewRun<'_>) -> Result<i64, StateError> {
        let path = &self.path;
        let conn = match &mut self.backend {
            Backend::Sqlite(conn) => conn,
            Backend::Postgres(pg) => return pg.create_run(path, run, now_ms()),
        };
        let tx = immediate(conn, path)?;
        let id = insert_run(&tx, run).map_err(|e| sql_err(path, e))?;
        tx.commit().map_err(|e| sql_err(path, e))?;
        Ok(id)
    }

    /// Appends `event` and updates the tables it changes, in one transaction.
    pub(crate) fn record(&mut self, run: Option<i64>, event: &Event) -> Result<(), StateError> {
        self.record_all(&[(run, event)])
    }

    /// Appends several events in one transaction (one fsync): a group commit.
    pub(crate) fn record_all(&mut self, events: &[(Option<i64>, &Event)]) -> Result<(), StateError> {
        let path = self.path.clone();
        let holder = self.holder.clone();
        let now = now_ms();
        let conn = match &mut self.backend {
            Backend::Sqlite(conn) => conn,
            Backend::Postgres(pg) => {
                pg.record_all(&path, events, holder.as_ref(), now)?;
                #[cfg(test)]
                COMMITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            }
        };
        let tx = immediate(conn, &path)?;
        // An intent comes before a side effect: only while the lease is still ours, checked in
        // the transaction that records it.
        if let Some(me) = holder.filter(|_| events.iter().any(|(_, e)| matches!(e, Event::StepIntent { .. }))) {
            super::lease::still_held(&tx, &me).map_err(|e| match e {
                Ok(now) => StateError::LeaseLost { path: path.clone(), now },
                Err(e) => sql_err(&path, e),
            })?;
        }
        for (run, event) in events {
            if !event.is_ephemeral() {
                apply(&tx, *run, event, now).map_err(|e| sql_err(&path, e))?;
            }
        }
        tx.commit().map_err(|e| sql_err(&path, e))?;
        #[cfg(test)]
        COMMITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// Event transactions committed by this process (each one WAL fsync under synchronous=FULL).
#[cfg(test)]
static COMMITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cfg(test)]
pub(crate) fn commits() -> u64 {
    COMMITS.load(std::sync::atomic::Ordering::Relaxed)
}

fn insert_run(tx: &Transaction<'_>, run: &NewRun<'_>) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT INTO runs (runbook, env, runbook_hash, inputs_hash, vars_json, operator, host, started_at, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            run.runbook,
            run.env,
            run.runbook_hash,
            run.inputs_hash,
            serde_json::to_string(run.vars).unwrap_or_default(),
            run.operator,
            run.host,
            now_ms(),
            RunState::Running.as_str()
        ],
    )?;
    let id = tx.last_insert_rowid();
    for step in run.steps {
        tx.execute(
            "INSERT INTO steps (run_id, step, state) VALUES (?1, ?2, ?3)",
            params![id, step, StepState::Pending.as_str()],
        )?;
    }
    Ok(id)
}

/// Appends `event` and applies it to the tables it changes (`apply.rs`, shared with PostgreSQL).
fn apply(tx: &Transaction<'_>, run: Option<i64>, event: &Event, now: i64) -> rusqlite::Result<()> {
    for write in super::apply::writes(run, event, now) {
        let texts = super::sql::texts(&write.params);
        let mut stmt = tx.prepare_cached(&super::sql::sqlite_dialect(write.sql))?;
        stmt.execute(super::sql::sqlite_values(&write.params, &texts).as_slice())?;
    }
    Ok(())
}
