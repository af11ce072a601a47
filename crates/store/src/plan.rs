//! A planned state change: preconditions plus one write batch per tree, applied as one journal
//! record under the journal lock ([`Store::write`]). Plans are computed outside the lock
//! (decoding and JSON encoding happen once), so under it the change only checks preconditions
//! and applies batches.
//!
//! The few writes that depend on what is in the database at that moment also happen under the
//! lock: the pending-message count (`meta/pending_count`), event sequence numbers (a counter in
//! `meta`; writes run one at a time, so sequence order is write order), webhook outbox entries
//! keyed by those numbers, suppressions added only when absent, the idempotency-key check, and
//! the lease horizon (`meta/lease_horizon`, only ever raised).

use postrider_core::Timestamp;
use sled::IVec;

use crate::Store;
use crate::codec::{
    LEASE_HORIZON_KEY, PENDING_COUNT_KEY, decode_lease_horizon, decode_pending_count,
    encode_lease_horizon,
};
use crate::error::Result;
use crate::events::{EVENT_SEQ_KEY, PendingEvent, WebhookSubscription};
use crate::idempotency::decode_record;
use crate::journal::{TreeId, Tx};
use crate::outbox::{OutboxKey, OutboxRecord, encode_outbox};

/// Writes to one tree, applied in order (a later write of a key wins).
#[derive(Debug, Default)]
pub(crate) struct Batch(Vec<(IVec, Option<IVec>)>);

impl Batch {
    /// Sets `key` to `value`.
    pub(crate) fn insert(&mut self, key: impl Into<IVec>, value: impl Into<IVec>) {
        self.0.push((key.into(), Some(value.into())));
    }

    /// Removes `key`.
    pub(crate) fn remove(&mut self, key: impl Into<IVec>) {
        self.0.push((key.into(), None));
    }

    fn apply(&self, tx: &mut Tx<'_>, tree: TreeId) -> sled::Result<()> {
        for (key, value) in &self.0 {
            match value {
                Some(v) => tx.insert(tree, key.clone(), v.clone())?,
                None => drop(tx.remove(tree, key.clone())?),
            }
        }
        Ok(())
    }
}

/// Writes to apply atomically, and what must still hold for them to apply.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// `(id key, expected value)`: the record must still be exactly this (`None`: absent).
    pub(crate) expect_record: Option<([u8; 8], Option<IVec>)>,
    /// This `schedule` key must still be present (e.g. the lease being recorded).
    pub(crate) expect_scheduled: Option<[u8; 16]>,
    /// More of both, for plans that change several messages at once (a batch of leases):
    /// `(id key, expected record, schedule key that must be present)`. A mismatch is
    /// [`Verdict::RecordChanged`].
    pub(crate) expect_each: Vec<([u8; 8], Option<IVec>, [u8; 16])>,
    pub(crate) messages: Batch,
    pub(crate) bodies: Batch,
    /// Messages whose body is removed by this plan: their extra chunks (bodies over one chunk)
    /// are found and removed in the same transaction by `Store::apply_plan`.
    pub(crate) dropped_bodies: Vec<[u8; 8]>,
    pub(crate) schedule: Batch,
    pub(crate) finished: Batch,
    pub(crate) held: Batch,
    pub(crate) inbox: Batch,
    /// Events to append (sequence numbers are assigned inside the transaction).
    pub(crate) events: Vec<PendingEvent>,
    /// Suppressions `(key, value)` to add unless the address is already listed.
    pub(crate) suppress_if_absent: Vec<(IVec, IVec)>,
    /// A suppression `(key, value)` that must not be listed yet: when it is, nothing is
    /// written ([`Verdict::AlreadySuppressed`]), so the plan's events happen once.
    pub(crate) suppress_new: Option<(IVec, IVec)>,
    /// An idempotency key to check and record.
    pub(crate) idempotency: Option<IdempotencyWrite>,
    /// Change of the pending-message count once applied.
    pub(crate) pending_delta: i64,
    /// Whether the scheduler should be woken once applied (new or earlier schedule entries).
    pub(crate) wakes: bool,
    /// The latest lease expiry this plan grants: `meta/lease_horizon` is raised to it.
    pub(crate) lease_horizon: Option<Timestamp>,
}

/// The idempotency part of a plan.
#[derive(Debug)]
pub(crate) struct IdempotencyWrite {
    /// Record key in `idempotency`.
    pub(crate) key: IVec,
    /// The new record.
    pub(crate) value: IVec,
    /// Its entry in `idempotency_expiry`.
    pub(crate) expiry_key: IVec,
    /// Existing records created before this have expired and are replaced.
    pub(crate) valid_after: Timestamp,
}

/// What happened to a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every write was applied.
    Applied,
    /// The record differed from the snapshot; nothing was written.
    RecordChanged,
    /// The expected schedule entry was gone; nothing was written.
    NotScheduled,
    /// The idempotency key is live; nothing was written. The existing record's bytes.
    Idempotent(IVec),
    /// The suppression of [`Plan::suppress_new`] was already listed; nothing was written.
    AlreadySuppressed,
}

