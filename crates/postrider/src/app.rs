//! Wiring: open the store, bind every listener, run SMTP, HTTP and delivery, and shut down in
//! order on SIGTERM/SIGINT without dropping anything that was acknowledged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use postrider_api::{ApiKey, ApiSettings, ApiState, RateLimit, Scope};
use postrider_core::Timestamp;
use postrider_delivery::{
    BreakerSettings, DeliverySettings, DnsSettings, DomainPolicy, HickoryMxResolver, MxResolver,
    RelayTls, Relayhost, Route, SmtpTimeouts, TlsMode,
};
use postrider_metrics::Metrics;
use postrider_smtp::{BareNewlinePolicy, FromPolicy, SmtpServer, SmtpSettings, SmtpUser};
use postrider_store::{OpenOptions, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{BareNewlines, Config, DeliveryTls, RawFromPolicy, RelayTlsMode};

/// How often finished messages past their retention are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// How often the storage watchdog looks at the store's failure flag and the free space.
const STORAGE_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Free space in the data directory at which a failed store is reopened.
const RECOVERY_FREE_BYTES: u64 = 16 * 1024 * 1024;

/// The process must have run this long before the watchdog restarts it, so a store that fails
/// for reasons other than space cannot cause a restart loop.
const MIN_UPTIME_BEFORE_RECOVERY: Duration = Duration::from_secs(30);

/// Runs the relay until a shutdown signal, then drains and returns. `accept_journal_loss`:
/// start even when journal records are missing ([`OpenOptions::accept_journal_loss`]).
pub(crate) async fn serve(config: Config, accept_journal_loss: bool) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let raw = &config.raw;
    std::fs::create_dir_all(&raw.data_dir)
        .with_context(|| format!("cannot create data_dir {}", raw.data_dir.display()))?;
    let options = OpenOptions {
        accept_journal_loss,
        ..OpenOptions::default()
    };
    let store = Store::open_with(&raw.data_dir, metrics.clone(), &options)
        .with_context(|| format!("cannot open the queue in {}", raw.data_dir.display()))?;

    let smtp_settings = smtp_settings(&config)?;
    let api_settings = api_settings(&config)?;
    let delivery_settings = delivery_settings(&config)?;
    let mut dns = DnsSettings::default();
    if let Some(t) = raw.dns.timeout {
        dns.timeout = t.0;
    }
    if let Some(a) = raw.dns.attempts {
        dns.attempts = a;
    }
    if let Some(c) = raw.dns.cache_size {
        dns.cache_size = c;
    }
    let hickory = if config.nameservers.is_empty() {
        HickoryMxResolver::system_with(&dns).context("cannot read the system DNS configuration")?
    } else {
        HickoryMxResolver::with_nameservers_and(&config.nameservers, &dns)
            .context("invalid [dns] settings")?
    };
    let dkim = load_dkim(&config)?;
    let trust = trust_services(&config, hickory.resolver().clone(), dkim.as_ref());
    let mut delivery_settings = delivery_settings;
    delivery_settings.signer = dkim.map(|d| d as Arc<dyn postrider_core::MessageSigner>);
    let resolver: Arc<dyn MxResolver> = Arc::new(hickory);

    // Bind everything before serving anything, so a port conflict fails start-up cleanly.
    let mut smtp_listeners = Vec::new();
    for addr in &raw.smtp.listen {
        smtp_listeners.push((bind(*addr, "smtp.listen").await?, false));
    }
    for addr in &raw.smtp.tls_listen {
        smtp_listeners.push((bind(*addr, "smtp.tls_listen").await?, true));
    }
    let http_listener = bind(raw.http.listen, "http.listen").await?;

    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    // Webhook subscriptions must be known to the store before the first message is accepted,
    // so their outbox entries are written with the events.
    let webhooks = postrider_webhooks::spawn_webhooks(
        store.clone(),
        webhook_settings(&config)?,
        metrics.clone(),
        shutdown.clone(),
    );
    let smtp = Arc::new(
        SmtpServer::new(smtp_settings, store.clone(), metrics.clone())
            .context("invalid [smtp] settings")?,
    );
    for (listener, implicit_tls) in smtp_listeners {
        let addr = listener.local_addr().ok();
        let (smtp, token) = (Arc::clone(&smtp), shutdown.clone());
        tasks.spawn(async move {
            if let Err(e) = smtp.serve(listener, implicit_tls, token).await {
                tracing::error!(error = %e, ?addr, "SMTP listener failed");
            }
        });
    }

    let delivery = postrider_delivery::spawn_delivery(
        store.clone(),
        resolver,
        delivery_settings,
        metrics.clone(),
        shutdown.clone(),
    )
    .context("invalid [delivery] settings")?;
    let health = delivery.health();
    let suspended: postrider_api::SuspendedProvider = Arc::new(move || {
        health
            .suspended()
            .into_iter()
            .map(|d| postrider_api::SuspendedView {
                host: d.host,
                until: d.until.to_rfc3339(),
                reason: d.reason,
                failures: d.failures,
            })
            .collect()
    });
    let router = postrider_api::router(
        ApiState::new(store.clone(), metrics.clone(), api_settings)
            .with_trust(Arc::new(trust))
            .with_suspended(suspended),
    );
    let http_shutdown = shutdown.clone();
    let http_addr = http_listener.local_addr().ok();
    let http = tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(http_listener, service)
            .with_graceful_shutdown(http_shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "HTTP listener failed");
        }
    });

    let retention = raw.queue.retention.0;
    let event_retention = raw.events.retention.0;
    let idempotency_ttl = raw.http.idempotency_ttl.0;
    let purge_store = store.clone();
    let purge_token = shutdown.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = purge_token.cancelled() => break,
                _ = tokio::time::sleep(PURGE_INTERVAL) => {}
            }
            let before = |keep: Duration| {
                Timestamp::from_millis(now_millis().saturating_sub(keep.as_millis() as u64))
            };
            match purge_store.purge_finished(before(retention)) {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "purged finished messages past retention"),
                Err(e) => tracing::warn!(error = %e, "purging finished messages failed"),
            }
            if let Err(e) = purge_store.purge_events(before(event_retention)) {
                tracing::warn!(error = %e, "purging old events failed");
            }
            if let Err(e) = purge_store.purge_idempotency(before(idempotency_ttl)) {
                tracing::warn!(error = %e, "purging expired idempotency keys failed");
            }
        }
    });

    tracing::info!(
        hostname = %config.hostname,
        smtp = ?raw.smtp.listen,
        smtps = ?raw.smtp.tls_listen,
        http = ?http_addr,
        data_dir = %raw.data_dir.display(),
        queued = store.pending_count(),
        "postrider ready"
    );

    tasks.spawn(crate::gauges::run(
        store.clone(),
        metrics.clone(),
        raw.data_dir.clone(),
        shutdown.clone(),
    ));
    spawn_storage_watchdog(store.clone(), raw.data_dir.clone())?;
    wait_for_signal().await;
    let grace = raw.shutdown.grace_period.0;
    tracing::info!(
        grace_s = grace.as_secs(),
        "shutting down: no new connections, finishing in-flight work"
    );
    shutdown.cancel();
    tasks.close();
    let drained = tokio::time::timeout(grace, async {
        tasks.wait().await;
        smtp.wait_sessions().await;
        delivery.join().await;
        let _ = http.await;
        let _ = webhooks.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "grace period over: unfinished deliveries stay leased and are retried after restart"
        );
    }
    // A clean close: sled then holds everything, so the next start needs nothing from the
    // journal files.
    store
        .close()
        .await
        .context("final flush of the queue failed")?;
    tracing::info!(queued = store.pending_count(), "postrider stopped");
    Ok(())
}

