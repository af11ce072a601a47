//! Queue administration under `/v1/queue` (scope `admin`), used by `postrider queue …`.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use postrider_core::dsn::{DsnAction, DsnRecipient, DsnReport, render_dsn, suppressed_reply};
use postrider_core::{
    Domain, DsnRet, EnhancedStatus, Envelope, MessageId, MessageState, NewMessage, QueuedMessage,
    RecipientRequest, RecipientState, ReversePath, SmtpReply, Source, Timestamp,
};
use postrider_store::{AttemptUpdate, BulkAction, BulkOutcome, ListFilter, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::{JsonBody, decode};
use crate::routes::{MessageView, load, path_id, store_error};

/// Largest page of `GET /v1/queue`.
const MAX_PAGE: usize = 1000;
/// Most domains in `GET /v1/queue/stats`.
const MAX_TOP: usize = 100;

fn query_error(e: QueryRejection) -> ApiError {
    ApiError::invalid(
        "invalid_query",
        "",
        format!("invalid query parameters: {}", e.body_text()),
    )
}

/// A `state` filter (empty: none); `code` is the error code for a bad one.
fn parse_state(state: Option<&str>, code: &'static str) -> Result<Option<MessageState>, ApiError> {
    let Some(s) = state.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    MessageState::ALL
        .into_iter()
        .find(|st| st.as_str() == s)
        .map(Some)
        .ok_or_else(|| {
            let names: Vec<&str> = MessageState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::invalid(
                code,
                "state",
                format!("state is one of {}", names.join(", ")),
            )
        })
}

/// A `domain` filter (empty: none); `code` is the error code for a bad one.
fn parse_domain(domain: Option<&str>, code: &'static str) -> Result<Option<Domain>, ApiError> {
    match domain.filter(|d| !d.is_empty()) {
        None => Ok(None),
        Some(d) => Domain::parse(d)
            .map(Some)
            .map_err(|e| ApiError::invalid(code, "domain", format!("invalid domain: {e}"))),
    }
}

/// An `after` cursor (empty: from the start); `code` is the error code for a bad one.
fn parse_after(after: Option<&str>, code: &'static str) -> Result<Option<MessageId>, ApiError> {
    match after.filter(|a| !a.is_empty()) {
        None => Ok(None),
        Some(a) => a
            .parse::<MessageId>()
            .map(Some)
            .map_err(|_| ApiError::invalid(code, "after", "after is a message id (16 hex digits)")),
    }
}

/// Query of `GET /v1/queue`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    state: Option<String>,
    domain: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
    #[serde(default)]
    include_finished: bool,
}

/// `GET /v1/queue?state=&domain=&limit=&after=&include_finished=`.
pub(crate) async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(query_error)?;
    let wanted_state = parse_state(q.state.as_deref(), "invalid_query")?;
    let domain = parse_domain(q.domain.as_deref(), "invalid_query")?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::invalid(
            "invalid_query",
            "limit",
            format!("limit is 1 to {MAX_PAGE}"),
        ));
    }
    let after = parse_after(q.after.as_deref(), "invalid_query")?;
    let filter = ListFilter {
        state: wanted_state,
        recipient_domain: domain,
        include_finished: q.include_finished,
        received_before: None,
        after,
        limit,
    };
    let now = crate::now();
    let page = state
        .store
        .list(&filter, now)
        .map_err(|e| store_error(e, "list"))?;
    let messages: Vec<MessageView> = page
        .messages
        .iter()
        .map(|m| MessageView::new(m, now))
        .collect();
    Ok(Json(
        json!({ "messages": messages, "next_after": page.next_after }),
    ))
}

/// Query of `GET /v1/queue/stats`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatsQuery {
    top: Option<usize>,
}

#[derive(Serialize)]
struct DomainCount {
    domain: String,
    count: u64,
}

/// `GET /v1/queue/stats?top=`: counts by state, pending total and the busiest domains.
pub(crate) async fn stats(
    State(state): State<ApiState>,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(query_error)?;
    let top = q.top.unwrap_or(10).min(MAX_TOP);
    let store = state.store.clone();
    // A full scan: keep it off the async workers.
    let stats = tokio::task::spawn_blocking(move || store.stats(crate::now(), top))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "stats task failed");
            ApiError::store_unavailable()
        })?
        .map_err(|e| store_error(e, "stats"))?;
    let by_state: serde_json::Map<String, serde_json::Value> = stats
        .by_state
        .iter()
        .map(|(s, n)| (s.as_str().to_owned(), json!(n)))
        .collect();
    let top_domains: Vec<DomainCount> = stats
        .top_domains
        .iter()
        .map(|(d, n)| DomainCount {
            domain: d.to_string(),
            count: *n,
        })
        .collect();
    let suspended = state
        .suspended
        .as_ref()
        .map(|p| (p.0)())
        .unwrap_or_default();
    Ok(Json(json!({
        "by_state": by_state,
        "pending": stats.pending,
        "top_domains": top_domains,
        "corrupt": stats.corrupt,
        "suspended_destinations": suspended,
    })))
}

