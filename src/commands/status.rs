//! `runbook status`: a run's steps, attempts, durations and last errors.

use super::{CliError, Globals, Outcome};
use crate::identity::host;
use crate::state::StateDb;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The run to show (default: the last run).
    pub(crate) run: Option<i64>,
}

impl Args {
    pub(crate) fn execute(self, g: &Globals) -> Result<Outcome, CliError> {
        status(g, self.run)
    }
}

pub(crate) fn status(g: &Globals, run: Option<i64>) -> Result<Outcome, CliError> {
    let db = StateDb::existing(&g.state, true)?;
    Ok(Outcome::Status(crate::status::view(&db, run, &host())?))
}
