//! The import ID (`sgr-…`) of a security group rule that is in AWS but not in terraform's state.
//! The provider's `InvalidPermission.Duplicate` error does not carry it, so it is looked up: the
//! rule terraform planned (`terraform show -json PLAN`) is matched against the rules AWS has
//! (`ec2:DescribeSecurityGroupRules`) in the groups it may be in, leaving out the rules
//! terraform's state already manages. Exactly one match is the ID; none or several are said,
//! with their IDs, and never chosen between.
//!
//! Read-only: it must never create, change or delete anything in AWS or in terraform's state.

use std::collections::BTreeSet;

use serde_json::Value;

use super::orphan::{resource_type, segments};
use crate::cloud::{Ec2, SecurityGroupRule};
use crate::steps::StepError;

const EGRESS: &str = "aws_vpc_security_group_egress_rule";
const INGRESS: &str = "aws_vpc_security_group_ingress_rule";

/// The other end of a rule: one per rule, in AWS as in terraform.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Peer {
    Ipv4(String),
    Ipv6(String),
    Group(String),
    PrefixList(String),
}

/// A rule terraform planned to create, as far as the plan tells.
#[derive(Debug, Clone, PartialEq)]
struct Planned {
    egress: bool,
    /// As AWS names it (see [`protocol`]).
    protocol: String,
    /// -1 for none (all traffic), as AWS says it.
    from_port: i64,
    to_port: i64,
    /// The peers it may have: the planned one, or (unknown until the apply) each group of
    /// terraform's state that its configuration references.
    peers: Vec<Peer>,
    description: Option<String>,
    /// The groups it may be in: the planned one; else those of terraform's state that its
    /// configuration references; else, when that cannot be told, every group there.
    groups: Vec<String>,
}

/// A rule AWS has.
#[derive(Debug, Clone, PartialEq)]
struct Existing {
    id: String,
    group: String,
    egress: bool,
    protocol: String,
    from_port: i64,
    to_port: i64,
    peer: Option<Peer>,
    /// `None` when AWS returns none (moto drops the description of a rule that references a
    /// group).
    description: Option<String>,
}

