//! Tunables of the scheduler and the SMTP client, with RFC 5321 defaults.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use postrider_core::RetryPolicy;

/// How the client uses STARTTLS (RFC 3207).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TlsMode {
    /// Use STARTTLS when the server offers it, without verifying the certificate (anything is
    /// better than plaintext against a passive observer). If the handshake fails, the same host is
    /// retried in plaintext.
    #[default]
    Opportunistic,
    /// Deliver only over TLS (certificate still not verified); a host without STARTTLS, or a
    /// failed handshake, is a transient failure (`4.7.10`-style, retried later).
    Required,
    /// Never use STARTTLS.
    Disabled,
}

/// Overrides for one recipient domain (key of [`DeliverySettings::domains`], lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DomainPolicy {
    /// Sessions delivering to this domain at once (on top of the per-host limit); `None` = only
    /// the per-host limit applies.
    pub max_connections: Option<usize>,
    /// Messages started per minute for this domain; beyond it messages are postponed (not counted
    /// as attempts) until a slot frees. `None` = unlimited.
    pub messages_per_minute: Option<u32>,
    /// STARTTLS policy for this domain instead of [`DeliverySettings::tls`].
    pub tls: Option<TlsMode>,
    /// Whether this domain's MTA-STS policy is looked up and applied; `None` follows
    /// [`DeliverySettings::mta_sts`].
    pub mta_sts: Option<bool>,
}

/// A static route: recipient domains matching `domain` go to `host:port` instead of their MX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `example.com` (exact) or `*.example.com` (any subdomain, not the domain itself); lower case.
    pub domain: String,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Route {
    /// Parses `to` as `host:port`, `[v6]:port` or `host` (port 25).
    pub fn parse(domain: &str, to: &str) -> Result<Route, InvalidSettings> {
        let bad = InvalidSettings {
            setting: "routes",
            reason: "destination must be host, host:port or [ipv6]:port",
        };
        let (host, port) = if let Some(rest) = to.strip_prefix('[') {
            let (h, p) = rest.split_once(']').ok_or(bad.clone())?;
            let port = match p.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad.clone())?,
                None if p.is_empty() => 25,
                None => return Err(bad),
            };
            (h.to_owned(), port)
        } else {
            match to.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad.clone())?),
                None => (to.to_owned(), 25),
            }
        };
        if host.is_empty() || port == 0 {
            return Err(bad);
        }
        Ok(Route {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            host,
            port,
        })
    }

    /// Whether recipient domain `domain` (lower case) uses this route.
    pub fn matches(&self, domain: &str) -> bool {
        match self.domain.strip_prefix("*.") {
            Some(parent) => domain
                .strip_suffix(parent)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => self.domain == domain,
        }
    }
}

/// How the session with the relay host is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RelayTls {
    /// STARTTLS is mandatory (submission port 587 style).
    #[default]
    Required,
    /// STARTTLS when offered.
    Opportunistic,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// An upstream provider that receives all mail not matched by a [`Route`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayhost {
    /// Host name or IP address.
    pub host: String,
    /// TCP port (587 typical).
    pub port: u16,
    /// AUTH user; AUTH is used when both user and password are set.
    pub username: Option<String>,
    /// AUTH password.
    pub password: Option<String>,
    /// Transport protection.
    pub tls: RelayTls,
    /// Allow AUTH over a plaintext session (default false: credentials only travel encrypted).
    pub allow_plaintext_auth: bool,
}

/// The destination circuit breaker: consecutive connection failures, `421` replies, or
/// transactions refused entirely as rate-limited or spam from an MX host suspend it for a
/// backoff period that doubles on every renewed failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker (3); 0 disables the breaker.
    pub failure_threshold: u32,
    /// First suspension (1 min).
    pub initial_backoff: Duration,
    /// Longest suspension (30 min).
    pub max_backoff: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failure_threshold: 3,
            initial_backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(30 * 60),
        }
    }
}

pub use postrider_dns::DnsSettings;

/// Per-phase client timeouts. The defaults are RFC 5321 §4.5.3.2's minimums; lettre has no timeout
/// of its own after connecting, so each call is wrapped and the connection dropped on expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpTimeouts {
    /// TCP connect (30 s; not in the RFC, common practice).
    pub connect: Duration,
    /// Waiting for the 220 greeting (5 min).
    pub greeting: Duration,
    /// EHLO and STARTTLS including the handshake (5 min, as for MAIL).
    pub ehlo: Duration,
    /// MAIL FROM (5 min).
    pub mail: Duration,
    /// Each RCPT TO (5 min).
    pub rcpt: Duration,
    /// DATA until the 354 (2 min).
    pub data: Duration,
    /// Sending the content and waiting for the final reply (10 min).
    pub data_end: Duration,
    /// RSET and QUIT: we do not wait long for a courtesy reply.
    pub quit: Duration,
}

