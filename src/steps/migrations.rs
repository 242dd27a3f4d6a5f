//! `migrations` (issue 19; seed 003 §5 "Migrations" and §7 "Migration lock timeout"): Dixie's
//! migrations against its database, under Dixie's own migration advisory lock.
//!
//! The files are the app's (`NNN_name.sql` forward, `NNN_name_down.sql` back), the record is
//! Dixie's `_migrations(id, filename, checksum, applied_at)`. `status` only reads: applied,
//! pending, and drift (a row without its file, a file changed since it was applied). `up`
//! applies the pending files in order, `down` the down files of everything above `to` in reverse
//! order: each file in one transaction with its `_migrations` row, holding the advisory lock
//! Dixie takes at start (so neither a starting Dixie nor a second operator interleaves). A down
//! shows the tables, columns and indexes it drops, with their row counts, before its approval.
//! `release_lock` names the session holding the lock and, after approval, ends that one backend
//! (`pg_terminate_backend`); 003's `pg_advisory_unlock_all()` releases only the caller's own.
//!
//! The session logs in with DATABASE_URL from SSM (a secret: never logged, never an output) over
//! TLS with the environment's CA file, as T2.3 and T2.8 do.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use tokio_postgres::Client;

use super::diagnose::{
    LockScene, LockSession, MIGRATION_LOCK_SQL, describe_lock_session, dixie_migration_lock_key, lock_scene,
    pg_lock_parts,
};
use super::{Probe, Step, StepContext, StepError, number_or_text, reach};
use crate::event::Outputs;
use crate::secret::Secret;

/// What the step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Action {
    /// Read only: applied, pending, drift.
    Status,
    /// Apply the pending files in order.
    Up,
    /// Apply the down files of the migrations above `to`, newest first.
    Down,
    /// End the backend that holds Dixie's migration lock (`pid`), after approval.
    ReleaseLock,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {
    action: Action,
    /// The SSM SecureString holding Dixie's DATABASE_URL (its role logs in, as Dixie does).
    database_url_param: String,
    /// The CA bundle the server's certificate is checked against; empty: the system's roots.
    #[serde(default)]
    ca_file: String,
    /// The app's migrations folder, relative to the project.
    dir: String,
    /// `down`: the migration to stay at (its number, `012`); everything above it goes.
    #[serde(default)]
    to: String,
    /// The bigint key of Dixie's `pg_advisory_lock`; 003's Dixie's (SHA-256) by default.
    #[serde(default = "dixie_migration_lock_key", deserialize_with = "key_or_text")]
    lock_key: i64,
    /// How long to wait for the lock when someone else holds it, before naming the holder.
    #[serde(default = "thirty", deserialize_with = "number_or_text")]
    lock_wait_seconds: u64,
    /// `status`: the number of `_migrations` rows there must be (an upstream step's `applied`),
    /// so that a Dixie which re-applied what a down removed is seen. Empty: not checked.
    #[serde(default)]
    expect_applied: String,
    /// `release_lock`: the backend to end, as `status`/`release_lock` named it.
    #[serde(default)]
    pid: String,
    /// `release_lock`: why, for the audit.
    #[serde(default)]
    reason: String,
}

fn thirty() -> u64 {
    30
}

/// A lock key written as a number, or as the text a `${var}` gives (it may be negative).
fn key_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(i64),
        Text(String),
    }
    match Either::deserialize(d)? {
        Either::Number(n) => Ok(n),
        Either::Text(t) => t.trim().parse().map_err(|_| {
            serde::de::Error::custom(format!("lock_key: expected a whole number (a bigint key), got {t:?}"))
        }),
    }
}

/// The most files a migrations folder may hold, and the largest file read.
const MAX_FILES: usize = 1000;
const MAX_FILE_BYTES: u64 = 1 << 20;

/// One forward migration of the app and its down twin.
#[derive(Debug, Clone, PartialEq)]
struct Migration {
    number: u32,
    file: String,
    checksum: String,
    sql: String,
    down: Option<DownFile>,
}

#[derive(Debug, Clone, PartialEq)]
struct DownFile {
    file: String,
    sql: String,
}

/// A row of `_migrations`.
#[derive(Debug, Clone, PartialEq)]
struct Applied {
    file: String,
    checksum: String,
    applied_at: String,
}

/// `NNN` and whether it is a down file, for `NNN_name.sql` / `NNN_name_down.sql`; `None` for
/// any other name.
fn parse_name(name: &str) -> Option<(u32, bool)> {
    let stem = name.strip_suffix(".sql")?;
    let (digits, rest) = stem.split_at_checked(3)?;
    let rest = rest.strip_prefix('_')?;
    let plain = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !digits.chars().all(|c| c.is_ascii_digit()) || !plain(rest) {
        return None;
    }
    Some((digits.parse().ok()?, rest.ends_with("_down") && rest != "_down"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// The migrations of `dir`, by number: every `*.sql` must be `NNN_name.sql` or
/// `NNN_name_down.sql`, one forward file a number, a down file only beside its forward one.
/// Read bounded (regular files of at most 1 MiB, at most 1000 of them).
fn read_migrations(dir: &Path) -> Result<Vec<Migration>, String> {
    use std::io::Read;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut ups = std::collections::BTreeMap::new();
    let mut downs = std::collections::BTreeMap::new();
    for (n, entry) in entries.enumerate() {
        if n >= MAX_FILES {
            return Err(format!("{}: more than {MAX_FILES} entries: not a migrations folder", dir.display()));
        }
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".sql") {
            continue;
        }
        let (number, is_down) = parse_name(&name).ok_or_else(|| {
            format!("{}: {name:?} is not NNN_name.sql or NNN_name_down.sql (lower-case, digits, _)", dir.display())
        })?;
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!("{} is not a regular file", path.display()));
        }
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(format!("{} is larger than 1 MiB: not a migration", path.display()));
        }
        let checksum = sha256_hex(&bytes);
        let sql = String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
        let slot = if is_down { &mut downs } else { &mut ups };
        if let Some((other, _, _)) = slot.insert(number, (name.clone(), sql, checksum)) {
            return Err(format!("{}: {other} and {name} have the same number {number:03}", dir.display()));
        }
    }
    let mut migrations: Vec<Migration> = ups
        .into_iter()
        .map(|(number, (file, sql, checksum))| Migration { number, file, checksum, sql, down: None })
        .collect();
    for (number, (file, sql, _)) in downs {
        let Some(m) = migrations.iter_mut().find(|m| m.number == number) else {
            return Err(format!("{}: {file} has no forward migration {number:03}_….sql", dir.display()));
        };
        if file.trim_end_matches("_down.sql") != m.file.trim_end_matches(".sql") {
            return Err(format!(
                "{}: {file} is not the down file of {} (expected its name + _down)",
                dir.display(),
                m.file
            ));
        }
        m.down = Some(DownFile { file, sql });
    }
    Ok(migrations)
}

