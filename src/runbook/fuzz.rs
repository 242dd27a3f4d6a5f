//! A generated table of `${…}` values through resolution into every kind's typed params, on the
//! project's real runbooks: each param of each step (and each runbook var) is given a value
//! (empty, huge, unicode, control characters, nested or unclosed `${`, loops, unknown steps and
//! outputs, numbers out of range, lists and tables where text belongs, secret-shaped text),
//! written straight in, through a runbook var, a `--var`, an environment value, a chain of vars,
//! or an upstream step's output filled at run time.
//!
//! The property: no panic; a value is accepted or refused with a message that names the step
//! and the key; a secret-shaped value never appears in a message. Seeded (xorshift), so a
//! failure is the same on every machine.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::*;

/// xorshift64*: deterministic, no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `n` characters of `alphabet`.
    fn text(&mut self, alphabet: &str, n: usize) -> String {
        let chars: Vec<char> = alphabet.chars().collect();
        (0..n).map(|_| chars[self.below(chars.len())]).collect()
    }
}

const ALNUM: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &str = "0123456789abcdef";

/// A generated value: as a TOML value of its own, or as text (which may be written in a
/// reference's place). `secret` is the part of a secret-shaped value no message may show.
struct Generated {
    label: String,
    value: toml::Value,
    secret: Option<String>,
}

fn text(label: &str, v: impl Into<String>) -> Generated {
    Generated { label: label.into(), value: toml::Value::String(v.into()), secret: None }
}

fn secret(label: &str, make: impl FnOnce(&str) -> String, core: String) -> Generated {
    let value = make(&core);
    assert!(crate::secret::secret_shape(&value).is_some(), "{label} is not secret-shaped: {value}");
    Generated { label: label.into(), value: toml::Value::String(value), secret: Some(core) }
}

