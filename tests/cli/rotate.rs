//! `runbooks/rotate-jwt-key.toml` on the ring (issue 20): after sprint 2, the first rotation
//! (from 001's HS256 to an ES256 key) killed in `create` right after the key is written, during
//! the T4.4 wait and before T4.8, each resumed, with exactly one new key; a token of the old kid
//! accepted until T4.8 and refused after it; a re-run that changes and waits nothing; then a
//! dual-kid rotation (ES256 to ES256) in one go, timed, that deletes the old key, whose new kid
//! Finn accepts; another killed at ten points (after each write step's apply, after each key set
//! write, after a forced redeploy, before and during the waits, before and after the old key's
//! deletion); five emergency revocations, timed. No secret in the state DB or the output.

use std::time::Instant;

use super::*;

const KEYSET: &str = "/dixie/armitage/DIXIE_JWT_KEYSET";
const KEYS: &str = "/dixie/armitage/jwt-keys/";
const DIXIE: &str = "http://127.0.0.1:13001";

/// The kids that have a key parameter under `jwt-keys/`.
fn key_kids() -> Vec<String> {
    block_on(async {
        let ssm = aws_sdk_ssm::Client::new(&aws().await);
        let out = ssm.get_parameters_by_path().path(KEYS.trim_end_matches('/')).send().await.unwrap();
        out.parameters().iter().filter_map(|p| p.name()?.strip_prefix(KEYS).map(String::from)).collect()
    })
}

fn keyset() -> Option<String> {
    ssm_get(KEYSET).map(|(value, _)| value)
}

