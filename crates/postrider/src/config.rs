//! Configuration: a TOML file (or the embedded defaults) parsed into raw serde structs, then
//! validated into [`Config`]. Loading binds no sockets and opens no files but the config itself.
//!
//! Unknown keys are errors (`deny_unknown_fields`), and every error names the offending key: serde
//! errors carry the TOML location and snippet, validation errors start with the dotted key path.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use postrider_core::{Domain, RetryPolicy};
use serde::{Deserialize, Deserializer};

/// A configuration problem; the message names the key.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong form.
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value is well-formed but not acceptable.
    #[error("invalid config: {key}: {message}")]
    Invalid {
        /// Dotted key path, e.g. `retry.intervals`.
        key: &'static str,
        /// What is wrong and what would be right.
        message: String,
    },
}

/// A [`ConfigError::Invalid`] for `key`.
pub(crate) fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// A duration written as a humantime string: `"30s"`, `"5m"`, `"1h20m"`, `"5d"`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct HumanDuration(pub(crate) Duration);

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {s:?} ({e}); write e.g. \"30s\", \"5m\", \"1h20m\", \"5d\""
                ))
            })
    }
}

/// A size written as `"25MB"`, `"512KiB"`, `"1GB"` or a plain number of bytes.
/// KB/MB/GB are decimal (1000ⁿ), KiB/MiB/GiB binary (1024ⁿ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ByteSize(pub(crate) u64);

impl ByteSize {
    /// Parses the forms described on the type.
    pub(crate) fn parse(s: &str) -> Option<ByteSize> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().ok()?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "m" | "mb" => 1000 * 1000,
            "g" | "gb" => 1000 * 1000 * 1000,
            "kib" => 1024,
            "mib" => 1024 * 1024,
            "gib" => 1024 * 1024 * 1024,
            _ => return None,
        };
        n.checked_mul(mult).map(ByteSize)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(ByteSize(n)),
            Raw::Text(s) => ByteSize::parse(&s).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid size {s:?}; write e.g. \"25MB\", \"512KiB\" or a number of bytes"
                ))
            }),
        }
    }
}

/// The whole file.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// EHLO name, `Received:` host and `MAILER-DAEMON@hostname`; default: the system host name.
    #[serde(default)]
    pub(crate) hostname: Option<String>,
    /// Where the queue lives.
    #[serde(default = "default_data_dir")]
    pub(crate) data_dir: PathBuf,
    /// SMTP submission.
    #[serde(default)]
    pub(crate) smtp: RawSmtp,
    /// REST API, `/metrics`, `/healthz`.
    #[serde(default)]
    pub(crate) http: RawHttp,
    /// Load balancers in front of the listeners that announce clients with the PROXY protocol.
    #[serde(default)]
    pub(crate) proxy: RawProxy,
    /// Cluster mode: state shared with other nodes in Valkey/Redis (none: a single node).
    #[serde(default)]
    pub(crate) cluster: Option<RawCluster>,
    /// DNS resolution for delivery.
    #[serde(default)]
    pub(crate) dns: RawDns,
    /// Outbound delivery.
    #[serde(default)]
    pub(crate) delivery: RawDelivery,
    /// Retry schedule and queue lifetime.
    #[serde(default)]
    pub(crate) retry: RawRetry,
    /// Static routes that override MX lookup for matching recipient domains.
    #[serde(default)]
    pub(crate) routes: Vec<RawRoute>,
    /// DKIM signing keys.
    #[serde(default)]
    pub(crate) dkim: RawDkim,
    /// Address verification (`POST /v1/verify`).
    #[serde(default)]
    pub(crate) verify: RawVerify,
    /// The event log (`GET /v1/events`, webhooks).
    #[serde(default)]
    pub(crate) events: RawEvents,
    /// Webhooks: every event of the listed types is POSTed, signed, to each URL.
    #[serde(default)]
    pub(crate) webhooks: Vec<RawWebhook>,
    /// Queue housekeeping.
    #[serde(default)]
    pub(crate) queue: RawQueue,
    /// Graceful shutdown.
    #[serde(default)]
    pub(crate) shutdown: RawShutdown,
    /// Logging.
    #[serde(default)]
    pub(crate) log: RawLog,
    /// Bounce handling: failure classification rules.
    #[serde(default)]
    pub(crate) bounces: RawBounces,
    /// RFC 8058 one-click unsubscribe links.
    #[serde(default)]
    pub(crate) unsubscribe: RawUnsubscribe,
    /// SMTP TLS reporting (RFC 8460): daily reports to domains with an MTA-STS policy.
    #[serde(default)]
    pub(crate) tls_reports: RawTlsReports,
}

/// `[unsubscribe]`.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUnsubscribe {
    /// The relay's public `https://` address; links are `<base_url>/unsubscribe/<token>`.
    #[serde(default)]
    pub(crate) base_url: Option<String>,
    /// The key of the link tokens (at least 32 bytes); or `secret_file`.
    #[serde(default)]
    pub(crate) secret: Option<String>,
    /// A file holding the secret (surrounding whitespace ignored).
    #[serde(default)]
    pub(crate) secret_file: Option<PathBuf>,
}

/// `[tls_reports]`.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTlsReports {
    /// Count MTA-STS sessions and send the daily reports (off by default).
    #[serde(default)]
    pub(crate) enabled: bool,
    /// The report's `organization-name`; default: the host name.
    #[serde(default)]
    pub(crate) organization: Option<String>,
    /// The report's `contact-info`: an address to write to about the reports (required when
    /// enabled).
    #[serde(default)]
    pub(crate) contact: Option<String>,
    /// Sender of the reports sent by mail; default: `contact`.
    #[serde(default)]
    pub(crate) from: Option<String>,
}

/// `[bounces]`.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBounces {
    /// A TOML file of failure classification rules tried before the built-in ones.
    #[serde(default)]
    pub(crate) rules_file: Option<PathBuf>,
    /// The bounce domain: messages are sent from signed `b+<token>@<domain>` return paths.
    #[serde(default)]
    pub(crate) domain: Option<String>,
    /// The key of the return-path tokens (at least 16 characters); or `secret_file`.
    #[serde(default)]
    pub(crate) secret: Option<String>,
    /// A file holding the secret (surrounding whitespace ignored).
    #[serde(default)]
    pub(crate) secret_file: Option<PathBuf>,
    /// A receive-only SMTP listener for the bounce domain (reports come back there).
    #[serde(default)]
    pub(crate) listen: Option<SocketAddr>,
    /// Largest report the bounce listener accepts (default 10 MiB).
    #[serde(default)]
    pub(crate) max_report_size: Option<ByteSize>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./postrider-data")
}

