//! `runbook status`: a run's steps with state, attempts, duration, last error, and what the
//! operator should do next. Reads the state DB only; `render` turns it into text.

use serde::Serialize;

use crate::event::{RunState, StepState};
use crate::hint;
use crate::state::{RunRow, StateDb, StateError, StepRow};

#[derive(Debug, Serialize)]
pub(crate) struct StatusView {
    pub(crate) run: RunRow,
    pub(crate) steps: Vec<StepView>,
    /// The one thing to do next, as a command or a sentence.
    pub(crate) next: String,
    /// Who holds the run lock while the run is live (on this host or another).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) lock: Option<LockView>,
}

/// The live holder of a run's lease, as `status` shows it to a colleague.
#[derive(Debug, Serialize)]
pub(crate) struct LockView {
    pub(crate) host: String,
    pub(crate) pid: i64,
    pub(crate) heartbeat_age_s: i64,
    /// Whether it holds the lock from this host (judged by its pid) or from another (judged by
    /// its heartbeat: taken over after `stale_after_s` without one).
    pub(crate) this_host: bool,
    pub(crate) stale_after_s: i64,
}

#[derive(Debug, Serialize)]
pub(crate) struct StepView {
    #[serde(flatten)]
    pub(crate) row: StepRow,
    pub(crate) next: Option<String>,
    /// Non-secret outputs (T2.8's are its table of checks).
    pub(crate) outputs: crate::event::Outputs,
    /// A smoke gate's standing from its recorded rounds: "2 of 3 green rounds after 4 rounds".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) gate: Option<String>,
    /// A durable wait not over yet: its recorded deadline, judged by the state's clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) wait: Option<WaitView>,
}

/// A step waiting for a recorded deadline (or stopped while it waited).
#[derive(Debug, Serialize)]
pub(crate) struct WaitView {
    /// The deadline, UTC.
    pub(crate) until: String,
    /// Seconds left by the state's clock (0 once passed: a resume goes on at once).
    pub(crate) left_s: i64,
    pub(crate) why: String,
    /// The steps that go on after it.
    pub(crate) then: Vec<String>,
    /// For people: `until 14:05:00 UTC (in 42m00s) for the JWKS caches to expire, then T4.5`.
    pub(crate) says: String,
}

pub(crate) fn view(db: &StateDb, run: Option<i64>, host: &str) -> Result<StatusView, StateError> {
    let mut run = db.run_or_latest(run)?;
    let rows = db.steps(run.id)?;
    let mut outputs = db.outputs(run.id)?;
    let running = run.status == RunState::Running;
    let active = running && db.run_is_live(run.id, host)?;
    let lock = if active {
        db.lease(host)?.map(|l| LockView {
            this_host: l.holder.host == host,
            host: l.holder.host,
            pid: l.holder.pid,
            heartbeat_age_s: l.heartbeat_age_s,
            stale_after_s: crate::state::LEASE_STALE_MS / 1000,
        })
    } else {
        None
    };
    if running && !active {
        // Its process died without recording an end (kill -9, power cut).
        run.status = RunState::Died;
    }
    let mut gates = gates(db, run.id)?;
    let mut waits = waits(db, run.id)?;
    let now = if waits.is_empty() { 0 } else { db.clock_ms()? };
    let steps: Vec<StepView> = rows
        .into_iter()
        .map(|row| {
            let outputs = outputs.remove(&row.step).unwrap_or_default();
            let gate = gates.remove(&row.step);
            let wait = waits.remove(&row.step).filter(|_| !row.state.is_finished()).map(|w| w.view(now));
            let next = match &wait {
                Some(w) if !active && row.state == StepState::Running => Some(format!(
                    "{} {}",
                    hint::resume(run.id),
                    if w.left_s > 0 { "waits only what is left" } else { "goes on at once" }
                )),
                _ => step_next(&row, run.id, active),
            };
            StepView { next, row, outputs, gate, wait }
        })
        .collect();
    let next = match run.status {
        RunState::Done => "nothing: every step is done".to_string(),
        RunState::Running => match &lock {
            Some(l) if !l.this_host => format!(
                "a run is in progress on {}; wait for it. If that machine is gone, `{}` here takes the run over \
                 once {} s pass without a heartbeat",
                l.host,
                hint::resume(run.id),
                l.stale_after_s
            ),
            _ => "a run is in progress; wait for it".into(),
        },
        RunState::Died => {
            format!("its process died: {} (settles in-doubt steps by their probes)", hint::resume(run.id))
        }
        RunState::Failed | RunState::Interrupted | RunState::AwaitingApproval => steps
            .iter()
            .find_map(|s| (s.row.state == StepState::Failed).then(|| s.next.clone()).flatten())
            .unwrap_or_else(|| hint::resume(run.id)),
    };
    Ok(StatusView { run, steps, next, lock })
}

