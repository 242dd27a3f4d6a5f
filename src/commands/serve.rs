//! `runbook serve`: the runs in a browser, read-only (`web.rs`). Binds loopback unless told
//! otherwise; any other address needs a token, read from a file or the environment, or made
//! here and printed once.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::{CliError, Globals, Outcome};
use crate::secret::Secret;
use crate::state::StateDb;

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
}

impl Args {
    /// Serves until Ctrl-C, telling the operator on `out` where (and the token it made).
    pub(crate) async fn execute(self, g: &Globals, out: &mut dyn Write) -> Result<Outcome, CliError> {
        let given = self.given_token()?;
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
        let app = crate::web::App::new(db, gate, g.project.clone(), crate::identity::host());
        crate::web::serve(listener, app, super::shutdown_signal())
            .await
            .map_err(|e| CliError::Usage(format!("serving on {bound}: {e}")))?;
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
