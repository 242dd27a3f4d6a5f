//! The state DB owned by one thread for the length of a run; async callers send it work.
//!
//! Events come in two kinds. A durable one (an intent, an outcome, the end of a run) is
//! committed before its sender goes on. The rest (logs, probes, starts) are queued without
//! waiting and committed together with whatever else is queued, at the latest with the next
//! durable event: a group commit, one fsync for many events, and FIFO order is kept.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{StateDb, StateError};
use crate::event::Event;

/// How long queued events wait for company before they are committed alone.
const LINGER: Duration = Duration::from_millis(5);

/// Where a failed queued write is kept, for the sender to see at its next decision.
pub(crate) type WriteError = Arc<Mutex<Option<String>>>;

enum Job {
    Record { run: i64, event: Event, reply: Reply },
    Call(Box<dyn FnOnce(&mut StateDb) + Send>),
}

enum Reply {
    /// Durable: answer after the commit.
    Now(tokio::sync::oneshot::Sender<Result<(), StateError>>),
    /// Queued: keep a failure here.
    Later(WriteError),
}

#[derive(Clone)]
pub(crate) struct StateHandle {
    tx: Sender<Job>,
}

impl StateHandle {
    pub(crate) fn spawn(db: StateDb) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("state-db".into())
            .spawn(move || serve(db, rx))
            .expect("spawn the state DB thread");
        Self { tx }
    }

    /// Runs `f` on the owner thread (after every queued event) and waits for its result.
    pub(crate) async fn call<R: Send + 'static>(&self, f: impl FnOnce(&mut StateDb) -> R + Send + 'static) -> R {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Box::new(move |db: &mut StateDb| {
            let _ = reply.send(f(db));
        });
        self.tx.send(Job::Call(job)).expect("the state DB thread outlives the run");
        answer.await.expect("the state DB thread answers every call")
    }

    /// Records `event` of `run` and returns once it is committed.
    pub(crate) async fn record(&self, run: i64, event: Event) -> Result<(), StateError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job::Record { run, event, reply: Reply::Now(reply) })
            .expect("the state DB thread outlives the run");
        answer.await.expect("the state DB thread answers every record")
    }

    /// Queues `event` of `run` for the next group commit; a failure lands in `failed`.
    pub(crate) fn record_later(&self, run: i64, event: Event, failed: WriteError) {
        let _ = self.tx.send(Job::Record { run, event, reply: Reply::Later(failed) });
    }
}

fn serve(mut db: StateDb, rx: Receiver<Job>) {
    let mut batch: Vec<(i64, Event, Reply)> = Vec::new();
    let mut next: Option<Job> = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None if batch.is_empty() => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            None => match rx.recv_timeout(LINGER) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    super::timing::measure(|| commit(&mut db, &mut batch));
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    commit(&mut db, &mut batch);
                    return;
                }
            },
        };
        match job {
            Job::Record { run, event, reply } => {
                let durable = matches!(reply, Reply::Now(_));
                batch.push((run, event, reply));
                if durable {
                    // Whatever else is queued already (other steps' intents and outcomes)
                    // shares this commit: one fsync for all of them.
                    next = take_queued(&rx, &mut batch);
                    super::timing::measure(|| commit(&mut db, &mut batch));
                }
            }
            Job::Call(f) => {
                super::timing::measure(|| {
                    commit(&mut db, &mut batch);
                    f(&mut db);
                });
            }
        }
    }
}

/// Moves queued events into `batch` until the queue is empty or holds a call, which is
/// returned to run after the commit.
fn take_queued(rx: &Receiver<Job>, batch: &mut Vec<(i64, Event, Reply)>) -> Option<Job> {
    while let Ok(job) = rx.try_recv() {
        match job {
            Job::Record { run, event, reply } => batch.push((run, event, reply)),
            call @ Job::Call(_) => return Some(call),
        }
    }
    None
}

/// Commits the batch in one transaction and answers every sender.
fn commit(db: &mut StateDb, batch: &mut Vec<(i64, Event, Reply)>) {
    if batch.is_empty() {
        return;
    }
    let events: Vec<(Option<i64>, &Event)> = batch.iter().map(|(run, event, _)| (Some(*run), event)).collect();
    let result = db.record_all(&events).map_err(|e| e.to_string());
    for (_, _, reply) in batch.drain(..) {
        match reply {
            Reply::Now(sender) => {
                let _ =
                    sender.send(result.clone().map_err(|message| StateError::Write { path: db.path.clone(), message }));
            }
            Reply::Later(failed) => {
                if let Err(message) = &result {
                    failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| message.clone());
                }
            }
        }
    }
}
