//! Crash points, for tests: `RUNBOOK_CRASH_AT=<step>:<name>` makes the process kill itself with
//! SIGKILL at that point, as a power cut or `kill -9` would, so that a test can prove resume
//! settles what was left. The engine's own points are `intent` and `applied`.

/// Kills this process if `RUNBOOK_CRASH_AT` names this point.
pub(crate) fn kill_if_asked(step: &str, name: &str) {
    if std::env::var("RUNBOOK_CRASH_AT").ok().as_deref() == Some(&format!("{step}:{name}")) {
        // SAFETY: kill(2) on our own pid with a constant signal has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
