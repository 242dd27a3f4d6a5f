//! The subcommands, one file each with its clap arguments and its work (`run.rs`,
//! `status.rs`, …), between argument parsing and rendering (`main.rs`). Here what they share:
//! the flag groups (`--env`, `--var`, `--yes`/`--ack-rollback`), the errors and outcomes, and
//! the way a run is driven: load and validate, run the preflights, take the lock, then drive
//! the engine and record. Each returns a typed [`Outcome`]; nothing here prints.
//!
//! Order matters: everything that can reject bad input runs before the first write to the
//! state DB or the cloud.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::approval::Approver;
use crate::clock::now_ms;
use crate::cloud::{Cloud, CloudError};
use crate::engine::{Engine, PlanLine, RetryPolicy};
use crate::environment::{EnvError, Environment};
use crate::event::{Event, RunState};
use crate::identity::operator;
use crate::recorder::Recorder;
use crate::reporter::{self, Mode};
use crate::runbook::{Runbook, RunbookError};
use crate::state::{AttemptRow, Holder, Progress, RunRow, StateDb, StateError, StateHandle, StateLocation};
use crate::status::StatusView;
use crate::steps::Services;

pub(crate) mod audit;
pub(crate) mod diagnose;
pub(crate) mod graph;
pub(crate) mod history;
pub(crate) mod logs;
pub(crate) mod plan;
pub(crate) mod resume;
pub(crate) mod retry;
pub(crate) mod ring;
pub(crate) mod run;
pub(crate) mod serve;
pub(crate) mod skip;
pub(crate) mod state;
pub(crate) mod status;
#[cfg(test)]
mod tests;
pub(crate) mod unlock;
pub(crate) mod watch;

/// `--env NAME`: the environment file a command works on.
#[derive(clap::Args)]
pub(crate) struct EnvArg {
    /// Environment file in runbooks/environments/ (default: the local ring).
    #[arg(long, default_value = "local")]
    pub(crate) env: String,
}

/// `--var NAME=VALUE`, repeatable: the runbook's variables.
#[derive(clap::Args)]
pub(crate) struct VarArgs {
    /// Set a runbook variable: --var NAME=VALUE (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub(crate) vars: Vec<String>,
}

/// A runbook on an environment with its variables: what `run` and `plan` are given.
#[derive(clap::Args)]
pub(crate) struct Target {
    /// The runbook's name: a file runbooks/NAME.toml (sprint-2, sprint-3, rollback).
    pub(crate) runbook: String,
    #[command(flatten)]
    pub(crate) env: EnvArg,
    #[command(flatten)]
    pub(crate) vars: VarArgs,
}

impl Target {
    /// The environment and the runbook, loaded and checked with the files it reads: bad input
    /// is refused here, before anything is opened or asked of the cloud.
    fn load(&self, g: &Globals) -> Result<Loaded, CliError> {
        let vars = parse_vars(&self.vars.vars)?;
        let env = Environment::load(&g.project, &self.env.env)?;
        let book = Runbook::load(&g.project, &self.runbook, &env, &vars)?;
        book.check_files(&g.project)?;
        Ok(Loaded { env, book, vars })
    }
}

/// A runbook loaded for an environment, with the variables it was given.
pub(crate) struct Loaded {
    pub(crate) env: Environment,
    pub(crate) book: Runbook,
    pub(crate) vars: BTreeMap<String, String>,
}

/// How the commands that apply changes are approved: `--yes`, and `--ack-rollback RUN`.
#[derive(clap::Args, Clone, Copy)]
pub(crate) struct Approval {
    /// Approve changes that ask for approval without prompting.
    #[arg(long)]
    pub(crate) yes: bool,
    /// Acknowledge that this run undoes the rollback of run RUN (a terraform plan that
    /// would put the rolled-back service forward again stops for it, even with --yes).
    #[arg(long, value_name = "RUN")]
    pub(crate) ack_rollback: Option<i64>,
}

