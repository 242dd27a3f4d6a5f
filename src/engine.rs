//! The engine: walks the dependency graph, runs ready steps at the same time, and applies the
//! step contract to each (probe → intent → apply → verify), retrying retryable errors with
//! backoff. A failed step stops its branch; running siblings finish; the run stays resumable.
//!
//! `plan` and `diagnose` drive the same steps read-only, recording nothing.
//!
//! It emits events through the [`Recorder`] and never prints; it reaches the cloud, the
//! terminal and the clock only through what it is given ([`Services`], the steps, `tokio::time`,
//! the cancellation future), so tests run it with fake steps in paused time.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::event::{DoneOutcome, Event, Outputs, ProbeResult, RunState};
use crate::graph::Frontier;
use crate::recorder::Recorder;
use crate::runbook::{Runbook, Step};
use crate::state::Progress;
use crate::steps::{AnyStep, Finding, Probe, Services, StepContext, StepError};

#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    /// Attempts per step in one run, the first included.
    pub(crate) max_attempts: u32,
    pub(crate) first_delay: Duration,
    pub(crate) max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 3, first_delay: Duration::from_secs(1), max_delay: Duration::from_secs(20) }
    }
}

pub(crate) struct Engine {
    pub(crate) runbook: Arc<Runbook>,
    pub(crate) services: Arc<Services>,
    pub(crate) recorder: Recorder,
    pub(crate) retry: RetryPolicy,
}

/// Everything a step task needs, shared.
struct Shared {
    services: Arc<Services>,
    recorder: Recorder,
    retry: RetryPolicy,
    /// The steps that need each step directly (what a wait says comes next).
    then: BTreeMap<String, Vec<String>>,
}

impl Engine {
    /// Runs every step not yet finished, until all are done, one fails (its branch stops,
    /// the rest go on), the state DB cannot be written, or `cancel` resolves.
    pub(crate) async fn run(&self, mut progress: Progress, cancel: impl Future<Output = ()>) -> RunState {
        let graph = &self.runbook.graph;
        let then = self.runbook.steps.iter().map(|s| (s.id.clone(), graph.dependents(&s.id))).collect();
        let shared = Arc::new(Shared {
            services: self.services.clone(),
            recorder: self.recorder.clone(),
            retry: self.retry,
            then,
        });
        let by_id: BTreeMap<&str, &Step> = self.runbook.steps.iter().map(|s| (s.id.as_str(), s)).collect();
        let mut frontier = Frontier::new(graph, &progress.finished);
        let mut running: JoinSet<(String, Ended)> = JoinSet::new();
        let mut failed = BTreeSet::new();
        // Stopped for an approval nobody gave: not broken, and not done.
        let mut awaiting = BTreeSet::new();
        tokio::pin!(cancel);

        loop {
            let write_failed = self.recorder.write_error().is_some();
            if !write_failed {
                for id in frontier.take_ready() {
                    let step = (*by_id.get(id.as_str()).expect("ready steps come from the graph")).clone();
                    let first = progress.attempts.get(&id).copied().unwrap_or(0) + 1;
                    let in_doubt = progress.in_doubt.contains(&id);
                    let typed = step
                        .typed(self.runbook.registry, &progress.outputs)
                        .map_err(|why| preconditions(&step, why, &progress, self.services.run));
                    let shared = shared.clone();
                    running.spawn(async move {
                        let outputs = run_step(&shared, &step.id, &step.title, typed, first, in_doubt).await;
                        (step.id, outputs)
                    });
                }
            }
            if running.is_empty() {
                break;
            }
            tokio::select! {
                () = &mut cancel => {
                    running.abort_all();
                    while running.join_next().await.is_some() {}
                    return RunState::Interrupted;
                }
                Some(joined) = running.join_next() => {
                    let (id, ended) = match joined {
                        Ok(result) => result,
                        Err(e) if e.is_cancelled() => continue,
                        Err(e) => std::panic::resume_unwind(e.into_panic()),
                    };
                    match ended {
                        Ended::Done(outputs) => {
                            frontier.finish(&id);
                            progress.outputs.insert(id.clone(), outputs);
                            progress.finished.insert(id);
                        }
                        Ended::AwaitingApproval => {
                            awaiting.insert(id.clone());
                            failed.insert(id);
                        }
                        Ended::Failed => {
                            failed.insert(id);
                        }
                    }
                }
            }
        }

        self.settle(&progress.finished, &failed, &awaiting).await
    }

