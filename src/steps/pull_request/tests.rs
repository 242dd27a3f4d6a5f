//! T3.2 against the GitHub stand-in (`ring/standins/github.py`), started by each test on a free
//! port with its own state file and token, so no ring is needed: the PRs are merged in order
//! pinned to the heads that were checked, #54 never, the sync waits for its checks; a re-run
//! sends nothing; a red check, a push before the merge, a refused token each stop before they
//! merge what they should not, and the token is in no line the step emitted.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::github::rate_limit_wait;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::*;
use crate::event::Event;
use crate::recorder::Recorder;
use crate::steps::{AnyStep, KINDS, Services, find};

const REPO: &str = "/repos/0xHoneyJar/loa-dixie";

/// One GitHub stand-in with its own folder, token and token variable.
struct Hub {
    dir: PathBuf,
    child: Child,
    url: String,
    token: String,
    var: String,
    services: Arc<Services>,
    tx: UnboundedSender<Event>,
    rx: Mutex<UnboundedReceiver<Event>>,
    http: reqwest::Client,
}

impl Hub {
    async fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("runbook-gh-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let token = format!("ghp_{}", &Secret::random_hex32().expose()[..36]);
        std::fs::write(dir.join("token"), &token).unwrap();
        let var = format!("RUNBOOK_TEST_GITHUB_TOKEN_{}", name.to_uppercase().replace('-', "_"));
        // SAFETY: each test sets its own variable once, before the step reads it; Rust's own
        // environment access is serialised, and nothing in these tests reads it from C.
        unsafe { std::env::set_var(&var, &token) };
        let mut child = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/ring/standins/github.py"))
            .args(["--port", "0", "--check-seconds", "0.3", "--state"])
            .arg(dir.join("state.json"))
            .arg("--token-file")
            .arg(dir.join("token"))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("github.log")).unwrap())
            .spawn()
            .expect("python3 runs ring/standins/github.py");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let port = first.trim().strip_prefix("port=").unwrap_or_else(|| panic!("the stand-in said {first:?}"));
        let services = crate::steps::test_services(&dir, &dir).await;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Hub {
            dir,
            child,
            url: format!("http://127.0.0.1:{port}"),
            token,
            var,
            services,
            tx,
            rx: Mutex::new(rx),
            http: reqwest::Client::new(),
        }
    }

    /// The T3.2 step of the sprint, with `extra` TOML lines.
    fn step(&self, merge: &str, extra: &str) -> Box<dyn AnyStep> {
        let params: toml::Value = toml::from_str(&format!(
            "api = \"{}\"\nrepo = \"0xHoneyJar/loa-dixie\"\nmerge = {merge}\n\
             not = [{{ number = 54, why = \"node 22 to 25 needs its own testing cycle\" }}]\n\
             token = {{ env = \"{}\" }}\nsync = {{ base = \"feature/dixie-mvp\", from = \"main\" }}\n\
             checks_within = 20\n{extra}",
            self.url, self.var
        ))
        .unwrap();
        find(KINDS, "pull_request").unwrap().parse(&params).unwrap()
    }

    fn cx(&self) -> StepContext {
        StepContext::new(&self.services, "T3.2", 1, Recorder::new(None, self.tx.clone()))
    }

    /// A test control of the stand-in.
    async fn ring(&self, what: &str, body: Value) -> Value {
        let response = self.http.post(format!("{}/__ring/{what}", self.url)).json(&body).send().await.unwrap();
        assert!(response.status().is_success(), "/__ring/{what}: {}", response.status());
        response.json().await.unwrap()
    }

    /// An API call as a client with the token (for the test's own reads and setup).
    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{REPO}{path}", self.url))
            .bearer_auth(&self.token)
            .header("User-Agent", "runbook-tests");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn pull(&self, number: u64) -> Value {
        self.api(reqwest::Method::GET, &format!("/pulls/{number}"), None).await.1
    }

    async fn head(&self, number: u64) -> String {
        self.pull(number).await["head"]["sha"].as_str().unwrap().to_string()
    }

    /// Every mutating request the stand-in was sent, as "METHOD path status".
    async fn mutations(&self) -> Vec<Value> {
        let log: Value = self.http.get(format!("{}/__ring/log", self.url)).send().await.unwrap().json().await.unwrap();
        log["requests"].as_array().unwrap().clone()
    }

    /// Everything the step emitted so far (log lines, progress), as the state DB and `--json`
    /// would get it.
    fn emitted(&self) -> Vec<String> {
        let mut rx = self.rx.lock().unwrap();
        let mut out = Vec::new();
        while let Ok(event) = rx.try_recv() {
            out.push(serde_json::to_string(&event).unwrap());
        }
        out
    }

    /// The token is in none of `texts` nor in what the step emitted.
    fn assert_token_unseen(&self, texts: &[String]) {
        let emitted = self.emitted();
        assert!(!emitted.is_empty() || !texts.is_empty());
        for text in emitted.iter().chain(texts) {
            assert!(!text.contains(&self.token), "the token leaked into: {text}");
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn satisfied(probe: Probe) -> Outputs {
    match probe {
        Probe::Satisfied(outputs) => outputs,
        other => panic!("expected satisfied, got {other:?}"),
    }
}

fn fatal(err: StepError) -> (String, String) {
    match err {
        StepError::Fatal { message, fix } => (message, fix.unwrap_or_default()),
        other => panic!("expected a fatal error, got {other:?}"),
    }
}

fn merges_of(log: &[Value]) -> Vec<(String, String, u64)> {
    log.iter()
        .filter(|r| r["method"] == "PUT")
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                r["sha"].as_str().unwrap_or("").to_string(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_fresh_repo_gets_55_53_52_merged_at_their_checked_heads_not_54_and_main_synced_with_checks_waited_for() {
    let hub = Hub::new("fresh").await;
    let heads = [hub.head(55).await, hub.head(53).await, hub.head(52).await];
    let (step, cx) = (hub.step("[55, 53, 52]", ""), hub.cx());
    let Probe::Absent(what) = step.probe(&cx).await.unwrap() else { panic!("a fresh repo has work to do") };
    assert!(what.starts_with("merge PR #55 (Bump actions/checkout from 4 to 6); merge PR #53"), "{what}");
    assert!(what.ends_with("then merge main into feature/dixie-mvp and wait for its checks"), "{what}");
    assert!(hub.mutations().await.is_empty(), "the probe changes nothing");

    step.apply(&cx).await.unwrap();
    let log = hub.mutations().await;
    let expected: Vec<_> =
        [55, 53, 52].iter().zip(&heads).map(|(n, sha)| (format!("{REPO}/pulls/{n}/merge"), sha.clone(), 200)).collect();
    assert_eq!(merges_of(&log), expected, "in order, each pinned to the head that was checked");
    let syncs: Vec<_> = log.iter().filter(|r| r["method"] == "POST").collect();
    assert_eq!(syncs.len(), 1, "{log:?}");
    assert_eq!(
        (&syncs[0]["base"], &syncs[0]["head"], &syncs[0]["status"]),
        (&json!("feature/dixie-mvp"), &json!("main"), &json!(201))
    );
    assert!(!log.iter().any(|r| r["path"].as_str().unwrap().contains("/pulls/54")), "#54 is never touched");
    assert_eq!(hub.pull(54).await["state"], "open");

    let feature = hub.api(reqwest::Method::GET, "/branches/feature/dixie-mvp", None).await.1["commit"]["sha"].clone();
    let runs =
        hub.api(reqwest::Method::GET, &format!("/commits/{}/check-runs", feature.as_str().unwrap()), None).await.1;
    assert!(
        runs["check_runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "completed" && r["conclusion"] == "success"),
        "apply returned before the checks of the synced head finished: {runs}"
    );
    let emitted = hub.emitted();
    assert!(
        emitted.iter().any(|e| e.contains("step_waiting") && e.contains("checks of feature/dixie-mvp")),
        "{emitted:?}"
    );
    assert!(emitted.iter().any(|e| e.contains("PR #54 is left unmerged: node 22 to 25")), "{emitted:?}");

    let outputs = satisfied(step.verify(&cx).await.unwrap());
    assert_eq!(outputs["merged"], "55,53,52");
    assert_eq!(outputs["feature_head"], feature.as_str().unwrap());
}

#[tokio::test]
async fn a_rerun_finds_it_done_and_sends_github_nothing() {
    let hub = Hub::new("rerun").await;
    let (step, cx) = (hub.step("[55, 53, 52]", ""), hub.cx());
    step.apply(&cx).await.unwrap();
    let before = hub.mutations().await.len();
    let again = hub.step("[55, 53, 52]", "");
    let outputs = satisfied(again.probe(&hub.cx()).await.unwrap());
    assert_eq!(outputs["merged"], "55,53,52");
    assert_eq!(hub.mutations().await.len(), before, "a satisfied probe sends no mutating request");
}

#[tokio::test]
async fn a_red_check_on_the_second_pr_names_the_check_and_the_pr_and_nothing_is_merged() {
    let hub = Hub::new("red").await;
    hub.ring("check", json!({"pr": 53, "name": "build", "conclusion": "failure"})).await;
    let (step, cx) = (hub.step("[55, 53, 52]", ""), hub.cx());
    assert!(matches!(step.probe(&cx).await.unwrap(), Probe::Absent(_)));
    let (message, fix) = fatal(step.apply(&cx).await.unwrap_err());
    assert_eq!(message, "nothing merged: PR #53: check `build` is failure");
    assert!(fix.contains("runbook retry T3.2"), "{fix}");
    assert!(hub.mutations().await.is_empty(), "not even #55, which was green, is merged");
    assert_eq!(hub.pull(55).await["merged"], false);
}

#[tokio::test]
async fn a_push_between_the_checks_and_the_merge_is_refused_and_nothing_after_it_is_merged() {
    let hub = Hub::new("pushed").await;
    let checked = hub.head(53).await;
    hub.ring("push", json!({"pr": 53, "before_merge": true})).await;
    let (step, cx) = (hub.step("[55, 53, 52]", ""), hub.cx());
    let (message, fix) = fatal(step.apply(&cx).await.unwrap_err());
    assert!(
        message.starts_with(&format!("PR #53 was pushed to after its checks were read at head {}", &checked[..7])),
        "{message}"
    );
    assert!(message.contains("merged before it: #55"), "{message}");
    assert!(fix.contains("runbook retry T3.2 (merged PRs are skipped)"), "{fix}");
    let merges = merges_of(&hub.mutations().await);
    assert_eq!(merges.iter().map(|m| m.2).collect::<Vec<_>>(), [200, 409], "#55 merged, #53 refused, #52 not tried");
    assert_eq!(merges[1].1, checked, "the merge was pinned to the SHA whose checks were read");
    assert_eq!(hub.pull(53).await["merged"], false);
    assert_eq!(hub.pull(52).await["state"], "open");
    assert_ne!(hub.head(53).await, checked);
}

#[tokio::test]
async fn a_pr_merged_already_counts_as_done_and_is_not_merged_again() {
    let hub = Hub::new("merged").await;
    let head = hub.head(55).await;
    let (status, _) =
        hub.api(reqwest::Method::PUT, "/pulls/55/merge", Some(json!({"sha": head, "merge_method": "merge"}))).await;
    assert_eq!(status, 200);
    let (step, cx) = (hub.step("[55, 53, 52]", ""), hub.cx());
    let Probe::Absent(what) = step.probe(&cx).await.unwrap() else { panic!("53 and 52 are left") };
    assert!(!what.contains("#55") && what.starts_with("merge PR #53"), "{what}");
    step.apply(&cx).await.unwrap();
    let merges = merges_of(&hub.mutations().await);
    assert_eq!(merges.iter().filter(|m| m.0.ends_with("/pulls/55/merge")).count(), 1, "only the test's own merge");
    assert!(hub.emitted().iter().any(|e| e.contains("PR #55 (Bump actions/checkout from 4 to 6) is merged already")));
    satisfied(step.verify(&cx).await.unwrap());
}

#[tokio::test]
async fn a_refused_token_is_fatal_and_says_where_the_token_comes_from() {
    let hub = Hub::new("badtoken").await;
    std::fs::write(hub.dir.join("token"), "ghp_the_one_github_knows_now").unwrap();
    let (step, cx) = (hub.step("[55, 53, 52]", ""), hub.cx());
    let (message, fix) = fatal(step.probe(&cx).await.unwrap_err());
    assert!(message.starts_with("the GitHub token was refused by http://127.0.0.1:"), "{message}");
    assert!(message.contains("(401 Bad credentials)"), "{message}");
    assert!(fix.starts_with(&format!("export {} with a GitHub token", hub.var)), "{fix}");
    let (message, _) = fatal(step.apply(&cx).await.unwrap_err());
    assert!(message.starts_with("the GitHub token was refused"), "{message}");
    assert!(hub.mutations().await.is_empty(), "nothing was tried with a refused token");
}

#[tokio::test]
async fn the_token_is_in_no_line_the_step_emits_nor_in_its_errors() {
    let hub = Hub::new("leak").await;
    let (step, cx) = (hub.step("[55, 53, 52]", ""), hub.cx());
    let mut texts = vec![format!("{step:?}")];
    if let Probe::Absent(what) = step.probe(&cx).await.unwrap() {
        texts.push(what);
    }
    step.apply(&cx).await.unwrap();
    satisfied(step.verify(&cx).await.unwrap());
    hub.assert_token_unseen(&texts);
    // A refused token's error: the step's token is not echoed either.
    std::fs::write(hub.dir.join("token"), "ghp_rotated").unwrap();
    let err = step.probe(&cx).await.unwrap_err();
    hub.assert_token_unseen(&[err.to_string(), err.fix().unwrap_or_default().to_string(), format!("{err:?}")]);
    let log = std::fs::read_to_string(hub.dir.join("github.log")).unwrap();
    assert!(!log.contains(&hub.token), "the stand-in does not log it either");
}

#[tokio::test]
async fn a_red_check_on_the_synced_branch_fails_the_step_naming_it() {
    let hub = Hub::new("redsync").await;
    hub.ring("next-checks", json!({"branch": "feature/dixie-mvp", "conclusions": {"test": "failure"}})).await;
    let (step, cx) = (hub.step("[55, 53, 52]", ""), hub.cx());
    let (message, fix) = fatal(step.apply(&cx).await.unwrap_err());
    assert!(message.starts_with("the checks of feature/dixie-mvp at "), "{message}");
    assert!(message.ends_with("failed: check `test` is failure"), "{message}");
    assert!(fix.contains("breaks CI on feature/dixie-mvp") || fix.contains("break CI on feature/dixie-mvp"), "{fix}");
    let Probe::Conflict(why) = step.probe(&cx).await.unwrap() else { panic!("a red sync is for the operator") };
    assert!(why.contains("check `test` is failure"), "{why}");
}

#[tokio::test]
async fn mergeability_that_github_still_computes_is_read_again() {
    let hub = Hub::new("computing").await;
    hub.ring("mergeable", json!({"pr": 53, "mergeable": null, "null_reads": 2})).await;
    let (step, cx) = (hub.step("[55, 53, 52]", ""), hub.cx());
    step.apply(&cx).await.unwrap();
    assert_eq!(hub.pull(53).await["merged"], true);
}

#[tokio::test]
async fn an_unmergeable_pr_stops_everything_before_the_first_merge() {
    let hub = Hub::new("dirty").await;
    hub.ring("mergeable", json!({"pr": 52, "mergeable": false, "state": "dirty"})).await;
    let (step, cx) = (hub.step("[55, 53, 52]", ""), hub.cx());
    let (message, _) = fatal(step.apply(&cx).await.unwrap_err());
    assert_eq!(message, "nothing merged: PR #52 cannot be merged into main (mergeable_state dirty: it conflicts)");
    assert!(hub.mutations().await.is_empty());
}

#[tokio::test]
async fn server_errors_are_retryable_and_an_unknown_pr_is_fatal_naming_it() {
    let hub = Hub::new("errors").await;
    hub.ring("fault", json!({"status": 502, "path": format!("{REPO}/pulls/55")})).await;
    let (step, cx) = (hub.step("[55, 53, 52]", ""), hub.cx());
    let err = step.probe(&cx).await.unwrap_err();
    assert!(matches!(err, StepError::Retryable { .. }), "{err:?}");
    assert!(err.to_string().contains("HTTP 502"), "{err}");
    let unknown = hub.step("[99]", "");
    let (message, fix) = fatal(unknown.probe(&cx).await.unwrap_err());
    assert_eq!(message, format!("GitHub has no PR #99 in 0xHoneyJar/loa-dixie at {} (404)", hub.url));
    assert!(fix.contains("check `repo`, the PR numbers"), "{fix}");
}

#[test]
fn bad_params_are_refused_before_anything_runs() {
    let parse = |text: &str| {
        let base = "api = \"http://127.0.0.1:18700\"\nrepo = \"0xHoneyJar/loa-dixie\"\ntoken = { env = \"GH\" }\n";
        let params: toml::Value = toml::from_str(&format!("{base}{text}")).unwrap();
        find(KINDS, "pull_request").unwrap().parse(&params).map(|_| ()).unwrap_err()
    };
    assert_eq!(
        parse("merge = [55, 54]\nnot = [{ number = 54, why = \"major bump\" }]"),
        "PR #54 is in both `merge` and `not` (major bump): take it out of one"
    );
    assert!(parse("merge = [55]\nrepo2 = 1").contains("unknown field `repo2`"));
    assert!(parse("merge = [55]\nmerge_method = \"fast-forward\"").contains("unknown variant `fast-forward`"));
    assert!(parse("merge = [55, 55]").contains("lists PR #55 twice"));
    assert!(parse("").starts_with("nothing to do"));
    let bad_repo = |repo: &str| {
        let params: toml::Value = toml::from_str(&format!(
            "api = \"https://api.github.com\"\nrepo = \"{repo}\"\nmerge = [1]\ntoken = {{ ssm = \"/runbook/armitage/GITHUB_TOKEN\" }}"
        ))
        .unwrap();
        find(KINDS, "pull_request").unwrap().parse(&params).map(|_| ())
    };
    assert!(bad_repo("0xHoneyJar/loa-dixie").is_ok());
    assert!(bad_repo("loa-dixie").unwrap_err().contains("write owner/name"));
    assert!(bad_repo("0xHoneyJar/loa dixie").is_err());
}

/// The preflight reads only: the repository, the PRs to merge and the branches to sync exist,
/// the token is accepted; a PR that does not exist, a dead API port or a wrong repository is
/// refused before anything is merged.
#[tokio::test]
async fn the_preflight_refuses_what_does_not_exist_and_sends_nothing_that_changes() {
    let hub = Hub::new("preflight").await;
    let cx = hub.cx();
    hub.step("[55, 53, 52]", "").preflight(&cx).await.unwrap();
    let (message, _) = fatal(hub.step("[55, 99]", "").preflight(&cx).await.unwrap_err());
    assert!(message.contains("GitHub has no PR #99"), "{message}");
    let mut texts = vec![message];
    let params: toml::Value = toml::from_str(&format!(
        "api = \"{}\"\nrepo = \"0xHoneyJar/nope\"\nmerge = [55]\ntoken = {{ env = \"{}\" }}\nchecks_within = 20\n",
        hub.url, hub.var
    ))
    .unwrap();
    let step = find(KINDS, "pull_request").unwrap().parse(&params).unwrap();
    let (message, _) = fatal(step.preflight(&cx).await.unwrap_err());
    assert!(message.contains("GitHub has no repository in 0xHoneyJar/nope"), "{message}");
    texts.push(message);
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let params: toml::Value = toml::from_str(&format!(
        "api = \"http://127.0.0.1:{dead}\"\nrepo = \"0xHoneyJar/loa-dixie\"\nmerge = [55]\ntoken = {{ env = \"{}\" }}\n\
         checks_within = 20\n",
        hub.var
    ))
    .unwrap();
    let step = find(KINDS, "pull_request").unwrap().parse(&params).unwrap();
    let dead_port = step.preflight(&cx).await.expect_err("a dead API port is refused");
    texts.push(dead_port.to_string());
    let changed: Vec<Value> = hub.mutations().await.into_iter().filter(|r| r["method"] != "GET").collect();
    assert!(changed.is_empty(), "the preflight only reads: {changed:?}");
    hub.assert_token_unseen(&texts);
}

#[test]
fn github_says_how_long_to_wait_and_runbook_waits_that_long() {
    assert_eq!(rate_limit_wait(Some("7"), Some("9999999999"), 100), Duration::from_secs(7), "retry-after first");
    assert_eq!(rate_limit_wait(None, Some("130"), 100), Duration::from_secs(31), "until the reset, and a second");
    assert_eq!(rate_limit_wait(None, Some("50"), 100), Duration::from_secs(1), "a reset in the past: at once");
    assert_eq!(rate_limit_wait(None, None, 100), Duration::from_secs(60), "a secondary limit: a minute");
    assert_eq!(rate_limit_wait(Some("soon"), None, 100), Duration::from_secs(60));
}

/// A rate-limited answer with `retry-after` is waited out as GitHub asks (said in the step's
/// log), not retried after 1 s and 2 s; a reset beyond runbook's bound fails with its time.
#[tokio::test]
async fn a_rate_limit_is_waited_out_as_github_asks_and_said() {
    let hub = Hub::new("ratelimit").await;
    let fault = json!({"status": 429, "count": 1, "method": "GET", "path": format!("{REPO}/pulls/55"),
                       "message": "API rate limit exceeded", "headers": {"retry-after": "2"}});
    hub.ring("fault", fault).await;
    let (step, cx) = (hub.step("[55]", ""), hub.cx());
    let started = std::time::Instant::now();
    step.preflight(&cx).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(2), "waited {:?}", started.elapsed());
    let said = hub.emitted().join("\n");
    assert!(said.contains("GitHub's rate limit (429 API rate limit exceeded): waiting 2 s as GitHub asks"), "{said}");
    let far = json!({"status": 403, "count": 1, "method": "GET", "path": format!("{REPO}/pulls/55"),
                     "message": "API rate limit exceeded", "headers": {"x-ratelimit-remaining": "0",
                     "x-ratelimit-reset": (crate::clock::now_ms() / 1000 + 3600).to_string()}});
    hub.ring("fault", far).await;
    let error = step.preflight(&cx).await.unwrap_err().to_string();
    assert!(error.contains("longer than runbook waits in a step"), "{error}");
}
