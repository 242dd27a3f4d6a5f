//! The smoke gate without the ring: a small Dixie on 127.0.0.1 in the test (the routes of 003
//! §6 as dixie-facts.md gives them, each answer switchable), the checks of one round, and the
//! gate through the real engine with a SQLite state file: a flapping check, a P1 failure, a
//! red round that leaves too few rounds, and a kill between rounds resumed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::checks::{mint, persistence};
use super::*;
use crate::engine::{Engine, RetryPolicy};
use crate::event::{RunState, StepState};
use crate::project::{NamedFile, sha256_hex};
use crate::recorder::Recorder;
use crate::runbook::Runbook;
use crate::state::{Holder, NewRun, StateDb, StateHandle};
use crate::steps::Services;
use crate::steps::jwt_keys::{b64url, b64url_decode};

const JWT_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const ADMIN_KEY: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

/// What the test's Dixie answers; every switch is a way Dixie can be wrong.
#[derive(Debug)]
struct Dixie {
    /// Answers to `GET /api/auth/verify` with a good token, one per round: false is a 503.
    verify_fails: Vec<bool>,
    /// `GET /api/agent/capabilities` answers 500.
    capabilities_fail: bool,
    /// `GET /api/health/governance` answers 200 without the key.
    governance_open: bool,
    /// `POST /api/chat` takes an empty prompt.
    chat_takes_empty: bool,
    health_status: &'static str,
    uptime: u64,
    score: Option<f64>,
    /// Every request's method and path, and every Authorization header seen.
    requests: Vec<String>,
}

impl Default for Dixie {
    fn default() -> Self {
        Dixie {
            verify_fails: Vec::new(),
            capabilities_fail: false,
            governance_open: false,
            chat_takes_empty: false,
            health_status: "healthy",
            uptime: 100,
            score: Some(0.75),
            requests: Vec::new(),
        }
    }
}

type Shared = Arc<Mutex<Dixie>>;

fn verified(auth: Option<&str>) -> bool {
    let Some(token) = auth.and_then(|a| a.strip_prefix("Bearer ")) else { return false };
    let Some((input, signature)) = token.rsplit_once('.') else { return false };
    let Some(signature) = b64url_decode(signature) else { return false };
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, JWT_KEY.as_bytes());
    aws_lc_rs::hmac::verify(&key, input.as_bytes(), &signature).is_ok()
}

fn answer(dixie: &Shared, method: &str, target: &str, auth: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    use serde_json::json;
    let mut d = dixie.lock().unwrap();
    d.requests.push(format!("{method} {target}"));
    let path = target.split('?').next().unwrap_or_default();
    let admin = match auth {
        None => 401,
        Some(a) if a == format!("Bearer {ADMIN_KEY}") => 200,
        Some(_) => 403,
    };
    match (method, path) {
        ("GET", "/api/health") => (
            200,
            json!({"status": d.health_status, "version": "1.2.3", "uptime_seconds": d.uptime,
                "services": {"dixie": {"status": "healthy"}, "loa_finn": {"status": "healthy", "circuit_state": "closed", "latency_ms": 3}},
                "infrastructure": {"postgresql": {"status": "healthy"}, "redis": {"status": "healthy"}, "nats": {"status": "connected"}},
                "timestamp": "2026-03-01T10:00:00.000Z"}),
        ),
        ("GET", "/api/auth/verify") if verified(auth) => {
            if !d.verify_fails.is_empty() && d.verify_fails.remove(0) {
                return (503, json!({"error": "flapping"}));
            }
            (200, json!({"wallet": "0x00000000000000000000000000000000000A11CE", "role": "user"}))
        }
        ("GET", "/api/auth/verify") => (401, json!({"error": "invalid signature"})),
        ("POST", "/api/auth/siwe") => (401, json!({"error": "invalid signature"})),
        ("POST", "/api/chat") if !verified(auth) => (401, json!({})),
        ("POST", "/api/chat") if body.contains("\"prompt\":\"\"") && !d.chat_takes_empty => (400, json!({})),
        ("POST", "/api/chat") => (200, json!({"sessionId": "s-1"})),
        ("POST", "/api/agent/query") if !verified(auth) => (401, json!({})),
        ("GET", "/api/agent/capabilities") if d.capabilities_fail => (500, json!({"error": "boom"})),
        ("GET", "/api/agent/capabilities") if verified(auth) => (200, json!({"capabilities": ["chat"]})),
        ("GET", "/api/reputation/query") if target.contains("unknown") => (200, json!({"score": null})),
        ("GET", "/api/reputation/query") => (200, json!({"score": d.score})),
        ("GET", "/api/reputation/population") if admin != 200 => (admin, json!({})),
        ("GET", "/api/health/governance") if d.governance_open || admin == 200 => (
            200,
            json!({"governors": [{"resourceType": "fleet"}], "totalResources": 1, "degradedResources": 0, "timestamp": "t"}),
        ),
        ("GET", "/api/health/governance") => (admin, json!({})),
        _ => (404, json!({"error": "not found"})),
    }
}

