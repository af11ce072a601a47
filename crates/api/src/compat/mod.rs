//! Endpoints that speak the wire formats of Postmark (`/email…`) and Resend (`/emails…`), so
//! applications using those services' official SDKs can switch to Postrider by changing the
//! base URL and the key.
//!
//! Each foreign request is translated into the structured shape of `POST /v1/messages` and then
//! takes exactly the native path (`compose`, [`routes::submit`]): the same validation, MIME
//! rendering, idempotency, suppression list, events and metrics. Only the request fields and
//! the answers (including errors and authentication failures) are in the foreign shape.

mod postmark;
mod resend;

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;

use crate::auth::{self, POSTMARK_SERVER_TOKEN, ScopeGuard};
use serde::de::DeserializeOwned;

use crate::compose::{ComposeContext, Composed, compose};
use crate::error::ApiError;
use crate::extract::decode;
use crate::routes::store_error;
use crate::{ApiState, Scope};

/// Turns an error of the native shape into a foreign answer; `key_presented` tells whether the
/// request carried any credential (Resend distinguishes a missing key from a wrong one).
type Reject = fn(ApiError, bool) -> Response;

/// Route-layer state of the compatibility endpoints: the native scope check and the function
/// that renders its refusals in the foreign shape.
#[derive(Clone)]
struct CompatGuard {
    inner: ScopeGuard,
    reject: Reject,
}

/// Middleware: the native authentication, scope and rate-limit checks, with refusals in the
/// foreign error shape.
async fn require_scope(State(guard): State<CompatGuard>, mut req: Request, next: Next) -> Response {
    match auth::authorize(&guard.inner, &req) {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(e) => (guard.reject)(e, key_presented(req.headers())),
    }
}

/// Whether the request carries a key in either accepted header.
fn key_presented(headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION) || headers.contains_key(POSTMARK_SERVER_TOKEN)
}

/// The Postmark and Resend endpoints, each group behind the scope it needs.
pub(crate) fn router(state: &ApiState) -> Router<ApiState> {
    let guard = |scope, reject: Reject| {
        from_fn_with_state(
            CompatGuard {
                inner: ScopeGuard {
                    state: state.clone(),
                    scope,
                },
                reject,
            },
            require_scope,
        )
    };
    Router::new()
        .merge(postmark::send_routes().route_layer(guard(Scope::Send, postmark::reject)))
        .merge(resend::send_routes().route_layer(guard(Scope::Send, resend::reject)))
        .merge(resend::read_routes().route_layer(guard(Scope::Read, resend::reject)))
}

/// The recipients of a composed message that are on the suppression list (they will not be
/// attempted; Postmark clients expect to hear about them).
fn suppressed_recipients(state: &ApiState, composed: &Composed) -> Result<Vec<String>, ApiError> {
    let mut suppressed = Vec::new();
    let sender_domain = composed
        .message
        .envelope
        .sender()
        .address()
        .map(postrider_core::Address::domain);
    for r in composed.message.envelope.recipients() {
        if state
            .store
            .is_suppressed(&r.address, sender_domain)
            .map_err(|e| store_error(e, "read suppressions"))?
        {
            suppressed.push(r.address.to_string());
        }
    }
    Ok(suppressed)
}

/// Renames the segments of a native field path (`attachments[1].filename`) with `names`
/// (native → foreign), so error messages name the field the client actually sent.
fn foreign_field(path: &str, names: &[(&str, &str)]) -> String {
    path.split('.')
        .map(|segment| {
            let (name, index) = segment
                .find('[')
                .map_or((segment, ""), |at| segment.split_at(at));
            let name = names
                .iter()
                .find(|(native, _)| *native == name)
                .map_or(name, |(_, foreign)| foreign);
            format!("{name}{index}")
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The error's message, naming the (renamed) field at fault when there is one.
fn describe(e: &ApiError, names: &[(&str, &str)]) -> String {
    match &e.body.field {
        Some(field) => format!("{} (field {})", e.body.message, foreign_field(field, names)),
        None => e.body.message.clone(),
    }
}

/// A foreign message translated into the structured request of `POST /v1/messages`.
type NativeRequest = serde_json::Map<String, serde_json::Value>;

/// Decodes a foreign message, translates it with `to_native` and composes it on the native
/// path; nulls (how SDKs send absent fields) are dropped first.
fn compose_foreign<T: DeserializeOwned>(
    value: serde_json::Value,
    ctx: &ComposeContext<'_>,
    to_native: fn(T) -> Result<NativeRequest, ApiError>,
) -> Result<Composed, ApiError> {
    let mut native = to_native(decode(value)?)?;
    native.retain(|_, v| !v.is_null());
    compose(serde_json::Value::Object(native), ctx)
}

/// Inserts `value` under `key` when present, so absent foreign fields stay absent natively.
fn put(native: &mut NativeRequest, key: &str, value: Option<impl Into<serde_json::Value>>) {
    if let Some(v) = value {
        native.insert(key.to_owned(), v.into());
    }
}

/// Native metadata from foreign key/value pairs, refusing a key given twice (the native map
/// would keep only one of them silently).
fn unique_map(
    pairs: impl IntoIterator<Item = (String, String)>,
    field: &str,
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut map = BTreeMap::new();
    for (i, (k, v)) in pairs.into_iter().enumerate() {
        if map
            .keys()
            .any(|known: &String| known.eq_ignore_ascii_case(&k))
        {
            return Err(ApiError::invalid(
                "duplicate_name",
                format!("{field}[{i}]"),
                format!("{k:?} is given twice"),
            ));
        }
        map.insert(k, v);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_are_renamed_segment_by_segment() {
        let names = [("attachments", "Attachments"), ("filename", "Name")];
        assert_eq!(
            foreign_field("attachments[2].filename", &names),
            "Attachments[2].Name"
        );
        assert_eq!(foreign_field("subject", &names), "subject");
    }

    #[test]
    fn repeated_names_are_refused_case_insensitively() {
        let pairs = vec![
            ("X-A".to_owned(), "1".to_owned()),
            ("x-a".to_owned(), "2".to_owned()),
        ];
        let e = unique_map(pairs, "Headers").unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("Headers[1]"));
        let ok = unique_map(vec![("a".to_owned(), "1".to_owned())], "Headers").unwrap();
        assert_eq!(ok.get("a").map(String::as_str), Some("1"));
    }
}
