//! The suppression list (tree `suppressions`): addresses that are never attempted again.
//!
//! Keys are the address lowercased (UTF-8); an entry scoped to a sender domain (an
//! unsubscribe) is keyed `address ‖ " " ‖ domain` ([`Suppression::key`]), so an address can be
//! listed globally and for several senders at once. Recipients whose bounce carried an enhanced status
//! `5.1.x` (bad address) are added by [`crate::Store::record_attempt`] in the same transaction;
//! operators add and remove entries through the API. At enqueue, recipients on the list get the
//! state [`postrider_core::RecipientState::Suppressed`] and are never attempted. When the sender
//! is owed a failure notice for them (SMTP submissions, see
//! [`postrider_core::QueuedMessage::owes_suppression_notice`]), the record says so
//! (`suppression_notice_due`) and the message stays scheduled, even with nothing else to
//! deliver, until an attempt records the notice with [`crate::Store::record_attempt`].

use postrider_core::{Address, Domain, MessageId, SmtpReply, Timestamp};
use serde::{Deserialize, Serialize};
use sled::IVec;

use crate::Store;
use crate::error::{Result, StoreError};
use crate::journal::TreeId;
use crate::plan::Plan;

/// The newest suppression-record version this build writes and reads.
pub(crate) const SUPPRESSION_RECORD_VERSION: u8 = 1;
/// Most entries returned by one [`Store::list_suppressions`] call.
pub const MAX_SUPPRESSIONS_PAGE: usize = 1000;

/// Why an address is suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionReason {
    /// A delivery to it failed with a `5.1.x` status (the address does not exist).
    HardBounce,
    /// Added by an operator or application.
    Manual,
    /// The recipient complained about a message (an ARF feedback report came back).
    Complaint,
    /// The recipient used a message's one-click unsubscribe link (RFC 8058); scoped to the
    /// message's sender domain.
    Unsubscribed,
}

impl SuppressionReason {
    /// Stable label (`hard_bounce`, `manual`, `complaint`, `unsubscribed`).
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressionReason::HardBounce => "hard_bounce",
            SuppressionReason::Manual => "manual",
            SuppressionReason::Complaint => "complaint",
            SuppressionReason::Unsubscribed => "unsubscribed",
        }
    }
}

/// One suppressed address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppression {
    /// The address, lowercased.
    pub address: String,
    /// Why it is listed.
    pub reason: SuppressionReason,
    /// When it was listed.
    pub created_at: Timestamp,
    /// The message whose bounce listed it (hard bounces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_message: Option<MessageId>,
    /// The bounce reply (hard bounces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<SmtpReply>,
    /// The sender domain (lowercased) whose messages only this entry suppresses; `None`: all
    /// messages (the address is listed globally). Absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The received report that listed it (asynchronous bounces and complaints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_report: Option<ReportSource>,
}

impl Suppression {
    /// The entry's key, also the paging cursor of [`Store::list_suppressions`]: the address,
    /// followed by a space and the scope when it has one.
    pub fn key(&self) -> String {
        scoped_key(&self.address, self.scope.as_deref())
    }
}

/// A short record of the report (DSN or complaint) received at the bounce domain that listed
/// an address, kept with its suppression so operators can see why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportSource {
    /// The report's id in the inbox (16 hex digits, like queue ids).
    pub report_id: MessageId,
    /// When the report was received.
    pub received_at: Timestamp,
    /// The DSN's status (`5.1.1`), or the complaint's feedback type (`abuse`).
    pub status: String,
    /// The DSN's diagnostic text, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnostic: Option<String>,
}

/// The key of an address: its text lowercased.
pub fn suppression_key(address: &str) -> String {
    address.trim().to_lowercase()
}

/// The key of an address listed for `scope` (a sender domain), or globally for `None`. A
/// domain holds no space, so the last space of a scoped key always starts its scope.
pub fn scoped_key(address: &str, scope: Option<&str>) -> String {
    let address = suppression_key(address);
    match scope {
        Some(domain) => format!("{address} {}", domain.trim().to_lowercase()),
        None => address,
    }
}

