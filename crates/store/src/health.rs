//! A cheap end-to-end check that the queue can still be written and made durable.

use crate::{Store, StoreError};

/// Key in sled's default tree rewritten by every probe (see migrations-free-data/README.md).
const PROBE_KEY: &[u8] = b"health_probe";

impl Store {
    /// Writes a tiny record and makes it durable. Fails when the storage can't take writes: sled
    /// refuses every write after an I/O error such as a full disk (until the data directory is
    /// reopened), while a flush with nothing to write still succeeds, so only a real write tells.
    pub async fn probe_write(&self, now_ms: u64) -> Result<(), StoreError> {
        self.check_writable()?;
        let r = self
            .inner
            .db
            .insert(PROBE_KEY, &now_ms.to_be_bytes()[..])
            .map_err(StoreError::from);
        self.note_failure(&r);
        r?;
        self.durable().await
    }
}
