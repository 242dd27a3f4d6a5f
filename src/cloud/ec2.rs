//! The EC2 calls runbook makes, over the query protocol: security groups and their rules
//! (T3.1, terraform's orphaned rules, `diagnose`), and VPC ranges (`diagnose`).

use std::sync::Arc;

use super::query::{Element, QueryClient, QueryError, Shared};

/// EC2's query API version.
const VERSION: &str = "2016-11-15";

pub(crate) struct Ec2(QueryClient);

/// A security group, as far as runbook reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SecurityGroup {
    pub(crate) id: Option<String>,
    pub(crate) vpc_id: Option<String>,
}

/// A security group rule, as `DescribeSecurityGroupRules` gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SecurityGroupRule {
    pub(crate) id: Option<String>,
    pub(crate) group_id: Option<String>,
    pub(crate) is_egress: Option<bool>,
    /// `tcp`, `udp`, `icmp`, a number, or `-1` for all traffic.
    pub(crate) ip_protocol: Option<String>,
    pub(crate) from_port: Option<i32>,
    pub(crate) to_port: Option<i32>,
    pub(crate) cidr_ipv4: Option<String>,
    pub(crate) cidr_ipv6: Option<String>,
    pub(crate) prefix_list_id: Option<String>,
    /// The security group the rule names as its other end.
    pub(crate) referenced_group_id: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) tags: Vec<(String, String)>,
}

impl SecurityGroupRule {
    /// The value of its tag `key`.
    pub(crate) fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Inbound, and TCP (or all traffic) on a range that holds `port`.
    pub(crate) fn admits_inbound_tcp(&self, port: u16) -> bool {
        let port = i32::from(port);
        let protocol = self.ip_protocol.as_deref().unwrap_or_default();
        let covers = protocol == "-1"
            || ((protocol == "tcp" || protocol == "6")
                && self.from_port.unwrap_or(-1) <= port
                && port <= self.to_port.unwrap_or(-1));
        self.is_egress == Some(false) && covers
    }

    fn read(item: &Element) -> Result<Self, QueryError> {
        let text = |name: &str| item.text(name).map(String::from);
        let number = |name: &str| -> Result<Option<i32>, QueryError> {
            item.text(name).map(|t| t.trim().parse().map_err(|_| not_ec2(&format!("{name} = {t:?}")))).transpose()
        };
        let is_egress = match item.text("isEgress") {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => return Err(not_ec2(&format!("isEgress = {other:?}"))),
        };
        let tags = item
            .list("tagSet")
            .filter_map(|t| Some((t.text("key")?.to_string(), t.text("value").unwrap_or_default().to_string())))
            .collect();
        Ok(SecurityGroupRule {
            id: text("securityGroupRuleId"),
            group_id: text("groupId"),
            is_egress,
            ip_protocol: text("ipProtocol"),
            from_port: number("fromPort")?,
            to_port: number("toPort")?,
            cidr_ipv4: text("cidrIpv4"),
            cidr_ipv6: text("cidrIpv6"),
            prefix_list_id: text("prefixListId"),
            referenced_group_id: item.child("referencedGroupInfo").and_then(|g| g.text("groupId")).map(String::from),
            description: text("description"),
            tags,
        })
    }
}

/// An answer EC2 would not give.
fn not_ec2(what: &str) -> QueryError {
    QueryError::Transport(format!("an answer that is not EC2's: {what}"))
}

/// `Filter.1.Name = name`, `Filter.1.Value.N = values`.
fn filter(name: &str, values: &[String]) -> Vec<(String, String)> {
    let mut params = vec![("Filter.1.Name".to_string(), name.to_string())];
    params.extend(values.iter().enumerate().map(|(i, v)| (format!("Filter.1.Value.{}", i + 1), v.clone())));
    params
}

/// `Name.1 = values[0]`, `Name.2 = …`.
fn numbered(name: &str, values: &[&str]) -> Vec<(String, String)> {
    values.iter().enumerate().map(|(i, v)| (format!("{name}.{}", i + 1), v.to_string())).collect()
}

impl Ec2 {
    pub(crate) fn new(shared: &Arc<Shared>, endpoint: Option<&str>) -> Self {
        Ec2(QueryClient::new(shared, "ec2", VERSION, endpoint))
    }

    async fn groups(&self, params: &[(String, String)]) -> Result<Vec<SecurityGroup>, QueryError> {
        let pages = self.0.pages("DescribeSecurityGroups", params).await?;
        Ok(pages
            .iter()
            .flat_map(|p| p.list("securityGroupInfo"))
            .map(|g| SecurityGroup {
                id: g.text("groupId").map(String::from),
                vpc_id: g.text("vpcId").map(String::from),
            })
            .collect())
    }

    /// The groups named `name` (`ec2:DescribeSecurityGroups`, filter `group-name`).
    pub(crate) async fn groups_named(&self, name: &str) -> Result<Vec<SecurityGroup>, QueryError> {
        self.groups(&filter("group-name", &[name.to_string()])).await
    }

