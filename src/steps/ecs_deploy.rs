//! `ecs_deploy` (T2.6, T2.7, T3.3): redeploy an ECS service so that it picks up its inputs,
//! wait until it is stable, and require a healthy health body (HTTP 200 alone proves nothing).
//!
//! Satisfied only when the primary deployment started after the newest input it must pick up
//! (the `LastModifiedDate` of its SSM parameters) and runs the expected image, is stable, and
//! is healthy. So a re-run after a parameter change redeploys, and a re-run with nothing
//! changed restarts nothing. With `set_param` (T2.7) it first writes one parameter of the
//! service (Finn's DIXIE_BASE_URL): the redeploy then proves the service read it.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::{Probe, Step, StepContext, StepError, reach};
use crate::event::Outputs;
use crate::health::{HealthPolicy, judge};
use crate::image_tag::ImageTag;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {
    cluster: String,
    service: String,
    /// SSM names, or prefixes ending in `/`, whose changes the deployment must postdate.
    #[serde(default)]
    inputs: Vec<String>,
    /// The image tag the service's task definition must run; empty: not checked.
    #[serde(default)]
    image_tag: ImageTag,
    /// The ECR repository of that image: its push time is an input too.
    #[serde(default)]
    image_repository: String,
    #[serde(default)]
    set_param: Option<SetParam>,
    /// Security-group rules the deployment must postdate (when runbook created them, from
    /// their tag; a rule that is missing or untagged is no input), e.g. T3.1's NATS rule. Read
    /// from EC2, not from T3.1's outputs, so that T3.3 can run when T3.1 was skipped.
    #[serde(default)]
    rules: Vec<super::security_group_ingress::Ingress>,
    /// A change the deployment must postdate, as an upstream step reports it: `<unix ms>` (0 or
    /// empty: none), e.g. the `changed_at_ms` of a `migrations` step, after which Dixie restarts.
    #[serde(default)]
    after_ms: String,
    health_url: String,
    health: HealthPolicy,
    /// A parameter holding a NATS URL that must name a RUNNING task of the NATS service (its
    /// address changes when the task restarts; sprint-2's T2.5 writes it).
    #[serde(default)]
    nats_url: Option<NatsUrl>,
    /// The service's CloudWatch alarms: none in ALARM, and at least as many as the terraform
    /// folder declares.
    #[serde(default)]
    alarms: Option<Alarms>,
    /// How long the deployment may take to become stable and healthy.
    #[serde(default = "fifteen_minutes", deserialize_with = "super::number_or_text")]
    pub(super) wait_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NatsUrl {
    param: String,
    task_of: super::ssm_params::NatsTask,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Alarms {
    prefix: String,
    /// The terraform folder whose `aws_cloudwatch_metric_alarm` resources must all exist.
    declared_in: String,
}

fn fifteen_minutes() -> u64 {
    900
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetParam {
    name: String,
    value: String,
    #[serde(rename = "type")]
    kind: super::ssm_params::Kind,
}

/// An ECS service as its deployment steps see it.
pub(super) struct Service {
    pub(super) arn: String,
    pub(super) primary_id: String,
    pub(super) primary_started: SystemTime,
    pub(super) stable: bool,
    pub(super) failed: Option<String>,
    /// "1/1 running": the primary deployment's running and desired tasks.
    pub(super) running: String,
    /// The service's running tasks, of every deployment.
    pub(super) tasks_running: i32,
    pub(super) desired: i32,
    pub(super) task_definition: String,
}

fn to_system_time(t: &aws_sdk_ecs::primitives::DateTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(t.to_millis().unwrap_or(0).max(0) as u64)
}

pub(super) fn utc(t: SystemTime) -> String {
    crate::clock::format_utc(t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0))
}

/// The ACTIVE service `name` of `cluster` and its PRIMARY deployment.
pub(super) async fn describe_service(cx: &StepContext, cluster: &str, name: &str) -> Result<Service, StepError> {
    let out = cx
        .cloud
        .ecs
        .describe_services()
        .cluster(cluster)
        .services(name)
        .send()
        .await
        .map_err(|e| StepError::from_sdk("ecs:DescribeServices", e))?;
    let svc = out.services().iter().find(|s| s.status() == Some("ACTIVE")).ok_or_else(|| {
        StepError::fatal(
            format!("ECS service {name} is not active in cluster {cluster}"),
            "the terraform step creates it: runbook status",
        )
    })?;
    let primary = svc
        .deployments()
        .iter()
        .find(|d| d.status() == Some("PRIMARY"))
        .ok_or_else(|| StepError::retryable(format!("service {name} has no PRIMARY deployment yet")))?;
    let rollout = primary.rollout_state().map(|r| r.as_str().to_string()).unwrap_or_default();
    let failed = (rollout == "FAILED").then(|| {
        let events: Vec<String> = svc.events().iter().take(5).filter_map(|e| e.message().map(String::from)).collect();
        format!(
            "deployment {} of {name} FAILED (circuit breaker rollback?): {}; service events: {}",
            primary.id().unwrap_or("?"),
            primary.rollout_state_reason().unwrap_or("no reason"),
            events.join(" | ")
        )
    });
    let (running, desired) = (primary.running_count(), primary.desired_count());
    Ok(Service {
        arn: svc.service_arn().unwrap_or_default().to_string(),
        primary_id: primary.id().unwrap_or_default().to_string(),
        primary_started: primary.created_at().map(to_system_time).unwrap_or(SystemTime::UNIX_EPOCH),
        stable: rollout == "COMPLETED" || (svc.deployments().len() == 1 && desired > 0 && running == desired),
        failed,
        running: format!("{running}/{desired} running"),
        tasks_running: svc.running_count(),
        desired,
        // The service's, not the deployment's: moto keeps a deployment's old one.
        task_definition: svc.task_definition().unwrap_or_default().to_string(),
    })
}

impl Params {
    /// Whether a change of the parameter `name` is one of the inputs this deployment must postdate.
    pub(super) fn picks_up(&self, name: &str) -> bool {
        self.inputs.iter().any(|input| input == name || (input.ends_with('/') && name.starts_with(input.as_str())))
    }

    /// The NATS address the task definition carries, checked (`nats_url`); `None` when the
    /// step checks none. A stale one fails the step: waiting does not fix it.
    async fn nats(&self, cx: &StepContext) -> Result<Option<String>, StepError> {
        let Some(nats) = &self.nats_url else { return Ok(None) };
        nats.check(cx).await?.map(Some).map_err(|why| {
            StepError::fatal(
                why,
                format!(
                    "sprint-2's T2.5 writes the new address and its T2.6 redeploys Dixie: runbook run sprint-2, then: {}",
                    cx.retry_hint()
                ),
            )
        })
    }

    /// The health verdict's summary and body, once the service answers healthy from a task
    /// newer than the inputs (`newest`); otherwise what is awaited.
    async fn healthy_new_task(
        &self,
        cx: &StepContext,
        newest: &Option<(SystemTime, String)>,
    ) -> Result<Result<(String, serde_json::Value), Probe>, StepError> {
        let (ok, summary, body) = match reach::get_json(&cx.env, &self.health_url).await {
            Ok((code, body, _)) => {
                let verdict = judge(&self.health, code, &body);
                for warning in verdict.warnings {
                    cx.warn(warning).await;
                }
                (verdict.ok, verdict.summary, body)
            }
            Err(e) => (false, e, serde_json::Value::Null),
        };
        if !ok {
            return Ok(Err(Probe::Absent(format!("{} is not healthy yet: {summary}", self.health_url))));
        }
        // The task that answers must itself be newer than the inputs (an old task still
        // draining answers healthy too); 2 s of slack for clock skew.
        if let (Some(uptime), Some((changed, name))) = (body["uptime_seconds"].as_f64(), newest) {
            let started = SystemTime::now() - Duration::from_secs_f64(uptime.max(0.0));
            if started + Duration::from_secs(2) < *changed {
                return Ok(Err(Probe::Absent(format!(
                    "the task answering {} started at {}, before {name} changed at {}: waiting for the new task",
                    self.health_url,
                    utc(started),
                    utc(*changed)
                ))));
            }
        }
        Ok(Ok((summary, body)))
    }

    /// What sprint 3's policy asks beyond the health (Finn's latency, the alarms), each added
    /// to `outputs`; `Some` with what is awaited when one does not hold yet.
    async fn policy_checks(
        &self,
        cx: &StepContext,
        body: &serde_json::Value,
        outputs: &mut Outputs,
    ) -> Result<Option<Probe>, StepError> {
        if let Some(limit) = self.health.finn_latency_ms {
            let (median, samples) = self.finn_latency(cx).await?;
            let seen = format!("median {median} ms of {samples:?} ms, 1 s apart (want < {limit} ms)");
            // The value reported, never a rounded one: 49.6 is under 50.
            if median >= limit as f64 {
                return Ok(Some(Probe::Absent(format!("finn latency {seen}"))));
            }
            outputs.insert("finn_latency".into(), seen);
        }
        if let Some(alarms) = &self.alarms {
            let (ok, seen) = alarms.check(cx).await?;
            if !ok {
                return Ok(Some(Probe::Absent(seen)));
            }
            outputs.insert("alarms".into(), seen);
        }
        if self.health.governance || self.health.finn_latency_ms.is_some() || self.alarms.is_some() {
            for line in check_table(body, outputs) {
                cx.log(line).await;
            }
        }
        Ok(None)
    }

    async fn service(&self, cx: &StepContext) -> Result<Service, StepError> {
        describe_service(cx, &self.cluster, &self.service).await
    }

    /// The newest `LastModifiedDate` among the inputs, with its parameter's name.
    async fn newest_input(&self, cx: &StepContext) -> Result<Option<(SystemTime, String)>, StepError> {
        let mut newest: Option<(SystemTime, String)> = None;
        if !self.image_tag.is_empty() && !self.image_repository.is_empty() {
            let images = cx
                .cloud
                .ecr
                .describe_images()
                .repository_name(&self.image_repository)
                .image_ids(aws_sdk_ecr::types::ImageIdentifier::builder().image_tag(self.image_tag.as_str()).build())
                .send()
                .await
                .map_err(|e| StepError::from_sdk("ecr:DescribeImages", e))?;
            if let Some(pushed) = images.image_details().first().and_then(|i| i.image_pushed_at()) {
                offer(&mut newest, pushed.to_millis().unwrap_or(0), || {
                    format!("image {}:{}", self.image_repository, self.image_tag)
                });
            }
        }
        if let Ok(ms) = self.after_ms.trim().parse::<i64>()
            && ms > 0
        {
            offer(&mut newest, ms, || "the change of the step before (after_ms)".to_string());
        }
        for rule in &self.rules {
            if let Some(ms) = rule.created_at(cx).await? {
                offer(&mut newest, ms, || rule.name());
            }
        }
        let mut consider = |name: Option<&str>, when: Option<&aws_sdk_ssm::primitives::DateTime>| {
            if let (Some(name), Some(when)) = (name, when) {
                offer(&mut newest, when.to_millis().unwrap_or(0), || name.to_string());
            }
        };
        let ssm = &cx.cloud.ssm;
        for input in &self.inputs {
            if input.ends_with('/') {
                let mut pages = ssm
                    .get_parameters_by_path()
                    .path(input.trim_end_matches('/'))
                    .recursive(true)
                    .into_paginator()
                    .send();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| StepError::from_sdk("ssm:GetParametersByPath", e))?;
                    for p in page.parameters() {
                        consider(p.name(), p.last_modified_date());
                    }
                }
            } else {
                match ssm.get_parameter().name(input).send().await {
                    Ok(out) => {
                        if let Some(p) = out.parameter() {
                            consider(p.name(), p.last_modified_date());
                        }
                    }
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_parameter_not_found()) => {}
                    Err(e) => return Err(StepError::from_sdk("ssm:GetParameter", e)),
                }
            }
        }
        Ok(newest)
    }

    async fn image_of(&self, cx: &StepContext, task_definition: &str) -> Result<String, StepError> {
        let out = cx
            .cloud
            .ecs
            .describe_task_definition()
            .task_definition(task_definition)
            .send()
            .await
            .map_err(|e| StepError::from_sdk("ecs:DescribeTaskDefinition", e))?;
        Ok(out
            .task_definition()
            .and_then(|t| t.container_definitions().first())
            .and_then(|c| c.image())
            .unwrap_or_default()
            .to_string())
    }

    /// `Some(why)` when the param that `set_param` names does not hold its value.
    async fn param_differs(&self, cx: &StepContext) -> Result<Option<String>, StepError> {
        let Some(set) = &self.set_param else { return Ok(None) };
        let live = cx.parameter(&set.name).await?;
        Ok(match live {
            Some(v) if v.expose() == &set.value => None,
            Some(_) => Some(format!("set {} (differs)", set.name)),
            None => Some(format!("set {}", set.name)),
        })
    }

    /// Why the current primary deployment is too old, if it is.
    fn stale(&self, newest: &Option<(SystemTime, String)>, svc: &Service) -> Option<String> {
        match newest {
            Some((changed, name)) if *changed >= svc.primary_started => Some(format!(
                "redeploy {}: {name} changed at {} after its deployment started at {}",
                self.service,
                utc(*changed),
                utc(svc.primary_started)
            )),
            _ => None,
        }
    }

    /// Finn's latency as Dixie reports it, sampled `latency_samples` times a second apart:
    /// (median, samples), in milliseconds as reported. A sample without a latency, or with one
    /// that is not a non-negative number, fails the step's wait, naming what it found.
    async fn finn_latency(&self, cx: &StepContext) -> Result<(f64, Vec<f64>), StepError> {
        let mut samples = Vec::new();
        for n in 0..self.health.latency_samples {
            if n > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let (_, body, _) = reach::get_json(&cx.env, &self.health_url).await.map_err(StepError::retryable)?;
            let latency = crate::health::finn_latency_ms(&body)
                .map_err(|why| StepError::retryable(format!("{} {why}", self.health_url)))?;
            samples.push(latency);
        }
        let median = crate::health::median(&samples)
            .ok_or_else(|| StepError::retryable("health.latency_samples = 0: no sample of Finn's latency"))?;
        Ok((median, samples))
    }
}