/// The values of one round (the secrets' random parts differ from round to round).
fn values(rng: &mut Rng) -> Vec<Generated> {
    let mut out = vec![
        text("empty", ""),
        text("blank", "  \t "),
        text("huge", "a".repeat(20_000)),
        text("huge references", "${service}".repeat(1_000)),
        text("unicode", "dïxíe-ñ-😀-\u{200b}"),
        text("bidi override", "abc\u{202e}cba"),
        text("newline", "dixie\narmitage"),
        text("nul", "dixie\0"),
        text("escape sequence", "\u{1b}[31mred\u{1b}[0m"),
        text("nested reference", "${${service}}"),
        text("reference in an env name", "${env.${service}}"),
        text("dollar dollar", "$${service}"),
        text("unclosed", "${"),
        text("unclosed name", "abc-${service"),
        text("closed then open", "}${"),
        text("empty reference", "${}"),
        text("blank reference", "${ }"),
        text("env without name", "${env.}"),
        text("steps without id", "${steps.}"),
        text("steps without output", "${steps.T2.1}"),
        text("steps empty parts", "${steps..x}"),
        text("unknown step", "${steps.NOPE.out}"),
        text("unknown output", "${steps.T2.1.nope}"),
        text("unknown env value", "${env.nope}"),
        text("unknown var", "${nope}"),
        text("dashed var", "${a-b}"),
        text("self reference", "${fz}"),
        text("mutual reference", "${fz_back}"),
        text("zero", "0"),
        text("negative", "-1"),
        text("port max", "65535"),
        text("port past max", "65536"),
        text("u32 past max", "4294967296"),
        text("u64 max", "18446744073709551615"),
        text("u64 past max", "18446744073709551616"),
        text("a day", "86400"),
        text("past a day", "86401"),
        text("exponent", "1e3"),
        text("fraction", "1.5"),
        text("nan", "NaN"),
        text("spaced number", " 7 "),
        text("hex number", "0x10"),
        text("true", "true"),
        text("list as text", "[\"a\", \"b\"]"),
        text("comma list", "a,b"),
        text("latest", "latest"),
        text("path outside", "../../../etc/passwd"),
        text("dev zero", "/dev/zero"),
        Generated { label: "integer min".into(), value: toml::Value::Integer(i64::MIN), secret: None },
        Generated { label: "integer -1".into(), value: toml::Value::Integer(-1), secret: None },
        Generated { label: "integer 0".into(), value: toml::Value::Integer(0), secret: None },
        Generated { label: "integer 65536".into(), value: toml::Value::Integer(65_536), secret: None },
        Generated { label: "integer max".into(), value: toml::Value::Integer(i64::MAX), secret: None },
        Generated { label: "float".into(), value: toml::Value::Float(1.5), secret: None },
        Generated { label: "float nan".into(), value: toml::Value::Float(f64::NAN), secret: None },
        Generated { label: "float inf".into(), value: toml::Value::Float(f64::INFINITY), secret: None },
        Generated { label: "bool".into(), value: toml::Value::Boolean(true), secret: None },
        Generated { label: "empty list".into(), value: toml::Value::Array(vec![]), secret: None },
        Generated {
            label: "list of text".into(),
            value: toml::Value::Array(vec!["a".into(), "${service}".into()]),
            secret: None,
        },
        Generated {
            label: "list of numbers".into(),
            value: toml::Value::Array(vec![1.into(), (-1).into()]),
            secret: None,
        },
        Generated { label: "empty table".into(), value: toml::Value::Table(toml::Table::new()), secret: None },
        Generated {
            label: "table".into(),
            value: toml::Value::Table(toml::Table::from_iter([("x".to_string(), "${service}".into())])),
            secret: None,
        },
    ];
    let core = rng.text(ALNUM, 36);
    out.push(secret("github token", |c| format!("ghp_{c}"), core));
    let core = rng.text(ALNUM, 40);
    out.push(secret("github fine-grained token", |c| format!("github_pat_11A{c}"), core));
    let core = rng.text(ALNUM, 24);
    out.push(secret("slack token", |c| format!("xoxb-1234-5678-{c}"), core));
    let core = rng.text(ALNUM, 20);
    out.push(secret("gitlab token", |c| format!("glpat-{c}"), core));
    let core = rng.text(ALNUM, 24);
    out.push(secret("postgres url", |c| format!("postgres://dixie:{c}@db.example.com:5432/dixie"), core));
    let core = rng.text(ALNUM, 24);
    out.push(secret("webhook url", |c| format!("https://hooks.slack.com/services/T000/B000/{c}"), core));
    let core = rng.text(ALNUM, 48);
    out.push(secret("pem key", |c| format!("-----BEGIN PRIVATE KEY-----\n{c}\n-----END PRIVATE KEY-----\n"), core));
    let core = rng.text(ALNUM, 30);
    out.push(secret("jwt", |c| format!("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.{c}"), core));
    let core = rng.text(HEX, 64);
    out.push(secret("hex32", |c| c.to_string(), core));
    let core = format!("Aa1{}", rng.text(ALNUM, 37));
    out.push(secret("base64ish key", |c| c.to_string(), core));
    out
}

/// How a generated value reaches the param.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// Written as the param's value.
    Direct,
    /// `param = "${fz}"`, `[vars] fz = value`.
    Var,
    /// `param = "pre-${fz}-post"`: inside other text.
    Embedded,
    /// `param = "${fz}"`, `--var fz=value`.
    Override,
    /// `param = "${env.fz}"`, the environment's `fz = value`.
    Env,
    /// `param = "${fz}"`, `fz = "${fz_chain}"`, `fz_chain = "${env.fz}"`.
    Chain,
    /// `param = "${steps.U.o}"` of an upstream step, whose output is the value at run time.
    Upstream,
}

/// How many generated values each param and var is given (and one secret more).
const PER_TARGET: usize = 6;

const ROUTES: [Route; 7] =
    [Route::Direct, Route::Var, Route::Embedded, Route::Override, Route::Env, Route::Chain, Route::Upstream];