/// The number a `to` names (`012`, `12`): one of the forward migrations.
fn parse_target(to: &str, migrations: &[Migration]) -> Result<u32, String> {
    let known = || migrations.iter().map(|m| format!("{:03}", m.number)).collect::<Vec<_>>().join(", ");
    let number: u32 =
        to.trim().parse().map_err(|_| format!("to = {to:?} is not a migration number; give one of {}", known()))?;
    if !migrations.iter().any(|m| m.number == number) {
        return Err(format!("to = {to:?} is not a migration of the app; give one of {}", known()));
    }
    Ok(number)
}

/// Before anything runs: every migration above `to` has a down file, so a down never stops
/// half-way for want of one.
fn check_downs(migrations: &[Migration], to: u32) -> Result<(), String> {
    let missing: Vec<String> = migrations
        .iter()
        .filter(|m| m.number > to && m.down.is_none())
        .map(|m| format!("{}_down.sql", m.file.trim_end_matches(".sql")))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("down to {to:03} needs {}, which the app does not have", missing.join(", ")))
    }
}

/// What the table says against the files.
#[derive(Debug, Default, PartialEq)]
struct Survey {
    applied: usize,
    /// The last applied file by number, if any.
    head: Option<String>,
    pending: Vec<String>,
    /// A row without its file, a file changed since it was applied.
    drift: Vec<String>,
}

fn survey(migrations: &[Migration], rows: &[Applied]) -> Survey {
    let mut drift = Vec::new();
    for row in rows {
        match migrations.iter().find(|m| m.file == row.file) {
            None => drift.push(format!("{} (applied {}) has no file in the app", row.file, row.applied_at)),
            Some(m) if m.checksum != row.checksum => drift.push(format!(
                "{} changed since it was applied {} (recorded sha256 {}, file {})",
                row.file,
                row.applied_at,
                short(&row.checksum),
                short(&m.checksum)
            )),
            Some(_) => {}
        }
    }
    let applied_files: Vec<&str> = rows.iter().map(|r| r.file.as_str()).collect();
    let pending =
        migrations.iter().filter(|m| !applied_files.contains(&m.file.as_str())).map(|m| m.file.clone()).collect();
    let head = rows.iter().filter_map(|r| parse_name(&r.file).map(|(n, _)| (n, &r.file))).max().map(|(_, f)| f.clone());
    Survey { applied: rows.len(), head, pending, drift }
}

fn short(checksum: &str) -> &str {
    checksum.get(..12).unwrap_or(checksum)
}

/// The migrations a down to `to` reverts, newest first: every applied row above `to`, each with
/// its file and its down file. Drift among them or a missing down file refuses the whole down.
fn plan_down<'a>(migrations: &'a [Migration], rows: &[Applied], to: u32) -> Result<Vec<&'a Migration>, String> {
    let mut plan = Vec::new();
    for row in rows {
        let Some((number, _)) = parse_name(&row.file) else {
            return Err(format!("_migrations row {:?} is not a NNN_name.sql name", row.file));
        };
        if number <= to {
            continue;
        }
        let m = migrations
            .iter()
            .find(|m| m.file == row.file)
            .ok_or_else(|| format!("{} is applied but has no file in the app: its down is unknown", row.file))?;
        if m.checksum != row.checksum {
            return Err(format!("{} changed since it was applied: its down file may not revert what ran", row.file));
        }
        if m.down.is_none() {
            return Err(format!("{} has no down file {}_down.sql", m.file, m.file.trim_end_matches(".sql")));
        }
        plan.push(m);
    }
    plan.sort_by_key(|m| std::cmp::Reverse(m.number));
    Ok(plan)
}

/// Something a down statement removes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dropped {
    Table(String),
    Column {
        table: String,
        column: String,
    },
    Index(String),
    Constraint {
        table: String,
        name: String,
    },
    /// Another object, or a statement that deletes rows (`TRUNCATE`, `DELETE`): named as written.
    Other(String),
}

