//! Durable message queue of Postrider, on sled 0.34.
//!
//! # Brief overview
//! [`Store`] is a cheap-to-clone handle over one sled database with these trees
//! (full layout: `migrations-free-data/README.md`):
//! - `messages`: message id → versioned record (the [`QueuedMessage`] plus where its schedule entry is),
//! - `bodies`: message id → the raw RFC 5322 message (written once, removed when finished),
//! - `schedule`: `be_u64(due_ms) ‖ be_u64(id)` → empty (a due time) or `L` (a lease), so due
//!   work is a range scan,
//! - `finished`: `be_u64(finished_ms) ‖ be_u64(id)` → `()`, for the retention purge,
//! - `held`: message id → `()`, messages an operator put on hold,
//! - `meta`: the data-directory format version and the last event sequence number,
//! - `events`: `be_u64(seq)` → an event (accepted, deferred, delivered, …), see [`Event`],
//! - `webhook_outbox`: pending webhook deliveries of events, see [`WebhookDelivery`],
//! - `suppressions`: lowercased address (plus ` domain` when scoped) → [`Suppression`],
//! - `idempotency` / `idempotency_expiry`: idempotency keys of submissions, see
//!   [`Store::enqueue_idempotent`],
//! - `bounce_inbox`: reports (DSNs, complaints) received at the bounce domain until they are
//!   processed, see [`Store::receive_report`].
//!
//! Every unfinished message that is not held has exactly one `schedule` entry: its next
//! attempt, or while an attempt is in flight, its lease expiry. Every state change is one
//! record of a write-ahead journal (`journal.rs`) across the trees it touches (planned outside,
//! checked and applied under the journal lock: see `plan.rs`), and every async call that
//! returns `Ok` after a state change has been made durable by a shared group-commit sync of
//! that journal (see `commit.rs`). sled itself is flushed only at journal checkpoints.
//!
//! # Typical use
//! - Submission: [`Store::enqueue`] → answer `250` only on `Ok`; a [`StoreError`] with
//!   [`StoreError::is_storage_failure`] becomes `451 4.3.0` / HTTP 503.
//! - Scheduler: [`Store::lease_due`] → deliver → [`Store::record_attempt`]; sleep until
//!   [`Store::next_due_at`] or [`Store::wait_for_work`].
//! - Operators: [`Store::list`], [`Store::stats`], [`Store::retry_now`], [`Store::retry_all`],
//!   [`Store::hold`], [`Store::release`], [`Store::delete`], [`Store::complete_without_lease`],
//!   and periodically [`Store::purge_finished`], [`Store::purge_events`] and
//!   [`Store::purge_idempotency`].
//! - Applications: [`Store::enqueue_idempotent`] (idempotency keys), [`Store::events_after`]
//!   (the event log, a durable cursor), the suppression list ([`Store::add_suppression`], …;
//!   hard bounces `5.1.x` are added by `record_attempt`), and the webhook outbox
//!   ([`Store::set_webhooks`], [`Store::lease_webhook_deliveries`], used by
//!   `postrider-webhooks`).

mod admin;
mod check;
mod codec;
mod commit;
mod damage;
mod error;
mod events;
mod idempotency;
mod inbox;
mod journal;
mod keys;
mod outbox;
mod plan;
mod queue;
mod repair;
mod suppress;
#[cfg(test)]
mod test_support;
mod tls_policy;
mod tls_report;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use postrider_core::{MessageId, NewMessage, QueuedMessage, Timestamp};
use postrider_metrics::Metrics;
use tokio::sync::Notify;

pub use admin::{
    BulkAction, BulkOutcome, ListFilter, ListPage, MAX_LIST_LIMIT, MAX_LIST_SCAN, MAX_TOP_DOMAINS,
    PendingSummary, QueueStats, RetryAllOutcome,
};
pub use check::{ConsistencyReport, MAX_PROBLEMS, Problem};
pub use damage::panic_is_contained;
pub use error::StoreError;
pub use events::{
    Event, EventFilter, EventKind, EventPage, MAX_EVENTS_PAGE, MAX_EVENTS_SCAN, WebhookSubscription,
};
pub use idempotency::{EnqueueResult, IdempotencyKey, MAX_IDEMPOTENCY_KEY_LEN};
pub use inbox::{
    InboxEffect, InboxOutcome, MAX_INBOX_REPORT, ReceivedReport, ReportEnvelope,
    is_hard_async_bounce,
};
pub use journal::{DamageKind, JournalDamage, JournalReport, inspect_journal};
pub use outbox::{MAX_OUTBOX_LEASE, WebhookDelivery};
pub use repair::{
    CheckVerdict, DataDirCheck, RebuildReport, RepairError, SalvagedTree, check_data_dir, rebuild,
};
pub use suppress::{
    MAX_SUPPRESSIONS_PAGE, ReportSource, Suppression, SuppressionReason, UnsubscribeOutcome,
    is_hard_bounce, scoped_key, suppression_key,
};
pub use tls_policy::CachedStsPolicy;
pub use tls_report::TlsReportRun;

