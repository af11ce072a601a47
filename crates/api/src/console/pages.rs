//! The console's pages and form handlers.
//!
//! Access checks return the refusal as a ready response (a login redirect or an error page);
//! it is built at most once per request, so its size does not matter.
#![allow(clippy::result_large_err)]

use axum::Form;
use axum::extract::rejection::{FormRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};
use postrider_core::{Address, MessageId, MessageState, QueuedMessage, Timestamp};
use postrider_store::{ListFilter, Suppression, SuppressionReason};
use serde::Deserialize;

use super::session::{
    LOGIN_COOKIE, SESSION_COOKIE, Viewer, clear_cookie, cookie, random_token, set_cookie,
    tokens_match,
};
use super::{PREVIEW_CSP, harden};
use crate::content::{
    ContentView, attachment_of, content_view, download, parse_bounded, stored_body,
};
use crate::error::ApiError;
use crate::extract::ClientAddr;
use crate::{ApiState, Scope};

/// Messages per page of the message list.
const LIST_PAGE: usize = 50;
/// Most records the message list reads for one page (search is a bounded scan).
const LIST_SCAN: usize = 10_000;
/// Most bodies read for a subject search on one page.
const SUBJECT_READS: usize = 2_000;
/// Largest header section read for a subject.
const HEADER_BYTES: usize = 64 * 1024;
/// Largest part of the raw source shown inline on the message page.
const RAW_SHOWN: usize = 256 * 1024;
/// Events shown when the tail page opens, and most sent per poll.
const EVENTS_SHOWN: usize = 50;
/// Suppressions per page.
const SUPPRESSIONS_PAGE: usize = 100;

// ---------------------------------------------------------------------------------------------
// Access
// ---------------------------------------------------------------------------------------------

/// A small page standing alone (errors, login): no navigation.
fn bare_page(status: StatusCode, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Postrider" }
                link rel="stylesheet" href="/ui/static/console.css";
            }
            body.bare {
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    harden((status, Html(markup.into_string())).into_response())
}

/// An error page with the API error's status and message.
fn error_page(e: &ApiError) -> Response {
    bare_page(
        e.status,
        "Something went wrong",
        html! {
            p.error { (e.body.message) }
            p { a href="/ui/messages" { "Back to the messages" } }
        },
    )
}

fn see_other(to: &str) -> Response {
    harden(Redirect::to(to).into_response())
}

/// The viewer of this request, or the answer to send instead: 403 for a non-loopback client in
/// loopback-only mode, the login page without a session, 403 without `scope`.
fn admit(
    state: &ApiState,
    client: ClientAddr,
    headers: &HeaderMap,
    scope: Scope,
) -> Result<Viewer, Response> {
    if !state.has_keys() && !client.ip().is_some_and(|ip| ip.is_loopback()) {
        return Err(error_page(&ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "no API keys are configured, so only loopback clients are served",
        )));
    }
    let viewer = state
        .console
        .viewer(state, headers)
        .ok_or_else(|| see_other("/ui/login"))?;
    if !viewer.can(scope) {
        return Err(error_page(&ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!(
                "this page needs an API key with the {} scope",
                scope.as_str()
            ),
        )));
    }
    Ok(viewer)
}

/// A viewer with the `read` scope, admitted by [`admit`]; refused requests get its answer.
pub(super) struct Reader(pub(super) Viewer);

/// A viewer with the `admin` scope, admitted by [`admit`].
pub(super) struct Admin(pub(super) Viewer);

impl FromRequestParts<ApiState> for Reader {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Response> {
        let client = ClientAddr::from_extensions(&parts.extensions);
        admit(state, client, &parts.headers, Scope::Read).map(Reader)
    }
}

impl FromRequestParts<ApiState> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Response> {
        let client = ClientAddr::from_extensions(&parts.extensions);
        admit(state, client, &parts.headers, Scope::Admin).map(Admin)
    }
}

/// Refuses a state-changing request whose form token does not match the session's, or whose
/// `Origin` names another host than the one asked.
fn check_csrf(viewer: &Viewer, token: &str, headers: &HeaderMap) -> Result<(), Response> {
    let origin_ok = match headers.get(header::ORIGIN) {
        None => true,
        Some(origin) => {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            let origin_host = origin.to_str().ok().and_then(|o| {
                o.strip_prefix("http://")
                    .or_else(|| o.strip_prefix("https://"))
            });
            host.is_some() && origin_host == host
        }
    };
    if origin_ok && !token.is_empty() && tokens_match(token, &viewer.csrf) {
        Ok(())
    } else {
        tracing::info!(viewer = %viewer.name, "console request refused: CSRF token or origin");
        Err(error_page(&ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "this form is stale or did not come from the console; reload the page and try again",
        )))
    }
}

