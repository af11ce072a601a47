//! Submission, status, health and metrics handlers, and the JSON views they share with the
//! queue-admin handlers.

use std::collections::BTreeMap;

use axum::Extension;
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use postrider_core::shared::IdempotencyRef;
use postrider_core::{
    BounceCategory, MessageId, QueuedMessage, RecipientStatus, SmtpReply, Timestamp, TlsInfo,
    failure_category,
};
use postrider_store::{EnqueueResult, IdempotencyKey, MAX_IDEMPOTENCY_KEY_LEN, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use crate::ApiState;
use crate::auth::Principal;
use crate::compose::{ComposeContext, Composed, compose};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ClientAddr, JsonBody, RawJsonBody, decode};
use crate::shared_idempotency::{self, Before};

/// `202` body of an accepted message.
#[derive(Debug, Serialize)]
pub(crate) struct Accepted {
    /// Queue id (16 hex digits).
    pub(crate) id: MessageId,
    /// `queued` or `scheduled`.
    pub(crate) state: &'static str,
    /// The message's `Message-ID` header (with angle brackets), for correlating replies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) message_id: Option<String>,
}

/// The compose context of a request from `client`, arriving now.
pub(crate) fn context<'a>(state: &'a ApiState, client: ClientAddr) -> ComposeContext<'a> {
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

/// What the submitting key decides for each message it submits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyDefaults {
    /// Captured rather than sent: always while the relay captures everything, else when the
    /// key is a sandbox key.
    pub(crate) sandbox: bool,
    /// One-click unsubscribe links unless the request says otherwise (the key's
    /// `unsubscribe` setting).
    pub(crate) unsubscribe: bool,
}

/// The [`KeyDefaults`] of `principal`.
pub(crate) fn key_defaults(state: &ApiState, principal: Option<&Principal>) -> KeyDefaults {
    KeyDefaults {
        sandbox: state.settings.capture_all || principal.is_some_and(|p| p.sandbox),
        unsubscribe: principal.is_some_and(|p| p.unsubscribe),
    }
}

/// Marks `composed` with the key's defaults and its own `unsubscribe` choice; a message that
/// asks for unsubscribe links while `[unsubscribe]` is not configured is refused (400).
pub(crate) fn apply_defaults(
    state: &ApiState,
    defaults: KeyDefaults,
    composed: &mut Composed,
) -> Result<(), ApiError> {
    composed.message.sandbox = defaults.sandbox;
    let unsubscribe = composed.unsubscribe.unwrap_or(defaults.unsubscribe);
    if unsubscribe && state.settings.unsubscribe.is_none() {
        return Err(ApiError::invalid(
            "unsubscribe_not_configured",
            "unsubscribe",
            "one-click unsubscribe links need [unsubscribe] base_url and secret in the relay's configuration",
        ));
    }
    composed.message.unsubscribe = unsubscribe;
    Ok(())
}

/// Enqueues a composed message; `Ok` only once it is durable.
pub(crate) async fn enqueue(state: &ApiState, composed: Composed) -> Result<Accepted, ApiError> {
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

/// Header carrying a client's idempotency key on `POST /v1/messages`.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Response header set (`true`) when an answer is a replay of an earlier submission.
pub(crate) const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// What the store keeps with an idempotency key to rebuild the first answer on a replay.
#[derive(Serialize, Deserialize)]
struct StoredReply {
    state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters; `None` when absent.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::invalid(
            "invalid_idempotency_key",
            "Idempotency-Key",
            format!(
                "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
            ),
        )
    };
    let text = value.to_str().map_err(|_| invalid())?;
    if text.is_empty()
        || text.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !text.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(invalid());
    }
    Ok(Some(text.to_owned()))
}

fn accepted_response(accepted: &Accepted, replayed: bool) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(accepted)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/messages/{}", accepted.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// `POST /v1/messages`. With an `Idempotency-Key` header, a retry with the same key and the
/// same body (SHA-256 of the raw bytes) within the key lifetime answers like the first call
/// (plus `Idempotent-Replayed: true`) and queues nothing; another body is a 409.
pub(crate) async fn send_message(
    State(state): State<ApiState>,
    client: ClientAddr,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    RawJsonBody { value, bytes }: RawJsonBody,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let composed = compose(value, &context(&state, client))?;
    let submitted = submit(&state, principal, key, &bytes, composed).await?;
    Ok(accepted_response(&submitted.accepted, submitted.replayed))
}