    /// Once nothing runs: each step that did not run is recorded as blocked (by the failed
    /// steps it needs, or by the state DB), and the run's state is judged.
    async fn settle(
        &self,
        finished: &BTreeSet<String>,
        failed: &BTreeSet<String>,
        awaiting: &BTreeSet<String>,
    ) -> RunState {
        let graph = &self.runbook.graph;
        for id in graph.topological() {
            if finished.contains(&id) || failed.contains(&id) {
                continue;
            }
            let by = graph.upstream(&id).into_iter().filter(|u| failed.contains(u)).collect::<Vec<_>>();
            let by = if by.is_empty() { "the state DB".to_string() } else { by.join(", ") };
            self.recorder.emit(Event::StepBlocked { step: id, by }).await;
        }
        let written = self.recorder.write_error().is_none();
        if failed.is_empty() && written && finished.len() == self.runbook.steps.len() {
            RunState::Done
        } else if !awaiting.is_empty() && awaiting.len() == failed.len() && written {
            // Every stop is an approval: the run waits for an operator, nothing is broken.
            RunState::AwaitingApproval
        } else {
            RunState::Failed
        }
    }
}

/// How one step's attempts ended.
enum Ended {
    Done(Outputs),
    /// The apply needs an approval nobody gave.
    AwaitingApproval,
    Failed,
}

/// One step, through as many attempts as retryable errors allow. `Some(outputs)` when done.
async fn run_step(
    shared: &Shared,
    id: &str,
    title: &str,
    typed: Result<Box<dyn AnyStep>, (String, String)>,
    first_attempt: u32,
    in_doubt: bool,
) -> Ended {
    let mut attempt = first_attempt;
    let mut delay = shared.retry.first_delay;
    loop {
        let cx = StepContext::new(&shared.services, id, attempt, shared.recorder.clone())
            .followed_by(shared.then.get(id).cloned().unwrap_or_default());
        let started = Instant::now();
        shared
            .recorder
            .emit(Event::StepStarted {
                step: id.to_string(),
                attempt,
                title: title.to_string(),
                in_doubt: in_doubt && attempt == first_attempt,
            })
            .await;
        let result = match &typed {
            Ok(step) => one_attempt(&cx, step.as_ref(), in_doubt).await,
            // Preconditions: the inputs from upstream steps are missing or do not type-check.
            Err((message, fix)) => Err(StepError::fatal(message.clone(), fix.clone())),
        };
        let elapsed = started.elapsed().as_millis() as u64;
        match result {
            Ok((outcome, outputs)) => {
                shared
                    .recorder
                    .emit(Event::StepDone {
                        step: id.to_string(),
                        attempt,
                        outcome,
                        outputs: outputs.clone(),
                        duration_ms: elapsed,
                        warnings: cx.warnings(),
                    })
                    .await;
                return Ended::Done(outputs);
            }
            Err(StepError::Retryable { message }) if attempt - first_attempt + 1 < shared.retry.max_attempts => {
                shared
                    .recorder
                    .emit(Event::StepRetrying {
                        step: id.to_string(),
                        attempt,
                        error: message,
                        delay_ms: delay.as_millis() as u64,
                    })
                    .await;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(shared.retry.max_delay);
                attempt += 1;
            }
            Err(e) => {
                let ended = if matches!(e, StepError::AwaitingApproval { .. }) {
                    Ended::AwaitingApproval
                } else {
                    Ended::Failed
                };
                let (error, fix) = recorded_failure(e, id, shared);
                shared
                    .recorder
                    .emit(Event::StepFailed { step: id.to_string(), attempt, error, fix, duration_ms: elapsed })
                    .await;
                return ended;
            }
        }
    }
}

