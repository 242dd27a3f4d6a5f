//! `runbook ring`: the local rehearsal ring's scripts.

use std::path::Path;

use super::{CliError, Globals, Outcome};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// setup installs the ring's parts, up starts it, down stops it, status shows it,
    /// reset empties it.
    #[arg(value_enum)]
    pub(crate) action: RingAction,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum RingAction {
    Setup,
    Up,
    Down,
    Status,
    Reset,
}

impl Args {
    pub(crate) fn execute(self, g: &Globals) -> Result<Outcome, CliError> {
        let name = match self.action {
            RingAction::Setup => "setup",
            RingAction::Up => "up",
            RingAction::Down => "down",
            RingAction::Status => "status",
            RingAction::Reset => "reset",
        };
        ring(&g.project, name)
    }
}

pub(crate) fn ring(project: &Path, action: &str) -> Result<Outcome, CliError> {
    let script = project.join("ring").join(format!("{action}.sh"));
    if !script.is_file() {
        return Err(CliError::Usage(format!(
            "{} not found: run runbook from the project folder or pass --project",
            script.display()
        )));
    }
    let status = std::process::Command::new("bash")
        .arg(&script)
        .status()
        .map_err(|e| CliError::Usage(format!("cannot run {}: {e}", script.display())))?;
    Ok(Outcome::Ring(status.code().unwrap_or(1)))
}
