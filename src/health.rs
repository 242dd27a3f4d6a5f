//! Judging a service's health body. Dixie answers HTTP 200 even when unhealthy, so the verdict
//! comes from the body: used by the redeploy steps (T2.6, T2.7, later T3.3) and the
//! validation (T2.8). Pure: no I/O.

use serde::Deserialize;

/// How to read the service's health body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HealthRule {
    /// Dixie's `/api/health`: `status: healthy` and Finn's circuit `closed`.
    Dixie,
    /// Finn's `/health`: `status: healthy`.
    Finn,
}

/// The health verdict: ok, and one line that says why. A non-2xx answer is never healthy,
/// whatever its body says; for Dixie, every component it reports must be up too (a top-level
/// `healthy` beside an unhealthy PostgreSQL is not healthy).
pub(crate) fn judge(rule: HealthRule, http_status: u16, body: &serde_json::Value) -> (bool, String) {
    let status = body["status"].as_str().unwrap_or("missing");
    let http_ok = (200..300).contains(&http_status);
    // The HTTP status is named when it is not a success (Dixie answers 200 when unhealthy).
    let mut notes: Vec<String> = (!http_ok).then(|| format!("HTTP {http_status}")).into_iter().collect();
    notes.push(format!("status {status}"));
    let mut ok = http_ok && status == "healthy";
    if rule == HealthRule::Dixie {
        let circuit = body["services"]["loa_finn"]["circuit_state"].as_str().unwrap_or("missing");
        notes.push(format!("finn circuit {circuit}"));
        ok &= circuit.eq_ignore_ascii_case("closed");
        if let Some(infra) = body["infrastructure"].as_object() {
            for (name, component) in infra {
                let s = component["status"].as_str().unwrap_or("missing");
                // NATS says `connected` (001) or `healthy` (002, 003): both are up.
                if s != "healthy" && s != "connected" {
                    notes.push(format!("{name} {s}"));
                    ok = false;
                }
            }
        }
        if let Some(error) = body["services"]["loa_finn"]["error"].as_str() {
            notes.push(format!("finn error: {error}"));
        }
    }
    (ok, notes.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_200_with_an_unhealthy_body_is_not_healthy() {
        let body = serde_json::json!({"status": "unhealthy", "services": {"loa_finn": {"status": "unreachable", "circuit_state": "open", "error": "ECONNREFUSED"}},
            "infrastructure": {"postgresql": {"status": "healthy"}, "nats": {"status": "unreachable"}}});
        let (ok, why) = judge(HealthRule::Dixie, 200, &body);
        assert!(!ok);
        assert_eq!(why, "status unhealthy, finn circuit open, nats unreachable, finn error: ECONNREFUSED");
    }

    #[test]
    fn healthy_with_a_closed_circuit_is_healthy() {
        let healthy = serde_json::json!({"status": "healthy", "services": {"loa_finn": {"circuit_state": "closed"}}});
        assert_eq!(judge(HealthRule::Dixie, 200, &healthy), (true, "status healthy, finn circuit closed".to_string()));
        let upper = serde_json::json!({"status": "healthy", "services": {"loa_finn": {"circuit_state": "CLOSED"}}});
        assert!(judge(HealthRule::Dixie, 200, &upper).0, "circuit state compared in either case");
    }

    #[test]
    fn finn_is_judged_by_its_status_alone() {
        let degraded = judge(HealthRule::Finn, 200, &serde_json::json!({"status": "degraded"}));
        assert_eq!(degraded, (false, "status degraded".into()));
        assert!(judge(HealthRule::Finn, 200, &serde_json::json!({"status": "healthy"})).0);
        assert_eq!(judge(HealthRule::Finn, 200, &serde_json::json!({})).1, "status missing");
    }

    #[test]
    fn a_healthy_body_with_an_error_status_is_not_healthy() {
        let healthy = serde_json::json!({"status": "healthy", "services": {"loa_finn": {"circuit_state": "closed"}}});
        let verdict = judge(HealthRule::Dixie, 503, &healthy);
        assert_eq!(verdict, (false, "HTTP 503, status healthy, finn circuit closed".to_string()));
        assert!(!judge(HealthRule::Finn, 500, &serde_json::json!({"status": "healthy"})).0);
    }

    #[test]
    fn every_component_dixie_reports_must_be_up() {
        let body = serde_json::json!({"status": "healthy", "services": {"loa_finn": {"circuit_state": "closed"}},
            "infrastructure": {"postgresql": {"status": "unhealthy"}, "redis": {"status": "healthy"}, "nats": {"status": "disconnected"}}});
        let verdict = judge(HealthRule::Dixie, 200, &body);
        assert_eq!(
            verdict,
            (false, "status healthy, finn circuit closed, nats disconnected, postgresql unhealthy".into())
        );
        let up = serde_json::json!({"status": "healthy", "services": {"loa_finn": {"circuit_state": "closed"}},
            "infrastructure": {"postgresql": {"status": "healthy"}, "nats": {"status": "connected"}}});
        assert!(judge(HealthRule::Dixie, 200, &up).0);
    }
}
