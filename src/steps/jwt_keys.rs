//! `jwt_keys`: one action of Dixie's dual-kid JWT key rotation (004; issue 20), against the
//! key contract of docs/ring.md ("Keys"): private keys under `…/jwt-keys/<kid>` (SecureString,
//! written once), the key set `…/DIXIE_JWT_KEYSET` (`{"active", "published"}`), read by Dixie
//! at task start.
//!
//! | action | changes | satisfied when |
//! |---|---|---|
//! | `create` | writes one new key (kid = its RFC 7638 thumbprint) | a rotation is under way (a key not yet published, or two published kids), or the active key is younger than `rotate_after_days` |
//! | `publish` | key set `{active: old, published: [old, new]}`, redeploy | the key set publishes the new kid, Dixie's deployment postdates the write and its JWKS serves the kid |
//! | `check_jwks` | nothing | the JWKS Dixie serves holds every published kid, each hashing to its kid |
//! | `switch` | key set `{active: new, published: [old, new]}`, redeploy | the key set signs with the new kid, redeployed |
//! | `check_tokens` | nothing | a new token carries the new kid; a token of the old kid verifies (ring only: Dixie's test-token route) |
//! | `retire` | key set `{active: new, published: [new]}`, redeploy, then deletes the old key | the old kid is out of the key set, its key gone, redeployed |
//! | `revoke` | the same at once, from any stage (no overlap, no wait), and tells Finn | as `retire` |
//!
//! Where a rotation stands is read from SSM alone (the key set, its version history, the key
//! parameters), never from the state DB: so every action is idempotent under a kill at any
//! point, and a re-run after success finds every step satisfied. The stages: **pending** (a
//! key under `jwt-keys/` that no version of the key set ever published), **published**,
//! **switched**, **retired**; the two published kids are written `[old, new]`, in that order.
//!
//! A private key is read into a [`Secret`] only to check it or sign a test token; it is never
//! logged, printed or recorded. The redeploy is `ecs_deploy`'s, inside the action: `retire`
//! must check the refusal of an old token after the redeploy and before it deletes the key, so
//! the three key set writes redeploy the same way.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::database::SecretSource;
use super::{Probe, Step, StepContext, StepError, ecs_deploy, from_upstream, number_or_text, reach};
use crate::clock::format_utc;
use crate::event::Outputs;
use crate::secret::Secret;

