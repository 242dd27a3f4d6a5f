//! `image` (T2.2): build the app's image with the Docker API, tag it with the git SHA (never
//! `latest`), push it, and require a scan without CRITICAL findings.
//!
//! ECR tags are IMMUTABLE: the same tag with the same image is done; the same tag with another
//! image is a conflict. Images are compared by their config digest (the image ID), which ECR's
//! manifest carries. On the ring, moto's ECR is not a registry: the image goes to the ring's
//! registry and ECR learns the tag through `PutImage` of the very same manifest.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{BuildImageOptionsBuilder, PushImageOptionsBuilder, TagImageOptionsBuilder};
use futures_util::StreamExt;
use serde::Deserialize;

use super::{Probe, Step, StepContext, StepError};
use crate::event::Outputs;
use crate::image_tag::ImageTag;

const MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {
    /// ECR repository name, e.g. `dixie-armitage`.
    repository: String,
    /// Its URI, from the step that created it.
    repository_uri: String,
    /// Build context, relative to the project folder.
    context: PathBuf,
    #[serde(default = "dockerfile")]
    dockerfile: String,
    /// The tag; empty means the context's git short SHA.
    #[serde(default)]
    tag: ImageTag,
    /// Push here instead of to ECR itself (the ring's registry); ECR then learns the tag
    /// through PutImage. Empty: push to `repository_uri`.
    #[serde(default)]
    push_registry: String,
    /// Docker daemon; empty means DOCKER_HOST or the default socket. A relative
    /// `unix://` path is relative to the project folder.
    #[serde(default)]
    docker_host: String,
    /// Scan severities that fail the step.
    #[serde(default = "critical")]
    fail_on: Vec<String>,
}

fn dockerfile() -> String {
    "Dockerfile".into()
}

fn critical() -> Vec<String> {
    vec!["CRITICAL".into()]
}

/// What ECR has for the tag.
struct Pushed {
    image_digest: String,
    config_digest: String,
}

impl Params {
    async fn tag(&self, cx: &StepContext) -> Result<String, StepError> {
        if !self.tag.is_empty() {
            return Ok(self.tag.to_string());
        }
        let dir = cx.project.join(&self.context);
        let out = tokio::process::Command::new("git")
            .arg("-C")
            .arg(&dir)
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .await
            .map_err(|e| {
                StepError::fatal(format!("cannot run git in {}: {e}", dir.display()), "pass --var image_tag=<sha>")
            })?;
        let sha = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || sha.is_empty() {
            return Err(StepError::fatal(
                format!("{} is not in a git checkout; the image tag is the commit's short SHA", dir.display()),
                "pass --var image_tag=<sha>",
            ));
        }
        Ok(sha)
    }

    fn docker(&self, cx: &StepContext) -> Result<Docker, StepError> {
        let connected = if self.docker_host.is_empty() {
            Docker::connect_with_local_defaults()
        } else {
            let path = self.docker_host.strip_prefix("unix://").unwrap_or(&self.docker_host);
            let path = if Path::new(path).is_absolute() { PathBuf::from(path) } else { cx.project.join(path) };
            Docker::connect_with_unix(&path.to_string_lossy(), 120, bollard::API_DEFAULT_VERSION)
        };
        connected.map_err(|e| {
            StepError::fatal(
                format!("cannot reach the Docker daemon: {e}"),
                "start dockerd (on the ring: runbook ring up)",
            )
        })
    }

    async fn pushed(&self, cx: &StepContext, tag: &str) -> Result<Option<Pushed>, StepError> {
        let got = cx
            .cloud
            .ecr
            .batch_get_image()
            .repository_name(&self.repository)
            .image_ids(aws_sdk_ecr::types::ImageIdentifier::builder().image_tag(tag).build())
            .accepted_media_types(MANIFEST_V2)
            .send()
            .await
            .map_err(|e| StepError::from_sdk("ecr:BatchGetImage", e))?;
        let Some(image) = got.images().first() else { return Ok(None) };
        let manifest: serde_json::Value =
            image.image_manifest().and_then(|m| serde_json::from_str(m).ok()).unwrap_or_default();
        Ok(Some(Pushed {
            image_digest: image.image_id().and_then(|i| i.image_digest()).unwrap_or_default().to_string(),
            config_digest: manifest["config"]["digest"].as_str().unwrap_or_default().to_string(),
        }))
    }

