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

async fn measure(shape: &str, steps: usize, satisfied: bool) -> String {
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
    let state = dir.join("state.db");
    let (runbook, services, run) = super::tests::prepare(&dir, &state, NOOP, "bench", text, Approver::Withheld).await;
    let db = StateDb::open(&state).unwrap();
    let state = StateHandle::spawn(db);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let recorder = Recorder::new(Some((state, run)), tx);
    let engine =
        Engine { runbook: Arc::new(runbook), services, recorder: recorder.clone(), retry: RetryPolicy::default() };
    let commits_before = commits();
    let started = Instant::now();
    let status = engine.run(Progress::default(), std::future::pending()).await;
    recorder.emit(Event::RunFinished { run, status, duration_ms: 0 }).await;
    let wall = started.elapsed();
    let commits = commits() - commits_before;
    assert_eq!(status, RunState::Done);
    drop((engine, recorder));
    drain.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let per_step = wall.as_secs_f64() * 1000.0 / steps as f64;
    let kind = if satisfied { "satisfied" } else { "applied" };
    format!(
        "{shape:<8} {kind:<10} {steps:>6} {:>9.3} {per_step:>12.3} {:>9} {:>14.2}",
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
        "{:<8} {:<10} {:>6} {:>9} {:>12} {:>9} {:>14}",
        "SHAPE", "STEPS ARE", "STEPS", "WALL s", "ms PER STEP", "COMMITS", "COMMITS/STEP"
    )];
    for (shape, satisfied) in [("chain", false), ("fan-out", false), ("chain", true), ("fan-out", true)] {
        lines.push(measure(shape, steps, satisfied).await);
    }
    println!("\n{}", lines.join("\n"));
}