impl NatsUrl {
    /// `Err(why)` when the URL names no running NATS task, with the address it has now.
    async fn check(&self, cx: &StepContext) -> Result<Result<String, String>, StepError> {
        let Some(url) = cx.parameter(&self.param).await? else {
            return Ok(Err(format!("{} does not exist", self.param)));
        };
        let live = super::ssm_params::task_ip(cx, &self.task_of).await?;
        Ok(judge_nats_url(&self.param, url.expose(), &live, self.task_of.port, &self.task_of.service))
    }
}

/// Whether a NATS URL names the running task: its host AND port (4222 when the URL names
/// none); the URL's credentials are never shown.
fn judge_nats_url(param: &str, url: &str, live_ip: &str, live_port: u16, service: &str) -> Result<String, String> {
    let Some((_, host, port)) = reach::endpoint_of(url).filter(|(s, h, _)| s == "nats" && !h.is_empty()) else {
        return Err(format!("{param} is not a nats://host:port URL"));
    };
    let port = port.unwrap_or(4222);
    if host == live_ip && port == live_port {
        Ok(format!("{param} names the running task {live_ip}:{live_port}"))
    } else if host == live_ip {
        Err(format!("{param} names port {port}, but the running task of {service} listens on {live_port}"))
    } else {
        Err(format!(
            "{param} names {host}:{port}, but the running task of {service} is at {live_ip}:{live_port} (the task restarted)"
        ))
    }
}

