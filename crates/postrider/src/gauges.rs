//! Periodically refreshed gauges: queue depth by state, oldest message age, disk space.
//!
//! Counters are updated where things happen; these values are states of the whole queue or
//! machine, sampled on a timer so a scrape never has to scan the queue.

use std::path::PathBuf;
use std::time::Duration;

use postrider_core::{MessageState, Timestamp};
use postrider_metrics::Metrics;
use postrider_store::{ListFilter, Store};
use tokio_util::sync::CancellationToken;

/// How often the gauges are refreshed.
const REFRESH: Duration = Duration::from_secs(15);

/// Above this many pending messages the by-state breakdown (a full scan) is skipped; the total
/// `postrider_queue_messages` is always exact.
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
    let oldest = store
        .list(
            &ListFilter {
                limit: 1,
                ..ListFilter::default()
            },
            now,
        )
        .ok()
        .and_then(|page| {
            page.messages
                .first()
                .map(|m| now.saturating_since(m.received_at).as_secs_f64())
        });
    metrics.queue_oldest_message_age.set(oldest.unwrap_or(0.0));
    if store.pending_count() > MAX_SCAN_FOR_BREAKDOWN {
        return;
    }
    let s = store.clone();
    let Ok(Ok(stats)) = tokio::task::spawn_blocking(move || s.stats(now, 0)).await else {
        return;
    };
    for state in [
        MessageState::Queued,
        MessageState::Deferred,
        MessageState::Held,
        MessageState::Scheduled,
    ] {
        let n = stats
            .by_state
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n);
        metrics
            .queue_messages_by_state
            .with_label_values(&[state.as_str()])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

fn now() -> Timestamp {
    Timestamp::from_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    )
}
