//! `runbook watch`: 002's monitoring recommendations as a command. It polls Dixie's
//! `/api/health` and Finn's `/health` (the environment's `dixie_health_url` and
//! `finn_health_url`, dialled through its address map), judges each poll (the verdict, Dixie's
//! status and each component's, Finn's latency and circuit as Dixie sees them, Finn's own
//! status) and what changed since the one before, and hands both to the sink its caller gives
//! (`render/oncall.rs` prints them); each poll's transitions are posted to the environment's
//! webhook, if it names one. It never prints.
//!
//! Verdicts: `unhealthy` (alert) when Dixie is unreachable, answers an error or says
//! `unhealthy`, Finn is unreachable or its circuit is open; `degraded` (warn) when anything
//! else is not right: a component down, a half-open circuit, Finn's own status, Finn's
//! latency over 500 ms; otherwise `healthy`. The bodies are judged by `health::judge`, as the
//! deploy steps judge them, with nothing tolerated. Read-only: it changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::clock::{format_utc, format_utc_ms, now_ms};
use crate::environment::Environment;
use crate::health::{HealthPolicy, HealthRule, judge};
use crate::notify::Notifier;

/// 002: "Track `services.loa_finn.latency_ms` for performance regression detection"; its
/// on-call warning threshold.
pub(crate) const LATENCY_WARN_MS: u64 = 500;

/// 002: "Poll `/api/health` every 30 seconds".
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Verdict {
    Healthy,
    Degraded,
    Unhealthy,
}

impl Verdict {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Degraded => "degraded",
            Verdict::Unhealthy => "unhealthy",
        }
    }

    /// `watch --once`'s exit code: 0 healthy, 1 degraded (warn), 4 unhealthy (alert); 2 stays
    /// bad input, as for every command.
    pub(crate) fn exit_code(self) -> i32 {
        match self {
            Verdict::Healthy => 0,
            Verdict::Degraded => 1,
            Verdict::Unhealthy => 4,
        }
    }
}

/// What one poll saw.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Poll {
    pub(crate) at: i64,
    pub(crate) time: String,
    pub(crate) verdict: Verdict,
    /// Dixie's top-level status, or `unreachable`.
    pub(crate) dixie: String,
    /// Each infrastructure component Dixie reports, with its status.
    pub(crate) components: BTreeMap<String, String>,
    /// Finn's latency as Dixie measures it (`services.loa_finn.latency_ms`), as reported.
    pub(crate) finn_latency_ms: Option<f64>,
    /// Finn's circuit in Dixie, lower case.
    pub(crate) finn_circuit: Option<String>,
    /// Finn's own `/health` status, or `unreachable`.
    pub(crate) finn: String,
    /// Why it is not healthy, one reason each.
    pub(crate) reasons: Vec<String>,
}

/// A change between two polls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Transition {
    /// What changed: `dixie`, a component's name, `finn circuit`, `finn latency`, `finn`.
    pub(crate) subject: String,
    pub(crate) from: String,
    pub(crate) to: String,
    /// One line: `redis healthy → unreachable`.
    pub(crate) what: String,
}

/// A GET's answer: HTTP status and JSON body, an answer whose body is not JSON (its status
/// and how it starts), or why there is none.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Json(u16, Value),
    NotJson { status: u16, start: String },
    Unreachable(String),
}

/// How much of a body that is not JSON is quoted.
const QUOTED_CHARS: usize = 120;

