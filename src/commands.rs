//! What each subcommand does, between argument parsing and rendering (`main.rs`): load and
//! validate, take the lock, prove the cloud is reachable, then drive the engine and record.
//! Each returns a typed [`Outcome`]; nothing here prints.
//!
//! Order matters: everything that can reject bad input runs before the first write to the
//! state DB or the cloud.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::approval::Approver;
use crate::clock::now_ms;
use crate::cloud::{Cloud, CloudError};
use crate::engine::{Engine, PlanLine, RetryPolicy};
use crate::environment::{EnvError, Environment};
use crate::event::{Event, RunState};
use crate::identity::{host, operator};
use crate::recorder::Recorder;
use crate::reporter::{self, Mode};
use crate::runbook::{Runbook, RunbookError};
use crate::state::{AttemptRow, Holder, NewRun, Progress, RunRow, StateDb, StateError, StateHandle};
use crate::status::StatusView;
use crate::steps::Services;

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
}

pub(crate) struct Globals {
    pub(crate) project: PathBuf,
    pub(crate) state: PathBuf,
    pub(crate) mode: Mode,
    pub(crate) approver: Approver,
    /// `--ack-rollback RUN`: the rollback run this run may undo.
    pub(crate) acknowledged_rollback: Option<i64>,
}

impl Globals {
    /// What the steps of a command may use, built here only. `run` is the run being recorded;
    /// without one (plan, diagnose, a preflight) nothing is ever approved.
    fn services(&self, env: Arc<Environment>, cloud: Arc<Cloud>, work: PathBuf, run: Option<i64>) -> Services {
        Services {
            env,
            cloud,
            project: Arc::new(self.project.clone()),
            work_dir: Arc::new(work),
            approver: if run.is_some() { self.approver.clone() } else { Approver::Withheld },
            run,
            acknowledged_rollback: self.acknowledged_rollback,
        }
    }
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

pub(crate) async fn run(
    g: &Globals,
    runbook: &str,
    env: &str,
    vars: BTreeMap<String, String>,
) -> Result<Outcome, CliError> {
    let env = Environment::load(&g.project, env)?;
    let book = Runbook::load(&g.project, runbook, &env, &vars)?;
    book.check_files(&g.project)?;
    // A state DB that is there is checked before the cloud (a wrong --state is the likelier
    // mistake); one that is not is created only once the preflight has passed, so that a
    // refused run leaves nothing behind. Nothing is written before the preflight either.
    let opened = if crate::state::is_url(&g.state) {
        // Reached and read, not created: a PostgreSQL schema is made only for a run that starts.
        match StateDb::open_existing(&g.state, true) {
            Ok(_) | Err(StateError::Missing { .. }) => None,
            Err(e) => return Err(e.into()),
        }
    } else if g.state.exists() {
        Some(crate::state::timing::measure_open(|| StateDb::open(&g.state))?)
    } else {
        None
    };
    let cloud = connect(g, &book, &env, &BTreeMap::new(), |_| true).await?;
    let mut db = match opened {
        Some(db) => db,
        None => crate::state::timing::measure_open(|| StateDb::open(&g.state))?,
    };
    check_acknowledgement(g, &db, &env.name, None)?;
    let work = work_dir(&g.state)?;
    let me = Holder::me(&host());
    let notes: Vec<Event> = take_lock(&mut db, &me)?.into_iter().collect();
    let step_ids: Vec<String> = book.steps.iter().map(|s| s.id.clone()).collect();
    let created = crate::state::timing::measure(|| {
        db.create_run(&NewRun {
            runbook: &book.name,
            env: &env.name,
            runbook_hash: &book.hash,
            inputs_hash: &book.inputs_hash,
            vars: &vars,
            operator: &operator(),
            host: &me.host,
            steps: &step_ids,
        })
    });
    let run = match created {
        Ok(run) => run,
        Err(e) => {
            let _ = db.release_lock(&me);
            return Err(e.into());
        }
    };
    drive(
        g,
        Drive { db, me, run, book, env, cloud, progress: Progress::default(), resumed: false, preface: notes, work },
    )
    .await
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

pub(crate) async fn resume(g: &Globals, run: Option<i64>) -> Result<Outcome, CliError> {
    let mut db = crate::state::timing::measure_open(|| StateDb::open_existing(&g.state, false))?;
    let (row, book, env, notes) = reopen(g, &db, run)?;
    check_acknowledgement(g, &db, &env.name, Some(&row))?;
    if row.status == RunState::Done {
        return Ok(Outcome::NothingToResume { run: row.id, runbook: row.runbook });
    }
    book.check_files(&g.project)?;
    let work = work_dir(&g.state)?;
    let me = Holder::me(&host());
    let before = db.progress(row.id)?;
    let (cloud, mut preface) = lock_and_connect(g, &mut db, (&book, &env, &before), &me).await?;
    preface.extend(notes);
    let progress = db.progress(row.id).map_err(|source| CliError::Recorded { run: row.id, source })?;
    drive(g, Drive { db, me, run: row.id, book, env, cloud, progress, resumed: true, preface, work }).await
}

pub(crate) async fn retry(g: &Globals, step: &str, downstream: bool, run: Option<i64>) -> Result<Outcome, CliError> {
    let mut db = StateDb::open_existing(&g.state, false)?;
    let (row, book, env, notes) = reopen(g, &db, run)?;
    book.step(step)?;
    check_acknowledgement(g, &db, &env.name, None)?;
    book.check_files(&g.project)?;
    let mut reset = BTreeSet::from([step.to_string()]);
    if downstream {
        reset.extend(book.graph.downstream(step));
    }
    let work = work_dir(&g.state)?;
    let me = Holder::me(&host());
    let mut before = db.progress(row.id)?;
    before.finished.retain(|id| !reset.contains(id));
    let (cloud, mut preface) = lock_and_connect(g, &mut db, (&book, &env, &before), &me).await?;
    preface.extend(notes);
    for id in book.graph.topological().into_iter().filter(|id| reset.contains(id)) {
        preface.push(Event::StepReset {
            step: id,
            reason: format!("runbook retry {step}"),
            operator: operator(),
            host: me.host.clone(),
        });
    }
    // The resets are recorded first, then progress is read back from the DB.
    let recorded = |db: &mut StateDb, preface: &[Event]| -> Result<Progress, StateError> {
        for note in preface {
            db.record(Some(row.id), note)?;
        }
        db.progress(row.id)
    };
    let progress = recorded(&mut db, &preface).map_err(|source| CliError::Recorded { run: row.id, source })?;
    drive(g, Drive { db, me, run: row.id, book, env, cloud, progress, resumed: true, preface: Vec::new(), work }).await
}

pub(crate) fn skip(g: &Globals, step: &str, reason: &str, run: Option<i64>) -> Result<Outcome, CliError> {
    if reason.trim().is_empty() {
        return Err(CliError::Usage("--reason must say why the step is skipped; it goes into the audit log".into()));
    }
    let mut db = StateDb::open_existing(&g.state, false)?;
    let (row, book, _, _) = reopen(g, &db, run)?;
    book.step(step)?;
    let me = Holder::me(&host());
    let takeover = take_lock(&mut db, &me)?;
    let skipped = Event::StepSkipped {
        step: step.to_string(),
        reason: reason.to_string(),
        operator: operator(),
        host: me.host.clone(),
    };
    let recorded = takeover.iter().chain([&skipped]).try_for_each(|event| db.record(Some(row.id), event));
    let released = db.release_lock(&me);
    recorded.and(released).map_err(|source| CliError::Recorded { run: row.id, source })?;
    Ok(Outcome::Skipped { run: row.id, step: step.to_string(), reason: reason.to_string() })
}

/// Breaks the run lock. A live holder's lease is broken only when the operator names its run
/// and confirms (`--run N --yes`); the holder then stops before its next side effect.
pub(crate) fn unlock(g: &Globals, force: bool, run: Option<i64>, yes: bool) -> Result<Outcome, CliError> {
    if !force {
        return Err(CliError::Usage(
            "unlock breaks another run's lock; make sure that run is dead, then pass --force".into(),
        ));
    }
    let mut db = StateDb::open(&g.state)?;
    let Some(lease) = db.lease(&host())? else { return Ok(Outcome::Unlocked(None)) };
    if lease.alive && !(yes && run.is_some() && run == lease.run) {
        return Err(CliError::LiveHolder {
            run: lease.run.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            host: lease.holder.host,
            pid: lease.holder.pid,
            heartbeat_age_s: lease.heartbeat_age_s,
        });
    }
    if !db.break_lock(&lease.holder)? {
        return Err(CliError::Usage(
            "the run lock changed hands while it was being broken; nothing was broken. Look again: runbook status"
                .into(),
        ));
    }
    let h = &lease.holder;
    let event =
        Event::LockBroken { previous_host: h.host.clone(), previous_pid: h.pid, operator: operator(), host: host() };
    // With its run, when that run is in this DB.
    let run = lease.run.filter(|r| db.run(*r).is_ok());
    db.record(run, &event)?;
    Ok(Outcome::Unlocked(Some(lease.holder)))
}

/// Releases the terraform state lock `lock_id` that a dead run left in `step`'s workspace, on
/// the operator's explicit command, under runbook's own run lock (never beside a live run), and
/// records who did it.
pub(crate) async fn release_state_lock(
    g: &Globals,
    step: &str,
    lock_id: &str,
    run: Option<i64>,
) -> Result<Outcome, CliError> {
    let mut db = StateDb::open_existing(&g.state, false)?;
    let (row, book, env, _) = reopen(g, &db, run)?;
    let holds_lock = |kind: &str| crate::steps::find(book.registry, kind).is_some_and(|k| k.holds_lock);
    let named = book.step(step)?;
    if !holds_lock(&named.kind) {
        let lockers: Vec<&str> = book.steps.iter().filter(|s| holds_lock(&s.kind)).map(|s| s.id.as_str()).collect();
        return Err(CliError::Usage(format!(
            "step {step} is of kind {}, whose tool takes no lock of its own; `unlock --terraform` names a step \
             that does: {}",
            named.kind,
            if lockers.is_empty() { "none in this runbook".to_string() } else { lockers.join(", ") }
        )));
    }
    let typed = named.without_inputs();
    let work = work_dir(&g.state)?;
    let me = Holder::me(&host());
    let takeover = take_lock(&mut db, &me)?;
    let cloud = Arc::new(Cloud::connect(&env).await);
    let services = Arc::new(g.services(Arc::new(env.clone()), cloud, work, Some(row.id)));
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let cx = crate::steps::StepContext::new(&services, step, 0, Recorder::new(None, tx));
    let released = typed.release_lock(&cx, lock_id).await;
    let released_event = Event::StateLockReleased {
        step: step.to_string(),
        lock_id: lock_id.to_string(),
        operator: operator(),
        host: me.host.clone(),
    };
    let recorded = takeover
        .iter()
        .chain(released.is_ok().then_some(&released_event))
        .try_for_each(|event| db.record(Some(row.id), event));
    let _ = db.release_lock(&me);
    released.map_err(|error| CliError::Step { error })?;
    recorded.map_err(|source| CliError::Recorded { run: row.id, source })?;
    Ok(Outcome::StateLockReleased { run: row.id, step: step.to_string(), lock_id: lock_id.to_string() })
}

pub(crate) fn status(g: &Globals, run: Option<i64>) -> Result<Outcome, CliError> {
    let db = StateDb::open_existing(&g.state, true)?;
    Ok(Outcome::Status(crate::status::view(&db, run, &host())?))
}

pub(crate) fn logs(g: &Globals, step: &str, attempt: Option<i64>, run: Option<i64>) -> Result<Outcome, CliError> {
    let db = StateDb::open_existing(&g.state, true)?;
    let row = db.run_or_latest(run)?;
    let steps: Vec<String> = db.steps(row.id)?.into_iter().map(|s| s.step).collect();
    if !steps.iter().any(|s| s == step) {
        return Err(CliError::Usage(format!(
            "run {} has no step {step}; its steps: {}",
            row.id,
            if steps.is_empty() { "none".into() } else { steps.join(", ") }
        )));
    }
    let attempts = db.attempts(row.id, step)?;
    let have: Vec<String> = attempts.iter().map(|a| a.attempt.to_string()).collect();
    let chosen: Vec<AttemptRow> = match attempt {
        Some(n) => attempts.into_iter().filter(|a| a.attempt == n).collect(),
        None => attempts.into_iter().last().into_iter().collect(),
    };
    if chosen.is_empty() {
        return Err(CliError::Usage(format!(
            "run {} has no attempt {} of step {step}; attempts: {}",
            row.id,
            attempt.map(|a| a.to_string()).unwrap_or_else(|| "at all".into()),
            if have.is_empty() { "none".into() } else { have.join(", ") }
        )));
    }
    Ok(Outcome::Logs { run: row.id, step: step.to_string(), attempts: chosen })
}

/// The graph as DOT (`mermaid` false) or Mermaid.
pub(crate) fn graph(g: &Globals, runbook: &str, env: &str, mermaid: bool) -> Result<Outcome, CliError> {
    let env = Environment::load(&g.project, env)?;
    let book = Runbook::load(&g.project, runbook, &env, &BTreeMap::new())?;
    let titles: BTreeMap<String, String> = book.steps.iter().map(|s| (s.id.clone(), s.title.clone())).collect();
    Ok(Outcome::Graph(if mermaid { book.graph.to_mermaid(&titles) } else { book.graph.to_dot(&book.name, &titles) }))
}

pub(crate) async fn plan(
    g: &Globals,
    runbook: &str,
    env: &str,
    vars: BTreeMap<String, String>,
) -> Result<Outcome, CliError> {
    let env = Environment::load(&g.project, env)?;
    let book = Runbook::load(&g.project, runbook, &env, &vars)?;
    book.check_files(&g.project)?;
    let cloud = Cloud::connect(&env).await;
    cloud.preflight(&env).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let reporter = reporter::spawn(if g.mode == Mode::Json { Mode::Json } else { Mode::Plain }, rx);
    let services = Arc::new(g.services(Arc::new(env), Arc::new(cloud), work_dir(&g.state)?, None));
    let lines = crate::engine::plan(&book, services, Recorder::new(None, tx)).await;
    let _ = reporter.await;
    Ok(Outcome::Plan(lines))
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

/// `runbook state copy --from FILE.db --to postgres://…`.
pub(crate) fn state_copy(from: &Path, to: &Path) -> Result<Outcome, CliError> {
    Ok(Outcome::StateCopied(crate::state::copy(from, to)?))
}

/// The private folder beside the state DB for files that may hold secrets (terraform plans
/// and apply logs): created 0700; files left by processes that are gone are removed.
fn work_dir(state: &Path) -> Result<PathBuf, CliError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    // A state DB in PostgreSQL has no folder of its own: the default state folder holds it.
    let folder = if crate::state::is_url(state) {
        Path::new("state")
    } else {
        state.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
    };
    let dir = folder.join("work");
    // Absolute: steps run tools in other folders (terraform writes its plan here from its own).
    let dir = std::path::absolute(&dir)
        .map_err(|e| CliError::Usage(format!("cannot prepare the private folder {}: {e}", dir.display())))?;
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

pub(crate) fn ring(project: &Path, action: &str) -> Result<Outcome, CliError> {
    let script = project.join("ring").join(format!("{action}.sh"));
    if !script.is_file() {
        return Err(CliError::Usage(format!(
            "{} not found: run runbook from the project folder or pass --project",
            script.display()
        )));
    }
    let status = std::process::Command::new("bash")
        .arg(&script)
        .status()
        .map_err(|e| CliError::Usage(format!("cannot run {}: {e}", script.display())))?;
    Ok(Outcome::Ring(status.code().unwrap_or(1)))
}

/// `runbook history`: runs newest first, read-only.
pub(crate) fn history(
    g: &Globals,
    filter: &crate::state::RunFilter<'_>,
    before: Option<i64>,
    limit: Option<u32>,
) -> Result<Outcome, CliError> {
    let limit = limit.unwrap_or(crate::history::DEFAULT_LIMIT);
    if limit == 0 {
        return Err(CliError::Usage("--limit 0 lists nothing: give 1 or more (default 20)".into()));
    }
    let db = StateDb::open_existing(&g.state, true)?;
    let page = crate::state::Page { before, limit };
    Ok(Outcome::History(crate::history::history(&db, filter, page, &host())?))
}

/// `runbook audit`: the operator decisions of a run (default: the latest) or of all runs.
pub(crate) fn audit(g: &Globals, run: Option<i64>, all: bool) -> Result<Outcome, CliError> {
    let db = StateDb::open_existing(&g.state, true)?;
    Ok(Outcome::Audit(crate::history::audit(&db, run, all)?))
}

/// `runbook watch`: polls Dixie's and Finn's health every `interval` until Ctrl-C, or once,
/// handing each poll to `sink` as it comes. Read-only; each poll's transitions go to the
/// environment's webhook.
pub(crate) async fn watch(
    g: &Globals,
    env: &str,
    interval: Option<&str>,
    once: bool,
    sink: &mut impl crate::watch::Sink,
) -> Result<Outcome, CliError> {
    use crate::watch::{DEFAULT_INTERVAL, Targets, parse_interval};
    let env = Environment::load(&g.project, env)?;
    let targets = Targets::of(&env).map_err(CliError::Usage)?;
    let interval = interval.map(parse_interval).transpose().map_err(CliError::Usage)?.unwrap_or(DEFAULT_INTERVAL);
    let mut notifier = None;
    // One poll has no transition to tell.
    if !once && let Some(settings) = &env.notify {
        let cloud = match settings.webhook {
            crate::environment::WebhookSource::Ssm(_) => Some(Cloud::connect(&env).await),
            crate::environment::WebhookSource::Env(_) => None,
        };
        match crate::notify::Notifier::resolve(&env, cloud.as_ref()).await {
            Ok(resolved) => notifier = resolved,
            Err(e) => sink.notify_failed(&e),
        }
    }
    let max_polls = once.then_some(1);
    let verdict =
        crate::watch::watch(&env, &targets, interval, max_polls, notifier.as_ref(), shutdown_signal(), sink).await;
    Ok(Outcome::Watch { verdict, once })
}

/// `runbook diagnose`: every check of `runbooks/diagnose.toml` at once, read-only. It takes no
/// run lock and opens no state DB, so it works while a deploy holds the lock; the runbook is
/// validated like any other (unknown keys, missing vars: exit 2).
pub(crate) async fn diagnose(g: &Globals, env: &str, vars: BTreeMap<String, String>) -> Result<Outcome, CliError> {
    let env = Environment::load(&g.project, env)?;
    let book = Runbook::load(&g.project, "diagnose", &env, &vars)?;
    let cloud = Cloud::connect(&env).await;
    cloud.preflight(&env).await?;
    let started = std::time::Instant::now();
    let name = env.name.clone();
    // The checks only read: no plan or log file is ever written in the work folder given.
    let services = Arc::new(g.services(Arc::new(env), Arc::new(cloud), std::env::temp_dir(), None));
    let findings = crate::engine::diagnose(&book, services).await.map_err(CliError::Usage)?;
    Ok(Outcome::Diagnosis { env: name, findings, elapsed_ms: started.elapsed().as_millis() as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_private_work_folder_is_absolute_and_private_whatever_the_state_path() {
        use std::os::unix::fs::PermissionsExt;
        // The default --state is relative (state/runbook.db); terraform runs elsewhere.
        let relative = PathBuf::from(format!("target/runbook-work-test-{}/runbook.db", std::process::id()));
        let dir = work_dir(&relative).unwrap();
        assert!(dir.is_absolute(), "{}", dir.display());
        assert!(dir.ends_with(format!("target/runbook-work-test-{}/work", std::process::id())), "{}", dir.display());
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        // Files of processes that are gone are swept; ours stay.
        std::fs::write(dir.join("999999999-T2.4.tfplan"), "secret").unwrap();
        let mine = dir.join(format!("{}-T2.4.tfplan", std::process::id()));
        std::fs::write(&mine, "ours").unwrap();
        work_dir(&relative).unwrap();
        assert!(!dir.join("999999999-T2.4.tfplan").exists());
        assert!(mine.exists());
        // A dead run's terraform may write its plan after the first sweep: the run's end sweeps
        // again, its own files too.
        std::fs::write(dir.join("999999998-T2.4.tfplan"), "secret").unwrap();
        sweep(&dir, true);
        assert!(!dir.join("999999998-T2.4.tfplan").exists());
        assert!(!mine.exists());
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    /// A state DB with a deploy stopped on `local`, a rollback on `local` (run 2), an emergency
    /// restart on the running revision, which rolls nothing back (run 3), and a rollback on
    /// another environment (run 4).
    fn runs_with_a_rollback(name: &str) -> (PathBuf, StateDb) {
        let dir = std::env::temp_dir().join(format!("runbook-ack-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("state.db");
        let mut db = StateDb::open(&path).unwrap();
        let vars = BTreeMap::new();
        for (runbook, env) in
            [("sprint-2", "local"), ("rollback", "local"), ("rollback", "local"), ("rollback", "armitage")]
        {
            let run = db
                .create_run(&NewRun {
                    runbook,
                    env,
                    runbook_hash: "h",
                    inputs_hash: "i",
                    vars: &vars,
                    operator: "op",
                    host: "host",
                    steps: &["S".to_string()],
                })
                .unwrap();
            if runbook == "rollback" {
                let restart = run == 3;
                let marked = Event::RollbackMarked {
                    step: "R1".into(),
                    service: "dixie-armitage".into(),
                    from_revision: if restart { "1" } else { "2" }.into(),
                    to_revision: "1".into(),
                    operator: "op".into(),
                    host: "host".into(),
                    emergency: restart,
                    desired: restart.then_some(1),
                };
                db.record(Some(run), &marked).unwrap();
            }
        }
        (path, db)
    }

    fn globals(ack: Option<i64>) -> Globals {
        Globals {
            project: PathBuf::from("."),
            state: PathBuf::from("unused.db"),
            mode: Mode::Plain,
            approver: Approver::Withheld,
            acknowledged_rollback: ack,
        }
    }

    #[test]
    fn an_acknowledgement_that_applies_to_nothing_is_bad_input() {
        let (_path, db) = runs_with_a_rollback("apply");
        let deploy = db.run(1).unwrap();
        assert!(check_acknowledgement(&globals(None), &db, "local", Some(&deploy)).is_ok());
        assert!(check_acknowledgement(&globals(Some(2)), &db, "local", Some(&deploy)).is_ok());
        for (ack, why) in [
            (0, "no such run"),
            (99, "no such run"),
            (1, "a deploy, not a rollback"),
            (3, "an emergency restart on the running revision"),
            (4, "a rollback on another environment"),
        ] {
            let err = check_acknowledgement(&globals(Some(ack)), &db, "local", Some(&deploy)).unwrap_err();
            assert!(matches!(err, CliError::Usage(_)), "{why}: {err}");
            assert!(err.to_string().contains(&format!("run {ack} rolled nothing back on local")), "{why}: {err}");
        }
        // The rollback run itself is done: resuming it with an acknowledgement acknowledges nothing.
        let mut done = db.run(2).unwrap();
        done.status = RunState::Done;
        let err = check_acknowledgement(&globals(Some(2)), &db, "local", Some(&done)).unwrap_err();
        assert!(err.to_string().contains("run 2 of rollback is done, so there is nothing to acknowledge"), "{err}");
    }
}