/// What run-time outputs look like, so that only the fuzzed one is odd.
fn plausible_output(name: &str) -> String {
    match name {
        "repository_uri" => "123456789012.dkr.ecr.us-east-1.amazonaws.com/dixie-armitage".into(),
        "image_tag" => "3f2a9c1".into(),
        "port" | "redis_port" => "5432".into(),
        "host" | "redis_endpoint" => "db.example.com".into(),
        "password_param" => "/runbook/armitage/dixie/DB_PASSWORD".into(),
        "hostname" => "dixie-armitage.arrakis.community".into(),
        "alb_dns_name" => "alb-1.us-east-1.elb.amazonaws.com".into(),
        _ => "dixie".into(),
    }
}

/// The paths of every value under a step's params: `["health", "tolerate", "nats"]`.
fn leaves(value: &toml::Value, at: Vec<String>, out: &mut Vec<Vec<String>>) {
    match value {
        toml::Value::Table(t) => {
            if !at.is_empty() {
                out.push(at.clone());
            }
            for (k, v) in t {
                let mut next = at.clone();
                next.push(k.clone());
                leaves(v, next, out);
            }
        }
        toml::Value::Array(items) => {
            out.push(at.clone());
            for (i, v) in items.iter().enumerate() {
                let mut next = at.clone();
                next.push(i.to_string());
                leaves(v, next, out);
            }
        }
        _ => out.push(at),
    }
}

fn at_path<'a>(value: &'a mut toml::Value, path: &[String]) -> &'a mut toml::Value {
    path.iter().fold(value, |v, key| match v {
        toml::Value::Table(t) => t.get_mut(key).expect("a leaf of this table"),
        toml::Value::Array(items) => &mut items[key.parse::<usize>().expect("an index")],
        _ => unreachable!("leaves end at values"),
    })
}

/// One case: the runbook's text, environment and overrides, and what to fill outputs with.
struct Case {
    runbook: String,
    text: String,
    env: Environment,
    overrides: BTreeMap<String, String>,
    outputs: BTreeMap<String, BTreeMap<String, String>>,
    /// The step and the key the value was given to (`None` for a runbook var).
    step: Option<String>,
    key: Vec<String>,
    secret: Option<String>,
    what: String,
}

/// What went wrong with a case, if anything.
fn judge(case: &Case) -> Option<String> {
    let file = NamedFile {
        path: PathBuf::from(format!("runbooks/{}.toml", case.runbook)),
        hash: sha256_hex(case.text.as_bytes()),
        text: case.text.clone(),
    };
    let ran = catch_unwind(AssertUnwindSafe(|| {
        let book = Runbook::from_file(steps::KINDS, file, &case.runbook, &case.env, &case.overrides)
            .map_err(|e| e.to_string())?;
        // The files the steps will read, as a run checks them before it starts.
        book.check_files(&PathBuf::from(env!("CARGO_MANIFEST_DIR"))).map_err(|e| e.to_string())?;
        let mut refusals = Vec::new();
        for step in &book.steps {
            if let Err(e) = step.typed(book.registry, &case.outputs) {
                refusals.push((step.id.clone(), e));
            }
        }
        Ok(refusals)
    }));
    let messages: Vec<(Option<String>, String)> = match ran {
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            return Some(format!("panicked: {why}"));
        }
        Ok(Err(message)) => vec![(None, message)],
        Ok(Ok(refusals)) => refusals.into_iter().map(|(step, m)| (Some(step), m)).collect(),
    };
    for (at_run_time, message) in &messages {
        if let Some(secret) = &case.secret
            && shows_part_of(message, secret)
        {
            return Some(format!("shows the secret: {message}"));
        }
        if message.len() > 2_000 {
            return Some(format!("a message of {} bytes: {}…", message.len(), cut(message, 300)));
        }
        // At load, the message names the step; at run time the engine adds the step.
        let step = case.step.as_deref().unwrap_or_default();
        if at_run_time.is_none() && case.step.is_some() && !message.contains(&format!("step {step}")) {
            return Some(format!("does not name step {step}: {message}"));
        }
        if at_run_time.as_deref().is_some_and(|s| s != step) {
            continue; // another step that reads the value (a var's): its own message
        }
        let named = case.key.iter().filter(|k| k.parse::<usize>().is_err()).any(|k| message.contains(k.as_str()));
        if case.step.is_some() && !case.key.is_empty() && !named {
            return Some(format!("does not name the key {}: {message}", case.key.join(".")));
        }
    }
    None
}

