//! `runbook serve`: the runs in a browser, read-only (`web.rs`). Binds loopback unless told
//! otherwise; any other address needs a token, read from a file or the environment, or made
//! here and printed once.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{CliError, Globals, Outcome};
use crate::environment::Environment;
use crate::secret::Secret;
use crate::state::StateDb;
use crate::watch::Targets;
use crate::web::{Diagnosis, Health};

/// `serve --env`: how often `watch` polls (002's 30 s) and `diagnose` runs.
const POLL_EVERY: Duration = crate::watch::DEFAULT_INTERVAL;
const DIAGNOSE_EVERY: Duration = Duration::from_secs(300);

/// Where a token may come from besides `--token-file`.
const TOKEN_ENV: &str = "RUNBOOK_SERVE_TOKEN";

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Address and port to listen on. Anything but loopback needs a token, and must be the
    /// address people reach (the Host header is checked against it); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8765", value_name = "ADDR:PORT")]
    pub(crate) bind: SocketAddr,
    /// A file holding the token browsers and tools must give (else RUNBOOK_SERVE_TOKEN; else,
    /// beyond loopback, one is made and printed once).
    #[arg(long, value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// An environment whose health /health shows: watch polls it every 30 s and diagnose runs
    /// every 5 minutes, both read-only, while serve runs (no webhook is told).
    #[arg(long, value_name = "NAME")]
    pub(crate) env: Option<String>,
}

impl Args {
    /// Serves until Ctrl-C, telling the operator on `out` where (and the token it made).
    pub(crate) async fn execute(self, g: &Globals, out: &mut dyn Write) -> Result<Outcome, CliError> {
        let given = self.given_token()?;
        let watched = self.env.as_deref().map(|name| watched(g, name)).transpose()?;
        let db = StateDb::existing(&g.state, true)?;
        let listener = tokio::net::TcpListener::bind(self.bind)
            .await
            .map_err(|e| CliError::Usage(format!("--bind {}: cannot listen there: {e}", self.bind)))?;
        let bound = crate::web::bound(&listener, self.bind);
        let made = given.is_none() && !bound.ip().is_loopback() && !bound.ip().is_unspecified();
        if made && !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            // A token made here is printed: where no one reads it, it would only land in a log.
            return Err(CliError::Usage(format!(
                "--bind {bound}: a token is needed beyond loopback, and output is not a terminal to show a new one on; \
                  give it with --token-file FILE or RUNBOOK_SERVE_TOKEN"
            )));
        }
        let token = if made { Some(Secret::random_hex32()) } else { given };
        let login = token.as_ref().filter(|_| made).map(|t| format!("http://{bound}/login?token={}", t.expose()));
        let gate = crate::web::Gate::new(bound, token).map_err(|e| CliError::Usage(e.to_string()))?;
        let mut said = format!("runbook serve: http://{bound}/ (read-only; Ctrl-C stops it)\n");
        if let Some(login) = login {
            said.push_str(&format!(
                "a token was made for this address; open this once (it is not shown again, and the browser keeps \
                 a cookie instead): {login}\n"
            ));
        } else if gate.has_token() {
            said.push_str(&format!(
                "the token is needed: open http://{bound}/login?token=TOKEN once, or send Authorization: Bearer TOKEN\n"
            ));
        }
        let _ = out.write_all(said.as_bytes());
        let _ = out.flush();
        let health =
            watched.as_ref().map(|(env, _)| Health::new(&env.name, POLL_EVERY.as_secs(), DIAGNOSE_EVERY.as_secs()));
        let app = crate::web::App::new(db, gate, g.project.clone(), crate::identity::host(), health.clone());
        let server = crate::web::serve(listener, app, super::shutdown_signal());
        let served = match (watched, health) {
            (Some((env, targets)), Some(health)) => tokio::select! {
                served = server => served,
                () = keep(g, env, targets, health) => Ok(()),
            },
            _ => server.await,
        };
        served.map_err(|e| CliError::Usage(format!("serving on {bound}: {e}")))?;
        Ok(Outcome::Served)
    }

    /// The token from `--token-file`, else from the environment; checked for length by the gate.
    fn given_token(&self) -> Result<Option<Secret<String>>, CliError> {
        if let Some(file) = &self.token_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| CliError::Usage(format!("--token-file {}: cannot read it: {e}", file.display())))?;
            let token = text.trim();
            if token.is_empty() {
                return Err(CliError::Usage(format!(
                    "--token-file {}: the file is empty; write a token of at least {} characters in it (openssl rand \
                     -hex 32)",
                    file.display(),
                    crate::web::MIN_TOKEN_LEN
                )));
            }
            return Ok(Some(Secret::new(token.to_string())));
        }
        Ok(std::env::var(TOKEN_ENV).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).map(Secret::new))
    }
}

/// The environment `--env` names, with what `watch` polls and a check of `diagnose`'s runbook:
/// bad input stops serve before it listens.
fn watched(g: &Globals, name: &str) -> Result<(Environment, Targets), CliError> {
    let env = Environment::load(&g.project, name)?;
    let targets = Targets::of(&env).map_err(|e| CliError::Usage(format!("--env {name}: {e}")))?;
    crate::runbook::Runbook::load(&g.project, "diagnose", &env, &Default::default())?;
    Ok((env, targets))
}

/// Keeps `health` up to date until serve stops: a `watch` poll every 30 s, a `diagnose` every
/// 5 minutes (the first of each at once).
async fn keep(g: &Globals, env: Environment, targets: Targets, health: Health) {
    let mut sink = health.clone();
    let polls = crate::watch::watch(&env, &targets, POLL_EVERY, None, None, std::future::pending(), &mut sink);
    let diagnoses = async {
        loop {
            let started = std::time::Instant::now();
            let outcome = super::diagnose::checks(g, &env.name, &Default::default())
                .await
                .map(|findings| (findings, started.elapsed().as_millis() as u64))
                .map_err(|e| e.to_string());
            health.diagnosed(Diagnosis { at: crate::clock::now_ms(), outcome });
            tokio::time::sleep(DIAGNOSE_EVERY).await;
        }
    };
    tokio::join!(polls, diagnoses);
}
