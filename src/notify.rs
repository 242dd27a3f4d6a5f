//! Webhook notifications: an environment may name a Slack-compatible webhook in its file
//! (`[notify] webhook = { ssm = "/runbook/armitage/SLACK_WEBHOOK" }` or `{ env = "VAR" }`);
//! runbook posts `{"text": "…"}` when a run fails, stops awaiting approval or is done, and on
//! each `watch` transition. The `[notify]` table is read and checked with the rest of the
//! environment file (`environment.rs`); this module resolves and posts.
//!
//! The URL is a secret (whoever has it can post to the channel): it is read from its home (an
//! SSM SecureString or the process environment) when it is needed, held as a `Secret`, and never
//! stored, logged or printed; no error message carries it. A webhook that fails is tried three
//! times and never fails a run or changes its exit code.

use std::net::SocketAddr;
use std::time::Duration;

use crate::clock::format_duration;
use crate::cloud::Cloud;
use crate::environment::{Environment, WebhookSource};
use crate::event::{RunState, StepState};
use crate::secret::Secret;
use crate::status::StatusView;

/// A webhook, ready to post to.
pub(crate) struct Notifier {
    url: Secret<String>,
    /// Where its host is dialled (the environment's address map; loopback on the ring).
    host: String,
    addr: SocketAddr,
    /// The pauses between the three tries.
    backoff: [Duration; 2],
}

const TIMEOUT: Duration = Duration::from_secs(5);

impl Notifier {
    /// The environment's webhook, or None when it names none. The URL is read from its home
    /// now; an error says what failed without the URL.
    pub(crate) async fn resolve(env: &Environment, cloud: Option<&Cloud>) -> Result<Option<Notifier>, String> {
        let Some(settings) = &env.notify else { return Ok(None) };
        let url = match &settings.webhook {
            WebhookSource::Env(var) => match std::env::var(var) {
                Ok(url) if !url.trim().is_empty() => Secret::new(url.trim().to_string()),
                _ => {
                    return Err(format!(
                        "the webhook URL is read from ${var} ([notify] of {}), which is not set",
                        env.path.display()
                    ));
                }
            },
            WebhookSource::Ssm(name) => {
                let cloud = match cloud {
                    Some(cloud) => cloud,
                    None => return Err(format!("the webhook URL is in SSM {name}, and AWS is not connected")),
                };
                match cloud.read_parameter(name).await {
                    Ok(Some(url)) if url.expose().trim() != "PLACEHOLDER" => {
                        Secret::new(url.expose().trim().to_string())
                    }
                    Ok(_) => {
                        return Err(format!(
                            "SSM parameter {name} ([notify] of {}) does not exist or is PLACEHOLDER; put the \
                             webhook URL there as a SecureString",
                            env.path.display()
                        ));
                    }
                    Err(e) => {
                        return Err(format!(
                            "cannot read SSM parameter {name}: {}",
                            crate::error_chain::error_chain(&e)
                        ));
                    }
                }
            }
        };
        Notifier::new(env, url).map(Some)
    }

    fn new(env: &Environment, url: Secret<String>) -> Result<Notifier, String> {
        let parsed = reqwest::Url::parse(url.expose())
            .map_err(|e| format!("the webhook URL is not a URL ({e}); it must be http:// or https://"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err("the webhook URL is not http:// or https://".into());
        }
        let host = parsed.host_str().ok_or("the webhook URL names no host")?.to_string();
        let port = parsed.port_or_known_default().unwrap_or(443);
        let addr = env.dial(&host, port).map_err(|e| format!("the webhook's host: {e}"))?;
        Ok(Notifier { url, host, addr, backoff: [Duration::from_millis(500), Duration::from_secs(1)] })
    }

    /// Posts `{"text": text}`, trying three times; the error names the last failure, never
    /// the URL.
    pub(crate) async fn send(&self, text: &str) -> Result<(), String> {
        let client = reqwest::Client::builder()
            .resolve(&self.host, self.addr)
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| self.redact(&e.without_url().to_string()))?;
        let body = serde_json::json!({ "text": text });
        let mut last = String::new();
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(self.backoff[attempt - 1]).await;
            }
            match client.post(self.url.expose()).json(&body).send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => last = format!("the webhook answered HTTP {}", response.status().as_u16()),
                Err(e) => last = format!("POST to the webhook: {}", crate::error_chain::error_chain(&e.without_url())),
            }
        }
        Err(format!("{} (tried 3 times)", self.redact(&last)))
    }

    /// Belt and braces: nothing that leaves here carries the URL or its path.
    fn redact(&self, text: &str) -> String {
        let mut text = text.replace(self.url.expose().as_str(), "***");
        if let Ok(url) = reqwest::Url::parse(self.url.expose()) {
            let path = url.path();
            if path.len() > 1 {
                text = text.replace(path, "/***");
            }
        }
        text
    }
}

/// What to post when a run ends: failed, stopped awaiting approval, or done. Nothing for an
/// interrupted run (the operator who pressed Ctrl-C knows).
pub(crate) fn run_message(run: i64, status: RunState, view: Option<&StatusView>) -> Option<String> {
    let (what, who) = match view {
        Some(v) => (
            format!("run {run} of {} on {}", v.run.runbook, v.run.env),
            format!(" ({}@{})", v.run.operator, v.run.host),
        ),
        None => (format!("run {run}"), String::new()),
    };
    let failed = view.and_then(|v| v.steps.iter().find(|s| s.row.state == StepState::Failed));
    match status {
        RunState::Done => {
            let took = view
                .and_then(|v| v.run.ended_at.map(|end| format!(" in {}", format_duration(end - v.run.started_at))))
                .unwrap_or_default();
            Some(format!("runbook: {what} is done{took}{who}"))
        }
        RunState::Failed | RunState::AwaitingApproval | RunState::Died | RunState::Running => {
            let Some(step) = failed else {
                return Some(format!("runbook: {what} failed{who}; runbook status shows where"));
            };
            let full = step.row.last_error.as_deref().unwrap_or("failed");
            if let Some(change) = full.strip_prefix("awaiting approval: ") {
                // The summary in the headline, then the change resource by resource.
                let (summary, resources) = change.split_once('\n').map_or((change, ""), |(s, r)| (s, r));
                let resources = if resources.is_empty() { String::new() } else { format!("\n{resources}") };
                return Some(format!(
                    "runbook: {what} stopped awaiting approval at {}: {summary}{who}; to apply it: {}{resources}",
                    step.row.step,
                    crate::hint::resume_approving(run)
                ));
            }
            let error = full.lines().next().unwrap_or_default();
            let next = step.next.as_deref().map(|n| format!("; next: {n}")).unwrap_or_default();
            Some(format!("runbook: {what} FAILED at {}: {error}{who}{next}", step.row.step))
        }
        RunState::Interrupted => None,
    }
}

/// Posts the end of a run, when the environment names a webhook. Returns what failed, for
/// the operator's terminal; the run's outcome is not changed by it.
pub(crate) async fn after_run(
    env: &Environment,
    cloud: &Cloud,
    run: i64,
    status: RunState,
    view: Option<&StatusView>,
) -> Option<String> {
    env.notify.as_ref()?;
    let text = run_message(run, status, view)?;
    post(env, cloud, &text).await.err()
}

/// Posts `text` to the environment's webhook, if it names one; `Err` says what failed,
/// without the URL.
pub(crate) async fn post(env: &Environment, cloud: &Cloud, text: &str) -> Result<(), String> {
    match Notifier::resolve(env, Some(cloud)).await? {
        Some(notifier) => notifier.send(text).await,
        None => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests;
