//! `runbook unlock`: break a stale run lock, or release a terraform state lock a dead run left; both recorded in the audit.

use std::sync::Arc;

use super::{CliError, Globals, Outcome, reopen, take_lock, work_dir};
use crate::cloud::Cloud;
use crate::event::Event;
use crate::identity::{host, operator};
use crate::recorder::Recorder;
use crate::state::{Holder, StateDb};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Break the run lock of a run whose process is dead (a live one's only with --run N --yes).
    #[arg(long)]
    pub(crate) force: bool,
    /// The run whose lock to break, when its process is alive.
    #[arg(long)]
    pub(crate) run: Option<i64>,
    /// Confirms breaking a live run's lock.
    #[arg(long)]
    pub(crate) yes: bool,
    /// Instead: release the terraform state lock a dead run left in this step's workspace.
    #[arg(long, value_name = "STEP", requires = "lock_id", conflicts_with_all = ["force", "yes"])]
    pub(crate) terraform: Option<String>,
    /// The lock's ID, as the step's error shows it.
    #[arg(long, value_name = "ID", requires = "terraform")]
    pub(crate) lock_id: Option<String>,
}

impl Args {
    pub(crate) async fn execute(self, g: &Globals) -> Result<Outcome, CliError> {
        match &self.terraform {
            Some(step) => release_state_lock(g, step, self.lock_id.as_deref().unwrap_or_default(), self.run).await,
            None => unlock(g, self.force, self.run, self.yes),
        }
    }
}

/// Breaks the run lock. A live holder's lease is broken only when the operator names its run
/// and confirms (`--run N --yes`); the holder then stops before its next side effect.
pub(crate) fn unlock(g: &Globals, force: bool, run: Option<i64>, yes: bool) -> Result<Outcome, CliError> {
    if !force {
        return Err(CliError::Usage(
            "unlock breaks another run's lock; make sure that run is dead, then pass --force".into(),
        ));
    }
    let mut db = StateDb::at(&g.state)?;
    let Some(lease) = db.lease(&host())? else { return Ok(Outcome::Unlocked(None)) };
    if lease.alive && !(yes && run.is_some() && run == lease.run) {
        return Err(CliError::LiveHolder {
            run: lease.run.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            host: lease.holder.host,
            pid: lease.holder.pid,
            heartbeat_age_s: lease.heartbeat_age_s,
        });
    }
    if !db.break_lock(&lease.holder)? {
        return Err(CliError::Usage(
            "the run lock changed hands while it was being broken; nothing was broken. Look again: runbook status"
                .into(),
        ));
    }
    let h = &lease.holder;
    let event =
        Event::LockBroken { previous_host: h.host.clone(), previous_pid: h.pid, operator: operator(), host: host() };
    // With its run, when that run is in this DB.
    let run = lease.run.filter(|r| db.run(*r).is_ok());
    db.record(run, &event)?;
    Ok(Outcome::Unlocked(Some(lease.holder)))
}

/// Releases the terraform state lock `lock_id` that a dead run left in `step`'s workspace, on
/// the operator's explicit command, under runbook's own run lock (never beside a live run), and
/// records who did it.
pub(crate) async fn release_state_lock(
    g: &Globals,
    step: &str,
    lock_id: &str,
    run: Option<i64>,
) -> Result<Outcome, CliError> {
    let mut db = StateDb::existing(&g.state, false)?;
    let (row, book, env, _) = reopen(g, &db, run)?;
    let holds_lock = |kind: &str| crate::steps::find(book.registry, kind).is_some_and(|k| k.holds_lock);
    let named = book.step(step)?;
    if !holds_lock(&named.kind) {
        let lockers: Vec<&str> = book.steps.iter().filter(|s| holds_lock(&s.kind)).map(|s| s.id.as_str()).collect();
        return Err(CliError::Usage(format!(
            "step {step} is of kind {}, whose tool takes no lock of its own; `unlock --terraform` names a step \
             that does: {}",
            named.kind,
            if lockers.is_empty() { "none in this runbook".to_string() } else { lockers.join(", ") }
        )));
    }
    let typed = named.without_inputs();
    let work = work_dir(&g.state)?;
    let me = Holder::me(&host());
    let takeover = take_lock(&mut db, &me)?;
    let cloud = Arc::new(Cloud::connect(&env).await);
    let services = Arc::new(g.services(Arc::new(env.clone()), cloud, work, Some(row.id)));
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let cx = crate::steps::StepContext::new(&services, step, 0, Recorder::new(None, tx));
    let released = typed.release_lock(&cx, lock_id).await;
    let released_event = Event::StateLockReleased {
        step: step.to_string(),
        lock_id: lock_id.to_string(),
        operator: operator(),
        host: me.host.clone(),
    };
    let recorded = takeover
        .iter()
        .chain(released.is_ok().then_some(&released_event))
        .try_for_each(|event| db.record(Some(row.id), event));
    let _ = db.release_lock(&me);
    released.map_err(|error| CliError::Step { error })?;
    recorded.map_err(|source| CliError::Recorded { run: row.id, source })?;
    Ok(Outcome::StateLockReleased { run: row.id, step: step.to_string(), lock_id: lock_id.to_string() })
}
