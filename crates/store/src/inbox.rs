//! The inbox of received reports (tree `bounce_inbox`): what the bounce-domain listener
//! accepted, kept durably from before its `250` until the report has been processed.
//!
//! Layout (`migrations-free-data/README.md`): the head record under `be_u64(id)` is
//! `0x01 ‖ JSON(InboxRecord)`; the raw report follows in chunks of at most 64 KiB under
//! `be_u64(id) ‖ be_u32(index)` (index 0…chunks-1), so no sled value grows large. Ids come from
//! the same generator as queue ids.
//!
//! Processing ([`Store::finish_report`]) applies a report's effect (an asynchronous bounce or
//! a complaint, with its event, webhook outbox entries and suppression) and removes the report
//! in one journal record: a crash leaves either the report still waiting or its whole effect.

use postrider_core::{
    BounceCategory, MessageId, RecipientState, SmtpReply, Timestamp, bounce::classify_failure,
};
use serde::{Deserialize, Serialize};
use sled::IVec;

use crate::Store;
use crate::codec::{decode_message, encode_message};
use crate::error::{Result, StoreError};
use crate::events::{EventKind, PendingEvent, encode_event, record_for};
use crate::keys::id_key;
use crate::plan::{Plan, Verdict};
use crate::suppress::{
    ReportSource, Suppression, SuppressionReason, encode_suppression, is_hard_bounce,
    suppression_key,
};

/// The sled tree of received reports.
pub(crate) const TREE: &str = "bounce_inbox";
/// The newest inbox-record version this build writes and reads.
pub(crate) const INBOX_RECORD_VERSION: u8 = 1;
/// Largest report the inbox takes, in bytes (the listener's own limit is lower or equal).
pub const MAX_INBOX_REPORT: usize = 64 * 1024 * 1024;
/// Bytes of the raw report per chunk.
const CHUNK: usize = 64 * 1024;
/// Most recipients of one received report kept in its envelope.
const MAX_ENVELOPE_RECIPIENTS: usize = 100;
/// Times a report's effect is planned again when its message changed meanwhile.
const MAX_PLAN_ATTEMPTS: usize = 5;

/// The SMTP envelope a report arrived with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportEnvelope {
    /// The reverse-path (empty for the null sender `<>`, as most reports use).
    pub mail_from: String,
    /// The recipients, all at the bounce domain (VERP return paths).
    pub rcpt_to: Vec<String>,
    /// The client's address, for the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
}

/// The head record of a received report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InboxRecord {
    pub(crate) received_at: Timestamp,
    pub(crate) envelope: ReportEnvelope,
    /// Size of the raw report in bytes.
    pub(crate) size: u64,
    /// Number of chunks the raw report is stored in.
    pub(crate) chunks: u32,
}

/// A report waiting in the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedReport {
    /// Its id in the inbox.
    pub id: MessageId,
    /// When it was received.
    pub received_at: Timestamp,
    /// Its SMTP envelope.
    pub envelope: ReportEnvelope,
    /// The report as received (dot-unstuffed, CRLF line ends).
    pub raw: Vec<u8>,
}

/// What processing a report does to the queue, applied with its removal from the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboxEffect {
    /// Nothing (an auto-reply, something unrecognised, a report matching no message).
    Discard,
    /// A DSN says recipient `recipient` (its index) of `message` failed after delivery.
    AsyncBounce {
        /// The message.
        message: MessageId,
        /// The recipient's index in the message.
        recipient: usize,
        /// The failure, made from the DSN's status and diagnostic.
        reply: SmtpReply,
        /// The report, for the suppression record.
        source: ReportSource,
    },
    /// A feedback report (ARF): the recipient complained about the message.
    Complaint {
        /// The message.
        message: MessageId,
        /// The recipient's index in the message.
        recipient: usize,
        /// The report, for the suppression record.
        source: ReportSource,
    },
}

