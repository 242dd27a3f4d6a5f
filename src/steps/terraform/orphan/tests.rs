use serde_json::json;

use super::*;

/// Terraform 1.11's `-json` diagnostic for a log group an earlier apply created but never wrote
/// to its state (trimmed: the range and snippet are left out).
fn log_group_exists() -> Value {
    json!({
        "severity": "error",
        "summary": "creating CloudWatch Logs Log Group (/ecs/dixie-armitage): operation error CloudWatch Logs: \
                    CreateLogGroup, https response error StatusCode: 400, RequestID: 5b1c, \
                    ResourceAlreadyExistsException: The specified log group already exists",
        "detail": "",
        "address": "aws_cloudwatch_log_group.dixie",
    })
}

fn with(mut diagnostic: Value, field: &str, value: Value) -> Value {
    diagnostic[field] = value;
    diagnostic
}

fn without(mut diagnostic: Value, field: &str) -> Value {
    diagnostic.as_object_mut().unwrap().remove(field);
    diagnostic
}

#[test]
fn a_diagnostic_without_a_resource_address_names_no_orphan() {
    assert_eq!(Orphan::from_diagnostic(&without(log_group_exists(), "address")), None);
    for address in [json!(""), json!(null), json!(42), json!("aws_cloudwatch_log_group"), json!("not an address")] {
        assert_eq!(Orphan::from_diagnostic(&with(log_group_exists(), "address", address.clone())), None, "{address}");
    }
    assert_eq!(
        Orphan::from_diagnostic(&with(log_group_exists(), "address", json!("data.aws_iam_role.x"))),
        None,
        "a data source is read, never created"
    );
}

#[test]
fn a_diagnostic_that_is_not_an_already_exists_error_names_no_orphan() {
    assert_eq!(Orphan::from_diagnostic(&with(log_group_exists(), "severity", json!("warning"))), None);
    assert_eq!(Orphan::from_diagnostic(&without(log_group_exists(), "severity")), None);
    let throttled = "creating CloudWatch Logs Log Group (/ecs/dixie-armitage): ThrottlingException: Rate exceeded";
    assert_eq!(Orphan::from_diagnostic(&with(log_group_exists(), "summary", json!(throttled))), None);
    assert_eq!(Orphan::from_diagnostic(&without(log_group_exists(), "summary")), None);
    assert_eq!(
        Orphan::from_diagnostic(&with(log_group_exists(), "summary", json!("reading Log Group: already exists"))),
        None,
        "only a create that fails for an existing resource"
    );
    assert_eq!(Orphan::from_diagnostic(&json!("already exists")), None);
    assert_eq!(Orphan::from_diagnostic(&json!(null)), None);
}

#[test]
fn a_log_group_that_already_exists_is_an_orphan_imported_by_its_name() {
    let orphan = Orphan::from_diagnostic(&log_group_exists()).expect("an orphan");
    assert_eq!(orphan.address, "aws_cloudwatch_log_group.dixie");
    assert_eq!(orphan.id.as_deref(), Some("/ecs/dixie-armitage"));
    assert_eq!(
        orphan.import_command().as_deref(),
        Some("terraform import aws_cloudwatch_log_group.dixie /ecs/dixie-armitage")
    );
    // The same in a module, with an index that holds a dot.
    let nested = with(log_group_exists(), "address", json!("module.app.aws_cloudwatch_log_group.dixie[\"a.b\"]"));
    let orphan = Orphan::from_diagnostic(&nested).expect("an orphan in a module");
    assert_eq!(
        orphan.import_command().as_deref(),
        Some("terraform import 'module.app.aws_cloudwatch_log_group.dixie[\"a.b\"]' /ecs/dixie-armitage")
    );
}

#[test]
fn an_import_id_the_error_does_not_carry_is_left_to_look_up_never_guessed() {
    // The name is the ID, but the error does not say it.
    let unnamed = "creating CloudWatch Logs Log Group: ResourceAlreadyExistsException: already exists";
    let orphan = Orphan::from_diagnostic(&with(log_group_exists(), "summary", json!(unnamed))).unwrap();
    assert_eq!((orphan.id.as_deref(), orphan.import_command()), (None, None));
    // A name that no shell should see unquoted, or one with a space: not an ID runbook passes on.
    for odd in [
        "creating CloudWatch Logs Log Group (a b): already exists",
        "creating CloudWatch Logs Log Group (): already exists",
    ] {
        let orphan = Orphan::from_diagnostic(&with(log_group_exists(), "summary", json!(odd))).unwrap();
        assert_eq!(orphan.id, None, "{odd}");
    }
    // A security group's ID is its sg-…, not the name the error gives: named, to look up.
    let sg = json!({
        "severity": "error",
        "summary": "creating Security Group (dixie-armitage): operation error EC2: CreateSecurityGroup, \
                    api error InvalidGroup.Duplicate: The security group 'dixie-armitage' already exists for VPC 'vpc-1'",
        "address": "aws_security_group.dixie",
    });
    let orphan = Orphan::from_diagnostic(&sg).unwrap();
    assert_eq!((orphan.address.as_str(), orphan.id.as_deref()), ("aws_security_group.dixie", None));
    assert!(
        orphan.look_up().contains("describe-security-groups") && orphan.look_up().contains("dixie-armitage"),
        "{}",
        orphan.look_up()
    );
    // A type runbook has no table entry for: named, and sent to the provider's documentation.
    let other = with(log_group_exists(), "address", json!("aws_kinesis_stream.events"));
    let orphan = Orphan::from_diagnostic(&other).unwrap();
    assert_eq!(orphan.id, None);
    assert!(orphan.look_up().contains("aws_kinesis_stream"), "{}", orphan.look_up());
}

#[test]
fn each_table_entry_whose_id_is_the_name_reads_it_from_the_providers_error() {
    let cases = [
        (
            "aws_iam_role.task",
            "creating IAM Role (dixie-armitage-task): operation error IAM: CreateRole, api error EntityAlreadyExists: Role with name dixie-armitage-task already exists.",
            "dixie-armitage-task",
        ),
        (
            "aws_ssm_parameter.dixie[\"JWT\"]",
            "creating SSM Parameter (/dixie/armitage/JWT): operation error SSM: PutParameter, api error ParameterAlreadyExists: The parameter already exists.",
            "/dixie/armitage/JWT",
        ),
        (
            "aws_elasticache_subnet_group.redis",
            "creating ElastiCache Subnet Group (dixie-armitage): CacheSubnetGroupAlreadyExists: exists",
            "dixie-armitage",
        ),
    ];
    for (address, summary, id) in cases {
        let orphan = Orphan::from_diagnostic(&json!({"severity": "error", "summary": summary, "address": address}));
        assert_eq!(orphan.and_then(|o| o.id), Some(id.to_string()), "{address}");
    }
}
