//! Renders the event stream: progress bars on a terminal, timestamped lines otherwise, NDJSON
//! with `--json`. The only module that touches `indicatif`; it never writes state.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;

use crate::clock::{format_duration, format_utc, format_utc_ms, now_ms};
use crate::event::{DoneOutcome, Event, ProbeResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Tty,
    Plain,
    Json,
}

impl Mode {
    pub(crate) fn detect(json: bool) -> Self {
        use std::io::IsTerminal;
        if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            Mode::Tty
        } else {
            Mode::Plain
        }
    }
}

pub(crate) fn spawn(mode: Mode, mut events: UnboundedReceiver<Event>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tty = (mode == Mode::Tty).then(Bars::default);
        let mut plain = Plain::default();
        while let Some(event) = events.recv().await {
            match mode {
                Mode::Json => {
                    let mut value = serde_json::to_value(&event).unwrap_or_default();
                    if let Some(map) = value.as_object_mut() {
                        map.insert("at".into(), serde_json::Value::from(format_utc_ms(now_ms())));
                    }
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{value}");
                }
                Mode::Plain => {
                    if let Some(line) = plain.line(&event, std::time::Instant::now()) {
                        eprintln!("{} {}", format_utc(now_ms()), crate::text::printable(&line));
                    }
                }
                Mode::Tty => tty.as_mut().expect("tty mode has bars").show(&event),
            }
        }
        if let Some(bars) = tty {
            bars.finish();
        }
    })
}

/// One human line for an event, or `None` for progress ticks.
fn describe(event: &Event) -> Option<String> {
    Some(match event {
        Event::RunStarted { run, runbook, env, operator, host, resumed } => format!(
            "run {run}: {} {runbook} on {env} as {operator}@{host}",
            if *resumed { "resuming" } else { "starting" }
        ),
        Event::InputsChanged { what } => format!("note: {what}"),
        Event::StepStarted { step, attempt, title, in_doubt } => {
            let doubt = if *in_doubt { " (in doubt after an interruption: settling by its probe)" } else { "" };
            format!("{step} {title}: attempt {attempt}{doubt}")
        }
        Event::StepProbed { step, result, detail, .. } => match result {
            ProbeResult::Satisfied => format!("{step} probe: {detail}"),
            ProbeResult::Absent => format!("{step} probe: will apply: {detail}"),
            ProbeResult::Conflict => format!("{step} probe: CONFLICT: {detail}"),
        },
        Event::StepIntent { step, attempt, .. } => format!("{step} applying (attempt {attempt}, intent recorded)"),
        Event::StepLog { step, line, .. } => format!("{step} | {line}"),
        Event::StepWaiting { .. } => return None,
        Event::ApprovalRequested { step, summary } => {
            format!(
                "{step} needs approval: {summary}\n    type yes to apply, anything else to stop (the run stays resumable): "
            )
        }
        Event::ApprovalAnswered { step, summary, operator, via, approved: true, .. } => {
            format!("{step} approved by {via} ({operator}): {summary}")
        }
        Event::ApprovalAnswered { step, summary, operator, via, approved: false, .. } => {
            format!("{step} not approved by {operator} at {via}: {summary}")
        }
        Event::StepRetrying { step, error, delay_ms, .. } => {
            format!("{step} retryable error, again in {}: {error}", format_duration(*delay_ms as i64))
        }
        Event::StepDone { step, outcome, duration_ms, warnings, .. } => {
            let what = match outcome {
                DoneOutcome::Satisfied => "already satisfied",
                DoneOutcome::Applied => "applied and verified",
            };
            // Each warning was logged as it was seen; the count says it is kept.
            let warned = match warnings.len() {
                0 => String::new(),
                1 => ", 1 warning".into(),
                n => format!(", {n} warnings"),
            };
            format!("{step} ok: {what} ({}{warned})", format_duration(*duration_ms as i64))
        }
        Event::StepFailed { step, error, fix, .. } => match fix {
            Some(fix) => format!("{step} FAILED: {error}\n    fix: {fix}"),
            None => format!("{step} FAILED: {error}"),
        },
        Event::StepBlocked { step, by } => format!("{step} not started: waits for {by}"),
        Event::StepSkipped { step, reason, operator, .. } => format!("{step} skipped by {operator}: {reason}"),
        Event::StepReset { step, reason, operator, .. } => format!("{step} reset by {operator}: {reason}"),
        Event::LockTakenOver { .. }
        | Event::LockBroken { .. }
        | Event::StateLockReleased { .. }
        | Event::RollbackMarked { .. }
        | Event::RollbackAcknowledged { .. } => decision(event)?,
        Event::SmokeRound { .. } | Event::WaitStarted { .. } => kept_by_its_step(event)?,
        Event::RunFinished { run, status, duration_ms } => {
            format!("run {run} {} in {}", status.as_str(), format_duration(*duration_ms as i64))
        }
    })
}

