//! Operator operations behind the HTTP queue-admin endpoints: listing, statistics, retry, hold,
//! release, delete, "bounce now" and the retention purge. Each change is one transaction per
//! message and is durable when the call returns `Ok`.

use std::collections::HashMap;

use postrider_core::{Domain, MessageId, MessageState, QueuedMessage, Timestamp};
use sled::IVec;

use crate::codec::{self, StoredMessage};
use crate::error::{Result, StoreError};
use crate::keys::{TimeKey, id_key, parse_id_key};
use crate::plan::{Plan, Verdict};
use crate::queue::{MAX_RETRIES, plan_outcome};
use crate::{AttemptUpdate, Store, clock_now};

/// Most messages returned by one [`Store::list`] call.
pub const MAX_LIST_LIMIT: usize = 1000;
/// Most records examined by one [`Store::list`] call (the page then ends early with a cursor).
pub const MAX_LIST_SCAN: usize = 20_000;
/// Most domains returned by [`Store::stats`].
pub const MAX_TOP_DOMAINS: usize = 1000;
/// Finished-index entries handled per purge round.
const PURGE_BATCH: usize = 1024;

/// Which messages [`Store::list`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    /// Only messages in this state (finished states imply `include_finished`).
    pub state: Option<MessageState>,
    /// Only messages with at least one recipient in this domain.
    pub recipient_domain: Option<Domain>,
    /// Also list finished messages (kept until the retention purge); default: pending only.
    pub include_finished: bool,
    /// Only messages that arrived before this time (`--older-than`).
    pub received_before: Option<Timestamp>,
    /// Cursor: start after this id (ids ascend in arrival order).
    pub after: Option<MessageId>,
    /// Page size, capped at [`MAX_LIST_LIMIT`]. Default 100.
    pub limit: usize,
}

impl Default for ListFilter {
    fn default() -> Self {
        ListFilter {
            state: None,
            recipient_domain: None,
            include_finished: false,
            received_before: None,
            after: None,
            limit: 100,
        }
    }
}

/// One page of [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// Matching messages in id order.
    pub messages: Vec<QueuedMessage>,
    /// Pass as `ListFilter::after` for the next page; `None` when the listing is complete.
    pub next_after: Option<MessageId>,
}

/// Queue statistics from [`Store::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// Message count for every [`MessageState`], in declaration order (zeros included).
    pub by_state: Vec<(MessageState, u64)>,
    /// Unfinished messages (queued, scheduled, deferred, held).
    pub pending: u64,
    /// Domains with the most pending messages (counting each message once per domain of its
    /// not-yet-final recipients), largest first.
    pub top_domains: Vec<(Domain, u64)>,
    /// Records that could not be decoded (logged; see `tracing` output for their keys).
    pub corrupt: u64,
}

/// The pending part of the queue, from [`Store::pending_summary`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSummary {
    /// Count for each pending [`MessageState`] (queued, scheduled, deferred, held, in that
    /// order); `None` when more messages were pending than the caller allowed to read.
    pub by_state: Option<Vec<(MessageState, u64)>>,
    /// Arrival time of the oldest pending message (held ones included); `None` when nothing
    /// is pending.
    pub oldest_received_at: Option<Timestamp>,
}

fn has_domain(m: &QueuedMessage, domain: &Domain) -> bool {
    m.recipients
        .iter()
        .any(|r| r.request.address.domain() == domain)
}

fn has_pending_domain(m: &QueuedMessage, domain: &Domain) -> bool {
    m.recipients
        .iter()
        .any(|r| !r.state.is_final() && r.request.address.domain() == domain)
}

fn invalid(rec: &StoredMessage, operation: &'static str) -> StoreError {
    StoreError::InvalidState {
        id: rec.message.id,
        state: rec.message.state(clock_now()).as_str(),
        operation,
    }
}

/// A planned admin change of one message: `Ok(None)` when nothing needs to change.
type Change<'a> = dyn Fn(&StoredMessage, &mut Plan) -> Result<Option<StoredMessage>> + Sync + 'a;

