//! The state DB: runs, step attempts, non-secret outputs, the append-only event log, and the
//! run lock. One connection; during a run it is owned by one thread ([`StateHandle`]);
//! commands that only read use [`StateDb`] directly.
//!
//! Split by concern: `schema` (pragmas, migrations), `record` (events and the tables they
//! change), `queries` (what commands read), `lease` (the run lock), `owner` (the owner thread
//! and its group commits). This module must not know about steps or the cloud.
//!
//! Two backends behind the same methods: a SQLite file (the default), or a PostgreSQL
//! database when the state is a `postgres://` URL (`pg`: one history and one lock for a team).

mod apply;
mod copy;
mod lease;
mod lock;
mod owner;
mod pg;
mod queries;
mod read;
mod record;
mod sql;
mod sqlite;
pub(crate) mod timing;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde::Serialize;
use sql::{Param, Row, pg_values, sqlite_dialect, sqlite_values, texts};

pub(crate) use copy::{Copied, copy};
pub(crate) use lease::{Holder, LEASE_STALE_MS, process_alive};
pub(crate) use owner::{StateHandle, WriteError};
pub(crate) use pg::is_url;
pub(crate) use read::{AttemptLine, Page, RunFilter};
#[cfg(test)]
pub(crate) use record::commits;
use sqlite::sql_err;

use crate::event::{Outputs, RunState, StepState};

#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    #[error(
        "cannot open the state DB {}: {message}; point --state (or RUNBOOK_STATE) at a runbook \
         state DB, or move this file away to start fresh",
        path.display()
    )]
    Open { path: PathBuf, message: String },
    #[error(
        "the state DB {} has schema version {found}, newer than this runbook understands \
         ({supported}); use a newer runbook binary, or another --state",
        path.display()
    )]
    NewerSchema { path: PathBuf, found: i64, supported: i64 },
    #[error(
        "another run holds the lock on {}: run {run} on {host} pid {pid}, since {since}, last \
         heartbeat {heartbeat_age_s}s ago, and it is alive; wait for it (runbook status {run}), or if you are \
         sure it is not: runbook unlock --force --run {run} --yes",
        path.display()
    )]
    Locked { path: PathBuf, run: String, host: String, pid: i64, since: String, heartbeat_age_s: i64 },
    #[error(
        "no state DB at {}: nothing has run with this --state yet; `runbook run <runbook>` starts a run \
         (or point --state / RUNBOOK_STATE at the DB you meant)",
        path.display()
    )]
    Missing { path: PathBuf },
    #[error(
        "the state DB {} is on a read-only filesystem, and {why}; `status` and `logs` read it where \
         it is, but to change anything copy it (with any -wal file beside it) to a writable folder \
         and point --state (or RUNBOOK_STATE) there",
        path.display()
    )]
    ReadOnlyFs { path: PathBuf, why: &'static str },
    #[error(
        "no run found in {}{}; `runbook status` shows the last run and its id, `runbook run <runbook>` starts one \
         (or point --state / RUNBOOK_STATE at the DB you meant)",
        path.display(),
        if what.is_empty() { String::new() } else { format!(" {what}") }
    )]
    NoRun { path: PathBuf, what: String },
    #[error("state DB {}: {source}", path.display())]
    Sql { path: PathBuf, source: rusqlite::Error },
    /// A PostgreSQL state DB answered with an error (the path is its URL without password).
    #[error("state DB {}: {message}", path.display())]
    Postgres { path: PathBuf, message: String },
    #[error(
        "cannot connect to the state DB {}: {message}; check the URL given to --state (or \
         RUNBOOK_STATE), that the server is up, and the password (PGPASSWORD or ~/.pgpass)",
        path.display()
    )]
    Connect { path: PathBuf, message: String },
    /// Reached, but refused what opening needs (reading or creating the schema): nothing changed.
    #[error(
        "cannot use the state DB {}: {message}; nothing was changed: check that the database exists and that the \
         role may CONNECT to it and CREATE in its schema",
        path.display()
    )]
    Unusable { path: PathBuf, message: String },
    #[error(
        "the state DB {} refused the login: {message}; check the user in the URL given to --state \
         (or RUNBOOK_STATE) and its password (PGPASSWORD or ~/.pgpass)",
        path.display()
    )]
    Login { path: PathBuf, message: String },
    #[error("cannot write the state DB {}: {message}", path.display())]
    Write { path: PathBuf, message: String },
    /// The connection was lost on a COMMIT, and whether it committed cannot be told: it is not
    /// written again, lest it be there twice.
    #[error(
        "state DB {}: the connection was lost on a commit whose outcome cannot be told ({message}); \
         what it held may be missing",
        path.display()
    )]
    CommitUnknown { path: PathBuf, message: String },
    /// The server dropped the connection and it could not be made again (or was lost again):
    /// nothing of the transaction was written, and it may be written once the server is back.
    #[error(
        "state DB {}: the connection was lost and could not be made again ({message}); check that \
         the server is up",
        path.display()
    )]
    ConnectionLost { path: PathBuf, message: String },
    #[error("cannot copy into {}: {why}", to.display())]
    CopyTarget { to: PathBuf, why: &'static str },
    #[error("cannot copy: {0}")]
    CopyUsage(&'static str),
    #[error(
        "this run no longer holds the run lock of {} ({now}); nothing more is changed. See who \
         holds it: runbook status",
        path.display()
    )]
    LeaseLost { path: PathBuf, now: String },
}