/// An operator's decision on the record: a lock taken over, broken or released, a rollback.
fn decision(event: &Event) -> Option<String> {
    Some(match event {
        Event::LockTakenOver { previous_host, previous_pid, .. } => {
            format!("took over the run lock of dead process {previous_pid} on {previous_host}")
        }
        Event::LockBroken { previous_host, previous_pid, operator, .. } => {
            format!("{operator} broke the run lock held by {previous_pid} on {previous_host}")
        }
        Event::StateLockReleased { step, lock_id, operator, .. } => {
            format!("{operator} released the state lock {lock_id} of {step}")
        }
        Event::RollbackMarked { step, service, from_revision, to_revision, operator, emergency: false, .. } => {
            format!("{step}: {operator} rolls {service} back from revision {from_revision} to {to_revision}")
        }
        Event::RollbackMarked { step, service, from_revision, to_revision, operator, desired, .. } => {
            let back = desired.map(|d| d.to_string()).unwrap_or_else(|| "?".into());
            if from_revision == to_revision {
                format!(
                    "{step}: {operator} restarts {service} at revision {to_revision} (emergency: 0 tasks, then {back})"
                )
            } else {
                format!(
                    "{step}: {operator} rolls {service} back from revision {from_revision} to {to_revision} \
                     (emergency: 0 tasks, then {back})"
                )
            }
        }
        Event::RollbackAcknowledged { step, rollback_run, service, operator, .. } => {
            format!("{step}: {operator} acknowledged undoing the rollback of {service} by run {rollback_run}")
        }
        _ => return None,
    })
}

/// What a step keeps on the record for its own resume: a smoke round, a wait's deadline.
fn kept_by_its_step(event: &Event) -> Option<String> {
    Some(match event {
        Event::SmokeRound { step, round, green, streak, consecutive, checks, .. } => {
            let failed: Vec<String> = checks
                .iter()
                .filter(|c| !c.pass)
                .map(|c| format!("{} {}.{}", c.class.as_str(), c.suite, c.check))
                .collect();
            let failed = if failed.is_empty() { String::new() } else { format!("; failed: {}", failed.join(", ")) };
            let verdict = if *green { "green" } else { "RED" };
            format!("{step} smoke round {round}: {verdict} ({streak} of {consecutive} green rounds){failed}")
        }
        Event::WaitStarted { step, until_ms, seconds, why, then, .. } => {
            format!(
                "{step} waits {} for {why}: {}",
                format_duration(*seconds as i64 * 1000),
                crate::clock::until(*until_ms, None, then)
            )
        }
        _ => return None,
    })
}

/// How often a wait says that it is still waiting when no terminal shows a progress bar.
const WAITING_EVERY: Duration = Duration::from_secs(10);

/// The lines of a run without a terminal: every event `describe` has a line for and, while a
/// step waits, a line at least every [`WAITING_EVERY`] (a CI log or `tee` shows progress).
#[derive(Default)]
struct Plain {
    /// When each step last printed a line.
    last: BTreeMap<String, std::time::Instant>,
}

