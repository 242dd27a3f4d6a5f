//! Judging a service's health body. Dixie answers HTTP 200 even when unhealthy, so the verdict
//! comes from the body: used by the redeploy steps (T2.6, T2.7, later T3.3) and the
//! validation (T2.8). Pure: no I/O.

use std::collections::BTreeMap;

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

/// What a step accepts of a service's health: its rule, and the components it may do without,
/// each with why (sprint 2 tolerates NATS: 002 calls it expected in staging until sprint 3's
/// T3.1 adds the security-group rule). Written `health = "dixie"` (nothing tolerated) or
/// `health = { rule = "dixie", tolerate = { nats = "sprint-3 T3.1 adds the rule" } }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealthPolicy {
    pub(crate) rule: HealthRule,
    pub(crate) tolerate: BTreeMap<String, String>,
    /// Dixie's governance must report `healthy` too (sprint 3: it needs NATS).
    pub(crate) governance: bool,
    /// Finn's latency as Dixie sees it: the median of `latency_samples` bodies a second apart
    /// must be under this (sprint 3: 50 ms).
    pub(crate) finn_latency_ms: Option<u64>,
    pub(crate) latency_samples: u32,
}

/// The table form, read on its own so that its errors name the field (an untagged enum would
/// only say that nothing matched).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyTable {
    rule: HealthRule,
    #[serde(default)]
    tolerate: BTreeMap<String, String>,
    #[serde(default)]
    governance: bool,
    #[serde(default)]
    finn_latency_ms: Option<u64>,
    #[serde(default = "five")]
    latency_samples: u32,
}

impl<'de> Deserialize<'de> for HealthPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match toml::Value::deserialize(d)? {
            toml::Value::String(rule) => HealthRule::deserialize(toml::Value::String(rule))
                .map(HealthPolicy::strict)
                .map_err(|e| D::Error::custom(e.to_string().trim())),
            table @ toml::Value::Table(_) => {
                let t = PolicyTable::deserialize(table).map_err(|e| D::Error::custom(e.to_string().trim()))?;
                Ok(HealthPolicy {
                    rule: t.rule,
                    tolerate: t.tolerate,
                    governance: t.governance,
                    finn_latency_ms: t.finn_latency_ms,
                    latency_samples: t.latency_samples,
                })
            }
            other => Err(D::Error::custom(format!(
                "expected a rule (\"dixie\" or \"finn\") or a table {{ rule, tolerate, governance, finn_latency_ms }}, got {}",
                other.type_str()
            ))),
        }
    }
}

fn five() -> u32 {
    5
}

impl HealthPolicy {
    pub(crate) fn strict(rule: HealthRule) -> Self {
        HealthPolicy { rule, tolerate: BTreeMap::new(), governance: false, finn_latency_ms: None, latency_samples: 5 }
    }

    /// Only components Dixie reports can be tolerated, and only under the Dixie rule.
    pub(crate) fn check(&self) -> Result<(), String> {
        let dixie_only = !self.tolerate.is_empty() || self.governance || self.finn_latency_ms.is_some();
        if self.rule != HealthRule::Dixie && dixie_only {
            return Err(
                "health: tolerate, governance and finn_latency_ms read Dixie's body: use rule = \"dixie\"".into()
            );
        }
        if self.finn_latency_ms.is_some() && !(1..=60).contains(&self.latency_samples) {
            return Err(format!("health.latency_samples = {}: take 1 to 60 samples", self.latency_samples));
        }
        match self.tolerate.keys().find(|k| !COMPONENTS.contains(&k.as_str())) {
            Some(k) => {
                Err(format!("health.tolerate: unknown component `{k}`; Dixie reports {}", COMPONENTS.join(", ")))
            }
            None => Ok(()),
        }
    }
}

/// The infrastructure components Dixie's health body reports.
const COMPONENTS: [&str; 3] = ["postgresql", "redis", "nats"];

/// A health verdict: ok, one line that says why, and what the policy tolerated.
#[derive(Debug, PartialEq)]
pub(crate) struct Verdict {
    pub(crate) ok: bool,
    pub(crate) summary: String,
    pub(crate) warnings: Vec<String>,
}

