//! Where to deliver a domain's mail: MX lookup and ordering (RFC 5321 §5.1, RFC 7505).
//!
//! [`MxResolver`] is the seam: production uses [`HickoryMxResolver`], tests may point it at a
//! loopback DNS server. The ordering rules live in the pure [`order_mx`], which takes the RNG as
//! an argument.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use postrider_core::{Domain, EnhancedStatus, SmtpReply};
use rand::Rng;
use rand::seq::SliceRandom;

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

/// One MX record as found in DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRecord {
    /// MX preference.
    pub preference: u16,
    /// The exchange name without trailing dot; empty for the root (`.`).
    pub exchange: String,
}

/// What the MX records of a domain say, after RFC 5321 §5.1 and RFC 7505 rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxPlan {
    /// The domain has a null MX.
    NullMx,
    /// Try these exchange names in this order.
    Hosts(Vec<MxRecord>),
}

/// Orders MX records: ascending preference, equal preferences in random order (RFC 5321 §5.1),
/// duplicates removed, at most `limit` kept.
///
/// A lone root exchange (`0 .`) is a null MX. A root exchange next to real ones violates
/// RFC 7505 §3; the root entry is then ignored and the real hosts are used.
pub fn order_mx<R: Rng + ?Sized>(mut records: Vec<MxRecord>, limit: usize, rng: &mut R) -> MxPlan {
    let real = records.iter().filter(|r| !r.exchange.is_empty()).count();
    if real == 0 && !records.is_empty() {
        return MxPlan::NullMx;
    }
    records.retain(|r| !r.exchange.is_empty());
    for r in &mut records {
        r.exchange.make_ascii_lowercase();
    }
    records.sort_by(|a, b| {
        a.preference
            .cmp(&b.preference)
            .then_with(|| a.exchange.cmp(&b.exchange))
    });
    records.dedup_by(|a, b| a.exchange == b.exchange);
    let mut start = 0;
    while start < records.len() {
        let pref = records[start].preference;
        let end = records[start..]
            .iter()
            .position(|r| r.preference != pref)
            .map_or(records.len(), |n| start + n);
        records[start..end].shuffle(rng);
        start = end;
    }
    records.truncate(limit);
    MxPlan::Hosts(records)
}

/// [`MxResolver`] on hickory-resolver.
#[derive(Clone)]
pub struct HickoryMxResolver {
    resolver: TokioResolver,
    max_hosts: usize,
}

