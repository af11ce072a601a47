//! The append-only event log (tree `events`) and the webhook subscriptions that route events
//! into the outbox.
//!
//! Events are written in the same transaction as the state change that causes them. Their
//! sequence number is taken from a counter in `meta` (`event_seq`) inside that transaction, and
//! writes run one at a time under the journal lock, so sequence order is write order: a reader that has
//! seen `seq = n` will never later find a new event below `n`. That makes `seq` a durable cursor.

use std::collections::BTreeMap;

use postrider_core::{
    MessageId, QueuedMessage, RecipientState, RecipientStatus, SmtpReply, Source, Timestamp,
    failure_category,
};
use serde::{Deserialize, Serialize};
use sled::IVec;

use crate::Store;
use crate::error::{Result, StoreError};
use crate::journal::TreeId;

/// The newest event-record version this build writes and reads.
pub(crate) const EVENT_RECORD_VERSION: u8 = 1;
/// Key of the last used event sequence number in the `meta` tree (`be_u64`).
pub(crate) const EVENT_SEQ_KEY: &[u8] = b"event_seq";
/// Most events returned by one [`Store::events_after`] call.
pub const MAX_EVENTS_PAGE: usize = 1000;
/// Most events examined by one [`Store::events_matching`] call: a filter that matches little
/// returns a short (or empty) page and a cursor to go on from, never a scan of the whole log.
pub const MAX_EVENTS_SCAN: usize = 10_000;
/// Events examined per purge round.
const PURGE_BATCH: usize = 1024;

/// What happened. The serde form (lowercase) is the `type` of the event in the API and webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A message was durably queued (one event per message, no recipient).
    Accepted,
    /// An attempt for a recipient failed transiently; it will be retried.
    Deferred,
    /// A recipient's server accepted the message.
    Delivered,
    /// A recipient failed permanently (5xx).
    Bounced,
    /// A recipient was not attempted because its address is on the suppression list.
    Suppressed,
    /// A recipient was given up after the maximum queue lifetime (its last reply was transient).
    Expired,
    /// A recipient reported a delivered message as unwanted (spam complaint): an ARF report
    /// received at the bounce domain ([`Store::finish_report`]), or simulated for sandbox
    /// messages ([`Store::record_complaint`]).
    Complained,
    /// A recipient used the message's one-click unsubscribe link
    /// ([`Store::record_unsubscribe`]).
    Unsubscribed,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 8] = [
        EventKind::Accepted,
        EventKind::Deferred,
        EventKind::Delivered,
        EventKind::Bounced,
        EventKind::Suppressed,
        EventKind::Expired,
        EventKind::Complained,
        EventKind::Unsubscribed,
    ];

    /// Stable label (`accepted`, `deferred`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Accepted => "accepted",
            EventKind::Deferred => "deferred",
            EventKind::Delivered => "delivered",
            EventKind::Bounced => "bounced",
            EventKind::Suppressed => "suppressed",
            EventKind::Expired => "expired",
            EventKind::Complained => "complained",
            EventKind::Unsubscribed => "unsubscribed",
        }
    }

    /// Parses a label as written in configuration and query strings.
    pub fn parse(label: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == label)
    }
}

/// The stored part of an event (everything but its sequence number, which is the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EventRecord {
    #[serde(rename = "type")]
    pub(crate) kind: EventKind,
    pub(crate) message_id: MessageId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) recipient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reply: Option<SmtpReply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) mx_host: Option<String>,
    pub(crate) source: Source,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) tags: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) at: Timestamp,
    /// A bounce reported by a DSN after the recipient was delivered.
    #[serde(default, rename = "async", skip_serializing_if = "std::ops::Not::not")]
    pub(crate) async_bounce: bool,
}