/// `[smtp]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSmtp {
    /// Plain listeners (STARTTLS offered when `[smtp.tls]` is set).
    #[serde(default = "default_smtp_listen")]
    pub(crate) listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (RFC 8314, port 465).
    #[serde(default)]
    pub(crate) tls_listen: Vec<SocketAddr>,
    /// Clients that may relay without AUTH.
    #[serde(default = "default_trusted_networks")]
    pub(crate) trusted_networks: Vec<IpNet>,
    /// What to do with bare CR or LF in message content.
    #[serde(default)]
    pub(crate) bare_newlines: BareNewlines,
    /// Limits.
    #[serde(default)]
    pub(crate) limits: RawSmtpLimits,
    /// Certificate for STARTTLS and implicit TLS.
    #[serde(default)]
    pub(crate) tls: Option<RawTls>,
    /// Accounts that may authenticate.
    #[serde(default)]
    pub(crate) users: Vec<RawSmtpUser>,
}

impl Default for RawSmtp {
    fn default() -> Self {
        RawSmtp {
            listen: default_smtp_listen(),
            tls_listen: Vec::new(),
            trusted_networks: default_trusted_networks(),
            bare_newlines: BareNewlines::default(),
            limits: RawSmtpLimits::default(),
            tls: None,
            users: Vec::new(),
        }
    }
}

fn default_smtp_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 2525))]
}

fn default_trusted_networks() -> Vec<IpNet> {
    vec![
        IpNet::new_assert(IpAddr::from([127, 0, 0, 0]), 8),
        IpNet::new_assert(IpAddr::from(std::net::Ipv6Addr::LOCALHOST), 128),
    ]
}

/// `smtp.bare_newlines`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BareNewlines {
    /// Refuse the message with `550 5.6.11` (default; closes the smuggling hole).
    #[default]
    Reject,
    /// Convert to CRLF.
    Normalize,
}

/// `[smtp.limits]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSmtpLimits {
    /// Largest message accepted; advertised in EHLO `SIZE`.
    #[serde(default = "default_max_message_size")]
    pub(crate) max_message_size: ByteSize,
    /// Recipients per message.
    #[serde(default = "default_max_recipients")]
    pub(crate) max_recipients: usize,
    /// Concurrent SMTP connections in total.
    #[serde(default = "default_max_connections")]
    pub(crate) max_connections: usize,
    /// Concurrent SMTP connections from one IP address.
    #[serde(default = "default_max_connections_per_ip")]
    pub(crate) max_connections_per_ip: usize,
    /// Idle time allowed between commands and within DATA (RFC 5321 §4.5.3.2: at least 5 minutes).
    #[serde(default = "default_command_timeout")]
    pub(crate) command_timeout: HumanDuration,
    /// Errors in one session before it is closed.
    #[serde(default = "default_max_errors")]
    pub(crate) max_errors: usize,
    /// Messages per minute from one client IP (unset: unlimited).
    #[serde(default)]
    pub(crate) messages_per_minute_per_ip: Option<u32>,
    /// Messages per minute per authenticated user (unset: unlimited).
    #[serde(default)]
    pub(crate) messages_per_minute_per_user: Option<u32>,
    /// Failed AUTH attempts (per client address outside trusted_networks, and per user name)
    /// within `auth_failure_window` that start a lockout.
    #[serde(default = "default_auth_max_failures")]
    pub(crate) auth_max_failures: u32,
    /// How long failed AUTH attempts are counted.
    #[serde(default = "default_auth_period")]
    pub(crate) auth_failure_window: HumanDuration,
    /// How long a lockout answers every AUTH with 454 4.7.0, unchecked.
    #[serde(default = "default_auth_period")]
    pub(crate) auth_lockout: HumanDuration,
    /// Delay before the first failed AUTH is answered; doubles per failure, up to 8s.
    #[serde(default = "default_auth_failure_delay")]
    pub(crate) auth_failure_delay: HumanDuration,
    /// Open sessions, in percent of `max_connections`, from which idle sessions get
    /// `overload_timeout`.
    #[serde(default = "default_overload_percent")]
    pub(crate) overload_percent: u8,
    /// Greeting, TLS handshake and command timeout of sessions without a mail transaction in
    /// overload.
    #[serde(default = "default_overload_timeout")]
    pub(crate) overload_timeout: HumanDuration,
}

impl Default for RawSmtpLimits {
    fn default() -> Self {
        RawSmtpLimits {
            max_message_size: default_max_message_size(),
            max_recipients: default_max_recipients(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            command_timeout: default_command_timeout(),
            max_errors: default_max_errors(),
            messages_per_minute_per_ip: None,
            messages_per_minute_per_user: None,
            auth_max_failures: default_auth_max_failures(),
            auth_failure_window: default_auth_period(),
            auth_lockout: default_auth_period(),
            auth_failure_delay: default_auth_failure_delay(),
            overload_percent: default_overload_percent(),
            overload_timeout: default_overload_timeout(),
        }
    }
}

fn default_max_message_size() -> ByteSize {
    ByteSize(25_000_000)
}
fn default_max_recipients() -> usize {
    1000
}
fn default_max_connections() -> usize {
    1000
}
fn default_max_connections_per_ip() -> usize {
    100
}
fn default_command_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_max_errors() -> usize {
    10
}
fn default_auth_max_failures() -> u32 {
    5
}
fn default_auth_period() -> HumanDuration {
    HumanDuration(Duration::from_secs(15 * 60))
}
fn default_auth_failure_delay() -> HumanDuration {
    HumanDuration(Duration::from_millis(250))
}
fn default_overload_percent() -> u8 {
    80
}
fn default_overload_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

/// `[smtp.tls]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    /// PEM certificate chain.
    pub(crate) cert: PathBuf,
    /// PEM private key.
    pub(crate) key: PathBuf,
}

