//! `smoke`: the smoke gate of 004 (G-7, "3x consecutive green"), over the six smoke tests of
//! 003 §6 (health, auth, chat, fleet, reputation, governance), each a set of typed checks
//! against Dixie over HTTP, classified P0 or P1 as 004 does.
//!
//! A round runs every check once. It is green when every P0 check passed; a P1 failure is a
//! warning kept with the step's outcome (as T2.6's tolerated NATS). The gate passes after
//! `consecutive` green rounds in a row; a red round resets the count. Each round is recorded
//! (a durable `smoke_round` event, and its table in the step's log) before the next starts;
//! the probe and a resumed apply read the rounds back, so a kill between rounds resumes with
//! the rounds already recorded. `runbook retry` resets the step and so starts counting afresh.
//!
//! The JWT the auth, chat and fleet checks send is made here from Dixie's key in SSM, as Dixie
//! makes its own (HS256 over the key's text, issuer and audience `dixie-bff`, 5 minutes). The
//! key, the token and the admin key are [`Secret`]s: sent, never logged, stored or printed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::database::SecretSource;
use super::{Probe, Step, StepContext, StepError, reach};
use crate::event::{Event, Outputs, SmokeCheck, SmokeClass};
use crate::health::{HealthPolicy, HealthRule};
use crate::secret::Secret;

mod checks;
#[cfg(test)]
mod tests;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {
    /// Dixie's base URL (`http(s)://host[:port]`), reached through the environment's address
    /// map (loopback only on the ring).
    base_url: String,
    /// Dixie's JWT key (001's `DIXIE_JWT_PRIVATE_KEY`): the auth checks make their token from it.
    jwt_key: SecretSource,
    /// Dixie's admin key (`DIXIE_ADMIN_KEY`): the governance check's 200 needs it.
    admin_key: SecretSource,
    /// How Dixie's health is judged (the health judge of T2.6 and T2.8).
    #[serde(default = "strict_dixie")]
    health: HealthPolicy,
    /// Green rounds in a row the gate needs (004 G-7: three).
    #[serde(default = "three", deserialize_with = "super::number_or_text")]
    consecutive: u64,
    /// The most rounds the gate runs before it fails.
    #[serde(default = "ten", deserialize_with = "super::number_or_text")]
    max_rounds: u64,
    /// Seconds between the end of a round and the start of the next.
    #[serde(default = "thirty", deserialize_with = "super::number_or_text")]
    spacing_seconds: u64,
    /// How long one request may take, in seconds.
    #[serde(default = "five", deserialize_with = "super::number_or_text")]
    request_timeout_seconds: u64,
    /// The suites whose failures are warnings (P1); every other suite is P0. Default: fleet and
    /// reputation, as shared/dixie-facts.md suggests from 004.
    #[serde(default = "fleet_and_reputation")]
    p1: Vec<Suite>,
    /// The wallet the token is made for (a test wallet; `/api/auth/verify` must give it back).
    #[serde(default = "test_wallet")]
    wallet: String,
    /// The reputation routing key whose score must survive a restart of Dixie's task.
    #[serde(default = "reputation_key")]
    reputation_key: String,
    /// Dixie's key set (`/dixie/<env>/DIXIE_JWT_KEYSET`, docs/ring.md "Keys"): once a rotation
    /// has made an ES256 kid active, the auth checks sign with that kid's key, read from
    /// `keys_path`. Empty (the default), or a key set whose active kid is `hs256`: `jwt_key`.
    #[serde(default)]
    keyset_param: String,
    /// Where the key set's private keys are (`/dixie/<env>/jwt-keys/`), with `keyset_param`.
    #[serde(default)]
    keys_path: String,
}

/// One of 003 §6's six smoke tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Suite {
    Health,
    Auth,
    Chat,
    Fleet,
    Reputation,
    Governance,
}

impl Suite {
    fn name(self) -> &'static str {
        match self {
            Suite::Health => "health",
            Suite::Auth => "auth",
            Suite::Chat => "chat",
            Suite::Fleet => "fleet",
            Suite::Reputation => "reputation",
            Suite::Governance => "governance",
        }
    }
}

