//! Delivery-path behaviour of the store: enqueue, lease, record, durability and restarts.

mod common;

use std::time::Duration;

use common::*;
use postrider_core::{MessageId, MessageState, RecipientState, Source};
use postrider_metrics::Metrics;
use postrider_store::{ListFilter, RecordOutcome, Store, StoreError};

#[tokio::test]
async fn enqueue_lease_deliver_round_trip() {
    let metrics = Metrics::new();
    let store = Store::temporary(metrics.clone()).unwrap();
    let msg = new_message(&["a@x.test", "b@y.test"], T0);
    let body = msg.body.clone();
    let id = store.enqueue(msg).await.unwrap();
    assert_ne!(id.as_u64(), 0);

    let stored = store.message(id).unwrap().unwrap();
    assert_eq!(stored.id, id);
    assert_eq!(stored.recipients.len(), 2);
    assert_eq!(stored.next_attempt_at, Some(ts(T0)));
    assert_eq!(store.body(id).unwrap(), Some(body));
    assert_eq!(store.pending_count(), 1);
    assert_eq!(metrics.queue_messages.get(), 1);
    assert_eq!(store.next_due_at().unwrap(), Some(ts(T0)));

    let leases = store.lease_due(ts(T0 + 5), LEASE, 10).unwrap();
    assert_eq!(ids(&leases), vec![id]);
    let lease = &leases[0];
    assert_eq!(lease.leased_until, ts(T0 + 5 + 600_000));
    assert_eq!(store.next_due_at().unwrap(), Some(lease.leased_until));
    assert_eq!(store.leased_until(id).unwrap(), Some(lease.leased_until));
    assert!(
        store.lease_due(ts(T0 + 10), LEASE, 10).unwrap().is_empty(),
        "leased message is not due again"
    );

    let outcome = store
        .record_attempt(lease, delivered(&lease.message, T0 + 100))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RecordOutcome::Recorded {
            notification_ids: vec![]
        }
    );
    let done = store.message(id).unwrap().unwrap();
    assert_eq!(done.state(ts(T0 + 200)), MessageState::Delivered);
    assert_eq!(done.finished_at, Some(ts(T0 + 100)));
    assert_eq!(done.next_attempt_at, None);
    assert_eq!(done.attempts, 1);
    assert_eq!(store.body(id).unwrap(), None, "body removed once finished");
    assert_eq!(store.pending_count(), 0);
    assert_eq!(metrics.queue_messages.get(), 0);
    assert_eq!(store.next_due_at().unwrap(), None);
    assert_eq!(store.leased_until(id).unwrap(), None);
}

#[tokio::test]
async fn defer_then_finish() {
    let store = temp_store();
    let id = store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
    let lease = store.lease_due(ts(T0), LEASE, 10).unwrap().remove(0);
    let r = store
        .record_attempt(&lease, deferred(&lease.message, T0 + 10, T0 + 60_000))
        .await
        .unwrap();
    assert!(matches!(r, RecordOutcome::Recorded { .. }));
    let m = store.message(id).unwrap().unwrap();
    assert_eq!(m.state(ts(T0 + 20)), MessageState::Deferred);
    assert_eq!(m.next_attempt_at, Some(ts(T0 + 60_000)));
    assert_eq!(store.next_due_at().unwrap(), Some(ts(T0 + 60_000)));
    assert!(store.body(id).unwrap().is_some());
    assert_eq!(store.pending_count(), 1);

    assert!(
        store
            .lease_due(ts(T0 + 59_999), LEASE, 10)
            .unwrap()
            .is_empty()
    );
    let lease2 = store
        .lease_due(ts(T0 + 60_000), LEASE, 10)
        .unwrap()
        .remove(0);
    assert_eq!(lease2.message.attempts, 1);
    assert_eq!(lease2.message.recipients[0].state, RecipientState::Deferred);
    let r = store
        .record_attempt(&lease2, delivered(&lease2.message, T0 + 60_100))
        .await
        .unwrap();
    assert!(matches!(r, RecordOutcome::Recorded { .. }));
    assert_eq!(store.message(id).unwrap().unwrap().attempts, 2);
    assert_eq!(store.pending_count(), 0);
}

