//! What each subcommand does, between argument parsing (`main.rs`) and the engine: load and
//! validate, take the lock, prove the cloud is reachable, then drive the engine and record.
//!
//! Order matters: everything that can reject bad input runs before the first write to the
//! state DB or the cloud.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::clock::now_ms;
use crate::cloud::{Cloud, CloudError};
use crate::engine::{Engine, PlanLine, Progress, RetryPolicy};
use crate::environment::Environment;
use crate::event::{Event, RunStatus};
use crate::recorder::Recorder;
use crate::reporter::{self, Mode};
use crate::runbook::{Runbook, RunbookError};
use crate::state::{NewRun, RunRow, StateDb, StateError, StateHandle};
use crate::steps::Approval;

/// Errors at the CLI edge, each with its exit code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error(transparent)]
    Runbook(#[from] RunbookError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            CliError::State(StateError::Locked { .. }) => 3,
            _ => 2,
        }
    }
}

pub(crate) struct Globals {
    pub(crate) project: PathBuf,
    pub(crate) state: PathBuf,
    pub(crate) mode: Mode,
    /// `--yes` on run, resume or retry.
    pub(crate) yes: bool,
}

impl Globals {
    fn approval(&self) -> Approval {
        use std::io::IsTerminal;
        if self.yes {
            Approval::Given
        } else if self.mode == Mode::Tty && std::io::stdin().is_terminal() {
            Approval::Ask
        } else {
            Approval::Withheld
        }
    }
}

pub(crate) fn exit_code(status: RunStatus) -> i32 {
    match status {
        RunStatus::Done => 0,
        RunStatus::Failed => 1,
        RunStatus::Interrupted => 130,
    }
}

/// Who runs this: RUNBOOK_OPERATOR, else the login name, else the account of our uid.
fn operator() -> String {
    if let Ok(name) = std::env::var("RUNBOOK_OPERATOR").or_else(|_| std::env::var("USER")) {
        return name;
    }
    // SAFETY: getuid(2) cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() }.to_string();
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.get(2) == Some(&uid.as_str())).then(|| fields[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

pub(crate) fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn pid() -> i64 {
    i64::from(std::process::id())
}

pub(crate) fn parse_vars(pairs: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| CliError::Usage(format!("--var {pair}: write --var NAME=VALUE")))
        })
        .collect()
}

/// Takes the lock and proves the cloud before anything is written; releases the lock again
/// if the cloud is not there.
async fn lock_and_connect(db: &mut StateDb, env: &Environment) -> Result<(Cloud, Option<(String, i64)>), CliError> {
    let taken_over = db.acquire_lock(&host(), pid())?;
    let cloud = Cloud::connect(env).await;
    if let Err(e) = cloud.preflight(env).await {
        let _ = db.release_lock(pid());
        return Err(e.into());
    }
    Ok((cloud, taken_over))
}

pub(crate) async fn run(g: &Globals, runbook: &str, env: &str, vars: BTreeMap<String, String>) -> Result<i32, CliError> {
    let env = Environment::load(&g.project, env)?;
    let book = Runbook::load(&g.project, runbook, &env, &vars)?;
    let mut db = StateDb::open(&g.state)?;
    let (cloud, taken_over) = lock_and_connect(&mut db, &env).await?;
    let step_ids: Vec<String> = book.steps.iter().map(|s| s.id.clone()).collect();
    let run = db.create_run(&NewRun {
        runbook: &book.name,
        env: &env.name,
        runbook_hash: &book.hash,
        inputs_hash: &book.inputs_hash,
        vars: &vars,
        operator: &operator(),
        host: &host(),
        steps: &step_ids,
    })?;
    let mut preface = Vec::new();
    if let Some((previous_host, previous_pid)) = taken_over {
        preface.push(Event::LockTakenOver { previous_host, previous_pid });
    }
    drive(g, db, run, book, env, cloud, Progress::default(), false, preface).await
}

/// The run to continue: the given one or the latest, with its runbook and environment loaded
/// as they are now (a change since the run began is recorded, not refused).
fn reopen(g: &Globals, db: &StateDb, run: Option<i64>) -> Result<(RunRow, Runbook, Environment, Vec<Event>), CliError> {
    let row = match run {
        Some(id) => db.run(id)?,
        None => db.latest_run(None)?,
    };
    let env = Environment::load(&g.project, &row.env)?;
    let book = Runbook::load(&g.project, &row.runbook, &env, &row.vars)?;
    let mut notes = Vec::new();
    if book.hash != row.runbook_hash {
        notes.push(Event::InputsChanged { what: format!("runbook {} changed since run {} began", book.path.display(), row.id) });
    }
    if book.inputs_hash != row.inputs_hash {
        notes.push(Event::InputsChanged { what: format!("environment {} changed since run {} began", env.path.display(), row.id) });
    }
    Ok((row, book, env, notes))
}

fn progress(db: &StateDb, run: i64) -> Result<Progress, StateError> {
    let mut progress = Progress { outputs: db.outputs(run)?, ..Progress::default() };
    for row in db.steps(run)? {
        if matches!(row.state.as_str(), "applied" | "satisfied" | "skipped") {
            progress.finished.insert(row.step.clone());
        }
        if row.in_doubt {
            progress.in_doubt.insert(row.step.clone());
        }
        progress.attempts.insert(row.step, row.attempts as u32);
    }
    Ok(progress)
}

