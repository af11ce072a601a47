//! Postmark's sending API: `POST /email`, `POST /email/batch`, and the template endpoints
//! answered with a clear refusal.
//!
//! Requests use Postmark's field names (`From`, `To`, `HtmlBody`, `Headers: [{Name, Value}]`,
//! …); answers are `{"To", "SubmittedAt", "MessageID", "ErrorCode": 0, "Message": "OK"}` or
//! `{"ErrorCode": N, "Message": "..."}` with Postmark's codes: 10 bad or missing token (401),
//! 300 invalid email request (422), 402 invalid JSON, 406 inactive (suppressed) recipients,
//! 410 too many batch messages, 1101 templates.

use std::collections::BTreeMap;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use serde::{Deserialize, Serialize};

use super::{NativeRequest, compose_foreign, describe, put, suppressed_recipients, unique_map};
use crate::ApiState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::{ClientAddr, RawJsonBody};
use crate::routes::{Accepted, context, enqueue_all, idempotency_key, key_defaults, submit};

/// Postmark's error code for a bad or missing server token.
const BAD_TOKEN: u16 = 10;
/// Postmark's error code for an unavailable service.
const MAINTENANCE: u16 = 100;
/// Postmark's error code for a request that cannot be sent as given.
const INVALID_EMAIL_REQUEST: u16 = 300;
/// Postmark's error code for a body that is not JSON.
const INVALID_JSON: u16 = 402;
/// Postmark's error code for a token that may not send.
const NOT_ALLOWED_TO_SEND: u16 = 405;
/// Postmark's error code for recipients on the suppression list.
const INACTIVE_RECIPIENT: u16 = 406;
/// Postmark's error code for a batch over the limit.
const TOO_MANY_BATCH_MESSAGES: u16 = 410;
/// Postmark's error code for an unknown template (Postrider has none).
const TEMPLATE_NOT_FOUND: u16 = 1101;

/// Native field names and the Postmark names clients send, for error messages.
const FIELD_NAMES: &[(&str, &str)] = &[
    ("from", "From"),
    ("to", "To"),
    ("cc", "Cc"),
    ("bcc", "Bcc"),
    ("reply_to", "ReplyTo"),
    ("subject", "Subject"),
    ("text", "TextBody"),
    ("html", "HtmlBody"),
    ("headers", "Headers"),
    ("attachments", "Attachments"),
    ("filename", "Name"),
    ("content", "Content"),
    ("content_type", "ContentType"),
    ("content_id", "ContentID"),
    ("tags", "Tag"),
    ("metadata", "Metadata"),
];

/// The Postmark routes that need the `send` scope.
pub(super) fn send_routes() -> axum::Router<ApiState> {
    let templates: fn() -> MethodRouter<ApiState> = || post(templates_unsupported);
    axum::Router::new()
        .route("/email", post(send_email))
        .route("/email/batch", post(send_batch))
        // Postmark's SDKs differ on the trailing slash of the template endpoints.
        .route("/email/withTemplate", templates())
        .route("/email/withTemplate/", templates())
        .route("/email/batchWithTemplates", templates())
        .route("/email/batchWithTemplates/", templates())
}

/// One `{"Name", "Value"}` entry of `Headers`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct HeaderInput {
    name: String,
    value: String,
}

/// One entry of `Attachments`: base64 `Content`; a `ContentID` makes it inline.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct AttachmentInput {
    name: Option<String>,
    content: String,
    content_type: Option<String>,
    #[serde(rename = "ContentID", alias = "ContentId")]
    content_id: Option<String>,
}

/// A message as Postmark clients send it. `TrackOpens`, `TrackLinks` and `MessageStream` are
/// accepted and ignored (Postrider neither tracks nor separates streams).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct EmailInput {
    from: Option<String>,
    to: Option<String>,
    cc: Option<String>,
    bcc: Option<String>,
    reply_to: Option<String>,
    subject: Option<String>,
    html_body: Option<String>,
    text_body: Option<String>,
    headers: Option<Vec<HeaderInput>>,
    tag: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
    attachments: Option<Vec<AttachmentInput>>,
    #[serde(rename = "MessageStream")]
    _message_stream: Option<String>,
    #[serde(rename = "TrackOpens")]
    _track_opens: Option<bool>,
    #[serde(rename = "TrackLinks")]
    _track_links: Option<String>,
}