/// A string field of the body: its value, or how it fails to be one (`missing`, `number 3`),
/// which is never a value a rule accepts.
fn text(value: &serde_json::Value) -> Result<&str, String> {
    match value {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Null => Err("missing".into()),
        other => Err(found(other)),
    }
}

/// What a field of the wrong type holds, for a message: `a number (12)`, `a string ("12")`.
pub(crate) fn found(value: &serde_json::Value) -> String {
    let kind = match value {
        serde_json::Value::Null => return "null".into(),
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    };
    let shown: String = value.to_string().chars().take(40).collect();
    format!("{kind} ({shown})")
}

/// The health verdict. A non-2xx answer is never healthy, whatever its body says. For Dixie,
/// every component the rule requires (postgresql, redis, nats) must be reported and up: a
/// component the body does not report is missing evidence and fails, naming it (a top-level
/// `healthy` beside an unhealthy or absent PostgreSQL is not healthy); only the policy's
/// `tolerate` turns a component that is down or absent into a warning. A field of the wrong
/// type is never up.
pub(crate) fn judge(policy: &HealthPolicy, http_status: u16, body: &serde_json::Value) -> Verdict {
    let status = text(&body["status"]).map(str::to_string).unwrap_or_else(|e| e);
    let http_ok = (200..300).contains(&http_status);
    // The HTTP status is named when it is not a success (Dixie answers 200 when unhealthy).
    let mut notes: Vec<String> = (!http_ok).then(|| format!("HTTP {http_status}")).into_iter().collect();
    notes.push(format!("status {status}"));
    let mut ok = http_ok;
    let mut warnings = Vec::new();
    if policy.rule == HealthRule::Dixie {
        let circuit = text(&body["services"]["loa_finn"]["circuit_state"]).map(str::to_string).unwrap_or_else(|e| e);
        notes.push(format!("finn circuit {circuit}"));
        ok &= circuit.eq_ignore_ascii_case("closed");
        let failing_untolerated = judge_components(policy, body, &mut notes, &mut warnings);
        let degraded_by_tolerated = status == "degraded" && !warnings.is_empty() && !failing_untolerated;
        ok &= !failing_untolerated && (status == "healthy" || degraded_by_tolerated);
        if let Some(error) = body["services"]["loa_finn"]["error"].as_str() {
            notes.push(format!("finn error: {error}"));
        }
    } else {
        ok &= status == "healthy";
    }
    Verdict { ok, summary: notes.join(", "), warnings: if ok { warnings } else { Vec::new() } }
}

/// Dixie's infrastructure and, when the policy asks, its governance: a note for each that is
/// not up, a warning for each the policy tolerates; whether any untolerated one is not up.
fn judge_components(
    policy: &HealthPolicy,
    body: &serde_json::Value,
    notes: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> bool {
    let mut failing_untolerated = false;
    let infra = &body["infrastructure"];
    let mut names: Vec<&str> = COMPONENTS.to_vec();
    if let Some(reported) = infra.as_object() {
        // A component the rule does not name but the body reports must be up too.
        names.extend(reported.keys().map(String::as_str).filter(|k| !COMPONENTS.contains(k)));
    }
    names.sort_unstable();
    for name in names {
        let component = &infra[name];
        let seen = match component {
            serde_json::Value::Null => "absent".to_string(),
            serde_json::Value::Object(_) => match text(&component["status"]) {
                // NATS says `connected` (001) or `healthy` (002, 003): both are up.
                Ok("healthy" | "connected") => continue,
                Ok(s) => s.to_string(),
                Err(e) => format!("status {e}"),
            },
            other => format!("is {}", found(other)),
        };
        notes.push(format!("{name} {seen}"));
        match policy.tolerate.get(name) {
            Some(why) => warnings.push(format!("{name} {seen}: {why}")),
            None => failing_untolerated = true,
        }
    }
    if policy.governance {
        match text(&body["governance"]["health"]) {
            Ok("healthy") => {}
            Ok(s) => {
                notes.push(format!("governance {s}"));
                failing_untolerated = true;
            }
            Err(e) => {
                notes.push(format!("governance health {e}"));
                failing_untolerated = true;
            }
        }
    }
    failing_untolerated
}

/// Finn's latency as Dixie reports it (`services.loa_finn.latency_ms`), in milliseconds as
/// reported (never rounded): `Err` names the field and what was found when it is missing, not
/// a number, negative or not finite, none of which is evidence of a latency.
pub(crate) fn finn_latency_ms(body: &serde_json::Value) -> Result<f64, String> {
    const FIELD: &str = "services.loa_finn.latency_ms";
    let value = &body["services"]["loa_finn"]["latency_ms"];
    match value {
        serde_json::Value::Null => Err(format!("reports no {FIELD}")),
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(ms) if ms.is_finite() && ms >= 0.0 => Ok(ms),
            _ => Err(format!("reports {FIELD} = {n}: a negative latency is not evidence")),
        },
        other => Err(format!("reports {FIELD} as {}, not a number of milliseconds", found(other))),
    }
}

