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
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};

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

/// A pull request as `GET /repos/{o}/{r}/pulls/{n}` describes it (the fields used here).
#[derive(Debug, Clone, Deserialize)]
struct Pull {
    state: String,
    #[serde(default)]
    merged: bool,
    /// `None` while GitHub is still computing it.
    mergeable: Option<bool>,
    #[serde(default)]
    mergeable_state: String,
    #[serde(default)]
    draft: bool,
    title: String,
    head: GitRef,
    base: GitRef,
    merge_commit_sha: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct GitRef {
    #[serde(rename = "ref")]
    name: String,
    sha: String,
}

/// What the checks of a commit say: check runs and the combined commit status together.
#[derive(Debug, PartialEq, Eq)]
enum Checks {
    Green,
    /// Not finished, or not reported yet.
    Pending(String),
    /// At least one finished without success; names them.
    Failed(String),
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

/// An authenticated client of one repository's REST API.
struct GitHub {
    client: reqwest::Client,
    api: String,
    repo: String,
    token: Secret<String>,
    /// Where the token came from and how to replace it, for a 401.
    token_fix: String,
    /// Where a wait for GitHub's rate limit is said: the step's log (recorder, step, attempt).
    log: Option<(crate::recorder::Recorder, String, u32)>,
}

/// The longest wait for GitHub's rate limit that a step sits through; a later reset fails the
/// step with the time to retry.
const RATE_LIMIT_WAIT_MAX: Duration = Duration::from_secs(120);

/// How long GitHub asks to wait before the next request: `retry-after` (seconds), else until
/// `x-ratelimit-reset` (epoch seconds, `now_s` the clock), else a minute (GitHub's advice for a
/// secondary limit without either header). Never negative.
fn rate_limit_wait(retry_after: Option<&str>, reset: Option<&str>, now_s: i64) -> Duration {
    if let Some(seconds) = retry_after.and_then(|v| v.trim().parse::<u64>().ok()) {
        return Duration::from_secs(seconds);
    }
    match reset.and_then(|v| v.trim().parse::<i64>().ok()) {
        Some(at) => Duration::from_secs(u64::try_from(at.saturating_sub(now_s)).unwrap_or(0).saturating_add(1)),
        None => Duration::from_secs(60),
    }
}

/// GitHub's rate limit stopped a request: what, and how long GitHub asks to wait.
struct RateLimited {
    message: String,
    wait: Duration,
}

/// A status and JSON body (`Null` when empty) the caller interprets.
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("no message")
    }
}

