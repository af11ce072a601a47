//! The suppression list (tree `suppressions`): addresses that are never attempted again.
//!
//! Keys are the address lowercased (UTF-8). Recipients whose bounce carried an enhanced status
//! `5.1.x` (bad address) are added by [`crate::Store::record_attempt`] in the same transaction;
//! operators add and remove entries through the API. At enqueue, recipients on the list get the
//! state [`postrider_core::RecipientState::Suppressed`] and are never attempted. When the sender
//! is owed a failure notice for them (SMTP submissions, see
//! [`postrider_core::QueuedMessage::owes_suppression_notice`]), the record says so
//! (`suppression_notice_due`) and the message stays scheduled, even with nothing else to
//! deliver, until an attempt records the notice with [`crate::Store::record_attempt`].

use postrider_core::{Address, MessageId, SmtpReply, Timestamp};
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
}

impl SuppressionReason {
    /// Stable label (`hard_bounce`, `manual`, `complaint`).
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressionReason::HardBounce => "hard_bounce",
            SuppressionReason::Manual => "manual",
            SuppressionReason::Complaint => "complaint",
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
    /// The received report that listed it (asynchronous bounces and complaints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_report: Option<ReportSource>,
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
    /// Whether `address` is on the suppression list.
    pub fn is_suppressed(&self, address: &Address) -> Result<bool, StoreError> {
        Ok(self
            .inner
            .trees
            .suppressions
            .contains_key(suppression_key(&address.to_string()))?)
    }

    /// The entry for `address` (any case), if listed.
    pub fn suppression(&self, address: &str) -> Result<Option<Suppression>, StoreError> {
        let key = suppression_key(address);
        match self.inner.trees.suppressions.get(key.as_bytes())? {
            Some(v) => decode_suppression(key.as_bytes(), &v).map(Some),
            None => Ok(None),
        }
    }

    /// Entries in address order after `after` (exclusive), at most `limit` (capped at
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

    /// Lists an address (its `address` is lowercased; the caller has checked it is a valid
    /// address). Returns `false`, writing nothing, when
    /// it is already listed. Durable when `Ok`.
    pub async fn add_suppression(&self, mut entry: Suppression) -> Result<bool, StoreError> {
        self.check_writable()?;
        entry.address = suppression_key(&entry.address);
        let key = entry.address.as_bytes().to_vec();
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

    /// Removes an address from the list. Returns whether it was listed. Durable when `Ok`.
    pub async fn remove_suppression(&self, address: &str) -> Result<bool, StoreError> {
        self.check_writable()?;
        let key = suppression_key(address);
        let removed =
            self.write(|tx| Ok(tx.remove(TreeId::Suppressions, key.as_bytes())?.is_some()))?;
        if removed {
            self.durable().await?;
            tracing::info!(address = %key, "address removed from the suppression list");
        }
        Ok(removed)
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
            source_report: None,
        };
        plan.suppress_if_absent
            .push((entry.address.as_bytes().into(), encode_suppression(&entry)?));
    }
    Ok(())
}
