//! `runbook diagnose` on the ring (002 "Troubleshooting", 003's local checks): after sprint 2 it
//! says only what sprint 3 fixes; with Redis stopped, a PLACEHOLDER param, ERROR lines in the
//! logs and a migration lock held, it names each cause with its next action and exits 1; and it
//! makes no mutating AWS call either way.

use std::time::{Duration, Instant};

use super::*;

/// The findings of `runbook diagnose --json`, by check: (verdict, value, next).
fn findings(ran: &Ran) -> BTreeMap<String, (String, String, String)> {
    let doc: serde_json::Value = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("diagnose --json is not JSON ({e}):\n{}", ran.text()));
    doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let text = |k: &str| f[k].as_str().unwrap_or_default().to_string();
            (text("check"), (text("verdict"), text("value"), text("next")))
        })
        .collect()
}

/// `runbook diagnose` with moto's recorder on: its outcome, its wall time, and the mutating
/// AWS calls it made.
fn diagnose(rb: &Runbook, args: &[&str]) -> (Ran, Duration, Vec<String>) {
    let mut ran = None;
    let mut took = Duration::ZERO;
    let actions = aws_actions_during(|| {
        let started = Instant::now();
        ran = Some(rb.run(&[&["diagnose"], args].concat()));
        took = started.elapsed();
    });
    (ran.unwrap(), took, actions.into_iter().filter(|a| is_mutating(a)).collect())
}

/// The ERROR lines of `/ecs/dixie-armitage` containing `needle`, as the ECS agent shipped them.
fn shipped_lines(needle: &str) -> usize {
    let code = "try:\n    events = client('logs').filter_log_events(logGroupName='/ecs/dixie-armitage')['events']\n\
                except client('logs').exceptions.ResourceNotFoundException:\n    events = []\n\
                print(sum(sys.argv[1] in e['message'] for e in events))\n";
    moto_py(code, &[needle]).trim().parse().unwrap()
}

