//! Verdicts and transitions from health bodies, and the loop against stand-ins on loopback
//! whose answers change between polls, with the webhook told of each transition. How the
//! polls are printed is tested with the printer, in `render/oncall.rs`.

use serde_json::json;

use super::*;
use crate::notify::tests::{Loopback, environment};

fn dixie(status: &str, circuit: &str, latency: u64, infra: Value) -> Answer {
    Answer::Json(
        200,
        json!({"status": status, "services": {"loa_finn": {"status": "healthy", "latency_ms": latency, "circuit_state": circuit}},
               "infrastructure": infra}),
    )
}

fn infra(redis: &str, nats: &str) -> Value {
    json!({"postgresql": {"status": "healthy"}, "redis": {"status": redis}, "nats": {"status": nats}})
}

fn finn_ok() -> Answer {
    Answer::Json(200, json!({"status": "healthy"}))
}

#[test]
fn verdicts_follow_002s_status_logic_and_name_the_cause() {
    let healthy = assess(0, dixie("healthy", "closed", 12, infra("healthy", "connected")), finn_ok());
    assert_eq!((healthy.verdict, healthy.reasons.len()), (Verdict::Healthy, 0), "{healthy:?}");
    assert_eq!(healthy.finn_latency_ms, Some(12.0));
    let with_latency = |ms: Value| {
        let mut answer = dixie("healthy", "closed", 0, infra("healthy", "connected"));
        if let Answer::Json(_, body) = &mut answer {
            body["services"]["loa_finn"]["latency_ms"] = ms;
        }
        assess(0, answer, finn_ok())
    };
    let just_over = with_latency(json!(500.4));
    assert_eq!(just_over.reasons, ["finn latency 500.4 ms, over 500 ms"], "the value reported, not a rounded one");
    let text = with_latency(json!("12"));
    assert_eq!(
        text.reasons,
        ["dixie reports services.loa_finn.latency_ms as a string (\"12\"), not a number of milliseconds"]
    );
    assert_eq!((text.verdict, text.finn_latency_ms), (Verdict::Degraded, None));
    assert_eq!(with_latency(json!(-500)).verdict, Verdict::Degraded, "a negative latency is not evidence");

    // Sprint 2 on the ring: NATS has no rule yet. watch tolerates nothing.
    let nats = assess(0, dixie("degraded", "closed", 12, infra("healthy", "unreachable")), finn_ok());
    assert_eq!(nats.verdict, Verdict::Degraded);
    assert_eq!(nats.reasons, ["dixie: status degraded, finn circuit closed, nats unreachable"]);

    let open = assess(0, dixie("unhealthy", "OPEN", 0, infra("healthy", "connected")), finn_ok());
    assert_eq!((open.verdict, open.finn_circuit.as_deref()), (Verdict::Unhealthy, Some("open")));

    let slow = assess(0, dixie("healthy", "closed", 640, infra("healthy", "connected")), finn_ok());
    assert_eq!(slow.verdict, Verdict::Degraded);
    assert_eq!(slow.reasons, ["finn latency 640 ms, over 500 ms"]);

    let gone = assess(0, Answer::Unreachable("GET http://d/api/health: connection refused".into()), finn_ok());
    assert_eq!((gone.verdict, gone.dixie.as_str()), (Verdict::Unhealthy, "unreachable"));
    assert_eq!(gone.reasons, ["dixie unreachable: GET http://d/api/health: connection refused"]);

    let error = assess(0, Answer::Json(503, json!({"status": "healthy"})), finn_ok());
    assert_eq!(error.verdict, Verdict::Unhealthy, "an error status is never healthy");

    let finn_down =
        assess(0, dixie("healthy", "closed", 12, infra("healthy", "connected")), Answer::Unreachable("refused".into()));
    assert_eq!((finn_down.verdict, finn_down.finn.as_str()), (Verdict::Unhealthy, "unreachable"));
    assert_eq!([Verdict::Healthy, Verdict::Degraded, Verdict::Unhealthy].map(Verdict::exit_code), [0, 1, 4]);
}

#[test]
fn an_answer_that_is_not_json_is_an_answer_and_says_what_it_was() {
    let html = Answer::NotJson { status: 200, start: "<html>maintenance</html>".into() };
    let poll = assess(0, html, finn_ok());
    assert_eq!((poll.verdict, poll.dixie.as_str()), (Verdict::Unhealthy, "HTTP 200, not JSON"));
    assert_eq!(poll.reasons, ["dixie answered HTTP 200 with a body that is not JSON: \"<html>maintenance</html>\""]);
    assert!(!poll.reasons[0].contains("unreachable"), "it answered: {poll:?}");
    let finn = assess(
        0,
        dixie("healthy", "closed", 12, infra("healthy", "connected")),
        Answer::NotJson { status: 502, start: "Bad Gateway".into() },
    );
    assert_eq!(finn.finn, "HTTP 502, not JSON");
    assert_eq!(finn.verdict, Verdict::Unhealthy);
}

