//! `ecs_rollback` (002 "Rollback Procedure"): put an ECS service back on an earlier revision of
//! its task definition, wait until it is stable, and judge its health with the sprint's policy.
//!
//! The step shows the family's last five revisions (image tag, registration time). Its target
//! is `revision`, or by default the revision before the running one. Before it changes the
//! service it tags the service with a marker (`runbook:rollback`: run, from, to, operator, time),
//! so that a later terraform plan that would put the service forward again names the rollback
//! it undoes and waits for an acknowledgement (see `terraform.rs`), and so that a re-run keeps
//! the rollback in effect: with a marker whose target is running, the default target is that
//! revision, and the probe is satisfied.
//!
//! The emergency variant (002 "Force Stop All Tasks") is for tasks that are stuck: after
//! approval it scales the service to 0, then back up on the target revision, which may be the
//! running one (a restart). So its probe is never satisfied before this run has done both; a
//! second tag (`runbook:emergency`: run, revision, task count, how far it got) tells a resumed
//! run where it stopped: at 0 tasks it scales back up, it never stops there.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::ecs_deploy::{Service, describe_service, utc};
use super::{Probe, Step, StepContext, StepError, reach};
use crate::event::{Event, Outputs};
use crate::health::{HealthPolicy, judge};

/// The service tag a rollback leaves.
pub(crate) const MARKER_TAG: &str = "runbook:rollback";

/// The service tag an emergency run leaves (beside a rollback's marker, which a restart on the
/// running revision leaves as it is: it rolls nothing back).
const EMERGENCY_TAG: &str = "runbook:emergency";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {
    cluster: String,
    service: String,
    /// The revision to run: a number, or empty for the one before the running one.
    #[serde(default)]
    revision: String,
    /// 002's emergency variant: scale to 0, then back up on the target revision.
    #[serde(default, deserialize_with = "flag")]
    emergency: bool,
    health_url: String,
    health: HealthPolicy,
    /// How long the rollback may take to be stable and healthy.
    #[serde(default = "fifteen_minutes", deserialize_with = "super::number_or_text")]
    wait_seconds: u64,
    /// Whether this attempt showed the revisions already (the verify probes again).
    #[serde(skip)]
    shown: Mutex<bool>,
}

fn fifteen_minutes() -> u64 {
    900
}

fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    super::flag(d, "emergency")
}

/// What a rollback left on the service: which run moved it from which revision to which, who
/// and when, and the task count to come back to (the emergency variant scales to 0 first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Marker {
    pub(crate) run: i64,
    pub(crate) from: u32,
    pub(crate) to: u32,
    pub(crate) desired: i32,
    pub(crate) by: String,
    pub(crate) at: String,
}

impl Marker {
    /// The tag's value (ECS allows letters, digits, spaces and `+-=._:/@`).
    fn tag_value(&self) -> String {
        format!(
            "run={} from={} to={} desired={} by={} at={}",
            self.run, self.from, self.to, self.desired, self.by, self.at
        )
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        let field = |name: &str| tag_field(text, name);
        Some(Marker {
            run: field("run")?.parse().ok()?,
            from: field("from")?.parse().ok()?,
            to: field("to")?.parse().ok()?,
            desired: field("desired")?.parse().ok()?,
            by: field("by")?.to_string(),
            at: field("at")?.to_string(),
        })
    }

    /// "rollback run 7 of dixie-armitage to revision 1 (from 2) by ana@host at …".
    pub(crate) fn describe(&self, service: &str) -> String {
        format!(
            "rollback run {} of {service} to revision {} (from {}) by {} at {}",
            self.run, self.to, self.from, self.by, self.at
        )
    }
}

/// The value of `name=value` in a tag's value.
fn tag_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.split_whitespace().find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
}

/// How far an emergency run got: `Down` is written before the scale to 0, `Up` before the
/// scale back up (so a run killed between the two comes back up, never down again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Down,
    Up,
}

/// What an emergency run left on the service: which run, the revision it brings back up, with
/// how many tasks, and how far it got.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Emergency {
    run: i64,
    revision: u32,
    desired: i32,
    phase: Phase,
}

impl Emergency {
    fn tag_value(&self, by: &str, at: &str) -> String {
        let phase = match self.phase {
            Phase::Down => "down",
            Phase::Up => "up",
        };
        format!("run={} revision={} desired={} stage={phase} by={by} at={at}", self.run, self.revision, self.desired)
    }

