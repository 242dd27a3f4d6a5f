//! Validation before anything runs, on the project's real runbook and environments: every
//! refusal names the file, the step, the field and the fix.

use super::*;

fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sprint2() -> String {
    std::fs::read_to_string(project().join("runbooks/sprint-2.toml")).unwrap()
}

fn env(name: &str) -> Environment {
    let mut env = Environment::load(&project(), name).unwrap();
    // Relative, so that messages read the same on every machine.
    env.path = PathBuf::from(format!("runbooks/environments/{name}.toml"));
    env
}

fn load_with(text: &str, env: &Environment, vars: &[(&str, &str)]) -> Result<Runbook, RunbookError> {
    let file = NamedFile {
        path: PathBuf::from("runbooks/sprint-2.toml"),
        hash: sha256_hex(text.as_bytes()),
        text: text.to_string(),
    };
    let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Runbook::from_file(steps::KINDS, file, "sprint-2", env, &vars)
}

fn refused(text: &str) -> String {
    match load_with(text, &env("local"), &[]) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn substitute_replaces_known_and_keeps_unknown() {
    let out = substitute("a-${x}-${y}-${", |r| (r == "x").then(|| "1".to_string()));
    assert_eq!(out, "a-1-${y}-${");
}

#[test]
fn step_reference_splits_on_the_last_dot() {
    assert_eq!(split_step_reference("steps.T2.2.image_tag"), Some(("T2.2", "image_tag")));
    assert_eq!(split_step_reference("steps.T2"), None);
}

#[test]
fn sprint_2_loads_against_both_environments_in_the_plans_order() {
    for name in ["local", "armitage"] {
        let book = load_with(&sprint2(), &env(name), &[]).unwrap();
        assert_eq!(book.steps.len(), 8, "{name}");
        assert_eq!(book.graph.topological(), ["T2.1", "T2.3", "T2.2", "T2.4", "T2.5", "T2.6", "T2.7", "T2.8"]);
        let repository = book.step("T2.1").unwrap().params["name"].as_str().unwrap().to_string();
        assert_eq!(repository, format!("dixie-{}", env(name).vars["environment"]));
    }
}

#[test]
fn every_kind_is_registered_once() {
    let names: Vec<&str> = steps::KINDS.iter().map(|k| k.name).collect();
    assert_eq!(
        names,
        [
            "ecr_repository",
            "database",
            "image",
            "terraform",
            "ssm_params",
            "ecs_deploy",
            "validate",
            "pull_request",
            "security_group_ingress",
            "ecs_rollback",
            "diagnose",
            "migrations",
            "smoke",
            "wait",
            "jwt_keys"
        ]
    );
    assert_eq!(
        steps::find(steps::KINDS, "terraform").map(|k| k.outputs),
        Some(None),
        "terraform's outputs are the module's"
    );
}

#[test]
fn a_cycle_is_named_with_its_members() {
    let text = sprint2()
        .replace("kind = \"ecr_repository\"", "kind = \"ecr_repository\"\nneeds = [\"T2.3\"]")
        .replace("kind = \"database\"", "kind = \"database\"\nneeds = [\"T2.1\"]");
    assert_eq!(
        refused(&text),
        "runbooks/sprint-2.toml: dependency cycle: T2.1 → T2.3 → T2.1; remove one of these `needs`"
    );
}

#[test]
fn an_unknown_kind_lists_the_known_ones() {
    let err = refused(&sprint2().replace("kind = \"database\"", "kind = \"databse\""));
    assert_eq!(
        err,
        "runbooks/sprint-2.toml: step T2.3: unknown kind `databse`; known kinds: ecr_repository, database, image, \
         terraform, ssm_params, ecs_deploy, validate, pull_request, security_group_ingress, ecs_rollback, diagnose, \
         migrations, smoke, wait, jwt_keys"
    );
}

#[test]
fn an_unknown_field_is_named() {
    let err = refused(&sprint2().replace("keep_last_images = 10", "keep_last_images = 10\nkeep_lats = 3"));
    assert!(
        err.starts_with("runbooks/sprint-2.toml: step T2.1 (ecr_repository): params: unknown field `keep_lats`"),
        "{err}"
    );
}

#[test]
fn a_wrong_type_is_named() {
    let err = refused(&sprint2().replace("keep_last_images = 10", "keep_last_images = \"ten\""));
    assert!(err.contains("step T2.1 (ecr_repository)") && err.contains("expected u32"), "{err}");
}

#[test]
fn a_missing_environment_variable_says_where_to_define_it() {
    let err = refused(&sprint2().replace("${env.rds_instance}", "${env.rds_instanse}"));
    assert_eq!(
        err,
        "runbooks/sprint-2.toml: step T2.3, field `instance`: variable `rds_instanse` is not defined; add \
         `rds_instanse = \"…\"` to [vars] in runbooks/environments/local.toml, or pass --var rds_instanse=…"
    );
}

#[test]
fn a_missing_runbook_variable_says_where_to_define_it() {
    let err = refused(&sprint2().replace("name = \"${service}\"", "name = \"${servcie}\""));
    assert!(
        err.contains("variable `servcie` is not defined") && err.contains("[vars] in runbooks/sprint-2.toml"),
        "{err}"
    );
}

#[test]
fn a_reference_to_a_step_that_is_not_upstream_says_which_need_to_add() {
    let err = refused(&sprint2().replace("database = \"dixie\"", "database = \"${steps.T2.1.repository_uri}\""));
    assert!(
        err.contains(
            "bad reference `${steps.T2.1.repository_uri}`: T2.3 does not need T2.1; add \"T2.1\" to its `needs`"
        ),
        "{err}"
    );
}

#[test]
fn a_reference_to_an_output_that_does_not_exist_lists_the_outputs() {
    let err = refused(&sprint2().replace("${steps.T2.1.repository_uri}", "${steps.T2.1.repo_uri}"));
    assert!(
        err.contains("step T2.1 has no output `repo_uri`; it has: repository_uri, repository_arn, registry_id"),
        "{err}"
    );
}

#[test]
fn malformed_toml_names_the_line() {
    let err = refused(&sprint2().replace("[[steps]]", "[[steps]"));
    assert!(err.starts_with("runbooks/sprint-2.toml: TOML parse error at line"), "{err}");
}

#[test]
fn duplicate_ids_unknown_needs_and_a_wrong_name_are_refused() {
    let err = refused(&sprint2().replace("id = \"T2.3\"", "id = \"T2.1\"").replace("\"T2.4\", \"T2.3\"", "\"T2.4\""));
    assert!(err.contains("step id `T2.1` appears twice"), "{err}");
    let err = refused(&sprint2().replace("needs = [\"T2.1\"]", "needs = [\"T2.0\"]"));
    assert_eq!(
        err,
        "runbooks/sprint-2.toml: step T2.2 needs `T2.0`, which is not a step of this runbook; steps: T2.1, T2.2, \
         T2.3, T2.4, T2.5, T2.6, T2.7, T2.8"
    );
    let err = refused(&sprint2().replace("name = \"sprint-2\"", "name = \"sprint-3\""));
    assert!(err.contains("the file says name = \"sprint-3\" but is named sprint-2.toml"), "{err}");
}

#[test]
fn variables_that_refer_to_each_other_in_a_loop_are_refused() {
    let text = sprint2().replace("image_tag = \"\"", "image_tag = \"${other}\"\nother = \"${image_tag}\"");
    assert!(refused(&text).contains("variables refer to each other in a loop (image_tag → other → image_tag)"));
}

/// A chain of vars with no loop resolves however deep it is (it stopped at 8 and was called a
/// loop).
#[test]
fn a_long_chain_of_variables_without_a_loop_resolves() {
    let chain: String = (0..20).map(|i| format!("v{i} = \"${{v{}}}\"\n", i + 1)).collect();
    let text = sprint2().replace("image_tag = \"\"", &format!("image_tag = \"${{v0}}\"\n{chain}v20 = \"3f2a9c1\""));
    let book = load_with(&text, &env("local"), &[]).unwrap_or_else(|e| panic!("{e}"));
    let tag = book.step("T2.2").unwrap().params.get("tag").and_then(|t| t.as_str()).map(str::to_string);
    assert_eq!(tag.as_deref(), Some("3f2a9c1"));
}

#[test]
fn latest_is_refused_wherever_a_tag_appears() {
    let err = load_with(&sprint2(), &env("local"), &[("image_tag", "latest")]).err().unwrap().to_string();
    assert!(err.starts_with("--var image_tag: image_tag = \"latest\" is refused"), "{err}");
    let in_image = sprint2().replace("tag = \"${image_tag}\"", "tag = \"latest\"");
    assert!(refused(&in_image).contains("step T2.2 (image): params: image tag \"latest\" is refused"));
    let in_terraform =
        sprint2().replace("vars = { image_tag = \"${steps.T2.2.image_tag}\" }", "vars = { image_tag = \"latest\" }");
    assert!(
        refused(&in_terraform)
            .contains("step T2.4 (terraform): params: vars.image_tag: image tag \"latest\" is refused")
    );
    let in_deploy = sprint2().replace(
        "image_tag = \"${steps.T2.2.image_tag}\"\nimage_repository",
        "image_tag = \"latest\"\nimage_repository",
    );
    assert!(refused(&in_deploy).contains("step T2.6 (ecs_deploy): params: image tag \"latest\" is refused"));
    let bad = load_with(&sprint2(), &env("local"), &[("image_tag", "a b/c")]).err().unwrap().to_string();
    assert!(bad.contains("step T2.2 (image)") && bad.contains("is not a Docker tag"), "{bad}");
}

#[test]
fn the_inputs_hash_follows_the_environment_and_the_overrides() {
    let a = load_with(&sprint2(), &env("local"), &[]).unwrap();
    let b = load_with(&sprint2(), &env("local"), &[("image_tag", "abc1234")]).unwrap();
    let c = load_with(&sprint2(), &env("armitage"), &[]).unwrap();
    assert_ne!(a.inputs_hash, b.inputs_hash);
    assert_ne!(a.inputs_hash, c.inputs_hash);
    assert_eq!(a.hash, c.hash, "the same runbook file");
}

#[test]
fn step_outputs_fill_references_at_run_time() {
    let book = load_with(&sprint2(), &env("local"), &[]).unwrap();
    let t22 = book.step("T2.2").unwrap();
    let err = t22.typed(book.registry, &BTreeMap::new()).unwrap_err();
    assert!(err.contains("inputs not available yet: ${steps.T2.1.repository_uri}"), "{err}");
    let outputs =
        BTreeMap::from([("T2.1".to_string(), BTreeMap::from([("repository_uri".to_string(), "r".to_string())]))]);
    assert!(t22.typed(book.registry, &outputs).is_ok());
}

#[test]
fn values_sent_to_apis_paths_and_urls_are_checked_before_anything_runs() {
    let cases: &[(&str, &str, &str)] = &[
        ("name = \"${service}\"", "name = \"\"", "name = \"\" is not an ECR repository name"),
        ("name = \"${service}\"", "name = \"Dixie Armitage\"", "is not an ECR repository name"),
        ("name = \"${service}\"", "name = \"dixie--armitage\"", "is not an ECR repository name"),
        (
            "keep_last_images = 10",
            "keep_last_images = 0",
            "keep_last_images = 0: the lifecycle policy keeps 1 to 1000 images",
        ),
        (
            "health_url = \"${env.dixie_health_url}\"",
            "health_url = \"not a url\"",
            "health_url = \"not a url\" is not an http",
        ),
        ("dixie_health_url = \"${env.dixie_health_url}\"", "dixie_health_url = \"ftp:/bad\"", "is not an http"),
    ];
    for (from, to, says) in cases {
        let text = sprint2().replacen(from, to, 1);
        assert_ne!(text, sprint2(), "{from} is in the runbook");
        let err = refused(&text);
        assert!(err.contains(says), "{to}: expected {says:?} in {err}");
    }
}

#[test]
fn step_ids_that_cannot_be_typed_are_refused_without_printing_them_raw() {
    // TOML escapes: a NUL, an ANSI colour sequence, nothing at all.
    for id in [r#""T2\u00001""#, r#""\u001b[31mT2.1""#, r#""""#] {
        let text =
            sprint2().replace(r#"id = "T2.1""#, &format!("id = {id}")).replace(r#"["T2.1"]"#, &format!("[{id}]"));
        let err = refused(&text);
        assert!(err.contains("is not an id"), "{err}");
        assert!(!err.contains('\u{1b}') && !err.contains('\u{0}'), "printed raw: {err:?}");
    }
    let long = "x".repeat(100_000);
    let text = sprint2()
        .replace(r#"id = "T2.3""#, &format!(r#"id = "{long}""#))
        .replace(r#""T2.4", "T2.3""#, &format!(r#""T2.4", "{long}""#));
    let err = refused(&text);
    assert!(err.contains("is not an id") && err.len() < 400, "{} bytes", err.len());
}

#[test]
fn an_empty_runbook_and_unknown_variables_are_refused() {
    let empty = "name = \"sprint-2\"\nsteps = []\n";
    assert!(refused(empty).contains("the runbook has no steps"));
    let err = load_with(&sprint2(), &env("local"), &[("nonexistent", "1")]).err().unwrap().to_string();
    assert!(
        err.contains(
            "--var nonexistent: this runbook has no variable `nonexistent`; its variables: image_tag, service"
        ),
        "{err}"
    );
}

#[test]
fn files_a_step_will_read_are_checked_before_a_run() {
    let book = load_with(&sprint2(), &env("local"), &[]).unwrap();
    book.check_files(&project()).unwrap();
    let outside = sprint2().replace(r#"context = "${env.app_dir}""#, r#"context = "../../etc""#);
    let err = load_with(&outside, &env("local"), &[]).unwrap().check_files(&project()).unwrap_err().to_string();
    assert!(
        err.contains(r#"step T2.2 (image): params: context = "../../etc": "#)
            && err.contains("Dockerfile does not exist"),
        "{err}"
    );
    let no_tf = sprint2().replace(r#"dir = "${env.app_dir}/deploy/terraform""#, r#"dir = "${env.app_dir}""#);
    let err = load_with(&no_tf, &env("local"), &[]).unwrap().check_files(&project()).unwrap_err().to_string();
    assert!(err.contains("step T2.4 (terraform)") && err.contains("holds no *.tf file"), "{err}");
}

#[test]
fn sql_identifiers_and_param_sources_are_checked_before_anything_runs() {
    let err = refused(&sprint2().replace(r#"database = "dixie""#, r#"database = "dixie; DROP TABLE x""#));
    assert!(err.contains("step T2.3 (database)") && err.contains("is not a plain PostgreSQL identifier"), "{err}");
    let two_sources = sprint2().replace(r#"generate = "hex32" }"#, r#"generate = "hex32", value = "x" }"#);
    let err = refused(&two_sources);
    assert!(err.contains("step T2.5 (ssm_params)") && err.contains("give exactly one of"), "{err}");
}

/// A wait a user can write is bounded before anything runs: `checks_within` near u64::MAX made
/// T3.2 merge three PRs, then panic adding its 30 s margin.
#[test]
fn a_wait_longer_than_a_day_is_refused_before_anything_runs() {
    let text = std::fs::read_to_string(project().join("runbooks/sprint-3.toml")).unwrap();
    let file = |text: &str| NamedFile {
        path: PathBuf::from("runbooks/sprint-3.toml"),
        hash: sha256_hex(text.as_bytes()),
        text: text.to_string(),
    };
    for (within, refused) in
        [("18446744073709551615", true), ("18446744073709551586", true), ("86401", true), ("86400", false)]
    {
        let mut env = env("local");
        env.vars.insert("github_checks_within".into(), within.into());
        let loaded = Runbook::from_file(steps::KINDS, file(&text), "sprint-3", &env, &BTreeMap::new());
        match (loaded, refused) {
            (Err(e), true) => assert!(e.to_string().contains("checks_within = "), "{e}"),
            (Ok(_), false) => {}
            (Err(e), false) => panic!("{within}: {e}"),
            (Ok(_), true) => panic!("{within} accepted"),
        }
    }
}

/// An environment value is used as written: a `${…}` in it was kept, passed validation as a
/// placeholder, and failed only at run time ("inputs not available yet"), after the steps before
/// it had acted.
#[test]
fn a_reference_inside_an_environment_value_is_refused_before_anything_runs() {
    for inside in ["${steps.NOPE.out}", "${steps.T2.1.repository_uri}", "${service}", "${env.cluster}", "a-${"] {
        let mut env = env("local");
        env.vars.insert("rds_instance".into(), inside.into());
        let err = load_with(&sprint2(), &env, &[]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("step T2.3, field `instance`")
                && err.contains("the value of `rds_instance` in runbooks/environments/local.toml holds `${`"),
            "{inside}: {err}"
        );
    }
}

/// A value shaped like a secret (a token, a URL with its credentials, a key) that a param
/// refuses is never quoted in the refusal, at load or at run time; nor is a huge one quoted
/// whole.
#[test]
fn a_refused_value_shaped_like_a_secret_is_not_shown_and_a_huge_one_is_cut() {
    let token = "ghp_R2d2C3poX9y8W7v6U5t4S3r2Q1p0O9n8M7l6";
    let mut local = env("local");
    local.vars.insert("deploy_wait_seconds".into(), token.into());
    let err = load_with(&sprint2(), &local, &[]).err().unwrap().to_string();
    assert!(err.contains("step T2.6 (ecs_deploy)") && err.contains("(not shown: an API token)"), "{err}");
    assert!(!err.contains("R2d2C3po"), "{err}");

    let webhook = "https://hooks.slack.com:x/services/T000/B000/Xyz123SecretPart";
    let mut local = env("local");
    local.vars.insert("dixie_health_url".into(), webhook.into());
    let err = load_with(&sprint2(), &local, &[]).err().unwrap().to_string();
    assert!(err.contains("health_url") && err.contains("hooks.slack.com"), "{err}");
    assert!(!err.contains("Xyz123SecretPart"), "{err}");

    let book = load_with(&sprint2(), &env("local"), &[]).unwrap();
    let url = "postgres://dixie:Pw0rdSecret@db.example.com/dixie";
    let outputs = BTreeMap::from([("T2.2".to_string(), BTreeMap::from([("image_tag".to_string(), url.to_string())]))]);
    let err = book.step("T2.4").unwrap().typed(book.registry, &outputs).err().unwrap_or_default();
    assert!(err.contains("image_tag") && err.contains("db.example.com"), "{err}");
    assert!(!err.contains("Pw0rdSecret") && !err.contains("dixie:"), "{err}");

    let mut local = env("local");
    local.vars.insert("deploy_wait_seconds".into(), "9".repeat(50_000));
    let err = load_with(&sprint2(), &local, &[]).err().unwrap().to_string();
    assert!(err.contains("step T2.6 (ecs_deploy)") && err.len() < 1_000, "{} bytes: {}", err.len(), &err[..300]);
}

#[test]
fn smoke_and_release_load_against_both_environments() {
    for name in ["local", "armitage"] {
        for runbook in ["smoke", "release"] {
            let text = std::fs::read_to_string(project().join(format!("runbooks/{runbook}.toml"))).unwrap();
            let file = NamedFile {
                path: PathBuf::from(format!("runbooks/{runbook}.toml")),
                hash: sha256_hex(text.as_bytes()),
                text,
            };
            let book = Runbook::from_file(steps::KINDS, file, runbook, &env(name), &BTreeMap::new())
                .unwrap_or_else(|e| panic!("{runbook} on {name}: {e}"));
            assert_eq!(book.graph.topological().last().map(String::as_str), Some("smoke"), "{runbook}");
        }
    }
}

/// The release runs sprint 2 unchanged: its file repeats sprint-2's steps and vars, and this
/// test holds it to them, so that a change to sprint 2 cannot leave the release behind.
#[test]
fn release_is_sprint_2_then_the_smoke_gate() {
    let table = |name: &str| -> toml::Table {
        toml::from_str(&std::fs::read_to_string(project().join(format!("runbooks/{name}.toml"))).unwrap()).unwrap()
    };
    let (release, sprint2, smoke) = (table("release"), table("sprint-2"), table("smoke"));
    assert_eq!(release["vars"], sprint2["vars"]);
    let steps = release["steps"].as_array().unwrap();
    let (gate, deploy) = steps.split_last().unwrap();
    assert_eq!(deploy, sprint2["steps"].as_array().unwrap().as_slice(), "sprint-2's steps, unchanged");
    let mut gate = gate.as_table().unwrap().clone();
    assert_eq!(gate.remove("needs"), Some(toml::Value::Array(vec!["T2.8".into()])));
    assert_eq!(&toml::Value::Table(gate), &smoke["steps"][0], "the gate of runbooks/smoke.toml");
}

/// The rotation and the revocation load against both environments, in 004's order, with the
/// waits each environment gives (the ring's seconds, Armitage's hours).
#[test]
fn rotate_and_revoke_load_against_both_environments() {
    for (name, order) in [
        ("rotate-jwt-key", vec!["T4.1", "T4.2", "T4.3", "T4.4", "T4.5", "T4.6", "T4.7", "T4.8"]),
        ("revoke-jwt-key", vec!["R1", "R2"]),
    ] {
        for environment in ["local", "armitage"] {
            let text = std::fs::read_to_string(project().join(format!("runbooks/{name}.toml"))).unwrap();
            let file = NamedFile {
                path: PathBuf::from(format!("runbooks/{name}.toml")),
                hash: sha256_hex(text.as_bytes()),
                text,
            };
            let vars = if name == "revoke-jwt-key" {
                BTreeMap::from([("kid".to_string(), "hs256".to_string())])
            } else {
                BTreeMap::new()
            };
            let book = Runbook::from_file(steps::KINDS, file, name, &env(environment), &vars)
                .unwrap_or_else(|e| panic!("{name} on {environment}: {e}"));
            assert_eq!(book.graph.topological(), order, "{name} on {environment}");
        }
    }
}
