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
    InputsChanged { what: String },
    StepStarted { step: String, attempt: u32, title: String, in_doubt: bool },
    StepProbed { step: String, attempt: u32, result: ProbeResult, detail: String },
    /// Written before the side effect: on resume, intent without an outcome means in doubt.
    StepIntent { step: String, attempt: u32, action: String },
    StepLog { step: String, attempt: u32, line: String },
    /// Progress of a bounded wait; shown, not stored.
    StepWaiting { step: String, attempt: u32, what: String, elapsed_ms: u64, limit_ms: u64 },
    StepRetrying { step: String, attempt: u32, error: String, delay_ms: u64 },
    /// A change waits for the operator's yes on the terminal.
    ApprovalRequested { step: String, summary: String },
    StepDone { step: String, attempt: u32, outcome: DoneOutcome, outputs: Outputs, duration_ms: u64 },
    StepFailed { step: String, attempt: u32, error: String, fix: Option<String>, duration_ms: u64 },
    StepBlocked { step: String, by: String },
    StepSkipped { step: String, reason: String, operator: String },
    StepReset { step: String, reason: String, operator: String },
    LockTakenOver { previous_host: String, previous_pid: i64 },
    LockBroken { previous_host: String, previous_pid: i64, operator: String },
    RunFinished { run: i64, status: RunStatus, duration_ms: u64 },
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RunStatus {
    Done,
    Failed,
    Interrupted,
}

impl RunStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RunStatus::Done => "done",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        }
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
            Event::StepDone { .. } => "step_done",
            Event::StepFailed { .. } => "step_failed",
            Event::StepBlocked { .. } => "step_blocked",
            Event::StepSkipped { .. } => "step_skipped",
            Event::StepReset { .. } => "step_reset",
            Event::LockTakenOver { .. } => "lock_taken_over",
            Event::LockBroken { .. } => "lock_broken",
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
            | Event::StepDone { step, .. }
            | Event::StepFailed { step, .. }
            | Event::StepBlocked { step, .. }
            | Event::StepSkipped { step, .. }
            | Event::StepReset { step, .. } => Some(step),
            _ => None,
        }
    }

    /// Progress ticks are shown but not kept: the DB keeps transitions.
    pub(crate) fn is_ephemeral(&self) -> bool {
        matches!(self, Event::StepWaiting { .. })
    }
}
