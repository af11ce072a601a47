//! What a message that came back to a return path says: a delivery status notification
//! (RFC 3464), a complaint (ARF, RFC 5965), an auto-reply to ignore, or nothing we understand.
//!
//! MIME is parsed by `mail-parser`, ARF by `mail-auth`'s report module. Besides standard
//! `multipart/report` DSNs, plain-text bounces (old qmail/Exim/Postfix style "Undelivered Mail
//! Returned to Sender") are recognised by their subject and the status code and address in
//! their text.

use mail_auth::report::{Feedback, FeedbackType};
use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use postrider_core::EnhancedStatus;

/// Largest report parsed, in bytes (larger ones are [`InboundReport::Unrecognised`]).
pub const MAX_REPORT_SIZE: usize = 10 * 1024 * 1024;
/// Most recipients read from one DSN.
pub const MAX_DSN_RECIPIENTS: usize = 100;
/// Longest diagnostic text kept, in bytes.
const MAX_DIAGNOSTIC: usize = 1000;
/// Bytes of a plain-text bounce searched for a status code and address.
const MAX_TEXT_SCAN: usize = 64 * 1024;

/// What a DSN says happened to one recipient (RFC 3464 `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    /// The message could not be delivered.
    Failed,
    /// Still trying.
    Delayed,
    /// Delivered.
    Delivered,
    /// Relayed or expanded onwards: no more reports will follow from this hop.
    Relayed,
}

/// One recipient of a DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnRecipient {
    /// The recipient (`Original-Recipient`, else `Final-Recipient`), without the address type.
    pub address: Option<String>,
    /// What happened.
    pub action: DsnAction,
    /// The `Status` field.
    pub status: Option<EnhancedStatus>,
    /// The `Diagnostic-Code` text (the remote server's reply), without its type.
    pub diagnostic: Option<String>,
}

/// How the returned part identifies the message it is about (used when there is no VERP token).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginalMessage {
    /// The `Message-ID` of the returned message, without angle brackets.
    pub message_id: Option<String>,
    /// Its `X-Postrider-Id` header (a queue id), when present.
    pub queue_id: Option<String>,
}

/// A parsed report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundReport {
    /// A delivery status notification.
    Dsn {
        /// Per-recipient results.
        recipients: Vec<DsnRecipient>,
        /// The message it is about.
        original: OriginalMessage,
    },
    /// A complaint (feedback report).
    Complaint {
        /// `Feedback-Type` (`abuse`, `fraud`, …).
        feedback_type: String,
        /// `Original-Rcpt-To`, when given.
        recipient: Option<String>,
        /// The message it is about.
        original: OriginalMessage,
    },
    /// An automatic reply (vacation, out of office): ignored.
    AutoReply,
    /// Something else: kept, not acted upon.
    Unrecognised,
}

/// Parses a message received at a return path.
pub fn parse_report(raw: &[u8]) -> InboundReport {
    if raw.len() > MAX_REPORT_SIZE {
        return InboundReport::Unrecognised;
    }
    let Some(message) = MessageParser::default().parse(raw) else {
        return InboundReport::Unrecognised;
    };
    if let Some(report) = complaint(raw, &message) {
        return report;
    }
    if let Some(report) = standard_dsn(&message) {
        return report;
    }
    if is_auto_reply(&message) {
        return InboundReport::AutoReply;
    }
    plain_text_bounce(&message).unwrap_or(InboundReport::Unrecognised)
}

/// An ARF report, parsed by `mail-auth`.
fn complaint(raw: &[u8], message: &Message<'_>) -> Option<InboundReport> {
    message
        .parts
        .iter()
        .any(|p| p.is_content_type("message", "feedback-report"))
        .then_some(())?;
    let feedback = Feedback::parse_rfc5322(raw).ok()?;
    let feedback_type = match feedback.feedback_type() {
        FeedbackType::Abuse => "abuse",
        FeedbackType::AuthFailure => "auth-failure",
        FeedbackType::Fraud => "fraud",
        FeedbackType::NotSpam => "not-spam",
        FeedbackType::Virus => "virus",
        FeedbackType::Other => "other",
    };
    let recipient = feedback
        .original_rcpt_to()
        .map(|r| strip_angles(r).to_owned());
    Some(InboundReport::Complaint {
        feedback_type: feedback_type.to_owned(),
        recipient,
        original: original_of(message),
    })
}

/// A `multipart/report` with a `message/delivery-status` part.
fn standard_dsn(message: &Message<'_>) -> Option<InboundReport> {
    let status = message.parts.iter().find(|p| {
        p.is_content_type("message", "delivery-status")
            || p.is_content_type("message", "global-delivery-status")
    })?;
    let body = status.contents();
    let recipients: Vec<DsnRecipient> = field_groups(body)
        .skip(1) // the per-message fields
        .filter_map(|g| recipient_of(&g))
        .take(MAX_DSN_RECIPIENTS)
        .collect();
    Some(InboundReport::Dsn {
        recipients,
        original: original_of(message),
    })
}

