//! The one validation path of a configuration file: `check-config`, `serve` and a reload all
//! call [`prepare`], which parses the file, checks it, loads every file it names (TLS
//! certificate and key, DKIM keys) and builds the settings of every component, checking them
//! as the components would. What passes here starts; what fails names its key.
//!
//! Nothing here binds a socket or opens the queue.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use postrider_api::{ApiKey, ApiSettings, RateLimit, Scope};
use postrider_bounces::VerpSigner;
use postrider_core::Domain;
use postrider_core::bounce::BounceRules;
use postrider_core::unsubscribe::{UnsubscribeError, UnsubscribeLinks};
use postrider_delivery::{
    BreakerSettings, DeliverySettings, DnsSettings, DomainPolicy, RelayTls, Relayhost, Route,
    SmtpTimeouts, TlsMode, TlsReportSettings,
};
use postrider_smtp::proxy_protocol::ProxyTrust;
use postrider_smtp::{BareNewlinePolicy, FromPolicy, SmtpSettings, SmtpUser};

use crate::config::{
    BareNewlines, Config, ConfigError, DeliveryTls, RawFromPolicy, RelayTlsMode, invalid,
};

/// A configuration that passed every check, with the settings of each component built from it.
pub(crate) struct Prepared {
    /// The validated configuration.
    pub(crate) config: Config,
    /// SMTP submission (TLS certificate loaded).
    pub(crate) smtp: SmtpSettings,
    /// The REST API.
    pub(crate) api: ApiSettings,
    /// Delivery; its `signer` is the loaded DKIM signer.
    pub(crate) delivery: DeliverySettings,
    /// The loaded DKIM keys, when any are configured.
    pub(crate) dkim: Option<Arc<postrider_trust::DkimSigner>>,
    /// The webhooks.
    pub(crate) webhooks: postrider_webhooks::DispatcherSettings,
    /// Failure classification: the operator's rules (`bounces.rules_file`) before the built-in
    /// ones.
    pub(crate) bounce_rules: BounceRules,
    /// The resolver's timeouts and caches.
    pub(crate) dns: DnsSettings,
    /// The receive-only listener of the bounce domain (`bounces.listen`), when configured.
    pub(crate) bounce_listener: Option<BounceListener>,
}

/// The receive-only SMTP listener where reports come back to the bounce domain.
pub(crate) struct BounceListener {
    /// Where it listens.
    pub(crate) addr: std::net::SocketAddr,
    /// Submission's limits, timeouts and TLS, in the receive-only role for the bounce domain.
    pub(crate) smtp: SmtpSettings,
    /// Checks the return paths reports arrive at.
    pub(crate) verp: VerpSigner,
}

/// Reads, checks and loads the configuration at `path` (the embedded defaults without one).
pub(crate) fn prepare(path: Option<&Path>) -> Result<Prepared, ConfigError> {
    prepare_config(Config::load(path)?)
}

/// [`prepare`] for a configuration already parsed and checked on its own.
pub(crate) fn prepare_config(config: Config) -> Result<Prepared, ConfigError> {
    check_data_dir(&config.raw.data_dir)?;
    let smtp = smtp_settings(&config)?;
    let mut api = api_settings(&config)?;
    let unsubscribe = unsubscribe_links(&config)?;
    if unsubscribe.is_none() && api.api_keys.iter().any(|k| k.unsubscribe) {
        return Err(invalid(
            "http.api_keys.unsubscribe",
            "a key gives messages unsubscribe links by default, but [unsubscribe] is not configured",
        ));
    }
    api.unsubscribe.clone_from(&unsubscribe);
    let dkim = load_dkim(&config)?;
    let mut delivery = delivery_settings(&config)?;
    delivery.signer = dkim
        .clone()
        .map(|d| d as Arc<dyn postrider_core::MessageSigner>);
    let webhooks = webhook_settings(&config)?;
    let bounce_rules = load_bounce_rules(&config)?;
    delivery.verp = verp_signer(&config)?;
    delivery.unsubscribe = unsubscribe;
    let bounce_listener = bounce_listener(&config, &smtp, delivery.verp.as_ref())?;
    delivery.tls_reports = tls_report_settings(&config)?;
    let dns = dns_settings(&config)?;
    Ok(Prepared {
        config,
        smtp,
        api,
        delivery,
        dkim,
        webhooks,
        bounce_rules,
        dns,
        bounce_listener,
    })
}