#[tokio::test]
async fn due_entries_come_oldest_first_and_respect_limit() {
    let store = temp_store();
    let mut expected = Vec::new();
    // Enqueue out of time order; not_before decides the due time.
    for (i, due) in [T0 + 300, T0 + 100, T0 + 200, T0 + 100, T0 + 70_000]
        .iter()
        .enumerate()
    {
        let mut m = new_message(&[&format!("r{i}@x.test")], T0);
        m.not_before = Some(ts(*due));
        let id = store.enqueue(m).await.unwrap();
        expected.push((*due, id));
    }
    expected.sort();
    let due_now: Vec<MessageId> = expected
        .iter()
        .filter(|(t, _)| *t <= T0 + 1000)
        .map(|(_, id)| *id)
        .collect();
    assert_eq!(due_now.len(), 4);
    assert_eq!(store.next_due_at().unwrap(), Some(ts(T0 + 100)));

    let first = store.lease_due(ts(T0 + 1000), LEASE, 3).unwrap();
    assert_eq!(ids(&first), due_now[..3].to_vec());
    let rest = store.lease_due(ts(T0 + 1000), LEASE, 3).unwrap();
    assert_eq!(
        ids(&rest),
        due_now[3..].to_vec(),
        "the not-yet-due message stays"
    );
    assert_eq!(store.pending_count(), 5);
}

#[tokio::test]
async fn expired_lease_redelivers_and_old_lease_is_lost() {
    let store = temp_store();
    let id = store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
    let old = store.lease_due(ts(T0), LEASE, 10).unwrap().remove(0);
    assert!(
        store
            .lease_due(ts(T0 + 599_999), LEASE, 10)
            .unwrap()
            .is_empty()
    );
    let new = store
        .lease_due(ts(T0 + 600_000), LEASE, 10)
        .unwrap()
        .remove(0);
    assert_eq!(new.message.id, id);
    assert!(new.leased_until > old.leased_until);

    let before = store.message(id).unwrap();
    let r = store
        .record_attempt(&old, delivered(&old.message, T0 + 700_000))
        .await
        .unwrap();
    assert_eq!(r, RecordOutcome::LeaseLost);
    assert_eq!(
        store.message(id).unwrap(),
        before,
        "nothing written for a lost lease"
    );
    assert!(store.body(id).unwrap().is_some());

    let r = store
        .record_attempt(&new, delivered(&new.message, T0 + 700_000))
        .await
        .unwrap();
    assert!(matches!(r, RecordOutcome::Recorded { .. }));
    assert_eq!(store.pending_count(), 0);
}

#[tokio::test]
async fn zero_length_lease_never_reuses_the_claimed_key() {
    let store = temp_store();
    store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
    let first = store
        .lease_due(ts(T0), Duration::ZERO, 10)
        .unwrap()
        .remove(0);
    assert_eq!(first.leased_until, ts(T0 + 1));
    assert!(
        store
            .lease_due(ts(T0), Duration::ZERO, 10)
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn lease_lost_after_delete() {
    let store = temp_store();
    let id = store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
    let lease = store.lease_due(ts(T0), LEASE, 10).unwrap().remove(0);
    store.delete(id).await.unwrap();
    let r = store
        .record_attempt(&lease, bounced_with_dsn(&lease.message, T0 + 5))
        .await
        .unwrap();
    assert_eq!(r, RecordOutcome::LeaseLost);
    assert_eq!(store.message(id).unwrap(), None);
    assert_eq!(store.pending_count(), 0);
    let all = store
        .list(
            &ListFilter {
                include_finished: true,
                ..ListFilter::default()
            },
            ts(T0),
        )
        .unwrap();
    assert!(
        all.messages.is_empty(),
        "no bounce was enqueued for a lost lease"
    );
}

#[tokio::test]
async fn bounce_is_enqueued_with_the_final_state() {
    let metrics = Metrics::new();
    let store = Store::temporary(metrics.clone()).unwrap();
    let id = store
        .enqueue(new_message(&["nobody@x.test"], T0))
        .await
        .unwrap();
    let lease = store.lease_due(ts(T0), LEASE, 10).unwrap().remove(0);
    let RecordOutcome::Recorded { notification_ids } = store
        .record_attempt(&lease, bounced_with_dsn(&lease.message, T0 + 50))
        .await
        .unwrap()
    else {
        panic!("lease should be held");
    };
    assert_eq!(notification_ids.len(), 1);
    let dsn_id = notification_ids[0];
    assert!(dsn_id > id);
    assert_eq!(
        store.message(id).unwrap().unwrap().state(ts(T0 + 60)),
        MessageState::Bounced
    );
    let dsn = store.message(dsn_id).unwrap().unwrap();
    assert_eq!(dsn.source, Source::Dsn);
    assert!(dsn.sender.is_null());
    assert_eq!(
        dsn.recipients[0].request.address.to_string(),
        "sender@example.com"
    );
    assert!(
        store
            .body(dsn_id)
            .unwrap()
            .unwrap()
            .starts_with(b"Subject: bounce of")
    );
    assert_eq!(
        store.pending_count(),
        1,
        "original finished, bounce pending"
    );
    assert_eq!(metrics.queue_messages.get(), 1);
    let next = store.lease_due(ts(T0 + 60), LEASE, 10).unwrap();
    assert_eq!(ids(&next), vec![dsn_id]);
}

#[tokio::test]
async fn wait_for_work_wakes_on_enqueue() {
    let store = temp_store();
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.wait_for_work().await })
    };
    store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken")
        .unwrap();
    // A wake-up with nobody waiting is kept for the next wait.
    store.enqueue(new_message(&["b@x.test"], T0)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), store.wait_for_work())
        .await
        .expect("stored wake-up");
}