/// `GET /v1/queue/{id}`.
pub(crate) async fn show(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<MessageView>, ApiError> {
    let id = path_id(path)?;
    let m = load(&state, id)?;
    Ok(Json(MessageView::new(&m, crate::now())))
}

/// The answer of the single-message actions: whether anything changed, and the state after.
fn changed(
    state: &ApiState,
    id: MessageId,
    changed: bool,
) -> Result<Json<serde_json::Value>, ApiError> {
    let m = load(state, id)?;
    Ok(Json(
        json!({ "id": id, "changed": changed, "state": m.state(crate::now()).as_str() }),
    ))
}

/// `POST /v1/queue/{id}/retry`: make a pending message due now.
pub(crate) async fn retry_one(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = path_id(path)?;
    let moved = state
        .store
        .retry_now(id, crate::now())
        .await
        .map_err(|e| store_error(e, "retry"))?;
    tracing::info!(%id, moved, "operator retry");
    changed(&state, id, moved)
}

/// Body of `POST /v1/queue/retry`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryManyRequest {
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    all: bool,
}

/// `POST /v1/queue/retry` with `{"domain": "example.com"}` or `{"all": true}`.
pub(crate) async fn retry_many(
    State(state): State<ApiState>,
    JsonBody(value): JsonBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: RetryManyRequest = decode(value)?;
    let domain = match (req.domain.as_deref(), req.all) {
        (Some(d), false) => Some(Domain::parse(d).map_err(|e| {
            ApiError::invalid("invalid_field", "domain", format!("invalid domain: {e}"))
        })?),
        (None, true) => None,
        _ => {
            return Err(ApiError::invalid(
                "invalid_field",
                "domain",
                "give exactly one of domain or all: true",
            ));
        }
    };
    let outcome = state
        .store
        .retry_all(domain.as_ref(), crate::now())
        .await
        .map_err(|e| store_error(e, "retry_all"))?;
    Ok(Json(
        json!({ "retried": outcome.moved, "scheduled_left": outcome.scheduled_left }),
    ))
}

/// `POST /v1/queue/{id}/hold`.
pub(crate) async fn hold(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = path_id(path)?;
    let done = state
        .store
        .hold(id)
        .await
        .map_err(|e| store_error(e, "hold"))?;
    tracing::info!(%id, done, "operator hold");
    changed(&state, id, done)
}

/// `POST /v1/queue/{id}/release`.
pub(crate) async fn release(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = path_id(path)?;
    let done = state
        .store
        .release(id, crate::now())
        .await
        .map_err(|e| store_error(e, "release"))?;
    tracing::info!(%id, done, "operator release");
    changed(&state, id, done)
}

/// `DELETE /v1/queue/{id}`: remove without notifying anyone.
pub(crate) async fn delete(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = path_id(path)?;
    state
        .store
        .delete(id)
        .await
        .map_err(|e| store_error(e, "delete"))?;
    tracing::info!(%id, "operator delete");
    Ok(Json(json!({ "id": id, "deleted": true })))
}

/// The status given to recipients bounced by an operator.
const OPERATOR_BOUNCE: EnhancedStatus = EnhancedStatus::new(5, 0, 0);