/// Encodes a suppression record in the current version.
pub(crate) fn encode_suppression(s: &Suppression) -> Result<IVec> {
    crate::codec::encode_json_record("suppressions", SUPPRESSION_RECORD_VERSION, &s.address, s)
}

/// Decodes a suppression record of any known version.
pub(crate) fn decode_suppression(key: &[u8], bytes: &[u8]) -> Result<Suppression> {
    crate::codec::decode_json_record("suppressions", SUPPRESSION_RECORD_VERSION, key, bytes)
}

/// Whether a bounce reply means the address itself is bad (`5.1.x`), so it is suppressed.
pub fn is_hard_bounce(reply: &SmtpReply) -> bool {
    reply
        .enhanced
        .is_some_and(|e| e.class == 5 && e.subject == 1)
}

impl Store {
    /// Whether messages from `sender_domain` (`None`: the null sender) must not go to
    /// `address`: it is listed globally, or for that sender domain.
    pub fn is_suppressed(
        &self,
        address: &Address,
        sender_domain: Option<&Domain>,
    ) -> Result<bool, StoreError> {
        let address = address.to_string();
        let tree = &self.inner.trees.suppressions;
        if tree.contains_key(suppression_key(&address))? {
            return Ok(true);
        }
        match sender_domain {
            Some(domain) => Ok(tree.contains_key(scoped_key(&address, Some(domain.as_str())))?),
            None => Ok(false),
        }
    }

    /// The entry for `address` (any case) in `scope` (`None`: the global entry), if listed.
    pub fn suppression(
        &self,
        address: &str,
        scope: Option<&str>,
    ) -> Result<Option<Suppression>, StoreError> {
        let key = scoped_key(address, scope);
        match self.inner.trees.suppressions.get(key.as_bytes())? {
            Some(v) => decode_suppression(key.as_bytes(), &v).map(Some),
            None => Ok(None),
        }
    }

    /// Entries in key order ([`Suppression::key`]) after `after` (exclusive), at most `limit` (capped at
    /// [`MAX_SUPPRESSIONS_PAGE`]). Unreadable entries are skipped (and logged).
    pub fn list_suppressions(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Suppression>, StoreError> {
        let limit = limit.min(MAX_SUPPRESSIONS_PAGE);
        let mut start = after.map(suppression_key).unwrap_or_default().into_bytes();
        if after.is_some() {
            start.push(0);
        }
        let mut out = Vec::new();
        for item in self.inner.trees.suppressions.range(start..) {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item?;
            match decode_suppression(&key, &value) {
                Ok(s) => out.push(s),
                Err(e) => tracing::warn!(error = %e, "unreadable suppression skipped"),
            }
        }
        Ok(out)
    }

    /// Number of listed addresses.
    pub fn suppression_count(&self) -> usize {
        self.inner.trees.suppressions.len()
    }

    /// Lists an address (its `address` and `scope` are lowercased; the caller has checked it
    /// is a valid address and the scope a domain). Returns `false`, writing nothing, when
    /// it is already listed in that scope. Durable when `Ok`.
    pub async fn add_suppression(&self, mut entry: Suppression) -> Result<bool, StoreError> {
        self.check_writable()?;
        entry.address = suppression_key(&entry.address);
        entry.scope = entry.scope.map(|s| s.trim().to_lowercase());
        let key = entry.key().into_bytes();
        let value = encode_suppression(&entry)?;
        let added = self.write(|tx| {
            if tx.get(TreeId::Suppressions, &key)?.is_some() {
                return Ok(false);
            }
            tx.insert(TreeId::Suppressions, &key[..], &value[..])?;
            Ok(true)
        })?;
        if added {
            self.durable().await?;
            tracing::info!(address = %entry.address, reason = entry.reason.as_str(), "address suppressed");
        }
        Ok(added)
    }

    /// Removes an address from the list in `scope` (`None`: its global entry). Returns
    /// whether it was listed there. Durable when `Ok`.
    pub async fn remove_suppression(
        &self,
        address: &str,
        scope: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.check_writable()?;
        let key = scoped_key(address, scope);
        let removed =
            self.write(|tx| Ok(tx.remove(TreeId::Suppressions, key.as_bytes())?.is_some()))?;
        if removed {
            self.durable().await?;
            tracing::info!(address = %key, "address removed from the suppression list");
        }
        Ok(removed)
    }
}

/// What [`Store::record_unsubscribe`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnsubscribeOutcome {
    /// The recipient is now suppressed for the sender's domain; an `unsubscribed` event was
    /// appended.
    Unsubscribed(Suppression),
    /// The recipient was already suppressed for that domain; nothing was written.
    AlreadyUnsubscribed(Suppression),
    /// No such message (gone after the retention period), recipient, or the message was not
    /// sent with unsubscribe links or has no sender domain.
    Unknown,
}

