//! `terraform` (T2.4): init, select-or-create the workspace, plan to a file, show the summary,
//! and apply that saved plan only after approval.
//!
//! Terraform plans once. The probe is `plan -detailed-exitcode -out`: no changes is satisfied;
//! changes leave the saved plan for the apply, which applies it as is after approval (a plan
//! whose state changed since is refused by terraform as stale: then it plans again). The verify
//! takes the outputs that the apply itself reported, not a third plan. The probe never creates
//! the workspace (a missing workspace is "absent"). Resource counts are shown, never asserted.
//! Non-sensitive outputs become the step's outputs. Plan files hold secrets (terraform's state
//! has what it refreshed): they live in the run's private work folder and are removed on every
//! path.
//!
//! A plan that would move an ECS service off the revision a rollback put it on (the rollback's
//! marker tag is on the service, and its target still runs) names that rollback in its summary,
//! and is not applied, even with `--yes`, until the operator acknowledges that rollback's run
//! (`--ack-rollback RUN`): otherwise the next deploy would undo a rollback without a word.
//!
//! An apply that fails because resources it creates already exist in AWS but not in terraform's
//! state (an earlier terraform killed between creating and recording them, or a create the
//! provider sent again after AWS had made it, see [`orphan`]) names each, and offers their
//! `terraform import` for approval, then plans again. A security group rule's ID, which the
//! error does not carry, is looked up read-only first (see [`security_group_rule`]).

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::ecs_rollback::{MARKER_TAG, Marker, family_revision};
use super::{Probe, Step, StepContext, StepError};
use crate::event::{Event, Outputs};
use crate::image_tag::ImageTag;
use lock::{LockInfo, lock_timeout, terraform_working_in};
use orphan::Orphan;

#[derive(Debug, Deserialize)]
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
    /// The probe's plan, kept for the apply of the same attempt.
    #[serde(skip)]
    saved: Mutex<Option<SavedPlan>>,
    /// What the apply reported, for the verify.
    #[serde(skip)]
    applied: Mutex<Option<Outputs>>,
}

fn terraform() -> String {
    "terraform".into()
}

/// A plan file of this process, its `Plan: A to add, B to change, C to destroy.` line (or
/// what terraform said instead), and its change resource by resource. The file is removed when
/// this is dropped, on every path.
#[derive(Debug)]
struct SavedPlan {
    path: PathBuf,
    summary: String,
    /// One line per resource changed (see [`change::describe`]): names, never values.
    change: String,
    /// Made without the state lock while a terraform of an earlier (killed) run still worked
    /// in the folder: it read a state that was changing, so it is not the plan to approve.
    beside_earlier: bool,
    /// The rollback this plan would undo: the service's name and the rollback's marker.
    undoes: Option<(String, Marker)>,
}

impl SavedPlan {
    /// What an operator approves: the summary, then the change resource by resource.
    fn text(&self) -> String {
        if self.change.is_empty() { self.summary.clone() } else { format!("{}\n{}", self.summary, self.change) }
    }
}

impl Drop for SavedPlan {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn private_file_error(path: &Path, e: std::io::Error) -> StepError {
    StepError::fatal(
        format!("cannot write {}: {e}", path.display()),
        "check the state DB's folder (its work/ holds terraform's output)",
    )
}

/// terraform's output of one command, removed when dropped.
struct OutputFile(PathBuf);

impl Drop for OutputFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The files beside a missing one that end like it (`.tfvars`, `.tfbackend`), for the message.
fn files_like(missing: &Path) -> String {
    let suffix = missing.file_name().and_then(|n| n.to_str()).and_then(|n| n.split_once('.')).map_or("", |(_, s)| s);
    let mut names: Vec<String> = missing
        .parent()
        .and_then(|d| std::fs::read_dir(d).ok())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !suffix.is_empty() && n.ends_with(&format!(".{suffix}")))
        .collect();
    names.sort();
    if names.is_empty() { "no such file".into() } else { names.join(", ") }
}

/// `text` without terminal colour codes (`force-unlock` has no `-no-color`).
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\x1b[") {
        out.push_str(&rest[..at]);
        let code = &rest[at + 2..];
        let end = code.find(|c: char| !(c.is_ascii_digit() || c == ';')).unwrap_or(code.len());
        rest = if code[end..].starts_with('m') { &code[end + 1..] } else { &code[end..] };
    }
    out.push_str(rest);
    out
}