/// The verdict of one poll's two answers. Pure.
pub(crate) fn assess(at: i64, dixie: Answer, finn: Answer) -> Poll {
    let mut reasons = Vec::new();
    let mut unhealthy = false;
    let mut poll = Poll {
        at,
        time: format_utc_ms(at),
        verdict: Verdict::Healthy,
        dixie: "unreachable".into(),
        components: BTreeMap::new(),
        finn_latency_ms: None,
        finn_circuit: None,
        finn: "unreachable".into(),
        reasons: Vec::new(),
    };
    match dixie {
        Answer::Json(code, body) => {
            poll.dixie = body["status"].as_str().unwrap_or("missing").to_string();
            if let Some(infra) = body["infrastructure"].as_object() {
                for (name, component) in infra {
                    let status = component["status"].as_str().unwrap_or("missing");
                    poll.components.insert(name.clone(), status.to_string());
                }
            }
            let finn = &body["services"]["loa_finn"];
            match crate::health::finn_latency_ms(&body) {
                Ok(ms) => poll.finn_latency_ms = Some(ms),
                // Absent when Finn is unreachable; anything else there is not a latency.
                Err(_) if finn["latency_ms"].is_null() => {}
                Err(why) => reasons.push(format!("dixie {why}")),
            }
            poll.finn_circuit = finn["circuit_state"].as_str().map(|c| c.to_ascii_lowercase());
            let verdict = judge(&HealthPolicy::strict(HealthRule::Dixie), code, &body);
            if !verdict.ok {
                reasons.push(format!("dixie: {}", verdict.summary));
            }
            unhealthy |= !(200..300).contains(&code)
                || poll.dixie == "unhealthy"
                || poll.finn_circuit.as_deref() == Some("open");
        }
        Answer::NotJson { status, start } => {
            poll.dixie = format!("HTTP {status}, not JSON");
            reasons.push(format!("dixie answered HTTP {status} with a body that is not JSON: {start:?}"));
            unhealthy = true;
        }
        Answer::Unreachable(e) => {
            reasons.push(format!("dixie unreachable: {e}"));
            unhealthy = true;
        }
    }
    match finn {
        Answer::Json(code, body) => {
            poll.finn = body["status"].as_str().unwrap_or("missing").to_string();
            let verdict = judge(&HealthPolicy::strict(HealthRule::Finn), code, &body);
            if !verdict.ok {
                reasons.push(format!("finn: {}", verdict.summary));
            }
        }
        Answer::NotJson { status, start } => {
            poll.finn = format!("HTTP {status}, not JSON");
            reasons.push(format!("finn answered HTTP {status} with a body that is not JSON: {start:?}"));
            unhealthy = true;
        }
        Answer::Unreachable(e) => {
            reasons.push(format!("finn unreachable: {e}"));
            unhealthy = true;
        }
    }
    if let Some(ms) = poll.finn_latency_ms.filter(|ms| *ms > LATENCY_WARN_MS as f64) {
        reasons.push(format!("finn latency {ms} ms, over {LATENCY_WARN_MS} ms"));
    }
    poll.verdict = match (unhealthy, reasons.is_empty()) {
        (true, _) => Verdict::Unhealthy,
        (false, true) => Verdict::Healthy,
        (false, false) => Verdict::Degraded,
    };
    poll.reasons = reasons;
    poll
}

/// What changed from `before` to `now`: Dixie's status, each component (one that disappears
/// from the body reads `absent`), Finn's circuit, Finn's latency crossing 500 ms either way,
/// Finn's own status.
pub(crate) fn transitions(before: &Poll, now: &Poll) -> Vec<Transition> {
    let mut out = Vec::new();
    let mut changed = |subject: &str, from: &str, to: &str, note: &str| {
        if from != to {
            out.push(Transition {
                subject: subject.to_string(),
                from: from.to_string(),
                to: to.to_string(),
                what: format!("{subject} {from} → {to}{note}"),
            });
        }
    };
    changed("dixie", &before.dixie, &now.dixie, "");
    let names: BTreeSet<&String> = before.components.keys().chain(now.components.keys()).collect();
    for name in names {
        let status = |p: &Poll| p.components.get(name).cloned().unwrap_or_else(|| "absent".into());
        changed(name, &status(before), &status(now), "");
    }
    let circuit = |p: &Poll| p.finn_circuit.clone().unwrap_or_else(|| "unknown".into());
    changed("finn circuit", &circuit(before), &circuit(now), "");
    let over = |p: &Poll| p.finn_latency_ms.is_some_and(|ms| ms > LATENCY_WARN_MS as f64);
    if over(before) != over(now) {
        let ms = |p: &Poll| p.finn_latency_ms.map(|ms| format!("{ms} ms")).unwrap_or_else(|| "unknown".into());
        let note = if over(now) {
            format!(" (over {LATENCY_WARN_MS} ms)")
        } else {
            format!(" (back under {LATENCY_WARN_MS} ms)")
        };
        changed("finn latency", &ms(before), &ms(now), &note);
    }
    changed("finn", &before.finn, &now.finn, "");
    out
}

/// The environment's two health URLs.
pub(crate) struct Targets {
    pub(crate) dixie: String,
    pub(crate) finn: String,
}

