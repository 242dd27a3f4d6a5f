//! `wait`: a durable wait. Its deadline is `from` (an instant an upstream step gives, such as
//! when a key was published) or, without one, when the wait first starts, plus `seconds`; it
//! is recorded before the wait begins. A resumed run, on this host or another, waits only
//! what is left, and goes on at once when the deadline has passed. The deadline is judged by
//! the state's clock (the server's on PostgreSQL), so that a laptop whose clock is wrong
//! neither shortens nor stretches it.
//!
//! ```toml
//! [[steps]]
//! id = "T4.4"
//! title = "Wait until every cache of the JWKS holds both kids"
//! kind = "wait"
//! needs = ["T4.3"]
//! [steps.params]
//! seconds = "${vars.jwks_cache_ttl_seconds}"
//! why = "the JWKS caches to expire"            # "wait … for <why>"
//! from = "${steps.T4.2.published_at}"          # optional: a re-run after success goes on at once
//! ```

use std::time::Duration;

use serde::Deserialize;

use super::{Probe, Step, StepContext, StepError, check_wait, from_upstream, number_or_text};
use crate::clock::{format_duration, format_utc, parse_utc, until};
use crate::event::{Event, Outputs};

/// How often a wait reads the clock again, says where it stands, and looks whether the run
/// may go on (a lock another operator broke stops it within this).
const TICK: Duration = Duration::from_secs(5);

/// A wait at least this long (seconds) is announced on the webhook when it starts and ends.
pub(crate) const LONG_WAIT_S: u64 = 300;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {
    /// How long, from `from` or from when the wait first starts.
    #[serde(deserialize_with = "number_or_text")]
    seconds: u64,
    /// What the wait is for, completing "wait … for": said in the log, `status` and the webhook.
    why: String,
    /// The instant the wait counts from, in UTC (`2026-12-06T14:05:00Z`); empty: when it starts.
    #[serde(default)]
    from: String,
}

impl Params {
    /// The deadline this run recorded for the step since it was last reset, if any.
    async fn recorded(&self, cx: &StepContext) -> Result<Option<i64>, StepError> {
        let events = cx
            .recorder
            .recorded(&cx.step, "wait_started")
            .await
            .map_err(|e| StepError::retryable(format!("cannot read the deadline recorded so far: {e}")))?;
        Ok(events.iter().rev().find_map(|e| match e {
            Event::WaitStarted { until_ms, .. } => Some(*until_ms),
            _ => None,
        }))
    }

    /// `from` in ms since the epoch; `None` when it is not given.
    fn counts_from(&self) -> Result<Option<i64>, StepError> {
        if self.from.trim().is_empty() {
            return Ok(None);
        }
        parse_utc(self.from.trim()).map(Some).ok_or_else(|| {
            StepError::fatal(
                format!("from = {:?} is not an instant in UTC such as 2026-12-06T14:05:00Z", self.from),
                "give `from` an instant in UTC (an upstream step's output), or leave it out: the wait then \
                 counts from when it starts",
            )
        })
    }

    fn span_ms(&self) -> i64 {
        self.seconds as i64 * 1000
    }

    /// `, then T4.5`, or nothing for a last step.
    fn then(cx: &StepContext) -> String {
        match cx.then() {
            [] => String::new(),
            then => format!(", then {}", then.join(", ")),
        }
    }

    /// `until 14:05:00 UTC (in 42m00s) for the JWKS caches to expire, then T4.5`.
    fn standing(&self, cx: &StepContext, until_ms: i64, now: i64) -> String {
        format!("{} for {}{}", until(until_ms, Some(now), &[]), self.why, Self::then(cx))
    }

