//! `runbook serve` as a browser meets it: the real binary on loopback, over plain HTTP/1.1,
//! on a SQLite state DB with hostile text in it. Needs no ring.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[path = "browser.rs"]
mod browser;

/// Planted in the server's environment: no page may show it.
const PLANTED: &str = "planted-secret-5f1c0e9a";
const HOSTILE_OPERATOR: &str = "<script>alert('op')</script>";
const HOSTILE_LOG: &str = "<script>alert('log')</script>\u{1b}[2J";

fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("runbook-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A state DB whose schema the binary made (`unlock --force` creates it), with a finished run
/// and a failed one written as the engine leaves them, hostile text in each.
fn state_db(dir: &Path) -> PathBuf {
    let state = dir.join("state/runbook.db");
    let made = Command::new(env!("CARGO_BIN_EXE_runbook"))
        .args(["unlock", "--force"])
        .env("RUNBOOK_STATE", &state)
        .output()
        .unwrap();
    assert!(made.status.success(), "create a state DB: {}", String::from_utf8_lossy(&made.stderr));
    let conn = rusqlite::Connection::open(&state).unwrap();
    for (run, status) in [(1, "done"), (2, "failed")] {
        conn.execute(
            "INSERT INTO runs (id, runbook, env, runbook_hash, inputs_hash, vars_json, operator, host, started_at, \
             ended_at, status) VALUES (?1, 'sprint-2', 'local', '', '', '{}', ?2, 'host\u{1b}[31m', 1700000000000, \
             1700000060000, ?3)",
            rusqlite::params![run, HOSTILE_OPERATOR, status],
        )
        .unwrap();
        for step in ["T2.1", "T2.2", "T2.3", "T2.4", "T2.5", "T2.6", "T2.7", "T2.8"] {
            let failed = run == 2 && step == "T2.4";
            conn.execute(
                "INSERT INTO steps (run_id, step, state, attempts, started_at, ended_at, duration_ms, last_error) \
                 VALUES (?1, ?2, ?3, 1, 1700000000000, 1700000001000, 1000, ?4)",
                rusqlite::params![
                    run,
                    step,
                    if failed { "failed" } else { "applied" },
                    failed.then_some("<img src=x onerror=alert(1)>")
                ],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO attempts (run_id, step, attempt, started_at, intent_at, action, ended_at, outcome, \
                 duration_ms, log) VALUES (?1, ?2, 1, 1700000000000, 1700000000500, 'apply', 1700000001000, \
                 'applied', 1000, ?3)",
                rusqlite::params![run, step, format!("done\n{HOSTILE_LOG}\n")],
            )
            .unwrap();
        }
        let started = serde_json::json!({ "event": "run_started", "run": run, "runbook": "sprint-2", "env": "local",
            "operator": HOSTILE_OPERATOR, "host": "h", "resumed": false });
        let logged = serde_json::json!({ "event": "step_log", "step": "T2.1", "attempt": 1, "line": HOSTILE_LOG });
        let skipped = serde_json::json!({ "event": "step_skipped", "step": "T2.7",
            "reason": "<script>alert('reason')</script>", "operator": HOSTILE_OPERATOR, "host": "h" });
        for (kind, payload) in [("run_started", started), ("step_log", logged), ("step_skipped", skipped)] {
            conn.execute(
                "INSERT INTO events (run_id, at, step, kind, payload) VALUES (?1, 1700000000000, NULL, ?2, ?3)",
                rusqlite::params![run, kind, payload.to_string()],
            )
            .unwrap();
        }
    }
    state
}

/// A running `runbook serve`, stopped when dropped.
pub(super) struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(state: &Path, extra: &[&str]) -> Server {
        Server::start_in(&project(), state, extra)
    }

    /// `serve` with the runbooks of `project`.
    pub(super) fn start_in(project: &Path, state: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_runbook"))
            .args(["serve", "--bind", "127.0.0.1:0"])
            .args(extra)
            .arg("--project")
            .arg(project)
            .env("RUNBOOK_STATE", state)
            .env_remove("RUNBOOK_SERVE_TOKEN")
            .env("PGPASSWORD", PLANTED)
            .env("AWS_SECRET_ACCESS_KEY", PLANTED)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let addr = first
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("serve says where it listens: {first:?}"))
            .to_string();
        Server { child, addr }
    }

    pub(super) fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request("GET", path, headers)
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            request.push_str(&format!("Host: {}\r\n", self.addr));
        }
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        Reply::parse(&raw)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub(super) struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    pub(super) body: String,
}

