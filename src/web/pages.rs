//! The pages of `runbook serve` as HTML, from the views the commands show (`HistoryView`,
//! `StatusView`): every text an operator or a tool wrote is escaped here, its control
//! characters shown as the terminal shows them. No script, no inline style: the stylesheet is
//! `/style.css`. Pure: it must not read the state DB.

use std::fmt::Write;

use crate::clock::{format_duration, format_utc};
use crate::event::RunState;
use crate::history::{AuditView, HistoryView};
use crate::state::AttemptLine;
use crate::status::StatusView;

/// The stylesheet, embedded in the binary.
pub(crate) const STYLE: &str = include_str!("style.css");

/// Text as HTML may hold it, on one line: control characters escaped (`\u{1b}`, `\n`), then
/// `& < > " '` as entities. For every value of a cell or an attribute.
pub(crate) fn escape(text: &str) -> String {
    entities(&crate::text::one_line(text))
}

/// Text that keeps its lines (an error, a warning): control characters but newline and tab
/// escaped, then entities; shown in a `pre` or a cell that keeps white space.
pub(crate) fn escape_block(text: &str) -> String {
    entities(&crate::text::printable(text))
}

fn entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment or query value percent-encoded: everything but unreserved characters.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The script that keeps a live run's pages up to date (`/live.js`), embedded in the binary.
pub(crate) const LIVE_JS: &str = include_str!("live.js");

/// What a page follows while its run is in progress.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Live<'a> {
    /// Nothing: the run has ended, or the page is not a run's.
    No,
    /// The run's graph and steps table.
    Run(i64),
    /// One attempt's log lines.
    Log { run: i64, step: &'a str, attempt: i64 },
    /// Nothing to follow: the page is drawn again every so many seconds (the health page).
    Every(u64),
}

/// A whole page: `title` (escaped here) and its body. A live page loads `/live.js`, which
/// follows the run's events (the body's `data-` attributes say what); without scripts it
/// reloads itself every 5 s instead.
pub(crate) fn page(title: &str, body: &str, live: Live) -> String {
    let (head, attributes) = match live {
        Live::No => (String::new(), String::new()),
        Live::Run(run) => (LIVE_HEAD.to_string(), format!(" data-live=\"run\" data-run=\"{run}\"")),
        Live::Log { run, step, attempt } => (
            LIVE_HEAD.to_string(),
            format!(" data-live=\"log\" data-run=\"{run}\" data-step=\"{}\" data-attempt=\"{attempt}\"", escape(step)),
        ),
        Live::Every(seconds) => (format!("<meta http-equiv=\"refresh\" content=\"{seconds}\">"), String::new()),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{head}<title>{} · runbook</title>\
         <link rel=\"stylesheet\" href=\"/style.css\"></head><body{attributes}><nav><a href=\"/\">runs</a> \
         <a href=\"/health\">health</a></nav>\n{body}\n</body></html>\n",
        escape(title)
    )
}

const LIVE_HEAD: &str =
    "<noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript><script src=\"/live.js\" defer></script>";

/// An error page's body.
pub(crate) fn message(title: &str, text: &str) -> String {
    page(title, &format!("<h1>{}</h1><p class=\"message\">{}</p>", escape(title), escape_block(text)), Live::No)
}

/// The filters of the runs page, as asked.
#[derive(Debug, Default)]
pub(crate) struct RunsQuery {
    pub(crate) runbook: Option<String>,
    pub(crate) env: Option<String>,
    pub(crate) status: Option<RunState>,
    pub(crate) operator: Option<String>,
}

const STATUSES: &[RunState] = &[
    RunState::Running,
    RunState::Done,
    RunState::Failed,
    RunState::AwaitingApproval,
    RunState::Interrupted,
    RunState::Died,
];

