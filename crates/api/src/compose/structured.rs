//! The structured shape: JSON fields rendered to MIME with `mail-builder`.

use std::collections::BTreeMap;

use base64::Engine as _;
use mail_builder::MessageBuilder;
use mail_builder::headers::HeaderType;
use mail_builder::headers::address::Address as MbAddress;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::message_id::MessageId as MbMessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mail_builder::mime::{BodyPart, MimePart};
use postrider_core::{Address, NewMessage, ReversePath, Source};
use serde::Deserialize;

use super::mailbox::{MailboxInput, MailboxList};
use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachmentInput {
    #[serde(default)]
    filename: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    content: String,
    #[serde(default)]
    content_id: Option<String>,
}

/// `POST /v1/messages` with fields; the relay renders the MIME message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StructuredRequest {
    #[serde(default)]
    from: Option<MailboxInput>,
    #[serde(default)]
    to: MailboxList,
    #[serde(default)]
    cc: MailboxList,
    #[serde(default)]
    bcc: MailboxList,
    #[serde(default)]
    reply_to: MailboxList,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    html: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    attachments: Vec<AttachmentInput>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    send_at: Option<String>,
    #[serde(default)]
    unsubscribe: Option<bool>,
}

/// Header names the relay sets itself; the `headers` object may not override them.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "received",
    "return-path",
];

fn check_header_name(name: &str, field: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 76
        && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    if !ok {
        if name.contains(['\r', '\n']) {
            return Err(ApiError::invalid(
                "header_injection",
                field,
                "line breaks are not allowed in header names",
            ));
        }
        return Err(ApiError::invalid(
            "invalid_header_name",
            field,
            "a header name is 1 to 76 printable ASCII characters without ':' or spaces",
        ));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(ApiError::invalid(
            "reserved_header",
            field,
            format!("{name} is set from the message fields and cannot be given in headers"),
        ));
    }
    Ok(())
}

/// `type/subtype` made of RFC 2045 token characters, lowercased.
fn check_content_type(ct: &str, field: &str) -> Result<String, ApiError> {
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match ct.split_once('/') {
        Some((t, s)) if token(t) && token(s) => Ok(ct.to_ascii_lowercase()),
        _ => {
            check_header_text(ct, field)?;
            Err(ApiError::invalid(
                "invalid_content_type",
                field,
                "content_type must look like type/subtype, e.g. image/png",
            ))
        }
    }
}

/// A Content-ID without angle brackets: printable ASCII, no spaces or brackets.
fn check_content_id(cid: &str, field: &str) -> Result<String, ApiError> {
    check_header_text(cid, field)?;
    let inner = cid.trim().trim_start_matches('<').trim_end_matches('>');
    let ok = !inner.is_empty()
        && inner.len() <= 250
        && inner
            .bytes()
            .all(|b| (33..=126).contains(&b) && b != b'<' && b != b'>');
    if !ok {
        return Err(ApiError::invalid(
            "invalid_content_id",
            field,
            "content_id is printable ASCII without spaces, e.g. logo@example.com",
        ));
    }
    Ok(inner.to_owned())
}

/// Decodes standard base64, tolerating line breaks and spaces (common in generated payloads).
fn decode_base64(content: &str, field: &str) -> Result<Vec<u8>, ApiError> {
    let compact: String = content
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| {
            ApiError::invalid(
                "invalid_attachment",
                field,
                format!("content is not valid base64: {e}"),
            )
        })
}

fn mb_list(boxes: &[Mailbox]) -> MbAddress<'static> {
    MbAddress::new_list(
        boxes
            .iter()
            .map(|m| MbAddress::new_address(m.name.clone(), m.address.to_string()))
            .collect(),
    )
}

fn check_list(list: &MailboxList, field: &str) -> Result<Vec<Mailbox>, ApiError> {
    list.0
        .iter()
        .enumerate()
        .map(|(i, m)| check_mailbox(m, &format!("{field}[{i}]")))
        .collect()
}