/// Where the state lives, told once from `--state`: a SQLite file, or a PostgreSQL URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StateLocation {
    Sqlite(PathBuf),
    /// The URL as given (its password, if any, stays in memory).
    Postgres(PathBuf),
}

impl StateLocation {
    pub(crate) fn parse(given: &Path) -> Self {
        if is_url(given) {
            StateLocation::Postgres(given.to_path_buf())
        } else {
            StateLocation::Sqlite(given.to_path_buf())
        }
    }

    /// What `StateDb::open` takes.
    pub(crate) fn path(&self) -> &Path {
        match self {
            StateLocation::Sqlite(path) | StateLocation::Postgres(path) => path,
        }
    }

    /// The private folder for files that may hold secrets (terraform plans, apply logs): `work/`
    /// beside a SQLite file, or in the default state folder for a PostgreSQL state, which has no
    /// folder of its own. Absolute: steps run tools in other folders.
    pub(crate) fn work_folder(&self) -> std::io::Result<PathBuf> {
        let folder = match self {
            StateLocation::Postgres(_) => Path::new("state"),
            StateLocation::Sqlite(path) => {
                path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
            }
        };
        std::path::absolute(folder.join("work"))
    }
}

pub(crate) struct StateDb {
    backend: Backend,
    /// The SQLite file, or the PostgreSQL URL without its password: what messages name.
    path: PathBuf,
    /// The lease this connection's run holds, once it holds one: every intent is recorded only
    /// while the lease is still its own.
    holder: Option<Holder>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunRow {
    pub(crate) id: i64,
    pub(crate) runbook: String,
    pub(crate) env: String,
    pub(crate) runbook_hash: String,
    pub(crate) inputs_hash: String,
    pub(crate) vars: BTreeMap<String, String>,
    pub(crate) operator: String,
    pub(crate) host: String,
    pub(crate) started_at: i64,
    pub(crate) ended_at: Option<i64>,
    pub(crate) status: RunState,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct StepRow {
    pub(crate) step: String,
    pub(crate) state: StepState,
    pub(crate) attempts: i64,
    pub(crate) duration_ms: Option<i64>,
    pub(crate) last_error: Option<String>,
    pub(crate) fix: Option<String>,
    /// The last attempt recorded an intent and no outcome: the side effect may have happened.
    pub(crate) in_doubt: bool,
    /// What its policy tolerated when it was last done.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct AttemptRow {
    pub(crate) attempt: i64,
    pub(crate) started_at: i64,
    pub(crate) intent_at: Option<i64>,
    pub(crate) action: Option<String>,
    pub(crate) outcome: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) duration_ms: Option<i64>,
    pub(crate) log: String,
}

pub(crate) struct NewRun<'a> {
    pub(crate) runbook: &'a str,
    pub(crate) env: &'a str,
    pub(crate) runbook_hash: &'a str,
    pub(crate) inputs_hash: &'a str,
    pub(crate) vars: &'a BTreeMap<String, String>,
    pub(crate) operator: &'a str,
    pub(crate) host: &'a str,
    pub(crate) steps: &'a [String],
}