/// `/`: the runs, newest first, with the filter form and the link to the next page.
pub(crate) fn runs(view: &HistoryView, asked: &RunsQuery) -> String {
    let field = |name: &str, value: &Option<String>| {
        format!(
            "<label>{name} <input name=\"{name}\" value=\"{}\"></label> ",
            escape(value.as_deref().unwrap_or_default())
        )
    };
    let mut body = String::from("<h1>Runs</h1><form method=\"get\" action=\"/\" class=\"filters\">");
    body.push_str(&field("runbook", &asked.runbook));
    body.push_str(&field("env", &asked.env));
    body.push_str(&field("operator", &asked.operator));
    body.push_str("<label>status <select name=\"status\"><option value=\"\">any</option>");
    for status in STATUSES {
        let selected = if asked.status == Some(*status) { " selected" } else { "" };
        let _ = write!(body, "<option value=\"{}\"{selected}>{}</option>", status.as_str(), status.label());
    }
    body.push_str("</select></label> <button type=\"submit\">filter</button></form>\n");
    if view.runs.is_empty() {
        body.push_str("<p>No runs match.</p>");
        return page("runs", &body, Live::No);
    }
    body.push_str(
        "<table class=\"runs\"><thead><tr><th>run</th><th>runbook</th><th>env</th><th>operator@host</th>\
         <th>started (UTC)</th><th>duration</th><th>status</th><th>failed step</th></tr></thead><tbody>\n",
    );
    for line in &view.runs {
        let duration = line.duration_ms.map(format_duration).unwrap_or_else(|| "-".into());
        let failed = match (&line.failed_step, &line.error) {
            (Some(step), _) if line.awaiting_approval => {
                format!("{} (to approve: {})", escape(step), escape(&crate::hint::resume_approving(line.run)))
            }
            (Some(step), Some(error)) => format!("{}: {}", escape(step), escape(error)),
            (Some(step), None) => escape(step),
            (None, _) if line.status == RunState::Died => {
                format!("its process died: {}", escape(&crate::hint::resume(line.run)))
            }
            (None, _) => String::new(),
        };
        let _ = writeln!(
            body,
            "<tr><td><a href=\"/runs/{run}\">{run}</a></td><td>{}</td><td>{}</td><td>{}@{}</td><td>{}</td>\
             <td class=\"num\">{duration}</td><td class=\"s-{}\">{}</td><td>{failed}</td></tr>",
            escape(&line.runbook),
            escape(&line.env),
            escape(&line.operator),
            escape(&line.host),
            format_utc(line.started_at),
            line.status.as_str(),
            line.status.label(),
            run = line.run,
        );
    }
    body.push_str("</tbody></table>\n");
    if let Some(before) = view.older_before {
        let mut link = format!("/?before={before}");
        for (name, value) in [("runbook", &asked.runbook), ("env", &asked.env), ("operator", &asked.operator)] {
            if let Some(value) = value {
                let _ = write!(link, "&amp;{name}={}", encode(value));
            }
        }
        if let Some(status) = asked.status {
            let _ = write!(link, "&amp;status={}", status.as_str());
        }
        let _ = write!(body, "<p><a href=\"{link}\">older runs</a></p>");
    }
    page("runs", &body, Live::No)
}

