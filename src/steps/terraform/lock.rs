//! Terraform's own state lock, as T2.4 meets it: the `Lock Info:` block terraform prints when
//! the lock is held, who holds it as far as this host can tell (a live terraform in the step's
//! folder, or one killed with its run), the fix that names it, and how long a command waits.

use std::path::Path;

/// The `Lock Info:` block terraform prints when the state lock is held.
pub(super) struct LockInfo {
    pub(super) id: String,
    pub(super) who: String,
    pub(super) operation: String,
    pub(super) created: String,
}

/// Who holds terraform's state lock, as far as this host can tell.
#[derive(Debug, PartialEq)]
pub(super) enum Holder {
    /// Taken on this host, and no terraform process works in the step's folder any more: a run
    /// killed together with its terraform (a reboot, `kill -9` of the group) left it.
    Gone { who: String },
    /// Terraform processes on this host still work in the folder (a killed run's orphan
    /// finishing its apply): they release the lock when done.
    Working { pids: Vec<u32> },
    /// Taken on another host: only its owner can say whether it is still working.
    Elsewhere { who: String },
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Gone { who } => {
                write!(
                    f,
                    "its holder is gone: {who} is this host, and no terraform process here works in the step's folder"
                )
            }
            Holder::Working { pids } => {
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                write!(f, "terraform (pid {}) on this host still works in the folder and holds it", pids.join(", "))
            }
            Holder::Elsewhere { who } => write!(f, "it was taken on another host ({who})"),
        }
    }
}

impl LockInfo {
    pub(super) fn holder(&self, host: &str, working: &[u32]) -> Holder {
        let lock_host = self.who.rsplit_once('@').map_or("", |(_, h)| h);
        if lock_host != host {
            return Holder::Elsewhere { who: self.who.clone() };
        }
        if !working.is_empty() {
            return Holder::Working { pids: working.to_vec() };
        }
        Holder::Gone { who: self.who.clone() }
    }

    pub(super) fn fix(&self, holder: &Holder, step: &str, run: Option<i64>) -> String {
        let in_run = run.map(|r| format!(" --run {r}")).unwrap_or_default();
        let release = format!("runbook unlock --terraform {step} --lock-id {}{in_run} (recorded)", self.id);
        let what = format!("terraform's state lock {} ({}, since {})", self.id, self.operation, self.created);
        let retry = crate::hint::retry(step, run);
        match holder {
            Holder::Gone { .. } => {
                format!("{what} was left by a dead run: release it with {release}, then: {retry}")
            }
            Holder::Working { .. } => {
                format!("{what} is released when that terraform finishes: wait for it, then: {retry}")
            }
            Holder::Elsewhere { who } => {
                format!("{what} is held by {who}: ask them, or if that run is dead: {release}, then: {retry}")
            }
        }
    }

    pub(super) fn parse(text: &str) -> Option<Self> {
        let after = &text[text.find("Lock Info:")?..];
        let field = |name: &str| {
            after
                .lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| "?".into())
        };
        Some(LockInfo {
            id: field("ID:"),
            who: field("Who:"),
            operation: field("Operation:"),
            created: field("Created:"),
        })
    }
}

/// Terraform processes on this host whose working folder is `dir` (`/proc/<pid>/comm` is
/// `terraform` and `/proc/<pid>/cwd` is `dir`) as this process sees it: in the same mount
/// namespace. A terraform in a container (another mount namespace) works on the files that
/// container sees, its own `.terraform` and backend, even where its folder's path reads the same.
pub(super) fn terraform_working_in(dir: &Path) -> Vec<u32> {
    let Ok(dir) = dir.canonicalize() else { return Vec::new() };
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    let ours = std::fs::read_link("/proc/self/ns/mnt").ok();
    let mut pids: Vec<u32> = procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "terraform")
                && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir)
                && std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok() == ours
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// How long a command that takes the state lock waits for it: long while a terraform of an
/// earlier (killed) run still works in the folder and will release it; briefly otherwise, so
/// that a lock whose holder is gone is reported in seconds, not after five minutes.
pub(super) fn lock_timeout(dir: &Path) -> (&'static str, Vec<u32>) {
    let working = terraform_working_in(dir);
    (if working.is_empty() { "-lock-timeout=20s" } else { "-lock-timeout=300s" }, working)
}