/// Errors at the CLI edge; `render` turns each into a message and an exit code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// Boxed: the largest error, and errors travel through every `?`.
    #[error(transparent)]
    Runbook(Box<RunbookError>),
    #[error(transparent)]
    Environment(#[from] EnvError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error("{0}")]
    Usage(String),
    #[error(
        "run {run} holds the run lock and is alive (pid {pid} on {host}, heartbeat {heartbeat_age_s}s ago); \
         breaking it would let a second deploy run beside it. Wait for it; if you are sure: runbook \
         unlock --force --run {run} --yes (run {run} then stops before its next change)"
    )]
    LiveHolder { run: String, host: String, pid: i64, heartbeat_age_s: i64 },
    /// A step's maintenance action failed (releasing its tool's lock).
    #[error("{error}{}", error.fix().map(|f| format!("\n    fix: {f}")).unwrap_or_default())]
    Step { error: crate::steps::StepError },
    /// A step's preflight refused its inputs before anything ran; no run was recorded.
    #[error(
        "step {step} ({kind}) was checked before the run and refused: {}; nothing was changed and no run was \
         recorded{}",
        error,
        error.fix().map(|f| format!("\n    fix: {f}")).unwrap_or_default()
    )]
    Preflight { step: String, kind: String, error: crate::steps::StepError },
    /// After the run was recorded: not bad input, a failure of the run.
    #[error("run {run}: {source}; `runbook status {run}` shows where it stopped")]
    Recorded { run: i64, source: StateError },
}

impl CliError {
    /// The exit code (README's table): 3 another run holds the lock; 1 what failed after a run
    /// was recorded, or could not be told (AWS busy, a state DB that failed once opened); 2 the
    /// rest, which was refused before anything changed (bad input, an endpoint, an account or a
    /// state DB that cannot be reached or used, a preflight).
    pub(crate) fn code(&self) -> i32 {
        match self {
            CliError::State(StateError::Locked { .. }) | CliError::LiveHolder { .. } => 3,
            CliError::State(
                StateError::Sql { .. }
                | StateError::Postgres { .. }
                | StateError::Write { .. }
                | StateError::CommitUnknown { .. }
                | StateError::ConnectionLost { .. },
            )
            | CliError::Recorded { .. }
            | CliError::Step { .. }
            | CliError::Cloud(CloudError::Busy { .. }) => 1,
            _ => 2,
        }
    }
}

impl From<RunbookError> for CliError {
    fn from(e: RunbookError) -> Self {
        CliError::Runbook(Box::new(e))
    }
}

/// What a command did, for `main.rs` to render as text or JSON.
pub(crate) enum Outcome {
    Run {
        run: i64,
        status: RunState,
        view: Option<StatusView>,
        write_error: Option<String>,
        /// The webhook could not be told (the run's outcome stands).
        notify_error: Option<String>,
    },
    NothingToResume {
        run: i64,
        runbook: String,
    },
    Plan(Vec<PlanLine>),
    Status(StatusView),
    Logs {
        run: i64,
        step: String,
        attempts: Vec<AttemptRow>,
    },
    Graph(String),
    Skipped {
        run: i64,
        step: String,
        reason: String,
    },
    Unlocked(Option<Holder>),
    StateLockReleased {
        run: i64,
        step: String,
        lock_id: String,
    },
    Ring(i32),
    Diagnosis {
        env: String,
        findings: Vec<crate::steps::Finding>,
        elapsed_ms: u64,
    },
    History(crate::history::HistoryView),
    Audit(crate::history::AuditView),
    StateCopied(crate::state::Copied),
    /// `watch` has handed its polls to the sink `main.rs` gave it; the last verdict gives
    /// `--once` its exit code.
    Watch {
        verdict: Option<crate::watch::Verdict>,
        once: bool,
    },
    /// `serve` has stopped (Ctrl-C); what it had to say it said as it started.
    Served,
}

pub(crate) struct Globals {
    pub(crate) project: PathBuf,
    pub(crate) state: StateLocation,
    pub(crate) mode: Mode,
    pub(crate) approver: Approver,
    /// `--ack-rollback RUN`: the rollback run this run may undo.
    pub(crate) acknowledged_rollback: Option<i64>,
}

impl Globals {
    /// What the steps of a command may use, built here only. `run` is the run being recorded;
    /// without one (plan, diagnose, a preflight) nothing is ever approved.
    fn services(&self, env: Arc<Environment>, cloud: Arc<Cloud>, work: PathBuf, run: Option<i64>) -> Services {
        let announce = env.notify.is_some().then(|| announcer(env.clone(), cloud.clone()));
        Services {
            env,
            cloud,
            project: Arc::new(self.project.clone()),
            work_dir: Arc::new(work),
            approver: if run.is_some() { self.approver.clone() } else { Approver::Withheld },
            run,
            acknowledged_rollback: self.acknowledged_rollback,
            clock: crate::steps::Clock::State,
            announce,
        }
    }
}