/// What a step's last error is recorded as: its message and the fix an operator is given.
fn recorded_failure(e: StepError, id: &str, shared: &Shared) -> (String, Option<String>) {
    let run = shared.services.run;
    match e {
        StepError::Retryable { message } => (
            format!("{message} (gave up after {} attempts)", shared.retry.max_attempts),
            Some(format!("once the cause is fixed: {}", crate::hint::retry(id, run))),
        ),
        StepError::Fatal { message, fix } => (message, fix),
        StepError::AwaitingApproval { summary, fix } => {
            (format!("awaiting approval: {summary}"), fix.or_else(|| Some(approval_fix(id, run))))
        }
    }
}

/// Why `step` cannot start (`why`: its inputs are missing or do not type-check), and what to
/// do: a skipped step it reads outputs of is named, with the command that runs it after all.
fn preconditions(step: &Step, why: String, progress: &Progress, run: Option<i64>) -> (String, String) {
    let skipped: Vec<String> = step
        .input_steps()
        .into_iter()
        .filter(|s| progress.skipped.contains(s) && !progress.outputs.contains_key(s))
        .collect();
    if skipped.is_empty() {
        let status = crate::hint::status(run);
        return (format!("preconditions: {why}"), format!("finish or retry the steps it needs first ({status})"));
    }
    let (names, verb) = (skipped.join(", "), if skipped.len() == 1 { "was" } else { "were" });
    let retries: Vec<String> = skipped.iter().map(|s| crate::hint::retry(s, run)).collect();
    (
        format!("preconditions: {why}; {names} {verb} skipped, and a skipped step has no outputs"),
        format!(
            "run what was skipped after all (this undoes the skip; {} follows): {}",
            step.id,
            retries.join(", then ")
        ),
    )
}

/// What to do about a change that waits for approval: it was printed with the step's failure
/// (and posted); `logs` shows it again; `resume --yes` applies it, asking again if it changed.
fn approval_fix(step: &str, run: Option<i64>) -> String {
    let apply = run.map(crate::hint::resume_approving).unwrap_or_else(|| "runbook resume --yes".into());
    format!("the change is listed above (again: {}); to apply it: {apply}", crate::hint::logs(step, run))
}

/// One attempt of the step contract. A step `in_doubt` (its process died after the intent) that
/// the probe finds satisfied must still pass its verify before it counts: the probe alone
/// cannot tell a finished apply from one that stopped half-way.
async fn one_attempt(
    cx: &StepContext,
    step: &dyn AnyStep,
    in_doubt: bool,
) -> Result<(DoneOutcome, Outputs), StepError> {
    match probe_and_report(cx, step).await? {
        Probe::Satisfied(outputs) if !in_doubt => Ok((DoneOutcome::Satisfied, outputs)),
        Probe::Satisfied(_) => Ok((DoneOutcome::Satisfied, converge(cx, step).await?)),
        Probe::Conflict(why) => Err(conflict(cx, why)),
        Probe::Absent(what) => {
            cx.recorder.emit(Event::StepIntent { step: cx.step.clone(), attempt: cx.attempt, action: what }).await;
            if let Some(error) = cx.recorder.write_error() {
                let status = crate::hint::status(cx.run());
                let resume = cx.run().map(crate::hint::resume).unwrap_or_else(|| "runbook resume".into());
                return Err(StepError::fatal(
                    format!("cannot record the intent, so nothing was applied: {error}"),
                    format!(
                        "fix the cause (the state DB's disk or permissions, or who holds the run lock: {status}), \
                         then: {resume}"
                    ),
                ));
            }
            cx.checkpoint("intent");
            step.apply(cx).await?;
            cx.checkpoint("applied");
            let outputs = converge(cx, step).await?;
            Ok((DoneOutcome::Applied, outputs))
        }
    }
}