#[tokio::test]
async fn restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, leased_until);
    {
        let store = Store::open(dir.path(), Metrics::new()).unwrap();
        a = store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
        b = store
            .enqueue(new_message(&["b@y.test"], T0 + 1))
            .await
            .unwrap();
        c = store
            .enqueue(new_message(&["c@z.test"], T0 + 2))
            .await
            .unwrap();
        let leases = store.lease_due(ts(T0 + 10), LEASE, 10).unwrap();
        assert_eq!(ids(&leases), vec![a, b, c]);
        let r = store
            .record_attempt(&leases[0], delivered(&leases[0].message, T0 + 20))
            .await
            .unwrap();
        assert!(matches!(r, RecordOutcome::Recorded { .. }));
        let r = store
            .record_attempt(
                &leases[1],
                deferred(&leases[1].message, T0 + 20, T0 + 60_000),
            )
            .await
            .unwrap();
        assert!(matches!(r, RecordOutcome::Recorded { .. }));
        leased_until = leases[2].leased_until;
        // `c` stays leased: the process "dies" mid-attempt.
        store.flush().await.unwrap();
    }
    let metrics = Metrics::new();
    let store = open_retrying(dir.path(), metrics.clone()).await;
    assert_eq!(store.pending_count(), 2);
    assert_eq!(metrics.queue_messages.get(), 2);
    assert_eq!(
        store.message(a).unwrap().unwrap().state(ts(T0 + 30)),
        MessageState::Delivered
    );
    assert_eq!(store.body(a).unwrap(), None);
    assert_eq!(
        store.message(b).unwrap().unwrap().next_attempt_at,
        Some(ts(T0 + 60_000))
    );
    assert!(
        store
            .body(b)
            .unwrap()
            .unwrap()
            .starts_with(b"Subject: test")
    );
    assert_eq!(store.next_due_at().unwrap(), Some(ts(T0 + 60_000)));
    let due = store.lease_due(ts(T0 + 60_000), LEASE, 10).unwrap();
    assert_eq!(ids(&due), vec![b]);
    let due = store.lease_due(leased_until, LEASE, 10).unwrap();
    assert_eq!(
        ids(&due),
        vec![c],
        "the in-flight message comes back when its lease expires"
    );
    let d = store.enqueue(new_message(&["d@x.test"], T0)).await.unwrap();
    assert!(d > c, "ids keep increasing across restarts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_survives_200_concurrent_enqueuers() {
    let metrics = Metrics::new();
    let store = Store::temporary(metrics.clone()).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u64 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .enqueue(new_message(&[&format!("r{i}@x.test")], T0 + i))
                .await
        });
    }
    let all = tokio::time::timeout(Duration::from_secs(120), tasks.join_all())
        .await
        .expect("group commit must not deadlock");
    let mut ids: Vec<MessageId> = all.into_iter().map(Result::unwrap).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200);
    assert_eq!(store.pending_count(), 200);
    let flushes = metrics.store_flush_batch.get_sample_count();
    let made_durable = metrics.store_flush_batch.get_sample_sum();
    assert_eq!(
        made_durable, 200.0,
        "every enqueue waited for exactly one flush"
    );
    assert!(
        flushes < 200,
        "flushes were shared: {flushes} flushes for 200 enqueues"
    );
    assert_eq!(metrics.store_flush_duration.get_sample_count(), flushes);
}

