//! The SQLite store: a state DB file beside the runbooks, the default. Opening (created 0600,
//! migrated, read-only and immutable variants), and the transactions that need more than one
//! statement: a new run with its steps, an event group commit (the lease checked before an
//! intent), taking the lease. Every other read and write is written once for both stores
//! (`read.rs`, `apply.rs`, `lease.rs` over `sql.rs`); PostgreSQL's twin is `pg/`.

mod schema;

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

pub(in crate::state) use schema::MIGRATIONS;

use super::lease::{Holder, Lease, describe};
use super::{NewRun, StateError};
use crate::clock::now_ms;
use crate::event::{Event, RunState, StepState};

/// Opens (creating with mode 0600 if absent) and migrates the state DB file. Processes
/// opening a new file at the same moment take turns: SQLite answers "database is locked"
/// without waiting where waiting could deadlock (a reader upgrading while another switches the
/// file to WAL), so the opening is tried again for up to 5 s.
pub(super) fn open(path: &Path) -> Result<Connection, StateError> {
    let started = std::time::Instant::now();
    loop {
        match open_once(path) {
            Err(
                StateError::Open { message, .. }
                | StateError::Sql { source: rusqlite::Error::SqliteFailure(_, Some(message)), .. },
            ) if message.contains("locked") && started.elapsed() < std::time::Duration::from_secs(5) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// An existing state DB file opened read-only (as the immutable file it is on a read-only
/// filesystem); `None` when its schema is older and must be upgraded first.
pub(super) fn open_read_only(path: &Path) -> Result<Option<Connection>, StateError> {
    let open_err = |message: String| StateError::Open { path: path.to_path_buf(), message };
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let read_only_fs = on_read_only_fs(path);
    let conn = if read_only_fs {
        open_immutable(path, flags)?
    } else {
        Connection::open_with_flags(path, flags).map_err(|e| open_err(e.to_string()))?
    };
    if schema_version(&conn, path)? < MIGRATIONS.len() as i64 {
        if read_only_fs {
            return Err(StateError::ReadOnlyFs { path: path.to_path_buf(), why: "its older schema must be upgraded" });
        }
        return Ok(None);
    }
    Ok(Some(conn))
}

/// Opens the file once: created 0600, checked, migrated.
fn open_once(path: &Path) -> Result<Connection, StateError> {
    let open_err = |message: String| StateError::Open { path: path.to_path_buf(), message };
    if on_read_only_fs(path) {
        return Err(StateError::ReadOnlyFs { path: path.to_path_buf(), why: "this command records what it does" });
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
    }
    OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(|e| open_err(e.to_string()))?;
    let mut conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
    // Read before any write: a file that is not a database fails here, untouched.
    let version = schema_version(&conn, path)?;
    conn.execute_batch(schema::PRAGMAS).map_err(|e| open_err(e.to_string()))?;
    if version < schema::MIGRATIONS.len() as i64 {
        schema::migrate(&mut conn).map_err(|e| sql_err(path, e))?;
    }
    Ok(conn)
}

pub(crate) fn sql_err(path: &Path, source: rusqlite::Error) -> StateError {
    StateError::Sql { path: path.to_path_buf(), source }
}

/// A write transaction on SQLite: `BEGIN IMMEDIATE`.
fn immediate<'c>(conn: &'c mut Connection, path: &Path) -> Result<rusqlite::Transaction<'c>, StateError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| sql_err(path, e))
}

/// Whether `path`'s folder is on a filesystem mounted read-only (a snapshot, a read-only
/// share, a rescue mount): SQLite cannot make the shared-memory file of a WAL database there.
fn on_read_only_fs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Ok(dir) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: statvfs(3) fills the zeroed struct we own from a NUL-terminated path.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        libc::statvfs(dir.as_ptr(), &mut st) == 0 && st.f_flag & libc::ST_RDONLY != 0
    }
}

/// A state DB on a read-only filesystem, read as the immutable file it is there. Its WAL, if
/// one was left beside it, would be ignored, so that case is refused rather than shown stale.
fn open_immutable(path: &Path, flags: rusqlite::OpenFlags) -> Result<Connection, StateError> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let mut shm = path.as_os_str().to_owned();
    shm.push("-shm");
    let open_err = |e: rusqlite::Error| StateError::Open { path: path.to_path_buf(), message: e.to_string() };
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        if Path::new(&shm).exists() {
            // SQLite reads a WAL through its existing shared-memory file.
            return Connection::open_with_flags(path, flags).map_err(open_err);
        }
        return Err(StateError::ReadOnlyFs {
            path: path.to_path_buf(),
            why: "its last changes are in a -wal file that cannot be read without writing beside it",
        });
    }
    let mut uri = String::from("file:");
    for byte in path.as_os_str().as_encoded_bytes() {
        match byte {
            b'%' | b'?' | b'#' | 0x80.. => uri.push_str(&format!("%{byte:02X}")),
            _ => uri.push(*byte as char),
        }
    }
    uri.push_str("?immutable=1");
    Connection::open_with_flags(&uri, flags | rusqlite::OpenFlags::SQLITE_OPEN_URI).map_err(open_err)
}

