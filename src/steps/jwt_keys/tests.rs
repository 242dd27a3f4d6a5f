//! The judges of `jwt_keys` without the ring: where a rotation stands, what each action would
//! write from each stage, the params it refuses. The ring tests (tests/cli/rotate.rs) run it.

use super::*;

const OLD: &str = "xzYD3qI_XP9PLQczk-e3z6FBsUkvqB9tRw2HxJsAvQE";
const NEW: &str = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

fn set(active: &str, published: &[&str]) -> KeySet {
    KeySet { active: active.into(), published: published.iter().map(|k| k.to_string()).collect() }
}

fn params(action: &str, extra: &str) -> Result<Params, String> {
    let text = format!(
        "action = \"{action}\"\nkeyset_param = \"/dixie/armitage/DIXIE_JWT_KEYSET\"\nkeys_path = \
         \"/dixie/armitage/jwt-keys/\"\n{extra}"
    );
    let value: toml::Value = toml::from_str(&text).map_err(|e| e.to_string())?;
    let step = Params::deserialize(value).map_err(|e| e.to_string())?;
    step.validate()?;
    Ok(step)
}

const REDEPLOY: &str = "[redeploy]\ncluster = \"c\"\nservice = \"dixie-armitage\"\ninputs = \
                        [\"/dixie/armitage/DIXIE_JWT_KEYSET\"]\nhealth_url = \"http://d/api/health\"\nhealth = { rule \
                        = \"dixie\" }\nwait_seconds = 40\n";

#[test]
fn each_key_set_is_one_stage_of_a_rotation_or_a_conflict() {
    for old in [OLD, HS256] {
        assert_eq!(stage(&set(old, &[old]), old, NEW), Ok(Stage::Pending));
        assert_eq!(stage(&set(old, &[old, NEW]), old, NEW), Ok(Stage::Published));
        assert_eq!(stage(&set(NEW, &[old, NEW]), old, NEW), Ok(Stage::Switched));
        assert_eq!(stage(&set(NEW, &[NEW]), old, NEW), Ok(Stage::Retired));
    }
    // The order says which is new: [new, old] is no stage of old → new.
    let reversed = stage(&set(OLD, &[NEW, OLD]), OLD, NEW).unwrap_err();
    assert!(reversed.contains("is not a stage of the rotation"), "{reversed}");
    // A revocation left the old kid out while it was active; another kid entirely.
    assert!(stage(&set(OLD, &[OLD, NEW, HS256]), OLD, NEW).is_err());
    assert!(stage(&set(HS256, &[HS256]), OLD, NEW).is_err());
}