/// What the state DB says about a run's steps when the engine starts.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Steps that are done (applied, satisfied or skipped): not run again.
    pub(crate) finished: BTreeSet<String>,
    pub(crate) outputs: BTreeMap<String, Outputs>,
    /// Attempts used so far, by step.
    pub(crate) attempts: BTreeMap<String, u32>,
    /// Steps whose last attempt recorded an intent and no outcome.
    pub(crate) in_doubt: BTreeSet<String>,
    /// Steps an operator skipped (among the finished): they have no outputs of this run.
    pub(crate) skipped: BTreeSet<String>,
}

impl StateDb {
    /// Every row `sql` selects, each read by `read`. A row `read` refuses is a corrupt state DB,
    /// named with the error of its column.
    pub(crate) fn select<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        read: impl Fn(&dyn Row) -> Result<T, String>,
    ) -> Result<Vec<T>, StateError> {
        match &self.backend {
            Backend::Sqlite(conn) => {
                let mut stmt = conn.prepare_cached(&sqlite_dialect(sql)).map_err(|e| self.sql_err(e))?;
                let texts = texts(params);
                let mut rows = stmt.query(sqlite_values(params, &texts).as_slice()).map_err(|e| self.sql_err(e))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().map_err(|e| self.sql_err(e))? {
                    out.push(read(row).map_err(|message| self.corrupt(message))?);
                }
                Ok(out)
            }
            Backend::Postgres(pg) => {
                let texts = texts(params);
                let rows = pg.select(sql, &pg_values(params, &texts)).map_err(|e| self.pg_err(e))?;
                rows.iter().map(|row| read(row).map_err(|message| self.corrupt(message))).collect()
            }
        }
    }
}

impl StateDb {
    /// Runs one statement that changes rows, in a transaction of its own; how many it changed.
    pub(crate) fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StateError> {
        let texts = texts(params);
        match &mut self.backend {
            Backend::Sqlite(conn) => conn
                .prepare_cached(&sqlite_dialect(sql))
                .and_then(|mut stmt| stmt.execute(sqlite_values(params, &texts).as_slice()))
                .map(|n| n as u64)
                .map_err(|e| sql_err(&self.path, e)),
            Backend::Postgres(pg) => pg.execute(sql, &pg_values(params, &texts)).map_err(|e| pg::pg_err(&self.path, e)),
        }
    }
}

/// The time a step (`s`, a row of `steps`) worked: the sum of its attempts, each from its start
/// to its outcome (an attempt cut short by an interrupt ends there; one in doubt has no end
/// yet). Idle time between attempts is not work, nor is a skip: a step that never ran has
/// none (NULL). Read this way rather than from `steps.duration_ms`, which older runs wrote as
/// first start to last end. The same text on both backends.
pub(super) const WORKED_MS: &str = "(SELECT CAST(SUM(COALESCE(a.duration_ms, a.ended_at - a.started_at)) AS BIGINT) \
                                    FROM attempts a WHERE a.run_id = s.run_id AND a.step = s.step)";

/// Where the state lives.
enum Backend {
    Sqlite(Connection),
    // Boxed: a connection (its prepared statements, where to connect again) is large.
    Postgres(Box<pg::PgConn>),
}

impl StateDb {
    /// Opens (creating if absent) and migrates the state DB at `location`.
    pub(crate) fn at(location: &StateLocation) -> Result<Self, StateError> {
        match location {
            StateLocation::Postgres(url) => Self::open_postgres(url, false, true),
            StateLocation::Sqlite(path) => Ok(Self::sqlite_at(path, sqlite::open(path)?)),
        }
    }

    /// [`StateDb::at`] a path or URL not parsed yet (tests, benchmarks, `state copy`'s target).
    pub(crate) fn open(path: &Path) -> Result<Self, StateError> {
        Self::at(&StateLocation::parse(path))
    }

    fn sqlite_at(path: &Path, conn: Connection) -> Self {
        StateDb { backend: Backend::Sqlite(conn), path: path.to_path_buf(), holder: None }
    }