/// The blank-line separated field groups of a `message/delivery-status` body, each parsed as a
/// header block by `mail-parser` (which unfolds continuation lines).
fn field_groups(body: &[u8]) -> impl Iterator<Item = Message<'_>> {
    let text = std::str::from_utf8(body).unwrap_or_default();
    text.split("\r\n\r\n")
        .flat_map(|s| s.split("\n\n"))
        .filter(|g| !g.trim().is_empty())
        .filter_map(|g| MessageParser::default().parse_headers(g.as_bytes()))
        .collect::<Vec<_>>()
        .into_iter()
}

fn recipient_of(group: &Message<'_>) -> Option<DsnRecipient> {
    let field = |name: &str| group.header_raw(name).map(|v| v.trim().to_owned());
    let action = match field("Action")?.to_ascii_lowercase().as_str() {
        "failed" => DsnAction::Failed,
        "delayed" => DsnAction::Delayed,
        "delivered" => DsnAction::Delivered,
        "relayed" | "expanded" => DsnAction::Relayed,
        _ => return None,
    };
    let address = field("Original-Recipient")
        .or_else(|| field("Final-Recipient"))
        .map(|v| without_type(&v).to_owned());
    let status = field("Status").and_then(|s| EnhancedStatus::parse(&s));
    let diagnostic = field("Diagnostic-Code").map(|d| bounded(without_type(&d)));
    Some(DsnRecipient {
        address,
        action,
        status,
        diagnostic,
    })
}

/// `rfc822; user@example.com` → `user@example.com`.
fn without_type(value: &str) -> &str {
    value
        .split_once(';')
        .map_or(value, |(_, v)| v)
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
}

fn strip_angles(v: &str) -> &str {
    v.trim().trim_start_matches('<').trim_end_matches('>')
}

/// At most [`MAX_DIAGNOSTIC`] bytes of `s`, on one line.
fn bounded(s: &str) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut end = one_line.len().min(MAX_DIAGNOSTIC);
    while !one_line.is_char_boundary(end) {
        end -= 1;
    }
    one_line[..end].to_owned()
}

/// The returned message (`message/rfc822`) or its header (`text/rfc822-headers`).
fn original_of(message: &Message<'_>) -> OriginalMessage {
    for part in &message.parts {
        if let PartType::Message(inner) = &part.body {
            return ids_of(inner);
        }
        if part.is_content_type("text", "rfc822-headers")
            && let Some(headers) = MessageParser::default().parse_headers(part.contents())
        {
            return ids_of(&headers);
        }
    }
    OriginalMessage::default()
}

fn ids_of(m: &Message<'_>) -> OriginalMessage {
    OriginalMessage {
        message_id: m.message_id().map(str::to_owned),
        queue_id: m.header_raw("X-Postrider-Id").map(|v| v.trim().to_owned()),
    }
}

/// RFC 3834 `Auto-Submitted` (other than `no`), the common `X-Autoreply` / `X-Autorespond`
/// headers, `Precedence: auto_reply`, or a vacation / out-of-office subject.
fn is_auto_reply(message: &Message<'_>) -> bool {
    let header = |name: &str| {
        message
            .header_raw(name)
            .map(|v| v.trim().to_ascii_lowercase())
    };
    if header("Auto-Submitted").is_some_and(|v| !v.starts_with("no")) {
        return true;
    }
    if header("X-Autoreply").is_some()
        || header("X-Autorespond").is_some()
        || header("X-Auto-Response-Suppress").is_some_and(|v| v.contains("oof"))
        || header("Precedence").is_some_and(|v| v == "auto_reply")
    {
        return true;
    }
    let subject = message.subject().unwrap_or_default().to_ascii_lowercase();
    [
        "out of office",
        "automatic reply",
        "auto-reply",
        "autoreply",
        "vacation",
    ]
    .iter()
    .any(|p| subject.contains(p))
}

