//! Resend's sending API: `POST /emails`, `POST /emails/batch` and `GET /emails/{id}`.
//!
//! Requests use Resend's field names (`from`, `to`, `reply_to`, `html`, `text`, `headers`,
//! `attachments: [{filename, content, content_type, content_id}]`, `tags: [{name, value}]`,
//! `scheduled_at`); answers are `{"id"}`, `{"data": [{"id"}…]}` or errors
//! `{"statusCode", "name", "message"}` with Resend's names (`validation_error`,
//! `missing_required_field`, `missing_api_key`, `invalid_api_key`, …).

use axum::Extension;
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use postrider_core::{MessageState, QueuedMessage, RecipientState, Timestamp};
use serde::{Deserialize, Serialize};

use super::{NativeRequest, compose_foreign, describe, put, unique_map};
use crate::ApiState;
use crate::auth::Principal;
use crate::compose::Composed;
use crate::error::ApiError;
use crate::extract::{ClientAddr, RawJsonBody};
use crate::routes::{context, enqueue_all, idempotency_key, key_defaults, load, path_id, submit};

/// Header choosing how a batch with invalid items is handled (`strict` or `permissive`).
const BATCH_VALIDATION: &str = "x-batch-validation";

/// Native field names and the Resend names clients send, for error messages.
const FIELD_NAMES: &[(&str, &str)] = &[("metadata", "tags"), ("send_at", "scheduled_at")];

/// The Resend routes that need the `send` scope.
pub(super) fn send_routes() -> axum::Router<ApiState> {
    axum::Router::new()
        .route("/emails", post(send_email))
        .route("/emails/batch", post(send_batch))
}

/// The Resend routes that need the `read` scope.
pub(super) fn read_routes() -> axum::Router<ApiState> {
    axum::Router::new().route("/emails/{id}", get(get_email))
}

/// An address or a list of them.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum Addresses {
    One(String),
    Many(Vec<String>),
}

/// Attachment bytes: base64 text, or the array of byte values the SDKs send for raw bytes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Base64(String),
    Bytes(Vec<u8>),
}

/// One entry of `attachments`. `path` (a URL to fetch) is refused: the relay fetches nothing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachmentInput {
    filename: Option<String>,
    content: Option<Content>,
    path: Option<String>,
    content_type: Option<String>,
    content_id: Option<String>,
    inline_content_id: Option<String>,
}

/// One `{"name", "value"}` entry of `tags`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TagInput {
    name: String,
    value: String,
}

/// A message as Resend clients send it. `template` is recognised only to refuse it clearly.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailInput {
    from: Option<String>,
    to: Option<Addresses>,
    cc: Option<Addresses>,
    bcc: Option<Addresses>,
    reply_to: Option<Addresses>,
    subject: Option<String>,
    html: Option<String>,
    text: Option<String>,
    headers: Option<std::collections::BTreeMap<String, String>>,
    attachments: Option<Vec<AttachmentInput>>,
    tags: Option<Vec<TagInput>>,
    scheduled_at: Option<String>,
    template: Option<serde_json::Value>,
}

/// One attachment in the native shape.
fn attachment(a: AttachmentInput, index: usize) -> Result<serde_json::Value, ApiError> {
    let field = format!("attachments[{index}]");
    if a.path.is_some() {
        return Err(ApiError::invalid(
            "remote_attachment",
            format!("{field}.path"),
            "attachments by path (URL) are not supported: the relay fetches nothing; send the \
             file's bytes in content",
        ));
    }
    let content = match a.content {
        Some(Content::Base64(text)) => text,
        Some(Content::Bytes(bytes)) => base64::engine::general_purpose::STANDARD.encode(bytes),
        None => {
            return Err(ApiError::invalid(
                "missing_required_field",
                format!("{field}.content"),
                "content is required",
            ));
        }
    };
    let mut item = serde_json::Map::new();
    put(&mut item, "filename", a.filename);
    put(&mut item, "content", Some(content));
    put(&mut item, "content_type", a.content_type);
    put(
        &mut item,
        "content_id",
        a.content_id.or(a.inline_content_id),
    );
    Ok(serde_json::Value::Object(item))
}

