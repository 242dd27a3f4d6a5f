//! `diagnose`: one read-only check of the on-call troubleshooting (002 lines 228–300, 003's
//! local checks), with its verdict (ok, warn, fail), the value seen and the next action.
//!
//! A check only reads: ECS DescribeServices, CloudWatch Logs FilterLogEvents, EC2
//! DescribeSecurityGroups/Rules/Vpcs, SSM GetParameters (decrypted, never shown), the health
//! bodies, and PostgreSQL's `pg_locks`. It must never change anything: `apply` refuses. The
//! probe is satisfied when nothing fails (warnings are said once each) and a conflict naming
//! every failure otherwise, so `runbook run diagnose` and `runbook plan diagnose` work too;
//! `runbook diagnose` runs every check at once without a run lock or the state DB.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::security_group_ingress::Ingress;
use super::ssm_params::{NatsTask, PLACEHOLDER};
use super::{Probe, Services, Step, StepContext, StepError, number_or_text, reach};
use crate::event::Outputs;
use crate::health::{HealthPolicy, HealthRule, judge};
use crate::recorder::Recorder;
use crate::runbook::Runbook;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl Verdict {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// One row of a diagnosis: what was checked, its verdict, the value seen, what to do next.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Finding {
    pub(crate) check: String,
    pub(crate) verdict: Verdict,
    pub(crate) value: String,
    /// Empty when there is nothing to do.
    pub(crate) next: String,
    /// More lines the operator reads below the row (service events, log lines).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) details: Vec<String>,
}

impl Finding {
    fn new(check: &str, verdict: Verdict, value: impl Into<String>, next: impl Into<String>) -> Self {
        Finding { check: check.to_string(), verdict, value: value.into(), next: next.into(), details: Vec::new() }
    }

    fn ok(check: &str, value: impl Into<String>) -> Self {
        Finding::new(check, Verdict::Ok, value, "")
    }

    /// A check that could not read what it checks: a failure, with the error's own fix.
    fn unreadable(check: &str, error: StepError) -> Self {
        let next = error.fix().unwrap_or("check the credentials and the network, then run runbook diagnose again");
        Finding::new(check, Verdict::Fail, format!("cannot check: {error}"), next.to_string())
    }
}

/// The severity of a missing security-group rule: `fail`, or `warn` where it is expected (the
/// NATS rule before sprint 3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Missing {
    Warn,
    #[default]
    Fail,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "check", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Params {
    /// The ECS service's deployments, the PRIMARY one's rollout state, and its last events.
    Service {
        cluster: String,
        service: String,
        #[serde(default = "ten", deserialize_with = "number_or_text")]
        events: u64,
    },
    /// Running tasks against desired.
    Tasks { cluster: String, service: String },
    /// Lines matching `pattern` in a CloudWatch Logs group over the last `minutes`.
    LogErrors {
        group: String,
        #[serde(default = "ten", deserialize_with = "number_or_text")]
        minutes: u64,
        #[serde(default = "error_pattern")]
        pattern: String,
        /// What to do when there are some (002: "Identify and fix the startup error…").
        next: String,
    },
    /// An inbound rule a service needs: by its source group, or by a CIDR that holds the whole
    /// VPC of the source group.
    Ingress {
        rule: Ingress,
        #[serde(default)]
        missing: Missing,
        /// What to do when it is missing (002's fix for it).
        next: String,
    },
    /// Dixie's `/api/health`: the verdict of its body, each component with 002's hint, and
    /// Finn's latency as Dixie sees it (the median of `samples` bodies).
    DixieHealth {
        url: String,
        #[serde(default = "three", deserialize_with = "number_or_text")]
        samples: u64,
        #[serde(default = "five_hundred", deserialize_with = "number_or_text")]
        finn_latency_warn_ms: u64,
    },
    /// Finn's `/health`, straight (002: "Check Finn health directly").
    FinnHealth { url: String },
    /// The parameters under `prefix` exist and are not terraform's `PLACEHOLDER`; with
    /// `nats_task_of`, NATS_URL names a running NATS task.
    #[serde(rename = "ssm_params")]
    Ssm {
        prefix: String,
        names: Vec<String>,
        #[serde(default)]
        nats_task_of: Option<NatsTask>,
    },
    /// `DATABASE_URL` logs in; the migrations are recorded; no migration advisory lock is held
    /// for long (003: "Migration lock timeout").
    Database {
        database_url_param: String,
        #[serde(default)]
        ca_file: String,
        #[serde(deserialize_with = "number_or_text")]
        migrations: u64,
        #[serde(default = "two_minutes", deserialize_with = "number_or_text")]
        lock_fail_after_seconds: u64,
    },
}

fn ten() -> u64 {
    10
}
fn three() -> u64 {
    3
}
fn five_hundred() -> u64 {
    500
}
fn two_minutes() -> u64 {
    120
}
fn error_pattern() -> String {
    "ERROR".into()
}

