//! What operators read, snapshotted: a change of wording shows in review.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;
use crate::engine::PlanLine;
use crate::environment::EnvError;
use crate::event::Outputs;
use crate::project::LookupError;
use crate::runbook::RunbookError;
use crate::state::{AttemptRow, Holder, RunRow, StateError, StepRow};
use crate::status::StepView;

const T0: i64 = 1_795_644_293_000;

fn row(step: &str, state: StepState, attempts: i64, duration_ms: Option<i64>, error: Option<&str>) -> StepRow {
    StepRow {
        step: step.into(),
        state,
        attempts,
        duration_ms,
        last_error: error.map(String::from),
        fix: None,
        in_doubt: false,
        warnings: Vec::new(),
    }
}

fn view(status: RunState) -> StatusView {
    let mut failed = row(
        "T2.5",
        StepState::Failed,
        3,
        Some(4_200),
        Some("REDIS_URL: connect 127.0.0.1:6380: Connection refused\nmore"),
    );
    failed.fix = Some("once the cause is fixed: runbook retry T2.5".into());
    let steps = vec![
        StepView {
            row: row("T2.1", StepState::Applied, 1, Some(812), None),
            next: None,
            outputs: Outputs::new(),
            gate: None,
            wait: None,
        },
        StepView {
            row: row("T2.3", StepState::Satisfied, 1, Some(95_000), None),
            next: None,
            outputs: Outputs::new(),
            gate: None,
            wait: None,
        },
        StepView { next: failed.fix.clone(), row: failed, outputs: Outputs::new(), gate: None, wait: None },
        StepView {
            row: row("T2.6", StepState::Blocked, 0, None, Some("waits for T2.5")),
            next: Some("runbook resume".into()),
            outputs: Outputs::new(),
            gate: None,
            wait: None,
        },
    ];
    StatusView {
        run: RunRow {
            id: 7,
            runbook: "sprint-2".into(),
            env: "local".into(),
            runbook_hash: "h".into(),
            inputs_hash: "i".into(),
            vars: BTreeMap::new(),
            operator: "ana".into(),
            host: "laptop".into(),
            started_at: T0,
            ended_at: Some(T0 + 184_000),
            status,
        },
        steps,
        next: "once the cause is fixed: runbook retry T2.5".into(),
        lock: None,
    }
}

#[test]
fn status_table_of_a_run_live_on_another_host_names_its_holder() {
    let mut view = view(RunState::Running);
    view.run.ended_at = None;
    view.lock = Some(crate::status::LockView {
        host: "laptop-ana".into(),
        pid: 4242,
        heartbeat_age_s: 12,
        this_host: false,
        stale_after_s: 30,
    });
    let text = status_table(&view);
    assert!(text.contains("lock: held by pid 4242 on laptop-ana, last heartbeat 12 s ago\n"), "{text}");
    let json = serde_json::to_value(&view).unwrap();
    assert_eq!(json["lock"]["host"], "laptop-ana");
    assert_eq!(json["lock"]["stale_after_s"], 30);
}

#[test]
fn status_table_of_a_failed_run() {
    insta::assert_snapshot!(status_table(&view(RunState::Failed)));
}

#[test]
fn status_table_of_a_run_awaiting_approval_lists_the_change_under_its_step() {
    let mut v = view(RunState::AwaitingApproval);
    let change = "awaiting approval: Plan: 1 to add, 1 to change, 1 to destroy.\n  destroy  aws_security_group.old\n  \
                  update   aws_ecs_service.dixie: desired_count\n  create   aws_cloudwatch_log_group.dixie\u{1b}[31m";
    let mut approval = row("T2.4", StepState::Failed, 1, Some(9_000), Some(change));
    approval.fix = Some("the change is listed above; to apply it: runbook resume 7 --yes".into());
    v.steps.truncate(2);
    v.steps.push(StepView {
        next: approval.fix.clone(),
        row: approval,
        outputs: Outputs::new(),
        gate: None,
        wait: None,
    });
    v.next = "the change is listed above; to apply it: runbook resume 7 --yes".into();
    insta::assert_snapshot!(status_table(&v));
}