impl Store {
    /// Lists messages in id order, pending ones by default. Reads at most [`MAX_LIST_SCAN`]
    /// records per call; unreadable records are logged and skipped.
    pub fn list(&self, filter: &ListFilter, now: Timestamp) -> Result<ListPage, StoreError> {
        let limit = filter.limit.clamp(1, MAX_LIST_LIMIT);
        let start = match filter.after {
            Some(a) if a.as_u64() == u64::MAX => {
                return Ok(ListPage {
                    messages: Vec::new(),
                    next_after: None,
                });
            }
            Some(a) => id_key(MessageId::from_u64(a.as_u64() + 1)),
            None => [0u8; 8],
        };
        let include_finished =
            filter.include_finished || filter.state.is_some_and(|s| !s.is_pending());
        let mut messages = Vec::new();
        let mut last_seen = None;
        for (scanned, item) in self.inner.trees.messages.range(start..).enumerate() {
            if scanned >= MAX_LIST_SCAN {
                return Ok(ListPage {
                    messages,
                    next_after: last_seen,
                });
            }
            let (key, bytes) = item?;
            last_seen = parse_id_key(&key);
            let rec = match codec::decode_message(&key, &bytes) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable message skipped in listing");
                    continue;
                }
            };
            let state = rec.message.state(now);
            if (!include_finished && !state.is_pending())
                || filter.state.is_some_and(|s| s != state)
                || filter
                    .recipient_domain
                    .as_ref()
                    .is_some_and(|d| !has_domain(&rec.message, d))
                || filter
                    .received_before
                    .is_some_and(|t| rec.message.received_at >= t)
            {
                continue;
            }
            messages.push(rec.message);
            if messages.len() == limit {
                return Ok(ListPage {
                    next_after: last_seen,
                    messages,
                });
            }
        }
        Ok(ListPage {
            messages,
            next_after: None,
        })
    }

    /// Counts by state and the `top_n` busiest pending domains. Reads every record (including
    /// finished ones kept for retention), so it costs O(stored messages).
    pub fn stats(&self, now: Timestamp, top_n: usize) -> Result<QueueStats, StoreError> {
        let mut counts: HashMap<MessageState, u64> = HashMap::new();
        let mut domains: HashMap<Domain, u64> = HashMap::new();
        let mut corrupt = 0;
        for item in self.inner.trees.messages.iter() {
            let (key, bytes) = item?;
            let Ok(rec) = codec::decode_message(&key, &bytes) else {
                corrupt += 1;
                continue;
            };
            let state = rec.message.state(now);
            *counts.entry(state).or_default() += 1;
            if state.is_pending() {
                let mut seen: Vec<&Domain> = Vec::new();
                for r in rec
                    .message
                    .recipients
                    .iter()
                    .filter(|r| !r.state.is_final())
                {
                    let d = r.request.address.domain();
                    if !seen.contains(&d) {
                        seen.push(d);
                        *domains.entry(d.clone()).or_default() += 1;
                    }
                }
            }
        }
        let mut top_domains: Vec<(Domain, u64)> = domains.into_iter().collect();
        top_domains.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top_domains.truncate(top_n.min(MAX_TOP_DOMAINS));
        let by_state: Vec<_> = MessageState::ALL
            .iter()
            .map(|s| (*s, counts.get(s).copied().unwrap_or(0)))
            .collect();
        let pending = by_state
            .iter()
            .filter(|(s, _)| s.is_pending())
            .map(|(_, n)| n)
            .sum();
        Ok(QueueStats {
            by_state,
            pending,
            top_domains,
            corrupt,
        })
    }

    /// Counts the pending messages by state and finds the oldest, reading only the schedule and
    /// held indexes: O(pending), never the finished messages kept for retention. With more
    /// than `max_records` pending, only the oldest is looked up (keys only, one record read).
    pub fn pending_summary(&self, now: Timestamp, max_records: u64) -> Result<PendingSummary> {
        let trees = &self.inner.trees;
        // Every pending message has a schedule entry (`Some(at)`) or a held entry (`None`); a
        // held message whose lease is still running has both and is counted from the held
        // index only, and a stale schedule entry (not the record's `schedule_at`) not at all.
        let scheduled = trees
            .schedule
            .iter()
            .keys()
            .map(|k| k.map(|k| TimeKey::from_bytes(&k).map(|t| (t.id, Some(t.at)))));
        let held = trees
            .held
            .iter()
            .keys()
            .map(|k| k.map(|k| parse_id_key(&k).map(|id| (id, None))));
        let entries = scheduled.chain(held);
        if self.pending_count() > max_records {
            let mut oldest_id: Option<MessageId> = None;
            for entry in entries {
                if let Some((id, _)) = entry? {
                    oldest_id = Some(oldest_id.map_or(id, |o| o.min(id)));
                }
            }
            let oldest_received_at = match oldest_id {
                Some(id) => self.message(id)?.map(|m| m.received_at),
                None => None,
            };
            return Ok(PendingSummary {
                by_state: None,
                oldest_received_at,
            });
        }
        let mut counts = [0u64; MessageState::ALL.len()];
        let mut oldest_received_at: Option<Timestamp> = None;
        for entry in entries {
            let Some((id, scheduled_at)) = entry? else {
                continue;
            };
            let rec = match self.record(id) {
                Ok(Some(rec)) => rec,
                // Gone meanwhile, or unreadable (logged where it is read for delivery).
                Ok(None) | Err(StoreError::Corrupt { .. }) => continue,
                Err(e) => return Err(e),
            };
            let state = rec.message.state(now);
            let counted_here = match scheduled_at {
                Some(at) => state != MessageState::Held && rec.schedule_at == Some(at),
                None => state == MessageState::Held,
            };
            if !counted_here {
                continue;
            }
            if let Some(i) = MessageState::ALL
                .iter()
                .position(|s| *s == state && s.is_pending())
            {
                counts[i] += 1;
                let at = rec.message.received_at;
                oldest_received_at = Some(oldest_received_at.map_or(at, |o| o.min(at)));
            }
        }
        let by_state = MessageState::ALL
            .iter()
            .copied()
            .zip(counts)
            .filter(|(s, _)| s.is_pending())
            .collect();
        Ok(PendingSummary {
            by_state: Some(by_state),
            oldest_received_at,
        })
    }

    /// Plans and applies `change` for one message against a snapshot of its record, re-planning
    /// when the record changed meanwhile. `Ok(None)`: nothing to change. Not flushed.
    fn modify(&self, id: MessageId, change: &Change<'_>) -> Result<Option<Plan>> {
        let id_bytes = id_key(id);
        for _ in 0..MAX_RETRIES {
            let Some(bytes) = self.inner.trees.messages.get(id_bytes)? else {
                return Err(StoreError::NotFound(id));
            };
            let rec = codec::decode_message(&id_bytes, &bytes)?;
            let mut plan = Plan {
                expect_record: Some((id_bytes, Some(bytes))),
                ..Plan::default()
            };
            let Some(new) = change(&rec, &mut plan)? else {
                return Ok(None);
            };
            plan.messages
                .insert(&id_bytes[..], codec::encode_message(&new)?);
            match self.apply_plan(&mut plan)? {
                Verdict::Applied => return Ok(Some(plan)),
                Verdict::RecordChanged
                | Verdict::NotScheduled
                | Verdict::Idempotent(_)
                | Verdict::AlreadySuppressed => continue,
            }
        }
        Err(StoreError::Conflict(id))
    }

    /// [`Store::modify`], then flush and wake. Returns whether anything changed.
    async fn modify_durably(&self, id: MessageId, change: &Change<'_>) -> Result<bool> {
        self.check_writable()?;
        match self.modify(id, change)? {
            Some(plan) => {
                self.durable().await?;
                self.wake_for(&plan);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Makes a pending message due at `now`. `Ok(false)` when it is already due or an attempt
    /// is in flight; held and finished messages are refused ([`StoreError::InvalidState`]).
    pub async fn retry_now(&self, id: MessageId, now: Timestamp) -> Result<bool, StoreError> {
        self.modify_durably(id, &|rec, plan| plan_retry(rec, plan, now, None, true))
            .await
    }

    /// Makes every deferred (not held, not in flight) message due at `now`, or only those
    /// with a not-yet-final recipient in `domain`. Messages scheduled for a later first
    /// attempt (`send_at`) keep their time: retrying never sends them early.
    pub async fn retry_all(
        &self,
        domain: Option<&Domain>,
        now: Timestamp,
    ) -> Result<RetryAllOutcome, StoreError> {
        self.check_writable()?;
        let later = TimeKey::first_at(Timestamp::from_millis(now.as_millis().saturating_add(1)));
        let keys = self
            .inner
            .trees
            .schedule
            .range(later..)
            .keys()
            .collect::<Result<Vec<IVec>, sled::Error>>()?;
        let mut moved = 0;
        let mut scheduled_left = 0;
        for key in keys {
            let Some(k) = TimeKey::from_bytes(&key) else {
                continue;
            };
            match self.modify(k.id, &|rec, plan| plan_retry(rec, plan, now, domain, false)) {
                Ok(Some(_)) => moved += 1,
                Err(StoreError::InvalidState {
                    state: "scheduled", ..
                }) => scheduled_left += 1,
                Ok(None)
                | Err(
                    StoreError::NotFound(_)
                    | StoreError::InvalidState { .. }
                    | StoreError::Conflict(_),
                ) => {}
                Err(StoreError::Corrupt { .. } | StoreError::UnknownFormat { .. }) => {
                    tracing::warn!(id = %k.id, "unreadable message skipped by retry_all");
                }
                Err(e) => return Err(e),
            }
        }
        if moved > 0 {
            self.durable().await?;
            self.inner.work.notify_one();
        }
        tracing::info!(
            moved,
            scheduled_left,
            domain = domain.map(Domain::as_str),
            "retry all"
        );
        Ok(RetryAllOutcome {
            moved,
            scheduled_left,
        })
    }

    /// Puts a pending message on hold: it gets no attempts until released. An attempt already
    /// in flight may still record its result. `Ok(false)` when already held.
    pub async fn hold(&self, id: MessageId) -> Result<bool, StoreError> {
        self.modify_durably(id, &plan_hold).await
    }

    /// Releases a held message; it becomes due at `now`. `Ok(false)` when not held.
    pub async fn release(&self, id: MessageId, now: Timestamp) -> Result<bool, StoreError> {
        self.modify_durably(id, &|rec, plan| plan_release(rec, plan, now))
            .await
    }

    /// Removes a message and everything about it (record, body, schedule, hold and finished
    /// entries), without any notification. An attempt in flight then gets `LeaseLost`.
    /// Works on unreadable records too (then it searches the schedule for the id).
    pub async fn delete(&self, id: MessageId) -> Result<(), StoreError> {
        self.check_writable()?;
        self.delete_unsynced(id)?;
        self.durable().await?;
        tracing::info!(%id, "message deleted");
        Ok(())
    }

    /// [`Store::delete`] without the flush.
    fn delete_unsynced(&self, id: MessageId) -> Result<()> {
        let id_bytes = id_key(id);
        for _ in 0..MAX_RETRIES {
            let Some(bytes) = self.inner.trees.messages.get(id_bytes)? else {
                return Err(StoreError::NotFound(id));
            };
            let mut plan = Plan {
                expect_record: Some((id_bytes, Some(bytes.clone()))),
                ..Plan::default()
            };
            plan.messages.remove(&id_bytes[..]);
            plan.bodies.remove(&id_bytes[..]);
            plan.dropped_bodies.push(id_bytes);
            plan.held.remove(&id_bytes[..]);
            match codec::decode_message(&id_bytes, &bytes) {
                Ok(rec) => {
                    if let Some(at) = rec.schedule_at {
                        plan.schedule.remove(&TimeKey::new(at, id).to_bytes()[..]);
                    }
                    if let Some(at) = rec.message.finished_at {
                        plan.finished.remove(&TimeKey::new(at, id).to_bytes()[..]);
                    }
                    if !rec.message.is_finished() {
                        plan.pending_delta = -1;
                    }
                }
                Err(e) => {
                    tracing::warn!(%id, error = %e, "deleting unreadable message; scanning its index entries");
                    let mut scheduled = false;
                    for key in self.inner.trees.schedule.iter().keys() {
                        let key = key?;
                        if key.get(8..) == Some(&id_bytes[..]) {
                            plan.schedule.remove(key);
                            scheduled = true;
                        }
                    }
                    for key in self.inner.trees.finished.iter().keys() {
                        let key = key?;
                        if key.get(8..) == Some(&id_bytes[..]) {
                            plan.finished.remove(key);
                        }
                    }
                    if scheduled || self.inner.trees.held.contains_key(id_bytes)? {
                        plan.pending_delta = -1;
                    }
                }
            }
            match self.apply_plan(&mut plan)? {
                Verdict::Applied => return Ok(()),
                Verdict::RecordChanged
                | Verdict::NotScheduled
                | Verdict::Idempotent(_)
                | Verdict::AlreadySuppressed => continue,
            }
        }
        Err(StoreError::Conflict(id))
    }

    /// Applies `action` to each of `ids` (at most [`MAX_LIST_LIMIT`]; the rest are ignored), one
    /// transaction per message, and makes the lot durable with one flush. Messages gone
    /// meanwhile, finished, already in the wanted state, in flight (retry) or scheduled for a
    /// later first attempt (retry: never sent early) are skipped and counted. Callers page
    /// through the queue with [`Store::list`] and call this per page, so no call holds more
    /// than one page.
    pub async fn apply_bulk(
        &self,
        ids: &[MessageId],
        action: BulkAction,
        now: Timestamp,
    ) -> Result<BulkOutcome, StoreError> {
        self.check_writable()?;
        let mut outcome = BulkOutcome::default();
        let mut wakes = false;
        for &id in ids.iter().take(MAX_LIST_LIMIT) {
            let result = match action {
                BulkAction::Delete => self.delete_unsynced(id).map(|()| true),
                BulkAction::Hold => self.modify(id, &plan_hold).map(|p| p.is_some()),
                BulkAction::Release => self
                    .modify(id, &|rec, plan| plan_release(rec, plan, now))
                    .map(|p| p.is_some()),
                BulkAction::Retry => self
                    .modify(id, &|rec, plan| plan_retry(rec, plan, now, None, false))
                    .map(|p| p.is_some()),
            };
            match result {
                Ok(true) => {
                    outcome.changed += 1;
                    wakes |= matches!(action, BulkAction::Release | BulkAction::Retry);
                }
                Err(StoreError::InvalidState {
                    state: "scheduled", ..
                }) => outcome.scheduled_left += 1,
                Ok(false)
                | Err(
                    StoreError::NotFound(_)
                    | StoreError::InvalidState { .. }
                    | StoreError::Conflict(_),
                ) => outcome.skipped += 1,
                Err(StoreError::Corrupt { .. } | StoreError::UnknownFormat { .. }) => {
                    tracing::warn!(%id, "unreadable message skipped by a bulk operation");
                    outcome.skipped += 1;
                }
                Err(e) => return Err(e),
            }
        }
        if outcome.changed > 0 {
            self.durable().await?;
            if wakes {
                self.inner.work.notify_one();
            }
        }
        tracing::info!(
            action = action.as_str(),
            changed = outcome.changed,
            skipped = outcome.skipped,
            scheduled_left = outcome.scheduled_left,
            "bulk queue operation"
        );
        Ok(outcome)
    }

    /// Applies an operator's final (or any) update to a pending message wherever its schedule
    /// entry is, held or not, in flight or not ("bounce now"): `make_update` gets the current
    /// record; the result is applied like [`Store::record_attempt`], notifications included, in
    /// one transaction. An attempt in flight then gets `LeaseLost`. Returns the notification ids.
    /// If the message changes between reading and writing, nothing is written and
    /// [`StoreError::Conflict`] is returned (retry the call).
    pub async fn complete_without_lease(
        &self,
        id: MessageId,
        make_update: impl FnOnce(&QueuedMessage) -> AttemptUpdate,
    ) -> Result<Vec<MessageId>, StoreError> {
        self.check_writable()?;
        let id_bytes = id_key(id);
        let Some(bytes) = self.inner.trees.messages.get(id_bytes)? else {
            return Err(StoreError::NotFound(id));
        };
        let rec = codec::decode_message(&id_bytes, &bytes)?;
        if rec.message.is_finished() {
            return Err(invalid(&rec, "complete"));
        }
        let update = make_update(&rec.message);
        let notes = update
            .notifications
            .iter()
            .map(|n| self.prepare_new(n))
            .collect::<Result<Vec<_>>>()?;
        let finished_at = update.message.finished_at.unwrap_or_else(clock_now);
        let mut plan = Plan {
            expect_record: Some((id_bytes, Some(bytes))),
            ..Plan::default()
        };
        if let Some(at) = rec.schedule_at {
            plan.schedule.remove(&TimeKey::new(at, id).to_bytes()[..]);
        }
        plan_outcome(&mut plan, id, &rec, &update, finished_at)?;
        for n in &notes {
            n.add_to(&mut plan);
        }
        match self.apply_plan(&mut plan)? {
            Verdict::Applied => {
                self.durable().await?;
                self.wake_for(&plan);
                tracing::info!(%id, finished = update.next_attempt_at.is_none(), "message completed by operator");
                Ok(notes.iter().map(|n| n.id).collect())
            }
            Verdict::RecordChanged
            | Verdict::NotScheduled
            | Verdict::Idempotent(_)
            | Verdict::AlreadySuppressed => Err(StoreError::Conflict(id)),
        }
    }

    /// Drops finished messages that finished before `before` (the retention cut-off), with
    /// their index entries. Returns how many were dropped. Called periodically by the binary.
    /// Synchronous and not flushed by itself: a purge lost in a crash is simply redone, and the
    /// next group commit makes it durable. Cost: O(purged messages).
    pub fn purge_finished(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.check_writable()?;
        let end = TimeKey::first_at(before);
        let mut start: Vec<u8> = Vec::new();
        let mut purged = 0;
        loop {
            let keys = self
                .inner
                .trees
                .finished
                .range(start.clone()..end.to_vec())
                .keys()
                .take(PURGE_BATCH)
                .collect::<Result<Vec<IVec>, sled::Error>>()?;
            let Some(last) = keys.last() else { break };
            start = last.to_vec();
            start.push(0); // just after `last`
            for key in keys {
                if self.purge_one(&key)? {
                    purged += 1;
                }
            }
        }
        tracing::debug!(purged, before = %before, "finished messages purged");
        Ok(purged)
    }

    fn purge_one(&self, key: &IVec) -> Result<bool> {
        let Some(k) = TimeKey::from_bytes(key) else {
            let mut plan = Plan::default();
            plan.finished.remove(key.clone());
            self.apply_plan(&mut plan)?;
            return Ok(false);
        };
        let id_bytes = id_key(k.id);
        for _ in 0..MAX_RETRIES {
            let snapshot = self.inner.trees.messages.get(id_bytes)?;
            let mut plan = Plan {
                expect_record: Some((id_bytes, snapshot.clone())),
                ..Plan::default()
            };
            plan.finished.remove(key.clone());
            let drops = match snapshot
                .as_deref()
                .map(|b| codec::decode_message(&id_bytes, b))
            {
                Some(Ok(rec)) => rec.message.finished_at == Some(k.at) && rec.message.is_finished(),
                Some(Err(_)) => true,
                None => false,
            };
            if drops {
                plan.messages.remove(&id_bytes[..]);
                plan.bodies.remove(&id_bytes[..]);
                // Captured messages keep their body while finished (every chunk goes now).
                plan.dropped_bodies.push(id_bytes);
            }
            match self.apply_plan(&mut plan)? {
                Verdict::Applied => return Ok(drops),
                Verdict::RecordChanged
                | Verdict::NotScheduled
                | Verdict::Idempotent(_)
                | Verdict::AlreadySuppressed => continue,
            }
        }
        Ok(false)
    }
}

/// The retry-now change: move the schedule entry to `now` when it is in the future.
/// `strict` refuses held and finished messages with an error instead of skipping them.
/// What [`Store::retry_all`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAllOutcome {
    /// Deferred messages made due now.
    pub moved: u64,
    /// Messages scheduled for a later first attempt, left as they are.
    pub scheduled_left: u64,
}

/// What [`Store::apply_bulk`] does to each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    /// Make deferred messages due now ([`Store::retry_now`], scheduled ones keep their time).
    Retry,
    /// Put on hold ([`Store::hold`]).
    Hold,
    /// Release from hold ([`Store::release`]).
    Release,
    /// Remove without notification ([`Store::delete`]).
    Delete,
}