use crate::codec::{DATA_FORMAT_VERSION, FORMAT_VERSION_KEY};
use crate::commit::GroupCommit;
use crate::error::Result;

/// sled page-cache size (a soft limit on the store's memory use). The hot working set is small
/// (messages are read back within milliseconds of being written, finished records and events
/// are append-only), and sled counts a cached page by its serialized size while the decoded
/// page in memory takes two to three times that. Measured on the relay bench: 16 MiB keeps the
/// process within its memory budget at the same message rate as 64 MiB, whose cache grew the
/// resident set by 40–60 MiB over a run; 256 MiB was slower than 64.
const CACHE_CAPACITY_BYTES: u64 = 16 * 1024 * 1024;

/// How a data directory is opened ([`Store::open_with`]).
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Start even when journal records are missing that no damage explains (a deleted journal
    /// file, a sequence gap). The loss is logged at ERROR, counted in
    /// `postrider_store_corrupt_records_total` and described in a file in `quarantine/`.
    /// Without it such a directory fails to open with [`StoreError::JournalIncomplete`], and a
    /// database that holds less than the journal shows it had made durable (sled recovering
    /// silently from a damaged log) with [`StoreError::DatabaseDamaged`].
    pub accept_journal_loss: bool,
    /// Size of each journal file (at least 64 KiB; default 32 MiB): how much is journaled
    /// between two size-triggered checkpoints. Tests use small files to exercise checkpoints.
    pub journal_bytes: Option<u64>,
    /// How long sled may trail the journal while writes come in (default 30 s): records
    /// written since the last checkpoint are checkpointed after this long.
    pub checkpoint_interval: Option<Duration>,
}

/// A due message claimed by [`Store::lease_due`]: its schedule entry now points at the lease
/// expiry, so if the process dies the message becomes due again: at once when the store is
/// next opened (leases of an earlier run are released), at the latest when the lease expires.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The message as stored when it was leased.
    pub message: QueuedMessage,
    /// The schedule time the lease holds (now + lease length).
    pub leased_until: Timestamp,
}

/// The result of an attempt, to be recorded atomically.
#[derive(Debug, Clone)]
pub struct AttemptUpdate {
    /// The message with updated recipient states and attempt counters. Its `id` is ignored
    /// (the leased id is kept); `next_attempt_at`, `held` and `finished_at` are set by the store
    /// from `next_attempt_at` below (`finished_at` is kept when the caller set it, else the
    /// clock is read).
    pub message: QueuedMessage,
    /// When to try again; `None` when every recipient is final.
    pub next_attempt_at: Option<Timestamp>,
    /// Notifications (DSNs) to enqueue in the same transaction.
    pub notifications: Vec<NewMessage>,
}

/// What [`Store::record_attempt`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum RecordOutcome {
    /// Written; the ids of the enqueued notifications.
    Recorded {
        /// Ids given to `AttemptUpdate::notifications`, in order.
        notification_ids: Vec<MessageId>,
    },
    /// The lease was no longer held (deleted, or re-leased after expiry); nothing was written.
    LeaseLost,
}