impl Store {
    /// Suppresses recipient `index` of message `id` for the message's sender domain (reason
    /// `unsubscribed`) and appends an `unsubscribed` event (with its webhook outbox entries),
    /// in one transaction. Idempotent: when the recipient is already suppressed for that
    /// domain, nothing is written. Durable when `Ok`.
    pub async fn record_unsubscribe(
        &self,
        id: MessageId,
        index: usize,
        at: Timestamp,
    ) -> Result<UnsubscribeOutcome, StoreError> {
        use crate::events::{EventKind, PendingEvent, encode_event, record_for};
        self.check_writable()?;
        let Some(message) = self.message(id)? else {
            return Ok(UnsubscribeOutcome::Unknown);
        };
        let (Some(status), Some(sender), true) = (
            message.recipients.get(index),
            message.sender.address(),
            message.unsubscribe,
        ) else {
            return Ok(UnsubscribeOutcome::Unknown);
        };
        let entry = Suppression {
            address: suppression_key(&status.request.address.to_string()),
            reason: SuppressionReason::Unsubscribed,
            created_at: at,
            source_message: Some(id),
            reply: None,
            scope: Some(sender.domain().as_str().to_lowercase()),
            source_report: None,
        };
        let key = entry.key();
        let kind = EventKind::Unsubscribed;
        let mut event = record_for(&message, kind, Some(status), at);
        event.reply = None;
        event.mx_host = None;
        let mut plan = Plan {
            suppress_new: Some((key.as_bytes().into(), encode_suppression(&entry)?)),
            ..Plan::default()
        };
        plan.events.push(PendingEvent {
            kind,
            value: encode_event(&event)?,
        });
        if self.apply_plan(&mut plan)? == crate::plan::Verdict::AlreadySuppressed {
            let existing = self.suppression(&entry.address, entry.scope.as_deref())?;
            return Ok(UnsubscribeOutcome::AlreadyUnsubscribed(
                existing.unwrap_or(entry),
            ));
        }
        self.durable().await?;
        tracing::info!(%id, recipient = %entry.address, scope = ?entry.scope, "recipient unsubscribed");
        Ok(UnsubscribeOutcome::Unsubscribed(entry))
    }
}

/// Adds hard-bounce suppressions for `message`'s recipients that newly bounced with `5.1.x`.
pub(crate) fn plan_hard_bounces(
    plan: &mut Plan,
    before: &postrider_core::QueuedMessage,
    after: &postrider_core::QueuedMessage,
    now: Timestamp,
) -> Result<()> {
    use postrider_core::RecipientState;
    for (old, new) in before.recipients.iter().zip(&after.recipients) {
        if old.state == RecipientState::Bounced || new.state != RecipientState::Bounced {
            continue;
        }
        let Some(reply) = new.last_reply.as_ref().filter(|r| is_hard_bounce(r)) else {
            continue;
        };
        let entry = Suppression {
            address: suppression_key(&new.request.address.to_string()),
            reason: SuppressionReason::HardBounce,
            created_at: new.last_attempt_at.unwrap_or(now),
            source_message: Some(after.id),
            reply: Some(reply.clone()),
            scope: None,
            source_report: None,
        };
        plan.suppress_if_absent
            .push((entry.address.as_bytes().into(), encode_suppression(&entry)?));
    }
    Ok(())
}
