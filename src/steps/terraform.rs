//! `terraform` (T2.4): init, select-or-create the workspace, plan to a file, show the summary,
//! and apply that saved plan only after approval.
//!
//! The probe is `plan -detailed-exitcode`: no changes is satisfied. It never creates the
//! workspace (a missing workspace is "absent"). Resource counts are shown, never asserted.
//! Non-sensitive `terraform output` values become the step's outputs.

use std::time::Duration;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{Probe, Step, StepContext, StepError};
use crate::event::Outputs;
use crate::image_tag::ImageTag;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {
    /// The terraform root module, relative to the project folder.
    dir: PathBuf,
    workspace: String,
    /// Relative to `dir`.
    #[serde(default)]
    var_files: Vec<String>,
    #[serde(default)]
    vars: BTreeMap<String, String>,
    /// A `-backend-config` file for `terraform init`, relative to `dir`.
    #[serde(default)]
    backend_config_file: String,
    /// `-backend-config` pairs for `terraform init`.
    #[serde(default)]
    backend_config: BTreeMap<String, String>,
    /// Terraform CLI config (provider mirror), relative to the project folder; empty: the
    /// caller's TF_CLI_CONFIG_FILE.
    #[serde(default)]
    cli_config: String,
    /// One endpoint for every AWS API the provider calls (moto); empty: AWS.
    #[serde(default)]
    aws_endpoint_url: String,
    #[serde(default = "terraform")]
    binary: String,
}

fn terraform() -> String {
    "terraform".into()
}

/// The `Plan: A to add, B to change, C to destroy.` line, or what terraform said instead.
struct Plan {
    summary: String,
}

impl Params {
    fn dir(&self, cx: &StepContext) -> PathBuf {
        cx.project.join(&self.dir)
    }

    fn command(&self, cx: &StepContext, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.current_dir(self.dir(cx)).args(args).env("TF_IN_AUTOMATION", "1").env("TF_INPUT", "0");
        if !self.cli_config.is_empty() {
            cmd.env("TF_CLI_CONFIG_FILE", cx.project.join(&self.cli_config));
        }
        if !self.aws_endpoint_url.is_empty() {
            cmd.env("AWS_ENDPOINT_URL", &self.aws_endpoint_url);
        }
        if let Some(creds) = &cx.env.aws.emulator_credentials {
            cmd.env("AWS_ACCESS_KEY_ID", &creds.access_key_id).env("AWS_SECRET_ACCESS_KEY", &creds.secret_access_key);
        }
        cmd.env("AWS_REGION", &cx.env.region).env("AWS_DEFAULT_REGION", &cx.env.region);
        cmd.kill_on_drop(true).stdin(Stdio::null());
        cmd
    }