/// `[[smtp.users]]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSmtpUser {
    /// Login name.
    pub(crate) name: String,
    /// Argon2 PHC hash, as printed by `postrider passwd`.
    pub(crate) password_hash: String,
    /// Senders this user may use (`user@example.com` or `@example.com`); empty: any. Holds
    /// for the envelope sender and for the `From:` and `Sender:` fields.
    #[serde(default)]
    pub(crate) allowed_senders: Vec<String>,
    /// What a `From:`/`Sender:` outside `allowed_senders` gets: `reject` or `rewrite`.
    #[serde(default)]
    pub(crate) from_policy: RawFromPolicy,
    /// The user's messages are captured, never sent (see "Sandbox and capture").
    #[serde(default)]
    pub(crate) sandbox: bool,
}

/// `smtp.users.from_policy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawFromPolicy {
    /// `550 5.7.1` at the end of DATA (default).
    #[default]
    Reject,
    /// Keep `From:`, set `Sender: <envelope sender>`; DKIM signs for the `Sender:` domain.
    Rewrite,
}

/// `[http]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp {
    /// REST API, `/metrics` and `/healthz`.
    #[serde(default = "default_http_listen")]
    pub(crate) listen: SocketAddr,
    /// API keys; without any, only loopback clients are served.
    #[serde(default)]
    pub(crate) api_keys: Vec<RawApiKey>,
    /// Largest request body.
    #[serde(default = "default_http_max_body")]
    pub(crate) max_body_size: ByteSize,
    /// Requests per second per API key (unset: unlimited).
    #[serde(default)]
    pub(crate) rate_limit_per_key: Option<u32>,
    /// How long an `Idempotency-Key` is remembered.
    #[serde(default = "default_idempotency_ttl")]
    pub(crate) idempotency_ttl: HumanDuration,
    /// Whether `/metrics` and `/openapi.json` need a key with the `read` scope.
    #[serde(default)]
    pub(crate) metrics_auth: bool,
}

fn default_idempotency_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(24 * 3600))
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            listen: default_http_listen(),
            api_keys: Vec::new(),
            max_body_size: default_http_max_body(),
            rate_limit_per_key: None,
            idempotency_ttl: default_idempotency_ttl(),
            metrics_auth: false,
        }
    }
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8025))
}
fn default_http_max_body() -> ByteSize {
    ByteSize(36_000_000)
}

/// `[[http.api_keys]]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApiKey {
    /// Label for logs.
    pub(crate) name: String,
    /// Hex SHA-256 of the key, as printed by `postrider apikey new`.
    pub(crate) key_hash: String,
    /// `send`, `read`, `admin`.
    pub(crate) scopes: Vec<String>,
    /// Messages submitted with the key are captured, never sent (see "Sandbox and capture").
    #[serde(default)]
    pub(crate) sandbox: bool,
    /// Messages submitted with the key get one-click unsubscribe links unless they say
    /// otherwise (needs `[unsubscribe]`).
    #[serde(default)]
    pub(crate) unsubscribe: bool,
}

/// `[dns]`.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDns {
    /// Name servers as `ip` or `ip:port`; default: the system resolver configuration.
    #[serde(default)]
    pub(crate) nameservers: Vec<String>,
    /// Per-query timeout.
    #[serde(default)]
    pub(crate) timeout: Option<HumanDuration>,
    /// Tries per query.
    #[serde(default)]
    pub(crate) attempts: Option<usize>,
    /// Cached DNS answers (respecting their TTL).
    #[serde(default)]
    pub(crate) cache_size: Option<u64>,
    /// Shortest time a positive answer is kept, whatever its TTL.
    #[serde(default)]
    pub(crate) min_ttl: Option<HumanDuration>,
    /// Longest time a positive answer is kept, whatever its TTL.
    #[serde(default)]
    pub(crate) max_ttl: Option<HumanDuration>,
    /// Longest time a negative answer (NXDOMAIN, no records, null MX) is kept.
    #[serde(default)]
    pub(crate) negative_max_ttl: Option<HumanDuration>,
}

/// `[delivery]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDelivery {
    /// `deliver` (default) or `capture`: capture every message, sending none.
    #[serde(default)]
    pub(crate) mode: DeliveryMode,
    /// Port used for every MX host.
    #[serde(default = "default_delivery_port")]
    pub(crate) port: u16,
    /// Concurrent outbound deliveries.
    #[serde(default = "default_max_concurrent")]
    pub(crate) max_concurrent: usize,
    /// STARTTLS policy: `opportunistic`, `required`, `disabled`.
    #[serde(default)]
    pub(crate) tls: DeliveryTls,
    /// EHLO name for outbound connections (default: `hostname`).
    #[serde(default)]
    pub(crate) helo_name: Option<String>,
    /// TCP connect timeout.
    #[serde(default = "default_connect_timeout")]
    pub(crate) connect_timeout: HumanDuration,
    /// Timeout for each SMTP command reply (RFC 5321 §4.5.3.2 suggests 5 minutes).
    #[serde(default = "default_command_reply_timeout")]
    pub(crate) command_timeout: HumanDuration,
    /// Timeout for the reply after the message content (RFC 5321: 10 minutes).
    #[serde(default = "default_data_timeout")]
    pub(crate) data_timeout: HumanDuration,
    /// How long a claimed queue entry stays invisible to other attempts; must exceed the longest
    /// attempt (connect + commands + data), since an expired lease lets the message run again.
    #[serde(default = "default_lease")]
    pub(crate) lease: HumanDuration,
    /// Outbound connections in total (idle pooled ones included).
    #[serde(default)]
    pub(crate) max_connections: Option<usize>,
    /// Outbound connections per MX host (IP and port).
    #[serde(default)]
    pub(crate) max_connections_per_host: Option<usize>,
    /// Messages sent over one connection before it is closed.
    #[serde(default)]
    pub(crate) max_messages_per_connection: Option<u32>,
    /// How long an idle connection is kept for reuse.
    #[serde(default)]
    pub(crate) connection_idle_timeout: Option<HumanDuration>,
    /// Local address outbound connections are made from.
    #[serde(default)]
    pub(crate) source_ip: Option<IpAddr>,
    /// Public addresses mail leaves from, checked against SPF by `check-domain`
    /// (default: `source_ip` when set).
    #[serde(default)]
    pub(crate) public_ips: Vec<IpAddr>,
    /// Require valid certificates when TLS is required (opportunistic TLS never requires them).
    #[serde(default)]
    pub(crate) verify_certificates: bool,
    /// Extra trusted CA certificates (PEM) for outbound TLS.
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    /// Apply recipient domains' MTA-STS policies (RFC 8461).
    #[serde(default = "default_true")]
    pub(crate) mta_sts: bool,
    /// Port MTA-STS policies are fetched from; for tests only (RFC 8461 fixes 443).
    #[serde(default = "default_https_port")]
    pub(crate) mta_sts_https_port: u16,
    /// Send all mail not matched by a route through this upstream server.
    #[serde(default)]
    pub(crate) relayhost: Option<RawRelayhost>,
    /// Circuit breaker for failing destinations.
    #[serde(default)]
    pub(crate) breaker: Option<RawBreaker>,
    /// Per recipient domain overrides, e.g. `[delivery.domains."example.com"]`.
    #[serde(default)]
    pub(crate) domains: std::collections::BTreeMap<String, RawDomainPolicy>,
}

