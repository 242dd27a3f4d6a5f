//! Step kinds behind one [`Step`] trait, and the registry that names them.
//!
//! A kind is one file holding its typed `Params` (serde, `deny_unknown_fields`) and
//! `impl Step for Params`, plus one name in [`kinds!`] below. A step never prints and never
//! touches the state DB: it tells the engine what it found ([`Probe`]), does its side effect,
//! and logs through its [`StepContext`].

use std::fmt::Debug;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
use serde::de::DeserializeOwned;

use crate::approval::Approver;
use crate::cloud::Cloud;
use crate::environment::Environment;
use crate::error_chain::error_chain;
use crate::event::{Event, Outputs};
use crate::recorder::Recorder;
use crate::secret::Secret;

mod reach;

/// Declares the kinds: each name is a module `steps/<name>.rs` whose `Params` is the step.
// Plain module declarations, so that `cargo fmt` sees every kind; the macro builds the table.
mod database;
mod diagnose;
mod ecr_repository;
mod ecs_deploy;
mod ecs_rollback;
mod image;
mod jwt_keys;
mod migrations;
mod pull_request;
mod security_group_ingress;
mod smoke;
mod ssm_params;
mod terraform;
mod validate;
pub(crate) mod wait;

macro_rules! kinds {
    ($($module:ident),* $(,)?) => {
        /// Every kind a runbook may name.
        pub(crate) const KINDS: &[Kind] = &[$(Kind::of::<$module::Params>()),*];
    };
}

kinds![
    ecr_repository,
    database,
    image,
    terraform,
    ssm_params,
    ecs_deploy,
    validate,
    pull_request,
    security_group_ingress,
    ecs_rollback,
    diagnose,
    migrations,
    smoke,
    wait,
    jwt_keys
];

pub(crate) use diagnose::{Finding, Verdict};

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
    /// A change that needs an operator's yes, and did not get one; `fix` when `--yes` alone
    /// is not enough (a plan that undoes a rollback needs it acknowledged).
    #[error("awaiting approval: {summary}")]
    AwaitingApproval { summary: String, fix: Option<String> },
}

impl StepError {
    pub(crate) fn fatal(message: impl Into<String>, fix: impl Into<String>) -> Self {
        StepError::Fatal { message: message.into(), fix: Some(fix.into()) }
    }

    pub(crate) fn retryable(message: impl Into<String>) -> Self {
        StepError::Retryable { message: message.into() }
    }

    /// What the operator should do, when the error says.
    pub(crate) fn fix(&self) -> Option<&str> {
        match self {
            StepError::Fatal { fix, .. } | StepError::AwaitingApproval { fix, .. } => fix.as_deref(),
            StepError::Retryable { .. } => None,
        }
    }

    /// The verdict on a failed query-protocol call (EC2's, CloudWatch's), as [`StepError::from_sdk`]
    /// gives it for the SDK's.
    pub(crate) fn from_query(what: &str, err: crate::cloud::QueryError) -> Self {
        use crate::cloud::QueryError;
        match err {
            QueryError::Service { code, message, .. } => StepError::from_code(what, &code, &message),
            QueryError::Construction(message) => StepError::Fatal { message: format!("{what}: {message}"), fix: None },
            QueryError::Transport(message) => StepError::retryable(format!("{what}: {message}")),
        }
    }

    /// AWS's error `code`: throttling and AWS's own failures are worth another attempt, refused
    /// credentials or permissions name the fix, the rest fail the step.
    fn from_code(what: &str, code: &str, message: &str) -> Self {
        let message = format!("{what}: {code}: {message}");
        if crate::cloud::transient_aws_code(code) {
            StepError::retryable(message)
        } else if code.contains("AccessDenied")
            || code.contains("UnrecognizedClient")
            || code.contains("InvalidClientTokenId")
        {
            StepError::fatal(message, "check the credentials and the IAM permissions listed in docs/operator-guide.md")
        } else {
            StepError::Fatal { message, fix: None }
        }
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
                StepError::from_code(what, e.code().unwrap_or("Unknown"), e.message().unwrap_or("no message"))
            }
            SdkError::ConstructionFailure(_) => {
                StepError::Fatal { message: format!("{what}: {}", error_chain(&err)), fix: None }
            }
            _ => StepError::retryable(format!("{what}: {}", error_chain(&err))),
        }
    }
}