/// Posts to the environment's webhook (a long wait's start and end).
fn announcer(env: Arc<Environment>, cloud: Arc<Cloud>) -> crate::steps::Announce {
    Arc::new(move |text: String| {
        let (env, cloud) = (env.clone(), cloud.clone());
        Box::pin(async move { crate::notify::post(&env, &cloud, &text).await })
    })
}

pub(crate) fn parse_vars(pairs: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CliError::Usage(format!(
                "--var {pair}: write --var NAME=VALUE (NAME is a variable of the runbook)"
            ))),
        })
        .collect()
}

/// Takes the lock and proves the cloud before anything is written; releases the lock again
/// if the cloud is not there.
/// The preflight, then the run lock: for a run already recorded (resume, retry), whose
/// finished steps are not checked again.
async fn lock_and_connect(
    g: &Globals,
    db: &mut StateDb,
    run: (&Runbook, &Environment, &Progress),
    me: &Holder,
) -> Result<(Arc<Cloud>, Vec<Event>), CliError> {
    let (book, env, progress) = run;
    let cloud = connect(g, book, env, &progress.outputs, |id| !progress.finished.contains(id)).await?;
    let takeover = take_lock(db, me)?;
    Ok((cloud, takeover.into_iter().collect()))
}

/// The cloud's clients, once the read-only preflights have passed: the environment's
/// (credentials, account, reachability), then that of every step that will run (files, names
/// and ids, access). Run before anything is written, so that a refusal leaves the state DB as
/// it was and records no run.
async fn connect(
    g: &Globals,
    book: &Runbook,
    env: &Environment,
    outputs: &BTreeMap<String, crate::event::Outputs>,
    will_run: impl Fn(&str) -> bool,
) -> Result<Arc<Cloud>, CliError> {
    let cloud = Cloud::connect(env).await;
    cloud.preflight(env).await?;
    let cloud = Arc::new(cloud);
    let services = Arc::new(g.services(Arc::new(env.clone()), cloud.clone(), std::env::temp_dir(), None));
    crate::engine::preflight(book, services, outputs, will_run).await.map_err(|r| CliError::Preflight {
        step: r.step,
        kind: r.kind,
        error: r.error,
    })?;
    Ok(cloud)
}

/// Takes the run lock for `me`; a dead holder's lease that was taken over comes back as the
/// event that records it.
fn take_lock(db: &mut StateDb, me: &Holder) -> Result<Option<Event>, StateError> {
    let taken_over = crate::state::timing::measure(|| db.acquire_lock(me))?;
    Ok(taken_over.map(|h| Event::LockTakenOver {
        previous_host: h.host,
        previous_pid: h.pid,
        operator: operator(),
        host: me.host.clone(),
    }))
}

/// `--ack-rollback N` acknowledges undoing the rollback recorded by run N: bad input (exit 2,
/// never ignored) unless run N rolled a service back on this environment (an emergency restart
/// on the running revision rolls nothing back), or when it is given to a run that is done
/// (`resume` would have nothing to acknowledge it for).
fn check_acknowledgement(g: &Globals, db: &StateDb, env: &str, resumed: Option<&RunRow>) -> Result<(), CliError> {
    let Some(rollback) = g.acknowledged_rollback else { return Ok(()) };
    let marked = match db.run(rollback) {
        // An emergency restart on the running revision leaves nothing for a deploy to undo.
        Ok(row) if row.env == env => db
            .events_by_kind(Some(rollback), &["rollback_marked"])?
            .iter()
            .any(|e| matches!(&e.event, Ok(Event::RollbackMarked { from_revision, to_revision, .. }) if from_revision != to_revision)),
        _ => false,
    };
    if !marked {
        return Err(CliError::Usage(format!(
            "--ack-rollback {rollback}: run {rollback} rolled nothing back on {env}; give the run named in the \
             message that stopped the deploy (runbook audit --all lists the rollbacks), or leave the option out"
        )));
    }
    match resumed {
        Some(row) if row.status == RunState::Done => Err(CliError::Usage(format!(
            "--ack-rollback {rollback}: run {} of {} is done, so there is nothing to acknowledge in it; resume the \
             run that stopped for the rollback (runbook history lists the runs)",
            row.id, row.runbook
        ))),
        _ => Ok(()),
    }
}

