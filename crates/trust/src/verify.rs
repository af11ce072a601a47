//! Address verification by SMTP callout: ask the recipient's MX whether it would accept
//! `RCPT TO:<address>` from the null sender, then QUIT without sending anything.
//!
//! Caveats (also in the crate and API docs): catch-all domains accept every address, so
//! `deliverable` means "the server would take it", not "a mailbox exists"; greylisting and
//! temporary errors give `unknown`; some providers accept everything at RCPT time or block
//! callouts; and callouts done in bulk look like directory-harvest attacks and can get the
//! relay's IP listed. Hence the per-domain rate limit and the cache.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use postrider_core::{Address, Domain, SmtpReply};
use postrider_dns::{HickoryMxResolver, MxHost, MxResolver};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// Limits and identity of the verifier. `Default` gives the documented values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifierSettings {
    /// Name sent in EHLO (default `"localhost"`; set the relay's host name).
    pub helo_name: String,
    /// SMTP port of the MX hosts (default 25; tests use a loopback port).
    pub smtp_port: u16,
    /// TCP connect plus greeting and EHLO (default 10 s).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Each command (MAIL, RCPT, QUIT) (default 30 s).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// MX hosts tried when earlier ones cannot be reached (default 2).
    pub max_mx_hosts: usize,
    /// How long `deliverable` answers are reused (default 24 h).
    #[serde(with = "humantime_serde")]
    pub cache_ttl_positive: Duration,
    /// How long `undeliverable` answers are reused (default 1 h).
    #[serde(with = "humantime_serde")]
    pub cache_ttl_negative: Duration,
    /// Most cached answers (default 10 000); `unknown` is never cached.
    pub cache_capacity: usize,
    /// Callouts per recipient domain per minute (default 10); cache hits do not count.
    pub per_domain_per_minute: u32,
    /// Callouts running at once (default 16).
    pub max_concurrent: usize,
}

impl Default for VerifierSettings {
    fn default() -> Self {
        VerifierSettings {
            helo_name: "localhost".to_owned(),
            smtp_port: 25,
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(30),
            max_mx_hosts: 2,
            cache_ttl_positive: Duration::from_secs(24 * 3600),
            cache_ttl_negative: Duration::from_secs(3600),
            cache_capacity: 10_000,
            per_domain_per_minute: 10,
            max_concurrent: 16,
        }
    }
}

/// What the callout says about an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Deliverability {
    /// The MX accepted `RCPT TO` (2xx). On catch-all domains this says nothing about the mailbox.
    Deliverable,
    /// The MX rejected it permanently (5xx), or the domain accepts no mail (NXDOMAIN, null MX).
    Undeliverable,
    /// No answer either way: 4xx (greylisting), timeouts, DNS or connection failures.
    Unknown,
}

impl Deliverability {
    /// The name used in JSON and the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Deliverability::Deliverable => "deliverable",
            Deliverability::Undeliverable => "undeliverable",
            Deliverability::Unknown => "unknown",
        }
    }
}

/// The answer of [`Verifier::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyResult {
    /// The address as verified (normalised domain).
    pub address: String,
    /// The verdict.
    pub result: Deliverability,
    /// The server's reply to RCPT (or MAIL, or a synthetic one for DNS outcomes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<SmtpReply>,
    /// The MX host that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mx_host: Option<String>,
    /// Whether this answer came from the cache.
    pub cached: bool,
    /// Why the result is `unknown`, when there is no reply to explain it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Why [`Verifier::verify`] gave no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The input is not a valid mailbox address.
    #[error("invalid address: {0}")]
    InvalidAddress(String),
    /// Too many callouts to this domain recently; try again after `retry_after`.
    #[error("too many verifications for {domain}; retry in {}s", retry_after.as_secs())]
    RateLimited {
        /// The recipient domain.
        domain: String,
        /// When a callout to the domain will be allowed again.
        retry_after: Duration,
    },
}