#[test]
fn status_table_of_a_run_whose_process_died_shows_the_step_in_doubt() {
    let mut v = view(RunState::Died);
    v.run.ended_at = None;
    v.steps[2].row.state = StepState::Running;
    v.steps[2].row.in_doubt = true;
    v.steps[2].row.last_error = None;
    v.steps[2].next = Some("in doubt (interrupted after its intent): runbook resume settles it by its probe".into());
    v.next = "its process died: runbook resume (settles in-doubt steps by their probes)".into();
    insta::assert_snapshot!(status_table(&v));
}

#[test]
fn a_done_step_with_a_tolerated_failure_shows_its_warning_in_the_table_and_the_json() {
    let mut v = view(RunState::Done);
    v.steps.truncate(2);
    v.steps[1].row.warnings = vec!["nats unreachable: sprint-3 T3.1 adds the rule".into()];
    v.next = "nothing: every step is done".into();
    insta::assert_snapshot!(status_table(&v));
    let json: serde_json::Value = serde_json::to_value(&v).unwrap();
    assert_eq!(json["steps"][1]["warnings"][0], "nats unreachable: sprint-3 T3.1 adds the rule");
    assert!(json["steps"][0].get("warnings").is_none(), "no empty list for a step without warnings");
}

#[test]
fn status_table_shows_what_a_rollback_put_in_place_and_no_other_steps_outputs() {
    let mut v = view(RunState::Done);
    v.run.runbook = "rollback".into();
    v.steps.truncate(1);
    v.steps[0].outputs = Outputs::from([("repository_uri".into(), "0.dkr.ecr.us-east-1.amazonaws.com/dixie".into())]);
    let mut rolled = row("R1", StepState::Applied, 1, Some(65_000), None);
    rolled.warnings = vec!["nats unreachable: sprint-3 T3.1 adds the rule".into()];
    let outputs = [
        ("revision", "1"),
        ("task_definition", "arn:aws:ecs:us-east-1:0:task-definition/dixie-armitage:1"),
        ("deployment_id", "ecs-svc/1234"),
        ("deployment_started_at", "2026-12-01T05:00:00Z"),
        ("health", "status degraded, finn circuit closed, nats unreachable"),
    ];
    let outputs = outputs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    v.steps.push(StepView { row: rolled, next: None, outputs, gate: None, wait: None });
    v.next = "nothing: every step is done".into();
    let text = status_table(&v);
    assert!(
        text.contains(
            "revision 1; task definition arn:aws:ecs:us-east-1:0:task-definition/dixie-armitage:1; \
             health status degraded, finn circuit closed, nats unreachable"
        ),
        "{text}"
    );
    assert!(!text.contains("repository_uri") && !text.contains("ecs-svc/1234"), "{text}");
    insta::assert_snapshot!(text);
}

#[test]
fn only_the_rollback_kind_declares_the_outputs_status_shows_a_rollback_by() {
    let kinds: Vec<&str> = crate::steps::KINDS
        .iter()
        .filter(|k| k.outputs.is_some_and(|o| o.contains(&"revision") || o.contains(&"task_definition")))
        .map(|k| k.name)
        .collect();
    assert_eq!(kinds, ["ecs_rollback"]);
}

#[test]
fn status_json_names_states_in_snake_case() {
    let json: serde_json::Value = serde_json::to_value(view(RunState::Failed)).unwrap();
    assert_eq!(json["run"]["status"], "failed");
    assert_eq!(json["steps"][1]["state"], "satisfied");
    assert_eq!(json["steps"][2]["next"], "once the cause is fixed: runbook retry T2.5");
}