/// A Dixie on 127.0.0.1 that answers as `dixie` says, one request per connection.
async fn serve(dixie: Shared) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let dixie = dixie.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)))
                        .map(|(_, v)| v.trim().to_string())
                };
                let length: usize = header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
                while buf.len() < head_end + length {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
                let mut first = head.lines().next().unwrap_or_default().split(' ');
                let (method, target) = (first.next().unwrap_or_default(), first.next().unwrap_or_default());
                let (status, json) = answer(&dixie, method, target, header("authorization").as_deref(), &body);
                let json = json.to_string();
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                    json.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

fn keys() -> Keys {
    Keys { jwt: Signer::Hs256(Secret::new(JWT_KEY.into())), admin: Secret::new(ADMIN_KEY.into()) }
}

fn params(base_url: &str, extra: &str) -> Params {
    let text = format!(
        "base_url = \"{base_url}\"\njwt_key = {{ env = \"RUNBOOK_SMOKE_TEST_JWT_KEY\" }}\n\
         admin_key = {{ env = \"RUNBOOK_SMOKE_TEST_ADMIN_KEY\" }}\nspacing_seconds = 0\n{extra}"
    );
    let p: Params = toml::from_str(&text).unwrap();
    Step::validate(&p).unwrap();
    p
}

async fn context(dir: &Path) -> StepContext {
    let services = crate::steps::test_services(dir, dir).await;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    StepContext::new(&services, "smoke", 1, Recorder::new(None, tx))
}

fn failed(round: &Round) -> Vec<String> {
    round.checks.iter().filter(|c| !c.pass).map(|c| format!("{} {}.{}", c.class.as_str(), c.suite, c.check)).collect()
}

#[test]
fn the_token_is_dixies_shape_and_prints_as_stars() {
    let token = mint(&Secret::new(JWT_KEY.into()), "0xabc", 1_000);
    assert_eq!(format!("{token:?} {token}"), "*** ***");
    let parts: Vec<&str> = token.expose().split('.').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0], b64url(br#"{"alg":"HS256","typ":"JWT"}"#));
    assert!(verified(Some(&format!("Bearer {}", token.expose()))));
    let claims = String::from_utf8(b64url_decode(parts[1]).unwrap()).unwrap();
    let claims: serde_json::Value = serde_json::from_str(&claims).unwrap();
    assert_eq!((claims["iss"].as_str(), claims["aud"].as_str()), (Some("dixie-bff"), Some("dixie-bff")));
    assert_eq!((claims["iat"].as_u64(), claims["exp"].as_u64()), (Some(1_000), Some(1_300)));
    assert_eq!(claims["wallet"], "0xabc");
}

#[tokio::test]
async fn a_round_against_a_good_dixie_is_green_with_every_check_passed() {
    let dixie: Shared = Default::default();
    let base = serve(dixie.clone()).await;
    let dir = std::env::temp_dir().join(format!("runbook-smoke-round-{}", std::process::id()));
    let cx = context(&dir).await;
    let round = params(&base, "").round(&cx, &keys(), &[], 1).await;
    assert_eq!(failed(&round), Vec::<String>::new(), "{:#?}", round.checks);
    assert!(round.green && round.streak == 1);
    let names: Vec<String> =
        round.checks.iter().map(|c| format!("{} {}.{}", c.class.as_str(), c.suite, c.check)).collect();
    assert_eq!(
        names,
        [
            "P0 health.status",
            "P0 health.fields",
            "P0 auth.token_verifies",
            "P0 auth.bad_signature_rejected",
            "P0 auth.siwe_bad_signature_4xx",
            "P0 chat.session_created",
            "P0 chat.empty_prompt_4xx",
            "P1 fleet.spawn_requires_auth",
            "P1 fleet.capabilities_listed",
            "P1 reputation.query_answers",
            "P1 reputation.population_admin_only",
            "P0 governance.no_key_401",
            "P0 governance.wrong_key_403",
            "P0 governance.admin_key_200",
            "P1 reputation.persists_across_restart",
        ]
    );
    // Nothing a round keeps or logs holds a secret.
    let kept = format!("{:?}{:?}", round, table(&round, 3));
    for secret in [JWT_KEY, ADMIN_KEY, "eyJ"] {
        assert!(!kept.contains(secret), "{secret} in {kept}");
    }
}

#[tokio::test]
async fn each_suite_fails_on_what_it_must_not_accept() {
    let dixie: Shared = Default::default();
    let base = serve(dixie.clone()).await;
    let dir = std::env::temp_dir().join(format!("runbook-smoke-wrong-{}", std::process::id()));
    let cx = context(&dir).await;
    {
        let mut d = dixie.lock().unwrap();
        d.governance_open = true;
        d.chat_takes_empty = true;
        d.health_status = "degraded";
    }
    let round = params(&base, "").round(&cx, &keys(), &[], 1).await;
    let open = ["P0 governance.no_key_401", "P0 governance.wrong_key_403"];
    assert_eq!(failed(&round), [&["P0 health.status", "P0 chat.empty_prompt_4xx"][..], &open].concat());
    assert!(!round.green && round.streak == 0);
    let governance = round.checks.iter().find(|c| c.check == "no_key_401").unwrap();
    assert_eq!(governance.seen, "HTTP 200 (want 401)");
    // A key Dixie does not sign with: the token is refused, and the verdict says what that means.
    let other = Keys { jwt: Signer::Hs256(Secret::new("x".repeat(64))), admin: Secret::new("wrong-admin".into()) };
    {
        let mut d = dixie.lock().unwrap();
        (d.health_status, d.governance_open) = ("healthy", false);
    }
    let round = params(&base, "").round(&cx, &other, &[], 1).await;
    let verify = round.checks.iter().find(|c| c.check == "token_verifies").unwrap();
    assert_eq!(verify.seen, "HTTP 401 for a token made from the key in SSM: Dixie signs with another key?");
    assert!(failed(&round).contains(&"P0 governance.admin_key_200".to_string()));
    // Nothing answers: every check fails, naming the connection.
    let round = params("http://127.0.0.1:9", "").round(&cx, &keys(), &[], 1).await;
    assert!(round.checks.iter().filter(|c| c.class == SmokeClass::P0).all(|c| !c.pass));
    assert!(round.checks[0].seen.starts_with("GET /api/health: "), "{}", round.checks[0].seen);
}

#[test]
fn persistence_is_judged_only_across_a_restart_and_says_so() {
    let seen = |uptime: u64, score: &str| -> BTreeMap<String, String> {
        [("dixie_uptime_s".to_string(), uptime.to_string()), ("reputation_score".to_string(), score.to_string())].into()
    };
    let round = |n: u32, uptime: u64, score: &str| Round {
        round: n,
        green: true,
        streak: n,
        checks: Vec::new(),
        seen: seen(uptime, score),
        at_ms: 0,
        took_ms: 0,
    };
    let key = "nft:k";
    assert_eq!(
        persistence(key, &seen(120, "0.75"), &[round(1, 100, "0.75")]).unwrap(),
        "nft:k: score 0.75; not proven yet: no restart of Dixie's task seen between rounds"
    );
    assert_eq!(
        persistence(key, &seen(3, "0.75"), &[round(1, 100, "0.75"), round(2, 130, "0.75")]).unwrap(),
        "nft:k: score 0.75 before the restart (round 2) and after it (round 3, now)"
    );
    assert_eq!(
        persistence(key, &seen(3, "null"), &[round(1, 100, "0.75")]).unwrap_err(),
        "nft:k: score 0.75 in round 1 before Dixie's task restarted, null now: not persisted"
    );
    // A restart two rounds ago is still the one judged.
    assert!(persistence(key, &seen(40, "0.75"), &[round(1, 100, "0.75"), round(2, 10, "0.75")]).is_ok());
    assert!(persistence(key, &seen(40, "0.5"), &[round(1, 100, "0.75"), round(2, 10, "0.75")]).is_err());
}

#[test]
fn the_gate_stands_by_its_last_streak_and_the_rounds_left() {
    let rounds = |streaks: &[u32]| -> Vec<Round> {
        streaks
            .iter()
            .enumerate()
            .map(|(i, s)| Round {
                round: i as u32 + 1,
                green: *s > 0,
                streak: *s,
                checks: Vec::new(),
                seen: BTreeMap::new(),
                at_ms: 0,
                took_ms: 0,
            })
            .collect()
    };
    assert_eq!(standing(&[], 3, 10), Standing::Going { streak: 0, left: 10 });
    assert_eq!(standing(&rounds(&[1, 0, 1, 2, 3]), 3, 10), Standing::Passed);
    assert_eq!(standing(&rounds(&[1, 2, 0]), 3, 5), Standing::Failed { streak: 0 });
    assert_eq!(standing(&rounds(&[1, 2, 0]), 3, 6), Standing::Going { streak: 0, left: 3 });
    assert_eq!(standing(&rounds(&[0, 0, 1]), 3, 5), Standing::Going { streak: 1, left: 2 });
}

// ---- the gate through the engine, its rounds in a SQLite state file ------------------------

struct Gate {
    dir: PathBuf,
    state: PathBuf,
    runbook: Arc<Runbook>,
    services: Arc<Services>,
    run: i64,
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A run of a runbook whose one step is the gate against `base`, no spacing unless `extra` says.
async fn gate(name: &str, base: &str, extra: &str) -> Gate {
    let extra =
        if extra.contains("spacing_seconds") { extra.to_string() } else { format!("spacing_seconds = 0\n{extra}") };
    // The keys' homes for these tests: variables of the test process (the same in every test).
    unsafe {
        std::env::set_var("RUNBOOK_SMOKE_TEST_JWT_KEY", JWT_KEY);
        std::env::set_var("RUNBOOK_SMOKE_TEST_ADMIN_KEY", ADMIN_KEY);
    }
    let dir = std::env::temp_dir().join(format!("runbook-smoke-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        "name = \"smoke\"\n[[steps]]\nid = \"smoke\"\ntitle = \"Smoke gate\"\nkind = \"smoke\"\n[steps.params]\n\
         base_url = \"{base}\"\njwt_key = {{ env = \"RUNBOOK_SMOKE_TEST_JWT_KEY\" }}\n\
         admin_key = {{ env = \"RUNBOOK_SMOKE_TEST_ADMIN_KEY\" }}\n{extra}\n"
    );
    let env: crate::environment::Environment =
        toml::from_str("name = \"t\"\naccount_id = \"0\"\nregion = \"us-east-1\"\nloopback_only = true\n").unwrap();
    let file = NamedFile { path: dir.join("smoke.toml"), hash: sha256_hex(text.as_bytes()), text };
    let runbook = Runbook::from_file(crate::steps::KINDS, file, "smoke", &env, &BTreeMap::new()).unwrap();
    let state = dir.join("state.db");
    let mut db = StateDb::open(&state).unwrap();
    let vars = BTreeMap::new();
    let steps = ["smoke".to_string()];
    let new = NewRun {
        runbook: "smoke",
        env: "t",
        runbook_hash: "h",
        inputs_hash: "i",
        vars: &vars,
        operator: "tester",
        host: "here",
        steps: &steps,
    };
    let run = db.create_run(&new).unwrap();
    let mut services = crate::steps::test_services(&dir, &dir).await;
    Arc::get_mut(&mut services).unwrap().run = Some(run);
    Gate { dir, state, runbook: Arc::new(runbook), services, run }
}

impl Gate {
    /// Runs (or resumes) the run; `stop_after` rounds recorded, the process "dies".
    async fn run(&self, stop_after: Option<usize>) -> (RunState, Vec<Event>) {
        let mut db = StateDb::open(&self.state).unwrap();
        let me = Holder::me("here");
        db.acquire_lock(&me).unwrap();
        db.lock_run(&me, self.run).unwrap();
        let progress = db.progress(self.run).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let recorder = Recorder::new(Some((StateHandle::spawn(db), self.run)), tx);
        let engine = Engine {
            runbook: self.runbook.clone(),
            services: self.services.clone(),
            recorder: recorder.clone(),
            retry: RetryPolicy::default(),
        };
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let status = {
            let watch = async {
                // The "kill": the engine's future is dropped once enough rounds are recorded.
                let mut rounds = 0;
                loop {
                    let Some(e) = seen_rx.recv().await else { return std::future::pending().await };
                    if matches!(e, Event::SmokeRound { .. }) {
                        rounds += 1;
                        if Some(rounds) == stop_after {
                            return;
                        }
                    }
                }
            };
            let forward = async {
                while let Some(e) = rx.recv().await {
                    let _ = seen_tx.send(e);
                }
            };
            tokio::select! {
                status = engine.run(progress, std::future::pending()) => status,
                () = watch => RunState::Interrupted,
                () = forward => unreachable!("the recorder outlives the run"),
            }
        };
        drop((engine, recorder));
        let events = self.events();
        (status, events)
    }

    /// The events recorded for the run, oldest first.
    fn events(&self) -> Vec<Event> {
        let db = StateDb::open(&self.state).unwrap();
        db.events_by_kind(Some(self.run), &["smoke_round", "step_done", "step_failed", "step_started"])
            .unwrap()
            .into_iter()
            .map(|e| e.event.unwrap())
            .collect()
    }

    fn rounds(&self) -> Vec<(u32, bool, u32, u32)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::SmokeRound { round, green, streak, attempt, .. } => Some((round, green, streak, attempt)),
                _ => None,
            })
            .collect()
    }

    fn step(&self) -> crate::state::StepRow {
        StateDb::open(&self.state).unwrap().steps(self.run).unwrap().remove(0)
    }
}

