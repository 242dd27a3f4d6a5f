//! The bad-input corpus (`tests/bad_input.toml`) through the real binary, without the ring:
//! every case edits a copy of the project's runbook or environment (or the command line, or the
//! state DB), runs `runbook`, and expects the exit code of bad input, a message that names the
//! problem and the fix, and nothing recorded. Validation happens before any AWS call, so this
//! runs in the plain `cargo test` tier.
//!
//! A case marked `known_failing = "why"` is a bug that is not fixed yet: it must still fail, so
//! that the day it is fixed the test says to drop the mark. All failures are reported together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde::Deserialize;

const RUNBOOK: &str = "runbooks/sprint-2.toml";
const ENV: &str = "runbooks/environments/local.toml";
/// The ring's moto, in the local environment.
const MOTO: &str = "127.0.0.1:4566";
/// The discard port: nothing answers there. An edited environment points its AWS endpoint here,
/// so that bad input the binary wrongly accepts cannot change the ring if it is up.
const NOWHERE: &str = "127.0.0.1:9";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// `runbook`, `env`, or a path in the project (a new file, or one to rewrite with `write`).
    #[serde(default = "runbook_file")]
    file: String,
    /// Exact `[old, new]` pairs, each applied to the first occurrence of `old`.
    #[serde(default)]
    replace: Vec<(String, String)>,
    #[serde(default)]
    append: String,
    /// The whole new content of `file`.
    write: Option<String>,
    #[serde(default = "run_sprint_2")]
    args: Vec<String>,
    code: i32,
    /// Substrings of stderr: what is wrong, where, and the fix.
    says: Vec<String>,
    /// Substrings that must not be in stdout or stderr: a secret written where its name belongs.
    #[serde(default)]
    never_says: Vec<String>,
    /// The state DB before the command.
    #[serde(default)]
    state: StateSetup,
    /// A secret the case gives as input (in its edit or its arguments): it must appear nowhere
    /// the binary writes, neither in stdout, stderr (`--json` included), nor in any file under
    /// the case's folder that the command created or changed (a state DB and its journal,
    /// temporary files), as written or escaped.
    secret: Option<String>,
    /// Why the binary gets this case wrong today: the case must then still fail, and fail as
    /// `now_code` and `now_says` describe (what the binary does today).
    known_failing: Option<String>,
    now_code: Option<i32>,
    now_says: Option<String>,
}

fn runbook_file() -> String {
    "runbook".into()
}

