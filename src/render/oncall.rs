//! The on-call commands' text: `history`'s table of runs, `audit`'s table of decisions, and
//! `watch`'s lines (a poll, its transitions), printed as they come by the sink that `main.rs`
//! hands the command. Their JSON is the views themselves (`history.rs`, `watch.rs`).

use std::io::Write;

use crate::clock::{format_duration, format_utc};
use crate::event::RunState;
use crate::history::{AuditView, HistoryView};
use crate::watch::{Poll, Sink, Transition};

pub(crate) fn history_table(view: &HistoryView) -> String {
    if view.runs.is_empty() {
        let of = view.runbook.as_deref().map(|r| format!(" of {r}")).unwrap_or_default();
        let on = view.env.as_deref().map(|e| format!(" on {e}")).unwrap_or_default();
        let by = view.operator.as_deref().map(|o| format!(" by {}", super::one_line(o))).unwrap_or_default();
        let status = view.status.map(|s| format!(" {}", s.label())).unwrap_or_default();
        return format!("no{status} runs{of}{on}{by} in this state DB; `runbook run <runbook>` starts one\n");
    }
    let who: Vec<String> = view.runs.iter().map(|r| super::one_line(&format!("{}@{}", r.operator, r.host))).collect();
    let width = |header: &str, cells: &mut dyn Iterator<Item = usize>| cells.max().unwrap_or(0).max(header.len());
    let status: Vec<&str> = view.runs.iter().map(|r| r.status.label()).collect();
    let (runbook_w, env_w, who_w, status_w) = (
        width("RUNBOOK", &mut view.runs.iter().map(|r| r.runbook.len())),
        width("ENV", &mut view.runs.iter().map(|r| r.env.len())),
        width("OPERATOR@HOST", &mut who.iter().map(String::len)),
        width("STATUS", &mut status.iter().map(|s| s.len())),
    );
    let mut out = format!(
        "{:>5}  {:<runbook_w$}  {:<env_w$}  {:<who_w$}  {:<20}  {:>8}  {:<status_w$}  FAILED STEP\n",
        "RUN", "RUNBOOK", "ENV", "OPERATOR@HOST", "STARTED (UTC)", "DURATION", "STATUS"
    );
    for ((line, who), status) in view.runs.iter().zip(&who).zip(&status) {
        let duration = line.duration_ms.map(format_duration).unwrap_or_else(|| "-".into());
        let failed = match (&line.failed_step, line.awaiting_approval) {
            (Some(step), true) => format!("{step} (to approve: {})", crate::hint::resume_approving(line.run)),
            (Some(step), false) => match &line.error {
                Some(error) => super::first_line(&format!("{step}: {error}")),
                None => step.clone(),
            },
            (None, _) if line.status == RunState::Died => {
                format!("its process died: {}", crate::hint::resume(line.run))
            }
            (None, _) => String::new(),
        };
        out.push_str(
            format!(
                "{:>5}  {:<runbook_w$}  {:<env_w$}  {who:<who_w$}  {:<20}  {duration:>8}  {status:<status_w$}  {failed}",
                line.run,
                line.runbook,
                line.env,
                format_utc(line.started_at),
            )
            .trim_end(),
        );
        out.push('\n');
    }
    if let Some(before) = view.older_before {
        out.push_str(&format!("older runs: {}\n", older_runs(view, before)));
    }
    out
}

/// The command that lists the page after this one: the same filters, below `before`.
fn older_runs(view: &HistoryView, before: i64) -> String {
    let quoted = |text: &str| {
        let plain = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@:/".contains(c));
        if plain { text.to_string() } else { format!("'{}'", super::one_line(text).replace('\'', r"'\''")) }
    };
    let mut command = format!("runbook history --before {before}");
    for (flag, value) in [("runbook", &view.runbook), ("env", &view.env), ("operator", &view.operator)] {
        if let Some(value) = value {
            command.push_str(&format!(" --{flag} {}", quoted(value)));
        }
    }
    if let Some(status) = view.status {
        command.push_str(&format!(" --status {status}"));
    }
    if view.limit != crate::history::DEFAULT_LIMIT {
        command.push_str(&format!(" --limit {}", view.limit));
    }
    command
}

