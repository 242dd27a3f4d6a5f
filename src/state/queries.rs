//! What commands read: runs, their steps and attempts, outputs, and the progress the engine
//! resumes from.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params};

use super::{AttemptRow, Progress, RunRow, StateDb, StateError, StepRow, state_column};
use crate::event::{Outputs, RunState, StepState};

impl StateDb {
    /// The given run, or the latest one.
    pub(crate) fn run_or_latest(&self, id: Option<i64>) -> Result<RunRow, StateError> {
        match id {
            Some(id) => self.run(id),
            None => self.latest_run(),
        }
    }

    pub(crate) fn latest_run(&self) -> Result<RunRow, StateError> {
        let id: Option<i64> =
            self.conn.query_row("SELECT max(id) FROM runs", [], |r| r.get(0)).map_err(|e| self.sql_err(e))?;
        match id {
            Some(id) => self.run(id),
            None => Err(StateError::NoRun { path: self.path.clone(), what: String::new() }),
        }
    }

    pub(crate) fn run(&self, id: i64) -> Result<RunRow, StateError> {
        self.conn
            .query_row(
                "SELECT id, runbook, env, runbook_hash, inputs_hash, vars_json, operator, host,
                        started_at, ended_at, status FROM runs WHERE id = ?1",
                params![id],
                |r| {
                    Ok(RunRow {
                        id: r.get(0)?,
                        runbook: r.get(1)?,
                        env: r.get(2)?,
                        runbook_hash: r.get(3)?,
                        inputs_hash: r.get(4)?,
                        vars: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
                        operator: r.get(6)?,
                        host: r.get(7)?,
                        started_at: r.get(8)?,
                        ended_at: r.get(9)?,
                        status: state_column(RunState::parse, r, 10)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.sql_err(e))?
            .ok_or_else(|| StateError::NoRun { path: self.path.clone(), what: format!("with id {id}") })
    }

    pub(crate) fn steps(&self, run: i64) -> Result<Vec<StepRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT s.step, s.state, s.attempts, s.duration_ms, s.last_error, s.fix,
                        EXISTS (SELECT 1 FROM attempts a WHERE a.run_id = s.run_id AND a.step = s.step
                                AND a.attempt = s.attempts AND a.intent_at IS NOT NULL AND a.outcome IS NULL),
                        (SELECT e.payload FROM events e WHERE e.run_id = s.run_id AND e.step = s.step
                                AND e.kind = 'step_done' ORDER BY e.id DESC LIMIT 1)
                 FROM steps s WHERE s.run_id = ?1 ORDER BY rowid",
            )
            .map_err(|e| self.sql_err(e))?;
        stmt.query_map(params![run], |r| {
            Ok(StepRow {
                step: r.get(0)?,
                state: state_column(StepState::parse, r, 1)?,
                attempts: r.get(2)?,
                duration_ms: r.get(3)?,
                last_error: r.get(4)?,
                fix: r.get(5)?,
                in_doubt: r.get(6)?,
                warnings: done_warnings(r.get::<_, Option<String>>(7)?.as_deref()),
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| self.sql_err(e))
    }

    pub(crate) fn attempts(&self, run: i64, step: &str) -> Result<Vec<AttemptRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT attempt, started_at, intent_at, action, outcome, error, duration_ms, log
                 FROM attempts WHERE run_id = ?1 AND step = ?2 ORDER BY attempt",
            )
            .map_err(|e| self.sql_err(e))?;
        stmt.query_map(params![run, step], |r| {
            Ok(AttemptRow {
                attempt: r.get(0)?,
                started_at: r.get(1)?,
                intent_at: r.get(2)?,
                action: r.get(3)?,
                outcome: r.get(4)?,
                error: r.get(5)?,
                duration_ms: r.get(6)?,
                log: r.get(7)?,
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| self.sql_err(e))
    }

    /// Outputs of every step of `run` that finished, by step.
    pub(crate) fn outputs(&self, run: i64) -> Result<BTreeMap<String, Outputs>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT step, name, value FROM outputs WHERE run_id = ?1")
            .map_err(|e| self.sql_err(e))?;
        let mut out: BTreeMap<String, Outputs> = BTreeMap::new();
        let rows = stmt
            .query_map(params![run], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
            .map_err(|e| self.sql_err(e))?;
        for row in rows {
            let (step, name, value) = row.map_err(|e| self.sql_err(e))?;
            out.entry(step).or_default().insert(name, value);
        }
        Ok(out)
    }

    /// Where the engine starts when it continues `run`.
    pub(crate) fn progress(&self, run: i64) -> Result<Progress, StateError> {
        let mut progress = Progress { outputs: self.outputs(run)?, ..Progress::default() };
        for row in self.steps(run)? {
            if row.state.is_finished() {
                progress.finished.insert(row.step.clone());
            }
            if row.in_doubt {
                progress.in_doubt.insert(row.step.clone());
            }
            progress.attempts.insert(row.step, row.attempts as u32);
        }
        Ok(progress)
    }

    /// The payloads of `run`'s events of one kind, oldest first.
    #[cfg(test)]
    pub(crate) fn events_of_kind(&self, run: i64, kind: &str) -> Vec<String> {
        let mut stmt =
            self.conn.prepare("SELECT payload FROM events WHERE run_id = ?1 AND kind = ?2 ORDER BY id").unwrap();
        stmt.query_map(params![run, kind], |r| r.get(0)).unwrap().collect::<rusqlite::Result<_>>().unwrap()
    }

    /// Makes every write of an intent fail, as a full disk would (for tests).
    #[cfg(test)]
    pub(crate) fn fail_intents_for_tests(&self) {
        self.conn
            .execute_batch(
                "CREATE TRIGGER fail_intents BEFORE UPDATE OF intent_at ON attempts
                 BEGIN SELECT RAISE(ABORT, 'database or disk is full (injected)'); END;",
            )
            .unwrap();
    }
}

/// The warnings of a `step_done` event's payload (none for an older run, or when it had none).
fn done_warnings(payload: Option<&str>) -> Vec<String> {
    payload
        .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        .and_then(|v| v["warnings"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|w| w.as_str().map(String::from))
        .collect()
}