impl Reply {
    fn parse(raw: &[u8]) -> Reply {
        let text = String::from_utf8_lossy(raw);
        let (head, rest) = text.split_once("\r\n\r\n").expect("a response head");
        let mut lines = head.lines();
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v == "chunked");
        let body = if chunked { dechunk(rest) } else { rest.to_string() };
        Reply { status, headers, body }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    body
}

/// Every route a browser or a tool reaches, and the type it is served as.
const PAGES: &[(&str, &str)] = &[
    ("/", "text/html; charset=utf-8"),
    (
        "/?runbook=sprint-2&status=failed&operator=%3Cscript%3Ealert(%27op%27)%3C%2Fscript%3E",
        "text/html; charset=utf-8",
    ),
    ("/?before=2", "text/html; charset=utf-8"),
    ("/runs/1", "text/html; charset=utf-8"),
    ("/runs/2", "text/html; charset=utf-8"),
    ("/runs/2/steps/T2.4/attempts/1", "text/html; charset=utf-8"),
    ("/runs/2/steps/T2.4/attempts/1/log", "text/plain; charset=utf-8"),
    ("/runs/1/events", "text/event-stream; charset=utf-8"),
    ("/style.css", "text/css; charset=utf-8"),
    ("/live.js", "text/javascript; charset=utf-8"),
];

fn assert_safe_headers(reply: &Reply, what: &str) {
    assert_eq!(
        reply.header("content-security-policy"),
        Some(
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; \
             form-action 'self'; frame-ancestors 'none'"
        ),
        "{what}"
    );
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"), "{what}");
    assert_eq!(reply.header("referrer-policy"), Some("no-referrer"), "{what}");
}

#[test]
fn every_page_is_served_escaped_with_strict_headers_and_no_secret() {
    let dir = scratch("pages");
    let server = Server::start(&state_db(&dir), &[]);
    for (path, content_type) in PAGES {
        let reply = server.get(path, &[]);
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        assert_eq!(reply.header("content-type"), Some(*content_type), "{path}");
        assert_safe_headers(&reply, path);
        assert!(!reply.body.contains(PLANTED), "{path} shows the planted secret");
        assert!(!reply.body.contains('\u{1b}'), "{path} holds a raw control character");
        if content_type.starts_with("text/html") {
            assert!(!reply.body.contains("<script"), "{path} holds a script:\n{}", reply.body);
            assert!(!reply.body.contains("<img"), "{path} holds markup from a step's error");
            assert!(!reply.body.contains("style="), "{path} holds inline style");
        }
    }
    let runs = server.get("/", &[]).body;
    assert!(runs.contains("&lt;script&gt;alert(&#39;op&#39;)&lt;/script&gt;@host\\u{1b}[31m"), "{runs}");
    assert!(runs.contains("<a href=\"/runs/2\">2</a>") && runs.contains("T2.4: &lt;img src=x"), "{runs}");
    let filtered = server.get(PAGES[1].0, &[]).body;
    assert!(filtered.contains("/runs/2\"") && !filtered.contains("/runs/1\""), "filtered by status: {filtered}");
    assert!(server.get("/?before=2", &[]).body.contains("/runs/1\""), "the page before run 2");
    let run = server.get("/runs/2", &[]).body;
    assert!(run.contains("<svg") && run.contains("class=\"node s-failed\""), "the graph: {run}");
    assert!(run.contains("runbook retry T2.4 --run 2"), "the next action names the run: {run}");
    assert!(run.contains("/runs/2/steps/T2.4/attempts/1\""), "attempts link their logs: {run}");
    let log = server.get("/runs/2/steps/T2.4/attempts/1", &[]).body;
    assert!(log.contains("&lt;script&gt;alert(&#39;log&#39;)&lt;/script&gt;\\u{1b}[2J"), "the log, escaped: {log}");
    assert!(log.contains("/runs/2/steps/T2.4/attempts/1/log\">as text</a>") && !log.contains("data-live"), "{log}");
    assert!(run.contains("<h2>Attempts</h2>") && run.matches("/attempts/1\"").count() >= 16, "the timeline: {run}");
    assert!(run.contains("skipped T2.7: &lt;script&gt;alert(&#39;reason&#39;)"), "the run's decisions: {run}");
    let log = server.get("/runs/2/steps/T2.4/attempts/1/log", &[]).body;
    assert_eq!(log, "done\n<script>alert('log')</script>\\u{1b}[2J\n", "a log is text, its controls escaped");
    let events = server.get("/runs/1/events", &[]).body;
    assert!(events.contains("event: end"), "the stream of a finished run ends: {events}");
    let ids: Vec<&str> = events.lines().filter_map(|l| l.strip_prefix("id: ")).collect();
    assert_eq!(ids.len(), 3, "{events}");
    assert!(events.contains("\"line\":\"<script>alert('log')</script>\\u001b[2J\""), "JSON escapes: {events}");
    let resumed = server.get("/runs/1/events", &[("Last-Event-ID", ids[0])]).body;
    let again: Vec<&str> = resumed.lines().filter_map(|l| l.strip_prefix("id: ")).collect();
    assert_eq!(again, ids[1..], "a reconnect resumes after the last id it saw: {resumed}");
    let after = server.get(&format!("/runs/1/events?after={}", ids[2]), &[]).body;
    assert!(!after.contains("id: ") && after.contains("event: end"), "{after}");
}