impl Default for SmtpTimeouts {
    fn default() -> Self {
        let min = |n: u64| Duration::from_secs(n * 60);
        SmtpTimeouts {
            connect: Duration::from_secs(30),
            greeting: min(5),
            ehlo: min(5),
            mail: min(5),
            rcpt: min(5),
            data: min(2),
            data_end: min(10),
            quit: Duration::from_secs(5),
        }
    }
}

impl SmtpTimeouts {
    /// Every timeout set to `d`: convenient for tests against local peers.
    pub fn uniform(d: Duration) -> Self {
        SmtpTimeouts {
            connect: d,
            greeting: d,
            ehlo: d,
            mail: d,
            rcpt: d,
            data: d,
            data_end: d,
            quit: d,
        }
    }
}

/// Everything the delivery side can be tuned with.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Our host name: sent in EHLO, used in `Reporting-MTA`, `MAILER-DAEMON@…` and DSN
    /// `Message-ID`s. Default `localhost`; production configs must set a real FQDN.
    pub hostname: String,
    /// The TCP port of remote MX hosts (25; tests point it at local sinks).
    pub port: u16,
    /// Messages being attempted at once, process-wide (256). Due messages beyond this stay in the
    /// store, not in memory.
    pub max_concurrent_deliveries: usize,
    /// Destination domains of one message attempted at once (8).
    pub max_domains_per_message: usize,
    /// How long a leased message is ours before another scheduler pass may take it (10 min). Must
    /// exceed `max_attempt_duration`, see [`DeliverySettings::validate`].
    pub lease: Duration,
    /// Upper bound on one attempt of one message, all domains together (9 min). Domains still
    /// running when it expires count as a transient failure (`4.4.7`).
    pub max_attempt_duration: Duration,
    /// Leases taken per scheduler pass (256).
    pub batch_size: usize,
    /// Longest idle sleep of the scheduler between passes (30 s): a safety net in case a wake-up is
    /// missed; normally it wakes on the next due time or on new work.
    pub max_idle: Duration,
    /// Per-phase SMTP client timeouts.
    pub timeouts: SmtpTimeouts,
    /// STARTTLS policy.
    pub tls: TlsMode,
    /// When to retry and when to give up.
    pub retry: RetryPolicy,
    /// MX hosts tried per domain and attempt (5).
    pub max_mx_hosts: usize,
    /// Addresses tried per MX host (2).
    pub max_addresses_per_host: usize,
    /// Largest original returned in full by a `RET=FULL` bounce (10 MiB); larger originals are
    /// returned as headers only.
    pub max_returned_message: usize,

    // ---- production delivery engine ----
    /// Name sent in EHLO; `None` uses `hostname` (which stays the DSN `Reporting-MTA`).
    pub helo_name: Option<String>,
    /// Source address of outbound connections; `None` lets the OS choose.
    pub source_ip: Option<IpAddr>,
    /// Idle pooled connections are closed after this long (30 s).
    pub connection_idle_timeout: Duration,
    /// Transactions on one connection before it is closed (100).
    pub max_messages_per_connection: u32,
    /// Outbound connections open at once, idle pooled ones included (256).
    pub max_outbound_connections: usize,
    /// Connections open at once to one destination address (IP and port), idle ones included
    /// (16).
    pub max_connections_per_host: usize,
    /// Per recipient domain overrides, keyed by lower-case domain.
    pub domains: HashMap<String, DomainPolicy>,
    /// The destination circuit breaker.
    pub breaker: BreakerSettings,
    /// Verify server certificates (false). When false, certificates are accepted as they are
    /// (and whether they would have verified is recorded); when true, a certificate that does not
    /// verify fails the STARTTLS handshake: transient in required mode, plaintext fallback in
    /// opportunistic mode.
    pub verify_certificates: bool,
    /// PEM file of extra trusted root certificates (for private relay hosts, and the trust
    /// anchor of test MTA-STS policy servers and MX hosts).
    pub ca_file: Option<std::path::PathBuf>,
    /// Look up and apply the MTA-STS policies (RFC 8461) of recipient domains delivered to by
    /// MX (true). Routes and the relay host are never subject to them.
    pub mta_sts: bool,
    /// The TCP port MTA-STS policies are fetched from (443). Only tests change it: RFC 8461
    /// fixes the policy URL to `https://mta-sts.<domain>/`.
    pub mta_sts_https_port: u16,
    /// Static routes, first match wins; they take precedence over `relayhost` and MX lookup.
    pub routes: Vec<Route>,
    /// Send everything not matched by a route through this host.
    pub relayhost: Option<Relayhost>,
    /// Queue a delay warning (`Action: delayed`) once when a message has been deferred this long
    /// (4 h); zero disables delay warnings.
    pub delay_warning_after: Duration,
    /// Distinct recipient domains given their own label in
    /// `postrider_delivery_by_domain_total` (50, the first seen); the rest count as `other`.
    pub metrics_max_domains: usize,
    /// Signs each message before transmission (DKIM); `None` sends messages as stored.
    pub signer: Option<std::sync::Arc<dyn postrider_core::MessageSigner>>,
    /// Capture every message instead of sending it (`delivery.mode = "capture"`): outcomes are
    /// simulated locally (see `capture`), as for messages marked
    /// [`postrider_core::QueuedMessage::sandbox`], which are captured whatever this says.
    pub capture_all: bool,
    /// Signed per-recipient return paths (`[bounces] domain`): each recipient of a message with
    /// a sender gets its own transaction from `b+<token>@<bounce domain>`; messages with the
    /// null reverse-path (notifications) keep it. `None` sends from the message's own sender.
    pub verp: Option<postrider_bounces::VerpSigner>,
    /// One-click unsubscribe links (`[unsubscribe]`): each recipient of a message marked
    /// [`postrider_core::QueuedMessage::unsubscribe`] gets its own transaction and its own
    /// `List-Unsubscribe` / `List-Unsubscribe-Post` fields, added before DKIM signing. `None`
    /// sends such messages without links.
    pub unsubscribe: Option<postrider_core::unsubscribe::UnsubscribeLinks>,
    /// SMTP TLS reporting (RFC 8460, `[tls_reports]`): count the sessions held to MTA-STS
    /// policies and send each policy domain a daily report. `None` (the default) neither
    /// counts nor sends.
    pub tls_reports: Option<TlsReportSettings>,
}