/// What the statements of `sql` drop, in order: `DROP TABLE a, b`, `DROP INDEX i`, `ALTER
/// TABLE t DROP [COLUMN] c, DROP CONSTRAINT k`, other `DROP …`, `TRUNCATE`, `DELETE FROM`.
/// Comments are skipped; identifiers are unquoted.
fn dropped(sql: &str) -> Vec<Dropped> {
    let mut found = Vec::new();
    for statement in statements(sql) {
        let words = words(&statement);
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        let lower: Vec<String> = w.iter().map(|s| s.to_ascii_lowercase()).collect();
        let l: Vec<&str> = lower.iter().map(String::as_str).collect();
        let skip_if_exists = |mut i: usize| {
            if l.get(i) == Some(&"if") && l.get(i + 1) == Some(&"exists") {
                i += 2;
            }
            i
        };
        let names_from = |i: usize| -> Vec<String> {
            w[i.min(w.len())..]
                .iter()
                .zip(&l[i.min(l.len())..])
                .filter(|(_, lw)| !matches!(**lw, "," | "cascade" | "restrict"))
                .map(|(word, _)| unquote(word))
                .collect()
        };
        match l.as_slice() {
            ["drop", "table", ..] => found.extend(names_from(skip_if_exists(2)).into_iter().map(Dropped::Table)),
            ["drop", "index", ..] => {
                let i = if l.get(2) == Some(&"concurrently") { 3 } else { 2 };
                found.extend(names_from(skip_if_exists(i)).into_iter().map(Dropped::Index));
            }
            ["alter", "table", ..] => {
                let mut i = skip_if_exists(2);
                if l.get(i) == Some(&"only") {
                    i += 1;
                }
                let Some(table) = w.get(i).map(|t| unquote(t)) else { continue };
                for action in w[i + 1..].split(|word| *word == ",") {
                    let a: Vec<String> = action.iter().map(|s| s.to_ascii_lowercase()).collect();
                    if a.first().map(String::as_str) != Some("drop") {
                        continue;
                    }
                    let kind = a.get(1).map(String::as_str);
                    let at = |j: usize| {
                        let j = if a.get(j).map(String::as_str) == Some("if") { j + 2 } else { j };
                        action.get(j).map(|n| unquote(n))
                    };
                    match kind {
                        Some("constraint") => {
                            if let Some(name) = at(2) {
                                found.push(Dropped::Constraint { table: table.clone(), name });
                            }
                        }
                        Some("column") => {
                            if let Some(column) = at(2) {
                                found.push(Dropped::Column { table: table.clone(), column });
                            }
                        }
                        Some(_) => {
                            if let Some(column) = at(1) {
                                found.push(Dropped::Column { table: table.clone(), column });
                            }
                        }
                        None => {}
                    }
                }
            }
            ["drop", ..] | ["truncate", ..] | ["delete", ..] => {
                found.push(Dropped::Other(w.join(" ").replace(" , ", ", ")))
            }
            _ => {}
        }
    }
    found
}

/// The statements of `sql`, `--` and `/* */` comments removed, split at `;` outside quotes.
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), _) if c == q => {
                quote = None;
                current.push(c);
            }
            (Some(_), _) => current.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                current.push(c);
            }
            (None, '-') if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                current.push(' ');
            }
            (None, '/') if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
                current.push(' ');
            }
            (None, ';') => out.push(std::mem::take(&mut current)),
            (None, _) => current.push(c),
        }
    }
    out.push(current);
    out.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// Words of a statement, with each comma a word of its own.
fn words(statement: &str) -> Vec<String> {
    statement.replace(',', " , ").split_whitespace().map(String::from).collect()
}

fn unquote(name: &str) -> String {
    name.split('.').map(|part| part.trim_matches('"')).collect::<Vec<_>>().join(".")
}

/// `name` (maybe `schema.table`) as a quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    name.split('.').map(|p| format!("\"{}\"", p.replace('"', "\"\""))).collect::<Vec<_>>().join(".")
}

/// One line of what a down loses, with the counts the database gives now.
async fn describe_drop(client: &Client, dropped: &Dropped) -> String {
    let count = |sql: String| async move {
        match client.query_one(&sql, &[]).await {
            Ok(row) => Ok((row.get::<_, i64>(0), row.get::<_, i64>(1))),
            Err(e) => Err(crate::error_chain::error_chain(&e)),
        }
    };
    match dropped {
        Dropped::Table(t) => match count(format!("SELECT count(*), 0::bigint FROM {}", quote_ident(t))).await {
            Ok((rows, _)) => format!("table {t}: {rows} row(s) lost"),
            Err(e) => format!("table {t}: row count unknown ({e})"),
        },
        Dropped::Column { table, column } => {
            let sql = format!("SELECT count(*), count({}) FROM {}", quote_ident(column), quote_ident(table));
            match count(sql).await {
                Ok((rows, values)) => format!("column {table}.{column}: {values} value(s) lost (of {rows} row(s))"),
                Err(e) => format!("column {table}.{column}: count unknown ({e})"),
            }
        }
        Dropped::Index(i) => format!("index {i} (no data)"),
        Dropped::Constraint { table, name } => format!("constraint {name} on {table} (no data)"),
        Dropped::Other(statement) => format!("statement: {statement}"),
    }
}

impl Params {
    fn files(&self, cx: &StepContext) -> Result<Vec<Migration>, StepError> {
        let dir = cx.project.join(&self.dir);
        read_migrations(&dir).map_err(|e| {
            StepError::fatal(e, "point `dir` at the app's migrations folder (NNN_name.sql and NNN_name_down.sql)")
        })
    }

    async fn connect(&self, cx: &StepContext) -> Result<(Client, String), StepError> {
        let url = self.database_url(cx).await?;
        let ca = cx.project_file(&self.ca_file);
        reach::postgres_connect(&cx.env, &url, ca.as_deref(), "runbook-migrations").await.map_err(|e| {
            let refused = ["password authentication failed", "does not exist", "permission denied", "certificate"];
            if refused.iter().any(|r| e.contains(r)) {
                StepError::fatal(
                    e,
                    format!(
                        "check DATABASE_URL in {} (T2.5 writes it) and ca_file (the environment's pg_ca_file)",
                        self.database_url_param
                    ),
                )
            } else {
                StepError::retryable(e)
            }
        })
    }

    async fn database_url(&self, cx: &StepContext) -> Result<Secret<String>, StepError> {
        match cx.parameter(&self.database_url_param).await? {
            Some(url) if url.expose() != super::ssm_params::PLACEHOLDER => Ok(url),
            _ => Err(StepError::fatal(
                format!("{} is missing or PLACEHOLDER", self.database_url_param),
                "runbook run sprint-2 (T2.5 writes DATABASE_URL)",
            )),
        }
    }

    /// The target of a down, judged against the files.
    fn target(&self, migrations: &[Migration]) -> Result<u32, StepError> {
        parse_target(&self.to, migrations)
            .map_err(|e| StepError::fatal(e, "runbook run migrations --var action=down --var to=<NNN>"))
    }