/// What [`Store::finish_report`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum InboxOutcome {
    /// The report was removed and nothing else changed.
    Discarded,
    /// The report's message or recipient is not (or no longer) in the queue.
    UnknownMessage,
    /// The recipient was not `delivered` (already bounced, or never delivered): unchanged.
    Unchanged,
    /// The recipient became `bounced` (asynchronously).
    Bounced {
        /// Why, from the DSN's status and text.
        category: BounceCategory,
        /// Whether the bounce was hard enough to list the address (unless already listed).
        suppressed: bool,
    },
    /// A `complained` event was recorded and the address listed (unless already listed).
    Complained,
}

fn encode_head(id: MessageId, record: &InboxRecord) -> Result<IVec> {
    crate::codec::encode_json_record(TREE, INBOX_RECORD_VERSION, &id.to_string(), record)
}

/// Decodes an inbox head record of any known version.
pub(crate) fn decode_head(key: &[u8], bytes: &[u8]) -> Result<InboxRecord> {
    crate::codec::decode_json_record(TREE, INBOX_RECORD_VERSION, key, bytes)
}

fn chunk_key(id: MessageId, index: u32) -> Vec<u8> {
    let mut key = id_key(id).to_vec();
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// Whether a bounce is hard enough to list the address: the address does not exist
/// (`invalid_recipient`, or a `5.1.x` status).
pub fn is_hard_async_bounce(reply: &SmtpReply) -> bool {
    is_hard_bounce(reply) || classify_failure(reply) == BounceCategory::InvalidRecipient
}

impl Store {
    /// Durably stores a report received at the bounce domain (before the listener's `250`) and
    /// wakes the processor. Refuses reports over [`MAX_INBOX_REPORT`].
    pub async fn receive_report(
        &self,
        mut envelope: ReportEnvelope,
        raw: &[u8],
        received_at: Timestamp,
    ) -> Result<MessageId, StoreError> {
        self.check_writable()?;
        if raw.len() > MAX_INBOX_REPORT {
            return Err(StoreError::ReportTooLarge {
                size: raw.len(),
                max: MAX_INBOX_REPORT,
            });
        }
        envelope.rcpt_to.truncate(MAX_ENVELOPE_RECIPIENTS);
        let id = MessageId::from_u64(self.inner.db.generate_id()?.saturating_add(1));
        let chunks: Vec<&[u8]> = raw.chunks(CHUNK).collect();
        let head = InboxRecord {
            received_at,
            envelope,
            size: raw.len() as u64,
            chunks: u32::try_from(chunks.len()).unwrap_or(u32::MAX),
        };
        let mut plan = Plan::default();
        plan.inbox.insert(&id_key(id)[..], encode_head(id, &head)?);
        for (index, chunk) in (0u32..).zip(chunks) {
            plan.inbox.insert(chunk_key(id, index), chunk);
        }
        self.apply_plan(&mut plan)?;
        self.durable().await?;
        self.inner.inbox_work.notify_one();
        Ok(id)
    }

    /// Ids of the reports waiting in the inbox, oldest first, at most `limit`.
    pub fn waiting_reports(&self, limit: usize) -> Result<Vec<MessageId>, StoreError> {
        let mut out = Vec::new();
        for key in self.inner.trees.inbox.iter().keys() {
            if out.len() >= limit {
                break;
            }
            let key = key?;
            if let Ok(id) = <[u8; 8]>::try_from(key.as_ref()) {
                out.push(MessageId::from_u64(u64::from_be_bytes(id)));
            }
        }
        Ok(out)
    }

    /// Whether no report waits in the inbox.
    pub fn inbox_is_empty(&self) -> bool {
        self.inner.trees.inbox.is_empty()
    }

    /// A waiting report with its raw content; `None` when it is not in the inbox.
    pub fn received_report(&self, id: MessageId) -> Result<Option<ReceivedReport>, StoreError> {
        let key = id_key(id);
        let Some(head) = self.inner.trees.inbox.get(key)? else {
            return Ok(None);
        };
        let head = decode_head(&key, &head)?;
        let mut raw = Vec::with_capacity(usize::try_from(head.size).unwrap_or(0).min(CHUNK * 16));
        for index in 0..head.chunks {
            let chunk_key = chunk_key(id, index);
            let chunk =
                self.inner
                    .trees
                    .inbox
                    .get(&chunk_key)?
                    .ok_or_else(|| StoreError::Corrupt {
                        tree: TREE,
                        key: crate::keys::hex(&chunk_key),
                        reason: "a chunk of the report is missing".into(),
                    })?;
            raw.extend_from_slice(&chunk);
        }
        Ok(Some(ReceivedReport {
            id,
            received_at: head.received_at,
            envelope: head.envelope,
            raw,
        }))
    }

    /// Resolves when a report was received since the last call (wake-ups are stored when
    /// nobody waits); meant for one processor task.
    pub async fn wait_for_reports(&self) {
        self.inner.inbox_work.notified().await;
    }

    /// Applies `effect` and removes report `id` from the inbox, in one durable transaction.
    /// A recipient that is not `delivered` is left as it is (a second report for the same
    /// recipient changes nothing), and so is an address already listed for a complaint
    /// about the same message.
    pub async fn finish_report(
        &self,
        id: MessageId,
        effect: &InboxEffect,
        now: Timestamp,
    ) -> Result<InboxOutcome, StoreError> {
        self.check_writable()?;
        for _ in 0..MAX_PLAN_ATTEMPTS {
            let mut plan = Plan::default();
            for key in self.inner.trees.inbox.scan_prefix(id_key(id)).keys() {
                plan.inbox.remove(key?);
            }
            let outcome = self.plan_effect(&mut plan, effect, now)?;
            match self.apply_plan(&mut plan)? {
                Verdict::Applied => {
                    self.durable().await?;
                    return Ok(outcome);
                }
                Verdict::RecordChanged
                | Verdict::NotScheduled
                | Verdict::Idempotent(_)
                | Verdict::AlreadySuppressed => {}
            }
        }
        Err(StoreError::Conflict(id))
    }

    fn plan_effect(
        &self,
        plan: &mut Plan,
        effect: &InboxEffect,
        now: Timestamp,
    ) -> Result<InboxOutcome> {
        let (message, recipient, source) = match effect {
            InboxEffect::Discard => return Ok(InboxOutcome::Discarded),
            InboxEffect::AsyncBounce {
                message,
                recipient,
                source,
                ..
            }
            | InboxEffect::Complaint {
                message,
                recipient,
                source,
            } => (*message, *recipient, source),
        };
        let key = id_key(message);
        let Some(bytes) = self.inner.trees.messages.get(key)? else {
            return Ok(InboxOutcome::UnknownMessage);
        };
        let mut stored = decode_message(&key, &bytes)?;
        let Some(status) = stored.message.recipients.get(recipient).cloned() else {
            return Ok(InboxOutcome::UnknownMessage);
        };
        let address = suppression_key(&status.request.address.to_string());
        let reply = match effect {
            InboxEffect::AsyncBounce { reply, .. } => reply,
            _ => {
                if self
                    .suppression(&address, None)?
                    .is_some_and(|s| s.reason == SuppressionReason::Complaint)
                {
                    return Ok(InboxOutcome::Unchanged);
                }
                let kind = EventKind::Complained;
                plan.events.push(PendingEvent {
                    kind,
                    value: encode_event(&record_for(&stored.message, kind, Some(&status), now))?,
                });
                let entry = Suppression {
                    address,
                    reason: SuppressionReason::Complaint,
                    created_at: now,
                    source_message: Some(message),
                    reply: None,
                    source_report: Some(source.clone()),
                    scope: None,
                };
                plan.suppress_if_absent
                    .push((entry.address.as_bytes().into(), encode_suppression(&entry)?));
                return Ok(InboxOutcome::Complained);
            }
        };
        if status.state != RecipientState::Delivered {
            return Ok(InboxOutcome::Unchanged);
        }
        let Some(after) = stored.message.recipients.get_mut(recipient) else {
            return Ok(InboxOutcome::UnknownMessage);
        };
        after.state = RecipientState::Bounced;
        after.last_reply = Some(reply.clone());
        after.async_bounce = true;
        let after = after.clone();
        let kind = EventKind::Bounced;
        plan.events.push(PendingEvent {
            kind,
            value: encode_event(&record_for(&stored.message, kind, Some(&after), now))?,
        });
        let suppressed = is_hard_async_bounce(reply);
        if suppressed {
            let entry = Suppression {
                address,
                reason: SuppressionReason::HardBounce,
                created_at: now,
                source_message: Some(message),
                reply: Some(reply.clone()),
                source_report: Some(source.clone()),
                scope: None,
            };
            plan.suppress_if_absent
                .push((entry.address.as_bytes().into(), encode_suppression(&entry)?));
        }
        plan.messages.insert(&key[..], encode_message(&stored)?);
        plan.expect_record = Some((key, Some(bytes)));
        Ok(InboxOutcome::Bounced {
            category: classify_failure(reply),
            suppressed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InboxRecord {
        InboxRecord {
            received_at: Timestamp::from_millis(1_795_411_260_000),
            envelope: ReportEnvelope {
                mail_from: String::new(),
                rcpt_to: vec!["b+0123456789abcdefghijklmn@bounces.example.com".into()],
                client_ip: Some("192.0.2.25".into()),
            },
            size: 2048,
            chunks: 1,
        }
    }

    /// The golden fixture of the version-1 inbox head record (created once with
    /// `POSTRIDER_WRITE_FIXTURES=1`, never changed).
    #[test]
    fn golden_fixture_of_the_inbox_record_decodes() {
        let path = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../migrations-free-data/v1/inbox-record.bin"
        ));
        let id = MessageId::from_u64(0x42);
        if std::env::var_os("POSTRIDER_WRITE_FIXTURES").is_some() && !path.exists() {
            std::fs::write(path, encode_head(id, &sample()).unwrap()).unwrap();
        }
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(decode_head(b"k", &bytes).unwrap(), sample());
        let mut newer = bytes.clone();
        newer[0] = 2;
        assert!(matches!(
            decode_head(b"k", &newer),
            Err(StoreError::UnknownFormat { .. })
        ));
    }

    /// Golden fixtures of the fields and reasons reports add to version-1 records: a
    /// suppression listed by a complaint with its source report, and an asynchronous bounce
    /// event.
    #[test]
    fn golden_fixtures_of_report_fields_decode() {
        use crate::events::{EventRecord, decode_event};
        use crate::suppress::decode_suppression;
        let dir = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../migrations-free-data/v1"
        ));
        let suppression = Suppression {
            address: "alice@example.net".into(),
            reason: SuppressionReason::Complaint,
            created_at: Timestamp::from_millis(1_795_411_270_000),
            source_message: Some(MessageId::from_u64(0x1234)),
            reply: None,
            source_report: Some(ReportSource {
                report_id: MessageId::from_u64(0x42),
                received_at: Timestamp::from_millis(1_795_411_260_000),
                status: "abuse".into(),
                diagnostic: None,
            }),
            scope: None,
        };
        let event = EventRecord {
            kind: EventKind::Bounced,
            message_id: MessageId::from_u64(0x1234),
            recipient: Some("alice@example.net".into()),
            reply: Some(SmtpReply::new(550, "5.1.1 no such user")),
            mx_host: Some("mx1.example.net".into()),
            source: postrider_core::Source::Http,
            tags: Vec::new(),
            metadata: std::collections::BTreeMap::new(),
            at: Timestamp::from_millis(1_795_411_270_000),
            async_bounce: true,
        };
        let fixtures = [
            (
                "suppression-record-complaint.bin",
                encode_suppression(&suppression).unwrap(),
            ),
            ("event-record-async.bin", encode_event(&event).unwrap()),
        ];
        for (name, bytes) in &fixtures {
            let path = dir.join(name);
            if std::env::var_os("POSTRIDER_WRITE_FIXTURES").is_some() && !path.exists() {
                std::fs::write(&path, bytes).unwrap();
            }
        }
        let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
        assert_eq!(
            decode_suppression(b"k", &read("suppression-record-complaint.bin")).unwrap(),
            suppression
        );
        assert_eq!(
            decode_event(b"k", &read("event-record-async.bin")).unwrap(),
            event
        );
    }
}
