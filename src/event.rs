//! The events a run emits. One stream feeds the state DB (the record of truth), the progress
//! display, plain log lines and `--json`. Events carry no secrets: outputs are plain strings
//! and `Secret<T>` has no `Serialize`.

use std::collections::BTreeMap;

use serde::Serialize;

pub(crate) type Outputs = BTreeMap<String, String>;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum Event {
    RunStarted {
        run: i64,
        runbook: String,
        env: String,
        operator: String,
        host: String,
        resumed: bool,
    },
    /// Written when a runbook file or its inputs changed since the run began.
    InputsChanged {
        what: String,
    },
    StepStarted {
        step: String,
        attempt: u32,
        title: String,
        in_doubt: bool,
    },
    StepProbed {
        step: String,
        attempt: u32,
        result: ProbeResult,
        detail: String,
    },
    /// Written before the side effect: on resume, intent without an outcome means in doubt.
    StepIntent {
        step: String,
        attempt: u32,
        action: String,
    },
    StepLog {
        step: String,
        attempt: u32,
        line: String,
    },
    /// Progress of a bounded wait; shown, not stored.
    StepWaiting {
        step: String,
        attempt: u32,
        what: String,
        elapsed_ms: u64,
        limit_ms: u64,
    },
    StepRetrying {
        step: String,
        attempt: u32,
        error: String,
        delay_ms: u64,
    },
    /// A change waits for the operator's yes on the terminal.
    ApprovalRequested {
        step: String,
        summary: String,
    },
    /// The answer to a change that needed approval: who, how, and the summary they saw.
    ApprovalAnswered {
        step: String,
        summary: String,
        operator: String,
        /// The operator's host (absent from payloads recorded before it was kept).
        host: String,
        via: String,
        approved: bool,
    },
    StepDone {
        step: String,
        attempt: u32,
        outcome: DoneOutcome,
        outputs: Outputs,
        duration_ms: u64,
        /// What the step's policy tolerated (a component it may do without), said, not failed.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
    },
    StepFailed {
        step: String,
        attempt: u32,
        error: String,
        fix: Option<String>,
        duration_ms: u64,
    },
    StepBlocked {
        step: String,
        by: String,
    },
    StepSkipped {
        step: String,
        reason: String,
        operator: String,
        host: String,
    },
    StepReset {
        step: String,
        reason: String,
        operator: String,
        host: String,
    },
    LockTakenOver {
        previous_host: String,
        previous_pid: i64,
        /// Who took it over, from where.
        operator: String,
        host: String,
    },
    LockBroken {
        previous_host: String,
        previous_pid: i64,
        operator: String,
        host: String,
    },
    /// An operator released a lock a step's tool left (terraform's state lock).
    StateLockReleased {
        step: String,
        lock_id: String,
        operator: String,
        host: String,
    },
    /// A rollback step put a service back on an earlier task definition, and marked the service
    /// so that a later plan that undoes it names it.
    RollbackMarked {
        step: String,
        service: String,
        from_revision: String,
        to_revision: String,
        operator: String,
        host: String,
        /// 002's emergency variant: scaled to 0 tasks, then back up (on the same revision when
        /// `from_revision` is `to_revision`: a restart, not a rollback). Absent in older rows.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        emergency: bool,
        /// The task count it comes back to (the emergency variant).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        desired: Option<i32>,
    },
    /// An operator let a plan undo a rollback (`--ack-rollback RUN`).
    RollbackAcknowledged {
        step: String,
        rollback_run: i64,
        service: String,
        summary: String,
        operator: String,
        host: String,
    },
    RunFinished {
        run: i64,
        status: RunState,
        duration_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ProbeResult {
    Satisfied,
    Absent,
    Conflict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DoneOutcome {
    /// The desired state was already true; nothing was changed.
    Satisfied,
    /// The step acted and verified.
    Applied,
}

/// Defines a state enum stored as text: its SQL spelling, parsing it back, and `--json`.
macro_rules! text_states {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub(crate) enum $name {
            $($(#[$vmeta])* $variant),*
        }

        impl $name {
            #[cfg(test)]
            pub(crate) const ALL: &'static [$name] = &[$($name::$variant),*];

            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),*
                }
            }

            pub(crate) fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)*
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_states! {
    /// Where a run is. `running` with a dead holder is shown as `died` by `status`.
    RunState {
        Running = "running",
        Done = "done",
        Failed = "failed",
        Interrupted = "interrupted",
        /// Stopped before an apply that needs an approval nobody gave; nothing failed.
        AwaitingApproval = "awaiting_approval",
        /// Recorded as running, but no live process holds its lock (kill -9, power cut).
        Died = "died",
    }
}

text_states! {
    /// Where a step of a run is.
    StepState {
        Pending = "pending",
        Running = "running",
        Applied = "applied",
        Satisfied = "satisfied",
        Skipped = "skipped",
        Failed = "failed",
        Blocked = "blocked",
    }
}

impl RunState {
    /// Ended at a step that did not finish: one failed, or one waits for an approval.
    pub(crate) fn stopped_at_a_step(self) -> bool {
        matches!(self, RunState::Failed | RunState::AwaitingApproval)
    }
}

impl StepState {
    /// Done for the run: not run again on resume.
    pub(crate) fn is_finished(self) -> bool {
        matches!(self, StepState::Applied | StepState::Satisfied | StepState::Skipped)
    }
}

impl Event {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Event::RunStarted { .. } => "run_started",
            Event::InputsChanged { .. } => "inputs_changed",
            Event::StepStarted { .. } => "step_started",
            Event::StepProbed { .. } => "step_probed",
            Event::StepIntent { .. } => "step_intent",
            Event::StepLog { .. } => "step_log",
            Event::StepWaiting { .. } => "step_waiting",
            Event::StepRetrying { .. } => "step_retrying",
            Event::ApprovalRequested { .. } => "approval_requested",
            Event::ApprovalAnswered { .. } => "approval_answered",
            Event::StepDone { .. } => "step_done",
            Event::StepFailed { .. } => "step_failed",
            Event::StepBlocked { .. } => "step_blocked",
            Event::StepSkipped { .. } => "step_skipped",
            Event::StepReset { .. } => "step_reset",
            Event::LockTakenOver { .. } => "lock_taken_over",
            Event::LockBroken { .. } => "lock_broken",
            Event::StateLockReleased { .. } => "state_lock_released",
            Event::RollbackMarked { .. } => "rollback_marked",
            Event::RollbackAcknowledged { .. } => "rollback_acknowledged",
            Event::RunFinished { .. } => "run_finished",
        }
    }

    pub(crate) fn step(&self) -> Option<&str> {
        match self {
            Event::StepStarted { step, .. }
            | Event::StepProbed { step, .. }
            | Event::StepIntent { step, .. }
            | Event::StepLog { step, .. }
            | Event::StepWaiting { step, .. }
            | Event::StepRetrying { step, .. }
            | Event::ApprovalRequested { step, .. }
            | Event::ApprovalAnswered { step, .. }
            | Event::StepDone { step, .. }
            | Event::StepFailed { step, .. }
            | Event::StepBlocked { step, .. }
            | Event::StepSkipped { step, .. }
            | Event::StepReset { step, .. }
            | Event::StateLockReleased { step, .. }
            | Event::RollbackMarked { step, .. }
            | Event::RollbackAcknowledged { step, .. } => Some(step),
            _ => None,
        }
    }

    /// Progress ticks are shown but not kept: the DB keeps transitions.
    pub(crate) fn is_ephemeral(&self) -> bool {
        matches!(self, Event::StepWaiting { .. })
    }

    /// Committed before the engine goes on. The others (a step starting, a probe's answer, a
    /// log line) may be group-committed: a crash loses at most the last few milliseconds of
    /// them, never an intent or an outcome.
    pub(crate) fn is_durable(&self) -> bool {
        !matches!(
            self,
            Event::StepStarted { .. }
                | Event::StepProbed { .. }
                | Event::StepLog { .. }
                | Event::StepWaiting { .. }
                | Event::ApprovalRequested { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_back_what_they_write() {
        for state in RunState::ALL {
            assert_eq!(RunState::parse(state.as_str()), Some(*state));
        }
        for state in StepState::ALL {
            assert_eq!(StepState::parse(state.as_str()), Some(*state));
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        assert_eq!(StepState::parse("done-ish"), None);
        let finished: Vec<&str> = StepState::ALL.iter().filter(|s| s.is_finished()).map(|s| s.as_str()).collect();
        assert_eq!(finished, ["applied", "satisfied", "skipped"]);
    }

    #[test]
    fn only_intents_and_outcomes_and_decisions_wait_for_the_disk() {
        let step = || "T2.1".to_string();
        assert!(Event::StepIntent { step: step(), attempt: 1, action: "a".into() }.is_durable());
        assert!(
            Event::StepFailed { step: step(), attempt: 1, error: "e".into(), fix: None, duration_ms: 0 }.is_durable()
        );
        assert!(!Event::StepLog { step: step(), attempt: 1, line: "l".into() }.is_durable());
        assert!(!Event::StepStarted { step: step(), attempt: 1, title: "t".into(), in_doubt: false }.is_durable());
    }
}
