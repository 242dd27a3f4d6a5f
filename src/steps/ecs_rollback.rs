//! `ecs_rollback` (002 "Rollback Procedure"): put an ECS service back on an earlier revision of
//! its task definition, wait until it is stable, and judge its health with the sprint's policy.
//!
//! The step shows the family's last five revisions (image tag, registration time). Its target
//! is `revision`, or by default the revision before the running one. Before it changes the
//! service it tags the service with a marker (`runbook:rollback`: run, from, to, operator, time),
//! so that a later terraform plan that would put the service forward again names the rollback
//! it undoes and waits for an acknowledgement (see `terraform.rs`), and so that a re-run keeps
//! the rollback in effect: with a marker whose target is running, the default target is that
//! revision, and the probe is satisfied. The emergency variant (002 "Force Stop All Tasks")
//! scales the service to 0 first, then back up on the target revision.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::ecs_deploy::{Service, describe_service, utc};
use super::{Probe, Step, StepContext, StepError, reach};
use crate::event::{Event, Outputs};
use crate::health::{HealthPolicy, judge};

/// The service tag a rollback leaves.
pub(crate) const MARKER_TAG: &str = "runbook:rollback";

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
        let field =
            |name: &str| text.split_whitespace().find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')));
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
        let marker = tags.tags().iter().find(|t| t.key() == Some(MARKER_TAG)).and_then(|t| Marker::parse(t.value()?));
        let listed = cx
            .cloud
            .ecs
            .list_task_definitions()
            .family_prefix(&family)
            .status(aws_sdk_ecs::types::TaskDefinitionStatus::Active)
            .sort(aws_sdk_ecs::types::SortOrder::Desc)
            .max_results(100)
            .send()
            .await
            .map_err(|e| StepError::from_sdk("ecs:ListTaskDefinitions", e))?;
        let revisions: Vec<u32> = listed
            .task_definition_arns()
            .iter()
            .filter_map(|arn| family_revision(arn))
            .filter(|(f, _)| *f == family)
            .map(|(_, r)| r)
            .collect();
        let target = self.target(&family, running, marker.as_ref(), &revisions)?;
        Ok(Seen { svc, family, running, marker, revisions, target })
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

    fn what(&self, seen: &Seen) -> String {
        format!(
            "roll {} back from revision {} to {}{}",
            self.service,
            seen.running,
            seen.target,
            if self.emergency { " (emergency: scale to 0, then up on it)" } else { "" }
        )
    }

    /// Writes the marker before the change it names, keeping the task count of a marker this
    /// rollback already wrote (an emergency rollback that died at 0 tasks comes back to 1).
    async fn mark(&self, cx: &StepContext, seen: &Seen) -> Result<Marker, StepError> {
        let desired = match &seen.marker {
            Some(m) if m.from == seen.running && m.to == seen.target => m.desired,
            _ => seen.svc.desired.max(1),
        };
        let marker = Marker {
            run: cx.run().unwrap_or(0),
            from: seen.running,
            to: seen.target,
            desired,
            by: format!("{}@{}", crate::identity::operator(), crate::identity::host())
                .replace(char::is_whitespace, "_"),
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
        cx.recorder
            .emit(Event::RollbackMarked {
                step: cx.step.clone(),
                service: self.service.clone(),
                from_revision: seen.running.to_string(),
                to_revision: seen.target.to_string(),
                operator: crate::identity::operator(),
                host: crate::identity::host(),
            })
            .await;
        Ok(marker)
    }

    /// The emergency variant's first half: desired 0, then no task running, bounded.
    async fn scale_to_zero(&self, cx: &StepContext) -> Result<(), StepError> {
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

    fn converge_within(&self) -> Duration {
        Duration::from_secs(self.wait_seconds)
    }

    async fn probe(&self, cx: &StepContext) -> Result<Probe, StepError> {
        let seen = self.look(cx).await?;
        self.show(cx, &seen).await?;
        if seen.running != seen.target {
            return Ok(Probe::Absent(self.what(&seen)));
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
        if seen.running == seen.target {
            cx.log(format!("{} already runs revision {}: waiting for it", self.service, seen.target)).await;
            return Ok(());
        }
        cx.log(self.what(&seen)).await;
        let marker = self.mark(cx, &seen).await?;
        cx.checkpoint("after-mark");
        let mut update = cx
            .cloud
            .ecs
            .update_service()
            .cluster(&self.cluster)
            .service(&self.service)
            .task_definition(format!("{}:{}", seen.family, seen.target))
            // ECS starts a deployment for a new task definition anyway; moto only for a forced
            // one (docs/ring.md), and the verify waits for the deployment's own task.
            .force_new_deployment(true);
        if self.emergency {
            self.scale_to_zero(cx).await?;
            update = update.desired_count(marker.desired);
        }
        update.send().await.map_err(|e| StepError::from_sdk("ecs:UpdateService", e))?;
        cx.log(format!(
            "{} now deploys {}:{}{}",
            self.service,
            seen.family,
            seen.target,
            if self.emergency { format!(" with {} task(s)", marker.desired) } else { String::new() }
        ))
        .await;
        cx.checkpoint("after-update");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(revision: &str) -> Params {
        toml::from_str(&format!(
            "cluster = \"c\"\nservice = \"dixie-armitage\"\nrevision = \"{revision}\"\n\
             health_url = \"http://127.0.0.1:1/api/health\"\nhealth = \"dixie\"\n"
        ))
        .unwrap()
    }

    fn marker(from: u32, to: u32) -> Marker {
        Marker { run: 7, from, to, desired: 1, by: "ana@laptop".into(), at: "2026-12-01T05:00:00Z".into() }
    }

    #[test]
    fn a_marker_reads_back_what_it_wrote() {
        let m = marker(3, 2);
        assert_eq!(Marker::parse(&m.tag_value()), Some(m.clone()));
        assert!(m.tag_value().len() <= 256, "ECS tag values are at most 256 characters");
        assert_eq!(Marker::parse("run=x from=3"), None);
        assert_eq!(
            m.describe("dixie-armitage"),
            "rollback run 7 of dixie-armitage to revision 2 (from 3) by ana@laptop at 2026-12-01T05:00:00Z"
        );
    }

    #[test]
    fn task_definition_arns_give_family_and_revision() {
        assert_eq!(
            family_revision("arn:aws:ecs:us-east-1:1:task-definition/dixie-armitage:12"),
            Some(("dixie-armitage".into(), 12))
        );
        assert_eq!(family_revision("dixie-armitage:3"), Some(("dixie-armitage".into(), 3)));
        assert_eq!(family_revision("dixie-armitage"), None);
    }

    #[test]
    fn the_default_target_is_the_revision_before_the_running_one_and_stays_put_once_rolled_back() {
        let p = params("");
        let revisions = [5, 4, 2, 1];
        assert_eq!(p.target("f", 5, None, &revisions).unwrap(), 4);
        // Revision 3 was deregistered: the one before 4 is 2.
        assert_eq!(p.target("f", 4, None, &revisions).unwrap(), 2);
        // Rolled back from 5 to 2: a re-run keeps 2 rather than going further back.
        assert_eq!(p.target("f", 2, Some(&marker(5, 2)), &revisions).unwrap(), 2);
        // A marker whose target no longer runs (terraform put the service forward) is history.
        assert_eq!(p.target("f", 5, Some(&marker(5, 2)), &revisions).unwrap(), 4);
        let err = p.target("f", 1, None, &revisions).unwrap_err().to_string();
        assert!(err.contains("no ACTIVE revision before the running 1"), "{err}");
    }

    #[test]
    fn a_named_revision_must_be_active() {
        let revisions = [5, 4, 2, 1];
        assert_eq!(params("2").target("f", 5, None, &revisions).unwrap(), 2);
        let err = params("3").target("f", 5, None, &revisions).unwrap_err();
        assert!(err.to_string().contains("f:3 is not an ACTIVE revision; the latest are 5, 4, 2, 1"), "{err}");
        assert_eq!(err.fix(), Some("pass one of them: --var revision=N"));
    }

    #[test]
    fn validation_names_the_field() {
        assert!(params("x").validate().unwrap_err().starts_with("revision: expected a revision number"));
        assert!(params("0").validate().is_err());
        assert!(params("").validate().is_ok());
        let bad: Result<Params, _> = toml::from_str(
            "cluster = \"c\"\nservice = \"s\"\nemergency = \"yes\"\nhealth_url = \"http://x/\"\nhealth = \"dixie\"\n",
        );
        assert!(bad.unwrap_err().to_string().contains("emergency: expected true or false, got \"yes\""));
    }
}
