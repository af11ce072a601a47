//! The delivery side under test, shared by the integration test files: a temporary store, the
//! scheduler with short timeouts, and polling helpers bounded by [`PATIENCE`].
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use postrider_core::{
    Address, Envelope, MessageId, NewMessage, QueuedMessage, RecipientRequest, RetryPolicy,
    ReversePath, Source, Timestamp,
};
use postrider_delivery::{
    DeliveryHandle, DeliverySettings, HickoryMxResolver, SmtpTimeouts, spawn_delivery,
};
use postrider_metrics::Metrics;
use postrider_store::Store;
use postrider_testkit::DnsServer;
use tokio_util::sync::CancellationToken;

/// How long any awaited condition may take before the test fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// `127.0.0.<last>`: one loopback address per simulated host.
pub(crate) fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// The wall clock as a [`Timestamp`].
pub(crate) fn now() -> Timestamp {
    postrider_core::clock::Clock::now(&postrider_core::clock::SystemClock)
}

/// Settings for tests: short timeouts, an hour between retries, a fast idle loop.
pub(crate) fn base_settings(port: u16) -> DeliverySettings {
    DeliverySettings {
        hostname: "relay.test".into(),
        port,
        timeouts: SmtpTimeouts::uniform(Duration::from_secs(5)),
        lease: Duration::from_secs(60),
        max_attempt_duration: Duration::from_secs(30),
        max_idle: Duration::from_millis(100),
        retry: RetryPolicy::new(vec![Duration::from_secs(3600)], Duration::from_secs(86_400))
            .unwrap(),
        ..DeliverySettings::default()
    }
}

/// A running delivery side with its own store.
pub(crate) struct Relay {
    pub store: Store,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    pub handle: Option<DeliveryHandle>,
}

impl Relay {
    /// Starts delivery resolving through `dns`, delivering to `port`.
    pub(crate) fn start(
        dns: &DnsServer,
        port: u16,
        tweak: impl FnOnce(&mut DeliverySettings),
    ) -> Relay {
        let resolver =
            HickoryMxResolver::with_nameservers(&[dns.addr()], Duration::from_millis(500)).unwrap();
        Self::start_with(resolver, port, tweak)
    }

    /// Starts delivery with a given resolver.
    pub(crate) fn start_with(
        resolver: HickoryMxResolver,
        port: u16,
        tweak: impl FnOnce(&mut DeliverySettings),
    ) -> Relay {
        let metrics = Metrics::new();
        let store = Store::temporary(metrics.clone()).unwrap();
        let mut settings = base_settings(port);
        tweak(&mut settings);
        let shutdown = CancellationToken::new();
        let handle = spawn_delivery(
            store.clone(),
            Arc::new(resolver),
            settings,
            metrics.clone(),
            shutdown.clone(),
        )
        .unwrap();
        Relay {
            store,
            metrics,
            shutdown,
            handle: Some(handle),
        }
    }

    /// Queues `body` for `envelope`.
    pub(crate) async fn submit_envelope(&self, envelope: Envelope, body: &[u8]) -> MessageId {
        self.store
            .enqueue(NewMessage::new(
                envelope,
                body.to_vec(),
                Source::Smtp,
                now(),
            ))
            .await
            .unwrap()
    }

    /// Queues `body` from `sender` to `recipients`.
    pub(crate) async fn submit_body(
        &self,
        sender: &str,
        recipients: &[&str],
        body: &[u8],
    ) -> MessageId {
        let rcpts = recipients
            .iter()
            .map(|r| RecipientRequest::new(Address::parse(r).unwrap()))
            .collect();
        let envelope = Envelope::new(ReversePath::parse(sender).unwrap(), rcpts).unwrap();
        self.submit_envelope(envelope, body).await
    }

    /// Polls the stored record until `done` holds (bounded by [`PATIENCE`]).
    pub(crate) async fn wait_for(
        &self,
        id: MessageId,
        what: &str,
        done: impl Fn(&QueuedMessage) -> bool,
    ) -> QueuedMessage {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let m = self.store.message(id).unwrap().expect("message exists");
            if done(&m) {
                return m;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {m:#?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every recipient is final and the message is marked finished.
    pub(crate) async fn finished(&self, id: MessageId) -> QueuedMessage {
        self.wait_for(id, "the message to finish", |m| {
            m.is_finished() && m.finished_at.is_some()
        })
        .await
    }

    /// `postrider_delivery_attempts_total{result}`.
    pub(crate) fn counter(&self, result: &str) -> u64 {
        self.metrics
            .delivery_attempts
            .with_label_values(&[result])
            .get()
    }

    /// The running delivery side.
    pub(crate) fn handle(&self) -> &DeliveryHandle {
        self.handle.as_ref().unwrap()
    }

    /// Stops delivery and waits for it (bounded by [`PATIENCE`]).
    pub(crate) async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(PATIENCE, h.join())
                .await
                .expect("delivery stops after shutdown");
        }
    }
}

/// Polls `done` until it holds (bounded by [`PATIENCE`]).
pub(crate) async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
