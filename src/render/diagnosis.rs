//! `runbook diagnose`'s text and JSON: a row per finding (check, verdict, value seen), its next
//! action below it, and a summary line; exit 1 when a check fails.

use crate::steps::{Finding, Verdict};

pub(super) fn exit_code(findings: &[Finding]) -> i32 {
    i32::from(findings.iter().any(|f| f.verdict == Verdict::Fail))
}

fn worst(findings: &[Finding]) -> Verdict {
    findings.iter().map(|f| f.verdict).max().unwrap_or(Verdict::Ok)
}

pub(super) fn render(env: &str, findings: &[Finding], elapsed_ms: u64, json: bool) -> String {
    if json {
        let doc = serde_json::json!({
            "env": env,
            "verdict": worst(findings),
            "elapsed_ms": elapsed_ms,
            "findings": findings,
        });
        return format!("{}\n", serde_json::to_string_pretty(&doc).unwrap_or_default());
    }
    let width = findings.iter().map(|f| f.check.chars().count()).max().unwrap_or(0).max("CHECK".len());
    let mut out = format!("{:<width$}  {:<7} VALUE SEEN / NEXT ACTION\n", "CHECK", "VERDICT");
    for f in findings {
        out.push_str(&format!("{:<width$}  {:<7} {}\n", f.check, f.verdict.as_str(), f.value));
        if f.verdict != Verdict::Ok && !f.next.is_empty() {
            out.push_str(&format!("{:<width$}  {:<7} next: {}\n", "", "", f.next));
        }
        for line in &f.details {
            out.push_str(&format!("{:<width$}  {:<7} | {line}\n", "", ""));
        }
    }
    let count = |v: Verdict| findings.iter().filter(|f| f.verdict == v).count();
    out.push_str(&format!(
        "{env}: {} ok, {} warn, {} fail of {} checks in {:.1} s; nothing was changed\n",
        count(Verdict::Ok),
        count(Verdict::Warn),
        count(Verdict::Fail),
        findings.len(),
        elapsed_ms as f64 / 1000.0
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_check_shows_its_next_action_and_sets_the_exit_code() {
        let findings = vec![
            Finding {
                check: "tasks".into(),
                verdict: Verdict::Ok,
                value: "1 running, 1 desired, 0 pending".into(),
                next: String::new(),
                details: vec![],
            },
            Finding {
                check: "dixie-health.redis".into(),
                verdict: Verdict::Fail,
                value: "unreachable".into(),
                next: "check REDIS_URL".into(),
                details: vec!["line".into()],
            },
        ];
        let text = render("local", &findings, 1234, false);
        assert_eq!(
            text,
            "CHECK               VERDICT VALUE SEEN / NEXT ACTION\n\
             tasks               ok      1 running, 1 desired, 0 pending\n\
             dixie-health.redis  fail    unreachable\n\
             \x20                           next: check REDIS_URL\n\
             \x20                           | line\n\
             local: 1 ok, 0 warn, 1 fail of 2 checks in 1.2 s; nothing was changed\n"
        );
        assert_eq!(exit_code(&findings), 1);
        assert_eq!(exit_code(&findings[..1]), 0);
        let json: serde_json::Value = serde_json::from_str(&render("local", &findings, 5, true)).unwrap();
        assert_eq!(
            (json["verdict"].as_str(), json["findings"][1]["next"].as_str()),
            (Some("fail"), Some("check REDIS_URL"))
        );
    }
}