/// `/runs/N`: the run, its graph (`graph`: the SVG, or a sentence why there is none) and its
/// steps.
pub(crate) fn run(view: &StatusView, graph: &str, timeline: &[AttemptLine], audit: &AuditView) -> String {
    let run = &view.run;
    let mut body = format!(
        "<h1>Run {} · {} on {}</h1><p class=\"summary\"><span class=\"s-{}\">{}</span> · started {} by {}@{}{}</p>\
         <p>Next: <code>{}</code></p>",
        run.id,
        escape(&run.runbook),
        escape(&run.env),
        run.status.as_str(),
        run.status.label(),
        format_utc(run.started_at),
        escape(&run.operator),
        escape(&run.host),
        run.ended_at.map(|end| format!(" · took {}", format_duration(end - run.started_at))).unwrap_or_default(),
        escape(&view.next),
    );
    if let Some(lock) = &view.lock {
        let _ = write!(
            body,
            "<p>Held by pid {} on {}, heartbeat {} s ago.</p>",
            lock.pid,
            escape(&lock.host),
            lock.heartbeat_age_s
        );
    }
    let _ = write!(body, "<h2>Dependency graph</h2><div class=\"graph\">{graph}</div>");
    body.push_str(
        "<h2>Steps</h2><table class=\"steps\"><thead><tr><th>step</th><th>state</th><th>attempts</th>\
         <th>duration</th><th>warnings</th><th>last error</th><th>next</th></tr></thead><tbody>\n",
    );
    for step in &view.steps {
        let row = &step.row;
        let attempts: Vec<String> = (1..=row.attempts)
            .map(|a| format!("<a href=\"/runs/{}/steps/{}/attempts/{a}\">{a}</a>", run.id, encode(&row.step)))
            .collect();
        // A stop for an approval is recorded as a failed step whose error says so.
        let awaiting = row.last_error.as_deref().is_some_and(|e| e.starts_with("awaiting approval"));
        let label = if awaiting { "awaiting approval" } else { row.state.as_str() };
        let class = if awaiting { "awaiting_approval" } else { row.state.as_str() };
        let mut state = format!("<span class=\"state s-{class}\" data-step=\"{}\">{label}</span>", escape(&row.step));
        if row.in_doubt {
            state.push_str(" (in doubt)");
        }
        if let Some(wait) = &step.wait {
            let _ = write!(state, "<br>waiting {}", escape(&wait.says));
        }
        if let Some(gate) = &step.gate {
            let _ = write!(state, "<br>{}", escape(gate));
        }
        let warnings: Vec<String> = row.warnings.iter().map(|w| escape_block(w)).collect();
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td>{state}</td><td>{}</td><td class=\"num\">{}</td><td class=\"block\">{}</td>\
             <td class=\"block\">{}</td><td>{}</td></tr>",
            escape(&row.step),
            if attempts.is_empty() { "0".to_string() } else { attempts.join(" ") },
            row.duration_ms.map(format_duration).unwrap_or_else(|| "-".into()),
            warnings.join("<br>"),
            row.last_error.as_deref().map(escape_block).unwrap_or_default(),
            step.next.as_deref().map(|n| format!("<code>{}</code>", escape(n))).unwrap_or_default(),
        );
    }
    body.push_str("</tbody></table>\n");
    body.push_str(&attempts(run.id, timeline));
    body.push_str(&decisions(audit));
    let _ = write!(
        body,
        "<p>Live events of this run (server-sent events, JSON): <a href=\"/runs/{0}/events\">/runs/{0}/events</a></p>",
        run.id
    );
    let live = if run.status == RunState::Running { Live::Run(run.id) } else { Live::No };
    page(&format!("run {}", run.id), &body, live)
}

/// `/runs/N/steps/S/attempts/A`: one attempt's log. While the run is in progress the lines come
/// from its events (`/live.js`), so that the page never shows a line twice or misses one; the
/// text as recorded is at `…/log` and, without scripts, in the page.
pub(crate) fn attempt_log(run: i64, step: &str, attempt: i64, log: &str, live: bool) -> String {
    let text = format!("/runs/{run}/steps/{}/attempts/{attempt}/log", encode(step));
    let mut body = format!(
        "<h1>Run {run} · {} · attempt {attempt}</h1><p><a href=\"/runs/{run}\">the run</a> · \
         <a href=\"{text}\">as text</a></p>",
        escape(step)
    );
    let lines = escape_block(log);
    let title = format!("run {run} {step} attempt {attempt}");
    if !live {
        let _ = write!(body, "<pre id=\"log\" class=\"log\">{lines}</pre>");
        return page(&title, &body, Live::No);
    }
    let _ = write!(
        body,
        "<p class=\"following\">Following the run live.</p><pre id=\"log\" class=\"log\"></pre>\
         <noscript><pre class=\"log\">{lines}</pre></noscript>"
    );
    page(&title, &body, Live::Log { run, step, attempt })
}

/// Every attempt of the run in the order they started, each linked to its log.
fn attempts(run: i64, timeline: &[AttemptLine]) -> String {
    if timeline.is_empty() {
        return "<h2>Attempts</h2><p>No step has started.</p>".into();
    }
    let mut out = String::from(
        "<h2>Attempts</h2><table class=\"attempts\"><thead><tr><th>started (UTC)</th><th>step</th><th>attempt</th>\
         <th>action</th><th>outcome</th><th>duration</th><th>error</th></tr></thead><tbody>\n",
    );
    for a in timeline {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td><a href=\"/runs/{run}/steps/{}/attempts/{n}\">{n}</a></td><td>{}</td>\
             <td>{}</td><td class=\"num\">{}</td><td class=\"block\">{}</td></tr>",
            format_utc(a.started_at),
            escape(&a.step),
            encode(&a.step),
            escape(a.action.as_deref().unwrap_or("-")),
            escape(a.outcome.as_deref().unwrap_or("(none recorded)")),
            a.duration_ms.map(format_duration).unwrap_or_else(|| "-".into()),
            a.error.as_deref().map(escape_block).unwrap_or_default(),
            n = a.attempt,
        );
    }
    out.push_str("</tbody></table>\n");
    out
}

