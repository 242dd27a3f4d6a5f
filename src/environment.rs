//! The environment a runbook runs against: `runbooks/environments/<name>.toml`.
//!
//! It owns account, region, endpoint overrides, the variables that runbooks reference as
//! `${env.x}`, the address map that turns cloud host names into loopback addresses on the
//! local ring, and the `[notify]` table that names the webhook (`notify.rs` posts to it). It
//! must not hold secrets: it names where they live (an SSM parameter, an environment
//! variable), never their values.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::project::{LookupError, Named};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Environment {
    pub(crate) name: String,
    #[serde(default)]
    #[allow(dead_code)] // for readers of the file; kept so that deny_unknown_fields accepts it
    pub(crate) description: String,
    /// The AWS account the credentials must belong to; checked before any step runs.
    pub(crate) account_id: String,
    pub(crate) region: String,
    /// Refuse to dial anything that is not loopback (the local ring).
    #[serde(default)]
    pub(crate) loopback_only: bool,
    #[serde(default)]
    pub(crate) aws: AwsSettings,
    /// Values that runbooks reference as `${env.NAME}`.
    #[serde(default)]
    pub(crate) vars: BTreeMap<String, String>,
    /// `"host:port"` (a leading `*.` matches any subdomain, `*` any host) → `"127.0.0.1:port"`.
    #[serde(default)]
    pub(crate) address_map: BTreeMap<String, String>,
    /// Where to post when a run fails, stops for approval or is done, and on `watch`
    /// transitions: a webhook whose URL lives in SSM or the process environment.
    #[serde(default)]
    pub(crate) notify: Option<NotifySettings>,
    #[serde(skip)]
    pub(crate) path: PathBuf,
    /// sha256 of the file as it was read.
    #[serde(skip)]
    pub(crate) hash: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum EnvError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AwsSettings {
    /// One endpoint for every AWS API (moto on the ring). Absent: the real AWS endpoints.
    pub(crate) endpoint_url: Option<String>,
    /// A named profile of the standard credential chain.
    pub(crate) profile: Option<String>,
    /// Fixed, non-secret credentials for an emulator (moto accepts any). Never for AWS.
    pub(crate) emulator_credentials: Option<EmulatorCredentials>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmulatorCredentials {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
}

/// An environment's `[notify]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NotifySettings {
    pub(crate) webhook: WebhookSource,
}

/// Where the webhook's URL lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WebhookSource {
    /// An SSM SecureString parameter, read with decryption.
    Ssm(String),
    /// An environment variable of the runbook process.
    Env(String),
}

/// The table form, read on its own so that its errors name the field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceTable {
    ssm: Option<String>,
    env: Option<String>,
}

const SOURCE_FORMS: &str = "write webhook = { ssm = \"/runbook/<env>/SLACK_WEBHOOK\" } (a SecureString) or \
                            webhook = { env = \"RUNBOOK_WEBHOOK_URL\" }";

impl<'de> Deserialize<'de> for WebhookSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let table = match toml::Value::deserialize(d)? {
            toml::Value::String(_) => {
                return Err(D::Error::custom(format!(
                    "[notify] webhook is a secret URL and must not be written in the file; {SOURCE_FORMS}"
                )));
            }
            table @ toml::Value::Table(_) => table,
            other => {
                return Err(D::Error::custom(format!(
                    "[notify] webhook: expected a table, got {}; {SOURCE_FORMS}",
                    other.type_str()
                )));
            }
        };
        let t = SourceTable::deserialize(table)
            .map_err(|e| D::Error::custom(format!("[notify] webhook: {}; {SOURCE_FORMS}", e.to_string().trim())))?;
        match (t.ssm, t.env) {
            (Some(name), None) => {
                let ok = name.starts_with('/')
                    && name.len() > 1
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c));
                if !ok {
                    // Not echoed: it may be the webhook URL itself, written in the wrong place.
                    return Err(D::Error::custom(
                        "[notify] webhook.ssm is not an SSM parameter name (its value is not shown: if it is the \
                         webhook URL, store that in SSM as a SecureString): write the parameter's full path, e.g. \
                         \"/runbook/armitage/SLACK_WEBHOOK\"",
                    ));
                }
                Ok(WebhookSource::Ssm(name))
            }
            (None, Some(var)) => {
                let ok = var.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ok {
                    return Err(D::Error::custom(
                        "[notify] webhook.env is not an environment variable name (its value is not shown): \
                         letters, digits and _, e.g. \"RUNBOOK_WEBHOOK_URL\"",
                    ));
                }
                Ok(WebhookSource::Env(var))
            }
            (Some(_), Some(_)) => {
                Err(D::Error::custom(format!("[notify] webhook names both ssm and env: keep one; {SOURCE_FORMS}")))
            }
            (None, None) => Err(D::Error::custom(format!("[notify] webhook names no source; {SOURCE_FORMS}"))),
        }
    }
}

/// The `[notify]` table of an environment file's text, checked on its own: its errors must
/// not quote the file (a URL written there by mistake is a secret). None when it is fine, is
/// absent, or the file is not TOML (the full parse says so).
fn check_notify_table(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    let notify = table.get("notify")?.clone();
    NotifySettings::deserialize(notify).err().map(|e| {
        let message = e.to_string();
        let message = message.trim();
        if message.starts_with("[notify]") { message.to_string() } else { format!("[notify]: {message}") }
    })
}

