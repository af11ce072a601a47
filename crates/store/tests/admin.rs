//! Operator operations: hold, release, retry, delete, bounce now, list, stats, purge.

mod common;

use std::time::Duration;

use common::*;
use postrider_core::{Domain, MessageId, MessageState};
use postrider_metrics::Metrics;
use postrider_store::{
    BulkAction, BulkOutcome, ListFilter, PendingSummary, RecordOutcome, Store, StoreError,
};

#[tokio::test]
async fn hold_and_release() {
    let store = temp_store();
    let id = store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
    assert!(store.hold(id).await.unwrap());
    assert!(
        !store.hold(id).await.unwrap(),
        "second hold changes nothing"
    );
    let m = store.message(id).unwrap().unwrap();
    assert!(m.held);
    assert_eq!(m.state(ts(T0)), MessageState::Held);
    assert_eq!(m.next_attempt_at, None);
    assert_eq!(store.pending_count(), 1, "held messages are pending");
    assert!(
        store
            .lease_due(ts(T0 + 10_000_000), LEASE, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.next_due_at().unwrap(), None);
    assert!(matches!(
        store.retry_now(id, ts(T0)).await,
        Err(StoreError::InvalidState { state: "held", .. })
    ));

    // Consume the wake-up stored by the enqueue; the release must store a new one.
    tokio::time::timeout(Duration::from_secs(10), store.wait_for_work())
        .await
        .expect("enqueue wake-up");
    assert!(store.release(id, ts(T0 + 500)).await.unwrap());
    tokio::time::timeout(Duration::from_secs(10), store.wait_for_work())
        .await
        .expect("release wakes the scheduler");
    assert!(!store.release(id, ts(T0 + 500)).await.unwrap());
    assert_eq!(store.next_due_at().unwrap(), Some(ts(T0 + 500)));
    let lease = store.lease_due(ts(T0 + 500), LEASE, 10).unwrap();
    assert_eq!(ids(&lease), vec![id]);
    assert!(!lease[0].message.held);
}

#[tokio::test]
async fn hold_during_an_attempt_keeps_the_result_and_the_hold() {
    let store = temp_store();
    let id = store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
    let lease = store.lease_due(ts(T0), LEASE, 10).unwrap().remove(0);
    assert!(store.hold(id).await.unwrap());
    let r = store
        .record_attempt(&lease, deferred(&lease.message, T0 + 10, T0 + 60_000))
        .await
        .unwrap();
    assert!(matches!(r, RecordOutcome::Recorded { .. }));
    let m = store.message(id).unwrap().unwrap();
    assert!(m.held);
    assert_eq!(m.attempts, 1);
    assert_eq!(
        store.next_due_at().unwrap(),
        None,
        "held: no schedule entry"
    );
    assert_eq!(store.pending_count(), 1);
    assert!(store.release(id, ts(T0 + 20)).await.unwrap());
    assert_eq!(
        ids(&store.lease_due(ts(T0 + 20), LEASE, 10).unwrap()),
        vec![id]
    );
}

#[tokio::test]
async fn held_message_whose_lease_expires_is_not_leased() {
    let store = temp_store();
    let id = store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
    let lease = store.lease_due(ts(T0), LEASE, 10).unwrap().remove(0);
    store.hold(id).await.unwrap();
    assert!(
        store
            .lease_due(lease.leased_until, LEASE, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.next_due_at().unwrap(), None);
    assert_eq!(
        store
            .record_attempt(&lease, delivered(&lease.message, T0))
            .await
            .unwrap(),
        RecordOutcome::LeaseLost
    );
    assert_eq!(store.pending_count(), 1);
    assert!(store.release(id, ts(T0 + 700_000)).await.unwrap());
    assert_eq!(
        ids(&store.lease_due(ts(T0 + 700_000), LEASE, 10).unwrap()),
        vec![id]
    );
}

#[tokio::test]
async fn retry_now_and_retry_all_move_deferred_messages_never_scheduled_ones() {
    let store = temp_store();
    let hour = 3_600_000;
    // Three messages deferred for an hour after their first attempt.
    let mut deferred_ids = Vec::new();
    for rcpt in ["a@x.test", "b@y.test", "c@y.test"] {
        deferred_ids.push(store.enqueue(new_message(&[rcpt], T0)).await.unwrap());
    }
    for lease in store.lease_due(ts(T0), LEASE, 10).unwrap() {
        let _ = store
            .record_attempt(&lease, deferred(&lease.message, T0, T0 + hour))
            .await
            .unwrap();
    }
    let [a, b, c] = deferred_ids[..] else {
        unreachable!()
    };
    // One scheduled (send_at) an hour ahead, never attempted.
    let mut later = new_message(&["d@y.test"], T0);
    later.not_before = Some(ts(T0 + hour));
    let d = store.enqueue(later).await.unwrap();
    let now = ts(T0 + 1000);
    assert!(store.lease_due(now, LEASE, 10).unwrap().is_empty());

    assert!(store.retry_now(a, now).await.unwrap());
    assert!(!store.retry_now(a, now).await.unwrap(), "already due");
    assert_eq!(
        store.message(a).unwrap().unwrap().next_attempt_at,
        Some(now)
    );
    let leased = store.lease_due(now, LEASE, 10).unwrap();
    assert_eq!(ids(&leased), vec![a]);
    assert!(!store.retry_now(a, now).await.unwrap(), "in flight");

    let y = Domain::parse("y.test").unwrap();
    let z = Domain::parse("z.test").unwrap();
    assert_eq!(store.retry_all(Some(&z), now).await.unwrap().moved, 0);
    let outcome = store.retry_all(Some(&y), now).await.unwrap();
    assert_eq!((outcome.moved, outcome.scheduled_left), (2, 1));
    assert_eq!(ids(&store.lease_due(now, LEASE, 10).unwrap()), vec![b, c]);
    let outcome = store.retry_all(None, now).await.unwrap();
    assert_eq!(
        (outcome.moved, outcome.scheduled_left),
        (0, 1),
        "the rest is in flight or scheduled"
    );

    // A scheduled message keeps its time, also when retried by id.
    assert!(matches!(
        store.retry_now(d, now).await,
        Err(StoreError::InvalidState {
            state: "scheduled",
            ..
        })
    ));
    assert_eq!(
        store.message(d).unwrap().unwrap().next_attempt_at,
        Some(ts(T0 + hour))
    );
    assert!(store.lease_due(now, LEASE, 10).unwrap().is_empty());

    assert!(matches!(
        store.retry_now(MessageId::from_u64(999_999), now).await,
        Err(StoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn delete_removes_everything() {
    let metrics = Metrics::new();
    let store = Store::temporary(metrics.clone()).unwrap();
    let a = store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
    let b = store.enqueue(new_message(&["b@x.test"], T0)).await.unwrap();
    store.hold(b).await.unwrap();
    store.delete(a).await.unwrap();
    store.delete(b).await.unwrap();
    for id in [a, b] {
        assert_eq!(store.message(id).unwrap(), None);
        assert_eq!(store.body(id).unwrap(), None);
        assert!(matches!(store.delete(id).await, Err(StoreError::NotFound(x)) if x == id));
        assert!(matches!(store.hold(id).await, Err(StoreError::NotFound(_))));
    }
    assert_eq!(store.pending_count(), 0);
    assert_eq!(metrics.queue_messages.get(), 0);
    assert_eq!(store.next_due_at().unwrap(), None);
    assert!(
        store
            .lease_due(ts(T0 + 10_000_000), LEASE, 10)
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn bounce_now_applies_wherever_the_message_is() {
    let store = temp_store();
    let held = store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
    let leased = store.enqueue(new_message(&["b@x.test"], T0)).await.unwrap();
    store.hold(held).await.unwrap();
    let lease = store.lease_due(ts(T0), LEASE, 10).unwrap().remove(0);
    assert_eq!(lease.message.id, leased);

    let dsns = store
        .complete_without_lease(held, |m| bounced_with_dsn(m, T0 + 5))
        .await
        .unwrap();
    assert_eq!(dsns.len(), 1);
    let m = store.message(held).unwrap().unwrap();
    assert_eq!(m.state(ts(T0 + 5)), MessageState::Bounced);
    assert!(!m.held);
    assert_eq!(store.body(held).unwrap(), None);

    let dsns2 = store
        .complete_without_lease(leased, |m| bounced_with_dsn(m, T0 + 6))
        .await
        .unwrap();
    assert_eq!(dsns2.len(), 1);
    assert_eq!(
        store
            .record_attempt(&lease, delivered(&lease.message, T0 + 7))
            .await
            .unwrap(),
        RecordOutcome::LeaseLost
    );
    assert_eq!(
        store.message(leased).unwrap().unwrap().state(ts(T0 + 8)),
        MessageState::Bounced
    );

    assert_eq!(store.pending_count(), 2, "only the two bounces are pending");
    assert_eq!(
        ids(&store.lease_due(ts(T0 + 10), LEASE, 10).unwrap()),
        vec![dsns[0], dsns2[0]]
    );
    assert!(matches!(
        store
            .complete_without_lease(held, |m| delivered(m, T0))
            .await,
        Err(StoreError::InvalidState {
            state: "bounced",
            operation: "complete",
            ..
        })
    ));
}

#[tokio::test]
async fn list_filters_and_pages() {
    let store = temp_store();
    let mut all = Vec::new();
    for i in 0..7 {
        let domain = if i % 2 == 0 { "even.test" } else { "odd.test" };
        all.push(
            store
                .enqueue(new_message(&[&format!("r{i}@{domain}")], T0))
                .await
                .unwrap(),
        );
    }
    // Finish the first one, hold the second.
    let lease = store.lease_due(ts(T0), LEASE, 1).unwrap().remove(0);
    let _ = store
        .record_attempt(&lease, delivered(&lease.message, T0 + 1))
        .await
        .unwrap();
    store.hold(all[1]).await.unwrap();
    let now = ts(T0 + 2);

    let mut seen = Vec::new();
    let mut filter = ListFilter {
        limit: 2,
        ..ListFilter::default()
    };
    loop {
        let page = store.list(&filter, now).unwrap();
        assert!(page.messages.len() <= 2);
        seen.extend(page.messages.iter().map(|m| m.id));
        match page.next_after {
            Some(after) => filter.after = Some(after),
            None => break,
        }
    }
    assert_eq!(
        seen,
        all[1..].to_vec(),
        "pending only, in id order, every page"
    );

    let with_finished = store
        .list(
            &ListFilter {
                include_finished: true,
                limit: 100,
                ..ListFilter::default()
            },
            now,
        )
        .unwrap();
    assert_eq!(with_finished.messages.len(), 7);
    assert_eq!(with_finished.next_after, None);
    let held = store
        .list(
            &ListFilter {
                state: Some(MessageState::Held),
                ..ListFilter::default()
            },
            now,
        )
        .unwrap();
    assert_eq!(
        held.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![all[1]]
    );
    let delivered = store
        .list(
            &ListFilter {
                state: Some(MessageState::Delivered),
                ..ListFilter::default()
            },
            now,
        )
        .unwrap();
    assert_eq!(
        delivered.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![all[0]]
    );
    let odd = store
        .list(
            &ListFilter {
                recipient_domain: Some(Domain::parse("odd.test").unwrap()),
                ..ListFilter::default()
            },
            now,
        )
        .unwrap();
    assert_eq!(
        odd.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![all[1], all[3], all[5]]
    );
}

#[tokio::test]
async fn stats_count_states_and_domains() {
    let store = temp_store();
    let a = store
        .enqueue(new_message(
            &["a@big.test", "b@big.test", "c@small.test"],
            T0,
        ))
        .await
        .unwrap();
    store
        .enqueue(new_message(&["d@big.test"], T0))
        .await
        .unwrap();
    let mut later = new_message(&["e@small.test"], T0);
    later.not_before = Some(ts(T0 + 1_000_000));
    store.enqueue(later).await.unwrap();
    let done = store
        .enqueue(new_message(&["f@gone.test"], T0))
        .await
        .unwrap();
    let leases = store.lease_due(ts(T0), LEASE, 10).unwrap();
    let lease = leases.iter().find(|l| l.message.id == done).unwrap();
    let _ = store
        .record_attempt(lease, delivered(&lease.message, T0 + 1))
        .await
        .unwrap();
    store.hold(a).await.unwrap();

    let stats = store.stats(ts(T0 + 2), 10).unwrap();
    let count = |s: MessageState| count_in(&stats.by_state, s).unwrap();
    assert_eq!(count(MessageState::Held), 1);
    assert_eq!(count(MessageState::Queued), 1);
    assert_eq!(count(MessageState::Scheduled), 1);
    assert_eq!(count(MessageState::Delivered), 1);
    assert_eq!(count(MessageState::Bounced), 0);
    assert_eq!(stats.by_state.len(), 7);
    assert_eq!(stats.pending, 3);
    assert_eq!(stats.corrupt, 0);
    let big = Domain::parse("big.test").unwrap();
    let small = Domain::parse("small.test").unwrap();
    assert_eq!(stats.top_domains, vec![(big.clone(), 2), (small, 2)]);
    assert_eq!(
        store.stats(ts(T0 + 2), 1).unwrap().top_domains,
        vec![(big, 2)]
    );
}

#[tokio::test]
async fn pending_summary_counts_what_stats_counts_without_finished_messages() {
    let store = temp_store();
    // Oldest: held while its lease runs (a schedule entry and a held entry, counted once).
    let held = store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
    let queued = store
        .enqueue(new_message(&["b@x.test"], T0 + 1))
        .await
        .unwrap();
    let mut later = new_message(&["c@x.test"], T0 + 2);
    later.not_before = Some(ts(T0 + 1_000_000));
    store.enqueue(later).await.unwrap();
    let retried = store
        .enqueue(new_message(&["d@x.test"], T0 + 3))
        .await
        .unwrap();
    let done = store
        .enqueue(new_message(&["e@x.test"], T0 + 4))
        .await
        .unwrap();
    let leases = store.lease_due(ts(T0 + 10), LEASE, 10).unwrap();
    let lease_of = |id| leases.iter().find(|l| l.message.id == id).unwrap();
    store.hold(held).await.unwrap();
    let r = lease_of(retried);
    let outcome = store
        .record_attempt(r, deferred(&r.message, T0 + 11, T0 + 60_000))
        .await
        .unwrap();
    assert!(matches!(outcome, RecordOutcome::Recorded { .. }));
    let d = lease_of(done);
    let outcome = store
        .record_attempt(d, delivered(&d.message, T0 + 11))
        .await
        .unwrap();
    assert!(matches!(outcome, RecordOutcome::Recorded { .. }));
    // `queued` stays leased: still pending, counted as queued (no attempt recorded yet).
    assert!(leases.iter().any(|l| l.message.id == queued));

    let now = ts(T0 + 20);
    let summary = store.pending_summary(now, 100).unwrap();
    let stats = store.stats(now, 0).unwrap();
    let pending_in_stats: Vec<_> = stats
        .by_state
        .iter()
        .copied()
        .filter(|(s, _)| s.is_pending())
        .collect();
    let mut by_state = summary.by_state.clone().unwrap();
    by_state.sort_by_key(|(s, _)| *s as u8);
    let mut expected = pending_in_stats.clone();
    expected.sort_by_key(|(s, _)| *s as u8);
    assert_eq!(by_state, expected);
    let count = |s: MessageState| count_in(summary.by_state.as_deref().unwrap(), s).unwrap();
    assert_eq!(count(MessageState::Held), 1);
    assert_eq!(count(MessageState::Queued), 1);
    assert_eq!(count(MessageState::Scheduled), 1);
    assert_eq!(count(MessageState::Deferred), 1);
    assert_eq!(summary.oldest_received_at, Some(ts(T0)));

    // Over the limit: no breakdown, the oldest still found.
    let brief = store.pending_summary(now, 3).unwrap();
    assert_eq!(brief.by_state, None);
    assert_eq!(brief.oldest_received_at, Some(ts(T0)));

    // Once the held message is gone, the next oldest pending one is reported.
    store.delete(held).await.unwrap();
    let summary = store.pending_summary(now, 100).unwrap();
    assert_eq!(summary.oldest_received_at, Some(ts(T0 + 1)));
    assert_eq!(count_of(&summary, MessageState::Held), 0);
    assert_eq!(
        store.pending_summary(now, 0).unwrap().oldest_received_at,
        Some(ts(T0 + 1))
    );
}

#[tokio::test]
async fn pending_summary_of_an_empty_or_drained_queue() {
    let store = temp_store();
    assert_eq!(
        store.pending_summary(ts(T0), 100).unwrap(),
        PendingSummary {
            by_state: Some(vec![
                (MessageState::Queued, 0),
                (MessageState::Scheduled, 0),
                (MessageState::Deferred, 0),
                (MessageState::Held, 0),
            ]),
            oldest_received_at: None,
        }
    );
    let id = store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
    let lease = store.lease_due(ts(T0), LEASE, 10).unwrap().remove(0);
    assert_eq!(lease.message.id, id);
    let outcome = store
        .record_attempt(&lease, delivered(&lease.message, T0 + 1))
        .await
        .unwrap();
    assert!(matches!(outcome, RecordOutcome::Recorded { .. }));
    let summary = store.pending_summary(ts(T0 + 2), 100).unwrap();
    assert_eq!(summary.oldest_received_at, None);
    assert!(summary.by_state.unwrap().iter().all(|(_, n)| *n == 0));
    assert_eq!(
        store
            .pending_summary(ts(T0 + 2), 0)
            .unwrap()
            .oldest_received_at,
        None
    );
}

/// The count for `state` in a by-state list; `None` when the list has no entry for it.
fn count_in(by_state: &[(MessageState, u64)], state: MessageState) -> Option<u64> {
    by_state.iter().find(|(s, _)| *s == state).map(|(_, n)| *n)
}

fn count_of(summary: &PendingSummary, state: MessageState) -> u64 {
    summary
        .by_state
        .as_deref()
        .and_then(|v| count_in(v, state))
        .unwrap_or(0)
}

#[tokio::test]
async fn purge_drops_only_old_finished_messages() {
    let store = temp_store();
    let mut finished = Vec::new();
    for (i, at) in [T0 + 10, T0 + 20].iter().enumerate() {
        let id = store
            .enqueue(new_message(&[&format!("r{i}@x.test")], T0))
            .await
            .unwrap();
        let lease = store.lease_due(ts(T0), LEASE, 1).unwrap().remove(0);
        assert_eq!(lease.message.id, id);
        let _ = store
            .record_attempt(&lease, delivered(&lease.message, *at))
            .await
            .unwrap();
        finished.push(id);
    }
    let pending = store.enqueue(new_message(&["p@x.test"], T0)).await.unwrap();
    assert_eq!(
        store.purge_finished(ts(T0 + 10)).unwrap(),
        0,
        "cut-off is exclusive"
    );
    assert_eq!(store.purge_finished(ts(T0 + 15)).unwrap(), 1);
    assert_eq!(store.message(finished[0]).unwrap(), None);
    assert!(store.message(finished[1]).unwrap().is_some());
    assert_eq!(store.purge_finished(ts(T0 + 1_000_000)).unwrap(), 1);
    assert_eq!(store.message(finished[1]).unwrap(), None);
    assert!(
        store.message(pending).unwrap().is_some(),
        "pending messages are never purged"
    );
    assert_eq!(store.pending_count(), 1);
}

#[tokio::test]
async fn pending_count_survives_reopen_with_held_and_leased_messages() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), Metrics::new()).unwrap();
        let a = store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
        let b = store.enqueue(new_message(&["b@x.test"], T0)).await.unwrap();
        let c = store.enqueue(new_message(&["c@x.test"], T0)).await.unwrap();
        store
            .enqueue(new_message(&["d@x.test"], T0 + 5))
            .await
            .unwrap();
        let leases = store.lease_due(ts(T0), LEASE, 10).unwrap();
        assert_eq!(ids(&leases), vec![a, b, c]);
        store.hold(a).await.unwrap(); // held while leased: keeps its lease entry
        store.release(b, ts(T0)).await.unwrap(); // not held: no-op
        let _ = store
            .record_attempt(&leases[2], delivered(&leases[2].message, T0 + 1))
            .await
            .unwrap();
        let e = store.enqueue(new_message(&["e@x.test"], T0)).await.unwrap();
        store.hold(e).await.unwrap(); // held, no entry
        assert_eq!(store.pending_count(), 4);
    }
    let store = open_retrying(dir.path(), Metrics::new()).await;
    assert_eq!(store.pending_count(), 4);
}

#[tokio::test]
async fn bulk_actions_page_by_filter_and_keep_scheduled_messages() {
    let store = temp_store();
    let hour = 3_600_000;
    let old = store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
    let young = store
        .enqueue(new_message(&["b@x.test"], T0 + hour))
        .await
        .unwrap();
    let other = store
        .enqueue(new_message(&["c@y.test"], T0 + hour))
        .await
        .unwrap();
    let mut later = new_message(&["d@x.test"], T0 + hour);
    later.not_before = Some(ts(T0 + 5 * hour));
    let scheduled = store.enqueue(later).await.unwrap();
    let now = ts(T0 + 2 * hour);
    let x = Domain::parse("x.test").unwrap();

    // Arrival filter: only the message older than 90 minutes.
    let old_ones = store
        .list(
            &ListFilter {
                received_before: Some(ts(T0 + 2 * hour - 90 * 60_000)),
                ..ListFilter::default()
            },
            now,
        )
        .unwrap();
    assert_eq!(
        old_ones.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![old]
    );

    // Hold every x.test message, page by page (two per page).
    let mut filter = ListFilter {
        recipient_domain: Some(x.clone()),
        limit: 2,
        ..ListFilter::default()
    };
    let mut total = BulkOutcome::default();
    loop {
        let page = store.list(&filter, now).unwrap();
        let page_ids: Vec<MessageId> = page.messages.iter().map(|m| m.id).collect();
        let o = store
            .apply_bulk(&page_ids, BulkAction::Hold, now)
            .await
            .unwrap();
        total.changed += o.changed;
        total.skipped += o.skipped;
        match page.next_after {
            Some(a) => filter.after = Some(a),
            None => break,
        }
    }
    assert_eq!((total.changed, total.skipped), (3, 0));
    for id in [old, young, scheduled] {
        assert!(store.message(id).unwrap().unwrap().held);
    }
    assert!(!store.message(other).unwrap().unwrap().held);
    // Again: already held, skipped.
    let o = store
        .apply_bulk(&[old, young], BulkAction::Hold, now)
        .await
        .unwrap();
    assert_eq!((o.changed, o.skipped), (0, 2));

    let o = store
        .apply_bulk(&[old, young, scheduled], BulkAction::Release, now)
        .await
        .unwrap();
    assert_eq!(o.changed, 3);
    // Released messages are due now; retry leaves the scheduled one for its time.
    let o = store
        .apply_bulk(&[scheduled, other], BulkAction::Retry, now)
        .await
        .unwrap();
    assert_eq!(o.scheduled_left, 0, "a released message is due now");
    let mut later = new_message(&["e@x.test"], T0 + hour);
    later.not_before = Some(ts(T0 + 5 * hour));
    let kept = store.enqueue(later).await.unwrap();
    let o = store
        .apply_bulk(&[kept], BulkAction::Retry, now)
        .await
        .unwrap();
    assert_eq!((o.changed, o.scheduled_left), (0, 1));
    assert_eq!(
        store.message(kept).unwrap().unwrap().next_attempt_at,
        Some(ts(T0 + 5 * hour))
    );

    let o = store
        .apply_bulk(
            &[old, young, MessageId::from_u64(999_999)],
            BulkAction::Delete,
            now,
        )
        .await
        .unwrap();
    assert_eq!((o.changed, o.skipped), (2, 1));
    assert!(store.message(old).unwrap().is_none());
    assert_eq!(store.pending_count(), 3);
}
