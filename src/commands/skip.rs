//! `runbook skip`: mark a step done without running it, the reason in the audit.

use super::{CliError, Globals, Outcome, reopen, take_lock};
use crate::event::Event;
use crate::identity::{host, operator};
use crate::state::{Holder, StateDb};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The step's id, as in the runbook (e.g. T2.7).
    pub(crate) step: String,
    /// Why, for the audit log (required).
    #[arg(long)]
    pub(crate) reason: String,
    /// The run the step belongs to (default: the last run).
    #[arg(long)]
    pub(crate) run: Option<i64>,
}

impl Args {
    pub(crate) fn execute(self, g: &Globals) -> Result<Outcome, CliError> {
        skip(g, &self.step, &self.reason, self.run)
    }
}

pub(crate) fn skip(g: &Globals, step: &str, reason: &str, run: Option<i64>) -> Result<Outcome, CliError> {
    if reason.trim().is_empty() {
        return Err(CliError::Usage("--reason must say why the step is skipped; it goes into the audit log".into()));
    }
    let mut db = StateDb::existing(&g.state, false)?;
    let (row, book, _, _) = reopen(g, &db, run)?;
    book.step(step)?;
    let me = Holder::me(&host());
    let takeover = take_lock(&mut db, &me)?;
    let skipped = Event::StepSkipped {
        step: step.to_string(),
        reason: reason.to_string(),
        operator: operator(),
        host: me.host.clone(),
    };
    let recorded = takeover.iter().chain([&skipped]).try_for_each(|event| db.record(Some(row.id), event));
    let released = db.release_lock(&me);
    recorded.and(released).map_err(|source| CliError::Recorded { run: row.id, source })?;
    Ok(Outcome::Skipped { run: row.id, step: step.to_string(), reason: reason.to_string() })
}
