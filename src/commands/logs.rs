//! `runbook logs`: what a step printed, per attempt.

use super::{CliError, Globals, Outcome};
use crate::state::{AttemptRow, StateDb};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The step's id, as in the runbook (e.g. T2.4).
    pub(crate) step: String,
    /// The attempt to show, counted from 1 (default: the last).
    #[arg(long)]
    pub(crate) attempt: Option<i64>,
    /// The run the step belongs to (default: the last run).
    #[arg(long)]
    pub(crate) run: Option<i64>,
}

impl Args {
    pub(crate) fn execute(self, g: &Globals) -> Result<Outcome, CliError> {
        logs(g, &self.step, self.attempt, self.run)
    }
}

pub(crate) fn logs(g: &Globals, step: &str, attempt: Option<i64>, run: Option<i64>) -> Result<Outcome, CliError> {
    let db = StateDb::existing(&g.state, true)?;
    let row = db.run_or_latest(run)?;
    let steps: Vec<String> = db.steps(row.id)?.into_iter().map(|s| s.step).collect();
    if !steps.iter().any(|s| s == step) {
        return Err(CliError::Usage(format!(
            "run {} has no step {step}; its steps: {}",
            row.id,
            if steps.is_empty() { "none".into() } else { steps.join(", ") }
        )));
    }
    let attempts = db.attempts(row.id, step)?;
    let have: Vec<String> = attempts.iter().map(|a| a.attempt.to_string()).collect();
    let chosen: Vec<AttemptRow> = match attempt {
        Some(n) => attempts.into_iter().filter(|a| a.attempt == n).collect(),
        None => attempts.into_iter().last().into_iter().collect(),
    };
    if chosen.is_empty() {
        return Err(CliError::Usage(format!(
            "run {} has no attempt {} of step {step}; attempts: {}",
            row.id,
            attempt.map(|a| a.to_string()).unwrap_or_else(|| "at all".into()),
            if have.is_empty() { "none".into() } else { have.join(", ") }
        )));
    }
    Ok(Outcome::Logs { run: row.id, step: step.to_string(), attempts: chosen })
}
