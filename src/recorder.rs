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

    /// What this run recorded of `step` in events of `kind`, oldest first, since the step was
    /// last reset (`runbook retry` starts it afresh): how a step that keeps a record of its
    /// own (a smoke gate's rounds) reads it back on resume. Empty when nothing is recorded
    /// (`plan`).
    pub(crate) async fn recorded(&self, step: &str, kind: &'static str) -> Result<Vec<Event>, String> {
        let Some((state, run)) = &self.state else { return Ok(Vec::new()) };
        let run = *run;
        let rows = state
            .call(move |db| db.events_by_kind(Some(run), &[kind, "step_reset"]))
            .await
            .map_err(|e| e.to_string())?;
        let mut found = Vec::new();
        for row in rows {
            let event = row.event.map_err(|e| format!("event {} of run {run} cannot be read: {e}", row.id))?;
            match &event {
                Event::StepReset { step: reset, .. } if reset == step => found.clear(),
                e if e.kind() == kind && e.step() == Some(step) => found.push(event),
                _ => {}
            }
        }
        Ok(found)
    }

    /// The state's clock ([`crate::state::StateDb::clock_ms`]: the server's on PostgreSQL);
    /// this machine's when nothing is recorded (`plan`).
    pub(crate) async fn clock_ms(&self) -> Result<i64, String> {
        let Some((state, _)) = &self.state else { return Ok(crate::clock::now_ms()) };
        state.call(|db| db.clock_ms()).await.map_err(|e| e.to_string())
    }

    pub(crate) fn write_error(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