/// Splits a Postmark address list (`"Ann <a@x.test>, \"Lee, Bo\" <b@x.test>"`) at the commas
/// that are outside quotes and angle brackets; blank items are dropped.
fn split_addresses(list: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let (mut quoted, mut angled, mut escaped) = (false, false, false);
    for c in list.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' if !angled => quoted = !quoted,
            '<' if !quoted => angled = true,
            '>' if !quoted => angled = false,
            ',' if !quoted && !angled => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A Postmark `ContentID` without the `cid:` prefix some clients add.
fn content_id(cid: &str) -> String {
    let trimmed = cid.trim();
    match trimmed.get(..4) {
        Some(prefix) if prefix.eq_ignore_ascii_case("cid:") => trimmed[4..].to_owned(),
        _ => trimmed.to_owned(),
    }
}

/// Translates a Postmark message into the structured request of `POST /v1/messages`.
fn to_native(input: EmailInput) -> Result<NativeRequest, ApiError> {
    let mut native = serde_json::Map::new();
    let list = |v: Option<String>| v.map(|s| split_addresses(&s));
    put(&mut native, "from", input.from);
    put(&mut native, "to", list(input.to));
    put(&mut native, "cc", list(input.cc));
    put(&mut native, "bcc", list(input.bcc));
    put(&mut native, "reply_to", list(input.reply_to));
    put(&mut native, "subject", input.subject);
    put(
        &mut native,
        "text",
        input.text_body.filter(|t| !t.is_empty()),
    );
    put(
        &mut native,
        "html",
        input.html_body.filter(|h| !h.is_empty()),
    );
    if let Some(headers) = input.headers {
        let pairs = headers.into_iter().map(|h| (h.name, h.value));
        let headers = unique_map(pairs, "Headers")?;
        put(&mut native, "headers", serde_json::to_value(headers).ok());
    }
    put(
        &mut native,
        "tags",
        input.tag.filter(|t| !t.is_empty()).map(|t| vec![t]),
    );
    put(
        &mut native,
        "metadata",
        serde_json::to_value(input.metadata).ok(),
    );
    if let Some(attachments) = input.attachments {
        let attachments: Vec<serde_json::Value> = attachments
            .into_iter()
            .map(|a| {
                let mut item = serde_json::Map::new();
                put(&mut item, "filename", a.name);
                put(&mut item, "content", Some(a.content));
                put(&mut item, "content_type", a.content_type);
                put(
                    &mut item,
                    "content_id",
                    a.content_id.as_deref().map(content_id),
                );
                serde_json::Value::Object(item)
            })
            .collect();
        put(&mut native, "attachments", Some(attachments));
    }
    Ok(native)
}

/// An error answer in Postmark's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PostmarkError {
    status: StatusCode,
    body: ErrorBody,
    retry_after: Option<u64>,
}

/// `{"ErrorCode", "Message"}`, also one item of a batch answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    error_code: u16,
    message: String,
}

impl PostmarkError {
    fn new(status: StatusCode, error_code: u16, message: impl Into<String>) -> Self {
        PostmarkError {
            status,
            body: ErrorBody {
                error_code,
                message: message.into(),
            },
            retry_after: None,
        }
    }

    /// Postmark's nearest equivalent of a native error.
    fn from_native(e: &ApiError) -> Self {
        let message = describe(e, FIELD_NAMES);
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        let mut out = match (e.status, e.body.code) {
            (StatusCode::UNAUTHORIZED, _) | (StatusCode::FORBIDDEN, "forbidden") => {
                PostmarkError::new(StatusCode::UNAUTHORIZED, BAD_TOKEN, message)
            }
            (StatusCode::FORBIDDEN, _) => {
                PostmarkError::new(StatusCode::FORBIDDEN, NOT_ALLOWED_TO_SEND, message)
            }
            (_, "invalid_json" | "invalid_body") => {
                PostmarkError::new(unprocessable, INVALID_JSON, message)
            }
            (StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE, _) => {
                PostmarkError::new(unprocessable, INVALID_EMAIL_REQUEST, message)
            }
            (StatusCode::SERVICE_UNAVAILABLE, _) => {
                PostmarkError::new(StatusCode::SERVICE_UNAVAILABLE, MAINTENANCE, message)
            }
            (StatusCode::TOO_MANY_REQUESTS, _) => {
                PostmarkError::new(StatusCode::TOO_MANY_REQUESTS, 429, message)
            }
            (status, _) => PostmarkError::new(status, INVALID_EMAIL_REQUEST, message),
        };
        out.retry_after = e.retry_after;
        out
    }