/// SMTP callout verifier with a per-domain rate limit and a bounded answer cache. Share it
/// behind an `Arc`.
pub struct Verifier {
    settings: VerifierSettings,
    resolver: HickoryMxResolver,
    cache: Mutex<AnswerCache>,
    limiter: Mutex<DomainRateLimiter>,
    slots: Semaphore,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier resolving MX hosts through `resolver`.
    pub fn new(settings: VerifierSettings, resolver: HickoryMxResolver) -> Self {
        Verifier {
            cache: Mutex::new(AnswerCache::new(settings.cache_capacity)),
            limiter: Mutex::new(DomainRateLimiter::new(
                settings.per_domain_per_minute,
                Duration::from_secs(60),
            )),
            slots: Semaphore::new(settings.max_concurrent.max(1)),
            settings,
            resolver,
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &VerifierSettings {
        &self.settings
    }

    /// Verifies `address`: from the cache when possible, else by callout (rate limited per
    /// domain).
    pub async fn verify(&self, address: &str) -> Result<VerifyResult, VerifyError> {
        let parsed = Address::parse(address.trim())
            .map_err(|e| VerifyError::InvalidAddress(e.to_string()))?;
        let key = parsed.to_string();
        let now = Instant::now();
        if let Some(mut hit) = lock(&self.cache).get(&key, now) {
            hit.cached = true;
            tracing::debug!(address = %key, result = hit.result.as_str(), "verification answered from cache");
            return Ok(hit);
        }
        let domain = parsed.domain().clone();
        lock(&self.limiter)
            .check(domain.as_str(), now)
            .map_err(|retry_after| VerifyError::RateLimited {
                domain: domain.to_string(),
                retry_after,
            })?;
        let result = {
            let _slot = self.slots.acquire().await;
            self.callout(&key, &domain).await
        };
        tracing::info!(
            address = %key,
            result = result.result.as_str(),
            mx = result.mx_host.as_deref().unwrap_or("-"),
            code = result.reply.as_ref().map_or(0, |r| r.code),
            "address verified"
        );
        let ttl = match result.result {
            Deliverability::Deliverable => Some(self.settings.cache_ttl_positive),
            Deliverability::Undeliverable => Some(self.settings.cache_ttl_negative),
            Deliverability::Unknown => None,
        };
        if let Some(ttl) = ttl {
            lock(&self.cache).insert(key, result.clone(), ttl, Instant::now());
        }
        Ok(result)
    }

    async fn callout(&self, address: &str, domain: &Domain) -> VerifyResult {
        let mut result = VerifyResult {
            address: address.to_owned(),
            result: Deliverability::Unknown,
            reply: None,
            mx_host: None,
            cached: false,
            reason: None,
        };
        let hosts = match mail_hosts(&self.resolver, domain, self.settings.max_mx_hosts).await {
            Ok(hosts) => hosts,
            Err(MxOutcome::NoMail(reply)) => {
                result.result = Deliverability::Undeliverable;
                result.reply = Some(reply);
                return result;
            }
            Err(MxOutcome::Unknown(why)) => {
                result.reason = Some(why);
                return result;
            }
        };
        let helo = ClientId::Domain(self.settings.helo_name.clone());
        let mut last_error = String::from("no MX host could be reached");
        for host in &hosts {
            for ip in &host.addresses {
                let target = SocketAddr::new(*ip, self.settings.smtp_port);
                match self.connect(target, &helo).await {
                    Ok(conn) => {
                        result.mx_host = Some(host.name.clone());
                        self.converse(conn, address, &mut result).await;
                        return result;
                    }
                    Err(why) => {
                        tracing::debug!(mx = %host.name, %target, why, "callout connect failed");
                        last_error = format!("{} ({target}): {why}", host.name);
                    }
                }
            }
        }
        result.reason = Some(last_error);
        result
    }

    async fn connect(
        &self,
        target: SocketAddr,
        helo: &ClientId,
    ) -> Result<AsyncSmtpConnection, String> {
        let timeout = self.settings.connect_timeout;
        match tokio::time::timeout(
            timeout,
            AsyncSmtpConnection::connect_tokio1(target, Some(timeout), helo, None, None::<IpAddr>),
        )
        .await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out connecting".to_owned()),
        }
    }

    /// MAIL FROM:<>, RCPT TO, QUIT on an open connection; fills `result`.
    async fn converse(
        &self,
        mut conn: AsyncSmtpConnection,
        address: &str,
        result: &mut VerifyResult,
    ) {
        match self.command(&mut conn, "MAIL FROM:<>\r\n".to_owned()).await {
            Step::Reply(reply) if reply.code / 100 == 2 => {}
            Step::Reply(reply) => {
                // A server refusing the null sender says nothing about the recipient.
                result.reason = Some("the server refused MAIL FROM:<>".to_owned());
                result.reply = Some(reply);
                self.quit(&mut conn).await;
                return;
            }
            Step::Failed(why) => {
                result.reason = Some(format!("MAIL FROM: {why}"));
                return;
            }
        }
        match self
            .command(&mut conn, format!("RCPT TO:<{address}>\r\n"))
            .await
        {
            Step::Reply(reply) => {
                result.result = match reply.code / 100 {
                    2 => Deliverability::Deliverable,
                    5 => Deliverability::Undeliverable,
                    _ => Deliverability::Unknown,
                };
                result.reply = Some(reply);
            }
            Step::Failed(why) => {
                result.reason = Some(format!("RCPT TO: {why}"));
                return;
            }
        }
        self.quit(&mut conn).await;
    }

    async fn command(&self, conn: &mut AsyncSmtpConnection, line: String) -> Step {
        match tokio::time::timeout(self.settings.command_timeout, conn.command(line)).await {
            Ok(Ok(response)) => Step::Reply(reply_of(&response)),
            Ok(Err(e)) => match e.status() {
                Some(code) => {
                    let text = std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_default();
                    Step::Reply(SmtpReply::new(u16::from(code), &text))
                }
                None => Step::Failed(e.to_string()),
            },
            Err(_) => Step::Failed("timed out".to_owned()),
        }
    }

    async fn quit(&self, conn: &mut AsyncSmtpConnection) {
        let _ = tokio::time::timeout(self.settings.command_timeout, conn.quit()).await;
    }
}

/// Why a domain has no host to ask.
enum MxOutcome {
    /// The domain accepts no mail (NXDOMAIN, RFC 7505 null MX): a synthetic permanent reply.
    NoMail(SmtpReply),
    /// DNS trouble or no reachable host address.
    Unknown(String),
}

/// The domain's mail hosts, best preference first, at most `limit`, each with at least one
/// address: the same lookup (and cached answer) delivery uses.
async fn mail_hosts(
    resolver: &HickoryMxResolver,
    domain: &Domain,
    limit: usize,
) -> Result<Vec<MxHost>, MxOutcome> {
    match resolver.resolve(domain).await {
        Ok(mut hosts) => {
            hosts.truncate(limit.max(1));
            Ok(hosts)
        }
        Err(e) if e.is_permanent() => Err(MxOutcome::NoMail(e.reply(domain))),
        Err(e) => Err(MxOutcome::Unknown(format!("{e} ({domain})"))),
    }
}

/// The outcome of one command: a reply (any code), or no usable reply.
enum Step {
    Reply(SmtpReply),
    Failed(String),
}

fn reply_of(response: &Response) -> SmtpReply {
    let text = response.message().collect::<Vec<_>>().join("\n");
    SmtpReply::new(u16::from(response.code()), &text)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Cached answers with per-entry expiry, at most `capacity` entries.
#[derive(Debug)]
pub(crate) struct AnswerCache {
    capacity: usize,
    entries: HashMap<String, (Instant, VerifyResult)>,
}

impl AnswerCache {
    pub(crate) fn new(capacity: usize) -> Self {
        AnswerCache {
            capacity,
            entries: HashMap::new(),
        }
    }

    pub(crate) fn get(&mut self, key: &str, now: Instant) -> Option<VerifyResult> {
        match self.entries.get(key) {
            Some((expires, value)) if *expires > now => Some(value.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub(crate) fn insert(&mut self, key: String, value: VerifyResult, ttl: Duration, now: Instant) {
        if self.capacity == 0 || ttl.is_zero() {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (expires, _)| *expires > now);
            if self.entries.len() >= self.capacity {
                // Still full: drop the entry closest to expiry.
                if let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (expires, _))| *expires)
                    .map(|(k, _)| k.clone())
                {
                    self.entries.remove(&oldest);
                }
            }
        }
        self.entries.insert(key, (now + ttl, value));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Fixed-window counter per domain: at most `limit` callouts per `window`.
#[derive(Debug)]
pub(crate) struct DomainRateLimiter {
    limit: u32,
    window: Duration,
    windows: HashMap<String, (Instant, u32)>,
}

/// Domains tracked before stale windows are dropped.
const MAX_TRACKED_DOMAINS: usize = 10_000;

impl DomainRateLimiter {
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        DomainRateLimiter {
            limit,
            window,
            windows: HashMap::new(),
        }
    }

    /// Counts one callout to `domain`, or says how long to wait.
    pub(crate) fn check(&mut self, domain: &str, now: Instant) -> Result<(), Duration> {
        if self.windows.len() >= MAX_TRACKED_DOMAINS && !self.windows.contains_key(domain) {
            let window = self.window;
            self.windows
                .retain(|_, (start, _)| now.duration_since(*start) < window);
            if self.windows.len() >= MAX_TRACKED_DOMAINS {
                // Refuse rather than grow without bound (only under a flood of distinct domains).
                return Err(Duration::from_secs(1));
            }
        }
        let entry = self.windows.entry(domain.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            let wait = self.window.saturating_sub(now.duration_since(entry.0));
            return Err(wait.max(Duration::from_secs(1)));
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(result: Deliverability) -> VerifyResult {
        VerifyResult {
            address: "a@b.test".into(),
            result,
            reply: None,
            mx_host: None,
            cached: false,
            reason: None,
        }
    }

    #[test]
    fn cache_expires_and_stays_bounded() {
        let t0 = Instant::now();
        let mut cache = AnswerCache::new(2);
        cache.insert(
            "a".into(),
            answer(Deliverability::Deliverable),
            Duration::from_secs(10),
            t0,
        );
        assert!(cache.get("a", t0 + Duration::from_secs(9)).is_some());
        assert!(cache.get("a", t0 + Duration::from_secs(10)).is_none());
        for (i, key) in ["x", "y", "z"].into_iter().enumerate() {
            cache.insert(
                key.into(),
                answer(Deliverability::Undeliverable),
                Duration::from_secs(100 + i as u64),
                t0,
            );
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get("x", t0).is_none(), "closest to expiry is evicted");
        assert!(cache.get("z", t0).is_some());
    }

    #[test]
    fn rate_limit_per_domain_window() {
        let t0 = Instant::now();
        let mut limiter = DomainRateLimiter::new(2, Duration::from_secs(60));
        assert!(limiter.check("a.test", t0).is_ok());
        assert!(limiter.check("a.test", t0).is_ok());
        let wait = limiter
            .check("a.test", t0 + Duration::from_secs(20))
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(40));
        assert!(
            limiter.check("b.test", t0).is_ok(),
            "other domains unaffected"
        );
        assert!(
            limiter
                .check("a.test", t0 + Duration::from_secs(60))
                .is_ok()
        );
    }
}