impl Step for Params {
    const KIND: &'static str = "diagnose";
    const OUTPUTS: Option<&'static [&'static str]> = None;

    fn validate(&self) -> Result<(), String> {
        let nonempty = |field: &str, value: &str| {
            if value.trim().is_empty() { Err(format!("{field} is empty")) } else { Ok(()) }
        };
        match self {
            Params::Service { cluster, service, events } => {
                nonempty("cluster", cluster)?;
                nonempty("service", service)?;
                if !(1..=100).contains(events) {
                    return Err(format!("events = {events}: show 1 to 100 events"));
                }
            }
            Params::Tasks { cluster, service } => {
                nonempty("cluster", cluster)?;
                nonempty("service", service)?;
            }
            Params::LogErrors { group, minutes, pattern, next } => {
                nonempty("group", group)?;
                nonempty("pattern", pattern)?;
                nonempty("next", next)?;
                if !(1..=1440).contains(minutes) {
                    return Err(format!("minutes = {minutes}: look back 1 to 1440 minutes"));
                }
            }
            Params::Ingress { rule, next, .. } => {
                rule.check().map_err(|e| format!("rule.{e}"))?;
                nonempty("next", next)?;
            }
            Params::DixieHealth { url, samples, .. } => {
                reach::check_http_url("url", url)?;
                if !(1..=10).contains(samples) {
                    return Err(format!("samples = {samples}: take 1 to 10 samples"));
                }
            }
            Params::FinnHealth { url } => reach::check_http_url("url", url)?,
            Params::Ssm { prefix, names, .. } => {
                if !prefix.starts_with('/') || prefix.ends_with('/') {
                    return Err(format!("prefix = {prefix:?}: write /path/without/trailing/slash"));
                }
                if names.is_empty() {
                    return Err("names is empty: list the parameters the service needs".into());
                }
                for name in names {
                    super::ssm_params::check_parameter_name("names", &format!("{prefix}/{name}"))?;
                }
            }
            Params::Database { database_url_param, .. } => {
                super::ssm_params::check_parameter_name("database_url_param", database_url_param)?;
            }
        }
        Ok(())
    }

    fn converge_within(&self) -> Duration {
        Duration::ZERO
    }

    async fn probe(&self, cx: &StepContext) -> Result<Probe, StepError> {
        let findings = self.examine(cx).await;
        let mut outputs = Outputs::new();
        let mut failures = Vec::new();
        for f in &findings {
            match f.verdict {
                Verdict::Fail => failures.push(format!("{}: {}; next: {}", f.check, f.value, f.next)),
                Verdict::Warn => cx.warn(format!("{}: {}; next: {}", f.check, f.value, f.next)).await,
                Verdict::Ok => {}
            }
            outputs.insert(f.check.clone(), format!("{} {}", f.verdict.as_str(), f.value));
        }
        if failures.is_empty() { Ok(Probe::Satisfied(outputs)) } else { Ok(Probe::Conflict(failures.join("\n"))) }
    }

    async fn apply(&self, _cx: &StepContext) -> Result<(), StepError> {
        Err(StepError::fatal(
            "a diagnose check changes nothing; its failure is the finding",
            "follow the finding's next action, then: runbook diagnose",
        ))
    }
}

impl Params {
    /// Every finding of this check, named after `cx.step` (and a component where it has several).
    pub(crate) async fn examine(&self, cx: &StepContext) -> Vec<Finding> {
        let id = cx.step.as_str();
        match self {
            Params::Service { cluster, service, events } => {
                vec![service_state(cx, id, cluster, service, *events).await]
            }
            Params::Tasks { cluster, service } => vec![tasks(cx, id, cluster, service).await],
            Params::LogErrors { group, minutes, pattern, next } => {
                vec![log_errors(cx, id, group, *minutes, pattern, next).await]
            }
            Params::Ingress { rule, missing, next } => vec![ingress(cx, id, rule, *missing, next).await],
            Params::DixieHealth { url, samples, finn_latency_warn_ms } => {
                dixie_health(cx, id, url, *samples, *finn_latency_warn_ms).await
            }
            Params::FinnHealth { url } => vec![finn_health(cx, id, url).await],
            Params::Ssm { prefix, names, nats_task_of } => {
                ssm_params(cx, id, prefix, names, nats_task_of.as_ref()).await
            }
            Params::Database { database_url_param, ca_file, migrations, lock_fail_after_seconds } => {
                database(cx, id, database_url_param, ca_file, *migrations, *lock_fail_after_seconds).await
            }
        }
    }
}

// ---- ECS ----

async fn describe(
    cx: &StepContext,
    cluster: &str,
    service: &str,
) -> Result<Option<aws_sdk_ecs::types::Service>, StepError> {
    let out = cx
        .cloud
        .ecs
        .describe_services()
        .cluster(cluster)
        .services(service)
        .send()
        .await
        .map_err(|e| StepError::from_sdk("ecs:DescribeServices", e))?;
    Ok(out.services().iter().find(|s| s.status() == Some("ACTIVE")).cloned())
}

fn not_active(id: &str, cluster: &str, service: &str) -> Finding {
    Finding::new(
        id,
        Verdict::Fail,
        format!("service {service} is not active in cluster {cluster}"),
        "sprint-2's terraform (T2.4) creates it: runbook run sprint-2",
    )
}

async fn service_state(cx: &StepContext, id: &str, cluster: &str, service: &str, events: u64) -> Finding {
    let svc = match describe(cx, cluster, service).await {
        Ok(Some(svc)) => svc,
        Ok(None) => return not_active(id, cluster, service),
        Err(e) => return Finding::unreadable(id, e),
    };
    let deployments: Vec<Deployment> = svc
        .deployments()
        .iter()
        .map(|d| Deployment {
            status: d.status().unwrap_or("?").to_string(),
            rollout: d.rollout_state().map(|r| r.as_str().to_string()).unwrap_or_default(),
            reason: d.rollout_state_reason().unwrap_or_default().to_string(),
            task_definition: d.task_definition().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string(),
        })
        .collect();
    let counts = Counts { running: svc.running_count(), desired: svc.desired_count(), pending: svc.pending_count() };
    let mut finding = judge_service(id, cluster, service, &deployments, counts);
    finding.details = svc
        .events()
        .iter()
        .take(events as usize)
        .map(|e| {
            let when =
                e.created_at().and_then(|t| t.to_millis().ok()).map(crate::clock::format_utc).unwrap_or_default();
            format!("{when} {}", e.message().unwrap_or_default())
        })
        .collect();
    finding
}

/// A deployment as the verdict needs it.
#[derive(Debug, Clone)]
struct Deployment {
    status: String,
    /// COMPLETED, IN_PROGRESS, FAILED, or empty (moto sets none).
    rollout: String,
    reason: String,
    task_definition: String,
}

/// The service's task counts, as ECS reports them.
#[derive(Debug, Clone, Copy)]
struct Counts {
    running: i32,
    desired: i32,
    pending: i32,
}

/// The rollout's verdict and the task counts' together, the worse one deciding.
fn judge_service(id: &str, cluster: &str, service: &str, deployments: &[Deployment], counts: Counts) -> Finding {
    let rollout = judge_deployments(id, deployments);
    let rolling = deployments.len() > 1 || deployments.iter().any(|d| d.status == "PRIMARY" && d.rollout == "IN_PROGRESS");
    let tasks = judge_counts(id, cluster, service, counts, rolling);
    let value = format!("{}; {}", rollout.value, tasks.value);
    let worse = if tasks.verdict > rollout.verdict { tasks } else { rollout };
    Finding { value, ..worse }
}