/// Watches the queue's storage from its own OS thread. After an I/O error such as a full disk,
/// sled may keep refusing writes even when space returns, and may even block the threads that
/// call it; submissions meanwhile get `451 4.3.0` / HTTP 503 and nothing acknowledged is lost.
/// Once a write has failed and the data directory has room again, this thread replaces the
/// process with a fresh copy of itself (same arguments, same PID), which reopens the store from
/// its log. That is exactly as safe as a crash and restart: acknowledged messages are on disk and
/// attempts in flight are retried after their leases. The thread never calls into sled, so a
/// wedged store cannot stop it.
fn spawn_storage_watchdog(store: Store, data_dir: std::path::PathBuf) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("postrider-storage-watchdog".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            let mut reported = false;
            loop {
                std::thread::sleep(STORAGE_PROBE_INTERVAL);
                if !store.write_failed() {
                    continue;
                }
                let free = fs2::available_space(&data_dir).unwrap_or(0);
                if free >= RECOVERY_FREE_BYTES && started.elapsed() >= MIN_UPTIME_BEFORE_RECOVERY {
                    tracing::warn!(free_bytes = free, "queue storage failed and space is back: restarting to reopen it");
                    let err = crate::cli::reexec();
                    tracing::error!(error = %err, "restart after a storage failure failed");
                    return;
                }
                if !reported {
                    tracing::error!(free_bytes = free, "queue storage is failing: submissions are refused with 451/503 until it recovers");
                    reported = true;
                }
            }
        })
        .context("cannot start the storage watchdog")?;
    Ok(())
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{key}: cannot listen on {addr}"))
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn smtp_settings(config: &Config) -> anyhow::Result<SmtpSettings> {
    let raw = &config.raw.smtp;
    let tls = match &raw.tls {
        Some(t) => Some(
            postrider_smtp::load_tls_config(&t.cert, &t.key)
                .context("smtp.tls: cannot load certificate or key")?,
        ),
        None => None,
    };
    Ok(SmtpSettings {
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
    })
}

