//! `validate` (T2.8): the end-to-end checks of the sprint, as one table of pass/fail with the
//! measured value: the DNS record aliases the ALB (and resolves, on AWS), Dixie is healthy with
//! Finn's circuit closed, Finn is healthy, exactly N migrations ran, Redis is healthy in
//! Dixie's health, and no CloudWatch alarm of the service is in ALARM.
//!
//! Nothing to apply: while checks fail the verify waits (DNS and health converge), bounded.

use std::time::Duration;

use serde::Deserialize;

use super::{Probe, Step, StepContext, StepError, reach};
use crate::event::Outputs;
use crate::health::{HealthPolicy, HealthRule, judge};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {
    zone: String,
    record: String,
    /// The ALB's DNS name the record must alias.
    alb_dns_name: String,
    /// Also resolve the record through the system resolver (on AWS; the ring's names do not resolve).
    #[serde(default, deserialize_with = "bool_or_text")]
    dns_lookup: bool,
    dixie_health_url: String,
    /// What Dixie's health may lack (default: nothing).
    #[serde(default = "strict_dixie")]
    dixie_health: HealthPolicy,
    finn_health_url: String,
    /// SSM parameter with the DATABASE_URL to count `_migrations` with.
    database_url_param: String,
    /// The CA bundle its server is checked against (TLS only); empty: system roots.
    #[serde(default)]
    pg_ca_file: String,
    migrations: i64,
    alarm_prefix: String,
    #[serde(default = "two_minutes", deserialize_with = "super::number_or_text")]
    pub(super) wait_seconds: u64,
}

/// The CloudWatch alarms named `prefix…`: how many, and the names of those in ALARM.
pub(super) async fn alarms(cx: &StepContext, prefix: &str) -> Result<(usize, Vec<String>), StepError> {
    let found =
        cx.cloud.cloudwatch.alarms(prefix).await.map_err(|e| StepError::from_query("cloudwatch:DescribeAlarms", e))?;
    let firing = found.iter().filter(|a| a.state == "ALARM").map(|a| a.name.clone()).collect();
    Ok((found.len(), firing))
}

fn strict_dixie() -> HealthPolicy {
    HealthPolicy::strict(HealthRule::Dixie)
}

fn bool_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    super::flag(d, "dns_lookup")
}

/// The health verdict with its HTTP status in front (the verdict names it only when it is not
/// a success).
fn with_status(code: u16, why: &str) -> String {
    if why.starts_with("HTTP ") { why.to_string() } else { format!("HTTP {code}, {why}") }
}

fn two_minutes() -> u64 {
    120
}

struct Check {
    name: &'static str,
    pass: bool,
    value: String,
}

impl Params {
    async fn checks(&self, cx: &StepContext) -> Result<Vec<Check>, StepError> {
        let mut checks = Vec::new();
        let mut check = |name: &'static str, result: Result<String, String>, must: bool| {
            let (pass, value) = match result {
                Ok(v) => (must, v),
                Err(e) => (false, e),
            };
            checks.push(Check { name, pass, value });
        };

        let alias = self.alias(cx).await?;
        let want = self.alb_dns_name.trim_end_matches('.').to_ascii_lowercase();
        let matches = alias.as_deref().is_some_and(|a| a.trim_end_matches('.').to_ascii_lowercase().ends_with(&want));
        check(
            "dns record",
            alias
                .map(|a| format!("{} A alias → {a}", self.record))
                .ok_or_else(|| format!("no A record {}", self.record)),
            matches,
        );
        if self.dns_lookup {
            let resolved = tokio::net::lookup_host((self.record.as_str(), 443))
                .await
                .map(|a| a.map(|a| a.ip().to_string()).collect::<Vec<_>>().join(", "));
            let found = resolved.as_ref().is_ok_and(|r| !r.is_empty());
            check("dns lookup", resolved.map_err(|e| format!("{}: {e}", self.record)), found);
        }

        let dixie = reach::get_json(&cx.env, &self.dixie_health_url).await;
        match &dixie {
            Ok((code, body, took)) => {
                let verdict = judge(&self.dixie_health, *code, body);
                for warning in verdict.warnings {
                    cx.warn(warning).await;
                }
                let seen = format!("{}, {} ms", with_status(*code, &verdict.summary), took.as_millis());
                check("dixie health", Ok(seen), verdict.ok);
                let redis = body["infrastructure"]["redis"]["status"].as_str().unwrap_or("absent").to_string();
                check("redis", Ok(format!("dixie reports redis {redis}")), redis == "healthy");
            }
            Err(e) => {
                check("dixie health", Err(e.clone()), false);
                check("redis", Err("no dixie health".into()), false);
            }
        }
        match reach::get_json(&cx.env, &self.finn_health_url).await {
            Ok((code, body, took)) => {
                let verdict = judge(&HealthPolicy::strict(HealthRule::Finn), code, &body);
                let seen = format!("{}, {} ms", with_status(code, &verdict.summary), took.as_millis());
                check("finn health", Ok(seen), verdict.ok);
            }
            Err(e) => check("finn health", Err(e), false),
        }