/// A full console page for `viewer`, with navigation; sets the session cookie when it is new.
fn page(viewer: &Viewer, title: &str, active: &str, body: Markup) -> Response {
    let nav = [
        ("messages", "/ui/messages", "Messages", Scope::Read),
        ("queue", "/ui/queue", "Queue", Scope::Admin),
        ("events", "/ui/events", "Events", Scope::Read),
        (
            "suppressions",
            "/ui/suppressions",
            "Suppressions",
            Scope::Read,
        ),
    ];
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Postrider" }
                link rel="stylesheet" href="/ui/static/console.css";
                script src="/ui/static/console.js" defer {}
            }
            body {
                header {
                    span.brand { "Postrider" }
                    nav {
                        @for (name, href, label, scope) in nav {
                            @if viewer.can(scope) {
                                a.active[name == active] href=(href) { (label) }
                            }
                        }
                    }
                    span.who {
                        (viewer.name)
                        @if viewer.keyed {
                            form.inline method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(viewer.csrf);
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    let mut response = harden(Html(markup.into_string()).into_response());
    if let Some(cookie) = viewer
        .set_cookie
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// `GET /ui/`: the message list.
pub(super) async fn home() -> Response {
    see_other("/ui/messages")
}

// ---------------------------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------------------------

fn login_page(status: StatusCode, problem: Option<&str>) -> Response {
    let token = random_token();
    let mut response = bare_page(
        status,
        "Postrider console",
        html! {
            @if let Some(problem) = problem { p.error { (problem) } }
            form.login method="post" action="/ui/login" {
                input type="hidden" name="csrf" value=(token);
                label for="key" { "API key (scope read; admin for actions)" }
                input id="key" type="password" name="key" autocomplete="off" required autofocus;
                button type="submit" { "Log in" }
            }
        },
    );
    if let Ok(value) = HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, &token)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// `GET /ui/login`: the login form (loopback-only mode has none: straight to the console).
pub(super) async fn login_form(State(state): State<ApiState>) -> Response {
    if !state.has_keys() {
        return see_other("/ui/messages");
    }
    login_page(StatusCode::OK, None)
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    key: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /ui/login`: checks the form token against its cookie, then the key; opens a session.
pub(super) async fn login(
    State(state): State<ApiState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    if !state.has_keys() {
        return see_other("/ui/messages");
    }
    let Ok(Form(form)) = form else {
        return login_page(StatusCode::BAD_REQUEST, Some("The form could not be read."));
    };
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !tokens_match(&form.csrf, expected) {
        return login_page(
            StatusCode::FORBIDDEN,
            Some("The login form expired; please try again."),
        );
    }
    let Some(session) = state.console.login(&state, form.key.trim()) else {
        tracing::info!("console login refused");
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("That key is not valid, or it lacks the read scope."),
        );
    };
    let mut response = see_other("/ui/messages");
    for value in [
        set_cookie(SESSION_COOKIE, &session),
        clear_cookie(LOGIN_COOKIE),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// A form that carries only its CSRF token.
#[derive(Debug, Deserialize)]
pub(super) struct TokenForm {
    #[serde(default)]
    csrf: String,
    /// Where to go afterwards: `queue` for the queue page, else the message page.
    #[serde(default)]
    back: String,
}

/// `POST /ui/logout`.
pub(super) async fn logout(
    State(state): State<ApiState>,
    Reader(viewer): Reader,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let token = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if let Err(r) = check_csrf(&viewer, &token, &headers) {
        return r;
    }
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        state.console.logout(id);
    }
    let mut response = see_other("/ui/login");
    if let Ok(value) = HeaderValue::from_str(&clear_cookie(SESSION_COOKIE)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

// ---------------------------------------------------------------------------------------------
// Message list
// ---------------------------------------------------------------------------------------------

/// The search form of the message list; empty fields do not filter.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Search {
    #[serde(default)]
    recipient: String,
    #[serde(default)]
    sender: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    state: String,
    /// `YYYY-MM-DDTHH:MM` (an HTML `datetime-local`, read as UTC) or RFC 3339.
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    /// Cursor: list messages after this id.
    #[serde(default)]
    after: String,
}

/// A parsed [`Search`].
#[derive(Debug, Default)]
struct Filter {
    recipient: String,
    sender: String,
    subject: String,
    tag: String,
    state: Option<MessageState>,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    after: Option<MessageId>,
}

/// A form time: RFC 3339, or `datetime-local` with or without seconds, read as UTC.
fn parse_form_time(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    Timestamp::parse_rfc3339(s)
        .or_else(|| Timestamp::parse_rfc3339(&format!("{s}:00Z")))
        .or_else(|| Timestamp::parse_rfc3339(&format!("{s}Z")))
}

impl Search {
    fn filter(&self) -> Result<Filter, String> {
        let state = match self.state.trim() {
            "" => None,
            s => Some(
                MessageState::ALL
                    .into_iter()
                    .find(|st| st.as_str() == s)
                    .ok_or_else(|| format!("unknown state {s:?}"))?,
            ),
        };
        let time = |s: &str, what: &str| match s.trim() {
            "" => Ok(None),
            t => parse_form_time(t)
                .map(Some)
                .ok_or_else(|| format!("{what} is not a date and time")),
        };
        let after = match self.after.trim() {
            "" => None,
            a => Some(a.parse().map_err(|_| "bad page cursor".to_owned())?),
        };
        Ok(Filter {
            recipient: self.recipient.trim().to_lowercase(),
            sender: self.sender.trim().to_lowercase(),
            subject: self.subject.trim().to_lowercase(),
            tag: self.tag.trim().to_owned(),
            state,
            since: time(&self.since, "since")?,
            until: time(&self.until, "until")?,
            after,
        })
    }

    /// The query string of this search with another cursor.
    fn with_after(&self, after: MessageId) -> String {
        let pairs = [
            ("recipient", self.recipient.as_str()),
            ("sender", &self.sender),
            ("subject", &self.subject),
            ("tag", &self.tag),
            ("state", &self.state),
            ("since", &self.since),
            ("until", &self.until),
        ];
        let mut query: String = pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}&", url_encode(v)))
            .collect();
        query.push_str(&format!("after={after}"));
        query
    }
}

/// Percent-encodes everything but unreserved characters.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Whether `m` passes every filter but the subject (which needs the body).
fn matches_envelope(m: &QueuedMessage, f: &Filter, now: Timestamp) -> bool {
    (f.recipient.is_empty()
        || m.recipients.iter().any(|r| {
            r.request
                .address
                .to_string()
                .to_lowercase()
                .contains(&f.recipient)
        }))
        && (f.sender.is_empty() || m.sender.to_string().to_lowercase().contains(&f.sender))
        && (f.tag.is_empty() || m.tags.contains(&f.tag))
        && f.state.is_none_or(|s| m.state(now) == s)
        && f.since.is_none_or(|t| m.received_at >= t)
        && f.until.is_none_or(|t| m.received_at <= t)
}

/// The decoded `Subject:` of a stored message, reading its header section only.
fn subject_of(state: &ApiState, id: MessageId) -> Option<String> {
    let body = state.store.body(id).ok()??;
    let end = body
        .windows(4)
        .take(HEADER_BYTES)
        .position(|w| w == b"\r\n\r\n")
        .map_or(body.len().min(HEADER_BYTES), |p| p + 4);
    let message = mail_parser::MessageParser::default().parse_headers(&body[..end])?;
    message.subject().map(str::to_owned)
}

/// One row of the message list.
struct Row {
    message: QueuedMessage,
    subject: Option<String>,
}

/// Runs a search: up to [`LIST_PAGE`] matches, reading at most [`LIST_SCAN`] records; returns
/// the rows and the cursor of the next page when the scan stopped early.
fn search(
    state: &ApiState,
    f: &Filter,
    now: Timestamp,
) -> Result<(Vec<Row>, Option<MessageId>), ApiError> {
    let mut rows = Vec::new();
    let mut after = f.after;
    let mut scanned = 0;
    let mut subject_reads = 0;
    loop {
        let filter = ListFilter {
            state: f.state,
            recipient_domain: None,
            include_finished: true,
            after,
            limit: 1000,
            received_before: None,
        };
        let page = state
            .store
            .list(&filter, now)
            .map_err(|e| crate::routes::store_error(e, "console list"))?;
        for m in page.messages {
            after = Some(m.id);
            scanned += 1;
            if !matches_envelope(&m, f, now) {
                continue;
            }
            let subject = subject_of(state, m.id);
            if !f.subject.is_empty() {
                subject_reads += 1;
                let found = subject
                    .as_ref()
                    .is_some_and(|s| s.to_lowercase().contains(&f.subject));
                if !found {
                    if subject_reads >= SUBJECT_READS {
                        return Ok((rows, after));
                    }
                    continue;
                }
            }
            rows.push(Row {
                message: m,
                subject,
            });
            if rows.len() == LIST_PAGE {
                return Ok((rows, after));
            }
            if !f.subject.is_empty() && subject_reads >= SUBJECT_READS {
                return Ok((rows, after));
            }
        }
        match page.next_after {
            Some(next) if scanned < LIST_SCAN => after = Some(next),
            Some(next) => return Ok((rows, Some(next))),
            None => return Ok((rows, None)),
        }
    }
}

fn state_badge(state: &str) -> Markup {
    html! { span class={ "badge " (state) } { (state) } }
}

fn time_cell(t: Option<Timestamp>) -> Markup {
    html! {
        @match t {
            Some(t) => time datetime=(t.to_rfc3339()) { (short_time(t)) },
            None => span.muted { "—" },
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a time.
fn short_time(t: Timestamp) -> String {
    let s = t.to_rfc3339();
    s.get(..19).map_or(s.clone(), |p| p.replace('T', " "))
}

/// `GET /ui/messages`: search by recipient, sender, subject, tag, state and time.
pub(super) async fn messages(
    State(state): State<ApiState>,
    Reader(viewer): Reader,
    query: Result<Query<Search>, QueryRejection>,
) -> Response {
    let search_form = query.map(|Query(q)| q).unwrap_or_default();
    let now = crate::now();
    let outcome = search_form.filter().and_then(|f| {
        let state = state.clone();
        search(&state, &f, now).map_err(|e| e.body.message)
    });
    let body = html! {
        form.search method="get" action="/ui/messages" {
            label { "Recipient" input type="search" name="recipient" value=(search_form.recipient); }
            label { "Sender" input type="search" name="sender" value=(search_form.sender); }
            label { "Subject" input type="search" name="subject" value=(search_form.subject); }
            label { "Tag" input type="search" name="tag" value=(search_form.tag); }
            label { "State"
                select name="state" {
                    option value="" { "any" }
                    @for s in MessageState::ALL {
                        option value=(s.as_str()) selected[search_form.state == s.as_str()] { (s.as_str()) }
                    }
                }
            }
            label { "Since (UTC)" input type="datetime-local" name="since" value=(search_form.since); }
            label { "Until (UTC)" input type="datetime-local" name="until" value=(search_form.until); }
            button type="submit" { "Search" }
        }
        @match &outcome {
            Err(problem) => p.error { (problem) },
            Ok((rows, next)) => {
                @if rows.is_empty() {
                    p.muted { "No message matches." }
                } @else {
                    table.list id="messages" {
                        thead { tr { th { "Id" } th { "Received" } th { "State" } th { "From" } th { "To" } th { "Subject" } th { "Tags" } } }
                        tbody {
                            @for row in rows {
                                @let m = &row.message;
                                tr {
                                    td { a.id href={ "/ui/messages/" (m.id) } { (m.id) } }
                                    td { (time_cell(Some(m.received_at))) }
                                    td { (state_badge(m.state(now).as_str())) }
                                    td { (m.sender.to_string()) }
                                    td {
                                        @if let Some(first) = m.recipients.first() { (first.request.address.to_string()) }
                                        @if m.recipients.len() > 1 { span.muted { " +" (m.recipients.len() - 1) } }
                                    }
                                    td.subject { (row.subject.as_deref().unwrap_or("")) }
                                    td { @for t in &m.tags { span.tag { (t) } " " } }
                                }
                            }
                        }
                    }
                }
                @if let Some(next) = next {
                    p { a.next href={ "/ui/messages?" (search_form.with_after(*next)) } { "Next page →" } }
                }
            }
        }
    };
    page(&viewer, "Messages", "messages", body)
}

// ---------------------------------------------------------------------------------------------
// Message page
// ---------------------------------------------------------------------------------------------

fn path_id(path: Result<Path<String>, PathRejection>) -> Result<MessageId, Response> {
    crate::routes::path_id(path).map_err(|e| error_page(&e))
}

/// The action buttons that make sense for a message in `state`.
fn action_buttons(viewer: &Viewer, id: MessageId, state: MessageState, back: &str) -> Markup {
    let pending = state.is_pending();
    let actions: [(&str, &str, bool); 5] = [
        ("retry", "Retry now", pending && state != MessageState::Held),
        ("hold", "Hold", pending && state != MessageState::Held),
        ("release", "Release", state == MessageState::Held),
        ("bounce", "Bounce", pending),
        ("delete", "Delete", true),
    ];
    html! {
        @if viewer.can(Scope::Admin) {
            div.actions {
                @for (action, label, shown) in actions {
                    @if shown {
                        form.inline method="post" action={ "/ui/messages/" (id) "/" (action) } {
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            input type="hidden" name="back" value=(back);
                            button type="submit" class={ "action " (action) }
                                data-confirm=[(matches!(action, "bounce" | "delete")).then(|| format!("{label} message {id}?"))]
                                { (label) }
                        }
                    }
                }
            }
        }
    }
}

fn mailbox_list(list: &[crate::content::MailboxView]) -> Markup {
    html! {
        @for (i, m) in list.iter().enumerate() {
            @if i > 0 { ", " }
            @match (&m.name, &m.email) {
                (Some(name), Some(email)) => { (name) " <" (email) ">" },
                (None, Some(email)) => { (email) },
                (Some(name), None) => { (name) },
                (None, None) => {},
            }
        }
    }
}

fn content_section(id: MessageId, content: &ContentView, raw: &[u8]) -> Markup {
    let shown = &raw[..raw.len().min(RAW_SHOWN)];
    html! {
        section.content {
            h2 { "Content" }
            dl.summary {
                dt { "Subject" } dd id="subject" { (content.subject.as_deref().unwrap_or("")) }
                dt { "From" } dd { (mailbox_list(&content.from)) }
                dt { "To" } dd { (mailbox_list(&content.to)) }
                @if !content.cc.is_empty() { dt { "Cc" } dd { (mailbox_list(&content.cc)) } }
                dt { "Date" } dd { (content.date.as_deref().unwrap_or("")) }
                dt { "Message-ID" } dd { (content.message_id.as_deref().unwrap_or("")) }
            }
            @if content.html.is_some() {
                h3 { "HTML preview" }
                iframe id="preview" sandbox="" referrerpolicy="no-referrer"
                    src={ "/ui/messages/" (id) "/preview" } title="HTML preview" {}
            }
            @if let Some(text) = &content.text {
                h3 { "Text" }
                pre.text id="text" { (text) }
            }
            @if !content.attachments.is_empty() {
                h3 { "Attachments" }
                ul.attachments {
                    @for a in &content.attachments {
                        li {
                            a href={ "/ui/messages/" (id) "/attachments/" (a.index) } {
                                (a.name.as_deref().unwrap_or("(unnamed)"))
                            }
                            span.muted { " " (a.content_type) ", " (a.size) " octets" }
                        }
                    }
                }
            }
            details {
                summary { "Headers (" (content.headers.len()) ")" }
                table.headers {
                    @for h in &content.headers { tr { th { (h.name) } td { (h.value) } } }
                }
            }
            details {
                summary { "Raw source (" (raw.len()) " octets)" }
                p { a href={ "/ui/messages/" (id) "/raw" } { "Download .eml" } }
                pre.raw { (String::from_utf8_lossy(shown)) }
                @if shown.len() < raw.len() { p.muted { "Shown up to " (RAW_SHOWN) " octets." } }
            }
        }
    }
}

fn done_notice(done: &str) -> Option<&'static str> {
    match done {
        "retry" => Some("Retry requested: the message is due now."),
        "hold" => Some("The message is on hold."),
        "release" => Some("The message was released and is due now."),
        "bounce" => Some("The pending recipients were bounced."),
        "delete" => Some("The message was deleted."),
        "added" => Some("The address is suppressed."),
        "removed" => Some("The address was removed from the suppression list."),
        _ => None,
    }
}

/// `?done=` after an action.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Done {
    #[serde(default)]
    done: String,
    #[serde(default)]
    after: String,
    #[serde(default)]
    state: String,
}

/// `GET /ui/messages/{id}`: status, recipients, actions and content.
pub(super) async fn message(
    State(state): State<ApiState>,
    Reader(viewer): Reader,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<Done>, QueryRejection>,
) -> Response {
    let id = match path_id(path) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let m = match crate::routes::load(&state, id) {
        Ok(m) => m,
        Err(e) => return error_page(&e),
    };
    let done = query.map(|Query(d)| d.done).unwrap_or_default();
    let now = crate::now();
    let message_state = m.state(now);
    let body = stored_body(&state, id);
    let content = body.as_ref().map_err(Clone::clone).and_then(|b| {
        parse_bounded(b, state.settings.max_message_size).map(|parsed| content_view(id, &parsed))
    });
    let markup = html! {
        @if let Some(notice) = done_notice(&done) { p.notice id="notice" { (notice) } }
        dl.summary {
            dt { "Id" } dd.id { (id) }
            dt { "State" } dd id="state" { (state_badge(message_state.as_str())) }
            dt { "Envelope from" } dd { (m.sender.to_string()) }
            dt { "Source" } dd { (m.source.as_str()) }
            dt { "Received" } dd { (time_cell(Some(m.received_at))) }
            dt { "Attempts" } dd id="attempts" { (m.attempts) }
            dt { "Next attempt" } dd { (time_cell(m.next_attempt_at)) }
            dt { "Finished" } dd { (time_cell(m.finished_at)) }
            dt { "Size" } dd { (m.size) " octets" }
            @if !m.tags.is_empty() { dt { "Tags" } dd { @for t in &m.tags { span.tag { (t) } " " } } }
            @for (k, v) in &m.metadata { dt { "Metadata " (k) } dd { (v) } }
        }
        (action_buttons(&viewer, id, message_state, "message"))
        h2 { "Recipients" }
        table.list id="recipients" {
            thead { tr { th { "Address" } th { "State" } th { "Attempts" } th { "Last reply" } th { "MX" } th { "Last attempt" } th { "TLS" } } }
            tbody {
                @for r in &m.recipients {
                    tr {
                        td { (r.request.address.to_string()) }
                        td.rstate { (state_badge(r.state.as_str())) }
                        td { (r.attempts) }
                        td.reply {
                            @if let Some(reply) = &r.last_reply {
                                (reply.code)
                                @if let Some(e) = reply.enhanced { " " (e.to_string()) }
                                " " (reply.text)
                            }
                        }
                        td { (r.mx_host.as_deref().unwrap_or("")) }
                        td { (time_cell(r.last_attempt_at)) }
                        td {
                            @if let Some(tls) = &r.tls {
                                @if tls.encrypted {
                                    (tls.version.as_deref().unwrap_or("TLS"))
                                    @if tls.verified { " ✓" }
                                } @else { "plain" }
                            }
                        }
                    }
                }
            }
        }
        @match (&content, &body) {
            (Ok(content), Ok(raw)) => (content_section(id, content, raw)),
            (Err(e), _) => p.muted { (e.body.message) },
            (_, Err(e)) => p.muted { (e.body.message) },
        }
    };
    page(&viewer, &format!("Message {id}"), "messages", markup)
}

/// `GET /ui/messages/{id}/preview`: the HTML body alone, for the sandboxed frame.
pub(super) async fn preview(
    State(state): State<ApiState>,
    _viewer: Reader,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match path_id(path) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let html = stored_body(&state, id).and_then(|body| {
        parse_bounded(&body, state.settings.max_message_size)
            .map(|m| m.body_html(0).map(|h| h.into_owned()).unwrap_or_default())
    });
    match html {
        Ok(html) => {
            let mut response = Html(html).into_response();
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(PREVIEW_CSP),
            );
            h.insert(
                header::X_FRAME_OPTIONS,
                HeaderValue::from_static("SAMEORIGIN"),
            );
            harden(response)
        }
        Err(e) => error_page(&e),
    }
}

/// `GET /ui/messages/{id}/raw`: the stored message as a download.
pub(super) async fn raw(
    State(state): State<ApiState>,
    _viewer: Reader,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match path_id(path) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match stored_body(&state, id) {
        Ok(body) => harden(download(body, "message/rfc822", &format!("{id}.eml"))),
        Err(e) => error_page(&e),
    }
}

/// `GET /ui/messages/{id}/attachments/{n}`: one attachment as a download.
pub(super) async fn attachment(
    State(state): State<ApiState>,
    _viewer: Reader,
    path: Result<Path<(String, usize)>, PathRejection>,
) -> Response {
    let Ok(Path((id, n))) = path else {
        return error_page(&ApiError::invalid("invalid_path", "", "no such attachment"));
    };
    let Ok(id) = id.parse::<MessageId>() else {
        return error_page(&ApiError::invalid(
            "invalid_id",
            "id",
            "a message id is 16 hexadecimal digits",
        ));
    };
    let found = stored_body(&state, id).and_then(|body| {
        let m = parse_bounded(&body, state.settings.max_message_size)?;
        attachment_of(&m, id, n)
    });
    match found {
        Ok((bytes, content_type, name)) => harden(download(bytes, &content_type, &name)),
        Err(e) => error_page(&e),
    }
}

/// Runs one operator action on a message.
async fn run_action(state: &ApiState, id: MessageId, action: &str) -> Result<(), ApiError> {
    let store_error = |e| crate::routes::store_error(e, "console action");
    match action {
        "retry" => {
            state
                .store
                .retry_now(id, crate::now())
                .await
                .map_err(store_error)?;
        }
        "hold" => {
            state.store.hold(id).await.map_err(store_error)?;
        }
        "release" => {
            state
                .store
                .release(id, crate::now())
                .await
                .map_err(store_error)?;
        }
        "bounce" => {
            crate::queue::bounce_now(state, id).await?;
        }
        "delete" => {
            state.store.delete(id).await.map_err(store_error)?;
        }
        _ => return Err(ApiError::not_found("no such action")),
    }
    Ok(())
}

/// `POST /ui/messages/{id}/{action}` (`retry`, `hold`, `release`, `bounce`, `delete`).
pub(super) async fn action(
    State(state): State<ApiState>,
    Admin(viewer): Admin,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let form = form.map(|Form(f)| f).unwrap_or(TokenForm {
        csrf: String::new(),
        back: String::new(),
    });
    if let Err(r) = check_csrf(&viewer, &form.csrf, &headers) {
        return r;
    }
    let Ok(Path((id, action))) = path else {
        return error_page(&ApiError::not_found("no such action"));
    };
    let Ok(id) = id.parse::<MessageId>() else {
        return error_page(&ApiError::invalid(
            "invalid_id",
            "id",
            "a message id is 16 hexadecimal digits",
        ));
    };
    if let Err(e) = run_action(&state, id, &action).await {
        return error_page(&e);
    }
    tracing::info!(%id, action, viewer = %viewer.name, "console action");
    if form.back == "queue" || action == "delete" {
        see_other(&format!("/ui/queue?done={action}"))
    } else {
        see_other(&format!("/ui/messages/{id}?done={action}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Queue
// ---------------------------------------------------------------------------------------------

/// `GET /ui/queue`: pending messages with their actions, and counts by state.
pub(super) async fn queue(
    State(state): State<ApiState>,
    Admin(viewer): Admin,
    query: Result<Query<Done>, QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let now = crate::now();
    let wanted = MessageState::ALL
        .into_iter()
        .find(|s| s.as_str() == q.state && s.is_pending());
    let filter = ListFilter {
        state: wanted,
        after: q.after.parse().ok(),
        limit: 100,
        ..ListFilter::default()
    };
    let page_result = state.store.list(&filter, now);
    let pending = state.store.pending_count();
    let markup = html! {
        @if let Some(notice) = done_notice(&q.done) { p.notice id="notice" { (notice) } }
        p { (pending) " pending message(s)." }
        form.search method="get" action="/ui/queue" {
            label { "State"
                select name="state" {
                    option value="" { "any pending" }
                    @for s in MessageState::ALL.into_iter().filter(|s| s.is_pending()) {
                        option value=(s.as_str()) selected[q.state == s.as_str()] { (s.as_str()) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        @match page_result {
            Err(e) => p.error { (crate::routes::store_error(e, "console queue").body.message) },
            Ok(page) => {
                @if page.messages.is_empty() { p.muted { "The queue is empty." } }
                @else {
                    table.list id="queue" {
                        thead { tr { th { "Id" } th { "State" } th { "From" } th { "To" } th { "Attempts" } th { "Next attempt" } th { "Last reply" } th { "Actions" } } }
                        tbody {
                            @for m in &page.messages {
                                @let st = m.state(now);
                                tr {
                                    td { a.id href={ "/ui/messages/" (m.id) } { (m.id) } }
                                    td { (state_badge(st.as_str())) }
                                    td { (m.sender.to_string()) }
                                    td {
                                        @if let Some(first) = m.recipients.first() { (first.request.address.to_string()) }
                                        @if m.recipients.len() > 1 { span.muted { " +" (m.recipients.len() - 1) } }
                                    }
                                    td { (m.attempts) }
                                    td { (time_cell(m.next_attempt_at)) }
                                    td.reply {
                                        @if let Some(reply) = m.recipients.iter().filter_map(|r| r.last_reply.as_ref()).next_back() {
                                            (reply.code) " " (reply.text)
                                        }
                                    }
                                    td { (action_buttons(&viewer, m.id, st, "queue")) }
                                }
                            }
                        }
                    }
                    @if let Some(next) = page.next_after {
                        p { a.next href={ "/ui/queue?state=" (url_encode(&q.state)) "&after=" (next) } { "Next page →" } }
                    }
                }
            }
        }
    };
    page(&viewer, "Queue", "queue", markup)
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// One event as the tail shows it (server-rendered rows and the polling feed alike).
#[derive(Debug, serde::Serialize)]
struct EventRow {
    seq: u64,
    at: String,
    kind: &'static str,
    message: String,
    recipient: String,
    reply: String,
}

impl From<&postrider_store::Event> for EventRow {
    fn from(e: &postrider_store::Event) -> Self {
        EventRow {
            seq: e.seq,
            at: short_time(e.at),
            kind: e.kind.as_str(),
            message: e.message_id.to_string(),
            recipient: e.recipient.clone().unwrap_or_default(),
            reply: e
                .reply
                .as_ref()
                .map(|r| format!("{} {}", r.code, r.text))
                .unwrap_or_default(),
        }
    }
}

/// The newest events after `after` (or the last [`EVENTS_SHOWN`] when `after` is `None`).
fn recent_events(state: &ApiState, after: Option<u64>) -> Result<Vec<EventRow>, ApiError> {
    let store_error = |e| crate::routes::store_error(e, "console events");
    let after = match after {
        Some(a) => a,
        None => state
            .store
            .last_event_seq()
            .map_err(store_error)?
            .saturating_sub(EVENTS_SHOWN as u64),
    };
    let events = state
        .store
        .events_after(after, EVENTS_SHOWN)
        .map_err(store_error)?;
    Ok(events.iter().map(EventRow::from).collect())
}

/// `GET /ui/events`: the latest events; the page script polls the feed for new ones.
pub(super) async fn events(State(state): State<ApiState>, Reader(viewer): Reader) -> Response {
    let rows = recent_events(&state, None);
    let markup = html! {
        @match rows {
            Err(e) => p.error { (e.body.message) },
            Ok(rows) => {
                @let cursor = rows.last().map_or_else(
                    || state.store.last_event_seq().unwrap_or(0),
                    |r| r.seq,
                );
                p.muted { "New events appear as they happen." }
                table.list id="events" data-feed="/ui/events/feed" data-cursor=(cursor) {
                    thead { tr { th { "#" } th { "Time" } th { "Event" } th { "Message" } th { "Recipient" } th { "Reply" } } }
                    tbody {
                        @for r in rows.iter().rev() {
                            tr {
                                td { (r.seq) }
                                td { (r.at) }
                                td { (state_badge(r.kind)) }
                                td { a.id href={ "/ui/messages/" (r.message) } { (r.message) } }
                                td { (r.recipient) }
                                td.reply { (r.reply) }
                            }
                        }
                    }
                }
            }
        }
    };
    page(&viewer, "Events", "events", markup)
}

/// Query of the event feed.
#[derive(Debug, Deserialize)]
pub(super) struct FeedQuery {
    after: u64,
}

/// `GET /ui/events/feed?after=`: events after the cursor, as JSON for the page script.
pub(super) async fn events_feed(
    State(state): State<ApiState>,
    _viewer: Reader,
    query: Result<Query<FeedQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return harden(
            ApiError::invalid(
                "invalid_query",
                "after",
                "after is an event sequence number",
            )
            .into_response(),
        );
    };
    match recent_events(&state, Some(q.after)) {
        Ok(rows) => {
            let cursor = rows.last().map_or(q.after, |r| r.seq);
            harden(
                axum::Json(serde_json::json!({ "events": rows, "next_cursor": cursor }))
                    .into_response(),
            )
        }
        Err(e) => harden(e.into_response()),
    }
}

// ---------------------------------------------------------------------------------------------
// Suppressions
// ---------------------------------------------------------------------------------------------

/// Query of the suppression page.
#[derive(Debug, Default, Deserialize)]
pub(super) struct SuppressionQuery {
    #[serde(default)]
    after: String,
    #[serde(default)]
    done: String,
}

/// `GET /ui/suppressions`: the list, with add and remove forms for admins.
pub(super) async fn suppressions(
    State(state): State<ApiState>,
    Reader(viewer): Reader,
    query: Result<Query<SuppressionQuery>, QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let after = (!q.after.is_empty()).then_some(q.after.as_str());
    let listed = state.store.list_suppressions(after, SUPPRESSIONS_PAGE);
    let admin = viewer.can(Scope::Admin);
    let markup = html! {
        @if let Some(notice) = done_notice(&q.done) { p.notice id="notice" { (notice) } }
        @if admin {
            form.search id="add-suppression" method="post" action="/ui/suppressions" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                label { "Address" input type="email" name="address" required; }
                button type="submit" { "Suppress" }
            }
        }
        @match listed {
            Err(e) => p.error { (crate::routes::store_error(e, "console suppressions").body.message) },
            Ok(list) => {
                @if list.is_empty() { p.muted { "No address is suppressed." } }
                @else {
                    table.list id="suppressions" {
                        thead { tr { th { "Address" } th { "Senders" } th { "Reason" } th { "Since" } th { "Message" } th { "Reply" } @if admin { th {} } } }
                        tbody {
                            @for s in &list {
                                tr {
                                    td.address { (s.address) }
                                    td.scope { @if let Some(domain) = &s.scope { "from " (domain) } @else { span.muted { "all" } } }
                                    td { (s.reason.as_str()) }
                                    td { (time_cell(Some(s.created_at))) }
                                    td { @if let Some(id) = s.source_message { a.id href={ "/ui/messages/" (id) } { (id) } } }
                                    td.reply {
                                        @if let Some(r) = &s.reply { (r.code) " " (r.text) }
                                        @else if let Some(report) = &s.source_report {
                                            "report " (report.status)
                                            @if let Some(d) = &report.diagnostic { ": " (d) }
                                        }
                                    }
                                    @if admin {
                                        td {
                                            form.inline method="post" action="/ui/suppressions/remove" {
                                                input type="hidden" name="csrf" value=(viewer.csrf);
                                                input type="hidden" name="address" value=(s.address);
                                                @if let Some(domain) = &s.scope { input type="hidden" name="scope" value=(domain); }
                                                button type="submit" class="action delete" { "Remove" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if list.len() == SUPPRESSIONS_PAGE {
                        @if let Some(last) = list.last() {
                            p { a.next href={ "/ui/suppressions?after=" (url_encode(&last.key())) } { "Next page →" } }
                        }
                    }
                }
            }
        }
    };
    page(&viewer, "Suppressions", "suppressions", markup)
}

/// The add and remove forms of the suppression page.
#[derive(Debug, Default, Deserialize)]
pub(super) struct AddressForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    address: String,
    /// The sender domain of a scoped entry (remove form only); empty: the global entry.
    #[serde(default)]
    scope: String,
}

/// Admits an admin and checks the form token of a suppression form.
fn admit_suppression_form(
    viewer: Viewer,
    headers: &HeaderMap,
    form: Result<Form<AddressForm>, FormRejection>,
) -> Result<(Viewer, Address, Option<String>), Response> {
    let form = form.map(|Form(f)| f).unwrap_or_default();
    let scope = Some(form.scope.trim().to_owned()).filter(|s| !s.is_empty());
    check_csrf(&viewer, &form.csrf, headers)?;
    let address = Address::parse(form.address.trim()).map_err(|e| {
        error_page(&ApiError::invalid(
            "invalid_address",
            "address",
            format!("invalid address: {e}"),
        ))
    })?;
    Ok((viewer, address, scope))
}

/// `POST /ui/suppressions`: suppress an address (reason `manual`).
pub(super) async fn add_suppression(
    State(state): State<ApiState>,
    Admin(viewer): Admin,
    headers: HeaderMap,
    form: Result<Form<AddressForm>, FormRejection>,
) -> Response {
    let (viewer, address, _) = match admit_suppression_form(viewer, &headers, form) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let entry = Suppression {
        address: address.to_string(),
        reason: SuppressionReason::Manual,
        created_at: crate::now(),
        source_message: None,
        reply: None,
        scope: None,
        source_report: None,
    };
    if let Err(e) = state.store.add_suppression(entry).await {
        return error_page(&crate::routes::store_error(e, "console add suppression"));
    }
    tracing::info!(%address, viewer = %viewer.name, "console suppression added");
    see_other("/ui/suppressions?done=added")
}

/// `POST /ui/suppressions/remove`: remove an entry from the list (global, or for the sender
/// domain of its `scope`).
pub(super) async fn remove_suppression(
    State(state): State<ApiState>,
    Admin(viewer): Admin,
    headers: HeaderMap,
    form: Result<Form<AddressForm>, FormRejection>,
) -> Response {
    let (viewer, address, scope) = match admit_suppression_form(viewer, &headers, form) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(e) = state
        .store
        .remove_suppression(&address.to_string(), scope.as_deref())
        .await
    {
        return error_page(&crate::routes::store_error(e, "console remove suppression"));
    }
    tracing::info!(%address, scope = scope.as_deref().unwrap_or("all"), viewer = %viewer.name, "console suppression removed");
    see_other("/ui/suppressions?done=removed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_times() {
        let t = parse_form_time("2026-12-03T12:30").unwrap();
        assert_eq!(t.to_rfc3339().get(..19), Some("2026-12-03T12:30:00"));
        assert!(parse_form_time("2026-12-03T12:30:15").is_some());
        assert!(parse_form_time("2026-12-03T12:30:15Z").is_some());
        assert!(parse_form_time("yesterday").is_none());
    }

    #[test]
    fn search_forms() {
        let s = Search {
            recipient: " Ann@Dest.test ".into(),
            state: "deferred".into(),
            since: "2026-12-03T00:00".into(),
            ..Search::default()
        };
        let f = s.filter().unwrap();
        assert_eq!(f.recipient, "ann@dest.test");
        assert_eq!(f.state, Some(MessageState::Deferred));
        assert!(f.since.is_some());
        let bad = Search {
            state: "lost".into(),
            ..Search::default()
        };
        assert!(bad.filter().is_err());
        let q = Search {
            subject: "a&b c".into(),
            ..Search::default()
        }
        .with_after(MessageId::from_u64(255));
        assert_eq!(q, "subject=a%26b%20c&after=00000000000000ff");
    }

    #[test]
    fn markup_is_escaped() {
        let viewer = Viewer {
            name: "<script>".into(),
            scopes: vec![Scope::Read],
            csrf: "t".into(),
            keyed: false,
            set_cookie: None,
        };
        let r = page(
            &viewer,
            "x",
            "messages",
            html! { p { "<img src=x onerror=alert(1)>" } },
        );
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("script-src 'self'"));
        let body = futures_body(r);
        assert!(!body.contains("<script>"));
        assert!(body.contains("&lt;img src=x onerror=alert(1)&gt;"));
    }

    fn futures_body(r: Response) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt
            .block_on(axum::body::to_bytes(r.into_body(), usize::MAX))
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }
}