mod keys;
#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) use keys::b64url_decode;
pub(crate) use keys::{HS256, KeySet, SigningKey, b64url, sign_hs256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Action {
    Create,
    Publish,
    CheckJwks,
    Switch,
    CheckTokens,
    Retire,
    Revoke,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Publish => "publish",
            Action::CheckJwks => "check_jwks",
            Action::Switch => "switch",
            Action::CheckTokens => "check_tokens",
            Action::Retire => "retire",
            Action::Revoke => "revoke",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {
    action: Action,
    /// The key set parameter, `/dixie/<env>/DIXIE_JWT_KEYSET`.
    keyset_param: String,
    /// Where the private keys live, ending in `/`: `/dixie/<env>/jwt-keys/`.
    keys_path: String,
    /// The rotation's new and old kid (`create`'s outputs); every action but `create`.
    #[serde(default)]
    new_kid: String,
    #[serde(default)]
    old_kid: String,
    /// `publish`, `check_jwks`: the JWKS URL, reached through the address map.
    #[serde(default)]
    jwks_url: String,
    /// `check_jwks`: the wait the runbook gives the caches (T4.4's seconds); a longer `max-age`
    /// served by Dixie is a conflict. 0: not compared.
    #[serde(default, deserialize_with = "number_or_text")]
    cache_wait_seconds: u64,
    /// `check_tokens`, `retire`: Dixie's base URL (`/api/auth/token`, `/api/auth/verify`).
    #[serde(default)]
    dixie_url: String,
    /// `check_tokens`: Dixie's admin key, for the ring's test-token route.
    #[serde(default)]
    admin_key: Option<SecretSource>,
    /// `retire` from 001's HS256: `DIXIE_JWT_PRIVATE_KEY`, to make the old token whose refusal it checks.
    #[serde(default)]
    hs256_key: Option<SecretSource>,
    /// `publish`, `switch`, `retire`: how Dixie is redeployed to read the key set (an
    /// `ecs_deploy` step's params; its `inputs` must hold the key set).
    #[serde(default)]
    redeploy: Option<ecs_deploy::Params>,
    /// `create` for an emergency revocation: the compromised kid. The new key is then made while
    /// the key set publishes it, whatever the active key's age.
    #[serde(default)]
    revoke_kid: Option<String>,
    /// `revoke` (ring): the Finn stand-in's JWKS cache, forgotten once the revoked kid's tokens
    /// are refused ("Finn told"); empty: nothing told.
    #[serde(default)]
    finn_jwks_cache_url: String,
    /// `create`: make a new key only when the active one is older than this many days
    /// (0: always); a rotation under way is always finished first.
    #[serde(default = "thirty", deserialize_with = "number_or_text")]
    rotate_after_days: u64,
}

fn thirty() -> u64 {
    30
}

/// How long a check (`check_jwks`, `check_tokens`) may take to come true.
const CHECK_WITHIN: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the test tokens live.
const TOKEN_SECONDS: i64 = 120;
/// The wallet the test tokens are made for.
const WALLET: &str = "runbook-rotate-check";

/// Where a rotation from `old` to `new` stands, read from the key set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The new kid is not published yet.
    Pending,
    /// `{active: old, published: [old, new]}`.
    Published,
    /// `{active: new, published: [old, new]}`.
    Switched,
    /// `{active: new, published: [new]}`.
    Retired,
}

/// The stage of the rotation `old` → `new` that `set` shows; `Err` says how it differs from
/// every stage.
fn stage(set: &KeySet, old: &str, new: &str) -> Result<Stage, String> {
    let p: Vec<&str> = set.published.iter().map(String::as_str).collect();
    let a = set.active.as_str();
    match (a, p.as_slice()) {
        (a, [only]) if a == old && *only == old => Ok(Stage::Pending),
        (a, [o, n]) if *o == old && *n == new && a == old => Ok(Stage::Published),
        (a, [o, n]) if *o == old && *n == new && a == new => Ok(Stage::Switched),
        (a, [only]) if a == new && *only == new => Ok(Stage::Retired),
        _ => Err(format!(
            "the key set ({set}) is not a stage of the rotation from {old} to {new} (want active {old} with \
             [{old}] or [{old}, {new}], or active {new} with [{old}, {new}] or [{new}]): another rotation or a \
             revocation changed it"
        )),
    }
}

/// What SSM holds: the key set, its history and the key parameters.
struct World {
    keyset: KeySet,
    /// When the key set parameter last changed (unix ms); `None`: it does not exist.
    keyset_modified_ms: Option<i64>,
    /// Every version of the key set parameter that parses: (unix ms, key set), oldest first.
    history: Vec<(i64, KeySet)>,
    /// The key parameters under `keys_path`: kid → when written (unix ms).
    keys: BTreeMap<String, i64>,
}

impl World {
    fn ever_published(&self, kid: &str) -> bool {
        self.keyset.publishes(kid) || self.history.iter().any(|(_, set)| set.publishes(kid))
    }

    /// When the first version of the key set that satisfies `test` was written.
    fn first_time(&self, test: impl Fn(&KeySet) -> bool) -> Option<i64> {
        self.history.iter().find(|(_, set)| test(set)).map(|(ms, _)| *ms).or(self.keyset_modified_ms)
    }

    /// Keys no version of the key set ever published: the pending new key (at most one).
    fn pending(&self) -> Vec<&str> {
        self.keys.keys().map(String::as_str).filter(|kid| !self.ever_published(kid)).collect()
    }

    /// Keys of kids that were published once and are not any more: left for `retire` to delete.
    fn leftovers(&self) -> Vec<&str> {
        self.keys
            .keys()
            .map(String::as_str)
            .filter(|kid| !self.keyset.publishes(kid) && self.ever_published(kid))
            .collect()
    }
}

/// `2026-12-06T14:05:00Z`, rounded up to the second (a wait that counts from it never ends early).
fn utc_ceil(ms: i64) -> String {
    format_utc(ms + (1000 - ms.rem_euclid(1000)) % 1000)
}

fn ms_of(t: Option<&aws_sdk_ssm::primitives::DateTime>) -> i64 {
    t.and_then(|t| t.to_millis().ok()).unwrap_or(0)
}

impl Params {
    fn key_param(&self, kid: &str) -> String {
        format!("{}{kid}", self.keys_path)
    }

    fn redeploy(&self) -> Result<&ecs_deploy::Params, StepError> {
        self.redeploy.as_ref().ok_or_else(|| {
            StepError::fatal(
                format!("action {} needs `redeploy`", self.action.name()),
                "give the step a [steps.params.redeploy] table (runbooks/rotate-jwt-key.toml)",
            )
        })
    }

    /// Reads the key set, its history and the key parameters' names; no private key is read.
    async fn survey(&self, cx: &StepContext) -> Result<World, StepError> {
        let ssm = &cx.cloud.ssm;
        let name = &self.keyset_param;
        let (keyset, keyset_modified_ms) = match ssm.get_parameter().name(name).with_decryption(true).send().await {
            Ok(out) => {
                let p = out.parameter();
                let text = p.and_then(|p| p.value()).unwrap_or_default();
                let set = KeySet::parse(text).map_err(|e| {
                    StepError::fatal(
                        format!("the key set {name} does not parse: {e}"),
                        "put it right by hand in the form docs/ring.md (\"Keys\") gives, then retry",
                    )
                })?;
                (set, Some(ms_of(p.and_then(|p| p.last_modified_date()))))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_parameter_not_found()) => (KeySet::legacy(), None),
            Err(e) => return Err(StepError::from_sdk(&format!("ssm:GetParameter {name}"), e)),
        };
        let mut history = Vec::new();
        if keyset_modified_ms.is_some() {
            let mut next: Option<String> = None;
            loop {
                let out = ssm
                    .get_parameter_history()
                    .name(name)
                    .set_next_token(next.clone())
                    .send()
                    .await
                    .map_err(|e| StepError::from_sdk(&format!("ssm:GetParameterHistory {name}"), e))?;
                for version in out.parameters() {
                    if let Ok(set) = KeySet::parse(version.value().unwrap_or_default()) {
                        history.push((version.version(), ms_of(version.last_modified_date()), set));
                    }
                }
                next = out.next_token().map(String::from);
                if next.is_none() {
                    break;
                }
            }
        }
        history.sort_by_key(|(version, _, _)| *version);
        let history = history.into_iter().map(|(_, ms, set)| (ms, set)).collect();
        let mut keys = BTreeMap::new();
        let mut next: Option<String> = None;
        loop {
            // Names and dates only: the values are not decrypted, and dropped unread.
            let out = ssm
                .get_parameters_by_path()
                .path(self.keys_path.trim_end_matches('/'))
                .recursive(false)
                .with_decryption(false)
                .set_next_token(next.clone())
                .send()
                .await
                .map_err(|e| StepError::from_sdk(&format!("ssm:GetParametersByPath {}", self.keys_path), e))?;
            for p in out.parameters() {
                let kid = p.name().and_then(|n| n.strip_prefix(self.keys_path.as_str())).unwrap_or_default();
                if keys::is_thumbprint(kid) {
                    keys.insert(kid.to_string(), ms_of(p.last_modified_date()));
                }
            }
            next = out.next_token().map(String::from);
            if next.is_none() {
                break;
            }
        }
        Ok(World { keyset, keyset_modified_ms, history, keys })
    }

    /// The private key of `kid`, checked to parse and to hash to `kid`; `Err` names why not.
    async fn load_key(&self, cx: &StepContext, kid: &str) -> Result<SigningKey, StepError> {
        let name = self.key_param(kid);
        let pem = cx.parameter(&name).await?.ok_or_else(|| {
            StepError::fatal(
                format!("kid {kid} has no private key: {name} does not exist"),
                "a kid is published only while its private key exists (docs/ring.md, \"Keys\"): restore the key, \
                 or take the kid out of the key set by hand",
            )
        })?;
        SigningKey::load_as(&pem, kid, &name).map_err(|e| {
            StepError::fatal(e.0, "Dixie refuses a key set whose keys it cannot load: put the right key there")
        })
    }

    /// Every ES256 kid of `set` has a key that parses and hashes to its kid: what Dixie needs
    /// to start. Checked before every key set write.
    async fn check_keys_of(&self, cx: &StepContext, set: &KeySet) -> Result<(), StepError> {
        for kid in set.es256_kids() {
            self.load_key(cx, kid).await?;
        }
        Ok(())
    }

    /// The rotation `create` finds under way or finished, or `None` when a new one is due.
    /// `Err(conflict)` when SSM holds something no rotation leaves.
    /// The revocation of `revoke_kid` under way or done, or `None` when its new key is to be made.
    fn find_revocation(&self, world: &World) -> Result<Option<Outputs>, String> {
        let revoked = self.revoke_kid.as_deref().unwrap_or_default();
        let found = |new: &str| {
            Outputs::from([
                ("new_kid".to_string(), new.to_string()),
                ("old_kid".to_string(), revoked.to_string()),
                (
                    "created_at".to_string(),
                    world.keys.get(new).map_or_else(|| "unknown".to_string(), |ms| utc_ceil(*ms)),
                ),
            ])
        };
        if !world.ever_published(revoked) {
            return Err(format!("kid {revoked} was never published by {}: nothing to revoke", self.keyset_param));
        }
        if !world.keyset.publishes(revoked) {
            return Ok(Some(found(&world.keyset.active)));
        }
        match world.pending().as_slice() {
            [] => Ok(None),
            [new] => Ok(Some(found(new))),
            many => {
                Err(format!("{} keys under {} wait to be published ({})", many.len(), self.keys_path, many.join(", ")))
            }
        }
    }

    async fn find_rotation(
        &self,
        cx: &StepContext,
        world: &World,
    ) -> Result<Result<Option<Outputs>, String>, StepError> {
        let set = &world.keyset;
        let found = |new: &str, old: &str, created: Option<&i64>| {
            Outputs::from([
                ("new_kid".to_string(), new.to_string()),
                ("old_kid".to_string(), old.to_string()),
                ("created_at".to_string(), created.map_or_else(|| "unknown".to_string(), |ms| utc_ceil(*ms))),
            ])
        };
        match set.published.as_slice() {
            [old, new] => return Ok(Ok(Some(found(new, old, world.keys.get(new))))),
            [_] => {}
            _ => {
                return Ok(Err(format!(
                    "the key set publishes {} kids ({set}): a rotation leaves at most two",
                    set.published.len()
                )));
            }
        }
        let active = set.active.as_str();
        let pending = world.pending();
        let leftovers = world.leftovers();
        if pending.len() > 1 {
            return Ok(Err(format!(
                "{} keys under {} wait to be published ({}): a rotation makes one; delete the ones that are not \
                 meant to be published",
                pending.len(),
                self.keys_path,
                pending.join(", ")
            )));
        }
        if let [new] = pending.as_slice() {
            // Made by a create that was killed after writing it, or by this run: reused, not doubled.
            let key = self.load_key(cx, new).await;
            if let Err(e) = key {
                return Ok(Err(format!("the pending key {new} cannot be used: {e}")));
            }
            return Ok(Ok(Some(found(new, active, world.keys.get(*new)))));
        }
        if let [old] = leftovers.as_slice() {
            // Retired from the key set, its key not yet deleted: the rotation to `active` is under way.
            return Ok(Ok(Some(found(active, old, world.keys.get(active)))));
        }
        if leftovers.len() > 1 {
            return Ok(Err(format!(
                "keys of {} retired kids are still under {} ({}): delete them by hand",
                leftovers.len(),
                self.keys_path,
                leftovers.join(", ")
            )));
        }
        if active == HS256 {
            return Ok(Ok(None));
        }
        let Some(created) = world.keys.get(active) else {
            return Ok(Err(format!("the active kid {active} has no key under {}", self.keys_path)));
        };
        let age_ms = cx.now_ms().await? - created;
        if self.rotate_after_days > 0 && age_ms < self.rotate_after_days as i64 * 86_400_000 {
            // Finished (or younger than the rotation period): the kid it replaced is the active one
            // of the last key set before `active` was published.
            let old = world
                .history
                .iter()
                .rev()
                .find(|(_, s)| !s.publishes(active))
                .map_or(HS256.to_string(), |(_, s)| s.active.clone());
            return Ok(Ok(Some(found(active, &old, Some(created)))));
        }
        Ok(Ok(None))
    }

    async fn probe_create(&self, cx: &StepContext) -> Result<Probe, StepError> {
        let world = self.survey(cx).await?;
        if let Some(revoked) = &self.revoke_kid {
            return Ok(match self.find_revocation(&world) {
                Err(conflict) => Probe::Conflict(conflict),
                Ok(Some(outputs)) => Probe::Satisfied(outputs),
                Ok(None) => Probe::Absent(format!(
                    "make a new P-256 key and write it to {}<its kid> (SecureString): {revoked} is revoked",
                    self.keys_path
                )),
            });
        }
        Ok(match self.find_rotation(cx, &world).await? {
            Err(conflict) => Probe::Conflict(conflict),
            Ok(Some(outputs)) => Probe::Satisfied(outputs),
            Ok(None) => {
                let why = if world.keyset.active == HS256 {
                    "Dixie signs with 001's HS256 secret".to_string()
                } else {
                    format!("the active key {} is {} days old or more", world.keyset.active, self.rotate_after_days)
                };
                Probe::Absent(format!(
                    "make a new P-256 key and write it to {}<its kid> (SecureString, never overwritten): {why}",
                    self.keys_path
                ))
            }
        })
    }

    async fn apply_create(&self, cx: &StepContext) -> Result<(), StepError> {
        let world = self.survey(cx).await?;
        let found = if self.revoke_kid.is_none() {
            self.find_rotation(cx, &world).await?
        } else {
            self.find_revocation(&world)
        };
        if let Ok(Some(found)) = found {
            cx.log(format!("the new key {} is there already: reused", found["new_kid"])).await;
            return Ok(());
        }
        let (kid, pem) = SigningKey::generate().map_err(|e| StepError::fatal(e.0, "retry; report it if it stays"))?;
        let name = self.key_param(&kid);
        let run = cx.run().map_or_else(String::new, |r| format!(" run {r}"));
        cx.cloud
            .ssm
            .put_parameter()
            .name(&name)
            .value(pem.expose())
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .overwrite(false)
            .description(format!(
                "Dixie's ES256 signing key {kid} (PKCS#8), made by runbook{run} step {}; docs/ring.md, Keys",
                cx.step
            ))
            .send()
            .await
            .map_err(|e| StepError::from_sdk(&format!("ssm:PutParameter {name}"), e))?;
        drop(pem);
        cx.log(format!("wrote the new key {name} (SecureString; the key is not shown)")).await;
        cx.checkpoint("key-written");
        Ok(())
    }

    /// The stage of this step's rotation, or a conflict.
    fn stage_of(&self, world: &World) -> Result<Stage, String> {
        stage(&world.keyset, &self.old_kid, &self.new_kid)
    }

    /// The key set a write action wants, from `stage`; `None` when it is there or past it.
    fn wanted(&self, at: Stage) -> Result<Option<KeySet>, String> {
        let (old, new) = (self.old_kid.clone(), self.new_kid.clone());
        let set = |active: &str, published: Vec<String>| KeySet { active: active.to_string(), published };
        Ok(match (self.action, at) {
            (Action::Publish, Stage::Pending) => Some(set(&old, vec![old.clone(), new])),
            (Action::Publish, _) => None,
            (Action::Switch, Stage::Pending) => {
                return Err(format!("{new} is not published yet: the publish step comes first"));
            }
            (Action::Switch, Stage::Published) => Some(set(&new, vec![old, new.clone()])),
            (Action::Switch, _) => None,
            (Action::Retire, Stage::Pending | Stage::Published) => {
                return Err(format!("Dixie does not sign with {new} yet: the switch step comes first"));
            }
            (Action::Retire, Stage::Switched) => Some(set(&new, vec![new.clone()])),
            (Action::Retire, Stage::Retired) => None,
            _ => None,
        })
    }

    /// The key set the action wants, or `None` when it is there or past it; `Err(conflict)`.
    fn wanted_in(&self, world: &World) -> Result<Option<KeySet>, String> {
        if self.action != Action::Revoke {
            return self.wanted(self.stage_of(world)?);
        }
        // A revocation leaves the new kid alone at once: no overlap, whatever stage it finds.
        let (old, new) = (&self.old_kid, &self.new_kid);
        let alone = KeySet { active: new.clone(), published: vec![new.clone()] };
        if world.keyset.publishes(old) {
            Ok(Some(alone))
        } else if world.keyset == alone {
            Ok(None)
        } else {
            Err(format!("the key set ({}) no longer publishes {old}, but not {new} alone either", world.keyset))
        }
    }

    /// Whether the action takes the old kid out and deletes its key.
    fn retires(&self) -> bool {
        matches!(self.action, Action::Retire | Action::Revoke)
    }

    /// `publish`, `switch`, `retire`, `revoke`: the key set is at or past this action's, Dixie
    /// redeployed since it changed; and for `retire` and `revoke` the old key deleted.
    async fn probe_write(&self, cx: &StepContext) -> Result<Probe, StepError> {
        let world = self.survey(cx).await?;
        let wanted = match self.wanted_in(&world) {
            Ok(w) => w,
            Err(conflict) => return Ok(Probe::Conflict(conflict)),
        };
        if let Some(set) = wanted {
            let mut what = format!("write {} = {}, then redeploy", self.keyset_param, set.to_json());
            if self.retires() {
                what.push_str(&format!(
                    ", check that a token of {} is refused, then {}",
                    self.old_kid,
                    self.deletion()
                ));
            }
            return Ok(Probe::Absent(what));
        }
        if self.retires() && world.keys.contains_key(&self.old_kid) {
            return Ok(Probe::Absent(format!(
                "{}: {} left the key set; first the redeploy, and a token of it refused",
                self.deletion(),
                self.old_kid
            )));
        }
        let redeployed = match Step::probe(self.redeploy()?, cx).await? {
            Probe::Satisfied(outputs) => outputs,
            other => return Ok(other),
        };
        if self.action == Action::Publish {
            // The health check takes a task started up to 2 s before the write for new (clock
            // skew); the JWKS proves that the task serving has read the key set.
            let served = match self.served_jwks(cx).await? {
                Ok((served, _)) => served,
                Err(conflict) => return Ok(Probe::Conflict(conflict)),
            };
            if let Some(kid) = world.keyset.es256_kids().into_iter().find(|k| !served.iter().any(|s| s == k)) {
                return Ok(Probe::Absent(format!(
                    "the JWKS at {} does not serve {kid} yet (serves [{}]): waiting for the new task",
                    self.jwks_url,
                    served.join(", ")
                )));
            }
        }
        let mut outputs = Outputs::from([("keyset".to_string(), world.keyset.to_json())]);
        if let Some(id) = redeployed.get("deployment_id") {
            outputs.insert("deployment_id".into(), id.clone());
        }
        let (name, when) = match self.action {
            Action::Publish => ("published_at", world.first_time(|s| s.publishes(&self.new_kid))),
            Action::Switch => ("switched_at", world.first_time(|s| s.active == self.new_kid)),
            Action::Revoke => {
                ("revoked_at", world.first_time(|s| s.active == self.new_kid && !s.publishes(&self.old_kid)))
            }
            _ => ("retired_at", world.first_time(|s| s.active == self.new_kid && !s.publishes(&self.old_kid))),
        };
        outputs.insert(name.into(), when.map_or_else(|| "unknown".into(), utc_ceil));
        if self.retires() {
            outputs.insert("deleted".into(), self.deleted());
        }
        Ok(Probe::Satisfied(outputs))
    }

    /// What `retire` deletes, as its plan says it.
    fn deletion(&self) -> String {
        if self.old_kid == HS256 {
            "delete nothing (hs256 is 001's DIXIE_JWT_PRIVATE_KEY, terraform's)".into()
        } else {
            format!("delete {}", self.key_param(&self.old_kid))
        }
    }

    fn deleted(&self) -> String {
        if self.old_kid == HS256 { "none (hs256 has no key parameter)".into() } else { self.key_param(&self.old_kid) }
    }

    async fn put_keyset(&self, cx: &StepContext, set: &KeySet) -> Result<(), StepError> {
        self.check_keys_of(cx, set).await?;
        let value = set.to_json();
        cx.cloud
            .ssm
            .put_parameter()
            .name(&self.keyset_param)
            .value(&value)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .map_err(|e| StepError::from_sdk(&format!("ssm:PutParameter {}", self.keyset_param), e))?;
        cx.log(format!("wrote {} = {value}", self.keyset_param)).await;
        cx.checkpoint("keyset-written");
        Ok(())
    }

    async fn apply_write(&self, cx: &StepContext) -> Result<(), StepError> {
        let world = self.survey(cx).await?;
        let wanted = self
            .wanted_in(&world)
            .map_err(|c| StepError::fatal(c, "look at the key set; run the steps in order: runbook status"))?;
        if self.retires() {
            return self.apply_retire(cx, wanted).await;
        }
        if let Some(set) = &wanted {
            self.put_keyset(cx, set).await?;
        }
        Step::apply(self.redeploy()?, cx).await
    }

    /// The key set without the old kid, the redeploy, a token of the old kid refused, and only
    /// then the old key deleted: each part skipped when the world shows it done.
    async fn apply_retire(&self, cx: &StepContext, wanted: Option<KeySet>) -> Result<(), StepError> {
        let old_key = self.old_signer(cx).await?;
        if let Some(set) = wanted.as_ref().filter(|_| self.action == Action::Revoke) {
            // No check first: the point of a revocation is speed.
            self.put_keyset(cx, set).await?;
        } else if let Some(set) = &wanted {
            // Before anything changes: Dixie accepts the old kid's token, so its refusal later means something.
            let (status, body) = self.verify_token(cx, &self.old_token(&old_key)?).await?;
            if status != 200 && status != 401 {
                return Err(StepError::retryable(format!("GET /api/auth/verify: HTTP {status} {body}")));
            }
            if status != 200 {
                return Err(StepError::fatal(
                    format!(
                        "before the retirement Dixie already refuses a token of {} (HTTP {status}: {})",
                        self.old_kid, body["error"]
                    ),
                    "a token of a published kid must verify: look at Dixie's keys (its log) before retiring",
                ));
            }
            self.put_keyset(cx, set).await?;
        }
        let redeploy = self.redeploy()?;
        Step::apply(redeploy, cx).await?;
        // The redeploy, then the refusal: a task started just before the write passes the
        // health check for new, so the refusal is asked until it comes, within the same bound.
        let limit = Step::converge_within(redeploy);
        let started = tokio::time::Instant::now();
        loop {
            let still = match Step::probe(redeploy, cx).await {
                Ok(Probe::Satisfied(_)) => match self.check_refused(cx, &old_key).await {
                    Ok(()) => break,
                    Err(StepError::Retryable { message }) => message,
                    Err(e) => return Err(e),
                },
                Ok(Probe::Conflict(c)) => return Err(StepError::fatal(c, cx.retry_hint())),
                Ok(Probe::Absent(still)) | Err(StepError::Retryable { message: still }) => still,
                Err(e) => return Err(e),
            };
            if started.elapsed() >= limit {
                return Err(StepError::retryable(format!(
                    "not converged within {} s of the key set write: {still}",
                    limit.as_secs()
                )));
            }
            cx.progress(&still).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if !self.finn_jwks_cache_url.is_empty() {
            // "Finn told": the ring's Finn forgets its cached JWKS (on AWS: redeploy the client).
            let url = &self.finn_jwks_cache_url;
            let (status, _, _, _) = self.send(cx, reqwest::Method::DELETE, url, None, None).await?;
            if !(200..300).contains(&status) {
                return Err(StepError::retryable(format!("DELETE {url}: HTTP {status}")));
            }
            cx.log(format!("told Finn: DELETE {url} (its cached JWKS forgotten)")).await;
        }
        if self.old_kid != HS256 {
            cx.checkpoint("before-delete");
            let name = self.key_param(&self.old_kid);
            match cx.cloud.ssm.delete_parameter().name(&name).send().await {
                Ok(_) => cx.log(format!("deleted {name}: the old key is gone")).await,
                Err(e) if e.as_service_error().is_some_and(|s| s.is_parameter_not_found()) => {}
                Err(e) => return Err(StepError::from_sdk(&format!("ssm:DeleteParameter {name}"), e)),
            }
        }
        Ok(())
    }

    /// What signs a token of the old kid: its private key, or 001's HS256 secret.
    async fn old_signer(&self, cx: &StepContext) -> Result<OldSigner, StepError> {
        if self.old_kid == HS256 {
            let source = self.hs256_key.as_ref().ok_or_else(|| {
                StepError::fatal(
                    "retiring hs256 needs `hs256_key` (DIXIE_JWT_PRIVATE_KEY) to check that its tokens are refused",
                    "add hs256_key = { ssm = \"/dixie/<env>/DIXIE_JWT_PRIVATE_KEY\" } to the retire step",
                )
            })?;
            return Ok(OldSigner::Hs256(read_secret(cx, "hs256_key", source).await?));
        }
        match self.load_key(cx, &self.old_kid).await {
            Ok(key) => Ok(OldSigner::Es256(key)),
            // Deleted: the retirement finished, its refusal was checked before the deletion.
            Err(_) if !self.exists(cx, &self.key_param(&self.old_kid)).await? => Ok(OldSigner::Gone),
            Err(e) => Err(e),
        }
    }

    async fn exists(&self, cx: &StepContext, name: &str) -> Result<bool, StepError> {
        Ok(cx.parameter(name).await?.is_some())
    }

    fn old_token(&self, signer: &OldSigner) -> Result<Secret<String>, StepError> {
        let claims = keys::claims(WALLET, unix_now(), TOKEN_SECONDS);
        match signer {
            OldSigner::Hs256(secret) => Ok(keys::sign_hs256(secret, &claims)),
            OldSigner::Es256(key) => key.sign(&claims).map_err(|e| StepError::retryable(e.0)),
            OldSigner::Gone => Err(StepError::fatal(
                format!("the key of {} is deleted: no token of it can be made", self.old_kid),
                "nothing to check: the retirement finished",
            )),
        }
    }

    /// A token of the old kid is refused by the redeployed Dixie with the stand-in's reason.
    async fn check_refused(&self, cx: &StepContext, signer: &OldSigner) -> Result<(), StepError> {
        let (status, body) = self.verify_token(cx, &self.old_token(signer)?).await?;
        let reason = body["error"].as_str().unwrap_or_default();
        let expected = if self.old_kid == HS256 {
            "alg 'HS256' is not accepted".to_string()
        } else {
            format!("kid {} is not in the key set", self.old_kid)
        };
        if status == 401 && reason.starts_with(&expected) {
            cx.log(format!("a token of {} is refused: HTTP 401 {reason}", self.old_kid)).await;
            return Ok(());
        }
        Err(StepError::retryable(format!(
            "a token of {} is not refused as it should be after the retirement: HTTP {status} {body} (want 401 \
             \"{expected}…\")",
            self.old_kid
        )))
    }

    async fn http(&self, cx: &StepContext, url: &str) -> Result<reqwest::Client, StepError> {
        let (scheme, host, port) = reach::endpoint_of(url)
            .ok_or_else(|| StepError::fatal(format!("{url:?} is not a URL"), "fix the runbook's URL"))?;
        let port = port.unwrap_or(if scheme == "https" { 443 } else { 80 });
        let addr = cx.env.dial(&host, port).map_err(|e| StepError::fatal(e, "fix the environment's address map"))?;
        reqwest::Client::builder()
            .resolve(&host, addr)
            .timeout(HTTP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| StepError::fatal(e.to_string(), "report it"))
    }

    /// Sends one request; the body as JSON (`Null` when it is not). Errors name the route, never a header.
    async fn send(
        &self,
        cx: &StepContext,
        method: reqwest::Method,
        url: &str,
        bearer: Option<&Secret<String>>,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value, Option<String>, String), StepError> {
        let mut request = self.http(cx, url).await?.request(method.clone(), url);
        if let Some(token) = bearer {
            request = request.bearer_auth(token.expose());
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            StepError::retryable(format!("{method} {url}: {}", crate::error_chain::error_chain(&e.without_url())))
        })?;
        let status = response.status().as_u16();
        let cache = response.headers().get("cache-control").and_then(|v| v.to_str().ok()).map(String::from);
        let text = response.text().await.map_err(|e| StepError::retryable(format!("{method} {url}: {e}")))?;
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Ok((status, json, cache, text))
    }

    async fn verify_token(
        &self,
        cx: &StepContext,
        token: &Secret<String>,
    ) -> Result<(u16, serde_json::Value), StepError> {
        let url = format!("{}/api/auth/verify", self.dixie_url.trim_end_matches('/'));
        let (status, body, _, _) = self.send(cx, reqwest::Method::GET, &url, Some(token), None).await?;
        Ok((status, body))
    }

    /// `retire`'s verify: its probe, and while the old kid's token can still be made (hs256,
    /// or a key not yet deleted), its refusal.
    async fn verify_retire(&self, cx: &StepContext) -> Result<Probe, StepError> {
        let probe = self.probe_write(cx).await?;
        if matches!(probe, Probe::Satisfied(_)) {
            let signer = self.old_signer(cx).await?;
            if !matches!(signer, OldSigner::Gone) {
                self.check_refused(cx, &signer).await?;
            }
        }
        Ok(probe)
    }

    /// The JWKS Dixie serves holds every kid the key set publishes (and the new one), each
    /// entry hashing to its kid; its `max-age` is no longer than the runbook's cache wait.
    async fn check_jwks(&self, cx: &StepContext) -> Result<Probe, StepError> {
        let world = self.survey(cx).await?;
        let mut expected: Vec<String> = world.keyset.es256_kids().into_iter().map(String::from).collect();
        if !expected.contains(&self.new_kid) {
            expected.push(self.new_kid.clone());
        }
        let url = &self.jwks_url;
        let (served, max_age) = match self.served_jwks(cx).await? {
            Ok(found) => found,
            Err(conflict) => return Ok(Probe::Conflict(conflict)),
        };
        let missing: Vec<&String> = expected.iter().filter(|k| !served.contains(k)).collect();
        if !missing.is_empty() {
            return Ok(Probe::Conflict(format!(
                "the JWKS at {url} lacks kid {} (serves [{}]; the key set publishes [{}]): Dixie has not loaded the \
                 key set; the publish step's redeploy should have made it",
                missing.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", "),
                served.join(", "),
                world.keyset.published.join(", ")
            )));
        }
        if let Some(age) = max_age
            && self.cache_wait_seconds > 0
            && age > self.cache_wait_seconds
        {
            return Ok(Probe::Conflict(format!(
                "Dixie serves the JWKS with max-age {age} s, longer than the {} s the runbook waits for the caches: \
                 raise the wait to at least {age} s plus the redeploy",
                self.cache_wait_seconds
            )));
        }
        Ok(Probe::Satisfied(Outputs::from([
            ("kids".to_string(), served.join(",")),
            ("max_age_seconds".to_string(), max_age.map_or_else(|| "none".into(), |a| a.to_string())),
        ])))
    }

    /// The kids of the JWKS Dixie serves, each entry checked to hash to its kid, and its
    /// `max-age`; `Err(conflict)` for an entry that does not.
    async fn served_jwks(&self, cx: &StepContext) -> Result<Result<(Vec<String>, Option<u64>), String>, StepError> {
        let url = &self.jwks_url;
        let (status, body, cache, text) = self.send(cx, reqwest::Method::GET, url, None, None).await?;
        let shown = || text.chars().take(200).collect::<String>();
        if status != 200 {
            return Err(StepError::retryable(format!("GET {url}: HTTP {status}: {}", shown())));
        }
        let Some(entries) = body.get("keys").and_then(|k| k.as_array()) else {
            let found = if body.is_null() {
                format!("not JSON: {}", shown())
            } else {
                format!("no \"keys\" list: {}", shown())
            };
            return Err(StepError::fatal(
                format!("GET {url} is not a JWKS ({{\"keys\": [...]}}): {found}"),
                "check jwks_url: it must name Dixie's /api/auth/.well-known/jwks.json",
            ));
        };
        let mut served = Vec::new();
        for entry in entries {
            let kid = entry.get("kid").and_then(|k| k.as_str());
            let point = (|| {
                let x = keys::b64url_decode(entry.get("x")?.as_str()?)?;
                let y = keys::b64url_decode(entry.get("y")?.as_str()?)?;
                (x.len() == 32 && y.len() == 32).then(|| [&[4u8][..], &x, &y].concat())
            })();
            let shape_ok = entry.get("kty").and_then(|v| v.as_str()) == Some("EC")
                && entry.get("crv").and_then(|v| v.as_str()) == Some("P-256");
            let (Some(kid), Some(point), true) = (kid, point, shape_ok) else {
                return Err(StepError::fatal(
                    format!("GET {url}: an entry is not an EC P-256 JWK with kid, x and y: {entry}"),
                    "Dixie serves a JWKS its clients cannot use: look at its key loading",
                ));
            };
            let actual = keys::thumbprint(&point).map_err(|e| StepError::fatal(e.0, "look at Dixie's JWKS"))?;
            if actual != kid {
                return Ok(Err(format!(
                    "the JWKS entry of kid {kid} holds a key whose RFC 7638 thumbprint is {actual}"
                )));
            }
            served.push(kid.to_string());
        }
        Ok(Ok((served, cache.as_deref().and_then(max_age))))
    }

    /// A new token carries the new kid; a token of the old kid verifies (while it is published).
    async fn check_tokens(&self, cx: &StepContext) -> Result<Probe, StepError> {
        let world = self.survey(cx).await?;
        let at = match self.stage_of(&world) {
            Ok(at) => at,
            Err(conflict) => return Ok(Probe::Conflict(conflict)),
        };
        if matches!(at, Stage::Pending | Stage::Published) {
            return Ok(Probe::Conflict(format!(
                "the key set does not sign with {} yet ({}): the switch step comes first",
                self.new_kid, world.keyset
            )));
        }
        let source = self.admin_key.as_ref().ok_or_else(|| {
            StepError::fatal(
                "check_tokens needs `admin_key`",
                "add admin_key = { ssm = \"/dixie/<env>/DIXIE_ADMIN_KEY\" }",
            )
        })?;
        let admin = read_secret(cx, "admin_key", source).await?;
        let new = self.issued(cx, &admin, None).await?;
        let new_kid =
            keys::token_header(new.expose()).map_err(|e| StepError::fatal(e.0, "look at Dixie's token route"))?.0;
        if new_kid.as_deref() == Some(self.old_kid.as_str()) || (self.old_kid == HS256 && new_kid.is_none()) {
            return Err(StepError::retryable(format!(
                "a new token still carries the old kid {}: the switch's redeploy has not taken yet",
                self.old_kid
            )));
        }
        if new_kid.as_deref() != Some(self.new_kid.as_str()) {
            return Ok(Probe::Conflict(format!(
                "a new token carries kid {}, not {}: Dixie does not sign with the new key",
                new_kid.as_deref().unwrap_or("none (HS256?)"),
                self.new_kid
            )));
        }
        let (status, body) = self.verify_token(cx, &new).await?;
        if status != 200 {
            return Err(StepError::retryable(format!(
                "a new token of {} does not verify: HTTP {status} {body}",
                self.new_kid
            )));
        }
        let mut outputs = Outputs::from([("new_token_kid".to_string(), self.new_kid.clone())]);
        if at == Stage::Retired {
            outputs.insert("old_token".into(), format!("{} retired since (not checked)", self.old_kid));
            return Ok(Probe::Satisfied(outputs));
        }
        let old = self.issued(cx, &admin, Some(&self.old_kid)).await?;
        let (status, body) = self.verify_token(cx, &old).await?;
        if status != 200 {
            return Ok(Probe::Conflict(format!(
                "a token of the old kid {} is refused while it is still published: HTTP {status} {}",
                self.old_kid, body["error"]
            )));
        }
        outputs.insert("old_token".into(), format!("a token of {} verifies", self.old_kid));
        Ok(Probe::Satisfied(outputs))
    }

    /// A token from the ring's `POST /api/auth/token` (the real Dixie issues them through SIWE only).
    async fn issued(
        &self,
        cx: &StepContext,
        admin: &Secret<String>,
        kid: Option<&str>,
    ) -> Result<Secret<String>, StepError> {
        let url = format!("{}/api/auth/token", self.dixie_url.trim_end_matches('/'));
        let body = match kid {
            Some(kid) => serde_json::json!({"sub": WALLET, "kid": kid}),
            None => serde_json::json!({"sub": WALLET}),
        };
        let (status, answer, _, _) = self.send(cx, reqwest::Method::POST, &url, Some(admin), Some(body)).await?;
        if status == 404 || status == 405 {
            return Err(StepError::fatal(
                format!("POST {url}: HTTP {status}: this Dixie has no test-token route (the ring's stand-in has one)"),
                "on AWS, sign in with SIWE and check the token's header kid and /api/auth/verify by hand \
                 (docs/operator-guide.md, \"Rotating Dixie's JWT key\"), then skip this step: runbook skip",
            ));
        }
        match answer.get("token").and_then(|t| t.as_str()) {
            Some(token) if status == 200 => Ok(Secret::new(token.to_string())),
            _ if (400..500).contains(&status) => Err(StepError::fatal(
                format!("POST {url}: HTTP {status} {}", answer["error"]),
                "the route refused the request: check the admin key (DIXIE_ADMIN_KEY) and the kids",
            )),
            _ => Err(StepError::retryable(format!("POST {url}: HTTP {status} {}", answer["error"]))),
        }
    }

    /// Before any step applies: the key set parses, each kid it publishes (and the pending key)
    /// has a key that loads as its kid, at most one key waits, and the secrets named exist.
    async fn preflight_world(&self, cx: &StepContext) -> Result<(), StepError> {
        let world = self.survey(cx).await?;
        self.check_keys_of(cx, &world.keyset).await?;
        let pending = world.pending();
        if pending.len() > 1 {
            return Err(StepError::fatal(
                format!(
                    "{} keys under {} wait to be published ({})",
                    pending.len(),
                    self.keys_path,
                    pending.join(", ")
                ),
                "a rotation makes one: delete the others by hand",
            ));
        }
        for kid in pending {
            self.load_key(cx, kid).await?;
        }
        if self.action == Action::CheckTokens
            && let Some(source) = &self.admin_key
        {
            read_secret(cx, "admin_key", source).await?;
        }
        if self.retires()
            && let Some(source) = &self.hs256_key
            && world.keyset.publishes(HS256)
        {
            read_secret(cx, "hs256_key", source).await?;
        }
        Ok(())
    }
}