#[tokio::test]
async fn a_flapping_check_needs_five_rounds_for_three_consecutive_greens() {
    let dixie: Shared = Default::default();
    // The token's verify answers 503 in the second round only.
    dixie.lock().unwrap().verify_fails = vec![false, true, false, false, false];
    let base = serve(dixie.clone()).await;
    let g = gate("flap", &base, "").await;
    let (status, _) = g.run(None).await;
    assert_eq!(status, RunState::Done);
    let rounds: Vec<(u32, bool, u32)> = g.rounds().into_iter().map(|(r, green, s, _)| (r, green, s)).collect();
    assert_eq!(rounds, [(1, true, 1), (2, false, 0), (3, true, 1), (4, true, 2), (5, true, 3)]);
    let row = g.step();
    assert_eq!(row.state, StepState::Applied);
    assert_eq!(row.warnings, Vec::<String>::new());
    let outputs = StateDb::open(&g.state).unwrap().outputs(g.run).unwrap().remove("smoke").unwrap();
    assert_eq!(outputs["green_rounds"], "3 of 3");
    assert_eq!(outputs["rounds"], "5");
    // Each round's table is in the step's log, the red one naming its failure.
    let log = StateDb::open(&g.state).unwrap().attempts(g.run, "smoke").unwrap().remove(0).log;
    assert!(log.contains("round 2: RED (0 of 3 green rounds), checks took "), "{log}");
    assert!(log.contains("P0 auth.token_verifies"), "{log}");
    assert!(log.contains("FAIL HTTP 503 for a token made from the key in SSM"), "{log}");
    // No secret reached the state file.
    let bytes = std::fs::read(&g.state).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    for secret in [JWT_KEY, ADMIN_KEY, "eyJhbGci"] {
        assert!(!text.contains(secret), "{secret} is in the state DB");
    }
}