/// A service is up when it wants at least one task and runs what it wants. Running short only
/// warns while a rollout replaces tasks (`rolling`) and at least one task runs; nothing desired,
/// nothing running, or a negative count (no evidence) fails.
fn judge_counts(id: &str, cluster: &str, service: &str, counts: Counts, rolling: bool) -> Finding {
    let Counts { running, desired, pending } = counts;
    let value = format!("{running} running of {desired} desired, {pending} pending");
    let events = "tasks stop or do not start: read the service's events below and its ERROR lines (a missing SSM \
                  parameter fails a task before it runs)";
    if running < 0 || desired < 0 || pending < 0 {
        let next = format!("ECS reported a negative count: read it yourself (aws ecs describe-services --cluster {cluster} --services {service})");
        Finding::new(id, Verdict::Fail, value, next)
    } else if desired == 0 {
        let next = format!(
            "the service is scaled to 0: aws ecs update-service --cluster {cluster} --service {service} --desired-count 1 \
             (for Dixie's own service, runbook run sprint-2 restores 1 task)"
        );
        Finding::new(id, Verdict::Fail, value, next)
    } else if running == 0 {
        Finding::new(id, Verdict::Fail, value, events)
    } else if running < desired && rolling {
        Finding::new(
            id,
            Verdict::Warn,
            value,
            "a rollout is replacing tasks: run runbook diagnose again in a minute; if it stays short, read the events",
        )
    } else if running < desired {
        Finding::new(id, Verdict::Fail, value, events)
    } else {
        Finding::ok(id, value)
    }
}

/// A FAILED rollout fails (002 "ECS Circuit Breaker Rollback"), one still rolling or beside
/// another deployment warns.
fn judge_deployments(id: &str, deployments: &[Deployment]) -> Finding {
    let Some(primary) = deployments.iter().find(|d| d.status == "PRIMARY") else {
        return Finding::new(id, Verdict::Fail, "no PRIMARY deployment", "runbook run sprint-2 (T2.6 deploys)");
    };
    let rollout = if primary.rollout.is_empty() { "not reported" } else { primary.rollout.as_str() };
    let mut value =
        format!("PRIMARY {} rollout {rollout}, {} deployment(s)", primary.task_definition, deployments.len());
    if !primary.reason.is_empty() {
        value.push_str(&format!(" ({})", primary.reason));
    }
    if primary.rollout == "FAILED" {
        return Finding::new(
            id,
            Verdict::Fail,
            value,
            "the new revision crashes at start-up (002: a missing or PLACEHOLDER SSM value, a failed migration, a \
             wrong image tag): read the ERROR lines and events below, fix it, push a corrected image and run \
             runbook run sprint-2",
        );
    }
    if primary.rollout == "IN_PROGRESS" || deployments.len() > 1 {
        return Finding::new(
            id,
            Verdict::Warn,
            value,
            "a deployment is rolling out: run runbook diagnose again in a minute; if it stays, read the events",
        );
    }
    Finding::ok(id, value)
}

async fn tasks(cx: &StepContext, id: &str, cluster: &str, service: &str) -> Finding {
    match describe(cx, cluster, service).await {
        Ok(Some(svc)) => {
            let counts = Counts { running: svc.running_count(), desired: svc.desired_count(), pending: svc.pending_count() };
            judge_counts(id, cluster, service, counts, false)
        }
        Ok(None) => not_active(id, cluster, service),
        Err(e) => Finding::unreadable(id, e),
    }
}

// ---- CloudWatch Logs ----

async fn log_errors(cx: &StepContext, id: &str, group: &str, minutes: u64, pattern: &str, next: &str) -> Finding {
    let since = crate::clock::now_ms() - (minutes as i64) * 60_000;
    let mut pages = cx
        .cloud
        .logs
        .filter_log_events()
        .log_group_name(group)
        .start_time(since)
        .filter_pattern(pattern)
        .into_paginator()
        .send();
    let mut lines: Vec<(i64, String)> = Vec::new();
    while let Some(page) = pages.next().await {
        let page = match page {
            Ok(page) => page,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => {
                return Finding::new(
                    id,
                    Verdict::Fail,
                    format!("log group {group} does not exist"),
                    "sprint-2's terraform (T2.4) creates it: runbook run sprint-2",
                );
            }
            Err(e) => return Finding::unreadable(id, StepError::from_sdk("logs:FilterLogEvents", e)),
        };
        // The pattern is a plain term here; the same test keeps an emulator's looser filter honest.
        lines.extend(page.events().iter().filter_map(|e| {
            let message = e.message()?.trim_end();
            message.contains(pattern).then(|| (e.timestamp().unwrap_or(0), message.to_string()))
        }));
        if lines.len() >= 1000 {
            break;
        }
    }
    judge_log_lines(id, group, minutes, pattern, next, lines)
}

fn judge_log_lines(
    id: &str,
    group: &str,
    minutes: u64,
    pattern: &str,
    next: &str,
    mut lines: Vec<(i64, String)>,
) -> Finding {
    if lines.is_empty() {
        return Finding::ok(id, format!("no {pattern} line in {group} in the last {minutes} min"));
    }
    lines.sort();
    let mut finding = Finding::new(
        id,
        Verdict::Fail,
        format!(
            "{} {pattern} line(s) in {group} in the last {minutes} min; the latest: {}",
            lines.len(),
            lines.last().map(|(_, l)| clip(l, 160)).unwrap_or_default()
        ),
        next,
    );
    finding.details = lines
        .iter()
        .rev()
        .take(10)
        .rev()
        .map(|(ms, l)| format!("{} {}", crate::clock::format_utc(*ms), clip(l, 200)))
        .collect();
    finding
}

fn clip(text: &str, chars: usize) -> String {
    if text.chars().count() > chars {
        format!("{}…", text.chars().take(chars).collect::<String>())
    } else {
        text.to_string()
    }
}

// ---- security groups ----

async fn ingress(cx: &StepContext, id: &str, rule: &Ingress, missing: Missing, next: &str) -> Finding {
    let severity = match missing {
        Missing::Warn => Verdict::Warn,
        Missing::Fail => Verdict::Fail,
    };
    let (group, source) = match rule.lookup_ids(cx).await {
        Ok(ids) => ids,
        Err(e) => return Finding::unreadable(id, e),
    };
    let (Some(group), Some(source)) = (group, source) else {
        return Finding::new(id, severity, format!("{} is missing: a group does not exist", rule.name()), next);
    };
    match rule.find(cx, &group, &source).await {
        Ok(Some(found)) => return Finding::ok(id, format!("{} exists ({found})", rule.name())),
        Ok(None) => {}
        Err(e) => return Finding::unreadable(id, e),
    }
    // AWS also admits the source's tasks through a CIDR rule that holds their VPC's range.
    match vpc_range_rule(cx, &group, &source, rule.port()).await {
        Ok(Some(cidr)) => {
            Finding::ok(id, format!("{} is admitted by {cidr}, which holds its VPC's range", rule.name()))
        }
        Ok(None) => Finding::new(id, severity, format!("{} is missing", rule.name()), next),
        Err(e) => Finding::unreadable(id, e),
    }
}

