//! Settings of the SMTP listener and loading of its TLS certificate.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::author::FromPolicy;
use crate::error::SmtpError;
use crate::password::validate_password_hash;
use crate::proxy_protocol::ProxyTrust;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What to do with a bare CR or LF (one not part of CR LF) in message content and command
/// lines. Either way the end of DATA is only ever `<CRLF>.<CRLF>` (SMTP smuggling defence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BareNewlinePolicy {
    /// Refuse the message with `550 5.6.11` (and command lines with `500 5.5.2`).
    #[default]
    Reject,
    /// Turn every bare CR or LF into CRLF.
    Normalize,
}

/// A user allowed to authenticate with AUTH PLAIN or LOGIN.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpUser {
    /// The login name.
    pub name: String,
    /// Argon2 PHC string (`$argon2id$v=19$...`), as made by [`crate::hash_password`].
    pub password_hash: String,
    /// Envelope senders this user may use: full addresses or `@domain`. Empty means any.
    /// The `From:` and `Sender:` fields of the user's messages are held to the same list.
    pub allowed_senders: Vec<String>,
    /// What to do with a message whose `From:`/`Sender:` is not in `allowed_senders`.
    pub from_policy: FromPolicy,
    /// The user's messages are captured, never sent (a test account): marked
    /// [`postrider_core::NewMessage::sandbox`].
    pub sandbox: bool,
}

impl std::fmt::Debug for SmtpUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpUser")
            .field("name", &self.name)
            .field("allowed_senders", &self.allowed_senders)
            .field("from_policy", &self.from_policy)
            .field("sandbox", &self.sandbox)
            .finish_non_exhaustive()
    }
}

/// Settings of one SMTP server (shared by all its listeners).
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// Our host name: greeting, EHLO, `Received:` and generated `Message-ID:`s.
    pub hostname: String,
    /// Largest accepted message in octets, advertised as SIZE. Default 25 MiB.
    pub max_message_size: usize,
    /// Most recipients per message; more get `452 4.5.3`. Default 1000.
    pub max_recipients: usize,
    /// Concurrent sessions over all listeners; more get `421 4.7.0`. Default 1000.
    pub max_connections: usize,
    /// Concurrent sessions from one IP address; more get `421 4.7.0`. Default 50.
    pub max_connections_per_ip: usize,
    /// Longest wait for a command (or a TLS handshake); then `421 4.4.2`. Default 5 min.
    pub command_timeout: Duration,
    /// Longest wait for more message content during DATA/BDAT. Default 5 min.
    pub data_timeout: Duration,
    /// Permanent (5xx) errors tolerated in one session before `421 4.7.0` and close. Default 10.
    pub max_errors: usize,
    /// Bare CR / LF handling. Default [`BareNewlinePolicy::Reject`].
    pub bare_newlines: BareNewlinePolicy,
    /// Clients that may relay without AUTH and may AUTH without TLS.
    /// Default `127.0.0.0/8` and `::1/128`.
    pub trusted_networks: Vec<IpNet>,
    /// Load balancers that announce the real client with a PROXY header (which connections from
    /// them must send). Default none.
    pub proxy: ProxyTrust,
    /// Certificate for STARTTLS and implicit-TLS listeners; see [`load_tls_config`]. Default none.
    pub tls: Option<Arc<ServerConfig>>,
    /// Users for AUTH. Default none.
    pub users: Vec<SmtpUser>,
    /// Messages (MAIL commands admitted) per minute from one IP address. Default unlimited.
    pub messages_per_minute_per_ip: Option<u32>,
    /// Messages (MAIL commands admitted) per minute by one authenticated user. Default unlimited.
    pub messages_per_minute_per_user: Option<u32>,
    /// Failed AUTH attempts within `auth_failure_window`, from one client address (outside
    /// `trusted_networks`) or for one user name, that start a lockout. Default 5.
    pub auth_max_failures: u32,
    /// How long failed AUTH attempts are counted (from the first of a series). Default 15 min.
    pub auth_failure_window: Duration,
    /// How long a locked-out address or user gets `454 4.7.0` to every AUTH, without the
    /// credentials being checked. Default 15 min.
    pub auth_lockout: Duration,
    /// Delay before the first failed AUTH is answered; it doubles with each further failure
    /// (up to 8 s). Default 250 ms.
    pub auth_failure_delay: Duration,
    /// Open sessions, in percent of `max_connections`, from which the server is in overload:
    /// idle sessions (no mail transaction) get `overload_timeout`. Default 80.
    pub overload_percent: u8,
    /// Command (and greeting, TLS handshake) timeout of idle sessions in overload. Default 10 s.
    pub overload_timeout: Duration,
    /// Capture every accepted message instead of sending it (`delivery.mode = "capture"`): each
    /// is marked [`postrider_core::NewMessage::sandbox`]. Default `false`.
    pub capture_all: bool,
    /// What the server is for: submission (default), or receive-only for the bounce domain,
    /// where accepted messages are stored in the report inbox instead of the queue.
    pub role: crate::proto::SessionRole,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        SmtpSettings {
            hostname: "localhost".to_owned(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 1000,
            max_connections: 1000,
            max_connections_per_ip: 50,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(300),
            max_errors: 10,
            bare_newlines: BareNewlinePolicy::Reject,
            trusted_networks: vec![
                IpNet::V4(
                    ipnet::Ipv4Net::new(std::net::Ipv4Addr::LOCALHOST, 8).unwrap_or_default(),
                ),
                IpNet::V6(
                    ipnet::Ipv6Net::new(std::net::Ipv6Addr::LOCALHOST, 128).unwrap_or_default(),
                ),
            ],
            proxy: ProxyTrust::default(),
            tls: None,
            users: Vec::new(),
            messages_per_minute_per_ip: None,
            messages_per_minute_per_user: None,
            auth_max_failures: 5,
            auth_failure_window: Duration::from_secs(15 * 60),
            auth_lockout: Duration::from_secs(15 * 60),
            auth_failure_delay: Duration::from_millis(250),
            overload_percent: 80,
            overload_timeout: Duration::from_secs(10),
            capture_all: false,
            role: crate::proto::SessionRole::Submission,
        }
    }
}