/// The trees of one data directory.
#[derive(Debug)]
pub(crate) struct Trees {
    pub(crate) messages: sled::Tree,
    pub(crate) bodies: sled::Tree,
    pub(crate) schedule: sled::Tree,
    pub(crate) finished: sled::Tree,
    pub(crate) held: sled::Tree,
    pub(crate) meta: sled::Tree,
    pub(crate) events: sled::Tree,
    pub(crate) outbox: sled::Tree,
    pub(crate) suppressions: sled::Tree,
    pub(crate) idempotency: sled::Tree,
    pub(crate) idempotency_expiry: sled::Tree,
    /// Reports received at the bounce domain, waiting to be processed (see `inbox.rs`).
    pub(crate) inbox: sled::Tree,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) trees: Trees,
    /// Cached outbound TLS policies (not journaled: a cache, see [`tls_policy`]).
    pub(crate) tls_policies: sled::Tree,
    /// TLS report session counts (not journaled, see [`tls_report`]).
    pub(crate) tls_report_counts: sled::Tree,
    /// TLS report runs per day.
    pub(crate) tls_report_runs: sled::Tree,
    /// The lock every write runs under, and the records not yet synced.
    pub(crate) journal: Arc<journal::Journal>,
    pub(crate) commit: GroupCommit,
    pub(crate) work: Notify,
    pub(crate) webhook_work: Notify,
    /// Wakes the processor of received reports ([`Store::wait_for_reports`]).
    pub(crate) inbox_work: Notify,
    pub(crate) webhooks: RwLock<Arc<Vec<WebhookSubscription>>>,
    pub(crate) pending: AtomicI64,
    pub(crate) fail_writes: AtomicBool,
    /// Set by the first write or flush that failed with a storage error (see [`Store::write_failed`]).
    pub(crate) write_failed: AtomicBool,
    pub(crate) metrics: Metrics,
    /// What the journal replay at open found.
    pub(crate) journal_report: JournalReport,
    /// Declared after the trees: dropped after them.
    pub(crate) db: sled::Db,
    /// The journal directory of a temporary store, removed last.
    pub(crate) _temporary_dir: Option<tempfile::TempDir>,
}

/// Handle to the queue. Cloning is cheap; the database closes when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

/// Reads the pending count of a current directory; initialises a new one; upgrades an older one
/// (format 1 is counted once) and marks it current (one batch, then flushed).
fn open_pending_count(db: &sled::Db, trees: &Trees, format_version: Option<u32>) -> Result<i64> {
    let kept = match format_version {
        Some(v) if v >= codec::PENDING_COUNT_SINCE => {
            match trees.meta.get(codec::PENDING_COUNT_KEY)? {
                Some(bytes) => Some(codec::decode_pending_count(&bytes)?),
                None => {
                    tracing::warn!("meta/pending_count missing: counting the queue once");
                    None
                }
            }
        }
        _ => None,
    };
    if let (Some(count), Some(DATA_FORMAT_VERSION)) = (kept, format_version) {
        return Ok(count);
    }
    let pending = match (kept, format_version) {
        (Some(count), _) => count,
        (None, None) => 0,
        (None, Some(_)) => queue::count_pending(trees)?,
    };
    let mut batch = sled::Batch::default();
    batch.insert(FORMAT_VERSION_KEY, &DATA_FORMAT_VERSION.to_be_bytes()[..]);
    batch.insert(codec::PENDING_COUNT_KEY, &pending.to_be_bytes()[..]);
    if format_version.is_none() {
        batch.insert(
            "created_by",
            concat!("postrider-store ", env!("CARGO_PKG_VERSION")),
        );
    }
    trees.meta.apply_batch(batch)?;
    db.flush()?;
    Ok(pending)
}

/// The store's settings of sled. Journal checkpoints are the only flushes (see `commit`).
pub(crate) fn sled_settings(config: sled::Config) -> sled::Config {
    config
        .cache_capacity(CACHE_CAPACITY_BYTES)
        .segment_size(SEGMENT_SIZE_BYTES)
        .flush_every_ms(None)
}

/// Opens sled with the store's settings and reads the data-directory format version: the
/// first reads, where a damaged database shows.
pub(crate) fn open_database(config: sled::Config) -> Result<(sled::Db, sled::Tree, Option<u32>)> {
    let db = sled_settings(config).open()?;
    let meta = db.open_tree("meta")?;
    let format_version = match meta.get(FORMAT_VERSION_KEY)? {
        Some(v) => Some(codec::check_format_version(&v)?),
        None => None,
    };
    Ok((db, meta, format_version))
}

/// sled log segment size. sled writes any page larger than a quarter of a segment to a separate
/// blob file that its flush never syncs; with 8 MiB segments that threshold is about 2 MiB, far
/// above a message record or a full leaf of 64 KiB body chunks. Fixed: sled refuses to reopen a
/// directory with a different segment size.
const SEGMENT_SIZE_BYTES: usize = 8 * 1024 * 1024;

