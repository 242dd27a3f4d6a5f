//! The state DB: runs, step attempts, non-secret outputs, the append-only event log, and the
//! run lock. One connection, owned by one thread ([`StateHandle`]) during a run; commands that
//! only read use [`StateDb`] directly.
//!
//! Every event is written in its own `BEGIN IMMEDIATE` transaction with `synchronous=FULL`
//! before the engine goes on, so an intent is on disk before its side effect. This module
//! must not know about steps or the cloud.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use crate::clock::now_ms;
use crate::event::{DoneOutcome, Event, Outputs, RunStatus};

const PRAGMAS: &str = "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
                       PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;";

/// Numbered schema migrations; the DB's `user_version` is how many have run.
const MIGRATIONS: &[&str] = &[r#"
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
"#];

/// A lease whose holder has not beaten for this long, on another host, may be taken over.
const LEASE_STALE_MS: i64 = 30_000;

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
         heartbeat {heartbeat_age_s}s ago; wait for it, or if it is dead: runbook unlock --force",
        path.display()
    )]
    Locked { path: PathBuf, run: String, host: String, pid: i64, since: String, heartbeat_age_s: i64 },
    #[error("no run found in {}{}", path.display(), if what.is_empty() { String::new() } else { format!(" {what}") })]
    NoRun { path: PathBuf, what: String },
    #[error("state DB {}: {source}", path.display())]
    Sql { path: PathBuf, source: rusqlite::Error },
}

