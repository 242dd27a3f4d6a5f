//! The engine's behaviours with fake steps, in paused time, against a real SQLite state file:
//! retry with backoff and its budget, a fatal error stopping its branch while siblings finish,
//! conflicts, blocked downstream steps, Ctrl-C, a state DB that cannot be written, approval,
//! and a kill at each point of the step contract followed by a resume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Notify;

use super::*;
use crate::approval::Approver;
use crate::cloud::Cloud;
use crate::environment::Environment;
use crate::event::{Event, RunState, StepState};
use crate::project::{NamedFile, sha256_hex};
use crate::state::{NewRun, StateDb, StateHandle};
use crate::steps::{Kind, Step};

/// How a fake step fails or stalls, for one test.
#[derive(Debug, Clone, Default)]
struct Script {
    /// Errors the probe returns before it answers, in order.
    probe_errors: Vec<Failure>,
    /// The probe finds something else there.
    conflict: bool,
    /// Verify calls after the effect before it is satisfied.
    converge_after: u32,
    /// The step never converges.
    never_converges: bool,
    /// The apply needs approval.
    needs_approval: bool,
    /// Where the process "dies" (the step waits forever there).
    hang: Option<Hang>,
    /// Another operator breaks the run lock while this step applies.
    break_lease: bool,
    /// The PostgreSQL server drops the run's state connection after this step's side effect.
    drop_state_connection: bool,
    /// The preflight refuses the step's inputs.
    preflight_refuses: bool,
    /// After the side effect, the step logs this many lines and the server drops the run's
    /// state connection while the first of them are being committed.
    drop_state_connection_mid_log: u32,
}

