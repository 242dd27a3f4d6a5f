//! The state DB on PostgreSQL, for a team that shares one history and one run lock: the
//! connection (TLS through `pg_tls` when the URL or a remote host asks for it), its schema
//! (`schema`) and the same reads and writes as the SQLite store (`store`).
//!
//! The rest of the crate is synchronous towards the state DB, so this is too: a
//! `tokio_postgres` connection is driven by its own thread (its own small runtime, so that it
//! never blocks or nests in the caller's), and each call waits for its answer on the caller's
//! thread. The password (URL, `PGPASSWORD`, pass file) goes to the server and nowhere else:
//! the location this module shows is `postgres://user@host:port/database`.

mod location;
mod schema;
mod store;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

pub(super) use location::Location;
pub(crate) use location::is_url;
pub(super) use schema::Opened;
pub(super) use store::pg_err;

/// One connection to the state database, and the thread that drives it.
pub(super) struct PgConn {
    client: tokio_postgres::Client,
    /// Statements of the event transactions, prepared once (see `store::Writer`).
    statements: std::collections::HashMap<&'static str, tokio_postgres::Statement>,
    /// Where and how it connected, to connect again when the server dropped the connection
    /// (a restart, a failover, a network blip). Kept in memory only.
    location: Location,
    read_only: bool,
}

impl PgConn {
    /// Connects, and makes every commit wait for the server's WAL flush whatever the server's
    /// default (a ring or a tuned server may have `synchronous_commit = off`): an intent is
    /// durable before the side effect. `read_only` sessions refuse every write.
    pub(super) fn connect(location: &Location, read_only: bool) -> Result<Self, String> {
        let client = Self::session(location, read_only)?;
        Ok(PgConn { client, statements: std::collections::HashMap::new(), location: location.clone(), read_only })
    }

    /// Connects again when the server has closed the connection. A write that was under way
    /// when it closed has already failed (and said so); this is for the ones after it, so
    /// that a run records its outcomes, its end and the lock's release after a blip instead
    /// of failing every write until it ends. When it cannot connect, the write fails as before.
    pub(super) fn reconnect_if_closed(&mut self) {
        if !self.client.is_closed() {
            return;
        }
        if let Ok(client) = Self::session(&self.location, self.read_only) {
            self.client = client;
            self.statements.clear();
        }
    }

    /// The rows of a read written once for both stores (`state/sql.rs`).
    pub(super) fn select(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        wait(self.client.query(sql, params))
    }

    /// Runs a write written once for both stores, after connecting again if the server had
    /// closed the connection.
    pub(super) fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        self.reconnect_if_closed();
        wait(self.client.execute(sql, params))
    }

    /// Connects again whatever the client believes: the server closed the connection, or is
    /// closing it, and the client may not have heard yet.
    pub(super) fn reconnect(&mut self) -> Result<(), String> {
        self.client = Self::session(&self.location, self.read_only)?;
        self.statements.clear();
        Ok(())
    }

    fn session(location: &Location, read_only: bool) -> Result<tokio_postgres::Client, String> {
        let (sender, answer) = std::sync::mpsc::channel();
        let config = location.config.clone();
        let tls = location.tls.clone();
        std::thread::Builder::new()
            .name("state-pg".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = sender.send(Err(format!("cannot start its connection thread: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match tls {
                        Some(tls) => {
                            match crate::pg_tls::connect(config, &tls.server_name, tls.ca_file.as_deref()).await {
                                Ok((client, connection)) => {
                                    let _ = sender.send(Ok(client));
                                    connection.await;
                                }
                                Err(e) => {
                                    let _ = sender.send(Err(e));
                                }
                            }
                        }
                        None => match config.connect(tokio_postgres::NoTls).await {
                            Ok((client, connection)) => {
                                let _ = sender.send(Ok(client));
                                let _ = connection.await;
                            }
                            Err(e) => {
                                let _ = sender.send(Err(crate::pg_tls::explain(&crate::error_chain::error_chain(&e))));
                            }
                        },
                    }
                });
            })
            .map_err(|e| format!("cannot start its connection thread: {e}"))?;
        let client = answer.recv().map_err(|_| "its connection thread stopped".to_string())??;
        let session = if read_only {
            "SET synchronous_commit = on; SET client_min_messages = warning; \
             SET default_transaction_read_only = on;"
        } else {
            "SET synchronous_commit = on; SET client_min_messages = warning;"
        };
        wait(client.batch_execute(session)).map_err(|e| e.to_string())?;
        Ok(client)
    }

    /// The schema version (0: nothing has run here).
    pub(super) fn version(&self) -> Result<i64, tokio_postgres::Error> {
        schema::version(&self.client)
    }

    pub(super) fn migrate(&mut self) -> Result<Opened, tokio_postgres::Error> {
        schema::migrate(&mut self.client)
    }
}

/// Waits on this thread for a future of the client (a request to, and the answer from, the
/// connection's thread): no runtime of the caller is needed nor disturbed.
pub(super) fn wait<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

/// What a TLS connection verifies: the server's name in its certificate, against this CA file
/// (or the system's roots).
#[derive(Debug, Clone)]
pub(super) struct Tls {
    pub(super) server_name: String,
    pub(super) ca_file: Option<PathBuf>,
}