    /// Opens a PostgreSQL state DB: migrated (under the migration lock) when `create`, and
    /// when not and it has no schema yet, [`StateError::Missing`].
    fn open_postgres(url: &Path, read_only: bool, create: bool) -> Result<Self, StateError> {
        let location = pg::Location::parse(&url.to_string_lossy())
            .map_err(|message| StateError::Open { path: PathBuf::from("postgres://…"), message })?;
        let path = location.shown.clone();
        let mut conn = pg::PgConn::connect(&location, read_only).map_err(|message| {
            // The operator's input (user, password, an address the server does not admit),
            // not a server that cannot be reached.
            let refused = ["password authentication failed", "password missing", "no pg_hba.conf entry"]
                .iter()
                .any(|m| message.contains(m));
            if refused {
                StateError::Login { path: path.clone(), message }
            } else {
                StateError::Connect { path: path.clone(), message }
            }
        })?;
        let supported = sqlite::MIGRATIONS.len() as i64;
        let unusable = |e| match pg::pg_err(&path, e) {
            StateError::Postgres { path, message } => StateError::Unusable { path, message },
            other => other,
        };
        let version = conn.version().map_err(unusable)?;
        if version > supported {
            return Err(StateError::NewerSchema { path, found: version, supported });
        }
        if version == 0 && !create {
            return Err(StateError::Missing { path });
        }
        if version < supported {
            // An older schema is upgraded once, even by a reading command, on a writable session.
            if read_only {
                return Self::open_postgres(url, false, create);
            }
            if let pg::Opened::Newer(found) = conn.migrate().map_err(unusable)? {
                return Err(StateError::NewerSchema { path, found, supported });
            }
        }
        Ok(StateDb { backend: Backend::Postgres(Box::new(conn)), path, holder: None })
    }

    /// Opens the existing state DB at `location` without creating it; for commands that only
    /// read, read-only (a DB of an older schema is upgraded first, once).
    pub(crate) fn existing(location: &StateLocation, read_only: bool) -> Result<Self, StateError> {
        let path = match location {
            StateLocation::Postgres(url) => return Self::open_postgres(url, read_only, false),
            StateLocation::Sqlite(path) => path,
        };
        if !path.is_file() {
            return Err(StateError::Missing { path: path.to_path_buf() });
        }
        if !read_only {
            return Self::at(location);
        }
        match sqlite::open_read_only(path)? {
            Some(conn) => Ok(Self::sqlite_at(path, conn)),
            // An older schema, upgraded first, once.
            None => Self::at(location),
        }
    }

    /// [`StateDb::existing`] at a path or URL not parsed yet.
    pub(crate) fn open_existing(path: &Path, read_only: bool) -> Result<Self, StateError> {
        Self::existing(&StateLocation::parse(path), read_only)
    }

    fn sql_err(&self, source: rusqlite::Error) -> StateError {
        sql_err(&self.path, source)
    }

    fn pg_err(&self, source: tokio_postgres::Error) -> StateError {
        pg::pg_err(&self.path, source)
    }

    /// The SQLite connection (tests of SQLite's own behaviour).
    #[cfg(test)]
    pub(crate) fn sqlite(&self) -> &Connection {
        match &self.backend {
            Backend::Sqlite(conn) => conn,
            Backend::Postgres(_) => panic!("a SQLite state DB was expected, not {}", self.path.display()),
        }
    }

    /// The PostgreSQL server process of this connection (`None` for SQLite), for tests that
    /// drop it.
    #[cfg(test)]
    pub(crate) fn backend_pid_for_tests(&mut self) -> Option<i64> {
        match &mut self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(pg) => Some(pg.text_for_tests("SELECT pg_backend_pid()::text").unwrap().parse().unwrap()),
        }
    }

    /// Runs one statement of SQL that both dialects speak, behind the store's back (tests).
    #[cfg(test)]
    pub(crate) fn execute_for_tests(&mut self, sql: &str) -> Result<u64, String> {
        match &mut self.backend {
            Backend::Sqlite(conn) => conn.execute(sql, []).map(|n| n as u64).map_err(|e| e.to_string()),
            Backend::Postgres(pg) => pg.execute_for_tests(sql).map_err(|e| crate::error_chain::error_chain(&e)),
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) use tests::PgSchema;
