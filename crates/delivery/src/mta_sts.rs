//! MTA-STS (RFC 8461) on the sending side: discover a recipient domain's policy through its
//! `_mta-sts` TXT record, fetch it over HTTPS from `mta-sts.<domain>` (certificate verified, no
//! redirects, bounded in size and time), and keep it in the store's policy cache, which answers
//! while the policy server or DNS is unreachable, also after a restart.
//!
//! Applying the policy (which MX hosts, TLS with a certificate valid for the MX name) happens in
//! [`crate::smtp`].

use std::net::SocketAddr;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use postrider_core::mta_sts::{StsMode, StsPolicy, sts_record_id};
use postrider_store::CachedStsPolicy;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::stream::connect_tcp;
use crate::tls::CertFailure;
use crate::worker::{Shared, clock_now};

/// Largest policy file accepted (RFC 8461 §3.3 suggests 64 KiB).
pub(crate) const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Longest time one policy fetch may take, connection included.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// After a failed fetch, the domain's policy server is left alone this long (the cached policy,
/// if any, applies meanwhile).
const FETCH_FAILURE_HOLD: Duration = Duration::from_secs(300);
/// Most domains remembered with a failed fetch; beyond it the oldest memories are dropped.
pub(crate) const MAX_FETCH_FAILURES: usize = 10_000;
/// The path of the policy file.
const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// Locks that keep two fetches of the same domain's policy from running at once: one of
/// [`FETCH_LOCK_STRIPES`] per hash of the domain.
#[derive(Debug)]
pub(crate) struct FetchLocks([tokio::sync::Mutex<()>; FETCH_LOCK_STRIPES]);

/// How many fetch locks there are; domains sharing one fetch one after the other.
const FETCH_LOCK_STRIPES: usize = 64;

impl Default for FetchLocks {
    fn default() -> Self {
        FetchLocks(std::array::from_fn(|_| tokio::sync::Mutex::new(())))
    }
}

impl FetchLocks {
    /// The lock of `domain`.
    fn of(&self, domain: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        domain.hash(&mut h);
        &self.0[(h.finish() % FETCH_LOCK_STRIPES as u64) as usize]
    }
}

/// The label of `postrider_tls_policy_results_total{policy}` and of the `tls_policy` recorded
/// with each session, for an MTA-STS policy in `mode`.
pub(crate) fn policy_label(mode: StsMode) -> &'static str {
    match mode {
        StsMode::Enforce => "mta-sts:enforce",
        StsMode::Testing => "mta-sts:testing",
        StsMode::None => "mta-sts:none",
    }
}

/// Why fetching a policy failed, as RFC 8460 names the result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FetchError {
    /// DNS, connection, HTTP status, redirect, size or time (`sts-policy-fetch-error`).
    #[error("cannot fetch the policy: {0}")]
    Fetch(String),
    /// The policy server's certificate does not validate (`sts-webpki-invalid`).
    #[error("the policy server's certificate does not validate: {0}")]
    Webpki(String),
    /// The file is not a valid policy (`sts-policy-invalid`).
    #[error("the policy is invalid: {0}")]
    Invalid(String),
}

impl FetchError {
    /// The RFC 8460 result type.
    pub(crate) fn result_type(&self) -> &'static str {
        match self {
            FetchError::Fetch(_) => "sts-policy-fetch-error",
            FetchError::Webpki(_) => "sts-webpki-invalid",
            FetchError::Invalid(_) => "sts-policy-invalid",
        }
    }
}

/// What the `_mta-sts` TXT lookup said.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Discovery {
    /// One valid record with this id.
    Record(String),
    /// No valid record (none, several, or malformed: RFC 8461 §3.1 treats all alike).
    NoRecord,
    /// The lookup failed.
    Failed,
}

/// The id of the one `v=STSv1` record among `records`, if there is exactly one and it is valid.
fn discover(records: &[String]) -> Discovery {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| r.trim_start().starts_with("v=STSv1"))
        .collect();
    match sts.as_slice() {
        [one] => sts_record_id(one).map_or(Discovery::NoRecord, Discovery::Record),
        _ => Discovery::NoRecord,
    }
}

/// The policy to apply to recipient domain `domain` (lower case), `None` when it has none in
/// force (no record and nothing cached, mode `none`, or everything failed without a cache).
pub(crate) async fn policy_for(shared: &Shared, domain: &str) -> Option<StsPolicy> {
    let discovery = match shared
        .resolver
        .lookup_txt(&format!("_mta-sts.{domain}"))
        .await
    {
        Ok(records) => discover(&records),
        Err(e) => {
            tracing::debug!(domain = %domain, error = %e, "MTA-STS record lookup failed; using the cached policy, if any");
            Discovery::Failed
        }
    };
    let cached = match shared.store.sts_policy(domain) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(domain = %domain, error = %e, "cannot read the cached MTA-STS policy");
            None
        }
    };
    let now = clock_now();
    let valid = cached.filter(|c| c.is_valid_at(now));
    let policy = match discovery {
        Discovery::Record(id) if valid.as_ref().is_some_and(|c| c.id == id) => {
            if valid.as_ref().is_some_and(|c| c.needs_renewal_at(now)) {
                renew_in_background(shared, domain, id);
            }
            valid.map(|c| c.policy)
        }
        Discovery::Record(id) => match refresh(shared, domain, &id, Freshness::Valid).await {
            Some(fresh) => Some(fresh),
            None => valid.map(|c| c.policy),
        },
        Discovery::NoRecord | Discovery::Failed => valid.map(|c| c.policy),
    };
    policy.filter(|p| p.mode != StsMode::None)
}

