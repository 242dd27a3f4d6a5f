//! `runbook plan`: every probe, read-only, and what would change.

use std::sync::Arc;

use super::{CliError, Globals, Loaded, Outcome, Target, work_dir};
use crate::cloud::Cloud;
use crate::recorder::Recorder;
use crate::reporter::{self, Mode};

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) target: Target,
}

impl Args {
    pub(crate) async fn execute(self, g: &Globals) -> Result<Outcome, CliError> {
        plan(g, self.target.load(g)?).await
    }
}

/// Every probe of what `Target::load` gave, read-only.
pub(crate) async fn plan(g: &Globals, loaded: Loaded) -> Result<Outcome, CliError> {
    let Loaded { env, book, .. } = loaded;
    let cloud = Cloud::connect(&env).await;
    cloud.preflight(&env).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let reporter = reporter::spawn(if g.mode == Mode::Json { Mode::Json } else { Mode::Plain }, rx);
    let services = Arc::new(g.services(Arc::new(env), Arc::new(cloud), work_dir(&g.state)?, None));
    let lines = crate::engine::plan(&book, services, Recorder::new(None, tx)).await;
    let _ = reporter.await;
    Ok(Outcome::Plan(lines))
}
