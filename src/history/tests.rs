//! history and audit on a real state DB that holds approvals, skips, retries, an unlock, a
//! terraform state-lock release, an event of an older runbook and a rollback.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;
use crate::event::{Event, RunState};
use crate::state::{NewRun, Page, RunFilter};

fn temp_db(name: &str) -> (PathBuf, StateDb) {
    let dir = std::env::temp_dir().join(format!("runbook-history-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("state.db");
    let db = StateDb::open(&path).unwrap();
    (path, db)
}

/// `test` on the populated DB in a SQLite file, then in PostgreSQL when a server is there.
fn on_each_backend(name: &str, test: impl Fn(&StateDb)) {
    test(&populated(temp_db(name).1));
    if let Some(schema) = crate::state::PgSchema::fresh(&format!("history_{name}")) {
        test(&populated(StateDb::open(&schema.location()).unwrap()));
    }
}

fn new_run(db: &mut StateDb, runbook: &str, env: &str, operator: &str, host: &str) -> i64 {
    let steps: Vec<String> = ["T2.4", "T2.5", "T2.6"].map(String::from).to_vec();
    db.create_run(&NewRun {
        runbook,
        env,
        runbook_hash: "h",
        inputs_hash: "i",
        vars: &BTreeMap::new(),
        operator,
        host,
        steps: &steps,
    })
    .unwrap()
}

fn failed(step: &str, error: &str) -> Event {
    Event::StepFailed { step: step.into(), attempt: 1, error: error.into(), fix: None, duration_ms: 5 }
}

fn finished(run: i64, status: RunState) -> Event {
    Event::RunFinished { run, status, duration_ms: 10 }
}

/// Run 1 (sprint-2, local, ana@laptop): approved T2.4, T2.5 failed, then retried, T2.6
/// skipped by bo on bastion, a state lock released; an older runbook's skip without a host;
/// a rollback. Run 2 (sprint-3, armitage): awaiting approval. Run 3: running, its process
/// gone. A lock broken with no run.
fn populated(mut db: StateDb) -> StateDb {
    let one = new_run(&mut db, "sprint-2", "local", "ana", "laptop");
    let events = [
        Event::ApprovalAnswered {
            step: "T2.4".into(),
            summary: "Plan: 35 to add, 0 to change, 0 to destroy".into(),
            operator: "ana".into(),
            host: "laptop".into(),
            via: "--yes".into(),
            approved: true,
        },
        Event::StepLog { step: "T2.4".into(), attempt: 1, line: "not a decision".into() },
        failed("T2.5", "REDIS_URL: connect refused\nsecond line"),
        finished(one, RunState::Failed),
        Event::StepReset {
            step: "T2.5".into(),
            reason: "runbook retry T2.5".into(),
            operator: "ana".into(),
            host: "laptop".into(),
        },
        Event::StepSkipped {
            step: "T2.6".into(),
            reason: "Finn is redeployed by its own team".into(),
            operator: "bo".into(),
            host: "bastion".into(),
        },
        Event::StateLockReleased {
            step: "T2.4".into(),
            lock_id: "5f1c".into(),
            operator: "bo".into(),
            host: "bastion".into(),
        },
    ];
    for event in &events {
        db.record(Some(one), event).unwrap();
    }
    db.append_raw_event_for_tests(
        Some(one),
        1,
        "step_skipped",
        r#"{"event":"step_skipped","step":"T2.4","reason":"old","operator":"cy"}"#,
    );
    db.append_raw_event_for_tests(
        Some(one),
        2,
        "rollback_marked",
        r#"{"event":"rollback_marked","step":"R1","service":"dixie-armitage","from_revision":"7","to_revision":"6","operator":"dee","host":"bastion"}"#,
    );
    db.append_raw_event_for_tests(
        Some(one),
        3,
        "rollback_marked",
        r#"{"event":"rollback_marked","step":"R1","service":"dixie-armitage","from_revision":"6","to_revision":"6","operator":"dee","host":"bastion","emergency":true,"desired":2}"#,
    );
    db.append_raw_event_for_tests(
        Some(one),
        4,
        "rollback_marked",
        r#"{"event":"rollback_marked","step":"R1","service":"dixie-armitage","from_revision":"7","to_revision":"6","operator":"dee","host":"bastion","emergency":true,"desired":1}"#,
    );
    db.record(Some(one), &finished(one, RunState::Done)).unwrap();
    let two = new_run(&mut db, "sprint-3", "armitage", "bo", "bastion");
    db.record(Some(two), &failed("T2.4", "awaiting approval: Plan: 1 to add, 0 to change, 0 to destroy")).unwrap();
    db.record(Some(two), &finished(two, RunState::Failed)).unwrap();
    new_run(&mut db, "sprint-2", "local", "ana", "laptop");
    let broken = Event::LockBroken {
        previous_host: "ci-7".into(),
        previous_pid: 4242,
        operator: "bo".into(),
        host: "bastion".into(),
    };
    db.record(None, &broken).unwrap();
    db
}

#[test]
fn history_lists_runs_newest_first_with_status_and_failed_step() {
    on_each_backend("list", history_lists_runs_on);
}

fn history_lists_runs_on(db: &StateDb) {
    let page = |limit| Page { before: None, limit };
    let all = RunFilter::default();
    let view = history(db, &all, page(DEFAULT_LIMIT), "laptop").unwrap();
    let seen: Vec<(i64, &str, RunState, Option<&str>, bool)> = view
        .runs
        .iter()
        .map(|r| (r.run, r.runbook.as_str(), r.status, r.failed_step.as_deref(), r.awaiting_approval))
        .collect();
    assert_eq!(
        seen,
        [
            (3, "sprint-2", RunState::Died, None, false),
            (2, "sprint-3", RunState::Failed, Some("T2.4"), true),
            (1, "sprint-2", RunState::Done, None, false),
        ]
    );
    assert_eq!((view.runs[0].duration_ms, view.runs[2].duration_ms.is_some()), (None, true));
    assert_eq!(format!("{}@{}", view.runs[1].operator, view.runs[1].host), "bo@bastion");
    assert!(view.runs[1].started.ends_with('Z'));
    assert_eq!(view.older_before, None, "not a full page");
    let filter = RunFilter { runbook: Some("sprint-2"), env: Some("local"), ..all };
    let two_only = history(db, &filter, page(1), "laptop").unwrap();
    assert_eq!(two_only.runs.iter().map(|r| r.run).collect::<Vec<_>>(), [3]);
    assert_eq!(two_only.older_before, Some(3), "a full page says where the next one starts");
    let next = history(db, &filter, Page { before: Some(3), limit: 1 }, "laptop").unwrap();
    assert_eq!(next.runs.iter().map(|r| r.run).collect::<Vec<_>>(), [1]);
    assert!(history(db, &RunFilter { env: Some("nowhere"), ..all }, page(20), "laptop").unwrap().runs.is_empty());
    // `died` is no recorded status: it is a running run that no live process holds.
    let died = history(db, &RunFilter { status: Some(RunState::Died), ..all }, page(20), "laptop").unwrap();
    assert_eq!(died.runs.iter().map(|r| r.run).collect::<Vec<_>>(), [3]);
    let live = history(db, &RunFilter { status: Some(RunState::Running), ..all }, page(20), "laptop").unwrap();
    assert!(live.runs.is_empty());
    let by = history(db, &RunFilter { operator: Some("bo"), ..all }, page(20), "laptop").unwrap();
    assert_eq!(by.runs.iter().map(|r| r.run).collect::<Vec<_>>(), [2]);
}

#[test]
fn history_walks_the_primary_key_and_audit_reads_one_runs_events_by_index() {
    let db = populated(temp_db("plan").1);
    let (history, audit) = db.query_plans_for_tests();
    assert!(!history.contains("TEMP B-TREE"), "history would sort every run: {history}");
    assert!(audit.contains("USING INDEX events_by_run_kind"), "audit would read every event: {audit}");
}

#[test]
fn audit_lists_every_decision_of_a_run_with_its_operator_and_host() {
    on_each_backend("audit", audit_lists_every_decision_on);
}

fn audit_lists_every_decision_on(db: &StateDb) {
    let view = audit(db, Some(1), false).unwrap();
    assert_eq!(view.run.as_ref().map(|r| r.id), Some(1));
    let seen: Vec<(&str, String, &str)> = view
        .decisions
        .iter()
        .map(|d| (d.kind.as_str(), format!("{}@{}", d.operator, d.host), d.decision.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                "approval_answered",
                "ana@laptop".to_string(),
                "approved T2.4 via --yes: Plan: 35 to add, 0 to change, 0 to destroy"
            ),
            ("step_reset", "ana@laptop".into(), "reset T2.5 to run again (runbook retry T2.5)"),
            ("step_skipped", "bo@bastion".into(), "skipped T2.6: Finn is redeployed by its own team"),
            ("state_lock_released", "bo@bastion".into(), "released terraform's state lock 5f1c of T2.4"),
            // An older runbook's event, without a host: its run's host.
            ("step_skipped", "cy@laptop".into(), "skipped T2.4: old"),
            ("rollback_marked", "dee@bastion".into(), "rolled dixie-armitage back from revision 7 to 6"),
            (
                "rollback_marked",
                "dee@bastion".into(),
                "emergency restart of dixie-armitage at revision 6: scaled 0 and back to 2"
            ),
            (
                "rollback_marked",
                "dee@bastion".into(),
                "emergency rollback of dixie-armitage from revision 7 to 6: scaled 0 and back to 1"
            ),
        ]
    );
    assert_eq!(view.decisions[0].detail["summary"], "Plan: 35 to add, 0 to change, 0 to destroy");
    assert_eq!(view.decisions[0].step.as_deref(), Some("T2.4"));
}

#[test]
fn audit_defaults_to_the_last_run_and_all_includes_runless_unlocks() {
    on_each_backend("all", audit_defaults_to_the_last_run_on);
}

fn audit_defaults_to_the_last_run_on(db: &StateDb) {
    let last = audit(db, None, false).unwrap();
    assert_eq!((last.run.as_ref().map(|r| r.id), last.decisions.len()), (Some(3), 0));
    let all = audit(db, None, true).unwrap();
    assert!(all.run.is_none());
    assert_eq!(all.decisions.len(), 9);
    let unlock = all.decisions.last().unwrap();
    assert_eq!((unlock.run, unlock.kind.as_str()), (None, "lock_broken"));
    assert_eq!(unlock.decision, "broke the run lock held by process 4242 on ci-7");
    assert_eq!(format!("{}@{}", unlock.operator, unlock.host), "bo@bastion");
    assert!(matches!(audit(db, Some(99), false), Err(StateError::NoRun { .. })));
}