/// The median of the samples (the upper middle one of an even count); `None` for none.
pub(crate) fn median(samples: &[f64]) -> Option<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

#[cfg(test)]
mod evidence;

#[cfg(test)]
mod tests {
    use super::*;

    /// The verdict of a policy that tolerates nothing, as (ok, summary).
    fn strict(rule: HealthRule, http_status: u16, body: &serde_json::Value) -> (bool, String) {
        let verdict = judge(&HealthPolicy::strict(rule), http_status, body);
        assert!(verdict.warnings.is_empty(), "nothing tolerated, nothing warned");
        (verdict.ok, verdict.summary)
    }

    fn sprint_2() -> HealthPolicy {
        toml::from_str::<toml::Table>("h = { rule = \"dixie\", tolerate = { nats = \"sprint-3 T3.1 adds the rule\" } }")
            .unwrap()["h"]
            .clone()
            .try_into()
            .unwrap()
    }

    #[test]
    fn a_tolerated_component_down_passes_with_a_warning_and_nothing_else_does() {
        let degraded = serde_json::json!({"status": "degraded", "services": {"loa_finn": {"circuit_state": "closed"}},
            "infrastructure": {"postgresql": {"status": "healthy"}, "redis": {"status": "healthy"}, "nats": {"status": "unreachable"}}});
        let verdict = judge(&sprint_2(), 200, &degraded);
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!(verdict.warnings, ["nats unreachable: sprint-3 T3.1 adds the rule"]);
        assert!(!strict(HealthRule::Dixie, 200, &degraded).0, "sprint 3 tolerates nothing");
        let also_redis = serde_json::json!({"status": "degraded", "services": {"loa_finn": {"circuit_state": "closed"}},
            "infrastructure": {"redis": {"status": "unreachable"}, "nats": {"status": "unreachable"}}});
        let verdict = judge(&sprint_2(), 200, &also_redis);
        assert_eq!((verdict.ok, verdict.warnings.len()), (false, 0), "redis is not tolerated: {verdict:?}");
        let unhealthy = serde_json::json!({"status": "unhealthy", "services": {"loa_finn": {"circuit_state": "closed"}},
            "infrastructure": {"nats": {"status": "unreachable"}}});
        assert!(!judge(&sprint_2(), 200, &unhealthy).ok, "only `degraded` can be excused");
        assert!(!judge(&sprint_2(), 503, &degraded).ok, "an error status is never excused");
        let healthy = serde_json::json!({"status": "healthy", "services": {"loa_finn": {"circuit_state": "closed"}},
            "infrastructure": all_up()});
        assert_eq!(judge(&sprint_2(), 200, &healthy).warnings, Vec::<String>::new(), "no warning when nats is up");
    }

    #[test]
    fn a_policy_tolerates_only_components_dixie_reports() {
        assert_eq!(sprint_2().check(), Ok(()));
        let typo = HealthPolicy {
            tolerate: BTreeMap::from([("natz".into(), "x".into())]),
            ..HealthPolicy::strict(HealthRule::Dixie)
        };
        assert_eq!(
            typo.check().unwrap_err(),
            "health.tolerate: unknown component `natz`; Dixie reports postgresql, redis, nats"
        );
        let finn = HealthPolicy {
            tolerate: BTreeMap::from([("nats".into(), "x".into())]),
            ..HealthPolicy::strict(HealthRule::Finn)
        };
        assert!(finn.check().is_err());
    }

