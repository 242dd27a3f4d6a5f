//! The command line: parses the arguments, runs the command, and turns its outcome into
//! output and an exit code; each command's arguments and work are in `commands/<name>.rs` and
//! below.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::approval::Approver;
use crate::commands::{CliError, Globals, Outcome};
use crate::reporter::Mode;
use crate::{commands, identity, render};

#[derive(Parser)]
#[command(
    name = "runbook",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("RUNBOOK_COMMIT"), ")"),
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
    Run(commands::run::Args),
    /// Read-only: run every probe and say what would change.
    Plan(commands::plan::Args),
    /// Continue the last (or the given) run where it stopped.
    Resume(commands::resume::Args),
    /// Per-step state, attempts, durations and last error of the last (or given) run.
    Status(commands::status::Args),
    /// What a step printed, per attempt (default: its last attempt).
    Logs(commands::logs::Args),
    /// Run one step again (and with --downstream what depends on it), then the rest of the run.
    Retry(commands::retry::Args),
    /// Mark a step done without running it; the reason goes into the audit log.
    Skip(commands::skip::Args),
    /// Print the dependency graph.
    Graph(commands::graph::Args),
    /// Break a stale run lock (recorded in the audit log). A live holder's lock only with
    /// --run N --yes, naming its run.
    Unlock(commands::unlock::Args),
    /// The runs in the state DB, newest first: who ran what, where, when, how it ended.
    History(commands::history::Args),
    /// Every operator decision of the last (or given) run, with time, operator and host:
    /// approvals with the plan approved, skips, retries, lock takeovers and breaks, terraform
    /// state-lock releases, rollbacks and their acknowledgements.
    Audit(commands::audit::Args),
    /// Read-only: run every check of runbooks/diagnose.toml (002's troubleshooting) at once and
    /// print each verdict, the value seen and the next action; exit 1 when one fails. Takes no
    /// run lock and writes nothing, so it works while a deploy runs.
    Diagnose(commands::diagnose::Args),
    /// Poll Dixie's and Finn's health (002 Monitoring): a line a poll, an EVENT line a
    /// transition (posted to the environment's webhook), until Ctrl-C.
    #[command(after_help = "Exit codes with --once: 0 healthy, 1 degraded (warn), 4 unhealthy or unreachable \
                            (alert), 2 bad input. Without --once, Ctrl-C ends it with 0.")]
    Watch(commands::watch::Args),
    /// Read-only: the runs, a run's graph and steps, and each attempt's log in a browser, live.
    /// Binds 127.0.0.1:8765; any other address needs a token (--token-file, RUNBOOK_SERVE_TOKEN,
    /// or one made and printed once).
    Serve(commands::serve::Args),
    /// The state DB itself: `state copy` moves a SQLite history into PostgreSQL.
    State(commands::state::Args),
    /// The local rehearsal ring of real services on loopback.
    Ring(commands::ring::Args),
    /// Print the completion script of a shell (README: "Shell completions and the manual").
    Completions {
        /// The shell: bash, zsh or fish.
        shell: Shell,
    },
    /// Print the manual page (roff), for man: runbook man > ~/.local/share/man/man1/runbook.1
    Man,
}

/// The shells `runbook completions` writes for.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// What `runbook completions` and `runbook man` print: made from the command line's own
/// definition, so they cannot drift from it.
fn generated(command: &Command) -> Option<Vec<u8>> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    match command {
        Command::Completions { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut Cli::command(), "runbook", &mut out);
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut out).expect("write the manual page to memory");
        }
        _ => return None,
    }
    Some(out)
}

/// The exit codes, as `--help` lists them.
const EXIT_CODES: &str = "Exit codes: 0 done, 1 a step failed, 2 bad input (nothing was changed), 3 locked by \
                          another run, 5 stopped awaiting approval (nothing failed; resume RUN --yes approves), \
                          130 interrupted (resumable); watch --once: 0 healthy, 1 degraded, 4 unhealthy; diagnose: \
                          1 when a check fails.";

/// The binary's entry point (`src/main.rs`).
pub fn main() {
    // Die quietly on a closed pipe (`runbook status | head`), as command-line tools do.
    // SAFETY: setting a signal disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Some(text) = generated(&cli.command) {
        let _ = std::io::stdout().write_all(&text);
        return;
    }
    let approval = match &cli.command {
        Command::Run(a) => Some(a.approval),
        Command::Resume(a) => Some(a.approval),
        Command::Retry(a) => Some(a.approval),
        _ => None,
    };
    let yes = approval.is_some_and(|a| a.yes);
    // Absolute, because steps run tools (terraform) in other folders.
    let project = std::fs::canonicalize(&cli.project).unwrap_or_else(|_| cli.project.clone());
    let mode = Mode::detect(cli.json);
    let interactive = mode == Mode::Tty && std::io::IsTerminal::is_terminal(&std::io::stdin());
    let approver = Approver::choose(yes, interactive, &identity::operator());
    let acknowledged_rollback = approval.and_then(|a| a.ack_rollback);
    let state = crate::state::StateLocation::parse(&cli.state);
    let globals = Globals { project, state, mode, approver, acknowledged_rollback };
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
        Command::Run(args) => args.execute(g).await,
        Command::Plan(args) => args.execute(g).await,
        Command::Resume(args) => args.execute(g).await,
        Command::Status(args) => args.execute(g),
        Command::Logs(args) => args.execute(g),
        Command::Retry(args) => args.execute(g).await,
        Command::Skip(args) => args.execute(g),
        Command::Graph(args) => args.execute(g),
        Command::Unlock(args) => args.execute(g).await,
        Command::History(args) => args.execute(g),
        Command::Audit(args) => args.execute(g),
        Command::Watch(args) => {
            // Polls are printed as they come, not once the command is done.
            let json = g.mode == Mode::Json;
            let mut printer = render::oncall::WatchPrinter { out: std::io::stdout(), err: std::io::stderr(), json };
            args.execute(g, &mut printer).await
        }
        Command::Diagnose(args) => args.execute(g).await,
        Command::Serve(args) => args.execute(g, &mut std::io::stdout()).await,
        Command::State(args) => args.execute(),
        Command::Ring(args) => args.execute(g),
        Command::Completions { .. } | Command::Man => unreachable!("printed before the runtime starts"),
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

    /// The completion scripts and the manual name every command and its flags.
    #[test]
    fn completions_and_the_manual_name_every_command() {
        let root = Cli::command();
        let commands: Vec<String> = root.get_subcommands().map(|c| c.get_name().to_string()).collect();
        assert!(commands.len() >= 18, "{commands:?}");
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = String::from_utf8(generated(&Command::Completions { shell }).unwrap()).unwrap();
            for name in commands.iter().map(String::as_str).chain(["ack-rollback", "downstream", "state"]) {
                assert!(text.contains(name), "no `{name}` in the completions:\n{text}");
            }
        }
        let man = String::from_utf8(generated(&Command::Man).unwrap()).unwrap();
        assert!(man.contains(".TH runbook 1"), "{man}");
        for name in &commands {
            assert!(man.contains(&format!("runbook\\-{name}")), "no `runbook-{name}` in the manual:\n{man}");
        }
        assert!(man.contains("5 stopped awaiting approval"), "the exit codes are in the manual");
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
