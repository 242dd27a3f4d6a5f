use serde_json::json;

use super::*;

/// The egress rule `aws_vpc_security_group_egress_rule.dixie["otlp"]` of the ring's module, as
/// terraform planned it: TCP 4317 to the VPC's CIDR, from Dixie's group.
fn otlp() -> Planned {
    Planned {
        egress: true,
        protocol: "tcp".into(),
        from_port: 4317,
        to_port: 4317,
        peers: vec![Peer::Ipv4("10.0.0.0/16".into())],
        description: Some("Tempo OTLP".into()),
        groups: vec!["sg-dixie".into()],
    }
}

/// The rule AWS holds for it, under `id`.
fn otlp_in_aws(id: &str) -> Existing {
    Existing {
        id: id.into(),
        group: "sg-dixie".into(),
        egress: true,
        protocol: "tcp".into(),
        from_port: 4317,
        to_port: 4317,
        peer: Some(Peer::Ipv4("10.0.0.0/16".into())),
        description: Some("Tempo OTLP".into()),
    }
}

fn ids(found: Vec<&Existing>) -> Vec<&str> {
    found.iter().map(|r| r.id.as_str()).collect()
}

fn none_in_state() -> BTreeSet<String> {
    BTreeSet::new()
}

#[test]
fn the_one_rule_that_matches_is_the_candidate() {
    let postgres = Existing { from_port: 5432, to_port: 5432, ..otlp_in_aws("sgr-postgres") };
    let aws = [postgres, otlp_in_aws("sgr-otlp")];
    assert_eq!(ids(candidates(&otlp(), &aws, &none_in_state())), ["sgr-otlp"]);
}

#[test]
fn no_rule_in_aws_is_no_candidate() {
    assert!(candidates(&otlp(), &[], &none_in_state()).is_empty());
    // Each part of the rule differs once: no candidate.
    let differing = [
        Existing { group: "sg-other".into(), ..otlp_in_aws("sgr-group") },
        Existing { protocol: "udp".into(), ..otlp_in_aws("sgr-protocol") },
        Existing { from_port: 4318, ..otlp_in_aws("sgr-from") },
        Existing { to_port: 4318, ..otlp_in_aws("sgr-to") },
        Existing { peer: Some(Peer::Ipv4("10.1.0.0/16".into())), ..otlp_in_aws("sgr-cidr") },
        Existing { peer: Some(Peer::Group("sg-dixie".into())), ..otlp_in_aws("sgr-peer-kind") },
        Existing { peer: None, ..otlp_in_aws("sgr-no-peer") },
    ];
    assert_eq!(ids(candidates(&otlp(), &differing, &none_in_state())), Vec::<&str>::new());
}

#[test]
fn two_rules_that_match_are_two_candidates_never_one_chosen() {
    // The planned group is not known: it is one of two groups of terraform's state, and each
    // holds such a rule.
    let planned = Planned { groups: vec!["sg-dixie".into(), "sg-finn".into()], ..otlp() };
    let aws = [otlp_in_aws("sgr-a"), Existing { group: "sg-finn".into(), ..otlp_in_aws("sgr-b") }];
    assert_eq!(ids(candidates(&planned, &aws, &none_in_state())), ["sgr-a", "sgr-b"]);
}

#[test]
fn a_rule_terraform_already_holds_in_its_state_is_no_candidate() {
    let aws = [otlp_in_aws("sgr-managed"), otlp_in_aws("sgr-orphan")];
    let in_state = BTreeSet::from(["sgr-managed".to_string()]);
    assert_eq!(ids(candidates(&otlp(), &aws, &in_state)), ["sgr-orphan"]);
    let all = BTreeSet::from(["sgr-managed".to_string(), "sgr-orphan".to_string()]);
    assert!(candidates(&otlp(), &aws, &all).is_empty());
}

#[test]
fn a_rule_of_the_other_direction_is_no_candidate() {
    let ingress = Existing { egress: false, ..otlp_in_aws("sgr-ingress") };
    assert!(candidates(&otlp(), std::slice::from_ref(&ingress), &none_in_state()).is_empty());
    let planned_ingress = Planned { egress: false, ..otlp() };
    assert_eq!(
        ids(candidates(&planned_ingress, &[ingress, otlp_in_aws("sgr-egress")], &none_in_state())),
        ["sgr-ingress"]
    );
}

#[test]
fn a_rule_whose_description_differs_is_no_candidate() {
    let other = Existing { description: Some("Jaeger".into()), ..otlp_in_aws("sgr-jaeger") };
    assert!(candidates(&otlp(), std::slice::from_ref(&other), &none_in_state()).is_empty());
    // Planned without a description: a rule that has one is another rule.
    let bare = Planned { description: None, ..otlp() };
    assert!(candidates(&bare, &[other], &none_in_state()).is_empty());
}

/// moto drops the description of a rule that references a group; AWS leaves it out of a rule
/// that has none. Then the description says nothing either way.
#[test]
fn a_rule_whose_description_aws_does_not_return_is_a_candidate_by_the_rest() {
    for missing in [None, Some(String::new())] {
        let aws = [Existing { description: missing.clone(), ..otlp_in_aws("sgr-otlp") }];
        assert_eq!(ids(candidates(&otlp(), &aws, &none_in_state())), ["sgr-otlp"], "{missing:?}");
    }
}

