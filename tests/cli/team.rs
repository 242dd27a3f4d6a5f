//! A team's state in PostgreSQL, on the ring: two operators on two hosts (`RUNBOOK_HOST`) share
//! one history and one run lock: Alice's run is killed with SIGKILL mid-deploy, Bob sees it live
//! and is refused until its lease is stale, then takes it over and finishes it, and the audit
//! says who did what; 100 `run`s racing in rounds of ten have exactly one winner a round, the
//! others exiting 3 naming it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use super::*;

/// A schema of its own in the ring's `runbook_state` database, as a team's state URL. The
/// password goes in `PGPASSWORD`, as an operator's would, never in the URL.
pub(super) struct PgState {
    base: String,
    url: String,
    schema: String,
    password: String,
}

impl PgState {
    pub(super) fn fresh(name: &str) -> PgState {
        let password = std::fs::read_to_string(project().join(".ring/secrets/pg-admin-password"))
            .expect("the ring's admin password (bash ring/up.sh)")
            .trim()
            .to_string();
        let schema = format!("cli_{name}_{}", std::process::id());
        let base = format!(
            "postgres://arrakis_admin@127.0.0.1:15432/runbook_state?sslmode=verify-full&sslrootcert={}",
            project().join(".ring/tls/ca.crt").display()
        );
        let url = format!("{base}&options=-csearch_path%3D{schema}");
        let pg = PgState { base, url, schema, password };
        pg.psql(&format!("DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0};", pg.schema));
        pg
    }

    fn psql(&self, sql: &str) -> String {
        // The ring's own client when PATH has none (ring/lib.sh's PGBIN).
        let psql = ["psql", "/usr/lib/postgresql/15/bin/psql"]
            .into_iter()
            .find(|p| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()))
            .expect("psql (the ring installs it)");
        let out = Command::new(psql)
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", &self.base, "-c", sql])
            .env("PGPASSWORD", &self.password)
            .output()
            .unwrap();
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Every row of every table of the state, as text (to look for secrets at rest).
    pub(super) fn rows_as_text(&self) -> String {
        self.psql(&format!(
            "SELECT string_agg(x.t, E'\\n') FROM (SELECT r::text AS t FROM {0}.runs r UNION ALL SELECT s::text FROM {0}.steps s
             UNION ALL SELECT a::text FROM {0}.attempts a UNION ALL SELECT o::text FROM {0}.outputs o
             UNION ALL SELECT e::text FROM {0}.events e UNION ALL SELECT l::text FROM {0}.run_lock l) x",
            self.schema
        ))
    }

    /// `runbook` as `operator` on `host`, its state here, its work folder in `scratch`.
    pub(super) fn runbook(&self, scratch: &Scratch, host: &str, operator: &str) -> Runbook {
        Runbook {
            state: PathBuf::from(&self.url),
            project: project(),
            env: vec![
                ("PGPASSWORD".into(), self.password.clone()),
                ("RUNBOOK_HOST".into(), host.into()),
                ("RUNBOOK_OPERATOR".into(), operator.into()),
            ],
            cwd: Some(scratch.dir.clone()),
        }
    }
}

impl Drop for PgState {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.psql(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        }
    }
}

impl Runbook {
    /// The same invocation, started and left running.
    fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the runbook binary")
    }
}

fn finished(child: std::process::Child) -> Ran {
    Ran::from(child.wait_with_output().unwrap())
}

fn history(rb: &Runbook) -> Vec<serde_json::Value> {
    let ran = rb.run(&["history", "--json"]);
    ran.expect_code(0);
    let view: serde_json::Value = serde_json::from_str(&ran.stdout).expect("history --json is JSON");
    view["runs"].as_array().unwrap().clone()
}

