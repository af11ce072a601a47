//! The delivery path: enqueue, lease due work, record attempt outcomes.

use std::ops::Bound;
use std::time::Duration;

use postrider_core::{MessageId, NewMessage, QueuedMessage, RecipientState, Timestamp};
use sled::IVec;

use crate::codec::{self, LEASE_HORIZON_KEY, LEASE_MARK, StoredMessage};
use crate::error::{Result, StoreError};
use crate::events::{PendingEvent, attempt_events, enqueue_events};
use crate::keys::{TimeKey, id_key};
use crate::plan::{Plan, Verdict};
use crate::{AttemptUpdate, Lease, RecordOutcome, Store, Trees, clock_now, lease_expiry};

/// Most messages claimed by one [`Store::lease_due`] call.
pub(crate) const MAX_LEASE_BATCH: usize = 1024;
/// Most leases released by one journaled change at start-up.
pub(crate) const MAX_RELEASE_BATCH: usize = 1024;
/// How often a change is re-planned when the record changed underneath it.
pub(crate) const MAX_RETRIES: usize = 8;

/// A new message, encoded once, ready to be added to a plan.
pub(crate) struct PreparedNew {
    pub(crate) id: MessageId,
    record: IVec,
    body: Vec<(Vec<u8>, Vec<u8>)>,
    /// The schedule entry, or, when finished at enqueue, the finished-index entry.
    due: TimeKey,
    /// Every recipient is suppressed and no failure notice is owed: the message is finished at
    /// enqueue.
    finished: bool,
    events: Vec<PendingEvent>,
}

impl PreparedNew {
    /// Adds the record, body and schedule entry (or, when finished at enqueue, the finished
    /// entry) and the message's events to `plan`.
    pub(crate) fn add_to(&self, plan: &mut Plan) {
        let key = id_key(self.id);
        plan.messages.insert(&key[..], self.record.clone());
        if self.finished {
            plan.finished.insert(&self.due.to_bytes()[..], &[][..]);
        } else {
            for (k, v) in &self.body {
                plan.bodies.insert(&k[..], &v[..]);
            }
            plan.schedule.insert(&self.due.to_bytes()[..], &[][..]);
            plan.pending_delta += 1;
            plan.wakes = true;
        }
        plan.events.extend(self.events.iter().cloned());
    }
}

/// Unfinished messages at open: one schedule entry per unfinished, non-held message, plus
/// held messages without an entry (held ones that are in flight still have their lease entry).
pub(crate) fn count_pending(trees: &Trees) -> Result<i64> {
    let mut count = i64::try_from(trees.schedule.len()).unwrap_or(i64::MAX);
    for key in trees.held.iter().keys() {
        let key = key?;
        let has_entry = match trees.messages.get(&key)? {
            Some(bytes) => codec::decode_message(&key, &bytes)
                .map(|r| r.schedule_at.is_some())
                .unwrap_or(false),
            None => true, // stale hold marker of a deleted message: not pending
        };
        if !has_entry {
            count += 1;
        }
    }
    Ok(count)
}

impl Store {
    /// Gives `msg` an id and encodes it (once).
    pub(crate) fn prepare_new(&self, msg: &NewMessage) -> Result<PreparedNew> {
        // sled ids start at 0; ours start at 1 so that 0 never names a message.
        let id = MessageId::from_u64(self.inner.db.generate_id()?.saturating_add(1));
        let mut message = QueuedMessage::new(id, msg);
        // Suppressed addresses are never attempted. (Checked before the transaction: an
        // address listed concurrently may still get this one message.) When the sender is owed
        // a failure notice for them, the message stays scheduled even if nothing else is left:
        // its first attempt queues the notice in the transaction that records it.
        if !self.inner.trees.suppressions.is_empty() {
            for r in &mut message.recipients {
                if self.is_suppressed(
                    &r.request.address,
                    message
                        .sender
                        .address()
                        .map(postrider_core::Address::domain),
                )? {
                    r.state = RecipientState::Suppressed;
                }
            }
            message.suppression_notice_due = message.owes_suppression_notice();
        }
        let finished = message.is_finished();
        let due = if finished {
            message.next_attempt_at = None;
            message.finished_at = Some(msg.received_at);
            msg.received_at
        } else {
            msg.first_attempt_at()
        };
        let record = StoredMessage {
            schedule_at: (!finished).then_some(due),
            lease_until: None,
            message,
        };
        Ok(PreparedNew {
            id,
            events: enqueue_events(&record.message)?,
            record: codec::encode_message(&record)?.into(),
            body: codec::encode_body_records(&id_key(id), &msg.body),
            due: TimeKey::new(due, id),
            finished,
        })
    }

