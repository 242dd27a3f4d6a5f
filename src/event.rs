//! The events a run emits. One stream feeds the state DB (the record of truth), the progress
//! display, plain log lines and `--json`. Events carry no secrets: outputs are plain strings
//! and `Secret<T>` has no `Serialize`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub(crate) type Outputs = BTreeMap<String, String>;

/// Written as JSON (`payload` in the state DB) and read back as the same type: fields added
/// after a kind first shipped have a default, so older rows still read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum Event {
    RunStarted {
        run: i64,
        runbook: String,
        env: String,
        operator: String,
        /// Empty in rows recorded before the operator's host was kept.
        #[serde(default)]
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
        /// The operator's host (absent from payloads recorded before it was kept: empty).
        #[serde(default)]
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
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
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
        /// Empty in rows recorded before the operator's host was kept.
        #[serde(default)]
        host: String,
    },
    StepReset {
        step: String,
        reason: String,
        operator: String,
        /// Empty in rows recorded before the operator's host was kept.
        #[serde(default)]
        host: String,
    },
    LockTakenOver {
        previous_host: String,
        previous_pid: i64,
        /// Who took it over, from where.
        operator: String,
        /// Empty in rows recorded before the operator's host was kept.
        #[serde(default)]
        host: String,
    },
    LockBroken {
        previous_host: String,
        previous_pid: i64,
        operator: String,
        /// Empty in rows recorded before the operator's host was kept.
        #[serde(default)]
        host: String,
    },
    /// An operator released a lock a step's tool left (terraform's state lock).
    StateLockReleased {
        step: String,
        lock_id: String,
        operator: String,
        /// Empty in rows recorded before the operator's host was kept.
        #[serde(default)]
        host: String,
    },
    /// A rollback step put a service back on an earlier task definition, and marked the service
    /// so that a later plan that undoes it names it.
    RollbackMarked {
        step: String,
        service: String,
        /// Numbers in rows recorded before revisions were kept as text.
        #[serde(deserialize_with = "text_or_number")]
        from_revision: String,
        #[serde(deserialize_with = "text_or_number")]
        to_revision: String,
        operator: String,
        /// Empty in rows recorded before the operator's host was kept.
        #[serde(default)]
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
        /// Empty in rows recorded before the operator's host was kept.
        #[serde(default)]
        host: String,
    },
    /// One round of a smoke gate (004 G-7): every check with its class and verdict, and how
    /// many consecutive green rounds it makes. Committed before the next round starts: the gate
    /// reads its rounds back on resume and goes on from them.
    SmokeRound {
        step: String,
        attempt: u32,
        round: u32,
        /// Every P0 check passed.
        green: bool,
        /// Consecutive green rounds up to and including this one (0 after a red round).
        streak: u32,
        /// How many the gate needs.
        consecutive: u32,
        checks: Vec<SmokeCheck>,
        /// What a later round compares with (Dixie's uptime, the reputation score it read).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        seen: BTreeMap<String, String>,
        /// When the round ended, ms since the epoch: a resume waits only what is left of the
        /// spacing.
        at_ms: u64,
    },
    /// A durable wait's deadline, committed before the wait begins: a resumed run (on this host
    /// or another) waits only what is left of it, judged by the state's clock (the server's
    /// on PostgreSQL).
    WaitStarted {
        step: String,
        attempt: u32,
        /// The deadline, ms since the epoch by the state's clock.
        until_ms: i64,
        /// How long the wait is, as the runbook gives it.
        seconds: u64,
        /// What it waits for, in the runbook's words.
        why: String,
        /// The steps that go on after it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        then: Vec<String>,
    },
    RunFinished {
        run: i64,
        status: RunState,
        duration_ms: u64,
    },
}

/// One check of a smoke round: its suite (003 §6's table), what it checked, its class (004's
/// P0 fails the round, P1 is a warning), the verdict and what was seen. Never a secret: the
/// token and the admin key are sent, not kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SmokeCheck {
    pub(crate) suite: String,
    pub(crate) check: String,
    pub(crate) class: SmokeClass,
    pub(crate) pass: bool,
    pub(crate) seen: String,
}

/// 004's classes: a P0 failure fails the round, a P1 failure is kept as a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum SmokeClass {
    P0,
    P1,
}

impl SmokeClass {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SmokeClass::P0 => "P0",
            SmokeClass::P1 => "P1",
        }
    }
}