/// Journal file size of temporary stores (tests).
const TEMPORARY_JOURNAL_BYTES: u64 = 4 * 1024 * 1024;

impl Store {
    /// Opens (or creates) the data directory at `path`. Fails with
    /// [`StoreError::UnknownFormat`] when the directory was written by a newer Postrider.
    pub fn open(path: &Path, metrics: Metrics) -> Result<Store, StoreError> {
        Store::open_with(path, metrics, &OpenOptions::default())
    }

    /// Opens (or creates) the data directory at `path` with `options`. Fails with
    /// [`StoreError::JournalIncomplete`] when acknowledged writes may be missing (unless
    /// accepted) and [`StoreError::DatabaseDamaged`] when sled cannot open its files.
    pub fn open_with(
        path: &Path,
        metrics: Metrics,
        options: &OpenOptions,
    ) -> Result<Store, StoreError> {
        // sled panics on some damaged files and reports others as corruption: both become
        // `DatabaseDamaged`, an error to act on rather than a crash on every start.
        let database = path.join("db");
        damage::guarded(&database, || {
            Store::open_config(
                sled::Config::new().path(path),
                metrics,
                path,
                Some(database.clone()),
                options,
                None,
            )
        })
    }

    /// [`Store::open`] with journal files of `bytes` each (at least 64 KiB): how much is
    /// journaled between two checkpoints of sled. Smaller files mean more checkpoints; tests
    /// use them to exercise checkpoints.
    pub fn open_with_journal_size(
        path: &Path,
        metrics: Metrics,
        bytes: u64,
    ) -> Result<Store, StoreError> {
        Store::open_with(
            path,
            metrics,
            &OpenOptions {
                journal_bytes: Some(bytes),
                ..OpenOptions::default()
            },
        )
    }