/// An inbound rule of `group` for `port` whose IPv4 range holds the whole VPC of `source`.
async fn vpc_range_rule(cx: &StepContext, group: &str, source: &str, port: u16) -> Result<Option<String>, StepError> {
    use aws_sdk_ec2::types::Filter;
    let ec2 = &cx.cloud.ec2;
    let groups = ec2
        .describe_security_groups()
        .group_ids(source)
        .send()
        .await
        .map_err(|e| StepError::from_sdk("ec2:DescribeSecurityGroups", e))?;
    let Some(vpc) = groups.security_groups().first().and_then(|g| g.vpc_id()).map(String::from) else {
        return Ok(None);
    };
    let vpcs =
        ec2.describe_vpcs().vpc_ids(&vpc).send().await.map_err(|e| StepError::from_sdk("ec2:DescribeVpcs", e))?;
    let Some(range) = vpcs.vpcs().first().and_then(|v| v.cidr_block()).and_then(parse_cidr) else {
        return Ok(None);
    };
    let rules = ec2
        .describe_security_group_rules()
        .filters(Filter::builder().name("group-id").values(group).build())
        .send()
        .await
        .map_err(|e| StepError::from_sdk("ec2:DescribeSecurityGroupRules", e))?;
    let port = i32::from(port);
    Ok(rules.security_group_rules().iter().find_map(|r| {
        let protocol = r.ip_protocol().unwrap_or_default();
        let covers = protocol == "-1"
            || ((protocol == "tcp" || protocol == "6")
                && r.from_port().unwrap_or(-1) <= port
                && port <= r.to_port().unwrap_or(-1));
        let cidr = r.cidr_ipv4()?;
        (r.is_egress() == Some(false) && covers && parse_cidr(cidr).is_some_and(|c| holds(c, range)))
            .then(|| cidr.to_string())
    }))
}

fn parse_cidr(text: &str) -> Option<(u32, u8)> {
    let (ip, bits) = text.split_once('/')?;
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    let bits: u8 = bits.parse().ok()?;
    (bits <= 32).then_some((u32::from(ip), bits))
}

/// Whether range `outer` holds all of `inner`.
fn holds(outer: (u32, u8), inner: (u32, u8)) -> bool {
    let mask = |bits: u8| if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
    outer.1 <= inner.1 && (outer.0 & mask(outer.1)) == (inner.0 & mask(outer.1))
}

// ---- health ----

/// 002's (and 003's) next action for a component of Dixie's health body that is not up.
fn component_hint(component: &str) -> &'static str {
    match component {
        "postgresql" => {
            "002 PostgreSQL Connection Timeout: the RDS group must admit Dixie's task group on 5432 (see the \
             rds-5432 check); 003: DATABASE_URL's password must be the role's (see the database check)"
        }
        "redis" => {
            "003: Redis (ElastiCache) is down or out of memory: check the replication group's status and \
             REDIS_URL; Dixie reconnects by itself once it answers"
        }
        "nats" => {
            "002 NATS EHOSTUNREACH: expected until sprint 3 (the NATS group has no rule for Dixie's on 4222): \
             runbook run sprint-3; if the rule exists, NATS_URL may name a stopped task (see the ssm check)"
        }
        _ => "read the component's error in the health body",
    }
}

async fn sample(cx: &StepContext, url: &str) -> Result<(u16, serde_json::Value, Duration), String> {
    reach::get_json(&cx.env, url).await
}

async fn dixie_health(cx: &StepContext, id: &str, url: &str, samples: u64, latency_warn_ms: u64) -> Vec<Finding> {
    let mut bodies = Vec::new();
    for _ in 0..samples {
        match sample(cx, url).await {
            Ok((status, body, _)) => bodies.push((status, body)),
            Err(e) => {
                return vec![Finding::new(
                    id,
                    Verdict::Fail,
                    format!("Dixie does not answer: {e}"),
                    "Dixie's task is not serving: read the service, tasks and log-errors checks",
                )];
            }
        }
    }
    let latencies: Vec<u64> =
        bodies.iter().filter_map(|(_, b)| b["services"]["loa_finn"]["latency_ms"].as_u64()).collect();
    let (status, body) = bodies.pop().expect("at least one sample");
    judge_dixie(id, status, &body, &latencies, latency_warn_ms)
}

/// The body's verdict (health.rs's, with sprint 2's NATS tolerance as a warning), a row per
/// component that is not up with 002's hint, Finn's circuit, and Finn's latency.
fn judge_dixie(
    id: &str,
    status: u16,
    body: &serde_json::Value,
    latencies: &[u64],
    latency_warn_ms: u64,
) -> Vec<Finding> {
    let mut policy = HealthPolicy::strict(HealthRule::Dixie);
    policy.tolerate.insert("nats".into(), "expected until sprint 3 (002)".into());
    let verdict = judge(&policy, status, body);
    let top = match (verdict.ok, verdict.warnings.is_empty()) {
        (true, true) => Finding::ok(id, verdict.summary),
        (true, false) => {
            Finding::new(id, Verdict::Warn, verdict.summary, "degraded for want of NATS only: runbook run sprint-3")
        }
        (false, _) => Finding::new(
            id,
            Verdict::Fail,
            verdict.summary,
            "see the rows below for each component that is down and what to do",
        ),
    };
    let mut findings = vec![top];
    let finn = &body["services"]["loa_finn"];
    let circuit = finn["circuit_state"].as_str().unwrap_or("missing");
    let finn_status = finn["status"].as_str().unwrap_or("missing");
    let check = format!("{id}.loa_finn");
    let value = format!(
        "status {finn_status}, circuit {circuit}{}",
        finn["error"].as_str().map(|e| format!(", error: {e}")).unwrap_or_default()
    );
    findings.push(if circuit.eq_ignore_ascii_case("closed") && finn_status == "healthy" {
        Finding::ok(&check, value)
    } else {
        Finding::new(
            &check,
            Verdict::Fail,
            value,
            "002 Circuit Breaker Open: Finn is unhealthy or unreachable (see finn-health and finn-service); 003: \
             verify FINN_URL; the circuit half-opens by itself after the recovery window",
        )
    });
    if let Some(infra) = body["infrastructure"].as_object() {
        for (name, component) in infra {
            let s = component["status"].as_str().unwrap_or("missing");
            let check = format!("{id}.{name}");
            let mut value = s.to_string();
            if let Some(ms) = component["latency_ms"].as_u64() {
                value.push_str(&format!(", {ms} ms"));
            }
            if let Some(error) = component["error"].as_str() {
                value.push_str(&format!(", error: {}", clip(error, 160)));
            }
            findings.push(if s == "healthy" || s == "connected" {
                Finding::ok(&check, value)
            } else {
                let severity = if name == "nats" { Verdict::Warn } else { Verdict::Fail };
                Finding::new(&check, severity, value, component_hint(name))
            });
        }
    }
    if let Some(governance) = body["governance"]["health"].as_str() {
        let check = format!("{id}.governance");
        findings.push(if governance == "healthy" {
            Finding::ok(&check, governance)
        } else {
            Finding::new(
                &check,
                Verdict::Warn,
                governance,
                "governance needs NATS; it does not change the top-level status: runbook run sprint-3",
            )
        });
    }
    findings.push(judge_latency(&format!("{id}.finn_latency"), latencies, latency_warn_ms));
    findings
}