#[test]
fn two_operators_on_two_hosts_share_one_history_and_one_lock_in_postgresql() {
    let Some(_ring) = fresh_ring() else { return };
    let scratch = Scratch::new("team");
    let pg = PgState::fresh("team");
    let alice = || pg.runbook(&scratch, "laptop-alice", "alice");
    let bob = || pg.runbook(&scratch, "bastion-bob", "bob");

    // Alice deploys from her laptop; it dies (kill -9) once terraform has applied.
    let mut deploy = alice().spawn(&["run", "sprint-2", "--yes"]);
    let waited = Instant::now();
    loop {
        assert!(
            deploy.try_wait().unwrap().is_none(),
            "the run ended before T2.4 was done:\n{}",
            finished(deploy).text()
        );
        let done = bob().run(&["status", "--json"]).code == Some(0)
            && step_states(&bob().status()).get("T2.4").is_some_and(|s| s == "applied");
        if done {
            break;
        }
        assert!(waited.elapsed() < Duration::from_secs(300), "T2.4 was not applied within 300 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    deploy.kill().unwrap();
    let killed_at = Instant::now();
    assert_eq!(finished(deploy).code, None, "killed by SIGKILL");

    // Bob, on another host, sees her run live, held from her laptop, in status and history.
    let status = bob().status();
    assert_eq!(status["run"]["status"], "running", "{status}");
    assert_eq!((&status["run"]["operator"], &status["run"]["host"]), (&"alice".into(), &"laptop-alice".into()));
    assert_eq!(status["lock"]["host"], "laptop-alice", "{status}");
    assert_eq!(status["lock"]["this_host"], false);
    bob().run(&["status"]).expect_code(0).expect_text("lock: held by pid").expect_text("on laptop-alice");
    let runs = history(&bob());
    assert_eq!(runs.len(), 1);
    assert_eq!((&runs[0]["status"], &runs[0]["operator"]), (&"running".into(), &"alice".into()));

    // He may not take it while its heartbeat is fresh: exit 3, naming the holder.
    bob().run(&["resume", "--yes"]).expect_code(3).expect_text("laptop-alice");
    // Once no heartbeat came for the stale period (30 s), status calls it dead.
    loop {
        if bob().status()["run"]["status"] == "died" {
            break;
        }
        assert!(killed_at.elapsed() < Duration::from_secs(90), "the lease of a killed holder never went stale");
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        killed_at.elapsed() >= Duration::from_secs(20),
        "a lease held from another host was called dead {:?} after its holder died, before the stale period",
        killed_at.elapsed()
    );

    // Bob takes it over and finishes it; nothing Alice finished is done again.
    let before = bob().status();
    let resumed = bob().run(&["resume", "--yes"]);
    resumed.expect_code(0);
    let after = bob().status();
    all_done(&after);
    for (row, was) in after["steps"].as_array().unwrap().iter().zip(before["steps"].as_array().unwrap()) {
        if was["state"] == "applied" || was["state"] == "satisfied" {
            assert_eq!(row["attempts"], was["attempts"], "{} ran again: {row}", row["step"]);
        }
    }
    let runs = history(&alice());
    assert_eq!(runs.len(), 1, "one history for both");
    assert_eq!((&runs[0]["status"], &runs[0]["host"]), (&"done".into(), &"laptop-alice".into()));

    // The audit says who did what, from where.
    let audit = bob().run(&["audit", "--json"]);
    audit.expect_code(0);
    let audit: serde_json::Value = serde_json::from_str(&audit.stdout).unwrap();
    let decisions: Vec<(String, String, String)> = audit["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let field = |k: &str| d[k].as_str().unwrap_or_default().to_string();
            (field("kind"), field("operator"), field("host"))
        })
        .collect();
    let has =
        |kind: &str, who: &str, host: &str| decisions.iter().any(|d| d == &(kind.into(), who.into(), host.into()));
    assert!(has("approval_answered", "alice", "laptop-alice"), "{decisions:?}");
    assert!(has("lock_taken_over", "bob", "bastion-bob"), "{decisions:?}");
    let takeover = audit["decisions"].as_array().unwrap().iter().find(|d| d["kind"] == "lock_taken_over").unwrap();
    assert!(takeover["decision"].as_str().unwrap().contains("laptop-alice"), "{takeover}");

    // No secret at rest in the team's database either.
    let rows = pg.rows_as_text();
    assert!(rows.contains("T2.4") && rows.contains("lock_taken_over"), "the dump holds the run");
    for param in [DB_PASSWORD_PARAM, ADMIN_PASSWORD_PARAM] {
        let (secret, _) = ssm_get(param).unwrap_or_else(|| panic!("{param} is in SSM"));
        assert!(!rows.contains(&secret), "the value of {param} is in the state database");
    }
    assert!(!rows.contains(&pg.password), "the state database's own password is in it");
}

#[test]
fn a_wrong_state_database_password_is_refused_before_anything_and_never_shown() {
    let Some(_ring) = fresh_ring() else { return };
    let scratch = Scratch::new("team-password");
    let pg = PgState::fresh("password");
    let wrong = "not-the-password-7f3a";
    let ran = pg.runbook(&scratch, "laptop", "op").env("PGPASSWORD", wrong).run(&["run", "sprint-2", "--yes"]);
    ran.expect_code(2).expect_text("refused the login").expect_text("PGPASSWORD or ~/.pgpass");
    assert!(!ran.text().contains(wrong) && !ran.text().contains(&pg.password), "a password was shown:\n{}", ran.text());
    let tables = format!("SELECT count(*) FROM information_schema.tables WHERE table_schema = '{}'", pg.schema);
    assert_eq!(pg.psql(&tables), "0", "a schema was created with a login that failed");
    assert!(!scratch.dir.join("state").exists(), "a work folder was made");
}

#[test]
fn a_hundred_racing_runs_on_postgresql_have_exactly_one_winner_a_round() {
    let Some(_ring) = fresh_ring() else { return };
    let scratch = Scratch::new("race");
    let pg = PgState::fresh("race");
    // One step that holds the lock for 5 s: T2.8's checks on a ring where nothing is deployed
    // yet wait 5 s for Dixie, then fail.
    let root = scratch.project_copy();
    std::fs::write(
        root.join("runbooks/hold.toml"),
        r#"name = "hold"
description = "Holds the run lock for five seconds"

[[steps]]
id = "H1"
title = "Validate a ring where nothing is deployed"
kind = "validate"
[steps.params]
zone = "arrakis.community"
record = "dixie-armitage.arrakis.community"
alb_dns_name = "nowhere.elb.amazonaws.com"
dixie_health_url = "${env.dixie_health_url}"
finn_health_url = "${env.finn_health_url}"
database_url_param = "/dixie/${env.environment}/DATABASE_URL"
pg_ca_file = "${env.pg_ca_file}"
migrations = 13
alarm_prefix = "dixie-armitage"
wait_seconds = 5
"#,
    )
    .unwrap();
    let mut winners = Vec::new();
    for round in 0..10 {
        let racers: Vec<(String, std::process::Child)> = (0..10)
            .map(|i| {
                let host = format!("racer-{}", (round + i) % 3);
                let child = pg.runbook(&scratch, &host, &format!("op{i}")).project(&root).spawn(&["run", "hold"]);
                (host, child)
            })
            .collect();
        let pids: Vec<(String, u32)> = racers.iter().map(|(h, c)| (h.clone(), c.id())).collect();
        let ran: Vec<Ran> = racers.into_iter().map(|(_, c)| finished(c)).collect();
        let won: Vec<usize> = (0..ran.len()).filter(|i| ran[*i].code != Some(3)).collect();
        let all: String = ran.iter().map(|r| format!("{:?}: {}\n", r.code, r.text())).collect();
        assert_eq!(won.len(), 1, "round {round}: not exactly one winner:\n{all}");
        let (host, pid) = &pids[won[0]];
        assert_eq!(ran[won[0]].code, Some(1), "round {round}: the winner's run (its step fails after 5 s):\n{all}");
        for lost in ran.iter().filter(|r| r.code == Some(3)) {
            let named = format!("on {host} pid {pid}");
            assert!(lost.text().contains(&named), "round {round}: a loser does not name the winner ({named}):\n{all}");
        }
        winners.push(*pid);
    }
    // Ten runs in one history, each by its winner; no lease is left behind.
    let runs = history(&pg.runbook(&scratch, "racer-0", "op0").env("RUNBOOK_PROJECT", root.to_str().unwrap()));
    assert_eq!(runs.len(), 10, "{runs:?}");
    assert!(runs.iter().all(|r| r["status"] == "failed"), "{runs:?}");
    assert_eq!(pg.psql(&format!("SELECT count(*) FROM {}.run_lock", pg.schema)), "0");
}