    /// A store in a fresh temporary directory (under `/dev/shm` when it exists), removed when
    /// the last handle is dropped. For tests.
    pub fn temporary(metrics: Metrics) -> Result<Store, StoreError> {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("postrider-journal")
                .tempdir_in(shm)
        } else {
            tempfile::Builder::new()
                .prefix("postrider-journal")
                .tempdir()
        }
        .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        let path = dir.path().to_path_buf();
        Store::open_config(
            sled::Config::new().temporary(true),
            metrics,
            &path,
            None,
            &OpenOptions {
                journal_bytes: Some(TEMPORARY_JOURNAL_BYTES),
                ..OpenOptions::default()
            },
            Some(dir),
        )
    }

    /// `journal_dir` holds the journal files; `log_file` is sled's log (`<dir>/db`), synced
    /// after every checkpoint; `None` for temporary stores.
    fn open_config(
        config: sled::Config,
        metrics: Metrics,
        journal_dir: &Path,
        log_file: Option<std::path::PathBuf>,
        options: &OpenOptions,
        temporary_dir: Option<tempfile::TempDir>,
    ) -> Result<Store> {
        let journal_bytes = options
            .journal_bytes
            .unwrap_or(journal::JOURNAL_FILE_BYTES)
            .max(64 * 1024);
        let (db, meta, format_version) = open_database(config)?;
        if let Some(path) = &log_file
            && !options.accept_journal_loss
        {
            damage::check_lost_writes(journal_dir, path, format_version, &meta)?;
        }
        let trees = Trees {
            messages: db.open_tree("messages")?,
            bodies: db.open_tree("bodies")?,
            schedule: db.open_tree("schedule")?,
            finished: db.open_tree("finished")?,
            held: db.open_tree("held")?,
            meta,
            events: db.open_tree("events")?,
            outbox: db.open_tree("webhook_outbox")?,
            suppressions: db.open_tree("suppressions")?,
            idempotency: db.open_tree("idempotency")?,
            idempotency_expiry: db.open_tree("idempotency_expiry")?,
            inbox: db.open_tree(inbox::TREE)?,
        };
        // sled's flush writes its log with sync_file_range on Linux, which neither flushes the
        // drive's write cache nor persists the file's size; checkpoints add an fdatasync.
        let log_file = match log_file {
            Some(p) => {
                Some(std::fs::File::open(&p).map_err(|e| StoreError::Sled(sled::Error::Io(e)))?)
            }
            None => None,
        };
        let journal::Replayed {
            next_seq,
            report: journal_report,
            resume,
        } = journal::replay(
            journal_dir,
            &db,
            &trees,
            log_file.as_ref(),
            journal::ReplaySettings {
                capacity: journal_bytes,
                files_expected: format_version.is_some_and(|v| v >= codec::JOURNAL_SINCE),
                accept_loss: options.accept_journal_loss,
            },
        )?;
        metrics
            .store_corrupt_records
            .inc_by(journal_report.lost_records());
        let pending = open_pending_count(&db, &trees, format_version)?;
        metrics.queue_messages.set(pending);
        tracing::info!(recovered = db.was_recovered(), pending, "store opened");
        let journal = Arc::new(journal::Journal::new(next_seq));
        let files =
            journal::JournalFiles::open(journal_dir, journal_bytes, log_file, next_seq, resume)?;
        let commit = GroupCommit::start(
            metrics.clone(),
            journal.clone(),
            files,
            options
                .checkpoint_interval
                .unwrap_or(commit::CHECKPOINT_INTERVAL),
        )?;
        let store = Store {
            inner: Arc::new(Inner {
                trees,
                tls_policies: db.open_tree(tls_policy::TREE)?,
                tls_report_counts: db.open_tree(tls_report::COUNTS_TREE)?,
                tls_report_runs: db.open_tree(tls_report::RUNS_TREE)?,
                journal,
                commit,
                work: Notify::new(),
                webhook_work: Notify::new(),
                inbox_work: Notify::new(),
                webhooks: RwLock::new(Arc::new(Vec::new())),
                pending: AtomicI64::new(pending),
                fail_writes: AtomicBool::new(false),
                write_failed: AtomicBool::new(false),
                metrics,
                journal_report,
                db,
                _temporary_dir: temporary_dir,
            }),
        };
        queue::release_stale_leases(&store, clock_now())?;
        Ok(store)
    }

    /// Test and operations hook: while `true`, every write path (enqueue, lease, record,
    /// admin changes, flush) fails with [`StoreError::Injected`] before writing anything.
    /// Lets other layers test their "storage unavailable" answers (`451 4.3.0`, HTTP 503).
    pub fn set_fail_writes(&self, fail: bool) {
        self.inner.fail_writes.store(fail, Ordering::Relaxed);
    }

    /// Fails with [`StoreError::Injected`] when writes are switched off.
    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.inner.fail_writes.load(Ordering::Relaxed) {
            Err(StoreError::Injected)
        } else {
            Ok(())
        }
    }

    /// Messages accepted and not yet finished (held ones included).
    pub fn pending_count(&self) -> u64 {
        u64::try_from(self.inner.pending.load(Ordering::Relaxed)).unwrap_or(0)
    }

    pub(crate) fn add_pending(&self, delta: i64) {
        if delta != 0 {
            let now = self.inner.pending.fetch_add(delta, Ordering::Relaxed) + delta;
            self.inner.metrics.queue_messages.set(now.max(0));
        }
    }

    /// Makes every write so far durable (one shared journal sync).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.check_writable()?;
        self.inner.commit.durable(&self.inner.db).await
    }

    /// What reading the journal found when the store was opened: damage, recovered records.
    pub fn journal_report(&self) -> &JournalReport {
        &self.inner.journal_report
    }

    /// Closes the store cleanly (at shutdown): makes every write durable, checkpoints sled and
    /// marks the database as holding everything, so that the next open needs nothing from the
    /// journal files (a damaged or lost journal file then costs nothing). Writes after this
    /// call are still journaled and durable; they simply take the mark away again.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.check_writable()?;
        let r = self.inner.commit.checkpoint(&self.inner.db).await;
        self.note_failure(&r);
        r?;
        {
            // Under the journal lock no write runs: sled holds exactly `journal_seq` now.
            let _writes = self.inner.journal.lock();
            let seq = journal::sled_seq(&self.inner.trees)?;
            self.inner
                .trees
                .meta
                .insert(journal::JOURNAL_CLEAN_KEY, &seq.to_be_bytes()[..])?;
        }
        let r = self.inner.commit.checkpoint(&self.inner.db).await;
        self.note_failure(&r);
        r
    }

    /// Resolves when new work may be due (an enqueue, a new or earlier schedule entry, a
    /// retry-now or a release). Wake-ups are stored when nobody waits, so a wake-up between
    /// [`Store::lease_due`] and this call is not lost; meant for one scheduler task.
    pub async fn wait_for_work(&self) {
        self.inner.work.notified().await;
    }

    /// Wakes [`Store::wait_for_work`] (e.g. for an API "flush queue" request).
    pub fn wake(&self) {
        self.inner.work.notify_one();
    }

    /// Bytes the data directory uses on disk (sled never gives space back; export as a gauge).
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.size_on_disk()?)
    }

    /// The earliest scheduled time (a due time or a lease expiry), if anything is scheduled.
    pub fn next_due_at(&self) -> Result<Option<Timestamp>, StoreError> {
        match self.inner.trees.schedule.first()? {
            Some((key, _)) => Ok(keys::TimeKey::from_bytes(&key).map(|k| k.at)),
            None => Ok(None),
        }
    }

    /// The stored body of a message that is not finished.
    pub fn body(&self, id: MessageId) -> Result<Option<Vec<u8>>, StoreError> {
        let key = keys::id_key(id);
        let bodies = &self.inner.trees.bodies;
        match bodies.get(key)? {
            Some(v) => codec::decode_body_records(&key, &v, |i| {
                let mut k = key.to_vec();
                k.extend_from_slice(&i.to_be_bytes());
                Ok(bodies.get(k)?.map(|c| c.to_vec()))
            })
            .map(Some),
            None => Ok(None),
        }
    }

    /// The current record of a message (finished ones are kept for status queries until purged).
    pub fn message(&self, id: MessageId) -> Result<Option<QueuedMessage>, StoreError> {
        Ok(self.record(id)?.map(|r| r.message))
    }

    /// The lease expiry when an attempt for the message is in flight.
    pub fn leased_until(&self, id: MessageId) -> Result<Option<Timestamp>, StoreError> {
        Ok(self
            .record(id)?
            .filter(codec::StoredMessage::is_leased)
            .and_then(|r| r.lease_until))
    }

    pub(crate) fn record(&self, id: MessageId) -> Result<Option<codec::StoredMessage>> {
        let key = keys::id_key(id);
        match self.inner.trees.messages.get(key)? {
            Some(v) => codec::decode_message(&key, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Shared by the write paths: make durable and wake the scheduler when needed.
    pub(crate) async fn durable(&self) -> Result<()> {
        let r = self.inner.commit.durable(&self.inner.db).await;
        self.note_failure(&r);
        r
    }

    /// Remembers a storage failure (I/O error, full disk) for [`Store::write_failed`].
    pub(crate) fn note_failure<T>(&self, r: &Result<T>) {
        if let Err(StoreError::Sled(_)) = r {
            self.inner.write_failed.store(true, Ordering::Relaxed);
        }
    }

    /// Why the store cannot take writes now (a failed write or sync, e.g. a full disk; writes
    /// switched off by [`Store::set_fail_writes`]), or `None` when it can. Readiness checks
    /// and the SMTP listener use it to turn traffic away before a message is uploaded.
    pub fn unavailable_reason(&self) -> Option<String> {
        if self.inner.fail_writes.load(Ordering::Relaxed) {
            Some("queue storage writes are disabled".to_owned())
        } else if self.inner.journal.syncs_fail() {
            Some("queue storage cannot sync its journal".to_owned())
        } else if self.write_failed() {
            Some("queue storage failed to write (disk full or I/O error); waiting for space to reopen it".to_owned())
        } else {
            None
        }
    }

    /// Whether any write or flush has failed with a storage error since the store was opened.
    /// sled may refuse further writes after such an error even once space is back, so the binary
    /// uses this to decide when to reopen the store.
    pub fn write_failed(&self) -> bool {
        self.inner.write_failed.load(Ordering::Relaxed)
    }
}

/// The wall clock as a [`Timestamp`] (used only where the caller gives no time).
pub(crate) fn clock_now() -> Timestamp {
    postrider_core::clock::Clock::now(&postrider_core::clock::SystemClock)
}

/// Lease expiry for a message claimed at `now` from the entry at `due`: strictly later than
/// `due` so that the claimed entry and the lease are never the same key.
pub(crate) fn lease_expiry(now: Timestamp, due: Timestamp, lease: Duration) -> Timestamp {
    now.saturating_add(lease)
        .max(Timestamp::from_millis(due.as_millis().saturating_add(1)))
}