#[test]
fn each_write_action_wants_its_key_set_from_the_stage_before_it_and_nothing_after() {
    let with = |action: &str| {
        params(action, &format!("new_kid = \"{NEW}\"\nold_kid = \"hs256\"\ndixie_url = \"http://d\"\njwks_url = \"http://d/j\"\n{REDEPLOY}"))
            .unwrap()
    };
    let publish = with("publish");
    assert_eq!(
        publish.wanted(Stage::Pending).unwrap().unwrap().to_json(),
        format!(r#"{{"active":"hs256","published":["hs256","{NEW}"]}}"#)
    );
    for later in [Stage::Published, Stage::Switched, Stage::Retired] {
        assert_eq!(publish.wanted(later), Ok(None));
    }
    let switch = with("switch");
    assert!(switch.wanted(Stage::Pending).unwrap_err().contains("the publish step comes first"));
    assert_eq!(switch.wanted(Stage::Published).unwrap().unwrap(), set(NEW, &[HS256, NEW]));
    assert_eq!(switch.wanted(Stage::Retired), Ok(None));
    let retire = with("retire");
    assert!(retire.wanted(Stage::Published).unwrap_err().contains("the switch step comes first"));
    assert_eq!(
        retire.wanted(Stage::Switched).unwrap().unwrap().to_json(),
        format!(r#"{{"active":"{NEW}","published":["{NEW}"]}}"#)
    );
    assert_eq!(retire.deletion(), "delete nothing (hs256 is 001's DIXIE_JWT_PRIVATE_KEY, terraform's)");
}

#[test]
fn a_wait_counts_from_a_whole_second_never_before_the_change() {
    assert_eq!(utc_ceil(1_796_565_900_000), "2026-12-06T14:05:00Z");
    assert_eq!(utc_ceil(1_796_565_900_001), "2026-12-06T14:05:01Z");
    assert_eq!(utc_ceil(1_796_565_900_999), "2026-12-06T14:05:01Z");
}

#[test]
fn max_age_is_read_from_cache_control() {
    assert_eq!(max_age("public, max-age=10"), Some(10));
    assert_eq!(max_age("max-age=3600"), Some(3600));
    assert_eq!(max_age("no-store"), None);
    assert_eq!(max_age("max-age=soon"), None);
}

#[test]
fn params_the_kind_refuses_name_the_field() {
    let refused = |action: &str, extra: &str| params(action, extra).unwrap_err();
    assert!(params("create", "").is_ok());
    assert!(refused("rotate", "").contains("unknown variant `rotate`"));
    assert!(refused("publish", "").contains("new_kid is empty"));
    assert!(
        refused("publish", &format!("new_kid = \"{NEW}\"\nold_kid = \"{NEW}\"\n{REDEPLOY}")).contains("the same kid")
    );
    assert!(
        refused("publish", &format!("new_kid = \"hs256\"\nold_kid = \"{OLD}\""))
            .contains("new_kid = \"hs256\" is not a kid")
    );
    let short = &NEW[..42];
    assert!(refused("switch", &format!("new_kid = \"{short}\"\nold_kid = \"{OLD}\"")).contains("is not a kid"));
    assert_eq!(
        refused("publish", &format!("new_kid = \"{NEW}\"\nold_kid = \"{OLD}\"")),
        "action publish needs `redeploy`"
    );
    let elsewhere = REDEPLOY.replace("inputs = [\"/dixie/armitage/DIXIE_JWT_KEYSET\"]", "inputs = [\"/finn/\"]");
    assert!(
        refused("switch", &format!("new_kid = \"{NEW}\"\nold_kid = \"{OLD}\"\n{elsewhere}"))
            .starts_with("redeploy.inputs must hold")
    );
    let above = REDEPLOY.replace("inputs = [\"/dixie/armitage/DIXIE_JWT_KEYSET\"]", "inputs = [\"/dixie/armitage/\"]");
    assert!(params("switch", &format!("new_kid = \"{NEW}\"\nold_kid = \"{OLD}\"\n{above}")).is_ok());
    assert_eq!(
        refused("retire", &format!("new_kid = \"{NEW}\"\nold_kid = \"{OLD}\"\n{REDEPLOY}")),
        "action retire needs `dixie_url`"
    );
    assert_eq!(
        refused("check_jwks", &format!("new_kid = \"{NEW}\"\nold_kid = \"{OLD}\"")),
        "action check_jwks needs `jwks_url`"
    );
    assert!(
        refused("check_jwks", &format!("new_kid = \"{NEW}\"\nold_kid = \"{OLD}\"\njwks_url = \"ftp://x\""))
            .contains("is not an http:// or https:// URL")
    );
    assert_eq!(
        refused("check_tokens", &format!("new_kid = \"{NEW}\"\nold_kid = \"{OLD}\"\ndixie_url = \"http://d\"")),
        "action check_tokens needs `admin_key`"
    );
    let raw = |text: &str| {
        let step = Params::deserialize(toml::from_str::<toml::Value>(text).unwrap()).unwrap();
        step.validate().unwrap_err()
    };
    let keyset = "action = \"create\"\nkeyset_param = \"/dixie/armitage/DIXIE_JWT_KEYSET\"\n";
    assert!(raw(&format!("{keyset}keys_path = \"/dixie/armitage/jwt-keys\"")).starts_with("keys_path must be a path"));
    assert!(raw(&format!("{keyset}keys_path = \"/dixie/armitage/\"")).contains("is under keys_path"));
    assert!(refused("create", "rotate_after_days = 3651").contains("more than ten years"));
    assert!(params("create", "rotate_after_days = 3650").is_ok());
    assert!(
        refused(
            "check_jwks",
            &format!("new_kid = \"{NEW}\"\nold_kid = \"{OLD}\"\njwks_url = \"http://d/j\"\ncache_wait_seconds = 86401")
        )
        .contains("longer than a day")
    );
    // An upstream output not known yet is checked when the step runs.
    assert!(
        params("check_jwks", "new_kid = \"placeholder\"\nold_kid = \"placeholder\"\njwks_url = \"http://d/j\"").is_ok()
    );
}

#[test]
fn publish_needs_the_jwks_that_proves_dixie_read_the_key_set() {
    let without = params("publish", &format!("new_kid = \"{NEW}\"\nold_kid = \"{OLD}\"\n{REDEPLOY}")).unwrap_err();
    assert_eq!(without, "action publish needs `jwks_url`");
}

#[test]
fn a_revocation_leaves_the_new_kid_alone_from_any_stage_and_names_what_it_cannot_judge() {
    let revoke =
        params("revoke", &format!("new_kid = \"{NEW}\"\nold_kid = \"{OLD}\"\ndixie_url = \"http://d\"\n{REDEPLOY}"))
            .unwrap();
    let world =
        |keyset: KeySet| World { keyset, keyset_modified_ms: Some(0), history: Vec::new(), keys: BTreeMap::new() };
    let alone = set(NEW, &[NEW]);
    for before in [set(OLD, &[OLD]), set(OLD, &[OLD, NEW]), set(NEW, &[OLD, NEW]), set(OLD, &[HS256, OLD])] {
        assert_eq!(revoke.wanted_in(&world(before)), Ok(Some(alone.clone())));
    }
    assert_eq!(revoke.wanted_in(&world(alone.clone())), Ok(None));
    assert!(revoke.wanted_in(&world(set(HS256, &[HS256]))).unwrap_err().contains("no longer publishes"));
    assert_eq!(revoke.deletion(), format!("delete /dixie/armitage/jwt-keys/{OLD}"));
    let empty = params("create", "revoke_kid = \"\"").unwrap_err();
    assert!(empty.starts_with("revoke_kid is empty"), "{empty}");
    assert!(params("create", "revoke_kid = \"hs256\"").is_ok());
}
