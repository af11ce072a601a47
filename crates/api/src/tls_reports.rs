//! `POST /v1/tls-reports/send`: sends the SMTP TLS reports (RFC 8460) of one day now, outside
//! the daily schedule, for operators (`postrider tls-reports send`) and tests. Answers
//! `501 not_configured` when TLS reports are off.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use postrider_core::tls_report::UtcDay;
use serde::Deserialize;

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::{JsonBody, decode};

/// Sends the reports of a day and describes what happened (kept as a closure so the API does
/// not depend on the delivery crate).
pub type TlsReportTrigger =
    Arc<dyn Fn(UtcDay) -> Pin<Box<dyn Future<Output = serde_json::Value> + Send>> + Send + Sync>;

/// A [`TlsReportTrigger`] held by the API state.
#[derive(Clone)]
pub struct TlsReportSource(pub TlsReportTrigger);

impl std::fmt::Debug for TlsReportSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsReportSource(..)")
    }
}

/// The request: the day to report (`YYYY-MM-DD`, UTC); default yesterday.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendRequest {
    #[serde(default)]
    day: Option<String>,
}

/// `POST /v1/tls-reports/send` with `{"day": "2026-12-02"}` or `{}`.
pub(crate) async fn send(
    State(state): State<ApiState>,
    JsonBody(value): JsonBody,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: SendRequest = decode(value)?;
    let day = match req.day.as_deref() {
        Some(text) => UtcDay::parse(text).ok_or_else(|| {
            ApiError::invalid("invalid_field", "day", "write the day as YYYY-MM-DD")
        })?,
        None => UtcDay::of(crate::now()).previous(),
    };
    let Some(trigger) = state.tls_reports.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_configured",
            "TLS reports are not configured on this relay (tls_reports.enabled)",
        ));
    };
    tracing::info!(day = %day, "operator sends TLS reports");
    Ok(Json((trigger.0)(day).await))
}
