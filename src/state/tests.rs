use super::*;
use crate::event::{DoneOutcome, Event, ProbeResult};

/// A PostgreSQL server for the PostgreSQL variants: `RUNBOOK_PG_TEST_URL` (a database the
/// tests may create schemas in), or the ring's `runbook_state` database as its admin when the
/// ring is up in this checkout. `None` (the variant is skipped, and says so) when neither, unless
/// `RUNBOOK_RING` demands the ring.
fn pg_test_url() -> Option<String> {
    if let Some(url) = std::env::var("RUNBOOK_PG_TEST_URL").ok().filter(|u| !u.is_empty()) {
        return Some(url);
    }
    let ring = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ring");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 15432));
    let up = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300)).is_ok();
    let password = std::fs::read_to_string(ring.join("secrets/pg-admin-password")).ok().filter(|_| up);
    let Some(password) = password else {
        assert!(
            std::env::var_os("RUNBOOK_RING").is_none(),
            "RUNBOOK_RING is set but the ring's PostgreSQL is not up: bash ring/up.sh (or set RUNBOOK_PG_TEST_URL)"
        );
        return None;
    };
    let password: String = password.trim().bytes().map(|b| format!("%{b:02X}")).collect();
    Some(format!(
        "postgres://arrakis_admin:{password}@127.0.0.1:15432/runbook_state?sslmode=verify-full&sslrootcert={}",
        ring.join("tls/ca.crt").display()
    ))
}

/// A schema of its own in the test database, dropped when the test ends.
pub(crate) struct PgSchema {
    url: String,
    name: String,
}

impl PgSchema {
    /// `None` (and a line saying the variant is skipped) when no PostgreSQL is there.
    pub(crate) fn fresh(test: &str) -> Option<PgSchema> {
        let Some(base) = pg_test_url() else {
            eprintln!("skipped the PostgreSQL variant of {test}: no RUNBOOK_PG_TEST_URL and the ring is not up");
            return None;
        };
        let name = format!("t_{test}_{}", std::process::id()).replace(['-', '.'], "_");
        admin(&base, &format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name};"));
        let sep = if base.contains('?') { '&' } else { '?' };
        Some(PgSchema { url: format!("{base}{sep}options=-csearch_path%3D{name}"), name })
    }