/// `[delivery.relayhost]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRelayhost {
    /// Host name or IP address.
    pub(crate) host: String,
    /// Port (587 by default; 465 with `tls = "implicit"`).
    #[serde(default)]
    pub(crate) port: Option<u16>,
    /// AUTH user name.
    #[serde(default)]
    pub(crate) username: Option<String>,
    /// AUTH password.
    #[serde(default)]
    pub(crate) password: Option<String>,
    /// `required` (STARTTLS, default), `opportunistic` or `implicit`.
    #[serde(default)]
    pub(crate) tls: RelayTlsMode,
    /// Allow AUTH without TLS (never do this across a network).
    #[serde(default)]
    pub(crate) allow_plaintext_auth: bool,
}

/// `delivery.relayhost.tls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RelayTlsMode {
    /// STARTTLS, or fail.
    #[default]
    Required,
    /// STARTTLS when offered.
    Opportunistic,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// `[delivery.breaker]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBreaker {
    /// Consecutive failures (connection failures or 421s) that suspend a destination; 0 disables.
    pub(crate) failure_threshold: u32,
    /// First suspension; doubles while failures continue.
    pub(crate) initial_backoff: HumanDuration,
    /// Longest suspension.
    pub(crate) max_backoff: HumanDuration,
}

/// `[delivery.domains."example.com"]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDomainPolicy {
    /// Concurrent connections for this recipient domain.
    #[serde(default)]
    pub(crate) max_connections: Option<usize>,
    /// Messages per minute to this domain.
    #[serde(default)]
    pub(crate) messages_per_minute: Option<u32>,
    /// STARTTLS policy for this domain.
    #[serde(default)]
    pub(crate) tls: Option<DeliveryTls>,
    /// Apply this domain's MTA-STS policy (default: `delivery.mta_sts`).
    #[serde(default)]
    pub(crate) mta_sts: Option<bool>,
}

/// `[dkim]`.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDkim {
    /// Header fields to sign (default: From, To, Cc, Subject, Date, Message-ID, MIME and list headers).
    #[serde(default)]
    pub(crate) headers: Option<Vec<String>>,
    /// Keys; a message is signed with every key of its From: domain.
    #[serde(default)]
    pub(crate) keys: Vec<RawDkimKey>,
}

/// `[[dkim.keys]]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDkimKey {
    /// Signing domain (`d=`); `*.example.com` also signs subdomains.
    pub(crate) domain: String,
    /// Selector (`s=`).
    pub(crate) selector: String,
    /// PEM private key, as written by `postrider dkim keygen`.
    pub(crate) key_file: PathBuf,
    /// `rsa-sha256` (default) or `ed25519-sha256`.
    #[serde(default)]
    pub(crate) algorithm: Option<String>,
}

/// `[verify]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVerify {
    /// Offer `POST /v1/verify` (SMTP callouts to the recipient's MX).
    #[serde(default = "default_true")]
    pub(crate) enabled: bool,
    /// Callouts per recipient domain per minute.
    #[serde(default)]
    pub(crate) per_domain_per_minute: Option<u32>,
    /// How long a deliverable answer is reused.
    #[serde(default)]
    pub(crate) cache_ttl: Option<HumanDuration>,
    /// How long an undeliverable answer is reused.
    #[serde(default)]
    pub(crate) negative_cache_ttl: Option<HumanDuration>,
}

impl Default for RawVerify {
    fn default() -> Self {
        RawVerify {
            enabled: true,
            per_domain_per_minute: None,
            cache_ttl: None,
            negative_cache_ttl: None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// `[events]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEvents {
    /// How long events are kept; must exceed every webhook's `max_age`.
    #[serde(default = "default_retention")]
    pub(crate) retention: HumanDuration,
}

impl Default for RawEvents {
    fn default() -> Self {
        RawEvents {
            retention: default_retention(),
        }
    }
}

/// `[[webhooks]]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhook {
    /// `http://` or `https://` endpoint.
    pub(crate) url: String,
    /// HMAC-SHA256 key (at least 16 characters).
    pub(crate) secret: String,
    /// Event types to send (`accepted`, `deferred`, `delivered`, `bounced`, `suppressed`,
    /// `expired`); empty: all.
    #[serde(default)]
    pub(crate) events: Vec<String>,
    /// Per-request timeout.
    #[serde(default)]
    pub(crate) timeout: Option<HumanDuration>,
    /// Give up on an event after this long (counted in `postrider_webhook_dropped_total`).
    #[serde(default)]
    pub(crate) max_age: Option<HumanDuration>,
}

/// `[[routes]]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    /// Recipient domain: exact, or `*.example.com` for subdomains.
    pub(crate) domain: String,
    /// Destination: `host`, `host:port` or `[ipv6]:port` (port 25 by default).
    pub(crate) to: String,
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery {
            mode: DeliveryMode::default(),
            port: default_delivery_port(),
            max_concurrent: default_max_concurrent(),
            tls: DeliveryTls::default(),
            helo_name: None,
            connect_timeout: default_connect_timeout(),
            command_timeout: default_command_reply_timeout(),
            data_timeout: default_data_timeout(),
            lease: default_lease(),
            max_connections: None,
            max_connections_per_host: None,
            max_messages_per_connection: None,
            connection_idle_timeout: None,
            source_ip: None,
            public_ips: Vec::new(),
            verify_certificates: false,
            ca_file: None,
            mta_sts: true,
            mta_sts_https_port: default_https_port(),
            relayhost: None,
            breaker: None,
            domains: std::collections::BTreeMap::new(),
        }
    }
}