/// Builds the "bounce now" update: every pending recipient becomes bounced with a synthetic
/// reply, and a failure DSN goes to the sender for those that want one (never for `<>`). The DSN
/// also reports suppressed recipients when the sender is still owed that
/// ([`QueuedMessage::take_suppressed_reports`]).
fn bounce_update(m: &QueuedMessage, body: &[u8], hostname: &str, now: Timestamp) -> AttemptUpdate {
    let reply = SmtpReply::synthetic(
        550,
        OPERATOR_BOUNCE,
        "message bounced by the relay operator",
    );
    let mut message = m.clone();
    let suppressed = message.take_suppressed_reports();
    let suppressed_reply = suppressed_reply();
    let mut bounced = Vec::new();
    for (i, r) in message.recipients.iter_mut().enumerate() {
        if !r.state.is_final() {
            r.state = RecipientState::Bounced;
            r.last_reply = Some(reply.clone());
            r.last_attempt_at = Some(now);
            bounced.push(i);
        }
    }
    message.next_attempt_at = None;
    message.finished_at = Some(now);
    let mut notifications = Vec::new();
    if let ReversePath::Address(sender) = &m.sender {
        let reported: Vec<DsnRecipient<'_>> = bounced
            .iter()
            .map(|&i| &m.recipients[i])
            .filter(|r| r.request.wants_failure_notice())
            .map(|r| DsnRecipient {
                address: &r.request.address,
                original_recipient: r.request.orcpt.as_deref(),
                action: DsnAction::Failed,
                status: OPERATOR_BOUNCE,
                remote_mta: None,
                reply: Some(&reply),
                last_attempt_at: Some(now),
                will_retry_until: None,
            })
            .chain(
                suppressed
                    .iter()
                    .map(|&i| &m.recipients[i])
                    .filter(|r| r.request.wants_failure_notice())
                    .map(|r| DsnRecipient::suppressed(r, &suppressed_reply)),
            )
            .collect();
        if !reported.is_empty() {
            let message_id = format!("dsn.{}.{:x}@{hostname}", m.id, now.as_millis());
            let report = DsnReport {
                reporting_mta: hostname,
                message_id: &message_id,
                date: now,
                original_sender: sender,
                queue_id: Some(m.id),
                envid: m.envid.as_deref(),
                arrival_date: m.received_at,
                recipients: &reported,
                ret: m.ret.unwrap_or(DsnRet::Hdrs),
                original: body,
            };
            let dsn = render_dsn(&report);
            if let Ok(envelope) = Envelope::new(
                ReversePath::Null,
                vec![RecipientRequest::new(sender.clone())],
            ) {
                let mut notice = NewMessage::new(envelope, dsn, Source::Dsn, now);
                // The bounce of a captured message is captured too.
                notice.sandbox = m.sandbox;
                notifications.push(notice);
            }
        }
    }
    AttemptUpdate {
        message,
        next_attempt_at: None,
        notifications,
    }
}

/// `POST /v1/queue/{id}/bounce`: bounce every pending recipient now, with a DSN to the sender.
pub(crate) async fn bounce(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = path_id(path)?;
    let (pending, dsn_id) = bounce_now(&state, id).await?;
    Ok(Json(
        json!({ "id": id, "bounced": pending, "dsn_id": dsn_id }),
    ))
}

/// Bounces every pending recipient of `id` now (the API and the console's button): how many
/// recipients were bounced and the DSN's id, if one was queued.
pub(crate) async fn bounce_now(
    state: &ApiState,
    id: MessageId,
) -> Result<(usize, Option<MessageId>), ApiError> {
    let (pending, dsn_ids) = bounce_message(state, id)
        .await
        .map_err(|e| store_error(e, "bounce"))?;
    Ok((pending, dsn_ids.first().copied()))
}

/// Bounces every pending recipient of `id` now, with a DSN to the sender. Returns how many
/// recipients were bounced and the DSN ids.
async fn bounce_message(
    state: &ApiState,
    id: MessageId,
) -> Result<(usize, Vec<MessageId>), StoreError> {
    let current = state.store.message(id)?.ok_or(StoreError::NotFound(id))?;
    if current.is_finished() {
        return Err(StoreError::InvalidState {
            id,
            state: current.state(crate::now()).as_str(),
            operation: "bounce",
        });
    }
    let body = state.store.body(id)?.unwrap_or_default();
    let now = crate::now();
    let hostname = state.settings.hostname.clone();
    let pending = current.pending().count();
    let dsn_ids = state
        .store
        .complete_without_lease(id, |m| bounce_update(m, &body, &hostname, now))
        .await?;
    if !dsn_ids.is_empty() {
        state.metrics.bounces_generated.inc_by(dsn_ids.len() as u64);
    }
    tracing::info!(%id, recipients = pending, dsn = %dsn_ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(","), "operator bounce");
    Ok((pending, dsn_ids))
}

/// Default page of a bulk operation (messages matched per call).
const DEFAULT_BULK_PAGE: usize = 500;

/// The actions of `POST /v1/queue/bulk`.
pub(crate) const BULK_ACTIONS: [&str; 5] = ["retry", "hold", "release", "delete", "bounce"];

