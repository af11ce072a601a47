//! The SMTP envelope: reverse-path, recipients and their RFC 3461 DSN requests.

use serde::{Deserialize, Serialize};

use crate::address::{Address, ReversePath};

/// RFC 3461 `RET`: how much of the original a failure DSN should return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DsnRet {
    /// Return only the headers (the default when `RET` is absent).
    Hdrs,
    /// Return the whole message.
    Full,
}

/// RFC 3461 `NOTIFY` for one recipient. `None` in [`RecipientRequest::notify`] means "not given",
/// which behaves like `FAILURE` (and `DELAY` where delay notices are sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NotifyFlags {
    /// `NOTIFY=NEVER`: no DSN of any kind for this recipient.
    #[serde(default)]
    pub never: bool,
    /// `SUCCESS`: report delivery.
    #[serde(default)]
    pub success: bool,
    /// `FAILURE`: report a permanent failure.
    #[serde(default)]
    pub failure: bool,
    /// `DELAY`: report a long delay.
    #[serde(default)]
    pub delay: bool,
}

/// One envelope recipient with what the submitter asked of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientRequest {
    /// The forward-path.
    pub address: Address,
    /// RFC 3461 `NOTIFY`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<NotifyFlags>,
    /// RFC 3461 `ORCPT` (`addr-type;xtext-decoded address`), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<String>,
}

impl RecipientRequest {
    /// A recipient with no DSN parameters.
    pub fn new(address: Address) -> Self {
        RecipientRequest {
            address,
            notify: None,
            orcpt: None,
        }
    }

    /// Whether a failure of this recipient should be reported to the sender.
    pub fn wants_failure_notice(&self) -> bool {
        self.notify.is_none_or(|n| !n.never && n.failure)
    }

    /// Whether delivery to this recipient should be reported (`NOTIFY=SUCCESS`).
    pub fn wants_success_notice(&self) -> bool {
        self.notify.is_some_and(|n| !n.never && n.success)
    }

    /// Whether a long delay should be reported (`NOTIFY` absent or containing `DELAY`).
    pub fn wants_delay_notice(&self) -> bool {
        self.notify.is_none_or(|n| !n.never && n.delay)
    }
}

/// Why an envelope cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// A message needs at least one recipient.
    #[error("at least one recipient is required")]
    NoRecipients,
    /// The same recipient appears twice.
    #[error("duplicate recipient {0}")]
    DuplicateRecipient(String),
}

/// Sender and recipients of one message; never without recipients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    sender: ReversePath,
    recipients: Vec<RecipientRequest>,
    /// RFC 3461 `RET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<DsnRet>,
    /// RFC 3461 `ENVID` (xtext-decoded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
}

impl Envelope {
    /// Builds an envelope; rejects an empty or duplicated recipient list.
    /// Duplicates are compared case-insensitively on the domain only, as addresses are.
    pub fn new(
        sender: ReversePath,
        recipients: Vec<RecipientRequest>,
    ) -> Result<Self, EnvelopeError> {
        if recipients.is_empty() {
            return Err(EnvelopeError::NoRecipients);
        }
        let mut seen = std::collections::HashSet::with_capacity(recipients.len());
        for r in &recipients {
            if !seen.insert(&r.address) {
                return Err(EnvelopeError::DuplicateRecipient(r.address.to_string()));
            }
        }
        Ok(Envelope {
            sender,
            recipients,
            ret: None,
            envid: None,
        })
    }

    /// The reverse-path.
    pub fn sender(&self) -> &ReversePath {
        &self.sender
    }

    /// The recipients, in submission order; never empty.
    pub fn recipients(&self) -> &[RecipientRequest] {
        &self.recipients
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpt(s: &str) -> RecipientRequest {
        RecipientRequest::new(Address::parse(s).unwrap())
    }

    #[test]
    fn requires_distinct_recipients() {
        assert_eq!(
            Envelope::new(ReversePath::Null, vec![]),
            Err(EnvelopeError::NoRecipients)
        );
        let dup = Envelope::new(ReversePath::Null, vec![rcpt("a@b.c"), rcpt("a@B.C")]);
        assert_eq!(dup, Err(EnvelopeError::DuplicateRecipient("a@b.c".into())));
        assert!(Envelope::new(ReversePath::Null, vec![rcpt("a@b.c"), rcpt("A@b.c")]).is_ok());
    }

    #[test]
    fn notify_defaults() {
        let mut r = rcpt("a@b.c");
        assert!(r.wants_failure_notice() && r.wants_delay_notice() && !r.wants_success_notice());
        r.notify = Some(NotifyFlags {
            never: true,
            ..Default::default()
        });
        assert!(!r.wants_failure_notice() && !r.wants_delay_notice() && !r.wants_success_notice());
        r.notify = Some(NotifyFlags {
            success: true,
            ..Default::default()
        });
        assert!(!r.wants_failure_notice() && r.wants_success_notice());
    }
}
