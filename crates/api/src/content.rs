//! What a queued message says: `GET /v1/messages/{id}/raw` (the stored RFC 5322 octets),
//! `GET /v1/messages/{id}/content` (parsed with `mail-parser`) and
//! `GET /v1/messages/{id}/attachments/{n}` (one attachment's decoded octets).
//!
//! Bodies are kept while a message is pending (a captured one keeps its body until purged); a
//! sent or bounced message answers 410. Parsing is
//! refused (413) for a body over `max_message_size`, so an oversized record cannot make the
//! server spend unbounded time or memory. Downloads are served so that a browser never renders
//! them in the relay's origin: `Content-Disposition: attachment`, `nosniff` and a sandboxing
//! Content-Security-Policy.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mail_parser::{Address, Message, MessageParser, MessagePart, MimeHeaders};
use postrider_core::MessageId;
use serde::Serialize;

use crate::ApiState;
use crate::error::ApiError;
use crate::routes::{path_id, store_error};

/// Most headers listed by the content view; further ones are left out (`headers_truncated`).
pub(crate) const MAX_LISTED_HEADERS: usize = 500;
/// Most attachments listed by the content view.
pub(crate) const MAX_LISTED_ATTACHMENTS: usize = 500;
/// Content-Security-Policy of downloads: a browser that opens one anyway runs nothing in it.
const DOWNLOAD_CSP: &str = "sandbox; default-src 'none'";

/// One mailbox of an address header.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct MailboxView {
    /// Display name, when given.
    pub(crate) name: Option<String>,
    /// The address, when given (a group may list names only).
    pub(crate) email: Option<String>,
}

/// One header as written in the message (value unfolded, without the trailing line break).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct HeaderView {
    pub(crate) name: String,
    pub(crate) value: String,
}

/// One attachment of the content view; `index` is the `{n}` of its download URL.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct AttachmentView {
    pub(crate) index: usize,
    pub(crate) name: Option<String>,
    pub(crate) content_type: String,
    pub(crate) size: usize,
    pub(crate) content_id: Option<String>,
}

/// The parsed message as shown by `GET /v1/messages/{id}/content`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct ContentView {
    pub(crate) id: MessageId,
    pub(crate) subject: Option<String>,
    pub(crate) from: Vec<MailboxView>,
    pub(crate) to: Vec<MailboxView>,
    pub(crate) cc: Vec<MailboxView>,
    /// The `Date:` header as RFC 3339.
    pub(crate) date: Option<String>,
    /// The `Message-ID:` header without angle brackets.
    pub(crate) message_id: Option<String>,
    pub(crate) headers: Vec<HeaderView>,
    pub(crate) headers_truncated: bool,
    /// The first text body (an HTML-only message gets none).
    pub(crate) text: Option<String>,
    /// The first HTML body.
    pub(crate) html: Option<String>,
    pub(crate) attachments: Vec<AttachmentView>,
}

/// The stored body of `id`: 404 for an unknown message, 410 once the body is gone (the message
/// finished), 503 when the store fails.
pub(crate) fn stored_body(state: &ApiState, id: MessageId) -> Result<Vec<u8>, ApiError> {
    if let Some(body) = state
        .store
        .body(id)
        .map_err(|e| store_error(e, "read body"))?
    {
        return Ok(body);
    }
    crate::routes::load(state, id)?;
    Err(ApiError::new(
        StatusCode::GONE,
        "content_gone",
        format!(
            "the content of message {id} is no longer kept: bodies are deleted once a message is sent or bounced (captured messages keep theirs until purged)"
        ),
    ))
}

/// Parses `body`, refusing one over `max_bytes` (413) or one `mail-parser` cannot read (422).
pub(crate) fn parse_bounded(body: &[u8], max_bytes: usize) -> Result<Message<'_>, ApiError> {
    if body.len() > max_bytes {
        return Err(ApiError::too_large(
            "message_too_large",
            format!(
                "the message has {} octets; the relay parses at most {max_bytes}",
                body.len()
            ),
        ));
    }
    MessageParser::default().parse(body).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unparsable_message",
            "the stored message could not be parsed as RFC 5322",
        )
    })
}

fn mailboxes(address: Option<&Address<'_>>) -> Vec<MailboxView> {
    address.map_or_else(Vec::new, |a| {
        a.iter()
            .map(|addr| MailboxView {
                name: addr.name().map(str::to_owned),
                email: addr.address().map(str::to_owned),
            })
            .collect()
    })
}