/// 002 "High Latency to Finn": the median of the samples above the threshold warns.
fn judge_latency(check: &str, latencies: &[u64], warn_ms: u64) -> Finding {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    let Some(&median) = sorted.get(sorted.len() / 2) else {
        return Finding::new(check, Verdict::Warn, "Dixie reports no latency for Finn", "see the loa_finn row");
    };
    let value = format!("median {median} ms of {} sample(s) {sorted:?} (warn above {warn_ms} ms)", sorted.len());
    if median > warn_ms {
        Finding::new(
            check,
            Verdict::Warn,
            value,
            "002 High Latency to Finn: compare with Finn's own /health time (finn-health row): close to it means \
             Finn is slow (overloaded); much lower means the network or the ALB between the tasks",
        )
    } else {
        Finding::ok(check, value)
    }
}

async fn finn_health(cx: &StepContext, id: &str, url: &str) -> Finding {
    match sample(cx, url).await {
        Ok((status, body, took)) => {
            let verdict = judge(&HealthPolicy::strict(HealthRule::Finn), status, &body);
            let value = format!("{}, answered in {} ms", verdict.summary, took.as_millis());
            if verdict.ok {
                Finding::ok(id, value)
            } else {
                Finding::new(id, Verdict::Fail, value, "002: check Finn's ECS service (finn-service) and its logs")
            }
        }
        Err(e) => Finding::new(
            id,
            Verdict::Fail,
            format!("Finn does not answer: {e}"),
            "002: check Finn's ECS service (finn-service) and its CloudWatch logs",
        ),
    }
}

// ---- SSM ----

async fn ssm_params(
    cx: &StepContext,
    id: &str,
    prefix: &str,
    names: &[String],
    nats: Option<&NatsTask>,
) -> Vec<Finding> {
    let full: Vec<String> = names.iter().map(|n| format!("{prefix}/{n}")).collect();
    let mut values = std::collections::BTreeMap::new();
    for chunk in full.chunks(10) {
        let read = cx.cloud.ssm.get_parameters().set_names(Some(chunk.to_vec())).with_decryption(true).send().await;
        match read {
            Ok(out) => {
                for p in out.parameters() {
                    if let (Some(name), Some(value)) = (p.name(), p.value()) {
                        values.insert(name.to_string(), crate::secret::Secret::new(value.to_string()));
                    }
                }
            }
            Err(e) => return vec![Finding::unreadable(id, StepError::from_sdk("ssm:GetParameters", e))],
        }
    }
    let missing: Vec<&str> =
        names.iter().filter(|n| !values.contains_key(&format!("{prefix}/{n}"))).map(String::as_str).collect();
    let placeholder: Vec<&str> = names
        .iter()
        .filter(|n| values.get(&format!("{prefix}/{n}")).is_some_and(|v| v.expose() == PLACEHOLDER))
        .map(String::as_str)
        .collect();
    let mut findings = vec![judge_params(id, prefix, names.len(), &missing, &placeholder)];
    if let Some(nats) = nats {
        let check = format!("{id}.nats_url");
        let url = values.get(&format!("{prefix}/NATS_URL")).map(|v| v.expose().clone());
        findings.push(match url {
            None => Finding::new(
                &check,
                Verdict::Fail,
                format!("{prefix}/NATS_URL does not exist"),
                "runbook run sprint-2 (T2.5 writes it)",
            ),
            Some(url) if url == PLACEHOLDER => {
                Finding::new(&check, Verdict::Fail, "PLACEHOLDER", "runbook run sprint-2 (T2.5 writes it)")
            }
            Some(url) => match super::ssm_params::task_ip(cx, nats).await {
                Ok(ip) => judge_nats_url(&check, &url, &ip, nats.port, &nats.service),
                Err(e) => Finding::new(
                    &check,
                    Verdict::Fail,
                    format!("NATS_URL is set, but {e}"),
                    format!("the NATS service {} runs no task: its owners (freeside) must start it", nats.service),
                ),
            },
        });
    }
    findings
}

fn judge_params(id: &str, prefix: &str, count: usize, missing: &[&str], placeholder: &[&str]) -> Finding {
    if missing.is_empty() && placeholder.is_empty() {
        return Finding::ok(id, format!("{count} parameters under {prefix}/ present, none PLACEHOLDER"));
    }
    let mut value = Vec::new();
    if !missing.is_empty() {
        value.push(format!("missing: {}", missing.join(", ")));
    }
    if !placeholder.is_empty() {
        value.push(format!("PLACEHOLDER: {}", placeholder.join(", ")));
    }
    Finding::new(
        id,
        Verdict::Fail,
        format!("{} (under {prefix}/)", value.join("; ")),
        "002: a missing or PLACEHOLDER value crashes the task at start-up: runbook run sprint-2 (T2.5 writes them, \
         T2.6 redeploys); an operator's own value: aws ssm put-parameter, then runbook run sprint-2",
    )
}