/// A bounce in plain text: a bounce-like subject, the first enhanced status code and the first
/// address in angle brackets (or before a colon) of its text.
fn plain_text_bounce(message: &Message<'_>) -> Option<InboundReport> {
    let subject = message.subject().unwrap_or_default().to_ascii_lowercase();
    let bouncy = [
        "undeliver",
        "returned mail",
        "delivery status notification",
        "delivery failure",
        "failure notice",
        "delivery has failed",
        "could not be delivered",
    ];
    if !bouncy.iter().any(|p| subject.contains(p)) {
        return None;
    }
    let text = message.body_text(0)?;
    let end = (0..=text.len().min(MAX_TEXT_SCAN))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let text = &text[..end];
    let status = text
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
        .find_map(|w| EnhancedStatus::parse(w.trim_end_matches('.')))
        .filter(|s| s.class != 2);
    let address = text
        .split(|c: char| c.is_whitespace() || c == '<' || c == '>')
        .map(|w| w.trim_end_matches(':'))
        .find(|w| w.contains('@') && !w.contains('/') && w.len() < 255)
        .map(str::to_owned);
    let diagnostic = text
        .lines()
        .find(|l| {
            l.split_whitespace()
                .any(|w| EnhancedStatus::parse(w).is_some())
        })
        .map(bounded);
    Some(InboundReport::Dsn {
        recipients: vec![DsnRecipient {
            address,
            action: if status.is_some_and(|s| s.class == 4) {
                DsnAction::Delayed
            } else {
                DsnAction::Failed
            },
            status,
            diagnostic,
        }],
        original: original_of(message),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str) -> InboundReport {
        let path = format!("{}/tests/reports/{name}", env!("CARGO_MANIFEST_DIR"));
        let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        parse_report(&raw)
    }

    fn dsn(name: &str) -> (Vec<DsnRecipient>, OriginalMessage) {
        match golden(name) {
            InboundReport::Dsn {
                recipients,
                original,
            } => (recipients, original),
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn postfix_dsn() {
        let (rcpts, original) = dsn("postfix-dsn.eml");
        assert_eq!(rcpts.len(), 1);
        let r = &rcpts[0];
        assert_eq!(r.address.as_deref(), Some("gone@example.org"));
        assert_eq!(r.action, DsnAction::Failed);
        assert_eq!(r.status, Some(EnhancedStatus::new(5, 1, 1)));
        assert_eq!(
            r.diagnostic.as_deref(),
            Some(
                "550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown in virtual mailbox table"
            )
        );
        assert_eq!(
            original.message_id.as_deref(),
            Some("welcome-42@app.example.com")
        );
        assert_eq!(original.queue_id.as_deref(), Some("00000000000000a1"));
    }

    #[test]
    fn exchange_ndr_with_two_recipients() {
        let (rcpts, original) = dsn("exchange-ndr.eml");
        assert_eq!(rcpts.len(), 2);
        assert_eq!(rcpts[0].address.as_deref(), Some("left@contoso.test"));
        assert_eq!(rcpts[0].status, Some(EnhancedStatus::new(5, 1, 10)));
        assert!(
            rcpts[0]
                .diagnostic
                .as_deref()
                .is_some_and(|d| d.contains("RecipientNotFound")),
            "{rcpts:?}"
        );
        assert_eq!(rcpts[1].action, DsnAction::Delayed);
        assert_eq!(rcpts[1].status, Some(EnhancedStatus::new(4, 2, 2)));
        assert_eq!(
            original.message_id.as_deref(),
            Some("invoice-7@app.example.com")
        );
    }

    #[test]
    fn gmail_failure_notification() {
        let (rcpts, _) = dsn("gmail-dsn.eml");
        assert_eq!(rcpts[0].address.as_deref(), Some("nobody.here@gmail.test"));
        assert_eq!(rcpts[0].status, Some(EnhancedStatus::new(5, 1, 1)));
        assert!(
            rcpts[0]
                .diagnostic
                .as_deref()
                .is_some_and(|d| d.contains("does not exist")),
            "{rcpts:?}"
        );
    }

    #[test]
    fn plain_text_bounce_is_understood() {
        let (rcpts, _) = dsn("plain-text-bounce.eml");
        assert_eq!(rcpts[0].address.as_deref(), Some("old.user@example.net"));
        assert_eq!(rcpts[0].status, Some(EnhancedStatus::new(5, 2, 2)));
        assert_eq!(rcpts[0].action, DsnAction::Failed);
    }

    #[test]
    fn arf_complaint() {
        match golden("arf-complaint.eml") {
            InboundReport::Complaint {
                feedback_type,
                recipient,
                original,
            } => {
                assert_eq!(feedback_type, "abuse");
                assert_eq!(recipient.as_deref(), Some("reader@mailbox.test"));
                assert_eq!(
                    original.message_id.as_deref(),
                    Some("newsletter-9@app.example.com")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn auto_replies_are_recognised() {
        for name in ["vacation.eml", "out-of-office.eml"] {
            assert_eq!(golden(name), InboundReport::AutoReply, "{name}");
        }
    }

    #[test]
    fn other_mail_is_unrecognised() {
        assert_eq!(golden("human-reply.eml"), InboundReport::Unrecognised);
        assert_eq!(parse_report(b""), InboundReport::Unrecognised);
        assert_eq!(
            parse_report(b"\xff\xfe garbage"),
            InboundReport::Unrecognised
        );
    }
}
