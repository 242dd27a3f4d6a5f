//! What commands read: runs, their steps and attempts, outputs, and the progress the engine
//! resumes from.

use std::collections::BTreeMap;

use super::read::{RUN_COLUMNS, run_row};
use super::sql::{Param, RowExt};
use super::{AttemptRow, Backend, Progress, RunRow, StateDb, StateError, StepRow, WORKED_MS};
use crate::event::{Outputs, StepState};

impl StateDb {
    /// The given run, or the latest one.
    pub(crate) fn run_or_latest(&self, id: Option<i64>) -> Result<RunRow, StateError> {
        match id {
            Some(id) => self.run(id),
            None => self.latest_run(),
        }
    }

    pub(crate) fn latest_run(&self) -> Result<RunRow, StateError> {
        let ids = self.select("SELECT max(id) FROM runs", &[], |r| r.int(0))?;
        match ids.into_iter().flatten().next() {
            Some(id) => self.run(id),
            None => Err(StateError::NoRun { path: self.path.clone(), what: String::new() }),
        }
    }

    pub(crate) fn run(&self, id: i64) -> Result<RunRow, StateError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.id = $1");
        self.select(&sql, &[Param::Int(Some(id))], |r| run_row(r, 0))?
            .pop()
            .ok_or_else(|| StateError::NoRun { path: self.path.clone(), what: format!("with id {id}") })
    }

    pub(crate) fn steps(&self, run: i64) -> Result<Vec<StepRow>, StateError> {
        // In the order the run listed them: the order their rows were written in.
        let written = match &self.backend {
            Backend::Sqlite(_) => "s.rowid",
            Backend::Postgres(_) => "s.ord",
        };
        let sql = format!(
            "SELECT s.step, s.state, s.attempts, {WORKED_MS}, s.last_error, s.fix,
                    CAST(CASE WHEN EXISTS (SELECT 1 FROM attempts a WHERE a.run_id = s.run_id AND a.step = s.step
                         AND a.attempt = s.attempts AND a.intent_at IS NOT NULL AND a.outcome IS NULL)
                         THEN 1 ELSE 0 END AS BIGINT),
                    (SELECT e.payload FROM events e WHERE e.run_id = s.run_id AND e.step = s.step
                            AND e.kind = 'step_done' ORDER BY e.id DESC LIMIT 1)
             FROM steps s WHERE s.run_id = $1 ORDER BY {written}"
        );
        self.select(&sql, &[Param::Int(Some(run))], |r| {
            let state = r.text_of(1)?;
            Ok(StepRow {
                step: r.text_of(0)?,
                state: StepState::parse(&state).ok_or_else(|| format!("step state {state:?}"))?,
                attempts: r.int_of(2)?,
                duration_ms: r.int(3)?,
                last_error: r.text(4)?,
                fix: r.text(5)?,
                in_doubt: r.int_of(6)? != 0,
                warnings: done_warnings(r.text(7)?.as_deref()),
            })
        })
    }

    pub(crate) fn attempts(&self, run: i64, step: &str) -> Result<Vec<AttemptRow>, StateError> {
        let sql = "SELECT attempt, started_at, intent_at, action, outcome, error, duration_ms, log
                   FROM attempts WHERE run_id = $1 AND step = $2 ORDER BY attempt";
        self.select(sql, &[Param::Int(Some(run)), Param::text(Some(step))], |r| {
            Ok(AttemptRow {
                attempt: r.int_of(0)?,
                started_at: r.int_of(1)?,
                intent_at: r.int(2)?,
                action: r.text(3)?,
                outcome: r.text(4)?,
                error: r.text(5)?,
                duration_ms: r.int(6)?,
                log: r.text_of(7)?,
            })
        })
    }

    /// Outputs of every step of `run` that finished, by step.
    pub(crate) fn outputs(&self, run: i64) -> Result<BTreeMap<String, Outputs>, StateError> {
        let sql = "SELECT step, name, value FROM outputs WHERE run_id = $1";
        let rows = self.select(sql, &[Param::Int(Some(run))], |r| Ok((r.text_of(0)?, r.text_of(1)?, r.text_of(2)?)))?;
        let mut out: BTreeMap<String, Outputs> = BTreeMap::new();
        for (step, name, value) in rows {
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
        let sql = "SELECT payload FROM events WHERE run_id = $1 AND kind = $2 ORDER BY id";
        self.select(sql, &[Param::Int(Some(run)), Param::text(Some(kind))], |r| r.text_of(0)).unwrap()
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
    pub(super) fn corrupt(&self, message: String) -> StateError {
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
            plan(
                &super::sql::sqlite_dialect(&super::read::runs_sql_for_tests()),
                rusqlite::params![Some("sprint-2"), None::<String>, None::<String>, None::<String>, None::<i64>, 20],
            ),
            plan(
                &super::sql::sqlite_dialect(&super::read::events_by_kind_sql(true, 2)),
                rusqlite::params!["step_skipped", "step_reset", 1],
            ),
        )
    }
}
