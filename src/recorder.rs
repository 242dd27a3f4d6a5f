//! Where a run's events go: first the state DB, then the reporter. Durable events (an intent,
//! an outcome) are committed before `emit` returns, so a transition is on disk before the
//! engine acts on it; the rest (starts, probes, log lines) are group-committed without
//! waiting. `plan` records nothing and only reports.

use tokio::sync::mpsc::UnboundedSender;

use crate::event::Event;
use crate::state::{StateHandle, WriteError};

#[derive(Clone)]
pub(crate) struct Recorder {
    state: Option<(StateHandle, i64)>,
    report: UnboundedSender<Event>,
    failed: WriteError,
}

impl Recorder {
    pub(crate) fn new(state: Option<(StateHandle, i64)>, report: UnboundedSender<Event>) -> Self {
        Self { state, report, failed: Default::default() }
    }

    /// Records then reports `event`. A state DB write that fails is kept, and the engine stops
    /// the run at its next decision ([`Recorder::write_error`]): a run that cannot record must
    /// not act.
    pub(crate) async fn emit(&self, event: Event) {
        if let Some((state, run)) = &self.state {
            if event.is_durable() {
                if let Err(e) = state.record(*run, event.clone()).await {
                    self.stop(e.to_string());
                }
            } else if !event.is_ephemeral() {
                state.record_later(*run, event.clone(), self.failed.clone());
            }
        }
        let _ = self.report.send(event);
    }

    /// Stops the run at its next decision, as a failed write does: the lease was lost.
    pub(crate) fn stop(&self, why: String) {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(why);
    }

    pub(crate) fn write_error(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