fn run_sprint_2() -> Vec<String> {
    vec!["run".into(), "sprint-2".into()]
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StateSetup {
    /// No state DB; it must not exist afterwards.
    #[default]
    None,
    /// A state DB holding one finished run of sprint-2 (run 1).
    FinishedRun,
    /// A state DB the binary created, without runs.
    NoRuns,
    /// A file that is not SQLite.
    Garbage,
    /// A SQLite file of a newer schema (`user_version = 42`).
    NewerSchema,
    /// `RUNBOOK_STATE` names a directory.
    Directory,
}

fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn resolve(file: &str) -> &str {
    match file {
        "runbook" => RUNBOOK,
        "env" => ENV,
        other => other,
    }
}

/// A temporary folder for the whole corpus, removed unless the test failed.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The binary under test; `RUNBOOK_BAD_INPUT_BIN` runs the corpus against another build (an
/// older commit's, to see a case fail before its fix).
fn binary() -> PathBuf {
    std::env::var_os("RUNBOOK_BAD_INPUT_BIN").map_or_else(|| env!("CARGO_BIN_EXE_runbook").into(), PathBuf::from)
}

/// The binary with the environment the ring tests use, and no way to reach a real account.
fn runbook(project: &Path, state: &Path, args: &[String]) -> std::process::Output {
    runbook_with(project, state, args, &[])
}

fn runbook_with(project: &Path, state: &Path, args: &[String], env: &[(&str, &str)]) -> std::process::Output {
    let scratch = if is_url(state) { project.to_path_buf() } else { state.to_path_buf() };
    Command::new(binary())
        .args(args)
        .arg("--project")
        .arg(project)
        .env("RUNBOOK_STATE", state)
        .env("RUNBOOK_OPERATOR", "test-operator")
        .env_remove("RUNBOOK_PROJECT")
        .env_remove("RUNBOOK_CRASH_AT")
        .env_remove("AWS_PROFILE")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", scratch.with_file_name("no-aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", scratch.with_file_name("no-aws-credentials"))
        .envs(env.iter().copied())
        .output()
        .expect("run the runbook binary")
}

fn is_url(state: &Path) -> bool {
    state.to_string_lossy().starts_with("postgres://")
}

/// A copy of the project's runbooks and environments in `root`, with the app fixture linked
/// (build contexts and terraform folders are checked before a run).
fn project_copy(root: &Path) {
    let envs = root.join("runbooks/environments");
    std::fs::create_dir_all(&envs).unwrap();
    std::os::unix::fs::symlink(project().join("fixtures"), root.join("fixtures")).unwrap();
    for (from, to) in
        [(project().join("runbooks"), root.join("runbooks")), (project().join("runbooks/environments"), envs)]
    {
        for entry in std::fs::read_dir(from).unwrap().flatten() {
            if entry.path().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }
}

/// Points every environment of the copy away from the ring (see [`NOWHERE`]).
fn away_from_the_ring(root: &Path) {
    for entry in std::fs::read_dir(root.join("runbooks/environments")).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if text.contains(MOTO) {
            std::fs::write(entry.path(), text.replace(MOTO, NOWHERE)).unwrap();
        }
    }
}

/// A new state DB at `path`, its schema made by the binary itself (`unlock --force` creates it).
fn new_state_db(path: &Path) {
    let made = runbook(&project(), path, &["unlock".into(), "--force".into()]);
    assert!(made.status.success(), "create a state DB: {}", String::from_utf8_lossy(&made.stderr));
}

/// A state DB with one finished run of sprint-2, made once: the binary creates the schema, the
/// run is written as the engine leaves a finished one.
fn finished_run_db(dir: &Path) -> &'static [u8] {
    static DB: OnceLock<Vec<u8>> = OnceLock::new();
    DB.get_or_init(|| {
        let path = dir.join("template/finished.db");
        new_state_db(&path);
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "INSERT INTO runs (id, runbook, env, runbook_hash, inputs_hash, vars_json, operator, host, started_at, \
             ended_at, status) VALUES (1, 'sprint-2', 'local', '', '', '{}', 'test-operator', 'test-host', \
             1700000000000, 1700000060000, 'done');",
        )
        .unwrap();
        for step in ["T2.1", "T2.2", "T2.3", "T2.4", "T2.5", "T2.6", "T2.7", "T2.8"] {
            conn.execute(
                "INSERT INTO steps (run_id, step, state, attempts, started_at, ended_at, duration_ms) \
                 VALUES (1, ?1, 'applied', 1, 1700000000000, 1700000001000, 1000)",
                [step],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO attempts (run_id, step, attempt, started_at, intent_at, action, ended_at, outcome, \
                 duration_ms, log) VALUES (1, ?1, 1, 1700000000000, 1700000000500, 'apply', 1700000001000, \
                 'applied', 1000, 'done\n')",
                [step],
            )
            .unwrap();
        }
        drop(conn);
        let status = runbook(&project(), &path, &["status".into()]);
        let out = String::from_utf8_lossy(&status.stdout);
        assert!(status.status.success() && out.contains("done"), "the finished run reads back: {out}");
        std::fs::read(&path).unwrap()
    })
}

fn no_runs_db(dir: &Path) -> &'static [u8] {
    static DB: OnceLock<Vec<u8>> = OnceLock::new();
    DB.get_or_init(|| {
        let path = dir.join("template/empty.db");
        new_state_db(&path);
        std::fs::read(&path).unwrap()
    })
}

fn newer_schema_db(dir: &Path) -> &'static [u8] {
    static DB: OnceLock<Vec<u8>> = OnceLock::new();
    DB.get_or_init(|| {
        let path = dir.join("template/newer.db");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 42;").unwrap();
        drop(conn);
        std::fs::read(&path).unwrap()
    })
}

