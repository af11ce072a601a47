//! Bearer API keys (stored as SHA-256 hashes), scopes, the loopback-only mode and per-key rate limits.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use postrider_core::token_bucket::{BucketRate, TokenBucket};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::ClientAddr;

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Submit messages (`POST /v1/messages`, `POST /v1/messages/batch`).
    Send,
    /// Read message status (`GET /v1/messages/{id}`).
    Read,
    /// Queue administration (`/v1/queue…`).
    Admin,
}

impl Scope {
    /// The scope's name as written in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Send => "send",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

/// One configured API key. The key itself is never stored, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// A label for logs and rate limiting (e.g. `"billing-service"`); never secret.
    pub name: String,
    /// Lowercase hex SHA-256 of the key, as printed by [`generate_api_key`].
    pub key_hash: String,
    /// What the key may do.
    pub scopes: Vec<Scope>,
    /// Messages submitted with this key are captured, never sent (a test key, like Postmark's
    /// test token): stored, shown and evented like real ones, with simulated outcomes.
    #[serde(default)]
    pub sandbox: bool,
    /// Messages submitted with this key get one-click unsubscribe links unless a request says
    /// `"unsubscribe": false` (needs the relay's unsubscribe settings).
    #[serde(default)]
    pub unsubscribe: bool,
}

/// Token-bucket rate limit applied per API key (or once for all loopback clients in
/// loopback-only mode).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed in a burst above the sustained rate (bucket size, at least 1).
    pub burst: u32,
}

/// A new random API key and its hash: give the key to the client, put the hash in the config.
///
/// The key is `pr_` followed by 64 hex digits (256 random bits).
pub fn generate_api_key() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!("pr_{}", to_hex(&bytes));
    let hash = hash_api_key(&key);
    (key, hash)
}

/// The lowercase hex SHA-256 of a key, the form [`ApiKey::key_hash`] holds.
pub fn hash_api_key(key: &str) -> String {
    to_hex(&Sha256::digest(key.as_bytes()))
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn from_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.trim().as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Equality that takes the same time whichever byte differs.
/// The SHA-256 of a presented key, as compared against the configured hashes.
pub(crate) fn key_digest(presented: &str) -> [u8; 32] {
    Sha256::digest(presented.as_bytes()).into()
}

/// Compares two digests in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Why an [`ApiKey`] in the settings is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyConfigError {
    /// `key_hash` is not 64 hex digits.
    #[error(
        "api key {name:?}: key_hash must be 64 hex digits (the SHA-256 printed by `postrider apikey new`)"
    )]
    BadHash {
        /// The key's name.
        name: String,
    },
    /// Two keys share a name (names key the rate limiter and the logs).
    #[error("api key name {name:?} is used twice")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// A key without scopes can do nothing.
    #[error("api key {name:?} has no scopes (use send, read and/or admin)")]
    NoScopes {
        /// The key's name.
        name: String,
    },
}

/// Checks configured keys; called by [`crate::ApiSettings::validate`].
pub(crate) fn validate_keys(keys: &[ApiKey]) -> Result<(), KeyConfigError> {
    let mut names = std::collections::HashSet::new();
    for k in keys {
        if from_hex(&k.key_hash).is_none() {
            return Err(KeyConfigError::BadHash {
                name: k.name.clone(),
            });
        }
        if k.scopes.is_empty() {
            return Err(KeyConfigError::NoScopes {
                name: k.name.clone(),
            });
        }
        if !names.insert(k.name.as_str()) {
            return Err(KeyConfigError::DuplicateName {
                name: k.name.clone(),
            });
        }
    }
    Ok(())
}

/// Keys decoded once at start-up.
#[derive(Debug)]
pub(crate) struct KeyRing {
    keys: Vec<RingKey>,
}

/// One decoded key of a [`KeyRing`].
#[derive(Debug)]
pub(crate) struct RingKey {
    /// The key's label.
    pub(crate) name: String,
    hash: [u8; 32],
    /// What the key may do.
    pub(crate) scopes: Vec<Scope>,
    /// Whether what the key submits is captured rather than sent.
    pub(crate) sandbox: bool,
    /// Whether what the key submits gets unsubscribe links by default.
    pub(crate) unsubscribe: bool,
}

