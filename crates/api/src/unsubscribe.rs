//! RFC 8058 one-click unsubscribe: `POST /unsubscribe/{token}` with the form body
//! `List-Unsubscribe=One-Click` suppresses the recipient for the message's sender domain and
//! logs an `unsubscribed` event; `GET /unsubscribe/{token}` (a person following the link) shows
//! a confirm button that posts the same form, and changes nothing by itself, because mail
//! scanners fetch every link they see.
//!
//! No API key: the signed token is the credential. The browser guard lets these paths through
//! (mail providers post a form body, and the link is opened from anywhere).

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use postrider_core::unsubscribe::{ONE_CLICK, UnsubscribeTarget};
use postrider_store::UnsubscribeOutcome;

use crate::ApiState;
use crate::error::ApiError;
use crate::routes::store_error;

/// Largest accepted form body, in octets (the one-click body is 26).
pub(crate) const MAX_FORM_BYTES: usize = 1024;
/// Longest token looked at; anything longer is refused before decoding.
const MAX_TOKEN_CHARS: usize = 64;
/// The path prefix served here (the browser guard exempts it).
pub(crate) const PATH_PREFIX: &str = postrider_core::unsubscribe::PATH_PREFIX;
/// Policy of the HTML pages: no scripts, no external content, forms only to this origin.
const PAGE_CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'";

/// The target of a path token, checked against the configured secret.
fn checked_target(
    state: &ApiState,
    path: Result<Path<String>, PathRejection>,
) -> Option<UnsubscribeTarget> {
    let links = state.settings.unsubscribe.as_ref()?;
    let Path(token) = path.ok()?;
    if token.len() > MAX_TOKEN_CHARS {
        return None;
    }
    links.check_token(&token)
}

/// Whether a form body holds the pair `List-Unsubscribe=One-Click` (RFC 8058 §3.1).
pub(crate) fn is_one_click_body(body: &[u8]) -> bool {
    body.len() <= MAX_FORM_BYTES
        && body
            .split(|&b| b == b'&')
            .any(|pair| pair.trim_ascii() == ONE_CLICK.as_bytes())
}

/// Whether the client prefers an HTML answer (a person's browser posting the confirm form).
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// One shared token bucket for the whole endpoint (`http.rate_limit_per_key`), so the memory
/// it takes stays bounded whoever calls.
fn rate_limited(state: &ApiState) -> Option<ApiError> {
    let limit = state.access.load().rate_limit?;
    let wait = state
        .limiter
        .check("unsubscribe endpoint", limit, std::time::Instant::now())
        .err()?;
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests; slow down",
    );
    e.retry_after = Some(wait);
    Some(e)
}

/// An HTML page with its own content policy and the console's other hardening headers.
fn html_page(status: StatusCode, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="robots" content="noindex";
                title { (title) }
                style { "body{font-family:sans-serif;max-width:32em;margin:3em auto;padding:0 1em}button{font-size:1.1em;padding:.5em 1.2em}" }
            }
            body { h1 { (title) } (body) }
        }
    };
    let mut response = (status, Html(markup.into_string())).into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    // The console's hardening: no sniffing, no caching, no framing beyond the policy above.
    crate::console::harden(response)
}

/// The page of a link that is not (or no longer) valid.
fn invalid_link_page() -> Response {
    html_page(
        StatusCode::NOT_FOUND,
        "Link not valid",
        html! { p { "This unsubscribe link is not valid or has expired." } },
    )
}

/// `GET /unsubscribe/{token}`: the confirm page (a form posting the one-click body to this
/// same URL); 404 page for a bad token or a message that is gone. Writes nothing.
pub(crate) async fn page(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    if let Some(e) = rate_limited(&state) {
        return e.into_response();
    }
    let Some(target) = checked_target(&state, path) else {
        return invalid_link_page();
    };
    match state.store.message(target.id) {
        Ok(Some(m)) if m.unsubscribe && target.index < m.recipients.len() => html_page(
            StatusCode::OK,
            "Unsubscribe",
            html! {
                p { "Stop receiving these messages at this address?" }
                form method="post" {
                    input type="hidden" name="List-Unsubscribe" value="One-Click";
                    button type="submit" { "Unsubscribe" }
                }
            },
        ),
        Ok(_) => invalid_link_page(),
        Err(e) => store_error(e, "read message for unsubscribe").into_response(),
    }
}

/// `POST /unsubscribe/{token}` with `List-Unsubscribe=One-Click`: suppresses the recipient for
/// the message's sender domain; `200` `{"status": "unsubscribed"}` or, when it already was,
/// `{"status": "already_unsubscribed"}` (an HTML page when the client asks for HTML). A bad
/// token or a message that is gone is 404, a body without the one-click pair 400.
pub(crate) async fn one_click(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(e) = rate_limited(&state) {
        return e.into_response();
    }
    let html = wants_html(&headers);
    let not_found = || {
        if html {
            invalid_link_page()
        } else {
            ApiError::not_found("this unsubscribe link is not valid or has expired").into_response()
        }
    };
    let Some(target) = checked_target(&state, path) else {
        return not_found();
    };
    if !is_one_click_body(&body) {
        return ApiError::invalid(
            "invalid_unsubscribe_body",
            "body",
            format!("the body must be the form field {ONE_CLICK} (RFC 8058)"),
        )
        .into_response();
    }
    let status = match state
        .store
        .record_unsubscribe(target.id, target.index, crate::now())
        .await
    {
        Ok(UnsubscribeOutcome::Unsubscribed(_)) => "unsubscribed",
        Ok(UnsubscribeOutcome::AlreadyUnsubscribed(_)) => "already_unsubscribed",
        Ok(UnsubscribeOutcome::Unknown) => return not_found(),
        Err(e) => return store_error(e, "record unsubscribe").into_response(),
    };
    if html {
        html_page(
            StatusCode::OK,
            "Unsubscribed",
            html! { p { "You will no longer receive these messages at this address." } },
        )
    } else {
        (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "status": status })),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_click_bodies() {
        assert!(is_one_click_body(b"List-Unsubscribe=One-Click"));
        assert!(is_one_click_body(b"a=b&List-Unsubscribe=One-Click\r\n"));
        assert!(!is_one_click_body(b""));
        assert!(!is_one_click_body(b"List-Unsubscribe=Other"));
        let mut long = b"List-Unsubscribe=One-Click&".to_vec();
        long.resize(MAX_FORM_BYTES + 1, b'x');
        assert!(!is_one_click_body(&long));
    }
}