pub(crate) fn audit_table(view: &AuditView) -> String {
    let mut out = match &view.run {
        Some(run) => format!(
            "audit of run {}: {} on {} (started {} by {}@{})\n",
            run.id,
            run.runbook,
            run.env,
            format_utc(run.started_at),
            super::one_line(&run.operator),
            super::one_line(&run.host)
        ),
        None => "audit of every run in this state DB\n".to_string(),
    };
    if view.decisions.is_empty() {
        out.push_str(
            "no operator decisions recorded: every change ran as planned, nothing was skipped, retried or unlocked\n",
        );
        return out;
    }
    let who: Vec<String> =
        view.decisions.iter().map(|d| super::one_line(&format!("{}@{}", d.operator, d.host))).collect();
    let who_w = who.iter().map(String::len).max().unwrap_or(0).max("OPERATOR@HOST".len());
    out.push_str(&format!("{:>5}  {:<20}  {:<who_w$}  DECISION\n", "RUN", "TIME (UTC)", "OPERATOR@HOST"));
    for (d, who) in view.decisions.iter().zip(&who) {
        let run = d.run.map(|r| r.to_string()).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{run:>5}  {:<20}  {who:<who_w$}  {}\n",
            format_utc(d.at),
            super::one_line(&super::first_line(&d.decision))
        ));
        // An approval's change, resource by resource, under its decision.
        for line in d.decision.lines().skip(1) {
            out.push_str(&format!("{:indent$}{line}\n", "", indent = 5 + 2 + 20 + 2 + who_w + 2));
        }
    }
    out
}

/// `watch`'s live output, the sink that `main.rs` hands the command: each poll and its
/// transitions as lines (or NDJSON) on `out` as they come, a webhook that failed on `err`.
pub(crate) struct WatchPrinter<W, E> {
    pub(crate) out: W,
    pub(crate) err: E,
    pub(crate) json: bool,
}

impl<W: Write, E: Write> Sink for WatchPrinter<W, E> {
    fn seen(&mut self, poll: &Poll, transitions: &[Transition]) {
        let text = watch_lines(poll, transitions, self.json);
        let _ = self.out.write_all(super::printable(&text).as_bytes());
        let _ = self.out.flush();
    }

    fn notify_failed(&mut self, error: &str) {
        let _ = writeln!(self.err, "notification failed: {error}");
        let _ = self.err.flush();
    }
}