#[tokio::test]
async fn a_p1_failure_warns_and_the_gate_passes() {
    let dixie: Shared = Default::default();
    dixie.lock().unwrap().capabilities_fail = true;
    let base = serve(dixie.clone()).await;
    let g = gate("p1", &base, "").await;
    let (status, _) = g.run(None).await;
    assert_eq!(status, RunState::Done);
    assert_eq!(g.rounds().len(), 3, "every round green: three rounds");
    assert_eq!(
        g.step().warnings,
        ["P1 fleet.capabilities_listed failed in rounds 1, 2, 3: HTTP 500 (want 200 with the capabilities)"]
    );
}

#[tokio::test]
async fn a_red_round_that_leaves_too_few_rounds_fails_naming_the_p0_checks() {
    let dixie: Shared = Default::default();
    dixie.lock().unwrap().verify_fails = vec![false, false, true];
    let base = serve(dixie.clone()).await;
    let g = gate("red", &base, "max_rounds = 5").await;
    let (status, _) = g.run(None).await;
    assert_eq!(status, RunState::Failed);
    assert_eq!(g.rounds().len(), 3, "after round 3 two rounds are left: three in a row cannot be made");
    let row = g.step();
    assert_eq!(
        row.last_error.as_deref(),
        Some(
            "smoke gate failed: 0 of 3 green rounds after 3 rounds (max_rounds); P0 checks that failed: auth.token_verifies"
        )
    );
    assert!(row.fix.unwrap().contains("runbook logs smoke"));
}