    /// Applies a plan and, when applied, updates the pending count and wakes the webhook
    /// dispatcher when outbox entries were written.
    pub(crate) fn apply_plan(&self, plan: &mut Plan) -> Result<Verdict> {
        for id in std::mem::take(&mut plan.dropped_bodies) {
            // Chunk keys are `id ‖ be_u32(index)`; the head record under `id` itself is
            // already removed by the plan.
            for key in self.inner.trees.bodies.scan_prefix(id).keys() {
                let key = key?;
                if key.len() > id.len() {
                    plan.bodies.remove(key);
                }
            }
        }
        let webhooks = self.webhooks();
        let result = crate::plan::apply(self, plan, &webhooks, clock_now());
        self.note_failure(&result);
        let verdict = result?;
        if verdict == Verdict::Applied {
            self.add_pending(plan.pending_delta);
            if crate::plan::feeds_outbox(plan, &webhooks) {
                self.inner.webhook_work.notify_one();
            }
        }
        Ok(verdict)
    }

    /// Wakes the scheduler when `plan` added or advanced schedule entries.
    pub(crate) fn wake_for(&self, plan: &Plan) {
        if plan.wakes {
            self.inner.work.notify_one();
        }
    }

    /// Durably stores a new message and schedules its first attempt. Returns only after the
    /// record, body and schedule entry are on disk (one transaction, one shared journal sync).
    pub async fn enqueue(&self, msg: NewMessage) -> Result<MessageId, StoreError> {
        self.check_writable()?;
        let prepared = self.prepare_new(&msg)?;
        let mut plan = Plan::default();
        prepared.add_to(&mut plan);
        self.apply_plan(&mut plan)?;
        self.durable().await?;
        self.wake_for(&plan);
        tracing::debug!(id = %prepared.id, size = msg.body.len(), "message queued");
        Ok(prepared.id)
    }