/// A step kind: typed params that know how to probe, apply and verify themselves.
pub(crate) trait Step: DeserializeOwned + Debug + Send + Sync + 'static {
    /// The name a runbook's `kind = "…"` uses.
    const KIND: &'static str;
    /// The outputs it produces, for checking `${steps.X.name}` before a run; `None` when
    /// they are only known at run time (terraform's are the module's).
    const OUTPUTS: Option<&'static [&'static str]>;
    /// Whether its tool takes a lock of its own that a dead run can leave (terraform's state
    /// lock), which `release_lock` releases.
    const HOLDS_LOCK: bool = false;
    /// Whether it is a read-only check whose findings [`Step::examine`] gives: `runbook
    /// diagnose` runs every step of its runbook that way, all at once.
    const CHECK: bool = false;

    /// Checks beyond the types, before anything runs (with `${steps.…}` as placeholders).
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// Checks the files the step will read (a build context, a terraform folder), before a run
    /// starts; relative paths start at the project folder.
    fn check_files(&self, _project: &std::path::Path) -> Result<(), String> {
        Ok(())
    }

    /// How long `verify` may take to come true after an apply.
    fn converge_within(&self) -> Duration;

    /// Read-only, before any step of the run applies: the inputs only the world can judge
    /// (files the step will read, names and ids resolved against the API, access). A value that
    /// comes from an upstream step's output reads [`UPSTREAM`] here: the step checks it when it
    /// runs. A refusal records no run.
    fn preflight(&self, _cx: &StepContext) -> impl Future<Output = Result<(), StepError>> + Send {
        async { Ok(()) }
    }

    /// Read-only: is the desired state already true?
    fn probe(&self, cx: &StepContext) -> impl Future<Output = Result<Probe, StepError>> + Send;

    /// The side effect; idempotent by construction.
    fn apply(&self, cx: &StepContext) -> impl Future<Output = Result<(), StepError>> + Send;

    /// After an apply: the probe again (the default), or more proof than it gives. Polled until
    /// satisfied within [`Step::converge_within`].
    fn verify(&self, cx: &StepContext) -> impl Future<Output = Result<Probe, StepError>> + Send {
        self.probe(cx)
    }

    /// A read-only check's findings (see [`Step::CHECK`]); a kind that is no check finds nothing.
    fn examine(&self, _cx: &StepContext) -> impl Future<Output = Vec<Finding>> + Send {
        async { Vec::new() }
    }

    /// Releases a lock this kind's tool left behind (terraform's state lock of a dead run), on
    /// an operator's explicit command. Kinds that take no such lock refuse.
    fn release_lock(&self, _cx: &StepContext, _lock_id: &str) -> impl Future<Output = Result<(), StepError>> + Send {
        let kind = Self::KIND;
        async move {
            Err(StepError::fatal(
                format!("a step of kind {kind} holds no lock of its own"),
                "name the terraform step whose state lock is held",
            ))
        }
    }
}

/// The verify of a kind that proves more than its probe shows (a login, a PING): the probe, then
/// `prove` once the probe is satisfied.
pub(super) async fn probe_then_prove<F>(
    probe: Result<Probe, StepError>,
    prove: impl FnOnce() -> F,
) -> Result<Probe, StepError>
where
    F: Future<Output = Result<(), StepError>>,
{
    let probe = probe?;
    if matches!(probe, Probe::Satisfied(_)) {
        prove().await?;
    }
    Ok(probe)
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A [`Step`] of any kind, as the engine holds it.
pub(crate) trait AnyStep: Debug + Send + Sync {
    fn check_files(&self, project: &std::path::Path) -> Result<(), String>;
    fn converge_within(&self) -> Duration;
    fn preflight<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<(), StepError>>;
    fn probe<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Probe, StepError>>;
    fn apply<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<(), StepError>>;
    fn verify<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Probe, StepError>>;
    fn examine<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Vec<Finding>>;
    fn release_lock<'a>(&'a self, cx: &'a StepContext, lock_id: &'a str) -> BoxFuture<'a, Result<(), StepError>>;
}

