//! The dispatcher against a real HTTP receiver on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use postrider_core::{
    Address, Envelope, NewMessage, RecipientRequest, ReversePath, Source, Timestamp,
};
use postrider_metrics::Metrics;
use postrider_store::{EventKind, Store, WebhookSubscription};
use postrider_webhooks::{DispatcherSettings, WebhookSettings, sign, spawn_webhooks};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "a-very-secret-shared-key";

#[derive(Default)]
struct Receiver {
    requests: Mutex<Vec<(HeaderMap, Bytes)>>,
    /// Answer 500 to this many requests first.
    fail_first: AtomicUsize,
}

async fn hook(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    rx.requests.lock().unwrap().push((headers, body));
    let failing = rx
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

async fn receiver(fail_first: usize) -> (Arc<Receiver>, SocketAddr) {
    let rx = Arc::new(Receiver {
        fail_first: AtomicUsize::new(fail_first),
        ..Receiver::default()
    });
    let app = Router::new()
        .route("/{name}", post(hook))
        .with_state(rx.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (rx, addr)
}

fn message(to: &str) -> NewMessage {
    let env = Envelope::new(
        ReversePath::parse("app@example.com").unwrap(),
        vec![RecipientRequest::new(Address::parse(to).unwrap())],
    )
    .unwrap();
    let now = postrider_core::clock::Clock::now(&postrider_core::clock::SystemClock).as_millis();
    NewMessage::new(
        env,
        b"Subject: x\r\n\r\nhi\r\n".to_vec(),
        Source::Http,
        Timestamp::from_millis(now),
    )
}

/// Polls `cond` until it holds or 20 s pass.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn settings(hooks: Vec<WebhookSettings>) -> DispatcherSettings {
    DispatcherSettings {
        webhooks: hooks,
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        concurrency: 4,
    }
}

fn verified(headers: &HeaderMap, body: &[u8]) -> bool {
    let ts: u64 = headers["postrider-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    sign::verify(
        SECRET,
        ts,
        body,
        headers["postrider-signature"].to_str().unwrap(),
    )
}

#[tokio::test]
async fn signed_posts_are_retried_after_500_and_filtered_by_event() {
    let (all, all_addr) = receiver(1).await;
    let (only_delivered, od_addr) = receiver(0).await;
    let store = Store::temporary(Metrics::new()).unwrap();
    let metrics = Metrics::new();
    let mut filtered = WebhookSettings::new(format!("http://{od_addr}/delivered"), SECRET);
    filtered.events = vec![EventKind::Delivered];
    let shutdown = CancellationToken::new();
    let task = spawn_webhooks(
        store.clone(),
        settings(vec![
            WebhookSettings::new(format!("http://{all_addr}/all"), SECRET),
            filtered,
        ]),
        metrics.clone(),
        shutdown.clone(),
    );
    let id = store.enqueue(message("a@example.net")).await.unwrap();

    eventually("a 500, then a success", || {
        all.requests.lock().unwrap().len() >= 2
    })
    .await;
    eventually("the outbox drains", || store.webhook_outbox_len() == 0).await;
    let requests = all.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "exactly one retry");
    for (headers, body) in &requests {
        assert!(verified(headers, body), "signature verifies");
        assert!(!sign::verify(
            "wrong-secret-wrong-secret",
            0,
            body,
            headers["postrider-signature"].to_str().unwrap()
        ));
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["postrider-event"], "accepted");
        assert_eq!(headers["postrider-event-seq"], "1");
        let event: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(event["type"], "accepted");
        assert_eq!(event["seq"], 1);
        assert_eq!(event["id"], id.to_string());
    }
    // The `delivered`-only webhook got nothing for an `accepted` event (and nothing is queued for it).
    assert!(only_delivered.requests.lock().unwrap().is_empty());
    let text = metrics.render();
    assert!(
        text.contains("postrider_webhook_deliveries_total{result=\"delivered\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("postrider_webhook_deliveries_total{result=\"failed\"} 1"),
        "{text}"
    );
    shutdown.cancel();
    task.await.unwrap();
}

/// An event is posted only once the change it describes is durable: while journal syncs fail,
/// the `accepted` event of a submission that was refused is never announced.
#[tokio::test]
async fn events_are_posted_only_once_durable() {
    let (rx, addr) = receiver(0).await;
    let store = Store::temporary(Metrics::new()).unwrap();
    let shutdown = CancellationToken::new();
    let task = spawn_webhooks(
        store.clone(),
        settings(vec![WebhookSettings::new(
            format!("http://{addr}/all"),
            SECRET,
        )]),
        Metrics::new(),
        shutdown.clone(),
    );
    store.set_fail_syncs(true);
    assert!(store.enqueue(message("a@example.net")).await.is_err());
    assert_eq!(store.webhook_outbox_len(), 1, "the event is written");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        rx.requests.lock().unwrap().is_empty(),
        "nothing is announced while it is not durable"
    );

    store.set_fail_syncs(false);
    let id = store.enqueue(message("b@example.net")).await.unwrap();
    eventually("the durable message's event", || {
        !rx.requests.lock().unwrap().is_empty()
    })
    .await;
    let requests = rx.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "only the durable one so far");
    let event: serde_json::Value = serde_json::from_slice(&requests[0].1).unwrap();
    assert_eq!(event["id"], id.to_string());
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn outbox_entries_survive_a_restart() {
    let (rx, addr) = receiver(0).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    let url = format!("http://{addr}/hook");
    {
        let store = Store::open(&path, Metrics::new()).unwrap();
        // Subscribed, but no dispatcher runs before the "crash".
        store.set_webhooks(vec![WebhookSubscription {
            url: url.clone(),
            events: vec![],
        }]);
        store.enqueue(message("a@example.net")).await.unwrap();
        assert_eq!(store.webhook_outbox_len(), 1);
    }
    let store = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match Store::open(&path, Metrics::new()) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("reopen: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(
        store.webhook_outbox_len(),
        1,
        "the entry is still there after restart"
    );
    let shutdown = CancellationToken::new();
    let task = spawn_webhooks(
        store.clone(),
        settings(vec![WebhookSettings::new(url, SECRET)]),
        Metrics::new(),
        shutdown.clone(),
    );
    eventually("delivered after restart", || {
        rx.requests.lock().unwrap().len() == 1
    })
    .await;
    eventually("the outbox drains", || store.webhook_outbox_len() == 0).await;
    let (headers, body) = rx.requests.lock().unwrap()[0].clone();
    assert!(verified(&headers, &body));
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn deliveries_are_dropped_after_max_age() {
    let (rx, addr) = receiver(usize::MAX).await;
    let store = Store::temporary(Metrics::new()).unwrap();
    let metrics = Metrics::new();
    let mut hook = WebhookSettings::new(format!("http://{addr}/hook"), SECRET);
    hook.max_age = Duration::from_millis(300);
    let shutdown = CancellationToken::new();
    let task = spawn_webhooks(
        store.clone(),
        settings(vec![hook]),
        metrics.clone(),
        shutdown.clone(),
    );
    store.enqueue(message("a@example.net")).await.unwrap();
    eventually("given up", || metrics.webhook_dropped.get() == 1).await;
    assert_eq!(store.webhook_outbox_len(), 0);
    assert!(
        rx.requests.lock().unwrap().len() >= 2,
        "retried before giving up"
    );
    shutdown.cancel();
    task.await.unwrap();
}