/// Applies `plan` as one journal record. `webhooks` route the plan's
/// events into the outbox (entries due at `now`).
pub(crate) fn apply(
    store: &Store,
    plan: &Plan,
    webhooks: &[WebhookSubscription],
    now: Timestamp,
) -> Result<Verdict> {
    // Outbox values depend only on the webhook: encode them once, outside.
    let outbox_values = if plan.events.is_empty() {
        Vec::new()
    } else {
        webhooks
            .iter()
            .map(|w| {
                encode_outbox(&OutboxRecord {
                    url: w.url.clone(),
                    attempts: 0,
                    first_at: now,
                })
            })
            .collect::<Result<Vec<_>>>()?
    };
    store.write(|tx| {
        if let Some((key, expected)) = &plan.expect_record
            && tx.get(TreeId::Messages, key)? != *expected
        {
            return Ok(Verdict::RecordChanged);
        }
        if let Some(key) = &plan.expect_scheduled
            && tx.get(TreeId::Schedule, key)?.is_none()
        {
            return Ok(Verdict::NotScheduled);
        }
        for (id, expected, scheduled) in &plan.expect_each {
            if tx.get(TreeId::Messages, id)? != *expected
                || tx.get(TreeId::Schedule, scheduled)?.is_none()
            {
                return Ok(Verdict::RecordChanged);
            }
        }
        if let Some((key, value)) = &plan.suppress_new {
            if tx.get(TreeId::Suppressions, key)?.is_some() {
                return Ok(Verdict::AlreadySuppressed);
            }
            tx.insert(TreeId::Suppressions, key.clone(), value.clone())?;
        }
        if let Some(w) = &plan.idempotency {
            if let Some(existing) = tx.get(TreeId::Idempotency, &w.key)? {
                match decode_record(&w.key, &existing) {
                    Ok(r) if r.created_at >= w.valid_after => {
                        return Ok(Verdict::Idempotent(existing));
                    }
                    Ok(r) => {
                        let mut old = r.created_at.as_millis().to_be_bytes().to_vec();
                        old.extend_from_slice(&w.key);
                        tx.remove(TreeId::IdempotencyExpiry, old)?;
                    }
                    // An unreadable record is replaced.
                    Err(_) => {}
                }
            }
            tx.insert(TreeId::Idempotency, w.key.clone(), w.value.clone())?;
            tx.insert(TreeId::IdempotencyExpiry, w.expiry_key.clone(), &[][..])?;
        }
        plan.messages.apply(tx, TreeId::Messages)?;
        plan.bodies.apply(tx, TreeId::Bodies)?;
        plan.schedule.apply(tx, TreeId::Schedule)?;
        plan.finished.apply(tx, TreeId::Finished)?;
        plan.held.apply(tx, TreeId::Held)?;
        plan.inbox.apply(tx, TreeId::Inbox)?;
        for (key, value) in &plan.suppress_if_absent {
            if tx.get(TreeId::Suppressions, key)?.is_none() {
                tx.insert(TreeId::Suppressions, key.clone(), value.clone())?;
            }
        }
        if plan.pending_delta != 0 {
            let count = tx
                .get(TreeId::Meta, PENDING_COUNT_KEY)?
                .map_or(0, |v| decode_pending_count(&v).unwrap_or(0));
            let count = count.saturating_add(plan.pending_delta).max(0);
            tx.insert(TreeId::Meta, PENDING_COUNT_KEY, &count.to_be_bytes()[..])?;
        }
        if let Some(until) = plan.lease_horizon {
            let horizon = tx
                .get(TreeId::Meta, LEASE_HORIZON_KEY)?
                .and_then(|v| decode_lease_horizon(&v).ok());
            if horizon.is_none_or(|h| h < until) {
                tx.insert(
                    TreeId::Meta,
                    LEASE_HORIZON_KEY,
                    &encode_lease_horizon(until)[..],
                )?;
            }
        }
        if !plan.events.is_empty() {
            let mut seq = tx
                .get(TreeId::Meta, EVENT_SEQ_KEY)?
                .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                .map_or(0, u64::from_be_bytes);
            for event in &plan.events {
                seq = seq.saturating_add(1);
                tx.insert(TreeId::Events, &seq.to_be_bytes()[..], event.value.clone())?;
                for (index, (hook, value)) in webhooks.iter().zip(&outbox_values).enumerate() {
                    if hook.wants(event.kind) {
                        let key = OutboxKey {
                            due: now,
                            seq,
                            webhook: u32::try_from(index).unwrap_or(u32::MAX),
                        };
                        tx.insert(TreeId::Outbox, &key.to_bytes()[..], value.clone())?;
                    }
                }
            }
            tx.insert(TreeId::Meta, EVENT_SEQ_KEY, &seq.to_be_bytes()[..])?;
        }
        Ok(Verdict::Applied)
    })
}

/// Whether applying `plan` writes outbox entries for `webhooks`.
pub(crate) fn feeds_outbox(plan: &Plan, webhooks: &[WebhookSubscription]) -> bool {
    plan.events
        .iter()
        .any(|e| webhooks.iter().any(|w| w.wants(e.kind)))
}