pub(super) fn compose_structured(
    req: StructuredRequest,
    ctx: &ComposeContext<'_>,
) -> Result<Composed, ApiError> {
    let from_input = req
        .from
        .as_ref()
        .ok_or_else(|| ApiError::invalid("missing_from", "from", "from is required"))?;
    let from = check_mailbox(from_input, "from")?;
    let total = req.to.0.len() + req.cc.0.len() + req.bcc.0.len();
    if total == 0 {
        return Err(ApiError::invalid(
            "missing_recipients",
            "to",
            "at least one of to, cc or bcc is required",
        ));
    }
    if total > ctx.settings.max_recipients {
        return Err(ApiError::invalid(
            "too_many_recipients",
            "to",
            format!(
                "{total} recipients given; the limit is {}",
                ctx.settings.max_recipients
            ),
        ));
    }
    let to = check_list(&req.to, "to")?;
    let cc = check_list(&req.cc, "cc")?;
    let bcc = check_list(&req.bcc, "bcc")?;
    let reply_to = check_list(&req.reply_to, "reply_to")?;
    if let Some(subject) = &req.subject {
        check_header_text(subject, "subject")?;
    }
    if req.headers.len() > MAX_EXTRA_HEADERS {
        return Err(ApiError::invalid(
            "too_many_headers",
            "headers",
            format!("at most {MAX_EXTRA_HEADERS} extra headers are allowed"),
        ));
    }
    for (name, value) in &req.headers {
        let field = format!("headers.{name}");
        check_header_name(name, &field)?;
        check_header_text(value, &field)?;
    }
    if req.text.is_none() && req.html.is_none() {
        return Err(ApiError::invalid(
            "missing_body",
            "text",
            "text or html (or both) is required",
        ));
    }
    if req.attachments.len() > MAX_ATTACHMENTS {
        return Err(ApiError::invalid(
            "too_many_attachments",
            "attachments",
            format!("at most {MAX_ATTACHMENTS} attachments are allowed"),
        ));
    }
    let mut inline_parts = Vec::new();
    let mut attachment_parts = Vec::new();
    let mut decoded_total =
        req.text.as_ref().map_or(0, String::len) + req.html.as_ref().map_or(0, String::len);
    for (i, a) in req.attachments.iter().enumerate() {
        let field = format!("attachments[{i}]");
        let content_type = match &a.content_type {
            Some(ct) => check_content_type(ct, &format!("{field}.content_type"))?,
            None => "application/octet-stream".to_owned(),
        };
        if let Some(name) = &a.filename {
            check_header_text(name, &format!("{field}.filename"))?;
            if name.trim().is_empty() {
                return Err(ApiError::invalid(
                    "invalid_attachment",
                    format!("{field}.filename"),
                    "filename is empty",
                ));
            }
        }
        let data = decode_base64(&a.content, &format!("{field}.content"))?;
        decoded_total += data.len();
        check_size(decoded_total, ctx)?;
        let ct = ContentType::new(content_type);
        match &a.content_id {
            Some(cid) => {
                let cid = check_content_id(cid, &format!("{field}.content_id"))?;
                let mut disposition = ContentType::new("inline");
                if let Some(name) = &a.filename {
                    disposition = disposition.attribute("filename", name.clone());
                }
                let part = MimePart::new(ct, BodyPart::Binary(data.into()))
                    .header("Content-Disposition", HeaderType::ContentType(disposition))
                    .cid(cid);
                inline_parts.push(part);
            }
            None => {
                let name = a.filename.clone().ok_or_else(|| {
                    ApiError::invalid(
                        "invalid_attachment",
                        format!("{field}.filename"),
                        "filename is required for attachments without content_id",
                    )
                })?;
                attachment_parts
                    .push(MimePart::new(ct, BodyPart::Binary(data.into())).attachment(name));
            }
        }
    }
    check_tags_and_metadata(&req.tags, &req.metadata)?;
    let not_before = check_send_at(req.send_at.as_deref(), ctx)?;

    // Envelope: from → sender; to + cc + bcc → recipients (deduplicated).
    let recipients: Vec<Address> = to
        .iter()
        .chain(&cc)
        .chain(&bcc)
        .map(|m| m.address.clone())
        .collect();
    let envelope = envelope(ReversePath::Address(from.address.clone()), recipients)?;

    // Headers. Bcc is deliberately never written.
    let message_id = new_message_id(ctx);
    let mut builder = MessageBuilder::new().from(mb_list(std::slice::from_ref(&from)));
    if to.is_empty() && cc.is_empty() {
        builder = builder.header(
            "To",
            MbAddress::new_group(Some("undisclosed-recipients"), Vec::new()),
        );
    }
    if !to.is_empty() {
        builder = builder.to(mb_list(&to));
    }
    if !cc.is_empty() {
        builder = builder.cc(mb_list(&cc));
    }
    if !reply_to.is_empty() {
        builder = builder.reply_to(mb_list(&reply_to));
    }
    if let Some(subject) = &req.subject {
        builder = builder.subject(Text::new(subject.clone()));
    }
    builder = builder
        .header("Date", Raw::new(ctx.now.to_rfc5322()))
        .message_id(MbMessageId::new(message_id.clone()));
    for (name, value) in &req.headers {
        builder = builder.header(name.clone(), Text::new(value.clone()));
    }
    builder = builder.body(mime_tree(
        req.text,
        req.html,
        inline_parts,
        attachment_parts,
    ));

    let mut body = received_header(ctx).into_bytes();
    builder.serialize(&mut body);
    check_size(body.len(), ctx)?;

    let mut message = NewMessage::new(envelope, body, Source::Http, ctx.now);
    message.not_before = not_before;
    message.tags = req.tags;
    message.metadata = req.metadata;
    Ok(Composed {
        message,
        message_id: Some(format!("<{message_id}>")),
        unsubscribe: req.unsubscribe,
    })
}

