//! Submission, status, health and metrics handlers, and the JSON views they share with the
//! queue-admin handlers.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use postrider_core::{MessageId, QueuedMessage, RecipientStatus, SmtpReply, Timestamp};
use postrider_store::StoreError;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::ApiState;
use crate::compose::{ComposeContext, Composed, compose};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ClientAddr, JsonBody, decode};

/// `202` body of an accepted message.
#[derive(Debug, Serialize)]
pub(crate) struct Accepted {
    /// Queue id (16 hex digits).
    id: MessageId,
    /// `queued` or `scheduled`.
    state: &'static str,
    /// The message's `Message-ID` header (with angle brackets), for correlating replies.
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
}

fn context<'a>(state: &'a ApiState, client: ClientAddr) -> ComposeContext<'a> {
    ComposeContext {
        settings: &state.settings,
        now: crate::now(),
        client_ip: client.ip(),
        unique: rand::random(),
    }
}

/// Maps a store failure to the API: unknown id → 404, wrong state / concurrent change → 409,
/// storage failure → 503 (logged, never shown).
pub(crate) fn store_error(e: StoreError, action: &'static str) -> ApiError {
    match e {
        StoreError::NotFound(id) => ApiError::not_found(format!("no message with id {id}")),
        StoreError::InvalidState {
            id,
            state,
            operation,
        } => ApiError::new(
            StatusCode::CONFLICT,
            "invalid_state",
            format!("message {id} is {state}; cannot {operation}"),
        ),
        StoreError::Conflict(id) => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("message {id} changed while the request was processed; try again"),
        ),
        other => {
            tracing::error!(error = %other, action, "store operation failed");
            ApiError::store_unavailable()
        }
    }
}

/// Enqueues a composed message; `Ok` only once it is durable.
async fn enqueue(state: &ApiState, composed: Composed) -> Result<Accepted, ApiError> {
    let label = composed.state();
    let recipients = composed.message.envelope.recipients().len();
    let size = composed.message.body.len();
    let message_id = composed.message_id;
    let id = state
        .store
        .enqueue(composed.message)
        .await
        .map_err(|e| store_error(e, "enqueue"))?;
    state
        .metrics
        .messages_accepted
        .with_label_values(&["http"])
        .inc();
    tracing::info!(%id, recipients, size, state = label, "message accepted over http");
    Ok(Accepted {
        id,
        state: label,
        message_id,
    })
}

/// `POST /v1/messages`.
pub(crate) async fn send_message(
    State(state): State<ApiState>,
    client: ClientAddr,
    JsonBody(value): JsonBody,
) -> Result<Response, ApiError> {
    let composed = compose(value, &context(&state, client))?;
    let accepted = enqueue(&state, composed).await?;
    let mut response = (StatusCode::ACCEPTED, Json(&accepted)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/messages/{}", accepted.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    messages: Vec<serde_json::Value>,
}

/// One entry of a batch answer: the accepted message or the error for that item.
#[derive(Serialize)]
#[serde(untagged)]
enum BatchItem {
    Accepted(Accepted),
    Failed { error: ErrorBody },
}

/// `POST /v1/messages/batch`: each item is validated and enqueued on its own; results keep
/// the request order. The batch itself must be well formed and within `max_batch`.
pub(crate) async fn send_batch(
    State(state): State<ApiState>,
    client: ClientAddr,
    JsonBody(value): JsonBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let batch: BatchRequest = decode(value)?;
    if batch.messages.is_empty() {
        return Err(ApiError::invalid(
            "empty_batch",
            "messages",
            "messages must hold at least one message",
        ));
    }
    if batch.messages.len() > state.settings.max_batch {
        return Err(ApiError::invalid(
            "batch_too_large",
            "messages",
            format!(
                "{} messages given; the limit is {}",
                batch.messages.len(),
                state.settings.max_batch
            ),
        ));
    }
    let ctx = context(&state, client);
    let mut results: Vec<Option<BatchItem>> = Vec::with_capacity(batch.messages.len());
    let mut tasks = JoinSet::new();
    for (index, item) in batch.messages.into_iter().enumerate() {
        let item_ctx = ComposeContext {
            unique: rand::random(),
            ..ctx.clone()
        };
        match compose(item, &item_ctx) {
            Ok(composed) => {
                results.push(None);
                let state = state.clone();
                // The store commits concurrent enqueues together; bounded by max_batch.
                tasks.spawn(async move { (index, enqueue(&state, composed).await) });
            }
            Err(e) => results.push(Some(BatchItem::Failed { error: e.body })),
        }
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, outcome)) => {
                results[index] = Some(match outcome {
                    Ok(accepted) => BatchItem::Accepted(accepted),
                    Err(e) => BatchItem::Failed { error: e.body },
                });
            }
            Err(e) => tracing::error!(error = %e, "batch enqueue task failed"),
        }
    }
    let results: Vec<BatchItem> = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| BatchItem::Failed {
                error: ErrorBody {
                    code: "internal_error",
                    message: "the message was not accepted".to_owned(),
                    field: None,
                },
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "results": results })))
}