/// One poll as a line, then a line per transition; or, with `json`, one object each.
fn watch_lines(poll: &Poll, transitions: &[Transition], json: bool) -> String {
    if json {
        let mut out = format!("{}\n", serde_json::json!({ "type": "poll", "poll": poll }));
        for t in transitions {
            out.push_str(&format!(
                "{}\n",
                serde_json::json!({ "type": "transition", "at": poll.at, "time": poll.time, "transition": t })
            ));
        }
        return out;
    }
    let mut line = format!("{}  {:<9}  dixie {}", format_utc(poll.at), poll.verdict.as_str(), poll.dixie);
    for (name, status) in &poll.components {
        line.push_str(&format!("  {name} {status}"));
    }
    let latency = poll.finn_latency_ms.map(|ms| format!("{ms} ms")).unwrap_or_else(|| "? ms".into());
    let circuit = poll.finn_circuit.as_deref().unwrap_or("?");
    line.push_str(&format!("  finn {latency} circuit {circuit}  finn /health {}", poll.finn));
    if !poll.reasons.is_empty() {
        line.push_str(&format!("  — {}", poll.reasons.join("; ")));
    }
    let mut out = format!("{line}\n");
    for t in transitions {
        out.push_str(&format!("{}  EVENT      {}\n", format_utc(poll.at), t.what));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{AuditedRun, Decision, HistoryLine};

    const T0: i64 = 1_795_644_293_000;

    fn line(run: i64, status: RunState) -> HistoryLine {
        HistoryLine {
            run,
            runbook: "sprint-2".into(),
            env: "local".into(),
            operator: "ana".into(),
            host: "laptop".into(),
            started_at: T0 + run * 3_600_000,
            started: String::new(),
            duration_ms: Some(184_000),
            status,
            failed_step: None,
            error: None,
            awaiting_approval: false,
        }
    }

    #[test]
    fn history_lists_one_line_a_run_with_what_failed() {
        let mut failed = line(11, RunState::Failed);
        failed.failed_step = Some("T2.5".into());
        failed.error = Some("REDIS_URL: connect 127.0.0.1:6380: Connection refused".into());
        let mut approval = line(12, RunState::AwaitingApproval);
        approval.env = "armitage".into();
        approval.operator = "oncall-bo".into();
        approval.failed_step = Some("T2.4".into());
        approval.error = Some("awaiting approval: Plan: 35 to add, 0 to change, 0 to destroy".into());
        approval.awaiting_approval = true;
        let mut died = line(13, RunState::Died);
        died.duration_ms = None;
        let mut running = line(14, RunState::Running);
        running.runbook = "rollback".into();
        running.duration_ms = None;
        let view = HistoryView {
            runbook: None,
            env: None,
            status: None,
            operator: None,
            limit: 5,
            older_before: Some(10),
            runs: vec![running, died, approval, failed, line(10, RunState::Done)],
        };
        insta::assert_snapshot!(history_table(&view));
    }

    #[test]
    fn an_empty_history_says_what_was_asked_and_how_to_start() {
        let view = HistoryView {
            runbook: Some("sprint-3".into()),
            env: Some("armitage".into()),
            status: Some(RunState::Failed),
            operator: Some("bo".into()),
            runs: Vec::new(),
            limit: 20,
            older_before: None,
        };
        assert_eq!(
            history_table(&view),
            "no failed runs of sprint-3 on armitage by bo in this state DB; `runbook run <runbook>` starts one\n"
        );
    }

    #[test]
    fn a_failed_notification_is_said_once_and_changes_no_exit_code() {
        for (status, code) in [(RunState::Done, 0), (RunState::Failed, 1), (RunState::AwaitingApproval, 5)] {
            let run = crate::commands::Outcome::Run {
                run: 3,
                status,
                view: None,
                write_error: None,
                notify_error: Some("POST to the webhook: connection refused (tried 3 times)".into()),
            };
            let r = super::super::outcome(&run, false);
            assert_eq!(r.code, code);
            let said = "notification failed: POST to the webhook: connection refused (tried 3 times)\n";
            assert!(r.stderr.ends_with(said) && r.stderr.matches(said).count() == 1, "{}", r.stderr);
        }
    }

    /// Four polls as `watch` hands them on: a line a poll, an EVENT line a transition; in JSON
    /// an object each; a failed webhook in a line on stderr.
    #[test]
    fn watch_prints_a_line_a_poll_and_an_event_line_a_transition() {
        use crate::watch::{Answer, Sink, assess, transitions};
        let dixie = |redis: &str| {
            let body = serde_json::json!({
                "status": if redis == "healthy" { "healthy" } else { "degraded" },
                "services": {"loa_finn": {"latency_ms": 9, "circuit_state": "closed"}},
                "infrastructure": {"postgresql": {"status": "healthy"}, "redis": {"status": redis}, "nats": {"status": "connected"}}
            });
            Answer::Json(200, body)
        };
        let finn = || Answer::Json(200, serde_json::json!({"status": "healthy"}));
        let polls: Vec<Poll> = ["healthy", "unreachable", "unreachable", "healthy"]
            .iter()
            .enumerate()
            .map(|(i, redis)| assess(T0 + i as i64 * 30_000, dixie(redis), finn()))
            .collect();
        let stream = |json: bool| {
            let mut printer = WatchPrinter { out: Vec::new(), err: Vec::new(), json };
            for (i, poll) in polls.iter().enumerate() {
                let changes = if i == 0 { Vec::new() } else { transitions(&polls[i - 1], poll) };
                printer.seen(poll, &changes);
            }
            assert!(printer.err.is_empty());
            String::from_utf8(printer.out).unwrap()
        };
        let text = stream(false);
        let at = |i: i64| format_utc(T0 + i * 30_000);
        let lines: Vec<&str> = text.lines().collect();
        let redis_down = "degraded   dixie degraded  nats connected  postgresql healthy  redis unreachable  finn 9 ms circuit \
                          closed  finn /health healthy  — dixie: status degraded, finn circuit closed, redis unreachable";
        let healthy = "healthy    dixie healthy  nats connected  postgresql healthy  redis healthy  finn 9 ms circuit closed  \
                       finn /health healthy";
        assert_eq!(
            lines,
            [
                format!("{}  {healthy}", at(0)),
                format!("{}  {redis_down}", at(1)),
                format!("{}  EVENT      dixie healthy → degraded", at(1)),
                format!("{}  EVENT      redis healthy → unreachable", at(1)),
                format!("{}  {redis_down}", at(2)),
                format!("{}  {healthy}", at(3)),
                format!("{}  EVENT      dixie degraded → healthy", at(3)),
                format!("{}  EVENT      redis unreachable → healthy", at(3)),
            ]
        );
        let kinds: Vec<String> = stream(true)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["type"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(kinds, ["poll", "poll", "transition", "transition", "poll", "poll", "transition", "transition"]);

        let mut printer = WatchPrinter { out: Vec::new(), err: Vec::new(), json: false };
        printer.notify_failed("POST to the webhook: connection refused (tried 3 times)");
        assert_eq!(
            String::from_utf8(printer.err).unwrap(),
            "notification failed: POST to the webhook: connection refused (tried 3 times)\n"
        );
        assert!(printer.out.is_empty());
    }

    /// A component name holding ESC, as a health body may, stays escaped on its line.
    #[test]
    fn watch_escapes_what_a_health_body_says() {
        use crate::watch::{Answer, Sink, assess};
        let body =
            serde_json::json!({"status": "healthy", "infrastructure": {"re\u{1b}[2Jdis": {"status": "ok\u{1b}[31m"}}});
        let poll = assess(T0, Answer::Json(200, body), Answer::Unreachable("refused".into()));
        let mut printer = WatchPrinter { out: Vec::new(), err: Vec::new(), json: false };
        printer.seen(&poll, &[]);
        let out = String::from_utf8(printer.out).unwrap();
        assert!(!out.contains('\u{1b}') && out.contains("re\\u{1b}[2Jdis ok\\u{1b}[31m"), "{out:?}");
    }

    fn decision(at: i64, operator: &str, host: &str, decision: &str) -> Decision {
        Decision {
            run: Some(7),
            at,
            time: String::new(),
            kind: String::new(),
            step: None,
            operator: operator.into(),
            host: host.into(),
            decision: decision.into(),
            detail: serde_json::Value::Null,
        }
    }

    #[test]
    fn audit_lists_each_decision_with_time_operator_and_host() {
        let mut unowned = decision(T0 + 900_000, "bo", "?", "broke the run lock held by process 4242 on ci-7");
        unowned.run = None;
        let view = AuditView {
            run: Some(AuditedRun {
                id: 7,
                runbook: "sprint-2".into(),
                env: "local".into(),
                operator: "ana".into(),
                host: "laptop".into(),
                started_at: T0,
            }),
            decisions: vec![
                decision(
                    T0 + 60_000,
                    "ana",
                    "laptop",
                    "approved T2.4 via --yes: Plan: 35 to add, 0 to change, 0 to destroy.\n  create   \
                     aws_lb.dixie\n  create   aws_ecs_service.dixie",
                ),
                decision(T0 + 300_000, "ana", "laptop", "reset T2.5 to run again (runbook retry T2.5)"),
                decision(T0 + 600_000, "oncall-bo", "bastion-2", "skipped T2.7: Finn is redeployed by its own team"),
                decision(T0 + 700_000, "oncall-bo", "bastion-2", "released terraform's state lock 5f1c-… of T2.4"),
                unowned,
            ],
        };
        insta::assert_snapshot!(audit_table(&view));
        let quiet = AuditView { decisions: Vec::new(), ..view };
        assert!(audit_table(&quiet).ends_with(
            "no operator decisions recorded: every change ran as planned, nothing was skipped, retried or unlocked\n"
        ));
    }

    /// A RUNBOOK_HOST holding ESC and a newline, and a skip reason with a screen-clearing
    /// sequence, stay escaped on their line.
    #[test]
    fn audit_escapes_what_operators_wrote() {
        let view = AuditView {
            run: None,
            decisions: vec![decision(T0, "ana", "lap\u{1b}[2Jtop\nFAKE 1", "skipped T2.7: ok\u{1b}[2J\u{1b}[31mFAKE")],
        };
        let table = audit_table(&view);
        assert!(!table.contains('\u{1b}'), "{table:?}");
        assert_eq!(table.lines().count(), 3, "{table}");
        assert!(table.contains("ana@lap\\u{1b}[2Jtop\\nFAKE 1"), "{table}");
        assert!(table.ends_with("skipped T2.7: ok\\u{1b}[2J\\u{1b}[31mFAKE\n"), "{table}");
    }
}
