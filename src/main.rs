//! `runbook`: an executor for deployment runbooks. This file parses arguments and turns the
//! outcome into output and an exit code; the work is in `commands.rs` and below.
//!
//! Exit codes: 0 done, 1 a step failed, 2 bad input, 3 locked by another run, 130 interrupted.

mod clock;
mod cloud;
mod commands;
mod engine;
mod environment;
mod event;
mod graph;
mod recorder;
mod reporter;
mod runbook;
mod secret;
mod state;
mod status;
mod steps;

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::commands::{CliError, Globals};
use crate::reporter::Mode;

#[derive(Parser)]
#[command(name = "runbook", version, about = "Run deployment runbooks: typed steps that probe, apply and verify, resumable from SQLite")]
#[command(after_help = "Exit codes: 0 done, 1 a step failed, 2 bad input, 3 locked by another run, 130 interrupted.")]
struct Cli {
    /// The state DB.
    #[arg(long, global = true, env = "RUNBOOK_STATE", default_value = "state/runbook.db")]
    state: PathBuf,
    /// The project folder holding runbooks/ and ring/.
    #[arg(long, global = true, env = "RUNBOOK_PROJECT", default_value = ".")]
    project: PathBuf,
    /// Events as NDJSON on stdout (status: one JSON document).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a new run of a runbook.
    Run {
        runbook: String,
        /// Environment file in runbooks/environments/ (default: the local ring).
        #[arg(long, default_value = "local")]
        env: String,
        /// Set a runbook variable: --var NAME=VALUE (repeatable).
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
        /// Approve changes that ask for approval without prompting.
        #[arg(long)]
        yes: bool,
    },
    /// Read-only: run every probe and say what would change.
    Plan {
        runbook: String,
        #[arg(long, default_value = "local")]
        env: String,
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
    },
    /// Continue the last (or the given) run where it stopped.
    Resume {
        run: Option<i64>,
        /// Approve changes that ask for approval without prompting.
        #[arg(long)]
        yes: bool,
    },
    /// Per-step state, attempts, durations and last error of the last (or given) run.
    Status { run: Option<i64> },
    /// What a step printed, per attempt (default: its last attempt).
    Logs {
        step: String,
        #[arg(long)]
        attempt: Option<i64>,
        #[arg(long)]
        run: Option<i64>,
    },
    /// Run one step again (and with --downstream what depends on it), then the rest of the run.
    Retry {
        step: String,
        #[arg(long)]
        downstream: bool,
        #[arg(long)]
        run: Option<i64>,
        /// Approve changes that ask for approval without prompting.
        #[arg(long)]
        yes: bool,
    },
    /// Mark a step done without running it; the reason goes into the audit log.
    Skip {
        step: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        run: Option<i64>,
    },
    /// Print the dependency graph.
    Graph {
        runbook: String,
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphFormat,
        #[arg(long, default_value = "local")]
        env: String,
    },
    /// Break a stale run lock (recorded in the audit log).
    Unlock {
        #[arg(long)]
        force: bool,
    },
    /// The local rehearsal ring of real services on loopback.
    Ring {
        #[arg(value_enum)]
        action: RingAction,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Dot,
    Mermaid,
}

#[derive(Clone, Copy, ValueEnum)]
enum RingAction {
    Setup,
    Up,
    Down,
    Status,
    Reset,
}

fn main() {
    // Die quietly on a closed pipe (`runbook status | head`), as command-line tools do.
    // SAFETY: setting a signal disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let yes = matches!(cli.command, Command::Run { yes: true, .. } | Command::Resume { yes: true, .. } | Command::Retry { yes: true, .. });
    // Absolute, because steps run tools (terraform) in other folders.
    let project = std::fs::canonicalize(&cli.project).unwrap_or_else(|_| cli.project.clone());
    let globals = Globals { project, state: cli.state.clone(), mode: Mode::detect(cli.json), yes };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("start the async runtime");
    let code = match runtime.block_on(dispatch(&globals, cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

async fn dispatch(g: &Globals, command: Command) -> Result<i32, CliError> {
    match command {
        Command::Run { runbook, env, vars, .. } => {
            let vars = commands::parse_vars(&vars)?;
            commands::run(g, &runbook, &env, vars).await
        }
        Command::Plan { runbook, env, vars } => {
            let vars = commands::parse_vars(&vars)?;
            let lines = commands::plan(g, &runbook, &env, vars).await?;
            if g.mode == Mode::Json {
                println!("{}", serde_json::json!({ "plan": lines }));
            } else {
                println!("{:<8} {:<14} DETAIL", "STEP", "VERDICT");
                for line in &lines {
                    println!("{:<8} {:<14} {}: {}", line.step, line.verdict, line.title, line.detail);
                }
                let changes = lines.iter().filter(|l| l.verdict != "satisfied").count();
                println!("{changes} of {} steps would act or wait for inputs; nothing was changed", lines.len());
            }
            let conflicts = lines.iter().any(|l| matches!(l.verdict, "conflict" | "error"));
            Ok(if conflicts { 1 } else { 0 })
        }
        Command::Resume { run, .. } => commands::resume(g, run).await,
        Command::Status { run } => {
            let db = state::StateDb::open(&g.state)?;
            let view = status::view(&db, run, &commands::host())?;
            if g.mode == Mode::Json {
                println!("{}", serde_json::to_string_pretty(&view).unwrap_or_default());
            } else {
                print!("{}", status::render(&view));
            }
            Ok(0)
        }
        Command::Logs { step, attempt, run } => {
            let db = state::StateDb::open(&g.state)?;
            let row = match run {
                Some(id) => db.run(id)?,
                None => db.latest_run(None)?,
            };
            let attempts = db.attempts(row.id, &step)?;
            let chosen: Vec<_> = match attempt {
                Some(n) => attempts.iter().filter(|a| a.attempt == n).collect(),
                None => attempts.last().into_iter().collect(),
            };
            if chosen.is_empty() {
                let have: Vec<String> = attempts.iter().map(|a| a.attempt.to_string()).collect();
                return Err(CliError::Usage(format!(
                    "run {} has no attempt {} of step {step}; attempts: {}",
                    row.id,
                    attempt.map(|a| a.to_string()).unwrap_or_else(|| "at all".into()),
                    if have.is_empty() { "none".into() } else { have.join(", ") }
                )));
            }
            for a in chosen {
                if g.mode == Mode::Json {
                    println!("{}", serde_json::to_string(a).unwrap_or_default());
                    continue;
                }
                println!(
                    "== run {} step {step} attempt {} — started {}, outcome {}{}",
                    row.id,
                    a.attempt,
                    clock::format_utc(a.started_at),
                    a.outcome.as_deref().unwrap_or(if a.intent_at.is_some() { "in doubt" } else { "none" }),
                    a.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
                );
                print!("{}", a.log);
            }
            Ok(0)
        }
        Command::Retry { step, downstream, run, .. } => commands::retry(g, &step, downstream, run).await,
        Command::Skip { step, reason, run } => commands::skip(g, &step, &reason, run),
        Command::Graph { runbook, format, env } => {
            let env = environment::Environment::load(&g.project, &env)?;
            let book = runbook::Runbook::load(&g.project, &runbook, &env, &BTreeMap::new())?;
            let titles: BTreeMap<String, String> = book.steps.iter().map(|s| (s.id.clone(), s.title.clone())).collect();
            match format {
                GraphFormat::Dot => print!("{}", book.graph.to_dot(&book.name, &titles)),
                GraphFormat::Mermaid => print!("{}", book.graph.to_mermaid(&titles)),
            }
            Ok(0)
        }
        Command::Unlock { force } => {
            if !force {
                return Err(CliError::Usage(
                    "unlock breaks another run's lock; make sure that run is dead, then pass --force".into(),
                ));
            }
            commands::unlock(g)
        }
        Command::Ring { action } => {
            let name = match action {
                RingAction::Setup => "setup",
                RingAction::Up => "up",
                RingAction::Down => "down",
                RingAction::Status => "status",
                RingAction::Reset => "reset",
            };
            commands::ring(&g.project, name)
        }
    }
}
