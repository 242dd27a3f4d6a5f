//! Orphans: resources in AWS that terraform's state does not hold, though an apply of this
//! module created them. Two causes leave one: terraform killed between the create and its state
//! write (a closed laptop, `kill -9` of the group), or a create that the provider's SDK sent
//! again after AWS had made the resource (a lost or slow answer), so that the retry failed.
//! The next apply fails on each with "already exists" (or "duplicate"). This reads them from
//! terraform's `-json` diagnostics (the resource's address, and its import ID where the
//! provider's error carries it and the type's ID is that name), and keeps the ones runbook can
//! import between attempts, so that a resumed step offers their `terraform import` for approval
//! before it plans.
//!
//! It never guesses: a diagnostic without a resource address is no orphan, and an ID it cannot
//! read from the error is left for the operator to look up, with what to look up, unless a
//! look-up finds exactly one (a security group rule's, see [`super::security_group_rule`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One resource in AWS that terraform's state does not hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Orphan {
    /// Its terraform address, `aws_cloudwatch_log_group.dixie`.
    pub(super) address: String,
    /// Its import ID, read from terraform's error; `None`: to be looked up.
    pub(super) id: Option<String>,
    /// The name the provider's error gives it (`creating … (NAME): …`), if any.
    #[serde(default)]
    name: Option<String>,
    /// What runbook's look-up of its ID found instead of one ID: nothing, several, or why it
    /// could not tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    found: Option<String>,
}

/// How the AWS provider imports a resource type the ring's terraform module creates.
enum ImportId {
    /// The ID is the name in the provider's create error: runbook can import it.
    Name,
    /// The ID is something else, looked up with this (`NAME` stands for the name in the error).
    LookUp(&'static str),
}

/// The types of `fixtures/dixie/deploy/terraform` whose create can fail with "already exists",
/// and their import IDs as the AWS provider documents them. Types whose create is an upsert
/// (alarms, metric filters, role policies, SNS topics) or always new (task definitions) never
/// leave an orphan that fails the apply, so they are not here.
const IMPORT_IDS: &[(&str, ImportId)] = &[
    ("aws_cloudwatch_log_group", ImportId::Name),
    ("aws_iam_role", ImportId::Name),
    ("aws_ssm_parameter", ImportId::Name),
    ("aws_elasticache_parameter_group", ImportId::Name),
    ("aws_elasticache_subnet_group", ImportId::Name),
    ("aws_elasticache_replication_group", ImportId::Name),
    (
        "aws_security_group",
        ImportId::LookUp(
            "the security group's ID (sg-…): aws ec2 describe-security-groups --filters Name=group-name,Values=NAME",
        ),
    ),
    ("aws_lb_target_group", ImportId::LookUp("the target group's ARN: aws elbv2 describe-target-groups --names NAME")),
    (
        "aws_vpc_security_group_ingress_rule",
        ImportId::LookUp(
            "the rule's ID (sgr-…): aws ec2 describe-security-group-rules --filters Name=group-id,Values=sg-… \
             (its group), the inbound rule with its protocol, ports and peer",
        ),
    ),
    (
        "aws_vpc_security_group_egress_rule",
        ImportId::LookUp(
            "the rule's ID (sgr-…): aws ec2 describe-security-group-rules --filters Name=group-id,Values=sg-… \
             (its group), the outbound rule with its protocol, ports and peer",
        ),
    ),
    (
        "aws_route53_record",
        ImportId::LookUp("ZONEID_NAME_TYPE: the hosted zone's ID, the record's name and its type, joined by _"),
    ),
    ("aws_ecs_service", ImportId::LookUp("CLUSTER/SERVICE: the cluster's and the service's names")),
    ("aws_lb_listener_rule", ImportId::LookUp("the rule's ARN: aws elbv2 describe-rules --listener-arn ARN")),
];

impl Orphan {
    /// The orphan an apply's error diagnostic (the `diagnostic` object of a `-json` line)
    /// names: an error about creating a resource that already exists, with the resource's
    /// address. `None` for anything else.
    pub(super) fn from_diagnostic(diagnostic: &Value) -> Option<Orphan> {
        if diagnostic["severity"] != "error" {
            return None;
        }
        let summary = diagnostic["summary"].as_str()?;
        let detail = diagnostic["detail"].as_str().unwrap_or_default();
        let said = format!("{summary}\n{detail}").to_ascii_lowercase();
        let exists = ["already exist", "alreadyexist", "duplicate"].iter().any(|w| said.contains(w));
        if !exists || !summary.to_ascii_lowercase().starts_with("creating ") {
            return None;
        }
        let address = diagnostic["address"].as_str()?;
        let kind = resource_type(address)?;
        let name = created_name(summary);
        let id = match IMPORT_IDS.iter().find(|(t, _)| *t == kind) {
            Some((_, ImportId::Name)) => name.clone(),
            _ => None,
        };
        Some(Orphan { address: address.to_string(), id, name, found: None })
    }

    /// What a look-up of its import ID found: the ID, or what it found instead.
    pub(super) fn looked_up(&mut self, found: Result<String, String>) {
        match found {
            Ok(id) => self.id = Some(id),
            Err(instead) => self.found = Some(instead),
        }
    }