#[test]
fn diagnose_names_each_broken_thing_with_its_next_action_and_changes_nothing() {
    let Some(_ring) = fresh_ring() else { return };
    let scratch = Scratch::new("diagnose");
    let project = impatient_project(&scratch);
    let rb = || scratch.runbook().project(&project);

    // Bad input is refused before anything is read.
    rb().run(&["diagnose", "--env", "no-such-env"]).expect_code(2);

    rb().run(&["run", "sprint-2", "--yes"]).expect_code(0);
    let runs = runs_in(&scratch.state());

    // As Armitage was after sprint 2: everything up but NATS, which sprint 3 fixes (warnings).
    let (healthy, took, mutating) = diagnose(&rb(), &["--json"]);
    eprintln!("diagnose after sprint 2: {took:?}");
    healthy.expect_code(0);
    assert!(mutating.is_empty(), "mutating AWS calls from diagnose: {mutating:?}");
    let seen = findings(&healthy);
    let warned: Vec<&str> = seen.iter().filter(|(_, f)| f.0 != "ok").map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        warned,
        ["dixie-health", "dixie-health.governance", "dixie-health.nats", "nats-4222"],
        "{}",
        healthy.stdout
    );
    assert!(seen.values().all(|f| f.0 != "fail"), "{}", healthy.stdout);
    assert!(seen["nats-4222"].2.contains("runbook run sprint-3"), "{:?}", seen["nats-4222"]);
    assert!(seen["rds-5432"].1.contains("admitted by"), "the ring's RDS group admits the VPC: {:?}", seen["rds-5432"]);
    assert!(seen["alb-3001"].1.contains(" exists ("), "{:?}", seen["alb-3001"]);
    assert!(seen["database"].1.contains("13 of 13 migrations"), "{:?}", seen["database"]);
    assert_eq!(seen["log-errors"].0, "ok", "{:?}", seen["log-errors"]);

    // `serve --env local` shows the same: watch's poll (degraded, NATS unreachable) and the
    // same diagnosis, without a mutating call either.
    let mut page = String::new();
    let mutating: Vec<String> = aws_actions_during(|| {
        let server = super::serve::Server::start_in(&project, &scratch.state(), &["--env", "local"]);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            page = server.get("/health", &[]).body;
            if page.contains(" checks, ") && page.contains("polled at") {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    })
    .into_iter()
    .filter(|a| is_mutating(a))
    .collect();
    assert!(mutating.is_empty(), "mutating AWS calls from serve's health: {mutating:?}");
    assert!(page.contains("<span class=\"v-degraded\">degraded</span>"), "{page}");
    assert!(page.contains("<tr><th>nats</th><td>unreachable</td></tr>"), "{page}");
    assert!(page.contains(&format!("{} checks, 0 fail, 4 warn", seen.len())), "{page}");
    for check in &warned {
        assert!(page.contains(&format!("<tr><td>{check}</td><td class=\"v-warn\">warn</td>")), "{check}: {page}");
    }
    assert!(page.contains("runbook run sprint-3"), "the NATS rule's next action: {page}");

    // Break four things: Redis stops, a param goes back to PLACEHOLDER, Dixie logs errors, and
    // a Dixie session holds Dixie's migration lock, 003's key (the NATS rule is still absent, as after sprint 2).
    let marker = format!("rehearsed allowlist failure {}", std::process::id());
    let logged = Command::new("curl")
        .args(["-sf", "-X", "POST", "http://127.0.0.1:13001/__ring/errors", "-d"])
        .arg(serde_json::json!({"count": 3, "message": marker}).to_string())
        .output()
        .unwrap();
    assert!(logged.status.success(), "the Dixie stand-in took no error order: {logged:?}");
    let shipped = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        shipped_lines(&marker) == 3
    });
    assert!(shipped, "the ECS agent did not ship 3 ERROR lines to /ecs/dixie-armitage within 10 s");
    ssm_put("/dixie/armitage/DIXIE_ADMIN_KEY", "PLACEHOLDER");
    let (password, _) = ssm_get(DB_PASSWORD_PARAM).unwrap();
    let ca = super::project().join(".ring/tls/ca.crt");
    let mut lock_holder = Command::new("psql")
        .arg(format!(
            "host=localhost hostaddr=127.0.0.1 port=15432 user=dixie dbname=dixie sslmode=verify-full sslrootcert={}",
            ca.display()
        ))
        .args(["-X", "-q", "-c", "SELECT pg_advisory_lock(2084904821)", "-c", "SELECT pg_sleep(60)"])
        .env("PGPASSWORD", &password)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let locked = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        admin("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 2084904821 AND granted") != ["0"]
    });
    let outage = Outage::of(&["redis"]);

    let (broken, took, mutating) = diagnose(&rb(), &[]);
    eprintln!("diagnose with four things broken: {took:?}");
    let (broken_json, _, mutating_json) = diagnose(&rb(), &["--json"]);
    outage.end();
    let _ = lock_holder.kill();
    let _ = lock_holder.wait();
    assert!(locked, "psql did not take the advisory lock");
    assert!(mutating.is_empty() && mutating_json.is_empty(), "mutating AWS calls: {mutating:?} {mutating_json:?}");
    broken
        .expect_code(1)
        .expect_text("fail")
        .expect_text("next: 003: Redis (ElastiCache) is down")
        .expect_text("PLACEHOLDER: DIXIE_ADMIN_KEY (under /dixie/armitage/)")
        .expect_text("the rule tcp/4222 into arrakis-staging-nats-sg from dixie-armitage-tasks is missing")
        .expect_text(&marker)
        .expect_text("nothing was changed");
    broken_json.expect_code(1);
    let seen = findings(&broken_json);
    let verdict = |check: &str| seen.get(check).map(|f| f.0.as_str()).unwrap_or("absent");
    assert_eq!(verdict("dixie-health.redis"), "fail", "{}", broken.stdout);
    assert!(seen["dixie-health.redis"].2.contains("REDIS_URL"));
    assert_eq!(verdict("dixie-health"), "fail");
    assert_eq!(verdict("ssm"), "fail");
    assert!(seen["ssm"].2.contains("runbook run sprint-2"), "{:?}", seen["ssm"]);
    assert_eq!(verdict("nats-4222"), "warn");
    assert_eq!(verdict("log-errors"), "fail");
    assert!(seen["log-errors"].1.starts_with("3 ERROR line(s) in /ecs/dixie-armitage"), "{:?}", seen["log-errors"]);
    assert!(seen["log-errors"].2.contains("push a corrected image"), "{:?}", seen["log-errors"]);
    assert_eq!(verdict("database.migration_lock"), "warn", "{:?}", seen.get("database.migration_lock"));
    assert!(seen["database.migration_lock"].2.contains("a migration is probably running"));
    assert!(seen["database.migration_lock"].1.contains("held by pid"), "{:?}", seen["database.migration_lock"]);
    // What is not broken says so.
    for check in ["service", "tasks", "rds-5432", "alb-3001", "finn-health", "finn-service", "ssm.nats_url"] {
        assert_eq!(verdict(check), "ok", "{check}: {:?}", seen.get(check));
    }
    // Read-only: no run was recorded.
    assert_eq!(runs_in(&scratch.state()), runs, "diagnose recorded a run");
}