    /// What the step reports: counts and head; `changed_at_ms` says when this step last changed
    /// the table (0: it did not), for the redeploy that must follow a change.
    fn outputs(&self, s: &Survey, changed: bool) -> Outputs {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        Outputs::from([
            ("applied".to_string(), s.applied.to_string()),
            ("pending".to_string(), s.pending.len().to_string()),
            ("head".to_string(), s.head.clone().unwrap_or_else(|| "none".into())),
            ("drift".to_string(), s.drift.len().to_string()),
            ("changed_at_ms".to_string(), if changed { now.to_string() } else { "0".into() }),
        ])
    }

    async fn look(&self, cx: &StepContext, client: &Client) -> Result<(Vec<Migration>, Vec<Applied>), StepError> {
        let migrations = self.files(cx)?;
        let rows = applied(client).await?;
        Ok((migrations, rows))
    }

    /// The read-only judgement shared by probe and verify.
    async fn judge(&self, cx: &StepContext, after_apply: bool) -> Result<Probe, StepError> {
        let (client, _) = self.connect(cx).await?;
        let (migrations, rows) = self.look(cx, &client).await?;
        let s = survey(&migrations, &rows);
        match self.action {
            Action::Status => {
                cx.log(format!(
                    "{} applied, {} pending{}; head {}",
                    s.applied,
                    s.pending.len(),
                    if s.pending.is_empty() { String::new() } else { format!(" ({})", s.pending.join(", ")) },
                    s.head.as_deref().unwrap_or("none")
                ))
                .await;
                for d in &s.drift {
                    cx.warn(format!("drift: {d}")).await;
                }
                if let Some(expected) = self.expected_applied()?
                    && expected != s.applied
                {
                    return Ok(Probe::Conflict(format!(
                        "_migrations holds {} row(s), {expected} expected (head {}): Dixie runs the migrations its \
                         image carries at start, so a Dixie whose image has migrations above the target re-applies \
                         them; deploy the image that matches the target (runbook run rollback --var revision=N), then \
                         down again",
                        s.applied,
                        s.head.as_deref().unwrap_or("none")
                    )));
                }
                Ok(Probe::Satisfied(self.outputs(&s, false)))
            }
            Action::Up => {
                if !s.drift.is_empty() {
                    return Ok(Probe::Conflict(format!("drift: {}", s.drift.join("; "))));
                }
                if s.pending.is_empty() {
                    Ok(Probe::Satisfied(self.outputs(&s, after_apply)))
                } else {
                    Ok(Probe::Absent(format!("apply {} pending: {}", s.pending.len(), s.pending.join(", "))))
                }
            }
            Action::Down => {
                let to = self.target(&migrations)?;
                let plan = plan_down(&migrations, &rows, to).map_err(|e| {
                    StepError::fatal(e, "nothing was changed: restore the app's files, or choose a higher target")
                })?;
                if plan.is_empty() {
                    return Ok(Probe::Satisfied(self.outputs(&s, after_apply)));
                }
                let (summary, _) = down_summary(&client, &plan, to).await;
                Ok(Probe::Absent(summary))
            }
            Action::ReleaseLock => self.judge_lock(cx, &client, &s).await,
        }
    }

    fn expected_applied(&self) -> Result<Option<usize>, StepError> {
        if self.expect_applied.trim().is_empty() {
            return Ok(None);
        }
        self.expect_applied.trim().parse().map(Some).map_err(|_| {
            StepError::fatal(
                format!("expect_applied = {:?} is not a count", self.expect_applied),
                "give the applied count of the step that changed the migrations",
            )
        })
    }

