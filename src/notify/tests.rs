//! The `[notify]` table, the messages, and posts to a receiver on loopback: exactly the posts
//! expected arrive, a failing receiver is tried three times, a dead one fails nothing, and no
//! error carries the URL.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::state::{RunRow, StepRow};
use crate::status::StepView;

/// An HTTP server on 127.0.0.1 for tests: it records each request's path and body and
/// answers with what [`Loopback::answer`] set for the path (200 `ok` by default).
pub(crate) struct Loopback {
    pub(crate) addr: SocketAddr,
    requests: Arc<Mutex<Vec<(String, String)>>>,
    answers: Arc<Mutex<BTreeMap<String, (u16, String)>>>,
}

/// One HTTP/1.1 request read off `conn`: its head (request line and headers) and its body (by
/// its Content-Length); `None` when the peer closes first. For the tests' loopback servers.
pub(crate) async fn read_request(conn: &mut tokio::net::TcpStream) -> Option<(String, String)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let (head_end, length) = loop {
        let n = conn.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        data.extend_from_slice(&buf[..n]);
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                .unwrap_or(0usize);
            break (end + 4, length);
        }
    };
    while data.len() < head_end + length {
        let n = conn.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        data.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    Some((head, String::from_utf8_lossy(&data[head_end..]).to_string()))
}

impl Loopback {
    pub(crate) async fn start() -> Loopback {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let answers: Arc<Mutex<BTreeMap<String, (u16, String)>>> = Arc::default();
        let (seen, answer) = (requests.clone(), answers.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (seen, answer) = (seen.clone(), answer.clone());
                tokio::spawn(async move {
                    let Some((head, body)) = read_request(&mut conn).await else { return };
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let (status, reply) = answer.lock().unwrap().get(&path).cloned().unwrap_or((200, "ok".into()));
                    seen.lock().unwrap().push((path, body));
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                        reply.len()
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Loopback { addr, requests, answers }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn answer(&self, path: &str, status: u16, body: &str) {
        self.answers.lock().unwrap().insert(path.to_string(), (status, body.to_string()));
    }

    /// The `text` of each JSON body posted to `path`, in order.
    pub(crate) fn texts(&self, path: &str) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, body)| {
                let json: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
                json["text"].as_str().expect("a text field").to_string()
            })
            .collect()
    }
}

/// A loopback-only environment with `extra` appended to its file, loaded as `runbook` does.
pub(crate) fn environment(extra: &str) -> Result<Environment, String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let project = std::env::temp_dir().join(format!(
        "runbook-notify-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let dir = project.join("runbooks/environments");
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        "name = \"test\"\naccount_id = \"000000000000\"\nregion = \"us-east-1\"\nloopback_only = true\n{extra}"
    );
    std::fs::write(dir.join("test.toml"), text).unwrap();
    let env = Environment::load(&project, "test").map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&project);
    env
}

/// A notifier for `url` that waits only a few milliseconds between tries.
pub(crate) fn notifier_for(env: &Environment, url: &str) -> Notifier {
    let mut n = Notifier::new(env, Secret::new(url.to_string())).unwrap();
    n.backoff = [Duration::from_millis(10), Duration::from_millis(20)];
    n
}

fn notifier(url: &str) -> Notifier {
    notifier_for(&environment("").unwrap(), url)
}

#[test]
fn a_webhook_is_named_by_exactly_one_source_and_never_written_in_the_file() {
    let ok = environment("[notify]\nwebhook = { env = \"RUNBOOK_WEBHOOK_URL\" }").unwrap();
    assert_eq!(ok.notify.unwrap().webhook, WebhookSource::Env("RUNBOOK_WEBHOOK_URL".into()));
    let ssm = environment("[notify]\nwebhook = { ssm = \"/runbook/armitage/SLACK_WEBHOOK\" }").unwrap();
    assert_eq!(ssm.notify.unwrap().webhook, WebhookSource::Ssm("/runbook/armitage/SLACK_WEBHOOK".into()));
    assert!(environment("").unwrap().notify.is_none());
    for (table, says) in [
        ("webhook = { env = \"A\", ssm = \"/b\" }", "names both ssm and env: keep one"),
        ("webhook = {}", "names no source; write webhook = { ssm = "),
        ("webhook = \"https://hooks.slack.com/services/T0/B0/XYZ\"", "must not be written in the file"),
        ("webhook = { env = \"A\", url = \"https://hooks.slack.com/services/T0/B0/XYZ\" }", "unknown field `url`"),
        (
            "webhook = { ssm = \"SLACK\" }",
            "is not an SSM parameter name (its value is not shown: if it is the webhook URL",
        ),
        ("webhook = { env = \"1 BAD\" }", "is not an environment variable name"),
        ("webhook = { ssm = \"https://hooks.slack.com/services/T0/B0/XYZ\" }", "is not an SSM parameter name"),
        ("webhook = { env = \"https://hooks.slack.com/services/T0/B0/XYZ\" }", "is not an environment variable name"),
        ("webhook = https://hooks.slack.com/services/T0/B0/XYZ", "the line is not shown"),
        ("webhook = \"https://hooks.slack.com/services/T0/B0/XYZ", "the line is not shown"),
        ("hook = { env = \"A\" }", "unknown field `hook`"),
    ] {
        let err = environment(&format!("[notify]\n{table}")).unwrap_err();
        assert!(err.contains(says), "{table}: {err}");
        assert!(!err.contains("XYZ"), "the URL is repeated: {err}");
    }
}

