//! `runbook resume`: continue a run where it stopped.

use super::{
    Approval, CliError, Drive, Globals, Outcome, check_acknowledgement, drive, lock_and_connect, reopen, work_dir,
};
use crate::event::RunState;
use crate::identity::host;
use crate::state::{Holder, StateDb};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The run to continue (default: the last run).
    pub(crate) run: Option<i64>,
    #[command(flatten)]
    pub(crate) approval: Approval,
}

impl Args {
    pub(crate) async fn execute(self, g: &Globals) -> Result<Outcome, CliError> {
        resume(g, self.run).await
    }
}

pub(crate) async fn resume(g: &Globals, run: Option<i64>) -> Result<Outcome, CliError> {
    let mut db = crate::state::timing::measure_open(|| StateDb::existing(&g.state, false))?;
    let (row, book, env, notes) = reopen(g, &db, run)?;
    check_acknowledgement(g, &db, &env.name, Some(&row))?;
    if row.status == RunState::Done {
        return Ok(Outcome::NothingToResume { run: row.id, runbook: row.runbook });
    }
    book.check_files(&g.project)?;
    let work = work_dir(&g.state)?;
    let me = Holder::me(&host());
    let before = db.progress(row.id)?;
    let (cloud, mut preface) = lock_and_connect(g, &mut db, (&book, &env, &before), &me).await?;
    preface.extend(notes);
    let progress = db.progress(row.id).map_err(|source| CliError::Recorded { run: row.id, source })?;
    drive(g, Drive { db, me, run: row.id, book, env, cloud, progress, resumed: true, preface, work }).await
}