fn api_settings(config: &Config) -> anyhow::Result<ApiSettings> {
    let raw = &config.raw;
    let mut keys = Vec::new();
    for k in &raw.http.api_keys {
        let scopes = k
            .scopes
            .iter()
            .map(|s| match s.as_str() {
                "send" => Ok(Scope::Send),
                "read" => Ok(Scope::Read),
                "admin" => Ok(Scope::Admin),
                other => Err(anyhow::anyhow!(
                    "http.api_keys.scopes: unknown scope {other:?}"
                )),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        keys.push(ApiKey {
            name: k.name.clone(),
            key_hash: k.key_hash.to_ascii_lowercase(),
            scopes,
            sandbox: k.sandbox,
        });
    }
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
    settings.validate().context("invalid [http] settings")?;
    Ok(settings)
}

/// Whether `delivery.mode = "capture"`: every message is captured, none sent.
fn captures_all(config: &Config) -> bool {
    config.raw.delivery.mode == crate::config::DeliveryMode::Capture
}

fn tls_mode(t: DeliveryTls) -> TlsMode {
    match t {
        DeliveryTls::Opportunistic => TlsMode::Opportunistic,
        DeliveryTls::Required => TlsMode::Required,
        DeliveryTls::Disabled => TlsMode::Disabled,
    }
}

fn delivery_settings(config: &Config) -> anyhow::Result<DeliverySettings> {
    let raw = &config.raw.delivery;
    let command = raw.command_timeout.0;
    let lease = raw.lease.0;
    let defaults = DeliverySettings::default();
    let routes = config
        .raw
        .routes
        .iter()
        .map(|r| {
            Route::parse(&r.domain, &r.to)
                .map_err(|e| anyhow::anyhow!("routes: {} → {}: {e}", r.domain, r.to))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
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
                },
            )
        })
        .collect();
    Ok(DeliverySettings {
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
        routes,
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
    })
}

fn load_dkim(config: &Config) -> anyhow::Result<Option<Arc<postrider_trust::DkimSigner>>> {
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
                    .parse()
                    .map_err(|e| anyhow::anyhow!("dkim.keys.algorithm: {e}"))?,
                None => postrider_trust::DkimAlgorithm::default(),
            },
        });
    }
    let signer = postrider_trust::DkimSigner::load(&settings).context("dkim.keys")?;
    tracing::info!(keys = raw.keys.len(), "DKIM signing enabled");
    Ok(Some(Arc::new(signer)))
}

fn trust_services(
    config: &Config,
    resolver: hickory_resolver::TokioResolver,
    dkim: Option<&Arc<postrider_trust::DkimSigner>>,
) -> postrider_trust::TrustServices {
    let delivery = &config.raw.delivery;
    let mut egress_ips = delivery.public_ips.clone();
    if egress_ips.is_empty() {
        egress_ips.extend(delivery.source_ip);
    }
    let verify = &config.raw.verify;
    let verifier = verify.enabled.then(|| {
        let mut s = postrider_trust::VerifierSettings {
            helo_name: delivery
                .helo_name
                .clone()
                .unwrap_or_else(|| config.hostname.clone()),
            smtp_port: delivery.port,
            ..Default::default()
        };
        if let Some(n) = verify.per_domain_per_minute {
            s.per_domain_per_minute = n;
        }
        if let Some(t) = verify.cache_ttl {
            s.cache_ttl_positive = t.0;
        }
        if let Some(t) = verify.negative_cache_ttl {
            s.cache_ttl_negative = t.0;
        }
        Arc::new(postrider_trust::Verifier::new(s, resolver.clone()))
    });
    postrider_trust::TrustServices {
        resolver,
        egress_ips,
        dkim_keys: dkim.map(|d| d.public_keys()).unwrap_or_default(),
        verifier,
    }
}

fn webhook_settings(config: &Config) -> anyhow::Result<postrider_webhooks::DispatcherSettings> {
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
    settings.validate().context("invalid [[webhooks]]")?;
    if let Some(longest) = settings.webhooks.iter().map(|w| w.max_age).max()
        && longest >= config.raw.events.retention.0
    {
        anyhow::bail!("events.retention must be longer than every webhook max_age");
    }
    Ok(settings)
}

/// `postrider check-domain`: checks a sender domain with the configured DNS, keys and addresses.
pub(crate) async fn check_domain(
    config: &Config,
    domain: &postrider_core::Domain,
) -> anyhow::Result<postrider_trust::DomainReport> {
    let mut dns = DnsSettings::default();
    if let Some(t) = config.raw.dns.timeout {
        dns.timeout = t.0;
    }
    let hickory = if config.nameservers.is_empty() {
        HickoryMxResolver::system_with(&dns).context("cannot read the system DNS configuration")?
    } else {
        HickoryMxResolver::with_nameservers_and(&config.nameservers, &dns)
            .context("invalid [dns] settings")?
    };
    let dkim = load_dkim(config)?;
    let trust = trust_services(config, hickory.resolver().clone(), dkim.as_ref());
    let keys: Vec<_> = trust
        .dkim_keys
        .iter()
        .filter(|k| k.domain == domain.as_str())
        .cloned()
        .collect();
    Ok(postrider_trust::check_domain(&trust.resolver, domain, &trust.egress_ips, &keys).await)
}