/// The outcome of [`submit`]: the accepted message and whether the answer replays an earlier
/// submission with the same idempotency key.
pub(crate) struct Submitted {
    /// What was queued (or, on a replay, what had been queued the first time).
    pub(crate) accepted: Accepted,
    /// Whether nothing was queued because the idempotency key was already used for this body.
    pub(crate) replayed: bool,
}

/// Queues a composed message, honouring an optional idempotency key scoped to the principal
/// (`body` is the raw request, hashed to tell a retry from a reuse of the key). Every HTTP
/// submission endpoint ends here, so they share durability, idempotency, events and metrics.
pub(crate) async fn submit(
    state: &ApiState,
    principal: Option<Extension<Principal>>,
    key: Option<String>,
    body: &[u8],
    mut composed: Composed,
) -> Result<Submitted, ApiError> {
    apply_defaults(
        state,
        key_defaults(state, principal.as_deref()),
        &mut composed,
    )?;
    let Some(key) = key else {
        let accepted = enqueue(state, composed).await?;
        return Ok(Submitted {
            accepted,
            replayed: false,
        });
    };
    let scope = principal.map_or_else(|| "loopback".to_owned(), |Extension(p)| p.name);
    let body_sha256: [u8; 32] = Sha256::digest(body).into();
    let shared = IdempotencyRef {
        scope: &scope,
        key: &key,
        body_sha256: &body_sha256,
    };
    let ledger = state.idempotency_ledger.as_deref();
    let claimed = match shared_idempotency::claim(ledger, shared).await {
        Before::Proceed { claimed } => claimed,
        Before::Replay(accepted) => {
            tracing::info!(id = %accepted.id, "idempotent submission replayed from the cluster");
            return Ok(Submitted {
                accepted,
                replayed: true,
            });
        }
        Before::Refuse(error) => return Err(error),
    };
    let submitted = submit_idempotent_locally(state, &scope, &key, body_sha256, composed).await;
    if claimed {
        let accepted = submitted.as_ref().ok().map(|s| &s.accepted);
        let ttl = state.settings.idempotency_ttl;
        shared_idempotency::finish(ledger, shared, accepted, ttl).await;
    }
    submitted
}

/// Queues a composed message under an idempotency key kept in this node's store.
async fn submit_idempotent_locally(
    state: &ApiState,
    scope: &str,
    key: &str,
    body_sha256: [u8; 32],
    composed: Composed,
) -> Result<Submitted, ApiError> {
    let label = composed.state();
    let message_id = composed.message_id;
    let recipients = composed.message.envelope.recipients().len();
    let now = composed.message.received_at;
    let reply = serde_json::to_string(&StoredReply {
        state: label.to_owned(),
        message_id: message_id.clone(),
    })
    .unwrap_or_default();
    let request = IdempotencyKey {
        scope: scope.to_owned(),
        key: key.to_owned(),
        body_sha256,
        reply,
        valid_after: Timestamp::from_millis(now.as_millis().saturating_sub(
            u64::try_from(state.settings.idempotency_ttl.as_millis()).unwrap_or(u64::MAX),
        )),
    };
    let result = state
        .store
        .enqueue_idempotent(composed.message, request)
        .await
        .map_err(|e| store_error(e, "enqueue"))?;
    match result {
        EnqueueResult::Created(id) => {
            state
                .metrics
                .messages_accepted
                .with_label_values(&["http"])
                .inc();
            tracing::info!(%id, recipients, state = label, "message accepted over http (idempotency key)");
            Ok(Submitted {
                accepted: Accepted {
                    id,
                    state: label,
                    message_id,
                },
                replayed: false,
            })
        }
        EnqueueResult::Replayed { id, reply } => {
            let stored: Option<StoredReply> = serde_json::from_str(&reply).ok();
            let state_label = match stored.as_ref().map(|r| r.state.as_str()) {
                Some("scheduled") => "scheduled",
                _ => "queued",
            };
            tracing::info!(%id, "idempotent submission replayed");
            Ok(Submitted {
                accepted: Accepted {
                    id,
                    state: state_label,
                    message_id: stored.and_then(|r| r.message_id),
                },
                replayed: true,
            })
        }
        EnqueueResult::Conflict => Err(shared_idempotency::key_reused()),
    }
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
    principal: Option<Extension<Principal>>,
    JsonBody(value): JsonBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let batch: BatchRequest = decode(value)?;
    let defaults = key_defaults(&state, principal.as_deref());
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
    let composed = batch
        .messages
        .into_iter()
        .map(|item| compose(item, &ctx.for_next_message()))
        .collect();
    let results: Vec<BatchItem> = enqueue_all(&state, composed, defaults)
        .await
        .into_iter()
        .map(|outcome| match outcome {
            Ok(accepted) => BatchItem::Accepted(accepted),
            Err(e) => BatchItem::Failed { error: e.body },
        })
        .collect();
    Ok(Json(serde_json::json!({ "results": results })))
}