pub(crate) struct StateDb {
    conn: Connection,
    path: PathBuf,
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
    pub(crate) status: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct StepRow {
    pub(crate) step: String,
    pub(crate) state: String,
    pub(crate) attempts: i64,
    pub(crate) duration_ms: Option<i64>,
    pub(crate) last_error: Option<String>,
    pub(crate) fix: Option<String>,
    /// The last attempt recorded an intent and no outcome: the side effect may have happened.
    pub(crate) in_doubt: bool,
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

impl StateDb {
    /// Opens (creating with mode 0600 if absent) and migrates the state DB.
    pub(crate) fn open(path: &Path) -> Result<Self, StateError> {
        let open_err = |message: String| StateError::Open { path: path.to_path_buf(), message };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| open_err(e.to_string()))?;
        let conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        // Read before any write: a file that is not a database fails here, untouched.
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| open_err(e.to_string()))?;
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(StateError::NewerSchema { path: path.to_path_buf(), found: version, supported });
        }
        conn.execute_batch(PRAGMAS).map_err(|e| open_err(e.to_string()))?;
        let mut db = StateDb { conn, path: path.to_path_buf() };
        db.migrate(version)?;
        Ok(db)
    }

    fn migrate(&mut self, from: i64) -> Result<(), StateError> {
        let path = self.path.clone();
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            let tx = self.tx()?;
            tx.execute_batch(sql).map_err(|e| sql_err(&path, e))?;
            tx.pragma_update(None, "user_version", i as i64 + 1).map_err(|e| sql_err(&path, e))?;
            tx.commit().map_err(|e| sql_err(&path, e))?;
        }
        Ok(())
    }

    fn tx(&mut self) -> Result<rusqlite::Transaction<'_>, StateError> {
        let path = self.path.clone();
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_err(&path, e))
    }

    pub(crate) fn create_run(&mut self, run: &NewRun<'_>) -> Result<i64, StateError> {
        let path = self.path.clone();
        let tx = self.tx()?;
        let id = (|| {
            tx.execute(
                "INSERT INTO runs (runbook, env, runbook_hash, inputs_hash, vars_json, operator, host, started_at, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'running')",
                params![
                    run.runbook,
                    run.env,
                    run.runbook_hash,
                    run.inputs_hash,
                    serde_json::to_string(run.vars).unwrap_or_default(),
                    run.operator,
                    run.host,
                    now_ms()
                ],
            )?;
            let id = tx.last_insert_rowid();
            for step in run.steps {
                tx.execute(
                    "INSERT INTO steps (run_id, step, state) VALUES (?1, ?2, 'pending')",
                    params![id, step],
                )?;
            }
            Ok(id)
        })()
        .map_err(|e| sql_err(&path, e))?;
        tx.commit().map_err(|e| sql_err(&path, e))?;
        Ok(id)
    }

    /// Appends `event` and updates the tables it changes, in one transaction.
    pub(crate) fn record(&mut self, run: Option<i64>, event: &Event) -> Result<(), StateError> {
        if event.is_ephemeral() {
            return Ok(());
        }
        let path = self.path.clone();
        let now = now_ms();
        let tx = self.tx()?;
        (|| -> rusqlite::Result<()> {
            tx.execute(
                "INSERT INTO events (run_id, at, step, kind, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![run, now, event.step(), event.kind(), serde_json::to_string(event).unwrap_or_default()],
            )?;
            let Some(run) = run else { return Ok(()) };
            match event {
                Event::RunStarted { .. } => {
                    tx.execute("UPDATE runs SET status = 'running', ended_at = NULL WHERE id = ?1", params![run])?;
                }
                Event::StepStarted { step, attempt, .. } => {
                    tx.execute(
                        "INSERT OR REPLACE INTO attempts (run_id, step, attempt, started_at) VALUES (?1, ?2, ?3, ?4)",
                        params![run, step, attempt, now],
                    )?;
                    tx.execute(
                        "UPDATE steps SET state = 'running', attempts = ?3, started_at = COALESCE(started_at, ?4),
                         ended_at = NULL WHERE run_id = ?1 AND step = ?2",
                        params![run, step, attempt, now],
                    )?;
                }
                Event::StepIntent { step, attempt, action } => {
                    tx.execute(
                        "UPDATE attempts SET intent_at = ?4, action = ?5 WHERE run_id = ?1 AND step = ?2 AND attempt = ?3",
                        params![run, step, attempt, now, action],
                    )?;
                }
                Event::StepLog { step, attempt, line } => {
                    tx.execute(
                        "UPDATE attempts SET log = log || ?4 || char(10) WHERE run_id = ?1 AND step = ?2 AND attempt = ?3",
                        params![run, step, attempt, line],
                    )?;
                }
                Event::StepRetrying { step, attempt, error, .. } => {
                    end_attempt(&tx, run, step, *attempt, now, "retryable_error", Some(error))?;
                }
                Event::StepDone { step, attempt, outcome, outputs, .. } => {
                    let state = match outcome {
                        DoneOutcome::Satisfied => "satisfied",
                        DoneOutcome::Applied => "applied",
                    };
                    end_attempt(&tx, run, step, *attempt, now, state, None)?;
                    end_step(&tx, run, step, now, state, None, None)?;
                    tx.execute("DELETE FROM outputs WHERE run_id = ?1 AND step = ?2", params![run, step])?;
                    for (name, value) in outputs {
                        tx.execute(
                            "INSERT INTO outputs (run_id, step, name, value) VALUES (?1, ?2, ?3, ?4)",
                            params![run, step, name, value],
                        )?;
                    }
                }
                Event::StepFailed { step, attempt, error, fix, .. } => {
                    end_attempt(&tx, run, step, *attempt, now, "failed", Some(error))?;
                    end_step(&tx, run, step, now, "failed", Some(error), fix.as_deref())?;
                }
                Event::StepBlocked { step, by } => {
                    tx.execute(
                        "UPDATE steps SET state = 'blocked', last_error = ?3 WHERE run_id = ?1 AND step = ?2",
                        params![run, step, format!("waits for {by}")],
                    )?;
                }
                Event::StepSkipped { step, reason, operator } => {
                    end_step(&tx, run, step, now, "skipped", None, None)?;
                    tx.execute(
                        "UPDATE steps SET last_error = ?3 WHERE run_id = ?1 AND step = ?2",
                        params![run, step, format!("skipped by {operator}: {reason}")],
                    )?;
                }
                Event::StepReset { step, .. } => {
                    tx.execute(
                        "UPDATE steps SET state = 'pending', ended_at = NULL, last_error = NULL, fix = NULL
                         WHERE run_id = ?1 AND step = ?2",
                        params![run, step],
                    )?;
                    tx.execute("DELETE FROM outputs WHERE run_id = ?1 AND step = ?2", params![run, step])?;
                }
                Event::RunFinished { status, .. } => {
                    tx.execute(
                        "UPDATE runs SET status = ?2, ended_at = ?3 WHERE id = ?1",
                        params![run, status.as_str(), now],
                    )?;
                    if *status == RunStatus::Interrupted {
                        // Attempts cut short before their intent did nothing: close them.
                        tx.execute(
                            "UPDATE attempts SET outcome = 'interrupted', ended_at = ?2
                             WHERE run_id = ?1 AND outcome IS NULL AND intent_at IS NULL",
                            params![run, now],
                        )?;
                    }
                }
                Event::InputsChanged { .. }
                | Event::StepProbed { .. }
                | Event::StepWaiting { .. }
                | Event::ApprovalRequested { .. }
                | Event::LockTakenOver { .. }
                | Event::LockBroken { .. } => {}
            }
            Ok(())
        })()
        .map_err(|e| sql_err(&path, e))?;
        tx.commit().map_err(|e| sql_err(&path, e))
    }

    pub(crate) fn latest_run(&self, runbook: Option<&str>) -> Result<RunRow, StateError> {
        let id: Option<i64> = self
            .conn
            .query_row(
                "SELECT max(id) FROM runs WHERE ?1 IS NULL OR runbook = ?1",
                params![runbook],
                |r| r.get(0),
            )
            .map_err(|e| sql_err(&self.path, e))?;
        match id {
            Some(id) => self.run(id),
            None => Err(StateError::NoRun {
                path: self.path.clone(),
                what: runbook.map(|r| format!("of runbook {r}")).unwrap_or_default(),
            }),
        }
    }

    pub(crate) fn run(&self, id: i64) -> Result<RunRow, StateError> {
        self.conn
            .query_row(
                "SELECT id, runbook, env, runbook_hash, inputs_hash, vars_json, operator, host,
                        started_at, ended_at, status FROM runs WHERE id = ?1",
                params![id],
                |r| {
                    Ok(RunRow {
                        id: r.get(0)?,
                        runbook: r.get(1)?,
                        env: r.get(2)?,
                        runbook_hash: r.get(3)?,
                        inputs_hash: r.get(4)?,
                        vars: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
                        operator: r.get(6)?,
                        host: r.get(7)?,
                        started_at: r.get(8)?,
                        ended_at: r.get(9)?,
                        status: r.get(10)?,
                    })
                },
            )
            .optional()
            .map_err(|e| sql_err(&self.path, e))?
            .ok_or_else(|| StateError::NoRun { path: self.path.clone(), what: format!("with id {id}") })
    }

    pub(crate) fn steps(&self, run: i64) -> Result<Vec<StepRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT s.step, s.state, s.attempts, s.duration_ms, s.last_error, s.fix,
                        EXISTS (SELECT 1 FROM attempts a WHERE a.run_id = s.run_id AND a.step = s.step
                                AND a.attempt = s.attempts AND a.intent_at IS NOT NULL AND a.outcome IS NULL)
                 FROM steps s WHERE s.run_id = ?1 ORDER BY rowid",
            )
            .map_err(|e| sql_err(&self.path, e))?;
        
        stmt
            .query_map(params![run], |r| {
                Ok(StepRow {
                    step: r.get(0)?,
                    state: r.get(1)?,
                    attempts: r.get(2)?,
                    duration_ms: r.get(3)?,
                    last_error: r.get(4)?,
                    fix: r.get(5)?,
                    in_doubt: r.get(6)?,
                })
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| sql_err(&self.path, e))
    }

    pub(crate) fn attempts(&self, run: i64, step: &str) -> Result<Vec<AttemptRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT attempt, started_at, intent_at, action, outcome, error, duration_ms, log
                 FROM attempts WHERE run_id = ?1 AND step = ?2 ORDER BY attempt",
            )
            .map_err(|e| sql_err(&self.path, e))?;
        
        stmt
            .query_map(params![run, step], |r| {
                Ok(AttemptRow {
                    attempt: r.get(0)?,
                    started_at: r.get(1)?,
                    intent_at: r.get(2)?,
                    action: r.get(3)?,
                    outcome: r.get(4)?,
                    error: r.get(5)?,
                    duration_ms: r.get(6)?,
                    log: r.get(7)?,
                })
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| sql_err(&self.path, e))
    }

    /// Outputs of every step of `run` that finished, by step.
    pub(crate) fn outputs(&self, run: i64) -> Result<BTreeMap<String, Outputs>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT step, name, value FROM outputs WHERE run_id = ?1")
            .map_err(|e| sql_err(&self.path, e))?;
        let mut out: BTreeMap<String, Outputs> = BTreeMap::new();
        let rows = stmt
            .query_map(params![run], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
            .map_err(|e| sql_err(&self.path, e))?;
        for row in rows {
            let (step, name, value) = row.map_err(|e| sql_err(&self.path, e))?;
            out.entry(step).or_default().insert(name, value);
        }
        Ok(out)
    }

    /// Takes the run lock for `pid` on `host`. A lease held by a live process is refused; a
    /// dead holder's (same host: no such pid; other host: no heartbeat for 30 s) is taken
    /// over and the takeover is returned so that it can be recorded.
    pub(crate) fn acquire_lock(&mut self, host: &str, pid: i64) -> Result<Option<(String, i64)>, StateError> {
        let path = self.path.clone();
        let now = now_ms();
        let tx = self.tx()?;
        let holder: Option<(Option<i64>, String, i64, i64, i64)> = tx
            .query_row("SELECT run_id, host, pid, acquired_at, heartbeat_at FROM run_lock WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()
            .map_err(|e| sql_err(&path, e))?;
        let mut taken_over = None;
        if let Some((run, h, p, since, beat)) = holder {
            if p != pid && holder_alive(host, &h, p, beat, now) {
                return Err(StateError::Locked {
                    path,
                    run: run.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
                    host: h,
                    pid: p,
                    since: crate::clock::format_utc(since),
                    heartbeat_age_s: (now - beat) / 1000,
                });
            }
            if p != pid || h != host {
                taken_over = Some((h, p));
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO run_lock (id, run_id, host, pid, acquired_at, heartbeat_at)
             VALUES (1, NULL, ?1, ?2, ?3, ?3)",
            params![host, pid, now],
        )
        .map_err(|e| sql_err(&path, e))?;
        tx.commit().map_err(|e| sql_err(&path, e))?;
        Ok(taken_over)
    }

    /// Whether a live process holds the lock for `run` (a run marked running may have died).
    pub(crate) fn run_is_live(&self, run: i64, host: &str) -> Result<bool, StateError> {
        let holder: Option<(String, i64, i64)> = self
            .conn
            .query_row("SELECT host, pid, heartbeat_at FROM run_lock WHERE id = 1 AND run_id = ?1", params![run], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
            .map_err(|e| sql_err(&self.path, e))?;
        Ok(holder.is_some_and(|(h, p, beat)| holder_alive(host, &h, p, beat, now_ms())))
    }

    pub(crate) fn lock_run(&mut self, pid: i64, run: i64) -> Result<(), StateError> {
        self.conn
            .execute("UPDATE run_lock SET run_id = ?2 WHERE pid = ?1", params![pid, run])
            .map(drop)
            .map_err(|e| sql_err(&self.path, e))
    }

    pub(crate) fn heartbeat(&mut self, pid: i64) -> Result<(), StateError> {
        self.conn
            .execute("UPDATE run_lock SET heartbeat_at = ?2 WHERE pid = ?1", params![pid, now_ms()])
            .map(drop)
            .map_err(|e| sql_err(&self.path, e))
    }

    pub(crate) fn release_lock(&mut self, pid: i64) -> Result<(), StateError> {
        self.conn
            .execute("DELETE FROM run_lock WHERE pid = ?1", params![pid])
            .map(drop)
            .map_err(|e| sql_err(&self.path, e))
    }

    /// Removes whatever lock there is; returns its holder, for the audit record.
    pub(crate) fn break_lock(&mut self) -> Result<Option<(String, i64)>, StateError> {
        let path = self.path.clone();
        let tx = self.tx()?;
        let holder = tx
            .query_row("SELECT host, pid FROM run_lock WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(|e| sql_err(&path, e))?;
        tx.execute("DELETE FROM run_lock", []).map_err(|e| sql_err(&path, e))?;
        tx.commit().map_err(|e| sql_err(&path, e))?;
        Ok(holder)
    }
}

/// Same host: the pid exists. Other host: it beat within the last 30 s.
fn holder_alive(our_host: &str, host: &str, pid: i64, heartbeat_at: i64, now: i64) -> bool {
    if host == our_host {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        now - heartbeat_at < LEASE_STALE_MS
    }
}

fn end_attempt(
    tx: &rusqlite::Transaction<'_>,
    run: i64,
    step: &str,
    attempt: u32,
    now: i64,
    outcome: &str,
    error: Option<&str>,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE attempts SET outcome = ?4, error = ?5, ended_at = ?6, duration_ms = ?6 - started_at
         WHERE run_id = ?1 AND step = ?2 AND attempt = ?3",
        params![run, step, attempt, outcome, error, now],
    )
    .map(drop)
}

fn end_step(
    tx: &rusqlite::Transaction<'_>,
    run: i64,
    step: &str,
    now: i64,
    state: &str,
    error: Option<&str>,
    fix: Option<&str>,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE steps SET state = ?3, ended_at = ?4, duration_ms = ?4 - COALESCE(started_at, ?4),
         last_error = ?5, fix = ?6 WHERE run_id = ?1 AND step = ?2",
        params![run, step, state, now, error, fix],
    )
    .map(drop)
}

fn sql_err(path: &Path, source: rusqlite::Error) -> StateError {
    StateError::Sql { path: path.to_path_buf(), source }
}

/// The state DB owned by one thread for the length of a run; async callers send it work.
#[derive(Clone)]
pub(crate) struct StateHandle {
    tx: std::sync::mpsc::Sender<Box<dyn FnOnce(&mut StateDb) + Send>>,
}

impl StateHandle {
    pub(crate) fn spawn(mut db: StateDb) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce(&mut StateDb) + Send>>();
        std::thread::Builder::new()
            .name("state-db".into())
            .spawn(move || {
                for job in rx {
                    job(&mut db);
                }
            })
            .expect("spawn the state DB thread");
        Self { tx }
    }

    /// Runs `f` on the owner thread and waits for its result.
    pub(crate) async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut StateDb) -> R + Send + 'static,
    ) -> R {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Box::new(move |db: &mut StateDb| {
            let _ = reply.send(f(db));
        });
        self.tx.send(job).expect("the state DB thread outlives the run");
        answer.await.expect("the state DB thread answers every call")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ProbeResult;

    fn temp_db(name: &str) -> (PathBuf, StateDb) {
        let dir = std::env::temp_dir().join(format!("runbook-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("state.db");
        let db = StateDb::open(&path).unwrap();
        (path, db)
    }

    fn new_run(db: &mut StateDb) -> i64 {
        let vars = BTreeMap::new();
        db.create_run(&NewRun {
            runbook: "sprint-2",
            env: "local",
            runbook_hash: "h",
            inputs_hash: "i",
            vars: &vars,
            operator: "op",
            host: "host",
            steps: &["T2.1".to_string()],
        })
        .unwrap()
    }

    #[test]
    fn intent_without_outcome_is_in_doubt() {
        let (_, mut db) = temp_db("doubt");
        let run = new_run(&mut db);
        let step = "T2.1".to_string();
        db.record(Some(run), &Event::StepStarted { step: step.clone(), attempt: 1, title: "t".into(), in_doubt: false })
            .unwrap();
        db.record(Some(run), &Event::StepProbed { step: step.clone(), attempt: 1, result: ProbeResult::Absent, detail: String::new() })
            .unwrap();
        assert!(!db.steps(run).unwrap()[0].in_doubt);
        db.record(Some(run), &Event::StepIntent { step: step.clone(), attempt: 1, action: "create".into() }).unwrap();
        assert!(db.steps(run).unwrap()[0].in_doubt);
        db.record(
            Some(run),
            &Event::StepDone {
                step,
                attempt: 1,
                outcome: DoneOutcome::Applied,
                outputs: Outputs::from([("uri".into(), "x".into())]),
                duration_ms: 1,
            },
        )
        .unwrap();
        let row = &db.steps(run).unwrap()[0];
        assert_eq!((row.state.as_str(), row.in_doubt), ("applied", false));
        assert_eq!(db.outputs(run).unwrap()["T2.1"]["uri"], "x");
    }

    #[test]
    fn events_cannot_be_rewritten() {
        let (_, mut db) = temp_db("append");
        let run = new_run(&mut db);
        db.record(Some(run), &Event::InputsChanged { what: "x".into() }).unwrap();
        assert!(db.conn.execute("DELETE FROM events", []).is_err());
        assert!(db.conn.execute("UPDATE events SET kind = 'y'", []).is_err());
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_alone() {
        let (path, db) = temp_db("newer");
        db.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(db);
        let before = std::fs::read(&path).unwrap();
        match StateDb::open(&path) {
            Err(StateError::NewerSchema { found: 99, .. }) => {}
            other => panic!("expected NewerSchema, got {:?}", other.err()),
        }
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn a_live_holder_keeps_the_lock_and_a_dead_one_loses_it() {
        let (_, mut db) = temp_db("lock");
        let me = std::process::id() as i64;
        assert_eq!(db.acquire_lock("h", me).unwrap(), None);
        // Another live process on this host (pid 1 always exists) holds it: refused.
        db.conn.execute("UPDATE run_lock SET pid = 1", []).unwrap();
        assert!(matches!(db.acquire_lock("h", me), Err(StateError::Locked { pid: 1, .. })));
        // A pid that does not exist: taken over.
        db.conn.execute("UPDATE run_lock SET pid = 999999999", []).unwrap();
        assert_eq!(db.acquire_lock("h", me).unwrap(), Some(("h".to_string(), 999_999_999)));
    }

    #[cfg(unix)]
    #[test]
    fn the_db_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let (path, _db) = temp_db("mode");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
