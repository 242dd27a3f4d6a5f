//! `runbooks/migrations.toml` on the ring (issue 19): Dixie's migrations down to a target with
//! the data loss shown before approval, a kill between two downs, up again; a held migration
//! lock that 003's `pg_advisory_unlock_all()` does not release, named and ended after approval.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::{DB_PASSWORD_PARAM, Scratch, aws, block_on, fresh_ring, impatient_project, pg_query, ssm_get};

/// Dixie's migration lock key as seed 003's Dixie derives it.
const KEY: &str = "2084904821";

fn dixie(sql: &str) -> Vec<String> {
    let (password, _) = ssm_get(DB_PASSWORD_PARAM).unwrap();
    pg_query("dixie", &password, "dixie", sql).unwrap()
}

fn applied() -> Vec<String> {
    dixie("SELECT filename FROM _migrations ORDER BY id")
}

/// Puts Dixie on a new task-definition revision whose image (on the ring: the container's
/// DIXIE_MIGRATIONS_DIR) carries the migrations up to 012 only, as the image a down to 012
/// goes with.
fn deploy_dixie_carrying_up_to_012(scratch: &Scratch) {
    let older = scratch.dir.join("migrations-012");
    std::fs::create_dir_all(&older).unwrap();
    for entry in std::fs::read_dir(super::project().join("fixtures/dixie/migrations")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.as_str() < "013" {
            std::fs::copy(entry.path(), older.join(&name)).unwrap();
        }
    }
    block_on(async {
        let ecs = aws_sdk_ecs::Client::new(&aws().await);
        let svc = ecs.describe_services().cluster("arrakis-staging-cluster").services("dixie-armitage").send().await;
        let td_arn = svc.unwrap().services()[0].task_definition().unwrap().to_string();
        let td = ecs.describe_task_definition().task_definition(&td_arn).send().await.unwrap();
        let td = td.task_definition().unwrap();
        let mut containers = td.container_definitions().to_vec();
        let mut env = containers[0].environment.clone().unwrap_or_default();
        env.push(
            aws_sdk_ecs::types::KeyValuePair::builder()
                .name("DIXIE_MIGRATIONS_DIR")
                .value(older.display().to_string())
                .build(),
        );
        containers[0].environment = Some(env);
        let registered = ecs
            .register_task_definition()
            .family(td.family().unwrap())
            .set_container_definitions(Some(containers))
            .set_network_mode(td.network_mode().cloned())
            .set_requires_compatibilities(Some(td.requires_compatibilities().to_vec()))
            .set_cpu(td.cpu().map(String::from))
            .set_memory(td.memory().map(String::from))
            .set_execution_role_arn(td.execution_role_arn().map(String::from))
            .set_task_role_arn(td.task_role_arn().map(String::from))
            .send()
            .await
            .unwrap();
        let arn = registered.task_definition().unwrap().task_definition_arn().unwrap().to_string();
        ecs.update_service()
            .cluster("arrakis-staging-cluster")
            .service("dixie-armitage")
            .task_definition(arn)
            .send()
            .await
            .unwrap();
    });
}

#[test]
fn migrations_go_down_to_012_after_approval_of_the_loss_resume_between_two_downs_and_go_up_again() {
    let Some(_ring) = fresh_ring() else { return };
    let scratch = Scratch::new("migrations");
    let project = impatient_project(&scratch);
    let rb = || scratch.runbook().project(&project);
    rb().run(&["run", "sprint-2", "--yes"]).expect_code(0);
    assert_eq!(applied().len(), 13);

    // Status: 13 applied, nothing pending, nothing changed (Dixie not restarted).
    let started = std::time::Instant::now();
    rb().run(&["run", "migrations"]).expect_code(0).expect_text("13 applied, 0 pending; head 015_audit_hash_chain.sql");
    eprintln!("migrations status, the whole runbook: {:?}", started.elapsed());

    // Data that a down to 012 loses: a permission row (013) and a task type (014).
    dixie("INSERT INTO autonomous_permissions (nft_id, owner_wallet) VALUES ('nft-1', '0xabc'), ('nft-2', '0xdef')");
    deploy_dixie_carrying_up_to_012(&scratch);

    // No --yes and no terminal: nothing runs, the loss is on the screen.
    let asked = rb().run(&["run", "migrations", "--var", "action=down", "--var", "to=012"]);
    asked
        .expect_code(5)
        .expect_text("down to 012: revert 3 migration(s), newest first; the data below is lost")
        .expect_text("015_audit_hash_chain.sql (015_audit_hash_chain_down.sql):")
        .expect_text("column audit_log.entry_hash: 0 value(s) lost")
        .expect_text("table autonomous_permissions: 2 row(s) lost")
        .expect_text("table reputation_task_cohorts: 0 row(s) lost")
        .expect_text("index reputation_events_task_idx (no data)");
    assert_eq!(applied().len(), 13, "nothing ran before the approval");

    // Approved, then killed after the first down (015).
    let killed = rb().env("RUNBOOK_CRASH_AT", "M1:after-down-015").run(&["resume", "--yes"]);
    assert_ne!(killed.code, Some(0), "the crash point kills the resume: {}", killed.text());
    assert_eq!(applied().len(), 12, "015 reverted with its row, one transaction: {:?}", applied());
    assert_eq!(dixie("SELECT count(*) FROM autonomous_permissions"), ["2"]);

    // Resumed: the next down is 014; Dixie (its image ends at 012) restarts and re-applies nothing.
    let resumed = rb().run(&["resume", "--yes"]);
    resumed
        .expect_code(0)
        .expect_text("down to 012: revert 2 migration(s)")
        .expect_text("reverted 013_autonomous_permissions.sql (2 of 2)");
    assert!(!resumed.text().contains("reverted 015"), "015 is not reverted twice: {}", resumed.text());
    assert_eq!(applied().last().map(String::as_str), Some("012_session_activity.sql"));
    assert_eq!(applied().len(), 10);
    assert_eq!(dixie("SELECT to_regclass('autonomous_permissions') IS NULL"), ["t"]);
    let audit = rb().run(&["audit"]);
    audit.expect_code(0).expect_text("table autonomous_permissions: 2 row(s) lost").expect_text("test-operator");

    // Up again: 013–015 in order, each with its row; Dixie restarted and healthy; M3 agrees.
    let up = rb().run(&["run", "migrations", "--var", "action=up", "--yes"]);
    up.expect_code(0)
        .expect_text("applied 013_autonomous_permissions.sql")
        .expect_text("applied 015_audit_hash_chain.sql");
    assert_eq!(applied().len(), 13);
    let checksums = dixie("SELECT count(*) FROM _migrations WHERE length(checksum) = 64");
    assert_eq!(checksums, ["13"]);

    // DATABASE_URL's password reached no output and no state.
    let (password, _) = ssm_get(DB_PASSWORD_PARAM).unwrap();
    for ran in [&asked, &resumed, &up, &audit] {
        assert!(!ran.text().contains(&password), "the database password in the output:\n{}", ran.text());
    }
    let state = super::db_dump(&scratch.state()).expect("the state DB");
    assert!(!String::from_utf8_lossy(&state).contains(&password), "the database password in the state DB");
}