#[tokio::test]
async fn a_missing_variable_is_said_without_failing_anything() {
    let env = environment("[notify]\nwebhook = { env = \"RUNBOOK_TEST_WEBHOOK_THAT_IS_NOT_SET\" }").unwrap();
    let err = Notifier::resolve(&env, None).await.err().unwrap();
    assert!(err.contains("$RUNBOOK_TEST_WEBHOOK_THAT_IS_NOT_SET") && err.contains("not set"), "{err}");
    let none = environment("").unwrap();
    assert!(Notifier::resolve(&none, None).await.unwrap().is_none());
}

#[tokio::test]
async fn the_receiver_gets_exactly_the_posted_text() {
    let receiver = Loopback::start().await;
    notifier(&receiver.url("/hook/T0/secret-token")).send("runbook: run 3 is done").await.unwrap();
    assert_eq!(receiver.texts("/hook/T0/secret-token"), ["runbook: run 3 is done"]);
}

#[tokio::test]
async fn a_failing_webhook_is_tried_three_times_and_its_error_hides_the_url() {
    let receiver = Loopback::start().await;
    receiver.answer("/hook/secret-token", 500, "{}");
    let err = notifier(&receiver.url("/hook/secret-token")).send("x").await.unwrap_err();
    assert_eq!(receiver.texts("/hook/secret-token").len(), 3);
    assert_eq!(err, "the webhook answered HTTP 500 (tried 3 times)");
}

#[tokio::test]
async fn a_dead_webhook_fails_the_post_only_and_says_why_without_the_url() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/services/secret-token");
    let started = std::time::Instant::now();
    let err = notifier(&url).send("x").await.unwrap_err();
    assert!(err.starts_with("POST to the webhook: ") && err.ends_with("(tried 3 times)"), "{err}");
    assert!(!err.contains("secret-token") && !err.contains(&url), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "a refused connection is not waited on");
}

#[test]
fn a_webhook_off_loopback_is_refused_on_a_loopback_ring() {
    let env = environment("").unwrap();
    let err = Notifier::new(&env, Secret::new("https://10.9.8.7/services/secret-token".into())).err().unwrap();
    assert!(err.contains("not a loopback address") && !err.contains("secret-token"), "{err}");
    let err = Notifier::new(&env, Secret::new("ftp://127.0.0.1/secret-token".into())).err().unwrap();
    assert!(!err.contains("secret-token"), "{err}");
}

fn view(status: RunState, failed: Option<(&str, &str)>) -> StatusView {
    let steps = failed
        .map(|(step, error)| StepView {
            row: StepRow {
                step: step.into(),
                state: StepState::Failed,
                attempts: 1,
                duration_ms: Some(10),
                last_error: Some(error.into()),
                fix: None,
                in_doubt: false,
                warnings: Vec::new(),
            },
            next: Some(format!("fix the cause, then: runbook retry {step}")),
            outputs: Default::default(),
            gate: None,
            wait: None,
        })
        .into_iter()
        .collect();
    StatusView {
        run: RunRow {
            id: 4,
            runbook: "sprint-2".into(),
            env: "armitage".into(),
            runbook_hash: String::new(),
            inputs_hash: String::new(),
            vars: BTreeMap::new(),
            operator: "ana".into(),
            host: "bastion".into(),
            started_at: 1_000,
            ended_at: Some(185_000),
            status,
        },
        steps,
        next: String::new(),
        lock: None,
    }
}

#[test]
fn a_run_posts_when_it_fails_stops_for_approval_or_is_done_and_not_when_interrupted() {
    let done = view(RunState::Done, None);
    assert_eq!(
        run_message(4, RunState::Done, Some(&done)).unwrap(),
        "runbook: run 4 of sprint-2 on armitage is done in 3m04s (ana@bastion)"
    );
    let failed = view(RunState::Failed, Some(("T2.5", "REDIS_URL: connection refused\nmore")));
    assert_eq!(
        run_message(4, RunState::Failed, Some(&failed)).unwrap(),
        "runbook: run 4 of sprint-2 on armitage FAILED at T2.5: REDIS_URL: connection refused (ana@bastion); \
         next: fix the cause, then: runbook retry T2.5"
    );
    // The change it waits for, resource by resource, below the line that says what to do.
    let waiting = view(
        RunState::Failed,
        Some((
            "T2.4",
            "awaiting approval: Plan: 1 to add, 1 to change, 0 to destroy.\n  update   aws_db_instance.main: password \
             (sensitive)\n  create   aws_lb.dixie",
        )),
    );
    assert_eq!(
        run_message(4, RunState::Failed, Some(&waiting)).unwrap(),
        "runbook: run 4 of sprint-2 on armitage stopped awaiting approval at T2.4: Plan: 1 to add, 1 to change, 0 \
         to destroy. (ana@bastion); to apply it: runbook resume 4 --yes\n  update   aws_db_instance.main: password \
         (sensitive)\n  create   aws_lb.dixie"
    );
    assert_eq!(run_message(4, RunState::Interrupted, Some(&done)), None);
}
