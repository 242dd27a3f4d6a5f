//! `runbook audit`: every operator decision of a run, or of all.

use super::{CliError, Globals, Outcome};
use crate::state::StateDb;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The run whose decisions to list (default: the last run).
    pub(crate) run: Option<i64>,
    /// The decisions of every run in the state DB.
    #[arg(long, conflicts_with = "run")]
    pub(crate) all: bool,
}

impl Args {
    pub(crate) fn execute(self, g: &Globals) -> Result<Outcome, CliError> {
        audit(g, self.run, self.all)
    }
}

/// `runbook audit`: the operator decisions of a run (default: the latest) or of all runs.
pub(crate) fn audit(g: &Globals, run: Option<i64>, all: bool) -> Result<Outcome, CliError> {
    let db = StateDb::existing(&g.state, true)?;
    Ok(Outcome::Audit(crate::history::audit(&db, run, all)?))
}
