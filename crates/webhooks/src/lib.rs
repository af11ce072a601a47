//! Webhooks of Postrider: events from the store's durable outbox, POSTed as signed JSON.
//!
//! # Brief overview
//! - The store writes an outbox entry for every event of a subscribed kind in the same
//!   transaction as the event ([`postrider_store::Store::set_webhooks`], called by
//!   [`spawn_webhooks`]). Nothing is lost in a crash; entries stay until delivered or given up.
//! - [`spawn_webhooks`] runs the dispatcher: it leases due entries, POSTs the event JSON with a
//!   timeout and the signature headers of [`sign`], removes the entry on a 2xx, and otherwise
//!   retries with exponential backoff (`retry_base` doubling up to `retry_max`) until the
//!   webhook's `max_age`, then drops it (`postrider_webhook_dropped_total`).
//! - Delivery is at least once: a receiver deduplicates by the `seq` of the event (also sent
//!   as `Postrider-Event-Seq`).
//!
//! Request: `POST <url>`, `Content-Type: application/json`, `Postrider-Timestamp`,
//! `Postrider-Signature`, `Postrider-Event` (the type) and `Postrider-Event-Seq`; body: the
//! event exactly as `GET /v1/events` shows it.

mod http;
pub mod sign;

use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::Duration;

use postrider_core::Timestamp;
use postrider_metrics::Metrics;
use postrider_store::{EventKind, Store, WebhookDelivery, WebhookSubscription};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

pub use http::PostError;

/// One configured webhook (`[[webhooks]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// `http://` or `https://` endpoint.
    pub url: String,
    /// Shared secret of the HMAC signature (at least 16 characters).
    pub secret: String,
    /// Event kinds to send; empty means all.
    pub events: Vec<EventKind>,
    /// Timeout of one POST, connection included (default 10 s).
    pub timeout: Duration,
    /// How long an event is retried before it is dropped (default 24 h).
    pub max_age: Duration,
}

impl WebhookSettings {
    /// A webhook for `url` with every event and the default timeout and lifetime.
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Self {
        WebhookSettings {
            url: url.into(),
            secret: secret.into(),
            events: Vec::new(),
            timeout: Duration::from_secs(10),
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// The dispatcher's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatcherSettings {
    /// The webhooks, in configuration order (the index is stored in outbox keys: appending is
    /// safe; reordering makes old entries be dropped, because their url no longer matches).
    pub webhooks: Vec<WebhookSettings>,
    /// First retry delay (default 10 s); doubles per failed attempt.
    pub retry_base: Duration,
    /// Longest retry delay (default 10 min).
    pub retry_max: Duration,
    /// Most POSTs in flight at once (default 16).
    pub concurrency: usize,
}

impl Default for DispatcherSettings {
    fn default() -> Self {
        DispatcherSettings {
            webhooks: Vec::new(),
            retry_base: Duration::from_secs(10),
            retry_max: Duration::from_secs(600),
            concurrency: 16,
        }
    }
}

/// Why webhook settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookConfigError {
    /// The URL is not an absolute `http://` or `https://` URL with a host.
    #[error("webhook url {0:?} must be an absolute http:// or https:// URL")]
    Url(String),
    /// The secret is too short to be a secret.
    #[error("webhook {0:?}: secret must be at least 16 characters")]
    Secret(String),
    /// A zero timeout, lifetime, retry delay or concurrency.
    #[error("webhook setting {0} must be greater than zero")]
    Zero(&'static str),
}

impl DispatcherSettings {
    /// Checks every webhook; call at start-up.
    pub fn validate(&self) -> Result<(), WebhookConfigError> {
        if self.retry_base.is_zero() {
            return Err(WebhookConfigError::Zero("retry_base"));
        }
        if self.concurrency == 0 {
            return Err(WebhookConfigError::Zero("concurrency"));
        }
        for w in &self.webhooks {
            http::Target::parse(&w.url).ok_or_else(|| WebhookConfigError::Url(w.url.clone()))?;
            if w.secret.chars().count() < 16 {
                return Err(WebhookConfigError::Secret(w.url.clone()));
            }
            if w.timeout.is_zero() {
                return Err(WebhookConfigError::Zero("timeout"));
            }
            if w.max_age.is_zero() {
                return Err(WebhookConfigError::Zero("max_age"));
            }
        }
        Ok(())
    }

    /// The retry delay after `attempts` failed attempts (1 → `retry_base`).
    pub fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(20);
        self.retry_base
            .saturating_mul(factor)
            .min(self.retry_max.max(self.retry_base))
    }
}

/// Routes events into the outbox (synchronously, so events written after this call are
/// covered) and starts the dispatcher. Call before submissions are accepted. The task ends
/// when `shutdown` is cancelled (deliveries in flight are abandoned and redone after restart).
pub fn spawn_webhooks(
    store: Store,
    settings: DispatcherSettings,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    spawn_reloadable_webhooks(store, settings, metrics, shutdown).0
}

/// [`spawn_webhooks`], also returning the [`WebhookReloader`] that replaces the webhooks of
/// the running dispatcher.
pub fn spawn_reloadable_webhooks(
    store: Store,
    settings: DispatcherSettings,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> (JoinHandle<()>, WebhookReloader) {
    subscribe(&store, &settings);
    let current = Arc::new(ArcSwap::from_pointee(settings));
    let reloader = WebhookReloader {
        store: store.clone(),
        current: Arc::clone(&current),
    };
    let dispatcher = Dispatcher {
        store,
        settings: current,
        metrics,
        client: http::Client::new(),
    };
    let task = tokio::spawn(async move { dispatcher.run(shutdown).await });
    (task, reloader)
}

/// Tells the store which events go to the outbox of which webhook.
fn subscribe(store: &Store, settings: &DispatcherSettings) {
    store.set_webhooks(
        settings
            .webhooks
            .iter()
            .map(|w| WebhookSubscription {
                url: w.url.clone(),
                events: w.events.clone(),
            })
            .collect(),
    );
}

/// Replaces the webhooks of a running dispatcher (configuration reload).
#[derive(Clone)]
pub struct WebhookReloader {
    store: Store,
    current: Arc<ArcSwap<DispatcherSettings>>,
}

impl std::fmt::Debug for WebhookReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookReloader").finish_non_exhaustive()
    }
}

