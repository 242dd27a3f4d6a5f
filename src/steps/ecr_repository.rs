//! `ecr_repository` (T2.1): an ECR repository with tag mutability, scan-on-push and a
//! keep-last-N lifecycle policy.
//!
//! The probe compares the live configuration; a repository that exists with other settings is
//! a conflict for the operator, never silently overwritten.

use std::time::Duration;

use aws_sdk_ecr::types::{ImageScanningConfiguration, ImageTagMutability};
use serde::Deserialize;

use super::{Probe, Step, StepContext, StepError};
use crate::event::Outputs;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {
    /// Repository name, e.g. `dixie-armitage`.
    name: String,
    /// `IMMUTABLE` (the default) or `MUTABLE`.
    #[serde(default = "immutable")]
    tag_mutability: Mutability,
    #[serde(default = "yes")]
    scan_on_push: bool,
    /// The lifecycle policy expires images beyond this many.
    keep_last_images: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) enum Mutability {
    #[serde(rename = "IMMUTABLE")]
    Immutable,
    #[serde(rename = "MUTABLE")]
    Mutable,
}

fn immutable() -> Mutability {
    Mutability::Immutable
}

fn yes() -> bool {
    true
}

impl Mutability {
    fn as_str(self) -> &'static str {
        match self {
            Mutability::Immutable => "IMMUTABLE",
            Mutability::Mutable => "MUTABLE",
        }
    }
}

/// What the live repository has.
struct Live {
    outputs: Outputs,
    mutability: String,
    scan_on_push: bool,
    policy: Option<serde_json::Value>,
}

impl Params {
    /// The sprint plan's policy text, with this step's count.
    fn lifecycle_policy(&self) -> serde_json::Value {
        serde_json::json!({"rules": [{
            "rulePriority": 1,
            "description": format!("Keep last {}", self.keep_last_images),
            "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": self.keep_last_images},
            "action": {"type": "expire"}
        }]})
    }

    async fn live(&self, cx: &StepContext) -> Result<Option<Live>, StepError> {
        let described = cx.cloud.ecr.describe_repositories().repository_names(&self.name).send().await;
        let repo = match described {
            Ok(out) => match out.repositories().first() {
                Some(repo) => repo.clone(),
                None => return Ok(None),
            },
            Err(e) if e.as_service_error().is_some_and(|s| s.is_repository_not_found_exception()) => {
                return Ok(None);
            }
            Err(e) => return Err(StepError::from_sdk("ecr:DescribeRepositories", e)),
        };
        let policy = match cx.cloud.ecr.get_lifecycle_policy().repository_name(&self.name).send().await {
            Ok(out) => out.lifecycle_policy_text().and_then(|t| serde_json::from_str(t).ok()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_lifecycle_policy_not_found_exception()) => None,
            Err(e) => return Err(StepError::from_sdk("ecr:GetLifecyclePolicy", e)),
        };
        let outputs = Outputs::from([
            ("repository_uri".to_string(), repo.repository_uri().unwrap_or_default().to_string()),
            ("repository_arn".to_string(), repo.repository_arn().unwrap_or_default().to_string()),
            ("registry_id".to_string(), repo.registry_id().unwrap_or_default().to_string()),
        ]);
        Ok(Some(Live {
            outputs,
            mutability: repo.image_tag_mutability().map(|m| m.as_str().to_string()).unwrap_or_default(),
            scan_on_push: repo.image_scanning_configuration().is_some_and(|c| c.scan_on_push()),
            policy,
        }))
    }
}

/// ECR's rule for repository names: 2–256 characters of lower-case letters and digits,
/// separated by single `.`, `_`, `-` or `/`.
pub(super) fn check_repository_name(field: &str, name: &str) -> Result<(), String> {
    let separator = |c: char| matches!(c, '.' | '_' | '-' | '/');
    let ok = (2..=256).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || separator(c))
        && !name.starts_with(separator)
        && !name.ends_with(separator)
        && !name.chars().zip(name.chars().skip(1)).any(|(a, b)| separator(a) && separator(b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field} = {name:?} is not an ECR repository name: 2-256 lower-case letters and digits, separated by \
             single `.`, `_`, `-` or `/`"
        ))
    }
}