fn default_delivery_port() -> u16 {
    25
}
fn default_https_port() -> u16 {
    443
}
fn default_max_concurrent() -> usize {
    256
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_command_reply_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_data_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_lease() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}

/// `delivery.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DeliveryMode {
    /// Send mail to its destinations (default).
    #[default]
    Deliver,
    /// Send nothing: every message is captured and its outcome simulated (sandbox).
    Capture,
}

/// `delivery.tls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DeliveryTls {
    /// Use STARTTLS when offered (default).
    #[default]
    Opportunistic,
    /// Defer rather than deliver without TLS.
    Required,
    /// Never use STARTTLS.
    Disabled,
}

/// `[retry]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    /// Attempt n waits `intervals[n-1]`; the last repeats.
    #[serde(default = "default_intervals")]
    pub(crate) intervals: Vec<HumanDuration>,
    /// After this, still-undelivered recipients bounce.
    #[serde(default = "default_max_age")]
    pub(crate) max_age: HumanDuration,
    /// Send one delay warning DSN when a message has been deferred this long; "0s" disables.
    #[serde(default = "default_warn_after")]
    pub(crate) warn_after: HumanDuration,
}

impl Default for RawRetry {
    fn default() -> Self {
        RawRetry {
            intervals: default_intervals(),
            max_age: default_max_age(),
            warn_after: default_warn_after(),
        }
    }
}

fn default_warn_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(4 * 3600))
}

fn default_intervals() -> Vec<HumanDuration> {
    RetryPolicy::default()
        .intervals()
        .iter()
        .copied()
        .map(HumanDuration)
        .collect()
}
fn default_max_age() -> HumanDuration {
    HumanDuration(RetryPolicy::default().max_age())
}

/// `[queue]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQueue {
    /// How long finished messages stay queryable via `GET /v1/messages/{id}`.
    #[serde(default = "default_retention")]
    pub(crate) retention: HumanDuration,
}

impl Default for RawQueue {
    fn default() -> Self {
        RawQueue {
            retention: default_retention(),
        }
    }
}

fn default_retention() -> HumanDuration {
    HumanDuration(Duration::from_secs(7 * 86_400))
}

/// `[proxy]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    /// Networks of load balancers whose every connection (SMTP listeners and HTTP API) starts
    /// with a PROXY protocol header (v1 or v2); connections from elsewhere are served as they
    /// are.
    #[serde(default)]
    pub(crate) trusted: Vec<IpNet>,
    /// How long such a connection may take to send its header before it is closed.
    #[serde(default = "default_proxy_header_timeout")]
    pub(crate) header_timeout: HumanDuration,
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            trusted: Vec::new(),
            header_timeout: default_proxy_header_timeout(),
        }
    }
}

fn default_proxy_header_timeout() -> HumanDuration {
    HumanDuration(postrider_smtp::proxy_protocol::DEFAULT_HEADER_TIMEOUT)
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    /// `redis://host:port/db`, or `rediss://` for TLS; Valkey or Redis.
    pub(crate) url: String,
    /// This node's unique, stable name; absent: the machine's host name (a StatefulSet pod's
    /// name in Kubernetes), so one configuration file can serve every node.
    #[serde(default)]
    pub(crate) node_id: Option<String>,
    /// Bound on each call to Valkey on the submission path; then the node uses local state.
    #[serde(default = "default_cluster_timeout")]
    pub(crate) timeout: HumanDuration,
}

impl RawCluster {
    /// The settings of the cluster crate.
    pub(crate) fn settings(&self) -> postrider_cluster::ClusterSettings {
        postrider_cluster::ClusterSettings {
            url: self.url.clone(),
            node_id: self.node_id.clone().unwrap_or_else(system_host_name),
            timeout: self.timeout.0,
        }
    }
}

/// The kernel's host name (`uname -n`); empty when it is not valid UTF-8, which the cluster
/// settings then refuse with a message asking for `node_id`.
fn system_host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_str()
        .map(str::to_owned)
        .unwrap_or_default()
}

fn default_cluster_timeout() -> HumanDuration {
    HumanDuration(postrider_cluster::DEFAULT_TIMEOUT)
}

/// `[shutdown]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawShutdown {
    /// How long in-flight deliveries and SMTP transactions may take to finish after SIGTERM.
    #[serde(default = "default_grace")]
    pub(crate) grace_period: HumanDuration,
}

impl Default for RawShutdown {
    fn default() -> Self {
        RawShutdown {
            grace_period: default_grace(),
        }
    }
}

fn default_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// `[log]`.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    /// `text` (default) or `json`.
    #[serde(default)]
    pub(crate) format: LogFormat,
    /// A tracing filter, e.g. `info` or `postrider_delivery=debug,info`; `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub(crate) level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

/// `log.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A validated configuration.
#[derive(Debug)]
pub(crate) struct Config {
    /// The relay's host name (validated as a domain).
    pub(crate) hostname: String,
    /// Everything else as parsed (validated).
    pub(crate) raw: RawConfig,
    /// Name servers with ports resolved (empty: system configuration).
    pub(crate) nameservers: Vec<SocketAddr>,
    /// The retry policy.
    pub(crate) retry: RetryPolicy,
}

