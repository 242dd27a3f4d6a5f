//! The state DB's schema: pragmas and numbered migrations. `user_version` is how many have
//! run; each runs in its own `BEGIN IMMEDIATE` transaction that re-reads the version first, so
//! two processes opening a new DB at once do not both create it.

use rusqlite::{Connection, TransactionBehavior};

pub(in crate::state) const PRAGMAS: &str = "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
                                  PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;";

/// Numbered schema migrations, oldest first. Never edit one that has shipped: add another.
pub(in crate::state) const MIGRATIONS: &[&str] = &[
    // 1: runs, steps, attempts, outputs, the append-only events, the run lock.
    r#"
CREATE TABLE runs (
    id           INTEGER PRIMARY KEY,
    runbook      TEXT NOT NULL,
    env          TEXT NOT NULL,
    runbook_hash TEXT NOT NULL,
    inputs_hash  TEXT NOT NULL,
    vars_json    TEXT NOT NULL,
    operator     TEXT NOT NULL,
    host         TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    ended_at     INTEGER,
    status       TEXT NOT NULL
) STRICT;
CREATE TABLE steps (
    run_id      INTEGER NOT NULL REFERENCES runs(id),
    step        TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    started_at  INTEGER,
    ended_at    INTEGER,
    duration_ms INTEGER,
    last_error  TEXT,
    fix         TEXT,
    PRIMARY KEY (run_id, step)
) STRICT;
CREATE TABLE attempts (
    run_id      INTEGER NOT NULL REFERENCES runs(id),
    step        TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    intent_at   INTEGER,
    action      TEXT,
    ended_at    INTEGER,
    outcome     TEXT,
    error       TEXT,
    duration_ms INTEGER,
    log         TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, step, attempt)
) STRICT;
CREATE TABLE outputs (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step   TEXT NOT NULL,
    name   TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, step, name)
) STRICT;
CREATE TABLE events (
    id      INTEGER PRIMARY KEY,
    run_id  INTEGER REFERENCES runs(id),
    at      INTEGER NOT NULL,
    step    TEXT,
    kind    TEXT NOT NULL,
    payload TEXT NOT NULL
) STRICT;
CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;
CREATE TABLE run_lock (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    run_id       INTEGER,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    acquired_at  INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
) STRICT;
"#,
    // 2: run, step and attempt states are checked by the database; the lock holder's process
    // start time, so that a reused pid does not keep a dead lease alive. Tables are rebuilt
    // (SQLite cannot add a CHECK to a column), keeping their rows and their order.
    r#"
CREATE TABLE runs_v2 (
    id           INTEGER PRIMARY KEY,
    runbook      TEXT NOT NULL,
    env          TEXT NOT NULL,
    runbook_hash TEXT NOT NULL,
    inputs_hash  TEXT NOT NULL,
    vars_json    TEXT NOT NULL,
    operator     TEXT NOT NULL,
    host         TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    ended_at     INTEGER,
    status       TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'interrupted'))
) STRICT;
INSERT INTO runs_v2 SELECT * FROM runs ORDER BY id;
DROP TABLE runs;
ALTER TABLE runs_v2 RENAME TO runs;
CREATE TABLE steps_v2 (
    run_id      INTEGER NOT NULL REFERENCES runs(id),
    step        TEXT NOT NULL,
    state       TEXT NOT NULL
                CHECK (state IN ('pending', 'running', 'applied', 'satisfied', 'skipped', 'failed', 'blocked')),
    attempts    INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    started_at  INTEGER,
    ended_at    INTEGER,
    duration_ms INTEGER,
    last_error  TEXT,
    fix         TEXT,
    PRIMARY KEY (run_id, step)
) STRICT;
INSERT INTO steps_v2 SELECT * FROM steps ORDER BY rowid;
DROP TABLE steps;
ALTER TABLE steps_v2 RENAME TO steps;
CREATE TABLE attempts_v2 (
    run_id      INTEGER NOT NULL REFERENCES runs(id),
    step        TEXT NOT NULL,
    attempt     INTEGER NOT NULL CHECK (attempt >= 1),
    started_at  INTEGER NOT NULL,
    intent_at   INTEGER,
    action      TEXT,
    ended_at    INTEGER,
    outcome     TEXT CHECK (outcome IN ('applied', 'satisfied', 'failed', 'retryable_error', 'interrupted')),
    error       TEXT,
    duration_ms INTEGER,
    log         TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, step, attempt)
) STRICT;
INSERT INTO attempts_v2 SELECT * FROM attempts ORDER BY rowid;
DROP TABLE attempts;
ALTER TABLE attempts_v2 RENAME TO attempts;
ALTER TABLE run_lock ADD COLUMN pid_started INTEGER;
"#,
    // 3: a run's events by kind, for `audit` (its decisions) and `status` (each step's last
    // `step_done`), which otherwise read every event of every run: 0.25 s and 1.8 s on a
    // state DB of 5,000 runs and a million events.
    r#"
CREATE INDEX events_by_run_kind ON events (run_id, kind);
"#,
    // 4: a run stopped for an approval nobody gave has its own status (it was `failed`).
    r#"
CREATE TABLE runs_v4 (
    id           INTEGER PRIMARY KEY,
    runbook      TEXT NOT NULL,
    env          TEXT NOT NULL,
    runbook_hash TEXT NOT NULL,
    inputs_hash  TEXT NOT NULL,
    vars_json    TEXT NOT NULL,
    operator     TEXT NOT NULL,
    host         TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    ended_at     INTEGER,
    status       TEXT NOT NULL
                 CHECK (status IN ('running', 'done', 'failed', 'interrupted', 'awaiting_approval'))
) STRICT;
INSERT INTO runs_v4 SELECT * FROM runs ORDER BY id;
DROP TABLE runs;
ALTER TABLE runs_v4 RENAME TO runs;
"#,
];

/// Runs the migrations after `user_version`. Tables are rebuilt with foreign keys off (they
/// may only be switched outside a transaction), and checked before each commit.
pub(in crate::state) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch("PRAGMA foreign_keys=OFF")?;
    let result = (|| {
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let version = i as i64 + 1;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // Another process may have run it since we looked.
            let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if current >= version {
                continue;
            }
            tx.execute_batch(sql)?;
            let broken: Option<String> =
                tx.query_row("SELECT \"table\" FROM pragma_foreign_key_check LIMIT 1", [], |r| r.get(0)).ok();
            if let Some(table) = broken {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    format!("migration {version} left a dangling reference in {table}").into(),
                ));
            }
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()?;
        }
        Ok(())
    })();
    conn.execute_batch("PRAGMA foreign_keys=ON")?;
    result
}
