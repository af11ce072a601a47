//! Idempotency keys (trees `idempotency` and `idempotency_expiry`): a retried submission with
//! the same key and body returns the first answer instead of queueing the message again.
//!
//! The key is checked and written inside the transaction that stores the message, so two
//! concurrent submissions with one key cannot both enqueue, and a crash between storing and
//! answering cannot lead to a duplicate on retry: either both the message and the key are on
//! disk, or neither is.

use postrider_core::{MessageId, NewMessage, Timestamp};
use serde::{Deserialize, Serialize};
use sled::IVec;

use crate::Store;
use crate::error::{Result, StoreError};
use crate::journal::TreeId;
use crate::keys::hex;
use crate::plan::{IdempotencyWrite, Plan, Verdict};

/// The newest idempotency-record version this build writes and reads.
pub(crate) const IDEMPOTENCY_RECORD_VERSION: u8 = 1;
/// Longest scope or key accepted, in bytes (longer ones are refused by the API first).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// Index entries handled per purge round.
const PURGE_BATCH: usize = 1024;

/// An idempotent submission's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// Who the key belongs to (the API key's name, or `loopback`): keys of different clients
    /// never collide.
    pub scope: String,
    /// The client's `Idempotency-Key` header value.
    pub key: String,
    /// SHA-256 of the request body: the same key with another body is a conflict.
    pub body_sha256: [u8; 32],
    /// Opaque data the caller wants back on a replay (e.g. parts of its first answer).
    pub reply: String,
    /// Entries created before this time have expired and no longer count.
    pub valid_after: Timestamp,
}

/// What [`Store::enqueue_idempotent`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum EnqueueResult {
    /// The message was queued (durably) and the key recorded with it.
    Created(MessageId),
    /// The key was already used with the same body: nothing was queued; this is the first
    /// submission's id and the `reply` it stored.
    Replayed {
        /// The first submission's message id.
        id: MessageId,
        /// The `reply` data stored with it.
        reply: String,
    },
    /// The key was already used with a different body: nothing was queued.
    Conflict,
}

/// The stored record (version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IdempotencyRecord {
    pub(crate) message_id: MessageId,
    pub(crate) body_sha256: String,
    pub(crate) created_at: Timestamp,
    #[serde(default)]
    pub(crate) reply: String,
}