impl WebhookReloader {
    /// Events written from now on go to the new webhooks. Outbox entries of a webhook whose
    /// position in the list now holds another URL are dropped when due (as after a restart
    /// with a reordered list). Refused, with nothing changed, when `settings` do not pass
    /// [`DispatcherSettings::validate`].
    pub fn reload(&self, settings: DispatcherSettings) -> Result<(), WebhookConfigError> {
        settings.validate()?;
        subscribe(&self.store, &settings);
        self.current.store(Arc::new(settings));
        Ok(())
    }
}

struct Dispatcher {
    store: Store,
    settings: Arc<ArcSwap<DispatcherSettings>>,
    metrics: Metrics,
    client: http::Client,
}

/// Lease margin beyond the POST timeout.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// Longest sleep between outbox checks (also the retry delay after a store error).
const MAX_IDLE: Duration = Duration::from_secs(30);

impl Dispatcher {
    async fn run(self, shutdown: CancellationToken) {
        tracing::info!(
            webhooks = self.settings.load().webhooks.len(),
            "webhook dispatcher started"
        );
        loop {
            let settings = self.settings.load_full();
            let lease = settings
                .webhooks
                .iter()
                .map(|w| w.timeout)
                .max()
                .unwrap_or(Duration::from_secs(10))
                .saturating_add(LEASE_MARGIN);
            self.metrics
                .webhook_outbox
                .set(i64::try_from(self.store.webhook_outbox_len()).unwrap_or(i64::MAX));
            let now = clock_now();
            let due = match self
                .store
                .lease_webhook_deliveries(now, lease, settings.concurrency)
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "webhook outbox unreadable; retrying later");
                    Vec::new()
                }
            };
            if due.is_empty() {
                let wait = match self.store.next_webhook_due() {
                    Ok(Some(at)) => Duration::from_millis(
                        at.as_millis().saturating_sub(clock_now().as_millis()),
                    )
                    .clamp(Duration::from_millis(5), MAX_IDLE),
                    _ => MAX_IDLE,
                };
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = self.store.wait_for_webhook_work() => {}
                    () = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            // Events are written with the change they describe, before that change is
            // durable (a submission is confirmed only after its sync). Announce only what a
            // crash cannot take back: after a failed sync the entries stay leased and are
            // tried again when the lease expires.
            if let Err(e) = self.store.flush().await {
                tracing::error!(error = %e, entries = due.len(), "webhook events not durable; retried after their lease");
                continue;
            }
            let mut tasks = JoinSet::new();
            for delivery in due {
                let (store, settings, metrics, client) = (
                    self.store.clone(),
                    Arc::clone(&settings),
                    self.metrics.clone(),
                    self.client.clone(),
                );
                tasks.spawn(async move {
                    deliver(&store, &settings, &metrics, &client, delivery).await;
                });
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = async { while tasks.join_next().await.is_some() {} } => {}
            }
        }
        tracing::info!("webhook dispatcher stopped");
    }
}