impl KeyRing {
    /// Decodes the configured hashes; entries with a malformed hash are skipped (and logged):
    /// they can never match, which fails closed.
    pub(crate) fn new(keys: &[ApiKey]) -> KeyRing {
        let keys = keys
            .iter()
            .filter_map(|k| match from_hex(&k.key_hash) {
                Some(hash) => Some(RingKey {
                    name: k.name.clone(),
                    hash,
                    scopes: k.scopes.clone(),
                    sandbox: k.sandbox,
                    unsubscribe: k.unsubscribe,
                }),
                None => {
                    tracing::warn!(key = %k.name, "api key has a malformed key_hash and is ignored");
                    None
                }
            })
            .collect();
        KeyRing { keys }
    }

    /// Finds the key whose hash matches, comparing against every key so the time does not
    /// reveal which one matched.
    fn find(&self, presented: &str) -> Option<&RingKey> {
        self.find_digest(&key_digest(presented))
    }

    /// Like `find`, given the SHA-256 of the presented key (what a console session keeps, so
    /// a key removed from the configuration also ends the sessions opened with it).
    pub(crate) fn find_digest(&self, digest: &[u8; 32]) -> Option<&RingKey> {
        let mut found = None;
        for key in &self.keys {
            if constant_time_eq(digest, &key.hash) && found.is_none() {
                found = Some(key);
            }
        }
        found
    }
}

/// The keys and rate limit in force; replaced as a whole on a configuration reload.
#[derive(Debug)]
pub(crate) struct Access {
    keys: KeyRing,
    /// Whether keys are configured, even ones whose hash is malformed (those never match, so
    /// the API stays closed rather than falling back to loopback-only mode).
    configured: bool,
    pub(crate) rate_limit: Option<RateLimit>,
}

impl Access {
    /// Decodes `keys` (see [`KeyRing::new`]).
    pub(crate) fn new(keys: &[ApiKey], rate_limit: Option<RateLimit>) -> Access {
        Access {
            keys: KeyRing::new(keys),
            configured: !keys.is_empty(),
            rate_limit,
        }
    }

    /// Whether any key is configured; without keys only loopback clients are served.
    pub(crate) fn has_keys(&self) -> bool {
        self.configured
    }

    /// The keys in force (console sessions check theirs on every request).
    pub(crate) fn keys(&self) -> &KeyRing {
        &self.keys
    }
}

/// Per-principal token buckets. Bounded: one bucket per configured key, plus one for loopback.
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    buckets: Mutex<HashMap<String, TokenBucket<Instant>>>,
}

impl RateLimiter {
    /// Takes one token for `who`; on refusal returns the seconds until one is available.
    pub(crate) fn check(&self, who: &str, limit: RateLimit, now: Instant) -> Result<(), u64> {
        let Some(rate) = BucketRate::new(limit.burst, limit.per_second) else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        buckets
            .entry(who.to_owned())
            .or_insert_with(|| TokenBucket::full(rate, now))
            .try_take(rate, now)
            .map_err(|wait| wait.as_secs_f64().ceil().max(1.0) as u64)
    }
}

/// Who made a request, as established by [`require_scope`]; available to handlers for logs.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    /// The key's name, or `loopback` in loopback-only mode.
    pub(crate) name: String,
    /// Whether the key is a sandbox key: what it submits is captured, never sent.
    pub(crate) sandbox: bool,
    /// Whether what the key submits gets unsubscribe links by default.
    pub(crate) unsubscribe: bool,
}

/// Route-layer state: the API state plus the scope a group of routes needs.
#[derive(Clone)]
pub(crate) struct ScopeGuard {
    pub(crate) state: ApiState,
    pub(crate) scope: Scope,
}