impl<S: Step> AnyStep for S {
    fn check_files(&self, project: &std::path::Path) -> Result<(), String> {
        Step::check_files(self, project)
    }
    fn converge_within(&self) -> Duration {
        Step::converge_within(self)
    }
    fn preflight<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(Step::preflight(self, cx))
    }
    fn probe<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Probe, StepError>> {
        Box::pin(Step::probe(self, cx))
    }
    fn apply<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(Step::apply(self, cx))
    }
    fn verify<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Result<Probe, StepError>> {
        Box::pin(Step::verify(self, cx))
    }
    fn examine<'a>(&'a self, cx: &'a StepContext) -> BoxFuture<'a, Vec<Finding>> {
        Box::pin(Step::examine(self, cx))
    }
    fn release_lock<'a>(&'a self, cx: &'a StepContext, lock_id: &'a str) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(Step::release_lock(self, cx, lock_id))
    }
}

/// One entry of a registry: a kind's name, outputs, and how to type its params.
#[derive(Clone, Copy)]
pub(crate) struct Kind {
    pub(crate) name: &'static str,
    pub(crate) outputs: Option<&'static [&'static str]>,
    pub(crate) holds_lock: bool,
    pub(crate) check: bool,
    parse: fn(&toml::Value) -> Result<Box<dyn AnyStep>, String>,
}

impl Kind {
    pub(crate) const fn of<S: Step>() -> Self {
        Kind { name: S::KIND, outputs: S::OUTPUTS, holds_lock: S::HOLDS_LOCK, check: S::CHECK, parse: parse_as::<S> }
    }

    /// The typed step, or what is wrong with the params.
    pub(crate) fn parse(&self, params: &toml::Value) -> Result<Box<dyn AnyStep>, String> {
        (self.parse)(params)
    }
}

fn parse_as<S: Step>(params: &toml::Value) -> Result<Box<dyn AnyStep>, String> {
    let step = S::deserialize(params.clone()).map_err(|e| e.to_string().trim().to_string())?;
    step.validate()?;
    Ok(Box::new(step))
}

/// The kind called `name` in `registry`.
pub(crate) fn find(registry: &[Kind], name: &str) -> Option<Kind> {
    registry.iter().find(|k| k.name == name).copied()
}

/// A number written as a number, or as text (what a `${env.x}` reference gives).
pub(crate) fn number_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(u64),
        Negative(i64),
        Fraction(f64),
        Text(String),
    }
    let refused = |what: String| serde::de::Error::custom(format!("expected a whole number of at least 0, got {what}"));
    match <Either as serde::Deserialize>::deserialize(d)? {
        Either::Number(n) => Ok(n),
        Either::Negative(n) => Err(refused(n.to_string())),
        Either::Fraction(n) => Err(refused(n.to_string())),
        Either::Text(t) => {
            t.trim().parse().map_err(|_| serde::de::Error::custom(format!("expected a whole number, got {t:?}")))
        }
    }
}

/// `true`/`false`, as TOML or as the text a `${env.x}` reference gives; errors name `field`.
pub(super) fn flag<'de, D: serde::Deserializer<'de>>(d: D, field: &str) -> Result<bool, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Either {
        Bool(bool),
        Text(String),
    }
    match <Either as serde::Deserialize>::deserialize(d)? {
        Either::Bool(b) => Ok(b),
        Either::Text(t) if t == "true" => Ok(true),
        Either::Text(t) if t == "false" => Ok(false),
        Either::Text(t) => Err(serde::de::Error::custom(format!("{field}: expected true or false, got {t:?}"))),
    }
}

/// What a `${steps.X.y}` reads before step X has run (preflight, `plan`): a field holding it is
/// checked by the step when it runs, not before.
pub(crate) const UPSTREAM: &str = "placeholder";

/// Whether a param holds an upstream step's output not known yet (see [`UPSTREAM`]).
pub(crate) fn from_upstream(value: &str) -> bool {
    value.contains(UPSTREAM)
}