/// NATS_URL must name the running NATS task's address and port (`task_port`, the service's
/// container port; a URL without a port means NATS's default 4222). Its credentials, if any,
/// are never shown: the value names the endpoint only.
fn judge_nats_url(check: &str, url: &str, task_ip: &str, task_port: u16, service: &str) -> Finding {
    let rewrite = "runbook run sprint-2 (T2.5 rewrites NATS_URL, T2.6 redeploys Dixie)";
    let task = format!("{task_ip}:{task_port}");
    let endpoint = reach::endpoint_of(url).filter(|(scheme, host, port)| {
        scheme == "nats" && !host.is_empty() && !host.starts_with(':') && !host.contains(' ') && *port != Some(0)
    });
    let Some((_, host, port)) = endpoint else {
        return Finding::new(
            check,
            Verdict::Fail,
            format!("NATS_URL is not nats://host[:port] (not shown: it may hold a credential); {service} runs at {task}"),
            rewrite,
        );
    };
    let named = format!("{host}:{}", port.unwrap_or(4222));
    if named == task {
        Finding::ok(check, format!("NATS_URL names {named}, the running task of {service}"))
    } else {
        let why = if host == task_ip { "the wrong port" } else { "the task restarted" };
        Finding::new(
            check,
            Verdict::Fail,
            format!("NATS_URL names {named}, but the running task of {service} is at {task} ({why})"),
            rewrite,
        )
    }
}

// ---- PostgreSQL ----

async fn database(
    cx: &StepContext,
    id: &str,
    param: &str,
    ca_file: &str,
    migrations: u64,
    lock_fail_after: u64,
) -> Vec<Finding> {
    let url = match cx.parameter(param).await {
        Ok(Some(url)) if url.expose() != PLACEHOLDER => url,
        Ok(_) => {
            return vec![Finding::new(
                id,
                Verdict::Fail,
                format!("{param} is missing or PLACEHOLDER"),
                "runbook run sprint-2 (T2.5 writes it)",
            )];
        }
        Err(e) => return vec![Finding::unreadable(id, e)],
    };
    let ca = cx.project_file(ca_file);
    let count = |sql: &'static str| reach::postgres_count(&cx.env, &url, sql, ca.as_deref());
    let recorded = match count("SELECT count(*) FROM _migrations").await {
        Ok(n) => n,
        Err(e) if e.contains("_migrations") && e.contains("does not exist") => 0,
        Err(e) => {
            return vec![Finding::new(
                id,
                Verdict::Fail,
                format!("DATABASE_URL does not log in: {e}"),
                "003: the password in DATABASE_URL must be the role's (runbook retry T2.5 rewrites it); 002: the \
                 RDS group must admit the caller on 5432",
            )];
        }
    };
    let mut findings = vec![if recorded as u64 >= migrations {
        Finding::ok(id, format!("DATABASE_URL logs in; {recorded} of {migrations} migrations recorded"))
    } else {
        Finding::new(
            id,
            Verdict::Fail,
            format!("DATABASE_URL logs in; {recorded} of {migrations} migrations recorded"),
            "a migration failed or has not run (002: a cause of a crashing task): read the ERROR lines; Dixie runs \
             them at start-up",
        )
    }];
    // The longest-held granted advisory lock, in seconds since its session began; -1: none.
    let age = count(
        "SELECT coalesce(max(extract(epoch FROM now() - a.backend_start))::bigint, -1) FROM pg_locks l \
         LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted",
    )
    .await;
    let waiting = count("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").await;
    let check = format!("{id}.migration_lock");
    findings.push(match (age, waiting) {
        (Ok(age), Ok(waiting)) => judge_lock(&check, age, waiting, lock_fail_after),
        (Err(e), _) | (_, Err(e)) => Finding::new(&check, Verdict::Fail, format!("cannot read pg_locks: {e}"), ""),
    });
    findings
}

fn judge_lock(check: &str, age_s: i64, waiting: i64, fail_after: u64) -> Finding {
    if age_s < 0 {
        return Finding::ok(check, "no advisory lock held");
    }
    let value = format!("an advisory lock is held by a session {age_s} s old; {waiting} session(s) wait for one");
    let next = "003 Migration lock timeout: another instance holds the migration lock; if no migration is running, \
                end that session (SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'); \
                runbook does not";
    if waiting > 0 || age_s as u64 >= fail_after {
        Finding::new(check, Verdict::Fail, value, next)
    } else {
        Finding::new(
            check,
            Verdict::Warn,
            value,
            "a migration is probably running: run runbook diagnose again in a minute",
        )
    }
}

// ---- the whole diagnosis ----