#[tokio::test]
async fn a_kill_between_rounds_resumes_with_the_rounds_already_recorded() {
    let dixie: Shared = Default::default();
    let base = serve(dixie.clone()).await;
    // A second between rounds: the "kill" comes while the gate waits for round 3.
    let g = gate("kill", &base, "spacing_seconds = 1").await;
    let (status, _) = g.run(Some(2)).await;
    assert_eq!(status, RunState::Interrupted);
    assert_eq!(g.rounds().len(), 2);
    assert!(g.step().in_doubt, "killed after its intent, before its outcome");
    let status = crate::status::view(&StateDb::open(&g.state).unwrap(), Some(g.run), "here").unwrap();
    assert_eq!(status.steps[0].gate.as_deref(), Some("2 of 3 green rounds after 2 rounds (last: round 2)"));
    let (status, _) = g.run(None).await;
    assert_eq!(status, RunState::Done);
    assert_eq!(
        g.rounds(),
        [(1, true, 1, 1), (2, true, 2, 1), (3, true, 3, 2)],
        "the resume (attempt 2) ran one round, the third"
    );
}

#[tokio::test]
async fn killed_after_its_last_round_the_gate_is_settled_by_its_rounds_without_another() {
    let dixie: Shared = Default::default();
    let base = serve(dixie.clone()).await;
    let g = gate("kill-late", &base, "").await;
    // What a kill after round 3 was recorded, before the step's outcome, leaves.
    let mut db = StateDb::open(&g.state).unwrap();
    let step = || "smoke".to_string();
    db.record(Some(g.run), &Event::StepStarted { step: step(), attempt: 1, title: "t".into(), in_doubt: false })
        .unwrap();
    db.record(Some(g.run), &Event::StepIntent { step: step(), attempt: 1, action: "rounds".into() }).unwrap();
    for round in 1..=3 {
        let event = Event::SmokeRound {
            step: step(),
            attempt: 1,
            round,
            green: true,
            streak: round,
            consecutive: 3,
            checks: Vec::new(),
            seen: BTreeMap::new(),
            at_ms: 0,
        };
        db.record(Some(g.run), &event).unwrap();
    }
    drop(db);
    assert!(g.step().in_doubt);
    assert_eq!(g.run(None).await.0, RunState::Done);
    assert!(dixie.lock().unwrap().requests.is_empty(), "no round after the gate had passed");
    assert_eq!(g.step().state, StepState::Satisfied);
    assert_eq!(g.rounds().len(), 3);
}