    /// The local image's ID (= its config digest), if it has been built here.
    async fn local(&self, docker: &Docker, tag: &str) -> Option<String> {
        docker.inspect_image(&format!("{}:{tag}", self.repository)).await.ok().and_then(|i| i.id)
    }

    /// `Ok(None)` when the scan is not finished; the severities that fail otherwise.
    async fn scan(&self, cx: &StepContext, tag: &str) -> Result<Option<Vec<String>>, StepError> {
        let found = cx
            .cloud
            .ecr
            .describe_image_scan_findings()
            .repository_name(&self.repository)
            .image_id(aws_sdk_ecr::types::ImageIdentifier::builder().image_tag(tag).build())
            .send()
            .await;
        let found = match found {
            Ok(found) => found,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_scan_not_found_exception()) => return Ok(None),
            Err(e) => return Err(StepError::from_sdk("ecr:DescribeImageScanFindings", e)),
        };
        let status =
            found.image_scan_status().and_then(|s| s.status()).map(|s| s.as_str().to_string()).unwrap_or_default();
        if status != "COMPLETE" {
            return Ok(None);
        }
        let mut bad = Vec::new();
        if let Some(findings) = found.image_scan_findings() {
            if let Some(counts) = findings.finding_severity_counts() {
                for (severity, count) in counts {
                    if self.fail_on.iter().any(|f| f == severity.as_str()) && *count > 0 {
                        bad.push(format!("{count} {}", severity.as_str()));
                    }
                }
            }
            for finding in findings.findings() {
                if finding.severity().is_some_and(|s| self.fail_on.iter().any(|f| f == s.as_str())) {
                    bad.push(format!("{} ({})", finding.name().unwrap_or("unnamed"), finding.uri().unwrap_or("")));
                }
            }
        }
        Ok(Some(bad))
    }

    fn outputs(&self, tag: &str, pushed: &Pushed) -> Outputs {
        Outputs::from([
            ("image_tag".to_string(), tag.to_string()),
            ("image_uri".to_string(), format!("{}:{tag}", self.repository_uri)),
            ("image_digest".to_string(), pushed.image_digest.clone()),
            ("config_digest".to_string(), pushed.config_digest.clone()),
        ])
    }

    async fn build(&self, cx: &StepContext, docker: &Docker, tag: &str) -> Result<String, StepError> {
        let dir = cx.project.join(&self.context);
        let local = format!("{}:{tag}", self.repository);
        cx.log(format!("building {local} from {}/{}", dir.display(), self.dockerfile)).await;
        let context = tar_directory(&dir).map_err(|e| {
            StepError::fatal(
                format!("cannot read the build context {}: {e}", dir.display()),
                "check `context` in the runbook",
            )
        })?;
        let options = BuildImageOptionsBuilder::default().dockerfile(&self.dockerfile).t(&local).rm(true).build();
        let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
        while let Some(item) = stream.next().await {
            let info = item
                .map_err(|e| StepError::fatal(format!("docker build of {local} failed: {e}"), "fix the Dockerfile"))?;
            if let Some(detail) = info.error_detail {
                return Err(StepError::fatal(
                    format!("docker build of {local} failed: {}", detail.message.unwrap_or_default()),
                    "fix the Dockerfile",
                ));
            }
            if let Some(line) = info.stream.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
                cx.log(format!("build: {line}")).await;
            }
        }
        self.local(docker, tag).await.ok_or_else(|| {
            StepError::fatal(format!("docker build of {local} produced no image"), format!("read `{}`", cx.logs_hint()))
        })
    }

    async fn push(&self, cx: &StepContext, docker: &Docker, tag: &str) -> Result<(), StepError> {
        let local = format!("{}:{tag}", self.repository);
        let (target, credentials) = if self.push_registry.is_empty() {
            (self.repository_uri.clone(), Some(self.ecr_credentials(cx).await?))
        } else {
            (format!("{}/{}", self.push_registry, self.repository), None)
        };
        docker
            .tag_image(&local, Some(TagImageOptionsBuilder::default().repo(&target).tag(tag).build()))
            .await
            .map_err(|e| {
                StepError::fatal(format!("docker tag {local} {target}:{tag}: {e}"), "check the Docker daemon")
            })?;
        cx.log(format!("pushing {target}:{tag}")).await;
        // With the tag as an option: without one, dockerd 20.10 pushes every tag of the repo.
        let mut stream =
            docker.push_image(&target, Some(PushImageOptionsBuilder::default().tag(tag).build()), credentials);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| StepError::retryable(format!("docker push {target}:{tag}: {e}")))?;
            if let Some(detail) = info.error_detail {
                return Err(StepError::retryable(format!(
                    "docker push {target}:{tag}: {}",
                    detail.message.unwrap_or_default()
                )));
            }
            if let Some(status) = info.status.filter(|s| s.contains("digest:")) {
                cx.log(format!("push: {status}")).await;
            }
        }
        if !self.push_registry.is_empty() {
            self.put_image_in_ecr(cx, tag).await?;
        }
        Ok(())
    }

    async fn ecr_credentials(&self, cx: &StepContext) -> Result<DockerCredentials, StepError> {
        let token = cx
            .cloud
            .ecr
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| StepError::from_sdk("ecr:GetAuthorizationToken", e))?;
        let data = token
            .authorization_data()
            .first()
            .ok_or_else(|| StepError::retryable("ECR returned no authorization data"))?;
        let decoded = data.authorization_token().and_then(base64_decode).unwrap_or_default();
        let (username, password) =
            decoded.split_once(':').ok_or_else(|| StepError::retryable("ECR authorization token is malformed"))?;
        Ok(DockerCredentials {
            username: Some(username.to_string()),
            password: Some(password.to_string()),
            serveraddress: data.proxy_endpoint().map(String::from),
            ..Default::default()
        })
    }

    /// Tells moto's ECR about the tag with the manifest the ring's registry holds (moto's ECR
    /// is not a registry: see `emulator::registry_manifest`).
    async fn put_image_in_ecr(&self, cx: &StepContext, tag: &str) -> Result<(), StepError> {
        let manifest =
            crate::emulator::registry_manifest(&cx.env, &self.push_registry, &self.repository, tag, MANIFEST_V2)
                .await
                .map_err(StepError::retryable)?;
        let put = cx
            .cloud
            .ecr
            .put_image()
            .repository_name(&self.repository)
            .image_tag(tag)
            .image_manifest(&manifest)
            .image_manifest_media_type(MANIFEST_V2)
            .send()
            .await;
        match put {
            Ok(_) => {
                cx.log(format!("ECR knows {}:{tag} (PutImage of the registry's manifest)", self.repository)).await;
                Ok(())
            }
            // Real ECR says ImageTagAlreadyExists, moto ImageAlreadyExists; the verify compares digests.
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_image_tag_already_exists_exception() || s.is_image_already_exists_exception()
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(StepError::from_sdk("ecr:PutImage", e)),
        }
    }
}

