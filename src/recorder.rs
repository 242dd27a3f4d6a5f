//! Where a run's events go: first the state DB (awaited, so a transition is on disk before
//! the engine acts on it), then the reporter. `plan` records nothing and only reports.

use tokio::sync::mpsc::UnboundedSender;

use crate::event::Event;
use crate::state::{StateError, StateHandle};

#[derive(Clone)]
pub(crate) struct Recorder {
    state: Option<(StateHandle, i64)>,
    report: UnboundedSender<Event>,
    failed: std::sync::Arc<std::sync::Mutex<Option<String>>>,
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
            let run = *run;
            let stored = event.clone();
            let result: Result<(), StateError> = state.call(move |db| db.record(Some(run), &stored)).await;
            if let Err(e) = result {
                let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
                failed.get_or_insert_with(|| e.to_string());
            }
        }
        let _ = self.report.send(event);
    }

    pub(crate) fn write_error(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
