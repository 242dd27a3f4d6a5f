//! `runbook`: an executor for deployment runbooks. This file parses arguments and turns the
//! outcome into output and an exit code; the work is in `commands.rs` and below.
//!
//! Exit codes: 0 done, 1 a step failed, 2 bad input, 3 locked by another run, 130 interrupted;
//! `watch --once` 4 unhealthy, `diagnose` 1 when a check fails.

mod approval;
mod clock;
mod cloud;
mod commands;
mod crash;
mod emulator;
mod engine;
mod environment;
mod error_chain;
mod event;
mod graph;
mod health;
mod hint;
mod history;
mod identity;
mod image_tag;
mod notify;
mod pg_tls;
mod project;
mod recorder;
mod render;
mod reporter;
mod runbook;
mod secret;
mod state;
mod status;
mod steps;
mod text;
mod watch;

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::approval::Approver;
use crate::commands::{CliError, Globals, Outcome};
use crate::event::RunState;
use crate::reporter::Mode;
use crate::state::RunFilter;

#[derive(Parser)]
#[command(
    name = "runbook",
    version,
    about = "Run deployment runbooks: typed steps that probe, apply and verify, resumable from SQLite"
)]
#[command(after_help = EXIT_CODES)]
struct Cli {
    /// The state DB: a SQLite file, or a PostgreSQL URL
    /// (postgres://user@host:port/database?sslmode=verify-full&sslrootcert=ca.pem), its
    /// password in PGPASSWORD or ~/.pgpass.
    #[arg(long, global = true, env = "RUNBOOK_STATE", hide_env_values = true, default_value = "state/runbook.db")]
    state: PathBuf,
    /// The project folder holding runbooks/ and ring/.
    #[arg(long, global = true, env = "RUNBOOK_PROJECT", hide_env_values = true, default_value = ".")]
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
        /// The runbook's name: a file runbooks/NAME.toml (sprint-2, sprint-3, rollback).
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
        /// Acknowledge that this run undoes the rollback of run RUN (a terraform plan that
        /// would put the rolled-back service forward again stops for it, even with --yes).
        #[arg(long, value_name = "RUN")]
        ack_rollback: Option<i64>,
    },
    /// Read-only: run every probe and say what would change.
    Plan {
        /// The runbook's name: a file runbooks/NAME.toml (sprint-2, sprint-3, rollback).
        runbook: String,
        /// Environment file in runbooks/environments/ (default: the local ring).
        #[arg(long, default_value = "local")]
        env: String,
        /// Set a runbook variable: --var NAME=VALUE (repeatable).
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
    },
    /// Continue the last (or the given) run where it stopped.
    Resume {
        /// The run to continue (default: the last run).
        run: Option<i64>,
        /// Approve changes that ask for approval without prompting.
        #[arg(long)]
        yes: bool,
        /// Acknowledge that this run undoes the rollback of run RUN (a terraform plan that
        /// would put the rolled-back service forward again stops for it, even with --yes).
        #[arg(long, value_name = "RUN")]
        ack_rollback: Option<i64>,
    },
    /// Per-step state, attempts, durations and last error of the last (or given) run.
    Status {
        /// The run to show (default: the last run).
        run: Option<i64>,
    },
    /// What a step printed, per attempt (default: its last attempt).
    Logs {
        /// The step's id, as in the runbook (e.g. T2.4).
        step: String,
        /// The attempt to show, counted from 1 (default: the last).
        #[arg(long)]
        attempt: Option<i64>,
        /// The run the step belongs to (default: the last run).
        #[arg(long)]
        run: Option<i64>,
    },
    /// Run one step again (and with --downstream what depends on it), then the rest of the run.
    Retry {
        /// The step's id, as in the runbook (e.g. T2.6).
        step: String,
        /// Also run again every step that depends on it, in dependency order.
        #[arg(long)]
        downstream: bool,
        /// The run the step belongs to (default: the last run).
        #[arg(long)]
        run: Option<i64>,
        /// Approve changes that ask for approval without prompting.
        #[arg(long)]
        yes: bool,
        /// Acknowledge that this run undoes the rollback of run RUN (a terraform plan that
        /// would put the rolled-back service forward again stops for it, even with --yes).
        #[arg(long, value_name = "RUN")]
        ack_rollback: Option<i64>,
    },
    /// Mark a step done without running it; the reason goes into the audit log.
    Skip {
        /// The step's id, as in the runbook (e.g. T2.7).
        step: String,
        /// Why, for the audit log (required).
        #[arg(long)]
        reason: String,
        /// The run the step belongs to (default: the last run).
        #[arg(long)]
        run: Option<i64>,
    },
    /// Print the dependency graph.
    Graph {
        /// The runbook's name: a file runbooks/NAME.toml.
        runbook: String,
        /// DOT (Graphviz) or Mermaid.
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphFormat,
        /// Environment file in runbooks/environments/ (default: the local ring).
        #[arg(long, default_value = "local")]
        env: String,
    },
    /// Break a stale run lock (recorded in the audit log). A live holder's lock only with
    /// --run N --yes, naming its run.
    Unlock {
        /// Break the run lock of a run whose process is dead (a live one's only with --run N --yes).
        #[arg(long)]
        force: bool,
        /// The run whose lock to break, when its process is alive.
        #[arg(long)]
        run: Option<i64>,
        /// Confirms breaking a live run's lock.
        #[arg(long)]
        yes: bool,
        /// Instead: release the terraform state lock a dead run left in this step's workspace.
        #[arg(long, value_name = "STEP", requires = "lock_id", conflicts_with_all = ["force", "yes"])]
        terraform: Option<String>,
        /// The lock's ID, as the step's error shows it.
        #[arg(long, value_name = "ID", requires = "terraform")]
        lock_id: Option<String>,
    },
    /// The runs in the state DB, newest first: who ran what, where, when, how it ended.
    History {
        /// Only runs of this runbook.
        #[arg(long)]
        runbook: Option<String>,
        /// Only runs on this environment.
        #[arg(long)]
        env: Option<String>,
        /// Only runs in this state.
        #[arg(long, value_parser = parse_run_state, value_name = "STATE")]
        status: Option<RunState>,
        /// Only runs started by this operator.
        #[arg(long)]
        operator: Option<String>,
        /// Only runs older than this run id: the next page (a full page says which id to give).
        #[arg(long, value_name = "RUN")]
        before: Option<i64>,
        /// How many runs to list (default 20).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Every operator decision of the last (or given) run, with time, operator and host:
    /// approvals with the plan approved, skips, retries, lock takeovers and breaks, terraform
    /// state-lock releases, rollbacks and their acknowledgements.
    Audit {
        /// The run whose decisions to list (default: the last run).
        run: Option<i64>,
        /// The decisions of every run in the state DB.
        #[arg(long, conflicts_with = "run")]
        all: bool,
    },
    /// Read-only: run every check of runbooks/diagnose.toml (002's troubleshooting) at once and
    /// print each verdict, the value seen and the next action; exit 1 when one fails. Takes no
    /// run lock and writes nothing, so it works while a deploy runs.
    Diagnose {
        /// Environment file in runbooks/environments/ (default: the local ring).
        #[arg(long, default_value = "local")]
        env: String,
        /// Set a variable of runbooks/diagnose.toml: --var NAME=VALUE (repeatable).
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
    },
    /// Poll Dixie's and Finn's health (002 Monitoring): a line a poll, an EVENT line a
    /// transition (posted to the environment's webhook), until Ctrl-C.
    #[command(after_help = "Exit codes with --once: 0 healthy, 1 degraded (warn), 4 unhealthy or unreachable \
                            (alert), 2 bad input. Without --once, Ctrl-C ends it with 0.")]
    Watch {
        /// Environment file in runbooks/environments/ (default: the local ring).
        #[arg(long, default_value = "local")]
        env: String,
        /// Time between polls: 30s (default, 002's), 500ms, 2m.
        #[arg(long)]
        interval: Option<String>,
        /// One poll; the exit code is the verdict.
        #[arg(long)]
        once: bool,
    },
    /// The state DB itself: `state copy` moves a SQLite history into PostgreSQL.
    State {
        /// What to do with the state DB.
        #[command(subcommand)]
        action: StateAction,
    },
    /// The local rehearsal ring of real services on loopback.
    Ring {
        /// setup installs the ring's parts, up starts it, down stops it, status shows it,
        /// reset empties it.
        #[arg(value_enum)]
        action: RingAction,
    },
}

