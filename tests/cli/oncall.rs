//! On call, on the ring: a webhook receiver on loopback gets exactly the posts of a run that
//! fails, stops awaiting approval or is done, a dead receiver fails nothing; `history` and
//! `audit` after a skip, a retry, a lock takeover and a forced unlock; `watch --once` before
//! sprint 2 (Dixie not deployed: unhealthy), after it (degraded: NATS has no rule yet), with
//! Redis stopped, after sprint 3 (healthy) and with Finn stopped (circuit open: unhealthy); and,
//! without the ring, a webhook written in the environment file is bad
//! input, never quoted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;

use super::*;

/// A webhook on 127.0.0.1 that answers 200 and keeps the `text` of every post.
struct Receiver {
    url: String,
    texts: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/services/T0/B0/secret-token", listener.local_addr().unwrap());
        let texts: Arc<Mutex<Vec<String>>> = Arc::default();
        let kept = texts.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let mut reader = BufReader::new(conn);
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_ok() {
                    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    kept.lock().unwrap().push(json["text"].as_str().unwrap_or("<not Slack JSON>").to_string());
                }
                let _ =
                    reader.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
            }
        });
        Receiver { url, texts }
    }

    fn texts(&self) -> Vec<String> {
        self.texts.lock().unwrap().clone()
    }
}

/// A loopback URL where nothing listens.
fn dead_webhook() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}/services/T0/B0/secret-token", listener.local_addr().unwrap())
}

/// `project`'s local environment names a webhook read from $RUNBOOK_TEST_WEBHOOK.
fn with_webhook(project: &Path) {
    let path = project.join("runbooks/environments/local.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[notify]\nwebhook = { env = \"RUNBOOK_TEST_WEBHOOK\" }\n");
    std::fs::write(path, text).unwrap();
}

fn json(ran: &Ran) -> serde_json::Value {
    serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", ran.text()))
}