/// Default of `bounces.max_report_size`: 10 MiB.
const DEFAULT_MAX_REPORT_SIZE: u64 = 10 * 1024 * 1024;

/// The bounce-domain listener of `bounces.listen`: the submission server's limits, timeouts
/// and TLS, receive-only for the bounce domain (no users, no trusted networks, reports up to
/// `bounces.max_report_size`).
fn bounce_listener(
    config: &Config,
    smtp: &SmtpSettings,
    verp: Option<&VerpSigner>,
) -> Result<Option<BounceListener>, ConfigError> {
    let b = &config.raw.bounces;
    let Some(addr) = b.listen else {
        if b.max_report_size.is_some() {
            return Err(invalid(
                "bounces.max_report_size",
                "set without bounces.listen; set bounces.listen or remove it",
            ));
        }
        return Ok(None);
    };
    let Some(verp) = verp else {
        return Err(invalid(
            "bounces.listen",
            "the bounce listener needs bounces.domain (and its secret)",
        ));
    };
    let size = b.max_report_size.map_or(DEFAULT_MAX_REPORT_SIZE, |s| s.0);
    let max = postrider_store::MAX_INBOX_REPORT as u64;
    if !(1024..=max).contains(&size) {
        return Err(invalid(
            "bounces.max_report_size",
            format!("must be between 1KiB and {max} bytes"),
        ));
    }
    let smtp = SmtpSettings {
        role: postrider_smtp::proto::SessionRole::ReceiveOnly {
            domain: verp.domain().as_str().to_owned(),
        },
        max_message_size: usize::try_from(size).unwrap_or(usize::MAX),
        users: Vec::new(),
        trusted_networks: Vec::new(),
        messages_per_minute_per_user: None,
        capture_all: false,
        ..smtp.clone()
    };
    Ok(Some(BounceListener {
        addr,
        smtp,
        verp: verp.clone(),
    }))
}

/// `[tls_reports]`: `None` when off; `contact` is required and must be an address, as must
/// `from`.
fn tls_report_settings(config: &Config) -> Result<Option<TlsReportSettings>, ConfigError> {
    let t = &config.raw.tls_reports;
    if !t.enabled {
        return Ok(None);
    }
    let contact = t.contact.clone().ok_or_else(|| {
        invalid(
            "tls_reports.contact",
            "TLS reports need a contact address (tls_reports.contact)",
        )
    })?;
    let contact_address = postrider_core::Address::parse(&contact)
        .map_err(|e| invalid("tls_reports.contact", format!("{contact:?}: {e}")))?;
    let from = match &t.from {
        Some(from) => postrider_core::Address::parse(from)
            .map_err(|e| invalid("tls_reports.from", format!("{from:?}: {e}")))?,
        None => contact_address,
    };
    Ok(Some(TlsReportSettings {
        organization: t
            .organization
            .clone()
            .unwrap_or_else(|| config.hostname.clone()),
        contact,
        from,
    }))
}

/// Largest `bounces.secret_file` accepted.
const MAX_SECRET_FILE: u64 = 4096;

/// The VERP signer of `[bounces] domain`, keyed with `secret` or the content of `secret_file`
/// (exactly one of them); `None` without a bounce domain.
fn verp_signer(config: &Config) -> Result<Option<VerpSigner>, ConfigError> {
    let b = &config.raw.bounces;
    let Some(domain) = &b.domain else {
        if b.secret.is_some() || b.secret_file.is_some() {
            return Err(invalid(
                "bounces.domain",
                "a secret is set but no bounce domain; set bounces.domain or remove the secret",
            ));
        }
        return Ok(None);
    };
    let domain = Domain::parse(domain)
        .ok()
        .filter(|d| d.address_literal().is_none())
        .ok_or_else(|| invalid("bounces.domain", format!("{domain:?} is not a domain name")))?;
    let secret = one_secret(
        ["bounces.secret", "bounces.secret_file"],
        "a bounce domain",
        b.secret.as_deref(),
        b.secret_file.as_deref(),
    )?;
    VerpSigner::new(domain, &secret)
        .map(Some)
        .map_err(|e| invalid("bounces.secret", e.to_string()))
}

