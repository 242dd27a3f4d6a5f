//! The engine's own cost, measured: 1,000 no-op steps as a chain and as a fan-out, through the
//! real engine and a real state file with `synchronous=FULL`. Run by `scripts/bench-engine`
//! (an ignored test, so that `cargo test` stays fast); it prints its figures.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::*;
use crate::approval::Approver;
use crate::event::RunState;
use crate::state::{StateDb, StateHandle, commits};
use crate::steps::{Kind, Step};

/// Absent until applied, then satisfied: the whole contract (probe, intent, apply, verify,
/// outcome) with no work inside it.
#[derive(Debug, Deserialize)]
struct Noop {
    #[serde(default)]
    satisfied: bool,
}

impl Step for Noop {
    const KIND: &'static str = "noop";
    const OUTPUTS: Option<&'static [&'static str]> = Some(&[]);

    fn converge_within(&self) -> Duration {
        Duration::from_secs(1)
    }

    async fn probe(&self, _cx: &StepContext) -> Result<Probe, StepError> {
        Ok(if self.satisfied { Probe::Satisfied(Outputs::new()) } else { Probe::Absent("nothing".into()) })
    }

    async fn apply(&self, _cx: &StepContext) -> Result<(), StepError> {
        Ok(())
    }

    async fn verify(&self, _cx: &StepContext) -> Result<Probe, StepError> {
        Ok(Probe::Satisfied(Outputs::new()))
    }
}

static NOOP: &[Kind] = &[Kind::of::<Noop>()];