#[test]
fn a_webhook_from_the_environment_or_ssm_hears_each_failure_and_the_end_and_history_and_audit_show_every_decision() {
    let Some(_ring) = fresh_ring() else { return };
    let started = std::time::Instant::now();
    let scratch = Scratch::new("oncall-audit");
    let project = scratch.foundation_project();
    with_webhook(&project);
    let hook = Receiver::start();
    let rb = || scratch.runbook().project(&project).env("RUNBOOK_TEST_WEBHOOK", &hook.url);

    // Fails on a bad admin password after it started; the retry fails again.
    let good = ssm_get(ADMIN_PASSWORD_PARAM).unwrap().0;
    ssm_put(ADMIN_PASSWORD_PARAM, "nope");
    rb().run(&["run", "sprint-2"]).expect_code(1);
    rb().run(&["retry", "T2.3"]).expect_code(1);
    ssm_put(ADMIN_PASSWORD_PARAM, &good);
    // A dead holder's lease: the skip takes it over; then one broken by hand.
    insert_lease(&scratch.state(), 1, 999_999_999, 0);
    rb().run(&["skip", "T2.3", "--reason", "database made by hand during the incident"]).expect_code(0);
    insert_lease(&scratch.state(), 1, 999_999_998, 0);
    rb().run(&["unlock", "--force"]).expect_code(0);
    let resumed = rb().run(&["resume"]);
    resumed.expect_code(0);
    assert!(!resumed.text().contains("notification failed"), "{}", resumed.text());

    let texts = hook.texts();
    assert_eq!(texts.len(), 3, "{texts:#?}");
    for text in &texts[..2] {
        assert!(
            text.starts_with("runbook: run 1 of sprint-2 on local FAILED at T2.3: ")
                && text.contains("(test-operator@"),
            "{text}"
        );
        assert!(!text.contains("nope"), "a secret in a post: {text}");
    }
    assert!(texts[2].starts_with("runbook: run 1 of sprint-2 on local is done in "), "{}", texts[2]);

    // A second run, with the webhook dead: done all the same, said once.
    let dead =
        scratch.runbook().project(&project).env("RUNBOOK_TEST_WEBHOOK", &dead_webhook()).run(&["run", "sprint-2"]);
    dead.expect_code(0);
    assert_eq!(dead.stderr.matches("notification failed: POST to the webhook").count(), 1, "{}", dead.text());
    assert!(!dead.text().contains("secret-token"), "{}", dead.text());
    assert_eq!(hook.texts().len(), 3, "the live receiver heard nothing more");

    // history: newest first, one line a run.
    let history = rb().run(&["history"]);
    history.expect_code(0);
    let lines: Vec<&str> = history.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", history.stdout);
    assert!(lines[0].starts_with("  RUN  RUNBOOK"), "{}", lines[0]);
    for (line, run) in lines[1..].iter().zip(["2", "1"]) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((fields[0], fields[1], fields[2], fields[6]), (run, "sprint-2", "local", "done"), "{line}");
        assert!(fields[3].starts_with("test-operator@"), "{line}");
    }
    let limited = json(&rb().run(&["history", "--json", "--limit", "1", "--runbook", "sprint-2", "--env", "local"]));
    assert_eq!(limited["runs"].as_array().unwrap().len(), 1);
    assert_eq!(limited["runs"][0]["run"], 2);
    rb().run(&["history", "--env", "armitage"]).expect_code(0).expect_text("no runs on armitage in this state DB");

    // audit of run 1: the retry, the takeover, the skip with its reason, the forced unlock.
    let audit = json(&rb().run(&["audit", "1", "--json"]));
    let decisions: Vec<(String, String)> = audit["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["kind"].as_str().unwrap().to_string(), d["decision"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        decisions,
        [
            ("step_reset".to_string(), "reset T2.3 to run again (runbook retry T2.3)".to_string()),
            ("lock_taken_over".into(), "took over the run lock of dead process 999999999 on ".to_string() + &host()),
            ("step_skipped".into(), "skipped T2.3: database made by hand during the incident".into()),
            ("lock_broken".into(), "broke the run lock held by process 999999998 on ".to_string() + &host()),
        ]
    );
    for d in audit["decisions"].as_array().unwrap() {
        assert_eq!((d["operator"].as_str(), d["host"].as_str()), (Some("test-operator"), Some(host().as_str())), "{d}");
        assert!(d["time"].as_str().unwrap().ends_with('Z'), "{d}");
    }
    // Run 2 asked nothing of anyone; the text says so.
    rb().run(&["audit"]).expect_code(0).expect_text("audit of run 2").expect_text("no operator decisions recorded");
    rb().run(&["audit", "7"]).expect_code(2).expect_text("no run found");
    let missing = scratch.dir.join("none.db");
    scratch
        .runbook()
        .env("RUNBOOK_STATE", missing.to_str().unwrap())
        .run(&["history"])
        .expect_code(2)
        .expect_text("no state DB at");
    assert!(!missing.exists());

    // The webhook's URL from SSM (as on Armitage): a missing parameter is said, then it is read.
    edit_file(
        &project.join("runbooks/environments/local.toml"),
        &[("{ env = \"RUNBOOK_TEST_WEBHOOK\" }", "{ ssm = \"/runbook/ring/SLACK_WEBHOOK\" }")],
    );
    let unset = rb().run(&["run", "sprint-2"]);
    unset.expect_code(0).expect_text("notification failed: SSM parameter /runbook/ring/SLACK_WEBHOOK");
    ssm_put("/runbook/ring/SLACK_WEBHOOK", &hook.url);
    let read = rb().run(&["run", "sprint-2"]);
    read.expect_code(0);
    assert!(!read.text().contains("secret-token"), "{}", read.text());
    let texts = hook.texts();
    assert_eq!(texts.len(), 4, "{texts:#?}");
    assert!(texts[3].starts_with("runbook: run 4 of sprint-2 on local is done in "), "{}", texts[3]);
    // The URL is nowhere at rest: not in the state DB, its WAL, nor the private work folder.
    let state_dir = scratch.state().parent().unwrap().to_path_buf();
    let mut files = vec![state_dir.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().flatten().map(|e| e.path()));
        } else if let Some(bytes) = db_dump(&path) {
            assert!(!String::from_utf8_lossy(&bytes).contains("secret-token"), "the webhook URL in {}", path.display());
        }
    }
    eprintln!("after the ring's reset, the test took {:?}", started.elapsed());
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string()
}

/// `watch --once`'s verdict line and exit code.
fn watch_once(rb: &Runbook) -> (Option<i32>, serde_json::Value) {
    let ran = rb.run(&["--json", "watch", "--once"]);
    let line = ran.stdout.lines().next().unwrap_or_else(|| panic!("no poll line:\n{}", ran.text()));
    let poll: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(poll["type"], "poll", "{line}");
    (ran.code, poll["poll"].clone())
}

