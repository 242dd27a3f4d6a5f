//! `runbook status`: a run's steps with state, attempts, duration, last error, and what the
//! operator should do next. Reads the state DB only.

use serde::Serialize;

use crate::clock::{format_duration, format_utc};
use crate::state::{RunRow, StateDb, StateError, StepRow};

#[derive(Debug, Serialize)]
pub(crate) struct StatusView {
    pub(crate) run: RunRow,
    pub(crate) steps: Vec<StepView>,
    /// The one thing to do next, as a command or a sentence.
    pub(crate) next: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct StepView {
    #[serde(flatten)]
    pub(crate) row: StepRow,
    pub(crate) next: Option<String>,
    /// Non-secret outputs (T2.8's are its table of checks).
    pub(crate) outputs: crate::event::Outputs,
}

pub(crate) fn view(db: &StateDb, run: Option<i64>, host: &str) -> Result<StatusView, StateError> {
    let mut run = match run {
        Some(id) => db.run(id)?,
        None => db.latest_run(None)?,
    };
    let rows = db.steps(run.id)?;
    let mut outputs = db.outputs(run.id)?;
    let active = run.status == "running" && db.run_is_live(run.id, host)?;
    if run.status == "running" && !active {
        // Its process died without recording an end (kill -9, power cut).
        run.status = "died".into();
    }
    let steps: Vec<StepView> = rows
        .into_iter()
        .map(|row| {
            let next = match row.state.as_str() {
                "failed" => Some(match &row.fix {
                    Some(fix) => fix.clone(),
                    None => format!("fix the cause, then: runbook retry {}", row.step),
                }),
                "running" if !active && row.in_doubt => {
                    Some("in doubt (interrupted after its intent): runbook resume settles it by its probe".into())
                }
                "running" | "pending" | "blocked" if !active => Some("runbook resume".into()),
                _ => None,
            };
            let outputs = outputs.remove(&row.step).unwrap_or_default();
            StepView { row, next, outputs }
        })
        .collect();
    let next = match run.status.as_str() {
        "done" => "nothing: every step is done".to_string(),
        "running" => "a run is in progress; wait for it".into(),
        "died" => "its process died: runbook resume (settles in-doubt steps by their probes)".into(),
        _ => steps
            .iter()
            .find_map(|s| (s.row.state == "failed").then(|| s.next.clone()).flatten())
            .unwrap_or_else(|| "runbook resume".into()),
    };
    Ok(StatusView { run, steps, next })
}

pub(crate) fn render(view: &StatusView) -> String {
    let run = &view.run;
    let mut out = format!(
        "run {}: {} on {} — {} (started {} by {}@{}{})\n",
        run.id,
        run.runbook,
        run.env,
        run.status,
        format_utc(run.started_at),
        run.operator,
        run.host,
        run.ended_at.map(|e| format!(", took {}", format_duration(e - run.started_at))).unwrap_or_default()
    );
    out.push_str(&format!("{:<8} {:<10} {:>8} {:>9}  {}\n", "STEP", "STATE", "ATTEMPTS", "DURATION", "LAST ERROR / NEXT"));
    for step in &view.steps {
        let row = &step.row;
        let state = if row.in_doubt && row.state == "running" && run.status != "running" { "in-doubt" } else { &row.state };
        let mut note = row.last_error.as_deref().map(first_line).unwrap_or_default();
        if let Some(next) = &step.next {
            if !note.is_empty() {
                note.push_str(" — ");
            }
            note.push_str("next: ");
            note.push_str(next);
        }
        out.push_str(&format!(
            "{:<8} {:<10} {:>8} {:>9}  {}\n",
            row.step,
            state,
            row.attempts,
            row.duration_ms.map(format_duration).unwrap_or_else(|| "-".into()),
            note
        ));
    }
    out.push_str(&format!("next: {}\n", view.next));
    out
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > 160 {
        format!("{}…", line.chars().take(160).collect::<String>())
    } else {
        line.to_string()
    }
}
