//! Defences against web pages driving the API through a browser.
//!
//! A page on another site can make the user's browser send "simple" cross-site requests (form
//! posts, `fetch` with `mode: "no-cors"`) without a CORS preflight, and a DNS-rebinding page can
//! even read answers by making its own host name resolve to 127.0.0.1. Without API keys the
//! loopback address is the only credential, so [`guard_browser_requests`] refuses:
//! - bodies that are not declared `application/json` (415): a simple request can only carry
//!   `text/plain`, form or multipart bodies, or none declared;
//! - in keyless mode, a `Host` that is not a loopback name or address (421): a rebinding page
//!   sends its own host name;
//! - in keyless mode, an `Origin` of another site (403): that is how a browser marks a
//!   cross-site request, also one without a body.
//!
//! With API keys configured the key is the credential (browsers never attach it on their own),
//! so host and origin are not checked.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::ApiState;
use crate::error::ApiError;

/// Middleware applied to every request (see the module documentation).
pub(crate) async fn guard_browser_requests(
    State(state): State<ApiState>,
    req: Request,
    next: Next,
) -> Response {
    match check_request(&req, !state.has_keys()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The checks of [`guard_browser_requests`]; `keyless` adds the host and origin checks.
fn check_request(req: &Request, keyless: bool) -> Result<(), ApiError> {
    if req
        .uri()
        .path()
        .starts_with(crate::unsubscribe::PATH_PREFIX)
    {
        // One-click unsubscribe links: opened and posted from anywhere, with a form body; the
        // signed token in the path is their only credential, and it is checked there.
        return Ok(());
    }
    if keyless {
        if let Some(host) = request_host(req)
            && !is_loopback_host(host)
        {
            tracing::info!(
                host,
                "refused request for a non-loopback host name in keyless mode"
            );
            return Err(ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected_request",
                "no API keys are configured, so only requests for localhost or a loopback address are served",
            ));
        }
        if let Some(origin) = req.headers().get(header::ORIGIN)
            && !is_loopback_origin(origin)
        {
            tracing::info!(origin = %String::from_utf8_lossy(origin.as_bytes()), "refused cross-site request in keyless mode");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_origin",
                "no API keys are configured, so requests from web pages of other sites are refused",
            ));
        }
    }
    if crate::console::is_console_path(req.uri().path()) {
        // The console posts HTML forms and checks its own CSRF tokens.
        return Ok(());
    }
    check_content_type(req.headers())
}

/// A request with a body must declare it `application/json`; a declared type must be JSON.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let acceptable = match headers.get(header::CONTENT_TYPE) {
        Some(value) => is_json_media_type(value),
        None => !has_body(headers),
    };
    if acceptable {
        Ok(())
    } else {
        Err(unsupported_media_type())
    }
}

/// 415 asking for a JSON body.
pub(crate) fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the request body with Content-Type: application/json",
    )
}

/// `application/json`, with or without parameters (`; charset=utf-8`), in any case.
pub(crate) fn is_json_media_type(value: &HeaderValue) -> bool {
    value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether the headers announce a body: a non-zero `Content-Length` or any `Transfer-Encoding`.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) != Some(0))
}

/// The host the client asked for: the URI authority (HTTP/2, absolute-form) or `Host:`.
/// `None` when neither is present (HTTP/1.0 clients; browsers always send one).
fn request_host(req: &Request) -> Option<&str> {
    match req.uri().authority() {
        Some(authority) => Some(authority.as_str()),
        None => req
            .headers()
            .get(header::HOST)
            .map(|v| v.to_str().unwrap_or("\u{0}")),
    }
}

/// `localhost` or a loopback IP literal (`127.0.0.1`, `[::1]`, any of 127.0.0.0/8), each with
/// or without `:port`. Host names other than `localhost` are refused: a DNS-rebinding page
/// controls what its own name resolves to.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, "")) => v6,
            Some((v6, port)) if port.strip_prefix(':').is_some_and(is_port) => v6,
            _ => return false,
        },
        None => match host.split_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        },
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// 1 to 5 decimal digits.
fn is_port(s: &str) -> bool {
    (1..=5).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// `http(s)://` plus a loopback host ([`is_loopback_host`]); `null` and other sites are not.
fn is_loopback_origin(origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    rest.is_some_and(|host| !host.contains('/') && is_loopback_host(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "LOCALHOST:8025",
            "127.0.0.1",
            "127.0.0.1:8025",
            "127.0.0.2:80",
            "[::1]",
            "[::1]:8025",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8025",
            "localhost.evil.example",
            "10.0.0.1:8025",
            "[::2]:8025",
            "[::1]x",
            "127.0.0.1:",
            "127.0.0.1:80:80",
            "::1",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn origins() {
        let ok = |s: &'static str| is_loopback_origin(&HeaderValue::from_static(s));
        assert!(ok("http://127.0.0.1:8025"));
        assert!(ok("http://localhost:3000"));
        assert!(!ok("https://evil.example"));
        assert!(!ok("null"));
        assert!(!ok("http://127.0.0.1.evil.example"));
    }

    #[test]
    fn json_media_types() {
        let json = |s: &'static str| is_json_media_type(&HeaderValue::from_static(s));
        assert!(json("application/json"));
        assert!(json("Application/JSON; charset=utf-8"));
        assert!(!json("text/plain"));
        assert!(!json("application/x-www-form-urlencoded"));
        assert!(!json("application/jsonx"));
    }
}