/// A CA bundle a step will read (`ca_file`, `pg_ca_file`): a regular file of at most 1 MiB
/// holding at least one PEM certificate. Read bounded (`/dev/zero` is not read at all), and
/// the error names the key that gives the path. An empty key means the system's roots.
pub(crate) fn check_ca_file(key: &str, path: Option<&std::path::Path>) -> Result<(), StepError> {
    use std::io::Read;
    const MAX: u64 = 1 << 20;
    let Some(path) = path else { return Ok(()) };
    let fix =
        format!("point `{key}` at a PEM certificate bundle (RDS's global bundle, or the ring's .ring/tls/ca.crt)");
    let refuse = |why: String| StepError::fatal(format!("{key} = {}: {why}", path.display()), fix.clone());
    let meta = std::fs::metadata(path).map_err(|e| refuse(format!("cannot be read: {e}")))?;
    if !meta.is_file() {
        return Err(refuse("is not a regular file".into()));
    }
    let mut text = String::new();
    let file = std::fs::File::open(path).map_err(|e| refuse(format!("cannot be read: {e}")))?;
    file.take(MAX + 1).read_to_string(&mut text).map_err(|_| refuse("is not a text (PEM) file".into()))?;
    if text.len() as u64 > MAX {
        return Err(refuse("is larger than 1 MiB: not a CA bundle".into()));
    }
    if text.trim().is_empty() {
        return Err(refuse("is empty".into()));
    }
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        let key_instead = text.contains("PRIVATE KEY-----");
        return Err(refuse(
            if key_instead { "holds a private key, not a certificate" } else { "holds no PEM certificate" }.into(),
        ));
    }
    crate::pg_tls::client_config(Some(path)).map(|_| ()).map_err(refuse)
}

/// The longest wait a step may be given, in seconds (a day): every wait and deadline a
/// runbook writes is bounded by it, so that no sum of durations can overflow and a typo of
/// a few digits is refused before anything runs.
pub(crate) const MAX_WAIT_S: u64 = 86_400;

/// `Err` when a wait a runbook wrote is longer than [`MAX_WAIT_S`].
pub(crate) fn check_wait(field: &str, seconds: u64) -> Result<(), String> {
    if seconds > MAX_WAIT_S {
        return Err(format!(
            "{field} = {seconds} s is longer than a day, the longest wait a step takes: give at most {MAX_WAIT_S}"
        ));
    }
    Ok(())
}

/// Services for a kind's tests without the ring: a loopback-only environment with no AWS
/// endpoint, `project` as the project folder, `work_dir` as the private folder, and approvals
/// answered yes by `ana`.
#[cfg(test)]
pub(crate) async fn test_services(project: &std::path::Path, work_dir: &std::path::Path) -> Arc<Services> {
    let env: Environment =
        toml::from_str("name = \"t\"\naccount_id = \"0\"\nregion = \"us-east-1\"\nloopback_only = true\n").unwrap();
    let cloud = Cloud::connect(&env).await;
    Arc::new(Services {
        env: Arc::new(env),
        cloud: Arc::new(cloud),
        project: Arc::new(project.to_path_buf()),
        work_dir: Arc::new(work_dir.to_path_buf()),
        approver: Approver::Answer { operator: "ana".into(), yes: true },
        run: None,
        acknowledged_rollback: None,
        clock: Clock::State,
        announce: None,
    })
}

/// What every step of a run may use, chosen at the edge and handed to the engine as one.
pub(crate) struct Services {
    pub(crate) env: Arc<Environment>,
    pub(crate) cloud: Arc<Cloud>,
    /// The project folder: relative paths in params (build contexts, terraform) start here.
    pub(crate) project: Arc<PathBuf>,
    /// A private folder (0700) for files that may hold secrets: plans, apply logs.
    pub(crate) work_dir: Arc<PathBuf>,
    pub(crate) approver: Approver,
    /// The run being recorded (`None` for `plan`): named in what a step leaves in the cloud
    /// for later runs to see (a rollback's marker).
    pub(crate) run: Option<i64>,
    /// The rollback run the operator acknowledged undoing (`--ack-rollback RUN`).
    pub(crate) acknowledged_rollback: Option<i64>,
    /// What durable waits are judged by.
    pub(crate) clock: Clock,
    /// Posts a line to the environment's webhook, when it names one (a long wait's start and
    /// end); `Err` says what failed, without the URL.
    pub(crate) announce: Option<Announce>,
}

/// See [`Services::announce`].
pub(crate) type Announce = Arc<dyn Fn(String) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The clock a durable wait reads: the state's (this machine's for SQLite, the server's on
/// PostgreSQL), or in tests one that follows paused time and can be made to jump.
#[derive(Clone, Default)]
pub(crate) enum Clock {
    #[default]
    State,
    #[cfg(test)]
    Test(Arc<TestClock>),
}