    /// Claims up to `limit` (at most 1024) messages due at `now`, oldest first, moving each
    /// schedule entry to the lease expiry `now + lease`, all in one transaction. Held
    /// messages have no entry and are never returned. Not flushed by itself: a lease lost in a
    /// crash only makes the message due again sooner.
    ///
    /// The lease must outlast the longest attempt: once it expires the message is due again
    /// and a second attempt may start (the at-least-once window).
    pub fn lease_due(
        &self,
        now: Timestamp,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Lease>, StoreError> {
        self.check_writable()?;
        let limit = limit.min(MAX_LEASE_BATCH);
        let due = self
            .inner
            .trees
            .schedule
            .range(..=TimeKey::last_at(now))
            .keys()
            .take(limit)
            .collect::<Result<Vec<IVec>, sled::Error>>()?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        // One transaction for the whole batch; when anything changed underneath it (an admin
        // operation, a concurrent record), claim the entries one by one instead.
        let mut plan = Plan::default();
        let mut leases = Vec::with_capacity(due.len());
        for raw in &due {
            let Some(key) = TimeKey::from_bytes(raw) else {
                tracing::error!(key = %crate::keys::hex(raw), "malformed schedule key removed");
                plan.schedule.remove(raw.clone());
                continue;
            };
            let id_bytes = id_key(key.id);
            let snapshot = self.inner.trees.messages.get(id_bytes)?;
            plan.expect_each
                .push((id_bytes, snapshot.clone(), key.to_bytes()));
            leases.extend(plan_lease(&mut plan, raw, key, snapshot, now, lease)?);
        }
        if self.apply_plan(&mut plan)? == Verdict::Applied {
            return Ok(leases);
        }
        let mut leases = Vec::with_capacity(due.len());
        for raw in due {
            if let Some(l) = self.lease_one(&raw, now, lease)? {
                leases.push(l);
            }
        }
        Ok(leases)
    }

    fn lease_one(&self, raw: &IVec, now: Timestamp, lease: Duration) -> Result<Option<Lease>> {
        let Some(key) = TimeKey::from_bytes(raw) else {
            let mut plan = Plan::default();
            plan.schedule.remove(raw.clone());
            self.apply_plan(&mut plan)?;
            return Ok(None);
        };
        let id_bytes = id_key(key.id);
        for _ in 0..MAX_RETRIES {
            let snapshot = self.inner.trees.messages.get(id_bytes)?;
            let mut plan = Plan {
                expect_record: Some((id_bytes, snapshot.clone())),
                expect_scheduled: Some(key.to_bytes()),
                ..Plan::default()
            };
            let leased = plan_lease(&mut plan, raw, key, snapshot, now, lease)?;
            match self.apply_plan(&mut plan)? {
                Verdict::Applied => return Ok(leased),
                Verdict::NotScheduled => return Ok(None),
                Verdict::RecordChanged | Verdict::Idempotent(_) | Verdict::AlreadySuppressed => {
                    continue;
                }
            }
        }
        Ok(None)
    }

    /// Records an attempt's outcome atomically: the updated record, the new schedule entry (or
    /// none when finished: the body is then removed and the finished index written) and any
    /// notifications with their bodies and schedule entries. Made durable by the group
    /// committer within a few milliseconds, without waiting for it: an outcome lost in a crash
    /// leaves the message leased, so it is tried again (at most once more, the at-least-once
    /// window), and the notifications written with it are lost with it. Returns
    /// [`RecordOutcome::LeaseLost`], writing nothing, when the lease's schedule entry is gone.
    pub async fn record_attempt(
        &self,
        lease: &Lease,
        update: AttemptUpdate,
    ) -> Result<RecordOutcome, StoreError> {
        self.check_writable()?;
        let id = lease.message.id;
        let leased_key = TimeKey::new(lease.leased_until, id).to_bytes();
        let id_bytes = id_key(id);
        let notes = update
            .notifications
            .iter()
            .map(|n| self.prepare_new(n))
            .collect::<Result<Vec<_>>>()?;
        let finished_at = update.message.finished_at.unwrap_or_else(clock_now);
        for _ in 0..MAX_RETRIES {
            let Some(bytes) = self.inner.trees.messages.get(id_bytes)? else {
                return Ok(RecordOutcome::LeaseLost);
            };
            let current = codec::decode_message(&id_bytes, &bytes)?;
            let mut plan = Plan {
                expect_record: Some((id_bytes, Some(bytes))),
                expect_scheduled: Some(leased_key),
                ..Plan::default()
            };
            plan.schedule.remove(&leased_key[..]);
            plan_outcome(&mut plan, id, &current, &update, finished_at)?;
            for n in &notes {
                n.add_to(&mut plan);
            }
            match self.apply_plan(&mut plan)? {
                Verdict::Applied => {
                    self.inner.commit.soon(&self.inner.db);
                    self.wake_for(&plan);
                    tracing::debug!(%id, finished = update.next_attempt_at.is_none(), notifications = notes.len(), "attempt recorded");
                    return Ok(RecordOutcome::Recorded {
                        notification_ids: notes.iter().map(|n| n.id).collect(),
                    });
                }
                Verdict::NotScheduled => return Ok(RecordOutcome::LeaseLost),
                Verdict::RecordChanged | Verdict::Idempotent(_) | Verdict::AlreadySuppressed => {
                    continue;
                }
            }
        }
        Err(StoreError::Conflict(id))
    }
}

/// Adds the claim of schedule entry `raw` (message `key.id`, whose record was `snapshot`) to
/// `plan`: the entry moves to the lease expiry. Entries that cannot be leased are cleaned up
/// instead (stale, orphaned, held) or parked (unreadable record).
fn plan_lease(
    plan: &mut Plan,
    raw: &IVec,
    key: TimeKey,
    snapshot: Option<IVec>,
    now: Timestamp,
    lease: Duration,
) -> Result<Option<Lease>> {
    let id_bytes = id_key(key.id);
    plan.schedule.remove(raw.clone());
    match snapshot
        .as_deref()
        .map(|b| codec::decode_message(&id_bytes, b))
    {
        None => tracing::error!(id = %key.id, "schedule entry without a message removed"),
        Some(Err(e)) => {
            // Park the entry at the lease expiry: retried later, logged, never blocking others.
            let parked = lease_expiry(now, key.at, lease);
            tracing::error!(id = %key.id, error = %e, until = %parked, "unreadable message parked");
            plan.schedule
                .insert(&TimeKey::new(parked, key.id).to_bytes()[..], &[][..]);
        }
        Some(Ok(rec)) if rec.schedule_at != Some(key.at) => {
            tracing::error!(id = %key.id, "stale schedule entry removed");
        }
        Some(Ok(mut rec)) if rec.message.held => {
            // Held while its lease was running: the lease expired, so drop the entry.
            rec.schedule_at = None;
            rec.lease_until = None;
            plan.messages
                .insert(&id_bytes[..], codec::encode_message(&rec)?);
        }
        Some(Ok(mut rec)) => {
            let until = lease_expiry(now, key.at, lease);
            rec.schedule_at = Some(until);
            rec.lease_until = Some(until);
            plan.schedule
                .insert(&TimeKey::new(until, key.id).to_bytes()[..], LEASE_MARK);
            plan.lease_horizon = plan.lease_horizon.max(Some(until));
            plan.messages
                .insert(&id_bytes[..], codec::encode_message(&rec)?);
            return Ok(Some(Lease {
                message: rec.message,
                leased_until: until,
            }));
        }
    }
    Ok(None)
}

/// Adds the new state of message `id` after `update` to `plan` (the caller has already removed
/// its current schedule entry): a retry entry, or the finished state.
pub(crate) fn plan_outcome(
    plan: &mut Plan,
    id: MessageId,
    current: &StoredMessage,
    update: &AttemptUpdate,
    finished_at: Timestamp,
) -> Result<()> {
    let id_bytes = id_key(id);
    let held = current.message.held;
    let mut message = update.message.clone();
    message.id = id;
    plan.events
        .extend(attempt_events(&current.message, &message, finished_at)?);
    crate::suppress::plan_hard_bounces(plan, &current.message, &message, finished_at)?;
    let mut rec = StoredMessage {
        schedule_at: None,
        lease_until: None,
        message,
    };
    match update.next_attempt_at {
        Some(next) => {
            rec.message.finished_at = None;
            rec.message.held = held;
            if held {
                rec.message.next_attempt_at = None;
            } else {
                rec.message.next_attempt_at = Some(next);
                rec.schedule_at = Some(next);
                plan.schedule
                    .insert(&TimeKey::new(next, id).to_bytes()[..], &[][..]);
                plan.wakes = true;
            }
        }
        None => {
            rec.message.held = false;
            rec.message.next_attempt_at = None;
            rec.message.finished_at = Some(finished_at);
            // A captured (sandbox) message keeps its body until it is purged with its record,
            // so what an application sent can still be looked at; a sent one has no further use
            // for it.
            if !rec.message.sandbox {
                plan.bodies.remove(&id_bytes[..]);
                plan.dropped_bodies.push(id_bytes);
            }
            plan.finished
                .insert(&TimeKey::new(finished_at, id).to_bytes()[..], &[][..]);
            if held {
                plan.held.remove(&id_bytes[..]);
            }
            plan.pending_delta -= 1;
        }
    }
    plan.messages
        .insert(&id_bytes[..], codec::encode_message(&rec)?);
    Ok(())
}

/// Releases, at open, the leases an earlier run of the process left behind: that run is gone,
/// so no attempt still holds them, and without this each such message would wait for its lease
/// to expire (`delivery.lease`, 10 minutes by default). Every lease entry between `now` and
/// `meta/lease_horizon` (the latest expiry ever granted) moves to `(now, id)`, with the
/// record's lease cleared and its attempt counts and recipient states kept; a message held
/// during its attempt loses its entry instead, as when its lease expires. Only that window of
/// `schedule` is scanned and only entries marked as leases are decoded; the changes are
/// journaled in batches like any other write. Returns how many leases were released.
pub(crate) fn release_stale_leases(store: &Store, now: Timestamp) -> Result<u64> {
    let trees = &store.inner.trees;
    let horizon = match trees.meta.get(LEASE_HORIZON_KEY)? {
        Some(bytes) => match codec::decode_lease_horizon(&bytes) {
            Ok(at) => at,
            Err(e) => {
                tracing::warn!(error = %e, "lease horizon unreadable: leases of an earlier run expire as usual");
                return Ok(0);
            }
        },
        None => return Ok(0),
    };
    if horizon <= now {
        return Ok(0);
    }
    let from = TimeKey::first_at(Timestamp::from_millis(now.as_millis().saturating_add(1)));
    let to = TimeKey::last_at(horizon);
    let mut lower = Bound::Included(from.to_vec());
    let mut released = 0u64;
    let mut conflicts = 0;
    loop {
        let batch = plan_release_batch(store, (lower.clone(), Bound::Included(to.to_vec())), now)?;
        if batch.count == 0 {
            break;
        }
        let mut plan = batch.plan;
        if store.apply_plan(&mut plan)? == Verdict::Applied {
            released += batch.count;
            store.wake_for(&plan);
        } else {
            // Nothing else writes during open; a changed record means something is off, so
            // give up after a few tries and let the remaining leases expire as usual.
            conflicts += 1;
            if conflicts >= MAX_RETRIES {
                tracing::warn!(
                    released,
                    "leases changed while being released; the rest expire as usual"
                );
                break;
            }
            continue;
        }
        match batch.last_seen {
            Some(key) if batch.full => lower = Bound::Excluded(key.to_vec()),
            _ => break,
        }
    }
    if released > 0 {
        store.inner.commit.soon(&store.inner.db);
        tracing::info!(
            released,
            "leases of an earlier run released: their messages are due now"
        );
    }
    Ok(released)
}

/// One batch of [`release_stale_leases`].
struct ReleaseBatch {
    plan: Plan,
    /// Leases released by `plan`.
    count: u64,
    /// Whether the batch stopped at [`MAX_RELEASE_BATCH`] (more may follow `last_seen`).
    full: bool,
    /// The last `schedule` key looked at.
    last_seen: Option<IVec>,
}

/// Plans the release of up to [`MAX_RELEASE_BATCH`] lease entries in `range` of `schedule`.
fn plan_release_batch(
    store: &Store,
    range: (Bound<Vec<u8>>, Bound<Vec<u8>>),
    now: Timestamp,
) -> Result<ReleaseBatch> {
    let trees = &store.inner.trees;
    let mut batch = ReleaseBatch {
        plan: Plan::default(),
        count: 0,
        full: false,
        last_seen: None,
    };
    for entry in trees.schedule.range(range) {
        let (raw, value) = entry?;
        batch.last_seen = Some(raw.clone());
        if value != LEASE_MARK {
            continue;
        }
        let Some(key) = TimeKey::from_bytes(&raw) else {
            continue;
        };
        let id_bytes = id_key(key.id);
        let snapshot = trees.messages.get(id_bytes)?;
        if plan_release(&mut batch.plan, &raw, key, snapshot.as_deref(), now)? {
            batch
                .plan
                .expect_each
                .push((id_bytes, snapshot, key.to_bytes()));
            batch.count += 1;
            if batch.count as usize >= MAX_RELEASE_BATCH {
                batch.full = true;
                break;
            }
        }
    }
    Ok(batch)
}

/// Adds the release of lease entry `raw` (message `key.id`, whose record is `snapshot`) to
/// `plan`. Returns `false`, planning nothing, when the record is missing, unreadable or not
/// leased at that entry: the scheduler cleans such entries up when they fall due.
fn plan_release(
    plan: &mut Plan,
    raw: &IVec,
    key: TimeKey,
    snapshot: Option<&[u8]>,
    now: Timestamp,
) -> Result<bool> {
    let id_bytes = id_key(key.id);
    let Some(Ok(mut rec)) = snapshot.map(|b| codec::decode_message(&id_bytes, b)) else {
        return Ok(false);
    };
    if !rec.is_leased() || rec.schedule_at != Some(key.at) {
        return Ok(false);
    }
    plan.schedule.remove(raw.clone());
    rec.lease_until = None;
    if rec.message.held {
        rec.schedule_at = None;
    } else {
        rec.schedule_at = Some(now);
        rec.message.next_attempt_at =
            Some(rec.message.next_attempt_at.map_or(now, |at| at.min(now)));
        plan.schedule
            .insert(&TimeKey::new(now, key.id).to_bytes()[..], &[][..]);
        plan.wakes = true;
    }
    plan.messages
        .insert(&id_bytes[..], codec::encode_message(&rec)?);
    Ok(true)
}