#[tokio::test]
async fn dixie_off_the_loopback_ring_is_refused_before_anything_runs() {
    let dir = std::env::temp_dir().join(format!("runbook-smoke-dial-{}", std::process::id()));
    let cx = context(&dir).await;
    let err = checks::dial(&cx.env, "http://10.0.0.5").unwrap_err();
    assert!(err.contains("10.0.0.5:80 is not a loopback address"), "{err}");
    match Step::preflight(&params("http://10.0.0.5", ""), &cx).await {
        Err(StepError::Fatal { message, fix }) => {
            assert!(message.starts_with("base_url: 10.0.0.5:80 is not a loopback address"), "{message}");
            assert!(fix.unwrap().contains("add Dixie's host to [address_map]"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn params_that_cannot_make_a_gate_are_refused_before_anything_runs() {
    let refused = |extra: &str| {
        let text = format!(
            "base_url = \"http://127.0.0.1:1\"\njwt_key = {{ ssm = \"/dixie/armitage/DIXIE_JWT_PRIVATE_KEY\" }}\n\
             admin_key = {{ ssm = \"/dixie/armitage/DIXIE_ADMIN_KEY\" }}\n{extra}"
        );
        match toml::from_str::<Params>(&text) {
            Ok(p) => Step::validate(&p).unwrap_err(),
            Err(e) => e.to_string(),
        }
    };
    assert!(refused("consecutive = 0").contains("consecutive = 0: the gate needs 1 to 100"));
    assert!(refused("max_rounds = 2").contains("max_rounds = 2 is fewer than consecutive = 3"));
    assert!(refused("spacing_seconds = 90000").contains("longer than a day"));
    assert!(refused("p1 = [\"smoke\"]").contains("unknown variant `smoke`"));
    assert!(refused("p1 = [\"fleet\", \"fleet\"]").contains("p1 names fleet twice"));
    let all = "p1 = [\"health\", \"auth\", \"chat\", \"fleet\", \"reputation\", \"governance\"]";
    assert!(refused(all).contains("a round with no P0 check is green with no evidence"));
    assert!(refused("wallet = \"0x12\"").contains("is not an address"));
    assert!(refused("health = \"finn\"").contains("judges Dixie's health"));
}
