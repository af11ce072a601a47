//! DNS for the Postrider relay: where a domain's mail goes (MX and address lookups) and the other
//! records the relay reads (SPF, DMARC, DKIM, through [`HickoryMxResolver::resolver`]).
//!
//! # Brief overview
//! - [`MxResolver`] is the seam delivery and address verification call; [`HickoryMxResolver`] is
//!   the production implementation on hickory-resolver, and tests point it at a DNS server on
//!   loopback.
//! - The rules (MX ordering, implicit MX, null MX) are pure and live in
//!   [`postrider_core::mx`]; this crate only asks DNS and applies them.
//! - One resolver is built per process and shared: its record cache (hickory's) and its answer
//!   cache ([`cache`]: the assembled host list of a domain, bounded, expiring with the shortest
//!   TTL involved, concurrent lookups of one name coalesced into one) serve every caller.

pub mod cache;
mod settings;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use postrider_core::mx::{MxPlan, MxRecord, plan_mx};
use postrider_core::{Domain, EnhancedStatus, SmtpReply};

pub use cache::{AnswerCache, CacheCounters, CacheStats};
pub use settings::DnsSettings;

/// Most TXT records of one name returned by [`MxResolver::lookup_txt`].
pub const MAX_TXT_RECORDS: usize = 64;

/// One mail exchanger to try, with the addresses to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// The host name (no trailing dot), or the address literal for `[ip]` domains.
    pub name: String,
    /// MX preference; lower is tried first.
    pub preference: u16,
    /// Its addresses, in the order to try them.
    pub addresses: Vec<IpAddr>,
}

/// Why a domain has no host to deliver to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MxError {
    /// RFC 7505 null MX (`MX 0 .`): the domain accepts no mail. Permanent.
    #[error("the domain publishes a null MX and accepts no mail")]
    NullMx,
    /// NXDOMAIN: the domain does not exist. Permanent.
    #[error("the domain does not exist")]
    NoSuchDomain,
    /// SERVFAIL, REFUSED, timeouts, unreachable resolvers: try again later.
    #[error("DNS lookup failed: {0}")]
    Transient(String),
    /// MX records (or the implicit MX) exist but no host has an address. Treated as transient
    /// (`4.4.4`): RFC 5321 §5.1 only says this must be reported as an error, and DNS data that is
    /// being fixed should get the queue lifetime to recover; expiry bounces it in the end.
    #[error("no mail exchanger of the domain has an address")]
    NoAddresses,
    /// The domain's TLS policy (MTA-STS `enforce`) leaves no MX host to deliver to. Transient
    /// (`4.7.5`): policies and MX records get fixed.
    #[error("{0}")]
    TlsPolicy(String),
}

impl MxError {
    /// Label of `postrider_dns_lookups_total{result}`.
    pub fn label(&self) -> &'static str {
        match self {
            MxError::NullMx => "nullmx",
            MxError::NoSuchDomain => "nxdomain",
            MxError::NoAddresses => "nodata",
            // The lookups worked; the policy refused their answer.
            MxError::TlsPolicy(_) => "ok",
            MxError::Transient(why) => {
                let why = why.to_ascii_lowercase();
                if why.contains("timed out") || why.contains("timeout") {
                    "timeout"
                } else if why.contains("servfail") {
                    "servfail"
                } else {
                    "error"
                }
            }
        }
    }

    /// Whether the domain itself says it takes no mail (NXDOMAIN, null MX): permanent.
    pub fn is_permanent(&self) -> bool {
        matches!(self, MxError::NullMx | MxError::NoSuchDomain)
    }

    /// The reply recorded for every recipient of the domain (no server was reached, so it is made
    /// up here, in the form a server would use).
    pub fn reply(&self, domain: &Domain) -> SmtpReply {
        match self {
            MxError::NullMx => SmtpReply::synthetic(
                556,
                EnhancedStatus::new(5, 1, 10),
                format!("domain {domain} does not accept mail (null MX)"),
            ),
            MxError::NoSuchDomain => SmtpReply::synthetic(
                550,
                EnhancedStatus::new(5, 1, 2),
                format!("domain {domain} does not exist (NXDOMAIN)"),
            ),
            MxError::Transient(why) => SmtpReply::synthetic(
                451,
                EnhancedStatus::new(4, 4, 3),
                format!(
                    "DNS lookup for {domain} failed: {}",
                    postrider_core::dsn::one_line(why)
                ),
            ),
            MxError::NoAddresses => SmtpReply::synthetic(
                451,
                EnhancedStatus::new(4, 4, 4),
                format!("no mail exchanger of {domain} has an address"),
            ),
            MxError::TlsPolicy(why) => SmtpReply::synthetic(
                451,
                EnhancedStatus::new(4, 7, 5),
                postrider_core::dsn::one_line(why),
            ),
        }
    }
}