fn fleet_and_reputation() -> Vec<Suite> {
    vec![Suite::Fleet, Suite::Reputation]
}

fn strict_dixie() -> HealthPolicy {
    HealthPolicy::strict(HealthRule::Dixie)
}
fn three() -> u64 {
    3
}
fn ten() -> u64 {
    10
}
fn thirty() -> u64 {
    30
}
fn five() -> u64 {
    5
}
fn test_wallet() -> String {
    "0x00000000000000000000000000000000000a11ce".into()
}
fn reputation_key() -> String {
    "nft:runbook-smoke".into()
}

/// The most rounds a gate may be given: a typo of a few digits is refused before anything runs.
const MAX_ROUNDS: u64 = 100;

/// The secrets a round sends, read from their homes once per attempt.
pub(super) struct Keys {
    pub(super) jwt: Signer,
    pub(super) admin: Secret<String>,
}

/// How the auth checks' token is signed, as Dixie signs now: 001's HS256 secret, or the key of
/// the key set's active ES256 kid.
pub(super) enum Signer {
    Hs256(Secret<String>),
    Es256(super::jwt_keys::SigningKey),
}

/// A round as recorded.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Round {
    pub(super) round: u32,
    pub(super) green: bool,
    pub(super) streak: u32,
    pub(super) checks: Vec<SmokeCheck>,
    pub(super) seen: BTreeMap<String, String>,
    pub(super) at_ms: u64,
    /// How long its checks took (logged, not recorded: 0 when read back).
    pub(super) took_ms: u64,
}

/// Where the gate stands after `rounds`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Standing {
    /// `consecutive` green rounds in a row: the gate has passed.
    Passed,
    /// Another round can still make it.
    Going { streak: u32, left: u32 },
    /// Too few rounds are left to make `consecutive` in a row.
    Failed { streak: u32 },
}