/// One event of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the log: strictly increasing in commit order; the paging cursor.
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
    /// The message concerned.
    pub message_id: MessageId,
    /// The recipient concerned (absent for `accepted`).
    pub recipient: Option<String>,
    /// The reply that caused the event (delivered, deferred, bounced, expired).
    pub reply: Option<SmtpReply>,
    /// The MX host that answered, when a server was reached.
    pub mx_host: Option<String>,
    /// How the message was submitted.
    pub source: Source,
    /// The submitter's tags.
    pub tags: Vec<String>,
    /// The submitter's metadata.
    pub metadata: BTreeMap<String, String>,
    /// When it happened.
    pub at: Timestamp,
    /// A `bounced` event of a recipient that had been delivered: a DSN came back later.
    pub async_bounce: bool,
}

impl Event {
    fn from_record(seq: u64, r: EventRecord) -> Event {
        Event {
            seq,
            kind: r.kind,
            message_id: r.message_id,
            recipient: r.recipient,
            reply: r.reply,
            mx_host: r.mx_host,
            source: r.source,
            tags: r.tags,
            metadata: r.metadata,
            at: r.at,
            async_bounce: r.async_bounce,
        }
    }

    /// The JSON shown by `GET /v1/events` and POSTed to webhooks:
    /// `{seq, type, id, recipient?, reply?: {code, enhanced?, text}, category?, mx_host?, source,
    /// tags, metadata, at (RFC 3339), async?}`; `category` (why it failed) is there when the
    /// reply is a failure, `async: true` on a bounce reported by a DSN after delivery. `id` is the queue id, as everywhere in the API (`message_id`
    /// names only the `Message-ID` header).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "seq": self.seq,
            "type": self.kind.as_str(),
            "id": self.message_id.to_string(),
            "source": self.source.as_str(),
            "tags": self.tags,
            "metadata": self.metadata,
            "at": self.at.to_rfc3339(),
        });
        if let Some(obj) = v.as_object_mut() {
            if let Some(r) = &self.recipient {
                obj.insert("recipient".into(), r.clone().into());
            }
            if let Some(category) = self.reply.as_ref().and_then(failure_category) {
                obj.insert("category".into(), category.as_str().into());
            }
            if let Some(reply) = &self.reply {
                let mut rv = serde_json::json!({ "code": reply.code, "text": reply.text });
                if let (Some(e), Some(o)) = (reply.enhanced, rv.as_object_mut()) {
                    o.insert("enhanced".into(), e.to_string().into());
                }
                obj.insert("reply".into(), rv);
            }
            if let Some(h) = &self.mx_host {
                obj.insert("mx_host".into(), h.clone().into());
            }
            if self.async_bounce {
                obj.insert("async".into(), true.into());
            }
        }
        v
    }
}

/// Which events [`Store::events_matching`] returns; every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only events of this message.
    pub message_id: Option<MessageId>,
    /// Only events of this recipient address (compared without regard to case).
    pub recipient: Option<String>,
    /// Only events of these kinds; empty: every kind.
    pub kinds: Vec<EventKind>,
    /// Only events of messages carrying this tag.
    pub tag: Option<String>,
    /// Only events that happened at or after this time.
    pub since: Option<Timestamp>,
    /// Only events that happened before this time.
    pub until: Option<Timestamp>,
}

impl EventFilter {
    /// Whether `e` passes every condition.
    pub fn matches(&self, e: &Event) -> bool {
        self.message_id.is_none_or(|id| e.message_id == id)
            && self.recipient.as_deref().is_none_or(|want| {
                e.recipient
                    .as_deref()
                    .is_some_and(|r| r.eq_ignore_ascii_case(want))
            })
            && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && self
                .tag
                .as_deref()
                .is_none_or(|t| e.tags.iter().any(|have| have == t))
            && self.since.is_none_or(|t| e.at >= t)
            && self.until.is_none_or(|t| e.at < t)
    }
}

/// One page of [`Store::events_matching`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPage {
    /// Matching events, oldest first.
    pub events: Vec<Event>,
    /// The last sequence number examined (or the `after` given when none was): pass it as
    /// `after` to go on.
    pub next_cursor: u64,
}

/// An event planned outside a transaction: its kind (for webhook routing) and encoded value.
#[derive(Debug, Clone)]
pub(crate) struct PendingEvent {
    pub(crate) kind: EventKind,
    pub(crate) value: IVec,
}