fn plan_lines() -> Vec<PlanLine> {
    let line = |step: &str, title: &str, verdict, detail: &str| PlanLine {
        step: step.into(),
        title: title.into(),
        verdict,
        detail: detail.into(),
    };
    vec![
        line("T2.1", "Create ECR repository", PlanVerdict::Satisfied, "nothing to do"),
        line("T2.3", "Create database on RDS", PlanVerdict::WouldApply, "create role dixie, create database dixie"),
        line(
            "T2.2",
            "Build and push Docker image",
            PlanVerdict::Conflict,
            "tag 3f2a9c1 of dixie-armitage is already in ECR with another image",
        ),
        line("T2.4", "Initialize terraform and apply", PlanVerdict::AfterUpstream, "probed once T2.2 has run"),
        line("T2.5", "Populate SSM parameters", PlanVerdict::Error, "ssm:GetParameter: throttled"),
    ]
}

#[test]
fn plan_table_shows_each_verdict() {
    insta::assert_snapshot!(plan_table(&plan_lines()));
}

#[test]
fn a_plan_with_a_conflict_exits_1_and_one_without_exits_0() {
    let mut lines = plan_lines();
    assert_eq!(outcome(&Outcome::Plan(lines.clone()), false).code, 1);
    lines.retain(|l| l.verdict != PlanVerdict::Conflict);
    assert_eq!(outcome(&Outcome::Plan(lines.clone()), true).code, 1, "a step that could not be probed");
    lines.retain(|l| l.verdict != PlanVerdict::Error);
    assert_eq!(outcome(&Outcome::Plan(lines), true).code, 0);
}

#[test]
fn run_outcomes_map_to_exit_codes() {
    let run = |status, write_error: Option<&str>| Outcome::Run {
        run: 1,
        status,
        view: None,
        write_error: write_error.map(String::from),
        notify_error: None,
    };
    assert_eq!(outcome(&run(RunState::Done, None), false).code, 0);
    assert_eq!(outcome(&run(RunState::Failed, None), false).code, 1);
    let interrupted = outcome(&run(RunState::Interrupted, None), false);
    assert_eq!(interrupted.code, 130);
    assert_eq!(interrupted.stderr, "interrupted: run 1 is recorded as interrupted; `runbook resume 1` continues it\n");
    let awaiting = outcome(&run(RunState::AwaitingApproval, None), false);
    assert_eq!(awaiting.code, 5, "its own code: not a failure, not done");
    assert!(awaiting.stderr.contains("nothing failed") && awaiting.stderr.contains("`runbook resume 1 --yes`"));
    let unwritable = outcome(&run(RunState::Done, Some("disk full")), false);
    assert_eq!((unwritable.code, unwritable.stderr.as_str()), (1, "error: the run stopped: disk full\n"));
}

#[test]
fn logs_show_each_attempt_with_its_outcome() {
    let attempt = |n, outcome: Option<&str>, intent: bool| AttemptRow {
        attempt: n,
        started_at: T0,
        intent_at: intent.then_some(T0 + 1),
        action: None,
        outcome: outcome.map(String::from),
        error: (outcome == Some("failed")).then(|| "password authentication failed".to_string()),
        duration_ms: None,
        log: format!("attempt {n} line\n"),
    };
    let rendered = outcome(
        &Outcome::Logs {
            run: 3,
            step: "T2.3".into(),
            attempts: vec![attempt(1, Some("failed"), true), attempt(2, None, true)],
        },
        false,
    );
    insta::assert_snapshot!(rendered.stdout);
}

#[test]
fn unlock_and_skip_say_what_they_did() {
    let holder = Holder { host: "laptop".into(), pid: 4242, pid_started: None };
    assert_eq!(
        outcome(&Outcome::Unlocked(Some(holder)), false).stdout,
        "broke the run lock held by pid 4242 on laptop (recorded in the audit log)\n"
    );
    assert_eq!(outcome(&Outcome::Unlocked(None), false).stdout, "no run lock is held\n");
    let skipped = Outcome::Skipped { run: 2, step: "T2.3".into(), reason: "made by hand".into() };
    assert_eq!(
        outcome(&skipped, false).stdout,
        "T2.3 skipped in run 2 (made by hand); `runbook resume 2` continues with what depends on it\n"
    );
    assert_eq!(outcome(&skipped, true).stdout, "{\"reason\":\"made by hand\",\"run\":2,\"skipped\":\"T2.3\"}\n");
}

