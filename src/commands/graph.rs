//! `runbook graph`: the dependency graph as DOT or Mermaid.

use std::collections::BTreeMap;

use super::{CliError, EnvArg, Globals, Outcome};
use crate::environment::Environment;
use crate::runbook::Runbook;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The runbook's name: a file runbooks/NAME.toml.
    pub(crate) runbook: String,
    /// DOT (Graphviz) or Mermaid.
    #[arg(long, value_enum, default_value = "dot")]
    pub(crate) format: GraphFormat,
    #[command(flatten)]
    pub(crate) env: EnvArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum GraphFormat {
    Dot,
    Mermaid,
}

impl Args {
    pub(crate) fn execute(self, g: &Globals) -> Result<Outcome, CliError> {
        graph(g, &self.runbook, &self.env.env, matches!(self.format, GraphFormat::Mermaid))
    }
}

/// The graph as DOT (`mermaid` false) or Mermaid.
pub(crate) fn graph(g: &Globals, runbook: &str, env: &str, mermaid: bool) -> Result<Outcome, CliError> {
    let env = Environment::load(&g.project, env)?;
    let book = Runbook::load(&g.project, runbook, &env, &BTreeMap::new())?;
    let titles: BTreeMap<String, String> = book.steps.iter().map(|s| (s.id.clone(), s.title.clone())).collect();
    Ok(Outcome::Graph(if mermaid { book.graph.to_mermaid(&titles) } else { book.graph.to_dot(&book.name, &titles) }))
}
