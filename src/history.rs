//! `runbook history` and `runbook audit`: the runs a state DB holds, newest first, and every
//! decision an operator took in them (approvals with the plan they approved, skips, retries,
//! lock takeovers and breaks, terraform state-lock releases, rollbacks and their
//! acknowledgements), each with its time, operator and host. Reads the state DB only; `render`
//! turns the views into text or JSON.
//!
//! The audit reads decisions from the append-only `events` table by kind: a new kind of
//! decision is one line in [`DECISIONS`].

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::clock::format_utc_ms;
use crate::event::RunState;
use crate::state::{RunRow, StateDb, StateError};

/// Runs `history` lists when `--limit` is not given.
pub(crate) const DEFAULT_LIMIT: u32 = 20;

#[derive(Debug, Serialize)]
pub(crate) struct HistoryView {
    /// What was asked for, to say so when nothing matches.
    pub(crate) runbook: Option<String>,
    pub(crate) env: Option<String>,
    pub(crate) runs: Vec<HistoryLine>,
}

#[derive(Debug, Serialize)]
pub(crate) struct HistoryLine {
    pub(crate) run: i64,
    pub(crate) runbook: String,
    pub(crate) env: String,
    pub(crate) operator: String,
    pub(crate) host: String,
    pub(crate) started_at: i64,
    /// `started_at` in UTC, for people and scripts alike.
    pub(crate) started: String,
    /// None while it runs (or when its process died before recording an end).
    pub(crate) duration_ms: Option<i64>,
    pub(crate) status: RunState,
    pub(crate) failed_step: Option<String>,
    /// The first line of the failed step's last error.
    pub(crate) error: Option<String>,
    /// It stopped because a change waits for the operator's yes (`runbook resume --yes`).
    pub(crate) awaiting_approval: bool,
}

pub(crate) fn history(
    db: &StateDb,
    runbook: Option<&str>,
    env: Option<&str>,
    limit: u32,
    our_host: &str,
) -> Result<HistoryView, StateError> {
    let mut runs = Vec::new();
    for row in db.history(runbook, env, limit)? {
        let run = row.run;
        let mut status = run.status;
        if status == RunState::Running && !db.run_is_live(run.id, our_host)? {
            // Its process died without recording an end (kill -9, power cut).
            status = RunState::Died;
        }
        let (failed_step, error) = match row.failed_step {
            Some((step, error)) => (Some(step), error.map(|e| e.lines().next().unwrap_or_default().to_string())),
            None => (None, None),
        };
        // Runs recorded before the state of its own was added were labelled failed.
        let awaiting_approval = status == RunState::AwaitingApproval
            || error.as_deref().is_some_and(|e| e.starts_with("awaiting approval"));
        runs.push(HistoryLine {
            run: run.id,
            runbook: run.runbook,
            env: run.env,
            operator: run.operator,
            host: run.host,
            started_at: run.started_at,
            started: format_utc_ms(run.started_at),
            duration_ms: run.ended_at.map(|end| (end - run.started_at).max(0)),
            status,
            failed_step,
            error,
            awaiting_approval,
        });
    }
    Ok(HistoryView { runbook: runbook.map(String::from), env: env.map(String::from), runs })
}

/// The decisions of one run, or of every run in the DB.
#[derive(Debug, Serialize)]
pub(crate) struct AuditView {
    /// The run audited; None for `--all`.
    pub(crate) run: Option<AuditedRun>,
    pub(crate) decisions: Vec<Decision>,
}

#[derive(Debug, Serialize)]
pub(crate) struct AuditedRun {
    pub(crate) id: i64,
    pub(crate) runbook: String,
    pub(crate) env: String,
    pub(crate) operator: String,
    pub(crate) host: String,
    pub(crate) started_at: i64,
}

