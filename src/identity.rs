//! Who runs this and where: the operator and host that runs, approvals, skips and lock
//! takeovers are recorded under.

/// RUNBOOK_OPERATOR, else the login name, else the account of our uid.
pub(crate) fn operator() -> String {
    if let Ok(name) = std::env::var("RUNBOOK_OPERATOR").or_else(|_| std::env::var("USER")) {
        return name;
    }
    // SAFETY: getuid(2) cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() }.to_string();
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.get(2) == Some(&uid.as_str())).then(|| fields[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// This machine's name as leases and the audit record it: `RUNBOOK_HOST`, else the kernel's
/// host name. A lease held on this host is judged by its pid (dead at once when the process is
/// gone); one held elsewhere by its heartbeat (dead after the stale period). Set `RUNBOOK_HOST`
/// where host names do not tell machines apart (containers that all call themselves
/// `localhost`, CI runners from one image) and share a state database.
pub(crate) fn host() -> String {
    if let Some(name) = std::env::var("RUNBOOK_HOST").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty()) {
        return name;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
