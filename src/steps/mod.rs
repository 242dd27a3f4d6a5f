//! Step kinds: one file each, with its params struct, `probe`, `apply` and `verify`.
//!
//! Adding a kind touches its file, [`KINDS`], and the matches below. A step never prints and
//! never touches the state DB: it tells the engine what it found (`Probe`), does its side
//! effect, and logs through its context.

mod database;
mod ecr_repository;
mod ecs_deploy;
mod image;
mod reach;
mod ssm_params;
mod terraform;
mod validate;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
use serde::de::DeserializeOwned;

use crate::cloud::Cloud;
use crate::environment::Environment;
use crate::event::{Event, Outputs};
use crate::recorder::Recorder;
use crate::secret::Secret;

pub(crate) const KINDS: &[&str] = &["ecr_repository", "database", "image", "terraform", "ssm_params", "ecs_deploy", "validate"];

#[derive(Debug, Clone)]
pub(crate) enum StepKind {
    EcrRepository(ecr_repository::Params),
    Database(database::Params),
    Image(image::Params),
    Terraform(terraform::Params),
    SsmParams(ssm_params::Params),
    EcsDeploy(ecs_deploy::Params),
    Validate(validate::Params),
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
    /// A change that needs an operator's yes, and did not get one.
    #[error("awaiting approval: {summary}")]
    AwaitingApproval { summary: String },
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
    /// The project folder: relative paths in params (build contexts, terraform) start here.
    pub(crate) project: Arc<PathBuf>,
    pub(crate) approval: Approval,
}

/// Whether changes that need approval (terraform apply) may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Approval {
    /// `--yes`.
    Given,
    /// A terminal: ask the operator.
    Ask,
    /// No terminal and no `--yes`: stop, resumably.
    Withheld,
}

impl StepContext {
    /// A line for `runbook logs STEP`, kept per attempt.
    pub(crate) async fn log(&self, line: impl Into<String>) {
        self.recorder
            .emit(Event::StepLog { step: self.step.clone(), attempt: self.attempt, line: line.into() })
            .await;
    }

    /// An SSM parameter's decrypted value, or `None` when it does not exist.
    pub(crate) async fn parameter(&self, name: &str) -> Result<Option<Secret<String>>, StepError> {
        self.cloud.read_parameter(name).await.map_err(|e| StepError::from_sdk(&format!("ssm:GetParameter {name}"), e))
    }

    /// Progress of a long action, for the display only.
    pub(crate) async fn progress(&self, what: &str) {
        self.recorder
            .emit(Event::StepWaiting { step: self.step.clone(), attempt: self.attempt, what: what.to_string(), elapsed_ms: 0, limit_ms: 0 })
            .await;
    }

    /// Asks for approval of `summary` as the run was told to (`--yes`, a terminal, or neither).
    pub(crate) async fn approve(&self, summary: &str) -> bool {
        match self.approval {
            Approval::Given => {
                self.log(format!("approved by --yes: {summary}")).await;
                true
            }
            Approval::Withheld => false,
            Approval::Ask => {
                self.recorder
                    .emit(Event::ApprovalRequested { step: self.step.clone(), summary: summary.to_string() })
                    .await;
                let answer = tokio::task::spawn_blocking(|| {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).map(|_| line.trim().to_ascii_lowercase())
                })
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
                let yes = answer == "yes" || answer == "y";
                self.log(format!("operator answered {answer:?} to: {summary}")).await;
                yes
            }
        }
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
        "image" => typed(params).map(StepKind::Image),
        "terraform" => typed(params).map(StepKind::Terraform),
        "ssm_params" => typed(params).map(StepKind::SsmParams),
        "ecs_deploy" => typed(params).map(StepKind::EcsDeploy),
        "validate" => typed(params).map(StepKind::Validate),
        other => Err(format!("unknown step kind `{other}`; known kinds: {}", KINDS.join(", "))),
    }
}

/// A number written as a number, or as text (what a `${env.x}` reference gives).
pub(crate) fn number_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(u64),
        Text(String),
    }
    match <Either as serde::Deserialize>::deserialize(d)? {
        Either::Number(n) => Ok(n),
        Either::Text(t) => t.trim().parse().map_err(|_| serde::de::Error::custom(format!("expected a whole number, got {t:?}"))),
    }
}

/// The names of the outputs a kind produces, for checking `${steps.X.name}` before a run;
/// `None` when they are only known at run time (terraform's outputs).
pub(crate) fn outputs(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "ecr_repository" => Some(ecr_repository::OUTPUTS),
        "database" => Some(database::OUTPUTS),
        "image" => Some(image::OUTPUTS),
        "ssm_params" => Some(ssm_params::OUTPUTS),
        "ecs_deploy" => Some(ecs_deploy::OUTPUTS),
        // terraform's outputs are the module's; validate's are its checks.
        _ => None,
    }
}

impl StepKind {
    /// The image tag this step deploys, if it has one (`latest` is refused by validation).
    pub(crate) fn image_tag(&self) -> Option<&str> {
        match self {
            StepKind::EcrRepository(_)
            | StepKind::Database(_)
            | StepKind::Terraform(_)
            | StepKind::SsmParams(_)
            | StepKind::EcsDeploy(_)
            | StepKind::Validate(_) => None,
            StepKind::Image(p) => Some(&p.tag),
        }
    }

    pub(crate) async fn probe(&self, cx: &StepContext) -> Result<Probe, StepError> {
        match self {
            StepKind::EcrRepository(p) => p.probe(cx).await,
            StepKind::Database(p) => p.probe(cx).await,
            StepKind::Image(p) => p.probe(cx).await,
            StepKind::Terraform(p) => p.probe(cx).await,
            StepKind::SsmParams(p) => p.probe(cx).await,
            StepKind::EcsDeploy(p) => p.probe(cx).await,
            StepKind::Validate(p) => p.probe(cx).await,
        }
    }

    /// The side effect; idempotent by construction.
    pub(crate) async fn apply(&self, cx: &StepContext) -> Result<(), StepError> {
        match self {
            StepKind::EcrRepository(p) => p.apply(cx).await,
            StepKind::Database(p) => p.apply(cx).await,
            StepKind::Image(p) => p.apply(cx).await,
            StepKind::Terraform(p) => p.apply(cx).await,
            StepKind::SsmParams(p) => p.apply(cx).await,
            StepKind::EcsDeploy(p) => p.apply(cx).await,
            StepKind::Validate(p) => p.apply(cx).await,
        }
    }

    /// Proof beyond the probe, run once after an apply (the probe must stay read-only).
    pub(crate) async fn verify(&self, cx: &StepContext) -> Result<(), StepError> {
        match self {
            StepKind::EcrRepository(_)
            | StepKind::Image(_)
            | StepKind::Terraform(_)
            | StepKind::EcsDeploy(_)
            | StepKind::Validate(_) => Ok(()),
            StepKind::Database(p) => p.verify(cx).await,
            StepKind::SsmParams(p) => p.verify(cx).await,
        }
    }

    /// How long the probe may take to come true after an apply.
    pub(crate) fn converge_within(&self) -> Duration {
        match self {
            StepKind::EcrRepository(_) | StepKind::Database(_) => Duration::from_secs(30),
            // Scan on push takes a minute or two on ECR.
            StepKind::Image(_) => Duration::from_secs(300),
            StepKind::Terraform(_) | StepKind::SsmParams(_) => Duration::from_secs(120),
            StepKind::EcsDeploy(p) => Duration::from_secs(p.wait_seconds),
            StepKind::Validate(p) => Duration::from_secs(p.wait_seconds),
        }
    }
}
