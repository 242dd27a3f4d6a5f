//! `security_group_ingress` (T3.1): one inbound rule of a security group that another team
//! manages, admitting a source group on one TCP port (the NATS group admits Dixie's on 4222).
//!
//! The probe looks for a rule with that source and port (DescribeSecurityGroupRules); the apply
//! authorizes it with the seed's description and a `runbook:created-at` tag, so that a redeploy
//! downstream can tell the rule is newer than the running deployment. `InvalidPermission.Duplicate`
//! counts as done only once the verify (the probe) has found the matching rule.

use std::time::Duration;

use serde::Deserialize;

use super::{Probe, Step, StepContext, StepError};
use crate::cloud::SecurityGroupRule;
use crate::event::Outputs;

/// The tag that records when runbook created a rule (RFC 3339, UTC).
const CREATED_AT: &str = "runbook:created-at";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {
    /// The group that gets the rule: an id (`sg-…`, as on Armitage) or a name in the account
    /// (on the ring, where ids change with every reset).
    group: String,
    /// The group admitted (Dixie's task group, made by sprint 2's terraform): an id or a name.
    source_group: String,
    port: u16,
    description: String,
}

fn is_group_id(s: &str) -> bool {
    s.strip_prefix("sg-").is_some_and(|h| (8..=17).contains(&h.len()) && h.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A group's id: as given (`sg-…`), or looked up by name (exactly one must match).
async fn group_id(cx: &StepContext, field: &str, group: &str) -> Result<String, StepError> {
    lookup(cx, field, group).await?.ok_or_else(|| {
        StepError::fatal(
            format!("{field}: no security group named {group} in this account and region"),
            format!("check `{field}` (an sg- id, or the group's name) in the runbook or the environment"),
        )
    })
}

/// `group_id`, with `None` for a name no group has.
async fn lookup(cx: &StepContext, field: &str, group: &str) -> Result<Option<String>, StepError> {
    if is_group_id(group) {
        return Ok(Some(group.to_string()));
    }
    let found =
        cx.cloud.ec2.groups_named(group).await.map_err(|e| StepError::from_query("ec2:DescribeSecurityGroups", e))?;
    let ids: Vec<&str> = found.iter().filter_map(|g| g.id.as_deref()).collect();
    match ids.as_slice() {
        [id] => Ok(Some(id.to_string())),
        [] => Ok(None),
        many => Err(StepError::fatal(
            format!("{field}: {} security groups are named {group}: {}", many.len(), many.join(", ")),
            format!("give `{field}` as the group's id instead of its name"),
        )),
    }
}

/// One inbound rule, as a redeploy downstream refers to it (`ecs_deploy`'s `rules`): the
/// group, the source group admitted, the TCP port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Ingress {
    group: String,
    source_group: String,
    port: u16,
}

impl Ingress {
    /// The group's id and its source's: as given, or looked up by name.
    async fn group_ids(&self, cx: &StepContext) -> Result<(String, String), StepError> {
        Ok((group_id(cx, "group", &self.group).await?, group_id(cx, "source_group", &self.source_group).await?))
    }

    /// The inbound rule of `group` for this port from the source group, if there is one.
    async fn rule(&self, cx: &StepContext, group: &str, source: &str) -> Result<Option<SecurityGroupRule>, StepError> {
        let rules = cx
            .cloud
            .ec2
            .rules_of(&[group.to_string()])
            .await
            .map_err(|e| StepError::from_query("ec2:DescribeSecurityGroupRules", e))?;
        Ok(rules.into_iter().find(|r| self.admits(r, source)))
    }

    /// An inbound TCP (or all-traffic) rule covering the port, naming the source group.
    fn admits(&self, rule: &SecurityGroupRule, source: &str) -> bool {
        rule.admits_inbound_tcp(self.port) && rule.referenced_group_id.as_deref() == Some(source)
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if self.group.trim().is_empty() {
            return Err("group is empty: give the group's id (sg-…) or its name".into());
        }
        for (field, value) in [("group", &self.group), ("source_group", &self.source_group)] {
            if value.starts_with("sg-") && !is_group_id(value) {
                return Err(format!("{field} = {value:?} is not a security group id (sg- and 8 or 17 hex digits)"));
            }
        }
        if self.port == 0 {
            return Err("port = 0: give the TCP port the source connects to".into());
        }
        Ok(())
    }

    /// Both groups exist: a name names exactly one group, an id is one EC2 knows. A group that
    /// an upstream step makes (its output) is checked when the step runs.
    pub(crate) async fn preflight(&self, cx: &StepContext) -> Result<(), StepError> {
        if self.source_group.trim().is_empty() {
            return Err(StepError::fatal(
                "source_group is empty",
                "give the admitted group's id (sg-…) or its name, e.g. Dixie's task group",
            ));
        }
        for (field, group) in [("group", &self.group), ("source_group", &self.source_group)] {
            if super::from_upstream(group) {
                continue;
            }
            let id = group_id(cx, field, group).await?;
            let found = cx.cloud.ec2.groups_by_id(&[&id]).await;
            if let Err(e) = found {
                if e.code() == Some("InvalidGroup.NotFound") || e.code() == Some("InvalidGroupId.Malformed") {
                    return Err(StepError::fatal(
                        format!("{field} = {group}: EC2 has no security group {id} in this account and region"),
                        format!("check `{field}` in the runbook or the environment (ids differ between accounts)"),
                    ));
                }
                return Err(StepError::from_query("ec2:DescribeSecurityGroups", e));
            }
        }
        Ok(())
    }

    /// The group's id and its source's, `None` for a name no group has (`diagnose`).
    pub(crate) async fn lookup_ids(&self, cx: &StepContext) -> Result<(Option<String>, Option<String>), StepError> {
        Ok((lookup(cx, "group", &self.group).await?, lookup(cx, "source_group", &self.source_group).await?))
    }

    /// The id of the rule of `group` admitting `source` on the port, if there is one (`diagnose`).
    pub(crate) async fn find(&self, cx: &StepContext, group: &str, source: &str) -> Result<Option<String>, StepError> {
        Ok(self.rule(cx, group, source).await?.map(|r| r.id.unwrap_or_else(|| "no id".into())))
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// `tcp/4222 into arrakis-staging-nats-sg from dixie-armitage-tasks`.
    pub(crate) fn name(&self) -> String {
        format!("the rule tcp/{} into {} from {}", self.port, self.group, self.source_group)
    }

    /// When runbook created the rule (its tag), if the rule exists and says so. A group that
    /// does not exist has no rule.
    pub(crate) async fn created_at(&self, cx: &StepContext) -> Result<Option<i64>, StepError> {
        let group = lookup(cx, "group", &self.group).await?;
        let source = lookup(cx, "source_group", &self.source_group).await?;
        let (Some(group), Some(source)) = (group, source) else { return Ok(None) };
        let rule = self.rule(cx, &group, &source).await?;
        Ok(rule.as_ref().and_then(created_tag).and_then(crate::clock::parse_utc))
    }
}

fn created_tag(rule: &SecurityGroupRule) -> Option<&str> {
    rule.tag(CREATED_AT)
}

impl Params {
    fn ingress(&self) -> Ingress {
        Ingress { group: self.group.clone(), source_group: self.source_group.clone(), port: self.port }
    }

    fn outputs(group: &str, rule: &SecurityGroupRule) -> Outputs {
        Outputs::from([
            ("group_id".to_string(), group.to_string()),
            ("rule_id".to_string(), rule.id.clone().unwrap_or_default()),
            // Empty when the rule was made by someone else: its age is unknown.
            ("created_at".to_string(), created_tag(rule).unwrap_or_default().to_string()),
        ])
    }
}

impl Step for Params {
    const KIND: &'static str = "security_group_ingress";
    const OUTPUTS: Option<&'static [&'static str]> = Some(&["group_id", "rule_id", "created_at"]);

    fn validate(&self) -> Result<(), String> {
        self.ingress().check()?;
        // EC2's rule for descriptions: up to 255 characters of a-z A-Z 0-9 spaces ._-:/()#,@[]+=&;{}!$*
        let allowed = |c: char| c.is_ascii_alphanumeric() || " ._-:/()#,@[]+=&;{}!$*".contains(c);
        if self.description.len() > 255 || !self.description.chars().all(allowed) {
            return Err(format!(
                "description = {:?}: EC2 takes up to 255 characters of letters, digits, spaces and ._-:/()#,@[]+=&;{{}}!$*",
                self.description
            ));
        }
        Ok(())
    }

    async fn preflight(&self, cx: &StepContext) -> Result<(), StepError> {
        self.ingress().preflight(cx).await
    }

    fn converge_within(&self) -> Duration {
        Duration::from_secs(30)
    }

    async fn probe(&self, cx: &StepContext) -> Result<Probe, StepError> {
        let ingress = self.ingress();
        let (group, source) = ingress.group_ids(cx).await?;
        Ok(match ingress.rule(cx, &group, &source).await? {
            Some(rule) => Probe::Satisfied(Self::outputs(&group, &rule)),
            None => Probe::Absent(format!(
                "allow tcp/{} into {} ({group}) from {} ({source})",
                self.port, self.group, self.source_group
            )),
        })
    }

    async fn apply(&self, cx: &StepContext) -> Result<(), StepError> {
        let (group, source) = self.ingress().group_ids(cx).await?;
        let now = crate::clock::format_utc_ms(crate::clock::now_ms());
        cx.log(format!("authorizing tcp/{} into {group} from {source} ({})", self.port, self.description)).await;
        let sent =
            cx.cloud.ec2.authorize_ingress(&group, &source, self.port, &self.description, (CREATED_AT, &now)).await;
        match sent {
            Ok(_) => {}
            // The rule exists (made meanwhile, or by hand): done only if the verify finds it.
            Err(e) if e.code() == Some("InvalidPermission.Duplicate") => {
                cx.log("the rule exists already; the verify checks that it admits the source on the port").await;
            }
            Err(e) => return Err(StepError::from_query("ec2:AuthorizeSecurityGroupIngress", e)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(toml_text: &str) -> Result<Params, String> {
        let p: Params = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        p.validate().map(|()| p)
    }

    #[test]
    fn group_ids_and_descriptions_are_checked_as_ec2_would() {
        let ok = "group = \"arrakis-staging-nats-sg\"\nsource_group = \"sg-0790b2636abe2498e\"\nport = 4222\n\
                  description = \"NATS client from Dixie\"\n";
        assert!(params(ok).is_ok());
        assert!(params(&ok.replace("sg-0790b2636abe2498e", "dixie-armitage-tasks")).is_ok(), "a name is looked up");
        let err = params(&ok.replace("sg-0790b2636abe2498e", "sg-dixie")).unwrap_err();
        assert!(err.contains("source_group = \"sg-dixie\" is not a security group id"), "{err}");
        let err = params(&ok.replace("NATS client from Dixie", "NATS <- Dixie")).unwrap_err();
        assert!(err.contains("EC2 takes up to 255 characters"), "{err}");
        assert!(params(&ok.replace("4222", "0")).unwrap_err().contains("port = 0"));
        assert!(is_group_id("sg-0df20023c098de62b") && is_group_id("sg-1234abcd") && !is_group_id("sg-xyz"));
    }

    #[test]
    fn a_rule_admits_the_source_only_inbound_on_the_port() {
        let p = params(
            "group = \"g\"\nsource_group = \"sg-0790b2636abe2498e\"\nport = 4222\ndescription = \"NATS client from Dixie\"\n",
        )
        .unwrap();
        let rule = |egress: bool, protocol: &str, ports: (i32, i32), group: &str| SecurityGroupRule {
            is_egress: Some(egress),
            ip_protocol: Some(protocol.into()),
            from_port: Some(ports.0),
            to_port: Some(ports.1),
            referenced_group_id: Some(group.into()),
            ..SecurityGroupRule::default()
        };
        let admits = |r: &SecurityGroupRule| p.ingress().admits(r, "sg-0790b2636abe2498e");
        assert!(admits(&rule(false, "tcp", (4222, 4222), "sg-0790b2636abe2498e")));
        assert!(admits(&rule(false, "-1", (-1, -1), "sg-0790b2636abe2498e")), "all traffic admits it too");
        assert!(!admits(&rule(true, "tcp", (4222, 4222), "sg-0790b2636abe2498e")), "egress is not ingress");
        assert!(!admits(&rule(false, "tcp", (3000, 3000), "sg-0790b2636abe2498e")), "another port");
        assert!(!admits(&rule(false, "udp", (4222, 4222), "sg-0790b2636abe2498e")), "another protocol");
        assert!(!admits(&rule(false, "tcp", (4222, 4222), "sg-1485a827ba225a81f")), "another source");
    }
}
