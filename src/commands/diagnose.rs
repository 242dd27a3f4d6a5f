//! `runbook diagnose`: every read-only check of runbooks/diagnose.toml at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{CliError, EnvArg, Globals, Outcome, parse_vars};
use crate::cloud::Cloud;
use crate::environment::Environment;
use crate::runbook::Runbook;

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) env: EnvArg,
    /// Set a variable of runbooks/diagnose.toml: --var NAME=VALUE (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub(crate) vars: Vec<String>,
}

impl Args {
    pub(crate) async fn execute(self, g: &Globals) -> Result<Outcome, CliError> {
        diagnose(g, &self.env.env, parse_vars(&self.vars)?).await
    }
}

/// `runbook diagnose`: every check of `runbooks/diagnose.toml` at once, read-only. It takes no
/// run lock and opens no state DB, so it works while a deploy holds the lock; the runbook is
/// validated like any other (unknown keys, missing vars: exit 2).
pub(crate) async fn diagnose(g: &Globals, env: &str, vars: BTreeMap<String, String>) -> Result<Outcome, CliError> {
    let started = std::time::Instant::now();
    let findings = checks(g, env, &vars).await?;
    Ok(Outcome::Diagnosis { env: env.to_string(), findings, elapsed_ms: started.elapsed().as_millis() as u64 })
}

/// Every check's finding (`serve --env` keeps the latest for its health page).
pub(crate) async fn checks(
    g: &Globals,
    env: &str,
    vars: &BTreeMap<String, String>,
) -> Result<Vec<crate::steps::Finding>, CliError> {
    let env = Environment::load(&g.project, env)?;
    let book = Runbook::load(&g.project, "diagnose", &env, vars)?;
    let cloud = Cloud::connect(&env).await;
    cloud.preflight(&env).await?;
    // The checks only read: no plan or log file is ever written in the work folder given.
    let services = Arc::new(g.services(Arc::new(env), Arc::new(cloud), std::env::temp_dir(), None));
    crate::engine::diagnose(&book, services).await.map_err(CliError::Usage)
}
