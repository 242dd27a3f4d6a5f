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

/// The health verdict: ok, and one line that says why.
pub(crate) fn judge(rule: HealthRule, body: &serde_json::Value) -> (bool, String) {
    let status = body["status"].as_str().unwrap_or("missing");
    match rule {
        HealthRule::Finn => (status == "healthy", format!("status {status}")),
        HealthRule::Dixie => {
            let circuit = body["services"]["loa_finn"]["circuit_state"].as_str().unwrap_or("missing");
            let mut notes = vec![format!("status {status}"), format!("finn circuit {circuit}")];
            if let Some(infra) = body["infrastructure"].as_object() {
                for (name, component) in infra {
                    let s = component["status"].as_str().unwrap_or("missing");
                    if s != "healthy" && s != "connected" {
                        notes.push(format!("{name} {s}"));
                    }
                }
            }
            if let Some(error) = body["services"]["loa_finn"]["error"].as_str() {
                notes.push(format!("finn error: {error}"));
            }
            (status == "healthy" && circuit == "closed", notes.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_200_with_an_unhealthy_body_is_not_healthy() {
        let body = serde_json::json!({"status": "unhealthy", "services": {"loa_finn": {"status": "unreachable", "circuit_state": "open", "error": "ECONNREFUSED"}},
            "infrastructure": {"postgresql": {"status": "healthy"}, "nats": {"status": "unreachable"}}});
        let (ok, why) = judge(HealthRule::Dixie, &body);
        assert!(!ok);
        assert_eq!(why, "status unhealthy, finn circuit open, nats unreachable, finn error: ECONNREFUSED");
    }

    #[test]
    fn healthy_with_a_closed_circuit_is_healthy() {
        let healthy = serde_json::json!({"status": "healthy", "services": {"loa_finn": {"circuit_state": "closed"}}});
        assert_eq!(judge(HealthRule::Dixie, &healthy), (true, "status healthy, finn circuit closed".to_string()));
    }

    #[test]
    fn finn_is_judged_by_its_status_alone() {
        assert_eq!(
            judge(HealthRule::Finn, &serde_json::json!({"status": "degraded"})),
            (false, "status degraded".into())
        );
        assert!(judge(HealthRule::Finn, &serde_json::json!({"status": "healthy"})).0);
        assert_eq!(judge(HealthRule::Finn, &serde_json::json!({})).1, "status missing");
    }
}