/// The schema version of a just-opened file, after setting the busy timeout (another process
/// creating the same new file holds it locked for a moment: wait rather than fail); a file
/// that is not a database, or of a newer schema, is refused here.
fn schema_version(conn: &Connection, path: &Path) -> Result<i64, StateError> {
    let open_err = |e: rusqlite::Error| StateError::Open { path: path.to_path_buf(), message: e.to_string() };
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open_err)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(open_err)?;
    let supported = schema::MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StateError::NewerSchema { path: path.to_path_buf(), found: version, supported });
    }
    Ok(version)
}

/// Inserts a run with its steps, pending; its id.
pub(super) fn create_run(conn: &mut Connection, path: &Path, run: &NewRun<'_>) -> Result<i64, StateError> {
    let tx = immediate(conn, path)?;
    let id = insert_run(&tx, run).map_err(|e| sql_err(path, e))?;
    tx.commit().map_err(|e| sql_err(path, e))?;
    Ok(id)
}

/// Appends `events` in one transaction (one fsync). With `holder`, and an intent among them,
/// the lease is checked first in the same transaction: an intent comes before a side effect,
/// only while the lease is still ours.
pub(super) fn record_all(
    conn: &mut Connection,
    path: &Path,
    events: &[(Option<i64>, &Event)],
    holder: Option<&Holder>,
    now: i64,
) -> Result<(), StateError> {
    let tx = immediate(conn, path)?;
    if let Some(me) = holder.filter(|_| events.iter().any(|(_, e)| matches!(e, Event::StepIntent { .. }))) {
        still_held(&tx, me).map_err(|e| match e {
            Ok(now) => StateError::LeaseLost { path: path.to_path_buf(), now },
            Err(e) => sql_err(path, e),
        })?;
    }
    for (run, event) in events {
        if !event.is_ephemeral() {
            apply(&tx, *run, event, now).map_err(|e| sql_err(path, e))?;
        }
    }
    tx.commit().map_err(|e| sql_err(path, e))
}

/// Takes the lease for `me` if `decide` (given the current lease, read in the write
/// transaction, and this machine's time) allows it.
pub(super) fn acquire_lock(
    conn: &mut Connection,
    path: &Path,
    me: &Holder,
    decide: impl Fn(Option<Lease>, i64) -> Result<Option<Holder>, StateError>,
) -> Result<Option<Holder>, StateError> {
    let now = now_ms();
    let tx = immediate(conn, path)?;
    let current = read_lease(&tx).map_err(|e| sql_err(path, e))?;
    let taken_over = decide(current, now)?;
    tx.execute(
        "INSERT OR REPLACE INTO run_lock (id, run_id, host, pid, pid_started, acquired_at, heartbeat_at)
         VALUES (1, NULL, ?1, ?2, ?3, ?4, ?4)",
        params![me.host, me.pid, me.pid_started, now],
    )
    .map_err(|e| sql_err(path, e))?;
    tx.commit().map_err(|e| sql_err(path, e))?;
    Ok(taken_over)
}

fn insert_run(tx: &Transaction<'_>, run: &NewRun<'_>) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT INTO runs (runbook, env, runbook_hash, inputs_hash, vars_json, operator, host, started_at, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            run.runbook,
            run.env,
            run.runbook_hash,
            run.inputs_hash,
            serde_json::to_string(run.vars).unwrap_or_default(),
            run.operator,
            run.host,
            now_ms(),
            RunState::Running.as_str()
        ],
    )?;
    let id = tx.last_insert_rowid();
    for step in run.steps {
        tx.execute(
            "INSERT INTO steps (run_id, step, state) VALUES (?1, ?2, ?3)",
            params![id, step, StepState::Pending.as_str()],
        )?;
    }
    Ok(id)
}

/// Appends `event` and applies it to the tables it changes (`apply.rs`, shared with PostgreSQL).
fn apply(tx: &Transaction<'_>, run: Option<i64>, event: &Event, now: i64) -> rusqlite::Result<()> {
    for write in super::apply::writes(run, event, now) {
        let texts = super::sql::texts(&write.params);
        let mut stmt = tx.prepare_cached(&super::sql::sqlite_dialect(write.sql))?;
        stmt.execute(super::sql::sqlite_values(&write.params, &texts).as_slice())?;
    }
    Ok(())
}

fn read_lease(conn: &rusqlite::Connection) -> rusqlite::Result<Option<Lease>> {
    conn.query_row(
        "SELECT run_id, host, pid, pid_started, acquired_at, heartbeat_at FROM run_lock WHERE id = 1",
        [],
        |r| {
            Ok(Lease {
                run: r.get(0)?,
                holder: Holder { host: r.get(1)?, pid: r.get(2)?, pid_started: r.get(3)? },
                since: r.get(4)?,
                heartbeat: r.get(5)?,
            })
        },
    )
    .optional()
}

/// `Ok(())` when `me` still holds the lease; `Err(Ok(who holds it now))` when not.
fn still_held(conn: &rusqlite::Connection, me: &Holder) -> Result<(), Result<String, rusqlite::Error>> {
    match read_lease(conn).map_err(Err)? {
        Some(l) if l.holder.pid == me.pid && l.holder.host == me.host => Ok(()),
        other => Err(Ok(describe(other))),
    }
}