    #[test]
    fn http_200_with_an_unhealthy_body_is_not_healthy() {
        let body = serde_json::json!({"status": "unhealthy", "services": {"loa_finn": {"status": "unreachable", "circuit_state": "open", "error": "ECONNREFUSED"}},
            "infrastructure": {"postgresql": {"status": "healthy"}, "redis": {"status": "healthy"}, "nats": {"status": "unreachable"}}});
        let (ok, why) = strict(HealthRule::Dixie, 200, &body);
        assert!(!ok);
        assert_eq!(why, "status unhealthy, finn circuit open, nats unreachable, finn error: ECONNREFUSED");
    }

    /// Every component Dixie reports, up.
    fn all_up() -> serde_json::Value {
        serde_json::json!({"postgresql": {"status": "healthy"}, "redis": {"status": "healthy"}, "nats": {"status": "connected"}})
    }

    #[test]
    fn healthy_with_a_closed_circuit_is_healthy() {
        let healthy = serde_json::json!({"status": "healthy", "services": {"loa_finn": {"circuit_state": "closed"}}, "infrastructure": all_up()});
        assert_eq!(strict(HealthRule::Dixie, 200, &healthy), (true, "status healthy, finn circuit closed".to_string()));
        let upper = serde_json::json!({"status": "healthy", "services": {"loa_finn": {"circuit_state": "CLOSED"}}, "infrastructure": all_up()});
        assert!(strict(HealthRule::Dixie, 200, &upper).0, "circuit state compared in either case");
    }

    #[test]
    fn finn_is_judged_by_its_status_alone() {
        let degraded = strict(HealthRule::Finn, 200, &serde_json::json!({"status": "degraded"}));
        assert_eq!(degraded, (false, "status degraded".into()));
        assert!(strict(HealthRule::Finn, 200, &serde_json::json!({"status": "healthy"})).0);
        assert_eq!(strict(HealthRule::Finn, 200, &serde_json::json!({})).1, "status missing");
    }

    #[test]
    fn a_healthy_body_with_an_error_status_is_not_healthy() {
        let healthy = serde_json::json!({"status": "healthy", "services": {"loa_finn": {"circuit_state": "closed"}}, "infrastructure": all_up()});
        let verdict = strict(HealthRule::Dixie, 503, &healthy);
        assert_eq!(verdict, (false, "HTTP 503, status healthy, finn circuit closed".to_string()));
        assert!(!strict(HealthRule::Finn, 500, &serde_json::json!({"status": "healthy"})).0);
    }

    #[test]
    fn every_component_dixie_reports_must_be_up() {
        let body = serde_json::json!({"status": "healthy", "services": {"loa_finn": {"circuit_state": "closed"}},
            "infrastructure": {"postgresql": {"status": "unhealthy"}, "redis": {"status": "healthy"}, "nats": {"status": "disconnected"}}});
        let verdict = strict(HealthRule::Dixie, 200, &body);
        assert_eq!(
            verdict,
            (false, "status healthy, finn circuit closed, nats disconnected, postgresql unhealthy".into())
        );
        let up = serde_json::json!({"status": "healthy", "services": {"loa_finn": {"circuit_state": "closed"}},
            "infrastructure": {"postgresql": {"status": "healthy"}, "redis": {"status": "healthy"}, "nats": {"status": "connected"}}});
        assert!(strict(HealthRule::Dixie, 200, &up).0);
    }

    #[test]
    fn a_half_open_circuit_is_not_closed_and_is_named() {
        let body = serde_json::json!({"status": "healthy", "services": {"loa_finn": {"circuit_state": "half_open"}},
            "infrastructure": all_up()});
        assert_eq!(
            strict(HealthRule::Dixie, 200, &body),
            (false, "status healthy, finn circuit half_open".to_string())
        );
    }