    fn parse(text: &str) -> Option<Self> {
        let field = |name: &str| tag_field(text, name);
        Some(Emergency {
            run: field("run")?.parse().ok()?,
            revision: field("revision")?.parse().ok()?,
            desired: field("desired")?.parse().ok()?,
            phase: match field("stage")? {
                "down" => Phase::Down,
                "up" => Phase::Up,
                _ => return None,
            },
        })
    }
}

/// `operator@host` as a tag value allows it.
fn tagged_by() -> String {
    format!("{}@{}", crate::identity::operator(), crate::identity::host()).replace(char::is_whitespace, "_")
}

/// `(family, revision)` of a task definition ARN or `family:revision`.
pub(crate) fn family_revision(task_definition: &str) -> Option<(String, u32)> {
    let name = task_definition.rsplit('/').next()?;
    let (family, revision) = name.rsplit_once(':')?;
    Some((family.to_string(), revision.parse().ok()?))
}

/// The service as a rollback sees it.
struct Seen {
    svc: Service,
    family: String,
    running: u32,
    marker: Option<Marker>,
    emergency: Option<Emergency>,
    /// ACTIVE revisions of the family, newest first.
    revisions: Vec<u32>,
    target: u32,
}

impl Params {
    async fn look(&self, cx: &StepContext) -> Result<Seen, StepError> {
        let svc = describe_service(cx, &self.cluster, &self.service).await?;
        let (family, running) = family_revision(&svc.task_definition).ok_or_else(|| {
            StepError::fatal(
                format!("service {} runs {:?}, not a task definition revision", self.service, svc.task_definition),
                "check the service in the ECS console",
            )
        })?;
        let tags = cx
            .cloud
            .ecs
            .list_tags_for_resource()
            .resource_arn(&svc.arn)
            .send()
            .await
            .map_err(|e| StepError::from_sdk("ecs:ListTagsForResource", e))?;
        let tag = |key: &str| tags.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value());
        let marker = tag(MARKER_TAG).and_then(Marker::parse);
        let emergency = tag(EMERGENCY_TAG).and_then(Emergency::parse);
        let revisions = revisions(cx, &family).await?;
        let target = self.target(&family, running, marker.as_ref(), &revisions)?;
        Ok(Seen { svc, family, running, marker, emergency, revisions, target })
    }

    /// The emergency tag this run wrote for the target, at any phase.
    fn this_runs<'a>(&self, cx: &StepContext, seen: &'a Seen) -> Option<&'a Emergency> {
        seen.emergency.as_ref().filter(|e| cx.run() == Some(e.run) && e.revision == seen.target)
    }

    /// Whether this run has scaled the service to 0 and ordered it back up on the target.
    fn restarted(&self, cx: &StepContext, seen: &Seen) -> bool {
        self.this_runs(cx, seen).is_some_and(|e| e.phase == Phase::Up) && seen.svc.desired > 0
    }

    /// The task count to come back to: what this run (or one that died at 0 tasks) wrote down,
    /// else what the service runs (at least 1).
    fn desired(&self, cx: &StepContext, seen: &Seen) -> i32 {
        if let Some(e) = self.this_runs(cx, seen) {
            return e.desired;
        }
        let at_zero = seen.svc.desired == 0;
        match (&seen.emergency, &seen.marker) {
            (Some(e), _) if at_zero && e.phase == Phase::Down => e.desired,
            (_, Some(m)) if m.from == seen.running && m.to == seen.target => m.desired,
            _ => seen.svc.desired.max(1),
        }
    }

    /// `revision`, or the revision before the running one; while a rollback is in effect (its
    /// marker's target runs), that target, so that a re-run changes nothing.
    fn target(&self, family: &str, running: u32, marker: Option<&Marker>, revisions: &[u32]) -> Result<u32, StepError> {
        let listed = || revisions.iter().take(5).map(|r| r.to_string()).collect::<Vec<_>>().join(", ");
        if !self.revision.is_empty() {
            let wanted: u32 = self.revision.parse().unwrap_or(0);
            if !revisions.contains(&wanted) {
                return Err(StepError::fatal(
                    format!("{family}:{wanted} is not an ACTIVE revision; the latest are {}", listed()),
                    "pass one of them: --var revision=N",
                ));
            }
            return Ok(wanted);
        }
        if let Some(m) = marker.filter(|m| m.to == running) {
            return Ok(m.to);
        }
        revisions.iter().copied().filter(|r| *r < running).max().ok_or_else(|| {
            StepError::fatal(
                format!("{family} has no ACTIVE revision before the running {running} (ACTIVE: {})", listed()),
                "nothing to roll back to; pass --var revision=N to choose one",
            )
        })
    }

    /// The family's last five revisions, once an attempt: image tag and registration time.
    async fn show(&self, cx: &StepContext, seen: &Seen) -> Result<(), StepError> {
        if std::mem::replace(&mut *self.shown.lock().unwrap_or_else(|p| p.into_inner()), true) {
            return Ok(());
        }
        cx.log(format!("the last revisions of {} (newest first):", seen.family)).await;
        for revision in seen.revisions.iter().take(5) {
            let out = cx
                .cloud
                .ecs
                .describe_task_definition()
                .task_definition(format!("{}:{revision}", seen.family))
                .send()
                .await
                .map_err(|e| StepError::from_sdk("ecs:DescribeTaskDefinition", e))?;
            let td = out.task_definition();
            let image = td.and_then(|t| t.container_definitions().first()).and_then(|c| c.image()).unwrap_or("?");
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or(image);
            let registered = td
                .and_then(|t| t.registered_at())
                .map(|t| crate::clock::format_utc(t.to_millis().unwrap_or(0)))
                .unwrap_or_else(|| "?".into());
            let mut notes = Vec::new();
            if *revision == seen.running {
                notes.push("running");
            }
            if *revision == seen.target {
                notes.push("target");
            }
            let notes = if notes.is_empty() { String::new() } else { format!("  ({})", notes.join(", ")) };
            cx.log(format!("  {}:{revision:<4} image tag {tag:<16} registered {registered}{notes}", seen.family)).await;
        }
        Ok(())
    }

    /// What `apply` would do, `desired` the emergency's task count.
    fn what(&self, seen: &Seen, desired: i32) -> String {
        match (self.emergency, seen.running == seen.target) {
            (true, true) => format!(
                "emergency restart of {} at revision {}: scale to 0 tasks, then back to {desired}",
                self.service, seen.target
            ),
            (true, false) => format!(
                "emergency rollback of {} from revision {} to {}: scale to 0 tasks, then back to {desired} on it",
                self.service, seen.running, seen.target
            ),
            (false, _) => format!("roll {} back from revision {} to {}", self.service, seen.running, seen.target),
        }
    }

    /// Writes the marker before the change it names.
    async fn mark(&self, cx: &StepContext, seen: &Seen, desired: i32) -> Result<Marker, StepError> {
        let marker = Marker {
            run: cx.run().unwrap_or(0),
            from: seen.running,
            to: seen.target,
            desired,
            by: tagged_by(),
            at: crate::clock::format_utc(crate::clock::now_ms()),
        };
        let tag = aws_sdk_ecs::types::Tag::builder().key(MARKER_TAG).value(marker.tag_value()).build();
        cx.cloud
            .ecs
            .tag_resource()
            .resource_arn(&seen.svc.arn)
            .tags(tag)
            .send()
            .await
            .map_err(|e| StepError::from_sdk("ecs:TagResource", e))?;
        self.record(cx, seen, desired).await;
        Ok(marker)
    }

    /// The audit's record of the rollback, or of the emergency restart.
    async fn record(&self, cx: &StepContext, seen: &Seen, desired: i32) {
        cx.recorder
            .emit(Event::RollbackMarked {
                step: cx.step.clone(),
                service: self.service.clone(),
                from_revision: seen.running.to_string(),
                to_revision: seen.target.to_string(),
                operator: crate::identity::operator(),
                host: crate::identity::host(),
                emergency: self.emergency,
                desired: self.emergency.then_some(desired),
            })
            .await;
    }

    /// Writes how far this emergency run got, before the change it names.
    async fn tag_emergency(&self, cx: &StepContext, seen: &Seen, desired: i32, phase: Phase) -> Result<(), StepError> {
        let emergency = Emergency { run: cx.run().unwrap_or(0), revision: seen.target, desired, phase };
        let value = emergency.tag_value(&tagged_by(), &crate::clock::format_utc(crate::clock::now_ms()));
        let tag = aws_sdk_ecs::types::Tag::builder().key(EMERGENCY_TAG).value(value).build();
        cx.cloud
            .ecs
            .tag_resource()
            .resource_arn(&seen.svc.arn)
            .tags(tag)
            .send()
            .await
            .map_err(|e| StepError::from_sdk("ecs:TagResource", e))?;
        Ok(())
    }

    /// The emergency variant's first half: desired 0 (unless it is already), then no task
    /// running, bounded.
    async fn scale_to_zero(&self, cx: &StepContext, seen: &Seen) -> Result<(), StepError> {
        if seen.svc.desired != 0 {
            cx.log(format!("emergency: scaling {} to 0 tasks", self.service)).await;
            cx.cloud
                .ecs
                .update_service()
                .cluster(&self.cluster)
                .service(&self.service)
                .desired_count(0)
                .send()
                .await
                .map_err(|e| StepError::from_sdk("ecs:UpdateService", e))?;
            cx.checkpoint("after-scale-to-zero");
        } else {
            cx.log(format!("emergency: {} is at 0 tasks already", self.service)).await;
        }
        let started = tokio::time::Instant::now();
        loop {
            let svc = describe_service(cx, &self.cluster, &self.service).await?;
            if svc.tasks_running == 0 {
                cx.log(format!("{}: no task running", self.service)).await;
                return Ok(());
            }
            if started.elapsed() >= Duration::from_secs(self.wait_seconds) {
                return Err(StepError::retryable(format!(
                    "{} still has {} task(s) running after {} s at desired 0",
                    self.service, svc.tasks_running, self.wait_seconds
                )));
            }
            cx.progress(&format!("waiting for {} to stop: {} running", self.service, svc.tasks_running)).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

impl Step for Params {
    const KIND: &'static str = "ecs_rollback";
    const OUTPUTS: Option<&'static [&'static str]> =
        Some(&["revision", "task_definition", "deployment_id", "deployment_started_at", "health"]);

    fn validate(&self) -> Result<(), String> {
        super::check_wait("wait_seconds", self.wait_seconds)?;
        if !self.revision.is_empty() && !self.revision.parse::<u32>().is_ok_and(|r| r > 0) {
            return Err(format!(
                "revision: expected a revision number (1 or more) or empty for the one before the running one, got {:?}",
                self.revision
            ));
        }
        if self.wait_seconds == 0 {
            return Err(
                "wait_seconds = 0 leaves no time for the rollback to become stable; give 1 or more seconds".into()
            );
        }
        self.health.check()?;
        reach::check_http_url("health_url", &self.health_url)
    }

    /// Read-only, before a run is recorded: the service, its revisions and the target; a
    /// revision that is not ACTIVE is refused listing the latest.
    async fn preflight(&self, cx: &StepContext) -> Result<(), StepError> {
        self.look(cx).await.map(drop)
    }

    fn converge_within(&self) -> Duration {
        Duration::from_secs(self.wait_seconds)
    }

    async fn probe(&self, cx: &StepContext) -> Result<Probe, StepError> {
        let seen = self.look(cx).await?;
        self.show(cx, &seen).await?;
        // An emergency is for tasks that are stuck: it is done only once this run restarted them.
        if seen.running != seen.target || (self.emergency && !self.restarted(cx, &seen)) {
            return Ok(Probe::Absent(self.what(&seen, self.desired(cx, &seen))));
        }
        let svc = &seen.svc;
        if let Some(why) = &svc.failed {
            return Err(StepError::fatal(
                why.clone(),
                "read the service events and the task logs (CloudWatch): runbook diagnose; choose another \
                 revision with --var revision=N",
            ));
        }
        if !svc.stable {
            return Ok(Probe::Absent(format!(
                "deployment {} of {} on revision {} in progress: {}",
                svc.primary_id, self.service, seen.target, svc.running
            )));
        }
        let (code, body) = match reach::get_json(&cx.env, &self.health_url).await {
            Ok((code, body, _)) => (code, body),
            Err(e) => return Ok(Probe::Absent(format!("{} is not healthy yet: {e}", self.health_url))),
        };
        let verdict = judge(&self.health, code, &body);
        for warning in verdict.warnings {
            cx.warn(warning).await;
        }
        if !verdict.ok {
            return Ok(Probe::Absent(format!("{} is not healthy yet: {}", self.health_url, verdict.summary)));
        }
        // The task that answers must be the rollback's (an old task still draining answers too).
        if let Some(uptime) = body["uptime_seconds"].as_f64() {
            let started = SystemTime::now() - Duration::from_secs_f64(uptime.max(0.0));
            if started + Duration::from_secs(2) < svc.primary_started {
                return Ok(Probe::Absent(format!(
                    "the task answering {} started at {}, before deployment {} at {}: waiting for the new task",
                    self.health_url,
                    utc(started),
                    svc.primary_id,
                    utc(svc.primary_started)
                )));
            }
        }
        if let Some(m) = seen.marker.as_ref().filter(|m| m.to == seen.target) {
            cx.log(format!("in effect: {}", m.describe(&self.service))).await;
        }
        Ok(Probe::Satisfied(Outputs::from([
            ("revision".to_string(), seen.target.to_string()),
            ("task_definition".to_string(), svc.task_definition.clone()),
            ("deployment_id".to_string(), svc.primary_id.clone()),
            ("deployment_started_at".to_string(), utc(svc.primary_started)),
            ("health".to_string(), verdict.summary),
        ])))
    }

    async fn apply(&self, cx: &StepContext) -> Result<(), StepError> {
        let seen = self.look(cx).await?;
        if self.emergency {
            return self.emergency(cx, &seen).await;
        }
        if seen.running == seen.target {
            cx.log(format!("{} already runs revision {}: waiting for it", self.service, seen.target)).await;
            return Ok(());
        }
        let desired = self.desired(cx, &seen);
        cx.log(self.what(&seen, desired)).await;
        self.mark(cx, &seen, desired).await?;
        cx.checkpoint("after-mark");
        self.deploy(cx, &seen, None).await
    }
}

impl Params {
    /// 002's "Force Stop All Tasks", after approval: 0 tasks, then back up on the target. A run
    /// that finds its own tag resumes where it stopped, without asking again.
    async fn emergency(&self, cx: &StepContext, seen: &Seen) -> Result<(), StepError> {
        if self.restarted(cx, seen) {
            cx.log(format!("{} is back up on revision {}: waiting for it", self.service, seen.target)).await;
            return Ok(());
        }
        let desired = self.desired(cx, seen);
        let what = self.what(seen, desired);
        if self.this_runs(cx, seen).is_some() {
            cx.log(format!("resuming: {what}")).await;
        } else {
            if !cx.approve(&what).await {
                let fix = cx.run().map(|run| {
                    format!(
                        "review the revisions (runbook logs {}), then: {}",
                        cx.step,
                        crate::hint::resume_approving(run)
                    )
                });
                return Err(StepError::AwaitingApproval { summary: what, fix });
            }
            cx.log(what).await;
            // Recorded before the tag that makes a resumed run skip this (and the approval).
            if seen.running == seen.target {
                self.record(cx, seen, desired).await;
            } else {
                self.mark(cx, seen, desired).await?;
            }
            self.tag_emergency(cx, seen, desired, Phase::Down).await?;
            cx.checkpoint("after-mark");
        }
        self.scale_to_zero(cx, seen).await?;
        self.tag_emergency(cx, seen, desired, Phase::Up).await?;
        self.deploy(cx, seen, Some(desired)).await
    }

    /// Puts the service on the target revision (with `desired` tasks, for the emergency).
    async fn deploy(&self, cx: &StepContext, seen: &Seen, desired: Option<i32>) -> Result<(), StepError> {
        cx.cloud
            .ecs
            .update_service()
            .cluster(&self.cluster)
            .service(&self.service)
            .task_definition(format!("{}:{}", seen.family, seen.target))
            // ECS starts a deployment for a new task definition anyway; moto only for a forced
            // one (docs/ring.md), and the verify waits for the deployment's own task.
            .force_new_deployment(true)
            .set_desired_count(desired)
            .send()
            .await
            .map_err(|e| StepError::from_sdk("ecs:UpdateService", e))?;
        let tasks = desired.map(|d| format!(" with {d} task(s)")).unwrap_or_default();
        cx.log(format!("{} now deploys {}:{}{tasks}", self.service, seen.family, seen.target)).await;
        cx.checkpoint("after-update");
        Ok(())
    }
}

/// The family's ACTIVE revisions, newest first by number: moto answers oldest first whatever
/// the sort asks, so the order is ours, over every page.
async fn revisions(cx: &StepContext, family: &str) -> Result<Vec<u32>, StepError> {
    let mut revisions = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let listed = cx
            .cloud
            .ecs
            .list_task_definitions()
            .family_prefix(family)
            .status(aws_sdk_ecs::types::TaskDefinitionStatus::Active)
            .sort(aws_sdk_ecs::types::SortOrder::Desc)
            .max_results(100)
            .set_next_token(next)
            .send()
            .await
            .map_err(|e| StepError::from_sdk("ecs:ListTaskDefinitions", e))?;
        let arns = listed.task_definition_arns().iter().filter_map(|arn| family_revision(arn));
        revisions.extend(arns.filter(|(f, _)| f == family).map(|(_, r)| r));
        next = listed.next_token().filter(|t| !t.is_empty()).map(String::from);
        if next.is_none() {
            break;
        }
    }
    revisions.sort_unstable_by(|a, b| b.cmp(a));
    revisions.dedup();
    Ok(revisions)
}

#[cfg(test)]
mod tests;
