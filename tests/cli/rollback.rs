//! Rollback on the ring (002 "Rollback Procedure"): deploy a second image, roll back to the
//! first, re-run (nothing happens), then see the next deploy stop until the rollback is
//! acknowledged; and the emergency variant (0 tasks, then 1 on the target revision), which
//! restarts the running revision when run again.

use super::*;

/// Dixie's service: its task definition's `family:revision`, its desired count, and the
/// rollback marker tag, if any.
fn dixie_service() -> (String, i32, Option<String>) {
    block_on(async {
        let ecs = aws_sdk_ecs::Client::new(&aws().await);
        let out =
            ecs.describe_services().cluster("arrakis-staging-cluster").services("dixie-armitage").send().await.unwrap();
        let svc = &out.services()[0];
        let tags = ecs.list_tags_for_resource().resource_arn(svc.service_arn().unwrap()).send().await.unwrap();
        let marker =
            tags.tags().iter().find(|t| t.key() == Some("runbook:rollback")).map(|t| t.value().unwrap().into());
        let revision = svc.task_definition().unwrap().rsplit('/').next().unwrap().to_string();
        (revision, svc.desired_count(), marker)
    })
}

/// The events of kind `kind` in the state DB, as JSON payloads.
fn events_of(state: &Path, kind: &str) -> Vec<serde_json::Value> {
    let conn = rusqlite::Connection::open(state).unwrap();
    let mut stmt = conn.prepare("SELECT payload FROM events WHERE kind = ?1 ORDER BY id").unwrap();
    stmt.query_map([kind], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|p| serde_json::from_str(&p.unwrap()).unwrap())
        .collect()
}

