//! Group commit: many writers, one journal sync at a time.
//!
//! Every write is journaled as it commits (`journal.rs`). A writer that promises durability
//! then sends a oneshot to one committer over a bounded channel. The committer takes every
//! waiter queued so far (up to [`MAX_BATCH`]), takes the journal records committed up to that
//! moment, writes them to the journal file with one `fdatasync`, and answers all of them.
//! Writers that arrive during a sync are served by the next one. sled's own background flusher
//! is disabled (`flush_every_ms(None)`): sled is flushed only by journal checkpoints.
//!
//! Writes that need not hold up their caller (an attempt's outcome: losing it in a crash only
//! means the message is tried again, the at-least-once window) ask for a sync with
//! [`GroupCommit::soon`] and do not wait. They ride along with the next waiting sync; when no
//! writer waits, the committer gathers them for up to [`LAZY_DELAY`] and syncs once.
//!
//! The committer is a dedicated OS thread rather than a task on the blocking pool of whichever
//! runtime came first: it is started at open, needs no runtime, and keeps working whichever
//! runtime (or how many) the callers use. It holds no database handle between batches (each
//! request carries one, for checkpoints), so dropping the last [`crate::Store`] really closes
//! the database; the thread ends when the channel closes.

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use postrider_metrics::Metrics;

use tokio::sync::oneshot;

use crate::error::{Result, StoreError};
use crate::journal::{Journal, JournalFiles};

/// Capacity of the request channel; writers wait (back-pressure) when it is full.
const CHANNEL_CAPACITY: usize = 4096;
/// Most waiters answered by one flush.
const MAX_BATCH: usize = 4096;

/// How long flush requests nobody waits for are gathered before they get a flush of their own.
pub(crate) const LAZY_DELAY: Duration = Duration::from_millis(10);

type Reply = oneshot::Sender<Result<(), sled::Error>>;

struct Request {
    db: sled::Db,
    /// `None`: nobody waits (see [`GroupCommit::soon`]).
    reply: Option<Reply>,
}

/// Handle to the committer thread.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    tx: mpsc::SyncSender<Request>,
}

impl GroupCommit {
    /// Starts the committer thread.
    pub(crate) fn start(
        metrics: Metrics,
        journal: Arc<Journal>,
        files: JournalFiles,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::sync_channel(CHANNEL_CAPACITY);
        std::thread::Builder::new()
            .name("postrider-store-commit".into())
            .spawn(move || run_committer(rx, &metrics, &journal, files))
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        Ok(GroupCommit { tx })
    }

    /// Returns once every write committed before this call is on disk.
    pub(crate) async fn durable(&self, db: &sled::Db) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        let mut request = Request {
            db: db.clone(),
            reply: Some(reply),
        };
        loop {
            match self.tx.try_send(request) {
                Ok(()) => break,
                // Back-pressure: the committer is thousands of requests behind.
                Err(mpsc::TrySendError::Full(r)) => {
                    request = r;
                    tokio::task::yield_now().await;
                }
                Err(mpsc::TrySendError::Disconnected(_)) => return Err(StoreError::Closed),
            }
        }
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Sled(e)),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Makes every write committed before this call durable within about [`LAZY_DELAY`] (or
    /// with the next waiting flush), without waiting for it. A full request queue already
    /// guarantees a later flush, so the request is then simply not added.
    pub(crate) fn soon(&self, db: &sled::Db) {
        let _ = self.tx.try_send(Request {
            db: db.clone(),
            reply: None,
        });
    }
}

fn run_committer(
    rx: mpsc::Receiver<Request>,
    metrics: &Metrics,
    journal: &Journal,
    mut files: JournalFiles,
) {
    let mut replies: Vec<Reply> = Vec::with_capacity(64);
    while let Ok(first) = rx.recv() {
        let db = first.db;
        let mut requests = 1;
        replies.extend(first.reply);
        let mut gather_until = None;
        while requests < MAX_BATCH {
            let next = if replies.is_empty() {
                // Nobody waits yet: gather a little longer, until someone does.
                let until = *gather_until.get_or_insert_with(|| Instant::now() + LAZY_DELAY);
                match until.checked_duration_since(Instant::now()) {
                    Some(left) => rx.recv_timeout(left).ok(),
                    None => None,
                }
            } else {
                rx.try_recv().ok()
            };
            let Some(req) = next else { break };
            // Its `db` handle is dropped right here.
            requests += 1;
            replies.extend(req.reply);
        }
        let started = Instant::now();
        // Everything committed before the requests arrived is in this buffer.
        let buf = journal.take();
        let result = if journal.syncs_fail() {
            files.fail_sync()
        } else {
            files.sync(&db, &buf)
        };
        // Release the handle before answering, so a caller that drops its store afterwards
        // really closes the database.
        drop(db);
        metrics
            .store_flush_duration
            .observe(started.elapsed().as_secs_f64());
        metrics.store_flush_batch.observe(requests as f64);
        if let Err(e) = &result {
            tracing::error!(error = %e, waiters = replies.len(), "store flush failed");
        }
        for reply in replies.drain(..) {
            let _ = reply.send(result.clone());
        }
    }
    files.finish();
    tracing::debug!("store committer stopped");
}
