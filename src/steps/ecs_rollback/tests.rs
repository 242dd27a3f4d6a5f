//! The rollback's judgement: markers, targets and validation; and, against a stand-in ECS
//! (`fake_ecs`), what a probe calls done, what an apply changes, and how a killed emergency
//! run resumes.

use std::sync::Arc;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::*;
use crate::approval::Approver;
use crate::environment::Environment;
use crate::recorder::Recorder;
use crate::steps::Services;

mod fake_ecs;

use fake_ecs::{EcsState, FakeEcs};

fn params(revision: &str) -> Params {
    toml::from_str(&format!(
        "cluster = \"c\"\nservice = \"dixie-armitage\"\nrevision = \"{revision}\"\n\
         health_url = \"http://127.0.0.1:1/api/health\"\nhealth = \"dixie\"\n"
    ))
    .unwrap()
}

fn marker(from: u32, to: u32) -> Marker {
    Marker { run: 7, from, to, desired: 1, by: "ana@laptop".into(), at: "2026-12-01T05:00:00Z".into() }
}

#[test]
fn a_marker_reads_back_what_it_wrote() {
    let m = marker(3, 2);
    assert_eq!(Marker::parse(&m.tag_value()), Some(m.clone()));
    assert!(m.tag_value().len() <= 256, "ECS tag values are at most 256 characters");
    assert_eq!(Marker::parse("run=x from=3"), None);
    assert_eq!(
        m.describe("dixie-armitage"),
        "rollback run 7 of dixie-armitage to revision 2 (from 3) by ana@laptop at 2026-12-01T05:00:00Z"
    );
}

#[test]
fn task_definition_arns_give_family_and_revision() {
    assert_eq!(
        family_revision("arn:aws:ecs:us-east-1:1:task-definition/dixie-armitage:12"),
        Some(("dixie-armitage".into(), 12))
    );
    assert_eq!(family_revision("dixie-armitage:3"), Some(("dixie-armitage".into(), 3)));
    assert_eq!(family_revision("dixie-armitage"), None);
}

#[test]
fn the_default_target_is_the_revision_before_the_running_one_and_stays_put_once_rolled_back() {
    let p = params("");
    let revisions = [5, 4, 2, 1];
    assert_eq!(p.target("f", 5, None, &revisions).unwrap(), 4);
    // Revision 3 was deregistered: the one before 4 is 2.
    assert_eq!(p.target("f", 4, None, &revisions).unwrap(), 2);
    // Rolled back from 5 to 2: a re-run keeps 2 rather than going further back.
    assert_eq!(p.target("f", 2, Some(&marker(5, 2)), &revisions).unwrap(), 2);
    // A marker whose target no longer runs (terraform put the service forward) is history.
    assert_eq!(p.target("f", 5, Some(&marker(5, 2)), &revisions).unwrap(), 4);
    let err = p.target("f", 1, None, &revisions).unwrap_err().to_string();
    assert!(err.contains("no ACTIVE revision before the running 1"), "{err}");
}

#[test]
fn a_named_revision_must_be_active() {
    let revisions = [5, 4, 2, 1];
    assert_eq!(params("2").target("f", 5, None, &revisions).unwrap(), 2);
    let err = params("3").target("f", 5, None, &revisions).unwrap_err();
    assert!(err.to_string().contains("f:3 is not an ACTIVE revision; the latest are 5, 4, 2, 1"), "{err}");
    assert_eq!(err.fix(), Some("pass one of them: --var revision=N"));
}

#[test]
fn validation_names_the_field() {
    assert!(params("x").validate().unwrap_err().starts_with("revision: expected a revision number"));
    assert!(params("0").validate().is_err());
    assert!(params("").validate().is_ok());
    let bad: Result<Params, _> = toml::from_str(
        "cluster = \"c\"\nservice = \"s\"\nemergency = \"yes\"\nhealth_url = \"http://x/\"\nhealth = \"dixie\"\n",
    );
    assert!(bad.unwrap_err().to_string().contains("emergency: expected true or false, got \"yes\""));
}

/// A stand-in ECS, the services of run `run` (`None`: `plan`) with `approver`, and the events
/// the step emitted.
struct Stage {
    ecs: FakeEcs,
    services: Arc<Services>,
    tx: UnboundedSender<Event>,
    rx: std::sync::Mutex<UnboundedReceiver<Event>>,
}

impl Stage {
    async fn new(state: EcsState, run: Option<i64>, approver: Approver) -> Self {
        let ecs = FakeEcs::start(state).await;
        let env: Environment = toml::from_str(&format!(
            "name = \"t\"\naccount_id = \"0\"\nregion = \"us-east-1\"\nloopback_only = true\n[aws]\n\
             endpoint_url = \"http://{}\"\n[aws.emulator_credentials]\naccess_key_id = \"testing\"\n\
             secret_access_key = \"testing\"\n",
            ecs.addr
        ))
        .unwrap();
        let dir = std::env::temp_dir();
        let base = crate::steps::test_services(&dir, &dir).await;
        let services = Arc::new(Services {
            cloud: Arc::new(crate::cloud::Cloud::connect(&env).await),
            env: Arc::new(env),
            project: base.project.clone(),
            work_dir: base.work_dir.clone(),
            approver,
            run,
            acknowledged_rollback: None,
            clock: base.clock.clone(),
            announce: None,
        });
        let (tx, rx) = unbounded_channel();
        Stage { ecs, services, tx, rx: std::sync::Mutex::new(rx) }
    }