/// Encodes an event record in the current version.
pub(crate) fn encode_event(record: &EventRecord) -> Result<IVec> {
    crate::codec::encode_json_record(
        "events",
        EVENT_RECORD_VERSION,
        &record.message_id.to_string(),
        record,
    )
}

/// Decodes an event record of any known version.
pub(crate) fn decode_event(key: &[u8], bytes: &[u8]) -> Result<EventRecord> {
    crate::codec::decode_json_record("events", EVENT_RECORD_VERSION, key, bytes)
}

pub(crate) fn record_for(
    m: &QueuedMessage,
    kind: EventKind,
    r: Option<&RecipientStatus>,
    at: Timestamp,
) -> EventRecord {
    EventRecord {
        kind,
        message_id: m.id,
        recipient: r.map(|r| r.request.address.to_string()),
        reply: r.and_then(|r| r.last_reply.clone()),
        mx_host: r.and_then(|r| r.mx_host.clone()),
        source: m.source,
        tags: m.tags.clone(),
        metadata: m.metadata.clone(),
        at,
        async_bounce: kind == EventKind::Bounced && r.is_some_and(|r| r.async_bounce),
    }
}

/// Events of a newly queued message: `accepted`, then `suppressed` per suppressed recipient.
pub(crate) fn enqueue_events(m: &QueuedMessage) -> Result<Vec<PendingEvent>> {
    let mut out = vec![PendingEvent {
        kind: EventKind::Accepted,
        value: encode_event(&record_for(m, EventKind::Accepted, None, m.received_at))?,
    }];
    for r in m
        .recipients
        .iter()
        .filter(|r| r.state == RecipientState::Suppressed)
    {
        out.push(PendingEvent {
            kind: EventKind::Suppressed,
            value: encode_event(&record_for(
                m,
                EventKind::Suppressed,
                Some(r),
                m.received_at,
            ))?,
        });
    }
    Ok(out)
}

/// The event kind of a recipient whose state went from `before` to `after` in an attempt, if
/// the change is worth an event. A recipient deferred again (more attempts) is a new `deferred`.
/// A bounce whose last reply is not permanent (4xx, or none) is a give-up after the maximum
/// queue lifetime: `expired`.
pub(crate) fn transition_kind(
    before: &RecipientStatus,
    after: &RecipientStatus,
) -> Option<EventKind> {
    let changed = before.state != after.state
        || before.attempts != after.attempts
        || before.last_attempt_at != after.last_attempt_at;
    if !changed {
        return None;
    }
    match after.state {
        RecipientState::Queued => None,
        RecipientState::Deferred => Some(EventKind::Deferred),
        RecipientState::Delivered if before.state != RecipientState::Delivered => {
            Some(EventKind::Delivered)
        }
        RecipientState::Bounced if before.state != RecipientState::Bounced => {
            match after.last_reply.as_ref() {
                Some(reply) if reply.code >= 500 => Some(EventKind::Bounced),
                _ => Some(EventKind::Expired),
            }
        }
        RecipientState::Suppressed if before.state != RecipientState::Suppressed => {
            Some(EventKind::Suppressed)
        }
        _ => None,
    }
}

/// Events for the recipients of `before` that changed in `after` (matched by position).
pub(crate) fn attempt_events(
    before: &QueuedMessage,
    after: &QueuedMessage,
    now: Timestamp,
) -> Result<Vec<PendingEvent>> {
    let mut out = Vec::new();
    for (old, new) in before.recipients.iter().zip(&after.recipients) {
        if let Some(kind) = transition_kind(old, new) {
            let at = new.last_attempt_at.unwrap_or(now);
            out.push(PendingEvent {
                kind,
                value: encode_event(&record_for(after, kind, Some(new), at))?,
            });
        }
    }
    Ok(out)
}