/// What the state path holds: `None` when nothing is there, the bytes of a file, or the
/// entries of a directory.
#[derive(Debug, PartialEq, Eq)]
enum Held {
    Nothing,
    File(Vec<u8>),
    Directory(BTreeSet<String>),
}

fn held(path: &Path) -> Held {
    if path.is_dir() {
        let names =
            std::fs::read_dir(path).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
        Held::Directory(names)
    } else {
        std::fs::read(path).map(Held::File).unwrap_or(Held::Nothing)
    }
}

impl Held {
    fn describe(&self) -> String {
        match self {
            Held::Nothing => "no state DB".into(),
            Held::File(bytes) => format!("a {}-byte file", bytes.len()),
            Held::Directory(names) => format!("a directory holding {names:?}"),
        }
    }
}

/// Prepares the case's folder; returns the project and the state path, or why the case itself
/// is broken.
fn prepare(case: &Case, dir: &Path, templates: &Path) -> Result<(PathBuf, PathBuf), String> {
    let root = dir.join("project");
    project_copy(&root);
    let target = root.join(resolve(&case.file));
    let pristine = std::fs::read_to_string(&target).ok();
    let mut text = match (&case.write, &pristine) {
        (Some(text), _) => text.clone(),
        (None, Some(text)) => text.clone(),
        (None, None) if case.replace.is_empty() => String::new(),
        (None, None) => return Err(format!("{} does not exist, so nothing can be replaced in it", case.file)),
    };
    for (old, new) in &case.replace {
        if !text.contains(old.as_str()) {
            return Err(format!("{old:?} is not in {}: the edit would do nothing", case.file));
        }
        text = text.replacen(old.as_str(), new, 1);
    }
    text.push_str(&case.append);
    if pristine.as_deref() == Some(text.as_str()) && case.file != "runbook" {
        return Err(format!("the edit leaves {} as it was", case.file));
    }
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(&target, text).unwrap();
    away_from_the_ring(&root);

    let state = dir.join("state/runbook.db");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    match case.state {
        StateSetup::None => {}
        StateSetup::FinishedRun => std::fs::write(&state, finished_run_db(templates)).unwrap(),
        StateSetup::NoRuns => std::fs::write(&state, no_runs_db(templates)).unwrap(),
        StateSetup::NewerSchema => std::fs::write(&state, newer_schema_db(templates)).unwrap(),
        StateSetup::Garbage => {
            std::fs::write(&state, "this is not sqlite, it is a shopping list\n".repeat(100)).unwrap();
        }
        StateSetup::Directory => std::fs::create_dir_all(&state).unwrap(),
    }
    Ok((root, state))
}

/// What one case did.
struct Verdict {
    /// The ways it went wrong; empty: as expected.
    wrong: Vec<String>,
    code: Option<i32>,
    stderr: String,
}

impl Verdict {
    /// How `ran` went against the case's exit code and words (what the state holds is each
    /// backend's own check, added by the caller).
    fn of(case: &Case, ran: &std::process::Output) -> Verdict {
        let stderr = String::from_utf8_lossy(&ran.stderr).into_owned();
        let mut wrong = Vec::new();
        if ran.status.code() != Some(case.code) {
            wrong.push(format!("exit code: expected {}, got {:?}", case.code, ran.status.code()));
        }
        let missing: Vec<&String> = case.says.iter().filter(|s| !stderr.contains(s.as_str())).collect();
        if !missing.is_empty() {
            wrong.push(format!("stderr lacks {missing:?}"));
        }
        let stdout = String::from_utf8_lossy(&ran.stdout);
        if case.never_says.iter().any(|s| stderr.contains(s.as_str()) || stdout.contains(s.as_str())) {
            wrong.push("the output repeats what it must never say (a secret)".into());
        }
        Verdict { wrong, code: ran.status.code(), stderr }
    }
}