/// Enqueues the composed items of a batch concurrently (the store commits concurrent enqueues
/// together) and returns each item's outcome in request order; items that failed to compose
/// keep their error; each item gets the key's `defaults` ([`apply_defaults`]). The caller
/// bounds the count (`max_batch`).
pub(crate) async fn enqueue_all(
    state: &ApiState,
    items: Vec<Result<Composed, ApiError>>,
    defaults: KeyDefaults,
) -> Vec<Result<Accepted, ApiError>> {
    let mut results: Vec<Option<Result<Accepted, ApiError>>> = Vec::with_capacity(items.len());
    let mut tasks = JoinSet::new();
    for (index, item) in items.into_iter().enumerate() {
        match item {
            Ok(mut composed) => {
                if let Err(e) = apply_defaults(state, defaults, &mut composed) {
                    results.push(Some(Err(e)));
                    continue;
                }
                results.push(None);
                let state = state.clone();
                tasks.spawn(async move { (index, enqueue(&state, composed).await) });
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, outcome)) => results[index] = Some(outcome),
            Err(e) => tracing::error!(error = %e, "batch enqueue task failed"),
        }
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "the message was not accepted",
                ))
            })
        })
        .collect()
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
    /// Why the last attempt failed (`invalid_recipient`, `mailbox_full`, …); absent after a
    /// success or before the first attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    category: Option<&'static str>,
    mx_host: Option<String>,
    last_attempt_at: Option<String>,
    /// The transport of the last attempt that reached a server: encrypted, TLS version,
    /// certificate verified.
    tls: Option<TlsInfo>,
    /// Bounced by a DSN that came back after delivery (present only when true).
    #[serde(rename = "async", skip_serializing_if = "std::ops::Not::not")]
    async_bounce: bool,
}

impl From<&RecipientStatus> for RecipientView {
    fn from(r: &RecipientStatus) -> Self {
        RecipientView {
            address: r.request.address.to_string(),
            state: r.state.as_str(),
            attempts: r.attempts,
            last_reply: r.last_reply.as_ref().map(ReplyView::from),
            category: r
                .last_reply
                .as_ref()
                .and_then(failure_category)
                .map(BounceCategory::as_str),
            mx_host: r.mx_host.clone(),
            last_attempt_at: r.last_attempt_at.map(Timestamp::to_rfc3339),
            tls: r.tls.clone(),
            async_bounce: r.async_bounce,
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
    /// Captured, not sent (present only when true).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    sandbox: bool,
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
            sandbox: m.sandbox,
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

/// `GET /healthz`: liveness, 200 while the process serves. `store` tells operators whether
/// the queue takes writes (`"ok"`) or why not; readiness is `/readyz`.
pub(crate) async fn healthz(State(state): State<ApiState>) -> Json<serde_json::Value> {
    let store = state
        .store
        .unavailable_reason()
        .unwrap_or_else(|| "ok".to_owned());
    Json(serde_json::json!({ "status": "ok", "store": store }))
}

/// `GET /readyz`: readiness. 200 while the queue takes writes; 503 with the reason while it
/// refuses them (full disk, failed sync), so load balancers and Kubernetes send submissions
/// to another node instead of having them refused here.
pub(crate) async fn readyz(State(state): State<ApiState>) -> Response {
    match state.store.unavailable_reason() {
        None => (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "ready" })),
        )
            .into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "unavailable", "reason": reason })),
        )
            .into_response(),
    }
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
