//! Route53's two reads runbook makes (T2.8's alias record), as REST GETs answered in XML:
//! `aws-sdk-route53` is not built for them.

use std::sync::Arc;

use super::query::{QueryClient, QueryError, Shared};

pub(crate) struct Route53(QueryClient);

/// A record set, as far as runbook reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordSet {
    pub(crate) name: String,
    pub(crate) kind: String,
    /// Its alias target's DNS name, for an alias record.
    pub(crate) alias: Option<String>,
}

const VERSION: &str = "2013-04-01";

impl Route53 {
    /// Route53 is global: one endpoint, signed for us-east-1.
    pub(crate) fn new(shared: &Arc<Shared>, endpoint: Option<&str>) -> Self {
        Route53(QueryClient::global(shared, "route53", VERSION, endpoint, "us-east-1"))
    }

    /// The hosted zones from `name` on, in name order (`route53:ListHostedZonesByName`): (id, name).
    pub(crate) async fn zones_from(&self, name: &str) -> Result<Vec<(String, String)>, QueryError> {
        let answer = self.0.get(&format!("/{VERSION}/hostedzonesbyname"), &[("dnsname", name)]).await?;
        Ok(answer
            .list("HostedZones")
            .filter_map(|z| Some((z.text("Id")?.to_string(), z.text("Name")?.to_string())))
            .collect())
    }

    /// The record sets of `zone` from `name` and `kind` on (`route53:ListResourceRecordSets`, one
    /// page); `zone` as `zones_from` gives it (`/hostedzone/Z…` or `Z…`).
    pub(crate) async fn records_from(&self, zone: &str, name: &str, kind: &str) -> Result<Vec<RecordSet>, QueryError> {
        let id = zone.trim_start_matches("/hostedzone/");
        let path = format!("/{VERSION}/hostedzone/{id}/rrset");
        let answer = self.0.get(&path, &[("name", name), ("type", kind)]).await?;
        Ok(answer
            .list("ResourceRecordSets")
            .filter_map(|r| {
                Some(RecordSet {
                    name: r.text("Name")?.to_string(),
                    kind: r.text("Type")?.to_string(),
                    alias: r.child("AliasTarget").and_then(|a| a.text("DNSName")).map(String::from),
                })
            })
            .collect())
    }
}
