//! Turns a submission (structured JSON or raw RFC 5322) into a [`NewMessage`]: validation,
//! MIME rendering and trace headers. Pure: time, client address and randomness are arguments.

mod mailbox;
mod raw;
mod structured;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use postrider_core::{Address, Envelope, NewMessage, RecipientRequest, ReversePath, Timestamp};

use crate::ApiSettings;
use crate::error::ApiError;
use crate::extract::decode;
use mailbox::MailboxInput;

/// At most this many tags per message.
pub const MAX_TAGS: usize = 10;
/// At most this many characters per tag.
pub const MAX_TAG_CHARS: usize = 64;
/// At most this many metadata entries per message.
pub const MAX_METADATA: usize = 20;
/// At most this many characters per metadata key.
pub const MAX_METADATA_KEY_CHARS: usize = 64;
/// At most this many characters per metadata value.
pub const MAX_METADATA_VALUE_CHARS: usize = 256;
/// At most this many extra headers in a structured message.
pub const MAX_EXTRA_HEADERS: usize = 50;
/// At most this many attachments in a structured message.
pub const MAX_ATTACHMENTS: usize = 100;
/// Longest header value (subject, extra header, display name) in octets: a header line's limit.
pub const MAX_HEADER_VALUE: usize = 998;
/// Longest line of a raw message, excluding CRLF (RFC 5322 §2.1.1).
pub const MAX_LINE: usize = 998;

/// Everything composing needs besides the request itself.
#[derive(Debug, Clone)]
pub(crate) struct ComposeContext<'a> {
    /// Limits and the host name for Message-ID and Received.
    pub(crate) settings: &'a ApiSettings,
    /// Arrival time.
    pub(crate) now: Timestamp,
    /// The submitting client, for the Received header.
    pub(crate) client_ip: Option<IpAddr>,
    /// Random bits for a unique Message-ID.
    pub(crate) unique: u64,
}

impl ComposeContext<'_> {
    /// The same context with fresh random bits, for the next message of a batch (each message
    /// needs its own `Message-ID`).
    pub(crate) fn for_next_message(&self) -> Self {
        ComposeContext {
            unique: rand::random(),
            ..self.clone()
        }
    }
}

/// A validated, rendered message ready for the store.
#[derive(Debug, Clone)]
pub(crate) struct Composed {
    /// What goes to the store.
    pub(crate) message: NewMessage,
    /// The `Message-ID` header value (with angle brackets), when the message has one.
    pub(crate) message_id: Option<String>,
    /// The request's `unsubscribe` field; `None` leaves it to the API key's default.
    pub(crate) unsubscribe: Option<bool>,
}

impl Composed {
    /// `scheduled` when a future `send_at` was given, otherwise `queued`.
    pub(crate) fn state(&self) -> &'static str {
        if self.message.not_before.is_some() {
            "scheduled"
        } else {
            "queued"
        }
    }
}

/// Validates and renders one submission; its shape is chosen by the presence of `raw`.
pub(crate) fn compose(
    value: serde_json::Value,
    ctx: &ComposeContext<'_>,
) -> Result<Composed, ApiError> {
    match &value {
        serde_json::Value::Object(map) if map.contains_key("raw") => {
            raw::compose_raw(decode(value)?, ctx)
        }
        serde_json::Value::Object(_) => structured::compose_structured(decode(value)?, ctx),
        _ => Err(ApiError::invalid(
            "invalid_field",
            "",
            "a message is a JSON object",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared validation
// ---------------------------------------------------------------------------------------------

/// Rejects CR/LF (header injection) and other control characters (except tab) in a header value.
fn check_header_text(value: &str, field: &str) -> Result<(), ApiError> {
    if value.contains(['\r', '\n']) {
        return Err(ApiError::invalid(
            "header_injection",
            field,
            "line breaks (CR or LF) are not allowed in header values",
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(ApiError::invalid(
            "invalid_header_value",
            field,
            "control characters are not allowed in header values",
        ));
    }
    if value.len() > MAX_HEADER_VALUE {
        return Err(ApiError::invalid(
            "invalid_header_value",
            field,
            format!("header values are limited to {MAX_HEADER_VALUE} octets"),
        ));
    }
    Ok(())
}

pub(super) struct Mailbox {
    pub(super) address: Address,
    pub(super) name: Option<String>,
}

fn check_mailbox(m: &MailboxInput, field: &str) -> Result<Mailbox, ApiError> {
    if m.email.contains(['\r', '\n']) {
        return Err(ApiError::invalid(
            "header_injection",
            field,
            "line breaks are not allowed in addresses",
        ));
    }
    let address = Address::parse(&m.email).map_err(|e| {
        ApiError::invalid(
            "invalid_address",
            field,
            format!("invalid address {:?}: {e}", m.email),
        )
    })?;
    if let Some(name) = &m.name {
        check_header_text(name, &format!("{field}.name"))?;
    }
    Ok(Mailbox {
        address,
        name: m.name.clone(),
    })
}

fn check_tags_and_metadata(
    tags: &[String],
    metadata: &BTreeMap<String, String>,
) -> Result<(), ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::invalid(
            "too_many_tags",
            "tags",
            format!("at most {MAX_TAGS} tags are allowed"),
        ));
    }
    for (i, t) in tags.iter().enumerate() {
        let n = t.chars().count();
        if n == 0 || n > MAX_TAG_CHARS || t.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "invalid_tag",
                format!("tags[{i}]"),
                format!("a tag is 1 to {MAX_TAG_CHARS} characters without control characters"),
            ));
        }
    }
    if metadata.len() > MAX_METADATA {
        return Err(ApiError::invalid(
            "too_many_metadata",
            "metadata",
            format!("at most {MAX_METADATA} metadata entries are allowed"),
        ));
    }
    for (k, v) in metadata {
        let kn = k.chars().count();
        if kn == 0 || kn > MAX_METADATA_KEY_CHARS || k.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "invalid_metadata",
                format!("metadata.{k}"),
                format!(
                    "metadata keys are 1 to {MAX_METADATA_KEY_CHARS} characters without control characters"
                ),
            ));
        }
        if v.chars().count() > MAX_METADATA_VALUE_CHARS || v.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "invalid_metadata",
                format!("metadata.{k}"),
                format!(
                    "metadata values are at most {MAX_METADATA_VALUE_CHARS} characters without control characters"
                ),
            ));
        }
    }
    Ok(())
}

