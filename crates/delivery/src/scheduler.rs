//! The scheduler loop: lease due messages while there is capacity, start one worker per message,
//! sleep until the next due time, new work, or shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postrider_metrics::Metrics;
use postrider_store::Store;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::{Breaker, SuspendedDestination};
use crate::mx::MxResolver;
use crate::pool::Pool;
use crate::rate::RateLimiter;
use crate::settings::{DeliverySettings, InvalidSettings};
use crate::smtp::quit;
use crate::tls::TlsTrust;
use crate::worker::{Shared, clock_now, run_attempt};
use arc_swap::ArcSwap;

/// Pause after a store error before the scheduler tries again.
const STORE_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// The running delivery side: the scheduler task and its workers.
#[derive(Debug)]
pub struct DeliveryHandle {
    scheduler: JoinHandle<()>,
    reaper: JoinHandle<()>,
    tls_reports: JoinHandle<()>,
    workers: TaskTracker,
    shared: Arc<Shared>,
}

impl DeliveryHandle {
    /// Waits until the scheduler has stopped (after the shutdown token is cancelled) and every
    /// in-flight attempt has finished and been recorded. Bound it with a grace period: attempts
    /// left unfinished are covered by their leases and retried after the next start.
    pub async fn join(self) {
        if let Err(e) = self.scheduler.await {
            tracing::error!(error = %e, "delivery scheduler task failed");
        }
        self.workers.close();
        self.workers.wait().await;
        if let Err(e) = self.reaper.await {
            tracing::error!(error = %e, "connection reaper task failed");
        }
        if let Err(e) = self.tls_reports.await {
            tracing::error!(error = %e, "TLS report task failed");
        }
        // Counts of the sessions since the last flush (TLS reports).
        if let Some(counter) = &self.shared.tls_counter {
            counter.flush(&self.shared.store).await;
        }
        // Idle pooled connections get a polite QUIT.
        let idle = self.shared.pool.drain();
        let limit = self.shared.settings().timeouts.quit;
        let quits = idle.into_iter().map(|mut s| async move {
            quit(&mut s.conn, limit).await;
        });
        let _ = tokio::time::timeout(limit, futures_join(quits)).await;
    }

    /// Destinations the circuit breaker currently suspends (for the admin API), by host name.
    pub fn suspended(&self) -> Vec<SuspendedDestination> {
        self.shared.suspended()
    }

    /// A cheap, cloneable view of destination health that outlives this handle (for the API).
    pub fn health(&self) -> DestinationHealth {
        DestinationHealth {
            shared: Arc::clone(&self.shared),
        }
    }

