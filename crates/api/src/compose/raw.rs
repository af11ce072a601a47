//! The raw shape: a ready RFC 5322 message with an explicit envelope.

use std::collections::BTreeMap;

use postrider_core::{Address, NewMessage, ReversePath, Source};
use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRequest {
    #[serde(default)]
    envelope: Option<RawEnvelope>,
    raw: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    send_at: Option<String>,
    #[serde(default)]
    unsubscribe: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvelope {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Vec<String>,
}

/// Why a raw message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawError {
    /// A NUL octet.
    Nul,
    /// A line over [`MAX_LINE`] octets (1-based line number).
    LineTooLong(usize),
    /// The header section is malformed (1-based line number).
    BadHeader(usize),
    /// No header at all.
    NoHeaders,
}

/// What [`normalize_raw`] learned about the header section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawInfo {
    /// The message with CRLF line endings, ending in CRLF.
    pub(crate) bytes: Vec<u8>,
    /// The `Message-ID` value (trimmed), if present.
    pub(crate) message_id: Option<String>,
    /// Whether a `Date` header is present.
    pub(crate) has_date: bool,
}

/// Normalises line endings (bare LF or CR → CRLF), enforces line length and checks that the
/// header section is a sequence of `name: value` lines with folded continuations.
pub(crate) fn normalize_raw(raw: &[u8]) -> Result<RawInfo, RawError> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32 + 2);
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut i = 0;
    let mut start = 0;
    while i < raw.len() {
        match raw[i] {
            0 => return Err(RawError::Nul),
            b'\r' => {
                lines.push(&raw[start..i]);
                i += if raw.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                start = i;
            }
            b'\n' => {
                lines.push(&raw[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < raw.len() {
        lines.push(&raw[start..]);
    }
    let mut message_id = None;
    let mut has_date = false;
    let mut in_headers = true;
    let mut header_count = 0;
    for (n, line) in lines.iter().enumerate() {
        if line.len() > MAX_LINE {
            return Err(RawError::LineTooLong(n + 1));
        }
        if in_headers {
            if line.is_empty() {
                in_headers = false;
            } else if line[0] == b' ' || line[0] == b'\t' {
                if header_count == 0 {
                    return Err(RawError::BadHeader(n + 1));
                }
            } else {
                let colon = line
                    .iter()
                    .position(|&b| b == b':')
                    .ok_or(RawError::BadHeader(n + 1))?;
                let name = &line[..colon];
                if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
                    return Err(RawError::BadHeader(n + 1));
                }
                header_count += 1;
                if name.eq_ignore_ascii_case(b"message-id") {
                    let value = String::from_utf8_lossy(&line[colon + 1..])
                        .trim()
                        .to_owned();
                    message_id = (!value.is_empty()).then_some(value);
                } else if name.eq_ignore_ascii_case(b"date") {
                    has_date = true;
                }
            }
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    if header_count == 0 {
        return Err(RawError::NoHeaders);
    }
    if in_headers {
        // Headers only: end the header section so the message is well formed.
        out.extend_from_slice(b"\r\n");
    }
    Ok(RawInfo {
        bytes: out,
        message_id,
        has_date,
    })
}

pub(super) fn compose_raw(req: RawRequest, ctx: &ComposeContext<'_>) -> Result<Composed, ApiError> {
    let env = req.envelope.ok_or_else(|| {
        ApiError::invalid(
            "missing_envelope",
            "envelope",
            "a raw message needs envelope.from and envelope.to",
        )
    })?;
    let from_text = env.from.ok_or_else(|| {
        ApiError::invalid(
            "missing_from",
            "envelope.from",
            "envelope.from is required (\"\" for the null sender)",
        )
    })?;
    if from_text.contains(['\r', '\n']) {
        return Err(ApiError::invalid(
            "header_injection",
            "envelope.from",
            "line breaks are not allowed in addresses",
        ));
    }
    let sender = ReversePath::parse(from_text.trim()).map_err(|e| {
        ApiError::invalid(
            "invalid_address",
            "envelope.from",
            format!("invalid address {from_text:?}: {e}"),
        )
    })?;
    if env.to.is_empty() {
        return Err(ApiError::invalid(
            "missing_recipients",
            "envelope.to",
            "envelope.to needs at least one recipient",
        ));
    }
    if env.to.len() > ctx.settings.max_recipients {
        return Err(ApiError::invalid(
            "too_many_recipients",
            "envelope.to",
            format!(
                "{} recipients given; the limit is {}",
                env.to.len(),
                ctx.settings.max_recipients
            ),
        ));
    }
    let mut recipients = Vec::with_capacity(env.to.len());
    for (i, r) in env.to.iter().enumerate() {
        let field = format!("envelope.to[{i}]");
        if r.contains(['\r', '\n']) {
            return Err(ApiError::invalid(
                "header_injection",
                field,
                "line breaks are not allowed in addresses",
            ));
        }
        recipients.push(Address::parse(r.trim()).map_err(|e| {
            ApiError::invalid(
                "invalid_address",
                field,
                format!("invalid address {r:?}: {e}"),
            )
        })?);
    }
    check_tags_and_metadata(&req.tags, &req.metadata)?;
    let not_before = check_send_at(req.send_at.as_deref(), ctx)?;
    check_size(req.raw.len(), ctx)?;
    let info = normalize_raw(req.raw.as_bytes()).map_err(|e| match e {
        RawError::Nul => ApiError::invalid(
            "invalid_raw_message",
            "raw",
            "the message contains a NUL octet",
        ),
        RawError::LineTooLong(n) => ApiError::invalid(
            "line_too_long",
            "raw",
            format!(
                "line {n} is longer than {MAX_LINE} octets; wrap it or use a transfer encoding"
            ),
        ),
        RawError::BadHeader(n) => ApiError::invalid(
            "invalid_raw_message",
            "raw",
            format!("line {n} of the header section is not a header field"),
        ),
        RawError::NoHeaders => ApiError::invalid(
            "invalid_raw_message",
            "raw",
            "the message has no header section",
        ),
    })?;
    let envelope = envelope(sender, recipients).map_err(|e| e.under("envelope"))?;

    let mut body = received_header(ctx).into_bytes();
    let message_id = match info.message_id {
        Some(id) => Some(id),
        None => {
            let id = format!("<{}>", new_message_id(ctx));
            body.extend_from_slice(format!("Message-ID: {id}\r\n").as_bytes());
            Some(id)
        }
    };
    if !info.has_date {
        body.extend_from_slice(format!("Date: {}\r\n", ctx.now.to_rfc5322()).as_bytes());
    }
    body.extend_from_slice(&info.bytes);
    check_size(body.len(), ctx)?;

    let mut message = NewMessage::new(envelope, body, Source::Http, ctx.now);
    message.not_before = not_before;
    message.tags = req.tags;
    message.metadata = req.metadata;
    Ok(Composed {
        message,
        message_id,
        unsubscribe: req.unsubscribe,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_line_endings_are_normalised() {
        let info = normalize_raw(b"Subject: a\nX-B: b\r\n c\r\rbody\nline").unwrap();
        assert_eq!(
            info.bytes,
            b"Subject: a\r\nX-B: b\r\n c\r\n\r\nbody\r\nline\r\n"
        );
        assert_eq!(info.message_id, None);
        assert!(!info.has_date);
    }

    #[test]
    fn raw_headers_are_found_case_insensitively() {
        let info = normalize_raw(b"message-id: <x@y>\r\nDATE: today\r\n\r\nhi\r\n").unwrap();
        assert_eq!(info.message_id.as_deref(), Some("<x@y>"));
        assert!(info.has_date);
        // Headers only gets its header section terminated.
        let info = normalize_raw(b"Subject: x").unwrap();
        assert_eq!(info.bytes, b"Subject: x\r\n\r\n");
    }

    #[test]
    fn raw_rejections() {
        assert_eq!(
            normalize_raw(b"no colon here\r\n\r\nbody"),
            Err(RawError::BadHeader(1))
        );
        assert_eq!(
            normalize_raw(b" folded first\r\n"),
            Err(RawError::BadHeader(1))
        );
        assert_eq!(
            normalize_raw(b"Bad Name: x\r\n"),
            Err(RawError::BadHeader(1))
        );
        assert_eq!(normalize_raw(b"\r\nbody"), Err(RawError::NoHeaders));
        assert_eq!(normalize_raw(b"A: b\0\r\n"), Err(RawError::Nul));
        let long = format!("A: b\r\n\r\n{}\r\n", "x".repeat(999));
        assert_eq!(
            normalize_raw(long.as_bytes()),
            Err(RawError::LineTooLong(3))
        );
    }
}
