//! The time this process spent on its state DB (opening it, taking the lock, recording every
//! event, the owner thread's calls): the executor's bookkeeping, which the benchmark
//! (`scripts/bench-state`) puts beside the run's wall time. `RUNBOOK_STATE_TIMING=FILE` makes a
//! run write it there as JSON when it ends; nothing else reads it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

static SPENT_NS: AtomicU64 = AtomicU64::new(0);
static OPEN_NS: AtomicU64 = AtomicU64::new(0);

/// Runs `f`, which opens the state DB (connecting, migrating), counting its time as the state
/// DB's and as its opening's.
pub(crate) fn measure_open<R>(f: impl FnOnce() -> R) -> R {
    let started = Instant::now();
    let result = measure(f);
    let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    OPEN_NS.fetch_add(ns, Ordering::Relaxed);
    result
}

/// Runs `f`, counting its time as the state DB's.
pub(crate) fn measure<R>(f: impl FnOnce() -> R) -> R {
    let started = Instant::now();
    let result = f();
    let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    SPENT_NS.fetch_add(ns, Ordering::Relaxed);
    result
}

/// The state DB's time so far.
pub(crate) fn spent() -> Duration {
    Duration::from_nanos(SPENT_NS.load(Ordering::Relaxed))
}

/// Writes `{"state_ms": …, "open_ms": …}` to `RUNBOOK_STATE_TIMING`, when set (benchmarks only; a failure
/// to write it is ignored, as it changes nothing of the run).
pub(crate) fn report_if_asked() {
    if let Some(path) = std::env::var_os("RUNBOOK_STATE_TIMING") {
        let ms = spent().as_secs_f64() * 1000.0;
        let open = Duration::from_nanos(OPEN_NS.load(Ordering::Relaxed)).as_secs_f64() * 1000.0;
        let _ = std::fs::write(path, format!("{{\"state_ms\": {ms:.3}, \"open_ms\": {open:.3}}}\n"));
    }
}