#[test]
fn a_body_without_the_components_dixie_reports_is_not_healthy() {
    let bare = assess(0, dixie("healthy", "closed", 12, json!({})), finn_ok());
    assert_eq!(bare.verdict, Verdict::Degraded);
    assert_eq!(
        bare.reasons,
        ["dixie: status healthy, finn circuit closed, nats absent, postgresql absent, redis absent"]
    );
    let no_nats = assess(
        0,
        dixie("healthy", "closed", 12, json!({"postgresql": {"status": "healthy"}, "redis": {"status": "healthy"}})),
        finn_ok(),
    );
    assert_eq!(no_nats.reasons, ["dixie: status healthy, finn circuit closed, nats absent"]);
}

#[test]
fn transitions_name_each_change_and_only_changes() {
    let at = |d: Answer, f: Answer| assess(0, d, f);
    let healthy = at(dixie("healthy", "closed", 12, infra("healthy", "connected")), finn_ok());
    assert_eq!(transitions(&healthy, &healthy), []);
    let redis_down = at(dixie("degraded", "closed", 12, infra("unreachable", "connected")), finn_ok());
    let what = |a: &Poll, b: &Poll| transitions(a, b).into_iter().map(|t| t.what).collect::<Vec<_>>();
    assert_eq!(what(&healthy, &redis_down), ["dixie healthy → degraded", "redis healthy → unreachable"]);
    assert_eq!(what(&redis_down, &healthy), ["dixie degraded → healthy", "redis unreachable → healthy"]);
    let open = at(dixie("unhealthy", "OPEN", 0, infra("healthy", "connected")), Answer::Unreachable("refused".into()));
    assert_eq!(
        what(&healthy, &open),
        ["dixie healthy → unhealthy", "finn circuit closed → open", "finn healthy → unreachable"]
    );
    let slow = at(dixie("healthy", "closed", 640, infra("healthy", "connected")), finn_ok());
    assert_eq!(what(&healthy, &slow), ["finn latency 12 ms → 640 ms (over 500 ms)"]);
    assert_eq!(what(&slow, &healthy), ["finn latency 640 ms → 12 ms (back under 500 ms)"]);
    let slower = at(dixie("healthy", "closed", 900, infra("healthy", "connected")), finn_ok());
    assert_eq!(what(&slow, &slower), Vec::<String>::new(), "still over: no new event");
    let unreachable = at(Answer::Unreachable("refused".into()), finn_ok());
    assert_eq!(
        what(&healthy, &unreachable),
        [
            "dixie healthy → unreachable",
            "nats connected → absent",
            "postgresql healthy → absent",
            "redis healthy → absent",
            "finn circuit closed → unknown",
        ]
    );
}

#[test]
fn intervals_read_as_operators_write_them() {
    assert_eq!(parse_interval("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_interval("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_interval("45"), Ok(Duration::from_secs(45)));
    assert!(parse_interval("10ms").unwrap_err().contains("at most every 100 ms"));
    assert!(parse_interval("soon").unwrap_err().contains("write e.g. 30s"));
    assert!(parse_interval("5h").is_err());
}

#[test]
fn an_environment_without_health_urls_is_told_what_to_add() {
    let env = environment("[vars]\ndixie_health_url = \"http://d/api/health\"").unwrap();
    let err = Targets::of(&env).err().unwrap();
    assert!(err.contains("names no finn_health_url; add it under [vars]"), "{err}");
    let env = environment("[vars]\ndixie_health_url = \"ftp://d\"\nfinn_health_url = \"http://f/health\"").unwrap();
    assert!(Targets::of(&env).err().unwrap().contains("is not an http:// or https:// URL"));
}

/// What the loop hands on: each poll with its transitions, and the webhook failures it tells.
#[derive(Default)]
struct Seen {
    polls: Vec<(Verdict, Vec<String>)>,
    notify_failed: Vec<String>,
}

impl Sink for Seen {
    fn seen(&mut self, poll: &Poll, transitions: &[Transition]) {
        self.polls.push((poll.verdict, transitions.iter().map(|t| t.what.clone()).collect()));
    }
    fn notify_failed(&mut self, error: &str) {
        self.notify_failed.push(error.to_string());
    }
}

/// A sink that also changes Dixie's answer after each poll: `next` is popped.
struct Script<'a> {
    seen: Seen,
    standins: &'a Loopback,
    next: Vec<String>,
}