/// The operators' decisions in the run (`runbook audit N`).
fn decisions(audit: &AuditView) -> String {
    if audit.decisions.is_empty() {
        return "<h2>Decisions</h2><p>None: every change ran as planned, nothing was skipped, retried or unlocked.</p>"
            .into();
    }
    let mut out = String::from(
        "<h2>Decisions</h2><table class=\"audit\"><thead><tr><th>time (UTC)</th><th>operator@host</th>\
         <th>decision</th></tr></thead><tbody>\n",
    );
    for d in &audit.decisions {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}@{}</td><td class=\"block\">{}</td></tr>",
            format_utc(d.at),
            escape(&d.operator),
            escape(&d.host),
            escape_block(&d.decision)
        );
    }
    out.push_str("</tbody></table>\n");
    out
}

/// `/health`: the latest poll of `watch` and the latest `diagnose` of the environment that
/// `serve --env` watches; drawn again at each poll.
pub(crate) fn health(seen: &crate::web::health::Seen) -> String {
    let mut body = format!("<h1>health of {}</h1>\n<h2>watch</h2>\n", escape(&seen.env));
    match &seen.poll {
        None => body.push_str("<p>the first poll has not answered yet</p>\n"),
        Some(poll) => body.push_str(&watch_poll(poll, seen.poll_every)),
    }
    body.push_str("<h2>diagnose</h2>\n");
    match &seen.diagnosis {
        None => body.push_str("<p>the first diagnose is running (it takes a few seconds)</p>\n"),
        Some(d) => {
            let _ = write!(body, "<p>at {} UTC, every {} s: ", escape(&format_utc(d.at)), seen.diagnose_every);
            match &d.outcome {
                Err(why) => {
                    let _ = write!(
                        body,
                        "<span class=\"v-fail\">could not run</span></p>\n<p class=\"message\">{}</p>\n",
                        escape_block(why)
                    );
                }
                Ok((findings, ms)) => body.push_str(&diagnosis(findings, *ms)),
            }
        }
    }
    page(&format!("health of {}", seen.env), &body, Live::Every(seen.poll_every.max(1)))
}

/// One poll: its verdict, each thing it judged, and the reasons it is not healthy.
fn watch_poll(poll: &crate::watch::Poll, every: u64) -> String {
    let verdict = poll.verdict.as_str();
    let mut out = format!(
        "<p>polled at {} UTC, every {every} s: <span class=\"v-{verdict}\">{verdict}</span></p>\n\
         <table class=\"health\"><tr><th>dixie</th><td>{}</td></tr>\n",
        escape(&format_utc(poll.at)),
        escape(&poll.dixie)
    );
    for (name, status) in &poll.components {
        let _ = writeln!(out, "<tr><th>{}</th><td>{}</td></tr>", escape(name), escape(status));
    }
    let latency = poll.finn_latency_ms.map(|ms| format!("{ms} ms")).unwrap_or_else(|| "not reported".into());
    let circuit = poll.finn_circuit.as_deref().unwrap_or("not reported");
    let _ = write!(
        out,
        "<tr><th>finn latency</th><td>{}</td></tr>\n<tr><th>finn circuit</th><td>{}</td></tr>\n\
         <tr><th>finn /health</th><td>{}</td></tr></table>\n",
        escape(&latency),
        escape(circuit),
        escape(&poll.finn)
    );
    if !poll.reasons.is_empty() {
        out.push_str("<ul class=\"reasons\">");
        for reason in &poll.reasons {
            let _ = write!(out, "<li>{}</li>", escape(reason));
        }
        out.push_str("</ul>\n");
    }
    out
}