impl BulkAction {
    /// Lower-case name, as in the API path and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BulkAction::Retry => "retry",
            BulkAction::Hold => "hold",
            BulkAction::Release => "release",
            BulkAction::Delete => "delete",
        }
    }
}

/// What [`Store::apply_bulk`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BulkOutcome {
    /// Messages changed.
    pub changed: u64,
    /// Messages left as they were (gone, finished, already so, in flight).
    pub skipped: u64,
    /// Messages scheduled for a later first attempt that a retry left for their time.
    pub scheduled_left: u64,
}

/// The hold change: no attempts until released (an attempt in flight may still finish).
fn plan_hold(rec: &StoredMessage, plan: &mut Plan) -> Result<Option<StoredMessage>> {
    if rec.message.is_finished() {
        return Err(invalid(rec, "hold"));
    }
    if rec.message.held {
        return Ok(None);
    }
    let id = rec.message.id;
    let mut new = rec.clone();
    new.message.held = true;
    new.message.next_attempt_at = None;
    plan.held.insert(&id_key(id)[..], &[][..]);
    if !rec.is_leased() {
        if let Some(at) = rec.schedule_at {
            plan.schedule.remove(&TimeKey::new(at, id).to_bytes()[..]);
        }
        new.schedule_at = None;
        new.lease_until = None;
    }
    Ok(Some(new))
}