/// A webhook as the store sees it: which events go into its outbox, and its URL (kept in each
/// outbox entry so that a changed configuration does not send old entries to a new endpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSubscription {
    /// The endpoint.
    pub url: String,
    /// Event kinds to deliver; an empty list means every kind.
    pub events: Vec<EventKind>,
}

impl WebhookSubscription {
    /// Whether events of `kind` go to this webhook.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }
}

impl Store {
    /// Events with `seq > after`, oldest first, at most `limit` (capped at [`MAX_EVENTS_PAGE`]).
    /// Unreadable records are skipped (and logged).
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let limit = limit.min(MAX_EVENTS_PAGE);
        let start = after.saturating_add(1).to_be_bytes();
        let mut out = Vec::with_capacity(limit.min(64));
        if after == u64::MAX {
            return Ok(out);
        }
        for item in self.inner.trees.events.range(start..) {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item?;
            let Some(seq) = seq_of(&key) else { continue };
            match decode_event(&key, &value) {
                Ok(r) => out.push(Event::from_record(seq, r)),
                Err(e) => tracing::warn!(seq, error = %e, "unreadable event skipped"),
            }
        }
        Ok(out)
    }

    /// Events with `seq > after` that match `filter`, oldest first: at most `limit` (capped
    /// at [`MAX_EVENTS_PAGE`]) of them, examining at most [`MAX_EVENTS_SCAN`] events.
    /// Unreadable records are skipped (and logged).
    pub fn events_matching(
        &self,
        after: u64,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<EventPage, StoreError> {
        let limit = limit.clamp(1, MAX_EVENTS_PAGE);
        let mut page = EventPage {
            events: Vec::new(),
            next_cursor: after,
        };
        if after == u64::MAX {
            return Ok(page);
        }
        let start = after.saturating_add(1).to_be_bytes();
        for item in self.inner.trees.events.range(start..).take(MAX_EVENTS_SCAN) {
            let (key, value) = item?;
            let Some(seq) = seq_of(&key) else { continue };
            page.next_cursor = seq;
            match decode_event(&key, &value) {
                Ok(r) => {
                    let event = Event::from_record(seq, r);
                    if filter.matches(&event) {
                        page.events.push(event);
                        if page.events.len() >= limit {
                            break;
                        }
                    }
                }
                Err(e) => tracing::warn!(seq, error = %e, "unreadable event skipped"),
            }
        }
        Ok(page)
    }

    /// Records that `recipient` of message `id` complained about it: appends a `complained`
    /// event (with its webhook outbox entries) carrying the recipient's last reply and host.
    /// Returns `false`, writing nothing, when the message or the recipient is unknown. Durable
    /// when `Ok`.
    pub async fn record_complaint(
        &self,
        id: MessageId,
        recipient: &postrider_core::Address,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        self.check_writable()?;
        let Some(message) = self.message(id)? else {
            return Ok(false);
        };
        let Some(status) = message
            .recipients
            .iter()
            .find(|r| r.request.address == *recipient)
        else {
            return Ok(false);
        };
        let kind = EventKind::Complained;
        let mut plan = crate::plan::Plan::default();
        plan.events.push(PendingEvent {
            kind,
            value: encode_event(&record_for(&message, kind, Some(status), at))?,
        });
        self.apply_plan(&mut plan)?;
        self.durable().await?;
        tracing::info!(%id, recipient = %recipient, "complaint recorded");
        Ok(true)
    }

    /// One event by sequence number.
    pub fn event(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        let key = seq.to_be_bytes();
        match self.inner.trees.events.get(key)? {
            Some(v) => Ok(Some(Event::from_record(seq, decode_event(&key, &v)?))),
            None => Ok(None),
        }
    }

    /// The sequence number of the newest event (0 when none was ever written).
    pub fn last_event_seq(&self) -> Result<u64, StoreError> {
        Ok(self
            .inner
            .trees
            .meta
            .get(EVENT_SEQ_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Drops events that happened before `before` (the retention cut-off), oldest first; stops
    /// at the first newer one. Returns how many were dropped. Not flushed by itself (a lost
    /// purge is redone). Cost: O(purged events).
    pub fn purge_events(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.check_writable()?;
        let mut purged = 0u64;
        loop {
            let batch = self
                .inner
                .trees
                .events
                .iter()
                .take(PURGE_BATCH)
                .collect::<Result<Vec<(IVec, IVec)>, sled::Error>>()?;
            let mut done = batch.len() < PURGE_BATCH;
            let mut removals = Vec::new();
            for (key, value) in &batch {
                match decode_event(key, value) {
                    Ok(r) if r.at >= before => {
                        done = true;
                        break;
                    }
                    // Old and unreadable records alike are dropped.
                    _ => removals.push(key.clone()),
                }
            }
            let count = removals.len() as u64;
            self.write(|tx| {
                for key in &removals {
                    tx.remove(TreeId::Events, key.clone())?;
                }
                Ok(())
            })?;
            purged += count;
            if done || count == 0 {
                break;
            }
        }
        tracing::debug!(purged, before = %before, "old events purged");
        Ok(purged)
    }

    /// Sets the webhooks whose subscribed events are written to the outbox from now on
    /// (index in this list = webhook index in outbox keys). Call once at start-up, before
    /// submissions are accepted, so no event misses its outbox entry.
    pub fn set_webhooks(&self, webhooks: Vec<WebhookSubscription>) {
        let mut guard = match self.inner.webhooks.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = std::sync::Arc::new(webhooks);
    }

    /// The webhooks set by [`Store::set_webhooks`].
    pub(crate) fn webhooks(&self) -> std::sync::Arc<Vec<WebhookSubscription>> {
        match self.inner.webhooks.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Decodes an 8-byte event key.
pub(crate) fn seq_of(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::{IdempotencyRecord, decode_record, encode_record};
    use crate::outbox::{OutboxKey, OutboxRecord, decode_outbox, encode_outbox};
    use crate::suppress::{Suppression, SuppressionReason, decode_suppression, encode_suppression};

    fn sample_event() -> EventRecord {
        EventRecord {
            kind: EventKind::Bounced,
            message_id: MessageId::from_u64(0x1234),
            recipient: Some("alice@example.net".into()),
            reply: Some(SmtpReply::new(550, "5.1.1 no such user")),
            mx_host: Some("mx1.example.net".into()),
            source: Source::Http,
            tags: vec!["newsletter".into()],
            metadata: BTreeMap::from([("campaign".to_string(), "c-7".to_string())]),
            at: Timestamp::from_millis(1_795_411_200_000),
            async_bounce: false,
        }
    }

    fn sample_suppression() -> Suppression {
        Suppression {
            address: "alice@example.net".into(),
            reason: SuppressionReason::HardBounce,
            created_at: Timestamp::from_millis(1_795_411_200_000),
            source_message: Some(MessageId::from_u64(0x1234)),
            reply: Some(SmtpReply::new(550, "5.1.1 no such user")),
            scope: None,
            source_report: None,
        }
    }

    fn sample_idempotency() -> IdempotencyRecord {
        IdempotencyRecord {
            message_id: MessageId::from_u64(0x1234),
            body_sha256: "ab".repeat(32),
            created_at: Timestamp::from_millis(1_795_411_197_123),
            reply: "{\"state\":\"queued\"}".into(),
        }
    }

    fn sample_outbox() -> OutboxRecord {
        OutboxRecord {
            url: "https://hooks.example.com/postrider".into(),
            attempts: 2,
            first_at: Timestamp::from_millis(1_795_411_200_000),
        }
    }

    /// Golden fixtures of the version-1 event, suppression, idempotency and outbox records
    /// (created once with `POSTRIDER_WRITE_FIXTURES=1`, never changed).
    #[test]
    fn golden_fixtures_of_feature_records_decode() {
        let dir = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../migrations-free-data/v1"
        ));
        let write = std::env::var_os("POSTRIDER_WRITE_FIXTURES").is_some();
        let fixtures: [(&str, Vec<u8>); 4] = [
            (
                "event-record.bin",
                encode_event(&sample_event()).unwrap().to_vec(),
            ),
            (
                "suppression-record.bin",
                encode_suppression(&sample_suppression()).unwrap().to_vec(),
            ),
            (
                "idempotency-record.bin",
                encode_record(&sample_idempotency()).unwrap().to_vec(),
            ),
            (
                "outbox-record.bin",
                encode_outbox(&sample_outbox()).unwrap().to_vec(),
            ),
        ];
        for (name, bytes) in &fixtures {
            let path = dir.join(name);
            if write && !path.exists() {
                std::fs::write(&path, bytes).unwrap();
            }
        }
        let read = |name: &str| {
            std::fs::read(dir.join(name)).unwrap_or_else(|e| {
                panic!("fixture {name}: {e} (POSTRIDER_WRITE_FIXTURES=1 creates it)")
            })
        };
        assert_eq!(
            decode_event(b"k", &read("event-record.bin")).unwrap(),
            sample_event()
        );
        assert_eq!(
            decode_suppression(b"k", &read("suppression-record.bin")).unwrap(),
            sample_suppression()
        );
        assert_eq!(
            decode_record(b"k", &read("idempotency-record.bin")).unwrap(),
            sample_idempotency()
        );
        assert_eq!(
            decode_outbox(b"k", &read("outbox-record.bin")).unwrap(),
            sample_outbox()
        );
        // Newer versions are refused, per record.
        let mut newer = read("event-record.bin");
        newer[0] = 2;
        assert!(matches!(
            decode_event(b"k", &newer),
            Err(StoreError::UnknownFormat {
                tree: "events",
                found: 2,
                ..
            })
        ));
    }

    #[test]
    fn outbox_keys_round_trip_in_time_order() {
        let k = OutboxKey {
            due: Timestamp::from_millis(5),
            seq: 9,
            webhook: 2,
        };
        assert_eq!(OutboxKey::from_bytes(&k.to_bytes()), Some(k));
        assert_eq!(OutboxKey::from_bytes(&[0; 19]), None);
        let later = OutboxKey {
            due: Timestamp::from_millis(256),
            seq: 1,
            webhook: 0,
        };
        assert!(k.to_bytes() < later.to_bytes());
    }

    #[test]
    fn transitions_name_the_right_event() {
        use postrider_core::{Address, RecipientRequest};
        let base = RecipientStatus::new(RecipientRequest::new(Address::parse("a@x.test").unwrap()));
        let with = |state, code: Option<u16>, attempts| RecipientStatus {
            state,
            attempts,
            last_reply: code.map(|c| SmtpReply::new(c, "x")),
            ..base.clone()
        };
        let q = with(RecipientState::Queued, None, 0);
        assert_eq!(transition_kind(&q, &q), None);
        assert_eq!(
            transition_kind(&q, &with(RecipientState::Deferred, Some(451), 1)),
            Some(EventKind::Deferred)
        );
        let d1 = with(RecipientState::Deferred, Some(451), 1);
        assert_eq!(
            transition_kind(&d1, &with(RecipientState::Deferred, Some(451), 2)),
            Some(EventKind::Deferred)
        );
        assert_eq!(
            transition_kind(&d1, &with(RecipientState::Delivered, Some(250), 2)),
            Some(EventKind::Delivered)
        );
        assert_eq!(
            transition_kind(&d1, &with(RecipientState::Bounced, Some(550), 2)),
            Some(EventKind::Bounced)
        );
        assert_eq!(
            transition_kind(&d1, &with(RecipientState::Bounced, Some(451), 1)),
            Some(EventKind::Expired)
        );
        assert_eq!(
            transition_kind(&q, &with(RecipientState::Bounced, None, 0)),
            Some(EventKind::Expired)
        );
        let b = with(RecipientState::Bounced, Some(550), 1);
        assert_eq!(transition_kind(&b, &b), None);
        assert_eq!(EventKind::parse("expired"), Some(EventKind::Expired));
        assert_eq!(EventKind::parse("nope"), None);
    }
}