    /// 422 / 406 for a message whose every recipient is suppressed.
    fn inactive(addresses: &[String]) -> Self {
        PostmarkError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            INACTIVE_RECIPIENT,
            format!(
                "Every recipient is on the suppression list, so nothing will be sent. \
                 Found inactive addresses: {}. Inactive recipients are addresses that \
                 hard-bounced or were suppressed by an operator.",
                addresses.join(", ")
            ),
        )
    }
}

impl IntoResponse for PostmarkError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Renders a refusal of the authentication layer in Postmark's shape.
pub(super) fn reject(e: ApiError, _key_presented: bool) -> Response {
    PostmarkError::from_native(&e).into_response()
}

/// `{"To", "SubmittedAt", "MessageID", "ErrorCode": 0, "Message": "OK"}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct SentBody {
    to: String,
    submitted_at: String,
    #[serde(rename = "MessageID")]
    message_id: String,
    error_code: u16,
    message: &'static str,
}

impl SentBody {
    fn new(accepted: &Accepted, to: String) -> Self {
        SentBody {
            to,
            submitted_at: crate::now().to_rfc3339(),
            message_id: accepted.id.to_string(),
            error_code: 0,
            message: "OK",
        }
    }
}

/// The `To` field of a Postmark message as the client wrote it (Postmark echoes it back).
fn echo_to(value: &serde_json::Value) -> String {
    value
        .get("To")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The answer to one accepted message: OK, or 406 when every recipient is suppressed (the
/// message is recorded like any other: its recipients end in state `suppressed` with events).
fn outcome(
    accepted: &Accepted,
    to: String,
    suppressed: &[String],
    recipients: usize,
) -> Result<SentBody, PostmarkError> {
    if recipients > 0 && suppressed.len() == recipients {
        return Err(PostmarkError::inactive(suppressed));
    }
    Ok(SentBody::new(accepted, to))
}

/// `POST /email`: one message; honours `Idempotency-Key` like `POST /v1/messages`.
async fn send_email(
    State(state): State<ApiState>,
    client: ClientAddr,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Result<RawJsonBody, ApiError>,
) -> Result<Json<SentBody>, PostmarkError> {
    let native = |e: ApiError| PostmarkError::from_native(&e);
    let RawJsonBody { value, bytes } = body.map_err(native)?;
    let key = idempotency_key(&headers).map_err(native)?;
    let to = echo_to(&value);
    let composed = compose_foreign(value, &context(&state, client), to_native).map_err(native)?;
    let suppressed = suppressed_recipients(&state, &composed).map_err(native)?;
    let recipients = composed.message.envelope.recipients().len();
    let submitted = submit(&state, principal, key, &bytes, composed)
        .await
        .map_err(native)?;
    outcome(&submitted.accepted, to, &suppressed, recipients).map(Json)
}

/// `POST /email/batch`: a JSON array of messages, each validated and queued on its own; the
/// answer lists one result per message, in order.
async fn send_batch(
    State(state): State<ApiState>,
    client: ClientAddr,
    principal: Option<Extension<Principal>>,
    body: Result<RawJsonBody, ApiError>,
) -> Result<Json<Vec<serde_json::Value>>, PostmarkError> {
    let RawJsonBody { value, .. } = body.map_err(|e| PostmarkError::from_native(&e))?;
    let serde_json::Value::Array(items) = value else {
        return Err(PostmarkError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            INVALID_EMAIL_REQUEST,
            "a batch is a JSON array of messages",
        ));
    };
    if items.len() > state.settings.max_batch {
        return Err(PostmarkError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            TOO_MANY_BATCH_MESSAGES,
            format!(
                "{} messages given; the limit is {}",
                items.len(),
                state.settings.max_batch
            ),
        ));
    }
    let ctx = context(&state, client);
    let mut echoes = Vec::with_capacity(items.len());
    let mut composed = Vec::with_capacity(items.len());
    for item in items {
        let to = echo_to(&item);
        let message = compose_foreign(item, &ctx.for_next_message(), to_native).and_then(|c| {
            let suppressed = suppressed_recipients(&state, &c)?;
            let recipients = c.message.envelope.recipients().len();
            echoes.push((to, suppressed, recipients));
            Ok(c)
        });
        if message.is_err() {
            echoes.push((String::new(), Vec::new(), 0));
        }
        composed.push(message);
    }
    let results = enqueue_all(&state, composed, key_defaults(&state, principal.as_deref()))
        .await
        .into_iter()
        .zip(echoes)
        .map(|(result, (to, suppressed, recipients))| {
            let answer = result
                .map_err(|e| PostmarkError::from_native(&e))
                .and_then(|accepted| outcome(&accepted, to, &suppressed, recipients));
            match answer {
                Ok(sent) => serde_json::to_value(sent),
                Err(e) => serde_json::to_value(e.body),
            }
            .unwrap_or_default()
        })
        .collect();
    Ok(Json(results))
}