/// Body of `POST /v1/queue/bulk`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkRequest {
    /// One of [`BULK_ACTIONS`].
    action: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    /// A duration such as `2h` or `3d 12h`: only messages that arrived longer ago.
    #[serde(default)]
    older_than: Option<String>,
    /// Every pending message: required when no other filter is given.
    #[serde(default)]
    all: bool,
    /// Only count the matching messages.
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `POST /v1/queue/bulk`: one page of a filtered bulk operation. Looks at the
/// messages after `after` (at most `limit` matches, and a bounded number of records read),
/// applies the action to each match (one transaction per message) unless `dry_run`, and
/// answers the counts with `next_after`, the cursor of the next page (`null` at the end).
pub(crate) async fn bulk(
    State(state): State<ApiState>,
    JsonBody(value): JsonBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: BulkRequest = decode(value)?;
    let action = BULK_ACTIONS
        .into_iter()
        .find(|b| *b == req.action)
        .ok_or_else(|| {
            ApiError::invalid(
                "invalid_field",
                "action",
                format!("action is one of {}", BULK_ACTIONS.join(", ")),
            )
        })?;
    let now = crate::now();
    let filter = bulk_filter(&req, now)?;
    let page = state
        .store
        .list(&filter, now)
        .map_err(|e| store_error(e, "list"))?;
    let ids: Vec<MessageId> = page.messages.iter().map(|m| m.id).collect();
    let mut outcome = BulkOutcome::default();
    if !req.dry_run {
        outcome = match store_action(action) {
            Some(a) => state
                .store
                .apply_bulk(&ids, a, now)
                .await
                .map_err(|e| store_error(e, "bulk"))?,
            None => bounce_many(&state, &ids).await?,
        };
    }
    Ok(Json(json!({
        "action": action,
        "dry_run": req.dry_run,
        "matched": ids.len(),
        "changed": outcome.changed,
        "skipped": outcome.skipped,
        "scheduled_left": outcome.scheduled_left,
        "next_after": page.next_after,
    })))
}

/// The store's action for a bulk action name (`None`: bounce, done here).
fn store_action(action: &str) -> Option<BulkAction> {
    match action {
        "retry" => Some(BulkAction::Retry),
        "hold" => Some(BulkAction::Hold),
        "release" => Some(BulkAction::Release),
        "delete" => Some(BulkAction::Delete),
        _ => None,
    }
}

/// The listing filter of a bulk request: at least one of state, domain, older_than, or
/// `all: true`, so that an empty body never acts on the whole queue.
fn bulk_filter(req: &BulkRequest, now: Timestamp) -> Result<ListFilter, ApiError> {
    let state = parse_state(req.state.as_deref(), "invalid_field")?;
    let domain = parse_domain(req.domain.as_deref(), "invalid_field")?;
    let received_before = match req.older_than.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => {
            let age = humantime::parse_duration(text.trim()).map_err(|e| {
                ApiError::invalid(
                    "invalid_field",
                    "older_than",
                    format!("older_than is a duration such as 2h or 3d: {e}"),
                )
            })?;
            Some(Timestamp::from_millis(now.as_millis().saturating_sub(
                u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
            )))
        }
    };
    if state.is_none() && domain.is_none() && received_before.is_none() && !req.all {
        return Err(ApiError::invalid(
            "invalid_field",
            "all",
            "give a filter (state, domain, older_than) or all: true",
        ));
    }
    let limit = req.limit.unwrap_or(DEFAULT_BULK_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::invalid(
            "invalid_field",
            "limit",
            format!("limit is 1 to {MAX_PAGE}"),
        ));
    }
    Ok(ListFilter {
        state,
        recipient_domain: domain,
        include_finished: false,
        received_before,
        after: parse_after(req.after.as_deref(), "invalid_field")?,
        limit,
    })
}

/// Bounces each of `ids` ([`bounce_message`]); finished, vanished and concurrently changed
/// messages are skipped.
async fn bounce_many(state: &ApiState, ids: &[MessageId]) -> Result<BulkOutcome, ApiError> {
    let mut outcome = BulkOutcome::default();
    for &id in ids {
        match bounce_message(state, id).await {
            Ok(_) => outcome.changed += 1,
            Err(
                StoreError::NotFound(_) | StoreError::InvalidState { .. } | StoreError::Conflict(_),
            ) => outcome.skipped += 1,
            Err(e) => return Err(store_error(e, "bounce")),
        }
    }
    Ok(outcome)
}