impl Plain {
    fn line(&mut self, event: &Event, now: std::time::Instant) -> Option<String> {
        let Event::StepWaiting { step, what, elapsed_ms, limit_ms, .. } = event else {
            if let Some(step) = event.step() {
                self.last.insert(step.to_string(), now);
            }
            return describe(event);
        };
        if self.last.get(step).is_some_and(|at| now.duration_since(*at) < WAITING_EVERY) {
            return None;
        }
        self.last.insert(step.clone(), now);
        Some(format!("{step} {}", waiting(what, *elapsed_ms, *limit_ms)))
    }
}

/// A wait as the terminal and the plain lines show it: `waiting 12.0s/2m00s: what`, or just
/// what is happening when the step set no limit.
fn waiting(what: &str, elapsed_ms: u64, limit_ms: u64) -> String {
    match limit_ms {
        0 => what.to_string(),
        _ => format!("waiting {}/{}: {what}", format_duration(elapsed_ms as i64), format_duration(limit_ms as i64)),
    }
}

#[derive(Default)]
struct Bars {
    multi: MultiProgress,
    bars: BTreeMap<String, ProgressBar>,
    asking: bool,
}

impl Bars {
    fn bar(&mut self, step: &str) -> &ProgressBar {
        let multi = &self.multi;
        self.bars.entry(step.to_string()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:<6} [{elapsed:>4}] {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(step.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        })
    }

    fn show(&mut self, event: &Event) {
        if self.asking && !matches!(event, Event::ApprovalRequested { .. }) {
            self.asking = false;
            self.multi.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        match event {
            Event::StepStarted { step, title, .. } => self.bar(step).set_message(format!("{title}: probing")),
            Event::StepIntent { step, .. } => self.bar(step).set_message("applying"),
            Event::StepWaiting { step, what, elapsed_ms, limit_ms, .. } => {
                self.bar(step).set_message(waiting(what, *elapsed_ms, *limit_ms))
            }
            Event::ApprovalRequested { .. } => {
                // Stop drawing so that the question stays readable until the answer.
                self.multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
                eprint!("{}", crate::text::printable(&describe(event).unwrap_or_default()));
                self.asking = true;
            }
            Event::StepDone { step, .. } | Event::StepFailed { step, .. } => {
                let line = describe(event).unwrap_or_default();
                let bar = self.bar(step).clone();
                bar.finish_and_clear();
                let _ = self.multi.println(crate::text::printable(&line));
            }
            other => {
                if let Some(line) = describe(other) {
                    let _ = self.multi.println(crate::text::printable(&line));
                }
            }
        }
    }

    fn finish(self) {
        for bar in self.bars.values() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(elapsed_s: u64) -> Event {
        Event::StepWaiting {
            step: "T3.3".into(),
            attempt: 1,
            what: "finn latency median 61 ms".into(),
            elapsed_ms: elapsed_s * 1000,
            limit_ms: 120_000,
        }
    }

    /// Without a terminal, a 120 s wait that ticks every 2 s prints a line at least every 10 s.
    #[test]
    fn a_long_wait_prints_a_line_at_least_every_ten_seconds_without_a_terminal() {
        let mut plain = Plain::default();
        let start = std::time::Instant::now();
        let started = Event::StepStarted { step: "T3.3".into(), attempt: 1, title: "Redeploy".into(), in_doubt: false };
        assert!(plain.line(&started, start).is_some());
        let mut printed = Vec::new();
        for tick in (2..=120).step_by(2) {
            if let Some(line) = plain.line(&waiting(tick), start + Duration::from_secs(tick)) {
                printed.push((tick, line));
            }
        }
        let at: Vec<u64> = printed.iter().map(|(t, _)| *t).collect();
        assert_eq!(at, [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120]);
        assert_eq!(printed[0].1, "T3.3 waiting 10.0s/2m00s: finn latency median 61 ms");
        let gaps = at.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(gaps <= 10, "a gap of {gaps} s");
    }
}
