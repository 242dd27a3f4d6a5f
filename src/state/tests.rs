use super::*;
use crate::event::{DoneOutcome, Event, ProbeResult};

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
fn intent_without_outcome_is_in_doubt() {
    let (_, mut db) = temp_db("doubt");
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
    let (_, mut db) = temp_db("append");
    let run = new_run(&mut db);
    db.record(Some(run), &Event::InputsChanged { what: "x".into() }).unwrap();
    assert!(db.conn.execute("DELETE FROM events", []).is_err());
    assert!(db.conn.execute("UPDATE events SET kind = 'y'", []).is_err());
}

#[test]
fn states_outside_their_enum_are_refused_by_the_database() {
    let (_, mut db) = temp_db("check");
    let run = new_run(&mut db);
    let err = db.conn.execute("UPDATE steps SET state = 'sort of done' WHERE run_id = ?1", [run]).unwrap_err();
    assert!(err.to_string().contains("CHECK constraint failed"), "{err}");
    assert!(db.conn.execute("UPDATE runs SET status = 'maybe'", []).is_err());
    for state in StepState::ALL {
        db.conn.execute("UPDATE steps SET state = ?1", [state.as_str()]).unwrap();
        assert_eq!(db.steps(run).unwrap()[0].state, *state);
    }
}

#[test]
fn a_newer_schema_is_refused_and_left_alone() {
    let (path, db) = temp_db("newer");
    db.conn.pragma_update(None, "user_version", 99).unwrap();
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
    conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
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
    let version: i64 = db.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, schema::MIGRATIONS.len() as i64);
    let run = db.run(1).unwrap();
    assert_eq!((run.status, run.ended_at), (RunState::Failed, Some(20)));
    let steps = db.steps(1).unwrap();
    let order: Vec<(&str, StepState)> = steps.iter().map(|s| (s.step.as_str(), s.state)).collect();
    assert_eq!(order, [("T2.3", StepState::Failed), ("T2.1", StepState::Applied)]);
    assert_eq!(steps[0].fix.as_deref(), Some("fix it"));
    assert_eq!(db.attempts(1, "T2.1").unwrap()[0].log, "log line\n");
    assert_eq!(db.outputs(1).unwrap()["T2.1"]["uri"], "x");
    // The append-only triggers survive, and the foreign keys are checked again.
    assert!(db.conn.execute("DELETE FROM events", []).is_err());
    assert!(db.conn.execute("INSERT INTO steps (run_id, step, state) VALUES (42, 'x', 'pending')", []).is_err());
    assert!(db.conn.execute("UPDATE steps SET state = 'bogus'", []).is_err());
    drop(db);
    // Opening again runs nothing.
    StateDb::open(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_processes_opening_a_new_db_at_once_migrate_it_once() {
    let dir = std::env::temp_dir().join(format!("runbook-state-race-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("state.db");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || StateDb::open(&path).map(drop).map_err(|e| e.to_string()))
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_live_holder_keeps_the_lock_and_a_dead_one_loses_it() {
    let (_, mut db) = temp_db("lock");
    let me = Holder::me("h");
    assert_eq!(db.acquire_lock(&me).unwrap(), None);
    // Another live process on this host (pid 1 always exists) holds it: refused.
    db.conn.execute("UPDATE run_lock SET pid = 1, pid_started = ?1", [lease::process_start(1)]).unwrap();
    assert!(matches!(db.acquire_lock(&me), Err(StateError::Locked { pid: 1, .. })));
    // A pid that does not exist: taken over.
    db.conn.execute("UPDATE run_lock SET pid = 999999999", []).unwrap();
    let taken = db.acquire_lock(&me).unwrap().unwrap();
    assert_eq!((taken.host.as_str(), taken.pid), ("h", 999_999_999));
}

#[test]
fn a_reused_pid_does_not_keep_a_dead_lease_alive() {
    let (_, mut db) = temp_db("reused");
    let me = Holder::me("h");
    db.acquire_lock(&me).unwrap();
    // pid 1 exists, but it is not the process that took the lease (another start time).
    let then = lease::process_start(1).unwrap() + 12345;
    db.conn.execute("UPDATE run_lock SET pid = 1, pid_started = ?1, heartbeat_at = 0", [then]).unwrap();
    let taken = db.acquire_lock(&me).unwrap().unwrap();
    assert_eq!((taken.pid, taken.pid_started), (1, Some(then)));
}

#[test]
fn another_hosts_lease_is_stale_after_its_heartbeat_stops() {
    let (_, mut db) = temp_db("stale");
    let me = Holder::me("here");
    db.acquire_lock(&me).unwrap();
    db.conn
        .execute("UPDATE run_lock SET host = 'there', pid = 5, heartbeat_at = ?1", [crate::clock::now_ms()])
        .unwrap();
    assert!(matches!(db.acquire_lock(&me), Err(StateError::Locked { .. })));
    db.conn.execute("UPDATE run_lock SET heartbeat_at = ?1", [crate::clock::now_ms() - 31_000]).unwrap();
    assert_eq!(db.acquire_lock(&me).unwrap().map(|h| h.host), Some("there".to_string()));
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
    let (path, mut db) = temp_db("group");
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
    let other = StateDb::open(&path).unwrap();
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
    assert!(ro.conn.execute("DELETE FROM run_lock", []).is_err(), "read-only");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn runs_racing_for_a_new_state_db_have_exactly_one_winner_and_the_others_are_told_who() {
    for round in 0..5 {
        let dir = std::env::temp_dir().join(format!("runbook-state-racing-{round}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("state.db");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
        let racers: Vec<_> = (0..6)
            .map(|i| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    // Six machines (other hosts: alive while they beat) open a new file at once.
                    let me = Holder { host: format!("host-{i}"), pid: 100 + i, pid_started: None };
                    barrier.wait();
                    let mut db = StateDb::open(&path).map_err(|e| e.to_string())?;
                    db.acquire_lock(&me).map(|_| i).map_err(|e| e.to_string())
                })
            })
            .collect();
        let results: Vec<Result<i64, String>> = racers.into_iter().map(|r| r.join().unwrap()).collect();
        let winners: Vec<i64> = results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let winner = format!("host-{}", winners[0]);
        for loser in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                loser.starts_with("another run holds the lock") && loser.contains(&winner),
                "round {round}: {loser}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn breaking_a_lock_breaks_only_the_lease_that_was_looked_at() {
    let (_, mut db) = temp_db("break");
    let seen = Holder { host: "there".into(), pid: 7, pid_started: None };
    db.acquire_lock(&seen).unwrap();
    // Between `unlock` looking and breaking, the lease changed hands.
    db.conn.execute("UPDATE run_lock SET host = 'elsewhere', pid = 8", []).unwrap();
    assert!(!db.break_lock(&seen).unwrap(), "the new holder's lease stays");
    assert_eq!(db.lease("here").unwrap().map(|l| l.holder.pid), Some(8));
    let now = db.lease("here").unwrap().unwrap().holder;
    assert!(db.break_lock(&now).unwrap());
    assert!(db.lease("here").unwrap().is_none());
}
