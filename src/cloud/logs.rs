//! CloudWatch Logs' one read runbook makes (`diagnose`'s ERROR lines), as a JSON POST:
//! `aws-sdk-cloudwatchlogs` is not built for it.

use std::sync::Arc;

use serde_json::json;

use super::query::{QueryClient, QueryError, Shared, next_token};

pub(crate) struct Logs(QueryClient);

/// A log event: when (ms since the epoch) and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogEvent {
    pub(crate) timestamp: i64,
    pub(crate) message: String,
}

impl Logs {
    pub(crate) fn new(shared: &Arc<Shared>, endpoint: Option<&str>) -> Self {
        Logs(QueryClient::new(shared, "logs", "", endpoint))
    }

    /// One page of `logs:FilterLogEvents` in `group` since `since` (ms) matching `pattern`: its
    /// events and the token of the next page, if there is one. `ResourceNotFoundException` when
    /// the group does not exist.
    pub(crate) async fn filter(
        &self,
        group: &str,
        since: i64,
        pattern: &str,
        token: Option<&str>,
    ) -> Result<(Vec<LogEvent>, Option<String>), QueryError> {
        let mut asked = json!({ "logGroupName": group, "startTime": since, "filterPattern": pattern });
        if let Some(token) = token {
            asked["nextToken"] = json!(token);
        }
        let page = self.0.json("Logs_20140328.FilterLogEvents", &asked).await?;
        let events = match &page["events"] {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::Array(events) => events
                .iter()
                .map(|e| match (e["timestamp"].as_i64(), e["message"].as_str()) {
                    (Some(timestamp), Some(message)) => Ok(LogEvent { timestamp, message: message.to_string() }),
                    _ => Err(QueryError::Transport(format!("an event that is not CloudWatch Logs': {e}"))),
                })
                .collect::<Result<_, _>>()?,
            other => return Err(QueryError::Transport(format!("events that are not CloudWatch Logs': {other}"))),
        };
        Ok((events, next_token("FilterLogEvents", page["nextToken"].as_str(), token)?))
    }
}
