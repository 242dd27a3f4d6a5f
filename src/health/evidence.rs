//! "Missing evidence never passes", as a property of the judge: for every health policy the
//! runbooks write (and `watch`'s), a generated table of bodies with each field removed, each
//! leaf of the wrong type, boundary values and extra fields. A field the policy requires that
//! is absent or of the wrong type fails; a component the policy tolerates warns; anything else
//! removed or added changes nothing.

use serde_json::{Value, json};

use super::*;

/// Every health policy in `runbooks/*.toml` (a `health` or `*_health` key whose value is a
/// rule or a table with one), named by where it was found, and the two `watch` judges with.
fn policies() -> Vec<(String, HealthPolicy)> {
    fn walk(at: &str, value: &toml::Value, out: &mut Vec<(String, HealthPolicy)>) {
        match value {
            toml::Value::Table(t) => {
                for (key, v) in t {
                    let here = format!("{at}.{key}");
                    let rule_like = v.is_str() || v.get("rule").is_some();
                    if (key == "health" || key.ends_with("_health")) && rule_like {
                        let policy: HealthPolicy = v.clone().try_into().unwrap_or_else(|e| panic!("{here}: {e}"));
                        out.push((here.clone(), policy));
                    }
                    walk(&here, v, out);
                }
            }
            toml::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(&format!("{at}[{i}]"), v, out);
                }
            }
            _ => {}
        }
    }
    let mut out = vec![
        ("watch dixie".to_string(), HealthPolicy::strict(HealthRule::Dixie)),
        ("watch finn".to_string(), HealthPolicy::strict(HealthRule::Finn)),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("runbooks");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let doc: toml::Value = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            walk(&path.file_name().unwrap().to_string_lossy(), &doc, &mut out);
        }
    }
    out
}

/// A body that every policy of its rule passes, with every field Dixie's schema has.
fn healthy(rule: HealthRule) -> Value {
    match rule {
        HealthRule::Finn => json!({"status": "healthy", "version": "1.2.0", "uptime_seconds": 42}),
        HealthRule::Dixie => json!({
            "status": "healthy", "version": "0.1.0", "uptime_seconds": 42,
            "services": {"dixie": {"status": "healthy"},
                         "loa_finn": {"status": "healthy", "latency_ms": 12, "circuit_state": "closed"}},
            "infrastructure": {"postgresql": {"status": "healthy", "latency_ms": 3},
                               "redis": {"status": "healthy", "latency_ms": 1},
                               "nats": {"status": "connected"}},
            "reputation_service": {"status": "healthy"},
            "governance": {"governor_count": 3, "resource_types": ["knowledge"], "health": "healthy"},
            "timestamp": "2026-12-06T00:00:00Z"
        }),
    }
}

