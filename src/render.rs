//! The one rendering edge for command outcomes: text for people, JSON for scripts, and the
//! exit code. The live progress of a run is the reporter's; everything a command returns is
//! rendered here, once.
//!
//! Exit codes: 0 done, 1 a step failed (or the run could not be recorded), 2 bad input
//! (nothing was recorded or changed), 3 locked by another run, 130 interrupted.

use crate::clock::{format_duration, format_utc};
use crate::commands::{CliError, Outcome};
use crate::engine::{PlanLine, PlanVerdict};
use crate::error_chain::error_chain;
use crate::event::{RunState, StepState};
use crate::status::StatusView;
pub(crate) use crate::text::{one_line, printable};

/// What to print on stdout and stderr, and the exit code.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Rendered {
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) code: i32,
}

pub(crate) fn outcome(outcome: &Outcome, json: bool) -> Rendered {
    let code = exit_code(outcome);
    let stdout = match outcome {
        Outcome::Run { run, status, view, write_error, notify_error } => {
            let stdout = match (json, view) {
                (false, Some(view)) => status_table(view),
                _ => String::new(),
            };
            return Rendered { stdout, stderr: run_ending(*run, *status, write_error, notify_error), code };
        }
        Outcome::NothingToResume { run, runbook } => either(
            json,
            || serde_json::json!({ "run": run, "nothing_to_resume": true }),
            || format!("run {run} of {runbook} is done; nothing to resume (runbook run {runbook} starts a new one)\n"),
        ),
        Outcome::Plan(lines) => either(json, || serde_json::json!({ "plan": lines }), || plan_table(lines)),
        Outcome::Status(view) => shown(json, view, status_table),
        Outcome::Logs { run, step, attempts } => logs_text(*run, step, attempts, json),
        Outcome::Graph(text) => either(json, || serde_json::json!({ "graph": text }), || text.clone()),
        Outcome::Skipped { .. }
        | Outcome::Unlocked(_)
        | Outcome::StateLockReleased { .. }
        | Outcome::StateCopied(_) => operator_action(outcome, json),
        Outcome::Ring(_) | Outcome::Watch { .. } | Outcome::Served => String::new(),
        Outcome::Diagnosis { env, findings, elapsed_ms } => diagnosis::render(env, findings, *elapsed_ms, json),
        Outcome::History(view) => shown(json, view, oncall::history_table),
        Outcome::Audit(view) => shown(json, view, oncall::audit_table),
    };
    Rendered { stdout, stderr: String::new(), code }
}

/// `view` as indented JSON, or as `table` draws it.
fn shown<V: serde::Serialize>(json: bool, view: &V, table: impl FnOnce(&V) -> String) -> String {
    if json { pretty(view) } else { table(view) }
}

/// What an operator's command did to the record: a step skipped, a lock broken or released,
/// the state copied.
fn operator_action(outcome: &Outcome, json: bool) -> String {
    match outcome {
        Outcome::Skipped { run, step, reason } => either(
            json,
            || serde_json::json!({ "run": run, "skipped": step, "reason": reason }),
            || {
                format!(
                    "{step} skipped in run {run} ({reason}); `{}` continues with what depends on it\n",
                    crate::hint::resume(*run)
                )
            },
        ),
        Outcome::Unlocked(Some(h)) => either(
            json,
            || serde_json::json!({ "broke_lock_of": { "host": h.host, "pid": h.pid } }),
            || format!("broke the run lock held by pid {} on {} (recorded in the audit log)\n", h.pid, h.host),
        ),
        Outcome::Unlocked(None) => {
            either(json, || serde_json::json!({ "broke_lock_of": null }), || "no run lock is held\n".into())
        }
        Outcome::StateLockReleased { run, step, lock_id } => either(
            json,
            || serde_json::json!({ "run": run, "step": step, "released_state_lock": lock_id }),
            || {
                format!(
                    "released terraform's state lock {lock_id} of {step} (run {run}; recorded in the audit log); \
                     `{}` continues\n",
                    crate::hint::retry(step, Some(*run))
                )
            },
        ),
        Outcome::StateCopied(c) => either(
            json,
            || serde_json::to_value(c).unwrap_or_default(),
            || {
                format!(
                    "copied {} runs, {} steps, {} attempts, {} outputs and {} events from {} to {}\n",
                    c.runs,
                    c.steps,
                    c.attempts,
                    c.outputs,
                    c.events,
                    c.from.display(),
                    c.to.display()
                )
            },
        ),
        _ => String::new(),
    }
}