/// What signs a token of the retired kid.
enum OldSigner {
    Hs256(Secret<String>),
    Es256(SigningKey),
    Gone,
}

/// `max-age=N` of a Cache-Control header.
fn max_age(header: &str) -> Option<u64> {
    header.split(',').find_map(|part| part.trim().strip_prefix("max-age=")?.trim().parse().ok())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// A secret from its home; missing or `PLACEHOLDER` fails naming where it should be.
async fn read_secret(cx: &StepContext, key: &str, source: &SecretSource) -> Result<Secret<String>, StepError> {
    let (found, place) = match source {
        SecretSource::Env(var) => (std::env::var(var).ok().map(Secret::new), format!("variable {var}")),
        SecretSource::Ssm(name) => (cx.parameter(name).await?, format!("SSM parameter {name}")),
    };
    match found {
        Some(v) if !v.expose().trim().is_empty() && v.expose() != "PLACEHOLDER" => Ok(v),
        _ => Err(StepError::fatal(
            format!("{key}: {place} does not exist or holds no value"),
            "run sprint-2 first (T2.5 seeds Dixie's keys), or point the key at where it is",
        )),
    }
}

/// A kid param: a thumbprint, `hs256` where `hs256` may be, or an upstream output not known yet.
fn check_kid(field: &str, kid: &str, hs256: bool) -> Result<(), String> {
    if from_upstream(kid) || keys::is_thumbprint(kid) || (hs256 && kid == HS256) {
        return Ok(());
    }
    if kid.is_empty() {
        return Err(format!("{field} is empty: give it the create step's output (${{steps.T4.1.{field}}})"));
    }
    let shown = if kid.len() > 60 { format!("{}… ({} characters)", &kid[..40], kid.len()) } else { kid.to_string() };
    Err(format!(
        "{field} = {shown:?} is not a kid: an RFC 7638 thumbprint (43 characters of A-Z a-z 0-9 - _){}",
        if hs256 { " or \"hs256\"" } else { "" }
    ))
}

impl Step for Params {
    const KIND: &'static str = "jwt_keys";
    const OUTPUTS: Option<&'static [&'static str]> = Some(&[
        "new_kid",
        "old_kid",
        "created_at",
        "keyset",
        "deployment_id",
        "published_at",
        "switched_at",
        "retired_at",
        "deleted",
        "kids",
        "max_age_seconds",
        "new_token_kid",
        "old_token",
        "revoked_at",
    ]);

    fn validate(&self) -> Result<(), String> {
        super::ssm_params::check_parameter_name("keyset_param", &self.keyset_param)?;
        if !self.keys_path.starts_with('/') || !self.keys_path.ends_with('/') {
            return Err("keys_path must be a path that starts and ends with / (e.g. /dixie/armitage/jwt-keys/)".into());
        }
        super::ssm_params::check_parameter_name("keys_path", self.keys_path.trim_end_matches('/'))?;
        if self.keyset_param.starts_with(&self.keys_path) {
            return Err(format!(
                "keyset_param {} is under keys_path {}: keep the key set beside the keys",
                self.keyset_param, self.keys_path
            ));
        }
        if self.rotate_after_days > 3650 {
            return Err(format!(
                "rotate_after_days = {} is more than ten years: give at most 3650",
                self.rotate_after_days
            ));
        }
        super::check_wait("cache_wait_seconds", self.cache_wait_seconds)?;
        let action = self.action;
        if let Some(revoked) = &self.revoke_kid {
            if revoked.trim().is_empty() {
                return Err(
                    "revoke_kid is empty: name the compromised kid (--var kid=<kid>, from the JWKS or the key set)"
                        .into(),
                );
            }
            check_kid("revoke_kid", revoked, true)?;
        }
        if !self.finn_jwks_cache_url.is_empty() {
            reach::check_http_url("finn_jwks_cache_url", &self.finn_jwks_cache_url)?;
        }
        if action != Action::Create {
            check_kid("new_kid", &self.new_kid, false)?;
            check_kid("old_kid", &self.old_kid, true)?;
            if !from_upstream(&self.new_kid) && self.new_kid == self.old_kid {
                return Err("new_kid and old_kid are the same kid".into());
            }
        }
        let need = |field: &str, ok: bool| {
            if ok { Ok(()) } else { Err(format!("action {} needs `{field}`", action.name())) }
        };
        match action {
            Action::Create => {}
            Action::Publish | Action::Switch | Action::Retire | Action::Revoke => {
                let redeploy = self.redeploy.as_ref().ok_or(format!("action {} needs `redeploy`", action.name()))?;
                Step::validate(redeploy).map_err(|e| format!("redeploy: {e}"))?;
                if !redeploy.picks_up(&self.keyset_param) {
                    return Err(format!(
                        "redeploy.inputs must hold {} (or a path above it): the redeploy is how Dixie reads the key set",
                        self.keyset_param
                    ));
                }
                if self.retires() {
                    need("dixie_url", !self.dixie_url.is_empty())?;
                    reach::check_http_url("dixie_url", &self.dixie_url)?;
                }
                if action == Action::Publish {
                    need("jwks_url", !self.jwks_url.is_empty())?;
                    reach::check_http_url("jwks_url", &self.jwks_url)?;
                }
            }
            Action::CheckJwks => {
                need("jwks_url", !self.jwks_url.is_empty())?;
                reach::check_http_url("jwks_url", &self.jwks_url)?;
            }
            Action::CheckTokens => {
                need("dixie_url", !self.dixie_url.is_empty())?;
                need("admin_key", self.admin_key.is_some())?;
                reach::check_http_url("dixie_url", &self.dixie_url)?;
            }
        }
        Ok(())
    }

    fn converge_within(&self) -> Duration {
        match (&self.redeploy, self.action) {
            (Some(redeploy), Action::Publish | Action::Switch | Action::Retire | Action::Revoke) => {
                Step::converge_within(redeploy)
            }
            _ => CHECK_WITHIN,
        }
    }

    async fn preflight(&self, cx: &StepContext) -> Result<(), StepError> {
        self.preflight_world(cx).await
    }

    async fn probe(&self, cx: &StepContext) -> Result<Probe, StepError> {
        match self.action {
            Action::Create => self.probe_create(cx).await,
            Action::Publish | Action::Switch | Action::Retire | Action::Revoke => self.probe_write(cx).await,
            Action::CheckJwks => self.check_jwks(cx).await,
            Action::CheckTokens => self.check_tokens(cx).await,
        }
    }

    async fn apply(&self, cx: &StepContext) -> Result<(), StepError> {
        match self.action {
            Action::Create => self.apply_create(cx).await,
            Action::Publish | Action::Switch | Action::Retire | Action::Revoke => self.apply_write(cx).await,
            // Their probes never say Absent: a check has nothing to apply.
            Action::CheckJwks | Action::CheckTokens => Err(StepError::fatal(
                format!("{} changes nothing", self.action.name()),
                "report it: a check's probe is satisfied or a conflict",
            )),
        }
    }

    async fn verify(&self, cx: &StepContext) -> Result<Probe, StepError> {
        match self.action {
            Action::Retire | Action::Revoke => self.verify_retire(cx).await,
            _ => self.probe(cx).await,
        }
    }
}