/// Middleware: authenticate, authorise `guard.scope`, apply the rate limit.
pub(crate) async fn require_scope(
    State(guard): State<ScopeGuard>,
    mut req: Request,
    next: Next,
) -> Response {
    match authorize(&guard, &req) {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Authenticates the request and checks `guard.scope` and the rate limit; the error is in the
/// API's own shape (the compatibility endpoints translate it).
pub(crate) fn authorize(guard: &ScopeGuard, req: &Request) -> Result<Principal, ApiError> {
    let state = &guard.state;
    let access = state.access.load();
    let principal = if !access.has_keys() {
        let client = ClientAddr::from_extensions(req.extensions());
        if !client.ip().is_some_and(|ip| ip.is_loopback()) {
            tracing::info!(client = %client.0.map_or_else(|| "unknown".to_owned(), |a| a.to_string()), "refused non-loopback client: no API keys are configured");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "no API keys are configured, so only loopback clients are served",
            ));
        }
        Principal {
            name: "loopback".to_owned(),
            sandbox: false,
            unsubscribe: false,
        }
    } else {
        let presented = match postmark_server_token(req) {
            Some(token) => token,
            None => bearer_token(req)?,
        };
        let key = access
            .keys
            .find(presented)
            .ok_or_else(|| ApiError::unauthorized("the API key is not valid"))?;
        if !key.scopes.contains(&guard.scope) {
            tracing::info!(key = %key.name, needed = guard.scope.as_str(), "api key lacks scope");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!("this API key lacks the {:?} scope", guard.scope.as_str()),
            ));
        }
        Principal {
            name: key.name.clone(),
            sandbox: key.sandbox,
            unsubscribe: key.unsubscribe,
        }
    };
    if let Some(limit) = access.rate_limit
        && let Err(wait) = state.limiter.check(&principal.name, limit, Instant::now())
    {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; slow down",
        );
        e.retry_after = Some(wait);
        return Err(e);
    }
    Ok(principal)
}

/// Header in which Postmark clients send their server token.
pub(crate) const POSTMARK_SERVER_TOKEN: &str = "x-postmark-server-token";

/// The key of a Postmark client (`X-Postmark-Server-Token: <key>`), so Postmark SDKs can use a
/// Postrider API key unchanged; `None` when the header is absent or blank.
fn postmark_server_token(req: &Request) -> Option<&str> {
    let token = req
        .headers()
        .get(POSTMARK_SERVER_TOKEN)?
        .to_str()
        .ok()?
        .trim();
    (!token.is_empty()).then_some(token)
}

fn bearer_token(req: &Request) -> Result<&str, ApiError> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("send an API key as Authorization: Bearer <key>"))?;
    let text = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is malformed"))?;
    let (scheme, token) = text
        .trim()
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("use Authorization: Bearer <key>"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthorized("use Authorization: Bearer <key>"));
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn generated_keys_hash_to_their_hash() {
        let (key, hash) = generate_api_key();
        assert!(key.starts_with("pr_") && key.len() == 67);
        assert_eq!(hash, hash_api_key(&key));
        assert_eq!(hash.len(), 64);
        let ring = KeyRing::new(&[ApiKey {
            name: "a".into(),
            key_hash: hash,
            scopes: vec![Scope::Send],
            sandbox: false,
            unsubscribe: false,
        }]);
        assert_eq!(ring.find(&key).map(|k| k.name.as_str()), Some("a"));
        assert!(ring.find("pr_wrong").is_none());
        let (other, _) = generate_api_key();
        assert_ne!(key, other);
    }

    #[test]
    fn known_sha256_vector() {
        assert_eq!(
            hash_api_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn key_config_validation() {
        let good = ApiKey {
            name: "a".into(),
            key_hash: hash_api_key("k"),
            scopes: vec![Scope::Read],
            sandbox: false,
            unsubscribe: false,
        };
        assert_eq!(validate_keys(std::slice::from_ref(&good)), Ok(()));
        let bad = ApiKey {
            key_hash: "xyz".into(),
            ..good.clone()
        };
        assert!(matches!(
            validate_keys(&[bad]),
            Err(KeyConfigError::BadHash { .. })
        ));
        assert!(matches!(
            validate_keys(&[good.clone(), good.clone()]),
            Err(KeyConfigError::DuplicateName { .. })
        ));
        let none = ApiKey {
            scopes: vec![],
            ..good
        };
        assert!(matches!(
            validate_keys(&[none]),
            Err(KeyConfigError::NoScopes { .. })
        ));
    }

    #[test]
    fn token_bucket_refills() {
        let limiter = RateLimiter::default();
        let limit = RateLimit {
            per_second: 2.0,
            burst: 2,
        };
        let t0 = Instant::now();
        assert_eq!(limiter.check("k", limit, t0), Ok(()));
        assert_eq!(limiter.check("k", limit, t0), Ok(()));
        assert_eq!(limiter.check("k", limit, t0), Err(1));
        // Another key has its own bucket.
        assert_eq!(limiter.check("other", limit, t0), Ok(()));
        // Half a second later one token is back.
        assert_eq!(
            limiter.check("k", limit, t0 + Duration::from_millis(500)),
            Ok(())
        );
        assert_eq!(
            limiter.check("k", limit, t0 + Duration::from_millis(500)),
            Err(1)
        );
    }
}
