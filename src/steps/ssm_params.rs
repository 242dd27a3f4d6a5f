//! `ssm_params` (T2.5): the service's parameters under one prefix.
//!
//! Derived values (a template, or the private IP of a service's task) are written when absent,
//! `PLACEHOLDER` (what terraform creates) or different. Generated secrets are written only when
//! absent or `PLACEHOLDER`: a re-run never rotates a JWT key or an admin key. A template may
//! name a secret as `{ssm:/name}`: it is read at run time and never leaves the step. The
//! verify proves the values work: DATABASE_URL logs in, REDIS_URL answers PING over TLS,
//! NATS_URL answers PING.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ssm::types::ParameterType;
use serde::Deserialize;

use super::{Probe, Step, StepContext, StepError, reach};
use crate::event::Outputs;
use crate::secret::Secret;

pub(crate) const PLACEHOLDER: &str = "PLACEHOLDER";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {
    /// e.g. `/dixie/armitage`.
    prefix: String,
    params: BTreeMap<String, Spec>,
    /// CA that signs the Redis server certificate, relative to the project folder; empty:
    /// the system's roots (ElastiCache).
    #[serde(default)]
    redis_ca_file: String,
    /// The CA bundle DATABASE_URL's server is checked against (TLS only); empty: system roots.
    #[serde(default)]
    pg_ca_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Spec {
    #[serde(rename = "type")]
    kind: Kind,
    /// A template; `{ssm:/name}` is replaced by that parameter's decrypted value.
    #[serde(default)]
    value: Option<String>,
    /// Generate a secret once: `hex32` (32 random bytes as 64 hex characters).
    #[serde(default)]
    generate: Option<Generate>,
    /// `nats://<private IP of a RUNNING task of this ECS service>:<port>`.
    #[serde(default)]
    nats_task_of: Option<NatsTask>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NatsTask {
    pub(super) cluster: String,
    pub(super) service: String,
    #[serde(default = "nats_port")]
    pub(super) port: u16,
}

fn nats_port() -> u16 {
    4222
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub(crate) enum Kind {
    String,
    SecureString,
}

impl Kind {
    pub(crate) fn parameter_type(self) -> ParameterType {
        match self {
            Kind::String => ParameterType::String,
            Kind::SecureString => ParameterType::SecureString,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Generate {
    Hex32,
}

/// What a parameter should hold, and whether an existing real value is kept.
enum Desired {
    Exactly(Secret<String>),
    KeepIfSet,
}

impl Params {
    fn name(&self, key: &str) -> String {
        format!("{}/{key}", self.prefix.trim_end_matches('/'))
    }

    /// Live values, decrypted, by key (absent keys are missing).
    async fn live(&self, cx: &StepContext) -> Result<BTreeMap<String, Secret<String>>, StepError> {
        let names: Vec<String> = self.params.keys().map(|k| self.name(k)).collect();
        let mut live = BTreeMap::new();
        for chunk in names.chunks(10) {
            let out = cx
                .cloud
                .ssm
                .get_parameters()
                .set_names(Some(chunk.to_vec()))
                .with_decryption(true)
                .send()
                .await
                .map_err(|e| StepError::from_sdk("ssm:GetParameters", e))?;
            for p in out.parameters() {
                if let (Some(name), Some(value)) = (p.name(), p.value()) {
                    let key = name.rsplit('/').next().unwrap_or(name).to_string();
                    live.insert(key, Secret::new(value.to_string()));
                }
            }
        }
        Ok(live)
    }

    async fn desired(&self, cx: &StepContext, spec: &Spec) -> Result<Desired, StepError> {
        if spec.generate.is_some() {
            return Ok(Desired::KeepIfSet);
        }
        if let Some(nats) = &spec.nats_task_of {
            return Ok(Desired::Exactly(Secret::new(format!("nats://{}:{}", task_ip(cx, nats).await?, nats.port))));
        }
        let template = spec.value.clone().unwrap_or_default();
        let mut out = String::new();
        let mut rest = template.as_str();
        while let Some(start) = rest.find("{ssm:") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| StepError::fatal(format!("unclosed {{ssm:…}} in {template}"), "fix the runbook"))?;
            let name = &rest[start + 5..start + end];
            let value = cx.parameter(name).await?.ok_or_else(|| {
                StepError::fatal(
                    format!("SSM {name} (used in a template) does not exist"),
                    "run the step that creates it first",
                )
            })?;
            out.push_str(value.expose());
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        Ok(Desired::Exactly(Secret::new(out)))
    }

    /// The keys to write, each with its value; an empty list means satisfied.
    async fn changes(&self, cx: &StepContext) -> Result<Vec<(String, Secret<String>, &'static str)>, StepError> {
        let live = self.live(cx).await?;
        let mut changes = Vec::new();
        for (key, spec) in &self.params {
            let current = live.get(key).filter(|v| v.expose() != PLACEHOLDER);
            match self.desired(cx, spec).await? {
                Desired::KeepIfSet if current.is_some() => {}
                Desired::KeepIfSet => {
                    changes.push((
                        key.clone(),
                        Secret::random_hex32(),
                        if live.contains_key(key) { "replace PLACEHOLDER with a generated secret" } else { "generate" },
                    ));
                }
                Desired::Exactly(value) if current == Some(&value) => {}
                Desired::Exactly(value) => {
                    let why = match (live.get(key), current) {
                        (None, _) => "create",
                        (Some(_), None) => "replace PLACEHOLDER",
                        _ => "update (differs)",
                    };
                    changes.push((key.clone(), value, why));
                }
            }
        }
        Ok(changes)
    }

    /// The values work: DATABASE_URL logs in, REDIS_URL and NATS_URL answer.
    async fn prove(&self, cx: &StepContext) -> Result<(), StepError> {
        let live = self.live(cx).await?;
        let mut failures = Vec::new();
        if let Some(url) = live.get("DATABASE_URL") {
            let ca = cx.project_file(&self.pg_ca_file);
            match reach::postgres_count(&cx.env, url, "SELECT 1::bigint", ca.as_deref()).await {
                Ok(_) => cx.log("verified: DATABASE_URL logs in").await,
                Err(e) => failures.push(format!("DATABASE_URL does not log in: {e}")),
            }
        }
        if let Some(url) = live.get("REDIS_URL") {
            let ca = cx.project_file(&self.redis_ca_file);
            match reach::redis_ping(&cx.env, url.expose(), ca.as_deref()).await {
                Ok(t) => cx.log(format!("verified: REDIS_URL answers PING over TLS in {} ms", t.as_millis())).await,
                Err(e) => failures.push(format!("REDIS_URL: {e}")),
            }
        }
        if let Some(url) = live.get("NATS_URL") {
            match reach::nats_ping(&cx.env, url.expose()).await {
                Ok(t) => cx.log(format!("verified: NATS_URL answers PING in {} ms", t.as_millis())).await,
                Err(e) => failures.push(format!("NATS_URL: {e}")),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            let message = failures.join("; ");
            // A server that is not answering yet (refused, reset, timed out, shutting down) may
            // answer in a moment: the verify waits for it; a wrong value fails at once.
            let transient = ["Connection refused", "connection reset", "did not answer", "timed out", "shutting down"];
            if failures.iter().all(|f| transient.iter().any(|t| f.contains(t))) {
                Err(StepError::retryable(message))
            } else {
                Err(StepError::fatal(
                    message,
                    format!(
                        "fix the value's source (the database role, ElastiCache, the NATS task), then: {}",
                        cx.retry_hint()
                    ),
                ))
            }
        }
    }
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// An SSM parameter name as SSM accepts it: `DB_PASSWORD`, or a path `/dixie/armitage/DB_PASSWORD`
/// (a name with a `/` starts with one), of letters, digits, `_`, `.` and `-`.
pub(super) fn check_parameter_name(field: &str, name: &str) -> Result<(), String> {
    if let Some(kind) = crate::secret::secret_shape(name) {
        return Err(format!(
            "{field} holds what looks like {kind}, not the name of the SSM parameter that stores it (the value is \
             not shown): put the value in SSM as a SecureString and write its name here, e.g. \
             /runbook/armitage/GITHUB_TOKEN"
        ));
    }
    let path = name.strip_prefix('/').unwrap_or(name);
    let ok = (1..=1011).contains(&name.len())
        && (name.starts_with('/') || !name.contains('/'))
        && path.split('/').all(|part| !part.is_empty() && part.chars().all(name_char));
    if ok {
        Ok(())
    } else {
        // Not echoed: what is not a name may be the secret itself, written in the wrong place.
        Err(format!(
            "{field} is not an SSM parameter name (its value is not shown): letters, digits, `_`, `.` and `-`, \
             as a path that starts with / (e.g. /runbook/armitage/dixie/DB_PASSWORD)"
        ))
    }
}

impl Step for Params {
    const KIND: &'static str = "ssm_params";
    const OUTPUTS: Option<&'static [&'static str]> = Some(&["prefix", "names"]);

    fn validate(&self) -> Result<(), String> {
        let prefix = self.prefix.trim_end_matches('/');
        if !prefix.starts_with('/') || check_parameter_name("prefix", prefix).is_err() {
            return Err(format!(
                "prefix = {:?} is not an SSM parameter path: write /name/name, with letters, digits, `_`, `.` and `-`",
                self.prefix
            ));
        }
        for (key, spec) in &self.params {
            if key.is_empty() || !key.chars().all(name_char) || key.contains('/') {
                return Err(format!(
                    "params.{key:?} is not an SSM parameter name under the prefix: use letters, digits, `_`, `.` and `-`"
                ));
            }
            let sources = [spec.value.is_some(), spec.generate.is_some(), spec.nats_task_of.is_some()];
            if sources.iter().filter(|s| **s).count() != 1 {
                return Err(format!("params.{key}: give exactly one of `value`, `generate`, `nats_task_of`"));
            }
        }
        Ok(())
    }

    async fn preflight(&self, cx: &StepContext) -> Result<(), StepError> {
        super::check_ca_file("pg_ca_file", cx.project_file(&self.pg_ca_file).as_deref())?;
        super::check_ca_file("redis_ca_file", cx.project_file(&self.redis_ca_file).as_deref())
    }

    fn converge_within(&self) -> Duration {
        Duration::from_secs(120)
    }

    /// The probe, then the proof that the result works (only after an apply).
    async fn verify(&self, cx: &StepContext) -> Result<Probe, StepError> {
        super::probe_then_prove(Step::probe(self, cx).await, || self.prove(cx)).await
    }

    async fn probe(&self, cx: &StepContext) -> Result<Probe, StepError> {
        let changes = self.changes(cx).await?;
        if changes.is_empty() {
            return Ok(Probe::Satisfied(Outputs::from([
                ("prefix".to_string(), self.prefix.clone()),
                ("names".to_string(), self.params.keys().cloned().collect::<Vec<_>>().join(",")),
            ])));
        }
        let what: Vec<String> = changes.iter().map(|(key, _, why)| format!("{why} {}", self.name(key))).collect();
        Ok(Probe::Absent(what.join(", ")))
    }

    async fn apply(&self, cx: &StepContext) -> Result<(), StepError> {
        for (key, value, why) in self.changes(cx).await? {
            let spec = &self.params[&key];
            let name = self.name(&key);
            cx.log(format!("{why}: {name} ({:?})", spec.kind)).await;
            cx.cloud
                .ssm
                .put_parameter()
                .name(&name)
                .value(value.expose())
                .r#type(spec.kind.parameter_type())
                .overwrite(true)
                .send()
                .await
                .map_err(|e| StepError::from_sdk(&format!("ssm:PutParameter {name}"), e))?;
            cx.checkpoint(&format!("after-{key}"));
        }
        Ok(())
    }
}

/// The private IPv4 of a RUNNING task of the service. `list-tasks --service-name` is not
/// trusted (moto ignores the filter): tasks are checked by their `group`.
pub(super) async fn task_ip(cx: &StepContext, nats: &NatsTask) -> Result<String, StepError> {
    let ecs = &cx.cloud.ecs;
    let listed = ecs
        .list_tasks()
        .cluster(&nats.cluster)
        .service_name(&nats.service)
        .desired_status(aws_sdk_ecs::types::DesiredStatus::Running)
        .send()
        .await
        .map_err(|e| StepError::from_sdk("ecs:ListTasks", e))?;
    let arns = listed.task_arns().to_vec();
    if arns.is_empty() {
        return Err(StepError::retryable(format!("service {} has no running task", nats.service)));
    }
    let tasks = if cx.env.aws.emulator_credentials.is_some() {
        crate::emulator::describe_tasks(&cx.env, &nats.cluster, &arns).await.map_err(StepError::retryable)?
    } else {
        let described = ecs
            .describe_tasks()
            .cluster(&nats.cluster)
            .set_tasks(Some(arns))
            .send()
            .await
            .map_err(|e| StepError::from_sdk("ecs:DescribeTasks", e))?;
        described
            .tasks()
            .iter()
            .map(|t| {
                let ip = t
                    .attachments()
                    .iter()
                    .flat_map(|a| a.details())
                    .find(|d| d.name() == Some("privateIPv4Address"))
                    .and_then(|d| d.value())
                    .map(String::from);
                (t.group().unwrap_or_default().to_string(), t.last_status().unwrap_or_default().to_string(), ip)
            })
            .collect()
    };
    let group = format!("service:{}", nats.service);
    tasks
        .into_iter()
        .find_map(|(g, status, ip)| (g == group && status == "RUNNING").then_some(ip).flatten())
        .ok_or_else(|| {
            StepError::retryable(format!("no RUNNING task of service {} has a private IPv4 address", nats.service))
        })
}