/// A view as indented JSON.
fn pretty(value: &impl serde::Serialize) -> String {
    format!("{}\n", serde_json::to_string_pretty(value).unwrap_or_default())
}

/// One line of JSON, or the text.
fn either(json: bool, value: impl FnOnce() -> serde_json::Value, text: impl FnOnce() -> String) -> String {
    if json { format!("{}\n", value()) } else { text() }
}

/// What stderr says when a run ends other than done: the state DB stopped it, it was
/// interrupted, or it waits for an approval; and a webhook that could not be told.
fn run_ending(run: i64, status: RunState, write_error: &Option<String>, notify_error: &Option<String>) -> String {
    let mut stderr = if let Some(error) = write_error {
        format!("error: the run stopped: {error}\n")
    } else if status == RunState::Interrupted {
        format!("interrupted: run {run} is recorded as interrupted; `{}` continues it\n", crate::hint::resume(run))
    } else if status == RunState::AwaitingApproval {
        format!(
            "awaiting approval: run {run} stopped before an apply that needs an approval (nothing failed); review \
             the change above, then `{}` approves and applies it\n",
            crate::hint::resume_approving(run)
        )
    } else {
        String::new()
    };
    if let Some(error) = notify_error {
        stderr.push_str(&format!("notification failed: {error}\n"));
    }
    stderr
}

/// Each attempt of a step with its outcome and what it printed (JSON: one attempt a line).
fn logs_text(run: i64, step: &str, attempts: &[crate::state::AttemptRow], json: bool) -> String {
    let mut out = String::new();
    for a in attempts {
        if json {
            out.push_str(&format!("{}\n", serde_json::to_string(a).unwrap_or_default()));
            continue;
        }
        let outcome = a.outcome.as_deref().unwrap_or(if a.intent_at.is_some() { "in doubt" } else { "none" });
        let error = a.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
        out.push_str(&format!(
            "== run {run} step {step} attempt {} — started {}, outcome {outcome}{error}\n{}",
            a.attempt,
            format_utc(a.started_at),
            a.log
        ));
    }
    out
}

/// The exit code of a run stopped for an approval nobody gave (nothing failed; `resume RUN
/// --yes` approves and applies).
pub(crate) const AWAITING_APPROVAL: i32 = 5;

fn exit_code(outcome: &Outcome) -> i32 {
    match outcome {
        Outcome::Run { write_error: Some(_), .. } => 1,
        Outcome::Run { status, .. } => match status {
            RunState::Done => 0,
            RunState::Interrupted => 130,
            RunState::AwaitingApproval => AWAITING_APPROVAL,
            RunState::Failed | RunState::Running | RunState::Died => 1,
        },
        Outcome::Plan(lines) => {
            i32::from(lines.iter().any(|l| matches!(l.verdict, PlanVerdict::Conflict | PlanVerdict::Error)))
        }
        Outcome::Ring(code) => *code,
        Outcome::Watch { verdict, once: true } => verdict.map(|v| v.exit_code()).unwrap_or(130),
        Outcome::Diagnosis { findings, .. } => diagnosis::exit_code(findings),
        _ => 0,
    }
}

/// The message and exit code of a command that did not get to an outcome.
pub(crate) fn error(err: &CliError) -> Rendered {
    Rendered { stdout: String::new(), stderr: format!("error: {}\n", error_chain(err)), code: err.code() }
}

pub(crate) fn plan_table(lines: &[PlanLine]) -> String {
    let mut out = format!("{:<8} {:<14} DETAIL\n", "STEP", "VERDICT");
    for line in lines {
        out.push_str(&format!("{:<8} {:<14} {}: {}\n", line.step, line.verdict.as_str(), line.title, line.detail));
    }
    let count = |verdict: PlanVerdict| lines.iter().filter(|l| l.verdict == verdict).count();
    let mut parts = vec![format!("{} of {} steps would act", count(PlanVerdict::WouldApply), lines.len())];
    for (verdict, what) in [
        (PlanVerdict::AfterUpstream, "wait for the steps before them"),
        (PlanVerdict::Conflict, "conflict"),
        (PlanVerdict::Error, "could not be probed"),
    ] {
        if count(verdict) > 0 {
            parts.push(format!("{} {what}", count(verdict)));
        }
    }
    out.push_str(&format!("{}; nothing was changed\n", parts.join(", ")));
    out
}