impl SmtpSettings {
    /// Checks the settings a server cannot run with (host name, zero limits and timeouts,
    /// password hashes, duplicate users), so a configuration check can refuse them before
    /// anything is started.
    pub fn validate(&self) -> Result<(), SmtpError> {
        self.users_by_name().map(|_| ())
    }

    /// The users by login name, after every check of [`SmtpSettings::validate`].
    pub(crate) fn users_by_name(&self) -> Result<HashMap<String, SmtpUser>, SmtpError> {
        let invalid = |what: &str| Err(SmtpError::InvalidSettings(what.to_owned()));
        let settings = self;
        if settings.hostname.is_empty()
            || settings.hostname.len() > 255
            || !settings.hostname.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':')
            })
        {
            return invalid("hostname must be a non-empty domain name");
        }
        if settings.max_connections == 0 || settings.max_connections_per_ip == 0 {
            return invalid("connection limits must be at least 1");
        }
        if settings.max_recipients == 0 || settings.max_message_size == 0 {
            return invalid("max_recipients and max_message_size must be at least 1");
        }
        if settings.command_timeout.is_zero()
            || settings.data_timeout.is_zero()
            || settings.overload_timeout.is_zero()
        {
            return invalid("timeouts must be positive");
        }
        if !(1..=100).contains(&settings.overload_percent) {
            return invalid("overload_percent must be between 1 and 100");
        }
        if settings.auth_max_failures == 0
            || settings.auth_failure_window.is_zero()
            || settings.auth_lockout.is_zero()
        {
            return invalid(
                "auth_max_failures, auth_failure_window and auth_lockout must be positive",
            );
        }
        if settings.messages_per_minute_per_ip == Some(0)
            || settings.messages_per_minute_per_user == Some(0)
        {
            return invalid("message rate limits must be at least 1 per minute");
        }
        let mut users = HashMap::with_capacity(settings.users.len());
        for user in &settings.users {
            validate_password_hash(&user.password_hash)
                .map_err(|e| SmtpError::InvalidSettings(format!("user {}: {e}", user.name)))?;
            if users.insert(user.name.clone(), user.clone()).is_some() {
                return Err(SmtpError::InvalidSettings(format!(
                    "user {} is listed twice",
                    user.name
                )));
            }
        }
        Ok(users)
    }
}

/// Why a certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The PEM data holds no usable certificate or key.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// rustls refused the certificate and key.
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] tokio_rustls::rustls::Error),
}

/// Loads a PEM certificate chain and private key into a server TLS configuration
/// (aws-lc-rs provider, TLS 1.2 and 1.3).
pub fn load_tls_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsConfigError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    tls_config_from_pem(&read(cert)?, &read(key)?)
}

/// Builds a server TLS configuration from PEM text (certificate chain first, then the key).
pub fn tls_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::Pem(format!("certificate: {e}")))?;
    if chain.is_empty() {
        return Err(TlsConfigError::Pem("no certificate found".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsConfigError::Pem(format!("private key: {e}")))?;
    let config = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}