#[test]
fn a_held_migration_lock_is_not_released_by_unlock_all_and_is_named_then_ended_after_approval() {
    let Some(_ring) = fresh_ring() else { return };
    let scratch = Scratch::new("migration-lock");
    let project = impatient_project(&scratch);
    let rb = || scratch.runbook().project(&project);
    rb().run(&["run", "sprint-2", "--yes"]).expect_code(0);

    let (password, _) = ssm_get(DB_PASSWORD_PARAM).unwrap();
    let ca = super::project().join(".ring/tls/ca.crt");
    let mut holder = Command::new("psql")
        .arg(format!(
            "host=localhost hostaddr=127.0.0.1 port=15432 user=dixie dbname=dixie sslmode=verify-full sslrootcert={} \
             application_name=stuck-migration",
            ca.display()
        ))
        .args(["-X", "-q", "-c", &format!("SELECT pg_advisory_lock({KEY})"), "-c", "SELECT pg_sleep(120)"])
        .env("PGPASSWORD", &password)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let held = format!(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = 0 AND objid = {KEY} AND objsubid = 1 AND granted"
    );
    let pid = (0..50)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            dixie(&held).first().cloned()
        })
        .expect("psql took Dixie's migration lock");

    // 003's "force-release" from a new session: true for nothing, the lock stays held.
    let unlock_all = dixie(&format!("SELECT pg_advisory_unlock_all(); {held}"));
    assert_eq!(unlock_all.last(), Some(&pid), "pg_advisory_unlock_all() released another session's lock");

    // A down waits (bounded), then names the holder and the step that ends it; nothing changed.
    let waited = rb().run(&[
        "run",
        "migrations",
        "--yes",
        "--var",
        "action=down",
        "--var",
        "to=014",
        "--var",
        "lock_wait_seconds=2",
    ]);
    waited
        .expect_code(1)
        .expect_text(&format!("Dixie's migration lock (key {KEY}) is held by holding: pid {pid}"))
        .expect_text("application \"stuck-migration\"")
        .expect_text("query: SELECT pg_sleep(120)")
        .expect_text(&format!("--var action=release_lock --var pid={pid}"));
    assert_eq!(applied().len(), 13, "nothing ran without the lock");

    // The release names the holder, is approved, ends that one backend, and is in the audit.
    let released = rb().run(&[
        "run",
        "migrations",
        "--yes",
        "--var",
        "action=release_lock",
        "--var",
        &format!("pid={pid}"),
        "--var",
        "reason=a psql left holding the lock by the test",
    ]);
    released.expect_code(0).expect_text(&format!("ended backend {pid}"));
    assert!(dixie(&held).is_empty(), "the lock is free");
    let ended = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        holder.try_wait().unwrap().is_some()
    });
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(ended, "the holder's psql saw its backend end");
    rb().run(&["audit"])
        .expect_code(0)
        .expect_text(&format!(
            "end backend {pid} with pg_terminate_backend; reason: a psql left holding the lock by the test"
        ))
        .expect_text("application \"stuck-migration\"")
        .expect_text("test-operator");
    assert_eq!(applied().len(), 13);
}
