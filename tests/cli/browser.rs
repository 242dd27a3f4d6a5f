//! `runbook serve` in a real browser: Debian's `chromium`, headless, driven over WebDriver by
//! `chromedriver` (`chromium-driver`; ring/setup.sh installs both). A small WebDriver client over
//! HTTP/1.1 on loopback, here. The browser reaches only loopback: every other address goes to a
//! proxy on 127.0.0.1:9, where nothing listens, and host names other than the loopback's resolve
//! to nothing. Screenshots: target/browser/. Skipped with a line where chromedriver is missing,
//! except under `bash scripts/test` (RUNBOOK_RING set), where it must run.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Reply, Server, live_run, project, scratch, state_db};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver on loopback with one headless chromium session; both stop when dropped.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

impl Browser {
    fn start(profile: &Path) -> Option<Browser> {
        if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
            assert!(
                std::env::var_os("RUNBOOK_RING").is_none(),
                "{CHROMEDRIVER} or {CHROMIUM} is missing under bash scripts/test: ring/setup.sh installs chromium and \
                 chromium-driver"
            );
            eprintln!("skipped: no {CHROMEDRIVER} (apt-get install chromium chromium-driver, or bash scripts/test)");
            return None;
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut browser = Browser { driver, port, session: String::new() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !browser.call("GET", "/status", None).1["ready"].as_bool().unwrap_or(false) {
            assert!(Instant::now() < deadline, "chromedriver did not get ready on 127.0.0.1:{port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-default-apps".into(),
            "--disable-domain-reliability".into(),
            "--no-pings".into(),
            "--window-size=1280,900".into(),
            // Loopback only: anything else goes to a proxy where nothing listens.
            "--proxy-server=http://127.0.0.1:9".into(),
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let (code, value) = browser.call("POST", "/session", Some(caps));
        assert_eq!(code, 200, "a chromium session: {value}");
        browser.session = value["sessionId"].as_str().expect("a session id").to_string();
        Some(browser)
    }

    /// One WebDriver command: (HTTP status, its `value`).
    fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, serde_json::Value::Null);
        };
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        // chromedriver keeps the connection open: read the head, then exactly its body.
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let head_end = loop {
            if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return (0, serde_json::Value::Null),
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
        let chunked = head.contains("transfer-encoding: chunked");
        let length =
            head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
        loop {
            let have = raw.len() - head_end;
            let complete = match length {
                Some(length) => have >= length,
                None => chunked && raw.ends_with(b"0\r\n\r\n"),
            };
            if complete {
                break;
            }
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
        let reply = Reply::parse(&raw);
        let value = serde_json::from_str::<serde_json::Value>(&reply.body).map(|v| v["value"].clone());
        (reply.status, value.unwrap_or(serde_json::Value::Null))
    }

    fn session_call(&self, method: &str, what: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let (code, value) = self.call(method, &format!("/session/{}{what}", self.session), body);
        assert_eq!(code, 200, "WebDriver {method} {what}: {value}");
        value
    }

    fn open(&self, url: &str) {
        self.session_call("POST", "/url", Some(serde_json::json!({ "url": url })));
    }

    /// The value of a script run in the page (`return …;`).
    fn eval(&self, script: &str) -> serde_json::Value {
        self.session_call("POST", "/execute/sync", Some(serde_json::json!({ "script": script, "args": [] })))
    }

    /// Waits until `script` returns true in the page; how long it took, or a failure naming `what`.
    fn until(&self, what: &str, script: &str, within: Duration) -> Duration {
        let start = Instant::now();
        while self.eval(script) != serde_json::Value::Bool(true) {
            assert!(start.elapsed() < within, "{what}: not within {within:?}; the page: {}", self.text());
            std::thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
    }

    fn text(&self) -> String {
        self.eval("return document.body ? document.body.innerText : '';").as_str().unwrap_or_default().to_string()
    }

    /// A PNG of the window in target/browser/NAME.png, kept as the test's artefact.
    fn screenshot(&self, name: &str) -> PathBuf {
        let encoded = self.session_call("GET", "/screenshot", None);
        let dir = project().join("target/browser");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, crate::base64_decode(encoded.as_str().unwrap())).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn record(conn: &rusqlite::Connection, run: i64, step: &str, event: serde_json::Value) {
    let kind = event["event"].as_str().unwrap().to_string();
    conn.execute(
        "INSERT INTO events (run_id, at, step, kind, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![run, now_ms(), step, kind, event.to_string()],
    )
    .unwrap();
}

/// A run in progress, as another host's `runbook run` records it: the graph's boxes and the steps
/// table change colour as its events arrive, an attempt's page shows each new log line, hostile
/// text stays text, and the page shows the run's end once it ends.
#[test]
fn a_live_run_changes_colour_and_shows_its_log_lines_in_a_real_browser() {
    let dir = scratch("browser");
    let Some(browser) = Browser::start(&dir.join("chromium")) else { return };
    let state = state_db(&dir);
    let conn = rusqlite::Connection::open(&state).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let now = now_ms();
    live_run(&conn, now);
    conn.execute("INSERT INTO attempts (run_id, step, attempt, started_at, log) VALUES (3, 'T2.1', 1, ?1, '')", [now])
        .unwrap();
    // Its heartbeat kept fresh, as its process would, until the run ends.
    let beating = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let heart = {
        let (beating, state) = (beating.clone(), state.clone());
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&state).unwrap();
            conn.busy_timeout(Duration::from_secs(5)).unwrap();
            while beating.load(std::sync::atomic::Ordering::SeqCst) {
                conn.execute("UPDATE run_lock SET heartbeat_at = ?1", [now_ms()]).unwrap();
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let server = Server::start(&state, &[]);
    let base = format!("http://{}", server.addr);
    let class_of = |step: &str| {
        format!("return document.querySelector('svg.graph g.node[data-step=\"{step}\"]').getAttribute('class');")
    };

    browser.open(&format!("{base}/runs/3"));
    assert_eq!(browser.eval(&class_of("T2.1")), "node s-running", "{}", browser.text());
    assert_eq!(browser.eval(&class_of("T2.2")), "node s-unknown");
    browser.screenshot("run-3-running");
    record(
        &conn,
        3,
        "T2.1",
        serde_json::json!({"event": "step_done", "step": "T2.1", "attempt": 1,
        "outcome": "applied", "outputs": {}, "duration_ms": 10}),
    );
    record(
        &conn,
        3,
        "T2.2",
        serde_json::json!({"event": "step_started", "step": "T2.2", "attempt": 1,
        "title": "Build", "in_doubt": false}),
    );
    let took = browser.until(
        "T2.2's box and row turn running, T2.1's applied",
        "return document.querySelector('svg.graph g.node[data-step=\"T2.2\"]').getAttribute('class') === 'node s-running' \
         && document.querySelector('svg.graph g.node[data-step=\"T2.1\"]').getAttribute('class') === 'node s-applied' \
         && document.querySelector('table.steps span.state[data-step=\"T2.1\"]').textContent === 'applied';",
        Duration::from_secs(5),
    );
    eprintln!("two events recorded reached the graph in the browser in {took:?}");
    browser.screenshot("run-3-progressed");

    // The attempt's page follows its lines; markup in a line is text.
    browser.open(&format!("{base}/runs/3/steps/T2.1/attempts/1"));
    record(
        &conn,
        3,
        "T2.1",
        serde_json::json!({"event": "step_log", "step": "T2.1", "attempt": 1,
        "line": "<b>bold?</b> line one"}),
    );
    let took = browser.until(
        "the first line in the page",
        "return document.getElementById('log').textContent.includes('<b>bold?</b> line one');",
        Duration::from_secs(5),
    );
    eprintln!("a log line recorded reached the page in {took:?}");
    assert_eq!(browser.eval("return document.querySelectorAll('#log b').length;"), 0, "markup from a log line");
    record(
        &conn,
        3,
        "T2.1",
        serde_json::json!({"event": "step_log", "step": "T2.1", "attempt": 1, "line": "line two"}),
    );
    record(
        &conn,
        3,
        "T2.2",
        serde_json::json!({"event": "step_log", "step": "T2.2", "attempt": 1, "line": "not ours"}),
    );
    browser.until(
        "the second line",
        "return document.getElementById('log').textContent.includes('line two');",
        Duration::from_secs(5),
    );
    let log = browser.eval("return document.getElementById('log').textContent;");
    assert_eq!(log, "<b>bold?</b> line one\nline two\n", "each line once, only this attempt's");
    browser.screenshot("run-3-log");

    // The run ends: the run's page shows it as the server draws it, and stops following.
    browser.open(&format!("{base}/runs/3"));
    browser.until("the page is live", "return document.body.dataset.live === 'run';", Duration::from_secs(5));
    beating.store(false, std::sync::atomic::Ordering::SeqCst);
    heart.join().unwrap();
    conn.execute("UPDATE runs SET status = 'done', ended_at = ?1 WHERE id = 3", [now_ms()]).unwrap();
    conn.execute("DELETE FROM run_lock", []).unwrap();
    browser.until(
        "the page shows the run done",
        "return !document.body.dataset.live && document.querySelector('p.summary span').textContent === 'done';",
        Duration::from_secs(10),
    );
    browser.screenshot("run-3-done");
}

/// With a token, a browser sees nothing without it, trades it once at /login for a cookie its
/// scripts cannot read, and is then sent to the runs with the token gone from the address bar.
/// (Tests reach only loopback: the token is given to a loopback bind, which then asks for it as
/// any other address does.)
#[test]
fn a_browser_needs_the_token_once_and_then_holds_only_a_cookie_its_scripts_cannot_read() {
    let dir = scratch("browser-token");
    let Some(browser) = Browser::start(&dir.join("chromium")) else { return };
    let token_file = dir.join("token");
    let token = "f3b1c9a27d5e4f60a8b2c4d6e8f0a1b3";
    std::fs::write(&token_file, token).unwrap();
    let server = Server::start(&state_db(&dir), &["--token-file", token_file.to_str().unwrap()]);
    let base = format!("http://{}", server.addr);

    for path in ["/", "/runs/2", "/health", "/runs/1/events"] {
        browser.open(&format!("{base}{path}"));
        let text = browser.text();
        assert!(text.contains("token"), "{path} without the token: {text}");
        assert!(!text.contains("sprint-2"), "{path} shows a run without the token: {text}");
    }
    browser.screenshot("token-refused");
    browser.open(&format!("{base}/login?token=wrong-{token}"));
    assert!(!browser.text().contains("sprint-2"), "a wrong token opens nothing: {}", browser.text());

    browser.open(&format!("{base}/login?token={token}"));
    browser.until(
        "the runs after login",
        "return document.body.innerText.includes('sprint-2');",
        Duration::from_secs(5),
    );
    let url = browser.session_call("GET", "/url", None);
    assert_eq!(url.as_str(), Some(format!("{base}/").as_str()), "the token left the address bar");
    assert_eq!(browser.eval("return document.cookie;"), "", "the cookie is HttpOnly: scripts cannot read it");
    // The run list renders both runs and filters them through its form.
    let runs = "return Array.from(document.querySelectorAll('table a[href^=\"/runs/\"]')).map(a => a.textContent);";
    assert_eq!(browser.eval(runs), serde_json::json!(["2", "1"]), "{}", browser.text());
    browser.eval(
        "document.querySelector('form.filters select[name=status]').value = 'failed'; \
         document.querySelector('form.filters').submit(); return true;",
    );
    browser.until("the filtered list", "return location.search.includes('status=failed');", Duration::from_secs(5));
    assert_eq!(browser.eval(runs), serde_json::json!(["2"]), "only the failed run: {}", browser.text());
    browser.screenshot("runs-filtered");
    browser.open(&format!("{base}/runs/2"));
    assert!(browser.text().contains("T2.4"), "a run's page with the cookie: {}", browser.text());
    assert!(!browser.eval("return document.documentElement.outerHTML;").as_str().unwrap().contains(token));
    browser.screenshot("token-logged-in");
}

/// On the ring: sprint 2 runs for real while a browser shows its page, drawn once. The boxes of
/// the graph change colour as the steps run and end, in the same document (no reload), and the
/// page shows the run done once it ends.
#[test]
fn a_ring_run_of_sprint_2_colours_its_graph_in_a_real_browser_without_a_reload() {
    let Some(_ring) = crate::fresh_ring() else { return };
    let dir = scratch("browser-ring");
    let Some(browser) = Browser::start(&dir.join("chromium")) else { return };
    let work = crate::Scratch::new("browser-ring");
    let project = crate::impatient_project(&work);
    let run = work
        .runbook()
        .project(&project)
        .command(&["run", "sprint-2", "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Stopped when the test ends, passed or not: a run left going would act on the next test's ring.
    let mut run = crate::Killed(run);
    // serve opens an existing state DB only: the run makes it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while work.runbook().project(&project).run(&["status", "--json"]).code != Some(0) {
        assert!(Instant::now() < deadline, "run 1 was not recorded within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let server = Server::start_in(&project, &work.state(), &[]);
    let base = format!("http://{}", server.addr);
    browser.open(&format!("{base}/runs/1"));
    browser.until("the page follows the run", "return document.body.dataset.live === 'run';", Duration::from_secs(5));
    // A mark on this document: a reload would lose it.
    browser.eval("window.drawnOnce = true; return true;");
    browser.screenshot("ring-run-started");

    // Each step's classes as this document showed them, in order.
    let mut seen: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let look = "return {mark: window.drawnOnce === true, live: document.body.dataset.live || '', \
                boxes: Array.from(document.querySelectorAll('svg.graph g.node')).map(n => \
                [n.dataset.step, n.getAttribute('class')])};";
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let now = browser.eval(look);
        if now["mark"] != true || now["live"] != "run" {
            break;
        }
        for pair in now["boxes"].as_array().unwrap() {
            let (step, class) = (pair[0].as_str().unwrap().to_string(), pair[1].as_str().unwrap().to_string());
            let classes = seen.entry(step).or_default();
            if classes.last() != Some(&class) {
                classes.push(class);
            }
        }
        assert!(Instant::now() < deadline, "the run did not end within 240 s: {seen:?}");
        assert!(run.0.try_wait().unwrap().is_none_or(|s| s.success()), "sprint 2 failed: {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let changed: Vec<&String> = seen
        .iter()
        .filter(|(_, classes)| {
            let running = classes.iter().position(|c| c == "node s-running");
            let applied = classes.iter().rposition(|c| c == "node s-applied");
            matches!((running, applied), (Some(r), Some(a)) if r < a)
        })
        .map(|(step, _)| step)
        .collect();
    assert!(changed.len() >= 3, "boxes seen going from running to applied in one document: {changed:?}; {seen:#?}");
    browser.until(
        "the page shows the run done",
        "return document.querySelector('p.summary span').textContent === 'done' && \
         Array.from(document.querySelectorAll('svg.graph g.node')).every(n => \
         /s-(applied|satisfied)$/.test(n.getAttribute('class')));",
        Duration::from_secs(30),
    );
    browser.screenshot("ring-run-done");
    assert_eq!(run.0.wait().unwrap().code(), Some(0), "sprint 2 on the ring");
}
