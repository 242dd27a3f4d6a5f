//! Events into the state DB: each is appended to `events` and applied to the tables it
//! changes (runs, steps, attempts, outputs, `apply.rs`), in one transaction of the store's.

use super::{Backend, NewRun, StateDb, StateError};
use crate::clock::now_ms;
use crate::event::Event;

impl StateDb {
    pub(crate) fn create_run(&mut self, run: &NewRun<'_>) -> Result<i64, StateError> {
        match &mut self.backend {
            Backend::Sqlite(conn) => super::sqlite::create_run(conn, &self.path, run),
            Backend::Postgres(pg) => pg.create_run(&self.path, run, now_ms()),
        }
    }

    /// Appends `event` and updates the tables it changes, in one transaction.
    pub(crate) fn record(&mut self, run: Option<i64>, event: &Event) -> Result<(), StateError> {
        self.record_all(&[(run, event)])
    }

    /// Appends several events in one transaction (one fsync): a group commit.
    pub(crate) fn record_all(&mut self, events: &[(Option<i64>, &Event)]) -> Result<(), StateError> {
        let (holder, now) = (self.holder.as_ref(), now_ms());
        // An intent comes before a side effect: each store checks, in the transaction that
        // records it, that the lease is still ours.
        match &mut self.backend {
            Backend::Sqlite(conn) => super::sqlite::record_all(conn, &self.path, events, holder, now)?,
            Backend::Postgres(pg) => pg.record_all(&self.path, events, holder, now)?,
        }
        #[cfg(test)]
        COMMITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// Event transactions committed by this process (each one WAL fsync under synchronous=FULL).
#[cfg(test)]
static COMMITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cfg(test)]
pub(crate) fn commits() -> u64 {
    COMMITS.load(std::sync::atomic::Ordering::Relaxed)
}