impl Config {
    /// Reads and validates a file, or the embedded defaults when `path` is `None`.
    pub(crate) fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        Config::from_toml(&text)
    }

    /// Parses and validates TOML text.
    pub(crate) fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text)?;
        Config::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let hostname = match &raw.hostname {
            Some(h) => h.clone(),
            None => system_hostname(),
        };
        if Domain::parse(&hostname).is_err() || hostname.starts_with('[') {
            return Err(invalid(
                "hostname",
                format!("{hostname:?} is not a valid host name"),
            ));
        }
        if let Some(h) = &raw.delivery.helo_name
            && Domain::parse(h).is_err()
        {
            return Err(invalid(
                "delivery.helo_name",
                format!("{h:?} is not a valid host name"),
            ));
        }
        if raw.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if raw.smtp.listen.is_empty() && raw.smtp.tls_listen.is_empty() {
            return Err(invalid(
                "smtp.listen",
                "at least one SMTP listener is required",
            ));
        }
        if !raw.smtp.tls_listen.is_empty() && raw.smtp.tls.is_none() {
            return Err(invalid(
                "smtp.tls_listen",
                "implicit TLS listeners need [smtp.tls] cert and key",
            ));
        }
        let limits = &raw.smtp.limits;
        if limits.max_message_size.0 < 1024 {
            return Err(invalid(
                "smtp.limits.max_message_size",
                "must be at least 1KiB",
            ));
        }
        if limits.max_recipients == 0 {
            return Err(invalid("smtp.limits.max_recipients", "must be at least 1"));
        }
        if limits.max_connections == 0 || limits.max_connections_per_ip == 0 {
            return Err(invalid(
                "smtp.limits.max_connections",
                "connection limits must be at least 1",
            ));
        }
        if limits.command_timeout.0 < Duration::from_secs(1) {
            return Err(invalid(
                "smtp.limits.command_timeout",
                "must be at least 1s",
            ));
        }
        if !(1..=100).contains(&limits.overload_percent) {
            return Err(invalid(
                "smtp.limits.overload_percent",
                "must be between 1 and 100",
            ));
        }
        if limits.overload_timeout.0 < Duration::from_secs(1) {
            return Err(invalid(
                "smtp.limits.overload_timeout",
                "must be at least 1s",
            ));
        }
        if limits.auth_max_failures == 0 {
            return Err(invalid(
                "smtp.limits.auth_max_failures",
                "must be at least 1",
            ));
        }
        if limits.auth_failure_window.0.is_zero() {
            return Err(invalid(
                "smtp.limits.auth_failure_window",
                "must be positive",
            ));
        }
        if limits.auth_lockout.0.is_zero() {
            return Err(invalid("smtp.limits.auth_lockout", "must be positive"));
        }
        for (i, u) in raw.smtp.users.iter().enumerate() {
            if u.name.is_empty() || u.name.chars().any(|c| c.is_control() || c == ' ') {
                return Err(invalid(
                    "smtp.users.name",
                    format!("user #{i}: names are non-empty without spaces"),
                ));
            }
            if !u.password_hash.starts_with("$argon2") {
                return Err(invalid(
                    "smtp.users.password_hash",
                    format!(
                        "user {:?}: expected an argon2 hash from `postrider passwd`",
                        u.name
                    ),
                ));
            }
            for s in &u.allowed_senders {
                let ok = match s.strip_prefix('@') {
                    Some(d) => Domain::parse(d).is_ok(),
                    None => postrider_core::Address::parse(s).is_ok(),
                };
                if !ok {
                    return Err(invalid(
                        "smtp.users.allowed_senders",
                        format!("user {:?}: {s:?} is neither an address nor @domain", u.name),
                    ));
                }
            }
        }
        for k in &raw.http.api_keys {
            if k.key_hash.len() != 64 || !k.key_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    "http.api_keys.key_hash",
                    format!(
                        "key {:?}: expected 64 hex digits from `postrider apikey new`",
                        k.name
                    ),
                ));
            }
            if k.scopes.is_empty() {
                return Err(invalid(
                    "http.api_keys.scopes",
                    format!("key {:?}: at least one scope is required", k.name),
                ));
            }
            if let Some(bad) = k
                .scopes
                .iter()
                .find(|s| !matches!(s.as_str(), "send" | "read" | "admin"))
            {
                return Err(invalid(
                    "http.api_keys.scopes",
                    format!(
                        "key {:?}: unknown scope {bad:?} (send, read, admin)",
                        k.name
                    ),
                ));
            }
        }
        if raw.http.api_keys.is_empty() && !raw.http.listen.ip().is_loopback() {
            return Err(invalid(
                "http.listen",
                format!(
                    "{} is not a loopback address; configure http.api_keys before exposing the API",
                    raw.http.listen
                ),
            ));
        }
        let mut nameservers = Vec::with_capacity(raw.dns.nameservers.len());
        for ns in &raw.dns.nameservers {
            let addr = ns
                .parse::<SocketAddr>()
                .or_else(|_| ns.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    invalid(
                        "dns.nameservers",
                        format!("{ns:?} is not an IP address or ip:port"),
                    )
                })?;
            nameservers.push(addr);
        }
        if raw.delivery.port == 0 {
            return Err(invalid(
                "delivery.port",
                "must be a port number from 1 to 65535",
            ));
        }
        if raw.delivery.mta_sts_https_port == 0 {
            return Err(invalid(
                "delivery.mta_sts_https_port",
                "must be a port number from 1 to 65535",
            ));
        }
        if raw.delivery.max_concurrent == 0 {
            return Err(invalid("delivery.max_concurrent", "must be at least 1"));
        }
        let retry = RetryPolicy::new(
            raw.retry.intervals.iter().map(|d| d.0).collect(),
            raw.retry.max_age.0,
        )
        .map_err(|e| invalid("retry.intervals", e.to_string()))?;
        if let Some(cluster) = &raw.cluster {
            cluster
                .settings()
                .validate()
                .map_err(|e| invalid("cluster", e.to_string()))?;
        }
        let proxy_timeout = raw.proxy.header_timeout.0;
        if proxy_timeout.is_zero() || proxy_timeout > Duration::from_secs(60) {
            return Err(invalid(
                "proxy.header_timeout",
                "must be positive and at most 1m",
            ));
        }
        if raw.retry.max_age.0.is_zero() {
            return Err(invalid("retry.max_age", "must be longer than zero"));
        }
        for (i, r) in raw.routes.iter().enumerate() {
            check_route_domain(&r.domain)
                .map_err(|e| invalid("routes.domain", format!("route #{}: {e}", i + 1)))?;
            postrider_delivery::Route::parse(&r.domain, &r.to).map_err(|e| {
                invalid(
                    "routes",
                    format!("route #{} ({} → {}): {e}", i + 1, r.domain, r.to),
                )
            })?;
        }
        for domain in raw.delivery.domains.keys() {
            if Domain::parse(domain.trim_start_matches("*.")).is_err() {
                return Err(invalid(
                    "delivery.domains",
                    format!("{domain:?} is not a domain"),
                ));
            }
        }
        if let Some(r) = &raw.delivery.relayhost {
            if r.host.is_empty() {
                return Err(invalid("delivery.relayhost.host", "must not be empty"));
            }
            if r.username.is_some() != r.password.is_some() {
                return Err(invalid(
                    "delivery.relayhost",
                    "username and password go together",
                ));
            }
        }
        for (i, k) in raw.dkim.keys.iter().enumerate() {
            if Domain::parse(k.domain.trim_start_matches("*.")).is_err() || k.selector.is_empty() {
                return Err(invalid(
                    "dkim.keys",
                    format!("key #{}: needs a valid domain and a selector", i + 1),
                ));
            }
            if let Some(a) = &k.algorithm
                && a.parse::<postrider_trust::DkimAlgorithm>().is_err()
            {
                return Err(invalid(
                    "dkim.keys.algorithm",
                    format!("key #{}: {a:?} is not rsa-sha256 or ed25519-sha256", i + 1),
                ));
            }
        }
        for (i, w) in raw.webhooks.iter().enumerate() {
            if let Some(bad) = w
                .events
                .iter()
                .find(|e| postrider_store::EventKind::parse(e).is_none())
            {
                return Err(invalid(
                    "webhooks.events",
                    format!("webhook #{}: unknown event type {bad:?}", i + 1),
                ));
            }
        }
        if raw.delivery.lease.0 < Duration::from_secs(10) {
            return Err(invalid(
                "delivery.lease",
                "must be at least 10s and should exceed the longest delivery attempt",
            ));
        }
        check_lease(&raw.delivery)?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.log.level) {
            return Err(invalid(
                "log.level",
                format!(
                    "{:?} is not a log filter ({e}); write e.g. \"info\" or \"postrider_delivery=debug,info\"",
                    raw.log.level
                ),
            ));
        }
        Ok(Config {
            hostname,
            nameservers,
            retry,
            raw,
        })
    }
}