/// Translates a Resend message into the structured request of `POST /v1/messages`. Tags
/// (`name`/`value` pairs) become metadata; `scheduled_at` becomes `send_at`.
fn to_native(input: EmailInput) -> Result<NativeRequest, ApiError> {
    if input.template.is_some() {
        return Err(ApiError::invalid(
            "validation_error",
            "template",
            "templates are not supported: render the message and send html and/or text",
        ));
    }
    let mut native = serde_json::Map::new();
    let list = |v: Option<Addresses>| v.and_then(|a| serde_json::to_value(a).ok());
    put(&mut native, "from", input.from);
    put(&mut native, "to", list(input.to));
    put(&mut native, "cc", list(input.cc));
    put(&mut native, "bcc", list(input.bcc));
    put(&mut native, "reply_to", list(input.reply_to));
    put(&mut native, "subject", input.subject);
    put(&mut native, "text", input.text);
    put(&mut native, "html", input.html);
    put(
        &mut native,
        "headers",
        serde_json::to_value(input.headers).ok(),
    );
    put(&mut native, "send_at", input.scheduled_at);
    if let Some(tags) = input.tags {
        let metadata = unique_map(tags.into_iter().map(|t| (t.name, t.value)), "tags")?;
        put(&mut native, "metadata", serde_json::to_value(metadata).ok());
    }
    if let Some(attachments) = input.attachments {
        let attachments = attachments
            .into_iter()
            .enumerate()
            .map(|(i, a)| attachment(a, i))
            .collect::<Result<Vec<_>, _>>()?;
        put(&mut native, "attachments", Some(attachments));
    }
    Ok(native)
}

/// An error answer in Resend's shape: `{"statusCode", "name", "message"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
struct ResendError {
    status_code: u16,
    name: &'static str,
    message: String,
    #[serde(skip)]
    retry_after: Option<u64>,
}

