//! The checks of one smoke round against Dixie, suite by suite (003 §6), as Dixie's own
//! staging smoke tests make them (shared/dixie-facts.md): what each sends, and what answer
//! passes. Every address goes through the environment's `dial` (loopback only on the ring);
//! the token and the admin key go into headers, never into a verdict.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Keys, Round, Signer};
use crate::environment::Environment;
use crate::health::{HealthPolicy, judge};
use crate::secret::Secret;
use crate::steps::jwt_keys::{b64url, sign_hs256};

/// The six suites of 003 §6, in its order.
pub(super) const SUITES: [&str; 6] = ["health", "auth", "chat", "fleet", "reputation", "governance"];

/// What one suite found: its checks (name, pass, what was seen), the warnings its policy
/// tolerated, and values a later round compares with.
#[derive(Default)]
pub(super) struct Found {
    pub(super) checks: Vec<(&'static str, bool, String)>,
    pub(super) warnings: Vec<String>,
    pub(super) seen: BTreeMap<String, String>,
}

impl Found {
    fn check(&mut self, name: &'static str, result: Result<String, String>) {
        match result {
            Ok(seen) => self.checks.push((name, true, seen)),
            Err(seen) => self.checks.push((name, false, seen)),
        }
    }
}

/// The address `base_url`'s host and port dial (the address map's, on the ring).
pub(super) fn dial(env: &Environment, base_url: &str) -> Result<(String, SocketAddr), String> {
    let (scheme, host, port) =
        super::reach::endpoint_of(base_url).ok_or_else(|| format!("{base_url:?} is not a URL"))?;
    let port = port.unwrap_or(if scheme == "https" { 443 } else { 80 });
    Ok((host.clone(), env.dial(&host, port)?))
}

/// An answer: its status and body (JSON when it is JSON, `Null` otherwise).
struct Answer {
    status: u16,
    body: Value,
}

/// Dixie, as one round talks to it.
pub(super) struct Dixie<'a> {
    client: reqwest::Client,
    base: String,
    wallet: &'a str,
    token: Secret<String>,
    admin: &'a Secret<String>,
}

impl<'a> Dixie<'a> {
    pub(super) fn new(
        env: &Environment,
        base_url: &str,
        timeout: Duration,
        wallet: &'a str,
        keys: &'a Keys,
    ) -> Result<Self, String> {
        let (host, addr) = dial(env, base_url)?;
        let client = reqwest::Client::builder()
            .resolve(&host, addr)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        let token = match &keys.jwt {
            Signer::Hs256(key) => mint(key, wallet, unix_now()),
            Signer::Es256(key) => key.sign(&claims(wallet, unix_now())).map_err(|e| e.0)?,
        };
        Ok(Dixie { client, base: base_url.trim_end_matches('/').to_string(), wallet, token, admin: &keys.admin })
    }