/// What makes a cached policy good enough to skip a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    /// Still valid (a delivery waits for the fetch).
    Valid,
    /// Valid and not yet due for renewal (a background refresh).
    NotDueForRenewal,
}

impl Freshness {
    /// Whether `cached` is good enough at `now`.
    fn satisfied_by(self, cached: &CachedStsPolicy, now: postrider_core::Timestamp) -> bool {
        match self {
            Freshness::Valid => cached.is_valid_at(now),
            Freshness::NotDueForRenewal => cached.is_valid_at(now) && !cached.needs_renewal_at(now),
        }
    }
}

/// Refreshes the cached policy of `domain` (close to its expiry, see
/// [`CachedStsPolicy::needs_renewal_at`]) in a task of its own, so that the delivery that
/// noticed does not wait. Nothing starts while a fetch of the domain runs or failed recently;
/// a failed refresh keeps the cached policy.
fn renew_in_background(shared: &Shared, domain: &str, id: String) {
    if recently_failed(shared, domain) || shared.sts_fetch_locks.of(domain).try_lock().is_err() {
        return;
    }
    let Some(shared) = shared.me.upgrade() else {
        return;
    };
    let domain = domain.to_owned();
    tokio::spawn(async move {
        tracing::debug!(domain = %domain, "refreshing the MTA-STS policy before it expires");
        refresh(&shared, &domain, &id, Freshness::NotDueForRenewal).await;
    });
}

/// Fetches the policy of `domain` announced under `id` and caches it, unless the cached one is
/// `fresh` enough by the time the fetch lock is taken; `None` when the fetch failed (counted
/// and logged) or failed recently.
async fn refresh(shared: &Shared, domain: &str, id: &str, fresh: Freshness) -> Option<StsPolicy> {
    let _fetching = shared.sts_fetch_locks.of(domain).lock().await;
    // Another attempt may have fetched it while this one waited.
    if let Ok(Some(cached)) = shared.store.sts_policy(domain)
        && cached.id == id
        && fresh.satisfied_by(&cached, clock_now())
    {
        return Some(cached.policy);
    }
    if recently_failed(shared, domain) {
        return None;
    }
    match fetch(shared, domain).await {
        Ok(policy) => {
            tracing::info!(domain = %domain, id = %id, mode = %policy.mode.as_str(), max_age = policy.max_age_secs, "MTA-STS policy fetched");
            let cached = CachedStsPolicy {
                id: id.to_owned(),
                policy: policy.clone(),
                fetched_at: clock_now(),
            };
            if let Err(e) = shared.store.put_sts_policy(domain, &cached).await {
                tracing::warn!(domain = %domain, error = %e, "cannot cache the MTA-STS policy");
            }
            Some(policy)
        }
        Err(e) => {
            tracing::warn!(domain = %domain, id = %id, result = %e.result_type(), error = %e, "MTA-STS policy fetch failed");
            shared.sts_result(crate::tls_report::counter::SessionResult {
                domain,
                result: e.result_type(),
                mx_host: None,
                receiving_ip: None,
            });
            remember_failure(shared, domain);
            None
        }
    }
}

/// Whether a fetch for `domain` failed less than [`FETCH_FAILURE_HOLD`] ago.
fn recently_failed(shared: &Shared, domain: &str) -> bool {
    shared
        .sts_fetch_failures
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(domain)
        .is_some_and(|at| at.elapsed() < FETCH_FAILURE_HOLD)
}

/// Notes a failed fetch for `domain` (bounded: old entries go first when full).
fn remember_failure(shared: &Shared, domain: &str) {
    let mut map = shared
        .sts_fetch_failures
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if map.len() >= MAX_FETCH_FAILURES {
        map.retain(|_, at| at.elapsed() < FETCH_FAILURE_HOLD);
        if map.len() >= MAX_FETCH_FAILURES {
            map.clear();
        }
    }
    map.insert(domain.to_owned(), Instant::now());
}

/// Fetches and parses `https://mta-sts.<domain>/.well-known/mta-sts.txt`.
async fn fetch(shared: &Shared, domain: &str) -> Result<StsPolicy, FetchError> {
    let host = format!("mta-sts.{domain}");
    let body = tokio::time::timeout(FETCH_TIMEOUT, fetch_body(shared, &host))
        .await
        .map_err(|_| {
            FetchError::Fetch(format!(
                "no answer from {host} within {}s",
                FETCH_TIMEOUT.as_secs()
            ))
        })??;
    StsPolicy::parse(&body).map_err(|e| FetchError::Invalid(e.to_string()))
}