/// Line breaks of a text body as CRLF: bare LF and bare CR each become CRLF, so no encoding
/// path of the MIME writer can emit a lone CR or LF (SMTP smuggling needs exactly those).
fn crlf_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 32);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("\r\n");
            }
            '\n' => out.push_str("\r\n"),
            c => out.push(c),
        }
    }
    out
}

/// `mixed[ alternative[ text, related[ html, inline… ] ], attachment… ]`, collapsing levels that
/// would hold a single part. Inline parts without an html body become plain attachments.
fn mime_tree(
    text: Option<String>,
    html: Option<String>,
    inline: Vec<MimePart<'static>>,
    mut attachments: Vec<MimePart<'static>>,
) -> MimePart<'static> {
    let text = text.map(|t| MimePart::new("text/plain", BodyPart::Text(crlf_lines(&t).into())));
    let html = match html {
        Some(h) => {
            let part = MimePart::new("text/html", BodyPart::Text(crlf_lines(&h).into()));
            if inline.is_empty() {
                Some(part)
            } else {
                let mut parts = vec![part];
                parts.extend(inline);
                Some(MimePart::new("multipart/related", parts))
            }
        }
        None => {
            attachments.splice(0..0, inline);
            None
        }
    };
    let main = match (text, html) {
        (Some(t), Some(h)) => MimePart::new("multipart/alternative", vec![t, h]),
        (Some(p), None) | (None, Some(p)) => p,
        (None, None) => MimePart::new("text/plain", BodyPart::Text("".into())),
    };
    if attachments.is_empty() {
        main
    } else {
        let mut parts = vec![main];
        parts.extend(attachments);
        MimePart::new("multipart/mixed", parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_bodies_get_crlf() {
        assert_eq!(crlf_lines("a\nb\rc\r\nd\n\n"), "a\r\nb\r\nc\r\nd\r\n\r\n");
        assert_eq!(crlf_lines("ü"), "ü");
    }

    #[test]
    fn content_type_and_id_checks() {
        assert_eq!(check_content_type("Image/PNG", "f").unwrap(), "image/png");
        assert_eq!(
            check_content_type("text/plain; charset=x", "f")
                .unwrap_err()
                .body
                .code,
            "invalid_content_type"
        );
        assert_eq!(
            check_content_type("a/b\r\nX: y", "f")
                .unwrap_err()
                .body
                .code,
            "header_injection"
        );
        assert_eq!(check_content_id("<logo@x>", "f").unwrap(), "logo@x");
        assert_eq!(
            check_content_id("lo go", "f").unwrap_err().body.code,
            "invalid_content_id"
        );
    }

    #[test]
    fn header_name_checks() {
        assert_eq!(
            check_header_name("X-Ok", "h").map_err(|e| e.body.code),
            Ok(())
        );
        assert_eq!(
            check_header_name("bcc", "h").unwrap_err().body.code,
            "reserved_header"
        );
        assert_eq!(
            check_header_name("X Bad", "h").unwrap_err().body.code,
            "invalid_header_name"
        );
        assert_eq!(
            check_header_name("X-A\r\nBcc", "h").unwrap_err().body.code,
            "header_injection"
        );
    }
}