async fn probe_and_report(cx: &StepContext, step: &dyn AnyStep) -> Result<Probe, StepError> {
    let probe = step.probe(cx).await?;
    let (result, detail) = match &probe {
        Probe::Satisfied(_) => (ProbeResult::Satisfied, "already in the desired state".to_string()),
        Probe::Absent(what) => (ProbeResult::Absent, what.clone()),
        Probe::Conflict(why) => (ProbeResult::Conflict, why.clone()),
    };
    cx.recorder.emit(Event::StepProbed { step: cx.step.clone(), attempt: cx.attempt, result, detail }).await;
    Ok(probe)
}

fn conflict(cx: &StepContext, why: String) -> StepError {
    StepError::fatal(
        format!("conflict: {why}"),
        format!("resolve the difference by hand or change the runbook, then: {}", cx.retry_hint()),
    )
}

/// The verify: until it is satisfied, bounded, with progress.
async fn converge(cx: &StepContext, step: &dyn AnyStep) -> Result<Outputs, StepError> {
    let limit = step.converge_within();
    let started = Instant::now();
    // Short first pauses: most things converge in about a second (a task restart).
    let mut pause = Duration::from_millis(200);
    loop {
        let still = match step.verify(cx).await {
            Ok(Probe::Satisfied(outputs)) => {
                cx.recorder
                    .emit(Event::StepProbed {
                        step: cx.step.clone(),
                        attempt: cx.attempt,
                        result: ProbeResult::Satisfied,
                        detail: "verified".into(),
                    })
                    .await;
                return Ok(outputs);
            }
            Ok(Probe::Conflict(why)) => return Err(conflict(cx, why)),
            Ok(Probe::Absent(what)) => what,
            Err(StepError::Retryable { message }) => message,
            Err(e) => return Err(e),
        };
        let elapsed = started.elapsed();
        if elapsed >= limit {
            return Err(StepError::fatal(
                format!("applied, but not converged within {}s: still {still}", limit.as_secs()),
                format!("look at what is missing, then: {}", cx.retry_hint()),
            ));
        }
        cx.recorder
            .emit(Event::StepWaiting {
                step: cx.step.clone(),
                attempt: cx.attempt,
                what: still,
                elapsed_ms: elapsed.as_millis() as u64,
                limit_ms: limit.as_millis() as u64,
            })
            .await;
        tokio::time::sleep(pause.min(limit - elapsed)).await;
        pause = (pause * 3 / 2).min(Duration::from_secs(2));
    }
}

/// A step's preflight refused its inputs: nothing ran and no run is recorded.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) step: String,
    pub(crate) kind: String,
    pub(crate) error: StepError,
}

/// Every preflight of the steps that will run (`will_run`), read-only, in dependency order,
/// before any of them applies. Params are typed with the outputs already recorded (a resume),
/// or with [`crate::steps::UPSTREAM`] where an upstream step has not run yet.
pub(crate) async fn preflight(
    runbook: &Runbook,
    services: Arc<Services>,
    outputs: &BTreeMap<String, Outputs>,
    will_run: impl Fn(&str) -> bool,
) -> Result<(), Refusal> {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let recorder = Recorder::new(None, tx);
    for id in runbook.graph.topological().into_iter().filter(|id| will_run(id)) {
        let step = runbook.step(&id).expect("topological ids are steps");
        let refuse = |error| Refusal { step: id.clone(), kind: step.kind.clone(), error };
        let typed = step.typed(runbook.registry, outputs).map_or_else(|_| step.without_inputs(), Arc::from);
        let cx = StepContext::new(&services, &id, 0, recorder.clone());
        typed.preflight(&cx).await.map_err(refuse)?;
    }
    Ok(())
}