    #[test]
    fn sprint_3_asks_for_governance_too() {
        let policy: HealthPolicy =
            toml::from_str::<toml::Table>("h = { rule = \"dixie\", governance = true, finn_latency_ms = 50 }").unwrap()
                ["h"]
                .clone()
                .try_into()
                .unwrap();
        assert_eq!((policy.finn_latency_ms, policy.latency_samples), (Some(50), 5));
        let body = |governance: &str| {
            serde_json::json!({"status": "healthy", "services": {"loa_finn": {"circuit_state": "closed"}},
                "infrastructure": all_up(), "governance": {"health": governance}})
        };
        assert!(judge(&policy, 200, &body("healthy")).ok);
        let verdict = judge(&policy, 200, &body("degraded"));
        assert!(!verdict.ok && verdict.summary.ends_with("governance degraded"), "{verdict:?}");
    }

    #[test]
    fn a_component_the_body_does_not_report_fails_naming_it() {
        let no_nats = serde_json::json!({"status": "healthy", "services": {"loa_finn": {"circuit_state": "closed"}},
            "infrastructure": {"postgresql": {"status": "healthy"}, "redis": {"status": "healthy"}}});
        assert_eq!(
            strict(HealthRule::Dixie, 200, &no_nats),
            (false, "status healthy, finn circuit closed, nats absent".into())
        );
        let no_infrastructure =
            serde_json::json!({"status": "healthy", "services": {"loa_finn": {"circuit_state": "closed"}}});
        assert_eq!(
            strict(HealthRule::Dixie, 200, &no_infrastructure),
            (false, "status healthy, finn circuit closed, nats absent, postgresql absent, redis absent".into())
        );
        // Only `tolerate` makes an absent component a warning.
        let verdict = judge(&sprint_2(), 200, &no_nats);
        assert!(verdict.ok, "{verdict:?}");
        assert_eq!(verdict.warnings, ["nats absent: sprint-3 T3.1 adds the rule"]);
        assert!(!judge(&sprint_2(), 200, &no_infrastructure).ok, "postgresql and redis are not tolerated");
    }

    #[test]
    fn a_field_of_the_wrong_type_is_never_up_and_says_what_it_found() {
        let body = |infra: serde_json::Value| serde_json::json!({"status": "healthy", "services": {"loa_finn": {"circuit_state": "closed"}}, "infrastructure": infra});
        let number = body(
            serde_json::json!({"postgresql": {"status": 1}, "redis": {"status": "healthy"}, "nats": {"status": "connected"}}),
        );
        assert_eq!(
            strict(HealthRule::Dixie, 200, &number).1,
            "status healthy, finn circuit closed, postgresql status a number (1)"
        );
        let string = body(
            serde_json::json!({"postgresql": "healthy", "redis": {"status": "healthy"}, "nats": {"status": "connected"}}),
        );
        assert_eq!(
            strict(HealthRule::Dixie, 200, &string).1,
            "status healthy, finn circuit closed, postgresql is a string (\"healthy\")"
        );
        let list = serde_json::json!({"status": ["healthy"], "services": {"loa_finn": {"circuit_state": "closed"}}, "infrastructure": all_up()});
        assert_eq!(
            strict(HealthRule::Dixie, 200, &list),
            (false, "status an array ([\"healthy\"]), finn circuit closed".into())
        );
        assert!(!strict(HealthRule::Finn, 200, &serde_json::json!({"status": true})).0);
    }

    #[test]
    fn finn_latency_is_the_value_reported_and_only_a_number_of_ms_is_evidence() {
        let body = |ms: serde_json::Value| serde_json::json!({"services": {"loa_finn": {"latency_ms": ms}}});
        assert_eq!(finn_latency_ms(&body(serde_json::json!(49.6))), Ok(49.6), "never rounded");
        assert_eq!(finn_latency_ms(&body(serde_json::json!(0))), Ok(0.0));
        assert_eq!(
            finn_latency_ms(&body(serde_json::json!(-500))).unwrap_err(),
            "reports services.loa_finn.latency_ms = -500: a negative latency is not evidence"
        );
        assert_eq!(
            finn_latency_ms(&body(serde_json::json!("12"))).unwrap_err(),
            "reports services.loa_finn.latency_ms as a string (\"12\"), not a number of milliseconds"
        );
        assert_eq!(
            finn_latency_ms(&serde_json::json!({"services": {}})).unwrap_err(),
            "reports no services.loa_finn.latency_ms"
        );
        assert_eq!(median(&[49.6, 49.6, 12.0]), Some(49.6));
        assert_eq!(median(&[]), None);
    }
}