impl Step for Params {
    const KIND: &'static str = "ecr_repository";
    const OUTPUTS: Option<&'static [&'static str]> = Some(&["repository_uri", "repository_arn", "registry_id"]);

    fn validate(&self) -> Result<(), String> {
        check_repository_name("name", &self.name)?;
        if !(1..=1000).contains(&self.keep_last_images) {
            return Err(format!(
                "keep_last_images = {}: the lifecycle policy keeps 1 to 1000 images (ECR's countNumber)",
                self.keep_last_images
            ));
        }
        Ok(())
    }

    fn converge_within(&self) -> Duration {
        Duration::from_secs(30)
    }

    async fn probe(&self, cx: &StepContext) -> Result<Probe, StepError> {
        let Some(live) = self.live(cx).await? else {
            return Ok(Probe::Absent(format!(
                "create repository {} ({}, scanOnPush={}) with a keep-last-{} lifecycle policy",
                self.name,
                self.tag_mutability.as_str(),
                self.scan_on_push,
                self.keep_last_images
            )));
        };
        let mut differences = Vec::new();
        if live.mutability != self.tag_mutability.as_str() {
            differences.push(format!(
                "tag mutability is {} (wanted {}): `aws ecr put-image-tag-mutability --repository-name {} --image-tag-mutability {}`",
                live.mutability,
                self.tag_mutability.as_str(),
                self.name,
                self.tag_mutability.as_str()
            ));
        }
        if live.scan_on_push != self.scan_on_push {
            differences.push(format!(
                "scanOnPush is {} (wanted {}): `aws ecr put-image-scanning-configuration --repository-name {} --image-scanning-configuration scanOnPush={}`",
                live.scan_on_push, self.scan_on_push, self.name, self.scan_on_push
            ));
        }
        match &live.policy {
            Some(policy) if *policy != self.lifecycle_policy() => differences.push(format!(
                "the lifecycle policy differs from keep-last-{}: live policy is {policy}",
                self.keep_last_images
            )),
            _ => {}
        }
        if !differences.is_empty() {
            return Ok(Probe::Conflict(format!(
                "repository {} exists with other settings; runbook does not change them silently. {}",
                self.name,
                differences.join("; ")
            )));
        }
        if live.policy.is_none() {
            return Ok(Probe::Absent(format!(
                "repository {} has no lifecycle policy: put keep-last-{}",
                self.name, self.keep_last_images
            )));
        }
        Ok(Probe::Satisfied(live.outputs))
    }

    async fn apply(&self, cx: &StepContext) -> Result<(), StepError> {
        let ecr = &cx.cloud.ecr;
        let live = self.live(cx).await?;
        if live.is_none() {
            cx.log(format!(
                "creating repository {} ({}, scanOnPush={})",
                self.name,
                self.tag_mutability.as_str(),
                self.scan_on_push
            ))
            .await;
            let created = ecr
                .create_repository()
                .repository_name(&self.name)
                .image_tag_mutability(ImageTagMutability::from(self.tag_mutability.as_str()))
                .image_scanning_configuration(
                    ImageScanningConfiguration::builder().scan_on_push(self.scan_on_push).build(),
                )
                .send()
                .await;
            match created {
                Ok(_) => {}
                // Someone else created it meanwhile: the verify probe checks that it matches.
                Err(e) if e.as_service_error().is_some_and(|s| s.is_repository_already_exists_exception()) => {
                    cx.log("repository appeared meanwhile; the verify probe compares its settings").await;
                }
                Err(e) => return Err(StepError::from_sdk("ecr:CreateRepository", e)),
            }
        }
        cx.checkpoint("after-create");
        if live.as_ref().is_none_or(|l| l.policy.is_none()) {
            cx.log(format!("putting lifecycle policy: keep last {} images", self.keep_last_images)).await;
            ecr.put_lifecycle_policy()
                .repository_name(&self.name)
                .lifecycle_policy_text(self.lifecycle_policy().to_string())
                .send()
                .await
                .map_err(|e| StepError::from_sdk("ecr:PutLifecyclePolicy", e))?;
        }
        Ok(())
    }
}