    /// Sends one request; `Err` says what failed (a refused connection, a timeout), never a header.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Result<Answer, String> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.request(method.clone(), &url);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            // reqwest's error names the URL only: no header, so no token.
            format!("{method} {path}: {}", crate::error_chain::error_chain(&e.without_url()))
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| format!("{method} {path}: {e}"))?;
        Ok(Answer { status, body: serde_json::from_str(&text).unwrap_or(Value::Null) })
    }

    async fn get(&self, path: &str, bearer: Option<&str>) -> Result<Answer, String> {
        self.send(reqwest::Method::GET, path, bearer, None).await
    }

    async fn post(&self, path: &str, bearer: Option<&str>, body: Value) -> Result<Answer, String> {
        self.send(reqwest::Method::POST, path, bearer, Some(body)).await
    }

    /// health: status and infrastructure by the health judge (T2.6's, T2.8's), then the fields
    /// 003's smoke-health names beside them: version, uptime and timestamp.
    pub(super) async fn health(&self, policy: &HealthPolicy) -> Found {
        let mut found = Found::default();
        let answer = match self.get("/api/health", None).await {
            Ok(a) => a,
            Err(e) => {
                found.check("status", Err(e.clone()));
                found.check("fields", Err(e));
                return found;
            }
        };
        let verdict = judge(policy, answer.status, &answer.body);
        let summary = format!("HTTP {}, {}", answer.status, verdict.summary.trim_start_matches("HTTP "));
        found.check("status", if verdict.ok { Ok(summary) } else { Err(summary) });
        found.warnings = verdict.warnings;
        let body = &answer.body;
        let mut missing = Vec::new();
        if !body["version"].is_string() {
            missing.push("version");
        }
        if !body["uptime_seconds"].as_f64().is_some_and(|u| u >= 0.0) {
            missing.push("uptime_seconds");
        }
        if body["services"]["dixie"]["status"].as_str() != Some("healthy") {
            missing.push("services.dixie.status healthy");
        }
        if body["timestamp"].as_str().is_none_or(|t| t.trim().is_empty()) {
            missing.push("timestamp");
        }
        if let Some(uptime) = body["uptime_seconds"].as_f64() {
            found.seen.insert("dixie_uptime_s".into(), format!("{}", uptime.floor()));
        }
        found.check(
            "fields",
            if missing.is_empty() {
                Ok(format!(
                    "version {}, uptime {} s, timestamp {}",
                    body["version"].as_str().unwrap_or_default(),
                    body["uptime_seconds"],
                    body["timestamp"].as_str().unwrap_or_default()
                ))
            } else {
                Err(format!("missing or wrong: {}", missing.join(", ")))
            },
        );
        found
    }

    /// auth: the token made from Dixie's key verifies and gives the wallet back; the same token
    /// with another signature is refused; a sign-in with a bad signature is refused with a 4xx.
    pub(super) async fn auth(&self) -> Found {
        let mut found = Found::default();
        let verified = self.get("/api/auth/verify", Some(self.token.expose())).await.and_then(|a| {
            let wallet = a.body["wallet"].as_str().unwrap_or_default();
            if a.status == 200 && wallet.eq_ignore_ascii_case(self.wallet) {
                Ok(format!("HTTP 200, wallet {wallet}"))
            } else if a.status == 200 {
                Err(format!("HTTP 200 but wallet {} (want {})", shown(&a.body["wallet"]), self.wallet))
            } else {
                Err(format!("HTTP {} for a token made from the key in SSM: Dixie signs with another key?", a.status))
            }
        });
        found.check("token_verifies", verified);
        let forged = forge(&self.token);
        found.check(
            "bad_signature_rejected",
            self.get("/api/auth/verify", Some(forged.expose())).await.and_then(refused_for_auth),
        );
        let siwe = json!({
            "message": format!("runbook smoke test wants you to sign in with your Ethereum account:\n{}", self.wallet),
            "signature": format!("0x{}", "ff".repeat(65)),
        });
        found.check(
            "siwe_bad_signature_4xx",
            self.post("/api/auth/siwe", None, siwe).await.and_then(|a| client_error(&a, "a bad signature")),
        );
        found
    }

    /// chat: a prompt opens a session (200 with a `sessionId`); an empty prompt is a 4xx.
    pub(super) async fn chat(&self) -> Found {
        let mut found = Found::default();
        let token = Some(self.token.expose().as_str());
        let session = self.post("/api/chat", token, json!({"prompt": "runbook smoke test: reply ok"})).await.and_then(
            |a| match a.body["sessionId"].as_str() {
                Some(id) if a.status == 200 && !id.is_empty() => Ok(format!("HTTP 200, sessionId {id}")),
                _ if a.status == 200 => {
                    Err(format!("HTTP 200 without a sessionId (got {})", shown(&a.body["sessionId"])))
                }
                _ => Err(format!("HTTP {} (want 200 with a sessionId)", a.status)),
            },
        );
        found.check("session_created", session);
        found.check(
            "empty_prompt_4xx",
            self.post("/api/chat", token, json!({"prompt": ""}))
                .await
                .and_then(|a| client_error(&a, "an empty prompt")),
        );
        found
    }

    /// fleet: spawning (an agent query) without auth is refused; capabilities are listed.
    pub(super) async fn fleet(&self) -> Found {
        let mut found = Found::default();
        found.check(
            "spawn_requires_auth",
            self.post("/api/agent/query", None, json!({"query": "runbook smoke test"}))
                .await
                .and_then(refused_for_auth),
        );
        let listed = self.get("/api/agent/capabilities", Some(self.token.expose())).await.and_then(|a| {
            match a.body["capabilities"].as_array() {
                Some(list) if a.status == 200 && !list.is_empty() => {
                    Ok(format!("HTTP 200, {} capabilities", list.len()))
                }
                _ if a.status == 200 => {
                    Err(format!("HTTP 200 without a list of capabilities (got {})", shown(&a.body)))
                }
                _ => Err(format!("HTTP {} (want 200 with the capabilities)", a.status)),
            }
        });
        found.check("capabilities_listed", listed);
        found
    }

    /// reputation: an unknown key answers `score: null`; the population is for the admin
    /// only; the score of `key` is the same after a restart of Dixie's task as before it (a
    /// restart shows as Dixie's uptime going down between rounds).
    pub(super) async fn reputation(&self, key: &str) -> Found {
        let mut found = Found::default();
        let unknown = format!("{key}-unknown-{}", hex::encode(rand::random::<[u8; 4]>()));
        let query = |k: &str| format!("/api/reputation/query?routingKey={k}");
        found.check(
            "query_answers",
            self.get(&query(&unknown), None).await.and_then(|a| match (a.status, &a.body["score"]) {
                (200, Value::Null) if a.body.get("score").is_some() => {
                    Ok("HTTP 200, score null for an unknown key".into())
                }
                (200, other) => Err(format!("HTTP 200 but score {} for an unknown key (want null)", shown(other))),
                (status, _) => Err(format!("HTTP {status} (want 200 with score null)")),
            }),
        );
        found.check(
            "population_admin_only",
            self.get("/api/reputation/population", None).await.and_then(refused_for_auth),
        );
        let score = match self.get(&query(key), None).await {
            Ok(a) if a.status == 200 && a.body.get("score").is_some() => Ok(a.body["score"].to_string()),
            Ok(a) => Err(format!("{key}: HTTP {} without a score", a.status)),
            Err(e) => Err(e),
        };
        // Judged by the round, once the health check has seen Dixie's uptime.
        match score {
            Ok(score) => {
                found.seen.insert("reputation_score".into(), score);
            }
            Err(e) => found.check("persists_across_restart", Err(e)),
        }
        found
    }

    /// governance: its health answers 401 without the admin key, 403 with a wrong one, and the
    /// governors with the right one.
    pub(super) async fn governance(&self) -> Found {
        let mut found = Found::default();
        const PATH: &str = "/api/health/governance";
        let want = |want: u16| {
            move |a: Answer| {
                if a.status == want {
                    Ok(format!("HTTP {want}"))
                } else {
                    Err(format!("HTTP {} (want {want})", a.status))
                }
            }
        };
        found.check("no_key_401", self.get(PATH, None).await.and_then(want(401)));
        let wrong = Secret::new(format!("not-the-admin-key-{}", hex::encode(rand::random::<[u8; 8]>())));
        found.check("wrong_key_403", self.get(PATH, Some(wrong.expose())).await.and_then(want(403)));
        let admin = self.get(PATH, Some(self.admin.expose())).await.and_then(|a| {
            let b = &a.body;
            let shaped = b["governors"].is_array()
                && b["totalResources"].is_number()
                && b["degradedResources"].is_number()
                && b["timestamp"].is_string();
            match a.status {
                200 if shaped => Ok(format!(
                    "HTTP 200, {} governors, {} resources, {} degraded",
                    b["governors"].as_array().map_or(0, Vec::len),
                    b["totalResources"],
                    b["degradedResources"]
                )),
                200 => Err("HTTP 200 without {governors, totalResources, degradedResources, timestamp}".into()),
                status => Err(format!("HTTP {status} with the admin key from its home (want 200)")),
            }
        });
        found.check("admin_key_200", admin);
        found
    }
}