    /// Runs terraform to the end; `Err` names the command and the tail of what it said.
    async fn run(&self, cx: &StepContext, args: &[&str]) -> Result<(i32, String), StepError> {
        let out = self.command(cx, args).output().await.map_err(|e| {
            StepError::fatal(format!("cannot run {}: {e}", self.binary), "install terraform (the ring's setup checks /usr/local/bin/terraform)")
        })?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.code().unwrap_or(-1), text))
    }

    fn failed(&self, what: &str, text: &str) -> StepError {
        let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(12)..].join("\n    ");
        StepError::Fatal { message: format!("terraform {what} in {} failed:\n    {tail}", self.dir.display()), fix: Some("read the error above; `runbook logs` has the whole output".into()) }
    }

    fn var_args(&self) -> Vec<String> {
        let mut args: Vec<String> = self.var_files.iter().map(|f| format!("-var-file={f}")).collect();
        args.extend(self.vars.iter().map(|(k, v)| format!("-var={k}={v}")));
        args
    }

    /// `terraform init`, skipped when this folder was initialised with the same backend
    /// settings and provider locks (a re-run's probe then costs one plan, not three commands).
    async fn init(&self, cx: &StepContext) -> Result<(), StepError> {
        let mut args = vec!["init".to_string(), "-input=false".into(), "-no-color".into(), "-reconfigure".into()];
        if !self.backend_config_file.is_empty() {
            args.push(format!("-backend-config={}", self.backend_config_file));
        }
        args.extend(self.backend_config.iter().map(|(k, v)| format!("-backend-config={k}={v}")));
        let dir = self.dir(cx);
        let mut fingerprint = Sha256::new();
        fingerprint.update(args.join("\n"));
        fingerprint.update(&self.cli_config);
        fingerprint.update(&self.aws_endpoint_url);
        for file in [dir.join(&self.backend_config_file), dir.join(".terraform.lock.hcl")] {
            fingerprint.update(std::fs::read(file).unwrap_or_default());
        }
        let fingerprint = hex::encode(fingerprint.finalize());
        let marker = dir.join(".terraform").join("runbook-init");
        let initialised = dir.join(".terraform").join("terraform.tfstate").is_file();
        if initialised && std::fs::read_to_string(&marker).is_ok_and(|m| m == fingerprint) {
            return Ok(());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, text) = self.run(cx, &args).await?;
        if code != 0 {
            return Err(self.failed("init", &text));
        }
        let _ = std::fs::write(&marker, fingerprint);
        Ok(())
    }

    /// Whether `workspace` is the one selected here, from terraform's own record of it.
    fn selected(&self, cx: &StepContext) -> bool {
        std::fs::read_to_string(self.dir(cx).join(".terraform").join("environment")).is_ok_and(|w| w.trim() == self.workspace)
    }

    /// Selects the workspace; `false` when it does not exist yet.
    async fn select(&self, cx: &StepContext) -> Result<bool, StepError> {
        let (code, text) = self.run(cx, &["workspace", "select", "-no-color", &self.workspace]).await?;
        match code {
            0 => Ok(true),
            _ if text.contains("doesn't exist") || text.contains("does not exist") => Ok(false),
            _ => Err(self.failed("workspace select", &text)),
        }
    }

    async fn plan(&self, cx: &StepContext, out: Option<&Path>) -> Result<Option<Plan>, StepError> {
        let mut args = vec!["plan".to_string(), "-input=false".into(), "-no-color".into(), "-detailed-exitcode".into()];
        match out {
            // The plan that will be applied takes the state lock, and waits for it: a killed
            // run may have left an apply running.
            Some(out) => {
                args.push("-lock-timeout=300s".into());
                args.push(format!("-out={}", out.display()));
            }
            // The probe only reads: no lock object written. A half-applied state it may see
            // reads as "changes", and the apply re-plans under the lock.
            None => args.push("-lock=false".into()),
        }
        args.extend(self.var_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, text) = self.run(cx, &args).await?;
        match code {
            0 => Ok(None),
            2 => Ok(Some(Plan {
                summary: text
                    .lines()
                    .find(|l| l.trim_start().starts_with("Plan:") || l.contains("Changes to Outputs"))
                    .unwrap_or("changes pending")
                    .trim()
                    .to_string(),
            })),
            _ => Err(self.failed("plan", &text)),
        }
    }

    async fn outputs(&self, cx: &StepContext) -> Result<Outputs, StepError> {
        let (code, text) = self.run(cx, &["output", "-json", "-no-color"]).await?;
        if code != 0 {
            return Err(self.failed("output", &text));
        }
        let all: BTreeMap<String, serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
        Ok(all
            .into_iter()
            .filter(|(_, o)| o["sensitive"] != true)
            .map(|(name, o)| {
                let value = match &o["value"] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (name, value)
            })
            .collect())
    }



    /// `terraform apply -json PLAN`, its progress streamed into the step's log.
    ///
    /// terraform runs in its own process group with its output going to a file, not a pipe:
    /// if this process dies (kill -9, Ctrl-C) the apply finishes and releases the state lock
    /// instead of dying mid-write with the lock held; the resumed run waits for that lock.
    async fn apply_plan(&self, cx: &StepContext, plan_file: &Path) -> Result<(), StepError> {
        let plan = plan_file.to_string_lossy();
        let log_path = plan_file.with_extension("apply.jsonl");
        let log = std::fs::File::create(&log_path).map_err(|e| StepError::fatal(format!("cannot write {}: {e}", log_path.display()), "check the temp folder"))?;
        let err = log.try_clone().map_err(|e| StepError::fatal(e.to_string(), "check the temp folder"))?;
        let mut child = self
            .command(cx, &["apply", "-input=false", "-no-color", "-json", "-lock-timeout=300s", &plan])
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| StepError::fatal(format!("cannot run {}: {e}", self.binary), "install terraform"))?;
        let mut reader = BufReader::new(tokio::fs::File::open(&log_path).await.map_err(|e| StepError::retryable(e.to_string()))?);
        let mut errors = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            let read = reader.read_line(&mut line).await.map_err(|e| StepError::retryable(e.to_string()))?;
            if read == 0 {
                if let Some(status) = child.try_wait().map_err(|e| StepError::retryable(format!("terraform apply: {e}")))? {
                    // Drain what was written after the last read, then stop.
                    let mut rest = String::new();
                    while reader.read_line(&mut rest).await.map_err(|e| StepError::retryable(e.to_string()))? > 0 {}
                    for l in rest.lines() {
                        self.show(cx, l, &mut errors).await;
                    }
                    let _ = std::fs::remove_file(&log_path);
                    if !status.success() {
                        return Err(self.failed("apply", &errors.join("\n")));
                    }
                    return Ok(());
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
            if line.ends_with('\n') {
                let complete = std::mem::take(&mut line);
                self.show(cx, complete.trim_end(), &mut errors).await;
            }
        }
    }

    /// One line of `terraform apply -json`, into the log or the progress display.
    async fn show(&self, cx: &StepContext, line: &str, errors: &mut Vec<String>) {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            if !line.trim().is_empty() {
                errors.push(line.to_string());
            }
            return;
        };
        let text = message["@message"].as_str().unwrap_or_default().to_string();
        match message["type"].as_str().unwrap_or_default() {
            "apply_start" | "apply_errored" | "change_summary" => cx.log(text).await,
            "apply_complete" => {
                cx.log(text).await;
                cx.checkpoint("mid-apply");
            }
            "apply_progress" => cx.progress(&text).await,
            "diagnostic" if message["diagnostic"]["severity"] == "error" => {
                let detail = message["diagnostic"]["detail"].as_str().unwrap_or_default();
                errors.push(format!("{text}: {detail}"));
                cx.log(format!("error: {text}: {detail}")).await;
            }
            _ => {}
        }
    }
}