    /// The rollback step with `vars` (`revision = "2"`, `emergency = true`) as its params.
    fn step(&self, vars: &str) -> Params {
        toml::from_str(&format!(
            "cluster = \"c\"\nservice = \"dixie-armitage\"\nhealth_url = \"{}\"\nhealth = \"dixie\"\n\
             wait_seconds = 5\n{vars}\n",
            self.ecs.health_url()
        ))
        .unwrap()
    }

    fn cx(&self) -> StepContext {
        StepContext::new(&self.services, "R1", 1, Recorder::new(None, self.tx.clone()))
    }

    /// The events emitted since the last call.
    fn events(&self) -> Vec<Event> {
        let mut rx = self.rx.lock().unwrap();
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    /// The log lines emitted since the last call.
    fn logs(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::StepLog { line, .. } => Some(line),
                _ => None,
            })
            .collect()
    }
}

fn yes() -> Approver {
    Approver::Answer { operator: "ana".into(), yes: true }
}

fn absent(probe: Probe) -> String {
    match probe {
        Probe::Absent(what) => what,
        other => panic!("expected Absent, got {other:?}"),
    }
}

fn satisfied(probe: Probe) -> Outputs {
    match probe {
        Probe::Satisfied(outputs) => outputs,
        other => panic!("expected Satisfied, got {other:?}"),
    }
}

