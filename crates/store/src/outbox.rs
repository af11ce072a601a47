//! The webhook outbox (tree `webhook_outbox`): one entry per (event, subscribed webhook),
//! written in the same transaction as the event, removed once delivered or given up.
//!
//! Key: `be_u64(due_ms) ‖ be_u64(seq) ‖ be_u32(webhook index)` (20 bytes), so due entries are a
//! range scan. Like the message queue, a dispatcher leases an entry by moving it to
//! `now + lease`; if the process dies mid-delivery the entry is due again when the lease ends
//! (at-least-once delivery: receivers deduplicate by `seq`).

use std::time::Duration;

use postrider_core::Timestamp;
use serde::{Deserialize, Serialize};
use sled::IVec;

use crate::Store;
use crate::error::{Result, StoreError};
use crate::events::Event;
use crate::journal::TreeId;
use crate::keys::hex;

/// The newest outbox-record version this build writes and reads.
pub(crate) const OUTBOX_RECORD_VERSION: u8 = 1;
/// Length of an outbox key.
pub(crate) const OUTBOX_KEY_LEN: usize = 20;
/// Most entries claimed by one [`Store::lease_webhook_deliveries`] call.
pub const MAX_OUTBOX_LEASE: usize = 256;

/// The stored value of an outbox entry (version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OutboxRecord {
    /// The webhook's URL when the entry was written.
    pub(crate) url: String,
    /// Failed delivery attempts so far.
    #[serde(default)]
    pub(crate) attempts: u32,
    /// When the event was written (start of the retry lifetime).
    pub(crate) first_at: Timestamp,
}

/// The parts of an outbox key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutboxKey {
    pub(crate) due: Timestamp,
    pub(crate) seq: u64,
    pub(crate) webhook: u32,
}

impl OutboxKey {
    pub(crate) fn to_bytes(self) -> [u8; OUTBOX_KEY_LEN] {
        let mut out = [0u8; OUTBOX_KEY_LEN];
        out[..8].copy_from_slice(&self.due.as_millis().to_be_bytes());
        out[8..16].copy_from_slice(&self.seq.to_be_bytes());
        out[16..].copy_from_slice(&self.webhook.to_be_bytes());
        out
    }

    pub(crate) fn from_bytes(b: &[u8]) -> Option<OutboxKey> {
        if b.len() != OUTBOX_KEY_LEN {
            return None;
        }
        Some(OutboxKey {
            due: Timestamp::from_millis(u64::from_be_bytes(b[..8].try_into().ok()?)),
            seq: u64::from_be_bytes(b[8..16].try_into().ok()?),
            webhook: u32::from_be_bytes(b[16..].try_into().ok()?),
        })
    }
}

pub(crate) fn encode_outbox(r: &OutboxRecord) -> Result<IVec> {
    crate::codec::encode_json_record("webhook_outbox", OUTBOX_RECORD_VERSION, &r.url, r)
}

pub(crate) fn decode_outbox(key: &[u8], bytes: &[u8]) -> Result<OutboxRecord> {
    crate::codec::decode_json_record("webhook_outbox", OUTBOX_RECORD_VERSION, key, bytes)
}

/// A leased outbox entry: deliver it, then call [`Store::webhook_delivered`] or
/// [`Store::webhook_retry_at`].
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookDelivery {
    /// Index of the webhook in the list given to [`Store::set_webhooks`].
    pub webhook: u32,
    /// The URL the entry was written for.
    pub url: String,
    /// The event; `None` when it was purged meanwhile (then drop the entry).
    pub event: Option<Event>,
    /// The event's sequence number.
    pub seq: u64,
    /// Failed attempts before this one.
    pub attempts: u32,
    /// When the event was written.
    pub first_at: Timestamp,
    leased: [u8; OUTBOX_KEY_LEN],
    record: OutboxRecord,
}

impl Store {
    /// Entries in the webhook outbox (pending deliveries, leased ones included).
    pub fn webhook_outbox_len(&self) -> usize {
        self.inner.trees.outbox.len()
    }

