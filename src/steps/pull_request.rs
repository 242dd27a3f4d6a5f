//! `pull_request` (T3.2): merge reviewed pull requests into their base, each pinned to the head
//! SHA whose checks were read, then bring the base into the sprint branch and wait for its
//! checks. PRs listed under `not` are named and never merged.
//!
//! Every PR is checked before any is merged (open or already merged, every check run green,
//! mergeable), so a red check on the last PR merges nothing. A merge sends the SHA that was
//! checked: a push after the checks makes GitHub answer 409 and nothing after it is merged.
//! The token is read at run time from its home (SSM or the process environment) and kept in a
//! [`Secret`]; it is sent only in the `Authorization` header, marked sensitive.

use std::time::Duration;

use reqwest::Method;

use serde::Deserialize;
use serde_json::json;

mod github;

use github::{Checks, GitHub, Pull};

use super::database::SecretSource;
use super::{Probe, Step, StepContext, StepError, reach};
use crate::event::Outputs;
use crate::secret::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {
    /// The REST API's base URL: `https://api.github.com`, or the ring's stand-in.
    api: String,
    /// `owner/name`.
    repo: String,
    /// PR numbers to merge, in this order.
    #[serde(default)]
    merge: Vec<u64>,
    /// PRs that are named and never merged, each with the reason.
    #[serde(default)]
    not: Vec<Excluded>,
    /// Where the token lives: `{ ssm = "/name" }` or `{ env = "VARIABLE" }`.
    token: SecretSource,
    #[serde(default = "merge_commit")]
    merge_method: MergeMethod,
    /// Bring `from` into `base` after the merges, and wait for the checks of the result.
    #[serde(default)]
    sync: Option<SyncBranches>,
    /// How long the checks of the synced head may take.
    #[serde(default = "ten_minutes", deserialize_with = "super::number_or_text")]
    checks_within: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Excluded {
    number: u64,
    why: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncBranches {
    /// The branch that receives the merge, e.g. `feature/dixie-mvp`.
    base: String,
    /// The branch merged into it, e.g. `main`.
    from: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum MergeMethod {
    Merge,
    Squash,
    Rebase,
}

impl MergeMethod {
    fn as_str(self) -> &'static str {
        match self {
            MergeMethod::Merge => "merge",
            MergeMethod::Squash => "squash",
            MergeMethod::Rebase => "rebase",
        }
    }
}

fn merge_commit() -> MergeMethod {
    MergeMethod::Merge
}

fn ten_minutes() -> u64 {
    600
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(7)]
}

/// GitHub's rule for `owner/name`: an owner of 1-39 letters, digits and single inner hyphens,
/// a name of 1-100 letters, digits, `.`, `_` and `-` (not `.` or `..`).
fn check_repo(repo: &str) -> Result<(), String> {
    let ok = repo.split_once('/').is_some_and(|(owner, name)| {
        (1..=39).contains(&owner.len())
            && owner.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !owner.starts_with('-')
            && !owner.ends_with('-')
            && !owner.contains("--")
            && (1..=100).contains(&name.len())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && name != "."
            && name != ".."
    });
    if ok {
        Ok(())
    } else {
        Err(format!("repo = {repo:?} is not a GitHub repository: write owner/name, e.g. 0xHoneyJar/loa-dixie"))
    }
}

/// Git's rule for branch names, as far as it matters here (no spaces, `..`, `~^:?*[\`).
fn check_branch(field: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && !name.starts_with(['/', '-', '.'])
        && !name.ends_with(['/', '.'])
        && !name.ends_with(".lock")
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("@{")
        && !name.chars().any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
    if ok { Ok(()) } else { Err(format!("{field} = {name:?} is not a git branch name")) }
}

/// A PR that passed every precondition, with the head SHA whose checks were read.
struct Ready {
    number: u64,
    head_sha: String,
}

impl Params {
    fn api(&self) -> &str {
        self.api.trim_end_matches('/')
    }

    async fn github(&self, cx: &StepContext) -> Result<GitHub, StepError> {
        let on_ring = if cx.env.loopback_only { " (on the ring: ring/github_token.py --overwrite)" } else { "" };
        let (token, token_fix) = match &self.token {
            SecretSource::Env(var) => {
                let fix = format!("export {var} with a GitHub token that may merge PRs in {}, then retry", self.repo);
                let token = std::env::var(var).map_err(|_| {
                    StepError::fatal(format!("the GitHub token variable {var} is not set"), fix.clone())
                })?;
                (token, fix)
            }
            SecretSource::Ssm(name) => {
                let fix = format!(
                    "put a GitHub token that may merge PRs in {} into SSM {name} as a SecureString \
                     (aws ssm put-parameter --name {name} --type SecureString --overwrite --value …){on_ring}, then retry",
                    self.repo
                );
                let token = cx.parameter(name).await?.ok_or_else(|| {
                    StepError::fatal(format!("the GitHub token parameter {name} does not exist"), fix.clone())
                })?;
                (token.expose().clone(), fix)
            }
        };
        let token = Secret::new(token.trim().to_string());
        let url = reqwest::Url::parse(self.api())
            .map_err(|e| StepError::fatal(format!("api = {:?}: {e}", self.api), "fix api"))?;
        let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_string();
        let port = url.port_or_known_default().unwrap_or(443);
        let addr = cx.env.dial(&host, port).map_err(|why| StepError::fatal(why, "see [address_map]"))?;
        let client = reqwest::Client::builder()
            .resolve(&host, addr)
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("runbook/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StepError::Fatal { message: format!("cannot make an HTTP client: {e}"), fix: None })?;
        let log = Some((cx.recorder.clone(), cx.step.clone(), cx.attempt));
        Ok(GitHub { client, api: self.api().to_string(), repo: self.repo.clone(), token, token_fix, log })
    }

    /// Read-only, before the run: the token is there, GitHub answers at `api`, the repository
    /// exists and the token may push to it, every PR to merge and both branches to sync exist.
    async fn check_access(&self, cx: &StepContext) -> Result<(), StepError> {
        let gh = self.github(cx).await?;
        let answer = gh.get("").await?;
        match answer.status {
            200 if answer.body["permissions"]["push"].as_bool() == Some(false) => {
                return Err(StepError::fatal(
                    format!("the GitHub token may read {} but not merge in it (permissions.push is false)", self.repo),
                    gh.token_fix.clone(),
                ));
            }
            200 => {}
            404 => return Err(gh.not_found("repository")),
            _ => return Err(gh.unexpected(&format!("reading the repository {}", self.repo), &answer)),
        }
        for number in &self.merge {
            gh.pull(*number).await?;
        }
        if let Some(sync) = &self.sync {
            gh.branch_head(&sync.base).await?;
            gh.branch_head(&sync.from).await?;
        }
        Ok(())
    }

    fn outputs(&self, feature_head: &str) -> Outputs {
        Outputs::from([
            ("merged".to_string(), self.merge.iter().map(u64::to_string).collect::<Vec<_>>().join(",")),
            ("feature_head".to_string(), feature_head.to_string()),
        ])
    }

    /// The commits `sync.base` must contain: the merge commits of the PRs, or `sync.from`
    /// itself when no PR is merged here. (Not `from`'s head: it may move on meanwhile.)
    fn sync_targets(&self, sync: &SyncBranches, pulls: &[Pull]) -> Vec<String> {
        if pulls.is_empty() {
            return vec![sync.from.clone()];
        }
        pulls.iter().filter_map(|p| p.merge_commit_sha.clone()).collect()
    }

    /// Every PR checked before any is merged: the ones to merge, with the SHA that was checked.
    async fn preconditions(&self, gh: &GitHub, cx: &StepContext) -> Result<Vec<Ready>, StepError> {
        let mut ready = Vec::new();
        let (mut fatal, mut later) = (Vec::new(), Vec::new());
        for &number in &self.merge {
            let pull = gh.pull_with_mergeable(number).await?;
            if pull.merged {
                cx.log(format!(
                    "PR #{number} ({}) is merged already ({})",
                    pull.title,
                    short(pull.merge_commit_sha.as_deref().unwrap_or("?"))
                ))
                .await;
                continue;
            }
            if pull.state != "open" {
                fatal.push(format!("PR #{number} is closed without being merged"));
                continue;
            }
            let problems = fatal.len() + later.len();
            if let Some(sync) = &self.sync
                && pull.base.name != sync.from
            {
                fatal.push(format!(
                    "PR #{number} merges into {}, not {}: the sync would not bring it into {}",
                    pull.base.name, sync.from, sync.base
                ));
            }
            if pull.draft {
                fatal.push(format!("PR #{number} is a draft"));
            }
            match (pull.mergeable, pull.mergeable_state.as_str()) {
                (None, _) => later.push(format!("GitHub is still computing whether PR #{number} can be merged")),
                (Some(false), state) => fatal.push(format!(
                    "PR #{number} cannot be merged into {} (mergeable_state {state}{})",
                    pull.base.name,
                    if state == "dirty" { ": it conflicts" } else { "" }
                )),
                (Some(true), "blocked") => fatal.push(format!(
                    "PR #{number} is blocked by {}'s branch protection (a required review or check)",
                    pull.base.name
                )),
                _ => {}
            }
            match gh.checks(&pull.head.sha).await? {
                Checks::Green => {}
                Checks::Failed(what) => fatal.push(format!("PR #{number}: {what}")),
                Checks::Pending(what) => later.push(format!("PR #{number}: {what}")),
            }
            if fatal.len() + later.len() > problems {
                continue;
            }
            cx.log(format!(
                "PR #{number} ({}) into {}: checks green at head {}, mergeable",
                pull.title,
                pull.base.name,
                short(&pull.head.sha)
            ))
            .await;
            ready.push(Ready { number, head_sha: pull.head.sha });
        }
        if !fatal.is_empty() {
            fatal.extend(later);
            return Err(StepError::fatal(
                format!("nothing merged: {}", fatal.join("; ")),
                format!(
                    "fix the PRs on GitHub (a red check: fix or re-run it; a conflict: `@dependabot rebase`), or take \
                     them out of `merge`, then: {}",
                    cx.retry_hint()
                ),
            ));
        }
        if !later.is_empty() {
            return Err(StepError::retryable(format!("nothing merged yet: {}", later.join("; "))));
        }
        Ok(ready)
    }

    async fn merge_one(&self, gh: &GitHub, cx: &StepContext, pr: &Ready, merged: &[u64]) -> Result<(), StepError> {
        let body = json!({"sha": pr.head_sha, "merge_method": self.merge_method.as_str()});
        let answer = gh.call(Method::PUT, &format!("/pulls/{}/merge", pr.number), Some(&body)).await?;
        let before = if merged.is_empty() {
            "none merged before it".to_string()
        } else {
            format!("merged before it: {}", merged.iter().map(|n| format!("#{n}")).collect::<Vec<_>>().join(", "))
        };
        match answer.status {
            200 => {
                cx.log(format!(
                    "merged PR #{} at head {} ({}) as {}",
                    pr.number,
                    short(&pr.head_sha),
                    self.merge_method.as_str(),
                    short(answer.body["sha"].as_str().unwrap_or("?"))
                ))
                .await;
                Ok(())
            }
            409 => Err(StepError::fatal(
                format!(
                    "PR #{} was pushed to after its checks were read at head {} ({}): not merged, nor any after it \
                     ({before})",
                    pr.number,
                    short(&pr.head_sha),
                    answer.message()
                ),
                format!(
                    "look at what was pushed to PR #{}; once its new head's checks are green: {} \
                     (merged PRs are skipped)",
                    pr.number,
                    cx.retry_hint()
                ),
            )),
            405 if answer.message().contains("Base branch was modified") => {
                Err(StepError::retryable(format!("PR #{}: {}", pr.number, answer.message())))
            }
            405 | 422 => Err(StepError::fatal(
                format!("GitHub refused to merge PR #{}: {} ({before})", pr.number, answer.message()),
                format!("look at PR #{} on GitHub, then: {}", pr.number, cx.retry_hint()),
            )),
            404 => Err(gh.not_found(&format!("PR #{}", pr.number))),
            _ => Err(gh.unexpected(&format!("merging PR #{}", pr.number), &answer)),
        }
    }

    /// Merges `sync.from` into `sync.base` unless it has it already; returns the SHA whose
    /// checks must pass.
    async fn sync(&self, gh: &GitHub, cx: &StepContext, sync: &SyncBranches) -> Result<String, StepError> {
        let mut pulls = Vec::new();
        for &number in &self.merge {
            pulls.push(gh.pull(number).await?);
        }
        let mut missing = false;
        for target in self.sync_targets(sync, &pulls) {
            missing |= !gh.contains(&sync.base, &target).await?;
        }
        if !missing {
            let head = gh.branch_head(&sync.base).await?;
            cx.log(format!("{} has {}'s merges already (head {})", sync.base, sync.from, short(&head))).await;
            return Ok(head);
        }
        let numbers = self.merge.iter().map(|n| format!("#{n}")).collect::<Vec<_>>().join(", ");
        let body = json!({
            "base": sync.base,
            "head": sync.from,
            "commit_message": format!("Merge {} into {} ({}: {numbers})", sync.from, sync.base, cx.step),
        });
        let answer = gh.call(Method::POST, "/merges", Some(&body)).await?;
        match answer.status {
            201 => {
                let sha = answer.body["sha"]
                    .as_str()
                    .map(String::from)
                    .ok_or_else(|| gh.unexpected("merging branches", &answer))?;
                cx.log(format!("merged {} into {} as {}", sync.from, sync.base, short(&sha))).await;
                Ok(sha)
            }
            204 => gh.branch_head(&sync.base).await,
            409 => Err(StepError::fatal(
                format!("merging {} into {} conflicts ({})", sync.from, sync.base, answer.message()),
                format!(
                    "merge it by hand (git switch {} && git merge origin/{}, resolve, push), then: {}",
                    sync.base,
                    sync.from,
                    cx.retry_hint()
                ),
            )),
            404 => Err(gh.not_found(&format!("branch {} or {} ({})", sync.base, sync.from, answer.message()))),
            _ => Err(gh.unexpected(&format!("merging {} into {}", sync.from, sync.base), &answer)),
        }
    }

    /// Waits, bounded by `checks_within`, for the checks of `sha` to finish green.
    async fn wait_for_checks(&self, gh: &GitHub, cx: &StepContext, branch: &str, sha: &str) -> Result<(), StepError> {
        let started = std::time::Instant::now();
        let limit = Duration::from_secs(self.checks_within);
        let mut pause = Duration::from_millis(200);
        loop {
            match gh.checks(sha).await? {
                Checks::Green => {
                    cx.log(format!("checks of {branch} at {} are green", short(sha))).await;
                    return Ok(());
                }
                Checks::Failed(what) => {
                    return Err(StepError::fatal(
                        format!("the checks of {branch} at {} failed: {what}", short(sha)),
                        format!(
                            "the merged changes break CI on {branch}: fix it there (or revert), then: {}",
                            cx.retry_hint()
                        ),
                    ));
                }
                Checks::Pending(what) => {
                    let elapsed = started.elapsed();
                    if elapsed >= limit {
                        return Err(StepError::fatal(
                            format!(
                                "the checks of {branch} at {} did not finish within {}s: {what}",
                                short(sha),
                                self.checks_within
                            ),
                            format!("look at CI on GitHub; {} waits for them again", cx.retry_hint()),
                        ));
                    }
                    cx.progress(&format!("checks of {branch} at {}: {what}", short(sha))).await;
                    tokio::time::sleep(pause.min(limit - elapsed)).await;
                    pause = (pause * 3 / 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

impl Step for Params {
    const KIND: &'static str = "pull_request";
    const OUTPUTS: Option<&'static [&'static str]> = Some(&["merged", "feature_head"]);

    fn validate(&self) -> Result<(), String> {
        super::check_wait("checks_within", self.checks_within)?;
        reach::check_http_url("api", &self.api)?;
        check_repo(&self.repo)?;
        if self.merge.is_empty() && self.sync.is_none() {
            return Err("nothing to do: list PRs in `merge = [...]`, or give `sync = { base, from }`".into());
        }
        for (i, n) in self.merge.iter().enumerate() {
            if *n == 0 {
                return Err("merge: PR numbers start at 1".into());
            }
            if self.merge[..i].contains(n) {
                return Err(format!("merge lists PR #{n} twice"));
            }
        }
        for excluded in &self.not {
            if self.merge.contains(&excluded.number) {
                return Err(format!(
                    "PR #{} is in both `merge` and `not` ({}): take it out of one",
                    excluded.number, excluded.why
                ));
            }
            if excluded.why.trim().is_empty() {
                return Err(format!("not: say why PR #{} is not merged (why = \"...\")", excluded.number));
            }
        }
        match &self.token {
            SecretSource::Ssm(name) => super::ssm_params::check_parameter_name("token.ssm", name)?,
            SecretSource::Env(var) => {
                if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err("token.env is not an environment variable name (its value is not shown)".into());
                }
            }
        }
        if let Some(sync) = &self.sync {
            check_branch("sync.base", &sync.base)?;
            check_branch("sync.from", &sync.from)?;
            if sync.base == sync.from {
                return Err(format!("sync merges {} into itself: name two branches", sync.base));
            }
        }
        if self.checks_within == 0 {
            return Err("checks_within = 0 leaves no time for the checks: give seconds, e.g. 600".into());
        }
        Ok(())
    }

    async fn preflight(&self, cx: &StepContext) -> Result<(), StepError> {
        self.check_access(cx).await
    }

    fn converge_within(&self) -> Duration {
        Duration::from_secs(self.checks_within + 30)
    }

    async fn probe(&self, cx: &StepContext) -> Result<Probe, StepError> {
        let gh = self.github(cx).await?;
        let mut left = Vec::new();
        let mut pulls = Vec::new();
        for &number in &self.merge {
            let pull = gh.pull(number).await?;
            if !pull.merged {
                if pull.state != "open" {
                    return Ok(Probe::Conflict(format!(
                        "PR #{number} ({}) was closed without being merged: reopen it, or take it out of `merge`",
                        pull.title
                    )));
                }
                left.push(format!("merge PR #{number} ({})", pull.title));
            }
            pulls.push(pull);
        }
        let mut feature_head = String::new();
        if let Some(sync) = &self.sync {
            if !left.is_empty() {
                left.push(format!("then merge {} into {} and wait for its checks", sync.from, sync.base));
            } else {
                let mut missing = false;
                for target in self.sync_targets(sync, &pulls) {
                    missing |= !gh.contains(&sync.base, &target).await?;
                }
                feature_head = gh.branch_head(&sync.base).await?;
                if missing {
                    left.push(format!("merge {} into {} and wait for its checks", sync.from, sync.base));
                } else {
                    match gh.checks(&feature_head).await? {
                        Checks::Green => {}
                        Checks::Pending(what) => left.push(format!(
                            "wait for the checks of {} at {}: {what}",
                            sync.base,
                            short(&feature_head)
                        )),
                        Checks::Failed(what) => {
                            return Ok(Probe::Conflict(format!(
                                "{} has {}'s merges, but its checks at {} failed: {what}",
                                sync.base,
                                sync.from,
                                short(&feature_head)
                            )));
                        }
                    }
                }
            }
        }
        if left.is_empty() {
            Ok(Probe::Satisfied(self.outputs(&feature_head)))
        } else {
            Ok(Probe::Absent(left.join("; ")))
        }
    }

    async fn apply(&self, cx: &StepContext) -> Result<(), StepError> {
        let gh = self.github(cx).await?;
        let ready = self.preconditions(&gh, cx).await?;
        for excluded in &self.not {
            cx.log(format!("PR #{} is left unmerged: {}", excluded.number, excluded.why)).await;
        }
        let mut merged = Vec::new();
        for pr in &ready {
            self.merge_one(&gh, cx, pr, &merged).await?;
            cx.checkpoint(&format!("after-merge-{}", pr.number));
            merged.push(pr.number);
        }
        if let Some(sync) = &self.sync {
            let head = self.sync(&gh, cx, sync).await?;
            cx.checkpoint("after-sync");
            self.wait_for_checks(&gh, cx, &sync.base, &head).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