    /// Takes Dixie's migration lock on `client`'s session, waiting at most `lock_wait_seconds`
    /// while another session holds it; then names the holder.
    async fn take_lock(&self, cx: &StepContext, client: &Client) -> Result<(), StepError> {
        let started = Instant::now();
        let limit = Duration::from_secs(self.lock_wait_seconds);
        let mut said = false;
        loop {
            let row = client.query_one("SELECT pg_try_advisory_lock($1)", &[&self.lock_key]).await.map_err(|e| {
                StepError::retryable(format!("pg_try_advisory_lock: {}", crate::error_chain::error_chain(&e)))
            })?;
            if row.get::<_, bool>(0) {
                cx.log(format!("holding Dixie's migration lock (key {})", self.lock_key)).await;
                return Ok(());
            }
            let scene = self.scene(client).await?;
            if started.elapsed() >= limit {
                return Err(StepError::fatal(
                    format!(
                        "Dixie's migration lock (key {}) is held by {} after waiting {} s; nothing was changed",
                        self.lock_key,
                        holders(&scene),
                        self.lock_wait_seconds
                    ),
                    format!(
                        "a starting Dixie migrates for seconds: run again; if that session runs no migration: runbook \
                         run migrations --var action=release_lock --var pid={} --var reason=\"…\"",
                        scene
                            .sessions
                            .iter()
                            .find(|s| s.granted)
                            .and_then(|s| s.pid)
                            .map_or("<pid>".into(), |p| p.to_string())
                    ),
                ));
            }
            if !said {
                cx.log(format!(
                    "waiting up to {} s for Dixie's migration lock, held by {}",
                    self.lock_wait_seconds,
                    holders(&scene)
                ))
                .await;
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn scene(&self, client: &Client) -> Result<LockScene, StepError> {
        let (classid, objid) = pg_lock_parts(self.lock_key);
        let rows = client
            .query(MIGRATION_LOCK_SQL, &[&classid, &objid])
            .await
            .map_err(|e| StepError::retryable(format!("reading pg_locks: {}", crate::error_chain::error_chain(&e))))?;
        lock_scene(&rows, self.lock_key).map_err(StepError::retryable)
    }

    async fn unlock(&self, client: &Client) {
        let _ = client.query_one("SELECT pg_advisory_unlock($1)", &[&self.lock_key]).await;
    }

    async fn up(&self, cx: &StepContext) -> Result<(), StepError> {
        let (mut client, _) = self.connect(cx).await?;
        self.take_lock(cx, &client).await?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS _migrations (id SERIAL PRIMARY KEY, filename TEXT UNIQUE NOT NULL, \
                 checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await
            .map_err(|e| sql_failed("CREATE TABLE _migrations", &e))?;
        // Under the lock: what is pending now, not what the probe saw.
        let (migrations, rows) = self.look(cx, &client).await?;
        let s = survey(&migrations, &rows);
        if !s.drift.is_empty() {
            self.unlock(&client).await;
            return Err(StepError::fatal(format!("drift: {}", s.drift.join("; ")), "restore the app's files"));
        }
        for m in migrations.iter().filter(|m| s.pending.contains(&m.file)) {
            let tx = client.transaction().await.map_err(|e| sql_failed("BEGIN", &e))?;
            tx.batch_execute(&m.sql).await.map_err(|e| sql_failed(&m.file, &e))?;
            tx.execute("INSERT INTO _migrations (filename, checksum) VALUES ($1, $2)", &[&m.file, &m.checksum])
                .await
                .map_err(|e| sql_failed(&format!("{}: recording it", m.file), &e))?;
            tx.commit().await.map_err(|e| sql_failed(&format!("{}: COMMIT", m.file), &e))?;
            cx.log(format!("applied {} (sha256 {})", m.file, short(&m.checksum))).await;
            cx.checkpoint(&format!("after-up-{:03}", m.number));
        }
        self.unlock(&client).await;
        Ok(())
    }

    async fn down(&self, cx: &StepContext) -> Result<(), StepError> {
        let (mut client, _) = self.connect(cx).await?;
        let (migrations, rows) = self.look(cx, &client).await?;
        let to = self.target(&migrations)?;
        let plan = plan_down(&migrations, &rows, to).map_err(|e| StepError::fatal(e, "nothing was changed"))?;
        if plan.is_empty() {
            return Ok(());
        }
        let (summary, files) = down_summary(&client, &plan, to).await;
        for line in summary.lines() {
            cx.log(line.to_string()).await;
        }
        // Asked before the lock is taken: a starting Dixie must not wait for an operator.
        if !cx.approve(&summary).await {
            let fix = cx.run().map(|run| {
                format!(
                    "read what it drops above (again: {}), then: {}",
                    cx.logs_hint(),
                    crate::hint::resume_approving(run)
                )
            });
            return Err(StepError::AwaitingApproval { summary, fix });
        }
        self.take_lock(cx, &client).await?;
        let rows = applied(&client).await?;
        let now = plan_down(&migrations, &rows, to).map_err(|e| StepError::fatal(e, "nothing more was changed"))?;
        let now_files: Vec<String> = now.iter().map(|m| m.file.clone()).collect();
        if now_files != files {
            self.unlock(&client).await;
            return Err(StepError::fatal(
                format!(
                    "the applied migrations changed after the approval (approved: {}; now: {}); nothing was changed",
                    files.join(", "),
                    now_files.join(", ")
                ),
                cx.retry_hint(),
            ));
        }
        for (i, m) in now.iter().enumerate() {
            let down = m.down.as_ref().expect("plan_down checked it");
            let tx = client.transaction().await.map_err(|e| sql_failed("BEGIN", &e))?;
            tx.batch_execute(&down.sql).await.map_err(|e| sql_failed(&down.file, &e))?;
            let deleted = tx
                .execute("DELETE FROM _migrations WHERE filename = $1", &[&m.file])
                .await
                .map_err(|e| sql_failed(&format!("{}: deleting its row", m.file), &e))?;
            if deleted != 1 {
                // Dropping the transaction rolls it back.
                return Err(StepError::fatal(
                    format!("{}: {deleted} _migrations rows matched; rolled back", m.file),
                    "runbook run migrations (action status) shows the table",
                ));
            }
            tx.commit().await.map_err(|e| sql_failed(&format!("{}: COMMIT", down.file), &e))?;
            cx.log(format!("reverted {} ({} of {})", m.file, i + 1, now.len())).await;
            cx.checkpoint(&format!("after-down-{:03}", m.number));
        }
        self.unlock(&client).await;
        Ok(())
    }

    /// `release_lock`: free when nobody holds it; otherwise the holder must be `pid`.
    async fn judge_lock(&self, cx: &StepContext, client: &Client, s: &Survey) -> Result<Probe, StepError> {
        let scene = self.scene(client).await?;
        for s in &scene.sessions {
            cx.log(describe_lock_session(s)).await;
        }
        let pid = self.pid()?;
        let Some(holder) = scene.sessions.iter().find(|s| s.granted) else {
            let mut outputs = self.outputs(s, false);
            outputs.insert("lock".into(), format!("key {} free in database {}", self.lock_key, scene.database));
            return Ok(Probe::Satisfied(outputs));
        };
        if holder.pid != Some(pid) {
            return Ok(Probe::Conflict(format!(
                "pid {pid} does not hold Dixie's migration lock; {}. Name that one: --var pid={}",
                holders(&scene),
                holder.pid.map_or("<none: a prepared transaction>".into(), |p| p.to_string())
            )));
        }
        Ok(Probe::Absent(self.release_summary(holder, &scene)))
    }

    fn pid(&self) -> Result<i32, StepError> {
        self.pid.trim().parse().map_err(|_| {
            StepError::fatal(
                format!("pid = {:?} is not a backend's pid", self.pid),
                "runbook run migrations --var action=release_lock --var pid=<the holder's pid> --var reason=\"…\"",
            )
        })
    }

    fn release_summary(&self, holder: &LockSession, scene: &LockScene) -> String {
        format!(
            "end backend {} with pg_terminate_backend; reason: {}\n  holder: {}\n  releases Dixie's migration lock \
             (key {}) in database {}; the backend's open transaction rolls back",
            holder.pid.unwrap_or_default(),
            self.reason.trim(),
            describe_lock_session(holder),
            self.lock_key,
            scene.database,
        )
    }

    async fn release(&self, cx: &StepContext) -> Result<(), StepError> {
        let (client, _) = self.connect(cx).await?;
        let scene = self.scene(&client).await?;
        let pid = self.pid()?;
        let Some(holder) = scene.sessions.iter().find(|s| s.granted && s.pid == Some(pid)) else {
            cx.log(format!("pid {pid} no longer holds the lock: nothing to end")).await;
            return Ok(());
        };
        let summary = self.release_summary(holder, &scene);
        if !cx.approve(&summary).await {
            return Err(StepError::AwaitingApproval { summary, fix: None });
        }
        let ended = client
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .map_err(|e| sql_failed(&format!("pg_terminate_backend({pid})"), &e))?
            .get::<_, bool>(0);
        if !ended {
            return Err(StepError::fatal(
                format!("pg_terminate_backend({pid}) returned false: the backend was already gone"),
                cx.retry_hint(),
            ));
        }
        cx.log(format!("ended backend {pid} (reason: {})", self.reason.trim())).await;
        Ok(())
    }
}

/// Who holds (and waits for) the lock, one phrase.
fn holders(scene: &LockScene) -> String {
    let held: Vec<String> = scene.sessions.iter().filter(|s| s.granted).map(describe_lock_session).collect();
    let waiting = scene.sessions.iter().filter(|s| !s.granted).count();
    let held = if held.is_empty() { "nobody".to_string() } else { held.join("; ") };
    format!("{held}; {waiting} session(s) waiting")
}

/// What a down approves: the files in order and, for each, what it drops with the counts now.
async fn down_summary(client: &Client, plan: &[&Migration], to: u32) -> (String, Vec<String>) {
    let files: Vec<String> = plan.iter().map(|m| m.file.clone()).collect();
    let mut text = format!("down to {to:03}: revert {} migration(s), newest first; the data below is lost", plan.len());
    for m in plan {
        let down = m.down.as_ref().expect("plan_down checked it");
        text.push_str(&format!("\n  {} ({}):", m.file, down.file));
        let drops = dropped(&down.sql);
        if drops.is_empty() {
            text.push_str(" drops nothing that the statements name");
        }
        for d in drops {
            text.push_str(&format!("\n    {}", describe_drop(client, &d).await));
        }
    }
    (text, files)
}

fn sql_failed(what: &str, e: &tokio_postgres::Error) -> StepError {
    StepError::fatal(
        format!("{what}: {}; its transaction rolled back, earlier files stay", crate::error_chain::error_chain(e)),
        "fix the migration or the database, then retry the step",
    )
}

/// `_migrations` by id, or nothing when the table does not exist yet.
async fn applied(client: &Client) -> Result<Vec<Applied>, StepError> {
    let read = |e: tokio_postgres::Error| {
        StepError::retryable(format!("reading _migrations: {}", crate::error_chain::error_chain(&e)))
    };
    let exists = client.query_one("SELECT to_regclass('_migrations') IS NOT NULL", &[]).await.map_err(read)?;
    if !exists.get::<_, bool>(0) {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT filename, checksum, to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
             FROM _migrations ORDER BY id",
            &[],
        )
        .await
        .map_err(read)?;
    Ok(rows
        .iter()
        .map(|r| Applied {
            file: r.get(0),
            checksum: r.get::<_, Option<String>>(1).unwrap_or_default(),
            applied_at: r.get::<_, Option<String>>(2).unwrap_or_default(),
        })
        .collect())
}

impl Step for Params {
    const KIND: &'static str = "migrations";
    const OUTPUTS: Option<&'static [&'static str]> =
        Some(&["applied", "pending", "head", "drift", "changed_at_ms", "lock"]);

    fn validate(&self) -> Result<(), String> {
        super::ssm_params::check_parameter_name("database_url_param", &self.database_url_param)?;
        super::check_wait("lock_wait_seconds", self.lock_wait_seconds)?;
        if self.dir.trim().is_empty() {
            return Err("dir is empty: name the app's migrations folder".into());
        }
        match self.action {
            Action::Down if self.to.trim().is_empty() => {
                Err("action = down needs a target: --var to=<NNN> (the migration to stay at, e.g. 012)".into())
            }
            Action::ReleaseLock if self.reason.trim().is_empty() => {
                Err("action = release_lock needs a reason for the audit: --var reason=\"…\" (and --var pid=<holder>)"
                    .into())
            }
            Action::ReleaseLock if self.pid.trim().parse::<i32>().map_or(true, |p| p <= 0) => Err(format!(
                "pid = {:?}: action = release_lock needs the holder's pid (runbook diagnose or a status names it)",
                self.pid
            )),
            _ => Ok(()),
        }
    }

    /// The files are read and judged before anything runs (before AWS is asked anything):
    /// names, a target that is a migration, a down file for every migration above it.
    fn check_files(&self, project: &Path) -> Result<(), String> {
        let migrations = read_migrations(&project.join(&self.dir)).map_err(|e| {
            format!("{e}; point `dir` at the app's migrations folder (NNN_name.sql, NNN_name_down.sql)")
        })?;
        if self.action == Action::Down {
            let to = parse_target(&self.to, &migrations)
                .map_err(|e| format!("{e}: runbook run migrations --var action=down --var to=<NNN>"))?;
            check_downs(&migrations, to).map_err(|e| {
                format!("{e}; nothing was changed: write the missing down file(s), or choose a higher target")
            })?;
        }
        Ok(())
    }

    async fn preflight(&self, cx: &StepContext) -> Result<(), StepError> {
        super::check_ca_file("ca_file", cx.project_file(&self.ca_file).as_deref())
    }

    fn converge_within(&self) -> Duration {
        Duration::from_secs(10)
    }

    async fn probe(&self, cx: &StepContext) -> Result<Probe, StepError> {
        self.judge(cx, false).await
    }

    /// After an apply (or settling one in doubt): the probe again, saying that the table changed.
    async fn verify(&self, cx: &StepContext) -> Result<Probe, StepError> {
        self.judge(cx, true).await
    }

    async fn apply(&self, cx: &StepContext) -> Result<(), StepError> {
        match self.action {
            Action::Status => Ok(()),
            Action::Up => self.up(cx).await,
            Action::Down => self.down(cx).await,
            Action::ReleaseLock => self.release(cx).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration(number: u32, name: &str, down: Option<&str>) -> Migration {
        let file = format!("{number:03}_{name}.sql");
        Migration {
            number,
            checksum: sha256_hex(file.as_bytes()),
            sql: String::new(),
            down: down.map(|sql| DownFile { file: format!("{number:03}_{name}_down.sql"), sql: sql.into() }),
            file,
        }
    }

    fn row(m: &Migration) -> Applied {
        Applied { file: m.file.clone(), checksum: m.checksum.clone(), applied_at: "2026-03-01T12:00:00Z".into() }
    }

    fn fixtures() -> Vec<Migration> {
        read_migrations(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/dixie/migrations")).unwrap()
    }

    #[test]
    fn the_apps_thirteen_migrations_are_read_in_order_each_with_its_down() {
        let m = fixtures();
        assert_eq!(m.len(), 13);
        assert_eq!(m.first().unwrap().file, "003_users_wallets.sql");
        assert_eq!(m.last().unwrap().file, "015_audit_hash_chain.sql");
        assert!(m.windows(2).all(|w| w[0].number < w[1].number));
        assert!(m.iter().all(|m| m.down.as_ref().is_some_and(|d| d.file.ends_with("_down.sql"))));
        assert_eq!(m[0].checksum.len(), 64);
    }

    #[test]
    fn names_are_nnn_name_sql_or_its_down_twin() {
        assert_eq!(parse_name("003_users_wallets.sql"), Some((3, false)));
        assert_eq!(parse_name("003_users_wallets_down.sql"), Some((3, true)));
        for bad in ["3_x.sql", "003-x.sql", "003_.sql", "003_X.sql", "abc_x.sql", "003_x.SQL", "003_x.sql.bak"] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_folder_with_a_stray_name_a_twin_number_or_an_orphan_down_is_refused() {
        let dir = std::env::temp_dir().join(format!("runbook-migrations-{}", std::process::id()));
        let case = |files: &[(&str, &str)]| {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, text) in files {
                std::fs::write(dir.join(name), text).unwrap();
            }
            read_migrations(&dir)
        };
        assert!(case(&[("001_a.sql", "x"), ("README.md", "")]).is_ok(), "other files are not migrations");
        assert!(case(&[("001_A.sql", "x")]).unwrap_err().contains("is not NNN_name.sql"));
        assert!(case(&[("001_a.sql", "x"), ("001_b.sql", "y")]).unwrap_err().contains("the same number 001"));
        assert!(case(&[("002_b_down.sql", "x")]).unwrap_err().contains("has no forward migration 002"));
        assert!(case(&[("002_b.sql", "x"), ("002_c_down.sql", "x")]).unwrap_err().contains("not the down file"));
        let big = "x".repeat((1 << 20) + 1);
        assert!(case(&[("001_a.sql", &big)]).unwrap_err().contains("larger than 1 MiB"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn status_names_pending_files_and_drift() {
        let m = vec![migration(3, "a", Some("")), migration(4, "b", Some("")), migration(5, "c", Some(""))];
        let s = survey(&m, &[row(&m[0])]);
        assert_eq!((s.applied, s.head.as_deref()), (1, Some("003_a.sql")));
        assert_eq!(s.pending, ["004_b.sql", "005_c.sql"]);
        assert!(s.drift.is_empty());
        let changed = Applied { checksum: "0".repeat(64), ..row(&m[1]) };
        let stranger = Applied { file: "016_new.sql".into(), ..row(&m[0]) };
        let s = survey(&m, &[row(&m[0]), changed, stranger]);
        assert_eq!(s.pending, ["005_c.sql"]);
        assert_eq!(s.head.as_deref(), Some("016_new.sql"));
        assert_eq!(s.drift.len(), 2, "{:?}", s.drift);
        assert!(s.drift[0].starts_with("004_b.sql changed since it was applied"), "{:?}", s.drift);
        assert!(s.drift[1].starts_with("016_new.sql (applied 2026-03-01T12:00:00Z) has no file"), "{:?}", s.drift);
        assert_eq!(
            survey(&m, &[]),
            Survey { pending: vec!["003_a.sql".into(), "004_b.sql".into(), "005_c.sql".into()], ..Survey::default() }
        );
    }

    #[test]
    fn a_down_reverts_what_is_applied_above_the_target_newest_first() {
        let m = fixtures();
        let rows: Vec<Applied> = m.iter().map(row_of_file).collect();
        let plan = plan_down(&m, &rows, 12).unwrap();
        let files: Vec<&str> = plan.iter().map(|m| m.file.as_str()).collect();
        assert_eq!(
            files,
            ["015_audit_hash_chain.sql", "014_reputation_task_cohorts.sql", "013_autonomous_permissions.sql"]
        );
        assert!(plan_down(&m, &rows, 15).unwrap().is_empty(), "at the target: nothing to do");
        // Only applied rows go: with 013 not applied, a down to 012 reverts nothing.
        assert!(plan_down(&m, &rows[..10], 12).unwrap().is_empty());
    }

    fn row_of_file(m: &Migration) -> Applied {
        Applied { file: m.file.clone(), checksum: m.checksum.clone(), applied_at: "t".into() }
    }

    #[test]
    fn a_missing_down_file_or_an_unknown_target_is_refused_before_anything_runs() {
        let m = vec![migration(3, "a", Some("DROP TABLE a;")), migration(4, "b", None), migration(5, "c", Some(""))];
        assert_eq!(check_downs(&m, 4), Ok(()));
        assert_eq!(check_downs(&m, 3).unwrap_err(), "down to 003 needs 004_b_down.sql, which the app does not have");
        assert!(
            parse_target("012", &m).unwrap_err().contains("is not a migration of the app; give one of 003, 004, 005")
        );
        assert!(parse_target("twelve", &m).unwrap_err().contains("is not a migration number"));
        assert_eq!(parse_target("4", &m), Ok(4));
        let rows: Vec<Applied> = m.iter().map(row).collect();
        assert!(plan_down(&m, &rows, 3).unwrap_err().contains("004_b.sql has no down file 004_b_down.sql"));
        let changed = vec![row(&m[0]), row(&m[1]), Applied { checksum: "x".into(), ..row(&m[2]) }];
        assert!(plan_down(&m, &changed, 4).unwrap_err().contains("005_c.sql changed since it was applied"));
        let unknown = vec![row(&m[0]), Applied { file: "009_gone.sql".into(), ..row(&m[0]) }];
        assert!(plan_down(&m, &unknown, 4).unwrap_err().contains("009_gone.sql is applied but has no file"));
    }

    #[test]
    fn what_the_apps_down_files_drop_is_named() {
        let m = fixtures();
        let down = |n: u32| dropped(&m.iter().find(|m| m.number == n).unwrap().down.as_ref().unwrap().sql);
        assert_eq!(down(3), [Dropped::Table("wallets".into()), Dropped::Table("users".into())]);
        let col = |t: &str, c: &str| Dropped::Column { table: t.into(), column: c.into() };
        assert_eq!(
            down(12),
            [
                Dropped::Index("sessions_last_seen_idx".into()),
                Dropped::Constraint { table: "sessions".into(), name: "sessions_revocation_reason_chk".into() },
                col("sessions", "revocation_reason"),
                col("sessions", "last_seen_at"),
            ]
        );
        assert_eq!(
            down(14),
            [
                Dropped::Index("reputation_events_task_idx".into()),
                Dropped::Table("reputation_task_cohorts".into()),
                col("reputation_events", "task_type"),
            ]
        );
    }

    #[test]
    fn drops_are_found_through_comments_quotes_lists_and_optional_words() {
        let sql = "-- DROP TABLE commented;\n/* DROP TABLE nor_this; */ DROP TABLE IF EXISTS \"Odd\", public.b CASCADE;\n\
                   drop index concurrently if exists i1; ALTER TABLE ONLY t DROP c1, DROP COLUMN IF EXISTS c2, ADD COLUMN x int;\n\
                   DROP VIEW v; TRUNCATE t2; DELETE FROM t3 WHERE a = ';'; CREATE TABLE keep (a int)";
        let col = |c: &str| Dropped::Column { table: "t".into(), column: c.into() };
        assert_eq!(
            dropped(sql),
            [
                Dropped::Table("Odd".into()),
                Dropped::Table("public.b".into()),
                Dropped::Index("i1".into()),
                col("c1"),
                col("c2"),
                Dropped::Other("DROP VIEW v".into()),
                Dropped::Other("TRUNCATE t2".into()),
                Dropped::Other("DELETE FROM t3 WHERE a = ';'".into()),
            ]
        );
        assert!(dropped("").is_empty());
        assert_eq!(quote_ident("public.we\"ird"), "\"public\".\"we\"\"ird\"");
    }

    #[test]
    fn the_step_refuses_a_down_past_a_migration_without_its_down_file_before_anything_runs() {
        let root = std::env::temp_dir().join(format!("runbook-migrations-check-{}", std::process::id()));
        let dir = root.join("m");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in
            [("001_a.sql", "CREATE TABLE a ();"), ("001_a_down.sql", "DROP TABLE a;"), ("002_b.sql", "")]
        {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let step = |action: &str, to: &str| {
            parse(&format!(
                "action = \"{action}\"\nto = \"{to}\"\ndatabase_url_param = \"/d/DATABASE_URL\"\ndir = \"m\"\n"
            ))
            .unwrap()
        };
        let refused = Step::check_files(&step("down", "001"), &root).unwrap_err();
        assert!(refused.starts_with("down to 001 needs 002_b_down.sql, which the app does not have"), "{refused}");
        assert!(refused.contains("nothing was changed"), "{refused}");
        assert!(Step::check_files(&step("down", "002"), &root).is_ok(), "nothing above 002 to revert");
        assert!(Step::check_files(&step("up", ""), &root).is_ok(), "an up needs no down files");
        let unknown = Step::check_files(&step("down", "003"), &root).unwrap_err();
        assert!(unknown.contains("to = \"003\" is not a migration of the app; give one of 001, 002"), "{unknown}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn parse(text: &str) -> Result<Params, String> {
        let value: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
        let p = Params::deserialize(value).map_err(|e| e.to_string())?;
        p.validate().map(|_| p)
    }

    #[test]
    fn params_need_a_target_to_go_down_and_a_pid_and_reason_to_release() {
        let base = "database_url_param = \"/dixie/armitage/DATABASE_URL\"\ndir = \"fixtures/dixie/migrations\"\n";
        let p = parse(&format!("action = \"status\"\n{base}")).unwrap();
        assert_eq!(p.lock_key, 2_084_904_821, "003's Dixie's key by default");
        assert!(parse(&format!("action = \"down\"\n{base}")).unwrap_err().contains("needs a target"));
        assert!(parse(&format!("action = \"down\"\nto = \"012\"\n{base}")).is_ok());
        assert!(parse(&format!("action = \"sideways\"\n{base}")).unwrap_err().contains("unknown variant"));
        let release = format!("action = \"release_lock\"\n{base}");
        assert!(parse(&format!("{release}pid = \"4711\"\n")).unwrap_err().contains("needs a reason"));
        assert!(parse(&format!("{release}reason = \"stuck\"\npid = \"\"\n")).unwrap_err().contains("holder's pid"));
        assert!(parse(&format!("{release}reason = \"stuck\"\npid = \"-1\"\n")).unwrap_err().contains("holder's pid"));
        assert!(parse(&format!("{release}reason = \"stuck\"\npid = \"4711\"\n")).is_ok());
        assert!(
            parse(&format!("action = \"up\"\n{base}lock_wait_seconds = 100000\n"))
                .unwrap_err()
                .contains("longer than a day")
        );
        assert!(parse(&format!("action = \"up\"\n{base}surprise = 1\n")).unwrap_err().contains("unknown field"));
    }
}