/// A diagnosis: how many checks failed or warned, then one row a check, as `diagnose` prints it.
fn diagnosis(findings: &[crate::steps::Finding], ms: u64) -> String {
    use crate::steps::Verdict;
    let count = |v: Verdict| findings.iter().filter(|f| f.verdict == v).count();
    let worst = findings.iter().map(|f| f.verdict).max().unwrap_or(Verdict::Ok).as_str();
    let mut out = format!(
        "<span class=\"v-{worst}\">{} checks, {} fail, {} warn</span>, in {ms} ms</p>\n\
         <table class=\"findings\"><tr><th>check</th><th>verdict</th><th>value</th><th>next action</th></tr>\n",
        findings.len(),
        count(Verdict::Fail),
        count(Verdict::Warn)
    );
    for f in findings {
        let mut value = escape_block(&f.value);
        for line in &f.details {
            value.push('\n');
            value.push_str(&escape_block(line));
        }
        let verdict = f.verdict.as_str();
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"v-{verdict}\">{verdict}</td><td class=\"block\">{value}</td><td>{}</td></tr>",
            escape(&f.check),
            escape(&f.next)
        );
    }
    out.push_str("</table>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_control_characters_are_escaped() {
        assert_eq!(escape("<script>alert('x')</script>"), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;");
        assert_eq!(escape("a \"b\" & c"), "a &quot;b&quot; &amp; c");
        assert_eq!(escape("host\u{1b}[2J\nnext\tcol"), "host\\u{1b}[2J\\nnext\\tcol");
        assert_eq!(escape("rtl\u{202e}txt"), "rtl\\u{202e}txt");
        assert_eq!(escape_block("line 1\n<b>line 2</b>\u{7}"), "line 1\n&lt;b&gt;line 2&lt;/b&gt;\\u{7}");
        assert_eq!(escape(""), "");
        assert_eq!(escape("plain T2.1 ✓"), "plain T2.1 ✓");
    }

    #[test]
    fn encoding_keeps_only_unreserved_characters() {
        assert_eq!(encode("T2.1"), "T2.1");
        assert_eq!(encode("a b&c=d/e?\"<"), "a%20b%26c%3Dd%2Fe%3F%22%3C");
        assert_eq!(encode("é"), "%C3%A9");
    }

    fn line(run: i64, status: RunState) -> crate::history::HistoryLine {
        crate::history::HistoryLine {
            run,
            runbook: "sprint-2".into(),
            env: "local".into(),
            operator: "ana".into(),
            host: "laptop".into(),
            started_at: 1_764_000_000_000 + run * 3_600_000,
            started: String::new(),
            duration_ms: Some(184_000),
            status,
            failed_step: None,
            error: None,
            awaiting_approval: false,
        }
    }

    /// The runs page as a reviewer reads it: a failed run, an approval stop, a died run, a
    /// hostile operator, the filters kept in the form and in the link to older runs.
    #[test]
    fn the_runs_page_lists_each_run_with_what_stopped_it_and_keeps_the_filters() {
        let mut failed = line(11, RunState::Failed);
        failed.failed_step = Some("T2.5".into());
        failed.error = Some("REDIS_URL: connect 127.0.0.1:6380: <refused>".into());
        let mut approval = line(12, RunState::AwaitingApproval);
        approval.failed_step = Some("T2.4".into());
        approval.error = Some("awaiting approval: Plan: 35 to add".into());
        approval.awaiting_approval = true;
        let mut died = line(13, RunState::Died);
        died.duration_ms = None;
        died.operator = "<script>alert(1)</script>".into();
        died.host = "box\u{1b}[2J".into();
        let view = HistoryView {
            runbook: Some("sprint-2".into()),
            env: None,
            status: None,
            operator: Some("a b&c".into()),
            limit: 3,
            older_before: Some(11),
            runs: vec![died, approval, failed],
        };
        let asked = RunsQuery {
            runbook: Some("sprint-2".into()),
            operator: Some("a b&c".into()),
            status: Some(RunState::Failed),
            ..RunsQuery::default()
        };
        insta::assert_snapshot!(runs(&view, &asked));
    }

    #[test]
    fn a_page_has_no_script_unless_its_run_is_live_and_no_inline_style() {
        let html = page("t<i>", "<p>x</p>", Live::No);
        assert!(html.contains("<title>t&lt;i&gt; · runbook</title>"), "{html}");
        assert!(!html.contains("<script") && !html.contains("style=") && !html.contains("<style"), "{html}");
        assert!(!html.contains("refresh"));
        let live = page("t", "", Live::Run(7));
        assert!(live.contains("<noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript>"), "{live}");
        assert!(live.contains("<script src=\"/live.js\" defer></script>") && live.contains("data-run=\"7\""));
        let log = page("t", "", Live::Log { run: 7, step: "T\"2.4", attempt: 2 });
        assert!(log.contains("data-live=\"log\" data-run=\"7\" data-step=\"T&quot;2.4\" data-attempt=\"2\""), "{log}");
    }
}
