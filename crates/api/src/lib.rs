//! REST API of the Postrider relay (axum 0.8).
//!
//! # Brief overview
//! - [`router`] builds the whole API from an [`ApiState`] (store, metrics, [`ApiSettings`]).
//!   It needs no socket, so tests drive it with `tower::ServiceExt::oneshot`.
//! - Submission: `POST /v1/messages` (structured JSON rendered to MIME, or a raw RFC 5322
//!   message with an explicit envelope) and `POST /v1/messages/batch`. A `202` is sent only
//!   after the store made the message durable.
//! - Status: `GET /v1/messages/{id}`; content: `GET /v1/messages/{id}/raw`, `/content` (parsed
//!   with `mail-parser`, refused over `max_message_size`) and `/attachments/{n}`; queue administration under `/v1/queue`;
//!   `GET /healthz` (liveness), `GET /readyz` (readiness: 503 while the queue refuses writes)
//!   and `GET /metrics` (Prometheus text).
//! - `Idempotency-Key` on `POST /v1/messages` (stored atomically with the message);
//!   `GET /v1/events` (event log with a durable cursor); the suppression list under
//!   `/v1/suppressions`; `GET /openapi.json`, generated from the route table in `openapi.rs`
//!   (checked in as `crates/api/openapi.json`).
//! - Security: bearer API keys configured as SHA-256 hashes ([`ApiKey`], [`generate_api_key`]),
//!   with [`Scope`]s `send`, `read` and `admin`; without keys only loopback clients are served.
//!   Optional per-key [`RateLimit`]. `/metrics` and `/openapi.json` are open unless
//!   [`ApiSettings::metrics_auth`]. Web pages cannot drive the API through a browser: bodies
//!   must be declared JSON, JSON objects must not repeat a key, and without keys only loopback
//!   host names and same-site origins are served (`browser.rs`).
//! - `GET/POST /unsubscribe/{token}` (`unsubscribe.rs`): RFC 8058 one-click unsubscribe, open
//!   (the signed token is the credential), with an HTML confirm page for people.
//! - The web console under `/ui/` (`console`): server-rendered pages over the same store and
//!   keys, with server-side sessions and CSRF tokens.
//! - Every error is `{"error": {"code", "message", "field"?}}` ([`ErrorBody`]), except on the
//!   Postmark- and Resend-compatible endpoints (`POST /email`, `/email/batch`, `POST /emails`,
//!   `/emails/batch`, `GET /emails/{id}`), which answer in those services' shapes so their SDKs
//!   work unchanged (`compat/`). Postmark clients may send the key as `X-Postmark-Server-Token`.
//!
//! The binary serves the router with connect info so the loopback check and the `Received`
//! header see the client address:
//! `axum::serve(listener, router(state).into_make_service_with_connect_info::<SocketAddr>())`.

mod auth;
mod browser;
mod compat;
mod compose;
mod console;
mod content;
mod error;
mod events;
mod extract;
mod openapi;
mod queue;
mod routes;
mod shared_idempotency;
mod suppressions;
mod tls_reports;
mod trust_routes;
mod unsubscribe;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;
use postrider_metrics::Metrics;
use postrider_store::Store;

pub use auth::{ApiKey, KeyConfigError, RateLimit, Scope, generate_api_key, hash_api_key};
pub use compose::{
    MAX_ATTACHMENTS, MAX_EXTRA_HEADERS, MAX_HEADER_VALUE, MAX_LINE, MAX_METADATA,
    MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS, MAX_TAG_CHARS, MAX_TAGS,
};
pub use error::{ApiError, ErrorBody};
pub use tls_reports::{TlsReportSource, TlsReportTrigger};