#[test]
fn common_errors_read_as_the_manual_says_and_carry_their_exit_code() {
    let errors: Vec<CliError> = vec![
        CliError::Environment(EnvError::Lookup(LookupError::NotFound {
            what: "environment",
            name: "armitge".into(),
            available: vec!["armitage".into(), "local".into()],
            hint: " (files in runbooks/environments/)",
        })),
        CliError::from(RunbookError::Cycle {
            path: PathBuf::from("runbooks/sprint-2.toml"),
            members: vec!["T2.1".into(), "T2.3".into(), "T2.1".into()],
        }),
        CliError::from(RunbookError::UnknownStep {
            step: "T2.9".into(),
            runbook: "sprint-2".into(),
            known: vec!["T2.1".into(), "T2.2".into()],
        }),
        CliError::State(StateError::Locked {
            path: PathBuf::from("state/runbook.db"),
            run: "7".into(),
            host: "laptop".into(),
            pid: 4242,
            since: "2026-11-25T22:04:53Z".into(),
            heartbeat_age_s: 3,
        }),
        CliError::State(StateError::NewerSchema { path: PathBuf::from("state/runbook.db"), found: 42, supported: 2 }),
        CliError::Recorded {
            run: 7,
            source: StateError::Write { path: PathBuf::from("state/runbook.db"), message: "disk full".into() },
        },
        CliError::Usage("--var image_tag: write --var NAME=VALUE".into()),
    ];
    let rendered: Vec<String> = errors
        .iter()
        .map(|e| {
            let r = error(e);
            format!("[exit {}] {}", r.code, r.stderr)
        })
        .collect();
    insta::assert_snapshot!(rendered.join(""));
}

/// Text from operators and tools never reaches a terminal raw: `skip --reason $'ok\e[2J\e[31mFAKE'`
/// cleared the screen of whoever ran `status` or `audit`.
#[test]
fn control_characters_from_operators_and_tools_are_escaped() {
    assert_eq!(printable("plain text\n\twith tab"), "plain text\n\twith tab");
    assert_eq!(printable("ok\u{1b}[2J\u{1b}[31mFAKE"), "ok\\u{1b}[2J\\u{1b}[31mFAKE");
    assert_eq!(printable("a\rb\u{7}c\u{202e}d"), "a\\u{d}b\\u{7}c\\u{202e}d");
    assert_eq!(one_line("laptop\u{1b}]0;x\u{7}\nFAKE LINE"), "laptop\\u{1b}]0;x\\u{7}\\nFAKE LINE");
    assert!(matches!(printable("nothing to escape"), std::borrow::Cow::Borrowed(_)));
}

#[test]
fn status_table_shows_where_a_smoke_gate_stands() {
    let mut v = view(RunState::Died);
    v.run.runbook = "smoke".into();
    v.steps.truncate(0);
    let mut row = row("smoke", StepState::Running, 1, None, None);
    row.in_doubt = true;
    v.steps.push(StepView {
        row,
        next: Some("in doubt (interrupted after its intent): runbook resume 7 settles it by its probe".into()),
        outputs: Outputs::new(),
        gate: Some("2 of 3 green rounds after 4 rounds (last: round 4)".into()),
        wait: None,
    });
    let text = status_table(&v);
    assert!(text.contains("\n         2 of 3 green rounds after 4 rounds (last: round 4)\n"), "{text}");
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["steps"][0]["gate"], "2 of 3 green rounds after 4 rounds (last: round 4)");
}
