//! `diagnose`: one read-only check of the on-call troubleshooting (002 lines 228–300, 003's
//! local checks), with its verdict (ok, warn, fail), the value seen and the next action.
//!
//! A check only reads: ECS DescribeServices, CloudWatch Logs FilterLogEvents, EC2
//! DescribeSecurityGroups/Rules/Vpcs, SSM GetParameters (decrypted, never shown), the health
//! bodies, and PostgreSQL's `pg_locks`. It must never change anything: `apply` refuses. The
//! probe is satisfied when nothing fails (warnings are said once each) and a conflict naming
//! every failure otherwise, so `runbook run diagnose` and `runbook plan diagnose` work too;
//! `runbook diagnose` has the engine run every check's `examine` at once, without a run lock
//! or the state DB.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::security_group_ingress::Ingress;
use super::ssm_params::{NatsTask, PLACEHOLDER};
use super::{Probe, Step, StepContext, StepError, number_or_text, reach};
use crate::event::Outputs;
use crate::health::{HealthPolicy, HealthRule, judge};

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

/// Written as one table with `check = "<which>"`; read as `{ <which> = { … } }` (see the
/// `Deserialize` below), so that an error names the key it is about.
#[derive(Debug, Clone, Deserialize)]
#[serde(remote = "Self", rename_all = "snake_case", deny_unknown_fields)]
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
    /// `DATABASE_URL` logs in; the migrations are recorded; Dixie's migration advisory lock (and
    /// only it, in Dixie's database) is not held for long (003: "Migration lock timeout").
    Database {
        database_url_param: String,
        #[serde(default)]
        ca_file: String,
        #[serde(deserialize_with = "number_or_text")]
        migrations: u64,
        #[serde(default = "two_minutes", deserialize_with = "number_or_text")]
        lock_fail_after_seconds: u64,
        /// The bigint key of Dixie's `pg_advisory_lock`; 003's Dixie's by default.
        #[serde(default = "dixie_migration_lock_key")]
        migration_lock_key: i64,
    },
}

/// serde's `tag = "check"` reads the table through a buffer that loses the key a type error is
/// about ("expected a whole number, got \"x\"" named no key): the check's name becomes the
/// outer key instead, which toml reads key by key.
impl<'de> Deserialize<'de> for Params {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let check = match table.remove("check") {
            Some(toml::Value::String(check)) => check,
            Some(_) => return Err(D::Error::custom("check is the name of a check, in quotes: check = \"service\"")),
            None => return Err(D::Error::missing_field("check")),
        };
        let outer = toml::Table::from_iter([(check, toml::Value::Table(table))]);
        // The inherent `deserialize` that `remote = "Self"` derives; everywhere else, the trait's.
        Params::deserialize(toml::Value::Table(outer)).map_err(|e| {
            let message = e.to_string();
            let message = message.trim();
            match message.starts_with("unknown variant") {
                true => D::Error::custom(format!("check: {message}")),
                false => D::Error::custom(message),
            }
        })
    }
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
    const CHECK: bool = true;

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

    /// Every finding of this check, named after `cx.step` (and a component where it has several).
    async fn examine(&self, cx: &StepContext) -> Vec<Finding> {
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
            Params::Database {
                database_url_param,
                ca_file,
                migrations,
                lock_fail_after_seconds,
                migration_lock_key,
            } => {
                let lock = (*migration_lock_key, *lock_fail_after_seconds);
                database(cx, id, database_url_param, ca_file, *migrations, lock).await
            }
        }
    }

    async fn apply(&self, _cx: &StepContext) -> Result<(), StepError> {
        Err(StepError::fatal(
            "a diagnose check changes nothing; its failure is the finding",
            "follow the finding's next action, then: runbook diagnose",
        ))
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
    let rolling =
        deployments.len() > 1 || deployments.iter().any(|d| d.status == "PRIMARY" && d.rollout == "IN_PROGRESS");
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
        let next = format!(
            "ECS reported a negative count: read it yourself (aws ecs describe-services --cluster {cluster} --services {service})"
        );
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
            let counts =
                Counts { running: svc.running_count(), desired: svc.desired_count(), pending: svc.pending_count() };
            judge_counts(id, cluster, service, counts, false)
        }
        Ok(None) => not_active(id, cluster, service),
        Err(e) => Finding::unreadable(id, e),
    }
}