/// A boxed, sendable future, so [`MxResolver`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Resolves a destination domain to the hosts to try, best first.
///
/// Contract: the result is never an empty `Ok`; hosts are in the order to try them (preference,
/// equal preferences shuffled); every host has at least one address. An address literal domain
/// (`[192.0.2.1]`) yields that address without any lookup.
pub trait MxResolver: Send + Sync {
    /// Looks up `domain`.
    fn resolve<'a>(&'a self, domain: &'a Domain) -> BoxFuture<'a, Result<Vec<MxHost>, MxError>>;

    /// The addresses of host `name` (A and AAAA, no MX), for static routes and the relay host.
    /// The default knows no names.
    fn resolve_host<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, MxError>> {
        Box::pin(async move {
            Err(MxError::Transient(format!(
                "this resolver cannot look up host {name}"
            )))
        })
    }

    /// The TXT records of `name` (such as `_mta-sts.example.com`), each as one string; empty
    /// when the name has none or does not exist. The default knows no records.
    fn lookup_txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<String>, MxError>> {
        let _ = name;
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// [`MxResolver`] on hickory-resolver, with the answer cache of [`cache`]. Clones share both
/// caches.
#[derive(Clone)]
pub struct HickoryMxResolver {
    resolver: TokioResolver,
    max_hosts: usize,
    answers: Option<Arc<AnswerCache>>,
}

impl std::fmt::Debug for HickoryMxResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HickoryMxResolver")
            .field("max_hosts", &self.max_hosts)
            .field("answer_cache", &self.answers.is_some())
            .finish_non_exhaustive()
    }
}

/// The resolver could not be built (unreadable resolv.conf, bad options).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the DNS resolver: {0}")]
pub struct ResolverBuildError(String);

impl HickoryMxResolver {
    /// MX hosts whose addresses are looked up, per domain, unless changed with
    /// [`HickoryMxResolver::with_max_hosts`].
    pub const DEFAULT_MAX_HOSTS: usize = 5;

    /// A resolver using the system configuration (`/etc/resolv.conf`) and the default settings.
    pub fn system() -> Result<Self, ResolverBuildError> {
        Self::system_with(&DnsSettings::default())
    }

    /// A resolver using the system name servers (`/etc/resolv.conf`) with the timeouts and caches
    /// of `dns`.
    pub fn system_with(dns: &DnsSettings) -> Result<Self, ResolverBuildError> {
        let mut builder =
            TokioResolver::builder_tokio().map_err(|e| ResolverBuildError(e.to_string()))?;
        apply_options(builder.options_mut(), dns);
        let resolver = builder
            .build()
            .map_err(|e| ResolverBuildError(e.to_string()))?;
        Ok(Self::from_parts(resolver, dns))
    }

    /// A resolver asking exactly these name servers (UDP, then TCP on truncation), with `timeout`
    /// per query and one attempt, and no cache: for tests and for operators with a local
    /// recursive resolver.
    pub fn with_nameservers(
        servers: &[SocketAddr],
        timeout: Duration,
    ) -> Result<Self, ResolverBuildError> {
        let dns = DnsSettings {
            timeout,
            attempts: 1,
            cache_size: 0,
            ..Default::default()
        };
        Self::with_nameservers_and(servers, &dns)
    }

