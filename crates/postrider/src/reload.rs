//! Configuration reload without a restart, on SIGHUP (sent by `postrider reload` or
//! `systemctl reload`). The file is read again and goes through the same [`prepare`] as at
//! start; a file that fails is refused as a whole and the running configuration stays.
//!
//! Live: API keys and their rate limit, SMTP users and message rate limits, routes, the relay
//! host, per-domain delivery policies, delivery timeouts, lease and retry schedule, the bounce
//! domain and secret (VERP), webhooks, and the log level. Every other changed key is logged as needing a restart (and keeps its old value
//! until then).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use postrider_api::ApiState;
use postrider_delivery::DeliveryReloader;
use postrider_metrics::Metrics;
use postrider_smtp::SmtpServer;
use postrider_webhooks::WebhookReloader;

use crate::config::{Config, ConfigError, RawConfig};
use crate::logging::LevelSetter;
use crate::prepare::prepare;

/// The running components whose configuration can change, and the configuration in force.
pub(crate) struct Reloader {
    /// The file the relay was started with (`None`: the embedded defaults).
    pub(crate) path: Option<PathBuf>,
    /// The configuration in force.
    pub(crate) running: Mutex<Config>,
    /// The REST API (keys, rate limit).
    pub(crate) api: ApiState,
    /// SMTP submission (users, message rate limits).
    pub(crate) smtp: Arc<SmtpServer>,
    /// Delivery (routes, policies, timeouts).
    pub(crate) delivery: DeliveryReloader,
    /// The DKIM signer in force (DKIM keys change with a restart only).
    pub(crate) signer: Option<Arc<dyn postrider_core::MessageSigner>>,
    /// Webhooks.
    pub(crate) webhooks: WebhookReloader,
    /// The log filter.
    pub(crate) log: Option<LevelSetter>,
    /// Reload counters.
    pub(crate) metrics: Metrics,
}

impl Reloader {
    /// Reads the file again and applies what can change live; logs the outcome (an ERROR
    /// naming the key when the file is refused, a WARN per key that needs a restart).
    pub(crate) fn reload(&self) {
        match self.try_reload() {
            Ok(restart) => {
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                self.metrics
                    .config_last_reload_success
                    .set(crate::app::unix_seconds());
                for key in &restart {
                    tracing::warn!(key, "{key} changed; needs a restart");
                }
                tracing::info!(needs_restart = restart.len(), "configuration reloaded");
            }
            Err(e) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["refused"])
                    .inc();
                tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
            }
        }
    }

    /// The reload itself: the keys that changed but need a restart, or why the file was refused.
    fn try_reload(&self) -> Result<Vec<&'static str>, ConfigError> {
        let prepared = prepare(self.path.as_deref())?;
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let restart = needs_restart(&running, &prepared.config);
        // Every check below already passed in `prepare`; they cannot fail here, and each
        // component refuses a bad value without changing anything.
        self.api
            .replace_keys(&prepared.api.api_keys, prepared.api.rate_limit)
            .map_err(|e| crate::config::invalid("http.api_keys", e.to_string()))?;
        self.smtp
            .reload(&prepared.smtp)
            .map_err(|e| crate::config::invalid("smtp", e.to_string()))?;
        let mut delivery = prepared.delivery;
        delivery.signer = self.signer.clone();
        self.delivery
            .reload(delivery)
            .map_err(|e| crate::config::invalid("delivery", e.to_string()))?;
        self.webhooks
            .reload(prepared.webhooks)
            .map_err(|e| crate::config::invalid("webhooks", e.to_string()))?;
        if let Some(set_level) = &self.log
            && prepared.config.raw.log.level != running.raw.log.level
            && let Err(e) = set_level(&prepared.config.raw.log.level)
        {
            tracing::warn!(error = %e, "log.level not changed");
        }
        *running = prepared.config;
        Ok(restart)
    }
}

