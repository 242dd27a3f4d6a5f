//! `runbook history`: the runs, newest first, by filter and page.

use super::{CliError, Globals, Outcome};
use crate::event::RunState;
use crate::identity::host;
use crate::state::StateDb;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Only runs of this runbook.
    #[arg(long)]
    pub(crate) runbook: Option<String>,
    /// Only runs on this environment.
    #[arg(long)]
    pub(crate) env: Option<String>,
    /// Only runs in this state.
    #[arg(long, value_parser = parse_run_state, value_name = "STATE")]
    pub(crate) status: Option<RunState>,
    /// Only runs started by this operator.
    #[arg(long)]
    pub(crate) operator: Option<String>,
    /// Only runs older than this run id: the next page (a full page says which id to give).
    #[arg(long, value_name = "RUN")]
    pub(crate) before: Option<i64>,
    /// How many runs to list (default 20).
    #[arg(long)]
    pub(crate) limit: Option<u32>,
}

/// A run state as `--status` takes it.
fn parse_run_state(text: &str) -> Result<RunState, String> {
    RunState::parse(&text.replace(['-', ' '], "_"))
        .ok_or_else(|| "one of: running, done, failed, awaiting_approval, interrupted, died".to_string())
}

impl Args {
    pub(crate) fn execute(self, g: &Globals) -> Result<Outcome, CliError> {
        let filter = crate::state::RunFilter {
            runbook: self.runbook.as_deref(),
            env: self.env.as_deref(),
            status: self.status,
            operator: self.operator.as_deref(),
        };
        history(g, &filter, self.before, self.limit)
    }
}

/// `runbook history`: runs newest first, read-only.
pub(crate) fn history(
    g: &Globals,
    filter: &crate::state::RunFilter<'_>,
    before: Option<i64>,
    limit: Option<u32>,
) -> Result<Outcome, CliError> {
    let limit = limit.unwrap_or(crate::history::DEFAULT_LIMIT);
    if limit == 0 {
        return Err(CliError::Usage("--limit 0 lists nothing: give 1 or more (default 20)".into()));
    }
    let db = StateDb::existing(&g.state, true)?;
    let page = crate::state::Page { before, limit };
    Ok(Outcome::History(crate::history::history(&db, filter, page, &host())?))
}