pub(super) fn standing(rounds: &[Round], consecutive: u32, max_rounds: u32) -> Standing {
    let streak = rounds.last().map_or(0, |r| r.streak);
    if streak >= consecutive {
        return Standing::Passed;
    }
    let left = max_rounds.saturating_sub(rounds.len() as u32);
    if left < consecutive - streak { Standing::Failed { streak } } else { Standing::Going { streak, left } }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Params {
    fn consecutive(&self) -> u32 {
        self.consecutive as u32
    }

    fn max_rounds(&self) -> u32 {
        self.max_rounds as u32
    }

    fn class(&self, suite: &str) -> SmokeClass {
        if self.p1.iter().any(|s| s.name() == suite) { SmokeClass::P1 } else { SmokeClass::P0 }
    }

    /// The rounds this run recorded for the step, since it was last reset.
    async fn recorded(&self, cx: &StepContext) -> Result<Vec<Round>, StepError> {
        let events = cx.recorder.recorded(&cx.step, "smoke_round").await.map_err(|e| {
            StepError::fatal(
                format!("cannot read the rounds recorded so far: {e}"),
                format!("check the state DB, then: {}", cx.retry_hint()),
            )
        })?;
        Ok(events
            .into_iter()
            .filter_map(|e| match e {
                Event::SmokeRound { round, green, streak, checks, seen, at_ms, .. } => {
                    Some(Round { round, green, streak, checks, seen, at_ms, took_ms: 0 })
                }
                _ => None,
            })
            .collect())
    }

    /// Both keys from their homes; a key not seeded yet fails, saying where to seed it.
    async fn keys(&self, cx: &StepContext) -> Result<Keys, StepError> {
        let seeded = |found: Seeded| match found {
            Seeded::Yes(value) => Ok(value),
            Seeded::Not(error) => Err(error),
        };
        let jwt = match self.active_es256(cx).await? {
            Some(key) => Signer::Es256(key),
            None => Signer::Hs256(seeded(self.jwt_key(cx).await?)?),
        };
        let admin =
            seeded(read_secret(cx, "admin_key", &self.admin_key, "Dixie's admin key (DIXIE_ADMIN_KEY)").await?)?;
        Ok(Keys { jwt, admin })
    }

    /// The key of the key set's active kid, when it is an ES256 one (a rotation has run);
    /// `None` without a key set, or while 001's `hs256` is active. A key set that cannot be
    /// read, or an active kid without a usable key, fails the step: Dixie would refuse it too.
    async fn active_es256(&self, cx: &StepContext) -> Result<Option<super::jwt_keys::SigningKey>, StepError> {
        if self.keyset_param.is_empty() {
            return Ok(None);
        }
        let fix = "see docs/operator-guide.md, \"Rotating Dixie's JWT key (004)\": runbook run rotate-jwt-key finishes \
                   a rotation under way";
        let set = match cx.parameter(&self.keyset_param).await? {
            None => super::jwt_keys::KeySet::legacy(),
            Some(text) => super::jwt_keys::KeySet::parse(text.expose()).map_err(|e| {
                StepError::fatal(format!("the key set {} cannot be read: {}", self.keyset_param, e.0), fix)
            })?,
        };
        if set.active == super::jwt_keys::HS256 {
            return Ok(None);
        }
        let place = format!("{}{}", self.keys_path, set.active);
        let Some(pem) = cx.parameter(&place).await? else {
            return Err(StepError::fatal(
                format!("the key set's active kid {} has no private key at {place}", set.active),
                fix,
            ));
        };
        super::jwt_keys::SigningKey::load_as(&pem, &set.active, &place)
            .map(Some)
            .map_err(|e| StepError::fatal(e.0, fix))
    }

    /// The JWT key, refused when the gate cannot make tokens from it.
    async fn jwt_key(&self, cx: &StepContext) -> Result<Seeded, StepError> {
        let found = read_secret(cx, "jwt_key", &self.jwt_key, "Dixie's JWT key (DIXIE_JWT_PRIVATE_KEY)").await?;
        let Seeded::Yes(jwt) = &found else { return Ok(found) };
        if jwt.expose().contains("-----BEGIN") {
            return Err(StepError::fatal(
                "jwt_key holds a PEM key (ES256): the smoke gate makes HS256 tokens from 001's hex key only",
                "point jwt_key at 001's HS256 secret; ES256 keys come from Dixie's key set (keyset_param and \
                 keys_path; docs/operator-guide.md, \"The smoke gate\")",
            ));
        }
        if jwt.expose().trim().len() < 32 {
            return Err(StepError::fatal(
                "jwt_key holds fewer than 32 characters: Dixie refuses an HS256 key that short",
                "seed DIXIE_JWT_PRIVATE_KEY with T2.5 (generate = \"hex32\")",
            ));
        }
        Ok(found)
    }

    /// One round: every check of the six suites, at the same time.
    pub(super) async fn round(&self, cx: &StepContext, keys: &Keys, earlier: &[Round], number: u32) -> Round {
        let dixie = checks::Dixie::new(
            &cx.env,
            &self.base_url,
            Duration::from_secs(self.request_timeout_seconds),
            &self.wallet,
            keys,
        );
        let dixie = match dixie {
            Ok(d) => d,
            Err(e) => {
                let checks = checks::SUITES
                    .iter()
                    .map(|s| SmokeCheck {
                        suite: s.to_string(),
                        check: "reach".into(),
                        class: self.class(s),
                        pass: false,
                        seen: e.clone(),
                    })
                    .collect();
                return self.judged(number, earlier, checks, BTreeMap::new());
            }
        };
        let (health, auth, chat, fleet, reputation, governance) = tokio::join!(
            dixie.health(&self.health),
            dixie.auth(),
            dixie.chat(),
            dixie.fleet(),
            dixie.reputation(&self.reputation_key),
            dixie.governance(),
        );
        let mut seen = BTreeMap::new();
        let mut checks = Vec::new();
        for (suite, found) in [
            ("health", health),
            ("auth", auth),
            ("chat", chat),
            ("fleet", fleet),
            ("reputation", reputation),
            ("governance", governance),
        ] {
            seen.extend(found.seen);
            for (check, pass, what) in found.checks {
                checks.push(SmokeCheck {
                    suite: suite.into(),
                    check: check.into(),
                    class: self.class(suite),
                    pass,
                    seen: what,
                });
            }
            for warning in found.warnings {
                cx.warn(format!("{suite}: {warning}")).await;
            }
        }
        if seen.contains_key("reputation_score") {
            let (pass, what) = match checks::persistence(&self.reputation_key, &seen, earlier) {
                Ok(what) => (true, what),
                Err(what) => (false, what),
            };
            checks.push(SmokeCheck {
                suite: "reputation".into(),
                check: "persists_across_restart".into(),
                class: self.class("reputation"),
                pass,
                seen: what,
            });
        }
        self.judged(number, earlier, checks, seen)
    }

    fn judged(&self, number: u32, earlier: &[Round], checks: Vec<SmokeCheck>, seen: BTreeMap<String, String>) -> Round {
        let green = checks.iter().filter(|c| c.class == SmokeClass::P0).all(|c| c.pass);
        let before = earlier.last().map_or(0, |r| r.streak);
        let streak = if green { before + 1 } else { 0 };
        Round { round: number, green, streak, checks, seen, at_ms: now_ms(), took_ms: 0 }
    }

    /// Records `round` (durably, before the next starts) and logs its table.
    async fn record(&self, cx: &StepContext, round: &Round) -> Result<(), StepError> {
        for line in table(round, self.consecutive()) {
            cx.log(line).await;
        }
        cx.recorder
            .emit(Event::SmokeRound {
                step: cx.step.clone(),
                attempt: cx.attempt,
                round: round.round,
                green: round.green,
                streak: round.streak,
                consecutive: self.consecutive(),
                checks: round.checks.clone(),
                seen: round.seen.clone(),
                at_ms: round.at_ms,
            })
            .await;
        match cx.recorder.write_error() {
            Some(e) => Err(StepError::fatal(
                format!("cannot record smoke round {}: {e}", round.round),
                format!("fix the state DB, then: {}", cx.retry_hint()),
            )),
            None => Ok(()),
        }
    }

    /// The P1 failures of the rounds that make the gate, one warning per check.
    async fn warn_p1(&self, cx: &StepContext, rounds: &[Round]) {
        let counted = &rounds[rounds.len().saturating_sub(self.consecutive as usize)..];
        let mut failures: BTreeMap<(String, String), (Vec<u32>, String)> = BTreeMap::new();
        for round in counted {
            for c in round.checks.iter().filter(|c| c.class == SmokeClass::P1 && !c.pass) {
                let entry = failures.entry((c.suite.clone(), c.check.clone())).or_default();
                entry.0.push(round.round);
                entry.1 = c.seen.clone();
            }
        }
        for ((suite, check), (in_rounds, seen)) in failures {
            let rounds: Vec<String> = in_rounds.iter().map(u32::to_string).collect();
            let which = if rounds.len() == 1 { "round" } else { "rounds" };
            cx.warn(format!("P1 {suite}.{check} failed in {which} {}: {seen}", rounds.join(", "))).await;
        }
    }

    fn outputs(&self, rounds: &[Round]) -> Outputs {
        let streak = rounds.last().map_or(0, |r| r.streak);
        Outputs::from([
            ("green_rounds".into(), format!("{streak} of {}", self.consecutive)),
            ("rounds".into(), rounds.len().to_string()),
        ])
    }
}

/// A key read from its home: there, or not seeded yet (with the error that says where).
enum Seeded {
    Yes(Secret<String>),
    Not(StepError),
}

/// `Err` only when the home cannot be read; a key absent or `PLACEHOLDER` is [`Seeded::Not`].
async fn read_secret(cx: &StepContext, key: &str, source: &SecretSource, what: &str) -> Result<Seeded, StepError> {
    let found = match source {
        SecretSource::Env(var) => std::env::var(var).ok().map(Secret::new),
        SecretSource::Ssm(name) => cx.parameter(name).await?,
    };
    let place = match source {
        SecretSource::Env(var) => format!("variable {var}"),
        SecretSource::Ssm(name) => format!("SSM parameter {name}"),
    };
    Ok(match found {
        Some(value) if !value.expose().trim().is_empty() && value.expose() != "PLACEHOLDER" => Seeded::Yes(value),
        Some(_) => Seeded::Not(StepError::fatal(
            format!("{key}: {place} holds no value yet (PLACEHOLDER or empty)"),
            format!("seed {what} first (sprint-2's T2.5)"),
        )),
        None => Seeded::Not(StepError::fatal(
            format!("{key}: {place} does not exist"),
            format!("seed {what} first (sprint-2's T2.5), or point {key} at where it is"),
        )),
    })
}

/// A round as lines for `runbook logs`: the verdict, then one line per check.
pub(super) fn table(round: &Round, consecutive: u32) -> Vec<String> {
    let verdict = if round.green { "green" } else { "RED" };
    let mut lines = vec![format!(
        "round {}: {verdict} ({} of {consecutive} green rounds), checks took {} ms",
        round.round, round.streak, round.took_ms
    )];
    for c in &round.checks {
        let mark = if c.pass { "pass" } else { "FAIL" };
        lines.push(format!("  {} {:<30} {mark} {}", c.class.as_str(), format!("{}.{}", c.suite, c.check), c.seen));
    }
    lines
}

impl Step for Params {
    const KIND: &'static str = "smoke";
    const OUTPUTS: Option<&'static [&'static str]> = Some(&["green_rounds", "rounds"]);

    fn validate(&self) -> Result<(), String> {
        reach::check_http_url("base_url", &self.base_url)?;
        if self.keyset_param.is_empty() != self.keys_path.is_empty() {
            return Err(
                "keyset_param and keys_path go together: give both (Dixie's key set and where its keys are) or neither"
                    .into(),
            );
        }
        if self.base_url.trim_end_matches('/').matches('/').count() > 2 {
            return Err(format!(
                "base_url = {:?}: give Dixie's base URL without a path (the checks add /api/…)",
                self.base_url
            ));
        }
        self.health.check()?;
        if self.health.rule != HealthRule::Dixie {
            return Err("health.rule = \"finn\": the smoke gate judges Dixie's health; use rule = \"dixie\"".into());
        }
        if !(1..=MAX_ROUNDS).contains(&self.consecutive) {
            return Err(format!(
                "consecutive = {}: the gate needs 1 to {MAX_ROUNDS} green rounds in a row (004 G-7: 3)",
                self.consecutive
            ));
        }
        if self.max_rounds > MAX_ROUNDS {
            return Err(format!("max_rounds = {}: give at most {MAX_ROUNDS}", self.max_rounds));
        }
        if self.max_rounds < self.consecutive {
            return Err(format!(
                "max_rounds = {} is fewer than consecutive = {}: the gate could never pass; give max_rounds >= {}",
                self.max_rounds, self.consecutive, self.consecutive
            ));
        }
        super::check_wait("spacing_seconds", self.spacing_seconds)?;
        if !(1..=60).contains(&self.request_timeout_seconds) {
            return Err(format!("request_timeout_seconds = {}: give 1 to 60", self.request_timeout_seconds));
        }
        let wallet = self.wallet.strip_prefix("0x").unwrap_or("");
        if wallet.len() != 40 || !wallet.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("wallet = {:?} is not an address (0x and 40 hex digits)", self.wallet));
        }
        let key_ok = !self.reputation_key.is_empty()
            && self.reputation_key.len() <= 128
            && self.reputation_key.chars().all(|c| c.is_ascii_alphanumeric() || ":-_.".contains(c));
        if !key_ok {
            return Err(format!(
                "reputation_key = {:?}: give 1 to 128 letters, digits or :-_. (e.g. nft:runbook-smoke)",
                self.reputation_key
            ));
        }
        if let Some(twice) = self.p1.iter().enumerate().find(|(i, s)| self.p1[..*i].contains(s)) {
            return Err(format!("p1 names {} twice", twice.1.name()));
        }
        if self.p1.len() == 6 {
            return Err("p1 names all six suites: a round with no P0 check is green with no evidence; keep at least \
                        health P0"
                .into());
        }
        for (key, source) in [("jwt_key", &self.jwt_key), ("admin_key", &self.admin_key)] {
            match source {
                SecretSource::Ssm(name) => super::ssm_params::check_parameter_name(&format!("{key}.ssm"), name)?,
                SecretSource::Env(var)
                    if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                {
                    return Err(format!("{key}.env = {var:?} is not a variable name"));
                }
                SecretSource::Env(_) => {}
            }
        }
        Ok(())
    }

    fn converge_within(&self) -> Duration {
        // The verify reads the recorded rounds: nothing converges slowly.
        Duration::from_secs(5)
    }

    /// Read-only: the address is dialable (loopback on the ring), and a JWT key already in its
    /// home is one the gate can make tokens from. A key not there yet (or `PLACEHOLDER`) is no
    /// refusal: in a release, sprint 2's T2.5 seeds it before the gate runs, which then reads it.
    async fn preflight(&self, cx: &StepContext) -> Result<(), StepError> {
        let fix = format!("check base_url, or add Dixie's host to [address_map] in {}", cx.env.path.display());
        checks::dial(&cx.env, &self.base_url).map_err(|e| StepError::fatal(format!("base_url: {e}"), fix))?;
        self.jwt_key(cx).await?;
        read_secret(cx, "admin_key", &self.admin_key, "Dixie's admin key (DIXIE_ADMIN_KEY)").await?;
        Ok(())
    }

    /// Satisfied when this run recorded `consecutive` green rounds in a row.
    async fn probe(&self, cx: &StepContext) -> Result<Probe, StepError> {
        let rounds = self.recorded(cx).await?;
        match standing(&rounds, self.consecutive(), self.max_rounds()) {
            Standing::Passed => {
                self.warn_p1(cx, &rounds).await;
                Ok(Probe::Satisfied(self.outputs(&rounds)))
            }
            Standing::Going { streak, left } => Ok(Probe::Absent(format!(
                "{streak} of {} green rounds after {} rounds: up to {left} more, {} s apart",
                self.consecutive,
                rounds.len(),
                self.spacing_seconds
            ))),
            Standing::Failed { streak } => Ok(Probe::Conflict(format!(
                "{streak} of {} green rounds after {} rounds, the most this gate runs (max_rounds)",
                self.consecutive,
                rounds.len()
            ))),
        }
    }

    /// Rounds until the gate passes or cannot any more, each recorded before the next; a
    /// resumed attempt goes on from the rounds recorded, waiting only what is left of the
    /// spacing.
    async fn apply(&self, cx: &StepContext) -> Result<(), StepError> {
        let keys = self.keys(cx).await?;
        let mut rounds = self.recorded(cx).await?;
        loop {
            match standing(&rounds, self.consecutive(), self.max_rounds()) {
                Standing::Passed => {
                    self.warn_p1(cx, &rounds).await;
                    return Ok(());
                }
                Standing::Failed { streak } => {
                    let red: Vec<String> = rounds
                        .iter()
                        .filter(|r| !r.green)
                        .flat_map(|r| r.checks.iter().filter(|c| c.class == SmokeClass::P0 && !c.pass))
                        .map(|c| format!("{}.{}", c.suite, c.check))
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    return Err(StepError::fatal(
                        format!(
                            "smoke gate failed: {streak} of {} green rounds after {} rounds (max_rounds); \
                             P0 checks that failed: {}",
                            self.consecutive,
                            rounds.len(),
                            red.join(", ")
                        ),
                        format!("see each round: {}; fix Dixie, then: {}", cx.logs_hint(), cx.retry_hint()),
                    ));
                }
                Standing::Going { streak, .. } => {
                    if let Some(last) = rounds.last() {
                        let since = Duration::from_millis(now_ms().saturating_sub(last.at_ms));
                        let spacing = Duration::from_secs(self.spacing_seconds);
                        if since < spacing {
                            cx.progress(&format!(
                                "{streak} of {} green rounds; next round in {} s",
                                self.consecutive,
                                (spacing - since).as_secs()
                            ))
                            .await;
                            tokio::time::sleep(spacing - since).await;
                        }
                    }
                    let number = rounds.last().map_or(1, |r| r.round + 1);
                    let started = std::time::Instant::now();
                    let mut round = self.round(cx, &keys, &rounds, number).await;
                    round.took_ms = started.elapsed().as_millis() as u64;
                    self.record(cx, &round).await?;
                    cx.checkpoint("round");
                    rounds.push(round);
                }
            }
        }
    }
}