impl ResendError {
    fn new(status: StatusCode, name: &'static str, message: impl Into<String>) -> Self {
        ResendError {
            status_code: status.as_u16(),
            name,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Resend's nearest equivalent of a native error; `key_presented` tells a missing key from
    /// a wrong one.
    fn from_native(e: &ApiError, key_presented: bool) -> Self {
        let message = describe(e, FIELD_NAMES);
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        let mut out = match (e.status, e.body.code) {
            (StatusCode::UNAUTHORIZED, _) if !key_presented => {
                ResendError::new(StatusCode::UNAUTHORIZED, "missing_api_key", message)
            }
            (StatusCode::UNAUTHORIZED, _) | (StatusCode::FORBIDDEN, "forbidden") => {
                ResendError::new(StatusCode::FORBIDDEN, "invalid_api_key", message)
            }
            (StatusCode::FORBIDDEN, _) => {
                ResendError::new(StatusCode::UNAUTHORIZED, "restricted_api_key", message)
            }
            (_, "invalid_idempotency_key") => {
                ResendError::new(StatusCode::BAD_REQUEST, "invalid_idempotency_key", message)
            }
            (StatusCode::CONFLICT, "idempotency_key_reused") => {
                ResendError::new(StatusCode::CONFLICT, "invalid_idempotent_request", message)
            }
            (
                _,
                "missing_from" | "missing_recipients" | "missing_body" | "missing_required_field",
            ) => ResendError::new(unprocessable, "missing_required_field", message),
            (StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE, _) => {
                ResendError::new(unprocessable, "validation_error", message)
            }
            (StatusCode::NOT_FOUND, _) => {
                ResendError::new(StatusCode::NOT_FOUND, "not_found", message)
            }
            (StatusCode::TOO_MANY_REQUESTS, _) => ResendError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                message,
            ),
            (status, _) => ResendError::new(status, "application_error", message),
        };
        out.retry_after = e.retry_after;
        out
    }
}

impl IntoResponse for ResendError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status_code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after;
        let mut response = (status, Json(self)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Renders a refusal of the authentication layer in Resend's shape.
pub(super) fn reject(e: ApiError, key_presented: bool) -> Response {
    ResendError::from_native(&e, key_presented).into_response()
}

/// Native errors of a handler, where a key was necessarily accepted.
fn native(e: ApiError) -> ResendError {
    ResendError::from_native(&e, true)
}

/// `{"id"}` of a queued message.
#[derive(Debug, Serialize)]
struct Sent {
    id: String,
}

/// `POST /emails`: one message; honours `Idempotency-Key` like `POST /v1/messages`.
async fn send_email(
    State(state): State<ApiState>,
    client: ClientAddr,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Result<RawJsonBody, ApiError>,
) -> Result<Json<Sent>, ResendError> {
    let RawJsonBody { value, bytes } = body.map_err(native)?;
    let key = idempotency_key(&headers).map_err(native)?;
    let composed = compose_foreign(value, &context(&state, client), to_native).map_err(native)?;
    let submitted = submit(&state, principal, key, &bytes, composed)
        .await
        .map_err(native)?;
    Ok(Json(Sent {
        id: submitted.accepted.id.to_string(),
    }))
}

/// Whether `x-batch-validation: permissive` asks to queue the valid items of a batch and
/// report the others; the default (`strict`) refuses the whole batch for one invalid item.
fn permissive(headers: &HeaderMap) -> bool {
    headers
        .get(BATCH_VALIDATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("permissive"))
}

/// `POST /emails/batch`: a JSON array of messages. Strict (default): one invalid message
/// refuses the batch and nothing is queued. Permissive: valid ones are queued and the answer's
/// `errors` lists `{index, message}` for the others.
async fn send_batch(
    State(state): State<ApiState>,
    client: ClientAddr,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Result<RawJsonBody, ApiError>,
) -> Result<Json<serde_json::Value>, ResendError> {
    let RawJsonBody { value, .. } = body.map_err(native)?;
    let serde_json::Value::Array(items) = value else {
        return Err(ResendError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            "a batch is a JSON array of emails",
        ));
    };
    if items.is_empty() || items.len() > state.settings.max_batch {
        return Err(ResendError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            format!(
                "a batch holds 1 to {} emails; {} given",
                state.settings.max_batch,
                items.len()
            ),
        ));
    }
    let ctx = context(&state, client);
    let composed: Vec<Result<Composed, ApiError>> = items
        .into_iter()
        .map(|item| compose_foreign(item, &ctx.for_next_message(), to_native))
        .collect();
    let permissive = permissive(&headers);
    if !permissive
        && let Some((index, Err(e))) = composed.iter().enumerate().find(|(_, c)| c.is_err())
    {
        let inner = native(e.clone());
        return Err(ResendError {
            message: format!("emails[{index}]: {}", inner.message),
            ..inner
        });
    }
    let mut data = Vec::new();
    let mut errors = Vec::new();
    for (index, result) in enqueue_all(&state, composed, key_defaults(&state, principal.as_deref()))
        .await
        .into_iter()
        .enumerate()
    {
        match result {
            Ok(accepted) => data.push(serde_json::json!({"id": accepted.id.to_string()})),
            Err(e) => {
                errors.push(serde_json::json!({"index": index, "message": native(e).message}))
            }
        }
    }
    if !permissive && data.is_empty() {
        return Err(ResendError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "application_error",
            "no email of the batch was queued; retry later",
        ));
    }
    let mut answer = serde_json::json!({ "data": data });
    if permissive {
        answer["errors"] = serde_json::Value::Array(errors);
    }
    Ok(Json(answer))
}

/// Resend's `last_event` for a message: its state, or `suppressed` when every recipient was.
fn last_event(m: &QueuedMessage, now: Timestamp) -> &'static str {
    let all_suppressed = !m.recipients.is_empty()
        && m.recipients
            .iter()
            .all(|r| r.state == RecipientState::Suppressed);
    if all_suppressed {
        return "suppressed";
    }
    match m.state(now) {
        MessageState::Queued | MessageState::Held => "queued",
        MessageState::Scheduled => "scheduled",
        MessageState::Deferred => "delivery_delayed",
        MessageState::Delivered | MessageState::PartiallyBounced => "delivered",
        MessageState::Bounced => "bounced",
    }
}