/// The ID of the security group rule at `address` that AWS has and terraform's state does not,
/// when exactly one rule can be it: from the rule in `plan` (`terraform show -json PLAN`),
/// terraform's `state` (`terraform show -json`) and the rules AWS has; else what was found
/// instead (no rule, several with their IDs, or why it cannot tell).
pub(super) async fn look_up(ec2: &Ec2, plan: &Value, state: &Value, address: &str) -> Result<String, String> {
    let planned =
        planned(plan, state, address).map_err(|why| format!("runbook cannot tell which rule it is: {why}"))?;
    let groups = planned.groups.join(", ");
    let in_aws =
        in_aws(ec2, &planned.groups).await.map_err(|e| format!("runbook could not list the rules of {groups}: {e}"))?;
    match candidates(&planned, &in_aws, &managed(state)).as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(format!("runbook found no rule like it in {groups} that terraform's state does not hold")),
        many => Err(format!(
            "runbook found {} rules like it in {groups} and does not choose between them: {}",
            many.len(),
            many.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Whether the resource at `address` is of a type whose ID this looks up.
pub(super) fn is_rule(address: &str) -> bool {
    resource_type(address).is_some_and(|t| t == EGRESS || t == INGRESS)
}

/// A protocol as AWS returns it: `tcp`, `udp`, `icmp`, `icmpv6`, `-1` (all), or its number.
fn protocol(name: &str) -> String {
    match name.to_ascii_lowercase().as_str() {
        "6" => "tcp".into(),
        "17" => "udp".into(),
        "1" => "icmp".into(),
        "58" => "icmpv6".into(),
        "all" | "-1" => "-1".into(),
        other => other.into(),
    }
}

/// The rules of `in_aws` that can be the one `planned`: the same direction, group, protocol,
/// ports and peer, not already in terraform's state (`in_state`: their IDs), and with the same
/// description where AWS returns one.
fn candidates<'a>(planned: &Planned, in_aws: &'a [Existing], in_state: &BTreeSet<String>) -> Vec<&'a Existing> {
    let all_traffic = planned.protocol == "-1";
    let mut found: Vec<&Existing> = in_aws
        .iter()
        .filter(|r| !in_state.contains(&r.id))
        .filter(|r| r.egress == planned.egress && planned.groups.contains(&r.group))
        .filter(|r| r.protocol == planned.protocol)
        .filter(|r| all_traffic || (r.from_port, r.to_port) == (planned.from_port, planned.to_port))
        .filter(|r| r.peer.as_ref().is_some_and(|p| planned.peers.contains(p)))
        .filter(|r| match r.description.as_deref().filter(|d| !d.is_empty()) {
            None => true,
            Some(said) => planned.description.as_deref() == Some(said),
        })
        .collect();
    found.dedup_by(|a, b| a.id == b.id);
    found
}

/// The rule at `address` as `plan` (`terraform show -json PLAN`) creates it, its unknown group
/// told by `state` (`terraform show -json`); `Err` says what cannot be told.
fn planned(plan: &Value, state: &Value, address: &str) -> Result<Planned, String> {
    let change = plan["resource_changes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["address"] == address)
        .ok_or("the plan holds no change of it")?;
    let egress = match change["type"].as_str() {
        Some(EGRESS) => true,
        Some(INGRESS) => false,
        _ => return Err("it is not a security group rule".into()),
    };
    let (after, unknown) = (&change["change"]["after"], &change["change"]["after_unknown"]);
    let known = |field: &str| match unknown[field] == true {
        true => Err(format!("its {field} is not known before the apply")),
        false => Ok(&after[field]),
    };
    let port = |field: &str| match known(field)? {
        Value::Null => Ok(-1),
        v => v.as_i64().ok_or(format!("its {field} is not a number")),
    };
    let protocol = protocol(known("ip_protocol")?.as_str().ok_or("it has no ip_protocol")?);
    let (from_port, to_port) = (port("from_port")?, port("to_port")?);
    let description = known("description")?.as_str().filter(|d| !d.is_empty()).map(String::from);

    let mut peers = Vec::new();
    for field in ["cidr_ipv4", "cidr_ipv6", "referenced_security_group_id", "prefix_list_id"] {
        if unknown[field] == true && field == "referenced_security_group_id" {
            let groups = referenced_groups(plan, state, address, field);
            if groups.is_empty() {
                return Err(format!(
                    "its {field} is not known before the apply, and its configuration references no security \
                     group of terraform's state"
                ));
            }
            peers.extend(groups.into_iter().map(Peer::Group));
        } else if let Some(value) = known(field)?.as_str() {
            peers.push(match field {
                "cidr_ipv4" => Peer::Ipv4(value.into()),
                "cidr_ipv6" => Peer::Ipv6(value.to_ascii_lowercase()),
                "referenced_security_group_id" => Peer::Group(value.into()),
                _ => Peer::PrefixList(value.into()),
            });
        }
    }
    if peers.is_empty() {
        return Err("it names no peer (cidr_ipv4, cidr_ipv6, referenced_security_group_id, prefix_list_id)".into());
    }

    let groups = match after["security_group_id"].as_str().filter(|_| unknown["security_group_id"] != true) {
        Some(planned) => vec![planned.to_string()],
        None => match referenced_groups(plan, state, address, "security_group_id") {
            referenced if !referenced.is_empty() => referenced,
            _ => security_groups(state).into_iter().map(|(_, id)| id).collect(),
        },
    };
    if groups.is_empty() {
        return Err("terraform's state holds no security group to look in".into());
    }
    Ok(Planned { egress, protocol, from_port, to_port, peers, description, groups })
}

/// The IDs of the rules terraform's state manages (`terraform show -json`).
fn managed(state: &Value) -> BTreeSet<String> {
    resources(state)
        .into_iter()
        .filter(|r| r["type"] == EGRESS || r["type"] == INGRESS)
        .filter_map(|r| r["values"]["security_group_rule_id"].as_str().or(r["values"]["id"].as_str()))
        .map(String::from)
        .collect()
}

/// The rules AWS has in `groups`, read-only.
async fn in_aws(ec2: &Ec2, groups: &[String]) -> Result<Vec<Existing>, StepError> {
    let rules = ec2.rules_of(groups).await.map_err(|e| StepError::from_query("ec2:DescribeSecurityGroupRules", e))?;
    Ok(rules.iter().filter_map(existing).collect())
}

/// A rule as AWS describes it; `None` without its ID, group or direction.
fn existing(rule: &SecurityGroupRule) -> Option<Existing> {
    let peer = match rule {
        SecurityGroupRule { cidr_ipv4: Some(c), .. } => Some(Peer::Ipv4(c.clone())),
        SecurityGroupRule { cidr_ipv6: Some(c), .. } => Some(Peer::Ipv6(c.to_ascii_lowercase())),
        SecurityGroupRule { prefix_list_id: Some(p), .. } => Some(Peer::PrefixList(p.clone())),
        r => r.referenced_group_id.clone().map(Peer::Group),
    };
    Some(Existing {
        id: rule.id.clone()?,
        group: rule.group_id.clone()?,
        egress: rule.is_egress?,
        protocol: protocol(rule.ip_protocol.as_deref().unwrap_or_default()),
        from_port: rule.from_port.unwrap_or(-1).into(),
        to_port: rule.to_port.unwrap_or(-1).into(),
        peer,
        description: rule.description.clone(),
    })
}

/// Every resource of a `terraform show -json` state, in its root module and child modules.
fn resources(state: &Value) -> Vec<&Value> {
    fn walk<'a>(module: &'a Value, into: &mut Vec<&'a Value>) {
        into.extend(module["resources"].as_array().into_iter().flatten());
        for child in module["child_modules"].as_array().into_iter().flatten() {
            walk(child, into);
        }
    }
    let mut all = Vec::new();
    walk(&state["values"]["root_module"], &mut all);
    all
}

/// The security groups of terraform's state, managed or read: (address, ID), in state order.
fn security_groups(state: &Value) -> Vec<(&str, String)> {
    let mut seen = BTreeSet::new();
    resources(state)
        .into_iter()
        .filter(|r| r["type"] == "aws_security_group")
        .filter_map(|r| Some((r["address"].as_str()?, r["values"]["id"].as_str()?.to_string())))
        .filter(|(_, id)| seen.insert(id.clone()))
        .collect()
}

/// The groups of terraform's state that `field` of the resource at `address` references in
/// the plan's configuration (`aws_security_group.dixie.id`), in the same module instance.
fn referenced_groups(plan: &Value, state: &Value, address: &str, field: &str) -> Vec<String> {
    let Some(parts) = segments(address) else { return Vec::new() };
    let Some((resource, modules)) = parts.split_last_chunk::<2>().map(|(m, r)| (r, m)) else { return Vec::new() };
    let bare = |s: &str| s.split('[').next().unwrap_or_default().to_string();
    let mut module = &plan["configuration"]["root_module"];
    for call in modules.chunks(2) {
        module = &module["module_calls"][bare(call.get(1).copied().unwrap_or_default())]["module"];
    }
    let configured = format!("{}.{}", resource[0], bare(resource[1]));
    let Some(config) = module["resources"].as_array().into_iter().flatten().find(|r| r["address"] == configured) else {
        return Vec::new();
    };
    let references: Vec<&str> =
        config["expressions"][field]["references"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let prefix = modules.iter().map(|m| format!("{m}.")).collect::<String>();
    let mut groups: Vec<String> = Vec::new();
    for (group, id) in security_groups(state) {
        let Some(relative) = group.strip_prefix(&prefix) else { continue };
        let base = relative.split('[').next().unwrap_or_default();
        let meant = references.iter().any(|r| {
            *r == relative || r.starts_with(&format!("{relative}.")) || *r == base || r.starts_with(&format!("{base}."))
        });
        if meant && !groups.contains(&id) {
            groups.push(id);
        }
    }
    groups
}

#[cfg(test)]
mod tests;
