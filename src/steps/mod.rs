//! Step kinds: one file each, with its params struct, `probe`, `apply` and `verify`.
//!
//! Adding a kind touches its file, [`KINDS`], and the matches below. A step never prints and
//! never touches the state DB: it tells the engine what it found (`Probe`), does its side
//! effect, and logs through its context.

mod database;
mod ecr_repository;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
use serde::de::DeserializeOwned;

use crate::cloud::Cloud;
use crate::environment::Environment;
use crate::event::{Event, Outputs};
use crate::recorder::Recorder;

pub(crate) const KINDS: &[&str] = &["ecr_repository", "database"];

#[derive(Debug, Clone)]
pub(crate) enum StepKind {
    EcrRepository(ecr_repository::Params),
    Database(database::Params),
}

/// What a probe found.
#[derive(Debug)]
pub(crate) enum Probe {
    /// The desired state holds; these are the step's outputs.
    Satisfied(Outputs),
    /// Not there yet: what `apply` would change.
    Absent(String),
    /// Something else is there; the operator must decide. Says what differs.
    Conflict(String),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    /// Worth another attempt after a pause: a timeout, a refused connection, throttling.
    #[error("{message}")]
    Retryable { message: String },
    /// Will fail the same way again until someone changes something.
    #[error("{message}")]
    Fatal { message: String, fix: Option<String> },
}

impl StepError {
    pub(crate) fn fatal(message: impl Into<String>, fix: impl Into<String>) -> Self {
        StepError::Fatal { message: message.into(), fix: Some(fix.into()) }
    }

    pub(crate) fn retryable(message: impl Into<String>) -> Self {
        StepError::Retryable { message: message.into() }
    }

    /// Classifies an AWS SDK error: transport trouble and throttling are retryable, a service
    /// answer such as AccessDenied is not.
    pub(crate) fn from_sdk<E, R>(what: &str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        match &err {
            SdkError::ServiceError(service) => {
                let e = service.err();
                let code = e.code().unwrap_or("Unknown");
                let message = format!("{what}: {code}: {}", e.message().unwrap_or("no message"));
                if code.contains("Throttl") || code == "RequestLimitExceeded" || code == "ServiceUnavailable" {
                    StepError::retryable(message)
                } else if code.contains("AccessDenied") || code.contains("UnrecognizedClient") || code.contains("InvalidClientTokenId") {
                    StepError::fatal(message, "check the credentials and the IAM permissions listed in docs/operator-guide.md")
                } else {
                    StepError::Fatal { message, fix: None }
                }
            }
            SdkError::ConstructionFailure(_) => StepError::Fatal { message: format!("{what}: {}", error_chain(&err)), fix: None },
            _ => StepError::retryable(format!("{what}: {}", error_chain(&err))),
        }
    }
}

/// An error and its sources on one line (the SDK's top-level message alone says "dispatch failure").
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

/// What a running step may use: the environment, the cloud clients, and its log.
pub(crate) struct StepContext {
    pub(crate) step: String,
    pub(crate) attempt: u32,
    pub(crate) env: Arc<Environment>,
    pub(crate) cloud: Arc<Cloud>,
    pub(crate) recorder: Recorder,
}

impl StepContext {
    /// A line for `runbook logs STEP`, kept per attempt.
    pub(crate) async fn log(&self, line: impl Into<String>) {
        self.recorder
            .emit(Event::StepLog { step: self.step.clone(), attempt: self.attempt, line: line.into() })
            .await;
    }

    /// A test-only crash point: with `RUNBOOK_CRASH_AT=<step>:<name>` the process kills itself
    /// here with SIGKILL, as a power cut or `kill -9` would, to prove that resume settles it.
    pub(crate) fn checkpoint(&self, name: &str) {
        if std::env::var("RUNBOOK_CRASH_AT").ok().as_deref() == Some(&format!("{}:{name}", self.step)) {
            // SAFETY: kill(2) on our own pid with a constant signal has no memory effects.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

pub(crate) fn parse(kind: &str, params: &toml::Value) -> Result<StepKind, String> {
    fn typed<T: DeserializeOwned>(params: &toml::Value) -> Result<T, String> {
        T::deserialize(params.clone()).map_err(|e| e.to_string().trim().to_string())
    }
    match kind {
        "ecr_repository" => typed(params).map(StepKind::EcrRepository),
        "database" => typed(params).map(StepKind::Database),
        other => Err(format!("unknown step kind `{other}`; known kinds: {}", KINDS.join(", "))),
    }
}

/// The names of the outputs a kind produces, for checking `${steps.X.name}` before a run.
pub(crate) fn outputs(kind: &str) -> &'static [&'static str] {
    match kind {
        "ecr_repository" => ecr_repository::OUTPUTS,
        "database" => database::OUTPUTS,
        _ => &[],
    }
}

impl StepKind {
    /// The image tag this step deploys, if it has one (`latest` is refused by validation).
    pub(crate) fn image_tag(&self) -> Option<&str> {
        match self {
            StepKind::EcrRepository(_) | StepKind::Database(_) => None,
        }
    }

    pub(crate) async fn probe(&self, cx: &StepContext) -> Result<Probe, StepError> {
        match self {
            StepKind::EcrRepository(p) => p.probe(cx).await,
            StepKind::Database(p) => p.probe(cx).await,
        }
    }

    /// The side effect; idempotent by construction.
    pub(crate) async fn apply(&self, cx: &StepContext) -> Result<(), StepError> {
        match self {
            StepKind::EcrRepository(p) => p.apply(cx).await,
            StepKind::Database(p) => p.apply(cx).await,
        }
    }

    /// Proof beyond the probe, run once after an apply (the probe must stay read-only).
    pub(crate) async fn verify(&self, cx: &StepContext) -> Result<(), StepError> {
        match self {
            StepKind::EcrRepository(_) => Ok(()),
            StepKind::Database(p) => p.verify(cx).await,
        }
    }

    /// How long the probe may take to come true after an apply.
    pub(crate) fn converge_within(&self) -> Duration {
        match self {
            StepKind::EcrRepository(_) | StepKind::Database(_) => Duration::from_secs(30),
        }
    }
}
