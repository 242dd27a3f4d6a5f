//! `runbook serve`'s web view: an HTTP/1.1 server (hyper) that shows the runs, a run with its
//! graph and steps, an attempt's log, and a run's events as they are recorded. Read-only: it
//! reads the state DB through the store's read API (`state/read.rs`, the queries `status` and
//! `history` use) and holds no SQL. Every request passes one gate first (`gate.rs`); every
//! response carries the same security headers. It must not write the state DB.

mod gate;
mod health;
mod pages;
mod svg;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Frame;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use gate::{Asked, Verdict};
pub(crate) use gate::{Gate, MIN_TOKEN_LEN};
pub(crate) use health::{Diagnosis, Health};
use pages::RunsQuery;

use crate::event::RunState;
use crate::state::{StateDb, StateError};

/// Runs on a page of `/`.
const PAGE: u32 = 50;
/// How often a live event stream asks the store for what is new: an event reaches the browser
/// within this and the page's work (issue 21: under 1 s).
const POLL: Duration = Duration::from_millis(250);
/// The events one poll reads at most (the rest on the next, at once).
const BATCH: u32 = 500;

/// The same on every response, refusals included.
const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; \
         form-action 'self'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

/// What every request shares.
pub(crate) struct App {
    db: Arc<Mutex<StateDb>>,
    gate: Gate,
    /// Where runbooks/ are: a run's graph is drawn from its runbook file.
    project: PathBuf,
    /// This host, as `status` judges whether a run's process lives.
    host: String,
    /// The environment's latest health, with `serve --env`.
    health: Option<Health>,
}

impl App {
    pub(crate) fn new(db: StateDb, gate: Gate, project: PathBuf, host: String, health: Option<Health>) -> Self {
        App { db: Arc::new(Mutex::new(db)), gate, project, host, health }
    }
}

/// Serves on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let app = Arc::new(app);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors, a connection reset before it was taken: the next may do.
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue }
            },
            () = &mut shutdown => return Ok(()),
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(handle(&app, req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, service)
                .await;
        });
    }
}

/// A response's body: all at once, or an event stream fed by its poller.
pub(crate) enum Body {
    Full(Option<Bytes>),
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|next| next.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Body::Full(bytes) => hyper::body::SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream(_) => hyper::body::SizeHint::default(),
        }
    }
}

async fn handle(app: &App, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let header = |name: header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
    let asked = Asked {
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query(),
        // HTTP/1.1 sends Host; an absolute-form request line carries its authority instead.
        host: header(header::HOST).or_else(|| req.uri().authority().map(|a| a.as_str())),
        origin: header(header::ORIGIN),
        authorization: header(header::AUTHORIZATION),
        cookie: header(header::COOKIE),
    };
    let mut response = match app.gate.check(&asked) {
        Verdict::Refuse { status, why } => {
            let mut r = text(StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN), why);
            if status == 401 {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            if status == 405 {
                r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            r
        }
        Verdict::LoggedIn { cookie } => {
            let mut r = redirect("/");
            let value = format!("{}={cookie}; HttpOnly; SameSite=Strict; Path=/", gate::COOKIE);
            if let Ok(value) = HeaderValue::from_str(&value) {
                r.headers_mut().insert(header::SET_COOKIE, value);
            }
            r
        }
        Verdict::Pass => {
            let last_event = header(header::HeaderName::from_static("last-event-id")).and_then(|v| v.parse().ok());
            let head = req.method() == hyper::Method::HEAD;
            route(app, req.uri().path(), req.uri().query(), last_event, head).await
        }
    };
    for (name, value) in SECURITY_HEADERS {
        response.headers_mut().insert(*name, HeaderValue::from_static(value));
    }
    response
}

async fn route(app: &App, path: &str, query: Option<&str>, last_event: Option<i64>, head: bool) -> Response<Body> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let pairs = query.map(query_pairs).unwrap_or_default();
    match segments.as_slice() {
        [""] => runs_page(app, &pairs).await,
        ["style.css"] => with_type(
            Response::new(Body::Full(Some(Bytes::from_static(pages::STYLE.as_bytes())))),
            "text/css; charset=utf-8",
        ),
        ["live.js"] => with_type(
            Response::new(Body::Full(Some(Bytes::from_static(pages::LIVE_JS.as_bytes())))),
            "text/javascript; charset=utf-8",
        ),
        // Without a token there is nothing to exchange.
        ["login"] => redirect("/"),
        ["health"] => match &app.health {
            Some(health) => html(StatusCode::OK, pages::health(&health.seen())),
            None => html(
                StatusCode::NOT_FOUND,
                pages::message(
                    "no environment",
                    "this serve watches no environment: start it with --env NAME (runbook serve --env armitage) to \
                     see its latest watch poll and diagnose here",
                ),
            ),
        },
        ["runs", run] => match run.parse() {
            Ok(run) => run_page(app, run).await,
            Err(_) => not_found(),
        },
        ["runs", run, "events"] => {
            let after =
                last_event.or_else(|| pairs.iter().find(|(k, _)| k == "after").and_then(|(_, v)| v.parse().ok()));
            match run.parse() {
                Ok(run) => events(app, run, after.unwrap_or(0), head).await,
                Err(_) => not_found(),
            }
        }
        ["runs", run, "steps", step, "attempts", attempt] => match (run.parse(), attempt.parse()) {
            (Ok(run), Ok(attempt)) => log_page(app, run, &percent_decode(step), attempt).await,
            _ => not_found(),
        },
        ["runs", run, "steps", step, "attempts", attempt, "log"] => match (run.parse(), attempt.parse()) {
            (Ok(run), Ok(attempt)) => log(app, run, &percent_decode(step), attempt).await,
            _ => not_found(),
        },
        _ => not_found(),
    }
}

