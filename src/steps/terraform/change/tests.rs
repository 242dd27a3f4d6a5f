use serde_json::json;

use super::*;

/// A plan as terraform 1.11 shows it (trimmed): a security group no longer configured, a
/// bastion replaced for its AMI and subnet, the ECS service and the database updated (the
/// database's password is sensitive), the ALB and a secret SSM parameter created, a data
/// source read and an unchanged cluster.
fn sample() -> Value {
    json!({
        "format_version": "1.2",
        "terraform_version": "1.11.4",
        "resource_changes": [
            {"address": "aws_db_instance.main", "mode": "managed", "type": "aws_db_instance", "name": "main",
             "change": {"actions": ["update"],
                "before": {"identifier": "dixie", "instance_class": "db.t3.micro", "password": "old-hunter2",
                           "tags": {"Service": "dixie"}},
                "after": {"identifier": "dixie", "instance_class": "db.t3.small", "password": "new-s3cr3t",
                          "tags": {"Service": "dixie"}},
                "after_unknown": {"tags": {}},
                "before_sensitive": {"password": true, "tags": {}},
                "after_sensitive": {"password": true, "tags": {}}}},
            {"address": "aws_ecs_cluster.main", "mode": "managed", "type": "aws_ecs_cluster", "name": "main",
             "change": {"actions": ["no-op"], "before": {"name": "arrakis"}, "after": {"name": "arrakis"},
                "after_unknown": {}, "before_sensitive": {}, "after_sensitive": {}}},
            {"address": "aws_ecs_service.dixie", "mode": "managed", "type": "aws_ecs_service", "name": "dixie",
             "change": {"actions": ["update"],
                "before": {"name": "dixie-armitage", "desired_count": 1, "task_definition": "dixie:3",
                           "tags_all": {"Service": "dixie"}},
                "after": {"name": "dixie-armitage", "desired_count": 2, "tags_all": {"Service": "dixie"}},
                "after_unknown": {"task_definition": true, "tags_all": {}},
                "before_sensitive": {}, "after_sensitive": {}}},
            {"address": "aws_instance.bastion", "mode": "managed", "type": "aws_instance", "name": "bastion",
             "change": {"actions": ["delete", "create"],
                "before": {"ami": "ami-0ld", "subnet_id": "subnet-1", "user_data": "hunter2-in-user-data"},
                "after": {"ami": "ami-n3w", "subnet_id": "subnet-2", "user_data": "hunter2-in-user-data"},
                "after_unknown": {"id": true}, "before_sensitive": {"user_data": true},
                "after_sensitive": {"user_data": true},
                "replace_paths": [["ami"], ["network_interface", 0, "subnet_id"]]},
             "action_reason": "replace_because_cannot_update"},
            {"address": "aws_lb.dixie", "mode": "managed", "type": "aws_lb", "name": "dixie",
             "change": {"actions": ["create"], "before": null, "after": {"name": "dixie"},
                "after_unknown": {"arn": true, "dns_name": true}, "before_sensitive": false, "after_sensitive": {}}},
            {"address": "aws_security_group.legacy", "mode": "managed", "type": "aws_security_group",
             "name": "legacy",
             "change": {"actions": ["delete"], "before": {"name": "legacy"}, "after": null, "after_unknown": {},
                "before_sensitive": {}, "after_sensitive": false},
             "action_reason": "delete_because_no_resource_config"},
            {"address": "aws_ssm_parameter.jwt", "mode": "managed", "type": "aws_ssm_parameter", "name": "jwt",
             "change": {"actions": ["create"], "before": null,
                "after": {"name": "/dixie/armitage/DIXIE_JWT_PRIVATE_KEY", "value": "jwt-s3cr3t-value"},
                "after_unknown": {"arn": true}, "before_sensitive": false, "after_sensitive": {"value": true}}},
            {"address": "data.aws_caller_identity.current", "mode": "data", "type": "aws_caller_identity",
             "name": "current",
             "change": {"actions": ["read"], "before": null, "after": {}, "after_unknown": {"account_id": true}}},
            {"address": "module.ring.aws_ecs_task_definition.finn[\"a\"]", "mode": "managed",
             "type": "aws_ecs_task_definition", "name": "finn",
             "change": {"actions": ["create", "delete"], "before": {"family": "finn"}, "after": {"family": "finn"},
                "after_unknown": {"arn": true}, "replace_paths": []},
             "action_reason": "replace_because_tainted"}
        ],
        "output_changes": {
            "alb_dns_name": {"actions": ["create"], "before": null, "after": null, "after_unknown": true},
            "cluster": {"actions": ["no-op"], "before": "arrakis", "after": "arrakis"}
        }
    })
}

#[test]
fn each_resource_is_listed_with_its_action_destroys_and_replacements_first() {
    assert_eq!(
        describe(&sample()),
        [
            "  destroy  aws_security_group.legacy (no longer in the configuration)",
            "  replace  aws_instance.bastion (destroy, then create; forced by ami, network_interface[0].subnet_id)",
            "  replace  module.ring.aws_ecs_task_definition.finn[\"a\"] (create, then destroy; tainted)",
            "  update   aws_db_instance.main: instance_class, password (sensitive)",
            "  update   aws_ecs_service.dixie: desired_count, task_definition (known after apply)",
            "  create   aws_lb.dixie",
            "  create   aws_ssm_parameter.jwt",
            "  create   output.alb_dns_name",
        ]
        .join("\n")
    );
}

#[test]
fn no_value_is_ever_shown_sensitive_or_not() {
    let text = describe(&sample());
    for value in ["old-hunter2", "new-s3cr3t", "hunter2-in-user-data", "jwt-s3cr3t-value", "ami-n3w", "subnet-2"] {
        assert!(!text.contains(value), "{value} shown:\n{text}");
    }
    assert!(!text.contains("db.t3"), "{text}");
}

#[test]
fn a_plan_without_resource_changes_or_with_only_reads_lists_nothing() {
    assert_eq!(describe(&json!({})), "");
    assert_eq!(describe(&json!({"resource_changes": []})), "");
    let reads = json!({"resource_changes": [
        {"address": "data.aws_vpc.main", "change": {"actions": ["read"]}},
        {"address": "aws_vpc.main", "change": {"actions": ["no-op"]}},
    ]});
    assert_eq!(describe(&reads), "");
}

#[test]
fn what_terraform_may_add_later_is_shown_not_dropped() {
    // An import (terraform 1.5+), a forget (1.7+), and an action this code does not know:
    // the unknown one first, so that it is seen.
    let plan = json!({"resource_changes": [
        {"address": "aws_vpc.main", "change": {"actions": ["no-op"], "importing": {"id": "vpc-1"}}},
        {"address": "aws_s3_bucket.logs", "change": {"actions": ["forget"]}},
        {"address": "aws_iam_role.x", "change": {"actions": ["transmogrify"]}},
        {"address": "aws_kms_key.y"},
    ]});
    assert_eq!(
        describe(&plan),
        [
            "  transmogrify aws_iam_role.x",
            "  ?        aws_kms_key.y",
            "  forget   aws_s3_bucket.logs (left in AWS, removed from terraform's state)",
            "  import   aws_vpc.main",
        ]
        .join("\n")
    );
}