impl Environment {
    pub(crate) fn load(project: &Path, name: &str) -> Result<Self, EnvError> {
        let file = Named::Environment.read(project, name)?;
        let path = file.path.clone();
        // Before the parse, whose errors quote the line: [notify] may hold a secret URL.
        if let Some(message) = check_notify_table(&file.text) {
            return Err(EnvError::Invalid { path, message });
        }
        let mut env: Environment = file.parse().map_err(|message| EnvError::Parse { path: path.clone(), message })?;
        env.path = file.path;
        env.hash = file.hash;
        if env.name != name {
            return Err(EnvError::Invalid {
                path,
                message: format!("the file says name = \"{}\" but is named {name}.toml; make them agree", env.name),
            });
        }
        if let Err(message) = env.check_values() {
            return Err(EnvError::Invalid { path, message: env.shown(message) });
        }
        if env.aws.emulator_credentials.is_some() && !env.loopback_only {
            return Err(EnvError::Invalid {
                path,
                message: "[aws.emulator_credentials] is only for an emulator: set \
                          loopback_only = true, or remove it and use the AWS credential chain"
                    .into(),
            });
        }
        for (from, to) in &env.address_map {
            if parse_host_port(from).is_none() || to.parse::<SocketAddr>().is_err() {
                return Err(EnvError::Invalid {
                    path,
                    message: env.shown(format!("[address_map] {from:?} = {to:?}: write \"host:port\" = \"ip:port\"")),
                });
            }
        }
        Ok(env)
    }

    /// The account, region and endpoint as AWS writes them: a typo here would otherwise show up
    /// only as a failed preflight, or as calls to the wrong place.
    fn check_values(&self) -> Result<(), String> {
        if self.account_id.len() != 12 || !self.account_id.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "account_id = {:?} is not an AWS account ID: write its 12 digits, in quotes",
                self.account_id
            ));
        }
        let parts: Vec<&str> = self.region.split('-').collect();
        let region_ok = parts.len() >= 3
            && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
            && parts.last().is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()));
        if !region_ok {
            return Err(format!("region = {:?} is not an AWS region: write its code, e.g. us-east-1", self.region));
        }
        if let Some(url) = &self.aws.endpoint_url {
            let host = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).unwrap_or_default();
            if host.split(['/', '?', '#']).next().unwrap_or_default().contains('@') {
                return Err(format!(
                    "[aws] endpoint_url = {url:?} holds a user name or password: an AWS endpoint takes none (the \
                     credentials come from the AWS credential chain); write it as http://host:port"
                ));
            }
            if host.is_empty() || host.starts_with([':', '/']) || host.contains(char::is_whitespace) {
                return Err(format!(
                    "[aws] endpoint_url = {url:?} is not an http:// or https:// URL; write it as \
                     http://host:port (the ring's moto: http://127.0.0.1:4566)"
                ));
            }
        }
        Ok(())
    }

    /// `message` (a refusal that quotes this file's values) with each value shaped like a secret
    /// replaced by what it looks like ([`crate::secret::redact`]).
    fn shown(&self, message: String) -> String {
        let map = self.address_map.iter().flat_map(|(from, to)| [from, to]);
        let fields =
            [&self.account_id, &self.region].into_iter().chain(&self.aws.endpoint_url).chain(&self.aws.profile);
        let values = fields.chain(map).chain(self.vars.values()).map(String::as_str);
        crate::secret::redact(message, values)
    }

    /// Where to dial `host:port` from here: the address map first; on a loopback-only
    /// environment anything unmapped that is not loopback is refused.
    pub(crate) fn dial(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        for (from, to) in &self.address_map {
            let Some((pattern, mapped_port)) = parse_host_port(from) else { continue };
            if mapped_port == port && host_matches(pattern, host) {
                return to.parse().map_err(|_| format!("bad address_map target {to}"));
            }
        }
        let resolved = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}:{port}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host}:{port} resolves to no address"))?;
        if self.loopback_only && !is_loopback(resolved.ip()) {
            return Err(format!(
                "{host}:{port} is not a loopback address and environment {} is loopback-only; \
                 add it to [address_map] in {}",
                self.name,
                self.path.display()
            ));
        }
        Ok(resolved)
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

fn parse_host_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}

fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(&format!(".{suffix}")),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Environment {
        Environment {
            name: "local".into(),
            description: String::new(),
            account_id: "123456789012".into(),
            region: "us-east-1".into(),
            loopback_only: true,
            aws: AwsSettings::default(),
            vars: BTreeMap::new(),
            address_map: BTreeMap::from([("*.rds.amazonaws.com:5432".to_string(), "127.0.0.1:15432".to_string())]),
            notify: None,
            path: PathBuf::from("local.toml"),
            hash: String::new(),
        }
    }

    #[test]
    fn mapped_hosts_go_to_loopback() {
        let addr = ring().dial("pg.abc.us-east-1.rds.amazonaws.com", 5432).unwrap();
        assert_eq!(addr, "127.0.0.1:15432".parse().unwrap());
    }

    #[test]
    fn unmapped_private_address_is_refused_on_a_loopback_ring() {
        let err = ring().dial("10.1.2.3", 4222).unwrap_err();
        assert!(err.contains("not a loopback address"), "{err}");
        assert!(ring().dial("127.0.0.1", 4222).is_ok());
    }

    #[test]
    fn wildcard_needs_a_subdomain_and_the_same_port() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "a.example.com.evil"));
        assert!(ring().dial("10.0.0.1", 5433).is_err());
    }
}
