//! The one CloudWatch call runbook makes, over the query protocol: the alarms of a prefix
//! (T2.8's validation). Its SDK crate was pinned at `=1.99.0` without a word and pulled a second
//! set of `aws-smithy-*` crates into the build; the query protocol is one AWS and moto both answer.

use std::sync::Arc;

use super::query::{QueryClient, QueryError, Shared};

pub(crate) struct CloudWatch(QueryClient);

/// An alarm: its name and state (`OK`, `ALARM`, `INSUFFICIENT_DATA`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Alarm {
    pub(crate) name: String,
    pub(crate) state: String,
}

impl CloudWatch {
    pub(crate) fn new(shared: &Arc<Shared>, endpoint: Option<&str>) -> Self {
        CloudWatch(QueryClient::new(shared, "monitoring", "2010-08-01", endpoint))
    }

    /// The metric alarms whose names start with `prefix` (`cloudwatch:DescribeAlarms`), all pages.
    pub(crate) async fn alarms(&self, prefix: &str) -> Result<Vec<Alarm>, QueryError> {
        let params = [("AlarmNamePrefix".to_string(), prefix.to_string())];
        let pages = self.0.pages("DescribeAlarms", &params).await?;
        pages
            .iter()
            .flat_map(|p| p.result().list("MetricAlarms"))
            .map(|a| match (a.text("AlarmName"), a.text("StateValue")) {
                (Some(name), Some(state)) => Ok(Alarm { name: name.to_string(), state: state.to_string() }),
                _ => Err(QueryError::Transport("an alarm without its name or state: not CloudWatch's answer".into())),
            })
            .collect()
    }
}
