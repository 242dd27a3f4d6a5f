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
use crate::event::{Event, RunState};
use crate::state::{Page, RunFilter, RunRow, StateDb, StateError};

/// Runs `history` lists when `--limit` is not given.
pub(crate) const DEFAULT_LIMIT: u32 = 20;

#[derive(Debug, Serialize)]
pub(crate) struct HistoryView {
    /// What was asked for, to say so when nothing matches.
    pub(crate) runbook: Option<String>,
    pub(crate) env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<RunState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) operator: Option<String>,
    pub(crate) runs: Vec<HistoryLine>,
    /// The page's size.
    pub(crate) limit: u32,
    /// A full page: `--before` this run id lists the older ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) older_before: Option<i64>,
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

/// Runs newest first that match `filter`, a page at a time. `died` is no recorded status (a
/// run whose process died is recorded as running): asked for, it is the running runs that no
/// live process holds, and `running` the ones that one does.
pub(crate) fn history(
    db: &StateDb,
    filter: &RunFilter<'_>,
    page: Page,
    our_host: &str,
) -> Result<HistoryView, StateError> {
    let asked = filter.status;
    let recorded =
        RunFilter { status: asked.map(|s| if s == RunState::Died { RunState::Running } else { s }), ..*filter };
    let rows = db.runs(&recorded, page)?;
    let older_before = (rows.len() as u64 >= u64::from(page.limit)).then(|| rows.last().map(|r| r.run.id)).flatten();
    let mut runs = Vec::new();
    for row in rows {
        let run = row.run;
        let mut status = run.status;
        if status == RunState::Running && !db.run_is_live(run.id, our_host)? {
            // Its process died without recording an end (kill -9, power cut).
            status = RunState::Died;
        }
        if asked.is_some_and(|a| a != status) {
            continue;
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
    Ok(HistoryView {
        runbook: filter.runbook.map(String::from),
        env: filter.env.map(String::from),
        status: asked,
        operator: filter.operator.map(String::from),
        runs,
        limit: page.limit,
        older_before,
    })
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

/// The kinds of event that are an operator's decision.
const DECISIONS: &[&str] = &[
    "approval_answered",
    "step_skipped",
    "step_reset",
    "lock_taken_over",
    "lock_broken",
    "state_lock_released",
    "rollback_marked",
    "rollback_acknowledged",
];

/// A decision in one line, with who made it and from where (an empty host: recorded before
/// hosts were kept). `None` for an event that is no decision.
fn describe(event: &Event) -> Option<(String, &str, &str)> {
    let (line, operator, host) = match event {
        Event::ApprovalAnswered { step, summary, operator, host, via, approved } => {
            let verb = if *approved { "approved" } else { "refused" };
            (format!("{verb} {step} via {via}: {summary}"), operator, host)
        }
        Event::StepSkipped { step, reason, operator, host } => (format!("skipped {step}: {reason}"), operator, host),
        Event::StepReset { step, reason, operator, host } => {
            (format!("reset {step} to run again ({reason})"), operator, host)
        }
        Event::LockTakenOver { previous_host, previous_pid, operator, host } => {
            (format!("took over the run lock of dead process {previous_pid} on {previous_host}"), operator, host)
        }
        Event::LockBroken { previous_host, previous_pid, operator, host } => {
            (format!("broke the run lock held by process {previous_pid} on {previous_host}"), operator, host)
        }
        Event::StateLockReleased { step, lock_id, operator, host } => {
            (format!("released terraform's state lock {lock_id} of {step}"), operator, host)
        }
        Event::RollbackMarked {
            service,
            from_revision: from,
            to_revision: to,
            operator,
            host,
            emergency,
            desired,
            ..
        } => {
            let desired = desired.map(|d| d.to_string()).unwrap_or_else(|| "?".into());
            // 002's emergency variant is a restart when it stays on the running revision.
            let line = match (*emergency, from == to) {
                (false, _) => format!("rolled {service} back from revision {from} to {to}"),
                (true, true) => {
                    format!("emergency restart of {service} at revision {to}: scaled 0 and back to {desired}")
                }
                (true, false) => format!(
                    "emergency rollback of {service} from revision {from} to {to}: scaled 0 and back to {desired}"
                ),
            };
            (line, operator, host)
        }
        Event::RollbackAcknowledged { step, rollback_run, service, summary, operator, host } => (
            format!("acknowledged that {step} undoes the rollback of run {rollback_run} on {service}: {summary}"),
            operator,
            host,
        ),
        _ => return None,
    };
    Some((line, operator.as_str(), host.as_str()))
}

/// The decisions of `run` (default: the latest), or with `all` of every run, oldest first. A
/// row this runbook cannot read (written by a newer one) is listed as such, not left out.
pub(crate) fn audit(db: &StateDb, run: Option<i64>, all: bool) -> Result<AuditView, StateError> {
    let audited = if all { None } else { Some(db.run_or_latest(run)?) };
    let events = db.events_by_kind(audited.as_ref().map(|r| r.id), DECISIONS)?;
    // The host of each run, for events recorded before they carried their own.
    let mut hosts: BTreeMap<i64, String> = audited.iter().map(|r| (r.id, r.host.clone())).collect();
    let mut run_host = |run: Option<i64>| -> String {
        let Some(id) = run else { return "?".into() };
        hosts.entry(id).or_insert_with(|| db.run(id).map(|r| r.host).unwrap_or_else(|_| "?".into())).clone()
    };
    let mut decisions = Vec::with_capacity(events.len());
    for stored in events {
        let (decision, operator, host, step, detail) = match &stored.event {
            Ok(event) => {
                let Some((line, operator, host)) = describe(event) else { continue };
                let host = if host.is_empty() { run_host(stored.run) } else { host.to_string() };
                let detail = serde_json::to_value(event).unwrap_or(Value::Null);
                (line, operator.to_string(), host, event.step().map(String::from), detail)
            }
            Err(error) => (
                format!("unreadable {} event {} (written by a newer runbook?): {error}", stored.kind, stored.id),
                "?".into(),
                run_host(stored.run),
                None,
                Value::Null,
            ),
        };
        decisions.push(Decision {
            run: stored.run,
            at: stored.at,
            time: format_utc_ms(stored.at),
            kind: stored.kind,
            step,
            operator,
            host,
            decision,
            detail,
        });
    }
    Ok(AuditView { run: audited.as_ref().map(AuditedRun::from), decisions })
}

#[cfg(test)]
mod tests;
