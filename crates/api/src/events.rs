//! `GET /v1/events?after=&limit=`: the durable event log, paged by sequence number.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use postrider_store::MAX_EVENTS_PAGE;
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
}

/// `GET /v1/events`: events with `seq > after` (default 0), oldest first, and `next_cursor`
/// (the last `seq` returned, or `after` when there is nothing new) to pass as `after` next time.
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
    let events = state
        .store
        .events_after(after, limit)
        .map_err(|e| store_error(e, "read events"))?;
    let next_cursor = events.last().map_or(after, |e| e.seq);
    let items: Vec<serde_json::Value> = events.iter().map(|e| e.to_json()).collect();
    Ok(Json(serde_json::json!({
        "events": items,
        "next_cursor": next_cursor,
    })))
}