/// How an apply of a saved plan ended.
enum Applied {
    Done(Outputs),
    /// The state changed since the plan was made; terraform refused it.
    Stale,
    /// It failed creating resources that already exist in AWS but not in terraform's state
    /// (see [`orphan::cause`]); the error as it failed.
    Orphaned(Vec<Orphan>, StepError),
}

/// Non-sensitive output values, from `terraform output -json` or an apply's `outputs` message.
fn plain_outputs(all: &serde_json::Map<String, serde_json::Value>) -> Outputs {
    all.iter()
        .filter(|(_, o)| o["sensitive"] != true)
        .map(|(name, o)| {
            let value = match &o["value"] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (name.clone(), value)
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Params {
    fn dir(&self, cx: &StepContext) -> PathBuf {
        cx.project.join(&self.dir)
    }

    fn command(&self, cx: &StepContext, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.binary);
        // Plans and logs terraform writes hold secrets: private from their first byte.
        // SAFETY: umask(2) is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0o077);
                Ok(())
            });
        }
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

    /// Runs terraform to the end; `Err` names the command and what it said.
    ///
    /// Every command runs in its own process group with its output going to a private file,
    /// not a pipe: if runbook dies (kill -9, Ctrl-C) terraform finishes and releases the state
    /// lock it may hold, instead of dying of a closed pipe with the lock held.
    async fn run(&self, cx: &StepContext, args: &[&str]) -> Result<(i32, String), StepError> {
        static CALLS: AtomicU64 = AtomicU64::new(0);
        let n = CALLS.fetch_add(1, Ordering::Relaxed);
        let out = OutputFile(cx.work_dir.join(format!("{}-{}-{n}.out", std::process::id(), cx.step)));
        let mut child = self.spawn_detached(cx, args, &out.0)?;
        // Test crash points: `T2.4:plan-started` (the probe's), `T2.4:locked-plan-started`, ….
        let locked = args.iter().any(|a| a.starts_with("-lock-timeout"));
        cx.checkpoint(&format!("{}{}-started", if locked { "locked-" } else { "" }, args[0]));
        let status = child.wait().await.map_err(|e| StepError::retryable(format!("terraform {}: {e}", args[0])))?;
        let text = std::fs::read(&out.0)
            .map(|b| without_colours(&String::from_utf8_lossy(&b)))
            .map_err(|e| private_file_error(&out.0, e))?;
        Ok((status.code().unwrap_or(-1), text))
    }

    /// Starts terraform in its own process group, its stdout and stderr going to `out` (a new
    /// 0600 file in the private work folder), and not killed when runbook stops waiting.
    fn spawn_detached(&self, cx: &StepContext, args: &[&str], out: &Path) -> Result<tokio::process::Child, StepError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(out)
            .map_err(|e| private_file_error(out, e))?;
        let err = file.try_clone().map_err(|e| private_file_error(out, e))?;
        self.command(cx, args).stdout(file).stderr(err).process_group(0).kill_on_drop(false).spawn().map_err(|e| {
            StepError::fatal(
                format!("cannot run {}: {e}", self.binary),
                "install terraform (the ring's setup checks /usr/local/bin/terraform)",
            )
        })
    }

    /// A failed command, classified: throttling and AWS 5xx are retryable; a state lock held by
    /// someone else says whose and how to release it. The first error line leads the message,
    /// so that the status table shows it.
    fn failed(&self, cx: &StepContext, what: &str, text: &str) -> StepError {
        let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
        let first =
            lines.iter().find(|l| l.contains("Error")).or(lines.first()).map(|l| l.trim()).unwrap_or("no output");
        let tail = lines[lines.len().saturating_sub(12)..].join("\n    ");
        let message = format!("terraform {what} in {} failed: {first}\n    {tail}", self.dir.display());
        let transient = [
            "Throttling",
            "Rate exceeded",
            "TooManyRequests",
            "StatusCode: 500",
            "StatusCode: 502",
            "StatusCode: 503",
            "InternalError",
            "ServiceUnavailable",
        ];
        if transient.iter().any(|t| text.contains(t)) {
            return StepError::retryable(message);
        }
        if let Some(lock) = LockInfo::parse(text) {
            let holder = lock.holder(&crate::identity::host(), &terraform_working_in(&self.dir(cx)));
            return StepError::fatal(format!("{message}\n    {holder}"), lock.fix(&holder, &cx.step, cx.run()));
        }
        StepError::Fatal {
            message,
            fix: Some(format!("read the error above; `{}` has the whole output", cx.logs_hint())),
        }
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
            return Err(self.failed(cx, "init", &text));
        }
        let _ = std::fs::write(&marker, fingerprint);
        Ok(())
    }

    /// Whether `workspace` is the one selected here, from terraform's own record of it.
    fn selected(&self, cx: &StepContext) -> bool {
        std::fs::read_to_string(self.dir(cx).join(".terraform").join("environment"))
            .is_ok_and(|w| w.trim() == self.workspace)
    }

    /// The lock wait of a command about to take the state lock, said in the log when it will
    /// be long.
    async fn lock_timeout(&self, cx: &StepContext) -> &'static str {
        let (timeout, working) = lock_timeout(&self.dir(cx));
        if !working.is_empty() {
            cx.log(format!(
                "terraform (pid {working:?}) of an earlier run still works here; waiting up to 300 s for it to release the state lock"
            ))
            .await;
        }
        timeout
    }

    /// Selects the workspace; `false` when it does not exist yet.
    async fn select(&self, cx: &StepContext) -> Result<bool, StepError> {
        let (code, text) = self.run(cx, &["workspace", "select", "-no-color", &self.workspace]).await?;
        match code {
            0 => Ok(true),
            _ if text.contains("doesn't exist") || text.contains("does not exist") => Ok(false),
            _ => Err(self.failed(cx, "workspace select", &text)),
        }
    }

    /// `plan -detailed-exitcode -out=FILE`: `None` when there is nothing to change. The probe
    /// plans without the state lock (it only reads; a half-applied state reads as changes); the
    /// apply's own plan, when it must make one, takes the lock and waits for it, since a killed
    /// run may have left an apply running.
    async fn plan(&self, cx: &StepContext, locked: bool) -> Result<Option<SavedPlan>, StepError> {
        let path = cx.work_dir.join(format!("{}-{}.tfplan", std::process::id(), cx.step));
        let mut args = vec!["plan".to_string(), "-input=false".into(), "-no-color".into(), "-detailed-exitcode".into()];
        args.push(if locked { self.lock_timeout(cx).await.into() } else { "-lock=false".into() });
        args.push(format!("-out={}", path.display()));
        args.extend(self.var_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let beside_earlier = !locked && !terraform_working_in(&self.dir(cx)).is_empty();
        let result = self.run(cx, &args).await;
        // From here the file is ours to remove, whatever terraform said.
        let mut saved = SavedPlan { path, summary: String::new(), change: String::new(), beside_earlier, undoes: None };
        let (code, text) = result?;
        match code {
            0 => Ok(None),
            2 => {
                saved.summary = text
                    .lines()
                    .find(|l| l.trim_start().starts_with("Plan:") || l.contains("Changes to Outputs"))
                    .unwrap_or("changes pending")
                    .trim()
                    .to_string();
                let json = self.show_json(cx, Some(&saved.path)).await?;
                saved.change = change::describe(&json);
                saved.undoes = undone_rollback(&json);
                if let Some((service, marker)) = &saved.undoes {
                    saved.summary = format!(
                        "{}; it puts {service} forward again, undoing {}",
                        saved.summary,
                        marker.describe(service)
                    );
                }
                Ok(Some(saved))
            }
            _ => Err(self.failed(cx, "plan", &text)),
        }
    }

    /// `terraform show -json PLAN`, or of the workspace's state without a plan, read from a
    /// pipe (both hold secrets in clear: never written to a file, never logged).
    async fn show_json(&self, cx: &StepContext, plan: Option<&Path>) -> Result<serde_json::Value, StepError> {
        let plan = plan.map(|p| p.to_string_lossy().into_owned());
        let args: Vec<&str> = ["show", "-json", "-no-color"].into_iter().chain(plan.as_deref()).collect();
        let out = self
            .command(cx, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| StepError::retryable(format!("terraform show: {e}")))?;
        if !out.status.success() {
            return Err(self.failed(cx, "show", &String::from_utf8_lossy(&out.stderr)));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| StepError::retryable(format!("terraform show -json gave no JSON: {e}")))
    }

    /// Stops a plan that undoes a rollback unless the operator acknowledged that rollback's
    /// run; an acknowledgement is recorded.
    async fn check_rollback(&self, cx: &StepContext, plan: &SavedPlan) -> Result<(), StepError> {
        let Some((service, marker)) = &plan.undoes else { return Ok(()) };
        if cx.acknowledged_rollback() != Some(marker.run) {
            let (run, logs_run) = cx.run().map(|r| (format!(" {r}"), format!(" --run {r}"))).unwrap_or_default();
            // Not an approval `--yes` could give: the plan is refused until the operator names
            // the rollback it undoes, so the run fails with that command as its fix.
            return Err(StepError::Fatal {
                message: format!("not applied: {}", plan.text()),
                fix: Some(format!(
                    "this deploy would undo the rollback without a word; if its cause is fixed, acknowledge \
                     it: runbook resume{run} --yes --ack-rollback {} (the change is listed above; runbook logs \
                     {}{logs_run} shows it again)",
                    marker.run, cx.step
                )),
            });
        }
        cx.log(format!("acknowledged: this apply undoes {}", marker.describe(service))).await;
        cx.recorder
            .emit(Event::RollbackAcknowledged {
                step: cx.step.clone(),
                rollback_run: marker.run,
                service: service.clone(),
                summary: plan.text(),
                operator: crate::identity::operator(),
                host: crate::identity::host(),
            })
            .await;
        Ok(())
    }

    async fn outputs(&self, cx: &StepContext) -> Result<Outputs, StepError> {
        let (code, text) = self.run(cx, &["output", "-json", "-no-color"]).await?;
        if code != 0 {
            return Err(self.failed(cx, "output", &text));
        }
        let all: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
        Ok(plain_outputs(&all))
    }

    /// Selects the workspace, creating it when it does not exist.
    async fn ensure_workspace(&self, cx: &StepContext) -> Result<(), StepError> {
        if self.selected(cx) || self.select(cx).await? {
            return Ok(());
        }
        cx.log(format!("creating workspace {}", self.workspace)).await;
        let (code, text) = self.run(cx, &["workspace", "new", "-no-color", &self.workspace]).await?;
        if code != 0 {
            return Err(self.failed(cx, "workspace new", &text));
        }
        Ok(())
    }

    fn orphans_kept_at(&self, cx: &StepContext) -> PathBuf {
        orphan::kept_at(&cx.work_dir, &cx.step)
    }

    /// Asks the operator to adopt `orphans` (those whose import ID is known) into terraform's
    /// state, naming each `terraform import`; then imports them under the state lock. Those it
    /// cannot import are named in the same text, with what to look up.
    async fn adopt(&self, cx: &StepContext, orphans: &[Orphan]) -> Result<(), StepError> {
        let (importable, by_hand): (Vec<&Orphan>, Vec<&Orphan>) = orphans.iter().partition(|o| o.id.is_some());
        let imports: Vec<String> = importable.iter().filter_map(|o| o.import_command()).collect();
        let n = imports.len();
        let mut text = format!(
            "adopt {n} orphaned resource{} into terraform's state: {}",
            if n == 1 { "" } else { "s" },
            imports.join("; ")
        );
        for o in by_hand {
            text.push_str(&format!("\n  not imported by runbook: {}", o.line()));
        }
        cx.log(format!("in AWS but not in terraform's state ({}): {text}", orphan::cause(n))).await;
        let summary = format!("terraform import in workspace {} of {}: {text}", self.workspace, cx.env.name);
        if !cx.approve(&summary).await {
            let resume = cx.run().map(crate::hint::resume_approving).unwrap_or_else(|| "runbook resume --yes".into());
            return Err(StepError::AwaitingApproval {
                summary: text,
                fix: Some(format!(
                    "{} in AWS but not in terraform's state ({}); to import {} in {} (recorded), then plan and \
                     apply: {resume}",
                    if n == 1 { "this resource is" } else { "these resources are" },
                    orphan::cause(n),
                    if n == 1 { "it" } else { "them" },
                    self.dir.display(),
                )),
            });
        }
        for orphan in importable {
            self.import(cx, orphan).await?;
        }
        let kept_at = self.orphans_kept_at(cx);
        if let Err(e) = orphan::forget(&kept_at) {
            cx.log(format!("cannot remove {}: {e}", kept_at.display())).await;
        }
        Ok(())
    }

    /// Looks up, read-only, the import IDs that the apply's errors did not carry where runbook
    /// can: a security group rule's `sgr-…` ([`security_group_rule`]), from the rule in the plan
    /// just applied (`plan_file`), terraform's state, and the rules AWS has. Each such orphan
    /// gets its ID when exactly one rule can be it, else what was found instead.
    async fn look_up_ids(&self, cx: &StepContext, plan_file: &Path, orphans: &mut [Orphan]) {
        let rules: Vec<&mut Orphan> =
            orphans.iter_mut().filter(|o| o.id.is_none() && security_group_rule::is_rule(&o.address)).collect();
        if rules.is_empty() {
            return;
        }
        let shown = match self.show_json(cx, Some(plan_file)).await {
            Ok(plan) => self.show_json(cx, None).await.map(|state| (plan, state)),
            Err(e) => Err(e),
        };
        for orphan in rules {
            let found = match &shown {
                Ok((plan, state)) => security_group_rule::look_up(&cx.cloud.ec2, plan, state, &orphan.address).await,
                Err(e) => Err(format!("runbook could not read terraform's plan and state to look it up: {e}")),
            };
            match &found {
                Ok(id) => {
                    cx.log(format!(
                        "looked up {} (read-only): {id} is the one rule in AWS with its direction, group, protocol, \
                         ports, peer and description that terraform's state does not hold",
                        orphan.address
                    ))
                    .await
                }
                Err(instead) => cx.log(format!("looked up {} (read-only): {instead}", orphan.address)).await,
            }
            orphan.looked_up(found);
        }
    }

    /// `terraform import ADDRESS ID` under the state lock, with the step's variables. One that
    /// terraform's state holds already (imported since), or that is gone from AWS (deleted
    /// since: the apply creates it), needs nothing more.
    async fn import(&self, cx: &StepContext, orphan: &Orphan) -> Result<(), StepError> {
        let Some(id) = orphan.id.as_deref() else { return Ok(()) };
        let mut args = vec!["import".to_string(), "-input=false".into(), "-no-color".into()];
        args.push(self.lock_timeout(cx).await.into());
        args.extend(self.var_args());
        args.extend([orphan.address.clone(), id.to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, text) = self.run(cx, &args).await?;
        let (address, ws) = (&orphan.address, &self.workspace);
        if code == 0 {
            cx.log(format!("imported {address} ({id}) into terraform's state of workspace {ws}")).await;
        } else if text.contains("Resource already managed by Terraform") {
            cx.log(format!("{address} is in terraform's state of workspace {ws} already: nothing to import")).await;
        } else if text.contains("non-existent remote object") {
            cx.log(format!("{address} ({id}) is no longer in AWS: nothing to import; the apply creates it")).await;
        } else {
            return Err(self.failed(cx, "import", &text));
        }
        Ok(())
    }

    /// The plan changes nothing: said (after adopting orphans, or when the state changed under
    /// an approved plan), and the module's outputs read.
    async fn nothing_to_apply(&self, cx: &StepContext, adopted: bool, approved: bool) -> Result<(), StepError> {
        if adopted {
            cx.log("with the orphans in terraform's state, its plan changes nothing").await;
        } else if approved {
            cx.log(
                "the plan approved above was not applied: the state changed under it, and now there is nothing to \
                 change",
            )
            .await;
        }
        cx.log("terraform plan: no changes").await;
        *lock(&self.applied) = Some(self.outputs(cx).await?);
        Ok(())
    }

    /// The apply of `plan` failed on `orphans` (resources in AWS but not in terraform's state):
    /// their IDs looked up, kept for a next attempt, and their import asked for and run; an
    /// orphan adopted before (in `adopted`), or none with an ID, fails the step saying so.
    async fn adopt_found(
        &self,
        cx: &StepContext,
        plan: &Path,
        mut orphans: Vec<Orphan>,
        failed: StepError,
        adopted: &mut Vec<String>,
    ) -> Result<(), StepError> {
        let again = orphans.iter().any(|o| adopted.contains(&o.address));
        if !again {
            self.look_up_ids(cx, plan, &mut orphans).await;
        }
        if again || orphans.iter().all(|o| o.id.is_none()) {
            return Err(self.orphaned(cx, &orphans, failed, again));
        }
        let kept_at = self.orphans_kept_at(cx);
        if let Err(e) = orphan::keep(&kept_at, &self.dir(cx), &self.workspace, &orphans) {
            cx.log(format!("cannot keep the orphans for the next attempt in {}: {e}", kept_at.display())).await;
        }
        // Test crash point: the orphans found and kept, their import not asked yet.
        cx.checkpoint("orphans-kept");
        self.adopt(cx, &orphans).await?;
        adopted.extend(orphans.iter().map(|o| o.address.clone()));
        Ok(())
    }

    /// An apply that failed on orphans runbook cannot adopt (their import ID is not in the
    /// error), or again after adopting them (`again`): each named, with how to import it.
    fn orphaned(&self, cx: &StepContext, orphans: &[Orphan], failed: StepError, again: bool) -> StepError {
        let StepError::Fatal { mut message, fix } = failed else { return failed };
        for o in orphans {
            message.push_str(&format!("\n    in AWS but not in terraform's state: {}", o.line()));
        }
        if again {
            return StepError::Fatal { message, fix };
        }
        let mut env = String::new();
        if !self.cli_config.is_empty() {
            env.push_str(&format!("TF_CLI_CONFIG_FILE={} ", cx.project.join(&self.cli_config).display()));
        }
        if !self.aws_endpoint_url.is_empty() {
            env.push_str(&format!("AWS_ENDPOINT_URL={} ", self.aws_endpoint_url));
        }
        let import: Vec<String> = ["terraform".into(), "import".into()]
            .into_iter()
            .chain(self.var_args())
            .chain(["ADDRESS".into(), "ID".into()])
            .collect();
        StepError::fatal(
            message,
            format!(
                "{} {} in AWS but not in terraform's state ({}); look up each ID as said above, import each in \
                 {} (workspace {} is selected there): {env}{}; then: {}",
                if orphans.len() == 1 { "this resource" } else { "these resources" },
                if orphans.len() == 1 { "is" } else { "are" },
                orphan::cause(orphans.len()),
                self.dir(cx).display(),
                self.workspace,
                import.join(" "),
                cx.retry_hint()
            ),
        )
    }

    /// `terraform apply -json PLAN`, its progress streamed into the step's log.
    ///
    /// terraform runs in its own process group with its output going to a file, not a pipe:
    /// if this process dies (kill -9, Ctrl-C) the apply finishes and releases the state lock
    /// instead of dying mid-write with the lock held; the resumed run waits for that lock.
    async fn apply_plan(&self, cx: &StepContext, plan_file: &Path) -> Result<Applied, StepError> {
        let plan = plan_file.to_string_lossy();
        let log = OutputFile(plan_file.with_extension("apply.jsonl"));
        let log_path = &log.0;
        let mut child = self.spawn_detached(
            cx,
            &["apply", "-input=false", "-no-color", "-json", self.lock_timeout(cx).await, &plan],
            log_path,
        )?;
        cx.checkpoint("apply-started");
        let mut reader =
            BufReader::new(tokio::fs::File::open(log_path).await.map_err(|e| StepError::retryable(e.to_string()))?);
        let mut seen = Seen::default();
        let mut line = String::new();
        loop {
            line.clear();
            let read = reader.read_line(&mut line).await.map_err(|e| StepError::retryable(e.to_string()))?;
            if read == 0 {
                if let Some(status) =
                    child.try_wait().map_err(|e| StepError::retryable(format!("terraform apply: {e}")))?
                {
                    // Drain what was written after the last read, then stop.
                    let mut rest = String::new();
                    while reader.read_line(&mut rest).await.map_err(|e| StepError::retryable(e.to_string()))? > 0 {}
                    for l in rest.lines() {
                        self.show(cx, l, &mut seen).await;
                    }
                    let failed = || self.failed(cx, "apply", &seen.errors.join("\n"));
                    return match (status.success(), seen.stale) {
                        (true, _) => Ok(Applied::Done(seen.outputs)),
                        (false, true) => Ok(Applied::Stale),
                        (false, false) if !seen.orphans.is_empty() => Ok(Applied::Orphaned(seen.orphans, failed())),
                        (false, false) => Err(failed()),
                    };
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
            if line.ends_with('\n') {
                let complete = std::mem::take(&mut line);
                self.show(cx, complete.trim_end(), &mut seen).await;
            }
        }
    }

    /// One line of `terraform apply -json`, into the log, the progress display, or `seen`.
    async fn show(&self, cx: &StepContext, line: &str, seen: &mut Seen) {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            if !line.trim().is_empty() {
                seen.errors.push(line.to_string());
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
            "outputs" => {
                if let Some(all) = message["outputs"].as_object() {
                    seen.outputs = plain_outputs(all);
                }
            }
            "diagnostic" if message["diagnostic"]["severity"] == "error" => {
                let summary = message["diagnostic"]["summary"].as_str().unwrap_or_default();
                seen.stale |= summary.contains("Saved plan is stale");
                let detail = message["diagnostic"]["detail"].as_str().unwrap_or_default();
                seen.errors.push(format!("{text}: {detail}"));
                cx.log(format!("error: {text}: {detail}")).await;
                if let Some(orphan) = Orphan::from_diagnostic(&message["diagnostic"])
                    && !seen.orphans.iter().any(|o| o.address == orphan.address)
                {
                    seen.orphans.push(orphan);
                }
            }
            _ => {}
        }
    }
}

/// What an apply's `-json` stream said, beyond its log lines.
#[derive(Default)]
struct Seen {
    errors: Vec<String>,
    stale: bool,
    outputs: Outputs,
    /// Resources it failed to create because they already exist, each named once.
    orphans: Vec<Orphan>,
}

impl Step for Params {
    const KIND: &'static str = "terraform";
    const OUTPUTS: Option<&'static [&'static str]> = None;
    const HOLDS_LOCK: bool = true;

    /// A tag passed as a terraform variable is a tag like any other: never `latest`.
    fn validate(&self) -> Result<(), String> {
        match self.vars.get("image_tag") {
            Some(tag) => ImageTag::parse(tag).map(drop).map_err(|e| format!("vars.image_tag: {e}")),
            None => Ok(()),
        }
    }

    fn check_files(&self, project: &Path) -> Result<(), String> {
        let dir = project.join(&self.dir);
        let named = self.dir.display().to_string();
        let point = "point `dir` at the terraform root module (the folder holding its *.tf files), relative to the project folder";
        let has_tf = std::fs::read_dir(&dir)
            .map_err(|e| format!("dir = {named:?}: {} cannot be read: {e}; {point}", dir.display()))?
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "tf"));
        if !has_tf {
            return Err(format!("dir = {named:?}: {} holds no *.tf file; {point}", dir.display()));
        }
        let missing = |field: &str, f: &str| {
            format!(
                "{field}: {} does not exist; {field} are relative to `dir` ({named}); there: {}",
                dir.join(f).display(),
                files_like(&dir.join(f))
            )
        };
        if let Some(f) = self.var_files.iter().find(|f| !dir.join(f).is_file()) {
            return Err(missing("var_files", f));
        }
        if !self.backend_config_file.is_empty() && !dir.join(&self.backend_config_file).is_file() {
            return Err(
                missing("backend_config_file", &self.backend_config_file).replace(" are relative", " is relative")
            );
        }
        Ok(())
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
        // `output` beside the plan: a converged re-run then costs one plan. Neither takes the
        // state lock, except where the workspace's state is new: then `output` initialises it
        // under the lock, the plan may fail on that lock, and is made again, alone.
        let (plan, outputs) = tokio::join!(self.plan(cx, false), self.outputs(cx));
        let plan = match plan {
            Err(StepError::Fatal { message, .. }) if message.contains("failed to lock") => self.plan(cx, false).await,
            other => other,
        };
        let plan = match plan {
            // Selected here once, but gone from the backend since (a new state bucket).
            Err(StepError::Fatal { message, .. })
                if message.contains("does not exist") && message.contains("workspace") =>
            {
                return Ok(missing());
            }
            other => other?,
        };
        match plan {
            None => Ok(Probe::Satisfied(match outputs {
                Ok(outputs) => outputs,
                Err(_) => self.outputs(cx).await?,
            })),
            Some(plan) => {
                let kept = orphan::kept(&self.orphans_kept_at(cx), &self.dir(cx), &self.workspace).len();
                let adopt = match kept {
                    0 => String::new(),
                    n => format!(
                        " ({n} orphaned resource{} to adopt first: terraform import)",
                        if n == 1 { "" } else { "s" }
                    ),
                };
                let what = format!("workspace {}: {}{adopt}", self.workspace, plan.summary);
                *lock(&self.saved) = Some(plan);
                Ok(Probe::Absent(what))
            }
        }
    }

    /// Applies the probe's saved plan after approval; plans again (under the lock) when there
    /// is none (a new workspace), when it was made beside an earlier run's terraform (a resume
    /// after a kill mid-apply), or when terraform finds it stale. What is approved is the plan
    /// about to be applied: a new plan whose change differs is asked for again.
    ///
    /// Resources an apply fails to create because they already exist in AWS but not in
    /// terraform's state (an earlier apply died between creating and recording them, or a
    /// create was retried after AWS had made it) are offered for adoption: their `terraform
    /// import`, approved like a plan, then a new plan.
    /// Those an earlier attempt found are offered first, before any plan.
    async fn apply(&self, cx: &StepContext) -> Result<(), StepError> {
        self.init(cx).await?;
        self.ensure_workspace(cx).await?;
        let mut saved = lock(&self.saved).take();
        if saved.as_ref().is_some_and(|p| p.beside_earlier) {
            cx.log(
                "terraform of an earlier run was still working here when this plan was made: planning again \
                 under the state lock, once it is done",
            )
            .await;
            saved = None;
        }
        let kept = orphan::kept(&self.orphans_kept_at(cx), &self.dir(cx), &self.workspace);
        let mut adopted: Vec<String> = Vec::new();
        if !kept.is_empty() {
            cx.log("an earlier attempt's apply failed on resources that exist in AWS but not in terraform's state")
                .await;
            self.adopt(cx, &kept).await?;
            adopted.extend(kept.iter().map(|o| o.address.clone()));
            saved = None;
        }
        let mut approved: Option<String> = None;
        let mut stale = 0;
        while stale < 2 {
            let plan = match saved.take() {
                Some(plan) => plan,
                None => match self.plan(cx, true).await? {
                    Some(plan) => plan,
                    None => return self.nothing_to_apply(cx, !adopted.is_empty(), approved.is_some()).await,
                },
            };
            cx.log(format!("terraform plan for workspace {}: {}", self.workspace, plan.text())).await;
            self.check_rollback(cx, &plan).await?;
            if approved.as_deref() == Some(plan.text().as_str()) {
                cx.log("the new plan makes the change approved above: applying it").await;
            } else {
                let summary =
                    format!("terraform apply in workspace {} of {}: {}", self.workspace, cx.env.name, plan.text());
                if !cx.approve(&summary).await {
                    return Err(StepError::AwaitingApproval { summary: plan.text(), fix: None });
                }
                approved = Some(plan.text());
            }
            match self.apply_plan(cx, &plan.path).await? {
                Applied::Done(outputs) => {
                    *lock(&self.applied) = Some(outputs);
                    return Ok(());
                }
                Applied::Stale => {
                    stale += 1;
                    cx.log("the saved plan is stale (the state changed since it was made): planning again").await
                }
                Applied::Orphaned(orphans, failed) => {
                    self.adopt_found(cx, &plan.path, orphans, failed, &mut adopted).await?;
                }
            }
        }
        Err(StepError::retryable(format!(
            "terraform's state in workspace {} kept changing under the plan",
            self.workspace
        )))
    }

    /// `terraform force-unlock -force ID` in the step's folder and workspace: the operator's
    /// explicit release of a state lock that a dead run left.
    async fn release_lock(&self, cx: &StepContext, lock_id: &str) -> Result<(), StepError> {
        let valid = !lock_id.is_empty() && lock_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !valid {
            return Err(StepError::fatal(
                format!("{lock_id:?} is not a terraform lock id"),
                "copy the ID from the step's error",
            ));
        }
        self.init(cx).await?;
        if !self.selected(cx) && !self.select(cx).await? {
            return Err(StepError::fatal(format!("workspace {} does not exist", self.workspace), "check the step"));
        }
        let (code, text) = self.run(cx, &["force-unlock", "-force", lock_id]).await?;
        if code != 0 {
            return Err(self.failed(cx, "force-unlock", &text));
        }
        cx.log(format!("released terraform's state lock {lock_id} in workspace {}", self.workspace)).await;
        Ok(())
    }

    /// The apply's own outputs; the probe again only when this attempt did not apply.
    async fn verify(&self, cx: &StepContext) -> Result<Probe, StepError> {
        let applied = lock(&self.applied).take();
        match applied {
            Some(outputs) => Ok(Probe::Satisfied(outputs)),
            None => Step::probe(self, cx).await,
        }
    }
}

/// The ECS service a plan would move off the revision a rollback put it on, with that
/// rollback's marker: the service's task definition changes (or becomes unknown), its marker tag
/// is there, and the marker's target is what the service runs.
fn undone_rollback(plan: &serde_json::Value) -> Option<(String, Marker)> {
    let changes = plan["resource_changes"].as_array()?;
    changes.iter().filter(|c| c["type"] == "aws_ecs_service").find_map(|c| {
        let change = &c["change"];
        let before = &change["before"];
        let running = before["task_definition"].as_str()?;
        let moves = change["after_unknown"]["task_definition"] == true
            || change["after"]["task_definition"].as_str().is_some_and(|after| after != running);
        let tag = before["tags_all"][MARKER_TAG].as_str().or_else(|| before["tags"][MARKER_TAG].as_str())?;
        let marker = Marker::parse(tag)?;
        let (_, revision) = family_revision(running)?;
        (moves && marker.to == revision).then(|| (before["name"].as_str().unwrap_or("?").to_string(), marker))
    })
}

mod change;
mod lock;
mod orphan;
mod security_group_rule;

#[cfg(test)]
mod tests;