/// Runs one case.
fn check(case: &Case, dir: &Path, templates: &Path) -> Result<Verdict, String> {
    let (root, state) = prepare(case, dir, templates).map_err(|why| format!("bad case: {why}"))?;
    let before = held(&state);
    // Temporary files land in the case's folder, where a secret is looked for.
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let files_before = case.secret.as_ref().map(|_| files_under(dir)).unwrap_or_default();
    let ran = runbook_with(&root, &state, &case.args, &[("TMPDIR", tmp.to_str().unwrap())]);
    let mut verdict = Verdict::of(case, &ran);
    let after = held(&state);
    if after != before {
        verdict.wrong.push(format!("state changed: expected {}, got {}", before.describe(), after.describe()));
    }
    if let Some(secret) = &case.secret {
        verdict.wrong.extend(where_shown(secret, &ran, &files_before, &files_under(dir)));
    }
    Ok(verdict)
}

/// Every file under `dir` (symbolic links not followed) and its bytes.
fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                folders.push(entry.path());
            } else if kind.is_file() {
                files.insert(entry.path(), std::fs::read(entry.path()).unwrap_or_default());
            }
        }
    }
    files
}

/// Where `secret` shows (as written, or escaped as Rust's `{:?}` and JSON write a newline or a
/// quote): stdout, stderr, or a file the command created or changed.
fn where_shown(
    secret: &str,
    ran: &std::process::Output,
    before: &BTreeMap<PathBuf, Vec<u8>>,
    after: &BTreeMap<PathBuf, Vec<u8>>,
) -> Vec<String> {
    let escaped = format!("{secret:?}");
    let forms = [secret, &escaped[1..escaped.len() - 1]];
    let holds = |bytes: &[u8]| forms.iter().any(|f| bytes.windows(f.len()).any(|w| w == f.as_bytes()));
    let mut shown = Vec::new();
    for (name, bytes) in [("stdout", &ran.stdout), ("stderr", &ran.stderr)] {
        if holds(bytes) {
            shown.push(format!("the secret is in {name}"));
        }
    }
    for (path, bytes) in after {
        if before.get(path) != Some(bytes) && holds(bytes) {
            shown.push(format!("the secret is in {}, which the command wrote", path.display()));
        }
    }
    shown
}

/// What is wrong with the case's outcome, for the report; `None`: as the corpus says.
fn judge(case: &Case, verdict: Result<Verdict, String>) -> Option<String> {
    let verdict = match verdict {
        Ok(verdict) => verdict,
        Err(why) => return Some(why),
    };
    let stderr = || format!("stderr was: {}", verdict.stderr.trim_end().replace('\n', "\n        "));
    let Some(why) = &case.known_failing else {
        return (!verdict.wrong.is_empty()).then(|| format!("{}\n    {}", verdict.wrong.join("\n    "), stderr()));
    };
    if verdict.wrong.is_empty() {
        return Some(format!("marked known_failing ({why}), but the binary now gets it right: remove the mark"));
    }
    let (Some(code), Some(says)) = (case.now_code, &case.now_says) else {
        return Some("bad case: a known_failing case says how it fails today with now_code and now_says".into());
    };
    let same = verdict.code == Some(code) && verdict.stderr.contains(says.as_str());
    (!same).then(|| {
        format!(
            "known_failing, but it fails differently now: expected exit code {code} and {says:?}, got {:?}\n    {}",
            verdict.code,
            stderr()
        )
    })
}

/// Runs `check` on every case, eight side by side (a refusal takes milliseconds, but bad input
/// the binary accepts waits a second for the absent AWS); what went wrong, in case order.
fn side_by_side(
    cases: &[&Case],
    check: impl Fn(usize, &Case) -> Result<Verdict, String> + Sync,
) -> Vec<(usize, String)> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    if let Some(report) = judge(case, check(i, case)) {
                        failures.lock().unwrap().push((i, format!("{}:\n    {report}", case.name)));
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort();
    failures
}

