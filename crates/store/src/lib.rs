//! Durable message queue of Postrider, on sled.
//!
//! # Brief overview
//! [`Store`] is a cheap-to-clone handle over one sled database with these trees:
//! - `messages`: message id → versioned [`QueuedMessage`] record,
//! - `bodies`: message id → the raw RFC 5322 message (written once, removed when finished),
//! - `schedule`: `be_u64(next_attempt_ms) ‖ be_u64(id)` → `()`, so due work is a range scan.
//!
//! Every state change is one sled transaction across the trees it touches, and every call that
//! returns `Ok` after a state change has been made durable by a shared (group-commit) flush.

use std::path::Path;
use std::time::Duration;

use postrider_core::{MessageId, NewMessage, QueuedMessage, Timestamp};

/// Errors of the store. Any of them means the operation did not take effect durably.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an error (I/O, disk full, corruption).
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be decoded.
    #[error("corrupt {tree} record for key {key}: {reason}")]
    Corrupt {
        /// The tree holding the record.
        tree: &'static str,
        /// The key, printed in hex.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// The data was written by a newer Postrider with a format this build cannot read.
    #[error("data in {tree} uses format version {found}, newer than the {supported} this Postrider understands; upgrade Postrider")]
    UnknownFormat {
        /// The tree or file holding the record.
        tree: &'static str,
        /// The version found.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The store is shutting down or its committer has stopped.
    #[error("the store is closed")]
    Closed,
}

/// A due message claimed by [`Store::lease_due`]: its schedule entry now points at the lease
/// expiry, so if the process dies the message becomes due again without any recovery pass.
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
    /// The message with updated recipient states and attempt counters.
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

/// Handle to the queue.
#[derive(Clone, Debug)]
pub struct Store {}

impl Store {
    /// Opens (or creates) the data directory at `path`.
    pub fn open(_path: &Path) -> Result<Store, StoreError> {
        unimplemented!()
    }

    /// Durably stores a new message and schedules its first attempt. Returns only after the
    /// record, body and schedule entry are on disk.
    pub async fn enqueue(&self, _msg: NewMessage) -> Result<MessageId, StoreError> {
        unimplemented!()
    }

    /// Claims up to `limit` messages due at `now`, oldest first, moving each schedule entry to
    /// `now + lease` in one transaction per message.
    pub fn lease_due(&self, _now: Timestamp, _lease: Duration, _limit: usize) -> Result<Vec<Lease>, StoreError> {
        unimplemented!()
    }

    /// The earliest scheduled time, if anything is scheduled.
    pub fn next_due_at(&self) -> Result<Option<Timestamp>, StoreError> {
        unimplemented!()
    }

    /// The stored body of a message that is not finished.
    pub fn body(&self, _id: MessageId) -> Result<Option<Vec<u8>>, StoreError> {
        unimplemented!()
    }

    /// The current record of a message (finished ones are kept for status queries).
    pub fn message(&self, _id: MessageId) -> Result<Option<QueuedMessage>, StoreError> {
        unimplemented!()
    }

    /// Records an attempt's outcome atomically: the updated record, the new schedule entry (or
    /// none when finished; the body is then removed) and any notifications. Durable when `Ok`.
    pub async fn record_attempt(&self, _lease: &Lease, _update: AttemptUpdate) -> Result<RecordOutcome, StoreError> {
        unimplemented!()
    }

    /// Resolves when new work may be due (an enqueue or a reschedule to an earlier time).
    pub async fn wait_for_work(&self) {
        unimplemented!()
    }

    /// Messages accepted and not yet finished.
    pub fn pending_count(&self) -> u64 {
        unimplemented!()
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        unimplemented!()
    }
}