    /// A resolver asking exactly these name servers (UDP, then TCP on truncation) with the
    /// timeouts and caches of `dns`.
    pub fn with_nameservers_and(
        servers: &[SocketAddr],
        dns: &DnsSettings,
    ) -> Result<Self, ResolverBuildError> {
        let name_servers = servers
            .iter()
            .map(|s| {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                NameServerConfig::new(s.ip(), true, vec![udp, tcp])
            })
            .collect();
        let mut opts = ResolverOpts::default();
        apply_options(&mut opts, dns);
        let resolver = Resolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], name_servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .map_err(|e| ResolverBuildError(e.to_string()))?;
        Ok(Self::from_parts(resolver, dns))
    }

    /// Counts answer-cache hits and misses into `counters` (every clone shares them; no effect
    /// without an answer cache).
    pub fn count_cache_lookups(&self, counters: CacheCounters) {
        if let Some(cache) = &self.answers {
            cache.count_into(counters);
        }
    }

    fn from_parts(resolver: TokioResolver, dns: &DnsSettings) -> Self {
        HickoryMxResolver {
            resolver,
            max_hosts: Self::DEFAULT_MAX_HOSTS,
            answers: (dns.cache_size > 0).then(|| Arc::new(AnswerCache::new(dns))),
        }
    }

    /// The underlying hickory resolver (with this relay's name servers and record cache), for
    /// other lookups such as SPF and DKIM records.
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    /// Hits, misses and size of the answer cache (all zero without one).
    pub fn cache_stats(&self) -> CacheStats {
        self.answers.as_ref().map(|c| c.stats()).unwrap_or_default()
    }

    /// Changes how many MX hosts get their addresses looked up per domain (at least 1).
    pub fn with_max_hosts(mut self, max_hosts: usize) -> Self {
        self.max_hosts = max_hosts.max(1);
        self
    }

    /// The MX records of `domain` as published, unordered (no implicit MX, no null-MX rule
    /// applied): for reports such as `check-domain`. `Ok(vec![])` means NODATA.
    pub async fn mx_records(&self, domain: &Domain) -> Result<Vec<MxRecord>, MxError> {
        self.mx_records_until(domain)
            .await
            .map(|(records, _)| records)
            .map_err(|(e, _)| e)
    }

    async fn mx_records_until(
        &self,
        domain: &Domain,
    ) -> Result<(Vec<MxRecord>, Option<Instant>), (MxError, Option<Instant>)> {
        match self.resolver.mx_lookup(domain.to_fqdn().as_str()).await {
            Ok(lookup) => {
                let records = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => {
                            Some(MxRecord::new(mx.preference, &mx.exchange.to_ascii()))
                        }
                        _ => None,
                    })
                    .collect();
                Ok((records, Some(lookup.valid_until())))
            }
            Err(e) if e.is_nx_domain() => Err((MxError::NoSuchDomain, negative_until(&e))),
            Err(e) if e.is_no_records_found() => Ok((Vec::new(), negative_until(&e))),
            Err(e) => Err((MxError::Transient(describe(&e)), None)),
        }
    }

    /// Looks `domain` up without the answer cache; also returns until when the answer holds
    /// (the shortest TTL of the records used, `None` when DNS gave none).
    async fn lookup_uncached(
        &self,
        domain: &Domain,
    ) -> (Result<Vec<MxHost>, MxError>, Option<Instant>) {
        let (records, mx_until) = match self.mx_records_until(domain).await {
            Ok(found) => found,
            Err((e, until)) => return (Err(e), until),
        };
        let records = match plan_mx(domain, records, self.max_hosts, &mut rand::rng()) {
            MxPlan::NullMx => return (Err(MxError::NullMx), mx_until),
            MxPlan::Hosts(r) => r,
        };
        let mut until = mx_until;
        let mut hosts = Vec::with_capacity(records.len());
        let mut transient = None;
        for record in records {
            match self
                .resolver
                .lookup_ip(format!("{}.", record.exchange))
                .await
            {
                Ok(ips) => {
                    until = earliest(until, Some(ips.valid_until()));
                    let addresses: Vec<IpAddr> = ips.iter().collect();
                    if !addresses.is_empty() {
                        hosts.push(MxHost {
                            name: record.exchange,
                            preference: record.preference,
                            addresses,
                        });
                    }
                }
                Err(e) if e.is_nx_domain() || e.is_no_records_found() => {
                    until = earliest(until, negative_until(&e));
                    tracing::debug!(domain = %domain, mx = %record.exchange, "MX host has no address; skipped");
                }
                Err(e) => transient = Some(describe(&e)),
            }
        }
        if hosts.is_empty() {
            return match transient {
                Some(why) => (Err(MxError::Transient(why)), None),
                None => (Err(MxError::NoAddresses), until),
            };
        }
        if transient.is_some() {
            // Some hosts are missing for now: use the answer, but do not keep it.
            until = None;
        }
        (Ok(hosts), until)
    }

    async fn lookup(&self, domain: &Domain) -> Result<Vec<MxHost>, MxError> {
        if let Some(ip) = domain.address_literal() {
            return Ok(vec![MxHost {
                name: domain.to_string(),
                preference: 0,
                addresses: vec![ip],
            }]);
        }
        match &self.answers {
            Some(cache) => {
                cache
                    .get_or_lookup(domain, self.lookup_uncached(domain))
                    .await
            }
            None => self.lookup_uncached(domain).await.0,
        }
    }
}

