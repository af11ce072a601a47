//! The web console at `/ui/`: server-rendered pages (maud, escaped by construction) over the
//! same store and keys as the API.
//!
//! - Access: in loopback-only mode any loopback client is served without logging in; with keys
//!   configured, the login form takes an API key with the `read` scope and opens a server-side
//!   session ([`session`]). Actions need the `admin` scope.
//! - Every state-changing request is a form `POST` carrying the session's CSRF token, checked
//!   against the session; a request whose `Origin` names another host is refused too.
//! - Every page is sent with a strict Content-Security-Policy (scripts and styles only from
//!   `/ui/static/`, no inline code, no framing). The HTML preview of a message is served on its
//!   own with a policy that forbids scripts and remote loads, inside an `<iframe sandbox>`.
//! - Assets (CSS, the small script for the live event tail) are compiled into the binary.

mod pages;
pub(crate) mod session;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::ApiState;

/// Content-Security-Policy of console pages.
pub(crate) const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'";
/// Content-Security-Policy of a message's HTML preview: no scripts, nothing loaded from
/// anywhere, inline styles allowed so the message looks like itself.
pub(crate) const PREVIEW_CSP: &str = "default-src 'none'; img-src data: cid:; \
     style-src 'unsafe-inline'; frame-ancestors 'self'; base-uri 'none'; form-action 'none'; sandbox";
/// Largest form body the console accepts.
const MAX_FORM_BYTES: usize = 64 * 1024;

const CONSOLE_CSS: &str = include_str!("console.css");
const CONSOLE_JS: &str = include_str!("console.js");

/// Whether a request path belongs to the console (its forms are not JSON).
pub(crate) fn is_console_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// The console's routes, merged into the API router.
pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/ui", get(pages::home))
        .route("/ui/", get(pages::home))
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/messages", get(pages::messages))
        .route("/ui/messages/{id}", get(pages::message))
        .route("/ui/messages/{id}/preview", get(pages::preview))
        .route("/ui/messages/{id}/raw", get(pages::raw))
        .route("/ui/messages/{id}/attachments/{n}", get(pages::attachment))
        .route("/ui/messages/{id}/{action}", post(pages::action))
        .route("/ui/queue", get(pages::queue))
        .route("/ui/events", get(pages::events))
        .route("/ui/events/feed", get(pages::events_feed))
        .route(
            "/ui/suppressions",
            get(pages::suppressions).post(pages::add_suppression),
        )
        .route("/ui/suppressions/remove", post(pages::remove_suppression))
        .route("/ui/static/console.css", get(css))
        .route("/ui/static/console.js", get(js))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
}

/// Adds the headers every console answer carries: the page CSP (unless the answer set its
/// own), no framing, no sniffing, no caching, no referrer to other sites (a same-origin
/// one keeps `Origin:` on form posts, which the CSRF check compares).
pub(crate) fn harden(mut response: Response) -> Response {
    let headers = response.headers_mut();
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_CSP),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    harden(
        (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "max-age=300"),
            ],
            body,
        )
            .into_response(),
    )
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CONSOLE_CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", CONSOLE_JS)
}