    /// Records the deadline, before any waiting; a deadline that cannot be recorded is not waited for.
    async fn record(&self, cx: &StepContext) -> Result<i64, StepError> {
        let start = match self.counts_from()? {
            Some(from) => from,
            None => cx.now_ms().await?,
        };
        let until_ms = start + self.span_ms();
        cx.recorder
            .emit(Event::WaitStarted {
                step: cx.step.clone(),
                attempt: cx.attempt,
                until_ms,
                seconds: self.seconds,
                why: self.why.clone(),
                then: cx.then().to_vec(),
            })
            .await;
        if let Some(e) = cx.recorder.write_error() {
            return Err(StepError::Fatal {
                message: format!("the wait's deadline could not be recorded: {e}"),
                fix: None,
            });
        }
        Ok(until_ms)
    }

    /// `run 12: T4.4`, for the webhook.
    fn who(cx: &StepContext) -> String {
        match cx.run() {
            Some(run) => format!("run {run}: {}", cx.step),
            None => cx.step.clone(),
        }
    }
}

impl Step for Params {
    const KIND: &'static str = "wait";
    const OUTPUTS: Option<&'static [&'static str]> = Some(&["waited_until"]);

    fn validate(&self) -> Result<(), String> {
        check_wait("seconds", self.seconds)?;
        if self.why.trim().is_empty() {
            return Err("why is empty: say what the wait is for (\"the JWKS caches to expire\")".into());
        }
        if self.why.chars().any(char::is_control) {
            return Err("why holds a control character: write it on one line, in plain text".into());
        }
        if !from_upstream(&self.from) {
            self.counts_from().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn converge_within(&self) -> Duration {
        TICK
    }

    /// Satisfied once the deadline (recorded, or `from` plus `seconds`) has passed by the
    /// state's clock; otherwise what is left.
    async fn probe(&self, cx: &StepContext) -> Result<Probe, StepError> {
        let deadline = match self.recorded(cx).await? {
            Some(until_ms) => Some(until_ms),
            None => self.counts_from()?.map(|from| from + self.span_ms()),
        };
        let Some(until_ms) = deadline else {
            return Ok(Probe::Absent(format!(
                "wait {} for {}{}",
                format_duration(self.span_ms()),
                self.why,
                Self::then(cx)
            )));
        };
        let now = cx.now_ms().await?;
        if now >= until_ms {
            return Ok(Probe::Satisfied(Outputs::from([("waited_until".to_string(), format_utc(until_ms))])));
        }
        Ok(Probe::Absent(format!("wait {}", self.standing(cx, until_ms, now))))
    }

    /// Records the deadline (once), then waits what is left of it, saying where it stands.
    async fn apply(&self, cx: &StepContext) -> Result<(), StepError> {
        let long = self.seconds >= LONG_WAIT_S;
        let until_ms = match self.recorded(cx).await? {
            Some(until_ms) => {
                cx.log(format!("the deadline was recorded before: {}", format_utc(until_ms))).await;
                until_ms
            }
            None => {
                let until_ms = self.record(cx).await?;
                cx.checkpoint("recorded");
                if long {
                    cx.announce(format!(
                        "runbook: {} waits {} for {}: {}",
                        Self::who(cx),
                        format_duration(self.span_ms()),
                        self.why,
                        until(until_ms, None, cx.then())
                    ))
                    .await;
                }
                until_ms
            }
        };
        loop {
            if let Some(why) = cx.recorder.write_error() {
                return Err(StepError::Fatal { message: format!("stopped waiting: {why}"), fix: None });
            }
            let now = cx.now_ms().await?;
            if now >= until_ms {
                break;
            }
            cx.progress(&format!("waiting {}", self.standing(cx, until_ms, now))).await;
            tokio::time::sleep(Duration::from_millis((until_ms - now) as u64).min(TICK)).await;
        }
        cx.log(format!("waited until {} for {}", format_utc(until_ms), self.why)).await;
        if long {
            let next = match cx.then() {
                [] => String::new(),
                then => format!("; {} goes on", then.join(", ")),
            };
            cx.announce(format!("runbook: {}: the wait for {} is over{next}", Self::who(cx), self.why)).await;
        }
        Ok(())
    }
}