/// Whether the score of `key` survived a restart of Dixie's task: a restart shows as Dixie's
/// uptime going down from one round to the next (`seen` is this round's). The score now must be
/// the one read in the last round before the latest restart. Without a restart between rounds
/// there is nothing to compare yet, and the verdict says so.
pub(super) fn persistence(key: &str, seen: &BTreeMap<String, String>, earlier: &[Round]) -> Result<String, String> {
    let score = seen.get("reputation_score").ok_or_else(|| format!("{key}: no score read this round"))?;
    let uptime = |s: &BTreeMap<String, String>| s.get("dixie_uptime_s").and_then(|u| u.parse::<f64>().ok());
    // Every round that saw Dixie's uptime, this one last.
    let mut rounds: Vec<(u32, Option<f64>, Option<&String>)> =
        earlier.iter().map(|r| (r.round, uptime(&r.seen), r.seen.get("reputation_score"))).collect();
    let this = earlier.last().map_or(1, |r| r.round + 1);
    rounds.push((this, uptime(seen), Some(score)));
    let with_uptime: Vec<_> = rounds.iter().filter(|r| r.1.is_some()).collect();
    let restart = with_uptime.windows(2).rev().find(|w| w[1].1 < w[0].1).map(|w| (w[0], w[1]));
    let Some((before, after)) = restart else {
        return Ok(format!("{key}: score {score}; not proven yet: no restart of Dixie's task seen between rounds"));
    };
    match before.2 {
        None => {
            Ok(format!("{key}: score {score}; round {} before the restart read no score, nothing to compare", before.0))
        }
        Some(then) if then == score => Ok(format!(
            "{key}: score {score} before the restart (round {}) and after it (round {}, now)",
            before.0, after.0
        )),
        Some(then) => Err(format!(
            "{key}: score {then} in round {} before Dixie's task restarted, {score} now: not persisted",
            before.0
        )),
    }
}