#[tokio::test]
async fn injected_write_failure_writes_nothing() {
    let metrics = Metrics::new();
    let store = Store::temporary(metrics.clone()).unwrap();
    let id = store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
    store.set_fail_writes(true);
    let err = store
        .enqueue(new_message(&["b@x.test"], T0))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Injected), "{err}");
    assert!(err.is_storage_failure());
    assert!(matches!(
        store.lease_due(ts(T0), LEASE, 10),
        Err(StoreError::Injected)
    ));
    assert!(matches!(store.hold(id).await, Err(StoreError::Injected)));
    assert!(matches!(store.flush().await, Err(StoreError::Injected)));
    // Reads keep working.
    assert_eq!(store.pending_count(), 1);
    assert_eq!(metrics.queue_messages.get(), 1);
    let page = store
        .list(
            &ListFilter {
                include_finished: true,
                ..ListFilter::default()
            },
            ts(T0),
        )
        .unwrap();
    assert_eq!(
        page.messages.len(),
        1,
        "the failed enqueue left nothing behind"
    );
    assert_eq!(store.next_due_at().unwrap(), Some(ts(T0)));

    store.set_fail_writes(false);
    let lease = store.lease_due(ts(T0), LEASE, 10).unwrap().remove(0);
    store.set_fail_writes(true);
    let before = store.message(id).unwrap();
    assert!(matches!(
        store
            .record_attempt(&lease, bounced_with_dsn(&lease.message, T0 + 1))
            .await,
        Err(StoreError::Injected)
    ));
    assert_eq!(store.message(id).unwrap(), before);
    assert_eq!(
        store
            .list(
                &ListFilter {
                    include_finished: true,
                    ..ListFilter::default()
                },
                ts(T0)
            )
            .unwrap()
            .messages
            .len(),
        1
    );
    store.set_fail_writes(false);
    let r = store
        .record_attempt(&lease, bounced_with_dsn(&lease.message, T0 + 1))
        .await
        .unwrap();
    assert!(
        matches!(r, RecordOutcome::Recorded { ref notification_ids } if notification_ids.len() == 1)
    );
}

#[test]
fn store_works_across_runtimes() {
    // Opened outside any runtime; the committer does not belong to the first runtime used.
    let store = temp_store();
    let first = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let a = first
        .block_on(store.enqueue(new_message(&["a@x.test"], T0)))
        .unwrap();
    drop(first);
    let second = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let b = second
        .block_on(store.enqueue(new_message(&["b@x.test"], T0)))
        .unwrap();
    assert!(b > a);
    assert_eq!(store.pending_count(), 2);
}

/// A recorded outcome does not wait for its flush, but gets one by itself soon after, even
/// when no other write comes along.
#[tokio::test]
async fn recorded_outcome_is_flushed_without_a_waiter() {
    let metrics = Metrics::new();
    let store = Store::temporary(metrics.clone()).unwrap();
    store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
    let lease = store.lease_due(ts(T0), LEASE, 10).unwrap().remove(0);
    let flushes_before = metrics.store_flush_batch.get_sample_count();
    let writes_before = metrics.store_flush_batch.get_sample_sum();
    let outcome = store
        .record_attempt(&lease, delivered(&lease.message, T0 + 1))
        .await
        .unwrap();
    assert!(matches!(outcome, RecordOutcome::Recorded { .. }));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metrics.store_flush_batch.get_sample_count() == flushes_before {
        assert!(
            std::time::Instant::now() < deadline,
            "the outcome was never flushed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        metrics.store_flush_batch.get_sample_sum() - writes_before,
        1.0,
        "one write made durable by the flush"
    );
}

/// Many due messages are claimed together, each exactly once, and a later call finds only
/// what is left.
#[tokio::test]
async fn batch_lease_claims_each_due_message_once() {
    let store = temp_store();
    let mut queued = Vec::new();
    for i in 0..300 {
        queued.push(
            store
                .enqueue(new_message(&[&format!("u{i}@x.test")], T0 + i))
                .await
                .unwrap(),
        );
    }
    let first = store.lease_due(ts(T0 + 1000), LEASE, 256).unwrap();
    assert_eq!(ids(&first), queued[..256].to_vec());
    for l in &first {
        assert_eq!(
            store.leased_until(l.message.id).unwrap(),
            Some(l.leased_until)
        );
    }
    let rest = store.lease_due(ts(T0 + 1000), LEASE, 256).unwrap();
    assert_eq!(ids(&rest), queued[256..].to_vec());
    assert!(
        store
            .lease_due(ts(T0 + 1000), LEASE, 256)
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.pending_count(), 300);
}