pub(crate) async fn resume(g: &Globals, run: Option<i64>) -> Result<i32, CliError> {
    let mut db = StateDb::open(&g.state)?;
    let (row, book, env, mut notes) = reopen(g, &db, run)?;
    if row.status == "done" {
        println!("run {} of {} is done; nothing to resume (runbook run {} starts a new one)", row.id, row.runbook, row.runbook);
        return Ok(0);
    }
    let (cloud, taken_over) = lock_and_connect(&mut db, &env).await?;
    if let Some((previous_host, previous_pid)) = taken_over {
        notes.insert(0, Event::LockTakenOver { previous_host, previous_pid });
    }
    let progress = progress(&db, row.id)?;
    drive(g, db, row.id, book, env, cloud, progress, true, notes).await
}

pub(crate) async fn retry(g: &Globals, step: &str, downstream: bool, run: Option<i64>) -> Result<i32, CliError> {
    let mut db = StateDb::open(&g.state)?;
    let (row, book, env, mut notes) = reopen(g, &db, run)?;
    book.step(step)?;
    let mut reset = BTreeSet::from([step.to_string()]);
    if downstream {
        reset.extend(book.graph.downstream(step));
    }
    let (cloud, taken_over) = lock_and_connect(&mut db, &env).await?;
    if let Some((previous_host, previous_pid)) = taken_over {
        notes.insert(0, Event::LockTakenOver { previous_host, previous_pid });
    }
    for id in book.graph.topological().into_iter().filter(|id| reset.contains(id)) {
        notes.push(Event::StepReset { step: id, reason: format!("runbook retry {step}"), operator: operator() });
    }
    // The resets are recorded first, then progress is read back from the DB.
    for note in notes.drain(..) {
        db.record(Some(row.id), &note)?;
    }
    let progress = progress(&db, row.id)?;
    drive(g, db, row.id, book, env, cloud, progress, true, notes).await
}

pub(crate) fn skip(g: &Globals, step: &str, reason: &str, run: Option<i64>) -> Result<i32, CliError> {
    if reason.trim().is_empty() {
        return Err(CliError::Usage("--reason must say why the step is skipped; it goes into the audit log".into()));
    }
    let mut db = StateDb::open(&g.state)?;
    let (row, book, _, _) = reopen(g, &db, run)?;
    book.step(step)?;
    db.acquire_lock(&host(), pid())?;
    let recorded = db.record(
        Some(row.id),
        &Event::StepSkipped { step: step.to_string(), reason: reason.to_string(), operator: operator() },
    );
    db.release_lock(pid())?;
    recorded?;
    println!("{step} skipped in run {} ({reason}); `runbook resume` continues with what depends on it", row.id);
    Ok(0)
}

pub(crate) fn unlock(g: &Globals) -> Result<i32, CliError> {
    let mut db = StateDb::open(&g.state)?;
    match db.break_lock()? {
        Some((previous_host, previous_pid)) => {
            db.record(None, &Event::LockBroken { previous_host: previous_host.clone(), previous_pid, operator: operator() })?;
            println!("broke the run lock held by pid {previous_pid} on {previous_host} (recorded in the audit log)");
        }
        None => println!("no run lock is held"),
    }
    Ok(0)
}

pub(crate) async fn plan(g: &Globals, runbook: &str, env: &str, vars: BTreeMap<String, String>) -> Result<Vec<PlanLine>, CliError> {
    let env = Environment::load(&g.project, env)?;
    let book = Runbook::load(&g.project, runbook, &env, &vars)?;
    let cloud = Cloud::connect(&env).await;
    cloud.preflight(&env).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let reporter = reporter::spawn(if g.mode == Mode::Json { Mode::Json } else { Mode::Plain }, rx);
    let lines =
        crate::engine::plan(&book, Arc::new(env), Arc::new(cloud), Recorder::new(None, tx), Arc::new(g.project.clone())).await;
    let _ = reporter.await;
    Ok(lines)
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    g: &Globals,
    db: StateDb,
    run: i64,
    book: Runbook,
    env: Environment,
    cloud: Cloud,
    progress: Progress,
    resumed: bool,
    preface: Vec<Event>,
) -> Result<i32, CliError> {
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
            host: host(),
            resumed,
        })
        .await;
    for event in preface {
        recorder.emit(event).await;
    }
    state.call(move |db| db.lock_run(pid(), run)).await?;
    let beat = state.clone();
    let heartbeat = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            let _ = beat.call(|db| db.heartbeat(pid())).await;
        }
    });

    let engine = Engine {
        runbook: Arc::new(book),
        env: Arc::new(env),
        cloud: Arc::new(cloud),
        recorder: recorder.clone(),
        retry: RetryPolicy::default(),
        project: Arc::new(g.project.clone()),
        approval: g.approval(),
    };
    let status = engine.run(progress, shutdown_signal()).await;
    heartbeat.abort();
    recorder
        .emit(Event::RunFinished { run, status, duration_ms: (now_ms() - started).max(0) as u64 })
        .await;
    let write_error = recorder.write_error();
    drop(recorder);
    drop(engine);
    let _ = reporter.await;
    let view = state
        .call(move |db| {
            let _ = db.release_lock(pid());
            crate::status::view(db, Some(run), &host())
        })
        .await?;
    if g.mode != Mode::Json {
        print!("{}", crate::status::render(&view));
    }
    if let Some(error) = write_error {
        eprintln!("error: the state DB could not be written: {error}");
        return Ok(1);
    }
    if status == RunStatus::Interrupted {
        eprintln!("interrupted: run {run} is recorded as interrupted; `runbook resume` continues it");
    }
    Ok(exit_code(status))
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

pub(crate) fn ring(project: &Path, action: &str) -> Result<i32, CliError> {
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
    Ok(status.code().unwrap_or(1))
}