/// Who the daily TLS reports come from (`[tls_reports]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsReportSettings {
    /// `organization-name` of the reports.
    pub organization: String,
    /// `contact-info` of the reports (an address to write to about them).
    pub contact: String,
    /// The sender (header and envelope) of reports sent by mail.
    pub from: postrider_core::Address,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            hostname: "localhost".to_owned(),
            port: 25,
            max_concurrent_deliveries: 256,
            max_domains_per_message: 8,
            lease: Duration::from_secs(600),
            max_attempt_duration: Duration::from_secs(540),
            batch_size: 256,
            max_idle: Duration::from_secs(30),
            timeouts: SmtpTimeouts::default(),
            tls: TlsMode::default(),
            retry: RetryPolicy::default(),
            max_mx_hosts: 5,
            max_addresses_per_host: 2,
            max_returned_message: 10 * 1024 * 1024,
            helo_name: None,
            source_ip: None,
            connection_idle_timeout: Duration::from_secs(30),
            max_messages_per_connection: 100,
            max_outbound_connections: 256,
            max_connections_per_host: 16,
            domains: HashMap::new(),
            breaker: BreakerSettings::default(),
            verify_certificates: false,
            ca_file: None,
            mta_sts: true,
            mta_sts_https_port: 443,
            routes: Vec::new(),
            relayhost: None,
            delay_warning_after: Duration::from_secs(4 * 3600),
            metrics_max_domains: 50,
            signer: None,
            verp: None,
            unsubscribe: None,
            capture_all: false,
            tls_reports: None,
        }
    }
}

