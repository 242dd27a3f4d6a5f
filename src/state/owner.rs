//! The state DB owned by one thread for the length of a run; async callers send it work.
//!
//! Events come in two kinds. A durable one (an intent, an outcome, the end of a run) is
//! committed before its sender goes on. The rest (logs, probes, starts) are queued without
//! waiting and committed together with whatever else is queued, at the latest with the next
//! durable event: a group commit, one fsync for many events, and FIFO order is kept.
//!
//! Queued events whose commit failed because the state DB's connection was lost and could not
//! be made again are kept (in order, up to a bound) and written with the next commit; the
//! failure still stops the run at its next decision. Log lines that are finally not written
//! (beyond the bound, refused, or in a commit whose outcome cannot be told) are counted, and a
//! line of each attempt's log says how many, with the next commit that succeeds.

use std::collections::BTreeMap;
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
    let mut unwritten = Unwritten::default();
    let mut next: Option<Job> = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None if batch.is_empty() => match rx.recv() {
                Ok(job) => job,
                Err(_) => {
                    commit(&mut db, &mut batch, &mut unwritten);
                    return;
                }
            },
            None => match rx.recv_timeout(LINGER) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    super::timing::measure(|| commit(&mut db, &mut batch, &mut unwritten));
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    commit(&mut db, &mut batch, &mut unwritten);
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
                    super::timing::measure(|| commit(&mut db, &mut batch, &mut unwritten));
                }
            }
            Job::Call(f) => {
                super::timing::measure(|| {
                    commit(&mut db, &mut batch, &mut unwritten);
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
fn commit(db: &mut StateDb, batch: &mut Vec<(i64, Event, Reply)>, unwritten: &mut Unwritten) {
    if batch.is_empty() && unwritten.is_empty() {
        return;
    }
    let notes = unwritten.notes();
    let events: Vec<(Option<i64>, &Event)> = (unwritten.carried.iter().map(|(run, event, _)| (*run, event)))
        .chain(batch.iter().map(|(run, event, _)| (*run, event)))
        .chain(notes.iter().map(|(run, event)| (*run, event)))
        .map(|(run, event)| (Some(run), event))
        .collect();
    let result = db.record_all(&events);
    drop(events);
    let kept = match &result {
        Ok(()) => Kept::Written,
        Err(StateError::ConnectionLost { .. }) => Kept::Later,
        Err(StateError::CommitUnknown { .. }) => Kept::Unknown,
        Err(_) => Kept::Dropped,
    };
    let result = result.map_err(|e| e.to_string());
    let mut queued = Vec::new();
    for (run, event, reply) in batch.drain(..) {
        match reply {
            Reply::Now(sender) => {
                let _ =
                    sender.send(result.clone().map_err(|message| StateError::Write { path: db.path.clone(), message }));
            }
            Reply::Later(failed) => {
                if let Err(message) = &result {
                    failed.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| message.clone());
                }
                queued.push((run, event, failed));
            }
        }
    }
    unwritten.settle(kept, queued);
}

/// What became of the queued events of a commit.
enum Kept {
    Written,
    /// The connection was lost before anything was written: write them with the next commit.
    Later,
    /// The connection was lost on the COMMIT, and whether it was written cannot be told.
    Unknown,
    /// The state DB refused them.
    Dropped,
}

/// Queued events the state DB has not taken yet, and the log lines it finally lost, by run,
/// step and attempt: a line of that attempt's log says how many, with the next commit.
#[derive(Default)]
struct Unwritten {
    carried: Vec<(i64, Event, WriteError)>,
    lost: BTreeMap<(i64, String, u32), Lost>,
}

#[derive(Default, Clone, Copy)]
struct Lost {
    /// Lines dropped after the connection was lost (more were waiting than are kept).
    dropped: usize,
    /// Lines whose commit was lost with the connection and could not be confirmed: they may
    /// be there after all.
    maybe: usize,
    /// Lines the state DB refused to write.
    refused: usize,
}

impl Lost {
    fn line(&self) -> String {
        let mut parts = Vec::new();
        if self.dropped > 0 {
            parts.push(format!("{} log lines were lost when the state DB connection dropped", self.dropped));
        }
        if self.maybe > 0 {
            parts.push(format!(
                "{} log lines may have been lost when the state DB connection dropped (their commit could not be \
                 confirmed)",
                self.maybe
            ));
        }
        if self.refused > 0 {
            parts.push(format!("{} log lines were lost: the state DB refused to write them", self.refused));
        }
        parts.join("; ")
    }
}

/// Queued events kept for the next commit while the state DB is unreachable, at most: beyond,
/// the oldest are dropped (and their log lines counted as lost).
const MAX_CARRIED: usize = 100_000;

impl Unwritten {
    fn is_empty(&self) -> bool {
        self.carried.is_empty() && self.lost.is_empty()
    }

    /// Log lines saying what was lost, one for each attempt that lost lines.
    fn notes(&self) -> Vec<(i64, Event)> {
        let note = |((run, step, attempt), lost): (&(i64, String, u32), &Lost)| {
            (*run, Event::StepLog { step: step.clone(), attempt: *attempt, line: lost.line() })
        };
        self.lost.iter().map(note).collect()
    }

    /// Keeps, forgets or counts as lost the carried events and `queued` after a commit.
    fn settle(&mut self, kept: Kept, queued: Vec<(i64, Event, WriteError)>) {
        let written = matches!(kept, Kept::Written);
        let mut pending = std::mem::take(&mut self.carried);
        pending.extend(queued);
        if written {
            self.lost.clear();
        }
        match kept {
            Kept::Written => {}
            Kept::Later => {
                let excess = pending.len().saturating_sub(MAX_CARRIED);
                for (run, event, _) in pending.drain(..excess) {
                    self.count(run, &event, |lost| lost.dropped += 1);
                }
                self.carried = pending;
            }
            Kept::Unknown => pending.iter().for_each(|(run, event, _)| self.count(*run, event, |lost| lost.maybe += 1)),
            Kept::Dropped => {
                pending.iter().for_each(|(run, event, _)| self.count(*run, event, |lost| lost.refused += 1))
            }
        }
    }

    fn count(&mut self, run: i64, event: &Event, add: impl Fn(&mut Lost)) {
        if let Event::StepLog { step, attempt, .. } = event {
            add(self.lost.entry((run, step.clone(), *attempt)).or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(step: &str, attempt: u32, n: usize) -> Vec<(i64, Event, WriteError)> {
        let line = |i| Event::StepLog { step: step.into(), attempt, line: format!("line {i}") };
        (0..n).map(|i| (7, line(i), WriteError::default())).collect()
    }

    fn said(unwritten: &Unwritten) -> Vec<(i64, String, u32, String)> {
        let said = |(run, event)| match event {
            Event::StepLog { step, attempt, line } => (run, step, attempt, line),
            other => panic!("a log line, not {other:?}"),
        };
        unwritten.notes().into_iter().map(said).collect()
    }

    #[test]
    fn lines_a_lost_connection_kept_are_written_with_the_next_commit_and_nothing_is_said_lost() {
        let mut unwritten = Unwritten::default();
        unwritten.settle(Kept::Later, lines("T2.4", 1, 47));
        unwritten.settle(Kept::Later, lines("T2.4", 1, 29));
        assert_eq!(unwritten.carried.len(), 76, "kept, in order, for the next commit");
        assert_eq!(unwritten.carried[47].1.step(), Some("T2.4"));
        assert!(said(&unwritten).is_empty());
        unwritten.settle(Kept::Written, Vec::new());
        assert!(unwritten.is_empty());
    }

    #[test]
    fn lines_beyond_what_is_kept_are_counted_and_said_lost_in_their_attempts_log() {
        let mut unwritten = Unwritten::default();
        unwritten.settle(Kept::Later, lines("T2.4", 2, 47));
        unwritten.settle(Kept::Later, lines("T2.5", 1, MAX_CARRIED));
        assert_eq!(unwritten.carried.len(), MAX_CARRIED);
        assert_eq!(
            said(&unwritten),
            [(7, "T2.4".into(), 2, "47 log lines were lost when the state DB connection dropped".into())]
        );
        // Said until a commit takes the note.
        unwritten.settle(Kept::Later, Vec::new());
        assert_eq!(said(&unwritten).len(), 1);
        unwritten.settle(Kept::Written, Vec::new());
        assert!(said(&unwritten).is_empty());
    }

    #[test]
    fn lines_whose_commit_cannot_be_told_are_not_written_again_and_said_maybe_lost() {
        let mut unwritten = Unwritten::default();
        unwritten.settle(Kept::Later, lines("T2.4", 1, 3));
        unwritten.settle(Kept::Unknown, lines("T2.4", 1, 2));
        assert!(unwritten.carried.is_empty(), "never twice");
        let note = "5 log lines may have been lost when the state DB connection dropped (their commit could not be \
                    confirmed)";
        assert_eq!(said(&unwritten), [(7, "T2.4".into(), 1, note.into())]);
        unwritten.settle(Kept::Dropped, lines("T2.4", 1, 1));
        assert!(said(&unwritten)[0].3.ends_with("; 1 log lines were lost: the state DB refused to write them"));
    }
}