/// 401 or 403: refused for want of (valid) credentials, not for want of a route.
fn refused_for_auth(a: Answer) -> Result<String, String> {
    match a.status {
        401 | 403 => Ok(format!("HTTP {}", a.status)),
        status => Err(format!("HTTP {status} (want 401 or 403)")),
    }
}

/// A 4xx that is about the request (a missing route or method is no verdict on it).
fn client_error(a: &Answer, what: &str) -> Result<String, String> {
    match a.status {
        404 | 405 => Err(format!("HTTP {} for {what}: the route is missing", a.status)),
        status @ 400..=499 => Ok(format!("HTTP {status} for {what}")),
        status => Err(format!("HTTP {status} for {what} (want a 4xx)")),
    }
}

/// A JSON value in a verdict, short.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 { format!("{}…", text.chars().take(80).collect::<String>()) } else { text }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// How long a smoke token lives: one round's worth, far under Dixie's hour.
const TOKEN_SECONDS: u64 = 300;

/// A JWT as Dixie makes one with an HS256 key: `{alg: HS256, typ: JWT}`, the wallet as subject,
/// issuer and audience `dixie-bff`; the key's text is the HMAC key (jose's `TextEncoder`).
pub(super) fn mint(key: &Secret<String>, wallet: &str, now: u64) -> Secret<String> {
    sign_hs256(key, &claims(wallet, now))
}

/// A smoke token's claims: the wallet as subject, issuer and audience `dixie-bff`, a round's
/// lifetime.
fn claims(wallet: &str, now: u64) -> Value {
    json!({
        "sub": wallet,
        "wallet": wallet,
        "iss": "dixie-bff",
        "aud": "dixie-bff",
        "iat": now,
        "exp": now + TOKEN_SECONDS,
        "jti": format!("runbook-smoke-{}", hex::encode(rand::random::<[u8; 8]>())),
    })
}

/// The same token with a signature made with another key.
fn forge(token: &Secret<String>) -> Secret<String> {
    let signing_input = token.expose().rsplit_once('.').map_or("", |(input, _)| input);
    let other = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &rand::random::<[u8; 32]>());
    let signature = aws_lc_rs::hmac::sign(&other, signing_input.as_bytes());
    Secret::new(format!("{signing_input}.{}", b64url(signature.as_ref())))
}
