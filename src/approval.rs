//! Who approves changes that need an operator's yes (terraform's apply), chosen once at the
//! CLI edge: `--yes`, a prompt on the terminal, or nobody (the step stops "awaiting approval",
//! resumably). Every answer is recorded with who gave it and the summary they saw.
//!
//! The only place besides `main.rs` that reads stdin.

use crate::event::Event;
use crate::recorder::Recorder;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Approver {
    /// `--yes`, passed by this operator.
    Given { operator: String },
    /// Ask this operator on the terminal.
    Prompt { operator: String },
    /// No terminal and no `--yes`.
    Withheld,
    /// A fixed answer from this operator, for tests.
    #[cfg(test)]
    Answer { operator: String, yes: bool },
    /// Yes from this operator to a summary that contains `yes_to`, no to any other, for tests.
    #[cfg(test)]
    AnswerTo { operator: String, yes_to: String },
}

impl Approver {
    /// `--yes` wins; otherwise a terminal on both stdin and stderr is asked.
    pub(crate) fn choose(yes: bool, interactive: bool, operator: &str) -> Self {
        let operator = operator.to_string();
        if yes {
            Approver::Given { operator }
        } else if interactive {
            Approver::Prompt { operator }
        } else {
            Approver::Withheld
        }
    }

    /// Asks for `step`'s change described by `summary`; the answer is recorded through `recorder`.
    pub(crate) async fn approve(&self, recorder: &Recorder, step: &str, summary: &str) -> bool {
        let (operator, via, yes) = match self {
            Approver::Withheld => return false,
            Approver::Given { operator } => (operator, "--yes", true),
            Approver::Prompt { operator } => {
                recorder.emit(Event::ApprovalRequested { step: step.to_string(), summary: summary.to_string() }).await;
                let answer = tokio::task::spawn_blocking(|| {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).map(|_| line.trim().to_ascii_lowercase())
                })
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
                (operator, "the terminal", answer == "yes" || answer == "y")
            }
            #[cfg(test)]
            Approver::Answer { operator, yes } => (operator, "a test", *yes),
            #[cfg(test)]
            Approver::AnswerTo { operator, yes_to } => (operator, "a test", summary.contains(yes_to.as_str())),
        };
        recorder
            .emit(Event::ApprovalAnswered {
                step: step.to_string(),
                summary: summary.to_string(),
                operator: operator.clone(),
                host: crate::identity::host(),
                via: via.to_string(),
                approved: yes,
            })
            .await;
        yes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yes_wins_over_a_terminal_and_nothing_withholds() {
        assert_eq!(Approver::choose(true, true, "ana"), Approver::Given { operator: "ana".into() });
        assert_eq!(Approver::choose(false, true, "ana"), Approver::Prompt { operator: "ana".into() });
        assert_eq!(Approver::choose(false, false, "ana"), Approver::Withheld);
    }
}