/// `GET /emails/{id}` in Resend's shape. The relay keeps the rendered message, not its fields,
/// so `to` lists the envelope recipients and the content fields are `null`.
async fn get_email(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ResendError> {
    let id = path_id(path).map_err(|_| {
        ResendError::new(StatusCode::NOT_FOUND, "not_found", "no email with this id")
    })?;
    let m = load(&state, id).map_err(native)?;
    let now = crate::now();
    let to: Vec<String> = m
        .recipients
        .iter()
        .map(|r| r.request.address.to_string())
        .collect();
    let scheduled_at = (m.state(now) == MessageState::Scheduled)
        .then(|| m.next_attempt_at.map(Timestamp::to_rfc3339))
        .flatten();
    Ok(Json(serde_json::json!({
        "object": "email",
        "id": m.id.to_string(),
        "from": m.sender.to_string(),
        "to": to,
        "created_at": m.received_at.to_rfc3339(),
        "subject": null,
        "html": null,
        "text": null,
        "cc": null,
        "bcc": null,
        "reply_to": null,
        "last_event": last_event(&m, now),
        "scheduled_at": scheduled_at,
        "tags": m.metadata.iter().map(|(k, v)| serde_json::json!({"name": k, "value": v})).collect::<Vec<_>>(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resend_fields_map_to_the_native_request() {
        let input: EmailInput = serde_json::from_value(serde_json::json!({
            "from": "App <app@x.test>",
            "to": "ann@y.test",
            "cc": ["c@y.test"],
            "reply_to": "help@x.test",
            "subject": "Hi",
            "html": "<p>Hi</p>",
            "headers": {"X-Order": "12"},
            "attachments": [
                {"filename": "a.txt", "content": [104, 105]},
                {"filename": "b.png", "content": "aGk=", "content_type": "image/png",
                 "inline_content_id": "logo"}
            ],
            "tags": [{"name": "category", "value": "welcome"}],
            "scheduled_at": "2030-01-01T00:00:00.000Z"
        }))
        .unwrap();
        assert_eq!(
            serde_json::Value::Object(to_native(input).unwrap()),
            serde_json::json!({
                "from": "App <app@x.test>",
                "to": "ann@y.test",
                "cc": ["c@y.test"],
                "reply_to": "help@x.test",
                "subject": "Hi",
                "html": "<p>Hi</p>",
                "headers": {"X-Order": "12"},
                "send_at": "2030-01-01T00:00:00.000Z",
                "metadata": {"category": "welcome"},
                "attachments": [
                    {"filename": "a.txt", "content": "aGk="},
                    {"filename": "b.png", "content": "aGk=", "content_type": "image/png",
                     "content_id": "logo"}
                ]
            })
        );
    }

    #[test]
    fn remote_attachments_and_templates_are_refused() {
        let input: EmailInput = serde_json::from_value(serde_json::json!({
            "from": "a@x.test", "to": "b@y.test", "text": "t",
            "attachments": [{"filename": "f.pdf", "path": "https://example.com/f.pdf"}]
        }))
        .unwrap();
        let e = to_native(input).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("attachments[0].path"));
        let r = ResendError::from_native(&e, true);
        assert_eq!((r.status_code, r.name), (422, "validation_error"));
        let input: EmailInput = serde_json::from_value(serde_json::json!({
            "from": "a@x.test", "to": "b@y.test", "template": {"id": "t"}
        }))
        .unwrap();
        assert!(to_native(input).is_err());
    }

    #[test]
    fn native_errors_get_resend_names() {
        let missing = ResendError::from_native(&ApiError::unauthorized("x"), false);
        assert_eq!(
            (missing.status_code, missing.name),
            (401, "missing_api_key")
        );
        let wrong = ResendError::from_native(&ApiError::unauthorized("x"), true);
        assert_eq!((wrong.status_code, wrong.name), (403, "invalid_api_key"));
        let e = ApiError::invalid("missing_from", "from", "from is required");
        assert_eq!(
            ResendError::from_native(&e, true).name,
            "missing_required_field"
        );
        let e = ApiError::invalid("invalid_send_at", "send_at", "bad");
        let r = ResendError::from_native(&e, true);
        assert!(r.message.contains("field scheduled_at"), "{}", r.message);
        assert_eq!(
            serde_json::to_value(&r).unwrap()["statusCode"],
            serde_json::json!(422)
        );
    }
}