/// The body of the policy file on `host`: resolve, connect, TLS with verification, one GET.
async fn fetch_body(shared: &Shared, host: &str) -> Result<Vec<u8>, FetchError> {
    let port = shared.settings().mta_sts_https_port;
    let mut conn = connect_https::<Empty<Bytes>>(shared, host, port).await?;
    request(&mut conn.sender, host).await
}

/// An HTTP/1.1 connection over verified TLS; the connection task ends when it is dropped.
pub(crate) struct HttpsConnection<B> {
    /// Sends requests on the connection.
    pub(crate) sender: hyper::client::conn::http1::SendRequest<B>,
    driver: tokio::task::JoinHandle<()>,
}

impl<B> Drop for HttpsConnection<B> {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Opens an HTTPS connection to `host:port`: resolve, connect (first address that answers,
/// bounded by `max_addresses_per_host`), TLS verified against the web roots and `ca_file`.
/// A certificate that does not validate is [`FetchError::Webpki`].
pub(crate) async fn connect_https<B>(
    shared: &Shared,
    host: &str,
    port: u16,
) -> Result<HttpsConnection<B>, FetchError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let settings = shared.settings();
    let addresses = shared
        .resolver
        .resolve_host(host)
        .await
        .map_err(|e| FetchError::Fetch(format!("{host}: {e}")))?;
    let mut last = FetchError::Fetch(format!("{host} has no address"));
    for ip in addresses.into_iter().take(settings.max_addresses_per_host) {
        let addr = SocketAddr::new(ip, port);
        match connect_tcp(addr, settings.source_ip, settings.timeouts.connect).await {
            Ok(tcp) => return https_handshake(shared, host, tcp).await,
            Err(e) => last = FetchError::Fetch(format!("cannot connect to {host} [{addr}]: {e}")),
        }
    }
    Err(last)
}

/// Runs the TLS and HTTP/1.1 handshakes on an open connection to `host`.
async fn https_handshake<B>(
    shared: &Shared,
    host: &str,
    tcp: tokio::net::TcpStream,
) -> Result<HttpsConnection<B>, FetchError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let config = shared.tls.verifying_config().map_err(FetchError::Fetch)?;
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| FetchError::Fetch(format!("{host:?} is not a host name")))?;
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| handshake_error(host, &e))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| FetchError::Fetch(format!("{host}: {e}")))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "HTTPS connection ended with an error");
        }
    });
    Ok(HttpsConnection { sender, driver })
}

/// A failed handshake: a certificate problem is `sts-webpki-invalid`, anything else a fetch
/// error.
fn handshake_error(host: &str, e: &std::io::Error) -> FetchError {
    let certificate = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>())
        .filter(|r| matches!(r, tokio_rustls::rustls::Error::InvalidCertificate(_)));
    match certificate {
        Some(r) => FetchError::Webpki(format!("{host}: {}", CertFailure::of(r).describe())),
        None => FetchError::Fetch(format!("TLS with {host} failed: {e}")),
    }
}

/// Sends the GET and reads a bounded `200 text/plain` answer; redirects are not followed.
async fn request(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
) -> Result<Vec<u8>, FetchError> {
    let fetch = |what: String| FetchError::Fetch(format!("{host}: {what}"));
    let request = hyper::Request::get(POLICY_PATH)
        .header(hyper::header::HOST, host)
        .header(
            hyper::header::USER_AGENT,
            concat!("postrider/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| fetch(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| fetch(e.to_string()))?;
    let status = response.status();
    if status != hyper::StatusCode::OK {
        return Err(fetch(format!(
            "HTTP status {} for {POLICY_PATH} (redirects are not followed)",
            status.as_u16()
        )));
    }
    let media_type = response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if media_type.as_deref() != Some("text/plain") {
        return Err(FetchError::Invalid(format!(
            "served as {}, not text/plain",
            media_type.as_deref().unwrap_or("nothing")
        )));
    }
    let mut body = response.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| fetch(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > MAX_POLICY_BYTES {
                return Err(fetch(format!(
                    "the policy is larger than {} KiB",
                    MAX_POLICY_BYTES / 1024
                )));
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_needs_exactly_one_valid_record() {
        let rec = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            discover(&rec(&["v=spf1 -all", "v=STSv1; id=abc"])),
            Discovery::Record("abc".into())
        );
        assert_eq!(discover(&rec(&[])), Discovery::NoRecord);
        assert_eq!(
            discover(&rec(&["v=STSv1; id=a", "v=STSv1; id=b"])),
            Discovery::NoRecord
        );
        assert_eq!(discover(&rec(&["v=STSv1; id=bad-id"])), Discovery::NoRecord);
    }

    #[test]
    fn fetch_errors_name_rfc_8460_result_types() {
        assert_eq!(
            FetchError::Fetch(String::new()).result_type(),
            "sts-policy-fetch-error"
        );
        assert_eq!(
            FetchError::Webpki(String::new()).result_type(),
            "sts-webpki-invalid"
        );
        assert_eq!(
            FetchError::Invalid(String::new()).result_type(),
            "sts-policy-invalid"
        );
    }
}