/// Each smoke gate's standing, by step: its last recorded round since the step was reset.
fn gates(db: &StateDb, run: i64) -> Result<std::collections::BTreeMap<String, String>, StateError> {
    let mut gates = std::collections::BTreeMap::new();
    let mut rounds = std::collections::BTreeMap::new();
    for stored in db.events_by_kind(Some(run), &["smoke_round", "step_reset"])? {
        match stored.event {
            Ok(crate::event::Event::SmokeRound { step, round, streak, consecutive, .. }) => {
                let count = rounds.entry(step.clone()).or_insert(0u32);
                *count += 1;
                let plural = if *count == 1 { "round" } else { "rounds" };
                gates.insert(
                    step,
                    format!("{streak} of {consecutive} green rounds after {count} {plural} (last: round {round})"),
                );
            }
            Ok(crate::event::Event::StepReset { step, .. }) => {
                gates.remove(&step);
                rounds.remove(&step);
            }
            _ => {}
        }
    }
    Ok(gates)
}

/// A wait as recorded.
struct Waiting {
    until_ms: i64,
    why: String,
    then: Vec<String>,
}

impl Waiting {
    fn view(self, now: i64) -> WaitView {
        let mut says = format!("{} for {}", crate::clock::until(self.until_ms, Some(now), &[]), self.why);
        if !self.then.is_empty() {
            says.push_str(&format!(", then {}", self.then.join(", ")));
        }
        WaitView {
            until: crate::clock::format_utc(self.until_ms),
            left_s: ((self.until_ms - now).max(0) + 999) / 1000,
            why: self.why,
            then: self.then,
            says,
        }
    }
}

/// Each step's recorded wait, by step: its last deadline since the step was reset.
fn waits(db: &StateDb, run: i64) -> Result<std::collections::BTreeMap<String, Waiting>, StateError> {
    let mut waits = std::collections::BTreeMap::new();
    for stored in db.events_by_kind(Some(run), &["wait_started", "step_reset"])? {
        match stored.event {
            Ok(crate::event::Event::WaitStarted { step, until_ms, why, then, .. }) => {
                waits.insert(step, Waiting { until_ms, why, then });
            }
            Ok(crate::event::Event::StepReset { step, .. }) => {
                waits.remove(&step);
            }
            _ => {}
        }
    }
    Ok(waits)
}

fn step_next(row: &StepRow, run: i64, active: bool) -> Option<String> {
    match row.state {
        StepState::Failed => Some(match &row.fix {
            Some(fix) => fix.clone(),
            None => format!("fix the cause, then: {}", hint::retry(&row.step, Some(run))),
        }),
        StepState::Running if !active && row.in_doubt => {
            Some(format!("in doubt (interrupted after its intent): {} settles it by its probe", hint::resume(run)))
        }
        StepState::Running | StepState::Pending | StepState::Blocked if !active => Some(hint::resume(run)),
        _ => None,
    }
}
