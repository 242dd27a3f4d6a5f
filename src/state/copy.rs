//! `runbook state copy`: a SQLite history moved into a PostgreSQL state DB, so a team keeps
//! what it ran before. Rows keep their ids and their order (runs, steps, attempts, outputs,
//! events by id), in one transaction, into a target that holds no run and no event yet. The
//! run lock is not copied: a lease belongs to the database it was taken in.

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde::Serialize;

use super::pg::pg_err;
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
    copied.runs = each_row(
        sqlite,
        "SELECT id, runbook, env, runbook_hash, inputs_hash, vars_json, operator, host, started_at, ended_at, status
         FROM runs ORDER BY id",
        |r| {
            Ok(vec![
                int(r, 0)?,
                text(r, 1)?,
                text(r, 2)?,
                text(r, 3)?,
                text(r, 4)?,
                text(r, 5)?,
                text(r, 6)?,
                text(r, 7)?,
                int(r, 8)?,
                int(r, 9)?,
                text(r, 10)?,
            ])
        },
        &tx,
        "INSERT INTO runs (id, runbook, env, runbook_hash, inputs_hash, vars_json, operator, host, started_at, ended_at,
         status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .map_err(|err| err.into_state(from, &to_shown))?;
    copied.steps = each_row(
        sqlite,
        "SELECT run_id, step, state, attempts, started_at, ended_at, duration_ms, last_error, fix FROM steps ORDER BY rowid",
        |r| {
            Ok(vec![
                int(r, 0)?,
                text(r, 1)?,
                text(r, 2)?,
                int(r, 3)?,
                int(r, 4)?,
                int(r, 5)?,
                int(r, 6)?,
                text(r, 7)?,
                text(r, 8)?,
            ])
        },
        &tx,
        "INSERT INTO steps (run_id, step, state, attempts, started_at, ended_at, duration_ms, last_error, fix)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .map_err(|err| err.into_state(from, &to_shown))?;
    copied.attempts = each_row(
        sqlite,
        "SELECT run_id, step, attempt, started_at, intent_at, action, ended_at, outcome, error, duration_ms, log
         FROM attempts ORDER BY rowid",
        |r| {
            Ok(vec![
                int(r, 0)?,
                text(r, 1)?,
                int(r, 2)?,
                int(r, 3)?,
                int(r, 4)?,
                text(r, 5)?,
                int(r, 6)?,
                text(r, 7)?,
                text(r, 8)?,
                int(r, 9)?,
                text(r, 10)?,
            ])
        },
        &tx,
        "INSERT INTO attempts (run_id, step, attempt, started_at, intent_at, action, ended_at, outcome, error,
         duration_ms, log) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .map_err(|err| err.into_state(from, &to_shown))?;
    copied.outputs = each_row(
        sqlite,
        "SELECT run_id, step, name, value FROM outputs ORDER BY rowid",
        |r| Ok(vec![int(r, 0)?, text(r, 1)?, text(r, 2)?, text(r, 3)?]),
        &tx,
        "INSERT INTO outputs (run_id, step, name, value) VALUES ($1, $2, $3, $4)",
    )
    .map_err(|err| err.into_state(from, &to_shown))?;
    copied.events = each_row(
        sqlite,
        "SELECT id, run_id, at, step, kind, payload FROM events ORDER BY id",
        |r| Ok(vec![int(r, 0)?, int(r, 1)?, int(r, 2)?, text(r, 3)?, text(r, 4)?, text(r, 5)?]),
        &tx,
        "INSERT INTO events (id, run_id, at, step, kind, payload) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .map_err(|err| err.into_state(from, &to_shown))?;
    // New runs and events continue after the copied ids.
    super::pg::wait(tx.batch_execute(
        "SELECT setval(pg_get_serial_sequence('runs', 'id'), coalesce(max(id), 0) + 1, false) FROM runs;
         SELECT setval(pg_get_serial_sequence('events', 'id'), coalesce(max(id), 0) + 1, false) FROM events;",
    ))
    .map_err(e)?;
    super::pg::wait(tx.commit()).map_err(e)?;
    Ok(copied)
}

/// One SQLite value as PostgreSQL takes it: every column is a bigint or text, maybe NULL.
enum Value {
    Int(Option<i64>),
    Text(Option<String>),
}

fn int(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Value> {
    row.get(i).map(Value::Int)
}

fn text(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Value> {
    row.get(i).map(Value::Text)
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

/// Reads every row of `select` from SQLite and inserts it with `insert`; how many.
fn each_row(
    sqlite: &Connection,
    select: &str,
    read: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<Vec<Value>>,
    tx: &tokio_postgres::Transaction<'_>,
    insert: &str,
) -> Result<u64, CopyError> {
    let statement = super::pg::wait(tx.prepare(insert)).map_err(CopyError::Write)?;
    let mut stmt = sqlite.prepare(select).map_err(CopyError::Read)?;
    let mut rows = stmt.query([]).map_err(CopyError::Read)?;
    let mut count = 0;
    while let Some(row) = rows.next().map_err(CopyError::Read)? {
        let values = read(row).map_err(CopyError::Read)?;
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
            .iter()
            .map(|v| match v {
                Value::Int(i) => i as &(dyn tokio_postgres::types::ToSql + Sync),
                Value::Text(t) => t as &(dyn tokio_postgres::types::ToSql + Sync),
            })
            .collect();
        super::pg::wait(tx.execute(&statement, &params)).map_err(CopyError::Write)?;
        count += 1;
    }
    Ok(count)
}