    /// `terraform import ADDRESS ID`, quoted for a shell; `None` without an ID.
    pub(super) fn import_command(&self) -> Option<String> {
        let id = self.id.as_deref()?;
        Some(format!("terraform import {} {}", quoted(&self.address), quoted(id)))
    }

    /// What its import ID is, and how to find it.
    pub(super) fn look_up(&self) -> String {
        let kind = resource_type(&self.address).unwrap_or("?");
        let name = self.name.as_deref().unwrap_or("NAME");
        match IMPORT_IDS.iter().find(|(t, _)| *t == kind) {
            Some((_, ImportId::Name)) => {
                format!("its import ID is its name ({kind}), which terraform's error did not give")
            }
            Some((_, ImportId::LookUp(how))) => format!("its import ID is {}", how.replace("NAME", &quoted(name))),
            None => format!(
                "runbook does not know the import ID of {kind}: see \"Import\" in the AWS provider's documentation of {kind}"
            ),
        }
    }

    /// One line for an operator: the address and either its import or what to look up.
    pub(super) fn line(&self) -> String {
        match self.import_command() {
            Some(import) => format!("{}: {import}", self.address),
            None => {
                let found = self.found.as_deref().map(|f| format!(" ({f})")).unwrap_or_default();
                format!(
                    "{}: {}{found}, then: terraform import {} ID",
                    self.address,
                    self.look_up(),
                    quoted(&self.address)
                )
            }
        }
    }
}

/// Why resources are in AWS but not in terraform's state, said of `n` of them: true of both
/// causes, since runbook cannot tell which it was.
pub(super) fn cause(n: usize) -> String {
    let them = if n == 1 { "it" } else { "them" };
    format!("an apply died between creating and recording {them}, or retried a create that AWS had already done")
}

/// The type of a managed resource's address (`module.app.aws_x.y["k"]` → `aws_x`); `None` for
/// anything else (a data source, a module, text that is not an address).
pub(super) fn resource_type(address: &str) -> Option<&str> {
    let mut parts = segments(address)?;
    while parts.first().is_some_and(|p| *p == "module") {
        let module = parts.get(1)?;
        identifier(module.split('[').next()?).then_some(())?;
        parts.drain(..2);
    }
    let [kind, name] = parts.as_slice() else { return None };
    let bare = name.split_once('[').map_or(*name, |(n, index)| if index.ends_with(']') { n } else { "" });
    let lower = |s: &str| s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    (*kind != "data" && lower(kind) && kind.contains('_') && identifier(bare)).then_some(*kind)
}

/// An address split at the dots outside `[…]`; `None` when the brackets do not match.
pub(super) fn segments(address: &str) -> Option<Vec<&str>> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in address.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            '.' if depth == 0 => {
                parts.push(&address[start..i]);
                start = i + 1;
            }
            c if c.is_whitespace() && depth == 0 => return None,
            _ => {}
        }
        if depth < 0 {
            return None;
        }
    }
    parts.push(&address[start..]);
    (depth == 0).then_some(parts)
}

fn identifier(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The name in `creating <What> (NAME): …`, when it is one runbook passes on: no space, no
/// quote, nothing a shell or terraform would read otherwise.
fn created_name(summary: &str) -> Option<String> {
    let (head, rest) = summary.split_once(" (")?;
    if head.contains(':') {
        return None;
    }
    let (name, _) = rest.split_once("):")?;
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-:@+=,#".contains(c);
    (!name.is_empty() && name.chars().all(plain)).then(|| name.to_string())
}

/// `text` as one shell word: as is when it is plain, else in single quotes.
fn quoted(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-:@+=,".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Where a step keeps the orphans it found, for its next attempt: in the private work folder.
pub(super) fn kept_at(work_dir: &Path, step: &str) -> PathBuf {
    work_dir.join(format!("{step}.orphans.json"))
}

/// What is kept: the orphans of one workspace of one terraform folder.
#[derive(Serialize, Deserialize)]
struct Kept {
    dir: PathBuf,
    workspace: String,
    orphans: Vec<Orphan>,
}

/// Keeps `orphans` (those runbook can import) for the next attempt; none: forgets them.
pub(super) fn keep(path: &Path, dir: &Path, workspace: &str, orphans: &[Orphan]) -> std::io::Result<()> {
    let importable: Vec<Orphan> = orphans.iter().filter(|o| o.id.is_some()).cloned().collect();
    if importable.is_empty() {
        return forget(path);
    }
    let kept = Kept { dir: dir.to_path_buf(), workspace: workspace.to_string(), orphans: importable };
    std::fs::write(path, serde_json::to_vec(&kept).map_err(std::io::Error::other)?)
}

/// The orphans kept for this folder and workspace; none when nothing (readable) is kept.
pub(super) fn kept(path: &Path, dir: &Path, workspace: &str) -> Vec<Orphan> {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Kept>(&bytes).ok())
        .filter(|k| k.dir == dir && k.workspace == workspace)
        .map(|k| k.orphans.into_iter().filter(|o| o.id.is_some() && resource_type(&o.address).is_some()).collect())
        .unwrap_or_default()
}

pub(super) fn forget(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