/// A header value unfolded to one line and trimmed.
fn unfold(raw: &str) -> String {
    raw.split(['\r', '\n'])
        .filter(|s| !s.is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `type/subtype` of a part, `application/octet-stream` when it declares none.
pub(crate) fn part_type(part: &MessagePart<'_>) -> String {
    part.content_type().map_or_else(
        || "application/octet-stream".to_owned(),
        |ct| match ct.subtype() {
            Some(sub) => format!("{}/{}", ct.ctype(), sub).to_ascii_lowercase(),
            None => ct.ctype().to_ascii_lowercase(),
        },
    )
}

/// The content view of a parsed message.
pub(crate) fn content_view(id: MessageId, message: &Message<'_>) -> ContentView {
    let raw_headers: Vec<(&str, &str)> = message.headers_raw().collect();
    let headers = raw_headers
        .iter()
        .take(MAX_LISTED_HEADERS)
        .map(|(name, value)| HeaderView {
            name: (*name).to_owned(),
            value: unfold(value),
        })
        .collect();
    let attachments = message
        .attachments()
        .take(MAX_LISTED_ATTACHMENTS)
        .enumerate()
        .map(|(index, part)| AttachmentView {
            index,
            name: part.attachment_name().map(str::to_owned),
            content_type: part_type(part),
            size: part.contents().len(),
            content_id: part.content_id().map(str::to_owned),
        })
        .collect();
    ContentView {
        id,
        subject: message.subject().map(str::to_owned),
        from: mailboxes(message.from()),
        to: mailboxes(message.to()),
        cc: mailboxes(message.cc()),
        date: message.date().map(|d| d.to_rfc3339()),
        message_id: message.message_id().map(str::to_owned),
        headers,
        headers_truncated: raw_headers.len() > MAX_LISTED_HEADERS,
        text: message.body_text(0).map(|t| t.into_owned()),
        html: message.body_html(0).map(|t| t.into_owned()),
        attachments,
    }
}

/// A download of `bytes`: the given type (when it is a plain `type/subtype` token pair),
/// `attachment` disposition, no sniffing, sandboxed.
pub(crate) fn download(bytes: Vec<u8>, content_type: &str, filename: &str) -> Response {
    let content_type = if is_media_type(content_type) {
        content_type
    } else {
        "application/octet-stream"
    };
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if let Ok(value) = HeaderValue::from_str(&content_disposition(filename)) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOWNLOAD_CSP),
    );
    response
}

/// `type/subtype` made of RFC 7230 token characters only.
fn is_media_type(s: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.len() <= 127
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    s.split_once('/').is_some_and(|(a, b)| token(a) && token(b))
}

/// `attachment; filename="…"; filename*=UTF-8''…`: an ASCII fallback with unsafe characters
/// replaced, plus the exact name percent-encoded (RFC 6266).
fn content_disposition(filename: &str) -> String {
    let name: String = filename.chars().take(200).collect();
    let fallback: String = name
        .chars()
        .map(|c| {
            if (c.is_ascii_graphic() && c != '"' && c != '\\') || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

/// `GET /v1/messages/{id}/raw`: the message exactly as stored (`message/rfc822`).
pub(crate) async fn raw(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(path)?;
    let body = stored_body(&state, id)?;
    Ok(download(body, "message/rfc822", &format!("{id}.eml")))
}

/// `GET /v1/messages/{id}/content`: the parsed message.
pub(crate) async fn content(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ContentView>, ApiError> {
    let id = path_id(path)?;
    let body = stored_body(&state, id)?;
    let message = parse_bounded(&body, state.settings.max_message_size)?;
    Ok(Json(content_view(id, &message)))
}

/// Parses the `{id}` and `{n}` segments of an attachment URL.
fn path_id_and_index(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(MessageId, usize), ApiError> {
    let bad_id = || ApiError::invalid("invalid_id", "id", "a message id is 16 hexadecimal digits");
    let Path((id, n)) = path.map_err(|_| bad_id())?;
    let id = id.parse().map_err(|_| bad_id())?;
    let n = n.parse().map_err(|_| {
        ApiError::invalid(
            "invalid_index",
            "n",
            "an attachment index is a number from 0, as listed by /content",
        )
    })?;
    Ok((id, n))
}

/// The decoded octets, type and file name of attachment `n`, or 404.
pub(crate) fn attachment_of(
    message: &Message<'_>,
    id: MessageId,
    n: usize,
) -> Result<(Vec<u8>, String, String), ApiError> {
    let part = message
        .attachments()
        .take(MAX_LISTED_ATTACHMENTS)
        .nth(n)
        .ok_or_else(|| ApiError::not_found(format!("message {id} has no attachment {n}")))?;
    let name = part
        .attachment_name()
        .map_or_else(|| format!("{id}-attachment-{n}"), str::to_owned);
    Ok((part.contents().to_vec(), part_type(part), name))
}

/// `GET /v1/messages/{id}/attachments/{n}`: attachment `n` (from 0, in the order `/content`
/// lists them), decoded, as a download.
pub(crate) async fn attachment(
    State(state): State<ApiState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (id, n) = path_id_and_index(path)?;
    let body = stored_body(&state, id)?;
    let message = parse_bounded(&body, state.settings.max_message_size)?;
    let (bytes, content_type, name) = attachment_of(&message, id, n)?;
    Ok(download(bytes, &content_type, &name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_are_safe() {
        assert_eq!(
            content_disposition("a b.pdf"),
            "attachment; filename=\"a b.pdf\"; filename*=UTF-8''a%20b.pdf"
        );
        let tricky = content_disposition("x\"\r\nSet-Cookie: y.html");
        assert!(!tricky.contains('\r') && !tricky.contains('\n'));
        assert!(tricky.starts_with("attachment; filename=\"x___Set-Cookie: y.html\""));
        assert!(
            content_disposition("résumé.txt").contains("filename*=UTF-8''r%C3%A9sum%C3%A9.txt")
        );
    }

    #[test]
    fn media_types() {
        assert!(is_media_type("application/pdf"));
        assert!(is_media_type("image/svg+xml"));
        assert!(!is_media_type("text/html; charset=utf-8"));
        assert!(!is_media_type("text"));
        assert!(!is_media_type("a/b\r\nX: y"));
    }

    #[test]
    fn oversized_bodies_are_not_parsed() {
        let body = b"Subject: hi\r\n\r\nhello\r\n";
        assert!(parse_bounded(body, body.len()).is_ok());
        let e = parse_bounded(body, body.len() - 1).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn headers_are_unfolded() {
        assert_eq!(unfold(" a\r\n\tb \r\n"), "a b");
    }
}