    /// The groups with these ids; `InvalidGroup.NotFound` when one does not exist.
    pub(crate) async fn groups_by_id(&self, ids: &[&str]) -> Result<Vec<SecurityGroup>, QueryError> {
        self.groups(&numbered("GroupId", ids)).await
    }

    /// Every rule of these groups (`ec2:DescribeSecurityGroupRules`, filter `group-id`), all pages.
    pub(crate) async fn rules_of(&self, groups: &[String]) -> Result<Vec<SecurityGroupRule>, QueryError> {
        let pages = self.0.pages("DescribeSecurityGroupRules", &filter("group-id", groups)).await?;
        pages.iter().flat_map(|p| p.list("securityGroupRuleSet")).map(SecurityGroupRule::read).collect()
    }

    /// The IPv4 range of a VPC (`ec2:DescribeVpcs`).
    pub(crate) async fn vpc_range(&self, vpc: &str) -> Result<Option<String>, QueryError> {
        let page = self.0.call("DescribeVpcs", &numbered("VpcId", &[vpc])).await?;
        Ok(page.list("vpcSet").next().and_then(|v| v.text("cidrBlock")).map(String::from))
    }

    /// `ec2:AuthorizeSecurityGroupIngress`: `group` admits `source` on TCP `port`; the rule gets
    /// `description` and the tag `tag`.
    pub(crate) async fn authorize_ingress(
        &self,
        group: &str,
        source: &str,
        port: u16,
        description: &str,
        tag: (&str, &str),
    ) -> Result<(), QueryError> {
        let params = [
            ("GroupId", group),
            ("IpPermissions.1.IpProtocol", "tcp"),
            ("IpPermissions.1.FromPort", &port.to_string()),
            ("IpPermissions.1.ToPort", &port.to_string()),
            ("IpPermissions.1.Groups.1.GroupId", source),
            ("IpPermissions.1.Groups.1.Description", description),
            ("TagSpecification.1.ResourceType", "security-group-rule"),
            ("TagSpecification.1.Tag.1.Key", tag.0),
            ("TagSpecification.1.Tag.1.Value", tag.1),
        ]
        .map(|(n, v)| (n.to_string(), v.to_string()));
        let answer = self.0.call("AuthorizeSecurityGroupIngress", &params).await?;
        match answer.text("return") {
            Some("true") => Ok(()),
            other => Err(not_ec2(&format!("AuthorizeSecurityGroupIngress returned {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_is_read_with_its_peer_ports_and_tags_and_a_bad_number_is_an_error() {
        let answer = Element::parse(
            "<DescribeSecurityGroupRulesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
             <requestId>r</requestId><securityGroupRuleSet><item>\
             <securityGroupRuleId>sgr-1</securityGroupRuleId><groupId>sg-1</groupId><isEgress>false</isEgress>\
             <ipProtocol>tcp</ipProtocol><fromPort>4222</fromPort><toPort>4222</toPort>\
             <referencedGroupInfo><groupId>sg-2</groupId><userId>1</userId></referencedGroupInfo>\
             <description>NATS client from Dixie</description>\
             <tagSet><item><key>runbook:created-at</key><value>2026-12-06T14:00:00.000Z</value></item></tagSet>\
             </item><item><securityGroupRuleId>sgr-2</securityGroupRuleId><isEgress>true</isEgress>\
             <ipProtocol>-1</ipProtocol><fromPort>-1</fromPort><toPort>-1</toPort><cidrIpv4>0.0.0.0/0</cidrIpv4>\
             </item></securityGroupRuleSet></DescribeSecurityGroupRulesResponse>",
        )
        .unwrap();
        let rules: Vec<_> = answer.list("securityGroupRuleSet").map(|r| SecurityGroupRule::read(r).unwrap()).collect();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].referenced_group_id.as_deref(), Some("sg-2"));
        assert_eq!((rules[0].from_port, rules[0].to_port, rules[0].is_egress), (Some(4222), Some(4222), Some(false)));
        assert_eq!(rules[0].tag("runbook:created-at"), Some("2026-12-06T14:00:00.000Z"));
        assert_eq!(rules[1].cidr_ipv4.as_deref(), Some("0.0.0.0/0"));
        assert_eq!((rules[1].group_id.as_ref(), rules[1].referenced_group_id.as_ref()), (None, None));

        for bad in ["<fromPort>many</fromPort>", "<isEgress>maybe</isEgress>"] {
            let item = Element::parse(&format!("<item>{bad}</item>")).unwrap();
            let err = SecurityGroupRule::read(&item).unwrap_err().to_string();
            assert!(err.contains("not EC2's"), "{err}");
        }
    }

    #[test]
    fn filters_and_ids_are_numbered_from_one() {
        assert_eq!(
            filter("group-id", &["sg-1".into(), "sg-2".into()]),
            [("Filter.1.Name", "group-id"), ("Filter.1.Value.1", "sg-1"), ("Filter.1.Value.2", "sg-2")]
                .map(|(n, v)| (n.to_string(), v.to_string()))
        );
        assert_eq!(numbered("VpcId", &["vpc-1"]), [("VpcId.1".to_string(), "vpc-1".to_string())]);
    }
}
