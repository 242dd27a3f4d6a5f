//! How an event changes the tables, written once for both stores: the event appended to
//! `events`, then the rows of `runs`, `steps`, `attempts` and `outputs` it moves. Each store
//! runs these statements in its own transaction (SQLite's `record.rs`, PostgreSQL's
//! pipelined `Writer`), with its own checks around them (the lease before an intent).

use std::borrow::Cow;

use super::sql::Param;
use crate::event::{DoneOutcome, Event, RunState, StepState};

/// One statement of an event's transaction.
pub(super) struct Write<'a> {
    /// `$N` placeholders; a `&'static str`, so that PostgreSQL prepares it once per connection.
    pub(super) sql: &'static str,
    pub(super) params: Vec<Param<'a>>,
}

fn write<'a>(sql: &'static str, params: impl IntoIterator<Item = Param<'a>>) -> Write<'a> {
    Write { sql, params: params.into_iter().collect() }
}

fn int(n: i64) -> Param<'static> {
    Param::Int(Some(n))
}

fn text(t: &str) -> Param<'_> {
    Param::Text(Some(Cow::Borrowed(t)))
}

fn owned(t: String) -> Param<'static> {
    Param::Text(Some(Cow::Owned(t)))
}

fn maybe(t: Option<&str>) -> Param<'_> {
    Param::Text(t.map(Cow::Borrowed))
}

/// The statements that record `event` of `run` (none but the append without a run) at `now`.
pub(super) fn writes(run: Option<i64>, event: &Event, now: i64) -> Vec<Write<'_>> {
    let payload = serde_json::to_string(event).unwrap_or_default();
    let mut out = vec![write(
        "INSERT INTO events (run_id, at, step, kind, payload) VALUES ($1, $2, $3, $4, $5)",
        [Param::Int(run), int(now), maybe(event.step()), text(event.kind()), owned(payload)],
    )];
    let Some(run) = run else { return out };
    match event {
        Event::RunStarted { .. } => out.push(write(
            "UPDATE runs SET status = $2, ended_at = NULL WHERE id = $1",
            [int(run), text(RunState::Running.as_str())],
        )),
        Event::StepStarted { step, attempt, .. } => out.extend(started(run, step, *attempt, now)),
        Event::StepIntent { step, attempt, action } => out.push(write(
            "UPDATE attempts SET intent_at = $4, action = $5 WHERE run_id = $1 AND step = $2 AND attempt = $3",
            [int(run), text(step), int(i64::from(*attempt)), int(now), text(action)],
        )),
        Event::StepLog { step, attempt, line } => out.push(write(
            "UPDATE attempts SET log = log || $4 WHERE run_id = $1 AND step = $2 AND attempt = $3",
            [int(run), text(step), int(i64::from(*attempt)), owned(format!("{line}\n"))],
        )),
        Event::StepRetrying { step, attempt, error, .. } => {
            out.push(end_attempt(run, step, *attempt, now, "retryable_error", Some(error)));
        }
        Event::StepDone { step, attempt, outcome, outputs, .. } => {
            out.extend(done(run, step, *attempt, *outcome, outputs, now));
        }
        Event::StepFailed { step, attempt, error, fix, .. } => {
            out.push(end_attempt(run, step, *attempt, now, StepState::Failed.as_str(), Some(error)));
            out.push(end_step(run, step, now, StepState::Failed, Some(Cow::Borrowed(error)), fix.as_deref()));
        }
        Event::StepBlocked { step, by } => out.push(write(
            "UPDATE steps SET state = $4, last_error = $3 WHERE run_id = $1 AND step = $2",
            [int(run), text(step), owned(format!("waits for {by}")), text(StepState::Blocked.as_str())],
        )),
        Event::StepSkipped { step, reason, operator, .. } => {
            let why = Cow::Owned(format!("skipped by {operator}: {reason}"));
            out.push(end_step(run, step, now, StepState::Skipped, Some(why), None));
        }
        Event::StepReset { step, .. } => {
            out.push(write(
                "UPDATE steps SET state = $3, ended_at = NULL, last_error = NULL, fix = NULL
                 WHERE run_id = $1 AND step = $2",
                [int(run), text(step), text(StepState::Pending.as_str())],
            ));
            out.push(write("DELETE FROM outputs WHERE run_id = $1 AND step = $2", [int(run), text(step)]));
        }
        Event::RunFinished { status, .. } => out.extend(finished(run, *status, now)),
        Event::InputsChanged { .. }
        | Event::StepProbed { .. }
        | Event::StepWaiting { .. }
        | Event::ApprovalRequested { .. }
        | Event::ApprovalAnswered { .. }
        | Event::LockTakenOver { .. }
        | Event::LockBroken { .. }
        | Event::StateLockReleased { .. }
        | Event::RollbackMarked { .. }
        | Event::RollbackAcknowledged { .. }
        | Event::SmokeRound { .. }
        | Event::WaitStarted { .. } => {}
    }
    out
}