/// A route's `domain` must be able to match a recipient domain: an exact domain
/// (`example.com`) or `*.` and a domain (`*.example.com`, its subdomains). Anything else,
/// such as a bare `*`, would silently match nothing.
fn check_route_domain(pattern: &str) -> Result<(), String> {
    let domain = pattern.strip_prefix("*.").unwrap_or(pattern);
    if domain.contains('*') || Domain::parse(domain.trim_end_matches('.')).is_err() {
        return Err(format!(
            "{pattern:?} matches no recipient domain; write a domain (example.com) or \
             *.example.com for all its subdomains"
        ));
    }
    Ok(())
}

/// A delivery attempt is cut off at 90% of its lease; the lease must leave room for the
/// longest single wait of an attempt (connect, a command reply, the reply after the data), or
/// a slow but healthy server would see every attempt cut off and the message never delivered.
fn check_lease(delivery: &RawDelivery) -> Result<(), ConfigError> {
    let lease = delivery.lease.0;
    let waits = [
        ("delivery.connect_timeout", delivery.connect_timeout.0),
        ("delivery.command_timeout", delivery.command_timeout.0),
        ("delivery.data_timeout", delivery.data_timeout.0),
    ];
    for (key, wait) in waits {
        if lease < wait {
            return Err(invalid(
                "delivery.lease",
                format!(
                    "{} is shorter than {key} ({}), so one delivery attempt can outlast its \
                     lease; raise delivery.lease to at least {} or lower {key}",
                    humantime::format_duration(lease),
                    humantime::format_duration(wait),
                    humantime::format_duration(wait),
                ),
            ));
        }
    }
    Ok(())
}

/// The machine's host name, or `localhost.localdomain` when it can't be read.
fn system_hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| Domain::parse(h).is_ok())
        .unwrap_or_else(|| "localhost.localdomain".to_owned())
}