impl std::fmt::Debug for HickoryMxResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HickoryMxResolver")
            .field("max_hosts", &self.max_hosts)
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

    /// A resolver using the system configuration (`/etc/resolv.conf`).
    pub fn system() -> Result<Self, ResolverBuildError> {
        let resolver = TokioResolver::builder_tokio()
            .map_err(|e| ResolverBuildError(e.to_string()))?
            .build()
            .map_err(|e| ResolverBuildError(e.to_string()))?;
        Ok(HickoryMxResolver {
            resolver,
            max_hosts: Self::DEFAULT_MAX_HOSTS,
        })
    }

    /// A resolver using the system name servers (`/etc/resolv.conf`) with the timeouts and the
    /// bounded, TTL-respecting cache of `dns` (negative answers cached at most
    /// `dns.negative_max_ttl`).
    pub fn system_with(dns: &crate::settings::DnsSettings) -> Result<Self, ResolverBuildError> {
        let mut builder =
            TokioResolver::builder_tokio().map_err(|e| ResolverBuildError(e.to_string()))?;
        let opts = builder.options_mut();
        opts.timeout = dns.timeout;
        opts.attempts = dns.attempts.max(1);
        opts.cache_size = dns.cache_size;
        opts.negative_max_ttl = Some(dns.negative_max_ttl);
        opts.positive_max_ttl = Some(dns.positive_max_ttl);
        let resolver = builder
            .build()
            .map_err(|e| ResolverBuildError(e.to_string()))?;
        Ok(HickoryMxResolver {
            resolver,
            max_hosts: Self::DEFAULT_MAX_HOSTS,
        })
    }

    /// A resolver asking exactly these name servers (UDP, then TCP on truncation), with `timeout`
    /// per query and one attempt, and no cache: for tests and for operators with a local
    /// recursive resolver.
    pub fn with_nameservers(
        servers: &[SocketAddr],
        timeout: Duration,
    ) -> Result<Self, ResolverBuildError> {
        let dns = crate::settings::DnsSettings {
            timeout,
            attempts: 1,
            cache_size: 0,
            ..Default::default()
        };
        Self::with_nameservers_and(servers, &dns)
    }

    /// A resolver asking exactly these name servers (UDP, then TCP on truncation) with the
    /// timeouts and cache of `dns`.
    pub fn with_nameservers_and(
        servers: &[SocketAddr],
        dns: &crate::settings::DnsSettings,
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
        opts.timeout = dns.timeout;
        opts.attempts = dns.attempts.max(1);
        opts.cache_size = dns.cache_size;
        opts.negative_max_ttl = Some(dns.negative_max_ttl);
        opts.positive_max_ttl = Some(dns.positive_max_ttl);
        let resolver = Resolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], name_servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .map_err(|e| ResolverBuildError(e.to_string()))?;
        Ok(HickoryMxResolver {
            resolver,
            max_hosts: Self::DEFAULT_MAX_HOSTS,
        })
    }

    /// The underlying hickory resolver (with this relay's name servers and cache), for other
    /// lookups such as SPF and DKIM records.
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    /// Changes how many MX hosts get their addresses looked up per domain (at least 1).
    pub fn with_max_hosts(mut self, max_hosts: usize) -> Self {
        self.max_hosts = max_hosts.max(1);
        self
    }

    async fn lookup(&self, domain: &Domain) -> Result<Vec<MxHost>, MxError> {
        if let Some(ip) = domain.address_literal() {
            return Ok(vec![MxHost {
                name: domain.to_string(),
                preference: 0,
                addresses: vec![ip],
            }]);
        }
        let fqdn = domain.to_fqdn();
        let records = match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some(MxRecord {
                        preference: mx.preference,
                        exchange: mx.exchange.to_ascii().trim_end_matches('.').to_owned(),
                    }),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            Err(e) if e.is_nx_domain() => return Err(MxError::NoSuchDomain),
            Err(e) if e.is_no_records_found() => Vec::new(),
            Err(e) => return Err(MxError::Transient(describe(&e))),
        };
        let plan = if records.is_empty() {
            // RFC 5321 §5.1: no MX records → the domain itself is the implicit MX, preference 0.
            MxPlan::Hosts(vec![MxRecord {
                preference: 0,
                exchange: domain.as_str().to_owned(),
            }])
        } else {
            order_mx(records, self.max_hosts, &mut rand::rng())
        };
        let records = match plan {
            MxPlan::NullMx => return Err(MxError::NullMx),
            MxPlan::Hosts(r) => r,
        };
        let mut hosts = Vec::with_capacity(records.len());
        let mut transient = None;
        for record in records {
            match self
                .resolver
                .lookup_ip(format!("{}.", record.exchange))
                .await
            {
                Ok(ips) => {
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
                    tracing::debug!(domain = %domain, mx = %record.exchange, "MX host has no address; skipped");
                }
                Err(e) => transient = Some(describe(&e)),
            }
        }
        if hosts.is_empty() {
            return Err(match transient {
                Some(why) => MxError::Transient(why),
                None => MxError::NoAddresses,
            });
        }
        Ok(hosts)
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
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn rec(preference: u16, exchange: &str) -> MxRecord {
        MxRecord {
            preference,
            exchange: exchange.to_owned(),
        }
    }

    fn names(plan: &MxPlan) -> Vec<String> {
        match plan {
            MxPlan::Hosts(h) => h
                .iter()
                .map(|r| format!("{}:{}", r.preference, r.exchange))
                .collect(),
            MxPlan::NullMx => vec!["null".into()],
        }
    }

    #[test]
    fn sorts_by_preference() {
        let mut rng = StdRng::seed_from_u64(1);
        let plan = order_mx(
            vec![
                rec(20, "b.example"),
                rec(10, "A.example"),
                rec(30, "c.example"),
            ],
            5,
            &mut rng,
        );
        assert_eq!(
            names(&plan),
            vec!["10:a.example", "20:b.example", "30:c.example"]
        );
    }

    #[test]
    fn shuffles_only_within_equal_preference() {
        let input = vec![
            rec(10, "a1"),
            rec(10, "a2"),
            rec(10, "a3"),
            rec(5, "first"),
            rec(20, "last"),
        ];
        let mut seen_orders = std::collections::HashSet::new();
        for seed in 0..64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let got = names(&order_mx(input.clone(), 10, &mut rng));
            assert_eq!(got.first().map(String::as_str), Some("5:first"));
            assert_eq!(got.last().map(String::as_str), Some("20:last"));
            let mut middle = got[1..4].to_vec();
            seen_orders.insert(middle.clone());
            middle.sort();
            assert_eq!(middle, vec!["10:a1", "10:a2", "10:a3"]);
        }
        // the equal-preference group really is shuffled (all 6 permutations occur in 64 seeds)
        assert_eq!(seen_orders.len(), 6);
        // and the same seed gives the same order
        let a = order_mx(input.clone(), 10, &mut StdRng::seed_from_u64(7));
        let b = order_mx(input, 10, &mut StdRng::seed_from_u64(7));
        assert_eq!(a, b);
    }

    #[test]
    fn null_mx_and_limits() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(order_mx(vec![rec(0, "")], 5, &mut rng), MxPlan::NullMx);
        // a root entry next to real hosts is ignored
        assert_eq!(
            names(&order_mx(vec![rec(0, ""), rec(10, "mx")], 5, &mut rng)),
            vec!["10:mx"]
        );
        // duplicates removed, limit applied
        let plan = order_mx(
            vec![rec(10, "a"), rec(10, "a"), rec(20, "b"), rec(30, "c")],
            2,
            &mut rng,
        );
        assert_eq!(names(&plan), vec!["10:a", "20:b"]);
    }

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
