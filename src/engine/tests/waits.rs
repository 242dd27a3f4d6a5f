//! Durable waits (`kind = "wait"`) through the engine, in paused time, with a clock that
//! follows it and can be made to jump: the deadline is recorded before the wait, a run killed
//! while it waits resumes waiting only what is left (or goes on at once once it has passed),
//! and a clock that jumps is believed (it is the state's clock that judges).

use super::*;
use crate::steps::{Clock, TestClock};

/// The fake kind and the real `wait`.
static WAIT_KINDS: LazyLock<Vec<Kind>> = LazyLock::new(|| {
    vec![Kind::of::<Fake>(), crate::steps::find(crate::steps::KINDS, "wait").expect("wait is a kind")]
});

const WAIT_S: u64 = 600;

/// `a` (fake), then `w` waiting `wait_s` for the caches, then `b` (fake).
fn text(world: &str, wait_s: u64) -> String {
    format!(
        "name = \"fakes\"\n\
         [[steps]]\nid = \"a\"\ntitle = \"Fake a\"\nkind = \"fake\"\n[steps.params]\nworld = \"{world}\"\n\
         [[steps]]\nid = \"w\"\ntitle = \"Wait for the caches\"\nkind = \"wait\"\nneeds = [\"a\"]\n\
         [steps.params]\nseconds = {wait_s}\nwhy = \"the caches to expire\"\n\
         [[steps]]\nid = \"b\"\ntitle = \"Fake b\"\nkind = \"fake\"\nneeds = [\"w\"]\n[steps.params]\nworld = \"{world}\"\n"
    )
}

/// What the webhook was sent, in order.
type Sent = Arc<Mutex<Vec<String>>>;

/// A run of `a → w → b` whose waits read `clock`, its state in a SQLite file.
async fn harness(world: &str, clock: Arc<TestClock>) -> Harness {
    harness_sending(world, clock, Sent::default(), WAIT_S).await
}

