//! `GET /v1/events?after=&limit=&id=&recipient=&type=&tag=&since=&until=`: the durable
//! event log, paged by sequence number and optionally filtered.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use postrider_core::{MessageId, Timestamp};
use postrider_store::{EventFilter, EventKind, MAX_EVENTS_PAGE};
use serde::Deserialize;

use crate::ApiState;
use crate::error::ApiError;
use crate::routes::store_error;

/// Default page size.
const DEFAULT_LIMIT: usize = 100;

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    after: Option<u64>,
    limit: Option<usize>,
    /// Only events of this message (its queue id).
    id: Option<String>,
    recipient: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    tag: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// `GET /v1/events`: events with `seq > after` (default 0) that match the filters, oldest
/// first, and `next_cursor` to pass as `after` next time: the last `seq` examined, or `after`
/// when there is nothing new. A filtered call examines a bounded number of events, so its page
/// may be short or empty while more matches lie beyond `next_cursor`.
pub(crate) async fn list(
    State(state): State<ApiState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("invalid_query", "", e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_EVENTS_PAGE {
        return Err(ApiError::invalid(
            "invalid_limit",
            "limit",
            format!("limit must be between 1 and {MAX_EVENTS_PAGE}"),
        ));
    }
    let after = q.after.unwrap_or(0);
    let filter = event_filter(&q)?;
    let page = state
        .store
        .events_matching(after, limit, &filter)
        .map_err(|e| store_error(e, "read events"))?;
    let items: Vec<serde_json::Value> = page.events.iter().map(|e| e.to_json()).collect();
    Ok(Json(serde_json::json!({
        "events": items,
        "next_cursor": page.next_cursor,
    })))
}

/// The filters of an events query; empty parameters are no filter.
fn event_filter(q: &EventsQuery) -> Result<EventFilter, ApiError> {
    let given = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    let message_id = match given(&q.id) {
        None => None,
        Some(id) => Some(id.parse::<MessageId>().map_err(|_| {
            ApiError::invalid("invalid_query", "id", "id is a queue id (16 hex digits)")
        })?),
    };
    let kinds = match given(&q.kind) {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|k| {
                EventKind::parse(k.trim()).ok_or_else(|| {
                    let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                    ApiError::invalid(
                        "invalid_query",
                        "type",
                        format!("type is a comma-separated list of {}", names.join(", ")),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let time = |v: &Option<String>, field: &'static str| match given(v) {
        None => Ok(None),
        Some(t) => Timestamp::parse_rfc3339(&t).map(Some).ok_or_else(|| {
            ApiError::invalid(
                "invalid_query",
                field,
                format!("{field} is an RFC 3339 time such as 2026-12-03T10:00:00Z"),
            )
        }),
    };
    Ok(EventFilter {
        message_id,
        recipient: given(&q.recipient),
        kinds,
        tag: given(&q.tag),
        since: time(&q.since, "since")?,
        until: time(&q.until, "until")?,
    })
}
