//! The suppression list: `GET/POST /v1/suppressions`, `GET/DELETE /v1/suppressions/{address}`
//! (`?scope=<domain>` names an entry scoped to a sender domain).

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use postrider_core::{Address, Domain};
use postrider_store::{MAX_SUPPRESSIONS_PAGE, Suppression, SuppressionReason};
use serde::{Deserialize, Serialize};

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::{JsonBody, decode};
use crate::routes::{ReplyView, store_error};

/// Default page size of `GET /v1/suppressions`.
const DEFAULT_LIMIT: usize = 100;

/// A suppression as shown by the API.
#[derive(Debug, Serialize)]
pub(crate) struct SuppressionView {
    address: String,
    reason: &'static str,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply: Option<ReplyView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    /// The report received at the bounce domain that listed the address.
    #[serde(skip_serializing_if = "Option::is_none")]
    source_report: Option<serde_json::Value>,
}

/// `{report_id, received_at (RFC 3339), status, diagnostic?}`.
fn report_json(r: &postrider_store::ReportSource) -> serde_json::Value {
    let mut v = serde_json::json!({
        "report_id": r.report_id.to_string(),
        "received_at": r.received_at.to_rfc3339(),
        "status": r.status,
    });
    if let (Some(d), Some(obj)) = (&r.diagnostic, v.as_object_mut()) {
        obj.insert("diagnostic".into(), d.clone().into());
    }
    v
}

impl From<&Suppression> for SuppressionView {
    fn from(s: &Suppression) -> Self {
        SuppressionView {
            address: s.address.clone(),
            reason: s.reason.as_str(),
            created_at: s.created_at.to_rfc3339(),
            source_message: s.source_message.map(|id| id.to_string()),
            reply: s.reply.as_ref().map(ReplyView::from),
            scope: s.scope.clone(),
            source_report: s.source_report.as_ref().map(report_json),
        }
    }
}

/// Query of `GET /v1/suppressions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /v1/suppressions?limit=&after=`: addresses in order; pass `next_after` as `after`.
pub(crate) async fn list(
    State(state): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("invalid_query", "", e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_SUPPRESSIONS_PAGE {
        return Err(ApiError::invalid(
            "invalid_limit",
            "limit",
            format!("limit must be between 1 and {MAX_SUPPRESSIONS_PAGE}"),
        ));
    }
    let page = state
        .store
        .list_suppressions(q.after.as_deref(), limit)
        .map_err(|e| store_error(e, "list suppressions"))?;
    let next_after = (page.len() == limit)
        .then(|| page.last().map(Suppression::key))
        .flatten();
    let items: Vec<SuppressionView> = page.iter().map(SuppressionView::from).collect();
    Ok(Json(serde_json::json!({
        "suppressions": items,
        "next_after": next_after,
    })))
}

/// Query of the single-entry routes: the sender domain of a scoped entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScopeQuery {
    scope: Option<String>,
}

/// The `scope` of a request, checked to be a domain (lowercased); `None` when absent.
fn checked_scope(scope: Option<&str>) -> Result<Option<String>, ApiError> {
    scope
        .map(|text| {
            Domain::parse(text.trim())
                .map(|d| d.as_str().to_lowercase())
                .map_err(|_| {
                    ApiError::invalid("invalid_scope", "scope", "scope must be a domain name")
                })
        })
        .transpose()
}

fn query_scope(
    query: Result<Query<ScopeQuery>, QueryRejection>,
) -> Result<Option<String>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("invalid_query", "", e.body_text()))?;
    checked_scope(q.scope.as_deref())
}

/// How an entry is named in messages: the address, and its scope when it has one.
fn entry_name(address: &Address, scope: Option<&str>) -> String {
    match scope {
        Some(domain) => format!("{address} (for mail from {domain})"),
        None => address.to_string(),
    }
}

fn path_address(path: Result<Path<String>, PathRejection>) -> Result<Address, ApiError> {
    let bad = || ApiError::invalid("invalid_address", "address", "not a valid e-mail address");
    let Path(text) = path.map_err(|_| bad())?;
    Address::parse(text.trim()).map_err(|_| bad())
}

/// `GET /v1/suppressions/{address}`.
pub(crate) async fn show(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ScopeQuery>, QueryRejection>,
) -> Result<Json<SuppressionView>, ApiError> {
    let address = path_address(path)?;
    let scope = query_scope(query)?;
    let entry = state
        .store
        .suppression(&address.to_string(), scope.as_deref())
        .map_err(|e| store_error(e, "read suppression"))?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "{} is not suppressed",
                entry_name(&address, scope.as_deref())
            ))
        })?;
    Ok(Json(SuppressionView::from(&entry)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRequest {
    address: String,
    #[serde(default)]
    reason: Option<SuppressionReason>,
    #[serde(default)]
    scope: Option<String>,
}

/// `POST /v1/suppressions {"address", "reason"?, "scope"?}`: `201` with the entry when added,
/// `200` with the existing entry when the address was already listed in that scope.
pub(crate) async fn add(
    State(state): State<ApiState>,
    JsonBody(value): JsonBody,
) -> Result<Response, ApiError> {
    let req: AddRequest = decode(value)?;
    let address = Address::parse(req.address.trim()).map_err(|e| {
        ApiError::invalid(
            "invalid_address",
            "address",
            format!("invalid address: {e}"),
        )
    })?;
    let scope = checked_scope(req.scope.as_deref())?;
    let entry = Suppression {
        address: address.to_string(),
        reason: req.reason.unwrap_or(SuppressionReason::Manual),
        created_at: crate::now(),
        source_message: None,
        reply: None,
        scope: scope.clone(),
        source_report: None,
    };
    let added = state
        .store
        .add_suppression(entry)
        .await
        .map_err(|e| store_error(e, "add suppression"))?;
    let current = state
        .store
        .suppression(&address.to_string(), scope.as_deref())
        .map_err(|e| store_error(e, "read suppression"))?
        .ok_or_else(ApiError::store_unavailable)?;
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(SuppressionView::from(&current))).into_response())
}

/// `DELETE /v1/suppressions/{address}`: `204`, or `404` when it was not listed.
pub(crate) async fn remove(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ScopeQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let address = path_address(path)?;
    let scope = query_scope(query)?;
    let removed = state
        .store
        .remove_suppression(&address.to_string(), scope.as_deref())
        .await
        .map_err(|e| store_error(e, "remove suppression"))?;
    if removed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "{} is not suppressed",
            entry_name(&address, scope.as_deref())
        )))
    }
}