/// A reply as shown by the API.
#[derive(Debug, Serialize)]
pub(crate) struct ReplyView {
    code: u16,
    enhanced: Option<String>,
    text: String,
}

impl From<&SmtpReply> for ReplyView {
    fn from(r: &SmtpReply) -> Self {
        ReplyView {
            code: r.code,
            enhanced: r.enhanced.map(|e| e.to_string()),
            text: r.text.clone(),
        }
    }
}

/// One recipient as shown by the API.
#[derive(Debug, Serialize)]
pub(crate) struct RecipientView {
    address: String,
    state: &'static str,
    attempts: u32,
    last_reply: Option<ReplyView>,
    mx_host: Option<String>,
    last_attempt_at: Option<String>,
}

impl From<&RecipientStatus> for RecipientView {
    fn from(r: &RecipientStatus) -> Self {
        RecipientView {
            address: r.request.address.to_string(),
            state: r.state.as_str(),
            attempts: r.attempts,
            last_reply: r.last_reply.as_ref().map(ReplyView::from),
            mx_host: r.mx_host.clone(),
            last_attempt_at: r.last_attempt_at.map(Timestamp::to_rfc3339),
        }
    }
}

/// A message's status as shown by `GET /v1/messages/{id}` and the queue-admin endpoints.
#[derive(Debug, Serialize)]
pub(crate) struct MessageView {
    id: MessageId,
    state: &'static str,
    from: String,
    source: &'static str,
    created_at: String,
    attempts: u32,
    next_attempt_at: Option<String>,
    finished_at: Option<String>,
    size: u64,
    tags: Vec<String>,
    metadata: BTreeMap<String, String>,
    recipients: Vec<RecipientView>,
}

impl MessageView {
    /// The view of `m` at time `now` (which decides `scheduled` vs `queued`).
    pub(crate) fn new(m: &QueuedMessage, now: Timestamp) -> Self {
        MessageView {
            id: m.id,
            state: m.state(now).as_str(),
            from: m.sender.to_string(),
            source: m.source.as_str(),
            created_at: m.received_at.to_rfc3339(),
            attempts: m.attempts,
            next_attempt_at: m.next_attempt_at.map(Timestamp::to_rfc3339),
            finished_at: m.finished_at.map(Timestamp::to_rfc3339),
            size: m.size,
            tags: m.tags.clone(),
            metadata: m.metadata.clone(),
            recipients: m.recipients.iter().map(RecipientView::from).collect(),
        }
    }
}

/// Parses the `{id}` path segment: 400 for anything but 16 hex digits.
pub(crate) fn path_id(path: Result<Path<String>, PathRejection>) -> Result<MessageId, ApiError> {
    let Path(text) = path.map_err(|_| {
        ApiError::invalid("invalid_id", "id", "a message id is 16 hexadecimal digits")
    })?;
    text.parse()
        .map_err(|_| ApiError::invalid("invalid_id", "id", "a message id is 16 hexadecimal digits"))
}

/// Loads a message or answers 404.
pub(crate) fn load(state: &ApiState, id: MessageId) -> Result<QueuedMessage, ApiError> {
    state
        .store
        .message(id)
        .map_err(|e| store_error(e, "read"))?
        .ok_or_else(|| ApiError::not_found(format!("no message with id {id}")))
}

/// `GET /v1/messages/{id}`.
pub(crate) async fn get_message(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<MessageView>, ApiError> {
    let id = path_id(path)?;
    let m = load(&state, id)?;
    Ok(Json(MessageView::new(&m, crate::now())))
}

/// `GET /healthz`.
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /metrics`: Prometheus text exposition.
pub(crate) async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Fallback for unknown paths.
pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// Fallback for a known path with the wrong method.
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not support that method",
    )
}