    pub(crate) fn location(&self) -> PathBuf {
        PathBuf::from(&self.url)
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Some(base) = pg_test_url() {
            admin(&base, &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}

fn admin(url: &str, sql: &str) {
    let location = pg::Location::parse(url).unwrap();
    let mut conn =
        pg::PgConn::connect(&location, false).unwrap_or_else(|e| panic!("{}: {e}", location.shown.display()));
    conn.batch_for_tests(sql).unwrap();
}

/// Runs `test` on a new SQLite file, then on a new PostgreSQL schema when a server is there.
fn each_backend(name: &str, test: impl Fn(&Path)) {
    let dir = std::env::temp_dir().join(format!("runbook-state-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    test(&dir.join("state.db"));
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(schema) = PgSchema::fresh(name) {
        test(&schema.location());
    }
}

pub(crate) fn temp_db(name: &str) -> (PathBuf, StateDb) {
    let dir = std::env::temp_dir().join(format!("runbook-state-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("state.db");
    let db = StateDb::open(&path).unwrap();
    (path, db)
}

fn new_run(db: &mut StateDb) -> i64 {
    let vars = BTreeMap::new();
    db.create_run(&NewRun {
        runbook: "sprint-2",
        env: "local",
        runbook_hash: "h",
        inputs_hash: "i",
        vars: &vars,
        operator: "op",
        host: "host",
        steps: &["T2.1".to_string()],
    })
    .unwrap()
}

#[test]
fn a_steps_duration_is_the_time_its_attempts_worked_not_the_idle_time_between() {
    each_backend("worked", a_steps_duration_is_the_time_its_attempts_worked_on);
}

fn a_steps_duration_is_the_time_its_attempts_worked_on(location: &Path) {
    let mut db = StateDb::open(location).unwrap();
    let run = new_run(&mut db);
    let step = || "T2.1".to_string();
    let started = |attempt| Event::StepStarted { step: step(), attempt, title: "t".into(), in_doubt: false };
    // What happened so far happened a minute earlier: the step has been idle since.
    let a_minute_passes = |db: &mut StateDb| {
        for table in [
            "attempts SET started_at = started_at - 60000, ended_at = ended_at - 60000",
            "steps SET started_at = started_at - 60000",
        ] {
            db.execute_for_tests(&format!("UPDATE {table}")).unwrap();
        }
    };
    let worked = |db: &StateDb| -> i64 {
        db.attempts(run, "T2.1").unwrap().iter().map(|a| a.duration_ms.expect("an attempt with an outcome")).sum()
    };
    db.record(Some(run), &started(1)).unwrap();
    let retrying = Event::StepRetrying { step: step(), attempt: 1, error: "throttled".into(), delay_ms: 1000 };
    db.record(Some(run), &retrying).unwrap();
    a_minute_passes(&mut db);
    db.record(Some(run), &started(2)).unwrap();
    let failed = Event::StepFailed { step: step(), attempt: 2, error: "denied".into(), fix: None, duration_ms: 1 };
    db.record(Some(run), &failed).unwrap();
    assert!(worked(&db) < 60_000, "the attempts themselves were quick: {}", worked(&db));
    assert_eq!(db.steps(run).unwrap()[0].duration_ms, Some(worked(&db)), "the sum of its attempts");
    a_minute_passes(&mut db);
    let skipped = Event::StepSkipped { step: step(), reason: "x".into(), operator: "op".into(), host: "h".into() };
    db.record(Some(run), &skipped).unwrap();
    let row = &db.steps(run).unwrap()[0];
    assert_eq!((row.state, row.duration_ms), (StepState::Skipped, Some(worked(&db))), "a skip adds no working time");
    // A step skipped before it ever ran has worked no time at all: no duration.
    let never_ran = new_run(&mut db);
    db.record(Some(never_ran), &skipped).unwrap();
    assert_eq!(db.steps(never_ran).unwrap()[0].duration_ms, None);
}

#[test]
fn intent_without_outcome_is_in_doubt() {
    each_backend("doubt", intent_without_outcome_is_in_doubt_on);
}

fn intent_without_outcome_is_in_doubt_on(location: &Path) {
    let mut db = StateDb::open(location).unwrap();
    let run = new_run(&mut db);
    let step = "T2.1".to_string();
    db.record(Some(run), &Event::StepStarted { step: step.clone(), attempt: 1, title: "t".into(), in_doubt: false })
        .unwrap();
    db.record(
        Some(run),
        &Event::StepProbed { step: step.clone(), attempt: 1, result: ProbeResult::Absent, detail: String::new() },
    )
    .unwrap();
    assert!(!db.steps(run).unwrap()[0].in_doubt);
    db.record(Some(run), &Event::StepIntent { step: step.clone(), attempt: 1, action: "create".into() }).unwrap();
    assert!(db.steps(run).unwrap()[0].in_doubt);
    assert!(db.progress(run).unwrap().in_doubt.contains("T2.1"));
    db.record(
        Some(run),
        &Event::StepDone {
            step,
            attempt: 1,
            outcome: DoneOutcome::Applied,
            outputs: Outputs::from([("uri".into(), "x".into())]),
            duration_ms: 1,
            warnings: vec!["nats unreachable: sprint-3 T3.1 adds the rule".into()],
        },
    )
    .unwrap();
    let row = &db.steps(run).unwrap()[0];
    assert_eq!((row.state, row.in_doubt), (StepState::Applied, false));
    assert_eq!(row.warnings, ["nats unreachable: sprint-3 T3.1 adds the rule"], "kept with the outcome");
    assert_eq!(db.outputs(run).unwrap()["T2.1"]["uri"], "x");
    assert!(db.progress(run).unwrap().finished.contains("T2.1"));
}

#[test]
fn events_cannot_be_rewritten() {
    each_backend("append", |location| {
        let mut db = StateDb::open(location).unwrap();
        let run = new_run(&mut db);
        db.record(Some(run), &Event::InputsChanged { what: "x".into() }).unwrap();
        let err = db.execute_for_tests("DELETE FROM events").unwrap_err();
        assert!(err.contains("events are append-only"), "{err}");
        let err = db.execute_for_tests("UPDATE events SET kind = 'y'").unwrap_err();
        assert!(err.contains("events are append-only"), "{err}");
        if is_url(location) {
            let err = db.execute_for_tests("TRUNCATE events CASCADE").unwrap_err();
            assert!(err.contains("events are append-only"), "{err}");
        }
        assert_eq!(db.events_of_kind(run, "inputs_changed").len(), 1, "still there");
    });
}

#[test]
fn states_outside_their_enum_are_refused_by_the_database() {
    each_backend("check", |location| {
        let mut db = StateDb::open(location).unwrap();
        let run = new_run(&mut db);
        let err =
            db.execute_for_tests(&format!("UPDATE steps SET state = 'sort of done' WHERE run_id = {run}")).unwrap_err();
        assert!(err.contains("CHECK constraint failed") || err.contains("violates check constraint"), "{err}");
        assert!(db.execute_for_tests("UPDATE runs SET status = 'maybe'").is_err());
        assert!(db.execute_for_tests("UPDATE steps SET attempts = -1").is_err());
        for state in StepState::ALL {
            db.execute_for_tests(&format!("UPDATE steps SET state = '{}'", state.as_str())).unwrap();
            assert_eq!(db.steps(run).unwrap()[0].state, *state);
        }
    });
}

#[test]
fn a_newer_postgres_schema_is_refused_and_left_alone() {
    let Some(schema) = PgSchema::fresh("newer_pg") else { return };
    let mut db = StateDb::open(&schema.location()).unwrap();
    new_run(&mut db);
    db.execute_for_tests("INSERT INTO runbook_schema (version) VALUES (99)").unwrap();
    drop(db);
    for open in [StateDb::open(&schema.location()), StateDb::open_existing(&schema.location(), true)] {
        match open {
            Err(e @ StateError::NewerSchema { found: 99, .. }) => {
                let text = e.to_string();
                let understands = format!(
                    "has schema version 99, newer than this runbook understands ({})",
                    sqlite::MIGRATIONS.len()
                );
                assert!(text.contains(&understands), "{text}");
                let shown = pg::Location::parse(&schema.url).unwrap().shown;
                assert!(text.contains(&shown.display().to_string()), "{text}");
            }
            other => panic!("expected NewerSchema, got {:?}", other.err()),
        }
    }
    // Nothing was migrated nor changed: the run is there, the version is 99.
    let location = pg::Location::parse(&schema.url).unwrap();
    let conn = pg::PgConn::connect(&location, true).unwrap();
    assert_eq!(conn.version().unwrap(), 99);
}

#[test]
fn a_newer_schema_is_refused_and_left_alone() {
    let (path, db) = temp_db("newer");
    db.sqlite().pragma_update(None, "user_version", 99).unwrap();
    drop(db);
    let before = std::fs::read(&path).unwrap();
    match StateDb::open(&path) {
        Err(StateError::NewerSchema { found: 99, .. }) => {}
        other => panic!("expected NewerSchema, got {:?}", other.err()),
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

/// A state DB as the previous release wrote it (schema 1), with a run in it.
fn version_one_db(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(sqlite::MIGRATIONS[0]).unwrap();
    conn.execute_batch(
        "PRAGMA user_version = 1;
         INSERT INTO runs VALUES (1, 'sprint-2', 'local', 'h', 'i', '{}', 'op', 'host', 10, 20, 'failed');
         INSERT INTO steps VALUES (1, 'T2.3', 'failed', 2, 10, 20, 10, 'boom', 'fix it');
         INSERT INTO steps VALUES (1, 'T2.1', 'applied', 1, 10, 12, 2, NULL, NULL);
         INSERT INTO attempts VALUES (1, 'T2.1', 1, 10, 11, 'create', 12, 'applied', NULL, 2, 'log line\n');
         INSERT INTO outputs VALUES (1, 'T2.1', 'uri', 'x');
         INSERT INTO events (run_id, at, step, kind, payload) VALUES (1, 10, NULL, 'run_started', '{}');
         INSERT INTO run_lock VALUES (1, 1, 'host', 999999999, 10, 10);",
    )
    .unwrap();
}

#[test]
fn a_version_one_db_is_upgraded_in_place_keeping_its_rows_and_order() {
    let dir = std::env::temp_dir().join(format!("runbook-state-upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("state.db");
    version_one_db(&path);
    let db = StateDb::open(&path).unwrap();
    let version: i64 = db.sqlite().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, sqlite::MIGRATIONS.len() as i64);
    let run = db.run(1).unwrap();
    assert_eq!((run.status, run.ended_at), (RunState::Failed, Some(20)));
    let steps = db.steps(1).unwrap();
    let order: Vec<(&str, StepState)> = steps.iter().map(|s| (s.step.as_str(), s.state)).collect();
    assert_eq!(order, [("T2.3", StepState::Failed), ("T2.1", StepState::Applied)]);
    assert_eq!(steps[0].fix.as_deref(), Some("fix it"));
    assert_eq!(db.attempts(1, "T2.1").unwrap()[0].log, "log line\n");
    assert_eq!(db.outputs(1).unwrap()["T2.1"]["uri"], "x");
    // The append-only triggers survive, and the foreign keys are checked again.
    assert!(db.sqlite().execute("DELETE FROM events", []).is_err());
    assert!(db.sqlite().execute("INSERT INTO steps (run_id, step, state) VALUES (42, 'x', 'pending')", []).is_err());
    assert!(db.sqlite().execute("UPDATE steps SET state = 'bogus'", []).is_err());
    drop(db);
    // Opening again runs nothing.
    StateDb::open(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_processes_opening_a_new_db_at_once_migrate_it_once() {
    each_backend("race", |location| {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let location = location.to_path_buf();
                std::thread::spawn(move || StateDb::open(&location).map(drop).map_err(|e| e.to_string()))
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        if is_url(location) {
            let mut db = StateDb::open(location).unwrap();
            let versions = db.execute_for_tests("UPDATE runbook_schema SET version = version").unwrap();
            assert_eq!(versions, sqlite::MIGRATIONS.len() as u64, "each migration once");
        }
    });
}

#[test]
fn a_live_holder_keeps_the_lock_and_a_dead_one_loses_it() {
    each_backend("lock", |location| {
        let mut db = StateDb::open(location).unwrap();
        let me = Holder::me("h");
        assert_eq!(db.acquire_lock(&me).unwrap(), None);
        // Another live process on this host (pid 1 always exists) holds it: refused.
        let started = lease::process_start(1).map(|s| s.to_string()).unwrap_or_else(|| "NULL".into());
        db.execute_for_tests(&format!("UPDATE run_lock SET pid = 1, pid_started = {started}")).unwrap();
        assert!(matches!(db.acquire_lock(&me), Err(StateError::Locked { pid: 1, .. })));
        // A pid that does not exist: taken over.
        db.execute_for_tests("UPDATE run_lock SET pid = 999999999").unwrap();
        let taken = db.acquire_lock(&me).unwrap().unwrap();
        assert_eq!((taken.host.as_str(), taken.pid), ("h", 999_999_999));
        assert_eq!(db.lease("h").unwrap().map(|l| l.holder), Some(me.clone()), "the lease is ours now");
    });
}

/// A lease of the old format (no start time) held by pid 1 with a heartbeat from 1970: `run`
/// said "if it is dead: runbook unlock --force" and `unlock --force` refused it as alive.
#[test]
fn an_old_format_lease_that_stopped_beating_is_not_alive() {
    each_backend("oldlease", |location| {
        let mut db = StateDb::open(location).unwrap();
        let me = Holder::me("h");
        db.acquire_lock(&me).unwrap();
        db.execute_for_tests("UPDATE run_lock SET pid = 1, pid_started = NULL, heartbeat_at = 0").unwrap();
        assert_eq!(db.lease("h").unwrap().map(|l| l.alive), Some(false));
        let taken = db.acquire_lock(&me).unwrap().unwrap();
        assert_eq!((taken.pid, taken.pid_started), (1, None));
        // Beating, it is alive, and the advice names the command that breaks a live lease.
        let now = crate::clock::now_ms();
        db.execute_for_tests(&format!("UPDATE run_lock SET pid = 1, pid_started = NULL, heartbeat_at = {now}"))
            .unwrap();
        let refused = db.acquire_lock(&Holder::me("h")).unwrap_err().to_string();
        assert!(refused.contains("and it is alive") && refused.contains("runbook unlock --force --run "), "{refused}");
    });
}

#[test]
fn a_reused_pid_does_not_keep_a_dead_lease_alive() {
    each_backend("reused", |location| {
        let mut db = StateDb::open(location).unwrap();
        let me = Holder::me("h");
        db.acquire_lock(&me).unwrap();
        // pid 1 exists, but it is not the process that took the lease (another start time).
        let then = lease::process_start(1).unwrap() + 12345;
        db.execute_for_tests(&format!("UPDATE run_lock SET pid = 1, pid_started = {then}, heartbeat_at = 0")).unwrap();
        let taken = db.acquire_lock(&me).unwrap().unwrap();
        assert_eq!((taken.pid, taken.pid_started), (1, Some(then)));
    });
}

#[test]
fn another_hosts_lease_is_stale_after_its_heartbeat_stops() {
    each_backend("stale", |location| {
        let mut db = StateDb::open(location).unwrap();
        let me = Holder::me("here");
        db.acquire_lock(&me).unwrap();
        let now = crate::clock::now_ms();
        db.execute_for_tests(&format!("UPDATE run_lock SET host = 'there', pid = 5, heartbeat_at = {now}")).unwrap();
        assert!(matches!(db.acquire_lock(&me), Err(StateError::Locked { .. })));
        // Just inside the stale period: still live.
        db.execute_for_tests(&format!("UPDATE run_lock SET heartbeat_at = {}", now - 29_000)).unwrap();
        assert!(matches!(db.acquire_lock(&me), Err(StateError::Locked { .. })));
        db.execute_for_tests(&format!("UPDATE run_lock SET heartbeat_at = {}", now - 31_000)).unwrap();
        assert_eq!(db.acquire_lock(&me).unwrap().map(|h| h.host), Some("there".to_string()));
    });
}

/// A new run of its own DB at `location`, holding the run lock as a running `run` does.
fn a_run_holding_the_lock(location: &Path) -> (StateDb, i64, Holder) {
    let mut db = StateDb::open(location).unwrap();
    let run = new_run(&mut db);
    let me = Holder::me("here");
    db.acquire_lock(&me).unwrap();
    db.lock_run(&me, run).unwrap();
    (db, run, me)
}

#[test]
fn a_run_that_lost_its_lease_records_no_intent() {
    each_backend("lost", |location| {
        let (mut db, run, me) = a_run_holding_the_lock(location);
        let step = || "T2.1".to_string();
        db.record(Some(run), &Event::StepStarted { step: step(), attempt: 1, title: "t".into(), in_doubt: false })
            .unwrap();
        // Another host's process took the lease (its holder looked dead from there).
        let mut other = StateDb::open(location).unwrap();
        other.execute_for_tests("UPDATE run_lock SET host = 'there', pid = 7").unwrap();
        let err = db.record(Some(run), &Event::StepIntent { step: step(), attempt: 1, action: "create".into() });
        match err {
            Err(StateError::LeaseLost { now, .. }) => assert!(now.contains("pid 7 on there"), "{now}"),
            other => panic!("expected LeaseLost, got {other:?}"),
        }
        assert_eq!(db.attempts(run, "T2.1").unwrap()[0].intent_at, None, "nothing recorded");
        assert!(matches!(db.heartbeat(&me), Err(StateError::LeaseLost { .. })));
    });
}

#[test]
fn process_start_reads_this_process() {
    let me = i64::from(std::process::id());
    assert!(lease::process_start(me).is_some());
    assert_eq!(lease::process_start(999_999_999), None);
    assert_eq!(lease::process_start(0), None);
}

#[cfg(unix)]
#[test]
fn the_db_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let (path, _db) = temp_db("mode");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
}

#[tokio::test]
async fn queued_events_are_committed_in_order_before_a_durable_one() {
    let (path, _) = temp_db("group");
    queued_events_on(&path).await;
    if let Some(schema) = PgSchema::fresh("group") {
        queued_events_on(&schema.location()).await;
    }
}

async fn queued_events_on(path: &Path) {
    let mut db = StateDb::open(path).unwrap();
    let run = new_run(&mut db);
    let handle = StateHandle::spawn(db);
    let failed = WriteError::default();
    let step = || "T2.1".to_string();
    handle.record_later(
        run,
        Event::StepStarted { step: step(), attempt: 1, title: "t".into(), in_doubt: false },
        failed.clone(),
    );
    for i in 0..20 {
        handle.record_later(
            run,
            Event::StepLog { step: step(), attempt: 1, line: format!("line {i}") },
            failed.clone(),
        );
    }
    handle.record(run, Event::StepIntent { step: step(), attempt: 1, action: "a".into() }).await.unwrap();
    // Read through another connection: committed, not just queued.
    let other = StateDb::open(path).unwrap();
    let attempt = &other.attempts(run, "T2.1").unwrap()[0];
    assert!(attempt.intent_at.is_some());
    let expected: String = (0..20).map(|i| format!("line {i}\n")).collect();
    assert_eq!(attempt.log, expected);
    assert!(failed.lock().unwrap().is_none());
}

#[test]
fn reading_commands_do_not_create_a_state_db_and_open_it_read_only() {
    let dir = std::env::temp_dir().join(format!("runbook-state-ro-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("state.db");
    assert!(matches!(StateDb::open_existing(&path, true), Err(StateError::Missing { .. })));
    assert!(matches!(StateDb::open_existing(&path, false), Err(StateError::Missing { .. })));
    assert!(!path.exists() && !dir.exists(), "nothing created");
    let mut db = StateDb::open(&path).unwrap();
    let run = new_run(&mut db);
    drop(db);
    let ro = StateDb::open_existing(&path, true).unwrap();
    assert_eq!(ro.run(run).unwrap().status, RunState::Running);
    assert!(ro.sqlite().execute("DELETE FROM run_lock", []).is_err(), "read-only");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reading_commands_do_not_create_a_postgres_schema_and_read_only() {
    let Some(schema) = PgSchema::fresh("ro") else { return };
    let location = schema.location();
    assert!(matches!(StateDb::open_existing(&location, true), Err(StateError::Missing { .. })));
    assert!(matches!(StateDb::open_existing(&location, false), Err(StateError::Missing { .. })));
    let mut db = StateDb::open(&location).unwrap();
    let run = new_run(&mut db);
    drop(db);
    let mut ro = StateDb::open_existing(&location, true).unwrap();
    assert_eq!(ro.run(run).unwrap().status, RunState::Running);
    let err = ro.execute_for_tests("DELETE FROM run_lock").unwrap_err();
    assert!(err.contains("read-only"), "{err}");
}

#[test]
fn a_refused_password_is_never_repeated() {
    let Some(base) = pg_test_url() else { return };
    let user = pg::Location::parse(&base).unwrap().config.get_user().unwrap().to_string();
    let (_, rest) = base.split_once('@').unwrap();
    let url = format!("postgres://{user}:n0t-the-S3cret@{rest}");
    let err = StateDb::open(Path::new(&url)).err().expect("a wrong password is refused").to_string();
    assert!(!err.contains("n0t-the-S3cret"), "{err}");
    let shown = pg::Location::parse(&url).unwrap().shown;
    assert!(err.contains(&shown.display().to_string()), "{err}");
    assert!(err.contains("password authentication failed"), "{err}");
}

#[test]
fn runs_racing_for_a_new_state_db_have_exactly_one_winner_and_the_others_are_told_who() {
    for round in 0..5 {
        let dir = std::env::temp_dir().join(format!("runbook-state-racing-{round}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        race_for_the_lease(round, &dir.join("state.db"));
        std::fs::remove_dir_all(&dir).unwrap();
        if let Some(schema) = PgSchema::fresh(&format!("racing_{round}")) {
            race_for_the_lease(round, &schema.location());
        }
    }
}

fn race_for_the_lease(round: usize, path: &Path) {
    // Six machines (other hosts: alive while they beat) open a new state DB at once.
    let winner = one_winner(round, path, "host");
    // The winner's machine dies: its lease goes stale, and six others race to take it over.
    let mut db = StateDb::open(path).unwrap();
    db.execute_for_tests(&format!("UPDATE run_lock SET heartbeat_at = 0 WHERE host = '{winner}'")).unwrap();
    let heir = one_winner(round, path, "heir");
    assert_ne!(heir, winner);
}

/// Six threads, hosts `{prefix}-0` to `{prefix}-5`, take the lease at once: one wins, and the
/// others are told who holds it. The winner's host.
fn one_winner(round: usize, path: &Path, prefix: &str) -> String {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
    let racers: Vec<_> = (0..6)
        .map(|i| {
            let (path, barrier) = (path.to_path_buf(), barrier.clone());
            let me = Holder { host: format!("{prefix}-{i}"), pid: 100 + i, pid_started: None };
            std::thread::spawn(move || {
                barrier.wait();
                let mut db = StateDb::open(&path).map_err(|e| e.to_string())?;
                db.acquire_lock(&me).map(|_| i).map_err(|e| e.to_string())
            })
        })
        .collect();
    let results: Vec<Result<i64, String>> = racers.into_iter().map(|r| r.join().unwrap()).collect();
    let winners: Vec<i64> = results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
    assert_eq!(winners.len(), 1, "round {round}, {prefix}: {results:?}");
    let winner = format!("{prefix}-{}", winners[0]);
    for loser in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            loser.starts_with("another run holds the lock") && loser.contains(&winner),
            "round {round}, {prefix}: {loser}"
        );
    }
    winner
}

#[test]
fn breaking_a_lock_breaks_only_the_lease_that_was_looked_at() {
    each_backend("break", |location| {
        let mut db = StateDb::open(location).unwrap();
        let seen = Holder { host: "there".into(), pid: 7, pid_started: None };
        db.acquire_lock(&seen).unwrap();
        // Between `unlock` looking and breaking, the lease changed hands.
        db.execute_for_tests("UPDATE run_lock SET host = 'elsewhere', pid = 8").unwrap();
        assert!(!db.break_lock(&seen).unwrap(), "the new holder's lease stays");
        assert_eq!(db.lease("here").unwrap().map(|l| l.holder.pid), Some(8));
        let now = db.lease("here").unwrap().unwrap().holder;
        assert!(db.break_lock(&now).unwrap());
        assert!(db.lease("here").unwrap().is_none());
        // Nobody holds it: the next run takes it at once.
        assert_eq!(db.acquire_lock(&Holder::me("here")).unwrap(), None);
    });
}

#[test]
fn a_sqlite_history_is_copied_into_an_empty_postgres_one_keeping_ids_and_order() {
    let Some(schema) = PgSchema::fresh("copy") else { return };
    let (path, mut db) = temp_db("copy");
    let first = new_run(&mut db);
    let run = new_run(&mut db);
    let step = || "T2.1".to_string();
    db.record(Some(run), &Event::StepStarted { step: step(), attempt: 1, title: "t".into(), in_doubt: false }).unwrap();
    db.record(Some(run), &Event::StepLog { step: step(), attempt: 1, line: "pushed".into() }).unwrap();
    db.record(Some(run), &Event::StepIntent { step: step(), attempt: 1, action: "push".into() }).unwrap();
    db.record(
        Some(run),
        &Event::StepDone {
            step: step(),
            attempt: 1,
            outcome: DoneOutcome::Applied,
            outputs: Outputs::from([("uri".into(), "x".into())]),
            duration_ms: 1,
            warnings: vec!["nats".into()],
        },
    )
    .unwrap();
    drop(db);
    let copied = copy(&path, &schema.location()).unwrap();
    assert_eq!((copied.runs, copied.steps, copied.attempts, copied.outputs, copied.events), (2, 2, 1, 1, 4));
    assert!(!copied.to.display().to_string().contains("%"), "no password shown: {}", copied.to.display());
    let sqlite = StateDb::open_existing(&path, true).unwrap();
    let mut pg = StateDb::open(&schema.location()).unwrap();
    for id in [first, run] {
        assert_eq!(format!("{:?}", pg.run(id).unwrap()), format!("{:?}", sqlite.run(id).unwrap()));
        assert_eq!(format!("{:?}", pg.steps(id).unwrap()), format!("{:?}", sqlite.steps(id).unwrap()));
        assert_eq!(
            format!("{:?}", pg.attempts(id, "T2.1").unwrap()),
            format!("{:?}", sqlite.attempts(id, "T2.1").unwrap())
        );
        assert_eq!(pg.outputs(id).unwrap(), sqlite.outputs(id).unwrap());
        assert_eq!(
            format!("{:?}", pg.events_by_kind(Some(id), &["step_done", "step_intent"]).unwrap()),
            format!("{:?}", sqlite.events_by_kind(Some(id), &["step_done", "step_intent"]).unwrap())
        );
    }
    // New runs and events go on after the copied ones; a second copy would merge: refused.
    assert_eq!(new_run(&mut pg), run + 1);
    pg.record(Some(run + 1), &Event::InputsChanged { what: "x".into() }).unwrap();
    match copy(&path, &schema.location()) {
        Err(StateError::CopyTarget { why, .. }) => assert!(why.contains("already holds"), "{why}"),
        other => panic!("expected CopyTarget, got {:?}", other.map(|c| c.runs)),
    }
}

/// What one durable event costs on each backend (`cargo test --bins -- --ignored --nocapture
/// durable_record_cost`): the intent's commit, which a step waits for before its side effect.
#[test]
#[ignore]
fn durable_record_cost() {
    each_backend("cost", |location| {
        let (mut db, run, _) = a_run_holding_the_lock(location);
        let step = || "T2.1".to_string();
        let n = 200;
        let started = std::time::Instant::now();
        for attempt in 1..=n {
            db.record(Some(run), &Event::StepStarted { step: step(), attempt, title: "t".into(), in_doubt: false })
                .unwrap();
            db.record(Some(run), &Event::StepIntent { step: step(), attempt, action: "a".into() }).unwrap();
        }
        let per = started.elapsed() / (2 * n);
        let started = std::time::Instant::now();
        for _ in 0..n {
            db.steps(run).unwrap();
        }
        let read = started.elapsed() / n;
        eprintln!(
            "{}: {per:?} a committed event (intents with the lease check), {read:?} a steps() read",
            db.path.display()
        );
    });
}

#[test]
fn every_postgres_session_waits_for_the_flush_whatever_the_server_default() {
    let Some(base) = pg_test_url() else { return };
    let location = pg::Location::parse(&base).unwrap();
    for read_only in [false, true] {
        let mut conn = pg::PgConn::connect(&location, read_only).unwrap();
        // The ring's server says `synchronous_commit = off` in its configuration.
        assert_eq!(conn.text_for_tests("SHOW synchronous_commit").unwrap(), "on");
        let expected = if read_only { "on" } else { "off" };
        assert_eq!(conn.text_for_tests("SHOW default_transaction_read_only").unwrap(), expected);
    }
}

#[test]
fn state_copy_takes_a_sqlite_file_to_a_postgres_url_only_and_never_repeats_a_url() {
    let secret_url = Path::new("postgres://u:hunter2@db.example.com/x");
    let err = copy(secret_url, secret_url).err().unwrap().to_string();
    assert!(err.contains("--from must be a SQLite state DB file") && !err.contains("hunter2"), "{err}");
    let err = copy(Path::new("state/runbook.db"), Path::new("other.db")).err().unwrap().to_string();
    assert!(err.contains("--to must be a postgres:// URL"), "{err}");
}

#[test]
fn a_postgres_commit_lost_with_its_connection_is_looked_up_by_its_transaction_id() {
    let Some(base) = pg_test_url() else { return };
    let mut conn = pg::PgConn::connect(&pg::Location::parse(&base).unwrap(), false).unwrap();
    let mut xid_ending = |end: &str| {
        conn.batch_for_tests("BEGIN").unwrap();
        let xid: i64 = conn.text_for_tests("SELECT txid_current()::text").unwrap().parse().unwrap();
        conn.batch_for_tests(end).unwrap();
        xid
    };
    let (committed, rolled_back) = (xid_ending("COMMIT"), xid_ending("ROLLBACK"));
    assert_eq!(conn.commit_status(committed).unwrap(), Some(true));
    assert_eq!(conn.commit_status(rolled_back).unwrap(), Some(false), "written again");
    assert!(conn.commit_status(committed + 1_000_000).is_err(), "an id it never gave cannot be told");
}

/// While the server refuses this test's role (a restart not over yet), a lost connection
/// cannot be made again: queued log lines wait, and are written once it can.
#[tokio::test]
async fn log_lines_queued_while_the_postgres_server_cannot_be_reached_are_written_once_it_can() {
    let Some(schema) = PgSchema::fresh("unreachable") else { return };
    let base = pg_test_url().unwrap();
    let role = format!("t_unreachable_{}", std::process::id());
    admin(&base, &format!("DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN SUPERUSER PASSWORD 'only-here'"));
    let (_, at) = schema.url.split_once('@').unwrap();
    let location = PathBuf::from(format!("postgres://{role}:only-here@{at}"));
    let mut db = StateDb::open(&location).unwrap();
    let run = new_run(&mut db);
    let pid = db.backend_pid_for_tests().unwrap();
    let state = StateHandle::spawn(db);
    let started = Event::StepStarted { step: "T2.1".into(), attempt: 1, title: "t".into(), in_doubt: false };
    state.record(run, started).await.unwrap();
    admin(&base, &format!("ALTER ROLE {role} NOLOGIN; SELECT pg_terminate_backend({pid})"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let failed = WriteError::default();
    for n in 1..=5 {
        state.record_later(
            run,
            Event::StepLog { step: "T2.1".into(), attempt: 1, line: format!("line {n}") },
            failed.clone(),
        );
    }
    let intent = || Event::StepIntent { step: "T2.1".into(), attempt: 1, action: "a".into() };
    let err = state.record(run, intent()).await.unwrap_err().to_string();
    assert!(err.contains("could not be made again"), "{err}");
    admin(&base, &format!("ALTER ROLE {role} LOGIN"));
    state.record(run, intent()).await.unwrap();
    drop(state);
    let log = StateDb::open(&schema.location()).unwrap().attempts(run, "T2.1").unwrap().remove(0).log;
    assert_eq!(log, "line 1\nline 2\nline 3\nline 4\nline 5\n");
    drop(schema);
    admin(&base, &format!("DROP ROLE IF EXISTS {role}"));
}

#[test]
fn the_read_api_filters_pages_and_tails_alike_on_both_backends() {
    each_backend("read_api", the_read_api_filters_pages_and_tails_on);
}

fn the_read_api_filters_pages_and_tails_on(location: &Path) {
    let mut db = StateDb::open(location).unwrap();
    let vars = BTreeMap::new();
    let start = |db: &mut StateDb, runbook: &str, env: &str, operator: &str| {
        let steps = ["T2.1".to_string(), "T2.4".to_string()];
        let run = NewRun {
            runbook,
            env,
            runbook_hash: "h",
            inputs_hash: "i",
            vars: &vars,
            operator,
            host: "h",
            steps: &steps,
        };
        db.create_run(&run).unwrap()
    };
    let step = |s: &str| s.to_string();
    let end = |status| move |run| Event::RunFinished { run, status, duration_ms: 1 };
    let (done, failed, awaiting, running, other) = (
        start(&mut db, "sprint-2", "local", "ana"),
        start(&mut db, "sprint-2", "local", "ana"),
        start(&mut db, "sprint-2", "armitage", "ana"),
        start(&mut db, "sprint-3", "local", "ana"),
        start(&mut db, "sprint-2", "local", "bo"),
    );
    let mut written = Vec::new();
    for (run, status, error) in [
        (failed, RunState::Failed, "denied"),
        (awaiting, RunState::AwaitingApproval, "awaiting approval: Plan: 1 to add"),
    ] {
        let events = [
            Event::StepStarted { step: step("T2.4"), attempt: 1, title: "t".into(), in_doubt: false },
            Event::StepLog { step: step("T2.4"), attempt: 1, line: "planned".into() },
            Event::StepFailed { step: step("T2.4"), attempt: 1, error: error.into(), fix: None, duration_ms: 1 },
            end(status)(run),
        ];
        for event in events {
            db.record(Some(run), &event).unwrap();
            written.push((run, event));
        }
    }
    for run in [done, other] {
        db.record(Some(run), &end(RunState::Done)(run)).unwrap();
    }

    let ids = |filter: &RunFilter<'_>, before, limit| -> Vec<i64> {
        db.runs(filter, Page { before, limit }).unwrap().iter().map(|r| r.run.id).collect()
    };
    let all = RunFilter::default();
    assert_eq!(ids(&all, None, 2), [other, running], "newest first, a page");
    assert_eq!(ids(&all, Some(running), 2), [awaiting, failed], "the next page starts below the last id");
    assert_eq!(ids(&all, Some(done), 2), Vec::<i64>::new());
    assert_eq!(ids(&RunFilter { operator: Some("bo"), ..all }, None, 9), [other]);
    assert_eq!(ids(&RunFilter { runbook: Some("sprint-3"), ..all }, None, 9), [running]);
    assert_eq!(ids(&RunFilter { env: Some("armitage"), ..all }, None, 9), [awaiting]);
    assert_eq!(ids(&RunFilter { status: Some(RunState::Done), env: Some("local"), ..all }, None, 9), [other, done]);
    let stopped = db.runs(&all, Page { before: None, limit: 9 }).unwrap();
    let at: BTreeMap<i64, Option<(String, Option<String>)>> =
        stopped.into_iter().map(|r| (r.run.id, r.failed_step)).collect();
    assert_eq!(at[&failed], Some((step("T2.4"), Some("denied".into()))));
    assert_eq!(at[&awaiting].as_ref().map(|(s, _)| s.as_str()), Some("T2.4"), "an approval stop names its step");
    assert_eq!((&at[&done], &at[&running]), (&None, &None));

    // The events read back as the typed events written, in order; a tail resumes after an id.
    let tail = db.events_after(Some(failed), 0, 100).unwrap();
    let read: Vec<&Event> = tail.iter().map(|e| e.event.as_ref().unwrap()).collect();
    let of_failed: Vec<&Event> = written.iter().filter(|(r, _)| *r == failed).map(|(_, e)| e).collect();
    assert_eq!(read, of_failed);
    assert!(tail.windows(2).all(|w| w[0].id < w[1].id) && tail.iter().all(|e| e.run == Some(failed)));
    let rest = db.events_after(Some(failed), tail[1].id, 100).unwrap();
    assert_eq!(rest.iter().map(|e| e.id).collect::<Vec<_>>(), tail[2..].iter().map(|e| e.id).collect::<Vec<_>>());
    assert_eq!(db.events_after(None, 0, 3).unwrap().len(), 3, "at most the limit");
    // A payload this runbook cannot read is said, not skipped nor defaulted.
    db.append_raw_event_for_tests(Some(done), 5, "step_exploded", r#"{"event":"step_exploded"}"#);
    let last = db.events_after(Some(done), 0, 100).unwrap().pop().unwrap();
    assert_eq!(last.kind, "step_exploded");
    assert!(last.event.as_ref().is_err_and(|e| e.contains("step_exploded")), "{:?}", last.event);

    assert_eq!(db.attempt_log(failed, "T2.4", 1).unwrap().as_deref().map(str::trim_end), Some("planned"));
    assert_eq!(db.attempt_log(failed, "T2.4", 2).unwrap(), None);

    // A run's timeline: each attempt, how it ended, and no log.
    let timeline = db.attempt_timeline(failed).unwrap();
    assert_eq!(timeline.len(), 1, "{timeline:?}");
    let line = &timeline[0];
    assert_eq!((line.step.as_str(), line.attempt), ("T2.4", 1));
    assert_eq!(line.error.as_deref(), Some("denied"));
    assert!(db.attempt_timeline(done).unwrap().is_empty(), "a run whose steps never started");
}