impl Sink for Script<'_> {
    fn seen(&mut self, poll: &Poll, transitions: &[Transition]) {
        self.seen.seen(poll, transitions);
        if let Some(body) = self.next.pop() {
            self.standins.answer("/api/health", 200, &body);
        }
    }
    fn notify_failed(&mut self, error: &str) {
        self.seen.notify_failed(error);
    }
}

/// Stand-ins for Dixie and Finn on loopback, and an environment whose health URLs name them.
async fn standins() -> (Loopback, Environment, Targets) {
    let standins = Loopback::start().await;
    let env = environment(&format!(
        "[vars]\ndixie_health_url = \"{}\"\nfinn_health_url = \"{}\"",
        standins.url("/api/health"),
        standins.url("/health")
    ))
    .unwrap();
    let targets = Targets::of(&env).unwrap();
    standins.answer("/health", 200, r#"{"status": "healthy"}"#);
    (standins, env, targets)
}

fn dixie_body(redis: &str, circuit: &str) -> String {
    json!({"status": if redis == "healthy" { "healthy" } else { "degraded" },
           "services": {"loa_finn": {"latency_ms": 9, "circuit_state": circuit}},
           "infrastructure": {"postgresql": {"status": "healthy"}, "redis": {"status": redis}, "nats": {"status": "connected"}}})
    .to_string()
}

/// Each poll handed on with its transitions, and one webhook post per poll with transitions,
/// against stand-ins whose answers change between polls.
#[tokio::test]
async fn the_loop_hands_on_each_poll_and_posts_each_transition() {
    let (standins, env, targets) = standins().await;
    let hook = Loopback::start().await;
    standins.answer("/api/health", 200, &dixie_body("healthy", "closed"));
    let notifier = crate::notify::tests::notifier_for(&environment("").unwrap(), &hook.url("/hook/secret"));
    let mut script = Script {
        seen: Seen::default(),
        standins: &standins,
        // Popped: poll 1 sees healthy, 2 redis unreachable, 3 unreachable again, 4 healthy.
        next: vec![
            dixie_body("healthy", "closed"),
            dixie_body("unreachable", "closed"),
            dixie_body("unreachable", "closed"),
        ],
    };
    let interval = Duration::from_millis(100);
    let verdict = watch(&env, &targets, interval, Some(4), Some(&notifier), std::future::pending(), &mut script).await;
    assert_eq!(verdict, Some(Verdict::Healthy));
    let what = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        script.seen.polls,
        [
            (Verdict::Healthy, what(&[])),
            (Verdict::Degraded, what(&["dixie healthy → degraded", "redis healthy → unreachable"])),
            (Verdict::Degraded, what(&[])),
            (Verdict::Healthy, what(&["dixie degraded → healthy", "redis unreachable → healthy"])),
        ]
    );
    let posts = hook.texts("/hook/secret");
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert!(
        posts[0].starts_with("runbook watch (test, ")
            && posts[0].ends_with("): dixie healthy → degraded; redis healthy → unreachable; now degraded"),
        "{posts:?}"
    );
    assert!(posts[1].ends_with("): dixie degraded → healthy; redis unreachable → healthy; now healthy"), "{posts:?}");
    assert!(script.seen.notify_failed.is_empty());
}

#[tokio::test]
async fn a_dead_webhook_is_told_once_and_watching_goes_on() {
    let (standins, env, targets) = standins().await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let notifier = crate::notify::tests::notifier_for(&env, &format!("http://127.0.0.1:{dead}/hook/secret"));
    // Each poll flips Finn's circuit: a transition every poll after the first.
    standins.answer("/api/health", 200, &dixie_body("healthy", "closed"));
    let mut script = Script {
        seen: Seen::default(),
        standins: &standins,
        next: vec![
            dixie_body("healthy", "closed"),
            dixie_body("healthy", "open"),
            dixie_body("healthy", "closed"),
            dixie_body("healthy", "open"),
        ],
    };
    let interval = Duration::from_millis(100);
    watch(&env, &targets, interval, Some(4), Some(&notifier), std::future::pending(), &mut script).await;
    let changes: Vec<usize> = script.seen.polls.iter().map(|(_, what)| what.len()).collect();
    assert_eq!(changes, [0, 1, 1, 1], "{:?}", script.seen.polls);
    let told = &script.seen.notify_failed;
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(told[0].starts_with("POST to the webhook: ") && !told[0].contains("secret"), "{told:?}");
}