/// Parses `send_at` and checks it lies in `(now, now + max_schedule_ahead]`.
fn check_send_at(
    send_at: Option<&str>,
    ctx: &ComposeContext<'_>,
) -> Result<Option<Timestamp>, ApiError> {
    let Some(text) = send_at else { return Ok(None) };
    let at = Timestamp::parse_rfc3339(text).ok_or_else(|| {
        ApiError::invalid(
            "invalid_send_at",
            "send_at",
            "send_at must be an RFC 3339 date-time such as 2030-01-02T03:04:05Z",
        )
    })?;
    if at <= ctx.now {
        return Err(ApiError::invalid(
            "send_at_in_past",
            "send_at",
            "send_at must be in the future",
        ));
    }
    let limit = ctx.now.saturating_add(ctx.settings.max_schedule_ahead);
    if at > limit {
        return Err(ApiError::invalid(
            "send_at_too_far",
            "send_at",
            format!(
                "send_at may be at most {} seconds ahead",
                ctx.settings.max_schedule_ahead.as_secs()
            ),
        ));
    }
    Ok(Some(at))
}

/// Deduplicates recipients (same address counted once) and builds the envelope.
fn envelope(sender: ReversePath, recipients: Vec<Address>) -> Result<Envelope, ApiError> {
    let mut seen = HashSet::with_capacity(recipients.len());
    let unique: Vec<RecipientRequest> = recipients
        .into_iter()
        .filter(|a| seen.insert(a.clone()))
        .map(RecipientRequest::new)
        .collect();
    Envelope::new(sender, unique).map_err(|e| {
        ApiError::invalid(
            "missing_recipients",
            "to",
            format!("invalid recipients: {e}"),
        )
    })
}

fn check_size(body_len: usize, ctx: &ComposeContext<'_>) -> Result<(), ApiError> {
    if body_len > ctx.settings.max_message_size {
        return Err(ApiError::too_large(
            "message_too_large",
            format!(
                "the message is {body_len} octets; the limit is {}",
                ctx.settings.max_message_size
            ),
        ));
    }
    Ok(())
}

/// `Received: from [ip] by host (Postrider) with HTTP; date` with CRLF.
fn received_header(ctx: &ComposeContext<'_>) -> String {
    let from = match ctx.client_ip {
        Some(IpAddr::V4(ip)) => format!("from [{ip}] "),
        Some(IpAddr::V6(ip)) => format!("from [IPv6:{ip}] "),
        None => String::new(),
    };
    format!(
        "Received: {from}by {} (Postrider) with HTTP;\r\n\t{}\r\n",
        ctx.settings.hostname,
        ctx.now.to_rfc5322()
    )
}

fn new_message_id(ctx: &ComposeContext<'_>) -> String {
    format!(
        "{:x}.{:016x}@{}",
        ctx.now.as_millis(),
        ctx.unique,
        ctx.settings.hostname
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_checks() {
        assert_eq!(
            check_header_text("a\r\nBcc: x@y.z", "subject")
                .unwrap_err()
                .body
                .code,
            "header_injection"
        );
        assert_eq!(
            check_header_text("a\nb", "subject").unwrap_err().body.code,
            "header_injection"
        );
        assert_eq!(
            check_header_text("a\u{7}b", "subject")
                .unwrap_err()
                .body
                .code,
            "invalid_header_value"
        );
        assert!(check_header_text("tab\tok ünïcode", "subject").is_ok());
    }
}
