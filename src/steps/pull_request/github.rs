//! The GitHub REST client of `pull_request`: one repository, an authenticated token that is
//! only ever sent in the `Authorization` header, retries for transport trouble, 5xx and rate
//! limits (waited out up to a bound, said in the step's log), and the reads the step judges
//! by: a pull request, a branch head, whether a branch contains a commit, a commit's checks.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};

use super::short;
use crate::secret::Secret;
use crate::steps::StepError;

/// A pull request as `GET /repos/{o}/{r}/pulls/{n}` describes it (the fields used here).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Pull {
    pub(super) state: String,
    #[serde(default)]
    pub(super) merged: bool,
    /// `None` while GitHub is still computing it.
    pub(super) mergeable: Option<bool>,
    #[serde(default)]
    pub(super) mergeable_state: String,
    #[serde(default)]
    pub(super) draft: bool,
    pub(super) title: String,
    pub(super) head: GitRef,
    pub(super) base: GitRef,
    pub(super) merge_commit_sha: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct GitRef {
    #[serde(rename = "ref")]
    pub(super) name: String,
    pub(super) sha: String,
}

/// What the checks of a commit say: check runs and the combined commit status together.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Checks {
    Green,
    /// Not finished, or not reported yet.
    Pending(String),
    /// At least one finished without success; names them.
    Failed(String),
}

/// An authenticated client of one repository's REST API.
pub(super) struct GitHub {
    pub(super) client: reqwest::Client,
    pub(super) api: String,
    pub(super) repo: String,
    pub(super) token: Secret<String>,
    /// Where the token came from and how to replace it, for a 401.
    pub(super) token_fix: String,
    /// Where a wait for GitHub's rate limit is said: the step's log (recorder, step, attempt).
    pub(super) log: Option<(crate::recorder::Recorder, String, u32)>,
}

/// The longest wait for GitHub's rate limit that a step sits through; a later reset fails the
/// step with the time to retry.
pub(super) const RATE_LIMIT_WAIT_MAX: Duration = Duration::from_secs(120);

/// How long GitHub asks to wait before the next request: `retry-after` (seconds), else until
/// `x-ratelimit-reset` (epoch seconds, `now_s` the clock), else a minute (GitHub's advice for a
/// secondary limit without either header). Never negative.
pub(super) fn rate_limit_wait(retry_after: Option<&str>, reset: Option<&str>, now_s: i64) -> Duration {
    if let Some(seconds) = retry_after.and_then(|v| v.trim().parse::<u64>().ok()) {
        return Duration::from_secs(seconds);
    }
    match reset.and_then(|v| v.trim().parse::<i64>().ok()) {
        Some(at) => Duration::from_secs(u64::try_from(at.saturating_sub(now_s)).unwrap_or(0).saturating_add(1)),
        None => Duration::from_secs(60),
    }
}

/// GitHub's rate limit stopped a request: what, and how long GitHub asks to wait.
pub(super) struct RateLimited {
    pub(super) message: String,
    pub(super) wait: Duration,
}

/// A status and JSON body (`Null` when empty) the caller interprets.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Value,
}

impl Answer {
    pub(super) fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("no message")
    }
}

impl GitHub {
    /// `method` on `/repos/{repo}{path}`. Transport trouble, 5xx, 429 and rate limits are
    /// retryable; 401 and other 403s are fatal with the fix; the rest is the caller's.
    pub(super) async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Answer, StepError> {
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
    pub(super) async fn call_once(
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

    pub(super) async fn get(&self, path: &str) -> Result<Answer, StepError> {
        self.call(Method::GET, path, None).await
    }

    pub(super) fn not_found(&self, what: &str) -> StepError {
        StepError::fatal(
            format!("GitHub has no {what} in {} at {} (404)", self.repo, self.api),
            "check `repo`, the PR numbers and the branch names in the runbook; a token without access to a \
             private repository also reads 404",
        )
    }

    pub(super) fn unexpected(&self, what: &str, answer: &Answer) -> StepError {
        StepError::Fatal {
            message: format!("{what}: GitHub answered HTTP {} {}", answer.status, answer.message()),
            fix: None,
        }
    }

    pub(super) async fn pull(&self, number: u64) -> Result<Pull, StepError> {
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
    pub(super) async fn pull_with_mergeable(&self, number: u64) -> Result<Pull, StepError> {
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

    pub(super) async fn branch_head(&self, branch: &str) -> Result<String, StepError> {
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
    pub(super) async fn contains(&self, branch: &str, commit: &str) -> Result<bool, StepError> {
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
    pub(super) async fn checks(&self, sha: &str) -> Result<Checks, StepError> {
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