/// `POST /email/withTemplate` and `/email/batchWithTemplates`: Postrider keeps no templates.
async fn templates_unsupported() -> PostmarkError {
    PostmarkError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        TEMPLATE_NOT_FOUND,
        "Postrider does not store templates; render the message in the application and send \
         it with POST /email or POST /email/batch",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::decode;

    #[test]
    fn address_lists_split_outside_quotes_and_brackets() {
        assert_eq!(
            split_addresses(r#"Ann <ann@x.test>, "Lee, Bo" <bo@x.test>,c@x.test, "#),
            vec!["Ann <ann@x.test>", r#""Lee, Bo" <bo@x.test>"#, "c@x.test"]
        );
        assert_eq!(
            split_addresses(r#""A \"q,\" B" <a@x.test>,b@x.test"#),
            vec![r#""A \"q,\" B" <a@x.test>"#, "b@x.test"]
        );
        assert!(split_addresses(" , ").is_empty());
    }

    #[test]
    fn content_ids_lose_the_cid_prefix() {
        assert_eq!(content_id("cid:logo@x"), "logo@x");
        assert_eq!(content_id("CID:logo"), "logo");
        assert_eq!(content_id("logo"), "logo");
    }

    #[test]
    fn postmark_fields_map_to_the_native_request() {
        let input: EmailInput = serde_json::from_value(serde_json::json!({
            "From": "App <app@x.test>",
            "To": "Ann <ann@y.test>, bob@y.test",
            "Cc": null,
            "Bcc": "hidden@y.test",
            "ReplyTo": "help@x.test",
            "Subject": "Hi",
            "HtmlBody": "<p>Hi</p>",
            "TextBody": "Hi",
            "Headers": [{"Name": "X-Order", "Value": "12"}],
            "Tag": "welcome",
            "Metadata": {"user": "7"},
            "Attachments": [{"Name": "a.txt", "Content": "aGk=", "ContentType": "text/plain",
                             "ContentID": "cid:a1"}],
            "MessageStream": "outbound",
            "TrackOpens": true,
            "TrackLinks": "None"
        }))
        .unwrap();
        assert_eq!(
            serde_json::Value::Object(to_native(input).unwrap()),
            serde_json::json!({
                "from": "App <app@x.test>",
                "to": ["Ann <ann@y.test>", "bob@y.test"],
                "bcc": ["hidden@y.test"],
                "reply_to": ["help@x.test"],
                "subject": "Hi",
                "text": "Hi",
                "html": "<p>Hi</p>",
                "headers": {"X-Order": "12"},
                "tags": ["welcome"],
                "metadata": {"user": "7"},
                "attachments": [{"filename": "a.txt", "content": "aGk=",
                                 "content_type": "text/plain", "content_id": "a1"}]
            })
        );
    }

    #[test]
    fn native_errors_get_postmark_codes() {
        let e = ApiError::invalid("invalid_address", "to[1]", "invalid address \"x\"");
        let p = PostmarkError::from_native(&e);
        assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(p.body.error_code, INVALID_EMAIL_REQUEST);
        assert!(p.body.message.contains("field To[1]"), "{}", p.body.message);
        let p = PostmarkError::from_native(&ApiError::unauthorized("no"));
        assert_eq!(
            (p.status, p.body.error_code),
            (StatusCode::UNAUTHORIZED, BAD_TOKEN)
        );
        let p = PostmarkError::inactive(&["a@x.test".to_owned()]);
        assert_eq!(p.body.error_code, INACTIVE_RECIPIENT);
        assert!(
            p.body
                .message
                .contains("Found inactive addresses: a@x.test. Inactive")
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = decode::<EmailInput>(serde_json::json!({"From": "a@x.test", "Tpo": "b"}));
        assert!(e.is_err());
    }
}