/// The run to continue: the given one or the latest, with its runbook and environment loaded
/// as they are now (a change since the run began is recorded, not refused).
fn reopen(g: &Globals, db: &StateDb, run: Option<i64>) -> Result<(RunRow, Runbook, Environment, Vec<Event>), CliError> {
    let row = db.run_or_latest(run)?;
    let env = Environment::load(&g.project, &row.env)?;
    let book = Runbook::load(&g.project, &row.runbook, &env, &row.vars)?;
    let mut notes = Vec::new();
    if book.hash != row.runbook_hash {
        notes.push(Event::InputsChanged {
            what: format!("runbook {} changed since run {} began", book.path.display(), row.id),
        });
    }
    if book.inputs_hash != row.inputs_hash {
        notes.push(Event::InputsChanged {
            what: format!("environment {} changed since run {} began", env.path.display(), row.id),
        });
    }
    Ok((row, book, env, notes))
}

/// A run, ready to go: its lock held, its cloud proven.
struct Drive {
    db: StateDb,
    me: Holder,
    run: i64,
    book: Runbook,
    env: Environment,
    cloud: Arc<Cloud>,
    progress: Progress,
    resumed: bool,
    preface: Vec<Event>,
    /// The private folder for plans and apply logs.
    work: PathBuf,
}

async fn drive(g: &Globals, d: Drive) -> Result<Outcome, CliError> {
    let Drive { db, me, run, book, env, cloud, progress, resumed, preface, work } = d;
    let state = StateHandle::spawn(db);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let reporter = reporter::spawn(g.mode, rx);
    let recorder = Recorder::new(Some((state.clone(), run)), tx);
    let started = now_ms();
    recorder
        .emit(Event::RunStarted {
            run,
            runbook: book.name.clone(),
            env: env.name.clone(),
            operator: operator(),
            host: me.host.clone(),
            resumed,
        })
        .await;
    for event in preface {
        recorder.emit(event).await;
    }
    let holder = me.clone();
    state.call(move |db| db.lock_run(&holder, run)).await.map_err(|source| CliError::Recorded { run, source })?;
    let (beat, holder, stopper) = (state.clone(), me.clone(), recorder.clone());
    let heartbeat = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            let holder = holder.clone();
            // A lease someone broke or took: stop before the next side effect (each intent
            // checks the lease too, in the transaction that records it).
            if let Err(e @ StateError::LeaseLost { .. }) = beat.call(move |db| db.heartbeat(&holder)).await {
                stopper.stop(e.to_string());
                return;
            }
        }
    });
    // Kept beside the engine's: the webhook is told once the run has ended.
    let env = Arc::new(env);
    let swept = work.clone();
    let services = g.services(env.clone(), cloud.clone(), work, Some(run));
    let engine = Engine {
        runbook: Arc::new(book),
        services: Arc::new(services),
        recorder: recorder.clone(),
        retry: RetryPolicy::default(),
    };
    let status = engine.run(progress, shutdown_signal()).await;
    heartbeat.abort();
    sweep(&swept, true);
    recorder.emit(Event::RunFinished { run, status, duration_ms: (now_ms() - started).max(0) as u64 }).await;
    let write_error = recorder.write_error();
    drop(recorder);
    drop(engine);
    let _ = reporter.await;
    let view = state
        .call(move |db| {
            let _ = db.release_lock(&me);
            crate::status::view(db, Some(run), &me.host)
        })
        .await
        .ok();
    crate::state::timing::report_if_asked();
    let notify_error = crate::notify::after_run(&env, &cloud, run, status, view.as_ref()).await;
    Ok(Outcome::Run { run, status, view, write_error, notify_error })
}

/// The private folder of the state (`StateLocation::work_folder`), made ready for a command
/// that runs steps: created 0700; files left by processes that are gone are removed.
fn work_dir(state: &StateLocation) -> Result<PathBuf, CliError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = state.work_folder().map_err(|e| {
        CliError::Usage(format!("cannot prepare the private folder of {}: {e}", state.path().display()))
    })?;
    let fail = |e: std::io::Error| CliError::Usage(format!("cannot prepare the private folder {}: {e}", dir.display()));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(fail)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    std::fs::read_dir(&dir).map_err(fail)?;
    sweep(&dir, false);
    Ok(dir)
}

/// Removes the files of the private folder (`<pid>-<step>.tfplan`, which hold secrets) that
/// belong to processes that are gone and, at the end of a run, `ours` too. Run before a run
/// starts and again when it ends: a terraform that outlived a killed runbook may write its
/// plan after the first sweep.
fn sweep(dir: &Path, ours: bool) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').next().and_then(|p| p.parse::<i64>().ok());
        let mine = pid == Some(i64::from(std::process::id()));
        if pid.is_some_and(|pid| (mine && ours) || (!mine && !crate::state::process_alive(pid))) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