/// Limits and identity of the HTTP API. `Default` gives the documented values.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSettings {
    /// This relay's host name, used in `Message-ID` (`<…@hostname>`), `Received` and bounces.
    /// Default `"localhost"`; the binary sets the configured name.
    pub hostname: String,
    /// Largest request body in octets (default 35 MiB: a 25 MiB message plus base64 overhead).
    pub max_body_bytes: usize,
    /// Most recipients (to + cc + bcc, or envelope.to) per message (default 1000).
    pub max_recipients: usize,
    /// Largest rendered message in octets, headers included (default 25 MiB).
    pub max_message_size: usize,
    /// Most messages per batch request (default 500).
    pub max_batch: usize,
    /// How far ahead `send_at` may be (default 72 h).
    pub max_schedule_ahead: Duration,
    /// Accepted API keys. Empty (the default) means loopback-only mode: no authentication, and
    /// clients that are not on a loopback address get 403.
    pub api_keys: Vec<ApiKey>,
    /// Per-key request rate limit; `None` (the default) means unlimited.
    pub rate_limit: Option<RateLimit>,
    /// How long an `Idempotency-Key` of `POST /v1/messages` is remembered (default 24 h).
    /// The binary should also call `Store::purge_idempotency(now - idempotency_ttl)`
    /// periodically.
    pub idempotency_ttl: Duration,
    /// Whether `/metrics` and `/openapi.json` need a key with the `read` scope (default `false`:
    /// they are open, so a scraper needs no key). `/healthz` and `/readyz` are always open.
    pub metrics_auth: bool,
    /// Whether every submitted message is captured instead of sent (`delivery.mode =
    /// "capture"`): each is marked sandbox, as those of a sandbox [`ApiKey`] always are.
    pub capture_all: bool,
    /// One-click unsubscribe links (`[unsubscribe]`): checks the tokens of
    /// `/unsubscribe/{token}`; `None` (the default) refuses messages that ask for links and
    /// answers every token with 404.
    pub unsubscribe: Option<postrider_core::unsubscribe::UnsubscribeLinks>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            hostname: "localhost".to_owned(),
            max_body_bytes: 35 * 1024 * 1024,
            max_recipients: 1000,
            max_message_size: 25 * 1024 * 1024,
            max_batch: 500,
            max_schedule_ahead: Duration::from_secs(72 * 3600),
            api_keys: Vec::new(),
            rate_limit: None,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            metrics_auth: false,
            capture_all: false,
            unsubscribe: None,
        }
    }
}

