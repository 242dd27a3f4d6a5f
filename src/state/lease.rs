//! The run lock's rules: one row, a lease held by a process (host, pid and the pid's start
//! time) that beats while it runs. A live holder is never displaced; a dead one (same host: no
//! process with that pid and start time; other host: no heartbeat for the stale period) is
//! taken over, and the takeover is returned so that it is recorded. `lock.rs` applies them.

use std::path::Path;

use super::StateError;
use crate::clock::format_utc;

/// A lease whose holder has not beaten for this long, on another host, may be taken over.
pub(crate) const LEASE_STALE_MS: i64 = 30_000;

/// Who holds (or held) the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) host: String,
    pub(crate) pid: i64,
    /// Start time of the pid (clock ticks since boot), when known.
    pub(crate) pid_started: Option<i64>,
}

impl Holder {
    /// This process on this host.
    pub(crate) fn me(host: &str) -> Self {
        let pid = i64::from(std::process::id());
        Holder { host: host.to_string(), pid, pid_started: process_start(pid) }
    }
}

/// The lease as `unlock` and `status` see it.
pub(crate) struct LeaseView {
    pub(crate) holder: Holder,
    pub(crate) run: Option<i64>,
    pub(crate) alive: bool,
    pub(crate) heartbeat_age_s: i64,
}

/// The lease row, as either store reads it.
pub(super) struct Lease {
    pub(super) run: Option<i64>,
    pub(super) holder: Holder,
    pub(super) since: i64,
    pub(super) heartbeat: i64,
}

/// Whether `me` may take the lease from `current` (nobody, itself, or a dead holder, which is
/// returned so that the takeover is recorded); a live holder's lease is refused.
pub(super) fn may_take(
    path: &Path,
    me: &Holder,
    current: Option<Lease>,
    now: i64,
) -> Result<Option<Holder>, StateError> {
    let Some(lease) = current else { return Ok(None) };
    let same = lease.holder.pid == me.pid && lease.holder.host == me.host;
    if same {
        return Ok(None);
    }
    if alive(&me.host, &lease.holder, lease.heartbeat, now) {
        return Err(StateError::Locked {
            path: path.to_path_buf(),
            run: lease.run.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            host: lease.holder.host,
            pid: lease.holder.pid,
            since: format_utc(lease.since),
            heartbeat_age_s: (now - lease.heartbeat) / 1000,
        });
    }
    Ok(Some(lease.holder))
}

pub(super) fn describe(lease: Option<Lease>) -> String {
    match lease {
        None => "the lock was broken: nobody holds it".to_string(),
        Some(l) => format!(
            "held by pid {} on {}{} since {}",
            l.holder.pid,
            l.holder.host,
            l.run.map(|r| format!(" for run {r}")).unwrap_or_default(),
            format_utc(l.since)
        ),
    }
}

/// Same host: a process with that pid exists and, when the lease knows it, started when the
/// holder did (a reused pid is another process); a lease of the old format, which does not
/// know it, must also have beaten within the stale period (pid 1 with a heartbeat from 1970
/// is not a live run). Other host: it beat within the stale period.
pub(super) fn alive(our_host: &str, holder: &Holder, heartbeat_at: i64, now: i64) -> bool {
    let beating = now - heartbeat_at < LEASE_STALE_MS;
    if holder.host != our_host {
        return beating;
    }
    match (holder.pid_started, process_start(holder.pid)) {
        (_, None) => false,
        (Some(then), Some(now_started)) => then == now_started,
        (None, Some(_)) => beating,
    }
}

/// Whether a process with this pid runs on this machine.
pub(crate) fn process_alive(pid: i64) -> bool {
    process_start(pid).is_some()
}

/// The start time of `pid` in clock ticks since boot (`/proc/<pid>/stat`, field 22), or
/// `None` when there is no such process.
pub(super) fn process_start(pid: i64) -> Option<i64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}