#[test]
fn sprint_2_posts_its_approval_stop_and_its_end_and_watch_once_judges_five_ring_states() {
    let Some(_ring) = fresh_ring() else { return };
    let whole = std::time::Instant::now();
    let scratch = Scratch::new("oncall-watch");
    let project = impatient_project(&scratch);
    with_webhook(&project);
    let hook = Receiver::start();
    let rb = || scratch.runbook().project(&project).env("RUNBOOK_TEST_WEBHOOK", &hook.url);

    // Before sprint 2 there is no Dixie: unhealthy, exit 4.
    let (code, poll) = watch_once(&rb());
    assert_eq!(
        (code, poll["verdict"].as_str(), poll["dixie"].as_str()),
        (Some(4), Some("unhealthy"), Some("unreachable"))
    );
    assert_eq!(poll["finn"], "healthy", "{poll}");

    // Without --yes and without a terminal, T2.4's plan waits for an operator: that is posted.
    let started = std::time::Instant::now();
    rb().run(&["run", "sprint-2"]).expect_code(5).expect_text("awaiting approval");
    let waiting = json(&rb().run(&["history", "--json"]));
    assert_eq!(
        (waiting["runs"][0]["failed_step"].as_str(), waiting["runs"][0]["awaiting_approval"].as_bool()),
        (Some("T2.4"), Some(true))
    );
    rb().run(&["history"]).expect_code(0).expect_text("awaiting approval  T2.4 (to approve: runbook resume 1 --yes)");
    rb().run(&["resume", "--yes"]).expect_code(0);
    eprintln!("sprint-2 took {:?}", started.elapsed());
    let texts = hook.texts();
    assert_eq!(texts.len(), 2, "{texts:#?}");
    assert!(
        texts[0].starts_with("runbook: run 1 of sprint-2 on local stopped awaiting approval at T2.4: ")
            && texts[0].lines().next().unwrap().ends_with("; to apply it: runbook resume 1 --yes")
            && texts[0].contains("\n  create   "),
        "{}",
        texts[0]
    );
    assert!(texts[1].starts_with("runbook: run 1 of sprint-2 on local is done in "), "{}", texts[1]);
    // --yes approved T2.4's plan: the audit shows what was approved, how and by whom.
    let audit = json(&rb().run(&["audit", "--json"]));
    let approval = audit["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "approval_answered")
        .unwrap_or_else(|| panic!("no approval in {audit}"));
    assert_eq!((approval["step"].as_str(), approval["detail"]["via"].as_str()), (Some("T2.4"), Some("--yes")));
    assert!(approval["decision"].as_str().unwrap().starts_with("approved T2.4 via --yes: "), "{approval}");

    // After sprint 2: degraded, NATS unreachable (sprint 3 adds the rule), exit 1.
    let started = std::time::Instant::now();
    let (code, poll) = watch_once(&rb());
    eprintln!("watch --once took {:?}", started.elapsed());
    assert_eq!((code, poll["verdict"].as_str()), (Some(1), Some("degraded")), "{poll}");
    assert_eq!(
        (poll["components"]["nats"].as_str(), poll["components"]["redis"].as_str()),
        (Some("unreachable"), Some("healthy"))
    );
    assert_eq!(poll["finn_circuit"], "closed", "{poll}");
    let text = rb().run(&["watch", "--once"]);
    text.expect_code(1).expect_text("degraded").expect_text("nats unreachable").expect_text("finn /health healthy");

    let outage = Outage::of(&["redis"]);
    let (code, poll) = watch_once(&rb());
    assert_eq!((code, poll["verdict"].as_str()), (Some(1), Some("degraded")), "{poll}");
    assert_eq!(poll["components"]["redis"], "unreachable", "{poll}");
    assert!(poll["reasons"][0].as_str().unwrap().contains("redis unreachable"), "{poll}");
    outage.end();
    let (_, poll) = watch_once(&rb());
    assert_eq!(poll["components"]["redis"], "healthy", "Redis is back: {poll}");
    assert_eq!(hook.texts().len(), 2, "--once tells the webhook nothing");

    // Sprint 3 adds the NATS rule: healthy, exit 0.
    rb().run(&["run", "sprint-3", "--yes"]).expect_code(0);
    let (code, poll) = watch_once(&rb());
    assert_eq!((code, poll["verdict"].as_str()), (Some(0), Some("healthy")), "{poll}");
    assert_eq!(poll["components"]["nats"], "connected", "{poll}");

    // Finn gone: Dixie's circuit opens after three failed checks (each poll makes Dixie check
    // Finn once): unhealthy, exit 4, the circuit named.
    ecs_scale("loa-finn-armitage", 0);
    let opened = (0..20).find_map(|_| {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let (code, poll) = watch_once(&rb());
        (poll["finn_circuit"] == "open").then_some((code, poll))
    });
    let (code, poll) = opened.expect("Dixie's Finn circuit opens within 10 s of Finn stopping");
    assert_eq!((code, poll["verdict"].as_str()), (Some(4), Some("unhealthy")), "{poll}");
    rb().run(&["watch", "--interval", "5ms"]).expect_code(2).expect_text("at most every 100 ms");
    eprintln!("after the ring's reset, the test took {:?}", whole.elapsed());
}

#[test]
fn a_webhook_written_in_the_file_or_named_twice_is_bad_input_and_never_quoted() {
    // No ring: refused while the environment is read, before anything else.
    let scratch = Scratch::new("oncall-notify-input");
    let project = scratch.project_copy();
    let env = project.join("runbooks/environments/local.toml");
    let original = std::fs::read_to_string(&env).unwrap();
    for (table, says) in [
        ("webhook = \"https://hooks.slack.com/services/T0/B0/secret-token\"", "must not be written in the file"),
        ("webhook = { env = \"A\", ssm = \"/runbook/ring/SLACK_WEBHOOK\" }", "names both ssm and env: keep one"),
        (
            "webhook = { env = \"A\", url = \"https://hooks.slack.com/services/T0/B0/secret-token\" }",
            "unknown field `url`",
        ),
    ] {
        std::fs::write(&env, format!("{original}\n[notify]\n{table}\n")).unwrap();
        for args in [&["run", "sprint-2"][..], &["watch", "--once"]] {
            let ran = scratch.runbook().project(&project).run(args);
            ran.expect_code(2).expect_text(says).expect_text("local.toml");
            assert!(!ran.text().contains("secret-token"), "{args:?}: {}", ran.text());
        }
    }
    assert!(!scratch.state().exists(), "nothing was recorded");
}