impl Step for Params {
    const KIND: &'static str = "terraform";
    const OUTPUTS: Option<&'static [&'static str]> = None;

    /// A tag passed as a terraform variable is a tag like any other: never `latest`.
    fn validate(&self) -> Result<(), String> {
        match self.vars.get("image_tag") {
            Some(tag) => ImageTag::parse(tag).map(drop).map_err(|e| format!("vars.image_tag: {e}")),
            None => Ok(()),
        }
    }

    fn converge_within(&self) -> Duration {
        Duration::from_secs(120)
    }

    async fn probe(&self, cx: &StepContext) -> Result<Probe, StepError> {
        self.init(cx).await?;
        let missing = || Probe::Absent(format!("create workspace {} and apply the whole plan", self.workspace));
        if !self.selected(cx) && !self.select(cx).await? {
            return Ok(missing());
        }
        // Not `output` beside the plan: on a missing workspace it initialises a state and takes
        // the lock the plan needs.
        let plan = match self.plan(cx, None).await {
            // Selected here once, but gone from the backend since (a new state bucket).
            Err(StepError::Fatal { message, .. }) if message.contains("does not exist") && message.contains("workspace") => {
                return Ok(missing());
            }
            other => other?,
        };
        match plan {
            None => Ok(Probe::Satisfied(self.outputs(cx).await?)),
            Some(plan) => Ok(Probe::Absent(format!("workspace {}: {}", self.workspace, plan.summary))),
        }
    }

    async fn apply(&self, cx: &StepContext) -> Result<(), StepError> {
        self.init(cx).await?;
        if !self.select(cx).await? {
            cx.log(format!("creating workspace {}", self.workspace)).await;
            let (code, text) = self.run(cx, &["workspace", "new", "-no-color", &self.workspace]).await?;
            if code != 0 {
                return Err(self.failed("workspace new", &text));
            }
        }
        let plan_file = std::env::temp_dir().join(format!("runbook-{}-{}.tfplan", std::process::id(), cx.step));
        let Some(plan) = self.plan(cx, Some(&plan_file)).await? else {
            cx.log("terraform plan: no changes").await;
            return Ok(());
        };
        cx.log(format!("terraform plan for workspace {}: {}", self.workspace, plan.summary)).await;
        if !cx.approve(&format!("terraform apply in workspace {} of {}: {}", self.workspace, cx.env.name, plan.summary)).await {
            let _ = std::fs::remove_file(&plan_file);
            return Err(StepError::AwaitingApproval { summary: plan.summary });
        }
        let result = self.apply_plan(cx, &plan_file).await;
        let _ = std::fs::remove_file(&plan_file);
        result
    }
}