/// A setting is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid delivery setting {setting}: {reason}")]
pub struct InvalidSettings {
    /// The field name.
    pub setting: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl DeliverySettings {
    /// The EHLO name.
    pub fn helo(&self) -> &str {
        self.helo_name.as_deref().unwrap_or(&self.hostname)
    }

    /// The policy of recipient domain `domain` (lower case), default when none is configured.
    pub fn policy(&self, domain: &str) -> DomainPolicy {
        self.domains.get(domain).copied().unwrap_or_default()
    }

    /// The STARTTLS mode for recipient domain `domain`.
    pub fn tls_for(&self, domain: &str) -> TlsMode {
        self.policy(domain).tls.unwrap_or(self.tls)
    }

    /// Whether the MTA-STS policy of recipient domain `domain` is looked up and applied.
    pub fn mta_sts_for(&self, domain: &str) -> bool {
        self.policy(domain).mta_sts.unwrap_or(self.mta_sts)
    }

    /// Checks the relations between settings: non-zero limits, and an attempt that always ends
    /// before its lease does (otherwise a second attempt of the same message could start).
    pub fn validate(&self) -> Result<(), InvalidSettings> {
        let bad = |setting, reason| Err(InvalidSettings { setting, reason });
        if self.hostname.is_empty() || self.hostname.bytes().any(|b| !b.is_ascii_graphic()) {
            return bad("hostname", "must be a non-empty ASCII host name");
        }
        if self.max_concurrent_deliveries == 0 {
            return bad("max_concurrent_deliveries", "must be at least 1");
        }
        if self.max_domains_per_message == 0 {
            return bad("max_domains_per_message", "must be at least 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.max_mx_hosts == 0 || self.max_addresses_per_host == 0 {
            return bad(
                "max_mx_hosts",
                "MX host and address limits must be at least 1",
            );
        }
        if self.max_idle.is_zero() {
            return bad("max_idle", "must be positive");
        }
        if let Some(h) = &self.helo_name
            && (h.is_empty() || h.bytes().any(|b| !b.is_ascii_graphic()))
        {
            return bad("helo_name", "must be a non-empty ASCII host name");
        }
        if self.max_messages_per_connection == 0 {
            return bad("max_messages_per_connection", "must be at least 1");
        }
        if self.max_outbound_connections == 0 || self.max_connections_per_host == 0 {
            return bad(
                "max_outbound_connections",
                "connection limits must be at least 1",
            );
        }
        if self
            .domains
            .values()
            .any(|p| p.max_connections == Some(0) || p.messages_per_minute == Some(0))
        {
            return bad("domains", "per-domain limits must be at least 1");
        }
        if self.breaker.failure_threshold > 0
            && (self.breaker.initial_backoff.is_zero()
                || self.breaker.max_backoff < self.breaker.initial_backoff)
        {
            return bad(
                "breaker",
                "initial_backoff must be positive and not above max_backoff",
            );
        }
        if self
            .routes
            .iter()
            .any(|r| r.domain.is_empty() || r.host.is_empty() || r.port == 0)
        {
            return bad("routes", "every route needs a domain, a host and a port");
        }
        if let Some(r) = &self.relayhost {
            if r.host.is_empty() || r.port == 0 {
                return bad("relayhost", "needs a host and a port");
            }
            if r.username.is_some() != r.password.is_some() {
                return bad("relayhost", "username and password go together");
            }
        }
        if self.max_attempt_duration.is_zero() || self.max_attempt_duration >= self.lease {
            return bad(
                "max_attempt_duration",
                "must be positive and shorter than lease",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_rfc_sized() {
        let s = DeliverySettings::default();
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.port, 25);
        assert_eq!(s.timeouts.greeting, Duration::from_secs(300));
        assert_eq!(s.timeouts.data_end, Duration::from_secs(600));
    }

    #[test]
    fn attempt_must_fit_in_lease() {
        let s = DeliverySettings {
            max_attempt_duration: Duration::from_secs(600),
            ..Default::default()
        };
        assert_eq!(
            s.validate().map_err(|e| e.setting),
            Err("max_attempt_duration")
        );
        let s = DeliverySettings {
            hostname: "bad host".into(),
            ..Default::default()
        };
        assert!(s.validate().is_err());
    }

    #[test]
    fn routes_parse_and_match() {
        let r = Route::parse("*.Example.com", "smtp.internal:2525").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("smtp.internal", 2525));
        assert!(r.matches("a.example.com") && r.matches("b.a.example.com"));
        assert!(!r.matches("example.com") && !r.matches("badexample.com"));
        let r = Route::parse("example.com", "[::1]:26").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("::1", 26));
        assert!(r.matches("example.com") && !r.matches("a.example.com"));
        assert_eq!(Route::parse("x", "10.0.0.1").unwrap().port, 25);
        assert!(Route::parse("x", "host:port").is_err());
        assert!(Route::parse("x", ":25").is_err());
    }
}