/// Why [`ApiSettings`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// An API key entry is unusable.
    #[error(transparent)]
    Key(#[from] KeyConfigError),
    /// The host name is not a valid domain (it is written into message headers).
    #[error("api hostname {0:?} is not a valid host name")]
    Hostname(String),
    /// A limit is zero, which would refuse every request.
    #[error("api setting {0} must be greater than zero")]
    ZeroLimit(&'static str),
}

impl ApiSettings {
    /// Checks the host name, the limits and the keys (hashes are 64 hex digits, names unique,
    /// scopes present). Call at start-up so a typo fails loudly instead of locking clients out
    /// or writing a malformed header.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if postrider_core::Domain::parse(&self.hostname).is_err() {
            return Err(SettingsError::Hostname(self.hostname.clone()));
        }
        for (name, value) in [
            ("max_body_bytes", self.max_body_bytes),
            ("max_recipients", self.max_recipients),
            ("max_message_size", self.max_message_size),
            ("max_batch", self.max_batch),
        ] {
            if value == 0 {
                return Err(SettingsError::ZeroLimit(name));
            }
        }
        auth::validate_keys(&self.api_keys)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_validation() {
        assert_eq!(ApiSettings::default().validate(), Ok(()));
        let bad_host = ApiSettings {
            hostname: "relay.test\r\nX: y".into(),
            ..ApiSettings::default()
        };
        assert!(matches!(
            bad_host.validate(),
            Err(SettingsError::Hostname(_))
        ));
        let zero = ApiSettings {
            max_batch: 0,
            ..ApiSettings::default()
        };
        assert_eq!(zero.validate(), Err(SettingsError::ZeroLimit("max_batch")));
        let key = ApiKey {
            name: "k".into(),
            key_hash: "nothex".into(),
            scopes: vec![Scope::Send],
            sandbox: false,
            unsubscribe: false,
        };
        let bad_key = ApiSettings {
            api_keys: vec![key],
            ..ApiSettings::default()
        };
        assert!(matches!(bad_key.validate(), Err(SettingsError::Key(_))));
    }
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// The durable queue.
    pub store: Store,
    /// Shared metrics (`messages_accepted`, `http_requests`, …).
    pub metrics: Metrics,
    /// Limits and keys.
    pub settings: Arc<ApiSettings>,
    access: Arc<arc_swap::ArcSwap<auth::Access>>,
    console: Arc<console::session::Sessions>,
    limiter: Arc<auth::RateLimiter>,
    /// Domain checks and address verification (`/v1/domains/{domain}/check`, `/v1/verify`);
    /// `None` (the default) answers them with 501. Set with [`ApiState::with_trust`].
    pub trust: Option<Arc<postrider_trust::TrustServices>>,
    /// Destinations the delivery side currently suspends, for `GET /v1/queue/stats`; `None`
    /// reports an empty list. Set with [`ApiState::with_suspended`].
    pub suspended: Option<SuspendedSource>,
    /// Idempotency keys shared with the other nodes of a cluster, checked before the local
    /// ones; `None` (the default, a single node) uses the local keys only. Set with
    /// [`ApiState::with_idempotency_ledger`].
    pub idempotency_ledger: Option<Arc<dyn postrider_core::shared::IdempotencyLedger>>,
    /// Sends a day's TLS reports on request (`POST /v1/tls-reports/send`); `None` (the
    /// default, reports off) answers 501. Set with [`ApiState::with_tls_reports`].
    pub tls_reports: Option<TlsReportSource>,
}

/// One destination the delivery side's circuit breaker has suspended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SuspendedView {
    /// MX, route or relay host.
    pub host: String,
    /// When attempts resume (RFC 3339).
    pub until: String,
    /// The failure that opened the breaker.
    pub reason: String,
    /// Consecutive failures.
    pub failures: u32,
}

/// Supplies the currently suspended destinations (kept as a closure so the API does not depend
/// on the delivery crate).
pub type SuspendedProvider = Arc<dyn Fn() -> Vec<SuspendedView> + Send + Sync>;

/// A [`SuspendedProvider`] held by the API state.
#[derive(Clone)]
pub struct SuspendedSource(pub SuspendedProvider);

impl std::fmt::Debug for SuspendedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SuspendedSource(..)")
    }
}

impl ApiState {
    /// Builds the state; key hashes are decoded once here (malformed ones never match).
    pub fn new(store: Store, metrics: Metrics, settings: ApiSettings) -> Self {
        ApiState {
            access: Arc::new(arc_swap::ArcSwap::from_pointee(auth::Access::new(
                &settings.api_keys,
                settings.rate_limit,
            ))),
            console: Arc::new(console::session::Sessions::default()),
            limiter: Arc::new(auth::RateLimiter::default()),
            store,
            metrics,
            settings: Arc::new(settings),
            trust: None,
            suspended: None,
            idempotency_ledger: None,
            tls_reports: None,
        }
    }

    /// Replaces the API keys and the per-key rate limit of a running API (configuration
    /// reload); the next request is checked against them. Refused, with nothing changed, when
    /// a key is unusable (see [`ApiSettings::validate`]). `settings.api_keys` and
    /// `settings.rate_limit` keep the values the state was built with.
    pub fn replace_keys(
        &self,
        keys: &[ApiKey],
        rate_limit: Option<RateLimit>,
    ) -> Result<(), SettingsError> {
        auth::validate_keys(keys)?;
        self.access
            .store(Arc::new(auth::Access::new(keys, rate_limit)));
        Ok(())
    }

    /// Whether API keys are configured (otherwise only loopback clients are served).
    pub(crate) fn has_keys(&self) -> bool {
        self.access.load().has_keys()
    }