    /// A handle that replaces the settings of the running delivery side; it outlives this
    /// handle.
    pub fn reloader(&self) -> DeliveryReloader {
        DeliveryReloader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Attempts running right now.
    pub fn in_flight(&self) -> usize {
        self.shared.inflight_count()
    }

    /// A handle that sends TLS reports on request (the admin trigger); it outlives this handle.
    pub fn tls_reports(&self) -> TlsReporter {
        TlsReporter {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Sends the SMTP TLS reports of a day on request (admin trigger), outside the daily schedule.
#[derive(Debug, Clone)]
pub struct TlsReporter {
    shared: Arc<Shared>,
}

impl TlsReporter {
    /// Whether TLS reporting is on (`[tls_reports] enabled`).
    pub fn enabled(&self) -> bool {
        self.shared.tls_counter.is_some()
    }

    /// Flushes the counts and sends the report of every domain with counts on `day` now;
    /// counts whose report went out are removed.
    pub async fn send(&self, day: postrider_core::tls_report::UtcDay) -> crate::DayReport {
        crate::tls_report::send_day(&self.shared, day).await
    }
}

/// Replaces the settings of the running delivery side (configuration reload).
#[derive(Debug, Clone)]
pub struct DeliveryReloader {
    shared: Arc<Shared>,
}

impl DeliveryReloader {
    /// Routes, the relay host, per-domain policies, timeouts, the lease, the retry schedule, the
    /// VERP return paths and the DKIM signer apply from the next attempt on, the TLS report
    /// settings from the next report; what was sized at start (delivery slots, the connection
    /// pool, the circuit breaker, TLS trust, whether TLS reports are on) stays until a restart.
    /// Refused, with nothing changed, when `settings` do not pass
    /// [`DeliverySettings::validate`]. Capture of
    /// every message (`capture_all`) also stays as started: submission marks messages by the
    /// same setting, and both sides must change together, at a restart.
    pub fn reload(&self, mut settings: DeliverySettings) -> Result<(), InvalidSettings> {
        settings.validate()?;
        settings.capture_all = self.shared.settings().capture_all;
        // Turning TLS reports on or off takes a restart (counting starts with the relay); the
        // report settings themselves apply from the next report.
        if settings.tls_reports.is_some() != self.shared.tls_counter.is_some() {
            settings.tls_reports = self.shared.settings().tls_reports.clone();
        }
        self.shared.current.store(Arc::new(settings));
        Ok(())
    }
}

/// Read access to the circuit breaker's state, shareable with other components.
#[derive(Debug, Clone)]
pub struct DestinationHealth {
    shared: Arc<Shared>,
}

impl DestinationHealth {
    /// Destinations suspended right now.
    pub fn suspended(&self) -> Vec<SuspendedDestination> {
        self.shared.suspended()
    }
}

/// Starts the scheduler on the current tokio runtime.
///
/// It leases due messages from `store` (never more than it has free delivery slots, so messages
/// beyond `max_concurrent_deliveries` stay in the store), runs one attempt per message, and
/// records each outcome. When `shutdown` is cancelled it stops leasing; running attempts finish
/// ([`DeliveryHandle::join`]).
pub fn spawn_delivery(
    store: Store,
    resolver: Arc<dyn MxResolver>,
    settings: DeliverySettings,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<DeliveryHandle, InvalidSettings> {
    settings.validate()?;
    let extra_roots = match &settings.ca_file {
        Some(path) => read_roots(path)?,
        None => Vec::new(),
    };
    let pool = Pool::new(
        settings.max_outbound_connections,
        settings.max_connections_per_host,
        settings.connection_idle_timeout,
        metrics.outbound_connections.clone(),
    );
    let shared = Arc::new_cyclic(|me| Shared {
        me: me.clone(),
        store,
        resolver,
        pool,
        breaker: Mutex::new(Breaker::new(settings.breaker)),
        rate: Mutex::new(RateLimiter::default()),
        domain_limits: Mutex::new(HashMap::new()),
        tls: TlsTrust::new(extra_roots, settings.verify_certificates),
        metric_domains: Mutex::new(HashSet::new()),
        sts_fetch_failures: Mutex::new(HashMap::new()),
        sts_fetch_locks: crate::mta_sts::FetchLocks::default(),
        tls_counter: settings
            .tls_reports
            .as_ref()
            .map(|_| crate::tls_report::counter::SessionCounter::default()),
        tls_report_sending: tokio::sync::Mutex::new(()),
        current: ArcSwap::from_pointee(settings),
        metrics,
        inflight: Mutex::new(HashMap::new()),
    });
    let reaper = tokio::spawn(reaper_loop(Arc::clone(&shared), shutdown.clone()));
    let tls_reports = tokio::spawn(crate::tls_report::run(
        Arc::clone(&shared),
        shutdown.clone(),
    ));
    let workers = TaskTracker::new();
    let scheduler = tokio::spawn(scheduler_loop(
        Arc::clone(&shared),
        workers.clone(),
        shutdown,
    ));
    Ok(DeliveryHandle {
        scheduler,
        reaper,
        tls_reports,
        workers,
        shared,
    })
}

/// Reads the PEM certificates of `ca_file`.
fn read_roots(
    path: &std::path::Path,
) -> Result<Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>, InvalidSettings> {
    let bad = InvalidSettings {
        setting: "ca_file",
        reason: "cannot be read or holds no PEM certificate",
    };
    let pem = std::fs::read(path).map_err(|_| bad.clone())?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|_| bad.clone())?;
    if certs.is_empty() {
        return Err(bad);
    }
    Ok(certs)
}

/// Runs futures concurrently to completion (a tiny `join_all`).
async fn futures_join<F: Future<Output = ()>>(futures: impl IntoIterator<Item = F>) {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    for f in set {
        f.await;
    }
}

/// Closes idle pooled connections past their idle timeout (with QUIT) and refreshes the
/// suspended-destinations gauge, until shutdown.
async fn reaper_loop(shared: Arc<Shared>, shutdown: CancellationToken) {
    let every = (shared.settings().connection_idle_timeout / 2)
        .clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let expired = shared.pool.reap();
        let limit = shared.settings().timeouts.quit;
        for mut s in expired {
            tokio::spawn(async move { quit(&mut s.conn, limit).await });
        }
        let _ = shared.suspended();
    }
}

async fn scheduler_loop(shared: Arc<Shared>, workers: TaskTracker, shutdown: CancellationToken) {
    let settings = shared.settings();
    let slots = Arc::new(Semaphore::new(settings.max_concurrent_deliveries));
    tracing::info!(
        max_concurrent = settings.max_concurrent_deliveries,
        lease_s = settings.lease.as_secs(),
        "delivery scheduler started"
    );
    loop {
        // Wait for at least one free slot, then take every other free one (up to a batch).
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let mut permits = vec![first];
        while permits.len() < settings.batch_size {
            match Arc::clone(&slots).try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let wanted = permits.len();
        let now = clock_now();
        let leases = match shared.store.lease_due(now, shared.settings().lease, wanted) {
            Ok(leases) => leases,
            Err(e) => {
                tracing::error!(error = %e, "cannot lease due messages");
                drop(permits);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(STORE_ERROR_BACKOFF) => continue,
                }
            }
        };
        let leased = leases.len();
        for lease in leases {
            let id = lease.message.id;
            if !shared.begin(lease) {
                tracing::warn!(id = %id, "lease expired while the attempt still runs; lease refreshed, no second attempt");
                continue;
            }
            let Some(permit) = permits.pop() else {
                // Cannot happen (at most `wanted` leases); never start unbounded work.
                break;
            };
            let shared = Arc::clone(&shared);
            workers.spawn(async move {
                run_attempt(shared, id).await;
                drop(permit);
            });
        }
        drop(permits);
        if leased == wanted {
            // Maybe more is due: go again, after letting other tasks run.
            tokio::task::yield_now().await;
            continue;
        }
        let sleep_for = match shared.store.next_due_at() {
            Ok(Some(due)) => {
                Duration::from_millis(due.as_millis().saturating_sub(clock_now().as_millis()))
            }
            Ok(None) => settings.max_idle,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the next due time");
                STORE_ERROR_BACKOFF
            }
        }
        .min(settings.max_idle);
        if sleep_for.is_zero() && leased > 0 {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = shared.store.wait_for_work() => {}
            // An entry due "now" that we could not lease is an in-flight lease about to expire or
            // a race with another change; wait at least a little to avoid spinning.
            _ = tokio::time::sleep(sleep_for.max(Duration::from_millis(10))) => {}
        }
    }
    tracing::info!(
        in_flight = shared.inflight_count(),
        "delivery scheduler stopped leasing"
    );
}