/// A clock for tests: `base_ms` plus the (paused) time since it was made, plus any jumps.
#[cfg(test)]
pub(crate) struct TestClock {
    base_ms: i64,
    start: tokio::time::Instant,
    jumped_ms: std::sync::atomic::AtomicI64,
}

#[cfg(test)]
impl TestClock {
    pub(crate) fn at(base_ms: i64) -> Arc<Self> {
        Arc::new(TestClock { base_ms, start: tokio::time::Instant::now(), jumped_ms: Default::default() })
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.base_ms
            + self.start.elapsed().as_millis() as i64
            + self.jumped_ms.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The wall clock jumps by `ms` (NTP, a laptop waking with a wrong clock); negative: back.
    pub(crate) fn jump(&self, ms: i64) {
        self.jumped_ms.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What a running step may use: the environment, the cloud clients, and its log.
pub(crate) struct StepContext {
    pub(crate) step: String,
    pub(crate) attempt: u32,
    pub(crate) env: Arc<Environment>,
    pub(crate) cloud: Arc<Cloud>,
    pub(crate) project: Arc<PathBuf>,
    pub(crate) work_dir: Arc<PathBuf>,
    pub(crate) recorder: Recorder,
    services: Arc<Services>,
    /// What this attempt tolerated, said once each (see `warn`).
    warnings: std::sync::Mutex<Vec<String>>,
    /// The steps that need this one, in file order: what a wait says comes next.
    then: Vec<String>,
}

impl StepContext {
    pub(crate) fn new(services: &Arc<Services>, step: &str, attempt: u32, recorder: Recorder) -> Self {
        StepContext {
            step: step.to_string(),
            attempt,
            env: services.env.clone(),
            cloud: services.cloud.clone(),
            project: services.project.clone(),
            work_dir: services.work_dir.clone(),
            recorder,
            warnings: std::sync::Mutex::default(),
            services: services.clone(),
            then: Vec::new(),
        }
    }

    /// Names the steps that need this one (see [`StepContext::then`]).
    pub(crate) fn followed_by(mut self, then: Vec<String>) -> Self {
        self.then = then;
        self
    }

    /// The steps that need this one, in file order.
    pub(crate) fn then(&self) -> &[String] {
        &self.then
    }

    /// Now, in ms since the epoch, by [`Services::clock`].
    pub(crate) async fn now_ms(&self) -> Result<i64, StepError> {
        match &self.services.clock {
            Clock::State => self
                .recorder
                .clock_ms()
                .await
                .map_err(|e| StepError::retryable(format!("cannot read the state's clock: {e}"))),
            #[cfg(test)]
            Clock::Test(clock) => Ok(clock.now_ms()),
        }
    }

    /// Posts `text` to the environment's webhook, when it names one; a failure is logged and
    /// changes nothing else.
    pub(crate) async fn announce(&self, text: String) {
        let Some(announce) = &self.services.announce else { return };
        if let Err(e) = announce(text).await {
            self.log(format!("webhook: {e}")).await;
        }
    }

    /// A line for `runbook logs STEP`, kept per attempt.
    pub(crate) async fn log(&self, line: impl Into<String>) {
        self.recorder.emit(Event::StepLog { step: self.step.clone(), attempt: self.attempt, line: line.into() }).await;
    }

    /// A file a param names relative to the project folder; `None` when the param is empty
    /// (CA files: empty means the system's roots).
    pub(crate) fn project_file(&self, relative: &str) -> Option<PathBuf> {
        (!relative.is_empty()).then(|| self.project.join(relative))
    }

    /// An SSM parameter's decrypted value, or `None` when it does not exist.
    pub(crate) async fn parameter(&self, name: &str) -> Result<Option<Secret<String>>, StepError> {
        self.cloud.read_parameter(name).await.map_err(|e| StepError::from_sdk(&format!("ssm:GetParameter {name}"), e))
    }

    /// Progress of a long action, for the display only.
    pub(crate) async fn progress(&self, what: &str) {
        self.recorder
            .emit(Event::StepWaiting {
                step: self.step.clone(),
                attempt: self.attempt,
                what: what.to_string(),
                elapsed_ms: 0,
                limit_ms: 0,
            })
            .await;
    }

    /// The run being recorded, `None` in `plan`.
    pub(crate) fn run(&self) -> Option<i64> {
        self.services.run
    }

    /// `runbook retry THIS-STEP --run RUN`, to put in a fix line.
    pub(crate) fn retry_hint(&self) -> String {
        crate::hint::retry(&self.step, self.run())
    }

    /// `runbook logs THIS-STEP --run RUN`, to put in a fix line.
    pub(crate) fn logs_hint(&self) -> String {
        crate::hint::logs(&self.step, self.run())
    }

    /// The rollback run whose undoing the operator acknowledged (`--ack-rollback`).
    pub(crate) fn acknowledged_rollback(&self) -> Option<i64> {
        self.services.acknowledged_rollback
    }

    /// Asks the run's [`Approver`] to approve `summary`; the answer is recorded.
    pub(crate) async fn approve(&self, summary: &str) -> bool {
        self.services.approver.approve(&self.recorder, &self.step, summary).await
    }

    /// A test-only crash point: with `RUNBOOK_CRASH_AT=<step>:<name>` the process kills itself
    /// here with SIGKILL, as a power cut or `kill -9` would, to prove that resume settles it.
    /// Something the step's policy tolerates but an operator should see (Dixie degraded for
    /// want of NATS, which sprint 3 fixes): logged once, and kept with the step's outcome, shown
    /// by `status` and `--json`.
    pub(crate) async fn warn(&self, message: String) {
        let new = {
            let mut seen = self.warnings.lock().unwrap_or_else(|p| p.into_inner());
            let new = !seen.contains(&message);
            if new {
                seen.push(message.clone());
            }
            new
        };
        if new {
            self.log(format!("warning: {message}")).await;
        }
    }

    pub(crate) fn warnings(&self) -> Vec<String> {
        self.warnings.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn checkpoint(&self, name: &str) {
        crate::crash::kill_if_asked(&self.step, name);
    }
}

#[cfg(test)]
mod preflight_tests {
    use super::*;

    fn refused(path: &std::path::Path) -> String {
        match check_ca_file("pg_ca_file", Some(path)) {
            Err(StepError::Fatal { message, fix }) => {
                assert!(fix.unwrap_or_default().contains("point `pg_ca_file` at a PEM certificate bundle"));
                message
            }
            other => panic!("{}: {other:?}", path.display()),
        }
    }

    /// A CA file is judged before the run, bounded, and named by its key: T2.3 found it after
    /// T2.1, T2.2 and T2.4 had acted, and `/dev/zero` was read until memory ran out.
    #[test]
    fn a_ca_file_that_is_not_a_certificate_bundle_is_refused_naming_its_key() {
        let dir = std::env::temp_dir().join(format!("runbook-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        assert!(
            refused(&dir.join("missing.pem")).contains("pg_ca_file = ")
                && refused(&dir.join("missing.pem")).contains("cannot be read")
        );
        assert!(refused(std::path::Path::new("/dev/zero")).ends_with("is not a regular file"));
        assert!(refused(&dir).ends_with("is not a regular file"));
        assert!(refused(&write("empty.pem", "")).ends_with("is empty"));
        assert!(refused(&write("text.pem", "not a certificate\n")).ends_with("holds no PEM certificate"));
        let key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";
        assert!(refused(&write("key.pem", key)).ends_with("holds a private key, not a certificate"));
        let big = "x".repeat((1 << 20) + 10);
        assert!(refused(&write("big.pem", &big)).ends_with("is larger than 1 MiB: not a CA bundle"));
        let garbled = "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n";
        let message = refused(&write("garbled.pem", garbled));
        assert!(message.starts_with(&format!("pg_ca_file = {}", dir.join("garbled.pem").display())), "{message}");
        assert!(check_ca_file("pg_ca_file", None).is_ok(), "empty: the system's roots");
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=runbook-test-ca", "-keyout"])
            .arg(dir.join("ca.key"))
            .arg("-out")
            .arg(dir.join("ca.crt"))
            .output()
            .expect("openssl makes a test CA");
        assert!(made.status.success(), "{made:?}");
        check_ca_file("pg_ca_file", Some(&dir.join("ca.crt"))).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