/// A run state as `history --status` takes it.
fn parse_run_state(text: &str) -> Result<RunState, String> {
    RunState::parse(&text.replace(['-', ' '], "_"))
        .ok_or_else(|| "one of: running, done, failed, awaiting_approval, interrupted, died".to_string())
}

/// The exit codes, as `--help` lists them.
const EXIT_CODES: &str = "Exit codes: 0 done, 1 a step failed, 2 bad input (nothing was changed), 3 locked by \
                          another run, 5 stopped awaiting approval (nothing failed; resume RUN --yes approves), \
                          130 interrupted (resumable); watch --once: 0 healthy, 1 degraded, 4 unhealthy; diagnose: \
                          1 when a check fails.";

#[derive(Subcommand)]
enum StateAction {
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
    let yes = matches!(
        cli.command,
        Command::Run { yes: true, .. } | Command::Resume { yes: true, .. } | Command::Retry { yes: true, .. }
    );
    // Absolute, because steps run tools (terraform) in other folders.
    let project = std::fs::canonicalize(&cli.project).unwrap_or_else(|_| cli.project.clone());
    let mode = Mode::detect(cli.json);
    let interactive = mode == Mode::Tty && std::io::IsTerminal::is_terminal(&std::io::stdin());
    let approver = Approver::choose(yes, interactive, &identity::operator());
    let acknowledged_rollback = match cli.command {
        Command::Run { ack_rollback, .. }
        | Command::Resume { ack_rollback, .. }
        | Command::Retry { ack_rollback, .. } => ack_rollback,
        _ => None,
    };
    let globals = Globals { project, state: cli.state.clone(), mode, approver, acknowledged_rollback };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("start the async runtime");
    let rendered = match runtime.block_on(dispatch(&globals, cli.command)) {
        Ok(outcome) => render::outcome(&outcome, mode == Mode::Json),
        Err(e) => render::error(&e),
    };
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    // Whatever reaches a person's terminal has its control characters escaped (JSON has its own).
    let _ = std::io::stdout().write_all(render::printable(&rendered.stdout).as_bytes());
    let _ = std::io::stderr().write_all(render::printable(&rendered.stderr).as_bytes());
    std::process::exit(rendered.code);
}

