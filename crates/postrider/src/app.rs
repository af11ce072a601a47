//! Wiring: open the store, bind every listener, run SMTP, HTTP and delivery, and shut down in
//! order on SIGTERM/SIGINT without dropping anything that was acknowledged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use postrider_api::ApiState;
use postrider_core::Timestamp;
use postrider_delivery::{DnsSettings, HickoryMxResolver, MxResolver};
use postrider_metrics::Metrics;
use postrider_smtp::SmtpServer;
use postrider_store::{OpenOptions, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::prepare::Prepared;
use crate::proxied_listener::{self, ClientAddr, ProxiedListener};
use postrider_cluster::Cluster;

/// How often finished messages past their retention are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// How often the storage watchdog looks at the store's failure flag and the free space.
const STORAGE_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Free space in the data directory at which a failed store is reopened.
const RECOVERY_FREE_BYTES: u64 = 16 * 1024 * 1024;

/// The process must have run this long before the watchdog restarts it, so a store that fails
/// for reasons other than space cannot cause a restart loop.
const MIN_UPTIME_BEFORE_RECOVERY: Duration = Duration::from_secs(30);

/// How `serve` was started, beyond the configuration.
pub(crate) struct StartOptions {
    /// Start even when journal records are missing ([`OpenOptions::accept_journal_loss`]).
    pub(crate) accept_journal_loss: bool,
    /// The configuration file, read again on SIGHUP (`None`: the embedded defaults).
    pub(crate) config_path: Option<std::path::PathBuf>,
    /// Changes the log filter on a reload.
    pub(crate) log: Option<crate::logging::LevelSetter>,
}

/// Runs the relay until a shutdown signal, then drains and returns; SIGHUP reloads the
/// configuration ([`crate::reload`]).
pub(crate) async fn serve(prepared: Prepared, start: StartOptions) -> anyhow::Result<()> {
    let StartOptions {
        accept_journal_loss,
        config_path,
        log,
    } = start;
    let Prepared {
        config,
        smtp: smtp_settings,
        api: api_settings,
        delivery: delivery_settings,
        dkim,
        webhooks: webhook_settings,
        bounce_rules,
        dns,
        bounce_listener,
    } = prepared;
    postrider_core::bounce::install_rules(bounce_rules);
    let metrics = Metrics::new();
    let raw = &config.raw;
    std::fs::create_dir_all(&raw.data_dir)
        .with_context(|| format!("cannot create data_dir {}", raw.data_dir.display()))?;
    let _pid_lock = crate::pidfile::acquire(&raw.data_dir)?;
    let options = OpenOptions {
        accept_journal_loss,
        ..OpenOptions::default()
    };
    let store = Store::open_with(&raw.data_dir, metrics.clone(), &options)
        .with_context(|| format!("cannot open the queue in {}", raw.data_dir.display()))?;

    let hickory = build_resolver(&config, &dns)?;
    hickory.count_cache_lookups(postrider_dns::CacheCounters {
        hit: metrics.dns_cache_lookups.with_label_values(&["hit"]),
        miss: metrics.dns_cache_lookups.with_label_values(&["miss"]),
    });
    if let Some(d) = &dkim {
        tracing::info!(keys = d.public_keys().len(), "DKIM signing enabled");
    }
    let trust = trust_services(&config, hickory.clone(), dkim.as_ref());
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
    let bounce_socket = match &bounce_listener {
        Some(b) => Some(bind(b.addr, "bounces.listen").await?),
        None => None,
    };

    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    // Webhook subscriptions must be known to the store before the first message is accepted,
    // so their outbox entries are written with the events.
    let (webhooks, webhook_reloader) = postrider_webhooks::spawn_reloadable_webhooks(
        store.clone(),
        webhook_settings,
        metrics.clone(),
        shutdown.clone(),
    );
    let smtp = Arc::new(
        SmtpServer::new(smtp_settings, store.clone(), metrics.clone())
            .context("invalid [smtp] settings")?,
    );
    for (listener, implicit_tls) in smtp_listeners {
        let addr = listener
            .local_addr()
            .map_or_else(|_| "unknown".to_owned(), |a| a.to_string());
        let (smtp, token) = (Arc::clone(&smtp), shutdown.clone());
        tasks.spawn(async move {
            if let Err(e) = smtp.serve(listener, implicit_tls, token).await {
                tracing::error!(error = %e, listener = %addr, "SMTP listener failed");
            }
        });
    }

    let bounce_smtp = match (bounce_listener, bounce_socket) {
        (Some(b), Some(socket)) => Some(spawn_bounce_listener(
            b, socket, &store, &metrics, &tasks, &shutdown,
        )?),
        _ => None,
    };

    let signer = delivery_settings.signer.clone();
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
    let mut api_state = ApiState::new(store.clone(), metrics.clone(), api_settings)
        .with_trust(Arc::new(trust))
        .with_suspended(suspended);
    let reporter = delivery.tls_reports();
    if reporter.enabled() {
        let trigger: postrider_api::TlsReportTrigger = Arc::new(move |day| {
            let reporter = reporter.clone();
            Box::pin(
                async move { serde_json::to_value(reporter.send(day).await).unwrap_or_default() },
            )
        });
        api_state = api_state.with_tls_reports(trigger);
    }
    if let Some(cluster) = &raw.cluster {
        let cluster = Cluster::start(cluster.settings(), metrics.clone(), shutdown.clone())
            .context("invalid [cluster] settings")?;
        api_state = api_state.with_idempotency_ledger(Arc::new(cluster.idempotency()));
    }
    let router = proxied_listener::with_client_addresses(postrider_api::router(api_state.clone()));
    let http_shutdown = shutdown.clone();
    let http_addr = http_listener.local_addr().ok();
    let http_listener = ProxiedListener::spawn(
        http_listener,
        crate::prepare::proxy_trust(&config),
        shutdown.clone(),
    )
    .context("cannot serve http.listen")?;
    let http = tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<ClientAddr>();
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
        smtp = %addresses(&raw.smtp.listen),
        smtps = %addresses(&raw.smtp.tls_listen),
        http = %http_addr.map_or_else(|| "none".to_owned(), |a| a.to_string()),
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
    metrics.config_last_reload_success.set(unix_seconds());
    let grace = raw.shutdown.grace_period.0;
    let reloader = crate::reload::Reloader {
        path: config_path,
        running: std::sync::Mutex::new(config),
        api: api_state,
        smtp: Arc::clone(&smtp),
        delivery: delivery.reloader(),
        signer,
        webhooks: webhook_reloader,
        log,
        metrics: metrics.clone(),
    };
    wait_for_signal(&reloader).await;
    tracing::info!(
        grace_s = grace.as_secs(),
        "shutting down: no new connections, finishing in-flight work"
    );
    shutdown.cancel();
    tasks.close();
    let drained = tokio::time::timeout(grace, async {
        tasks.wait().await;
        smtp.wait_sessions().await;
        if let Some(bounce_smtp) = &bounce_smtp {
            bounce_smtp.wait_sessions().await;
        }
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

/// Serves the receive-only listener of the bounce domain and starts the processor of what it
/// receives (which first drains what a previous run left in the inbox).
fn spawn_bounce_listener(
    listener: crate::prepare::BounceListener,
    socket: TcpListener,
    store: &Store,
    metrics: &Metrics,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<SmtpServer>> {
    let server = Arc::new(
        SmtpServer::new(listener.smtp, store.clone(), metrics.clone())
            .context("invalid bounce listener settings")?,
    );
    let (serving, token) = (Arc::clone(&server), shutdown.clone());
    let addr = listener.addr;
    tasks.spawn(async move {
        if let Err(e) = serving.serve(socket, false, token).await {
            tracing::error!(error = %e, listener = %addr, "bounce listener failed");
        }
    });
    let processor =
        postrider_bounces::ReportProcessor::new(store.clone(), listener.verp, metrics.clone());
    tasks.spawn(processor.run(shutdown.clone()));
    tracing::info!(listener = %addr, "bounce listener ready");
    Ok(server)
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

/// A listener that cannot be opened; the message names the key and says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{key}: cannot listen on {addr}: {}", explain_bind_error(*.addr, .key, .error))]
pub(crate) struct ListenError {
    /// The configuration key of the address.
    pub(crate) key: &'static str,
    /// The address.
    pub(crate) addr: SocketAddr,
    /// What the OS said (part of the message, not a separate cause, so it is told once).
    pub(crate) error: std::io::Error,
}

impl ListenError {
    /// Whether only a change of configuration or privileges helps (not a restart).
    pub(crate) fn is_configuration(&self) -> bool {
        matches!(
            self.error.kind(),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::AddrNotAvailable
        )
    }
}

/// What a failed bind means for the operator, and the fix.
fn explain_bind_error(addr: SocketAddr, key: &str, error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
            "permission denied: ports below 1024 need the CAP_NET_BIND_SERVICE capability; \
             grant it with AmbientCapabilities=CAP_NET_BIND_SERVICE in the systemd unit or \
             `setcap cap_net_bind_service=+ep` on the postrider binary, or set {key} to a port \
             from 1024 up"
        ),
        std::io::ErrorKind::AddrInUse => format!(
            "the address is already in use (another postrider or mail server listens there); \
             stop it or change {key}"
        ),
        std::io::ErrorKind::AddrNotAvailable => {
            format!("no local interface has this address; change {key}")
        }
        _ => error.to_string(),
    }
}

async fn bind(addr: SocketAddr, key: &'static str) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| ListenError { key, addr, error })
}

fn now_millis() -> u64 {
    postrider_core::clock::Clock::now(&postrider_core::clock::SystemClock).as_millis()
}

/// Seconds since the Unix epoch, for timestamp gauges.
pub(crate) fn unix_seconds() -> i64 {
    i64::try_from(now_millis() / 1000).unwrap_or(i64::MAX)
}

/// Waits for SIGTERM or SIGINT; reloads the configuration on each SIGHUP meanwhile.
async fn wait_for_signal(reloader: &crate::reload::Reloader) {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    let hup = signal(SignalKind::hangup());
    match (term, int, hup) {
        (Ok(mut term), Ok(mut int), Ok(mut hup)) => loop {
            tokio::select! {
                _ = term.recv() => return tracing::info!("SIGTERM received"),
                _ = int.recv() => return tracing::info!("SIGINT received"),
                _ = hup.recv() => {
                    tracing::info!("SIGHUP received: reloading the configuration");
                    tokio::task::block_in_place(|| reloader.reload());
                }
            }
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Listener addresses for the log: `127.0.0.1:2525,[::1]:2525`, or `none`.
fn addresses(list: &[std::net::SocketAddr]) -> String {
    if list.is_empty() {
        return "none".to_owned();
    }
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The one resolver of the process (delivery, address verification and `check-domain` share its
/// caches): the configured name servers, or the system's.
fn build_resolver(config: &Config, dns: &DnsSettings) -> anyhow::Result<HickoryMxResolver> {
    if config.nameservers.is_empty() {
        HickoryMxResolver::system_with(dns).context("cannot read the system DNS configuration")
    } else {
        HickoryMxResolver::with_nameservers_and(&config.nameservers, dns)
            .context("invalid [dns] settings")
    }
}

fn trust_services(
    config: &Config,
    resolver: HickoryMxResolver,
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

/// `postrider check-domain`: checks a sender domain with the configured DNS, keys and addresses.
pub(crate) async fn check_domain(
    prepared: &Prepared,
    domain: &postrider_core::Domain,
) -> anyhow::Result<postrider_trust::DomainReport> {
    let (config, dkim) = (&prepared.config, prepared.dkim.as_ref());
    let hickory = build_resolver(config, &prepared.dns)?;
    let trust = trust_services(config, hickory, dkim);
    if let Some(verp) = &prepared.delivery.verp
        && verp.domain() == domain
    {
        return Ok(postrider_trust::check_bounce_domain(
            &trust.resolver,
            domain,
            &trust.egress_ips,
            &config.hostname,
        )
        .await);
    }
    let keys: Vec<_> = trust
        .dkim_keys
        .iter()
        .filter(|k| k.domain == domain.as_str())
        .cloned()
        .collect();
    Ok(postrider_trust::check_domain(&trust.resolver, domain, &trust.egress_ips, &keys).await)
}