async fn deliver(
    store: &Store,
    settings: &DispatcherSettings,
    metrics: &Metrics,
    client: &http::Client,
    d: WebhookDelivery,
) {
    let hook = usize::try_from(d.webhook)
        .ok()
        .and_then(|i| settings.webhooks.get(i))
        .filter(|w| w.url == d.url);
    let (Some(hook), Some(event)) = (hook, d.event.as_ref()) else {
        tracing::warn!(seq = d.seq, url = %d.url, "webhook entry dropped: webhook no longer configured or event purged");
        drop_entry(store, metrics, &d).await;
        return;
    };
    let body = match serde_json::to_vec(&event.to_json()) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(seq = d.seq, error = %e, "cannot encode event");
            drop_entry(store, metrics, &d).await;
            return;
        }
    };
    let timestamp = clock_now().as_millis() / 1000;
    let headers = [
        ("postrider-timestamp", timestamp.to_string()),
        (
            "postrider-signature",
            sign::signature(&hook.secret, timestamp, &body),
        ),
        ("postrider-event", event.kind.as_str().to_owned()),
        ("postrider-event-seq", d.seq.to_string()),
    ];
    let result = client.post(&hook.url, &headers, body, hook.timeout).await;
    let outcome = match result {
        Ok(status) if (200..300).contains(&status) => {
            metrics
                .webhook_deliveries
                .with_label_values(&["delivered"])
                .inc();
            tracing::debug!(seq = d.seq, url = %hook.url, status, "webhook delivered");
            store.webhook_delivered(&d).await
        }
        other => {
            metrics
                .webhook_deliveries
                .with_label_values(&["failed"])
                .inc();
            let attempts = d.attempts.saturating_add(1);
            let next = clock_now().saturating_add(settings.backoff(attempts));
            let deadline = d.first_at.saturating_add(hook.max_age);
            match &other {
                Ok(status) => {
                    tracing::info!(seq = d.seq, url = %hook.url, status, attempts, "webhook refused")
                }
                Err(e) => {
                    tracing::info!(seq = d.seq, url = %hook.url, error = %e, attempts, "webhook failed")
                }
            }
            if next > deadline {
                tracing::warn!(seq = d.seq, url = %hook.url, attempts, "webhook given up after its max_age");
                drop_entry(store, metrics, &d).await;
                return;
            }
            store.webhook_retry_at(&d, next).await
        }
    };
    if let Err(e) = outcome {
        tracing::error!(seq = d.seq, error = %e, "cannot record webhook outcome; the lease will expire and it is retried");
    }
}

async fn drop_entry(store: &Store, metrics: &Metrics, d: &WebhookDelivery) {
    metrics.webhook_dropped.inc();
    if let Err(e) = store.webhook_delivered(d).await {
        tracing::error!(seq = d.seq, error = %e, "cannot drop webhook entry");
    }
}

fn clock_now() -> Timestamp {
    postrider_core::clock::Clock::now(&postrider_core::clock::SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = DispatcherSettings::default();
        assert_eq!(s.backoff(1), Duration::from_secs(10));
        assert_eq!(s.backoff(2), Duration::from_secs(20));
        assert_eq!(s.backoff(6), Duration::from_secs(320));
        assert_eq!(s.backoff(7), Duration::from_secs(600));
        assert_eq!(s.backoff(1000), Duration::from_secs(600));
    }

    #[test]
    fn validation() {
        let mut s = DispatcherSettings {
            webhooks: vec![WebhookSettings::new(
                "https://hooks.example.com/x",
                "0123456789abcdef",
            )],
            ..DispatcherSettings::default()
        };
        assert_eq!(s.validate(), Ok(()));
        s.webhooks[0].url = "ftp://x".into();
        assert!(matches!(s.validate(), Err(WebhookConfigError::Url(_))));
        s.webhooks[0].url = "http://127.0.0.1:8080/hook".into();
        s.webhooks[0].secret = "short".into();
        assert!(matches!(s.validate(), Err(WebhookConfigError::Secret(_))));
    }
}
