//! What the health page shows: the latest poll of `watch` and the latest `diagnose`, kept up
//! to date by `runbook serve --env NAME` (`commands/serve.rs` runs both, read-only as they
//! always are, and never posts to a webhook). Kept in memory: a restart of `serve` starts over.

use std::sync::{Arc, Mutex};

use crate::steps::Finding;
use crate::watch::{Poll, Sink, Transition};

/// The environment's latest health, shared between its keepers and the pages.
#[derive(Clone)]
pub(crate) struct Health(Arc<Mutex<Seen>>);

/// A copy of what has been seen so far.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) env: String,
    /// Seconds between polls, and between diagnoses.
    pub(crate) poll_every: u64,
    pub(crate) diagnose_every: u64,
    pub(crate) poll: Option<Poll>,
    pub(crate) diagnosis: Option<Diagnosis>,
}

/// One `diagnose`: when it ended, and its findings with the time it took, or why it could not run.
#[derive(Debug, Clone)]
pub(crate) struct Diagnosis {
    pub(crate) at: i64,
    pub(crate) outcome: Result<(Vec<Finding>, u64), String>,
}

impl Health {
    pub(crate) fn new(env: &str, poll_every: u64, diagnose_every: u64) -> Self {
        Health(Arc::new(Mutex::new(Seen {
            env: env.to_string(),
            poll_every,
            diagnose_every,
            poll: None,
            diagnosis: None,
        })))
    }

    pub(crate) fn seen(&self) -> Seen {
        self.lock().clone()
    }

    pub(crate) fn diagnosed(&self, diagnosis: Diagnosis) {
        self.lock().diagnosis = Some(diagnosis);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `watch`'s polls land here instead of on a terminal.
impl Sink for Health {
    fn seen(&mut self, poll: &Poll, _: &[Transition]) {
        self.lock().poll = Some(poll.clone());
    }

    fn notify_failed(&mut self, _: &str) {}
}