impl Step for Params {
    const KIND: &'static str = "image";
    const OUTPUTS: Option<&'static [&'static str]> = Some(&["image_tag", "image_uri", "image_digest", "config_digest"]);

    /// The repository is ECR's; the severities are the ones ECR's scan reports (a typo would
    /// never match, and the scan would never fail the step).
    fn validate(&self) -> Result<(), String> {
        super::ecr_repository::check_repository_name("repository", &self.repository)?;
        const SEVERITIES: [&str; 6] = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNDEFINED"];
        match self.fail_on.iter().find(|s| !SEVERITIES.contains(&s.as_str())) {
            Some(s) => Err(format!("fail_on: {s:?} is not a severity of ECR's scan; use {}", SEVERITIES.join(", "))),
            None => Ok(()),
        }
    }

    /// The build context holds the Dockerfile (a context such as `../../etc` does not).
    fn check_files(&self, project: &Path) -> Result<(), String> {
        let dockerfile = project.join(&self.context).join(&self.dockerfile);
        if dockerfile.is_file() {
            Ok(())
        } else {
            Err(format!(
                "context = {:?}: {} does not exist; point `context` at the app's checkout",
                self.context.display().to_string(),
                dockerfile.display()
            ))
        }
    }

    /// Scan on push takes a minute or two on ECR.
    fn converge_within(&self) -> Duration {
        Duration::from_secs(300)
    }

    async fn probe(&self, cx: &StepContext) -> Result<Probe, StepError> {
        let tag = self.tag(cx).await?;
        let Some(pushed) = self.pushed(cx, &tag).await? else {
            return Ok(Probe::Absent(format!(
                "build {}:{tag} from {} and push it",
                self.repository,
                self.context.display()
            )));
        };
        let docker = self.docker(cx)?;
        match self.local(&docker, &tag).await {
            None => {
                return Ok(Probe::Absent(format!(
                    "{}:{tag} is in ECR; build it here to compare digests",
                    self.repository
                )));
            }
            Some(id) if id != pushed.config_digest => {
                return Ok(Probe::Conflict(differs(&self.repository, &tag, &pushed, &id)));
            }
            Some(_) => {}
        }
        match self.scan(cx, &tag).await? {
            None => Ok(Probe::Absent(format!("the image scan of {}:{tag} has not completed", self.repository))),
            Some(bad) if !bad.is_empty() => Ok(Probe::Conflict(format!(
                "the ECR scan of {}:{tag} reports {}: {}; fix the image (base image, dependencies) and push a new commit",
                self.repository,
                self.fail_on.join("/"),
                bad.join(", ")
            ))),
            Some(_) => Ok(Probe::Satisfied(self.outputs(&tag, &pushed))),
        }
    }

    async fn apply(&self, cx: &StepContext) -> Result<(), StepError> {
        let tag = self.tag(cx).await?;
        let docker = self.docker(cx)?;
        let local = format!("{}:{tag}", self.repository);
        let id = match self.local(&docker, &tag).await {
            Some(id) => id,
            None => self.build(cx, &docker, &tag).await?,
        };
        match self.pushed(cx, &tag).await? {
            Some(pushed) if pushed.config_digest != id => {
                return Err(StepError::fatal(
                    differs(&self.repository, &tag, &pushed, &id),
                    "ECR is IMMUTABLE: commit and build a new SHA, or delete the old image from ECR if it was never deployed",
                ));
            }
            Some(_) => cx.log(format!("{local} is already in ECR with the same image {id}")).await,
            None => self.push(cx, &docker, &tag).await?,
        }
        cx.checkpoint("after-push");
        if self.scan(cx, &tag).await?.is_none() {
            match cx
                .cloud
                .ecr
                .start_image_scan()
                .repository_name(&self.repository)
                .image_id(aws_sdk_ecr::types::ImageIdentifier::builder().image_tag(&tag).build())
                .send()
                .await
            {
                Ok(_) => cx.log(format!("started the image scan of {local}")).await,
                // scanOnPush started it already, or the daemon refuses a second one: wait for it.
                Err(e) => {
                    cx.log(format!(
                        "ecr:StartImageScan: {} (waiting for the scan on push)",
                        crate::error_chain::error_chain(&e)
                    ))
                    .await
                }
            }
        }
        Ok(())
    }
}

fn differs(repository: &str, tag: &str, pushed: &Pushed, local: &str) -> String {
    format!(
        "tag {tag} of {repository} is already in ECR with image {} (digest {}), but this build is {local}; \
         IMMUTABLE tags cannot be overwritten",
        pushed.config_digest, pushed.image_digest
    )
}

fn base64_decode(text: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.bytes().filter(|b| *b != b'=') {
        let value = ALPHABET.iter().position(|a| *a == byte)? as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The build context as a tar archive, files in a stable order.
fn tar_directory(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir)?;
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_an_ecr_token() {
        assert_eq!(base64_decode("QVdTOnNlY3JldA==").as_deref(), Some("AWS:secret"));
    }
}
