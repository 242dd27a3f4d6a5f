//! Events into the state DB: each is appended to `events` and applied to the tables it
//! changes (runs, steps, attempts, outputs), in the caller's transaction.

use rusqlite::{Transaction, params};

use super::{Backend, NewRun, StateDb, StateError, immediate, sql_err};
use crate::clock::now_ms;
use crate::event::{DoneOutcome, Event, RunState, StepState};

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

fn apply(tx: &Transaction<'_>, run: Option<i64>, event: &Event, now: i64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO events (run_id, at, step, kind, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![run, now, event.step(), event.kind(), serde_json::to_string(event).unwrap_or_default()],
    )?;
    let Some(run) = run else { return Ok(()) };
    match event {
        Event::RunStarted { .. } => {
            tx.execute(
                "UPDATE runs SET status = ?2, ended_at = NULL WHERE id = ?1",
                params![run, RunState::Running.as_str()],
            )?;
        }
        Event::StepStarted { step, attempt, .. } => {
            tx.execute(
                "INSERT OR REPLACE INTO attempts (run_id, step, attempt, started_at) VALUES (?1, ?2, ?3, ?4)",
                params![run, step, attempt, now],
            )?;
            tx.execute(
                "UPDATE steps SET state = ?5, attempts = ?3, started_at = COALESCE(started_at, ?4),
                 ended_at = NULL WHERE run_id = ?1 AND step = ?2",
                params![run, step, attempt, now, StepState::Running.as_str()],
            )?;
        }
        Event::StepIntent { step, attempt, action } => {
            tx.execute(
                "UPDATE attempts SET intent_at = ?4, action = ?5 WHERE run_id = ?1 AND step = ?2 AND attempt = ?3",
                params![run, step, attempt, now, action],
            )?;
        }
        Event::StepLog { step, attempt, line } => {
            tx.execute(
                "UPDATE attempts SET log = log || ?4 || char(10) WHERE run_id = ?1 AND step = ?2 AND attempt = ?3",
                params![run, step, attempt, line],
            )?;
        }
        Event::StepRetrying { step, attempt, error, .. } => {
            end_attempt(tx, run, step, *attempt, now, "retryable_error", Some(error))?;
        }
        Event::StepDone { step, attempt, outcome, outputs, .. } => {
            done(tx, run, step, *attempt, *outcome, outputs, now)?
        }
        Event::StepFailed { step, attempt, error, fix, .. } => {
            end_attempt(tx, run, step, *attempt, now, StepState::Failed.as_str(), Some(error))?;
            end_step(tx, run, step, now, StepState::Failed, Some(error), fix.as_deref())?;
        }
        Event::StepBlocked { step, by } => {
            tx.execute(
                "UPDATE steps SET state = ?4, last_error = ?3 WHERE run_id = ?1 AND step = ?2",
                params![run, step, format!("waits for {by}"), StepState::Blocked.as_str()],
            )?;
        }
        Event::StepSkipped { step, reason, operator, .. } => {
            end_step(tx, run, step, now, StepState::Skipped, Some(&format!("skipped by {operator}: {reason}")), None)?;
        }
        Event::StepReset { step, .. } => {
            tx.execute(
                "UPDATE steps SET state = ?3, ended_at = NULL, last_error = NULL, fix = NULL
                 WHERE run_id = ?1 AND step = ?2",
                params![run, step, StepState::Pending.as_str()],
            )?;
            tx.execute("DELETE FROM outputs WHERE run_id = ?1 AND step = ?2", params![run, step])?;
        }
        Event::RunFinished { status, .. } => finish_run(tx, run, *status, now)?,
        Event::InputsChanged { .. }
        | Event::StepProbed { .. }
        | Event::StepWaiting { .. }
        | Event::ApprovalRequested { .. }
        | Event::ApprovalAnswered { .. }
        | Event::LockTakenOver { .. }
        | Event::LockBroken { .. }
        | Event::StateLockReleased { .. }
        | Event::RollbackMarked { .. }
        | Event::RollbackAcknowledged { .. } => {}
    }
    Ok(())
}

fn done(
    tx: &Transaction<'_>,
    run: i64,
    step: &str,
    attempt: u32,
    outcome: DoneOutcome,
    outputs: &crate::event::Outputs,
    now: i64,
) -> rusqlite::Result<()> {
    let state = match outcome {
        DoneOutcome::Satisfied => StepState::Satisfied,
        DoneOutcome::Applied => StepState::Applied,
    };
    end_attempt(tx, run, step, attempt, now, state.as_str(), None)?;
    end_step(tx, run, step, now, state, None, None)?;
    tx.execute("DELETE FROM outputs WHERE run_id = ?1 AND step = ?2", params![run, step])?;
    for (name, value) in outputs {
        tx.execute(
            "INSERT INTO outputs (run_id, step, name, value) VALUES (?1, ?2, ?3, ?4)",
            params![run, step, name, value],
        )?;
    }
    Ok(())
}

fn finish_run(tx: &Transaction<'_>, run: i64, status: RunState, now: i64) -> rusqlite::Result<()> {
    tx.execute("UPDATE runs SET status = ?2, ended_at = ?3 WHERE id = ?1", params![run, status.as_str(), now])?;
    if status == RunState::Interrupted {
        // Attempts cut short before their intent did nothing: close them.
        tx.execute(
            "UPDATE attempts SET outcome = 'interrupted', ended_at = ?2, duration_ms = ?2 - started_at
             WHERE run_id = ?1 AND outcome IS NULL AND intent_at IS NULL",
            params![run, now],
        )?;
    }
    Ok(())
}

fn end_attempt(
    tx: &Transaction<'_>,
    run: i64,
    step: &str,
    attempt: u32,
    now: i64,
    outcome: &str,
    error: Option<&str>,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE attempts SET outcome = ?4, error = ?5, ended_at = ?6, duration_ms = ?6 - started_at
         WHERE run_id = ?1 AND step = ?2 AND attempt = ?3",
        params![run, step, attempt, outcome, error, now],
    )
    .map(drop)
}

/// Ends `step` in `state`; its duration is what its attempts worked (as `WORKED_MS` reads it).
fn end_step(
    tx: &Transaction<'_>,
    run: i64,
    step: &str,
    now: i64,
    state: StepState,
    error: Option<&str>,
    fix: Option<&str>,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE steps SET state = ?3, ended_at = ?4, last_error = ?5, fix = ?6,
         duration_ms = (SELECT sum(duration_ms) FROM attempts WHERE run_id = ?1 AND step = ?2)
         WHERE run_id = ?1 AND step = ?2",
        params![run, step, state.as_str(), now, error, fix],
    )
    .map(drop)
}