impl Alarms {
    /// (ok, what was seen): none in ALARM, and no fewer than the terraform folder declares.
    async fn check(&self, cx: &StepContext) -> Result<(bool, String), StepError> {
        let declared = declared_alarms(&cx.project.join(&self.declared_in))
            .map_err(|e| StepError::fatal(e, "point alarms.declared_in at the terraform folder"))?;
        let (total, firing) = super::validate::alarms(cx, &self.prefix).await?;
        Ok(if !firing.is_empty() {
            (false, format!("in ALARM: {}", firing.join(", ")))
        } else if total < declared {
            (false, format!("{total} alarms named {}*, terraform declares {declared}", self.prefix))
        } else {
            (true, format!("{total} alarms ({declared} declared), none in ALARM"))
        })
    }
}

/// Keeps in `newest` the later of it and the input `name` changed at unix `ms`.
fn offer(newest: &mut Option<(SystemTime, String)>, ms: i64, name: impl FnOnce() -> String) {
    let when = SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    if newest.as_ref().is_none_or(|(t, _)| when > *t) {
        *newest = Some((when, name()));
    }
}

/// The passed checks of a full validation, one line each, as T2.8 prints them.
fn check_table(body: &serde_json::Value, outputs: &Outputs) -> Vec<String> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("absent").to_string();
    let mut rows = vec![("status".to_string(), text(&body["status"]))];
    for component in ["postgresql", "redis", "nats"] {
        rows.push((component.to_string(), text(&body["infrastructure"][component]["status"])));
    }
    rows.push(("finn circuit".into(), text(&body["services"]["loa_finn"]["circuit_state"])));
    if let Some(latency) = outputs.get("finn_latency") {
        rows.push(("finn latency".into(), latency.clone()));
    }
    rows.push(("governance".into(), text(&body["governance"]["health"])));
    if let Some(nats_url) = outputs.get("nats_url") {
        rows.push(("nats url".into(), nats_url.clone()));
    }
    if let Some(alarms) = outputs.get("alarms") {
        rows.push(("alarms".into(), alarms.clone()));
    }
    rows.into_iter().map(|(check, seen)| format!("{check:<14} pass {seen}")).collect()
}