#[cfg(test)]
mod readme_keys;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.raw.data_dir, PathBuf::from("./postrider-data"));
        assert_eq!(c.raw.smtp.listen, vec!["127.0.0.1:2525".parse().unwrap()]);
        assert_eq!(c.raw.http.listen, "127.0.0.1:8025".parse().unwrap());
        assert_eq!(c.raw.delivery.port, 25);
        assert!(c.nameservers.is_empty());
        assert_eq!(c.raw.smtp.limits.max_message_size, ByteSize(25_000_000));
        assert_eq!(c.retry, RetryPolicy::default());
        assert_eq!(
            c.raw.smtp.trusted_networks,
            vec![
                "127.0.0.0/8".parse::<IpNet>().unwrap(),
                "::1/128".parse().unwrap()
            ]
        );
    }

    #[test]
    fn a_cluster_node_without_node_id_is_named_after_its_host() {
        let c = Config::from_toml("[cluster]\nurl = \"redis://127.0.0.1:6379/0\"\n").unwrap();
        let settings = c.raw.cluster.as_ref().unwrap().settings();
        assert_eq!(settings.node_id, system_host_name());
        assert!(!settings.node_id.is_empty());
        let named = Config::from_toml("[cluster]\nurl = \"redis://127.0.0.1/\"\nnode_id = \"a\"\n");
        assert_eq!(named.unwrap().raw.cluster.unwrap().settings().node_id, "a");
    }

    #[test]
    fn documented_example_parses() {
        let c = Config::from_toml(
            r#"
hostname = "relay.example.com"
data_dir = "/var/lib/postrider"
[smtp]
listen = ["127.0.0.1:2525"]
[smtp.limits]
max_message_size = "25MB"
[http]
listen = "127.0.0.1:8025"
[dns]
nameservers = ["127.0.0.1:5353", "127.0.0.53"]
[delivery]
port = 2626
[retry]
intervals = ["5m", "10m", "20m", "40m", "1h20m", "2h", "4h"]
max_age = "5d"
"#,
        )
        .unwrap();
        assert_eq!(c.hostname, "relay.example.com");
        assert_eq!(
            c.nameservers,
            vec![
                "127.0.0.1:5353".parse().unwrap(),
                "127.0.0.53:53".parse().unwrap()
            ]
        );
        assert_eq!(c.retry.intervals()[4], Duration::from_secs(4800));
        assert_eq!(c.retry.max_age(), Duration::from_secs(5 * 86_400));
        assert_eq!(c.raw.delivery.port, 2626);
    }

    fn err(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("bogus = 1").contains("bogus"), "{}", err("bogus = 1"));
        assert!(err("[smtp]\nlisen = []").contains("lisen"));
        let e = err("[retry]\nmax_age = \"5x\"");
        assert!(
            e.contains("max_age") && e.contains("invalid duration"),
            "{e}"
        );
        let e = err("[smtp.limits]\nmax_message_size = \"25XB\"");
        assert!(
            e.contains("max_message_size") && e.contains("invalid size"),
            "{e}"
        );
        assert!(err("[retry]\nintervals = []").contains("retry.intervals"));
        assert!(err("hostname = \"bad host\"").contains("hostname"));
        assert!(err("[dns]\nnameservers = [\"nope\"]").contains("dns.nameservers"));
        assert!(err("[http]\nlisten = \"0.0.0.0:8025\"").contains("http.listen"));
        assert!(err("[smtp]\ntls_listen = [\"127.0.0.1:4650\"]").contains("smtp.tls_listen"));
        assert!(err("[delivery]\nport = 0").contains("delivery.port"));
        assert!(
            err("[smtp.limits]\nauth_max_failures = 0").contains("smtp.limits.auth_max_failures")
        );
        assert!(err("[smtp.limits]\nauth_lockout = \"0s\"").contains("smtp.limits.auth_lockout"));
        assert!(
            err("[smtp.limits]\noverload_percent = 0").contains("smtp.limits.overload_percent")
        );
        assert!(
            err("[smtp.limits]\noverload_timeout = \"0s\"")
                .contains("smtp.limits.overload_timeout")
        );
        let e = err("[smtp]\nlisten = [\"127.0.0.1\"]");
        assert!(e.contains("listen"), "{e}");
    }

    #[test]
    fn delivery_policy_keys() {
        let c = Config::from_toml(
            r#"
[[routes]]
domain = "*.corp.example"
to = "10.0.0.5:2525"
[delivery]
max_connections_per_host = 4
verify_certificates = true
source_ip = "127.0.0.9"
[delivery.relayhost]
host = "smtp.provider.example"
username = "u"
password = "p"
[delivery.breaker]
failure_threshold = 5
initial_backoff = "1m"
max_backoff = "30m"
[delivery.domains."gmail.com"]
max_connections = 2
messages_per_minute = 600
tls = "required"
[retry]
warn_after = "0s"
"#,
        )
        .unwrap();
        assert_eq!(c.raw.routes[0].to, "10.0.0.5:2525");
        assert_eq!(
            c.raw.delivery.domains["gmail.com"].tls,
            Some(DeliveryTls::Required)
        );
        assert_eq!(c.raw.retry.warn_after.0, Duration::ZERO);
        assert!(err("[[routes]]\ndomain = \"a.test\"\nto = \"host:notaport\"").contains("routes"));
        assert!(
            err("[delivery.relayhost]\nhost = \"x.test\"\nusername = \"u\"")
                .contains("delivery.relayhost")
        );
        assert!(
            err("[delivery.domains.\"bad domain\"]\nmax_connections = 1")
                .contains("delivery.domains")
        );
        assert!(err("[delivery.breaker]\nfailure_threshold = 1").contains("initial_backoff"));
    }

    #[test]
    fn readme_configuration_reference_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("```toml\nhostname")
            .expect("the configuration reference block in the README")
            + 8;
        let block = &readme[start..start + readme[start..].find("```").expect("closed block")];
        let c = Config::from_toml(block)
            .unwrap_or_else(|e| panic!("README configuration reference: {e}"));
        assert_eq!(c.hostname, "relay.example.com");
        assert_eq!(c.raw.webhooks.len(), 1);
        assert_eq!(c.raw.dkim.keys.len(), 1);
        assert!(!c.raw.http.metrics_auth);
        assert_eq!(c.raw.smtp.users.len(), 1);
        assert_eq!(c.raw.smtp.users[0].from_policy, RawFromPolicy::Reject);
        assert!(c.raw.bounces.listen.is_some());
        assert_eq!(
            c.raw.bounces.max_report_size,
            Some(ByteSize(10 * 1024 * 1024))
        );
    }

    #[test]
    fn route_patterns_that_match_nothing_are_refused() {
        for pattern in ["*", "*.", "a.*.example.com", "**.example.com", "bad domain"] {
            let e = err(&format!(
                "[[routes]]\ndomain = {pattern:?}\nto = \"10.0.0.5\""
            ));
            assert!(e.contains("routes.domain"), "{pattern}: {e}");
        }
        for pattern in ["example.com", "*.example.com", "example.com."] {
            Config::from_toml(&format!(
                "[[routes]]\ndomain = {pattern:?}\nto = \"10.0.0.5\""
            ))
            .unwrap_or_else(|e| panic!("{pattern}: {e}"));
        }
    }

    #[test]
    fn lease_shorter_than_an_attempt_is_refused() {
        let e = err("[delivery]\nlease = \"1m\"");
        assert!(
            e.contains("delivery.lease") && e.contains("delivery.command_timeout"),
            "{e}"
        );
        Config::from_toml(
            "[delivery]\nlease = \"1m\"\ndata_timeout = \"1m\"\ncommand_timeout = \"1m\"",
        )
        .unwrap();
    }

    #[test]
    fn sandbox_keys() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.raw.delivery.mode, DeliveryMode::Deliver);
        let c = Config::from_toml(
            r#"
[delivery]
mode = "capture"
[[http.api_keys]]
name = "test"
key_hash = "2d040e541cd5cd4a982bc4b8b4afac37dd728f7d11f706ec27c89ace51be0ee8"
scopes = ["send"]
sandbox = true
[[smtp.users]]
name = "staging"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$QnUPHlBQ8TDaEq077j7qNQ$x1jzGHD92koxzYnRTJzs+bh3iJiZT0JEHLZ6VF/+Rbk"
sandbox = true
"#,
        )
        .unwrap();
        assert_eq!(c.raw.delivery.mode, DeliveryMode::Capture);
        assert!(c.raw.http.api_keys[0].sandbox);
        assert!(c.raw.smtp.users[0].sandbox);
        assert!(err("[delivery]\nmode = \"send\"").contains("mode"));
    }

    #[test]
    fn metrics_auth_is_off_unless_set() {
        assert!(!Config::from_toml("").unwrap().raw.http.metrics_auth);
        let on = Config::from_toml("[http]\nmetrics_auth = true").unwrap();
        assert!(on.raw.http.metrics_auth);
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("25MB"), Some(ByteSize(25_000_000)));
        assert_eq!(ByteSize::parse("512KiB"), Some(ByteSize(524_288)));
        assert_eq!(ByteSize::parse("1gb"), Some(ByteSize(1_000_000_000)));
        assert_eq!(ByteSize::parse("1000"), Some(ByteSize(1000)));
        assert_eq!(ByteSize::parse("MB"), None);
        assert_eq!(ByteSize::parse("99999999999999GB"), None);
    }
}
