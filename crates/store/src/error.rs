//! The store's error type.

use postrider_core::MessageId;

/// Errors of the store. Any of them means the operation did not take effect durably
/// (for the admin errors `NotFound` / `InvalidState` / `Conflict`: nothing was written at all).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an error (I/O, disk full, corruption). Callers answer "try later"
    /// (`451 4.3.0`, HTTP 503) and keep running.
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be decoded. Only that record is affected.
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
    #[error(
        "data in {tree} uses format version {found}, newer than the {supported} this Postrider understands; upgrade Postrider"
    )]
    UnknownFormat {
        /// The tree or file holding the record.
        tree: &'static str,
        /// The version found.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The journal lacks records that no damage explains (a deleted or replaced journal file,
    /// a sequence gap): starting would silently lose acknowledged writes, so opening refuses
    /// unless [`crate::OpenOptions::accept_journal_loss`] is set.
    #[error(
        "journal records are missing: {detail}; run `postrider store check` to see what is affected, \
         then start with --accept-journal-loss to accept the loss (it is logged and recorded in quarantine/)"
    )]
    JournalIncomplete {
        /// What is missing, naming the file and the sequence range.
        detail: String,
    },
    /// sled could not open its database (an error or a panic inside sled): the file is damaged.
    #[error(
        "the queue database {path} is damaged ({detail}); run `postrider store check` and then \
         `postrider store rebuild`, which keeps the damaged files in quarantine/"
    )]
    DatabaseDamaged {
        /// The damaged database file (`<data_dir>/db`).
        path: std::path::PathBuf,
        /// What sled reported.
        detail: String,
    },
    /// The store is shutting down or its committer has stopped.
    #[error("the store is closed")]
    Closed,
    /// Writes are switched off by [`crate::Store::set_fail_writes`] (a test and operations hook).
    #[error("store writes are disabled (injected failure)")]
    Injected,
    /// No message with this id is stored.
    #[error("message {0} not found")]
    NotFound(MessageId),
    /// The message exists but the operation does not apply to its state
    /// (e.g. holding a finished message).
    #[error("message {id} is {state}; cannot {operation}")]
    InvalidState {
        /// The message.
        id: MessageId,
        /// Its state label (see `MessageState::as_str`).
        state: &'static str,
        /// The refused operation.
        operation: &'static str,
    },
    /// The message changed concurrently (e.g. leased by the scheduler) while an operation
    /// was being prepared; nothing was written. Retrying is safe.
    #[error("message {0} changed concurrently; try again")]
    Conflict(MessageId),
    /// A received report is larger than the inbox takes ([`crate::MAX_INBOX_REPORT`]).
    #[error("the report has {size} bytes, more than the {max} the inbox takes")]
    ReportTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

impl StoreError {
    /// Whether the failure is on the storage side (disk, corruption, shutdown, injected),
    /// as opposed to a request that does not apply (unknown id, wrong state).
    /// Submission layers answer a storage failure with a temporary error.
    pub fn is_storage_failure(&self) -> bool {
        !matches!(
            self,
            StoreError::NotFound(_)
                | StoreError::InvalidState { .. }
                | StoreError::Conflict(_)
                | StoreError::ReportTooLarge { .. }
        )
    }
}

/// Result alias of the store.
pub(crate) type Result<T, E = StoreError> = std::result::Result<T, E>;