#[test]
fn all_traffic_ignores_ports_and_protocol_names_are_aws_s() {
    let planned = Planned { protocol: protocol("all"), from_port: -1, to_port: -1, ..otlp() };
    let aws = [Existing { protocol: protocol("-1"), from_port: -1, to_port: -1, ..otlp_in_aws("sgr-all") }];
    assert_eq!(ids(candidates(&planned, &aws, &none_in_state())), ["sgr-all"]);
    assert_eq!(protocol("6"), "tcp");
    assert_eq!(protocol("TCP"), "tcp");
}

// ---- reading the planned rule from terraform's JSON ----

/// `terraform show -json PLAN` of the CI failure's apply, trimmed: the group is created in the
/// same apply, so the rule's `security_group_id` is unknown in the plan.
fn plan_with_unknown_group() -> Value {
    json!({
        "resource_changes": [{
            "address": "aws_vpc_security_group_egress_rule.dixie[\"otlp\"]",
            "type": "aws_vpc_security_group_egress_rule",
            "change": {
                "actions": ["create"],
                "after": {"cidr_ipv4": "10.0.0.0/16", "cidr_ipv6": null, "description": "Tempo OTLP",
                          "from_port": 4317, "to_port": 4317, "ip_protocol": "tcp", "prefix_list_id": null,
                          "referenced_security_group_id": null, "tags": null},
                "after_unknown": {"arn": true, "id": true, "security_group_id": true,
                                  "security_group_rule_id": true, "tags_all": true}
            }
        }],
        "configuration": {"root_module": {"resources": [{
            "address": "aws_vpc_security_group_egress_rule.dixie",
            "type": "aws_vpc_security_group_egress_rule",
            "expressions": {
                "security_group_id": {"references": ["aws_security_group.dixie.id", "aws_security_group.dixie"]},
                "cidr_ipv4": {"references": ["each.value.cidr", "each.value"]}
            }
        }]}}
    })
}

/// terraform's state after the failed apply: Dixie's group, the NATS group it reads, and the
/// postgres rule it recorded.
fn state() -> Value {
    json!({"values": {"root_module": {"resources": [
        {"address": "aws_security_group.dixie", "mode": "managed", "type": "aws_security_group",
         "values": {"id": "sg-dixie"}},
        {"address": "data.aws_security_group.nats", "mode": "data", "type": "aws_security_group",
         "values": {"id": "sg-nats"}},
        {"address": "aws_vpc_security_group_egress_rule.dixie[\"postgres\"]", "mode": "managed",
         "type": "aws_vpc_security_group_egress_rule",
         "values": {"id": "sgr-postgres", "security_group_rule_id": "sgr-postgres"}}
    ]}}})
}

#[test]
fn a_planned_rule_whose_group_is_unknown_is_looked_for_in_the_group_its_configuration_references() {
    let planned = planned(&plan_with_unknown_group(), &state(), "aws_vpc_security_group_egress_rule.dixie[\"otlp\"]");
    assert_eq!(planned, Ok(otlp()));
    assert_eq!(managed(&state()), BTreeSet::from(["sgr-postgres".to_string()]));
}

#[test]
fn a_planned_group_is_the_one_looked_in() {
    let mut plan = plan_with_unknown_group();
    let change = &mut plan["resource_changes"][0]["change"];
    change["after"]["security_group_id"] = json!("sg-planned");
    change["after_unknown"]["security_group_id"] = json!(false);
    let planned = planned(&plan, &state(), "aws_vpc_security_group_egress_rule.dixie[\"otlp\"]").unwrap();
    assert_eq!(planned.groups, ["sg-planned"]);
}

#[test]
fn without_a_reference_to_a_group_of_the_state_every_group_there_is_looked_in() {
    let mut plan = plan_with_unknown_group();
    plan["configuration"]["root_module"]["resources"][0]["expressions"]["security_group_id"] =
        json!({"references": ["var.group_id"]});
    let planned = planned(&plan, &state(), "aws_vpc_security_group_egress_rule.dixie[\"otlp\"]").unwrap();
    assert_eq!(planned.groups, ["sg-dixie", "sg-nats"]);
}

#[test]
fn what_the_plan_does_not_tell_is_said_not_guessed() {
    let address = "aws_vpc_security_group_egress_rule.dixie[\"otlp\"]";
    assert_eq!(planned(&json!({}), &state(), address), Err("the plan holds no change of it".to_string()));
    let mut plan = plan_with_unknown_group();
    plan["resource_changes"][0]["change"]["after_unknown"]["cidr_ipv4"] = json!(true);
    plan["resource_changes"][0]["change"]["after"]["cidr_ipv4"] = json!(null);
    assert_eq!(planned(&plan, &state(), address), Err("its cidr_ipv4 is not known before the apply".to_string()));
    let mut plan = plan_with_unknown_group();
    plan["resource_changes"][0]["change"]["after"]["cidr_ipv4"] = json!(null);
    assert!(planned(&plan, &state(), address).unwrap_err().contains("names no peer"));
    assert_eq!(
        planned(&plan_with_unknown_group(), &json!({}), address),
        Err("terraform's state holds no security group to look in".to_string())
    );
}

#[test]
fn only_the_two_rule_types_are_looked_up() {
    assert!(is_rule("aws_vpc_security_group_egress_rule.dixie[\"otlp\"]"));
    assert!(is_rule("module.app.aws_vpc_security_group_ingress_rule.from_alb[\"sg-1\"]"));
    assert!(!is_rule("aws_security_group_rule.legacy"));
    assert!(!is_rule("aws_security_group.dixie"));
}