/// A new attempt's row (whatever an older one of the same number held), and its step running.
fn started(run: i64, step: &str, attempt: u32, now: i64) -> [Write<'_>; 2] {
    let attempt = i64::from(attempt);
    [
        write(
            "INSERT INTO attempts (run_id, step, attempt, started_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (run_id, step, attempt) DO UPDATE SET started_at = excluded.started_at,
             intent_at = NULL, action = NULL, ended_at = NULL, outcome = NULL, error = NULL,
             duration_ms = NULL, log = ''",
            [int(run), text(step), int(attempt), int(now)],
        ),
        write(
            "UPDATE steps SET state = $5, attempts = $3, started_at = COALESCE(started_at, $4),
             ended_at = NULL WHERE run_id = $1 AND step = $2",
            [int(run), text(step), int(attempt), int(now), text(StepState::Running.as_str())],
        ),
    ]
}

/// A step done: its attempt and its row closed, its outputs replaced.
fn done<'a>(
    run: i64,
    step: &'a str,
    attempt: u32,
    outcome: DoneOutcome,
    outputs: &'a crate::event::Outputs,
    now: i64,
) -> Vec<Write<'a>> {
    let state = match outcome {
        DoneOutcome::Satisfied => StepState::Satisfied,
        DoneOutcome::Applied => StepState::Applied,
    };
    let mut out = vec![
        end_attempt(run, step, attempt, now, state.as_str(), None),
        end_step(run, step, now, state, None, None),
        write("DELETE FROM outputs WHERE run_id = $1 AND step = $2", [int(run), text(step)]),
    ];
    for (name, value) in outputs {
        out.push(write(
            "INSERT INTO outputs (run_id, step, name, value) VALUES ($1, $2, $3, $4)",
            [int(run), text(step), text(name), text(value)],
        ));
    }
    out
}

/// A run ended; an interrupted one's attempts cut short before their intent are closed (they
/// did nothing).
fn finished(run: i64, status: RunState, now: i64) -> Vec<Write<'static>> {
    let mut out = vec![write(
        "UPDATE runs SET status = $2, ended_at = $3 WHERE id = $1",
        [int(run), text(status.as_str()), int(now)],
    )];
    if status == RunState::Interrupted {
        out.push(write(
            "UPDATE attempts SET outcome = 'interrupted', ended_at = $2, duration_ms = $2 - started_at
             WHERE run_id = $1 AND outcome IS NULL AND intent_at IS NULL",
            [int(run), int(now)],
        ));
    }
    out
}

fn end_attempt<'a>(
    run: i64,
    step: &'a str,
    attempt: u32,
    now: i64,
    outcome: &'a str,
    error: Option<&'a str>,
) -> Write<'a> {
    write(
        "UPDATE attempts SET outcome = $4, error = $5, ended_at = $6, duration_ms = $6 - started_at
         WHERE run_id = $1 AND step = $2 AND attempt = $3",
        [int(run), text(step), int(i64::from(attempt)), text(outcome), maybe(error), int(now)],
    )
}

/// Ends `step` in `state`; its duration is what its attempts worked (as `WORKED_MS` reads it).
fn end_step<'a>(
    run: i64,
    step: &'a str,
    now: i64,
    state: StepState,
    error: Option<Cow<'a, str>>,
    fix: Option<&'a str>,
) -> Write<'a> {
    write(
        "UPDATE steps SET state = $3, ended_at = $4, last_error = $5, fix = $6,
         duration_ms = CAST((SELECT sum(duration_ms) FROM attempts WHERE run_id = $1 AND step = $2) AS BIGINT)
         WHERE run_id = $1 AND step = $2",
        [int(run), text(step), text(state.as_str()), int(now), Param::Text(error), maybe(fix)],
    )
}
