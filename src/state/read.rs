//! The store's read API, written once for both backends (`sql.rs`): what `history`, `audit`,
//! a web page or a second process reads. Each read is one statement, whatever the number of
//! runs: a run's failed step is a correlated subquery on the steps' primary key, pages are
//! keyed by run id (newest first is the primary key backwards), and a live tail asks for the
//! events after the last id it saw. An optional filter is `CAST($N AS type) IS NULL OR …`:
//! PostgreSQL types a parameter by its first use, and a bare `$N IS NULL` says nothing.

use super::sql::{Param, Row, RowExt};
use super::{RunRow, StateDb, StateError};
use crate::event::{Event, RunState, StepState};

/// Which runs: every field given must match. `status` is the recorded one (a run whose
/// process died is recorded as `running`; `status` tells them apart).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RunFilter<'a> {
    pub(crate) runbook: Option<&'a str>,
    pub(crate) env: Option<&'a str>,
    pub(crate) status: Option<RunState>,
    pub(crate) operator: Option<&'a str>,
}

/// A page of runs, newest first: at most `limit`, with ids below `before` (the last id of the
/// page before; none for the first page).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Page {
    pub(crate) before: Option<i64>,
    pub(crate) limit: u32,
}

/// A run as a list of runs shows it: the run, and where it stopped (its first step that did
/// not finish, by name, with that step's last error) when it failed or awaits an approval.
#[derive(Debug, Clone)]
pub(crate) struct RunSummary {
    pub(crate) run: RunRow,
    pub(crate) failed_step: Option<(String, Option<String>)>,
}

/// One recorded event, read back as the `Event` it was written as. `event` is the error of a
/// payload this runbook cannot read (a kind a newer runbook wrote into a shared state DB).
#[derive(Debug, Clone)]
pub(crate) struct StoredEvent {
    pub(crate) id: i64,
    pub(crate) run: Option<i64>,
    pub(crate) at: i64,
    pub(crate) kind: String,
    pub(crate) event: Result<Event, String>,
}

/// One attempt of a step as a run's timeline shows it: when it started, what it did and how it
/// ended; its log is read apart (`attempt_log`), since a timeline needs none of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttemptLine {
    pub(crate) step: String,
    pub(crate) attempt: i64,
    pub(crate) started_at: i64,
    pub(crate) action: Option<String>,
    pub(crate) outcome: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) duration_ms: Option<i64>,
}

/// The columns `run_row` reads, in its order, of `runs r`.
pub(super) const RUN_COLUMNS: &str = "r.id, r.runbook, r.env, r.runbook_hash, r.inputs_hash, r.vars_json, r.operator, r.host, \
                           r.started_at, r.ended_at, r.status";

/// A run's row from `RUN_COLUMNS` at `at`.
pub(crate) fn run_row(r: &dyn Row, at: usize) -> Result<RunRow, String> {
    let status = r.text_of(at + 10)?;
    Ok(RunRow {
        id: r.int_of(at)?,
        runbook: r.text_of(at + 1)?,
        env: r.text_of(at + 2)?,
        runbook_hash: r.text_of(at + 3)?,
        inputs_hash: r.text_of(at + 4)?,
        vars: serde_json::from_str(&r.text_of(at + 5)?).map_err(|e| format!("vars_json: {e}"))?,
        operator: r.text_of(at + 6)?,
        host: r.text_of(at + 7)?,
        started_at: r.int_of(at + 8)?,
        ended_at: r.int(at + 9)?,
        status: RunState::parse(&status).ok_or_else(|| format!("run status {status:?}"))?,
    })
}

/// Runs newest first, by filter and page; with each, its first step that did not finish when
/// the run stopped at one.
fn runs_sql() -> String {
    let first = |column: &str| {
        format!(
            "(SELECT s.{column} FROM steps s WHERE s.run_id = r.id AND s.state = '{failed}' \
             AND r.status IN ('{failed}', '{awaiting}') ORDER BY s.step LIMIT 1)",
            failed = StepState::Failed.as_str(),
            awaiting = RunState::AwaitingApproval.as_str(),
        )
    };
    format!(
        "SELECT {RUN_COLUMNS}, {}, {} FROM runs r
         WHERE (CAST($1 AS TEXT) IS NULL OR r.runbook = $1) AND (CAST($2 AS TEXT) IS NULL OR r.env = $2)
           AND (CAST($3 AS TEXT) IS NULL OR r.status = $3) AND (CAST($4 AS TEXT) IS NULL OR r.operator = $4)
           AND (CAST($5 AS BIGINT) IS NULL OR r.id < $5)
         ORDER BY r.id DESC LIMIT $6",
        first("step"),
        first("last_error"),
    )
}

/// Events after an id ($1), oldest first, at most $2: of every run.
const EVENTS_AFTER_SQL: &str = "SELECT id, run_id, at, kind, payload FROM events WHERE id > $1 ORDER BY id LIMIT $2";