    /// Enables the trust endpoints with these services.
    pub fn with_trust(mut self, trust: Arc<postrider_trust::TrustServices>) -> Self {
        self.trust = Some(trust);
        self
    }

    /// Shares idempotency keys with the other nodes of a cluster.
    pub fn with_idempotency_ledger(
        mut self,
        ledger: Arc<dyn postrider_core::shared::IdempotencyLedger>,
    ) -> Self {
        self.idempotency_ledger = Some(ledger);
        self
    }

    /// Enables `POST /v1/tls-reports/send` with this trigger.
    pub fn with_tls_reports(mut self, trigger: TlsReportTrigger) -> Self {
        self.tls_reports = Some(TlsReportSource(trigger));
        self
    }

    /// Reports the delivery side's suspended destinations in `GET /v1/queue/stats`.
    pub fn with_suspended(mut self, provider: SuspendedProvider) -> Self {
        self.suspended = Some(SuspendedSource(provider));
        self
    }
}

/// The complete API. Serve it with `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(state: ApiState) -> Router {
    use auth::{ScopeGuard, require_scope};
    let guard = |scope| {
        from_fn_with_state(
            ScopeGuard {
                state: state.clone(),
                scope,
            },
            require_scope,
        )
    };

    // Every documented route comes from the one table the OpenAPI document is built from.
    let metrics_auth = state.settings.metrics_auth;
    for route in openapi::all_routes() {
        if let Some(status) = route.success_status() {
            state
                .metrics
                .init_http_route(route.path, &status.to_string());
        }
    }
    let send = openapi_routes(Some(Scope::Send), metrics_auth).route_layer(guard(Scope::Send));
    let read = openapi_routes(Some(Scope::Read), metrics_auth).route_layer(guard(Scope::Read));
    let admin = openapi_routes(Some(Scope::Admin), metrics_auth).route_layer(guard(Scope::Admin));
    let open = openapi_routes(None, metrics_auth);
    let trust_read = trust_routes::routes(Scope::Read).route_layer(guard(Scope::Read));
    let trust_send = trust_routes::routes(Scope::Send).route_layer(guard(Scope::Send));

    Router::new()
        .merge(send)
        .merge(read)
        .merge(admin)
        .merge(open)
        .merge(trust_read)
        .merge(trust_send)
        .merge(console::routes())
        .merge(compat::router(&state))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .layer(from_fn_with_state(
            state.clone(),
            browser::guard_browser_requests,
        ))
        .layer(from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

/// The routes of [`openapi::ROUTES`] that need `scope` (`None`: open routes), given whether
/// `metrics_auth` moves the monitoring routes under `read`.
fn openapi_routes(scope: Option<Scope>, metrics_auth: bool) -> Router<ApiState> {
    openapi::ROUTES
        .iter()
        .filter(|r| r.effective_scope(metrics_auth) == scope)
        .fold(Router::new(), |router, r| {
            router.route(r.path, (r.handler)())
        })
}

/// The OpenAPI 3.0 document of the API (also served at `GET /openapi.json`).
pub fn openapi_document() -> serde_json::Value {
    openapi::document()
}

/// Counts `postrider_http_requests_total{route,status}` and times
/// `postrider_http_request_duration_seconds{route,status}` with the route template as label
/// (`/v1/messages/{id}`), or `unmatched`, so labels stay bounded.
async fn count_requests(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().clone();
    let response = next.run(req).await;
    let status = response.status();
    state
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), status.as_str()])
        .inc();
    state
        .metrics
        .http_request_duration
        .with_label_values(&[route.as_str(), status.as_str()])
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(%method, route, status = status.as_u16(), "http request");
    response
}

/// Wall-clock now as a [`postrider_core::Timestamp`].
pub(crate) fn now() -> postrider_core::Timestamp {
    postrider_core::clock::Clock::now(&postrider_core::clock::SystemClock)
}