/// Every check of `book`, all at once, read-only: no run lock, nothing recorded. Its steps must
/// all be of kind `diagnose`.
pub(crate) async fn diagnose_all(book: &Runbook, services: Arc<Services>) -> Result<Vec<Finding>, String> {
    let mut checks = Vec::new();
    for step in &book.steps {
        if step.kind != Params::KIND {
            return Err(format!(
                "step {} is of kind {}: runbook diagnose runs only read-only checks (kind = \"diagnose\")",
                step.id, step.kind
            ));
        }
        let params = Params::deserialize(step.params.clone()).map_err(|e| format!("step {}: {e}", step.id))?;
        checks.push((step.id.clone(), params));
    }
    // The checks' log lines go nowhere: the findings are the output.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut running = tokio::task::JoinSet::new();
    for (i, (id, params)) in checks.into_iter().enumerate() {
        let cx = StepContext::new(&services, &id, 0, Recorder::new(None, tx.clone()));
        running.spawn(async move { (i, params.examine(&cx).await) });
    }
    drop(tx);
    let mut found = Vec::new();
    while let Some(done) = running.join_next().await {
        found.push(done.map_err(|e| format!("a check stopped: {e}"))?);
    }
    drop(rx);
    found.sort_by_key(|(i, _)| *i);
    Ok(found.into_iter().flat_map(|(_, f)| f).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Params, String> {
        let params: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
        let step = Params::deserialize(params).map_err(|e| e.to_string())?;
        step.validate()?;
        Ok(step)
    }

    fn dep(status: &str, rollout: &str) -> Deployment {
        Deployment {
            status: status.into(),
            rollout: rollout.into(),
            reason: String::new(),
            task_definition: "dixie-armitage:3".into(),
        }
    }

    #[test]
    fn params_are_typed_by_check_and_unknown_fields_are_refused() {
        assert!(parse("check = \"tasks\"\ncluster = \"c\"\nservice = \"s\"").is_ok());
        let unknown = parse("check = \"tasks\"\ncluster = \"c\"\nservice = \"s\"\nservise = \"x\"").unwrap_err();
        assert!(unknown.contains("unknown field `servise`"), "{unknown}");
        let kind = parse("check = \"tasx\"").unwrap_err();
        assert!(kind.contains("unknown variant `tasx`"), "{kind}");
        let minutes = parse("check = \"log_errors\"\ngroup = \"/ecs/x\"\nminutes = \"0\"\nnext = \"n\"").unwrap_err();
        assert!(minutes.contains("minutes = 0"), "{minutes}");
        let url = parse("check = \"finn_health\"\nurl = \"finn\"").unwrap_err();
        assert!(url.contains("not an http:// or https:// URL"), "{url}");
        let rule = parse("check = \"ingress\"\nnext = \"n\"\nrule = { group = \"a\", source_group = \"b\", port = 0 }");
        assert!(rule.unwrap_err().contains("port = 0"));
    }

    #[test]
    fn a_failed_rollout_fails_a_rolling_one_warns_and_a_completed_one_is_ok() {
        assert_eq!(judge_deployments("s", &[dep("PRIMARY", "COMPLETED")]).verdict, Verdict::Ok);
        assert_eq!(judge_deployments("s", &[dep("PRIMARY", "")]).verdict, Verdict::Ok, "moto reports no rollout");
        let rolling = judge_deployments("s", &[dep("PRIMARY", "IN_PROGRESS"), dep("ACTIVE", "COMPLETED")]);
        assert_eq!(
            (rolling.verdict, rolling.value.as_str()),
            (Verdict::Warn, "PRIMARY dixie-armitage:3 rollout IN_PROGRESS, 2 deployment(s)")
        );
        let failed = judge_deployments("s", &[dep("PRIMARY", "FAILED")]);
        assert_eq!(failed.verdict, Verdict::Fail);
        assert!(failed.next.contains("push a corrected image"), "{failed:?}");
        assert_eq!(judge_deployments("s", &[dep("ACTIVE", "COMPLETED")]).verdict, Verdict::Fail);
    }

    #[test]
    fn a_service_with_nothing_desired_or_too_few_running_fails_whatever_its_rollout() {
        let counts = |running, desired| Counts { running, desired, pending: 0 };
        let judged = |deployments: &[Deployment], running, desired| {
            judge_service("finn-service", "c", "loa-finn-armitage", deployments, counts(running, desired))
        };
        let done = [dep("PRIMARY", "COMPLETED")];
        let rolling = [dep("PRIMARY", "IN_PROGRESS"), dep("ACTIVE", "COMPLETED")];
        assert_eq!(judged(&done, 1, 1).verdict, Verdict::Ok);
        assert_eq!(judged(&done, 2, 2).verdict, Verdict::Ok);
        let zero = judged(&done, 0, 0);
        assert_eq!(zero.verdict, Verdict::Fail, "{zero:?}");
        assert!(zero.value.contains("0 running of 0 desired"), "{zero:?}");
        assert!(
            zero.next.contains("--cluster c --service loa-finn-armitage --desired-count 1"),
            "the next action names the service: {zero:?}"
        );
        assert_eq!(judged(&rolling, 0, 0).verdict, Verdict::Fail, "desired 0 fails while rolling too");
        let short = judged(&done, 1, 2);
        assert_eq!(short.verdict, Verdict::Fail, "{short:?}");
        assert!(short.next.contains("events"), "{short:?}");
        assert_eq!(judged(&done, 0, 1).verdict, Verdict::Fail);
        assert_eq!(judged(&rolling, 1, 2).verdict, Verdict::Warn, "a rollout replacing tasks may run short");
        assert_eq!(judged(&rolling, 0, 1).verdict, Verdict::Fail, "nothing running serves nothing, rollout or not");
        assert_eq!(judged(&rolling, 3, 2).verdict, Verdict::Warn, "old and new tasks beside each other");
        assert_eq!(judged(&done, -1, 1).verdict, Verdict::Fail, "a negative count is no evidence");
        assert_eq!(judged(&done, 1, -1).verdict, Verdict::Fail, "a negative count is no evidence");
        assert_eq!(judged(&[dep("PRIMARY", "FAILED")], 1, 1).verdict, Verdict::Fail);
    }

    #[test]
    fn fewer_running_tasks_than_desired_fail() {
        let judged = |running, desired, pending| judge_counts("t", "c", "s", Counts { running, desired, pending }, false);
        assert_eq!(judged(1, 1, 0).verdict, Verdict::Ok);
        assert_eq!(judged(0, 1, 1).verdict, Verdict::Fail);
        assert_eq!(judged(1, 2, 0).verdict, Verdict::Fail);
        assert!(judged(0, 0, 0).next.contains("scaled to 0"));
        assert_eq!(judged(1, 1, -1).verdict, Verdict::Fail, "a negative count is no evidence");
    }

    #[test]
    fn error_lines_fail_naming_the_latest_and_none_is_ok() {
        assert_eq!(judge_log_lines("l", "/ecs/d", 10, "ERROR", "n", vec![]).verdict, Verdict::Ok);
        let lines = vec![(2_000, "b ERROR second".to_string()), (1_000, "a ERROR first".to_string())];
        let f = judge_log_lines("l", "/ecs/d", 10, "ERROR", "fix it", lines);
        assert_eq!(f.verdict, Verdict::Fail);
        assert_eq!(f.value, "2 ERROR line(s) in /ecs/d in the last 10 min; the latest: b ERROR second");
        assert_eq!(f.next, "fix it");
        assert!(f.details[0].ends_with("a ERROR first"), "{:?}", f.details);
    }

    #[test]
    fn a_cidr_rule_admits_a_source_only_when_it_holds_the_whole_vpc() {
        let vpc = parse_cidr("10.0.0.0/16").unwrap();
        assert!(holds(parse_cidr("10.0.0.0/16").unwrap(), vpc));
        assert!(holds(parse_cidr("10.0.0.0/8").unwrap(), vpc));
        assert!(holds(parse_cidr("0.0.0.0/0").unwrap(), vpc));
        assert!(!holds(parse_cidr("10.0.1.0/24").unwrap(), vpc));
        assert!(!holds(parse_cidr("10.1.0.0/16").unwrap(), vpc));
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
    }

    fn body(redis: &str, nats: &str, circuit: &str, latency: u64) -> serde_json::Value {
        serde_json::json!({"status": if redis == "healthy" && nats == "connected" { "healthy" } else { "degraded" },
            "services": {"loa_finn": {"status": "healthy", "circuit_state": circuit, "latency_ms": latency}},
            "infrastructure": {"postgresql": {"status": "healthy", "latency_ms": 3}, "redis": {"status": redis}, "nats": {"status": nats}},
            "governance": {"health": if nats == "connected" { "healthy" } else { "degraded" }}})
    }

    fn verdicts(findings: &[Finding]) -> Vec<(String, Verdict)> {
        findings.iter().map(|f| (f.check.clone(), f.verdict)).collect()
    }

    #[test]
    fn each_component_of_dixies_health_gets_a_row_with_its_hint() {
        let healthy = judge_dixie("h", 200, &body("healthy", "connected", "CLOSED", 4), &[4, 5, 3], 500);
        assert!(healthy.iter().all(|f| f.verdict == Verdict::Ok), "{healthy:?}");
        // After sprint 2: NATS down is expected (warn), everything else up.
        let sprint_2 = judge_dixie("h", 200, &body("healthy", "unreachable", "closed", 4), &[4], 500);
        assert_eq!(sprint_2[0].verdict, Verdict::Warn, "{sprint_2:?}");
        assert!(sprint_2.iter().all(|f| f.verdict != Verdict::Fail), "{sprint_2:?}");
        let broken = judge_dixie("h", 200, &body("unreachable", "unreachable", "open", 4), &[4], 500);
        let v = verdicts(&broken);
        assert_eq!(
            v,
            [
                ("h".to_string(), Verdict::Fail),
                ("h.loa_finn".into(), Verdict::Fail),
                ("h.nats".into(), Verdict::Warn),
                ("h.postgresql".into(), Verdict::Ok),
                ("h.redis".into(), Verdict::Fail),
                ("h.governance".into(), Verdict::Warn),
                ("h.finn_latency".into(), Verdict::Ok),
            ]
        );
        let redis = broken.iter().find(|f| f.check == "h.redis").unwrap();
        assert!(redis.next.contains("REDIS_URL"), "{redis:?}");
        assert!(broken[1].next.contains("002 Circuit Breaker Open"), "{:?}", broken[1]);
        let http_500 = judge_dixie("h", 500, &body("healthy", "connected", "closed", 4), &[4], 500);
        assert_eq!(http_500[0].verdict, Verdict::Fail, "a non-2xx is never a pass");
    }

    #[test]
    fn finn_latency_warns_above_the_threshold_by_the_median() {
        assert_eq!(judge_latency("l", &[600, 20, 30], 500).verdict, Verdict::Ok, "one slow sample is not consistent");
        let slow = judge_latency("l", &[600, 700, 30], 500);
        assert_eq!(slow.verdict, Verdict::Warn);
        assert!(slow.value.starts_with("median 600 ms"), "{slow:?}");
        assert_eq!(judge_latency("l", &[], 500).verdict, Verdict::Warn);
    }

    #[test]
    fn params_missing_or_placeholder_fail_naming_them_and_a_stale_nats_url_fails() {
        assert_eq!(judge_params("p", "/d", 8, &[], &[]).verdict, Verdict::Ok);
        let f = judge_params("p", "/d", 8, &["NATS_URL"], &["DIXIE_ADMIN_KEY"]);
        assert_eq!(
            (f.verdict, f.value.as_str()),
            (Verdict::Fail, "missing: NATS_URL; PLACEHOLDER: DIXIE_ADMIN_KEY (under /d/)")
        );
        assert!(f.next.contains("runbook run sprint-2"));
        assert_eq!(judge_nats_url("n", "nats://10.0.1.5:4222", "10.0.1.5", 4222, "nats").verdict, Verdict::Ok);
        let stale = judge_nats_url("n", "nats://10.0.1.5:4222", "10.0.9.9", 4222, "nats");
        assert!(stale.verdict == Verdict::Fail && stale.value.contains("the task restarted"), "{stale:?}");
    }

    #[test]
    fn nats_url_must_name_the_running_tasks_host_and_port() {
        let judged = |url: &str, port: u16| judge_nats_url("n", url, "10.0.1.5", port, "nats");
        assert_eq!(judged("nats://10.0.1.5:4222", 4222).verdict, Verdict::Ok);
        assert_eq!(judged("nats://10.0.1.5", 4222).verdict, Verdict::Ok, "4222 is NATS's default port");
        assert_eq!(judged("nats://10.0.1.5:4222/", 4222).verdict, Verdict::Ok);
        let wrong_port = judged("nats://10.0.1.5:4299", 4222);
        assert_eq!(wrong_port.verdict, Verdict::Fail, "{wrong_port:?}");
        assert!(wrong_port.value.contains("10.0.1.5:4299") && wrong_port.value.contains("10.0.1.5:4222"), "{wrong_port:?}");
        assert_eq!(judged("nats://10.0.1.5", 4299).verdict, Verdict::Fail, "no port means 4222, not the task's 4299");
        assert_eq!(judged("nats://10.0.1.5:4299", 4299).verdict, Verdict::Ok);
        for malformed in [
            "10.0.1.5:4222",
            "http://10.0.1.5:4222",
            "nats://:4222",
            "nats://10.0.1.5:",
            "nats://10.0.1.5:port",
            "nats://10.0.1.5:65536",
            "nats://10.0.1.5:0",
            "",
        ] {
            let f = judged(malformed, 4222);
            assert_eq!(f.verdict, Verdict::Fail, "{malformed:?}: {f:?}");
        }
        let secret = "s3cr3t-token";
        for url in [format!("nats://dixie:{secret}@10.0.1.5:4222"), format!("nats://dixie:{secret}@10.0.9.9:4222")] {
            let f = judged(&url, 4222);
            assert!(!format!("{f:?}").contains(secret), "a credential in NATS_URL is shown: {f:?}");
        }
        assert_eq!(judged(&format!("nats://dixie:{secret}@10.0.1.5:4222"), 4222).verdict, Verdict::Ok);
    }

    #[test]
    fn an_advisory_lock_held_briefly_warns_and_long_or_contended_fails() {
        assert_eq!(judge_lock("m", -1, 0, 120).verdict, Verdict::Ok);
        assert_eq!(judge_lock("m", 5, 0, 120).verdict, Verdict::Warn);
        let long = judge_lock("m", 600, 0, 120);
        assert!(long.verdict == Verdict::Fail && long.next.contains("003 Migration lock timeout"), "{long:?}");
        assert_eq!(judge_lock("m", 5, 1, 120).verdict, Verdict::Fail);
    }
}
