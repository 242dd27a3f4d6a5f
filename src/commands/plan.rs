//! `runbook plan`: every probe, read-only, and what would change.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{CliError, EnvArg, Globals, Outcome, VarArgs, parse_vars, work_dir};
use crate::cloud::Cloud;
use crate::environment::Environment;
use crate::recorder::Recorder;
use crate::reporter::{self, Mode};
use crate::runbook::Runbook;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The runbook's name: a file runbooks/NAME.toml (sprint-2, sprint-3, rollback).
    pub(crate) runbook: String,
    #[command(flatten)]
    pub(crate) env: EnvArg,
    #[command(flatten)]
    pub(crate) vars: VarArgs,
}

impl Args {
    pub(crate) async fn execute(self, g: &Globals) -> Result<Outcome, CliError> {
        plan(g, &self.runbook, &self.env.env, parse_vars(&self.vars.vars)?).await
    }
}

pub(crate) async fn plan(
    g: &Globals,
    runbook: &str,
    env: &str,
    vars: BTreeMap<String, String>,
) -> Result<Outcome, CliError> {
    let env = Environment::load(&g.project, env)?;
    let book = Runbook::load(&g.project, runbook, &env, &vars)?;
    book.check_files(&g.project)?;
    let cloud = Cloud::connect(&env).await;
    cloud.preflight(&env).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let reporter = reporter::spawn(if g.mode == Mode::Json { Mode::Json } else { Mode::Plain }, rx);
    let services = Arc::new(g.services(Arc::new(env), Arc::new(cloud), work_dir(&g.state)?, None));
    let lines = crate::engine::plan(&book, services, Recorder::new(None, tx)).await;
    let _ = reporter.await;
    Ok(Outcome::Plan(lines))
}
