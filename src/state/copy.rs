//! `runbook state copy`: a SQLite history moved into a PostgreSQL state DB, so a team keeps
//! what it ran before. Rows keep their ids and their order (runs, steps, attempts, outputs,
//! events by id), in one transaction, into a target that holds no run and no event yet. The
//! run lock is not copied: a lease belongs to the database it was taken in.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde::Serialize;

use super::pg::pg_err;
use super::sql::{Param, pg_values, texts};
use super::{Backend, StateDb, StateError, sql_err};

/// What was copied, row counts by table.
#[derive(Debug, Serialize)]
pub(crate) struct Copied {
    pub(crate) from: PathBuf,
    pub(crate) to: PathBuf,
    pub(crate) runs: u64,
    pub(crate) steps: u64,
    pub(crate) attempts: u64,
    pub(crate) outputs: u64,
    pub(crate) events: u64,
}

/// Copies the SQLite state DB at `from` into the PostgreSQL state DB at `to`.
pub(crate) fn copy(from: &Path, to: &Path) -> Result<Copied, StateError> {
    if super::is_url(from) {
        return Err(StateError::CopyUsage("--from must be a SQLite state DB file"));
    }
    if !super::is_url(to) {
        return Err(StateError::CopyUsage("--to must be a postgres:// URL (the target state DB)"));
    }
    let source = StateDb::open_existing(from, true)?;
    let mut target = StateDb::open(to)?;
    let to_shown = target.path.clone();
    let Backend::Sqlite(sqlite) = &source.backend else { unreachable!("opened from a file") };
    let Backend::Postgres(pg) = &mut target.backend else { unreachable!("opened from a URL") };
    let e = |e| pg_err(&to_shown, e);
    let client = pg.client();
    let tx = super::pg::wait(client.transaction()).map_err(e)?;
    // Nothing may be there yet: a copy never merges two histories.
    let present: i64 = super::pg::wait(tx.query_one(
        "SELECT (SELECT count(*) FROM runs) + (SELECT count(*) FROM events) + (SELECT count(*) FROM run_lock)",
        &[],
    ))
    .map_err(e)?
    .get(0);
    if present > 0 {
        return Err(StateError::CopyTarget {
            to: to_shown.clone(),
            why: "it already holds runs, events or a run lock (a copy never merges two histories)",
        });
    }
    let mut copied = Copied {
        from: from.to_path_buf(),
        to: to_shown.clone(),
        runs: 0,
        steps: 0,
        attempts: 0,
        outputs: 0,
        events: 0,
    };
    for (table, order, columns) in TABLES {
        let count = copy_table(sqlite, &tx, table, order, columns).map_err(|err| err.into_state(from, &to_shown))?;
        *copied.count_of(table) = count;
    }
    // New runs and events continue after the copied ids.
    super::pg::wait(tx.batch_execute(
        "SELECT setval(pg_get_serial_sequence('runs', 'id'), coalesce(max(id), 0) + 1, false) FROM runs;
         SELECT setval(pg_get_serial_sequence('events', 'id'), coalesce(max(id), 0) + 1, false) FROM events;",
    ))
    .map_err(e)?;
    super::pg::wait(tx.commit()).map_err(e)?;
    Ok(copied)
}

/// A column's type: every column is a BIGINT or a TEXT, maybe NULL.
#[derive(Clone, Copy)]
enum Type {
    Int,
    Text,
}

use Type::{Int, Text};

/// A table's name, the order its rows are read in, and its columns.
type Table = (&'static str, &'static str, &'static [(&'static str, Type)]);

/// The tables a copy moves, in the order foreign keys need, each with the order its rows are
/// read in (their ids, or the order they were written) and its columns.
const TABLES: &[Table] = &[
    (
        "runs",
        "id",
        &[
            ("id", Int),
            ("runbook", Text),
            ("env", Text),
            ("runbook_hash", Text),
            ("inputs_hash", Text),
            ("vars_json", Text),
            ("operator", Text),
            ("host", Text),
            ("started_at", Int),
            ("ended_at", Int),
            ("status", Text),
        ],
    ),
    (
        "steps",
        "rowid",
        &[
            ("run_id", Int),
            ("step", Text),
            ("state", Text),
            ("attempts", Int),
            ("started_at", Int),
            ("ended_at", Int),
            ("duration_ms", Int),
            ("last_error", Text),
            ("fix", Text),
        ],
    ),
    (
        "attempts",
        "rowid",
        &[
            ("run_id", Int),
            ("step", Text),
            ("attempt", Int),
            ("started_at", Int),
            ("intent_at", Int),
            ("action", Text),
            ("ended_at", Int),
            ("outcome", Text),
            ("error", Text),
            ("duration_ms", Int),
            ("log", Text),
        ],
    ),
    ("outputs", "rowid", &[("run_id", Int), ("step", Text), ("name", Text), ("value", Text)]),
    ("events", "id", &[("id", Int), ("run_id", Int), ("at", Int), ("step", Text), ("kind", Text), ("payload", Text)]),
];

impl Copied {
    fn count_of(&mut self, table: &str) -> &mut u64 {
        match table {
            "runs" => &mut self.runs,
            "steps" => &mut self.steps,
            "attempts" => &mut self.attempts,
            "outputs" => &mut self.outputs,
            _ => &mut self.events,
        }
    }
}

enum CopyError {
    Read(rusqlite::Error),
    Write(tokio_postgres::Error),
}

impl CopyError {
    fn into_state(self, from: &Path, to: &Path) -> StateError {
        match self {
            CopyError::Read(e) => sql_err(from, e),
            CopyError::Write(e) => pg_err(to, e),
        }
    }
}

/// Reads every row of `table` from SQLite, in `order`, and inserts it into PostgreSQL with its
/// `columns`; how many.
fn copy_table(
    sqlite: &Connection,
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    order: &str,
    columns: &[(&str, Type)],
) -> Result<u64, CopyError> {
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let marks: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
    let (names, marks) = (names.join(", "), marks.join(", "));
    let statement = super::pg::wait(tx.prepare(&format!("INSERT INTO {table} ({names}) VALUES ({marks})")))
        .map_err(CopyError::Write)?;
    let mut stmt = sqlite.prepare(&format!("SELECT {names} FROM {table} ORDER BY {order}")).map_err(CopyError::Read)?;
    let mut rows = stmt.query([]).map_err(CopyError::Read)?;
    let mut count = 0;
    while let Some(row) = rows.next().map_err(CopyError::Read)? {
        let values = columns
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| match ty {
                Int => row.get(i).map(Param::Int),
                Text => row.get::<_, Option<String>>(i).map(|t| Param::Text(t.map(Cow::Owned))),
            })
            .collect::<rusqlite::Result<Vec<Param<'_>>>>()
            .map_err(CopyError::Read)?;
        let texts = texts(&values);
        super::pg::wait(tx.execute(&statement, &pg_values(&values, &texts))).map_err(CopyError::Write)?;
        count += 1;
    }
    Ok(count)
}