/// As [`harness`], waiting `wait_s`, with a webhook that keeps what it is sent in `sent`.
async fn harness_sending(world: &str, clock: Arc<TestClock>, sent: Sent, wait_s: u64) -> Harness {
    let world = format!("{world}-{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("runbook-engine-{world}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.db");
    with_world(&world, |w| w.state = Some(state.clone()));
    let registry: &'static [Kind] = &WAIT_KINDS;
    let (runbook, base, run) = prepare(&dir, &state, registry, "fakes", text(&world, wait_s), Approver::Withheld).await;
    let services = Arc::new(Services {
        env: base.env.clone(),
        cloud: base.cloud.clone(),
        project: base.project.clone(),
        work_dir: base.work_dir.clone(),
        approver: Approver::Withheld,
        run: Some(run),
        acknowledged_rollback: None,
        clock: Clock::Test(clock),
        announce: Some(Arc::new(move |text: String| {
            sent.lock().unwrap().push(text);
            Box::pin(async { Ok(()) })
        })),
    });
    Harness { world, dir, state, schema: None, runbook: Arc::new(runbook), services, run }
}

/// What happens to a run once its wait has said it waits for a while.
enum Midway {
    /// The engine is dropped mid-wait, as `kill -9` or a closed laptop would leave it.
    Kill,
    /// The clock jumps by this many ms (NTP, a laptop waking with a wrong clock).
    Jump(Arc<TestClock>, i64),
    /// The run lost its lock (another operator's `unlock --force --run N --yes`, an emergency
    /// revocation taking over): what the heartbeat does when it finds the lease gone.
    LoseLock,
}

/// Runs (or resumes) the run; `after` the wait first says it is waiting, does `midway`.
/// `None` when killed; otherwise how the run ended and how long after the wait began.
async fn drive(h: &Harness, after: Duration, midway: Midway) -> Option<(RunState, Duration)> {
    let mut db = h.db();
    let me = crate::state::Holder::me("here");
    db.acquire_lock(&me).unwrap();
    db.lock_run(&me, h.run).unwrap();
    let progress = db.progress(h.run).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let recorder = Recorder::new(Some((StateHandle::spawn(db), h.run)), tx);
    let engine = Engine {
        runbook: h.runbook.clone(),
        services: h.services.clone(),
        recorder: recorder.clone(),
        retry: RetryPolicy::default(),
    };
    let run = engine.run(progress, std::future::pending());
    tokio::pin!(run);
    // Only once the wait has begun: paused time jumps to the next timer whenever the engine
    // waits for the state DB's thread, so a timer set from the start could fire before.
    let waiting = async {
        while let Some(e) = rx.recv().await {
            if matches!(&e, Event::StepWaiting { step, .. } if step == "w") {
                let began = tokio::time::Instant::now();
                tokio::time::sleep(after).await;
                return began;
            }
        }
        std::future::pending().await
    };
    let began = tokio::select! {
        status = &mut run => panic!("the run ended ({status:?}) before its wait had begun"),
        began = waiting => began,
    };
    match midway {
        Midway::Kill => None,
        Midway::Jump(clock, ms) => {
            clock.jump(ms);
            Some((run.await, began.elapsed()))
        }
        Midway::LoseLock => {
            recorder.stop("the run lock was broken by ana@elsewhere".into());
            Some((run.await, began.elapsed()))
        }
    }
}

async fn kill_while_waiting(h: &Harness, after: Duration) -> bool {
    drive(h, after, Midway::Kill).await.is_none()
}

fn wait_events(h: &Harness) -> Vec<Event> {
    h.db()
        .events_by_kind(Some(h.run), &["wait_started"])
        .unwrap()
        .into_iter()
        .map(|stored| stored.event.unwrap())
        .collect()
}

/// Runs the run to its end; how long that took in (paused) time.
async fn resume(h: &Harness) -> (RunState, Duration) {
    let started = tokio::time::Instant::now();
    let (status, _) = h.run().await;
    (status, started.elapsed())
}

fn seconds(d: Duration) -> u64 {
    d.as_secs()
}

#[tokio::test(start_paused = true)]
async fn a_wait_killed_midway_records_its_deadline_first_and_a_resume_waits_only_what_is_left() {
    let clock = TestClock::at(crate::clock::now_ms());
    let sent = Sent::default();
    let h = harness_sending("wait-resume", clock.clone(), sent.clone(), WAIT_S).await;
    let began = clock.now_ms();
    assert!(kill_while_waiting(&h, Duration::from_secs(200)).await, "the run ended before the kill");

    // The deadline was on record before the wait began, with what comes next.
    let recorded = wait_events(&h);
    let [Event::WaitStarted { until_ms, seconds: s, why, then, .. }] = recorded.as_slice() else {
        panic!("one deadline recorded: {recorded:?}")
    };
    assert!((began..began + 1000).contains(&(until_ms - WAIT_S as i64 * 1000)), "{until_ms} vs {began}");
    assert_eq!((*s, why.as_str(), then.as_slice()), (WAIT_S, "the caches to expire", &["b".to_string()][..]));
    assert_eq!(h.seen("b", |s| s.effects), 0, "b waits for the wait");

    // `status` says the step waits, until when, for what, and what comes next. (The "dead"
    // process is this one: its lease is broken, as its heartbeat would go stale.)
    let holder = h.db().lease("here").unwrap().expect("the killed run held the lock").holder;
    assert!(h.db().break_lock(&holder).unwrap());
    let view = crate::status::view(&h.db(), Some(h.run), "elsewhere").unwrap();
    let w = view.steps.iter().find(|s| s.row.step == "w").unwrap();
    let wait = w.wait.as_ref().expect("status shows the wait");
    assert!(
        wait.says.starts_with("until ") && wait.says.ends_with(" for the caches to expire, then b"),
        "{}",
        wait.says
    );
    assert_eq!(w.next, Some(format!("runbook resume {} waits only what is left", h.run)));
    let table = crate::render::status_table(&view);
    assert!(table.lines().any(|l| l.starts_with("w ") && l.contains("waiting") && l.contains("then b")), "{table}");

    // The laptop stays closed 100 s more; the resumed run waits only the 300 s left.
    tokio::time::advance(Duration::from_secs(100)).await;
    let (status, took) = resume(&h).await;
    assert_eq!(status, RunState::Done);
    assert!((299..=301).contains(&seconds(took)), "waited {took:?}, not what was left (300 s)");
    assert_eq!(wait_events(&h).len(), 1, "a resume does not record a new deadline");
    assert_eq!(h.seen("b", |s| s.effects), 1);
    assert!(clock.now_ms() >= *until_ms);

    // A wait this long (at least LONG_WAIT_S) is announced once when it starts, once when it ends.
    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "{sent:?}");
    let run = h.run;
    assert!(
        sent[0].starts_with(&format!("runbook: run {run}: w waits 10m00s for the caches to expire: until ")),
        "{sent:?}"
    );
    assert!(sent[0].ends_with(", then b"), "{sent:?}");
    assert_eq!(sent[1], format!("runbook: run {run}: w: the wait for the caches to expire is over; b goes on"));
}

