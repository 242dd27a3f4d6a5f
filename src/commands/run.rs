//! `runbook run`: start a new run of a runbook.

use std::collections::BTreeMap;

use super::{
    Approval, CliError, Drive, Globals, Loaded, Outcome, Target, check_acknowledgement, connect, drive, take_lock,
    work_dir,
};
use crate::event::Event;
use crate::identity::{host, operator};
use crate::state::StateLocation;
use crate::state::{Holder, NewRun, Progress, StateDb, StateError};

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) target: Target,
    #[command(flatten)]
    pub(crate) approval: Approval,
}

impl Args {
    pub(crate) async fn execute(self, g: &Globals) -> Result<Outcome, CliError> {
        run(g, self.target.load(g)?).await
    }
}

/// A new run of what `Target::load` gave.
pub(crate) async fn run(g: &Globals, loaded: Loaded) -> Result<Outcome, CliError> {
    let Loaded { env, book, vars } = loaded;
    // A state DB that is there is checked before the cloud (a wrong --state is the likelier
    // mistake); one that is not is created only once the preflight has passed, so that a
    // refused run leaves nothing behind. Nothing is written before the preflight either.
    let opened = if let StateLocation::Postgres(_) = &g.state {
        // Reached and read, not created: a PostgreSQL schema is made only for a run that starts.
        match StateDb::existing(&g.state, true) {
            Ok(_) | Err(StateError::Missing { .. }) => None,
            Err(e) => return Err(e.into()),
        }
    } else if g.state.path().exists() {
        Some(crate::state::timing::measure_open(|| StateDb::at(&g.state))?)
    } else {
        None
    };
    let cloud = connect(g, &book, &env, &BTreeMap::new(), |_| true).await?;
    let mut db = match opened {
        Some(db) => db,
        None => crate::state::timing::measure_open(|| StateDb::at(&g.state))?,
    };
    check_acknowledgement(g, &db, &env.name, None)?;
    let work = work_dir(&g.state)?;
    let me = Holder::me(&host());
    let notes: Vec<Event> = take_lock(&mut db, &me)?.into_iter().collect();
    let step_ids: Vec<String> = book.steps.iter().map(|s| s.id.clone()).collect();
    let created = crate::state::timing::measure(|| {
        db.create_run(&NewRun {
            runbook: &book.name,
            env: &env.name,
            runbook_hash: &book.hash,
            inputs_hash: &book.inputs_hash,
            vars: &vars,
            operator: &operator(),
            host: &me.host,
            steps: &step_ids,
        })
    });
    let run = match created {
        Ok(run) => run,
        Err(e) => {
            let _ = db.release_lock(&me);
            return Err(e.into());
        }
    };
    drive(
        g,
        Drive { db, me, run, book, env, cloud, progress: Progress::default(), resumed: false, preface: notes, work },
    )
    .await
}