/// A field written as text that older rows wrote as a number.
fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TextOrNumber {
        Text(String),
        Number(i64),
    }
    Ok(match TextOrNumber::deserialize(d)? {
        TextOrNumber::Text(text) => text,
        TextOrNumber::Number(n) => n.to_string(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ProbeResult {
    Satisfied,
    Absent,
    Conflict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// How tables show it to a person: words, where `--json` and the database have snake case.
    pub(crate) fn label(self) -> &'static str {
        match self {
            RunState::AwaitingApproval => "awaiting approval",
            other => other.as_str(),
        }
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
            Event::SmokeRound { .. } => "smoke_round",
            Event::WaitStarted { .. } => "wait_started",
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
            | Event::RollbackAcknowledged { step, .. }
            | Event::SmokeRound { step, .. }
            | Event::WaitStarted { step, .. } => Some(step),
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

    /// One event of each kind, with every optional field set.
    fn one_of_each() -> Vec<Event> {
        let (step, s) = (|| "T2.4".to_string(), |t: &str| t.to_string());
        let who = || ("ana".to_string(), "laptop".to_string());
        let outputs: Outputs = [(s("url"), s("https://x"))].into();
        vec![
            Event::RunStarted {
                run: 3,
                runbook: s("sprint-2"),
                env: s("local"),
                operator: s("ana"),
                host: s("h"),
                resumed: true,
            },
            Event::InputsChanged { what: s("runbook file") },
            Event::StepStarted { step: step(), attempt: 2, title: s("t"), in_doubt: true },
            Event::StepProbed { step: step(), attempt: 2, result: ProbeResult::Conflict, detail: s("d") },
            Event::StepIntent { step: step(), attempt: 2, action: s("apply") },
            Event::StepLog { step: step(), attempt: 2, line: s("line \u{1b}") },
            Event::StepWaiting { step: step(), attempt: 2, what: s("w"), elapsed_ms: 5, limit_ms: 9 },
            Event::StepRetrying { step: step(), attempt: 2, error: s("e"), delay_ms: 100 },
            Event::ApprovalRequested { step: step(), summary: s("Plan: 1 to add") },
            Event::ApprovalAnswered {
                step: step(),
                summary: s("Plan"),
                operator: who().0,
                host: who().1,
                via: s("--yes"),
                approved: true,
            },
            Event::StepDone {
                step: step(),
                attempt: 2,
                outcome: DoneOutcome::Applied,
                outputs,
                duration_ms: 7,
                warnings: vec![s("nats tolerated")],
            },
            Event::StepFailed { step: step(), attempt: 2, error: s("e"), fix: Some(s("f")), duration_ms: 1 },
            Event::StepBlocked { step: step(), by: s("T2.3") },
            Event::StepSkipped { step: step(), reason: s("r"), operator: who().0, host: who().1 },
            Event::StepReset { step: step(), reason: s("r"), operator: who().0, host: who().1 },
            Event::LockTakenOver { previous_host: s("p"), previous_pid: 4, operator: who().0, host: who().1 },
            Event::LockBroken { previous_host: s("p"), previous_pid: 4, operator: who().0, host: who().1 },
            Event::StateLockReleased { step: step(), lock_id: s("id"), operator: who().0, host: who().1 },
            Event::RollbackMarked {
                step: step(),
                service: s("dixie"),
                from_revision: s("7"),
                to_revision: s("6"),
                operator: who().0,
                host: who().1,
                emergency: true,
                desired: Some(2),
            },
            Event::RollbackAcknowledged {
                step: step(),
                rollback_run: 9,
                service: s("dixie"),
                summary: s("s"),
                operator: who().0,
                host: who().1,
            },
            Event::SmokeRound {
                step: step(),
                attempt: 2,
                round: 4,
                green: true,
                streak: 2,
                consecutive: 3,
                checks: vec![SmokeCheck {
                    suite: s("fleet"),
                    check: s("capabilities"),
                    class: SmokeClass::P1,
                    pass: false,
                    seen: s("HTTP 500"),
                }],
                seen: [(s("dixie_uptime_s"), s("12"))].into(),
                at_ms: 1_700_000_000_000,
            },
            Event::WaitStarted {
                step: step(),
                attempt: 1,
                until_ms: 1_700_000_060_000,
                seconds: 60,
                why: s("the JWKS cache TTL"),
                then: vec![s("T4.5")],
            },
            Event::RunFinished { run: 3, status: RunState::AwaitingApproval, duration_ms: 8 },
        ]
    }

    #[test]
    fn every_event_reads_back_as_the_event_it_was_written_as() {
        let events = one_of_each();
        let kinds: std::collections::BTreeSet<&str> = events.iter().map(Event::kind).collect();
        assert_eq!(kinds.len(), events.len(), "one of each kind");
        assert_eq!(kinds.len(), 23, "a kind added to Event needs its sample here");
        for event in events {
            let payload = serde_json::to_string(&event).unwrap();
            assert_eq!(serde_json::from_str::<Event>(&payload).unwrap(), event, "{payload}");
        }
    }

    #[test]
    fn rows_written_before_a_field_was_kept_still_read() {
        let old = r#"{"event":"step_skipped","step":"T2.4","reason":"old","operator":"cy"}"#;
        let Event::StepSkipped { host, .. } = serde_json::from_str(old).unwrap() else { panic!("{old}") };
        assert_eq!(host, "", "an older row has no host");
        let old =
            r#"{"event":"rollback_marked","step":"R1","service":"d","from_revision":7,"to_revision":6,"operator":"o"}"#;
        let Event::RollbackMarked { from_revision, to_revision, emergency, desired, .. } =
            serde_json::from_str(old).unwrap()
        else {
            panic!("{old}")
        };
        assert_eq!((from_revision.as_str(), to_revision.as_str(), emergency, desired), ("7", "6", false, None));
        let done = r#"{"event":"step_done","step":"a","attempt":1,"outcome":"satisfied","outputs":{},"duration_ms":1}"#;
        assert!(matches!(serde_json::from_str(done).unwrap(), Event::StepDone { warnings, .. } if warnings.is_empty()));
        // Not an event: an error, never a default.
        for bad in [r#"{"event":"step_exploded"}"#, r#"{"event":"step_done"}"#, "null", "{"] {
            assert!(serde_json::from_str::<Event>(bad).is_err(), "{bad}");
        }
    }
}