/// The same of one run ($3). A statement of its own rather than `$3 IS NULL OR run_id = $3`,
/// which walked every event after $1 for one run's: a stream's first poll read the whole
/// table (68 ms on a million events, against 0.3 ms through `events_by_run_kind`).
const RUN_EVENTS_AFTER_SQL: &str =
    "SELECT id, run_id, at, kind, payload FROM events WHERE run_id = $3 AND id > $1 ORDER BY id LIMIT $2";

fn stored_event(r: &dyn Row) -> Result<StoredEvent, String> {
    let payload = r.text_of(4)?;
    Ok(StoredEvent {
        id: r.int_of(0)?,
        run: r.int(1)?,
        at: r.int_of(2)?,
        kind: r.text_of(3)?,
        event: serde_json::from_str(&payload).map_err(|e| e.to_string()),
    })
}

/// The events of the kinds `$1…$n`, oldest first, of the run `$n+1` when `of_run`. Two
/// statements rather than `$n IS NULL OR run_id = $n`, which no index can serve.
pub(super) fn events_by_kind_sql(of_run: bool, kinds: usize) -> String {
    let marks: Vec<String> = (1..=kinds).map(|i| format!("${i}")).collect();
    let run = if of_run { format!("run_id = ${} AND ", kinds + 1) } else { String::new() };
    format!("SELECT id, run_id, at, kind, payload FROM events WHERE {run}kind IN ({}) ORDER BY id", marks.join(", "))
}

impl StateDb {
    /// Runs newest first that match `filter`, a page at a time.
    pub(crate) fn runs(&self, filter: &RunFilter<'_>, page: Page) -> Result<Vec<RunSummary>, StateError> {
        let params = [
            Param::text(filter.runbook),
            Param::text(filter.env),
            Param::text(filter.status.map(RunState::as_str)),
            Param::text(filter.operator),
            Param::Int(page.before),
            Param::Int(Some(i64::from(page.limit))),
        ];
        self.select(&runs_sql(), &params, |r| {
            let failed_step = r.text(11)?.map(|step| Ok::<_, String>((step, r.text(12)?))).transpose()?;
            Ok(RunSummary { run: run_row(r, 0)?, failed_step })
        })
    }

    /// Up to `limit` events recorded after the event `after` (0: from the first), of `run` or
    /// of every run: what a live view asks for again with the last id it got.
    pub(crate) fn events_after(
        &self,
        run: Option<i64>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StateError> {
        let mut params = vec![Param::Int(Some(after)), Param::Int(Some(i64::from(limit)))];
        let sql = match run {
            Some(run) => {
                params.push(Param::Int(Some(run)));
                RUN_EVENTS_AFTER_SQL
            }
            None => EVENTS_AFTER_SQL,
        };
        self.select(sql, &params, stored_event)
    }

    /// The events of the given kinds, oldest first: of one run, or of every run (and those
    /// recorded with no run) when `run` is `None`.
    pub(crate) fn events_by_kind(&self, run: Option<i64>, kinds: &[&str]) -> Result<Vec<StoredEvent>, StateError> {
        if kinds.is_empty() {
            return Ok(Vec::new());
        }
        let mut params: Vec<Param<'_>> = kinds.iter().map(|k| Param::text(Some(k))).collect();
        if run.is_some() {
            params.push(Param::Int(run));
        }
        self.select(&events_by_kind_sql(run.is_some(), kinds.len()), &params, stored_event)
    }

    /// Every attempt of every step of `run`, in the order they started (a run's timeline).
    pub(crate) fn attempt_timeline(&self, run: i64) -> Result<Vec<AttemptLine>, StateError> {
        let sql = "SELECT step, attempt, started_at, action, outcome, error, duration_ms FROM attempts
                   WHERE run_id = $1 ORDER BY started_at, step, attempt";
        self.select(sql, &[Param::Int(Some(run))], |r| {
            Ok(AttemptLine {
                step: r.text_of(0)?,
                attempt: r.int_of(1)?,
                started_at: r.int_of(2)?,
                action: r.text(3)?,
                outcome: r.text(4)?,
                error: r.text(5)?,
                duration_ms: r.int(6)?,
            })
        })
    }

    /// What one attempt of a step printed; `None` when there is no such attempt.
    pub(crate) fn attempt_log(&self, run: i64, step: &str, attempt: i64) -> Result<Option<String>, StateError> {
        let params = [Param::Int(Some(run)), Param::text(Some(step)), Param::Int(Some(attempt))];
        let sql = "SELECT log FROM attempts WHERE run_id = $1 AND step = $2 AND attempt = $3";
        Ok(self.select(sql, &params, |r| r.text_of(0))?.pop())
    }
}

#[cfg(test)]
pub(super) fn runs_sql_for_tests() -> String {
    runs_sql()
}