#[test]
fn every_bad_input_is_refused_with_exit_code_2_a_message_that_names_it_and_its_fix_and_nothing_recorded() {
    let started = std::time::Instant::now();
    let path = project().join("tests/bad_input.toml");
    let corpus: Corpus =
        toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let scratch = Scratch(std::env::temp_dir().join(format!("runbook-bad-input-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch.0);
    let templates = scratch.0.join("templates");

    let mut names = BTreeSet::new();
    for case in &corpus.case {
        assert!(names.insert(case.name.as_str()), "two cases are named {:?}", case.name);
        assert!(!case.says.is_empty(), "{}: `says` names nothing to look for", case.name);
        if let Some(secret) = &case.secret {
            let input = format!("{:?} {} {:?} {:?}", case.replace, case.append, case.write, case.args);
            let escaped = format!("{secret:?}");
            assert!(
                secret.len() >= 8
                    && (input.contains(secret.as_str()) || input.contains(&escaped[1..escaped.len() - 1])),
                "{}: its secret is not in its input, so nothing is tested",
                case.name
            );
        }
    }

    // The unedited copy passes validation and reaches the preflight, which finds no AWS at
    // NOWHERE: the copy is sound, and a case that is refused is refused for its edit.
    let control = Case {
        name: "control".into(),
        file: "runbook".into(),
        replace: Vec::new(),
        append: String::new(),
        write: None,
        args: run_sprint_2(),
        code: 2,
        says: vec![format!("cannot reach AWS (http://{NOWHERE})")],
        never_says: Vec::new(),
        state: StateSetup::None,
        secret: None,
        known_failing: None,
        now_code: None,
        now_says: None,
    };
    let dir = scratch.0.join("control");
    let (root, state) = prepare(&control, &dir, &templates).unwrap();
    let ran = runbook(&root, &state, &control.args);
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(
        ran.status.code() == Some(2) && stderr.contains(&control.says[0]),
        "the unedited project copy should pass validation and stop at the preflight: {stderr}"
    );
    assert!(!state.exists(), "a refused preflight creates no state DB");

    let cases: Vec<&Case> = corpus.case.iter().collect();
    let failures = side_by_side(&cases, |i, case| check(case, &scratch.0.join(format!("case-{i}")), &templates));
    let failures: Vec<String> = failures.into_iter().map(|(_, f)| f).collect();
    let known = corpus.case.iter().filter(|c| c.known_failing.is_some()).count();
    let elapsed = started.elapsed();
    eprintln!("{} bad-input cases ({known} known failing) in {:.1}s", corpus.case.len(), elapsed.as_secs_f64());
    assert!(corpus.case.len() >= 85, "the corpus has {} cases", corpus.case.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        corpus.case.len(),
        failures.join("\n\n")
    );
}

/// The ring's PostgreSQL `runbook_state` database (URL without the password, and the password
/// for `PGPASSWORD`), when the ring is up in this checkout; `None` otherwise, unless
/// `RUNBOOK_RING` demands it.
fn ring_postgres() -> Option<(String, String)> {
    let ring = project().join(".ring");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 15432));
    let up = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300)).is_ok();
    let password = std::fs::read_to_string(ring.join("secrets/pg-admin-password")).ok().filter(|_| up);
    let Some(password) = password else {
        assert!(std::env::var_os("RUNBOOK_RING").is_none(), "RUNBOOK_RING is set but the ring's PostgreSQL is not up");
        return None;
    };
    let base = format!(
        "postgres://arrakis_admin@127.0.0.1:15432/runbook_state?sslmode=verify-full&sslrootcert={}",
        ring.join("tls/ca.crt").display()
    );
    Some((base, password.trim().to_string()))
}

