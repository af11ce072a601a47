//! Extractors whose failures answer in the API's JSON error shape instead of axum's plain text.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::{self, DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::browser::{is_json_media_type, unsupported_media_type};
use crate::error::ApiError;

/// A request body parsed as JSON (any value); shape checks come later with [`decode`].
///
/// Requires `Content-Type: application/json` (with parameters); anything else, or none, is 415
/// (see [`crate::browser`]). An object with a repeated key is 400.
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
        let declared_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(is_json_media_type);
        if !declared_json {
            return Err(unsupported_media_type());
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
        let value = parse_json_unique_keys(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON: {e}"),
            )
        })?;
        Ok(RawJsonBody { value, bytes })
    }
}

/// Parses JSON like `serde_json::from_slice`, but refuses an object with the same key twice at
/// any depth. serde_json would keep the last value silently, so two readers of one body (a
/// proxy or a log, and this API) could act on different values.
pub(crate) fn parse_json_unique_keys(bytes: &[u8]) -> Result<serde_json::Value, serde_json::Error> {
    serde_json::from_slice::<UniqueKeys>(bytes).map(|UniqueKeys(value)| value)
}

/// A JSON value deserialized with a check for repeated object keys.
struct UniqueKeys(serde_json::Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(UniqueKeysVisitor)
            .map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        serde_json::Number::from_f64(v)
            .map(serde_json::Value::Number)
            .ok_or_else(|| E::custom("a number is not finite"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(serde_json::Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(serde_json::Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueKeys(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(serde_json::Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate object key {key:?}"
                )));
            }
            let UniqueKeys(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(serde_json::Value::Object(object))
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