// ---- CloudWatch Logs ----

async fn log_errors(cx: &StepContext, id: &str, group: &str, minutes: u64, pattern: &str, next: &str) -> Finding {
    let since = crate::clock::now_ms() - (minutes as i64) * 60_000;
    let mut lines: Vec<(i64, String)> = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let (events, next_page) = match cx.cloud.logs.filter(group, since, pattern, token.as_deref()).await {
            Ok(page) => page,
            Err(e) if e.code() == Some("ResourceNotFoundException") => {
                return Finding::new(
                    id,
                    Verdict::Fail,
                    format!("log group {group} does not exist"),
                    "sprint-2's terraform (T2.4) creates it: runbook run sprint-2",
                );
            }
            Err(e) => return Finding::unreadable(id, StepError::from_query("logs:FilterLogEvents", e)),
        };
        // The pattern is a plain term here; the same test keeps an emulator's looser filter honest.
        lines.extend(events.into_iter().filter_map(|e| {
            let message = e.message.trim_end();
            message.contains(pattern).then(|| (e.timestamp, message.to_string()))
        }));
        token = next_page;
        if lines.len() >= 1000 || token.is_none() {
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
    let ec2 = &cx.cloud.ec2;
    let groups =
        ec2.groups_by_id(&[source]).await.map_err(|e| StepError::from_query("ec2:DescribeSecurityGroups", e))?;
    let Some(vpc) = groups.into_iter().next().and_then(|g| g.vpc_id) else {
        return Ok(None);
    };
    let range = ec2.vpc_range(&vpc).await.map_err(|e| StepError::from_query("ec2:DescribeVpcs", e))?;
    let Some(range) = range.as_deref().and_then(parse_cidr) else {
        return Ok(None);
    };
    let rules = ec2
        .rules_of(&[group.to_string()])
        .await
        .map_err(|e| StepError::from_query("ec2:DescribeSecurityGroupRules", e))?;
    Ok(rules.iter().find_map(|r| {
        let cidr = r.cidr_ipv4.as_deref()?;
        (r.admits_inbound_tcp(port) && parse_cidr(cidr).is_some_and(|c| holds(c, range))).then(|| cidr.to_string())
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
            format!(
                "NATS_URL is not nats://host[:port] (not shown: it may hold a credential); {service} runs at {task}"
            ),
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
    (lock_key, lock_fail_after): (i64, u64),
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
    let check = format!("{id}.migration_lock");
    findings.push(migration_lock(cx, &check, &url, ca.as_deref(), lock_key, lock_fail_after).await);
    findings
}

/// The sessions holding or waiting for one advisory lock of one bigint key (`classid` $1,
/// `objid` $2, `objsubid` 1) in the database this connection is in (Dixie's), with what
/// `pg_stat_activity` shows of them. The one-row `me` keeps who asked and where when nobody
/// holds it (then the lock's columns are NULL). Times are UTC text and whole seconds by the
/// server's clock.
pub(super) const MIGRATION_LOCK_SQL: &str = "\
SELECT me.role, me.db, l.pid, l.granted, a.usename::text, a.application_name, host(a.client_addr), a.state, \
  to_char(a.xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
  floor(extract(epoch FROM me.now - a.xact_start))::bigint, \
  to_char(a.state_change AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
  floor(extract(epoch FROM me.now - a.state_change))::bigint, \
  to_char(a.query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
  floor(extract(epoch FROM me.now - a.query_start))::bigint, \
  left(a.query, 300) \
FROM (SELECT current_user::text AS role, current_database()::text AS db, clock_timestamp() AS now, \
             (SELECT oid FROM pg_database WHERE datname = current_database()) AS dboid) me \
LEFT JOIN pg_locks l ON l.locktype = 'advisory' AND l.database = me.dboid \
  AND l.classid = $1 AND l.objid = $2 AND l.objsubid = 1 \
LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
ORDER BY l.granted DESC, l.pid";

async fn migration_lock(
    cx: &StepContext,
    check: &str,
    url: &crate::secret::Secret<String>,
    ca: Option<&std::path::Path>,
    key: i64,
    fail_after: u64,
) -> Finding {
    let (classid, objid) = pg_lock_parts(key);
    let rows = reach::postgres_query(&cx.env, url, MIGRATION_LOCK_SQL, &[&classid, &objid], ca).await;
    match rows.and_then(|rows| lock_scene(&rows, key)) {
        Ok(scene) => judge_migration_lock(check, &scene, fail_after),
        Err(e) => Finding::new(
            check,
            Verdict::Fail,
            format!("cannot read pg_locks: {e}"),
            "the dixie role reads pg_locks and pg_stat_activity without grants: check DATABASE_URL (the database row)",
        ),
    }
}

/// The rows of `MIGRATION_LOCK_SQL` as the judge needs them.
pub(super) fn lock_scene(rows: &[tokio_postgres::Row], key: i64) -> Result<LockScene, String> {
    let first = rows.first().ok_or("the lock query returned no row")?;
    let text = |row: &tokio_postgres::Row, i: usize| row.try_get::<_, Option<String>>(i).map_err(|e| e.to_string());
    let stamp = |row: &tokio_postgres::Row, i: usize| -> Result<Option<Stamp>, String> {
        let age = row.try_get::<_, Option<i64>>(i + 1).map_err(|e| e.to_string())?;
        Ok(text(row, i)?.zip(age).map(|(at, age_s)| Stamp { at, age_s }))
    };
    let mut sessions = Vec::new();
    for row in rows {
        let Some(granted) = row.try_get::<_, Option<bool>>(3).map_err(|e| e.to_string())? else {
            continue; // `me` alone: nobody holds or waits
        };
        sessions.push(LockSession {
            pid: row.try_get(2).map_err(|e| e.to_string())?,
            granted,
            role: text(row, 4)?,
            application: text(row, 5)?,
            client: text(row, 6)?,
            state: text(row, 7)?,
            xact_start: stamp(row, 8)?,
            state_change: stamp(row, 10)?,
            query_start: stamp(row, 12)?,
            query: text(row, 14)?,
        });
    }
    let role = text(first, 0)?.ok_or("current_user is NULL")?;
    let database = text(first, 1)?.ok_or("current_database() is NULL")?;
    Ok(LockScene { role, database, key, sessions })
}

/// Dixie's migration lock key as seed 003's Dixie (d4afc68f, `app/src/db/migrate.ts`) derives
/// it: the SHA-256 of `dixie-bff:migration`, its first four bytes read as a big-endian unsigned
/// number, masked with `0x7FFFFFFF` → 2084904821, taken with `pg_advisory_lock(key)`. Other
/// Dixies use other keys (from 2074285a FNV-1a 32-bit of the same string, signed: -420369755;
/// the earliest a fixed 42000014): the `migration_lock_key` parameter names theirs.
pub(super) fn dixie_migration_lock_key() -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(b"dixie-bff:migration");
    let first = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    i64::from(first & 0x7FFF_FFFF)
}

/// How `pg_locks` shows an advisory lock taken with one bigint key: `classid` holds its high 32
/// bits and `objid` its low 32 bits, both as unsigned oids (`objsubid` is 1).
pub(super) fn pg_lock_parts(key: i64) -> (u32, u32) {
    let bits = key as u64;
    ((bits >> 32) as u32, bits as u32)
}

/// A timestamp of `pg_stat_activity`: as text (UTC) and its age in seconds by the server's clock.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Stamp {
    pub(super) at: String,
    pub(super) age_s: i64,
}

/// A session holding (`granted`) or waiting for Dixie's migration lock.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct LockSession {
    pub(super) pid: Option<i32>,
    pub(super) granted: bool,
    pub(super) role: Option<String>,
    pub(super) application: Option<String>,
    pub(super) client: Option<String>,
    pub(super) state: Option<String>,
    pub(super) xact_start: Option<Stamp>,
    pub(super) state_change: Option<Stamp>,
    pub(super) query_start: Option<Stamp>,
    pub(super) query: Option<String>,
}

/// What the lock query saw: who asked, in which database, for which key, and the sessions.
#[derive(Debug, Clone)]
pub(super) struct LockScene {
    pub(super) role: String,
    pub(super) database: String,
    pub(super) key: i64,
    pub(super) sessions: Vec<LockSession>,
}

/// Dixie's migration lock, judged by how long its holder has held it (003 "Migration lock
/// timeout"): free is ok; held by a Dixie session for less than `fail_after` warns (a migration
/// runs; another Dixie may wait meanwhile); held longer, by another role, by a prepared
/// transaction, or with times the dixie role may not read fails, naming the one pid to end.
/// Waiters alone (the lock being handed over) warn.
fn judge_migration_lock(check: &str, scene: &LockScene, fail_after: u64) -> Finding {
    let (classid, objid) = pg_lock_parts(scene.key);
    let lock = format!(
        "Dixie's migration lock (key {}: pg_locks classid {classid}, objid {objid}) in database {}",
        scene.key, scene.database
    );
    let waiting = scene.sessions.iter().filter(|s| !s.granted).count();
    let details: Vec<String> = scene.sessions.iter().map(describe_lock_session).collect();
    let judged: Vec<(Verdict, String, &LockSession)> =
        scene.sessions.iter().filter(|s| s.granted).map(|h| judge_holder(h, &scene.role, fail_after)).collect();
    let Some((verdict, held, holder)) = judged.into_iter().max_by_key(|(v, _, _)| *v) else {
        if waiting == 0 {
            return Finding::ok(check, format!("{lock} is free; nobody waits"));
        }
        let value = format!("{lock}: nobody holds it; {waiting} session(s) wait");
        let next = "the lock is being handed over: run runbook diagnose again in a minute";
        return Finding { details, ..Finding::new(check, Verdict::Warn, value, next) };
    };
    let value = format!("{lock} is held by {held}; {waiting} session(s) wait");
    let next = match (verdict, holder.pid) {
        (Verdict::Fail, Some(pid)) => format!(
            "003 Migration lock timeout: if pid {pid} runs no migration (its application and query below say), end \
             that one session after approval: SELECT pg_terminate_backend({pid}); connected to database {db} as a \
             role allowed to signal it (its own role, rds_superuser or pg_signal_backend); runbook does not. 003's \
             pg_advisory_unlock_all() from a new session releases nothing another session holds",
            db = scene.database
        ),
        (Verdict::Fail, None) => format!(
            "a prepared transaction holds it: SELECT gid, owner, prepared FROM pg_prepared_xacts WHERE database = \
             '{}'; after approval, ROLLBACK PREPARED '<that gid>'; runbook does not",
            scene.database
        ),
        _ => "a migration is probably running: run runbook diagnose again in a minute".to_string(),
    };
    Finding { details, ..Finding::new(check, verdict, value, next) }
}

/// A holder's verdict and what it says of it: who, and since when it holds the lock at least.
/// An idle session took it no later than its `state_change`; a busy one is judged by its
/// current statement's `query_start`. Another role, no role, no backend or no time fails.
fn judge_holder<'a>(h: &'a LockSession, dixie: &str, fail_after: u64) -> (Verdict, String, &'a LockSession) {
    let who = describe_who(h);
    let fail = |why: String| (Verdict::Fail, format!("{who}: {why}"), h);
    if h.pid.is_none() {
        return fail("a prepared transaction, no backend".into());
    }
    let Some(state) = h.state.as_deref() else {
        return fail(format!(
            "its state and times are not shown to role {dixie} (pg_stat_activity shows them to the session's \
             own role, a superuser or pg_read_all_stats only), so how long it has held the lock is unknown"
        ));
    };
    let (label, stamp) =
        if state.starts_with("idle") { ("state_change", &h.state_change) } else { ("query_start", &h.query_start) };
    let Some(Stamp { at, age_s }) = stamp else {
        return fail(format!("state {state} but no {label} time"));
    };
    let held = format!("held at least {age_s} s, since {at} ({label})");
    if *age_s < 0 {
        fail(format!("{label} {at} is in the future of the server's clock"))
    } else if h.role.as_deref() != Some(dixie) {
        fail(format!("{held}; not Dixie's role {dixie}, so not a Dixie instance migrating"))
    } else if *age_s as u64 >= fail_after {
        fail(format!("{held}, {fail_after} s or more"))
    } else {
        (Verdict::Warn, format!("{who}, {held}"), h)
    }
}

fn describe_who(s: &LockSession) -> String {
    let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "not shown".into());
    match s.pid {
        None => "no backend".into(),
        Some(pid) => format!(
            "pid {pid} (role {}, application {:?}, from {}, state {})",
            shown(&s.role),
            s.application.clone().unwrap_or_default(),
            shown(&s.client),
            shown(&s.state)
        ),
    }
}

/// One line per session: holding or waiting, who, its times (each named by its column), its query.
pub(super) fn describe_lock_session(s: &LockSession) -> String {
    let mut line = format!("{}: {}", if s.granted { "holding" } else { "waiting" }, describe_who(s));
    for (label, stamp) in
        [("xact_start", &s.xact_start), ("state_change", &s.state_change), ("query_start", &s.query_start)]
    {
        if let Some(Stamp { at, age_s }) = stamp {
            line.push_str(&format!("; {label} {at} ({age_s} s ago)"));
        }
    }
    let query = match &s.query {
        Some(q) if q.to_lowercase().contains("password") => "(not shown: it names a password)".to_string(),
        Some(q) => clip(&q.split_whitespace().collect::<Vec<_>>().join(" "), 200),
        None => "not shown".into(),
    };
    line.push_str(&format!("; query: {query}"));
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Params, String> {
        let params: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
        let step = <Params as Deserialize>::deserialize(params).map_err(|e| e.to_string())?;
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
        assert!(kind.contains("check: unknown variant `tasx`"), "{kind}");
        let minutes = parse("check = \"log_errors\"\ngroup = \"/ecs/x\"\nminutes = \"0\"\nnext = \"n\"").unwrap_err();
        assert!(minutes.contains("minutes = 0"), "{minutes}");
        let url = parse("check = \"finn_health\"\nurl = \"finn\"").unwrap_err();
        assert!(url.contains("not an http:// or https:// URL"), "{url}");
        let rule = parse("check = \"ingress\"\nnext = \"n\"\nrule = { group = \"a\", source_group = \"b\", port = 0 }");
        assert!(rule.unwrap_err().contains("port = 0"));
    }

    /// A type error names its key: serde's internally tagged enum lost it (the generated table
    /// of `runbook::fuzz` found every check's numbers, texts and lists unnamed).
    #[test]
    fn a_value_of_the_wrong_type_names_its_key() {
        for (params, key) in [
            ("check = \"service\"\ncluster = \"c\"\nservice = \"s\"\nevents = \"x\"", "events"),
            ("check = \"service\"\ncluster = 1\nservice = \"s\"", "cluster"),
            ("check = \"ssm_params\"\nprefix = \"/p\"\nnames = \"A\"", "names"),
            (
                "check = \"ingress\"\nnext = \"n\"\nrule = { group = \"a\", source_group = \"b\", port = \"x\" }",
                "rule.port",
            ),
        ] {
            let err = parse(params).unwrap_err();
            assert!(err.contains(&format!("`{key}`")), "{params}: {err}");
        }
        assert!(parse("check = 1").unwrap_err().contains("check is the name of a check"));
        assert!(parse("cluster = \"c\"").unwrap_err().contains("missing field `check`"));
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
        let judged =
            |running, desired, pending| judge_counts("t", "c", "s", Counts { running, desired, pending }, false);
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
        assert!(
            wrong_port.value.contains("10.0.1.5:4299") && wrong_port.value.contains("10.0.1.5:4222"),
            "{wrong_port:?}"
        );
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
    fn dixies_migration_lock_key_is_the_first_31_bits_of_sha256_of_its_name() {
        // python3: int.from_bytes(hashlib.sha256(b"dixie-bff:migration").digest()[:4], "big") & 0x7FFFFFFF
        // (the first four bytes are fc451f75).
        assert_eq!(dixie_migration_lock_key(), 2_084_904_821);
        assert_eq!(pg_lock_parts(2_084_904_821), (0, 2_084_904_821));
        // Today's Dixie (FNV-1a, signed): -420369755 shows as classid 4294967295, objid 3874597541.
        assert_eq!(pg_lock_parts(-420_369_755), (4_294_967_295, 3_874_597_541));
        assert_eq!(pg_lock_parts(42_000_014), (0, 42_000_014));
        assert_eq!(pg_lock_parts(1 << 32), (1, 0));
    }

    fn stamp(age_s: i64) -> Option<Stamp> {
        Some(Stamp { at: format!("2026-03-01T12:00:{:02}Z", age_s.rem_euclid(60)), age_s })
    }

    /// A Dixie session holding the lock, idle since it took it `age_s` ago.
    fn holder(pid: i32, role: &str, age_s: i64) -> LockSession {
        LockSession {
            pid: Some(pid),
            granted: true,
            role: Some(role.into()),
            application: Some("dixie-bff".into()),
            client: Some("10.0.1.7".into()),
            state: Some("idle".into()),
            xact_start: None,
            state_change: stamp(age_s),
            query_start: stamp(age_s + 1),
            query: Some("SELECT pg_advisory_lock($1)".into()),
        }
    }

    /// A session of `role` waiting for the lock since its statement began `age_s` ago.
    fn waiter(pid: i32, role: &str, age_s: i64) -> LockSession {
        LockSession {
            granted: false,
            state: Some("active".into()),
            state_change: stamp(age_s),
            query_start: stamp(age_s),
            ..holder(pid, role, age_s)
        }
    }

    fn scene(sessions: Vec<LockSession>) -> LockScene {
        LockScene { role: "dixie".into(), database: "dixie".into(), key: 2_084_904_821, sessions }
    }

    #[test]
    fn the_migration_lock_free_is_ok_and_names_the_key_it_looked_for() {
        let free = judge_migration_lock("m", &scene(vec![]), 120);
        assert_eq!(free.verdict, Verdict::Ok, "{free:?}");
        assert!(free.value.contains("2084904821") && free.value.contains("database dixie"), "{free:?}");
    }

    #[test]
    fn the_migration_lock_held_by_another_role_whose_session_cannot_be_read_fails_naming_it() {
        // What pg_stat_activity shows the dixie role of another role's session: pid, role and
        // application name; no state, no times, no address, no query.
        let hidden = LockSession {
            pid: Some(4711),
            granted: true,
            role: Some("postgres".into()),
            application: Some("psql".into()),
            query: Some("<insufficient privilege>".into()),
            ..LockSession::default()
        };
        let f = judge_migration_lock("m", &scene(vec![hidden, waiter(4800, "dixie", 20)]), 120);
        assert_eq!(f.verdict, Verdict::Fail, "{f:?}");
        assert!(f.value.contains("pid 4711") && f.value.contains("postgres"), "{f:?}");
        assert!(f.value.contains("1 session(s) wait"), "{f:?}");
        assert!(f.next.contains("SELECT pg_terminate_backend(4711);"), "{f:?}");
        assert!(!f.next.contains("FROM pg_locks"), "the next action ends one backend only: {f:?}");
        assert!(f.details.iter().any(|d| d.contains("pid 4800") && d.contains("waiting")), "{f:?}");
    }

    #[test]
    fn the_migration_lock_is_judged_by_how_long_it_is_held_not_by_the_sessions_age() {
        let young = judge_migration_lock("m", &scene(vec![holder(100, "dixie", 5)]), 120);
        assert_eq!(young.verdict, Verdict::Warn, "{young:?}");
        assert!(young.next.contains("a migration is probably running"), "{young:?}");
        assert!(young.value.contains("(state_change)"), "says which time it judged by: {young:?}");
        assert_eq!(judge_migration_lock("m", &scene(vec![holder(100, "dixie", 119)]), 120).verdict, Verdict::Warn);
        let long = judge_migration_lock("m", &scene(vec![holder(100, "dixie", 120)]), 120);
        assert_eq!(long.verdict, Verdict::Fail, "{long:?}");
        assert!(
            long.next.contains("SELECT pg_terminate_backend(100);") && long.next.contains("database dixie"),
            "{long:?}"
        );
        assert!(long.value.contains("10.0.1.7") && long.value.contains("dixie-bff"), "{long:?}");
        // A waiting Dixie beside a young holder is two instances starting together.
        let racing = judge_migration_lock("m", &scene(vec![holder(100, "dixie", 5), waiter(101, "dixie", 3)]), 120);
        assert_eq!(racing.verdict, Verdict::Warn, "{racing:?}");
        // A busy holder is judged by its statement's start.
        let busy = LockSession { state: Some("active".into()), query_start: stamp(300), ..holder(100, "dixie", 1) };
        let busy = judge_migration_lock("m", &scene(vec![busy]), 120);
        assert!(busy.verdict == Verdict::Fail && busy.value.contains("(query_start)"), "{busy:?}");
    }

    #[test]
    fn missing_or_malformed_evidence_about_the_migration_lock_fails() {
        let judged = |s: LockSession| judge_migration_lock("m", &scene(vec![s]), 120).verdict;
        assert_eq!(judged(LockSession { state: None, ..holder(100, "dixie", 5) }), Verdict::Fail, "no state");
        assert_eq!(judged(LockSession { state_change: None, ..holder(100, "dixie", 5) }), Verdict::Fail, "no time");
        assert_eq!(judged(holder(100, "dixie", -1)), Verdict::Fail, "a time in the future");
        assert_eq!(judged(LockSession { role: None, ..holder(100, "dixie", 5) }), Verdict::Fail, "no role");
        assert_eq!(judged(holder(100, "migrator", 5)), Verdict::Fail, "not Dixie's role");
        assert_eq!(
            judged(LockSession { pid: None, ..holder(100, "dixie", 5) }),
            Verdict::Fail,
            "a prepared transaction"
        );
        let only_waiting = judge_migration_lock("m", &scene(vec![waiter(101, "dixie", 3)]), 120);
        assert_eq!(only_waiting.verdict, Verdict::Warn, "a lock being handed over: {only_waiting:?}");
    }

    #[test]
    fn a_holders_query_that_names_a_password_is_not_shown() {
        let s = LockSession { query: Some("ALTER ROLE x PASSWORD 'hunter2'".into()), ..holder(100, "dixie", 500) };
        let f = judge_migration_lock("m", &scene(vec![s]), 120);
        assert!(!format!("{f:?}").contains("hunter2"), "{f:?}");
    }
}