impl From<&RunRow> for AuditedRun {
    fn from(r: &RunRow) -> Self {
        AuditedRun {
            id: r.id,
            runbook: r.runbook.clone(),
            env: r.env.clone(),
            operator: r.operator.clone(),
            host: r.host.clone(),
            started_at: r.started_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Decision {
    /// None for a lock broken when its run was not in this DB.
    pub(crate) run: Option<i64>,
    pub(crate) at: i64,
    pub(crate) time: String,
    /// The event kind it was recorded as (`approval_answered`, `step_skipped`, …).
    pub(crate) kind: String,
    pub(crate) step: Option<String>,
    pub(crate) operator: String,
    /// The operator's host; an event recorded before hosts were kept shows its run's host,
    /// or `?` without a run.
    pub(crate) host: String,
    /// One line: what was decided.
    pub(crate) decision: String,
    /// The event as recorded.
    pub(crate) detail: Value,
}

/// How a decision's recorded payload reads in one line.
type Describe = fn(&Value) -> String;

/// The kinds of event that are an operator's decision, and how each reads in one line.
const DECISIONS: &[(&str, Describe)] = &[
    ("approval_answered", approval),
    ("step_skipped", skipped),
    ("step_reset", reset),
    ("lock_taken_over", taken_over),
    ("lock_broken", broken),
    ("state_lock_released", state_lock_released),
    ("rollback_marked", rollback),
    ("rollback_acknowledged", rollback_acknowledged),
];

fn field<'a>(payload: &'a Value, name: &str) -> &'a str {
    payload[name].as_str().unwrap_or("?")
}

fn number(payload: &Value, name: &str) -> String {
    payload[name].as_i64().map(|n| n.to_string()).unwrap_or_else(|| "?".into())
}

fn approval(p: &Value) -> String {
    let verb = if p["approved"].as_bool() == Some(true) { "approved" } else { "refused" };
    format!("{verb} {} via {}: {}", field(p, "step"), field(p, "via"), field(p, "summary"))
}

fn skipped(p: &Value) -> String {
    format!("skipped {}: {}", field(p, "step"), field(p, "reason"))
}

fn reset(p: &Value) -> String {
    format!("reset {} to run again ({})", field(p, "step"), field(p, "reason"))
}

fn taken_over(p: &Value) -> String {
    format!("took over the run lock of dead process {} on {}", number(p, "previous_pid"), field(p, "previous_host"))
}

fn broken(p: &Value) -> String {
    format!("broke the run lock held by process {} on {}", number(p, "previous_pid"), field(p, "previous_host"))
}

fn state_lock_released(p: &Value) -> String {
    format!("released terraform's state lock {} of {}", field(p, "lock_id"), field(p, "step"))
}

/// A rollback, or 002's emergency variant: a restart when it stays on the running revision.
fn rollback(p: &Value) -> String {
    let revision = |name: &str| p[name].as_str().map(String::from).unwrap_or_else(|| number(p, name));
    let (service, from, to) = (field(p, "service"), revision("from_revision"), revision("to_revision"));
    match (p["emergency"].as_bool() == Some(true), from == to) {
        (false, _) => format!("rolled {service} back from revision {from} to {to}"),
        (true, true) => {
            format!("emergency restart of {service} at revision {to}: scaled 0 and back to {}", number(p, "desired"))
        }
        (true, false) => format!(
            "emergency rollback of {service} from revision {from} to {to}: scaled 0 and back to {}",
            number(p, "desired")
        ),
    }
}

fn rollback_acknowledged(p: &Value) -> String {
    format!(
        "acknowledged that {} undoes the rollback of run {} on {}: {}",
        field(p, "step"),
        number(p, "rollback_run"),
        field(p, "service"),
        field(p, "summary")
    )
}

/// The decisions of `run` (default: the latest), or with `all` of every run, oldest first.
pub(crate) fn audit(db: &StateDb, run: Option<i64>, all: bool) -> Result<AuditView, StateError> {
    let kinds: Vec<&str> = DECISIONS.iter().map(|(kind, _)| *kind).collect();
    let audited = if all { None } else { Some(db.run_or_latest(run)?) };
    let events = db.events_by_kind(audited.as_ref().map(|r| r.id), &kinds)?;
    // The host of each run, for events recorded before they carried their own.
    let mut hosts: BTreeMap<i64, String> = audited.iter().map(|r| (r.id, r.host.clone())).collect();
    let mut decisions = Vec::with_capacity(events.len());
    for event in events {
        let Some((_, describe)) = DECISIONS.iter().find(|(kind, _)| *kind == event.kind) else { continue };
        let host = match event.payload["host"].as_str() {
            Some(host) => host.to_string(),
            None => match event.run {
                Some(id) => match hosts.get(&id) {
                    Some(host) => host.clone(),
                    None => {
                        let host = db.run(id).map(|r| r.host).unwrap_or_else(|_| "?".into());
                        hosts.insert(id, host.clone());
                        host
                    }
                },
                None => "?".into(),
            },
        };
        decisions.push(Decision {
            run: event.run,
            at: event.at,
            time: format_utc_ms(event.at),
            kind: event.kind.clone(),
            step: event.payload["step"].as_str().map(String::from),
            operator: event.payload["operator"].as_str().unwrap_or("?").to_string(),
            host,
            decision: describe(&event.payload),
            detail: event.payload,
        });
    }
    Ok(AuditView { run: audited.as_ref().map(AuditedRun::from), decisions })
}

#[cfg(test)]
mod tests;