/// The secret given by exactly one of `secret` (key `keys[0]`) and `secret_file` (`keys[1]`,
/// whose content is read, surrounding whitespace dropped); `needer` names what needs it in
/// the error.
fn one_secret(
    keys: [&'static str; 2],
    needer: &str,
    secret: Option<&str>,
    secret_file: Option<&Path>,
) -> Result<String, ConfigError> {
    match (secret, secret_file) {
        (Some(s), None) => Ok(s.to_owned()),
        (None, Some(path)) => {
            let cannot =
                |e: &dyn std::fmt::Display| invalid(keys[1], format!("{}: {e}", path.display()));
            let size = std::fs::metadata(path).map_err(|e| cannot(&e))?.len();
            if size > MAX_SECRET_FILE {
                return Err(cannot(&format!(
                    "{size} bytes; a secret file holds at most {MAX_SECRET_FILE}"
                )));
            }
            Ok(std::fs::read_to_string(path)
                .map_err(|e| cannot(&e))?
                .trim()
                .to_owned())
        }
        _ => Err(invalid(
            keys[0],
            format!("{needer} needs exactly one of {} and {}", keys[0], keys[1]),
        )),
    }
}

/// The link maker of `[unsubscribe]` (`base_url` and exactly one of `secret` and
/// `secret_file`); `None` when the section is empty.
fn unsubscribe_links(config: &Config) -> Result<Option<UnsubscribeLinks>, ConfigError> {
    let u = &config.raw.unsubscribe;
    let Some(base_url) = &u.base_url else {
        if u.secret.is_some() || u.secret_file.is_some() {
            return Err(invalid(
                "unsubscribe.base_url",
                "a secret is set but no base URL; set unsubscribe.base_url or remove the secret",
            ));
        }
        return Ok(None);
    };
    let secret = one_secret(
        ["unsubscribe.secret", "unsubscribe.secret_file"],
        "unsubscribe.base_url",
        u.secret.as_deref(),
        u.secret_file.as_deref(),
    )?;
    UnsubscribeLinks::new(base_url, secret.as_bytes())
        .map(Some)
        .map_err(|e| match e {
            UnsubscribeError::ShortSecret => invalid("unsubscribe.secret", e.to_string()),
            UnsubscribeError::BaseUrl => invalid("unsubscribe.base_url", e.to_string()),
        })
}

/// Largest `bounces.rules_file` accepted.
const MAX_RULES_FILE: u64 = 1024 * 1024;

/// The classification rules: `bounces.rules_file` in front of the built-in rules.
fn load_bounce_rules(config: &Config) -> Result<BounceRules, ConfigError> {
    let Some(path) = &config.raw.bounces.rules_file else {
        return Ok(BounceRules::built_in().clone());
    };
    let key = "bounces.rules_file";
    let cannot = |e: &dyn std::fmt::Display| invalid(key, format!("{}: {e}", path.display()));
    let size = std::fs::metadata(path).map_err(|e| cannot(&e))?.len();
    if size > MAX_RULES_FILE {
        return Err(cannot(&format!(
            "{size} bytes; at most {MAX_RULES_FILE} are accepted"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| cannot(&e))?;
    BounceRules::with_overrides(&text).map_err(|e| cannot(&e))
}

/// `[dns]`: timeouts, tries and the cache bounds of the one resolver every lookup goes through.
fn dns_settings(config: &Config) -> Result<DnsSettings, ConfigError> {
    let raw = &config.raw.dns;
    let mut dns = DnsSettings::default();
    if let Some(t) = raw.timeout {
        dns.timeout = t.0;
    }
    if let Some(a) = raw.attempts {
        dns.attempts = a;
    }
    if let Some(c) = raw.cache_size {
        dns.cache_size = c;
    }
    if let Some(t) = raw.min_ttl {
        dns.positive_min_ttl = t.0;
    }
    if let Some(t) = raw.max_ttl {
        dns.positive_max_ttl = t.0;
    }
    if let Some(t) = raw.negative_max_ttl {
        dns.negative_max_ttl = t.0;
    }
    if dns.positive_min_ttl > dns.positive_max_ttl {
        return Err(invalid(
            "dns.min_ttl",
            "is longer than dns.max_ttl; set min_ttl at most max_ttl",
        ));
    }
    if dns.timeout.is_zero() {
        return Err(invalid("dns.timeout", "must be longer than 0s"));
    }
    Ok(dns)
}

/// `data_dir` must be a directory, or not exist yet (it is created at start).
fn check_data_dir(dir: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Err(invalid(
            "data_dir",
            format!(
                "{} exists and is not a directory; point data_dir at a directory (or remove the file)",
                dir.display()
            ),
        )),
        _ => Ok(()),
    }
}

fn smtp_settings(config: &Config) -> Result<SmtpSettings, ConfigError> {
    let raw = &config.raw.smtp;
    let tls = match &raw.tls {
        Some(t) => Some(
            postrider_smtp::load_tls_config(&t.cert, &t.key).map_err(|e| {
                invalid(
                    "smtp.tls",
                    format!(
                        "cannot load the certificate {} or key {}: {e}; fix smtp.tls.cert and smtp.tls.key or remove [smtp.tls]",
                        t.cert.display(),
                        t.key.display()
                    ),
                )
            })?,
        ),
        None => None,
    };
    let settings = SmtpSettings {
        hostname: config.hostname.clone(),
        max_message_size: usize::try_from(raw.limits.max_message_size.0).unwrap_or(usize::MAX),
        max_recipients: raw.limits.max_recipients,
        max_connections: raw.limits.max_connections,
        max_connections_per_ip: raw.limits.max_connections_per_ip,
        command_timeout: raw.limits.command_timeout.0,
        data_timeout: raw.limits.command_timeout.0,
        max_errors: raw.limits.max_errors,
        bare_newlines: match raw.bare_newlines {
            BareNewlines::Reject => BareNewlinePolicy::Reject,
            BareNewlines::Normalize => BareNewlinePolicy::Normalize,
        },
        trusted_networks: raw.trusted_networks.clone(),
        proxy: proxy_trust(config),
        tls,
        users: raw
            .users
            .iter()
            .map(|u| SmtpUser {
                name: u.name.clone(),
                password_hash: u.password_hash.clone(),
                allowed_senders: u.allowed_senders.clone(),
                from_policy: match u.from_policy {
                    RawFromPolicy::Reject => FromPolicy::Reject,
                    RawFromPolicy::Rewrite => FromPolicy::Rewrite,
                },
                sandbox: u.sandbox,
            })
            .collect(),
        messages_per_minute_per_ip: raw.limits.messages_per_minute_per_ip,
        messages_per_minute_per_user: raw.limits.messages_per_minute_per_user,
        auth_max_failures: raw.limits.auth_max_failures,
        auth_failure_window: raw.limits.auth_failure_window.0,
        auth_lockout: raw.limits.auth_lockout.0,
        auth_failure_delay: raw.limits.auth_failure_delay.0,
        overload_percent: raw.limits.overload_percent,
        overload_timeout: raw.limits.overload_timeout.0,
        capture_all: captures_all(config),
        role: postrider_smtp::proto::SessionRole::Submission,
    };
    settings
        .validate()
        .map_err(|e| invalid("smtp", format!("{e}; fix it in [smtp] or [[smtp.users]]")))?;
    Ok(settings)
}

/// The load balancers of `[proxy]`, for the SMTP and HTTP listeners.
pub(crate) fn proxy_trust(config: &Config) -> ProxyTrust {
    let raw = &config.raw.proxy;
    ProxyTrust::new(raw.trusted.clone()).with_header_timeout(raw.header_timeout.0)
}

/// Whether `delivery.mode = "capture"`: every message is captured, none sent.
fn captures_all(config: &Config) -> bool {
    config.raw.delivery.mode == crate::config::DeliveryMode::Capture
}

fn api_settings(config: &Config) -> Result<ApiSettings, ConfigError> {
    let raw = &config.raw;
    let keys = raw
        .http
        .api_keys
        .iter()
        .map(|k| ApiKey {
            name: k.name.clone(),
            key_hash: k.key_hash.to_ascii_lowercase(),
            scopes: k
                .scopes
                .iter()
                .filter_map(|s| match s.as_str() {
                    "send" => Some(Scope::Send),
                    "read" => Some(Scope::Read),
                    "admin" => Some(Scope::Admin),
                    _ => None,
                })
                .collect(),
            sandbox: k.sandbox,
            unsubscribe: k.unsubscribe,
        })
        .collect();
    let settings = ApiSettings {
        hostname: config.hostname.clone(),
        max_body_bytes: usize::try_from(raw.http.max_body_size.0).unwrap_or(usize::MAX),
        max_recipients: raw.smtp.limits.max_recipients,
        max_message_size: usize::try_from(raw.smtp.limits.max_message_size.0).unwrap_or(usize::MAX),
        api_keys: keys,
        rate_limit: raw.http.rate_limit_per_key.map(|r| RateLimit {
            per_second: f64::from(r),
            burst: r.max(1),
        }),
        idempotency_ttl: raw.http.idempotency_ttl.0,
        metrics_auth: raw.http.metrics_auth,
        capture_all: captures_all(config),
        ..ApiSettings::default()
    };
    settings
        .validate()
        .map_err(|e| invalid("http.api_keys", format!("{e}; fix it in [http]")))?;
    Ok(settings)
}

fn tls_mode(t: DeliveryTls) -> TlsMode {
    match t {
        DeliveryTls::Opportunistic => TlsMode::Opportunistic,
        DeliveryTls::Required => TlsMode::Required,
        DeliveryTls::Disabled => TlsMode::Disabled,
    }
}

/// The routes of the configuration (checked by [`Config`] already).
fn routes(config: &Config) -> Result<Vec<Route>, ConfigError> {
    config
        .raw
        .routes
        .iter()
        .map(|r| {
            Route::parse(&r.domain, &r.to)
                .map_err(|e| invalid("routes", format!("{} → {}: {e}", r.domain, r.to)))
        })
        .collect()
}

fn delivery_settings(config: &Config) -> Result<DeliverySettings, ConfigError> {
    let raw = &config.raw.delivery;
    let command = raw.command_timeout.0;
    let lease = raw.lease.0;
    let defaults = DeliverySettings::default();
    let relayhost = raw.relayhost.as_ref().map(|r| {
        let tls = match r.tls {
            RelayTlsMode::Required => RelayTls::Required,
            RelayTlsMode::Opportunistic => RelayTls::Opportunistic,
            RelayTlsMode::Implicit => RelayTls::Implicit,
        };
        Relayhost {
            host: r.host.clone(),
            port: r
                .port
                .unwrap_or(if tls == RelayTls::Implicit { 465 } else { 587 }),
            username: r.username.clone(),
            password: r.password.clone(),
            tls,
            allow_plaintext_auth: r.allow_plaintext_auth,
        }
    });
    let domains = raw
        .domains
        .iter()
        .map(|(d, p)| {
            (
                d.to_ascii_lowercase(),
                DomainPolicy {
                    max_connections: p.max_connections,
                    messages_per_minute: p.messages_per_minute,
                    tls: p.tls.map(tls_mode),
                    mta_sts: p.mta_sts,
                },
            )
        })
        .collect();
    let settings = DeliverySettings {
        hostname: config.hostname.clone(),
        helo_name: raw.helo_name.clone(),
        source_ip: raw.source_ip,
        max_outbound_connections: raw
            .max_connections
            .unwrap_or(defaults.max_outbound_connections),
        max_connections_per_host: raw
            .max_connections_per_host
            .unwrap_or(defaults.max_connections_per_host),
        max_messages_per_connection: raw
            .max_messages_per_connection
            .map_or(defaults.max_messages_per_connection, |n| n as _),
        connection_idle_timeout: raw
            .connection_idle_timeout
            .map_or(defaults.connection_idle_timeout, |d| d.0),
        verify_certificates: raw.verify_certificates,
        ca_file: raw.ca_file.clone(),
        mta_sts: raw.mta_sts,
        mta_sts_https_port: raw.mta_sts_https_port,
        routes: routes(config)?,
        relayhost,
        domains,
        breaker: raw
            .breaker
            .as_ref()
            .map_or(defaults.breaker, |b| BreakerSettings {
                failure_threshold: b.failure_threshold,
                initial_backoff: b.initial_backoff.0,
                max_backoff: b.max_backoff.0,
            }),
        delay_warning_after: config.raw.retry.warn_after.0,
        port: raw.port,
        max_concurrent_deliveries: raw.max_concurrent,
        lease,
        max_attempt_duration: lease.mul_f64(0.9),
        timeouts: SmtpTimeouts {
            connect: raw.connect_timeout.0,
            greeting: command,
            ehlo: command,
            mail: command,
            rcpt: command,
            data: command,
            data_end: raw.data_timeout.0,
            quit: command.min(Duration::from_secs(5)),
        },
        tls: tls_mode(raw.tls),
        retry: config.retry.clone(),
        capture_all: captures_all(config),
        ..defaults
    };
    settings.validate().map_err(|e| {
        invalid(
            "delivery",
            format!("{e}; fix it in [delivery] (or [[routes]])"),
        )
    })?;
    if let Some(ca) = &raw.ca_file
        && let Err(e) = std::fs::File::open(ca)
    {
        return Err(invalid(
            "delivery.ca_file",
            format!(
                "cannot read {}: {e}; fix the path or remove delivery.ca_file",
                ca.display()
            ),
        ));
    }
    Ok(settings)
}

fn load_dkim(config: &Config) -> Result<Option<Arc<postrider_trust::DkimSigner>>, ConfigError> {
    let raw = &config.raw.dkim;
    if raw.keys.is_empty() {
        return Ok(None);
    }
    let mut settings = postrider_trust::DkimSettings::default();
    if let Some(h) = &raw.headers {
        settings.headers = h.clone();
    }
    for k in &raw.keys {
        settings.keys.push(postrider_trust::DkimKeyConfig {
            domain: k.domain.clone(),
            selector: k.selector.clone(),
            key_file: k.key_file.clone(),
            algorithm: match &k.algorithm {
                Some(a) => a
                    .parse::<postrider_trust::DkimAlgorithm>()
                    .map_err(|e| invalid("dkim.keys.algorithm", e))?,
                None => postrider_trust::DkimAlgorithm::default(),
            },
        });
    }
    let signer = postrider_trust::DkimSigner::load(&settings).map_err(|e| {
        invalid(
            "dkim.keys.key_file",
            format!(
                "{e}; fix the path (the file must be readable by postrider) or create the key with `postrider dkim keygen`"
            ),
        )
    })?;
    Ok(Some(Arc::new(signer)))
}

fn webhook_settings(
    config: &Config,
) -> Result<postrider_webhooks::DispatcherSettings, ConfigError> {
    let mut settings = postrider_webhooks::DispatcherSettings::default();
    for w in &config.raw.webhooks {
        let mut hook = postrider_webhooks::WebhookSettings::new(w.url.clone(), w.secret.clone());
        hook.events = w
            .events
            .iter()
            .filter_map(|e| postrider_store::EventKind::parse(e))
            .collect();
        if let Some(t) = w.timeout {
            hook.timeout = t.0;
        }
        if let Some(a) = w.max_age {
            hook.max_age = a.0;
        }
        settings.webhooks.push(hook);
    }
    settings.validate().map_err(|e| {
        let key = match e {
            postrider_webhooks::WebhookConfigError::Url(_) => "webhooks.url",
            postrider_webhooks::WebhookConfigError::Secret(_) => "webhooks.secret",
            postrider_webhooks::WebhookConfigError::Zero(_) => "webhooks",
        };
        invalid(key, format!("{e}; fix it in [[webhooks]]"))
    })?;
    if let Some(longest) = settings.webhooks.iter().map(|w| w.max_age).max()
        && longest >= config.raw.events.retention.0
    {
        return Err(invalid(
            "events.retention",
            format!(
                "must be longer than every webhook max_age (the longest is {}); raise events.retention or lower webhooks.max_age",
                humantime::format_duration(longest)
            ),
        ));
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of preparing `text` as a config file, or `None` when it passes.
    fn refusal(text: &str) -> Option<String> {
        let config = Config::from_toml(text).map_err(|e| e.to_string());
        match config {
            Err(e) => Some(e),
            Ok(c) => prepare_config(c).err().map(|e| e.to_string()),
        }
    }

    fn refused(text: &str, key: &str) {
        let e = refusal(text).unwrap_or_else(|| panic!("accepted:\n{text}"));
        assert!(e.contains(key), "{key} not named in: {e}");
    }

    #[test]
    fn unsubscribe_needs_an_https_base_url_and_one_long_secret() {
        let secret = "secret = \"0123456789abcdef0123456789abcdef\"\n";
        refused(&format!("[unsubscribe]\n{secret}"), "unsubscribe.base_url");
        refused(
            &format!("[unsubscribe]\nbase_url = \"http://mail.example.com\"\n{secret}"),
            "unsubscribe.base_url",
        );
        let base = "[unsubscribe]\nbase_url = \"https://mail.example.com\"\n";
        refused(base, "unsubscribe.secret");
        refused(
            &format!("{base}secret = \"too short\"\n"),
            "unsubscribe.secret",
        );
        let hash = "c".repeat(64);
        refused(
            &format!(
                "[[http.api_keys]]\nname = \"k\"\nkey_hash = \"{hash}\"\nscopes = [\"send\"]\nunsubscribe = true\n"
            ),
            "http.api_keys.unsubscribe",
        );
        let p = prepare_config(Config::from_toml(&format!("{base}{secret}")).unwrap()).unwrap();
        assert_eq!(
            p.api.unsubscribe.as_ref().map(|l| l.base_url()),
            Some("https://mail.example.com")
        );
        assert_eq!(p.delivery.unsubscribe, p.api.unsubscribe);
    }

    #[test]
    fn tls_reports_need_a_contact_address() {
        refused("[tls_reports]\nenabled = true", "tls_reports.contact");
        refused(
            "[tls_reports]\nenabled = true\ncontact = \"not an address\"",
            "tls_reports.contact",
        );
        refused(
            "[tls_reports]\nenabled = true\ncontact = \"tls@example.com\"\nfrom = \"x\"",
            "tls_reports.from",
        );
    }

    #[test]
    fn missing_tls_files_are_refused() {
        refused(
            "[smtp.tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"",
            "smtp.tls",
        );
    }

    #[test]
    fn unusable_bounce_rules_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.toml");
        std::fs::write(&rules, "[[rule]]\ncategory = \"sad\"\ntext = [\"x\"]\n").unwrap();
        for path in [rules, dir.path().join("missing.toml")] {
            refused(
                &format!("[bounces]\nrules_file = {:?}\n", path.display().to_string()),
                "bounces.rules_file",
            );
        }
    }

    #[test]
    fn bounce_domain_needs_one_good_secret() {
        let domain = "[bounces]\ndomain = \"bounces.example.com\"\n";
        refused(domain, "bounces.secret");
        refused(&format!("{domain}secret = \"short\"\n"), "bounces.secret");
        refused(
            &format!("{domain}secret = \"0123456789abcdef\"\nsecret_file = \"/x\"\n"),
            "bounces.secret",
        );
        refused(
            &format!("{domain}secret_file = \"/nonexistent/secret\"\n"),
            "bounces.secret_file",
        );
        refused(
            "[bounces]\ndomain = \"not a domain\"\nsecret = \"0123456789abcdef\"\n",
            "bounces.domain",
        );
        refused(
            "[bounces]\nsecret = \"0123456789abcdef\"\n",
            "bounces.domain",
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "0123456789abcdef-from-a-file\n").unwrap();
        let text = format!("{domain}secret_file = {:?}\n", file.display().to_string());
        let p = prepare_config(Config::from_toml(&text).unwrap()).unwrap();
        assert_eq!(
            p.delivery.verp.map(|v| v.domain().as_str().to_owned()),
            Some("bounces.example.com".to_owned())
        );
    }

    #[test]
    fn the_bounce_listener_is_receive_only_and_needs_a_bounce_domain() {
        refused("[bounces]\nlisten = \"127.0.0.1:2526\"\n", "bounces.listen");
        refused(
            "[bounces]\nmax_report_size = \"1MB\"\n",
            "bounces.max_report_size",
        );
        let domain = "[bounces]\ndomain = \"bounces.example.com\"\nsecret = \"0123456789abcdef\"\n";
        refused(
            &format!("{domain}listen = \"127.0.0.1:2526\"\nmax_report_size = \"1GB\"\n"),
            "bounces.max_report_size",
        );
        let text = format!("{domain}listen = \"127.0.0.1:2526\"\nmax_report_size = \"2MiB\"\n");
        let p = prepare_config(Config::from_toml(&text).unwrap()).unwrap();
        let listener = p.bounce_listener.expect("a bounce listener");
        assert_eq!(listener.addr, "127.0.0.1:2526".parse().unwrap());
        assert_eq!(listener.smtp.max_message_size, 2 * 1024 * 1024);
        assert!(listener.smtp.trusted_networks.is_empty());
        assert!(listener.smtp.users.is_empty());
        assert_eq!(
            listener.smtp.role,
            postrider_smtp::proto::SessionRole::ReceiveOnly {
                domain: "bounces.example.com".into()
            }
        );
        assert!(p.smtp.role == postrider_smtp::proto::SessionRole::Submission);
    }

    #[test]
    fn missing_dkim_key_file_is_refused() {
        refused(
            "[[dkim.keys]]\ndomain = \"example.com\"\nselector = \"s1\"\nkey_file = \"/nonexistent/dkim.pem\"",
            "dkim.keys.key_file",
        );
    }

    #[test]
    fn unusable_webhooks_are_refused() {
        refused(
            "[[webhooks]]\nurl = \"ftp://x\"\nsecret = \"0123456789abcdef\"",
            "webhooks.url",
        );
        refused(
            "[[webhooks]]\nurl = \"https://hooks.example.com/p\"\nsecret = \"short\"",
            "webhooks.secret",
        );
    }

    #[test]
    fn data_dir_that_is_a_file_is_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        refused(
            &format!("data_dir = {:?}", file.path().display().to_string()),
            "data_dir",
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            refusal(&format!(
                "data_dir = {:?}",
                dir.path().join("new").display().to_string()
            )),
            None
        );
    }

    #[test]
    fn bad_password_hash_is_refused() {
        refused(
            "[[smtp.users]]\nname = \"app\"\npassword_hash = \"$argon2id$nonsense\"",
            "smtp",
        );
    }

    #[test]
    fn duplicate_api_key_names_are_refused() {
        let hash = "a".repeat(64);
        refused(
            &format!(
                "[[http.api_keys]]\nname = \"k\"\nkey_hash = \"{hash}\"\nscopes = [\"send\"]\n[[http.api_keys]]\nname = \"k\"\nkey_hash = \"{hash}\"\nscopes = [\"read\"]"
            ),
            "http.api_keys",
        );
    }

    #[test]
    fn the_embedded_defaults_pass() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("data_dir = {:?}", dir.path().display().to_string());
        assert_eq!(refusal(&text), None);
    }
}