impl GitHub {
    /// `method` on `/repos/{repo}{path}`. Transport trouble, 5xx, 429 and rate limits are
    /// retryable; 401 and other 403s are fatal with the fix; the rest is the caller's.
    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Answer, StepError> {
        let mut waited = 0;
        loop {
            match self.call_once(method.clone(), path, body).await {
                Err(RateLimited { message, wait }) if waited < 2 && wait <= RATE_LIMIT_WAIT_MAX => {
                    waited += 1;
                    if let Some((recorder, step, attempt)) = &self.log {
                        let line = format!("{message}: waiting {} s as GitHub asks, then trying again", wait.as_secs());
                        recorder
                            .emit(crate::event::Event::StepLog { step: step.clone(), attempt: *attempt, line })
                            .await;
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(RateLimited { message, wait }) => {
                    let at = crate::clock::format_utc(crate::clock::now_ms() + wait.as_millis() as i64);
                    return Err(StepError::retryable(format!(
                        "{message}: GitHub asks to wait {} s (until {at}), longer than runbook waits in a step",
                        wait.as_secs()
                    )));
                }
                Ok(answer) => return answer,
            }
        }
    }

    /// One request; `Err` when GitHub's rate limit stopped it, with how long to wait.
    async fn call_once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Result<Answer, StepError>, RateLimited> {
        let url = format!("{}/repos/{}{path}", self.api, self.repo);
        let what = format!("GitHub {method} /repos/{}{path}", self.repo);
        let Ok(mut auth) = HeaderValue::from_str(&format!("Bearer {}", self.token.expose())) else {
            return Ok(Err(StepError::fatal("the GitHub token is not a valid header value", self.token_fix.clone())));
        };
        auth.set_sensitive(true);
        let mut request = self
            .client
            .request(method, &url)
            .header(AUTHORIZATION, auth)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Ok(Err(StepError::retryable(format!("{what}: {}", crate::error_chain::error_chain(&e))))),
        };
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let rate_limited = header("x-ratelimit-remaining").as_deref() == Some("0");
        let wait = rate_limit_wait(
            header("retry-after").as_deref(),
            header("x-ratelimit-reset").as_deref(),
            crate::clock::now_ms() / 1000,
        );
        let text = match response.text().await {
            Ok(text) => text,
            Err(e) => {
                return Ok(Err(StepError::retryable(format!("{what}: HTTP {status}, the body was cut off: {e}"))));
            }
        };
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|_| json!({"message": text.chars().take(200).collect::<String>()}))
        };
        let answer = Answer { status, body };
        Ok(match status {
            401 => Err(StepError::fatal(
                format!("the GitHub token was refused by {} (401 {}) on {what}", self.api, answer.message()),
                self.token_fix.clone(),
            )),
            403 | 429 if rate_limited || status == 429 || answer.message().contains("rate limit") => {
                let message = format!("{what}: GitHub's rate limit ({status} {})", answer.message());
                return Err(RateLimited { message, wait });
            }
            403 => Err(StepError::fatal(
                format!("{what}: GitHub refused it (403 {})", answer.message()),
                format!(
                    "the token needs read and write access to the contents and pull requests of {} (and to \
                     workflows: these PRs change .github/workflows; a classic token's `workflow` scope), checks and \
                     commit statuses: read; give it that, then retry",
                    self.repo
                ),
            )),
            500..=599 => Err(StepError::retryable(format!("{what}: HTTP {status} {}", answer.message()))),
            _ => Ok(answer),
        })
    }

    async fn get(&self, path: &str) -> Result<Answer, StepError> {
        self.call(Method::GET, path, None).await
    }

    fn not_found(&self, what: &str) -> StepError {
        StepError::fatal(
            format!("GitHub has no {what} in {} at {} (404)", self.repo, self.api),
            "check `repo`, the PR numbers and the branch names in the runbook; a token without access to a \
             private repository also reads 404",
        )
    }

    fn unexpected(&self, what: &str, answer: &Answer) -> StepError {
        StepError::Fatal {
            message: format!("{what}: GitHub answered HTTP {} {}", answer.status, answer.message()),
            fix: None,
        }
    }

    async fn pull(&self, number: u64) -> Result<Pull, StepError> {
        let answer = self.get(&format!("/pulls/{number}")).await?;
        match answer.status {
            200 => serde_json::from_value(answer.body).map_err(|e| StepError::Fatal {
                message: format!("GitHub's answer for PR #{number} is not a pull request: {e}"),
                fix: None,
            }),
            404 => Err(self.not_found(&format!("PR #{number}"))),
            _ => Err(self.unexpected(&format!("reading PR #{number}"), &answer)),
        }
    }

    /// The PR once GitHub has computed whether it can be merged (it answers `null` meanwhile).
    async fn pull_with_mergeable(&self, number: u64) -> Result<Pull, StepError> {
        let mut pause = Duration::from_millis(250);
        for _ in 0..12 {
            let pull = self.pull(number).await?;
            if pull.state != "open" || pull.mergeable.is_some() {
                return Ok(pull);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 3 / 2).min(Duration::from_secs(2));
        }
        Err(StepError::retryable(format!("GitHub is still computing whether PR #{number} can be merged")))
    }

    async fn branch_head(&self, branch: &str) -> Result<String, StepError> {
        let answer = self.get(&format!("/branches/{branch}")).await?;
        match answer.status {
            200 => answer.body["commit"]["sha"]
                .as_str()
                .map(String::from)
                .ok_or_else(|| self.unexpected(&format!("reading branch {branch}"), &answer)),
            404 => Err(self.not_found(&format!("branch {branch}"))),
            _ => Err(self.unexpected(&format!("reading branch {branch}"), &answer)),
        }
    }

    /// Does `branch` contain `commit` (a SHA or a branch)? Compare `commit...branch`: the branch
    /// is not behind it.
    async fn contains(&self, branch: &str, commit: &str) -> Result<bool, StepError> {
        let answer = self.get(&format!("/compare/{commit}...{branch}")).await?;
        match answer.status {
            200 => answer.body["behind_by"]
                .as_u64()
                .map(|behind| behind == 0)
                .ok_or_else(|| self.unexpected(&format!("comparing {commit}...{branch}"), &answer)),
            404 => Err(self.not_found(&format!("{commit} or branch {branch}"))),
            _ => Err(self.unexpected(&format!("comparing {commit}...{branch}"), &answer)),
        }
    }

    /// Check runs and commit statuses of `sha`. GitHub reads "pending" for a commit without any
    /// commit status, so an empty status list counts for nothing.
    async fn checks(&self, sha: &str) -> Result<Checks, StepError> {
        let runs = self.get(&format!("/commits/{sha}/check-runs?per_page=100")).await?;
        if runs.status != 200 {
            return Err(self.unexpected(&format!("reading the check runs of {}", short(sha)), &runs));
        }
        let status = self.get(&format!("/commits/{sha}/status")).await?;
        if status.status != 200 {
            return Err(self.unexpected(&format!("reading the commit status of {}", short(sha)), &status));
        }
        let (mut failed, mut pending) = (Vec::new(), Vec::new());
        let runs = runs.body["check_runs"].as_array().cloned().unwrap_or_default();
        for run in &runs {
            let name = run["name"].as_str().unwrap_or("?");
            match (run["status"].as_str().unwrap_or("?"), run["conclusion"].as_str()) {
                ("completed", Some("success" | "neutral" | "skipped")) => {}
                ("completed", conclusion) => {
                    failed.push(format!("check `{name}` is {}", conclusion.unwrap_or("without conclusion")))
                }
                (status, _) => pending.push(format!("check `{name}` is {status}")),
            }
        }
        let statuses = status.body["statuses"].as_array().cloned().unwrap_or_default();
        for s in &statuses {
            let context = s["context"].as_str().unwrap_or("?");
            match s["state"].as_str().unwrap_or("?") {
                "success" => {}
                "pending" => pending.push(format!("status `{context}` is pending")),
                state => failed.push(format!("status `{context}` is {state}")),
            }
        }
        Ok(if !failed.is_empty() {
            Checks::Failed(failed.join(", "))
        } else if runs.is_empty() && statuses.is_empty() {
            Checks::Pending("no checks reported yet".into())
        } else if !pending.is_empty() {
            Checks::Pending(pending.join(", "))
        } else {
            Checks::Green
        })
    }
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