/// What `plan` found for a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PlanVerdict {
    Satisfied,
    WouldApply,
    Conflict,
    /// Its inputs come from steps that have not run.
    AfterUpstream,
    Error,
}

impl PlanVerdict {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PlanVerdict::Satisfied => "satisfied",
            PlanVerdict::WouldApply => "would_apply",
            PlanVerdict::Conflict => "conflict",
            PlanVerdict::AfterUpstream => "after_upstream",
            PlanVerdict::Error => "error",
        }
    }
}

/// One line of `runbook plan`.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct PlanLine {
    pub(crate) step: String,
    pub(crate) title: String,
    pub(crate) verdict: PlanVerdict,
    pub(crate) detail: String,
}

/// Runs every probe that can run, read-only, in dependency order.
pub(crate) async fn plan(runbook: &Runbook, services: Arc<Services>, recorder: Recorder) -> Vec<PlanLine> {
    let mut outputs: BTreeMap<String, Outputs> = BTreeMap::new();
    let mut lines = Vec::new();
    for id in runbook.graph.topological() {
        let step = runbook.step(&id).expect("topological ids are steps");
        let cx = StepContext::new(&services, &id, 0, recorder.clone());
        let (verdict, detail) = match step.typed(runbook.registry, &outputs) {
            Err(e) => {
                let waiting: Vec<String> = step.needs.iter().filter(|n| !outputs.contains_key(*n)).cloned().collect();
                match waiting.as_slice() {
                    // Its inputs are there, yet it cannot be typed: say why, never "would act".
                    [] => (PlanVerdict::Error, e.to_string()),
                    [one] => (PlanVerdict::AfterUpstream, format!("probed once {one} has run")),
                    many => (PlanVerdict::AfterUpstream, format!("probed once {} have run", many.join(", "))),
                }
            }
            Ok(typed) => match typed.probe(&cx).await {
                Ok(Probe::Satisfied(o)) => {
                    outputs.insert(id.clone(), o);
                    (PlanVerdict::Satisfied, "nothing to do".to_string())
                }
                Ok(Probe::Absent(what)) => (PlanVerdict::WouldApply, what),
                Ok(Probe::Conflict(why)) => (PlanVerdict::Conflict, why),
                Err(e) => (PlanVerdict::Error, e.to_string()),
            },
        };
        lines.push(PlanLine { step: id, title: step.title.clone(), verdict, detail });
    }
    lines
}

/// `runbook diagnose`: every check of `runbook` at once, read-only: no run lock, nothing
/// recorded, and the checks' log lines go nowhere (the findings are the output). Its steps must
/// all be read-only checks; the findings come in the runbook's order.
pub(crate) async fn diagnose(runbook: &Runbook, services: Arc<Services>) -> Result<Vec<Finding>, String> {
    let is_check = |step: &Step| crate::steps::find(runbook.registry, &step.kind).is_some_and(|k| k.check);
    if let Some(step) = runbook.steps.iter().find(|s| !is_check(s)) {
        return Err(format!(
            "step {} is of kind {}: runbook diagnose runs only read-only checks (kind = \"diagnose\")",
            step.id, step.kind
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut running = JoinSet::new();
    for (i, step) in runbook.steps.iter().enumerate() {
        let cx = StepContext::new(&services, &step.id, 0, Recorder::new(None, tx.clone()));
        let check = step.without_inputs();
        running.spawn(async move { (i, check.examine(&cx).await) });
    }
    drop(tx);
    let mut found = Vec::new();
    while let Some(done) = running.join_next().await {
        found.push(done.map_err(|e| format!("a check stopped: {e}"))?);
    }
    drop(rx);
    found.sort_by_key(|(i, _)| *i);
    Ok(found.into_iter().flat_map(|(_, f)| f).collect())
}

#[cfg(test)]
mod bench;
#[cfg(test)]
mod tests;