/// `be_u16(len(scope)) ‖ scope ‖ key`.
pub(crate) fn record_key(scope: &str, key: &str) -> Vec<u8> {
    let scope = &scope.as_bytes()[..scope.len().min(MAX_IDEMPOTENCY_KEY_LEN)];
    let len = u16::try_from(scope.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(2 + scope.len() + key.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(scope);
    out.extend_from_slice(key.as_bytes());
    out
}

/// `be_u64(created_ms) ‖ record key`.
pub(crate) fn expiry_key(created_at: Timestamp, record_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + record_key.len());
    out.extend_from_slice(&created_at.as_millis().to_be_bytes());
    out.extend_from_slice(record_key);
    out
}

pub(crate) fn encode_record(r: &IdempotencyRecord) -> Result<IVec> {
    crate::codec::encode_json_record(
        "idempotency",
        IDEMPOTENCY_RECORD_VERSION,
        &r.message_id.to_string(),
        r,
    )
}

pub(crate) fn decode_record(key: &[u8], bytes: &[u8]) -> Result<IdempotencyRecord> {
    crate::codec::decode_json_record("idempotency", IDEMPOTENCY_RECORD_VERSION, key, bytes)
}

pub(crate) fn hex_hash(hash: &[u8; 32]) -> String {
    hex(hash)
}

impl Store {
    /// Like [`Store::enqueue`], but under an idempotency key: the key is checked and recorded
    /// in the same transaction as the message (and flushed with it). A live entry for the key
    /// with the same body hash gives [`EnqueueResult::Replayed`], with another hash
    /// [`EnqueueResult::Conflict`]; in both cases nothing is written.
    pub async fn enqueue_idempotent(
        &self,
        msg: NewMessage,
        key: IdempotencyKey,
    ) -> Result<EnqueueResult, StoreError> {
        self.check_writable()?;
        let rkey = record_key(&key.scope, &key.key);
        let hash = hex_hash(&key.body_sha256);
        // Fast path without taking an id: a live entry answers at once.
        if let Some(existing) = self.inner.trees.idempotency.get(&rkey)? {
            let rec = decode_record(&rkey, &existing)?;
            if rec.created_at >= key.valid_after {
                return self.answer_durably(rec, &hash).await;
            }
        }
        let prepared = self.prepare_new(&msg)?;
        let created_at = msg.received_at;
        let record = IdempotencyRecord {
            message_id: prepared.id,
            body_sha256: hash.clone(),
            created_at,
            reply: key.reply.clone(),
        };
        let mut plan = Plan::default();
        prepared.add_to(&mut plan);
        plan.idempotency = Some(IdempotencyWrite {
            expiry_key: expiry_key(created_at, &rkey).into(),
            key: rkey.clone().into(),
            value: encode_record(&record)?,
            valid_after: key.valid_after,
        });
        match self.apply_plan(&mut plan)? {
            Verdict::Idempotent(bytes) => {
                let rec = decode_record(&rkey, &bytes)?;
                self.answer_durably(rec, &hash).await
            }
            _ => {
                self.durable().await?;
                self.wake_for(&plan);
                tracing::debug!(id = %prepared.id, size = msg.body.len(), "message queued with an idempotency key");
                Ok(EnqueueResult::Created(prepared.id))
            }
        }
    }

    /// The answer for a live key. A replay confirms the message the key names, which may be
    /// the one a concurrent request is still making durable (or one whose sync failed), so it
    /// waits for the same durability as that request's own answer: the shared journal sync.
    async fn answer_durably(&self, rec: IdempotencyRecord, hash: &str) -> Result<EnqueueResult> {
        let answer = answer(rec, hash);
        if matches!(answer, EnqueueResult::Replayed { .. }) {
            self.durable().await?;
        }
        Ok(answer)
    }

    /// Drops idempotency entries created before `before` (call with `now - ttl`). Returns how
    /// many were dropped. Not flushed by itself. Cost: O(dropped entries).
    pub fn purge_idempotency(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.check_writable()?;
        let trees = &self.inner.trees;
        let end = before.as_millis().to_be_bytes();
        let mut purged = 0;
        loop {
            let batch = trees
                .idempotency_expiry
                .range(..end.to_vec())
                .keys()
                .take(PURGE_BATCH)
                .collect::<Result<Vec<IVec>, sled::Error>>()?;
            if batch.is_empty() {
                break;
            }
            for ekey in batch {
                let removed = self.write(|tx| {
                    let mut removed = false;
                    if let (Some(at), Some(rkey)) = (ekey.get(..8), ekey.get(8..))
                        && let Some(current) = tx.get(TreeId::Idempotency, rkey)?
                    {
                        let same = decode_record(rkey, &current)
                            .map(|r| r.created_at.as_millis().to_be_bytes() == at)
                            .unwrap_or(true);
                        // Remove only this exact record (not a newer one written meanwhile).
                        if same {
                            tx.remove(TreeId::Idempotency, rkey)?;
                            removed = true;
                        }
                    }
                    tx.remove(TreeId::IdempotencyExpiry, ekey.clone())?;
                    Ok(removed)
                })?;
                purged += u64::from(removed);
            }
        }
        tracing::debug!(purged, before = %before, "expired idempotency keys purged");
        Ok(purged)
    }
}

fn answer(rec: IdempotencyRecord, hash: &str) -> EnqueueResult {
    if rec.body_sha256 == hash {
        EnqueueResult::Replayed {
            id: rec.message_id,
            reply: rec.reply,
        }
    } else {
        EnqueueResult::Conflict
    }
}