fn psql(base: &str, password: &str, sql: &str) -> String {
    let psql = ["psql", "/usr/lib/postgresql/15/bin/psql"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("psql (the ring installs it)");
    let out = Command::new(psql)
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", base, "-c", sql])
        .env("PGPASSWORD", password)
        .output()
        .unwrap();
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The corpus again with the state in PostgreSQL (`--state postgres://…`, a schema of its own
/// for each case): the same exit code and message, and no table created in the schema. Cases
/// that prepare a SQLite file of their own are SQLite's alone.
#[test]
fn bad_input_with_its_state_in_postgresql_is_refused_alike_and_creates_nothing_there() {
    let Some((base, password)) = ring_postgres() else {
        eprintln!("skipped: the ring's PostgreSQL is not up (bash scripts/test starts it)");
        return;
    };
    let path = project().join("tests/bad_input.toml");
    let corpus: Corpus = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cases: Vec<&Case> =
        corpus.case.iter().filter(|c| c.state == StateSetup::None && c.known_failing.is_none()).collect();
    let scratch = Scratch(std::env::temp_dir().join(format!("runbook-bad-input-pg-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch.0);
    let templates = scratch.0.join("templates");
    let prefix = format!("bad_input_{}", std::process::id());
    let schema = |i: usize| format!("{prefix}_{i}");
    let create: String = (0..cases.len()).map(|i| format!("CREATE SCHEMA {};", schema(i))).collect();
    psql(&base, &password, &create);

    let mut failures = side_by_side(&cases, |i, case| {
        let dir = scratch.0.join(format!("case-{i}"));
        prepare(case, &dir, &templates).map_err(|why| format!("bad case: {why}")).map(|(root, _)| {
            let url = format!("{base}&options=-csearch_path%3D{}", schema(i));
            let before = case.secret.as_ref().map(|_| files_under(&dir)).unwrap_or_default();
            let ran = runbook_with(&root, Path::new(&url), &case.args, &[("PGPASSWORD", &password)]);
            let mut verdict = Verdict::of(case, &ran);
            if verdict.stderr.contains(&password) {
                verdict.wrong.push("the state database's password was shown".into());
            }
            if let Some(secret) = &case.secret {
                verdict.wrong.extend(where_shown(secret, &ran, &before, &files_under(&dir)));
            }
            verdict
        })
    });
    let made = psql(
        &base,
        &password,
        &format!(
            "SELECT string_agg(DISTINCT table_schema, ' ') FROM information_schema.tables WHERE table_schema LIKE '{prefix}\\_%'"
        ),
    );
    let drop: String = (0..cases.len()).map(|i| format!("DROP SCHEMA {} CASCADE;", schema(i))).collect();
    psql(&base, &password, &drop);
    for name in made.split_whitespace() {
        let i: usize = name.rsplit('_').next().unwrap().parse().unwrap();
        failures.push((i, format!("{}:\n    created tables in its PostgreSQL schema", cases[i].name)));
    }
    failures.sort();
    eprintln!("{} bad-input cases with the state in PostgreSQL", cases.len());
    assert!(cases.len() >= 100, "only {} cases run on PostgreSQL", cases.len());
    let failures: Vec<String> = failures.into_iter().map(|(_, f)| f).collect();
    assert!(failures.is_empty(), "{} of {} cases failed:\n\n{}", failures.len(), cases.len(), failures.join("\n\n"));
}

/// Generated values (see `runbook::fuzz` for the whole table, in-process) through the real
/// binary, along the routes an operator uses: a `--var` of each runbook, and environment values
/// that params read as names, numbers and waits. Each run exits 2 (refused, or stopped at the
/// preflight by the absent AWS), says so on stderr without a panic, names where the value went,
/// shows no secret, and creates no state DB.
#[test]
fn generated_values_through_vars_and_the_environment_exit_2_and_show_no_secret() {
    /// xorshift64*, seeded: the same cases on every machine.
    struct Rng(u64);
    impl Rng {
        fn text(&mut self, n: usize) -> String {
            const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
            (0..n)
                .map(|_| {
                    self.0 ^= self.0 >> 12;
                    self.0 ^= self.0 << 25;
                    self.0 ^= self.0 >> 27;
                    ALNUM[(self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % ALNUM.len() as u64) as usize] as char
                })
                .collect()
        }
    }
    let mut rng = Rng(0x5eed_0017);
    // (value, the part no output may show)
    let mut values: Vec<(String, Option<String>)> = [
        "",
        " ",
        "dïxíe-😀",
        "a\u{1b}[31mb\u{202e}c\td",
        "x\ny",
        "${${service}}",
        "${",
        "abc-${service",
        "${}",
        "${steps.NOPE.out}",
        "${steps.T2.1.nope}",
        "${env.nope}",
        "-1",
        "65536",
        "86401",
        "18446744073709551616",
        "1.5",
        "[\"a\"]",
    ]
    .into_iter()
    .map(|v| (v.to_string(), None))
    .collect();
    values.push(("a".repeat(20_000), None));
    for (make, core) in [
        (("ghp_", ""), rng.text(36)),
        (("postgres://dixie:", "@db.example.com/dixie"), rng.text(20)),
        (("https://hooks.slack.com/services/T0/B0/", ""), rng.text(24)),
        (("-----BEGIN PRIVATE KEY-----\n", "\n-----END PRIVATE KEY-----"), rng.text(48)),
        (("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.", ""), rng.text(30)),
    ] {
        values.push((format!("{}{core}{}", make.0, make.1), Some(core)));
    }
    // (runbook, var or environment value)
    let routes = [
        ("sprint-2", "--var service"),
        ("sprint-2", "--var image_tag"),
        ("sprint-2", "env rds_instance"),
        ("sprint-2", "env deploy_wait_seconds"),
        ("sprint-3", "env github_checks_within"),
        ("sprint-3", "env github_token_param"),
        ("rollback", "--var revision"),
        ("diagnose", "--var log_minutes"),
    ];
    let scratch = Scratch(std::env::temp_dir().join(format!("runbook-generated-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch.0);
    // Each value along two routes drawn from the seed (all of them would take 8 s).
    let mut draw = || rng.text(1).as_bytes()[0] as usize % routes.len();
    let cases: Vec<(usize, usize)> = (0..values.len()).flat_map(|v| [(draw(), v), (draw(), v)]).collect();
    let refused = std::sync::atomic::AtomicUsize::new(0);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(r, v)) = cases.get(i) else { break };
                    let ((book, route), (value, secret)) = (routes[r], &values[v]);
                    let dir = scratch.0.join(format!("case-{i}"));
                    let root = dir.join("project");
                    project_copy(&root);
                    away_from_the_ring(&root);
                    let mut args: Vec<String> = match book {
                        "diagnose" => vec!["diagnose".into()],
                        "rollback" => vec!["run".into(), "rollback".into(), "--yes".into()],
                        name => vec!["run".into(), name.into()],
                    };
                    if let Some(var) = route.strip_prefix("--var ") {
                        args.extend(["--var".into(), format!("{var}={value}")]);
                    } else {
                        let key = route.strip_prefix("env ").unwrap();
                        let path = root.join(ENV);
                        let text = std::fs::read_to_string(&path).unwrap();
                        let line = text.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap().to_string();
                        let quoted = toml::Value::String(value.clone()).to_string();
                        std::fs::write(&path, text.replacen(&line, &format!("{key} = {quoted}"), 1)).unwrap();
                    }
                    let state = dir.join("state/runbook.db");
                    let ran = runbook(&root, &state, &args);
                    let stderr = String::from_utf8_lossy(&ran.stderr);
                    let mut wrong = Vec::new();
                    if ran.status.code() != Some(2) {
                        wrong.push(format!("exit code {:?}", ran.status.code()));
                    }
                    if stderr.contains("panicked") || !stderr.starts_with("error: ") {
                        wrong.push("no error, or a panic".to_string());
                    }
                    if !stderr.contains("cannot reach AWS") {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    let placed = ["step ", "--var ", "[vars]", "cannot reach AWS"];
                    if !placed.iter().any(|p| stderr.contains(p)) {
                        wrong.push("names no step, var or environment value".into());
                    }
                    if stderr.len() > 2_000 {
                        wrong.push(format!("{} bytes of stderr", stderr.len()));
                    }
                    if let Some(secret) = secret {
                        wrong.extend(where_shown(secret, &ran, &BTreeMap::new(), &files_under(&dir.join("state"))));
                    }
                    if state.exists() {
                        wrong.push("a state DB was created".into());
                    }
                    if !wrong.is_empty() {
                        let shown: String = stderr.chars().take(400).collect();
                        let value: String = value.chars().take(40).collect();
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{book} {route} = {value:?}: {}\n    stderr: {shown}", wrong.join("; ")));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    let refused = refused.into_inner();
    eprintln!("{} generated values through the binary, {refused} refused before the preflight", cases.len());
    assert!(refused > cases.len() / 2, "only {refused} refused: the values reach too little");
    assert!(failures.is_empty(), "{} of {} failed:\n\n{}", failures.len(), cases.len(), failures.join("\n\n"));
}
