//! The commands runbook tells an operator to type. Each names the run it is about, so that a
//! hint pasted after another run has started (a rollback, a colleague's deploy) acts on the run
//! it was printed for, not on the newest one.

/// `runbook resume RUN`.
pub(crate) fn resume(run: i64) -> String {
    format!("runbook resume {run}")
}

/// `runbook resume RUN --yes`: continue a run stopped for an approval.
pub(crate) fn resume_approving(run: i64) -> String {
    format!("runbook resume {run} --yes")
}

/// `runbook status RUN`, or the last run's where there is no run (`plan`).
pub(crate) fn status(run: Option<i64>) -> String {
    match run {
        Some(run) => format!("runbook status {run}"),
        None => "runbook status".to_string(),
    }
}

/// `runbook retry STEP --run RUN`, or without `--run` where there is no run (`plan`).
pub(crate) fn retry(step: &str, run: Option<i64>) -> String {
    match run {
        Some(run) => format!("runbook retry {step} --run {run}"),
        None => format!("runbook retry {step}"),
    }
}

/// `runbook logs STEP --run RUN`, or without `--run` where there is no run (`plan`).
pub(crate) fn logs(step: &str, run: Option<i64>) -> String {
    match run {
        Some(run) => format!("runbook logs {step} --run {run}"),
        None => format!("runbook logs {step}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hint_names_its_run() {
        assert_eq!(resume(13), "runbook resume 13");
        assert_eq!(resume_approving(13), "runbook resume 13 --yes");
        assert_eq!(retry("T2.4", Some(13)), "runbook retry T2.4 --run 13");
        assert_eq!(logs("T2.4", Some(13)), "runbook logs T2.4 --run 13");
        assert_eq!(retry("T2.4", None), "runbook retry T2.4", "plan records no run");
        assert_eq!((status(Some(13)), status(None)), ("runbook status 13".to_string(), "runbook status".to_string()));
    }
}