/// The release change: a held message becomes due at `now`.
fn plan_release(
    rec: &StoredMessage,
    plan: &mut Plan,
    now: Timestamp,
) -> Result<Option<StoredMessage>> {
    if rec.message.is_finished() {
        return Err(invalid(rec, "release"));
    }
    if !rec.message.held {
        return Ok(None);
    }
    let id = rec.message.id;
    let mut new = rec.clone();
    new.message.held = false;
    plan.held.remove(&id_key(id)[..]);
    if rec.is_leased() {
        new.message.next_attempt_at = rec.schedule_at;
    } else {
        if let Some(at) = rec.schedule_at {
            plan.schedule.remove(&TimeKey::new(at, id).to_bytes()[..]);
        }
        plan.schedule
            .insert(&TimeKey::new(now, id).to_bytes()[..], &[][..]);
        plan.wakes = true;
        new.schedule_at = Some(now);
        new.lease_until = None;
        new.message.next_attempt_at = Some(now);
    }
    Ok(Some(new))
}

fn plan_retry(
    rec: &StoredMessage,
    plan: &mut Plan,
    now: Timestamp,
    domain: Option<&Domain>,
    strict: bool,
) -> Result<Option<StoredMessage>> {
    if rec.message.is_finished() || rec.message.held {
        return if strict {
            Err(invalid(rec, "retry"))
        } else {
            Ok(None)
        };
    }
    if rec.is_leased() || rec.schedule_at.is_some_and(|at| at <= now) {
        return Ok(None);
    }
    if domain.is_some_and(|d| !has_pending_domain(&rec.message, d)) {
        return Ok(None);
    }
    if rec.message.state(now) == MessageState::Scheduled {
        // Its first attempt waits for the time the submitter asked for.
        return Err(StoreError::InvalidState {
            id: rec.message.id,
            state: MessageState::Scheduled.as_str(),
            operation: "retry before its scheduled time (release sends it now)",
        });
    }
    let id = rec.message.id;
    if let Some(at) = rec.schedule_at {
        plan.schedule.remove(&TimeKey::new(at, id).to_bytes()[..]);
    }
    plan.schedule
        .insert(&TimeKey::new(now, id).to_bytes()[..], &[][..]);
    plan.wakes = true;
    let mut new = rec.clone();
    new.schedule_at = Some(now);
    new.message.next_attempt_at = Some(now);
    Ok(Some(new))
}