#[test]
fn what_is_not_a_page_is_refused_with_the_same_headers() {
    let dir = scratch("refusals");
    let server = Server::start(&state_db(&dir), &[]);
    for (method, path, headers, status) in [
        ("GET", "/runs/99", vec![], 404),
        ("GET", "/runs/1/steps/T9.9/attempts/1/log", vec![], 404),
        ("GET", "/nowhere", vec![], 404),
        ("GET", "/?status=bogus", vec![], 400),
        ("POST", "/", vec![], 405),
        ("DELETE", "/runs/1", vec![], 405),
        ("GET", "/", vec![("Host", "evil.example")], 403),
        ("GET", "/runs/1/events", vec![("Origin", "http://evil.example")], 403),
    ] {
        let reply = server.request(method, path, &headers);
        assert_eq!(reply.status, status, "{method} {path} {headers:?}: {}", reply.body);
        assert_safe_headers(&reply, path);
    }
    let loopback = server.addr.replace("127.0.0.1", "localhost");
    assert_eq!(server.get("/", &[("Host", &loopback)]).status, 200, "localhost is loopback's name");
    let origin = format!("http://{}", server.addr);
    assert_eq!(server.get("/", &[("Origin", &origin)]).status, 200, "the page's own origin");
}

#[test]
fn with_a_token_every_route_wants_it_and_login_trades_it_for_a_cookie() {
    let dir = scratch("token");
    let token = "a-token-of-the-team-0123456789";
    let file = dir.join("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let server = Server::start(&state_db(&dir), &["--token-file", file.to_str().unwrap()]);
    for (path, _) in PAGES {
        let reply = server.get(path, &[]);
        assert_eq!(reply.status, 401, "{path} without the token");
        assert_safe_headers(&reply, path);
        assert_eq!(server.get(path, &[("Authorization", "Bearer not-the-token-000000")]).status, 401, "{path}");
        let bearer = format!("Bearer {token}");
        let reply = server.get(path, &[("Authorization", &bearer)]);
        assert_eq!(reply.status, 200, "{path} with the token");
        assert!(!reply.body.contains(token), "{path} shows the token");
    }
    assert_eq!(server.get("/login?token=wrong", &[]).status, 401);
    let login = server.get(&format!("/login?token={token}"), &[]);
    assert_eq!(login.status, 303);
    assert_eq!(login.header("location"), Some("/"), "the token leaves the address bar");
    let cookie = login.header("set-cookie").expect("a session cookie");
    assert!(cookie.ends_with("; HttpOnly; SameSite=Strict; Path=/"), "{cookie}");
    assert!(!cookie.contains(token), "the cookie is not the token: {cookie}");
    let session = cookie.split(';').next().unwrap();
    for (path, _) in PAGES {
        assert_eq!(server.get(path, &[("Cookie", session)]).status, 200, "{path} with the cookie");
    }
}

#[test]
fn an_address_that_takes_any_host_is_refused_at_start() {
    let dir = scratch("unspecified");
    let out = Command::new(env!("CARGO_BIN_EXE_runbook"))
        .args(["serve", "--bind", "0.0.0.0:0"])
        .env("RUNBOOK_STATE", state_db(&dir))
        .env_remove("RUNBOOK_SERVE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--bind 0.0.0.0:") && stderr.contains("bind the one address"), "{stderr}");
    assert!(out.stdout.is_empty(), "no token was printed: {}", String::from_utf8_lossy(&out.stdout));
}

