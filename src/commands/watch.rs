//! `runbook watch`: Dixie's and Finn's health, a line a poll, an event a transition.

use super::{CliError, EnvArg, Globals, Outcome, shutdown_signal};
use crate::cloud::Cloud;
use crate::environment::Environment;

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) env: EnvArg,
    /// Time between polls: 30s (default, 002's), 500ms, 2m.
    #[arg(long)]
    pub(crate) interval: Option<String>,
    /// One poll; the exit code is the verdict.
    #[arg(long)]
    pub(crate) once: bool,
}

impl Args {
    /// Polls are given to `sink` as they come (the CLI prints them), not once it is done.
    pub(crate) async fn execute(self, g: &Globals, sink: &mut impl crate::watch::Sink) -> Result<Outcome, CliError> {
        watch(g, &self.env.env, self.interval.as_deref(), self.once, sink).await
    }
}

/// `runbook watch`: polls Dixie's and Finn's health every `interval` until Ctrl-C, or once,
/// handing each poll to `sink` as it comes. Read-only; each poll's transitions go to the
/// environment's webhook.
pub(crate) async fn watch(
    g: &Globals,
    env: &str,
    interval: Option<&str>,
    once: bool,
    sink: &mut impl crate::watch::Sink,
) -> Result<Outcome, CliError> {
    use crate::watch::{DEFAULT_INTERVAL, Targets, parse_interval};
    let env = Environment::load(&g.project, env)?;
    let targets = Targets::of(&env).map_err(CliError::Usage)?;
    let interval = interval.map(parse_interval).transpose().map_err(CliError::Usage)?.unwrap_or(DEFAULT_INTERVAL);
    let mut notifier = None;
    // One poll has no transition to tell.
    if !once && let Some(settings) = &env.notify {
        let cloud = match settings.webhook {
            crate::environment::WebhookSource::Ssm(_) => Some(Cloud::connect(&env).await),
            crate::environment::WebhookSource::Env(_) => None,
        };
        match crate::notify::Notifier::resolve(&env, cloud.as_ref()).await {
            Ok(resolved) => notifier = resolved,
            Err(e) => sink.notify_failed(&e),
        }
    }
    let max_polls = once.then_some(1);
    let verdict =
        crate::watch::watch(&env, &targets, interval, max_polls, notifier.as_ref(), shutdown_signal(), sink).await;
    Ok(Outcome::Watch { verdict, once })
}
