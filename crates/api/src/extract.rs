//! Extractors whose failures answer in the API's JSON error shape instead of axum's plain text.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A request body parsed as JSON (any value); shape checks come later with [`decode`].
///
/// Accepts a missing `Content-Type` or `application/json` (with parameters); anything else is 415.
/// The body limit comes from the router's `DefaultBodyLimit`; exceeding it is 413.
#[derive(Debug)]
pub(crate) struct JsonBody(pub(crate) serde_json::Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let RawJsonBody { value, .. } = RawJsonBody::from_request(req, state).await?;
        Ok(JsonBody(value))
    }
}

/// Like [`JsonBody`], keeping the raw bytes too (the idempotency check hashes them).
#[derive(Debug)]
pub(crate) struct RawJsonBody {
    /// The parsed body.
    pub(crate) value: serde_json::Value,
    /// The body exactly as received.
    pub(crate) bytes: Bytes,
}

impl<S: Send + Sync> FromRequest<S> for RawJsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let essence = ct
                .to_str()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if essence != "application/json" {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send the request body as application/json",
                ));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(
                    "payload_too_large",
                    "the request body is larger than this server accepts",
                )
            } else {
                tracing::debug!(error = %rejection, "failed to read request body");
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    "the request body could not be read",
                )
            }
        })?;
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON: {e}"),
            )
        })?;
        Ok(RawJsonBody { value, bytes })
    }
}

/// Deserializes a JSON value into `T`, naming the field at fault (`to[2].email`) on failure.
pub(crate) fn decode<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        ApiError::invalid("invalid_field", field, e.into_inner().to_string())
    })
}

/// The client's socket address, when the server was started with connect info.
///
/// Never fails: without `into_make_service_with_connect_info` (as in `oneshot` tests that don't
/// insert one) the address is `None`, which the loopback check treats as "not loopback".
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub(crate) Option<SocketAddr>);

impl ClientAddr {
    /// The peer's IP with IPv4-mapped IPv6 unwrapped.
    pub(crate) fn ip(self) -> Option<IpAddr> {
        self.0.map(|a| a.ip().to_canonical())
    }

    /// Reads the address from request extensions.
    pub(crate) fn from_extensions(ext: &axum::http::Extensions) -> ClientAddr {
        ClientAddr(ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr::from_extensions(&parts.extensions))
    }
}