/// Runs `read` on the state DB, off the async threads (a PostgreSQL store blocks on its
/// connection).
async fn read<T: Send + 'static>(
    app: &App,
    read: impl FnOnce(&StateDb) -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError> {
    let db = app.db.clone();
    tokio::task::spawn_blocking(move || {
        let db = db.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        read(&db)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

async fn runs_page(app: &App, pairs: &[(String, String)]) -> Response<Body> {
    let given = |name: &str| pairs.iter().find(|(k, v)| k == name && !v.is_empty()).map(|(_, v)| v.clone());
    let status = match given("status") {
        Some(text) => match RunState::parse(&text) {
            Some(status) => Some(status),
            None => return html(StatusCode::BAD_REQUEST, pages::message("bad filter", "no such run status")),
        },
        None => None,
    };
    let before = match given("before").map(|b| b.parse::<i64>()) {
        Some(Ok(before)) => Some(before),
        Some(Err(_)) => return html(StatusCode::BAD_REQUEST, pages::message("bad page", "before= takes a run id")),
        None => None,
    };
    let asked = RunsQuery { runbook: given("runbook"), env: given("env"), status, operator: given("operator") };
    let host = app.host.clone();
    let (runbook, env, operator) = (asked.runbook.clone(), asked.env.clone(), asked.operator.clone());
    let view = read(app, move |db| {
        let filter = crate::state::RunFilter {
            runbook: runbook.as_deref(),
            env: env.as_deref(),
            status,
            operator: operator.as_deref(),
        };
        crate::history::history(db, &filter, crate::state::Page { before, limit: PAGE }, &host)
    })
    .await;
    match view {
        Ok(view) => html(StatusCode::OK, pages::runs(&view, &asked)),
        Err(e) => state_error(&e),
    }
}

async fn run_page(app: &App, run: i64) -> Response<Body> {
    let host = app.host.clone();
    let read_all = move |db: &StateDb| {
        let view = crate::status::view(db, Some(run), &host)?;
        let timeline = db.attempt_timeline(run)?;
        let audit = crate::history::audit(db, Some(run), false)?;
        Ok((view, timeline, audit))
    };
    let (view, timeline, audit) = match read(app, read_all).await {
        Ok(read) => read,
        Err(e) => return state_error(&e),
    };
    let graph = graph(app, &view);
    html(StatusCode::OK, pages::run(&view, &graph, &timeline, &audit))
}

/// The run's graph as SVG: its steps from the state, their needs from the runbook file in the
/// project (the state keeps no edges). A sentence says when the file is not the run's.
fn graph(app: &App, view: &crate::status::StatusView) -> String {
    let run = &view.run;
    let states: BTreeMap<String, crate::event::StepState> =
        view.steps.iter().map(|s| (s.row.step.clone(), s.row.state)).collect();
    let loaded = crate::environment::Environment::load(&app.project, &run.env)
        .ok()
        .and_then(|env| crate::runbook::Runbook::load(&app.project, &run.runbook, &env, &run.vars).ok());
    let Some(book) = loaded else {
        // Its error is not shown: an environment file may hold secrets a parse error quotes.
        let waves: Vec<Vec<String>> = view.steps.iter().map(|s| vec![s.row.step.clone()]).collect();
        return format!(
            "<p>The runbook {} on {} could not be loaded from the project folder, so the steps are drawn in their \
             order without their needs (<code>runbook graph {}</code> says why).</p>{}",
            pages::escape(&run.runbook),
            pages::escape(&run.env),
            pages::escape(&run.runbook),
            svg::draw(&waves, &[], &states, &BTreeMap::new())
        );
    };
    let titles: BTreeMap<String, String> = book.steps.iter().map(|s| (s.id.clone(), s.title.clone())).collect();
    let mut waves = book.graph.waves();
    let missing: Vec<String> =
        view.steps.iter().map(|s| s.row.step.clone()).filter(|s| !titles.contains_key(s)).collect();
    let mut note = String::new();
    if book.hash != run.runbook_hash {
        note.push_str("<p>The runbook file has changed since this run began: the needs drawn are today's.</p>");
    }
    if !missing.is_empty() {
        note.push_str("<p>Steps of this run that the runbook no longer has are drawn last, without their needs.</p>");
        waves.push(missing);
    }
    format!("{note}{}", svg::draw(&waves, &book.graph.edges(), &states, &titles))
}

async fn log(app: &App, run: i64, step: &str, attempt: i64) -> Response<Body> {
    let key = step.to_string();
    match read(app, move |db| db.attempt_log(run, &key, attempt)).await {
        Ok(Some(log)) => {
            let body = crate::text::printable(&log).into_owned();
            with_type(Response::new(Body::Full(Some(Bytes::from(body)))), "text/plain; charset=utf-8")
        }
        Ok(None) => not_found(),
        Err(e) => state_error(&e),
    }
}

/// `/runs/N/steps/S/attempts/A`: the attempt's log as a page, live while its run is in progress
/// (in progress as `status` says: recorded as running and its process alive).
async fn log_page(app: &App, run: i64, step: &str, attempt: i64) -> Response<Body> {
    let (key, host) = (step.to_string(), app.host.clone());
    let read_all = move |db: &StateDb| Ok((db.attempt_log(run, &key, attempt)?, in_progress(db, run, &host)?));
    match read(app, read_all).await {
        Ok((Some(log), live)) => html(StatusCode::OK, pages::attempt_log(run, step, attempt, &log, live)),
        Ok((None, _)) => not_found(),
        Err(e) => state_error(&e),
    }
}

/// Whether a run is in progress: recorded as running and a live process holds it (one that died
/// is over, as `status` calls it).
fn in_progress(db: &StateDb, run: i64, host: &str) -> Result<bool, StateError> {
    Ok(db.run(run)?.status == RunState::Running && db.run_is_live(run, host)?)
}

/// `/runs/N/events`: the run's events after `after` as server-sent events, each with its row
/// id (a reconnect sends it back as `Last-Event-ID`), polled every `POLL`, until the run has
/// ended and every event of it is sent.
async fn events(app: &App, run: i64, after: i64, head: bool) -> Response<Body> {
    if let Err(e) = read(app, move |db| db.run(run)).await {
        return state_error(&e);
    }
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    if !head {
        let (db, host) = (app.db.clone(), app.host.clone());
        tokio::spawn(stream_events(db, host, run, after, tx));
    }
    let mut response = with_type(Response::new(Body::Stream(rx)), "text/event-stream; charset=utf-8");
    if head {
        *response.body_mut() = Body::Full(None);
    }
    response
}

async fn stream_events(
    db: Arc<Mutex<StateDb>>,
    host: String,
    run: i64,
    mut after: i64,
    tx: tokio::sync::mpsc::Sender<Bytes>,
) {
    if tx.send(Bytes::from_static(b"retry: 1000\n\n")).await.is_err() {
        return;
    }
    let mut quiet = 0;
    loop {
        let (db2, host2) = (db.clone(), host.clone());
        let polled = tokio::task::spawn_blocking(move || {
            let db = db2.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let events = db.events_after(Some(run), after, BATCH)?;
            // Ended: recorded as over, or running with no live process (it died).
            let ended = !in_progress(&db, run, &host2)?;
            Ok::<_, StateError>((events, ended))
        })
        .await;
        let (events, ended) = match polled {
            Ok(Ok(polled)) => polled,
            Ok(Err(e)) => {
                let data = serde_json::json!({ "error": e.to_string() });
                let _ = tx.send(Bytes::from(format!("event: error\ndata: {data}\n\n"))).await;
                return;
            }
            Err(_) => return,
        };
        let full = events.len() as u64 >= u64::from(BATCH);
        let sent = !events.is_empty();
        for stored in events {
            after = stored.id;
            let data = match &stored.event {
                Ok(event) => {
                    serde_json::json!({ "id": stored.id, "at": stored.at, "kind": stored.kind, "event": event })
                }
                Err(unreadable) => {
                    serde_json::json!({ "id": stored.id, "at": stored.at, "kind": stored.kind, "unreadable": unreadable })
                }
            };
            if tx.send(Bytes::from(format!("id: {}\ndata: {data}\n\n", stored.id))).await.is_err() {
                return;
            }
        }
        if full {
            continue;
        }
        if ended {
            let _ = tx.send(Bytes::from(format!("event: end\ndata: {{\"run\":{run}}}\n\n"))).await;
            return;
        }
        // A comment now and then: a client that has gone is noticed by the failed send.
        quiet = if sent { 0 } else { quiet + 1 };
        if quiet >= 15 {
            quiet = 0;
            if tx.send(Bytes::from_static(b": waiting\n\n")).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

fn with_type(mut response: Response<Body>, content_type: &'static str) -> Response<Body> {
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn html(status: StatusCode, page: String) -> Response<Body> {
    let mut r = with_type(Response::new(Body::Full(Some(Bytes::from(page)))), "text/html; charset=utf-8");
    *r.status_mut() = status;
    r
}

fn text(status: StatusCode, text: &str) -> Response<Body> {
    let mut r =
        with_type(Response::new(Body::Full(Some(Bytes::from(format!("{text}\n"))))), "text/plain; charset=utf-8");
    *r.status_mut() = status;
    r
}

fn redirect(to: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::Full(None));
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut().insert(header::LOCATION, HeaderValue::from_static(to));
    r
}

fn not_found() -> Response<Body> {
    html(StatusCode::NOT_FOUND, pages::message("not found", "nothing here; the runs are at /"))
}

fn state_error(e: &StateError) -> Response<Body> {
    match e {
        StateError::NoRun { .. } => html(StatusCode::NOT_FOUND, pages::message("no such run", &e.to_string())),
        _ => html(StatusCode::INTERNAL_SERVER_ERROR, pages::message("the state DB could not be read", &e.to_string())),
    }
}

/// `a=1&b=x%20y` as pairs, percent- and `+`-decoded (a form's GET).
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(&k.replace('+', " ")), percent_decode(&v.replace('+', " ")))
        })
        .collect()
}

/// `%XX` as its byte; anything not a valid escape is kept as written; invalid UTF-8 replaced.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The address the listener is bound to, for the gate and the operator: `bind` with the port
/// the system chose when it was 0.
pub(crate) fn bound(listener: &tokio::net::TcpListener, bind: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(bind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_decoded_as_forms_send_them() {
        assert_eq!(
            query_pairs("runbook=sprint-2&operator=a+b%20c&env=&x"),
            vec![
                ("runbook".into(), "sprint-2".into()),
                ("operator".into(), "a b c".into()),
                ("env".into(), "".into()),
                ("x".into(), "".into())
            ]
        );
        assert_eq!(percent_decode("%3Cscript%3E%zz%4"), "<script>%zz%4");
        assert_eq!(percent_decode("%C3%A9%FF"), "é\u{fffd}");
        assert_eq!(pages::encode(&percent_decode("a%2Fb")), "a%2Fb");
    }
}