/// The repository's diagnose runbook and ring environment, with AWS and the health URLs sent
/// to a port where nothing listens.
fn unreachable_ring(dir: &Path) -> PathBuf {
    let project = dir.join("project");
    std::fs::create_dir_all(project.join("runbooks/environments")).unwrap();
    std::fs::copy(project_file("runbooks/diagnose.toml"), project.join("runbooks/diagnose.toml")).unwrap();
    let local = std::fs::read_to_string(project_file("runbooks/environments/local.toml")).unwrap();
    let dead = local.replace("127.0.0.1:4566", "127.0.0.1:9").replace("127.0.0.1:13000", "127.0.0.1:9");
    std::fs::write(project.join("runbooks/environments/local.toml"), dead.replace("127.0.0.1:13001", "127.0.0.1:9"))
        .unwrap();
    project
}

fn project_file(path: &str) -> PathBuf {
    project().join(path)
}

#[test]
fn the_health_page_shows_the_latest_poll_and_diagnose_and_says_when_neither_can_answer() {
    let dir = scratch("health");
    let state = state_db(&dir);
    let project = unreachable_ring(&dir);

    // Without --env there is no health to show: the page says how to get it.
    let reply = Server::start(&state, &[]).get("/health", &[]);
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert!(reply.body.contains("start it with --env NAME"), "{}", reply.body);

    // An environment that does not exist is bad input before serve listens.
    let out = Command::new(env!("CARGO_BIN_EXE_runbook"))
        .args(["serve", "--bind", "127.0.0.1:0", "--env", "nosuch", "--project"])
        .arg(&project)
        .env("RUNBOOK_STATE", &state)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nosuch"), "names the environment: {stderr}");
    assert!(out.stdout.is_empty(), "nothing listened: {}", String::from_utf8_lossy(&out.stdout));

    let server = Server::start_in(&project, &state, &["--env", "local"]);
    let started = std::time::Instant::now();
    let page = loop {
        let reply = server.get("/health", &[]);
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_safe_headers(&reply, "/health");
        if reply.body.contains("could not run") || started.elapsed() > Duration::from_secs(30) {
            break reply.body;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(page.contains("<h1>health of local</h1>"), "{page}");
    assert!(page.contains("<span class=\"v-unhealthy\">unhealthy</span>"), "Dixie does not answer: {page}");
    assert!(page.contains("<tr><th>dixie</th><td>unreachable</td></tr>"), "{page}");
    assert!(page.contains("cannot reach AWS (http://127.0.0.1:9)"), "why diagnose could not run: {page}");
    assert!(page.contains("runbook ring up"), "and its fix: {page}");
    assert!(page.contains("<meta http-equiv=\"refresh\" content=\"30\">"), "drawn again at each poll: {page}");
    assert!(!page.contains(PLANTED) && !page.contains("<script"), "{page}");
}

/// Run 3, in progress as another host's `runbook run` records it: T2.1 running, the run's lock
/// held from `elsewhere` with a heartbeat at `now` (fresh for 30 s).
fn live_run(conn: &rusqlite::Connection, now: i64) {
    conn.execute(
        "INSERT INTO runs (id, runbook, env, runbook_hash, inputs_hash, vars_json, operator, host, started_at, \
         status) VALUES (3, 'sprint-2', 'local', '', '', '{}', 'op', 'elsewhere', ?1, 'running')",
        [now],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO steps (run_id, step, state, attempts, started_at) VALUES (3, 'T2.1', 'running', 1, ?1)",
        [now],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO run_lock (id, run_id, host, pid, acquired_at, heartbeat_at) VALUES (1, 3, 'elsewhere', 1, ?1, ?1)",
        [now],
    )
    .unwrap();
}

#[test]
fn a_live_runs_events_arrive_as_they_are_recorded_and_the_stream_ends_with_the_run() {
    let dir = scratch("live");
    let state = state_db(&dir);
    let conn = rusqlite::Connection::open(&state).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    live_run(&conn, now);
    let server = Server::start(&state, &[]);
    let run = server.get("/runs/3", &[]).body;
    assert!(run.contains("<script src=\"/live.js\" defer></script>"), "a live run's page follows it: {run}");
    assert!(run.contains("<noscript><meta http-equiv=\"refresh\""), "and reloads itself without scripts: {run}");
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    write!(stream, "GET /runs/3/events HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).unwrap();
    let mut seen = String::new();
    let mut read_until = |stream: &mut TcpStream, want: &str, within: Duration| -> Duration {
        let start = std::time::Instant::now();
        let mut buf = [0u8; 4096];
        while !seen.contains(want) {
            assert!(start.elapsed() < within, "no {want:?} within {within:?}: {seen}");
            match stream.read(&mut buf) {
                Ok(0) => panic!("the stream closed before {want:?}: {seen}"),
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => {}
            }
        }
        start.elapsed()
    };
    read_until(&mut stream, "retry: 1000", Duration::from_secs(5));
    let line = serde_json::json!({ "event": "step_log", "step": "T2.1", "attempt": 1, "line": "live line 1" });
    conn.execute(
        "INSERT INTO events (run_id, at, step, kind, payload) VALUES (3, ?1, 'T2.1', 'step_log', ?2)",
        rusqlite::params![now, line.to_string()],
    )
    .unwrap();
    let took = read_until(&mut stream, "live line 1", Duration::from_secs(3));
    eprintln!("an event recorded reached the stream in {took:?}");
    conn.execute("UPDATE runs SET status = 'done', ended_at = ?1 WHERE id = 3", [now + 1000]).unwrap();
    conn.execute("DELETE FROM run_lock", []).unwrap();
    read_until(&mut stream, "event: end", Duration::from_secs(3));
}

#[test]
fn a_token_that_is_missing_empty_or_short_is_refused_at_start_and_never_echoed() {
    let dir = scratch("bad-token");
    let state = state_db(&dir);
    let short = "x".repeat(15);
    let start = |args: &[&str], env: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_runbook"));
        command.args(["serve", "--bind", "127.0.0.1:0"]).args(args).env("RUNBOOK_STATE", &state);
        match env {
            Some(token) => command.env("RUNBOOK_SERVE_TOKEN", token),
            None => command.env_remove("RUNBOOK_SERVE_TOKEN"),
        };
        command.output().unwrap()
    };
    let empty = dir.join("empty");
    std::fs::write(&empty, "  \n").unwrap();
    let short_file = dir.join("short");
    std::fs::write(&short_file, format!("{short}\n")).unwrap();
    let missing = dir.join("missing");
    for (args, env, says) in [
        (vec!["--token-file", empty.to_str().unwrap()], None, "the file is empty"),
        (vec!["--token-file", short_file.to_str().unwrap()], None, "15 characters long: give at least 16"),
        (vec!["--token-file", missing.to_str().unwrap()], None, "cannot read it"),
        (vec![], Some(short.as_str()), "15 characters long: give at least 16"),
    ] {
        let out = start(&args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} {env:?}: {stderr}");
        assert!(!stderr.contains(&short) && out.stdout.is_empty(), "the token is not echoed: {stderr}");
    }
}