/// Every path to a value in `body`, objects and leaves, as keys from the root.
fn paths(body: &Value) -> Vec<Vec<String>> {
    fn walk(prefix: &[String], value: &Value, out: &mut Vec<Vec<String>>) {
        if let Value::Object(map) = value {
            for (k, v) in map {
                let mut path = prefix.to_vec();
                path.push(k.clone());
                out.push(path.clone());
                walk(&path, v, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&[], body, &mut out);
    out
}

fn edited(body: &Value, path: &[String], edit: impl FnOnce(&mut serde_json::Map<String, Value>, &str)) -> Value {
    let mut body = body.clone();
    let (last, parents) = path.split_last().unwrap();
    let mut at = &mut body;
    for key in parents {
        at = &mut at[key.as_str()];
    }
    edit(at.as_object_mut().unwrap(), last);
    body
}

/// What the policy needs at `path`: `Required`, `Tolerated(component)` or `Free`.
#[derive(Debug, PartialEq)]
enum Need {
    Required,
    Tolerated(String),
    Free,
}

fn need(policy: &HealthPolicy, path: &[String]) -> Need {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    match (policy.rule, p.as_slice()) {
        (_, ["status"]) => Need::Required,
        (HealthRule::Finn, _) => Need::Free,
        (HealthRule::Dixie, ["services"] | ["services", "loa_finn"] | ["services", "loa_finn", "circuit_state"]) => {
            Need::Required
        }
        (HealthRule::Dixie, ["infrastructure"]) => {
            // Removing the whole table removes every component: required unless all tolerated.
            if COMPONENTS.iter().all(|c| policy.tolerate.contains_key(*c)) { Need::Free } else { Need::Required }
        }
        (HealthRule::Dixie, ["infrastructure", c] | ["infrastructure", c, "status"]) => {
            if policy.tolerate.contains_key(*c) { Need::Tolerated(c.to_string()) } else { Need::Required }
        }
        (HealthRule::Dixie, ["governance"] | ["governance", "health"]) if policy.governance => Need::Required,
        _ => Need::Free,
    }
}

/// Values of another JSON type than `original`, and boundary strings for a string.
fn wrong_values(original: &Value) -> Vec<Value> {
    let all = [json!(null), json!(true), json!(0), json!(-1), json!(1e300), json!(""), json!([]), json!({})];
    let mut out: Vec<Value> =
        all.into_iter().filter(|v| std::mem::discriminant(v) != std::mem::discriminant(original)).collect();
    if let Value::String(s) = original {
        out.extend([json!(format!("{s} ")), json!(format!("not-{s}")), json!(s.to_uppercase() + "x")]);
    }
    out
}

fn check(name: &str, policy: &HealthPolicy, path: &[String], body: &Value, what: &str) -> usize {
    let verdict = judge(policy, 200, body);
    match need(policy, path) {
        Need::Required => assert!(!verdict.ok, "{name}: {what} {} passed: {verdict:?}", path.join(".")),
        Need::Tolerated(c) => {
            assert!(verdict.ok, "{name}: {what} tolerated {}: {verdict:?}", path.join("."));
            assert!(verdict.warnings.iter().any(|w| w.starts_with(&c)), "{name}: no warning for {c}: {verdict:?}");
        }
        Need::Free => {
            assert!(verdict.ok && verdict.warnings.is_empty(), "{name}: {what} {}: {verdict:?}", path.join("."))
        }
    }
    1
}

#[test]
fn no_policy_in_the_runbooks_passes_a_body_missing_what_it_requires() {
    let policies = policies();
    assert!(policies.len() >= 6, "runbooks' policies found: {:?}", policies.iter().map(|p| &p.0).collect::<Vec<_>>());
    let mut cases = 0;
    for (name, policy) in &policies {
        let body = healthy(policy.rule);
        let verdict = judge(policy, 200, &body);
        assert!(verdict.ok && verdict.warnings.is_empty(), "{name}: the healthy body fails: {verdict:?}");
        for path in paths(&body) {
            let removed = edited(&body, &path, |map, key| {
                map.remove(key);
            });
            cases += check(name, policy, &path, &removed, "without");
            let original = path.iter().fold(&body, |v, k| &v[k.as_str()]);
            for wrong in wrong_values(original) {
                // A case change of a circuit state is the same state (seen in both cases).
                let same_circuit = path.last().is_some_and(|k| k == "circuit_state")
                    && wrong.as_str().is_some_and(|w| w.eq_ignore_ascii_case("closed"));
                if !matches!(original, Value::Object(_) | Value::String(_)) || same_circuit {
                    continue;
                }
                let mistyped = edited(&body, &path, |map, key| {
                    map.insert(key.to_string(), wrong.clone());
                });
                // `null` is absence; a table of the wrong shape hides what it should report.
                cases += check(name, policy, &path, &mistyped, &format!("with {wrong} at"));
            }
            if let Value::Object(_) = original {
                let extra = edited(&body, &path, |map, key| {
                    map[key]["x_extra"] = json!({"status": "whatever"});
                });
                let is_infrastructure = path == ["infrastructure"];
                let verdict = judge(policy, 200, &extra);
                let component_table = policy.rule == HealthRule::Dixie && is_infrastructure;
                assert_eq!(verdict.ok, !component_table, "{name}: extra field under {}: {verdict:?}", path.join("."));
                cases += 1;
            }
        }
    }
    assert!(cases > 500, "only {cases} cases");
}

#[test]
fn finn_latency_is_judged_on_the_value_reported_at_every_boundary() {
    for (name, policy) in policies() {
        let Some(limit) = policy.finn_latency_ms else { continue };
        let limit = limit as f64;
        let with = |ms: Value| {
            let mut body = healthy(HealthRule::Dixie);
            body["services"]["loa_finn"]["latency_ms"] = ms;
            finn_latency_ms(&body)
        };
        let under = |ms: Value| with(ms).map(|ms| ms < limit);
        assert_eq!(under(json!(limit - 0.4)), Ok(true), "{name}: {} is under {limit}", limit - 0.4);
        assert_eq!(under(json!(limit)), Ok(false), "{name}: the limit itself is not under it");
        assert_eq!(under(json!(limit + 0.001)), Ok(false), "{name}");
        assert_eq!(under(json!(0)), Ok(true), "{name}");
        for bad in [json!(-0.5), json!(-500), json!("12"), json!(null), json!(true), json!([12]), json!({"ms": 12})] {
            assert!(with(bad.clone()).is_err(), "{name}: {bad} is not a latency");
        }
        let mut body = healthy(HealthRule::Dixie);
        body["services"]["loa_finn"].as_object_mut().unwrap().remove("latency_ms");
        assert!(finn_latency_ms(&body).is_err(), "{name}: absent is not evidence");
    }
}