/// The keys whose change only takes effect after a restart, among those that differ between
/// `old` and `new`.
pub(crate) fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n): (&RawConfig, &RawConfig) = (&old.raw, &new.raw);
    let (od, nd) = (&o.delivery, &n.delivery);
    let (os, ns) = (&o.smtp, &n.smtp);
    let (ol, nl) = (&os.limits, &ns.limits);
    let changed: [(&'static str, bool); 40] = [
        ("hostname", old.hostname != new.hostname),
        (
            "tls_reports.enabled",
            o.tls_reports.enabled != n.tls_reports.enabled,
        ),
        ("data_dir", o.data_dir != n.data_dir),
        (
            "bounces.rules_file",
            o.bounces.rules_file != n.bounces.rules_file,
        ),
        ("bounces.listen", o.bounces.listen != n.bounces.listen),
        (
            "bounces.max_report_size",
            o.bounces.max_report_size != n.bounces.max_report_size,
        ),
        ("smtp.listen", os.listen != ns.listen),
        ("smtp.tls_listen", os.tls_listen != ns.tls_listen),
        ("smtp.tls", os.tls != ns.tls),
        (
            "smtp.trusted_networks",
            os.trusted_networks != ns.trusted_networks,
        ),
        ("smtp.bare_newlines", os.bare_newlines != ns.bare_newlines),
        (
            "smtp.limits.max_message_size",
            ol.max_message_size != nl.max_message_size,
        ),
        (
            "smtp.limits.max_recipients",
            ol.max_recipients != nl.max_recipients,
        ),
        (
            "smtp.limits.max_connections",
            ol.max_connections != nl.max_connections,
        ),
        (
            "smtp.limits.max_connections_per_ip",
            ol.max_connections_per_ip != nl.max_connections_per_ip,
        ),
        (
            "smtp.limits.command_timeout",
            ol.command_timeout != nl.command_timeout,
        ),
        ("smtp.limits.max_errors", ol.max_errors != nl.max_errors),
        (
            "smtp.limits.auth_*",
            (
                ol.auth_max_failures,
                ol.auth_failure_window,
                ol.auth_lockout,
                ol.auth_failure_delay,
            ) != (
                nl.auth_max_failures,
                nl.auth_failure_window,
                nl.auth_lockout,
                nl.auth_failure_delay,
            ),
        ),
        (
            "smtp.limits.overload_*",
            (ol.overload_percent, ol.overload_timeout)
                != (nl.overload_percent, nl.overload_timeout),
        ),
        ("http.listen", o.http.listen != n.http.listen),
        ("proxy", o.proxy != n.proxy),
        ("cluster", o.cluster != n.cluster),
        (
            "http.max_body_size",
            o.http.max_body_size != n.http.max_body_size,
        ),
        (
            "http.idempotency_ttl",
            o.http.idempotency_ttl != n.http.idempotency_ttl,
        ),
        (
            "http.metrics_auth",
            o.http.metrics_auth != n.http.metrics_auth,
        ),
        ("dns", o.dns != n.dns),
        (
            "delivery.max_concurrent",
            od.max_concurrent != nd.max_concurrent,
        ),
        (
            "delivery.max_connections",
            od.max_connections != nd.max_connections,
        ),
        (
            "delivery.max_connections_per_host",
            od.max_connections_per_host != nd.max_connections_per_host,
        ),
        (
            "delivery.connection_idle_timeout",
            od.connection_idle_timeout != nd.connection_idle_timeout,
        ),
        (
            "delivery.verify_certificates",
            od.verify_certificates != nd.verify_certificates,
        ),
        ("delivery.ca_file", od.ca_file != nd.ca_file),
        ("delivery.mode", od.mode != nd.mode),
        ("delivery.breaker", od.breaker != nd.breaker),
        ("delivery.public_ips", od.public_ips != nd.public_ips),
        ("dkim", o.dkim != n.dkim),
        ("unsubscribe", o.unsubscribe != n.unsubscribe),
        ("verify", o.verify != n.verify),
        (
            "queue.retention / events.retention",
            (&o.queue, &o.events) != (&n.queue, &n.events),
        ),
        (
            "log.format / shutdown",
            (&o.log.format, &o.shutdown) != (&n.log.format, &n.shutdown),
        ),
    ];
    changed
        .into_iter()
        .filter_map(|(key, differs)| differs.then_some(key))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_keys_need_no_restart_and_listeners_do() {
        let hash = "c".repeat(64);
        let old = Config::from_toml("hostname = \"relay.test\"").unwrap();
        let live = Config::from_toml(&format!(
            "hostname = \"relay.test\"\n[log]\nlevel = \"debug\"\n[smtp.limits]\nmessages_per_minute_per_ip = 5\n[[http.api_keys]]\nname = \"k\"\nkey_hash = \"{hash}\"\nscopes = [\"send\"]\n[[routes]]\ndomain = \"example.com\"\nto = \"127.0.0.1:2526\"\n[delivery.domains.\"example.net\"]\nmax_connections = 2"
        ))
        .unwrap();
        assert_eq!(needs_restart(&old, &live), Vec::<&str>::new());
        let moved = Config::from_toml(
            "hostname = \"relay.test\"\n[smtp]\nlisten = [\"127.0.0.1:2626\"]\n[http]\nlisten = \"127.0.0.1:8026\"",
        )
        .unwrap();
        assert_eq!(needs_restart(&old, &moved), ["smtp.listen", "http.listen"]);
    }
}