#[test]
fn a_rollback_runs_the_old_revision_a_rerun_does_nothing_and_the_next_deploy_waits_for_its_acknowledgement() {
    let Some(_ring) = fresh_ring() else { return };
    let scratch = Scratch::new("rollback");
    let project = impatient_project(&scratch);
    let rb = || scratch.runbook().project(&project);
    rb().run(&["run", "sprint-2", "--yes"]).expect_code(0);
    // A second image (the same build under another tag): revision 2 of the task definition.
    rb().run(&["run", "sprint-2", "--yes", "--var", "image_tag=second"]).expect_code(0);
    assert_eq!(dixie_service().0, "dixie-armitage:2");
    // moto calls a deployment stable at once; the verify then tells the new task from the old by
    // its uptime (whole seconds), with 2 s of slack for clock skew. A task started under 3 s
    // before the rollback would pass for new (on ECS the rollout state says IN_PROGRESS
    // instead), and the ring's agent restarts Dixie for revision 2 when it next polls, which can
    // be after the run has ended: wait until the task answering has been up for 5 s.
    let settled = (0..60).any(|_| {
        let out = Command::new("curl").args(["-sf", "http://127.0.0.1:13001/api/health"]).output().unwrap();
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let up = body["uptime_seconds"].as_f64().unwrap_or(0.0);
        up >= 5.0 || {
            std::thread::sleep(std::time::Duration::from_millis(500));
            false
        }
    });
    assert!(settled, "Dixie's task on revision 2 did not stay up for 5 s within 30 s");
    // A revision that does not exist is refused by the preflight, listing the revisions: no run.
    let runs = runs_in(&scratch.state());
    rb().run(&["run", "rollback", "--yes", "--var", "revision=99999"])
        .expect_code(2)
        .expect_text("dixie-armitage:99999 is not an ACTIVE revision; the latest are 2, 1");
    assert_eq!(runs_in(&scratch.state()), runs, "a refused rollback recorded a run");

    let started = std::time::Instant::now();
    let rolled = rb().run(&["run", "rollback", "--yes"]);
    eprintln!("rollback on the ring: {:.1} s", started.elapsed().as_secs_f64());
    rolled
        .expect_code(0)
        .expect_text("the last revisions of dixie-armitage (newest first):")
        .expect_text("dixie-armitage:2    image tag second")
        .expect_text("(running)")
        .expect_text("(target)")
        .expect_text("roll dixie-armitage back from revision 2 to 1")
        .expect_text("warning: nats unreachable: sprint-3 T3.1 adds the rule");
    let rollback_run = rb().status()["run"]["id"].as_i64().unwrap();
    let (revision, desired, marker) = dixie_service();
    assert_eq!((revision.as_str(), desired), ("dixie-armitage:1", 1));
    let marker = marker.expect("the service carries the rollback's marker");
    assert!(marker.starts_with(&format!("run={rollback_run} from=2 to=1 desired=1 by=test-operator@")), "{marker}");
    let health = dixie_health();
    assert_eq!(health["infrastructure"]["postgresql"]["status"], "healthy", "{health}");

    // A re-run: the rollback is in effect, so nothing is changed.
    let actions = aws_actions_during(|| {
        rb().run(&["run", "rollback", "--yes"]).expect_code(0).expect_text("in effect: rollback run");
    });
    let mutating: Vec<&String> = actions.iter().filter(|a| is_mutating(a)).collect();
    assert!(mutating.is_empty(), "a re-run of the rollback changed something: {mutating:?}");
    assert_eq!(rb().status()["steps"][0]["state"], "satisfied");

    // The next deploy would put revision 2 back: it stops, naming the rollback, even with --yes.
    let undo = rb().run(&["run", "sprint-2", "--yes", "--var", "image_tag=second"]);
    undo.expect_code(1)
        .expect_text(&format!(
            "undoing rollback run {rollback_run} of dixie-armitage to revision 1 (from 2) by test-operator@"
        ))
        .expect_text(&format!(" --yes --ack-rollback {rollback_run}"))
        .expect_text("acknowledge it: runbook resume ");
    assert_eq!(dixie_service().0, "dixie-armitage:1", "nothing applied");
    // Acknowledging another run is not acknowledging this one: bad input, never ignored.
    rb().run(&["resume", "--yes", "--ack-rollback", &(rollback_run + 100).to_string()])
        .expect_code(2)
        .expect_text(&format!("run {} rolled nothing back on local", rollback_run + 100));
    rb().run(&["resume", &rollback_run.to_string(), "--yes", "--ack-rollback", &rollback_run.to_string()])
        .expect_code(2)
        .expect_text("is done, so there is nothing to acknowledge");
    assert_eq!(dixie_service().0, "dixie-armitage:1");
    rb().run(&["resume", "--yes", "--ack-rollback", &rollback_run.to_string()])
        .expect_code(0)
        .expect_text(&format!("acknowledged undoing the rollback of dixie-armitage by run {rollback_run}"));
    let (revision, _, marker) = dixie_service();
    assert_eq!(revision, "dixie-armitage:2");
    assert_eq!(marker, None, "terraform's tags (default_tags) no longer carry the marker");

    // Both decisions are on record, with who made them.
    let marked = events_of(&scratch.state(), "rollback_marked");
    assert_eq!(marked.len(), 1, "{marked:?}");
    assert_eq!((marked[0]["from_revision"].as_str(), marked[0]["to_revision"].as_str()), (Some("2"), Some("1")));
    let acked = events_of(&scratch.state(), "rollback_acknowledged");
    assert_eq!(acked.len(), 1, "{acked:?}");
    assert_eq!(acked[0]["rollback_run"], rollback_run);
    assert_eq!(acked[0]["operator"], "test-operator");

    // The emergency variant: 0 tasks, then 1 on the target revision.
    rb().run(&["run", "rollback", "--yes", "--var", "emergency=true", "--var", "revision=1"])
        .expect_code(0)
        .expect_text(
            "emergency rollback of dixie-armitage from revision 2 to 1: scale to 0 tasks, then back to 1 on it",
        )
        .expect_text("emergency: scaling dixie-armitage to 0 tasks")
        .expect_text("dixie-armitage: no task running")
        .expect_text("now deploys dixie-armitage:1 with 1 task(s)");
    let (revision, desired, _) = dixie_service();
    assert_eq!((revision.as_str(), desired), ("dixie-armitage:1", 1));
    // Again, with that rollback in effect: the tasks are stuck, so it restarts them (never
    // "nothing to do"), and the audit calls it a restart, not a rollback.
    rb().run(&["run", "rollback", "--yes", "--var", "emergency=true"])
        .expect_code(0)
        .expect_text("emergency restart of dixie-armitage at revision 1: scale to 0 tasks, then back to 1")
        .expect_text("emergency: scaling dixie-armitage to 0 tasks")
        .expect_text("now deploys dixie-armitage:1 with 1 task(s)");
    let (revision, desired, marker) = dixie_service();
    assert_eq!((revision.as_str(), desired), ("dixie-armitage:1", 1));
    assert!(marker.is_some_and(|m| m.contains("from=2 to=1")), "the restart keeps the rollback's marker");
    rb().run(&["audit"])
        .expect_code(0)
        .expect_text("emergency restart of dixie-armitage at revision 1: scaled 0 and back to 1");
}
