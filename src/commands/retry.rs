//! `runbook retry`: run one step again (with `--downstream`, what depends on it), then the rest.

use std::collections::BTreeSet;

use super::{
    Approval, CliError, Drive, Globals, Outcome, check_acknowledgement, drive, lock_and_connect, reopen, work_dir,
};
use crate::event::Event;
use crate::identity::{host, operator};
use crate::state::{Holder, Progress, StateDb, StateError};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The step's id, as in the runbook (e.g. T2.6).
    pub(crate) step: String,
    /// Also run again every step that depends on it, in dependency order.
    #[arg(long)]
    pub(crate) downstream: bool,
    /// The run the step belongs to (default: the last run).
    #[arg(long)]
    pub(crate) run: Option<i64>,
    #[command(flatten)]
    pub(crate) approval: Approval,
}

impl Args {
    pub(crate) async fn execute(self, g: &Globals) -> Result<Outcome, CliError> {
        retry(g, &self.step, self.downstream, self.run).await
    }
}

pub(crate) async fn retry(g: &Globals, step: &str, downstream: bool, run: Option<i64>) -> Result<Outcome, CliError> {
    let mut db = StateDb::existing(&g.state, false)?;
    let (row, book, env, notes) = reopen(g, &db, run)?;
    book.step(step)?;
    check_acknowledgement(g, &db, &env.name, None)?;
    book.check_files(&g.project)?;
    let mut reset = BTreeSet::from([step.to_string()]);
    if downstream {
        reset.extend(book.graph.downstream(step));
    }
    let work = work_dir(&g.state)?;
    let me = Holder::me(&host());
    let mut before = db.progress(row.id)?;
    before.finished.retain(|id| !reset.contains(id));
    let (cloud, mut preface) = lock_and_connect(g, &mut db, (&book, &env, &before), &me).await?;
    preface.extend(notes);
    for id in book.graph.topological().into_iter().filter(|id| reset.contains(id)) {
        preface.push(Event::StepReset {
            step: id,
            reason: format!("runbook retry {step}"),
            operator: operator(),
            host: me.host.clone(),
        });
    }
    // The resets are recorded first, then progress is read back from the DB.
    let recorded = |db: &mut StateDb, preface: &[Event]| -> Result<Progress, StateError> {
        for note in preface {
            db.record(Some(row.id), note)?;
        }
        db.progress(row.id)
    };
    let progress = recorded(&mut db, &preface).map_err(|source| CliError::Recorded { run: row.id, source })?;
    drive(g, Drive { db, me, run: row.id, book, env, cloud, progress, resumed: true, preface: Vec::new(), work }).await
}