#[derive(Debug, Clone, Copy)]
enum Failure {
    Retryable,
    Fatal,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Hang {
    /// After the intent, before the side effect.
    BeforeEffect,
    /// After the side effect, before apply returns.
    AfterEffect,
    /// In the verify after an apply.
    InVerify,
    /// In the probe, before any intent.
    InProbe,
    /// Stuck in the probe, the process alive (for Ctrl-C).
    Stuck,
}

/// What happened to one fake step.
#[derive(Debug, Default)]
struct Seen {
    script: Script,
    /// The side effect, counted: a resume must never repeat it.
    effects: u32,
    verifies: u32,
    /// Probes begun (the first thing a step does).
    probes: u32,
    input: Option<String>,
    /// The input each preflight saw.
    preflights: Vec<Option<String>>,
}

#[derive(Default)]
struct World {
    steps: BTreeMap<String, Seen>,
    hung: Arc<Notify>,
    /// Where the harness keeps this world's state (a file or a PostgreSQL URL).
    state: Option<PathBuf>,
    /// The PostgreSQL server process of the run's state connection.
    state_backend: Option<i64>,
}

static WORLDS: LazyLock<Mutex<BTreeMap<String, World>>> = LazyLock::new(Default::default);

fn with_world<R>(world: &str, f: impl FnOnce(&mut World) -> R) -> R {
    let mut worlds = WORLDS.lock().unwrap_or_else(|p| p.into_inner());
    f(worlds.entry(world.to_string()).or_default())
}

fn seen<R>(world: &str, step: &str, f: impl FnOnce(&mut Seen) -> R) -> R {
    with_world(world, |w| f(w.steps.entry(step.to_string()).or_default()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fake {
    world: String,
    #[serde(default)]
    input: Option<String>,
    #[serde(default = "ten")]
    converge_seconds: u64,
}

fn ten() -> u64 {
    10
}

async fn hang(world: &str) -> ! {
    let hung = with_world(world, |w| w.hung.clone());
    hung.notify_one();
    std::future::pending().await
}

fn fail(failure: Failure, what: &str) -> StepError {
    match failure {
        Failure::Retryable => StepError::retryable(format!("{what}: throttled")),
        Failure::Fatal => StepError::fatal(format!("{what}: access denied"), "fix the credentials"),
    }
}

impl Fake {
    fn done(&self, cx: &StepContext) -> Probe {
        Probe::Satisfied(Outputs::from([("value".to_string(), format!("{}-out", cx.step))]))
    }
}

impl Step for Fake {
    const KIND: &'static str = "fake";
    const OUTPUTS: Option<&'static [&'static str]> = Some(&["value"]);

    fn converge_within(&self) -> Duration {
        Duration::from_secs(self.converge_seconds)
    }

    async fn preflight(&self, cx: &StepContext) -> Result<(), StepError> {
        let refuses = seen(&self.world, &cx.step, |s| {
            s.preflights.push(self.input.clone());
            s.script.preflight_refuses
        });
        match refuses {
            true => Err(StepError::fatal("no such thing in this account", "check the name in the runbook")),
            false => Ok(()),
        }
    }

    async fn probe(&self, cx: &StepContext) -> Result<Probe, StepError> {
        let (next_error, script, effects) = seen(&self.world, &cx.step, |s| {
            s.input = self.input.clone();
            s.probes += 1;
            let next = (!s.script.probe_errors.is_empty()).then(|| s.script.probe_errors.remove(0));
            (next, s.script.clone(), s.effects)
        });
        if let Some(failure) = next_error {
            return Err(fail(failure, "probe"));
        }
        match script.hang {
            Some(Hang::InProbe) => hang(&self.world).await,
            Some(Hang::Stuck) => std::future::pending().await,
            _ => {}
        }
        if script.conflict {
            return Ok(Probe::Conflict("a thing with other settings is there".into()));
        }
        Ok(if effects > 0 { self.done(cx) } else { Probe::Absent("create the thing".into()) })
    }

    async fn apply(&self, cx: &StepContext) -> Result<(), StepError> {
        let script = seen(&self.world, &cx.step, |s| s.script.clone());
        if script.needs_approval && !cx.approve("Plan: 1 to add").await {
            return Err(StepError::AwaitingApproval { summary: "Plan: 1 to add".into(), fix: None });
        }
        if script.hang == Some(Hang::BeforeEffect) {
            hang(&self.world).await;
        }
        seen(&self.world, &cx.step, |s| s.effects += 1);
        cx.log("created the thing").await;
        if script.break_lease {
            // Another operator's `unlock --force`, through the store the run uses.
            let state = with_world(&self.world, |w| w.state.clone()).expect("the harness names its state");
            let mut other = StateDb::open(&state).unwrap();
            let holder = other.lease("elsewhere").unwrap().expect("the run holds the lock").holder;
            assert!(other.break_lock(&holder).unwrap());
        }
        if script.drop_state_connection {
            drop_state_connection(&self.world);
        }
        if script.drop_state_connection_mid_log > 0 {
            drop_state_connection_mid_log(&self.world, cx, script.drop_state_connection_mid_log).await;
        }
        if script.hang == Some(Hang::AfterEffect) {
            hang(&self.world).await;
        }
        Ok(())
    }

    async fn verify(&self, cx: &StepContext) -> Result<Probe, StepError> {
        let (script, verifies) = seen(&self.world, &cx.step, |s| {
            s.verifies += 1;
            (s.script.clone(), s.verifies)
        });
        if script.hang == Some(Hang::InVerify) {
            hang(&self.world).await;
        }
        if script.never_converges || verifies <= script.converge_after {
            return Ok(Probe::Absent("the thing is still coming up".into()));
        }
        Step::probe(self, cx).await
    }
}

static FAKE_KINDS: &[Kind] = &[Kind::of::<Fake>()];

/// One test's world, state file and runbook.
struct Harness {
    world: String,
    dir: PathBuf,
    /// The state DB: `dir/state.db`, or a PostgreSQL schema of the test's own.
    state: PathBuf,
    schema: Option<crate::state::PgSchema>,
    runbook: Arc<Runbook>,
    services: Arc<Services>,
    run: i64,
}

fn environment() -> Environment {
    toml::from_str(
        r#"name = "test"
account_id = "000000000000"
region = "us-east-1"
loopback_only = true
[aws]
endpoint_url = "http://127.0.0.1:9"
[aws.emulator_credentials]
access_key_id = "test"
secret_access_key = "test"
"#,
    )
    .unwrap()
}

/// `steps`: (id, needs, extra params) in file order.
fn runbook_text(world: &str, steps: &[(&str, &[&str], &str)]) -> String {
    let mut text = String::from("name = \"fakes\"\n");
    for (id, needs, extra) in steps {
        let needs: Vec<String> = needs.iter().map(|n| format!("\"{n}\"")).collect();
        text.push_str(&format!(
            "[[steps]]\nid = \"{id}\"\ntitle = \"Fake {id}\"\nkind = \"fake\"\nneeds = [{}]\n[steps.params]\nworld = \"{world}\"\n{extra}\n",
            needs.join(", ")
        ));
    }
    text
}

/// A runbook named `name` of `registry`'s kinds, the services its steps get, and a run of it
/// recorded in the state DB at `state`: where the engine's tests and its benchmark start.
pub(super) async fn prepare(
    dir: &Path,
    state: &Path,
    registry: &'static [Kind],
    name: &str,
    text: String,
    approver: Approver,
) -> (Runbook, Arc<Services>, i64) {
    let env = environment();
    let file = NamedFile { path: dir.join(format!("{name}.toml")), hash: sha256_hex(text.as_bytes()), text };
    let runbook = Runbook::from_file(registry, file, name, &env, &BTreeMap::new()).unwrap();
    let mut db = StateDb::open(state).unwrap();
    let ids: Vec<String> = runbook.steps.iter().map(|s| s.id.clone()).collect();
    let vars = BTreeMap::new();
    let new = NewRun {
        runbook: name,
        env: "test",
        runbook_hash: "h",
        inputs_hash: "i",
        vars: &vars,
        operator: "tester",
        host: "here",
        steps: &ids,
    };
    let run = db.create_run(&new).unwrap();
    let cloud = Cloud::connect(&env).await;
    let services = Arc::new(Services {
        env: Arc::new(env),
        cloud: Arc::new(cloud),
        project: Arc::new(dir.to_path_buf()),
        work_dir: Arc::new(dir.to_path_buf()),
        approver,
        run: Some(run),
        acknowledged_rollback: None,
        clock: crate::steps::Clock::State,
        announce: None,
    });
    (runbook, services, run)
}

impl Harness {
    /// The world twice, as one test runs on each backend: its state in a SQLite file, then in
    /// a PostgreSQL schema of its own when a server is there (the variant says it is skipped
    /// otherwise). Each has its own world, so that what one did never counts for the other.
    async fn each(world: &str, steps: &[(&str, &[&str], &str)], approver: Approver) -> Vec<Self> {
        let mut both = vec![Self::on(world, steps, approver.clone(), None).await];
        if let Some(schema) = crate::state::PgSchema::fresh(&format!("engine_{world}")) {
            both.push(Self::on(&format!("{world}-pg"), steps, approver, Some(schema)).await);
        }
        both
    }

    async fn on(
        world: &str,
        steps: &[(&str, &[&str], &str)],
        approver: Approver,
        schema: Option<crate::state::PgSchema>,
    ) -> Self {
        let world = format!("{world}-{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("runbook-engine-{world}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let state = schema.as_ref().map(|s| s.location()).unwrap_or_else(|| dir.join("state.db"));
        with_world(&world, |w| w.state = Some(state.clone()));
        let (runbook, services, run) =
            prepare(&dir, &state, FAKE_KINDS, "fakes", runbook_text(&world, steps), approver).await;
        Harness { world, dir, state, schema, runbook: Arc::new(runbook), services, run }
    }

    fn script(&self, step: &str, script: Script) {
        seen(&self.world, step, |s| s.script = script);
    }

    fn seen<R>(&self, step: &str, f: impl FnOnce(&mut Seen) -> R) -> R {
        seen(&self.world, step, f)
    }

    fn db(&self) -> StateDb {
        StateDb::open(&self.state).unwrap()
    }

    /// Runs (or resumes) the run as `drive` does; `None` when the process "died".
    async fn run_until(&self, cancel: impl Future<Output = ()>) -> Option<(RunState, Vec<Event>)> {
        let mut db = self.db();
        let backend = db.backend_pid_for_tests();
        with_world(&self.world, |w| w.state_backend = backend);
        let me = crate::state::Holder::me("here");
        db.acquire_lock(&me).unwrap();
        db.lock_run(&me, self.run).unwrap();
        let progress = db.progress(self.run).unwrap();
        let state = StateHandle::spawn(db);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let recorder = Recorder::new(Some((state, self.run)), tx);
        let engine = Engine {
            runbook: self.runbook.clone(),
            services: self.services.clone(),
            recorder: recorder.clone(),
            retry: RetryPolicy::default(),
        };
        let hung = with_world(&self.world, |w| w.hung.clone());
        let status = tokio::select! {
            status = engine.run(progress, cancel) => status,
            () = hung.notified() => return None,
        };
        recorder.emit(Event::RunFinished { run: self.run, status, duration_ms: 0 }).await;
        drop((engine, recorder));
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            events.push(e);
        }
        Some((status, events))
    }

    async fn run(&self) -> (RunState, Vec<Event>) {
        self.run_until(std::future::pending()).await.expect("the run finished")
    }

    fn states(&self) -> Vec<(String, StepState)> {
        self.db().steps(self.run).unwrap().into_iter().map(|s| (s.step, s.state)).collect()
    }

    fn step_row(&self, step: &str) -> crate::state::StepRow {
        self.db().steps(self.run).unwrap().into_iter().find(|s| s.step == step).unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        WORLDS.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.world);
    }
}

/// Terminates the run's PostgreSQL connection, as a server restart or a failover would, and
/// waits until the server has closed it.
fn drop_state_connection(world: &str) {
    let (state, pid) = with_world(world, |w| (w.state.clone(), w.state_backend));
    let (Some(state), Some(pid)) = (state, pid) else { panic!("the run's state is not in PostgreSQL") };
    let mut admin = StateDb::open(&state).unwrap();
    admin.execute_for_tests(&format!("SELECT pg_terminate_backend({pid})")).unwrap();
    let gone = format!("SELECT 1 FROM pg_stat_activity WHERE pid = {pid}");
    for _ in 0..100 {
        if admin.execute_for_tests(&gone).unwrap() == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The client's end hears the close on its own thread.
    std::thread::sleep(Duration::from_millis(200));
}

/// Logs `lines` lines while the run's group commit of the first of them is held in flight (an
/// admin session locks `attempts`), then terminates the run's PostgreSQL connection under it,
/// as a restart during T2.4 did, and lets the server go on.
async fn drop_state_connection_mid_log(world: &str, cx: &StepContext, lines: u32) {
    let (state, pid) = with_world(world, |w| (w.state.clone(), w.state_backend));
    let (Some(state), Some(pid)) = (state, pid) else { panic!("the run's state is not in PostgreSQL") };
    let mut locker = StateDb::open(&state).unwrap();
    locker.execute_for_tests("BEGIN").unwrap();
    locker.execute_for_tests("LOCK TABLE attempts IN EXCLUSIVE MODE").unwrap();
    for n in 1..=lines {
        cx.log(format!("line {n} of {lines}")).await;
    }
    let mut admin = StateDb::open(&state).unwrap();
    let waiting = format!("SELECT 1 FROM pg_stat_activity WHERE pid = {pid} AND wait_event_type = 'Lock'");
    let mut polls = 0;
    while admin.execute_for_tests(&waiting).unwrap() == 0 {
        polls += 1;
        assert!(polls < 250, "the run's commit of its log lines never waited for the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    admin.execute_for_tests(&format!("SELECT pg_terminate_backend({pid})")).unwrap();
    let gone = format!("SELECT 1 FROM pg_stat_activity WHERE pid = {pid}");
    for _ in 0..250 {
        if admin.execute_for_tests(&gone).unwrap() == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    locker.execute_for_tests("ROLLBACK").unwrap();
}

fn pairs(expected: &[(&str, StepState)]) -> Vec<(String, StepState)> {
    expected.iter().map(|(s, st)| (s.to_string(), *st)).collect()
}

const CHAIN: &[(&str, &[&str], &str)] =
    &[("a", &[], ""), ("b", &["a"], "input = \"${steps.a.value}\""), ("c", &["b"], "")];

#[tokio::test(start_paused = true)]
async fn a_chain_runs_in_order_passes_outputs_and_a_rerun_changes_nothing() {
    for h in Harness::each("chain", CHAIN, Approver::Withheld).await {
        chain_and_rerun(h).await;
    }
}

async fn chain_and_rerun(h: Harness) {
    let (status, events) = h.run().await;
    assert_eq!(status, RunState::Done);
    assert_eq!(h.states(), pairs(&[("a", StepState::Applied), ("b", StepState::Applied), ("c", StepState::Applied)]));
    assert_eq!(h.seen("b", |s| s.input.clone()).as_deref(), Some("a-out"));
    let started: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted { step, .. } => Some(step.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(started, ["a", "b", "c"]);
    // Every step reset (as `retry --downstream a` would) is probed again and found satisfied.
    for id in ["a", "b", "c"] {
        h.db()
            .record(
                Some(h.run),
                &Event::StepReset { step: id.into(), reason: "test".into(), operator: "t".into(), host: "h".into() },
            )
            .unwrap();
    }
    let (status, _) = h.run().await;
    assert_eq!(status, RunState::Done);
    assert_eq!(
        h.states(),
        pairs(&[("a", StepState::Satisfied), ("b", StepState::Satisfied), ("c", StepState::Satisfied)])
    );
    assert_eq!(["a", "b", "c"].map(|s| h.seen(s, |s| s.effects)), [1, 1, 1]);
}

#[tokio::test(start_paused = true)]
async fn retryable_errors_are_retried_with_growing_pauses() {
    for h in Harness::each("retry", &[("a", &[], "")], Approver::Withheld).await {
        h.script("a", Script { probe_errors: vec![Failure::Retryable, Failure::Retryable], ..Script::default() });
        let started = tokio::time::Instant::now();
        let (status, events) = h.run().await;
        assert_eq!(status, RunState::Done);
        let delays: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                Event::StepRetrying { delay_ms, .. } => Some(*delay_ms),
                _ => None,
            })
            .collect();
        assert_eq!(delays, [1000, 2000]);
        assert!(started.elapsed() >= Duration::from_secs(3), "{:?}", started.elapsed());
        let attempts = h.db().attempts(h.run, "a").unwrap();
        let outcomes: Vec<Option<&str>> = attempts.iter().map(|a| a.outcome.as_deref()).collect();
        assert_eq!(outcomes, [Some("retryable_error"), Some("retryable_error"), Some("applied")]);
    }
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_ends_in_a_failure_that_says_how_to_go_on() {
    for h in Harness::each("budget", &[("a", &[], "")], Approver::Withheld).await {
        h.script("a", Script { probe_errors: vec![Failure::Retryable; 5], ..Script::default() });
        let (status, _) = h.run().await;
        assert_eq!(status, RunState::Failed);
        let row = h.step_row("a");
        assert_eq!((row.state, row.attempts), (StepState::Failed, 3));
        assert_eq!(row.last_error.as_deref(), Some("probe: throttled (gave up after 3 attempts)"));
        assert_eq!(row.fix, Some(format!("once the cause is fixed: runbook retry a --run {}", h.run)));
        assert_eq!(h.seen("a", |s| s.effects), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_fatal_error_stops_its_branch_while_siblings_finish() {
    let steps: &[(&str, &[&str], &str)] = &[("a", &[], ""), ("b", &["a"], ""), ("c", &[], ""), ("d", &["b", "c"], "")];
    for h in Harness::each("fatal", steps, Approver::Withheld).await {
        h.script("a", Script { probe_errors: vec![Failure::Fatal], ..Script::default() });
        h.script("c", Script { converge_after: 3, ..Script::default() });
        let (status, events) = h.run().await;
        assert_eq!(status, RunState::Failed);
        assert_eq!(
            h.states(),
            pairs(&[
                ("a", StepState::Failed),
                ("b", StepState::Blocked),
                ("c", StepState::Applied),
                ("d", StepState::Blocked)
            ])
        );
        assert_eq!(h.step_row("a").attempts, 1, "a fatal error is not retried");
        assert_eq!(h.step_row("b").last_error.as_deref(), Some("waits for a"));
        assert_eq!(
            h.step_row("d").last_error.as_deref(),
            Some("waits for a"),
            "blocked by the failed step, not by the blocked one"
        );
        assert!(events.iter().any(|e| matches!(e, Event::StepBlocked { step, .. } if step == "d")));
        assert_eq!(h.seen("b", |s| s.effects), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_conflict_fails_the_step_without_applying() {
    for h in Harness::each("conflict", &[("a", &[], ""), ("b", &["a"], "")], Approver::Withheld).await {
        h.script("a", Script { conflict: true, ..Script::default() });
        let (status, _) = h.run().await;
        assert_eq!(status, RunState::Failed);
        let row = h.step_row("a");
        assert_eq!(row.last_error.as_deref(), Some("conflict: a thing with other settings is there"));
        assert!(
            row.fix.unwrap().ends_with(&format!("then: runbook retry a --run {}", h.run)),
            "the hint names its run"
        );
        assert_eq!(h.seen("a", |s| s.effects), 0);
        assert_eq!(h.step_row("b").state, StepState::Blocked);
    }
}

#[tokio::test(start_paused = true)]
async fn a_step_that_does_not_converge_fails_at_its_budget() {
    for h in Harness::each("converge", &[("a", &[], "converge_seconds = 30")], Approver::Withheld).await {
        h.script("a", Script { never_converges: true, ..Script::default() });
        let started = tokio::time::Instant::now();
        let (status, events) = h.run().await;
        assert_eq!(status, RunState::Failed);
        assert!(started.elapsed() >= Duration::from_secs(30));
        assert_eq!(
            h.step_row("a").last_error.as_deref(),
            Some("applied, but not converged within 30s: still the thing is still coming up")
        );
        assert!(events.iter().any(|e| matches!(e, Event::StepWaiting { limit_ms: 30_000, .. })), "progress is shown");
    }
}

#[tokio::test(start_paused = true)]
async fn refused_approval_stops_the_step_resumably_and_is_recorded() {
    for h in Harness::each("refused", &[("a", &[], "")], Approver::Answer { operator: "ana".into(), yes: false }).await
    {
        h.script("a", Script { needs_approval: true, ..Script::default() });
        let (status, _) = h.run().await;
        assert_eq!(status, RunState::AwaitingApproval, "stopped for an approval, not failed");
        assert_eq!(h.db().run(h.run).unwrap().status, RunState::AwaitingApproval, "and recorded so");
        let row = h.step_row("a");
        assert_eq!(row.last_error.as_deref(), Some("awaiting approval: Plan: 1 to add"));
        assert_eq!(
            row.fix,
            Some(format!(
                "the change is listed above (again: runbook logs a --run {0}); to apply it: runbook resume {0} --yes",
                h.run
            ))
        );
        assert_eq!(h.seen("a", |s| s.effects), 0);
        let answers = h.db().events_of_kind(h.run, "approval_answered");
        assert_eq!(answers.len(), 1);
        assert!(
            answers[0].contains("\"operator\":\"ana\"") && answers[0].contains("\"approved\":false"),
            "{}",
            answers[0]
        );
        assert!(answers[0].contains("Plan: 1 to add"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_with_a_broken_step_beside_one_awaiting_approval_is_failed() {
    let steps: &[(&str, &[&str], &str)] = &[("a", &[], ""), ("b", &[], ""), ("c", &["a"], "")];
    for h in Harness::each("approval-and-failure", steps, Approver::Withheld).await {
        h.script("a", Script { needs_approval: true, ..Script::default() });
        h.script("b", Script { probe_errors: vec![Failure::Fatal], ..Script::default() });
        let (status, _) = h.run().await;
        assert_eq!(status, RunState::Failed, "a broken step outranks a wait for approval");
        assert_eq!(h.step_row("c").state, StepState::Blocked);
    }
    // Alone, the same approval leaves the run awaiting it, its downstream step blocked.
    for h in Harness::each("approval-alone", steps, Approver::Withheld).await {
        h.script("a", Script { needs_approval: true, ..Script::default() });
        let (status, _) = h.run().await;
        assert_eq!(status, RunState::AwaitingApproval);
        assert_eq!(h.step_row("b").state, StepState::Applied);
        assert_eq!(h.step_row("c").state, StepState::Blocked);
    }
}

#[tokio::test(start_paused = true)]
async fn given_approval_applies_and_records_who_approved_what() {
    for h in Harness::each("approved", &[("a", &[], "")], Approver::Answer { operator: "ana".into(), yes: true }).await
    {
        h.script("a", Script { needs_approval: true, ..Script::default() });
        assert_eq!(h.run().await.0, RunState::Done);
        assert_eq!(h.seen("a", |s| s.effects), 1);
        let answers = h.db().events_of_kind(h.run, "approval_answered");
        assert!(
            answers[0].contains("\"approved\":true") && answers[0].contains("\"summary\":\"Plan: 1 to add\""),
            "{}",
            answers[0]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn ctrl_c_interrupts_resumably_and_closes_attempts_that_did_nothing() {
    for h in Harness::each("ctrlc", &[("a", &[], ""), ("b", &[], "")], Approver::Withheld).await {
        h.script("a", Script { hang: Some(Hang::Stuck), ..Script::default() });
        h.script("b", Script { hang: Some(Hang::Stuck), ..Script::default() });
        // Ctrl-C a second in: both steps are in their probes.
        let (status, events) = h.run_until(tokio::time::sleep(Duration::from_secs(1))).await.unwrap();
        assert_eq!(status, RunState::Interrupted);
        assert!(matches!(events.last(), Some(Event::RunFinished { status: RunState::Interrupted, .. })));
        let db = h.db();
        assert_eq!(db.run(h.run).unwrap().status, RunState::Interrupted);
        for step in ["a", "b"] {
            assert_eq!(db.attempts(h.run, step).unwrap()[0].outcome.as_deref(), Some("interrupted"));
        }
        // Resumed without the hang, both finish.
        h.script("a", Script::default());
        h.script("b", Script::default());
        assert_eq!(h.run().await.0, RunState::Done);
    }
}

#[tokio::test(start_paused = true)]
async fn a_state_db_that_cannot_record_the_intent_stops_before_the_side_effect() {
    for h in Harness::each("nowrite", &[("a", &[], ""), ("b", &["a"], "")], Approver::Withheld).await {
        h.db().fail_intents_for_tests();
        let (status, _) = h.run().await;
        assert_eq!(status, RunState::Failed);
        assert_eq!(h.seen("a", |s| s.effects), 0, "nothing applied without a recorded intent");
        assert_eq!(h.seen("b", |s| s.effects), 0);
    }
}

/// Kills the process at `hang` during step b of a chain, then resumes: b's side effect
/// happens once, b is settled (in doubt when the intent was recorded), and the run finishes.
async fn kill_then_resume(name: &str, hang: Hang, effects_before_resume: u32, outcome: StepState) {
    for h in Harness::each(name, CHAIN, Approver::Withheld).await {
        kill_then_resume_on(h, hang, effects_before_resume, outcome).await;
    }
}

async fn kill_then_resume_on(h: Harness, hang: Hang, effects_before_resume: u32, outcome: StepState) {
    h.script("b", Script { hang: Some(hang), ..Script::default() });
    assert!(h.run_until(std::future::pending()).await.is_none(), "the run was killed");
    assert_eq!(h.seen("b", |s| s.effects), effects_before_resume);
    let row = h.step_row("b");
    assert_eq!((row.state, row.in_doubt), (StepState::Running, true), "b is in doubt after the kill");
    h.script("b", Script::default());
    let (status, events) = h.run().await;
    assert_eq!(status, RunState::Done);
    assert!(events.iter().any(|e| matches!(e, Event::StepStarted { step, in_doubt: true, .. } if step == "b")));
    assert_eq!(h.seen("b", |s| s.effects), 1, "the side effect happened exactly once");
    assert_eq!(h.states(), pairs(&[("a", StepState::Applied), ("b", outcome), ("c", StepState::Applied)]));
    assert_eq!(h.seen("a", |s| s.effects), 1, "a finished step is not run again");
}

#[tokio::test(start_paused = true)]
async fn killed_after_the_intent_the_step_is_applied_once_on_resume() {
    kill_then_resume("kill-intent", Hang::BeforeEffect, 0, StepState::Applied).await;
}

#[tokio::test(start_paused = true)]
async fn killed_mid_apply_the_step_is_settled_by_its_probe_on_resume() {
    kill_then_resume("kill-mid", Hang::AfterEffect, 1, StepState::Satisfied).await;
}

#[tokio::test(start_paused = true)]
async fn killed_during_the_verify_the_step_is_settled_by_its_probe_on_resume() {
    kill_then_resume("kill-verify", Hang::InVerify, 1, StepState::Satisfied).await;
}

#[tokio::test(start_paused = true)]
async fn killed_before_the_intent_nothing_is_in_doubt() {
    for h in Harness::each("kill-probe", CHAIN, Approver::Withheld).await {
        h.script("b", Script { hang: Some(Hang::InProbe), ..Script::default() });
        assert!(h.run_until(std::future::pending()).await.is_none());
        assert!(!h.step_row("b").in_doubt);
        h.script("b", Script::default());
        assert_eq!(h.run().await.0, RunState::Done);
        assert_eq!(h.seen("b", |s| s.effects), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn plan_probes_read_only_and_waits_for_missing_inputs() {
    for h in Harness::each("plan", CHAIN, Approver::Withheld).await {
        seen(&h.world, "a", |s| s.effects = 1);
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let lines = plan(&h.runbook, h.services.clone(), Recorder::new(None, tx)).await;
        let verdicts: Vec<(&str, PlanVerdict)> = lines.iter().map(|l| (l.step.as_str(), l.verdict)).collect();
        assert_eq!(
            verdicts,
            [("a", PlanVerdict::Satisfied), ("b", PlanVerdict::WouldApply), ("c", PlanVerdict::WouldApply)]
        );
        h.script("a", Script { conflict: true, ..Script::default() });
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let lines = plan(&h.runbook, h.services.clone(), Recorder::new(None, tx)).await;
        assert_eq!(lines[1].verdict, PlanVerdict::AfterUpstream);
        assert_eq!(lines[1].detail, "probed once a has run");
        assert_eq!(["a", "b", "c"].map(|s| h.seen(s, |s| s.effects)), [1, 0, 0], "plan applies nothing");
    }
}

#[tokio::test(start_paused = true)]
async fn an_in_doubt_step_that_the_probe_finds_done_must_still_pass_its_verify() {
    for h in Harness::each("settle", CHAIN, Approver::Withheld).await {
        h.script("b", Script { hang: Some(Hang::AfterEffect), ..Script::default() });
        assert!(h.run_until(std::future::pending()).await.is_none());
        // The effect is there (the probe says satisfied), but what it should have become is not.
        h.script("b", Script { never_converges: true, ..Script::default() });
        let (status, _) = h.run().await;
        assert_eq!(status, RunState::Failed);
        let row = h.step_row("b");
        assert_eq!(row.state, StepState::Failed);
        assert!(row.last_error.unwrap().starts_with("applied, but not converged within 10s"));
        assert_eq!(h.seen("b", |s| s.effects), 1, "settling never applies again");
        // Once it verifies, the resumed step counts as done.
        h.script("b", Script::default());
        assert_eq!(h.run().await.0, RunState::Done);
        assert_eq!(h.step_row("b").state, StepState::Satisfied);
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_whose_lock_was_broken_applies_nothing_more() {
    for h in Harness::each("lease", CHAIN, Approver::Withheld).await {
        h.script("a", Script { break_lease: true, ..Script::default() });
        let (status, _) = h.run().await;
        assert_eq!(status, RunState::Failed);
        assert_eq!(h.seen("a", |s| s.effects), 1);
        assert_eq!(h.seen("b", |s| s.effects), 0, "no side effect after the lease was lost");
        let row = h.step_row("b");
        assert_eq!(row.state, StepState::Failed);
        let error = row.last_error.unwrap();
        assert!(error.contains("no longer holds the run lock") && error.contains("nobody holds it"), "{error}");
        assert_eq!(h.step_row("c").state, StepState::Blocked);
    }
}

#[tokio::test(start_paused = true)]
async fn a_state_connection_the_server_dropped_is_made_again_and_the_run_finishes() {
    for h in Harness::each("dropped", CHAIN, Approver::Withheld).await {
        if h.schema.is_none() {
            continue; // SQLite has no connection to lose.
        }
        h.script("a", Script { drop_state_connection: true, ..Script::default() });
        let (status, _) = h.run().await;
        assert_eq!(status, RunState::Done, "{:?}", h.states());
        assert_eq!(
            h.states(),
            pairs(&[("a", StepState::Applied), ("b", StepState::Applied), ("c", StepState::Applied)])
        );
        assert_eq!(["a", "b", "c"].map(|s| h.seen(s, |s| s.effects)), [1, 1, 1]);
        assert_eq!(h.db().run(h.run).unwrap().status, RunState::Done, "the run's end is recorded");
    }
}

#[tokio::test(start_paused = true)]
async fn log_lines_in_flight_when_the_state_connection_drops_are_written_after_the_reconnect() {
    for h in Harness::each("droplog", CHAIN, Approver::Withheld).await {
        if h.schema.is_none() {
            continue; // SQLite has no connection to lose.
        }
        h.script("a", Script { drop_state_connection_mid_log: 76, ..Script::default() });
        let (status, _) = h.run().await;
        let attempts = h.db().attempts(h.run, "a").unwrap();
        let log = &attempts.last().unwrap().log;
        let mut expected = String::from("created the thing\n");
        for n in 1..=76 {
            expected.push_str(&format!("line {n} of 76\n"));
        }
        assert_eq!(log, &expected, "every line once, in order");
        assert_eq!(status, RunState::Done, "{:?}", h.states());
        assert_eq!(["a", "b", "c"].map(|s| h.seen(s, |s| s.effects)), [1, 1, 1]);
    }
}

/// Sprint 2's graph, as runbooks/sprint-2.toml has it: T2.2 and T2.8 read outputs of steps
/// they need (T2.8 reads T2.4's, through T2.7).
const SPRINT2: &[(&str, &[&str], &str)] = &[
    ("T2.1", &[], ""),
    ("T2.2", &["T2.1"], "input = \"${steps.T2.1.value}\""),
    ("T2.3", &[], ""),
    ("T2.4", &["T2.2"], ""),
    ("T2.5", &["T2.4", "T2.3"], ""),
    ("T2.6", &["T2.5"], ""),
    ("T2.7", &["T2.6"], ""),
    ("T2.8", &["T2.7"], "input = \"${steps.T2.4.value}\""),
];

impl Harness {
    /// `runbook skip STEP --reason …`, as the command records it.
    fn skip(&self, step: &str) {
        let skipped =
            Event::StepSkipped { step: step.into(), reason: "x".into(), operator: "ana".into(), host: "h".into() };
        self.db().record(Some(self.run), &skipped).unwrap();
    }

    /// Resolves once `step` has begun its probe (to Ctrl-C a run there).
    async fn probing(&self, step: &str) {
        while self.seen(step, |s| s.probes) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What `runbook retry` records for each step it runs again.
    fn reset(&self, steps: &[&str]) {
        for step in steps {
            let reset = Event::StepReset {
                step: step.to_string(),
                reason: "runbook retry".into(),
                operator: "ana".into(),
                host: "h".into(),
            };
            self.db().record(Some(self.run), &reset).unwrap();
        }
    }

    /// Every step started in `events` started after each step it needs that ran in them had
    /// finished (was done, not merely started).
    fn assert_dependency_order(&self, events: &[Event]) {
        fn start(e: &Event) -> Option<&str> {
            match e {
                Event::StepStarted { step, .. } => Some(step),
                _ => None,
            }
        }
        fn done(e: &Event) -> Option<&str> {
            match e {
                Event::StepDone { step, .. } => Some(step),
                _ => None,
            }
        }
        let position = |wanted: fn(&Event) -> Option<&str>, id: &str| events.iter().position(|e| wanted(e) == Some(id));
        for step in &self.runbook.steps {
            let Some(started) = position(start, &step.id) else { continue };
            for need in step.needs.iter().filter(|n| position(start, n).is_some()) {
                let need_done = position(done, need);
                assert!(
                    need_done.is_some_and(|d| d < started),
                    "{} started before {need}, which it needs, was done: {events:#?}",
                    step.id
                );
            }
        }
    }
}

/// The steps started in `events`, in order.
fn started(events: &[Event]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted { step, .. } => Some(step.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_step_skipped_before_its_upstream_ran_never_acts_and_the_rest_runs_in_dependency_order() {
    for h in Harness::each("skip-early", SPRINT2, Approver::Withheld).await {
        // `run sprint-2`, Ctrl-C as T2.4 starts, `skip T2.7 --reason x`, `resume`.
        h.script("T2.4", Script { hang: Some(Hang::Stuck), ..Script::default() });
        let t23_done = async {
            while h.step_row("T2.3").state != StepState::Applied {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let (status, _) = h
            .run_until(async {
                tokio::join!(h.probing("T2.4"), t23_done);
            })
            .await
            .unwrap();
        assert_eq!(status, RunState::Interrupted);
        h.skip("T2.7");
        h.script("T2.4", Script::default());
        let (status, events) = h.run().await;
        assert_eq!(status, RunState::Done, "{:?}", h.states());
        assert_eq!(h.seen("T2.7", |s| s.effects), 0, "a skipped step never acts");
        assert_eq!(started(&events), ["T2.4", "T2.5", "T2.6", "T2.8"]);
        h.assert_dependency_order(&events);
        assert_eq!(h.step_row("T2.7").state, StepState::Skipped, "status says what the audit says");
        assert_eq!(h.seen("T2.8", |s| s.input.clone()).as_deref(), Some("T2.4-out"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_retried_step_runs_before_what_waits_on_it_and_nothing_finished_runs_again() {
    for h in Harness::each("retry-mid", SPRINT2, Approver::Withheld).await {
        h.script("T2.8", Script { probe_errors: vec![Failure::Fatal], ..Script::default() });
        assert_eq!(h.run().await.0, RunState::Failed);
        // `retry T2.6`: T2.6 again, then the rest of the run (T2.8, which failed), in order.
        h.reset(&["T2.6"]);
        let (status, events) = h.run().await;
        assert_eq!(status, RunState::Done, "{:?}", h.states());
        assert_eq!(started(&events), ["T2.6", "T2.8"], "T2.7 is done: it is not run again");
        h.assert_dependency_order(&events);
        assert_eq!(h.seen("T2.7", |s| s.effects), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn retry_runs_the_step_alone_on_a_done_run_and_with_downstream_what_it_names_in_order() {
    for h in Harness::each("retry-done", SPRINT2, Approver::Withheld).await {
        assert_eq!(h.run().await.0, RunState::Done);
        h.reset(&["T2.6"]);
        let (status, events) = h.run().await;
        assert_eq!((status, started(&events)), (RunState::Done, vec!["T2.6"]));
        // `retry T2.6 --downstream`, with T2.7 skipped since: the skip is undone by the retry.
        h.skip("T2.7");
        h.reset(&["T2.6", "T2.7", "T2.8"]);
        let (status, events) = h.run().await;
        assert_eq!((status, started(&events)), (RunState::Done, vec!["T2.6", "T2.7", "T2.8"]));
        h.assert_dependency_order(&events);
    }
}

#[tokio::test(start_paused = true)]
async fn a_step_that_needs_a_skipped_steps_outputs_fails_its_preconditions_naming_it() {
    for h in Harness::each("skip-inputs", CHAIN, Approver::Withheld).await {
        h.skip("a");
        let (status, _) = h.run().await;
        assert_eq!(status, RunState::Failed);
        assert_eq!(["a", "b", "c"].map(|s| h.seen(s, |s| s.effects)), [0, 0, 0]);
        assert_eq!(
            h.states(),
            pairs(&[("a", StepState::Skipped), ("b", StepState::Failed), ("c", StepState::Blocked)])
        );
        let row = h.step_row("b");
        let error = row.last_error.unwrap();
        assert!(error.starts_with("preconditions:") && error.contains("a was skipped"), "{error}");
        let fix = row.fix.unwrap();
        assert!(fix.contains(&format!("runbook retry a --run {}", h.run)), "{fix}");
        // Un-skipped (the retry the fix names), a runs and so does the rest.
        h.reset(&["a", "b"]);
        assert_eq!(h.run().await.0, RunState::Done);
        assert_eq!(["a", "b", "c"].map(|s| h.seen(s, |s| s.effects)), [1, 1, 1]);
    }
}

/// Every step's preflight runs before any step probes or applies, in dependency order; an
/// input from an upstream step that has not run reads as the placeholder; a refusal names its
/// step, and nothing ran.
#[tokio::test(start_paused = true)]
async fn preflights_run_for_every_step_before_any_acts_and_a_refusal_stops_all() {
    for h in Harness::each("preflight", CHAIN, Approver::Withheld).await {
        let outputs = BTreeMap::new();
        preflight(&h.runbook, h.services.clone(), &outputs, |_| true).await.unwrap();
        assert_eq!(h.seen("b", |s| s.preflights.clone()), [Some(crate::steps::UPSTREAM.to_string())]);
        h.script("c", Script { preflight_refuses: true, ..Script::default() });
        let refusal = preflight(&h.runbook, h.services.clone(), &outputs, |_| true).await.unwrap_err();
        assert_eq!((refusal.step.as_str(), refusal.kind.as_str()), ("c", "fake"));
        assert_eq!(["a", "b", "c"].map(|s| h.seen(s, |s| s.probes + s.effects)), [0, 0, 0], "nothing ran");
        // A resume checks only what will run, with the outputs already recorded.
        let done = BTreeMap::from([("a".to_string(), Outputs::from([("value".to_string(), "a-out".to_string())]))]);
        preflight(&h.runbook, h.services.clone(), &done, |id| id == "b").await.unwrap();
        assert_eq!(h.seen("b", |s| s.preflights.last().cloned()), Some(Some("a-out".to_string())));
        assert_eq!(h.seen("a", |s| s.preflights.len()), 2, "a is done: not checked again");
    }
}

/// A read-only check for `diagnose`: one finding, after `millis` of work.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeCheck {
    millis: u64,
}

impl Step for FakeCheck {
    const KIND: &'static str = "fake_check";
    const OUTPUTS: Option<&'static [&'static str]> = None;
    const CHECK: bool = true;

    fn converge_within(&self) -> Duration {
        Duration::ZERO
    }

    async fn probe(&self, _cx: &StepContext) -> Result<Probe, StepError> {
        Ok(Probe::Satisfied(Outputs::new()))
    }

    async fn apply(&self, _cx: &StepContext) -> Result<(), StepError> {
        Ok(())
    }

    async fn examine(&self, cx: &StepContext) -> Vec<Finding> {
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        vec![Finding {
            check: cx.step.clone(),
            verdict: crate::steps::Verdict::Ok,
            value: format!("{} ms", self.millis),
            next: String::new(),
            details: Vec::new(),
        }]
    }
}

static CHECK_KINDS: &[Kind] = &[Kind::of::<Fake>(), Kind::of::<FakeCheck>()];

/// `runbook diagnose` runs the checks the runbook typed when it was loaded, all at once, and
/// says them in the runbook's order; a step that is no check refuses the whole diagnosis.
#[tokio::test(start_paused = true)]
async fn diagnose_runs_every_check_at_once_and_refuses_a_step_that_is_no_check() {
    let dir = std::env::temp_dir().join(format!("runbook-engine-diagnose-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let step = |id: &str, kind: &str, params: &str| {
        format!("[[steps]]\nid = \"{id}\"\ntitle = \"{id}\"\nkind = \"{kind}\"\n[steps.params]\n{params}\n")
    };
    let load = |text: String| {
        let file = NamedFile { path: dir.join("checks.toml"), hash: sha256_hex(text.as_bytes()), text };
        Runbook::from_file(CHECK_KINDS, file, "checks", &environment(), &BTreeMap::new()).unwrap()
    };
    let services = crate::steps::test_services(&dir, &dir).await;
    let checks = format!(
        "name = \"checks\"\n{}{}",
        step("slow", "fake_check", "millis = 300"),
        step("quick", "fake_check", "millis = 100")
    );
    let started = Instant::now();
    let findings = diagnose(&load(checks.clone()), services.clone()).await.unwrap();
    let said: Vec<(&str, &str)> = findings.iter().map(|f| (f.check.as_str(), f.value.as_str())).collect();
    assert_eq!(said, [("slow", "300 ms"), ("quick", "100 ms")]);
    assert!(started.elapsed() < Duration::from_millis(400), "one after the other: {:?}", started.elapsed());

    let mixed = format!("{checks}{}", step("deploy", "fake", "world = \"unused\""));
    let refused = diagnose(&load(mixed), services).await.unwrap_err();
    assert_eq!(
        refused,
        "step deploy is of kind fake: runbook diagnose runs only read-only checks (kind = \"diagnose\")"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

mod waits;
