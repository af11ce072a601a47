//! The one error shape of the API: `{"error": {"code", "message", "field"?}}` with a fitting status.
//!
//! Bodies carry only what the client can act on; internal error chains go to the log.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The JSON object inside `{"error": ...}`; also used per item in batch results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody {
    /// Stable `snake_case` code for programs.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// The request field at fault, as a path like `to[2].email`, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error answer: status, body and the few headers some statuses need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status of the answer.
    pub status: StatusCode,
    /// What goes into the body.
    pub body: ErrorBody,
    /// `Retry-After` in seconds (429, 503).
    pub retry_after: Option<u64>,
    /// Whether to send `WWW-Authenticate: Bearer` (401).
    pub bearer_challenge: bool,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                code,
                message: message.into(),
                field: None,
            },
            retry_after: None,
            bearer_challenge: false,
        }
    }

    /// 400 with a code, message and the offending field.
    pub fn invalid(
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message).with_field(field)
    }

    /// Names the request field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        let field = field.into();
        self.body.field = if field.is_empty() { None } else { Some(field) };
        self
    }

    /// Prefixes the field path (e.g. with `envelope.`), keeping errors relative to the request root.
    pub fn under(mut self, prefix: &str) -> Self {
        self.body.field = Some(match self.body.field.take() {
            Some(f) if f.starts_with('[') => format!("{prefix}{f}"),
            Some(f) => format!("{prefix}.{f}"),
            None => prefix.to_owned(),
        });
        self
    }

    /// 404 for an unknown route or resource.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503: the queue could not durably accept or read; the client should retry.
    pub fn store_unavailable() -> Self {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the queue is temporarily unavailable; nothing was accepted, retry later",
        );
        e.retry_after = Some(5);
        e
    }

    /// 401 with a `WWW-Authenticate: Bearer` challenge.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        e.bearer_challenge = true;
        e
    }

    /// 413 for a body or rendered message over the configured limits.
    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: &'a ErrorBody,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(Envelope { error: &self.body })).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.bearer_challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"postrider\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_prefixes_compose() {
        let e = ApiError::invalid("invalid_address", "to[1]", "bad").under("messages[3]");
        assert_eq!(e.body.field.as_deref(), Some("messages[3].to[1]"));
        let e = ApiError::invalid("x", "[2]", "bad").under("envelope.to");
        assert_eq!(e.body.field.as_deref(), Some("envelope.to[2]"));
        let e = ApiError::new(StatusCode::BAD_REQUEST, "x", "m").under("raw");
        assert_eq!(e.body.field.as_deref(), Some("raw"));
    }

    #[test]
    fn serializes_without_empty_field() {
        let e = ApiError::not_found("nope");
        let v = serde_json::to_value(Envelope { error: &e.body }).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"code": "not_found", "message": "nope"}})
        );
    }
}