/// Records a run of `text` (a runbook of no-op steps) in `state` and runs it to done through the
/// real engine and state owner; returns the engine's wall time.
async fn run_noops(dir: &std::path::Path, state: &std::path::Path, name: &str, text: String) -> Duration {
    let (runbook, services, run) = super::tests::prepare(dir, state, NOOP, name, text, Approver::Withheld).await;
    let handle = StateHandle::spawn(StateDb::open(state).unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let recorder = Recorder::new(Some((handle, run)), tx);
    let engine =
        Engine { runbook: Arc::new(runbook), services, recorder: recorder.clone(), retry: RetryPolicy::default() };
    let started = Instant::now();
    let status = engine.run(Progress::default(), std::future::pending()).await;
    recorder.emit(Event::RunFinished { run, status, duration_ms: 0 }).await;
    let wall = started.elapsed();
    assert_eq!(status, RunState::Done);
    drop((engine, recorder));
    drain.await.unwrap();
    wall
}

/// One shape on one backend: a SQLite file, or PostgreSQL when `schema` is given.
async fn measure(shape: &str, steps: usize, satisfied: bool, schema: Option<&crate::state::PgSchema>) -> String {
    let dir = std::env::temp_dir().join(format!("runbook-bench-{shape}-{satisfied}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = String::from("name = \"bench\"\n");
    for i in 0..steps {
        let needs = if shape == "chain" && i > 0 { format!("\"s{}\"", i - 1) } else { String::new() };
        text.push_str(&format!(
            "[[steps]]\nid = \"s{i}\"\ntitle = \"noop\"\nkind = \"noop\"\nneeds = [{needs}]\nparams = {{ satisfied = {satisfied} }}\n"
        ));
    }
    let state = schema.map(|s| s.location()).unwrap_or_else(|| dir.join("state.db"));
    let commits_before = commits();
    let wall = run_noops(&dir, &state, "bench", text).await;
    let commits = commits() - commits_before;
    let _ = std::fs::remove_dir_all(&dir);
    let per_step = wall.as_secs_f64() * 1000.0 / steps as f64;
    let kind = if satisfied { "satisfied" } else { "applied" };
    let backend = if schema.is_some() { "postgres" } else { "sqlite" };
    format!(
        "{backend:<9} {shape:<8} {kind:<10} {steps:>6} {:>9.3} {per_step:>12.3} {:>9} {:>14.2}",
        wall.as_secs_f64(),
        commits,
        commits as f64 / steps as f64
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: scripts/bench-engine runs it"]
async fn engine_overhead_per_step() {
    let steps: usize = std::env::var("BENCH_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let mut lines = vec![format!(
        "{:<9} {:<8} {:<10} {:>6} {:>9} {:>12} {:>9} {:>14}",
        "BACKEND", "SHAPE", "STEPS ARE", "STEPS", "WALL s", "ms PER STEP", "COMMITS", "COMMITS/STEP"
    )];
    let shapes = [("chain", false), ("fan-out", false), ("chain", true), ("fan-out", true)];
    for (shape, satisfied) in shapes {
        lines.push(measure(shape, steps, satisfied, None).await);
    }
    // PostgreSQL (RUNBOOK_PG_TEST_URL, or the ring's `runbook_state`), when one is there.
    for (shape, satisfied) in shapes {
        let Some(schema) = crate::state::PgSchema::fresh(&format!("bench_{shape}_{satisfied}")) else { break };
        lines.push(measure(shape, steps, satisfied, Some(&schema)).await);
    }
    println!("\n{}", lines.join("\n"));
}

/// Sprint 2's graph, of no-op steps that apply.
const SPRINT_2: &[(&str, &[&str])] = &[
    ("T2.1", &[]),
    ("T2.2", &["T2.1"]),
    ("T2.3", &[]),
    ("T2.4", &["T2.2"]),
    ("T2.5", &["T2.4", "T2.3"]),
    ("T2.6", &["T2.5"]),
    ("T2.7", &["T2.6"]),
    ("T2.8", &["T2.7"]),
];

/// Fills a state DB with a history of `runs` runs: one real run of sprint 2's graph through
/// the engine, then cloned `runs - 1` times, each an hour later, with its steps, attempts,
/// outputs and events. The same SQL on both backends.
async fn fill(state: &std::path::Path, runs: u64) {
    let dir = std::env::temp_dir().join(format!("runbook-bench-fill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = String::from("name = \"sprint-2\"\n");
    for (id, needs) in SPRINT_2 {
        let needs: Vec<String> = needs.iter().map(|n| format!("\"{n}\"")).collect();
        text.push_str(&format!(
            "[[steps]]\nid = \"{id}\"\ntitle = \"noop\"\nkind = \"noop\"\nneeds = [{}]\n",
            needs.join(", ")
        ));
    }
    run_noops(&dir, state, "sprint-2", text).await;
    let _ = std::fs::remove_dir_all(&dir);

    let mut db = StateDb::open(state).unwrap();
    let clones = format!("WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {})", runs - 1);
    for sql in [
        "INSERT INTO runs (id, runbook, env, runbook_hash, inputs_hash, vars_json, operator, host, started_at, ended_at, status)
         SELECT r.id + s.n, r.runbook, r.env, r.runbook_hash, r.inputs_hash, r.vars_json, r.operator, r.host,
                r.started_at + s.n * CAST(3600000 AS BIGINT), r.ended_at + s.n * CAST(3600000 AS BIGINT), r.status FROM runs r, s WHERE r.id = 1",
        "INSERT INTO steps (run_id, step, state, attempts, started_at, ended_at, duration_ms, last_error, fix)
         SELECT t.run_id + s.n, t.step, t.state, t.attempts, t.started_at, t.ended_at, t.duration_ms, t.last_error, t.fix
         FROM steps t, s WHERE t.run_id = 1",
        "INSERT INTO attempts (run_id, step, attempt, started_at, intent_at, action, ended_at, outcome, error, duration_ms, log)
         SELECT a.run_id + s.n, a.step, a.attempt, a.started_at, a.intent_at, a.action, a.ended_at, a.outcome, a.error,
                a.duration_ms, a.log FROM attempts a, s WHERE a.run_id = 1",
        "INSERT INTO outputs (run_id, step, name, value)
         SELECT o.run_id + s.n, o.step, o.name, o.value FROM outputs o, s WHERE o.run_id = 1",
        "INSERT INTO events (run_id, at, step, kind, payload)
         SELECT e.run_id + s.n, e.at + s.n * CAST(3600000 AS BIGINT), e.step, e.kind, e.payload FROM events e, s WHERE e.run_id = 1",
    ] {
        db.execute_for_tests(&format!("{clones} {sql}")).unwrap();
    }
    db.execute_for_tests("ANALYZE").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark's setup: scripts/bench-state runs it"]
async fn fill_a_history() {
    let runs: u64 = std::env::var("BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let state = std::env::var("BENCH_FILL").expect("BENCH_FILL: a SQLite file or a PostgreSQL URL to fill");
    let started = Instant::now();
    fill(std::path::Path::new(&state), runs).await;
    println!("filled a history of {runs} runs in {:.1} s", started.elapsed().as_secs_f64());
}