fn cut(text: &str, n: usize) -> String {
    text.chars().take(n).collect()
}

/// Whether `message` holds 8 consecutive characters of `secret` (escaped or cut short, a
/// part is still a leak).
fn shows_part_of(message: &str, secret: &str) -> bool {
    let chars: Vec<char> = secret.chars().collect();
    chars.windows(8).any(|w| message.contains(&w.iter().collect::<String>()))
}

/// The runbooks and environment the cases start from.
fn sources() -> (Vec<(String, toml::Table)>, Environment) {
    let project = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut env = Environment::load(&project, "local").unwrap();
    env.path = PathBuf::from("runbooks/environments/local.toml");
    let books = ["sprint-2", "sprint-3", "rollback", "diagnose"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(project.join(format!("runbooks/{name}.toml"))).unwrap();
            (name.to_string(), toml::from_str(&text).unwrap())
        })
        .collect();
    (books, env)
}

/// Builds the case that gives `value` to `key` of `step` (or to the runbook var `key[0]`)
/// along `route`.
fn case(
    (name, table): &(String, toml::Table),
    env: &Environment,
    step: Option<usize>,
    key: &[String],
    value: &Generated,
    route: Route,
) -> Case {
    let mut table = table.clone();
    let mut env = env.clone();
    let mut overrides = BTreeMap::new();
    let mut outputs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let steps = table["steps"].as_array().unwrap().clone();
    let ids: Vec<String> = steps.iter().map(|s| s["id"].as_str().unwrap().to_string()).collect();
    for s in &steps {
        let kind = steps::find(steps::KINDS, s["kind"].as_str().unwrap()).unwrap();
        for output in kind.outputs.unwrap_or(&["redis_endpoint", "redis_port", "hostname", "alb_dns_name"]) {
            outputs
                .entry(s["id"].as_str().unwrap().to_string())
                .or_default()
                .insert(output.to_string(), plausible_output(output));
        }
    }
    let as_text = |v: &toml::Value| match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let vars = table.entry("vars").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let vars = vars.as_table_mut().unwrap();
    vars.insert("fz".into(), "".into());
    vars.insert("fz_back".into(), "${fz}".into());
    // An upstream step of this one, and one of its outputs, for Route::Upstream.
    let upstream = step.and_then(|i| {
        let needs: Vec<String> = steps[i]
            .get("needs")
            .and_then(|n| n.as_array())
            .map(|n| n.iter().map(|x| x.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        needs.first().cloned()
    });
    let route = match (route, &upstream) {
        (Route::Upstream, None) => Route::Chain,
        (Route::Direct, _) if step.is_none() && !value.value.is_str() => Route::Var,
        (route, _) => route,
    };
    let reference = match route {
        Route::Direct => None,
        Route::Var | Route::Chain | Route::Override => Some("${fz}".to_string()),
        Route::Embedded => Some("pre-${fz}-post".to_string()),
        Route::Env => Some("${env.fz}".to_string()),
        Route::Upstream => {
            let up = upstream.clone().unwrap();
            let output = outputs.get(&up).and_then(|o| o.keys().next().cloned()).unwrap();
            outputs.get_mut(&up).unwrap().insert(output.clone(), as_text(&value.value));
            Some(format!("${{steps.{up}.{output}}}"))
        }
    };
    match route {
        Route::Var | Route::Embedded => {
            vars.insert("fz".into(), as_text(&value.value).into());
        }
        Route::Override => {
            overrides.insert("fz".to_string(), as_text(&value.value));
        }
        Route::Env => {
            env.vars.insert("fz".into(), as_text(&value.value));
        }
        Route::Chain => {
            vars.insert("fz".into(), "${fz_chain}".into());
            vars.insert("fz_chain".into(), "${env.fz}".into());
            env.vars.insert("fz".into(), as_text(&value.value));
        }
        Route::Direct | Route::Upstream => {}
    }
    let new = reference.map_or_else(|| value.value.clone(), toml::Value::String);
    match step {
        Some(i) => {
            let steps = table.get_mut("steps").unwrap().as_array_mut().unwrap();
            let params = steps[i].as_table_mut().unwrap().get_mut("params").unwrap();
            *at_path(params, key) = new;
        }
        None => {
            let vars = table.get_mut("vars").unwrap().as_table_mut().unwrap();
            vars.insert(key[0].clone(), new);
        }
    }
    let text = toml::to_string(&table).unwrap();
    let where_ = match step {
        Some(i) => format!("{name} step {} params.{}", ids[i], key.join(".")),
        None => format!("{name} var {}", key[0]),
    };
    Case {
        runbook: name.clone(),
        text,
        env,
        overrides,
        outputs,
        step: step.map(|i| ids[i].clone()),
        key: key.to_vec(),
        secret: value.secret.clone(),
        what: format!("{where_} = {} ({route:?})", value.label),
    }
}

/// Every param of every step of the real runbooks, and each runbook var, given each generated
/// value along a route drawn from the seed.
#[test]
fn generated_values_through_references_into_typed_params_are_accepted_or_refused_by_key_and_never_shown() {
    let started = std::time::Instant::now();
    let (books, env) = sources();
    let mut rng = Rng(0x5eed_2026_1217);
    let mut failures = BTreeMap::<String, String>::new();
    let mut count = 0;
    for book in &books {
        let steps = book.1["steps"].as_array().unwrap();
        let mut targets: Vec<(Option<usize>, Vec<String>)> = Vec::new();
        for (i, s) in steps.iter().enumerate() {
            let mut found = Vec::new();
            leaves(s.get("params").unwrap(), Vec::new(), &mut found);
            targets.extend(found.into_iter().map(|k| (Some(i), k)));
        }
        for var in book.1.get("vars").and_then(|v| v.as_table()).into_iter().flat_map(|t| t.keys()) {
            targets.push((None, vec![var.clone()]));
        }
        for (step, key) in &targets {
            // A window of the values that moves from target to target, and one secret: every
            // value reaches every kind, in a few seconds.
            let all = values(&mut rng);
            let secrets: Vec<usize> = (0..all.len()).filter(|&i| all[i].secret.is_some()).collect();
            let start = rng.below(all.len());
            let mut chosen: Vec<usize> = (start..start + PER_TARGET).map(|i| i % all.len()).collect();
            chosen.push(secrets[rng.below(secrets.len())]);
            for value in chosen.into_iter().map(|i| &all[i]) {
                let route = ROUTES[rng.below(ROUTES.len())];
                let case = case(book, &env, *step, key, value, route);
                count += 1;
                if let Some(why) = judge(&case) {
                    failures
                        .entry(format!("{} [{}]", why.chars().take(60).collect::<String>(), value.label))
                        .or_insert(format!("{}:\n    {}", case.what, cut(&why, 600).replace('\n', "\n    ")));
                }
            }
        }
    }
    let elapsed = started.elapsed();
    eprintln!("{count} generated cases in {:.1}s", elapsed.as_secs_f64());
    assert!(count > 1_300, "only {count} cases");
    assert!(
        failures.is_empty(),
        "{} kinds of failure:\n\n{}",
        failures.len(),
        failures.values().cloned().collect::<Vec<_>>().join("\n\n")
    );
}