#[tokio::test(start_paused = true)]
async fn a_short_wait_is_not_announced() {
    const { assert!(crate::steps::wait::LONG_WAIT_S > 60) };
    let clock = TestClock::at(crate::clock::now_ms());
    let sent = Sent::default();
    let h = harness_sending("wait-short", clock, sent.clone(), 60).await;
    let (status, took) = resume(&h).await;
    assert_eq!(status, RunState::Done);
    assert!((59..=61).contains(&seconds(took)), "{took:?}");
    assert!(sent.lock().unwrap().is_empty(), "{sent:?}");
}

#[tokio::test(start_paused = true)]
async fn a_resume_after_the_deadline_goes_on_at_once() {
    let clock = TestClock::at(crate::clock::now_ms());
    let h = harness("wait-passed", clock.clone()).await;
    assert!(kill_while_waiting(&h, Duration::from_secs(30)).await);
    tokio::time::advance(Duration::from_secs(WAIT_S * 2)).await;
    let (status, took) = resume(&h).await;
    assert_eq!(status, RunState::Done);
    assert!(took < Duration::from_secs(1), "waited {took:?} after the deadline had passed");
    assert_eq!(h.seen("b", |s| s.effects), 1);
    let view = crate::status::view(&h.db(), Some(h.run), "here").unwrap();
    assert!(view.steps.iter().all(|s| s.wait.is_none()), "a finished wait is not shown as waiting");
}

#[tokio::test(start_paused = true)]
async fn a_clock_that_jumps_ahead_ends_the_wait_at_its_next_look() {
    let clock = TestClock::at(crate::clock::now_ms());
    let h = harness("wait-jump-ahead", clock.clone()).await;
    let (status, took) = drive(&h, Duration::from_secs(60), Midway::Jump(clock, 3_600_000)).await.unwrap();
    assert_eq!(status, RunState::Done);
    assert!((60..=66).contains(&seconds(took)), "a wait past its deadline by the clock went on for {took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_clock_that_jumps_back_does_not_end_the_wait_early() {
    let clock = TestClock::at(crate::clock::now_ms());
    let h = harness("wait-jump-back", clock.clone()).await;
    let (status, took) = drive(&h, Duration::from_secs(60), Midway::Jump(clock, -300_000)).await.unwrap();
    assert_eq!(status, RunState::Done);
    // The deadline is judged by the clock: 600 s by it is 900 s of this process's time.
    assert!((899..=901).contains(&seconds(took)), "waited {took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_wait_whose_run_lost_its_lock_stops_within_a_tick_and_nothing_after_it_runs() {
    let clock = TestClock::at(crate::clock::now_ms());
    let h = harness("wait-lock-lost", clock).await;
    let (status, took) = drive(&h, Duration::from_secs(60), Midway::LoseLock).await.unwrap();
    assert_eq!(status, RunState::Failed);
    assert!((60..=66).contains(&seconds(took)), "stopped {took:?} after the wait began");
    assert_eq!(h.seen("b", |s| s.effects), 0);
}

#[tokio::test(start_paused = true)]
async fn a_retried_wait_counts_afresh() {
    let clock = TestClock::at(crate::clock::now_ms());
    let h = harness("wait-retry", clock.clone()).await;
    assert!(kill_while_waiting(&h, Duration::from_secs(100)).await);
    let mut db = h.db();
    for step in ["w", "b"] {
        let reset = Event::StepReset {
            step: step.into(),
            reason: "runbook retry w".into(),
            operator: "tester".into(),
            host: "here".into(),
        };
        db.record(Some(h.run), &reset).unwrap();
    }
    let (status, took) = resume(&h).await;
    assert_eq!(status, RunState::Done);
    assert!((599..=601).contains(&seconds(took)), "a retry starts the wait again: waited {took:?}");
    assert_eq!(wait_events(&h).len(), 2);
}
