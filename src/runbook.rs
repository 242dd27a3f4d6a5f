//! A runbook file (`runbooks/<name>.toml`): its steps, their kinds, typed params and `needs`,
//! and the `${...}` references between them.
//!
//! Loading validates everything that can be known before a side effect: syntax, unknown
//! kinds and fields, missing variables, references to steps that are not upstream, cycles,
//! and `image_tag = "latest"`. It must not touch the cloud or the state DB.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::environment::Environment;
use crate::graph::Graph;
use crate::project::{LookupError, Named, NamedFile, sha256_hex};
use crate::steps::{self, AnyStep, Kind};

#[derive(Debug, thiserror::Error)]
pub(crate) enum RunbookError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{}: step {step}: unknown kind `{kind}`; known kinds: {}", path.display(), known.join(", "))]
    UnknownKind { path: PathBuf, step: String, kind: String, known: Vec<&'static str> },
    #[error("{}: step {step} ({kind}): params: {message}", path.display())]
    Params { path: PathBuf, step: String, kind: String, message: String },
    #[error(
        "{}: step {step}, field `{field}`: variable `{var}` is not defined; add `{var} = \"…\"` \
         to {where_to_define}, or pass --var {var}=…",
        path.display()
    )]
    MissingVar { path: PathBuf, step: String, field: String, var: String, where_to_define: String },
    #[error("{}: step {step}, field `{field}`: bad reference `{reference}`: {why}", path.display())]
    BadReference { path: PathBuf, step: String, field: String, reference: String, why: String },
    #[error(
        "{}: step {step} needs `{need}`, which is not a step of this runbook; steps: {}",
        path.display(),
        known.join(", ")
    )]
    UnknownNeed { path: PathBuf, step: String, need: String, known: Vec<String> },
    #[error("{}: dependency cycle: {}; remove one of these `needs`", path.display(), members.join(" → "))]
    Cycle { path: PathBuf, members: Vec<String> },
    #[error(
        "{where_}: image_tag = \"latest\" is refused: ECR tags are IMMUTABLE and `latest` cannot \
         be redeployed; use the git SHA (the default) or --var image_tag=<sha>"
    )]
    LatestTag { where_: String },
    #[error("no step `{step}` in runbook {runbook}; steps: {}", known.join(", "))]
    UnknownStep { step: String, runbook: String, known: Vec<String> },
}

/// One `[[steps]]` entry as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    id: String,
    title: String,
    kind: String,
    #[serde(default)]
    needs: Vec<String>,
    #[serde(default = "empty_table")]
    params: toml::Value,
}

fn empty_table() -> toml::Value {
    toml::Value::Table(toml::Table::new())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunbookFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    vars: BTreeMap<String, String>,
    steps: Vec<StepFile>,
}

/// A validated step: params with `${var}` and `${env.x}` resolved; `${steps.X.y}` kept for run
/// time, when the outputs of X exist.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub(crate) id: String,
    pub(crate) title: String,
    pub(crate) kind: String,
    pub(crate) needs: Vec<String>,
    pub(crate) params: toml::Value,
    /// The step as loading typed and validated it, upstream outputs read as
    /// [`steps::UPSTREAM`].
    without_inputs: Arc<dyn AnyStep>,
}

pub(crate) struct Runbook {
    pub(crate) name: String,
    #[allow(dead_code)] // for readers of the file; kept so that deny_unknown_fields accepts it
    pub(crate) description: String,
    pub(crate) path: PathBuf,
    pub(crate) steps: Vec<Step>,
    pub(crate) graph: Graph,
    /// sha256 of the runbook file: a resumed run says when it changed.
    pub(crate) hash: String,
    /// sha256 of the environment file and the `--var` overrides.
    pub(crate) inputs_hash: String,
    /// The kinds its steps are typed with.
    pub(crate) registry: &'static [Kind],
    /// The values of its vars, the `--var`s and the environment: a refusal that quotes one
    /// hides it when it looks like a secret ([`crate::secret::redact`]).
    given: Vec<String>,
}