async fn dispatch(g: &Globals, command: Command) -> Result<Outcome, CliError> {
    match command {
        Command::Run { runbook, env, vars, .. } => commands::run(g, &runbook, &env, commands::parse_vars(&vars)?).await,
        Command::Plan { runbook, env, vars } => commands::plan(g, &runbook, &env, commands::parse_vars(&vars)?).await,
        Command::Resume { run, .. } => commands::resume(g, run).await,
        Command::Status { run } => commands::status(g, run),
        Command::Logs { step, attempt, run } => commands::logs(g, &step, attempt, run),
        Command::Retry { step, downstream, run, .. } => commands::retry(g, &step, downstream, run).await,
        Command::Skip { step, reason, run } => commands::skip(g, &step, &reason, run),
        Command::Graph { runbook, format, env } => {
            commands::graph(g, &runbook, &env, matches!(format, GraphFormat::Mermaid))
        }
        Command::Unlock { terraform: Some(step), lock_id, run, .. } => {
            commands::release_state_lock(g, &step, lock_id.as_deref().unwrap_or_default(), run).await
        }
        Command::Unlock { force, run, yes, .. } => commands::unlock(g, force, run, yes),
        Command::History { runbook, env, status, operator, before, limit } => {
            let filter =
                RunFilter { runbook: runbook.as_deref(), env: env.as_deref(), status, operator: operator.as_deref() };
            commands::history(g, &filter, before, limit)
        }
        Command::Audit { run, all } => commands::audit(g, run, all),
        Command::Watch { env, interval, once } => {
            // Polls are printed as they come, not once the command is done.
            let json = g.mode == Mode::Json;
            let mut printer = render::oncall::WatchPrinter { out: std::io::stdout(), err: std::io::stderr(), json };
            commands::watch(g, &env, interval.as_deref(), once, &mut printer).await
        }
        Command::Diagnose { env, vars } => commands::diagnose(g, &env, commands::parse_vars(&vars)?).await,
        Command::State { action: StateAction::Copy { from, to } } => commands::state_copy(&from, &to),
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every argument of every command says what it is in `--help`.
    #[test]
    fn every_argument_has_a_description() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "runbook", &mut missing);
        assert_eq!(missing, Vec::<String>::new(), "arguments without a description");
    }

    #[test]
    fn help_shows_no_empty_environment_value_and_every_exit_code() {
        let help = Cli::command().render_long_help().to_string();
        assert!(!help.contains("RUNBOOK_PROJECT="), "{help}");
        for code in [
            "0 done",
            "1 a step failed",
            "2 bad input",
            "3 locked",
            "5 stopped awaiting approval",
            "130 interrupted",
            "4 unhealthy",
            "diagnose: 1",
        ] {
            assert!(help.contains(code), "no `{code}` in --help:\n{help}");
        }
    }
}