fn apply_options(opts: &mut ResolverOpts, dns: &DnsSettings) {
    opts.timeout = dns.timeout;
    opts.attempts = dns.attempts.max(1);
    opts.cache_size = dns.cache_size;
    opts.negative_max_ttl = Some(dns.negative_max_ttl);
    opts.positive_max_ttl = Some(dns.positive_max_ttl);
    opts.positive_min_ttl = Some(dns.positive_min_ttl);
}

/// The earlier of two expiry times; `None` (unknown) only when both are.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Until when a negative answer holds, from the SOA minimum the server sent with it.
fn negative_until(e: &NetError) -> Option<Instant> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords {
            negative_ttl: Some(ttl),
            ..
        })) => Some(Instant::now() + Duration::from_secs(u64::from(*ttl))),
        _ => None,
    }
}

/// A short description of a resolver error for logs and synthetic replies.
fn describe(e: &NetError) -> String {
    let text = e.to_string();
    if text.chars().count() > 200 {
        text.chars().take(200).collect()
    } else {
        text
    }
}

impl MxResolver for HickoryMxResolver {
    fn resolve<'a>(&'a self, domain: &'a Domain) -> BoxFuture<'a, Result<Vec<MxHost>, MxError>> {
        Box::pin(self.lookup(domain))
    }

    fn resolve_host<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, MxError>> {
        Box::pin(async move {
            if let Ok(ip) = name.parse::<IpAddr>() {
                return Ok(vec![ip]);
            }
            let fqdn = format!("{}.", name.trim_end_matches('.'));
            match self.resolver.lookup_ip(fqdn).await {
                Ok(ips) => {
                    let v: Vec<IpAddr> = ips.iter().collect();
                    if v.is_empty() {
                        Err(MxError::NoAddresses)
                    } else {
                        Ok(v)
                    }
                }
                // A route or relay host that does not resolve is a configuration problem: retry.
                Err(e) if e.is_nx_domain() || e.is_no_records_found() => Err(MxError::NoAddresses),
                Err(e) => Err(MxError::Transient(describe(&e))),
            }
        })
    }

    fn lookup_txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<String>, MxError>> {
        Box::pin(async move {
            let fqdn = format!("{}.", name.trim_end_matches('.'));
            match self.resolver.txt_lookup(fqdn).await {
                Ok(lookup) => Ok(lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(txt) => Some(
                            txt.txt_data
                                .iter()
                                .map(|part| String::from_utf8_lossy(part))
                                .collect::<String>(),
                        ),
                        _ => None,
                    })
                    .take(MAX_TXT_RECORDS)
                    .collect()),
                Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
                Err(e) => Err(MxError::Transient(describe(&e))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mx_errors_become_replies() {
        let d = Domain::parse("example.org").unwrap();
        let table = [
            (MxError::NullMx, "556 5.1.10"),
            (MxError::NoSuchDomain, "550 5.1.2"),
            (MxError::Transient("SERVFAIL\r\nx".into()), "451 4.4.3"),
            (MxError::NoAddresses, "451 4.4.4"),
            (
                MxError::TlsPolicy("MTA-STS policy of example.org: no MX host matches".into()),
                "451 4.7.5 MTA-STS policy of example.org",
            ),
        ];
        for (err, prefix) in table {
            let reply = err.reply(&d).to_string();
            assert!(reply.starts_with(prefix), "{reply}");
            assert!(!reply.contains('\r'));
        }
    }

    #[test]
    fn earliest_expiry_wins() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        assert_eq!(earliest(Some(now), Some(later)), Some(now));
        assert_eq!(earliest(None, Some(later)), Some(later));
        assert_eq!(earliest(None, None), None);
    }

    #[tokio::test]
    async fn address_literals_need_no_dns() {
        // nothing listens on this port: any lookup would fail
        let r = HickoryMxResolver::with_nameservers(
            &["127.0.0.1:9".parse().unwrap()],
            Duration::from_millis(50),
        )
        .unwrap();
        let d = Domain::parse("[127.0.0.5]").unwrap();
        let hosts = r.resolve(&d).await.unwrap();
        assert_eq!(
            hosts,
            vec![MxHost {
                name: "[127.0.0.5]".into(),
                preference: 0,
                addresses: vec!["127.0.0.5".parse().unwrap()]
            }]
        );
    }
}