impl Runbook {
    /// `runbooks/<name>.toml` of `project`, validated against `env` and the `--var` overrides.
    pub(crate) fn load(
        project: &Path,
        name: &str,
        env: &Environment,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Self, RunbookError> {
        let file = Named::Runbook.read(project, name)?;
        Self::from_file(steps::KINDS, file, name, env, overrides)
    }

    /// Validates a runbook file whose kinds come from `registry`; touches nothing.
    pub(crate) fn from_file(
        registry: &'static [Kind],
        file: NamedFile,
        name: &str,
        env: &Environment,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Self, RunbookError> {
        let path = file.path.clone();
        let parsed: RunbookFile =
            file.parse().map_err(|message| RunbookError::Parse { path: path.clone(), message })?;
        if parsed.name != name {
            return Err(RunbookError::Invalid {
                path,
                message: format!("the file says name = \"{}\" but is named {name}.toml; make them agree", parsed.name),
            });
        }
        if overrides.get("image_tag").is_some_and(|v| v == "latest") {
            return Err(RunbookError::LatestTag { where_: "--var image_tag".into() });
        }
        if let Some(var) = overrides.keys().find(|k| !parsed.vars.contains_key(*k)) {
            return Err(RunbookError::Invalid {
                path,
                message: format!(
                    "--var {var}: this runbook has no variable `{var}`; its variables: {}",
                    parsed.vars.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        if parsed.steps.is_empty() {
            return Err(RunbookError::Invalid {
                path,
                message: "the runbook has no steps; add [[steps]] entries".into(),
            });
        }
        let graph = check_shape(registry, &path, &parsed.steps)?;
        let kinds: BTreeMap<String, String> = parsed.steps.iter().map(|s| (s.id.clone(), s.kind.clone())).collect();
        let scope = Scope { path: &path, env, runbook_vars: &parsed.vars, overrides, kinds: &kinds, registry };
        let mut steps = Vec::with_capacity(parsed.steps.len());
        for step in parsed.steps {
            let mut params = step.params;
            scope.resolve(&step.id, "", &mut params, &graph)?;
            let kind = steps::find(registry, &step.kind).expect("kinds were checked");
            let without_inputs = kind.parse(&with_placeholders(&params)).map_err(|message| RunbookError::Params {
                path: path.clone(),
                step: step.id.clone(),
                kind: step.kind.clone(),
                message: redact(with_fix(message), &params, &scope.given()),
            })?;
            steps.push(Step {
                id: step.id,
                title: step.title,
                kind: step.kind,
                needs: step.needs,
                params,
                without_inputs: without_inputs.into(),
            });
        }
        let given = scope.given();
        let mut inputs = env.hash.clone();
        for (k, v) in overrides {
            inputs.push_str(&format!("\n{k}={v}"));
        }
        Ok(Runbook {
            name: parsed.name,
            description: parsed.description,
            path,
            steps,
            graph,
            hash: file.hash,
            inputs_hash: sha256_hex(inputs.as_bytes()),
            registry,
            given,
        })
    }

    /// Checks the files the steps will read (build contexts, terraform folders) in `project`:
    /// for commands that are about to run them, before anything is recorded.
    pub(crate) fn check_files(&self, project: &Path) -> Result<(), RunbookError> {
        for step in &self.steps {
            if let Err(message) = step.without_inputs().check_files(project) {
                return Err(RunbookError::Params {
                    path: self.path.clone(),
                    step: step.id.clone(),
                    kind: step.kind.clone(),
                    message: redact(message, &step.params, &self.given),
                });
            }
        }
        Ok(())
    }

    pub(crate) fn step(&self, id: &str) -> Result<&Step, RunbookError> {
        self.steps.iter().find(|s| s.id == id).ok_or_else(|| RunbookError::UnknownStep {
            step: id.to_string(),
            runbook: self.name.clone(),
            known: self.steps.iter().map(|s| s.id.clone()).collect(),
        })
    }
}

/// Unique ids, known kinds, needs that exist, no cycle: the graph.
fn check_shape(registry: &[Kind], path: &Path, steps: &[StepFile]) -> Result<Graph, RunbookError> {
    if let Some(step) = steps.iter().find(|s| !valid_id(&s.id)) {
        let shown: String = step.id.chars().take(40).collect();
        return Err(RunbookError::Invalid {
            path: path.to_path_buf(),
            message: format!(
                "step id {shown:?}{} is not an id: use 1-64 letters, digits, `.`, `_` or `-`, starting with a letter or digit \
                 (it is typed in `runbook logs`, `retry` and `skip`)",
                if step.id.chars().count() > 40 { "…" } else { "" }
            ),
        });
    }
    let ids: BTreeSet<&str> = steps.iter().map(|s| s.id.as_str()).collect();
    if ids.len() != steps.len() {
        let mut seen = BTreeSet::new();
        let dup = steps.iter().find(|s| !seen.insert(&s.id)).map(|s| s.id.clone());
        return Err(RunbookError::Invalid {
            path: path.to_path_buf(),
            message: format!("step id `{}` appears twice; ids must be unique", dup.unwrap_or_default()),
        });
    }
    for step in steps {
        if steps::find(registry, &step.kind).is_none() {
            return Err(RunbookError::UnknownKind {
                path: path.to_path_buf(),
                step: step.id.clone(),
                kind: step.kind.clone(),
                known: registry.iter().map(|k| k.name).collect(),
            });
        }
        if let Some(need) = step.needs.iter().find(|n| !ids.contains(n.as_str())) {
            return Err(RunbookError::UnknownNeed {
                path: path.to_path_buf(),
                step: step.id.clone(),
                need: need.clone(),
                known: steps.iter().map(|s| s.id.clone()).collect(),
            });
        }
    }
    let graph = Graph::new(steps.iter().map(|s| (s.id.clone(), s.needs.clone())));
    match graph.find_cycle() {
        Some(members) => Err(RunbookError::Cycle { path: path.to_path_buf(), members }),
        None => Ok(graph),
    }
}

impl Step {
    /// The typed params with upstream outputs as placeholders, as loading checked them: for
    /// what needs the step's own settings, not its inputs (the files it reads, its tool's lock,
    /// a read-only check).
    pub(crate) fn without_inputs(&self) -> Arc<dyn AnyStep> {
        self.without_inputs.clone()
    }

    /// The typed step, or its refusal with the values it quotes made safe to show (`given`:
    /// the upstream outputs filled in).
    fn parse(&self, registry: &[Kind], params: &toml::Value, given: &[String]) -> Result<Box<dyn AnyStep>, String> {
        match steps::find(registry, &self.kind) {
            Some(kind) => kind.parse(params).map_err(|message| redact(message, params, given)),
            None => Err(format!("unknown kind `{}`", self.kind)),
        }
    }

    /// The steps whose outputs the params read (`${steps.X.y}`).
    pub(crate) fn input_steps(&self) -> BTreeSet<String> {
        let mut steps = BTreeSet::new();
        visit_strings(&mut self.params.clone(), &mut |text| {
            substitute(text, |reference| {
                if let Some((step, _)) = split_step_reference(reference) {
                    steps.insert(step.to_string());
                }
                None
            });
        });
        steps
    }

    /// The typed params, with `${steps.X.y}` replaced by the outputs of finished steps.
    pub(crate) fn typed(
        &self,
        registry: &[Kind],
        outputs: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<Box<dyn AnyStep>, String> {
        let mut params = self.params.clone();
        let mut missing = Vec::new();
        visit_strings(&mut params, &mut |text| {
            *text = substitute(text, |reference| {
                let (step, name) = split_step_reference(reference)?;
                match outputs.get(step).and_then(|o| o.get(name)) {
                    Some(value) => Some(value.clone()),
                    None => {
                        missing.push(format!("${{{reference}}}"));
                        Some(String::new())
                    }
                }
            });
        });
        if !missing.is_empty() {
            return Err(format!(
                "inputs not available yet: {} (their step has not finished in this run)",
                missing.join(", ")
            ));
        }
        let given: Vec<String> = outputs.values().flat_map(|o| o.values().cloned()).collect();
        self.parse(registry, &params, &given)
    }
}

struct Scope<'a> {
    path: &'a Path,
    env: &'a Environment,
    runbook_vars: &'a BTreeMap<String, String>,
    overrides: &'a BTreeMap<String, String>,
    kinds: &'a BTreeMap<String, String>,
    registry: &'a [Kind],
}

impl Scope<'_> {
    /// The values of the runbook's vars, the `--var`s and the environment.
    fn given(&self) -> Vec<String> {
        let vars = self.runbook_vars.values().chain(self.overrides.values()).chain(self.env.vars.values());
        vars.cloned().collect()
    }

    /// Resolves `${var}` and `${env.x}` in every string of `value`; checks `${steps.X.y}`.
    fn resolve(&self, step: &str, field: &str, value: &mut toml::Value, graph: &Graph) -> Result<(), RunbookError> {
        match value {
            toml::Value::String(text) => {
                *text = self.resolve_text(step, field, text, graph, &[])?;
            }
            toml::Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.resolve(step, &format!("{field}[{i}]"), item, graph)?;
                }
            }
            toml::Value::Table(table) => {
                for (key, item) in table.iter_mut() {
                    let name = if field.is_empty() { key.clone() } else { format!("{field}.{key}") };
                    self.resolve(step, &name, item, graph)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn resolve_text(
        &self,
        step: &str,
        field: &str,
        text: &str,
        graph: &Graph,
        chain: &[&str],
    ) -> Result<String, RunbookError> {
        // `substitute` keeps an unclosed `${` as written; here it is a mistake.
        if let Some(start) = text.rfind("${").filter(|&start| !text[start..].contains('}')) {
            let open: String = text[start..].chars().take(40).collect();
            return Err(RunbookError::BadReference {
                path: self.path.to_path_buf(),
                step: step.to_string(),
                field: field.to_string(),
                reference: open,
                why: "it is not closed; end it with `}`".into(),
            });
        }
        let mut error = None;
        let resolved = substitute(text, |reference| {
            if error.is_some() {
                return None;
            }
            self.resolve_reference(step, field, reference, graph, chain).unwrap_or_else(|e| {
                error = Some(e);
                None
            })
        });
        match error {
            Some(e) => Err(e),
            None => Ok(resolved),
        }
    }

    /// The value of one `${reference}`; `None` keeps it as written (`${steps.…}`, checked here
    /// and filled at run time).
    fn resolve_reference(
        &self,
        step: &str,
        field: &str,
        reference: &str,
        graph: &Graph,
        chain: &[&str],
    ) -> Result<Option<String>, RunbookError> {
        let bad = |why: String| RunbookError::BadReference {
            path: self.path.to_path_buf(),
            step: step.to_string(),
            field: field.to_string(),
            reference: format!("${{{reference}}}"),
            why,
        };
        let missing = |var: &str, file: &Path| RunbookError::MissingVar {
            path: self.path.to_path_buf(),
            step: step.to_string(),
            field: field.to_string(),
            var: var.to_string(),
            where_to_define: format!("[vars] in {}", file.display()),
        };
        if reference.starts_with("steps.") {
            let Some((from, output)) = split_step_reference(reference) else {
                return Err(bad("write ${steps.<step id>.<output>}".into()));
            };
            check_step_reference(graph, self.kinds, self.registry, step, from, output).map_err(bad)?;
            return Ok(None);
        }
        if let Some(name) = reference.strip_prefix("env.") {
            let value = match name {
                "name" => Some(self.env.name.clone()),
                "account_id" => Some(self.env.account_id.clone()),
                "region" => Some(self.env.region.clone()),
                _ => self.env.vars.get(name).cloned(),
            };
            let value = value.ok_or_else(|| missing(name, &self.env.path))?;
            if value.contains("${") {
                return Err(bad(format!(
                    "the value of `{name}` in {} holds `${{`: an environment value is used as written, not \
                     resolved; write the value itself there",
                    self.env.path.display()
                )));
            }
            return Ok(Some(value));
        }
        if reference.is_empty() || !reference.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad("write ${name} (a runbook var), ${env.name} or ${steps.<id>.<output>}".into()));
        }
        let value = self.overrides.get(reference).or_else(|| self.runbook_vars.get(reference));
        match value {
            None => Err(missing(reference, self.path)),
            // A var that comes back into its own chain is a loop; any chain without one resolves,
            // however long (it is at most as long as there are vars).
            Some(_) if chain.contains(&reference) => {
                let cycle = chain.iter().skip_while(|v| **v != reference).chain([&reference]);
                Err(bad(format!(
                    "variables refer to each other in a loop ({}); give one of them a value that does not refer back",
                    cycle.copied().collect::<Vec<_>>().join(" → ")
                )))
            }
            // A runbook var may itself use ${env.x} or other vars.
            Some(v) => {
                let longer: Vec<&str> = chain.iter().copied().chain([reference]).collect();
                self.resolve_text(step, field, v, graph, &longer).map(Some)
            }
        }
    }
}

fn check_step_reference(
    graph: &Graph,
    kinds: &BTreeMap<String, String>,
    registry: &[Kind],
    step: &str,
    from: &str,
    output: &str,
) -> Result<(), String> {
    let outputs_of = |kind: &str| match steps::find(registry, kind).and_then(|k| k.outputs) {
        Some(outputs) => format!("it has: {}", outputs.join(", ")),
        None => format!("a {kind} step's outputs are known when it runs"),
    };
    let Some(kind) = kinds.get(from) else {
        // `${steps.T2.4}`: the step without an output, split at its id's last dot.
        if let Some(kind) = kinds.get(&format!("{from}.{output}")) {
            return Err(format!(
                "name one of the step's outputs: ${{steps.{from}.{output}.<output>}}; {}",
                outputs_of(kind)
            ));
        }
        let known: Vec<&str> = kinds.keys().map(String::as_str).collect();
        return Err(format!("there is no step `{from}`; steps: {}", known.join(", ")));
    };
    if !graph.upstream(step).contains(from) {
        return Err(format!("{step} does not need {from}; add \"{from}\" to its `needs`"));
    }
    if let Some(outputs) = steps::find(registry, kind).and_then(|k| k.outputs)
        && !outputs.contains(&output)
    {
        return Err(format!("step {from} has no output `{output}`; {}", outputs_of(kind)));
    }
    Ok(())
}

/// A params error with its fix where serde's message has none: a missing field says what to add
/// where (serde writes `missing field `x`` and, for a nested table, `in `params.KEY``), params
/// that are not a table say how to write one.
fn with_fix(message: String) -> String {
    if message.starts_with("invalid type: ") && message.ends_with("expected struct Params") {
        return format!("{message}; write the params as a table: [steps.params] followed by `key = value` lines");
    }
    let (first, within) = match message.split_once('\n') {
        Some((first, rest)) => (first, rest.trim().strip_prefix("in `").and_then(|r| r.strip_suffix('`'))),
        None => (message.as_str(), None),
    };
    let Some(field) = first.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`')) else {
        return message;
    };
    match within {
        Some(table) => format!("missing field `{field}` in `{table}`; add `{field} = …` to {table}"),
        None => format!("missing field `{field}`; add `{field} = …` to the step's [steps.params]"),
    }
}

/// A step id an operator can type: `T2.1`, `deploy-dixie`.
fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `steps.T2.2.image_tag` → (`T2.2`, `image_tag`): the output name is after the last dot.
fn split_step_reference(reference: &str) -> Option<(&str, &str)> {
    let rest = reference.strip_prefix("steps.")?;
    let (step, output) = rest.rsplit_once('.')?;
    (!step.is_empty() && !output.is_empty()).then_some((step, output))
}

/// Replaces each `${ref}` in `text` with `lookup(ref)`; `None` keeps it as written.
fn substitute(text: &str, mut lookup: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let reference = &after[..end];
                match lookup(reference) {
                    Some(value) => out.push_str(&value),
                    None => out.push_str(&rest[start..start + 3 + end]),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// `message` (a refusal of `params`) with the values it quotes made safe to show: the params'
/// strings and the `given` values that went into them.
fn redact(message: String, params: &toml::Value, given: &[String]) -> String {
    fn strings<'a>(value: &'a toml::Value, out: &mut Vec<&'a str>) {
        match value {
            toml::Value::String(s) => out.push(s),
            toml::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
            toml::Value::Table(t) => t.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    let mut values: Vec<&str> = given.iter().map(String::as_str).collect();
    strings(params, &mut values);
    crate::secret::redact(message, values)
}

fn visit_strings(value: &mut toml::Value, f: &mut impl FnMut(&mut String)) {
    match value {
        toml::Value::String(s) => f(s),
        toml::Value::Array(items) => items.iter_mut().for_each(|v| visit_strings(v, f)),
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| visit_strings(v, f)),
        _ => {}
    }
}

/// Params with every `${steps.X.y}` replaced by a placeholder, to type-check before a run.
fn with_placeholders(params: &toml::Value) -> toml::Value {
    let mut copy = params.clone();
    visit_strings(&mut copy, &mut |text| {
        *text = substitute(text, |r| r.starts_with("steps.").then(|| crate::steps::UPSTREAM.to_string()));
    });
    copy
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
