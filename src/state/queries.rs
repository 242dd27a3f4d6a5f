//! What commands read: runs, their steps and attempts, outputs, and the progress the engine
//! resumes from.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::{AttemptRow, Backend, Progress, RunRow, StateDb, StateError, StepRow, WORKED_MS, state_column};
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
        let id: Option<i64> = match &self.backend {
            Backend::Sqlite(conn) => {
                conn.query_row("SELECT max(id) FROM runs", [], |r| r.get(0)).map_err(|e| self.sql_err(e))?
            }
            Backend::Postgres(pg) => pg.latest_run_id().map_err(|e| self.pg_err(e))?,
        };
        match id {
            Some(id) => self.run(id),
            None => Err(StateError::NoRun { path: self.path.clone(), what: String::new() }),
        }
    }

    pub(crate) fn run(&self, id: i64) -> Result<RunRow, StateError> {
        let conn = match &self.backend {
            Backend::Sqlite(conn) => conn,
            Backend::Postgres(pg) => {
                return pg
                    .run(id)
                    .map_err(|e| self.pg_err(e))?
                    .ok_or_else(|| StateError::NoRun { path: self.path.clone(), what: format!("with id {id}") })?
                    .map_err(|message| self.corrupt(message));
            }
        };
        conn.query_row(
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
        let conn = match &self.backend {
            Backend::Sqlite(conn) => conn,
            Backend::Postgres(pg) => {
                return pg.steps(run).map_err(|e| self.pg_err(e))?.map_err(|message| self.corrupt(message));
            }
        };
        let mut stmt = conn
            .prepare(&format!(
                "SELECT s.step, s.state, s.attempts, {WORKED_MS}, s.last_error, s.fix,
                        EXISTS (SELECT 1 FROM attempts a WHERE a.run_id = s.run_id AND a.step = s.step
                                AND a.attempt = s.attempts AND a.intent_at IS NOT NULL AND a.outcome IS NULL),
                        (SELECT e.payload FROM events e WHERE e.run_id = s.run_id AND e.step = s.step
                                AND e.kind = 'step_done' ORDER BY e.id DESC LIMIT 1)
                 FROM steps s WHERE s.run_id = ?1 ORDER BY rowid",
            ))
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
        let conn = match &self.backend {
            Backend::Sqlite(conn) => conn,
            Backend::Postgres(pg) => return pg.attempts(run, step).map_err(|e| self.pg_err(e)),
        };
        let mut stmt = conn
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
        let conn = match &self.backend {
            Backend::Sqlite(conn) => conn,
            Backend::Postgres(pg) => return pg.outputs(run).map_err(|e| self.pg_err(e)),
        };
        let mut stmt =
            conn.prepare("SELECT step, name, value FROM outputs WHERE run_id = ?1").map_err(|e| self.sql_err(e))?;
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
            if row.state == StepState::Skipped {
                progress.skipped.insert(row.step.clone());
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
        if let Backend::Postgres(pg) = &self.backend {
            let rows = pg.events_by_kind(Some(run), &[kind]).unwrap();
            return rows.into_iter().map(|r| r.payload.to_string()).collect();
        }
        let mut stmt =
            self.sqlite().prepare("SELECT payload FROM events WHERE run_id = ?1 AND kind = ?2 ORDER BY id").unwrap();
        stmt.query_map(params![run, kind], |r| r.get(0)).unwrap().collect::<rusqlite::Result<_>>().unwrap()
    }

    /// Makes every write of an intent fail, as a full disk would (for tests).
    #[cfg(test)]
    pub(crate) fn fail_intents_for_tests(&mut self) {
        match &mut self.backend {
            Backend::Sqlite(conn) => conn
                .execute_batch(
                    "CREATE TRIGGER fail_intents BEFORE UPDATE OF intent_at ON attempts
                     BEGIN SELECT RAISE(ABORT, 'database or disk is full (injected)'); END;",
                )
                .unwrap(),
            Backend::Postgres(pg) => pg
                .batch_for_tests(
                    "CREATE FUNCTION fail_intents() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN RAISE EXCEPTION 'could not extend file (injected)'; END $$;
                     CREATE TRIGGER fail_intents BEFORE UPDATE OF intent_at ON attempts
                     FOR EACH ROW EXECUTE FUNCTION fail_intents();",
                )
                .unwrap(),
        }
    }
}

impl StateDb {
    /// A row the store cannot read back (a state outside its enum).
    fn corrupt(&self, message: String) -> StateError {
        StateError::Postgres { path: self.path.clone(), message }
    }
}

/// The warnings of a `step_done` event's payload (none for an older run, or when it had none).
pub(super) fn done_warnings(payload: Option<&str>) -> Vec<String> {
    payload
        .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        .and_then(|v| v["warnings"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|w| w.as_str().map(String::from))
        .collect()
}

/// A run as `runbook history` lists it: the run, and its first failed step with that step's
/// last error, if any.
#[derive(Debug, Clone)]
pub(crate) struct HistoryRow {
    pub(crate) run: RunRow,
    pub(crate) failed_step: Option<(String, Option<String>)>,
}

/// The ids of `history`'s runs: ?1 runbook, ?2 environment (NULL: any), ?3 how many.
const HISTORY_SQL: &str = "SELECT id FROM runs WHERE (?1 IS NULL OR runbook = ?1) AND (?2 IS NULL OR env = ?2) \
                           ORDER BY id DESC LIMIT ?3";

/// One recorded event, as the audit reads it: the payload is the event's JSON.
#[derive(Debug, Clone)]
pub(crate) struct EventRow {
    pub(crate) run: Option<i64>,
    pub(crate) at: i64,
    pub(crate) kind: String,
    pub(crate) payload: serde_json::Value,
}

impl StateDb {
    /// Runs newest first, optionally of one runbook and one environment, at most `limit`.
    /// Run ids grow with `started_at` (a run is inserted when it starts), so newest first is
    /// the primary key backwards: SQLite walks it and stops after `limit` matches, with no
    /// index on `started_at` and no sort. Plain SQL, so that a PostgreSQL store can say the same.
    pub(crate) fn history(
        &self,
        runbook: Option<&str>,
        env: Option<&str>,
        limit: u32,
    ) -> Result<Vec<HistoryRow>, StateError> {
        let conn = match &self.backend {
            Backend::Sqlite(conn) => conn,
            // A query a run would be a round trip a run: two queries in all.
            Backend::Postgres(pg) => {
                let rows = pg.history(runbook, env, limit).map_err(|e| self.pg_err(e))?;
                return rows.map_err(|message| self.corrupt(message));
            }
        };
        let mut stmt = conn.prepare(HISTORY_SQL).map_err(|e| self.sql_err(e))?;
        let ids: Vec<i64> = stmt
            .query_map(params![runbook, env, limit], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql_err(e))?;
        ids.into_iter()
            .map(|id| {
                let run = self.run(id)?;
                let failed_step = if run.status.stopped_at_a_step() { self.first_failed_step(conn, id)? } else { None };
                Ok(HistoryRow { run, failed_step })
            })
            .collect()
    }

    /// The first failed step of `run` (by id) and its last error, in a SQLite state DB
    /// (PostgreSQL's `history` reads them for all its runs at once).
    fn first_failed_step(&self, conn: &Connection, run: i64) -> Result<Option<(String, Option<String>)>, StateError> {
        conn.query_row(
            "SELECT step, last_error FROM steps WHERE run_id = ?1 AND state = ?2 ORDER BY step LIMIT 1",
            params![run, StepState::Failed.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| self.sql_err(e))
    }

    /// The events of the given kinds, oldest first: of one run, or of every run (and those
    /// recorded with no run) when `run` is `None`. Payloads that are not JSON read as null.
    pub(crate) fn events_by_kind(&self, run: Option<i64>, kinds: &[&str]) -> Result<Vec<EventRow>, StateError> {
        if kinds.is_empty() {
            return Ok(Vec::new());
        }
        let conn = match &self.backend {
            Backend::Sqlite(conn) => conn,
            Backend::Postgres(pg) => return pg.events_by_kind(run, kinds).map_err(|e| self.pg_err(e)),
        };
        let mut stmt = conn.prepare(&events_by_kind_sql(run.is_some(), kinds.len())).map_err(|e| self.sql_err(e))?;
        let mut values: Vec<&dyn rusqlite::ToSql> = kinds.iter().map(|k| k as &dyn rusqlite::ToSql).collect();
        if let Some(run) = &run {
            values.push(run);
        }
        stmt.query_map(values.as_slice(), |r| {
            Ok(EventRow {
                run: r.get(0)?,
                at: r.get(1)?,
                kind: r.get(2)?,
                payload: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or(serde_json::Value::Null),
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| self.sql_err(e))
    }
}

#[cfg(test)]
impl StateDb {
    /// Appends an event as an older runbook wrote it (for tests of reading old payloads).
    pub(crate) fn append_raw_event_for_tests(&mut self, run: Option<i64>, at: i64, kind: &str, payload: &str) {
        let quoted = |text: &str| format!("'{}'", text.replace('\'', "''"));
        let run = run.map_or("NULL".to_string(), |r| r.to_string());
        let sql = format!(
            "INSERT INTO events (run_id, at, step, kind, payload) VALUES ({run}, {at}, NULL, {}, {})",
            quoted(kind),
            quoted(payload)
        );
        self.execute_for_tests(&sql).unwrap();
    }
}

/// The events of `kinds` kinds (?1…?n), of the run ?n+1 when `of_run`. Two statements rather
/// than `?n IS NULL OR run_id = ?n`, which no index can serve.
fn events_by_kind_sql(of_run: bool, kinds: usize) -> String {
    let marks: Vec<String> = (1..=kinds).map(|i| format!("?{i}")).collect();
    let run = if of_run { format!("run_id = ?{} AND ", kinds + 1) } else { String::new() };
    format!("SELECT run_id, at, kind, payload FROM events WHERE {run}kind IN ({}) ORDER BY id", marks.join(", "))
}

#[cfg(test)]
impl StateDb {
    /// SQLite's plans for `history`'s query and for the audit of one run, one detail a line.
    pub(crate) fn query_plans_for_tests(&self) -> (String, String) {
        let plan = |sql: &str, values: &[&dyn rusqlite::ToSql]| -> String {
            let mut stmt = self.sqlite().prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = stmt
                .query_map(values, |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<rusqlite::Result<Vec<_>>>()
                .unwrap();
            rows.join("\n")
        };
        (
            plan(HISTORY_SQL, params![Some("sprint-2"), None::<String>, 20]),
            plan(&events_by_kind_sql(true, 2), params!["step_skipped", "step_reset", 1]),
        )
    }
}