    /// The earliest due time (or lease expiry) in the outbox.
    pub fn next_webhook_due(&self) -> Result<Option<Timestamp>, StoreError> {
        Ok(self
            .inner
            .trees
            .outbox
            .first()?
            .and_then(|(k, _)| OutboxKey::from_bytes(&k))
            .map(|k| k.due))
    }

    /// Resolves when new outbox entries may be due (stored wake-up, one waiter).
    pub async fn wait_for_webhook_work(&self) {
        self.inner.webhook_work.notified().await;
    }

    /// Claims up to `limit` (at most [`MAX_OUTBOX_LEASE`]) entries due at `now`, moving each
    /// to `now + lease`. Unreadable entries are removed (and logged). Not flushed by itself.
    pub fn lease_webhook_deliveries(
        &self,
        now: Timestamp,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        self.check_writable()?;
        let outbox = &self.inner.trees.outbox;
        let end = OutboxKey {
            due: now,
            seq: u64::MAX,
            webhook: u32::MAX,
        }
        .to_bytes();
        let due = outbox
            .range(..=end.to_vec())
            .take(limit.min(MAX_OUTBOX_LEASE))
            .collect::<Result<Vec<(IVec, IVec)>, sled::Error>>()?;
        let mut out = Vec::with_capacity(due.len());
        for (key, value) in due {
            let parsed = OutboxKey::from_bytes(&key);
            let record = decode_outbox(&key, &value);
            let (Some(k), Ok(record)) = (parsed, record) else {
                tracing::error!(key = %hex(&key), "unreadable webhook outbox entry removed");
                self.write(|tx| tx.remove(TreeId::Outbox, key.clone()))?;
                continue;
            };
            let until = now
                .saturating_add(lease)
                .max(Timestamp::from_millis(k.due.as_millis().saturating_add(1)));
            let leased = OutboxKey { due: until, ..k }.to_bytes();
            // Move the entry atomically; skip it when someone else moved it first.
            let moved = self.write(|tx| {
                if tx.remove(TreeId::Outbox, key.clone())?.is_none() {
                    return Ok(false);
                }
                tx.insert(TreeId::Outbox, &leased[..], value.clone())?;
                Ok(true)
            })?;
            if !moved {
                continue;
            }
            let event = match self.event(k.seq) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(seq = k.seq, error = %e, "unreadable event in the webhook outbox");
                    None
                }
            };
            out.push(WebhookDelivery {
                webhook: k.webhook,
                url: record.url.clone(),
                event,
                seq: k.seq,
                attempts: record.attempts,
                first_at: record.first_at,
                leased,
                record,
            });
        }
        Ok(out)
    }

    /// Removes a delivered (or abandoned) entry. Durable when `Ok`.
    pub async fn webhook_delivered(&self, delivery: &WebhookDelivery) -> Result<(), StoreError> {
        self.check_writable()?;
        self.write(|tx| {
            tx.remove(TreeId::Outbox, &delivery.leased[..])?;
            Ok(())
        })?;
        self.durable().await
    }

    /// Reschedules an entry after a failed attempt (attempt counter + 1). Does nothing when
    /// the lease entry is gone. Durable when `Ok`.
    pub async fn webhook_retry_at(
        &self,
        delivery: &WebhookDelivery,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        self.check_writable()?;
        let Some(k) = OutboxKey::from_bytes(&delivery.leased) else {
            return Ok(());
        };
        let mut record = delivery.record.clone();
        record.attempts = record.attempts.saturating_add(1);
        let value = encode_outbox(&record)?;
        let next = OutboxKey { due: at, ..k }.to_bytes();
        let leased = delivery.leased;
        self.write(|tx| {
            if tx.remove(TreeId::Outbox, &leased[..])?.is_some() {
                tx.insert(TreeId::Outbox, &next[..], value.clone())?;
            }
            Ok(())
        })?;
        self.durable().await
    }
}
