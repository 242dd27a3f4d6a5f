//! `runbook state copy`: a SQLite history moved into PostgreSQL.

use std::path::{Path, PathBuf};

use super::{CliError, Outcome};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// What to do with the state DB.
    #[command(subcommand)]
    pub(crate) action: StateAction,
}

#[derive(clap::Subcommand)]
pub(crate) enum StateAction {
    /// Copy every run, step, attempt, output and event of a SQLite state DB into an empty
    /// PostgreSQL one, keeping ids and order, in one transaction.
    Copy {
        /// The SQLite state DB file.
        #[arg(long, value_name = "FILE.db")]
        from: PathBuf,
        /// The PostgreSQL state DB: postgres://user@host:port/database?sslmode=verify-full
        #[arg(long, value_name = "URL")]
        to: PathBuf,
    },
}

impl Args {
    pub(crate) fn execute(self) -> Result<Outcome, CliError> {
        match self.action {
            StateAction::Copy { from, to } => state_copy(&from, &to),
        }
    }
}

/// `runbook state copy --from FILE.db --to postgres://…`.
pub(crate) fn state_copy(from: &Path, to: &Path) -> Result<Outcome, CliError> {
    Ok(Outcome::StateCopied(crate::state::copy(from, to)?))
}