#[tokio::test]
async fn an_emergency_on_the_running_revision_restarts_it_once_in_this_run() {
    let stage = Stage::new(EcsState::new(&[1, 2], 2, 2), Some(9), yes()).await;
    let step = stage.step("revision = \"2\"\nemergency = true");
    let what = absent(step.probe(&stage.cx()).await.unwrap());
    assert_eq!(what, "emergency restart of dixie-armitage at revision 2: scale to 0 tasks, then back to 2");
    step.apply(&stage.cx()).await.unwrap();
    let changes = stage.ecs.changes();
    assert_eq!(changes.len(), 4, "{changes:#?}");
    assert!(changes[0].starts_with("TagResource") && changes[0].contains("stage=down"), "{changes:#?}");
    assert_eq!(changes[1], r#"UpdateService {"desiredCount":0}"#);
    assert!(changes[2].starts_with("TagResource") && changes[2].contains("stage=up"), "{changes:#?}");
    assert_eq!(
        changes[3],
        r#"UpdateService {"desiredCount":2,"forceNewDeployment":true,"taskDefinition":"dixie-armitage:2"}"#
    );
    let events = stage.events();
    assert!(
        events.iter().any(|e| matches!(e, Event::ApprovalAnswered { summary, approved: true, .. }
            if summary == "emergency restart of dixie-armitage at revision 2: scale to 0 tasks, then back to 2")),
        "{events:#?}"
    );
    let marked: Vec<&Event> = events.iter().filter(|e| matches!(e, Event::RollbackMarked { .. })).collect();
    assert!(
        matches!(marked[..], [Event::RollbackMarked { from_revision, to_revision, emergency: true, desired: Some(2), .. }]
            if from_revision == "2" && to_revision == "2"),
        "{marked:#?}"
    );
    let outputs = satisfied(step.verify(&stage.cx()).await.unwrap());
    assert_eq!(outputs["revision"], "2");
    // The same run, again (a retry): restarted already, nothing more to do.
    satisfied(stage.step("revision = \"2\"\nemergency = true").probe(&stage.cx()).await.unwrap());
    assert_eq!(stage.ecs.changes(), Vec::<String>::new());
    // Another run, or `plan`, restarts it again.
    for run in [Some(10), None] {
        let other = Stage::new(stage.ecs.with(|s| s.clone()), run, yes()).await;
        absent(other.step("revision = \"2\"\nemergency = true").probe(&other.cx()).await.unwrap());
    }
}

#[tokio::test]
async fn an_emergency_alone_while_a_rollback_is_in_effect_restarts_its_revision_and_keeps_its_marker() {
    let mut state = EcsState::new(&[1, 2], 1, 1);
    let rollback = "run=7 from=2 to=1 desired=1 by=dee@bastion at=2026-12-01T05:00:00Z";
    state.tags.insert(MARKER_TAG.into(), rollback.into());
    let stage = Stage::new(state, Some(9), yes()).await;
    let step = stage.step("emergency = true");
    let what = absent(step.probe(&stage.cx()).await.unwrap());
    assert_eq!(what, "emergency restart of dixie-armitage at revision 1: scale to 0 tasks, then back to 1");
    step.apply(&stage.cx()).await.unwrap();
    satisfied(step.verify(&stage.cx()).await.unwrap());
    let changes = stage.ecs.changes();
    assert!(changes.iter().any(|c| c == r#"UpdateService {"desiredCount":0}"#), "{changes:#?}");
    // Terraform still sees the rollback of run 7 (the restart rolled nothing back).
    assert_eq!(stage.ecs.with(|s| s.tags[MARKER_TAG].clone()), rollback);
}

#[tokio::test]
async fn an_emergency_rollback_marks_the_rollback_then_scales_to_0_and_back_on_the_target() {
    let stage = Stage::new(EcsState::new(&[1, 2], 2, 1), Some(9), yes()).await;
    let step = stage.step("revision = \"1\"\nemergency = true");
    let what = absent(step.probe(&stage.cx()).await.unwrap());
    assert_eq!(
        what,
        "emergency rollback of dixie-armitage from revision 2 to 1: scale to 0 tasks, then back to 1 on it"
    );
    step.apply(&stage.cx()).await.unwrap();
    let changes = stage.ecs.changes();
    let kinds: Vec<&str> = changes.iter().map(|c| c.split_whitespace().next().unwrap()).collect();
    assert_eq!(kinds, ["TagResource", "TagResource", "UpdateService", "TagResource", "UpdateService"], "{changes:#?}");
    assert!(changes[0].contains(MARKER_TAG) && changes[1].contains("stage=down"), "{changes:#?}");
    assert!(changes[4].contains(r#""taskDefinition":"dixie-armitage:1""#), "{changes:#?}");
    satisfied(step.verify(&stage.cx()).await.unwrap());
    assert!(stage.ecs.with(|s| s.tags[MARKER_TAG].starts_with("run=9 from=2 to=1 desired=1 ")));
}

#[tokio::test]
async fn an_emergency_waits_for_approval_and_changes_nothing_without_it() {
    let stage = Stage::new(EcsState::new(&[1, 2], 2, 1), Some(9), Approver::Withheld).await;
    let step = stage.step("revision = \"2\"\nemergency = true");
    let err = step.apply(&stage.cx()).await.unwrap_err();
    assert!(
        matches!(&err, StepError::AwaitingApproval { summary, fix: Some(fix) }
            if summary.starts_with("emergency restart of dixie-armitage at revision 2")
                && fix.contains("runbook resume 9 --yes")),
        "{err:?}"
    );
    assert_eq!(stage.ecs.changes(), Vec::<String>::new());
}

/// Where a run killed in the middle left the service, and what resuming it does.
#[tokio::test]
async fn an_emergency_killed_at_zero_tasks_resumes_by_scaling_back_up_without_asking_again() {
    for stage_left in ["down", "up"] {
        let mut state = EcsState::new(&[1, 2], 2, 0);
        state.tags.insert(
            "runbook:emergency".into(),
            format!("run=9 revision=2 desired=2 stage={stage_left} by=ana@laptop at=2026-12-01T05:00:00Z"),
        );
        // Approval was given before the scale-down; the resume is not asked again.
        let stage = Stage::new(state, Some(9), Approver::Withheld).await;
        let step = stage.step("revision = \"2\"\nemergency = true");
        let what = absent(step.probe(&stage.cx()).await.unwrap());
        assert!(what.starts_with("emergency restart of dixie-armitage at revision 2"), "{what}");
        step.apply(&stage.cx()).await.unwrap();
        let changes = stage.ecs.changes();
        assert_eq!(changes.len(), 2, "killed at stage {stage_left}: {changes:#?}");
        assert!(changes[0].starts_with("TagResource") && changes[0].contains("stage=up"), "{changes:#?}");
        assert!(changes[1].starts_with(r#"UpdateService {"desiredCount":2,"#), "{changes:#?}");
        satisfied(step.verify(&stage.cx()).await.unwrap());
        let events = stage.events();
        assert!(!events.iter().any(|e| matches!(e, Event::RollbackMarked { .. })), "recorded once: {events:#?}");
    }
    // Killed after the scale-up was sent: done, once stable and healthy.
    let mut state = EcsState::new(&[1, 2], 2, 2);
    state.tags.insert(
        "runbook:emergency".into(),
        "run=9 revision=2 desired=2 stage=up by=ana@laptop at=2026-12-01T05:00:00Z".into(),
    );
    let stage = Stage::new(state, Some(9), Approver::Withheld).await;
    satisfied(stage.step("revision = \"2\"\nemergency = true").probe(&stage.cx()).await.unwrap());
}

#[tokio::test]
async fn the_revisions_are_listed_newest_first_whatever_order_the_api_answers_in() {
    // moto answers oldest first whatever `sort` asks.
    let stage = Stage::new(EcsState::new(&[1, 2, 3, 4, 5, 6, 7], 7, 1), Some(9), yes()).await;
    absent(stage.step("").probe(&stage.cx()).await.unwrap());
    let logs = stage.logs();
    let listed: Vec<&str> = logs
        .iter()
        .filter_map(|l| l.trim_start().strip_prefix("dixie-armitage:"))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(listed, ["7", "6", "5", "4", "3"], "{logs:#?}");
    let err = stage.step("revision = \"9\"").probe(&stage.cx()).await.unwrap_err();
    assert!(err.to_string().contains("the latest are 7, 6, 5, 4, 3"), "{err}");
}
