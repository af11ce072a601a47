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
//! While records were written since the last checkpoint, the committer checkpoints sled every
//! [`CHECKPOINT_INTERVAL`] (on a thread of its own), so the database trails the journal by
//! seconds even on a quiet relay whose journal file would take hours to fill; and
//! [`GroupCommit::checkpoint`] checkpoints in line (a clean close).
//!
//! The committer is a dedicated OS thread rather than a task on the blocking pool of whichever
//! runtime came first: it is started at open, needs no runtime, and keeps working whichever
//! runtime (or how many) the callers use. Each request carries a database handle (for
//! checkpoints); between batches it keeps one only while a timed checkpoint is owed. The
//! thread ends when the channel closes, and dropping the handle waits for it, so dropping the
//! last [`crate::Store`] really closes the database.

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

/// How often sled is checkpointed while anything was written since the last checkpoint: how
/// far the database may trail the journal. Under load the journal files fill faster than this
/// and checkpoint by size.
pub(crate) const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(30);

type Reply = oneshot::Sender<Result<(), sled::Error>>;

struct Request {
    db: sled::Db,
    /// `None`: nobody waits (see [`GroupCommit::soon`]).
    reply: Option<Reply>,
    /// Checkpoint in line after the sync ([`GroupCommit::checkpoint`]).
    checkpoint: bool,
}

/// Handle to the committer thread.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    /// `None` once dropped (the channel closes, and the thread ends).
    tx: Option<mpsc::SyncSender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for GroupCommit {
    /// Closes the channel and waits for the committer, so that no database handle outlives
    /// the store.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl GroupCommit {
    /// Starts the committer thread.
    pub(crate) fn start(
        metrics: Metrics,
        journal: Arc<Journal>,
        files: JournalFiles,
        checkpoint_interval: Duration,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::sync_channel(CHANNEL_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("postrider-store-commit".into())
            .spawn(move || run_committer(rx, &metrics, &journal, files, checkpoint_interval))
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        Ok(GroupCommit {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Returns once every write committed before this call is on disk.
    pub(crate) async fn durable(&self, db: &sled::Db) -> Result<()> {
        self.request(db, false).await
    }

    /// Returns once every write committed before this call is on disk and sled itself holds
    /// it (a checkpoint in line).
    pub(crate) async fn checkpoint(&self, db: &sled::Db) -> Result<()> {
        self.request(db, true).await
    }

    async fn request(&self, db: &sled::Db, checkpoint: bool) -> Result<()> {
        let Some(tx) = &self.tx else {
            return Err(StoreError::Closed);
        };
        let (reply, answer) = oneshot::channel();
        let mut request = Request {
            db: db.clone(),
            reply: Some(reply),
            checkpoint,
        };
        loop {
            match tx.try_send(request) {
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
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Request {
                db: db.clone(),
                reply: None,
                checkpoint: false,
            });
        }
    }
}

fn run_committer(
    rx: mpsc::Receiver<Request>,
    metrics: &Metrics,
    journal: &Journal,
    mut files: JournalFiles,
    checkpoint_interval: Duration,
) {
    let mut replies: Vec<Reply> = Vec::with_capacity(64);
    // A handle kept while a timed checkpoint is owed (records written since the last one).
    let mut owed: Option<sled::Db> = None;
    // When the first record after the last checkpoint was written.
    let mut dirty_since: Option<Instant> = None;
    loop {
        let first = if let Some(since) = dirty_since.filter(|_| owed.is_some()) {
            let left = (since + checkpoint_interval).saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(r) => Some(r),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(r) => Some(r),
                Err(_) => break,
            }
        };
        let Some(first) = first else {
            if let Some(db) = owed.take() {
                timed_checkpoint(&mut files, &db, &mut dirty_since);
                if files.dirty {
                    owed = Some(db);
                }
            }
            continue;
        };
        let db = first.db;
        let mut requests = 1;
        let mut checkpoint = first.checkpoint;
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
            checkpoint |= req.checkpoint;
            replies.extend(req.reply);
        }
        let started = Instant::now();
        // Everything committed before the requests arrived is in this buffer.
        let buf = journal.take();
        let mut result = if journal.syncs_fail() {
            files.fail_sync()
        } else {
            files.sync(&db, &buf)
        };
        if checkpoint && result.is_ok() {
            result = files.checkpoint_now(&db);
        }
        metrics
            .store_flush_duration
            .observe(started.elapsed().as_secs_f64());
        metrics.store_flush_batch.observe(requests as f64);
        if files.dirty {
            let since = *dirty_since.get_or_insert(started);
            if since.elapsed() >= checkpoint_interval {
                timed_checkpoint(&mut files, &db, &mut dirty_since);
            }
        } else {
            dirty_since = None;
        }
        if files.dirty {
            owed.get_or_insert(db);
        } else {
            owed = None;
            // Release the handle before answering, so a caller that drops its store
            // afterwards really closes the database.
            drop(db);
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, waiters = replies.len(), "store flush failed");
        }
        for reply in replies.drain(..) {
            let _ = reply.send(result.clone());
        }
    }
    if let Some(db) = owed.take()
        && let Err(e) = files.checkpoint_now(&db)
    {
        tracing::error!(error = %e, "store checkpoint at close failed");
    }
    files.finish();
    tracing::debug!("store committer stopped");
}

/// Starts a checkpoint in the background because records have waited for one for the
/// checkpoint interval (none is started while one is still running: the next batch
/// tries again).
fn timed_checkpoint(files: &mut JournalFiles, db: &sled::Db, dirty_since: &mut Option<Instant>) {
    match files.checkpoint_soon(db) {
        Ok(()) if !files.dirty => *dirty_since = None,
        Ok(()) => {}
        Err(e) => tracing::error!(error = %e, "timed store checkpoint failed"),
    }
}
