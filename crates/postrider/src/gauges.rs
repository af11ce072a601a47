//! Periodically refreshed gauges: queue depth by state, oldest message age, disk space.
//!
//! Counters are updated where things happen; these values are states of the whole queue or
//! machine, sampled on a timer so a scrape never has to scan the queue.

use std::path::PathBuf;
use std::time::Duration;

use postrider_core::Timestamp;
use postrider_metrics::Metrics;
use postrider_store::Store;
use tokio_util::sync::CancellationToken;

/// How often the gauges are refreshed.
const REFRESH: Duration = Duration::from_secs(15);

/// Above this many pending messages the by-state breakdown (a read of every pending record) is
/// skipped; the total `postrider_queue_messages` is always exact. Finished messages kept for
/// retention are never read.
const MAX_SCAN_FOR_BREAKDOWN: u64 = 100_000;

/// Refreshes the sampled gauges until `shutdown`.
pub(crate) async fn run(
    store: Store,
    metrics: Metrics,
    data_dir: PathBuf,
    shutdown: CancellationToken,
) {
    loop {
        refresh(&store, &metrics, &data_dir).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(REFRESH) => {}
        }
    }
}

async fn refresh(store: &Store, metrics: &Metrics, data_dir: &std::path::Path) {
    if let Ok(free) = fs2::available_space(data_dir) {
        metrics
            .data_dir_free_bytes
            .set(i64::try_from(free).unwrap_or(i64::MAX));
    }
    if let Ok(size) = store.size_on_disk() {
        metrics
            .store_size_bytes
            .set(i64::try_from(size).unwrap_or(i64::MAX));
    }
    let now = now();
    let s = store.clone();
    let Ok(Ok(summary)) =
        tokio::task::spawn_blocking(move || s.pending_summary(now, MAX_SCAN_FOR_BREAKDOWN)).await
    else {
        return;
    };
    let oldest = summary
        .oldest_received_at
        .map_or(0.0, |at| now.saturating_since(at).as_secs_f64());
    metrics.queue_oldest_message_age.set(oldest);
    for (state, n) in summary.by_state.into_iter().flatten() {
        metrics
            .queue_messages_by_state
            .with_label_values(&[state.as_str()])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

fn now() -> Timestamp {
    postrider_core::clock::Clock::now(&postrider_core::clock::SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use postrider_core::{Address, Envelope, NewMessage, RecipientRequest, ReversePath, Source};

    fn message(rcpt: &str, received_at: Timestamp) -> NewMessage {
        let env = Envelope::new(
            ReversePath::parse("sender@example.com").expect("sender"),
            vec![RecipientRequest::new(Address::parse(rcpt).expect("rcpt"))],
        )
        .expect("envelope");
        NewMessage::new(
            env,
            b"Subject: t\r\n\r\nhi\r\n".to_vec(),
            Source::Smtp,
            received_at,
        )
    }

    fn by_state(metrics: &Metrics, state: &str) -> i64 {
        metrics
            .queue_messages_by_state
            .with_label_values(&[state])
            .get()
    }

    #[tokio::test]
    async fn refresh_samples_the_pending_queue() {
        let metrics = Metrics::new();
        let store = Store::temporary(metrics.clone()).expect("store");
        let dir = tempfile::tempdir().expect("dir");
        let hour_ago = Timestamp::from_millis(now().as_millis() - 3_600_000);
        let old = store
            .enqueue(message("a@x.test", hour_ago))
            .await
            .expect("enqueue");
        store
            .enqueue(message("b@x.test", now()))
            .await
            .expect("enqueue");
        store.hold(old).await.expect("hold");

        refresh(&store, &metrics, dir.path()).await;
        let age = metrics.queue_oldest_message_age.get();
        assert!((3600.0..3700.0).contains(&age), "oldest age {age}");
        assert_eq!(by_state(&metrics, "held"), 1);
        assert_eq!(by_state(&metrics, "queued"), 1);
        assert_eq!(by_state(&metrics, "deferred"), 0);

        store.delete(old).await.expect("delete");
        refresh(&store, &metrics, dir.path()).await;
        assert!(metrics.queue_oldest_message_age.get() < 600.0);
        assert_eq!(by_state(&metrics, "held"), 0);
        assert!(metrics.data_dir_free_bytes.get() > 0);
    }
}