        let migrations = match cx.parameter(&self.database_url_param).await? {
            Some(url) => {
                let ca = cx.project_file(&self.pg_ca_file);
                reach::postgres_count(&cx.env, &url, "SELECT count(*) FROM _migrations", ca.as_deref()).await
            }
            None => Err(format!("{} does not exist", self.database_url_param)),
        };
        let count = migrations.as_ref().ok().copied();
        check(
            "migrations",
            migrations.map(|n| format!("{n} rows in _migrations (want {})", self.migrations)),
            count == Some(self.migrations),
        );

        let (total, firing) = alarms(cx, &self.alarm_prefix).await?;
        check(
            "alarms",
            Ok(if firing.is_empty() {
                format!("{total} alarms, none in ALARM")
            } else {
                format!("in ALARM: {}", firing.join(", "))
            }),
            firing.is_empty(),
        );
        Ok(checks)
    }

    async fn alias(&self, cx: &StepContext) -> Result<Option<String>, StepError> {
        let route53 = &cx.cloud.route53;
        let zones = route53
            .zones_from(&self.zone)
            .await
            .map_err(|e| StepError::from_query("route53:ListHostedZonesByName", e))?;
        let want_zone = format!("{}.", self.zone.trim_end_matches('.'));
        let Some((zone, _)) = zones.iter().find(|(_, name)| *name == want_zone) else {
            return Err(StepError::fatal(
                format!("hosted zone {} not found", self.zone),
                "check the zone name in the runbook",
            ));
        };
        let records = route53
            .records_from(zone, &self.record, "A")
            .await
            .map_err(|e| StepError::from_query("route53:ListResourceRecordSets", e))?;
        let want = format!("{}.", self.record.trim_end_matches('.'));
        Ok(records.into_iter().find(|r| r.name == want && r.kind == "A").and_then(|r| r.alias))
    }

    fn table(checks: &[Check]) -> Vec<String> {
        checks
            .iter()
            .map(|c| format!("{:<13} {:<4} {}", c.name, if c.pass { "pass" } else { "FAIL" }, c.value))
            .collect()
    }
}

impl Step for Params {
    const KIND: &'static str = "validate";
    const OUTPUTS: Option<&'static [&'static str]> = None;

    fn validate(&self) -> Result<(), String> {
        super::check_wait("wait_seconds", self.wait_seconds)?;
        reach::check_http_url("dixie_health_url", &self.dixie_health_url)?;
        self.dixie_health.check()?;
        reach::check_http_url("finn_health_url", &self.finn_health_url)?;
        if self.migrations < 0 {
            return Err(format!("migrations = {}: the count of applied migrations is 0 or more", self.migrations));
        }
        if self.wait_seconds == 0 {
            return Err("wait_seconds = 0 leaves no time for the checks to pass; give 1 or more seconds".into());
        }
        Ok(())
    }

    async fn preflight(&self, cx: &StepContext) -> Result<(), StepError> {
        super::check_ca_file("pg_ca_file", cx.project_file(&self.pg_ca_file).as_deref())
    }

    fn converge_within(&self) -> Duration {
        Duration::from_secs(self.wait_seconds)
    }

    async fn probe(&self, cx: &StepContext) -> Result<Probe, StepError> {
        let checks = self.checks(cx).await?;
        if checks.iter().all(|c| c.pass) {
            for line in Self::table(&checks) {
                cx.log(line).await;
            }
            return Ok(Probe::Satisfied(
                checks
                    .into_iter()
                    .map(|c| (c.name.replace(' ', "_"), format!("pass: {}", c.value)))
                    .collect::<Outputs>(),
            ));
        }
        let failing: Vec<String> =
            checks.iter().filter(|c| !c.pass).map(|c| format!("{}: {}", c.name, c.value)).collect();
        Ok(Probe::Absent(format!("checks failing: {}", failing.join("; "))))
    }

    /// Nothing to change: shows the table, then the verify waits for the checks to pass.
    async fn apply(&self, cx: &StepContext) -> Result<(), StepError> {
        for line in Self::table(&self.checks(cx).await?) {
            cx.log(line).await;
        }
        Ok(())
    }
}