pub(crate) fn status_table(view: &StatusView) -> String {
    let run = &view.run;
    let mut out = format!(
        "run {}: {} on {} — {} (started {} by {}@{}{})\n",
        run.id,
        run.runbook,
        run.env,
        run.status.label(),
        format_utc(run.started_at),
        one_line(&run.operator),
        one_line(&run.host),
        run.ended_at.map(|e| format!(", took {}", format_duration(e - run.started_at))).unwrap_or_default()
    );
    out.push_str(&format!(
        "{:<8} {:<10} {:>8} {:>9}  {}\n",
        "STEP", "STATE", "ATTEMPTS", "DURATION", "LAST ERROR / NEXT"
    ));
    for step in &view.steps {
        let row = &step.row;
        let in_doubt = row.in_doubt && row.state == StepState::Running && run.status != RunState::Running;
        // The change an approval is asked for, resource by resource, under its row.
        let change = row.last_error.as_deref().filter(|_| row.state == StepState::Failed).and_then(|e| {
            let change = e.strip_prefix("awaiting approval: ")?;
            Some(change.split_once('\n').map_or("", |(_, resources)| resources))
        });
        let state = match (in_doubt, change, &step.wait) {
            (_, _, Some(_)) => "waiting",
            (true, _, None) => "in-doubt",
            (false, Some(_), None) => "awaiting",
            (false, None, None) => row.state.as_str(),
        };
        let mut note = match &step.wait {
            Some(wait) => first_line(&format!("waiting {}", wait.says)),
            None => row.last_error.as_deref().map(first_line).unwrap_or_default(),
        };
        if matches!(row.state, StepState::Applied | StepState::Satisfied) && !row.warnings.is_empty() {
            note = first_line(&format!("warning: {}", row.warnings.join("; ")));
        }
        if let Some(next) = &step.next {
            if !note.is_empty() {
                note.push_str(" — ");
            }
            note.push_str("next: ");
            note.push_str(next);
        }
        let duration = row.duration_ms.map(format_duration).unwrap_or_else(|| "-".into());
        out.push_str(&format!("{:<8} {:<10} {:>8} {:>9}  {}\n", row.step, state, row.attempts, duration, note));
        for resource in change.into_iter().flat_map(str::lines).filter(|l| !l.trim().is_empty()) {
            out.push_str(&format!("{:9}{}\n", "", one_line(resource.trim_start())));
        }
        if let Some(gate) = &step.gate {
            out.push_str(&format!("{:9}{}\n", "", one_line(gate)));
        }
        if let Some(put) = rollback_outputs(&step.outputs) {
            out.push_str(&format!("{:9}{put}\n", ""));
        }
    }
    if let Some(lock) = &view.lock {
        out.push_str(&format!(
            "lock: held by pid {} on {}{}, last heartbeat {} s ago\n",
            lock.pid,
            lock.host,
            if lock.this_host { " (this host)" } else { "" },
            lock.heartbeat_age_s
        ));
    }
    out.push_str(&format!("next: {}\n", view.next));
    out
}

/// What a rollback put in place, the outputs on call reads first: the revision, its task
/// definition and the health it was judged by. A rollback's outputs are told by their names
/// (the state keeps no step's kind; no other kind declares `revision`, a test holds that); every
/// other step's outputs are in `status --json` only, where they would be noise here.
fn rollback_outputs(outputs: &crate::event::Outputs) -> Option<String> {
    let (revision, task_definition) = (outputs.get("revision")?, outputs.get("task_definition")?);
    let health = outputs.get("health").map(String::as_str).unwrap_or("not recorded");
    Some(format!("revision {revision}; task definition {task_definition}; health {health}"))
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > 160 {
        format!("{}…", line.chars().take(160).collect::<String>())
    } else {
        line.to_string()
    }
}

mod diagnosis;
pub(crate) mod oncall;

#[cfg(test)]
mod tests;