/// How many `aws_cloudwatch_metric_alarm` resources the folder's `*.tf` files declare.
fn declared_alarms(dir: &std::path::Path) -> Result<usize, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("alarms.declared_in: {}: {e}", dir.display()))?;
    let mut count = 0;
    for entry in entries.flatten() {
        if entry.path().extension().is_some_and(|x| x == "tf") {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            count += text.matches("resource \"aws_cloudwatch_metric_alarm\"").count();
        }
    }
    Ok(count)
}

impl Step for Params {
    const KIND: &'static str = "ecs_deploy";
    const OUTPUTS: Option<&'static [&'static str]> = Some(&["deployment_id", "deployment_started_at", "health"]);

    fn validate(&self) -> Result<(), String> {
        super::check_wait("wait_seconds", self.wait_seconds)?;
        if self.wait_seconds == 0 {
            return Err(
                "wait_seconds = 0 leaves no time for the deployment to become stable; give 1 or more seconds".into()
            );
        }
        self.health.check()?;
        let after = self.after_ms.trim();
        if !(after.is_empty() || super::from_upstream(after) || after.parse::<u64>().is_ok()) {
            return Err(format!("after_ms = {after:?} is not a time in unix milliseconds"));
        }
        for rule in &self.rules {
            rule.check().map_err(|e| format!("rules: {e}"))?;
        }
        if let Some(nats) = &self.nats_url {
            super::ssm_params::check_parameter_name("nats_url.param", &nats.param)?;
        }
        reach::check_http_url("health_url", &self.health_url)
    }

    /// A NATS_URL that is there already is a nats:// URL (one an upstream step writes is
    /// judged when the step runs). The rules it picks up may be missing: it redeploys without
    /// them and its health names what is not reachable.
    async fn preflight(&self, cx: &StepContext) -> Result<(), StepError> {
        if let Some(nats) = &self.nats_url
            && let Some(url) = cx.parameter(&nats.param).await?
        {
            let scheme = reach::endpoint_of(url.expose()).map(|(scheme, _, _)| scheme);
            if scheme.as_deref() != Some("nats") {
                return Err(StepError::fatal(
                    format!("{} is not a nats://host:port URL (its value is not shown)", nats.param),
                    "run sprint-2 (T2.5 writes it from the running NATS task), or put it right in SSM",
                ));
            }
        }
        Ok(())
    }

    fn converge_within(&self) -> Duration {
        Duration::from_secs(self.wait_seconds)
    }

    async fn probe(&self, cx: &StepContext) -> Result<Probe, StepError> {
        if let Some(why) = self.param_differs(cx).await? {
            return Ok(Probe::Absent(format!("{why}, then redeploy {}", self.service)));
        }
        let svc = self.service(cx).await?;
        if !self.image_tag.is_empty() {
            let image = self.image_of(cx, &svc.task_definition).await?;
            if !image.ends_with(&format!(":{}", self.image_tag)) {
                return Ok(Probe::Conflict(format!(
                    "service {} runs task definition {} with image {image}, not tag {}; the terraform step sets the image",
                    self.service, svc.task_definition, self.image_tag
                )));
            }
        }
        if let Some(why) = &svc.failed {
            return Err(StepError::fatal(
                why.clone(),
                format!("read the service events and the task logs (CloudWatch), fix, then: {}", cx.retry_hint()),
            ));
        }
        let newest = self.newest_input(cx).await?;
        if let Some(why) = self.stale(&newest, &svc) {
            return Ok(Probe::Absent(why));
        }
        if !svc.stable {
            return Ok(Probe::Absent(format!(
                "deployment {} of {} in progress: {}",
                svc.primary_id, self.service, svc.running
            )));
        }
        // Before the health: a stale NATS_URL is not something waiting fixes.
        let nats_seen = self.nats(cx).await?;
        let (summary, body) = match self.healthy_new_task(cx, &newest).await? {
            Ok(healthy) => healthy,
            Err(absent) => return Ok(absent),
        };
        let mut outputs = Outputs::from([
            ("deployment_id".to_string(), svc.primary_id),
            ("deployment_started_at".to_string(), utc(svc.primary_started)),
            ("health".to_string(), summary),
        ]);
        if let Some(seen) = nats_seen {
            outputs.insert("nats_url".into(), seen);
        }
        if let Some(absent) = self.policy_checks(cx, &body, &mut outputs).await? {
            return Ok(absent);
        }
        Ok(Probe::Satisfied(outputs))
    }

    async fn apply(&self, cx: &StepContext) -> Result<(), StepError> {
        if let (Some(set), Some(why)) = (&self.set_param, self.param_differs(cx).await?) {
            cx.log(format!("{why} = {}", set.value)).await;
            cx.cloud
                .ssm
                .put_parameter()
                .name(&set.name)
                .value(&set.value)
                .r#type(set.kind.parameter_type())
                .overwrite(true)
                .send()
                .await
                .map_err(|e| StepError::from_sdk(&format!("ssm:PutParameter {}", set.name), e))?;
            cx.checkpoint("after-set-param");
        }
        let svc = self.service(cx).await?;
        match self.stale(&self.newest_input(cx).await?, &svc) {
            Some(why) => {
                cx.log(format!("{why}: forcing a new deployment")).await;
                cx.cloud
                    .ecs
                    .update_service()
                    .cluster(&self.cluster)
                    .service(&self.service)
                    .force_new_deployment(true)
                    .send()
                    .await
                    .map_err(|e| StepError::from_sdk("ecs:UpdateService", e))?;
                cx.checkpoint("after-force");
            }
            None => {
                cx.log(format!(
                    "deployment {} started after every input; waiting for it, not restarting",
                    svc.primary_id
                ))
                .await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod nats_url_tests {
    use super::judge_nats_url;

    /// `nats://<running task ip>:4299` passed: the port was not compared.
    #[test]
    fn a_nats_url_must_name_the_running_tasks_host_and_port() {
        let judge = |url: &str| judge_nats_url("NATS_URL", url, "10.0.1.7", 4222, "nats");
        assert!(judge("nats://10.0.1.7:4222").is_ok());
        assert!(judge("nats://10.0.1.7").is_ok(), "4222 when the URL names no port");
        assert_eq!(
            judge("nats://10.0.1.7:4299").unwrap_err(),
            "NATS_URL names port 4299, but the running task of nats listens on 4222"
        );
        assert!(judge("nats://10.0.1.9:4222").unwrap_err().contains("(the task restarted)"));
        assert_eq!(judge("http://10.0.1.7:4222").unwrap_err(), "NATS_URL is not a nats://host:port URL");
        let secret = judge("nats://user:Zq9pw@10.0.1.9:4222").unwrap_err();
        assert!(!secret.contains("Zq9pw"), "{secret}");
    }
}