impl Targets {
    /// From the environment's `vars`; an error names what to add.
    pub(crate) fn of(env: &Environment) -> Result<Targets, String> {
        let var = |name: &str| -> Result<String, String> {
            let url = env.vars.get(name).filter(|u| !u.is_empty()).ok_or_else(|| {
                format!(
                    "environment {} names no {name}; add it under [vars] in {} (e.g. {name} = \
                     \"https://dixie-armitage.arrakis.community/api/health\")",
                    env.name,
                    env.path.display()
                )
            })?;
            let parsed = reqwest::Url::parse(url).ok().filter(|u| matches!(u.scheme(), "http" | "https"));
            match parsed {
                Some(u) if u.host_str().is_some() => Ok(url.clone()),
                _ => Err(format!("{name} = {url:?} in {} is not an http:// or https:// URL", env.path.display())),
            }
        };
        Ok(Targets { dixie: var("dixie_health_url")?, finn: var("finn_health_url")? })
    }
}

/// GET `url` through the environment's address map; the JSON body whatever the status
/// (Dixie answers 200 when unhealthy), or what it answered when that is not JSON.
pub(crate) async fn get(env: &Environment, url: &str) -> Answer {
    match fetch(env, url).await {
        Ok((status, body)) => match serde_json::from_str(&body) {
            Ok(json) => Answer::Json(status, json),
            Err(_) => Answer::NotJson { status, start: body.chars().take(QUOTED_CHARS).collect() },
        },
        Err(e) => Answer::Unreachable(e),
    }
}

/// GET `url`: its status and body, or why there is none.
async fn fetch(env: &Environment, url: &str) -> Result<(u16, String), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    let host = parsed.host_str().ok_or_else(|| format!("{url} names no host"))?.to_string();
    let addr = env.dial(&host, parsed.port_or_known_default().unwrap_or(443))?;
    let client = reqwest::Client::builder().resolve(&host, addr).timeout(TIMEOUT).build().map_err(|e| e.to_string())?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", crate::error_chain::error_chain(&e.without_url())))?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(|e| format!("GET {url}: {e}"))?;
    Ok((status, body))
}

/// `30s`, `500ms`, `2m`, or a number of seconds; at least 100 ms.
pub(crate) fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().map_err(|_| format!("--interval {text}: write e.g. 30s, 500ms or 2m"))?;
    let interval = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("--interval {text}: write e.g. 30s, 500ms or 2m")),
    };
    if interval < Duration::from_millis(100) {
        return Err(format!("--interval {text}: poll at most every 100 ms (002 recommends 30s)"));
    }
    Ok(interval)
}

/// Where each poll goes as it is seen: the caller's rendering (`render/oncall.rs` prints it).
pub(crate) trait Sink {
    /// A poll, and what changed since the one before (nothing, for the first).
    fn seen(&mut self, poll: &Poll, transitions: &[Transition]);
    /// The webhook could not be told: said once, and watching goes on.
    fn notify_failed(&mut self, error: &str);
}

/// Polls every `interval` (the first at once) until `shutdown` completes or, when given,
/// after `max_polls`: each poll goes to `sink`, its transitions to `notifier` (a webhook that
/// fails is told to `sink` the first time only). The verdict of the last poll.
pub(crate) async fn watch(
    env: &Environment,
    targets: &Targets,
    interval: Duration,
    max_polls: Option<u32>,
    notifier: Option<&Notifier>,
    shutdown: impl Future<Output = ()>,
    sink: &mut impl Sink,
) -> Option<Verdict> {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut last: Option<Poll> = None;
    let mut polls = 0;
    let mut notify_failed = false;
    loop {
        if max_polls.is_some_and(|max| polls >= max) {
            break;
        }
        let poll = tokio::select! {
            _ = &mut shutdown => break,
            poll = async {
                tick.tick().await;
                let (dixie, finn) = tokio::join!(get(env, &targets.dixie), get(env, &targets.finn));
                assess(now_ms(), dixie, finn)
            } => poll,
        };
        polls += 1;
        let changes = last.as_ref().map(|before| transitions(before, &poll)).unwrap_or_default();
        sink.seen(&poll, &changes);
        if !changes.is_empty()
            && let Some(notifier) = notifier
            && let Err(e) = notifier.send(&transition_message(&env.name, &poll, &changes)).await
            && !notify_failed
        {
            notify_failed = true;
            sink.notify_failed(&e);
        }
        last = Some(poll);
    }
    last.map(|p| p.verdict)
}

/// The webhook's text for one poll's transitions.
fn transition_message(env: &str, poll: &Poll, transitions: &[Transition]) -> String {
    let what: Vec<&str> = transitions.iter().map(|t| t.what.as_str()).collect();
    format!("runbook watch ({env}, {}): {}; now {}", format_utc(poll.at), what.join("; "), poll.verdict.as_str())
}

#[cfg(test)]
mod tests;