/// `curl` against the Dixie stand-in: (HTTP status, body).
fn dixie(args: &[&str]) -> (u16, serde_json::Value) {
    let out = Command::new("curl").args(["-s", "-m", "5", "-w", "\n%{http_code}"]).args(args).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap_or(0), serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

/// A token from the ring's test-token route, of `kid` (the active one when `None`).
fn token(kid: Option<&str>) -> String {
    let admin = ssm_get("/dixie/armitage/DIXIE_ADMIN_KEY").unwrap().0;
    let body = match kid {
        Some(kid) => serde_json::json!({"kid": kid}),
        None => serde_json::json!({}),
    };
    let (code, answer) = dixie(&[
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {admin}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        &body.to_string(),
        &format!("{DIXIE}/api/auth/token"),
    ]);
    assert_eq!(code, 200, "the test-token route: {answer}");
    answer["token"].as_str().unwrap().to_string()
}

fn verify(token: &str) -> (u16, serde_json::Value) {
    dixie(&["-H", &format!("Authorization: Bearer {token}"), &format!("{DIXIE}/api/auth/verify")])
}

/// Finn's verdict on `token`, against its cached copy of Dixie's JWKS.
fn finn_verify(token: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-H", "Content-Type: application/json", "-d"])
        .arg(serde_json::json!({"token": token}).to_string())
        .arg("http://127.0.0.1:13000/debug/verify")
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn outputs_of(status: &serde_json::Value, step: &str) -> serde_json::Value {
    status["steps"].as_array().unwrap().iter().find(|s| s["step"] == step).unwrap()["outputs"].clone()
}

#[test]
fn a_rotation_survives_kills_keeps_old_tokens_until_t4_8_and_a_rerun_changes_and_waits_nothing() {
    let Some(_ring) = fresh_ring() else { return };
    let scratch = Scratch::new("rotate");
    let project = impatient_project(&scratch);
    let rb = || scratch.runbook().project(&project);
    rb().run(&["run", "sprint-2", "--yes"]).expect_code(0);
    assert_eq!(keyset(), None, "sprint 2 leaves no key set: HS256");

    // The dry run changes nothing.
    let actions = aws_actions_during(|| {
        rb().run(&["plan", "rotate-jwt-key"])
            .expect_code(0)
            .expect_text("make a new P-256 key and write it to /dixie/armitage/jwt-keys/<its kid>");
    });
    assert!(actions.iter().all(|a| !is_mutating(a)), "plan changed something: {actions:?}");

    // Killed right after the new key is written: the resume reuses it.
    let killed = rb().env("RUNBOOK_CRASH_AT", "T4.1:key-written").run(&["run", "rotate-jwt-key", "--yes"]);
    assert_eq!(killed.code, None, "killed by SIGKILL:\n{}", killed.text());
    let kids = key_kids();
    assert_eq!(kids.len(), 1, "one key written: {kids:?}");
    let new = kids[0].clone();
    assert_eq!(keyset(), None);

    // Killed right after T4.4 recorded its deadline: status says what it waits for.
    let killed = rb().env("RUNBOOK_CRASH_AT", "T4.4:recorded").run(&["resume", "--yes"]);
    assert_eq!(killed.code, None, "killed by SIGKILL:\n{}", killed.text());
    assert_eq!(keyset().unwrap(), format!(r#"{{"active":"hs256","published":["hs256","{new}"]}}"#));
    rb().run(&["status"]).expect_text("then T4.5");
    let jwks = dixie(&[&format!("{DIXIE}/api/auth/.well-known/jwks.json")]).1;
    assert_eq!(jwks["keys"][0]["kid"], new.as_str(), "{jwks}");

    // Killed before T4.8's intent: a token of the old kid (HS256) still verifies.
    let killed = rb().env("RUNBOOK_CRASH_AT", "T4.8:intent").run(&["resume", "--yes"]);
    assert_eq!(killed.code, None, "killed by SIGKILL:\n{}", killed.text());
    assert_eq!(keyset().unwrap(), format!(r#"{{"active":"{new}","published":["hs256","{new}"]}}"#));
    let old_token = token(Some("hs256"));
    assert_eq!(verify(&old_token).0, 200, "the old kid's token verifies until T4.8");
    let new_token = token(None);
    let (code, seen) = verify(&new_token);
    assert_eq!((code, seen["kid"].as_str()), (200, Some(new.as_str())), "{seen}");

    rb().run(&["resume", "--yes"]).expect_code(0).expect_text("T4.8");
    let status = rb().status();
    all_done(&status);
    assert_eq!(key_kids(), std::slice::from_ref(&new), "exactly one new key across three kills");
    assert_eq!(keyset().unwrap(), format!(r#"{{"active":"{new}","published":["{new}"]}}"#));
    let (code, refused) = verify(&old_token);
    assert_eq!(code, 401, "{refused}");
    assert!(refused["error"].as_str().unwrap().starts_with("alg 'HS256' is not accepted"), "{refused}");
    assert_eq!(verify(&new_token).0, 200, "the new kid's token still verifies");
    assert_eq!(outputs_of(&status, "T4.1")["new_kid"], new.as_str());
    assert_eq!(outputs_of(&status, "T4.1")["old_kid"], "hs256");

    // A re-run changes nothing and waits nothing.
    let started = Instant::now();
    let actions = aws_actions_during(|| {
        rb().run(&["run", "rotate-jwt-key", "--yes"]).expect_code(0);
    });
    let rerun = started.elapsed();
    assert!(actions.iter().all(|a| !is_mutating(a)), "the re-run changed something: {actions:?}");
    let status = rb().status();
    for step in status["steps"].as_array().unwrap() {
        assert_eq!(step["state"], "satisfied", "{step}");
    }
    eprintln!("a re-run after success took {rerun:?}");
    assert!(rerun.as_secs() < 10, "the re-run took {rerun:?}: it waited");
    assert_eq!(key_kids(), std::slice::from_ref(&new));

    // The smoke gate's auth checks sign as Dixie signs now, with the new ES256 kid: its HS256
    // tokens would be refused, and the gate would go red on a healthy Dixie.
    rb().run(&["run", "smoke"]).expect_code(0);
    all_done(&rb().status());
    rb().run(&["logs", "smoke"]).expect_text("auth");

    // The dual-kid rotation, ES256 to ES256, in one go; the old key is deleted.
    let started = Instant::now();
    rb().run(&["run", "rotate-jwt-key", "--yes", "--var", "rotate_after_days=0"]).expect_code(0);
    let took = started.elapsed();
    eprintln!("a dual-kid rotation on the ring took {took:?} (waits 13 s + 32 s)");
    let status = rb().status();
    all_done(&status);
    let second = outputs_of(&status, "T4.1")["new_kid"].as_str().unwrap().to_string();
    assert_eq!(outputs_of(&status, "T4.1")["old_kid"], new.as_str());
    assert_eq!(key_kids(), std::slice::from_ref(&second), "the old key is deleted, one new key");
    assert_eq!(keyset().unwrap(), format!(r#"{{"active":"{second}","published":["{second}"]}}"#));
    assert_eq!(outputs_of(&status, "T4.8")["deleted"], format!("{KEYS}{new}"));
    rb().run(&["logs", "T4.8"])
        .expect_text(&format!("a token of {new} is refused: HTTP 401 kid {new} is not in the key set"));
    // Finn, a client of the JWKS, accepts the new kid's tokens.
    let finn = finn_verify(&token(None));
    assert_eq!((finn["valid"].as_bool(), finn["kid"].as_str()), (Some(true), Some(second.as_str())), "{finn}");

    // Another, killed at ten points, each resumed into the next: after the create's and each key
    // set write's apply, after the writes themselves, after a forced redeploy, before and during
    // the waits, before and after the old key's deletion.
    let killed_at = [
        "T4.1:applied",
        "T4.2:keyset-written",
        "T4.2:applied",
        "T4.4:intent",
        "T4.5:after-force",
        "T4.5:applied",
        "T4.7:recorded",
        "T4.8:keyset-written",
        "T4.8:before-delete",
        "T4.8:applied",
    ];
    for (n, point) in killed_at.iter().enumerate() {
        let args: &[&str] = if n == 0 {
            &["run", "rotate-jwt-key", "--yes", "--var", "rotate_after_days=0"]
        } else {
            &["resume", "--yes"]
        };
        let killed = rb().env("RUNBOOK_CRASH_AT", point).run(args);
        assert_eq!(killed.code, None, "killed at {point} by SIGKILL:\n{}", killed.text());
        let kids = key_kids();
        let keys = if *point == "T4.8:applied" { 1 } else { 2 };
        assert!(kids.len() == keys && (keys == 1 || kids.contains(&second)), "at {point}: {kids:?}");
    }
    rb().run(&["resume", "--yes"]).expect_code(0);
    let status = rb().status();
    all_done(&status);
    let third = outputs_of(&status, "T4.1")["new_kid"].as_str().unwrap().to_string();
    assert_eq!(outputs_of(&status, "T4.1")["old_kid"], second.as_str());
    assert_eq!(key_kids(), std::slice::from_ref(&third), "one new key across ten kills, the old one deleted");
    assert_eq!(keyset().unwrap(), format!(r#"{{"active":"{third}","published":["{third}"]}}"#));
    // (The last attempt of T4.8 found the key deleted: the refusal was logged by one killed before.)

    // Emergency revocations of the active kid, five in a row, each timed from its start to the
    // verified refusal of the revoked kid's tokens (the run's end).
    let mut revoked = third.clone();
    let mut took = Vec::new();
    for _ in 0..5 {
        let victim = token(None);
        assert_eq!(finn_verify(&victim)["valid"], true, "Finn accepts the kid about to be revoked");
        let started = Instant::now();
        rb().run(&["run", "revoke-jwt-key", "--yes", "--var", &format!("kid={revoked}")]).expect_code(0);
        took.push(started.elapsed());
        let status = rb().status();
        all_done(&status);
        let taking_over = outputs_of(&status, "R1")["new_kid"].as_str().unwrap().to_string();
        assert_eq!(key_kids(), std::slice::from_ref(&taking_over), "the revoked key is deleted");
        assert_eq!(keyset().unwrap(), format!(r#"{{"active":"{taking_over}","published":["{taking_over}"]}}"#));
        let (code, refused) = verify(&victim);
        assert_eq!(code, 401, "{refused}");
        assert!(refused["error"].as_str().unwrap().starts_with(&format!("kid {revoked} is not in the key set")));
        assert_eq!(finn_verify(&victim)["valid"], false, "Finn, told, refuses it too");
        assert_eq!(finn_verify(&token(None))["valid"], true);
        revoked = taking_over;
    }
    took.sort();
    eprintln!("revocations on the ring took {took:?}: median {:?}", took[2]);
    // A re-run of the last revocation changes nothing.
    let actions = aws_actions_during(|| {
        rb().run(&[
            "run",
            "revoke-jwt-key",
            "--yes",
            "--var",
            &format!("kid={}", outputs_of(&rb().status(), "R1")["old_kid"].as_str().unwrap()),
        ])
        .expect_code(0);
    });
    assert!(actions.iter().all(|a| !is_mutating(a)), "the re-run changed something: {actions:?}");
    let third = revoked;

    // No private key, admin key or token in the state DB or the output.
    let private = ssm_get(&format!("{KEYS}{third}")).unwrap().0;
    assert!(private.contains("BEGIN PRIVATE KEY"));
    let body: String = private.lines().filter(|l| !l.starts_with("-----")).collect();
    let admin = ssm_get("/dixie/armitage/DIXIE_ADMIN_KEY").unwrap().0;
    let wal = scratch.state().with_extension("db-wal");
    let dump =
        String::from_utf8_lossy(&[db_dump(&scratch.state()).unwrap(), db_dump(&wal).unwrap_or_default()].concat())
            .into_owned();
    let mut shown = String::new();
    for step in ["R1", "R2"] {
        shown.push_str(&rb().run(&["logs", step]).text());
    }
    // (The rotations' logs are in the state DB's dump: every step log of every run is an event.)
    for secret in [&body[..40], &body[body.len() - 40..], admin.as_str(), "eyJhbGci", "BEGIN PRIVATE"] {
        assert!(!dump.contains(secret) && !shown.contains(secret), "a secret reached the state DB or the logs");
    }
}

/// A process killed when the test ends, passed or not: a rotation left waiting would wake up in
/// a later test's ring.
/// An emergency during a rotation that waits for the JWKS caches (T4.4, a long wait here): the
/// revocation is refused with exit 3 naming the rotation's run and the one command that takes
/// its lock; that command is the operator's explicit word, recorded with the rotation's run; the
/// rotation stops within its next lock check (5 s) without another change; the revocation then
/// publishes only its new kid, and the pending kid of the rotation leaves the key set with it.
#[test]
fn a_revocation_takes_a_waiting_rotations_lock_only_by_the_operators_word() {
    let Some(_ring) = fresh_ring() else { return };
    let scratch = Scratch::new("revoke-takeover");
    let project = impatient_project(&scratch);
    edit_file(
        &project.join("runbooks/environments/local.toml"),
        &[("jwks_cache_wait_seconds = \"13\"", "jwks_cache_wait_seconds = \"900\"")],
    );
    let rb = || scratch.runbook().project(&project);
    rb().run(&["run", "sprint-2", "--yes"]).expect_code(0);
    let mut rotation = Killed(
        rb().command(&["run", "rotate-jwt-key", "--yes", "--var", "rotate_after_days=0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The rotation publishes its new kid beside the old one and waits in T4.4.
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    let (rotation_run, pending) = loop {
        assert!(Instant::now() < deadline, "the rotation never reached its wait: {}", rb().status());
        assert!(rotation.0.try_wait().unwrap().is_none(), "the rotation ended before its wait");
        let status = rb().status();
        let waiting = |s: &&serde_json::Value| s["step"] == "T4.4" && s["wait"]["left_s"].as_i64() > Some(60);
        if status["steps"].as_array().unwrap().iter().any(|s| waiting(&s)) {
            let new_kid = outputs_of(&status, "T4.1")["new_kid"].as_str().unwrap().to_string();
            break (status["run"]["id"].as_i64().unwrap(), new_kid);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let published = keyset().unwrap();
    assert!(published.contains("\"active\":\"hs256\"") && published.contains(&pending), "{published}");
    // A token of the compromised secret, still valid while the rotation waits.
    let victim = token(None);
    assert_eq!(verify(&victim).0, 200, "the victim token verifies before the revocation");

    // Refused while the rotation holds the lock: nothing changes, and the way out names its run.
    let refused = rb().run(&["run", "revoke-jwt-key", "--yes", "--var", "kid=hs256"]);
    refused.expect_code(3);
    refused.expect_text(&format!("runbook unlock --force --run {rotation_run} --yes"));
    assert_eq!(keyset().unwrap(), published, "a refused revocation changed the key set");

    // The operator's word: the rotation's lock, broken and recorded with its run.
    rb().run(&["unlock", "--force", "--run", &rotation_run.to_string(), "--yes"]).expect_code(0);
    let broken_at = Instant::now();
    let stopped = loop {
        if let Some(status) = rotation.0.try_wait().unwrap() {
            break status;
        }
        assert!(broken_at.elapsed() < std::time::Duration::from_secs(15), "the rotation kept waiting without its lock");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(!stopped.success(), "the rotation that lost its lock ended {stopped:?}");
    assert_eq!(keyset().unwrap(), published, "the stopped rotation changed the key set");
    let audit = rb().run(&["audit", &rotation_run.to_string()]);
    audit.expect_code(0).expect_text("test-operator");
    let conn = rusqlite::Connection::open(scratch.state()).unwrap();
    let broken: i64 = conn
        .query_row("SELECT count(*) FROM events WHERE kind = 'lock_broken' AND run_id = ?1", [rotation_run], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(broken, 1, "the lock's break is recorded once, with the rotation's run");

    // The revocation runs now: one new kid, the compromised secret and the pending kid gone.
    rb().run(&["run", "revoke-jwt-key", "--yes", "--var", "kid=hs256"]).expect_code(0);
    let status = rb().status();
    all_done(&status);
    let taking_over = outputs_of(&status, "R1")["new_kid"].as_str().unwrap().to_string();
    assert_eq!(keyset().unwrap(), format!(r#"{{"active":"{taking_over}","published":["{taking_over}"]}}"#));
    let (code, refused) = verify(&victim);
    assert_eq!(code, 401, "a token of the revoked secret: {refused}");
    // The interrupted rotation's pending key is no longer trusted; its private key stays in SSM
    // until the next rotation's T4.8 (the operator guide says so).
    let mut kids = key_kids();
    kids.sort();
    let mut expected = vec![pending, taking_over];
    expected.sort();
    assert_eq!(kids, expected, "the keys in SSM after the revocation");
    assert_eq!(verify(&token(None)).0, 200, "a token of the new kid verifies");
}
