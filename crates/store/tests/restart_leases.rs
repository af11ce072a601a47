//! Leases of an earlier run: a process that dies mid-attempt leaves its leases behind, and the
//! next open of the data directory makes those messages due at once instead of after the lease.
//! These tests use the wall clock, since the release at open compares leases with it.

mod common;

use std::time::Duration;

use common::*;
use postrider_core::{MessageId, MessageState, RecipientState, Timestamp};
use postrider_metrics::Metrics;
use postrider_store::{RecordOutcome, Store};

fn wall_now() -> Timestamp {
    postrider_core::clock::Clock::now(&postrider_core::clock::SystemClock)
}

fn minutes(n: u64) -> Duration {
    Duration::from_secs(60 * n)
}

#[tokio::test]
async fn leases_of_an_earlier_run_are_due_at_once_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b);
    {
        let store = Store::open(dir.path(), Metrics::new()).unwrap();
        let now = wall_now();
        a = store
            .enqueue(new_message(&["a@x.test"], now.as_millis()))
            .await
            .unwrap();
        b = store
            .enqueue(new_message(&["b@y.test", "c@y.test"], now.as_millis()))
            .await
            .unwrap();
        let leases = store.lease_due(now, LEASE, 10).unwrap();
        assert_eq!(ids(&leases), vec![a, b]);
        // `a` gets a deferred attempt and is due again at once, then leased a second time.
        let r = store
            .record_attempt(
                &leases[0],
                deferred(&leases[0].message, now.as_millis(), now.as_millis()),
            )
            .await
            .unwrap();
        assert!(matches!(r, RecordOutcome::Recorded { .. }));
        let again = store.lease_due(now, LEASE, 10).unwrap();
        assert_eq!(ids(&again), vec![a]);
        assert!(store.leased_until(a).unwrap().is_some());
        assert!(store.leased_until(b).unwrap().is_some());
        // The leases are on disk; the process "dies" with both attempts in flight.
        store.flush().await.unwrap();
    }

    let store = open_retrying(dir.path(), Metrics::new()).await;
    let reopened = wall_now();
    assert_eq!(store.leased_until(a).unwrap(), None);
    assert_eq!(store.leased_until(b).unwrap(), None);
    assert_eq!(store.pending_count(), 2);
    assert!(
        store
            .next_due_at()
            .unwrap()
            .is_some_and(|at| at <= reopened),
        "the released messages are due now, not after the {LEASE:?} lease"
    );
    let due = store.lease_due(reopened, LEASE, 10).unwrap();
    assert_eq!(ids(&due), vec![a, b], "due at once after the restart");
    let (ma, mb) = (&due[0].message, &due[1].message);
    assert_eq!(ma.attempts, 1, "attempt count kept");
    assert_eq!(ma.recipients[0].state, RecipientState::Deferred);
    assert_eq!(ma.recipients[0].attempts, 1);
    assert!(ma.recipients[0].last_reply.is_some());
    assert_eq!(mb.attempts, 0);
    assert!(
        mb.recipients
            .iter()
            .all(|r| r.state == RecipientState::Queued)
    );
    assert!(ma.next_attempt_at.is_some_and(|at| at <= reopened));
}

#[tokio::test]
async fn ordinary_entries_and_held_leases_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (leased, soon, later, held, now);
    {
        let store = Store::open(dir.path(), Metrics::new()).unwrap();
        now = wall_now();
        leased = store
            .enqueue(new_message(&["l@x.test"], now.as_millis()))
            .await
            .unwrap();
        held = store
            .enqueue(new_message(&["h@x.test"], now.as_millis()))
            .await
            .unwrap();
        let mut m = new_message(&["s@x.test"], now.as_millis());
        // Within the window up to the lease horizon, and beyond it.
        m.not_before = Some(now.saturating_add(minutes(5)));
        soon = store.enqueue(m).await.unwrap();
        let mut m = new_message(&["f@x.test"], now.as_millis());
        m.not_before = Some(now.saturating_add(minutes(60)));
        later = store.enqueue(m).await.unwrap();
        let leases = store.lease_due(now, LEASE, 10).unwrap();
        assert_eq!(ids(&leases), vec![leased, held]);
        // Held while its attempt is in flight: it keeps the lease entry.
        assert!(store.hold(held).await.unwrap());
        store.flush().await.unwrap();
    }

    let store = open_retrying(dir.path(), Metrics::new()).await;
    let reopened = wall_now();
    assert_eq!(store.pending_count(), 4);
    let due = store.lease_due(reopened, LEASE, 10).unwrap();
    assert_eq!(
        ids(&due),
        vec![leased],
        "only the released lease is due now"
    );

    let soon_at = now.saturating_add(minutes(5));
    let soon_msg = store.message(soon).unwrap().unwrap();
    assert_eq!(
        soon_msg.next_attempt_at,
        Some(soon_at),
        "due time unchanged"
    );
    assert_eq!(soon_msg.state(reopened), MessageState::Scheduled);
    assert_eq!(store.leased_until(soon).unwrap(), None);
    assert_eq!(
        store.message(later).unwrap().unwrap().next_attempt_at,
        Some(now.saturating_add(minutes(60)))
    );

    // The held message lost its lease and gets no attempt until it is released.
    let held_msg = store.message(held).unwrap().unwrap();
    assert!(held_msg.held);
    assert_eq!(held_msg.state(reopened), MessageState::Held);
    assert_eq!(store.leased_until(held).unwrap(), None);

    // In time order: `soon`, the new lease of `leased`, `later`; never the held message.
    let far = now.saturating_add(minutes(120));
    let rest: Vec<MessageId> = ids(&store.lease_due(far, LEASE, 10).unwrap());
    assert_eq!(rest, vec![soon, leased, later]);
    assert!(store.release(held, far).await.unwrap());
    assert_eq!(ids(&store.lease_due(far, LEASE, 10).unwrap()), vec![held]);
}

/// More leases than one release batch (1024), spread over several lease expiries: all are
/// released, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_leases_are_released_in_batches() {
    const COUNT: usize = 1500;
    let dir = tempfile::tempdir().unwrap();
    let mut leased = Vec::with_capacity(COUNT);
    {
        let store = Store::open(dir.path(), Metrics::new()).unwrap();
        let now = wall_now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..COUNT {
            let store = store.clone();
            tasks.spawn(async move {
                store
                    .enqueue(new_message(&[&format!("r{i}@x.test")], now.as_millis()))
                    .await
            });
        }
        for id in tasks.join_all().await {
            id.unwrap();
        }
        // Two lease calls a millisecond apart (one call claims at most 1024).
        for at in [now, now.saturating_add(Duration::from_millis(1))] {
            leased.extend(ids(&store.lease_due(at, LEASE, COUNT).unwrap()));
        }
        assert_eq!(leased.len(), COUNT);
        store.flush().await.unwrap();
    }

    let store = open_retrying(dir.path(), Metrics::new()).await;
    let reopened = wall_now();
    let mut due = Vec::with_capacity(COUNT);
    loop {
        let batch = ids(&store.lease_due(reopened, LEASE, COUNT).unwrap());
        if batch.is_empty() {
            break;
        }
        due.extend(batch);
    }
    due.sort();
    leased.sort();
    assert_eq!(due, leased, "every lease released exactly once");
    assert_eq!(store.pending_count(), COUNT as u64);
}
