//! Idempotency keys, the event log, the suppression list and the webhook outbox.

mod common;

use std::time::Duration;

use common::*;
use postrider_core::{NotifyFlags, RecipientState, ReversePath, SmtpReply, Source, Timestamp};
use postrider_metrics::Metrics;
use postrider_store::{
    EnqueueResult, EventFilter, EventKind, IdempotencyKey, Suppression, SuppressionReason,
    UnsubscribeOutcome, WebhookSubscription,
};

fn idem(key: &str, body: u8) -> IdempotencyKey {
    IdempotencyKey {
        scope: "client-a".into(),
        key: key.into(),
        body_sha256: [body; 32],
        reply: format!("reply-{body}"),
        valid_after: ts(T0 - 86_400_000),
    }
}

/// Key `k1` with another body is a conflict, and nothing is written.
async fn assert_other_body_conflicts(store: &postrider_store::Store) {
    assert_eq!(
        store
            .enqueue_idempotent(new_message(&["b@x.test"], T0 + 5), idem("k1", 2))
            .await
            .unwrap(),
        EnqueueResult::Conflict
    );
}

fn wall_now() -> Timestamp {
    postrider_core::clock::Clock::now(&postrider_core::clock::SystemClock)
}

#[tokio::test]
async fn idempotent_enqueue_replays_conflicts_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    let metrics = Metrics::new();
    let store = open_retrying(&path, metrics.clone()).await;

    let first = store
        .enqueue_idempotent(new_message(&["a@x.test"], T0), idem("k1", 1))
        .await
        .unwrap();
    let EnqueueResult::Created(id) = first else {
        panic!("{first:?}")
    };
    assert_eq!(store.pending_count(), 1);
    // Same key, same body: the first id, nothing new.
    assert_eq!(
        store
            .enqueue_idempotent(new_message(&["a@x.test"], T0 + 5), idem("k1", 1))
            .await
            .unwrap(),
        EnqueueResult::Replayed {
            id,
            reply: "reply-1".into()
        }
    );
    // Same key, other body: conflict, nothing new.
    assert_other_body_conflicts(&store).await;
    // The same key in another scope is another key.
    let other_scope = IdempotencyKey {
        scope: "client-b".into(),
        ..idem("k1", 1)
    };
    assert!(matches!(
        store
            .enqueue_idempotent(new_message(&["a@x.test"], T0), other_scope)
            .await
            .unwrap(),
        EnqueueResult::Created(other) if other != id
    ));
    assert_eq!(store.pending_count(), 2);

    // Restart: the key is still there and still answers with the same id.
    drop(store);
    let store = open_retrying(&path, Metrics::new()).await;
    assert_eq!(store.pending_count(), 2);
    assert_eq!(
        store
            .enqueue_idempotent(new_message(&["a@x.test"], T0 + 9), idem("k1", 1))
            .await
            .unwrap(),
        EnqueueResult::Replayed {
            id,
            reply: "reply-1".into()
        }
    );
    assert_eq!(store.pending_count(), 2);

    // An expired entry no longer counts: a new message is queued under the key.
    let later = IdempotencyKey {
        valid_after: ts(T0 + 1),
        ..idem("k1", 1)
    };
    let again = store
        .enqueue_idempotent(new_message(&["a@x.test"], T0 + 10), later.clone())
        .await
        .unwrap();
    let EnqueueResult::Created(new_id) = again else {
        panic!("{again:?}")
    };
    assert_ne!(new_id, id);
    assert_eq!(
        store
            .enqueue_idempotent(new_message(&["a@x.test"], T0 + 11), later)
            .await
            .unwrap(),
        EnqueueResult::Replayed {
            id: new_id,
            reply: "reply-1".into()
        }
    );

    // Purge: entries created before the cut-off go (the replaced one's index entry too).
    assert_eq!(store.purge_idempotency(ts(T0 + 1)).unwrap(), 1); // client-b's
    assert_eq!(store.purge_idempotency(ts(T0 + 100)).unwrap(), 1); // the renewed k1
    assert!(matches!(
        store
            .enqueue_idempotent(new_message(&["a@x.test"], T0 + 200), idem("k1", 1))
            .await
            .unwrap(),
        EnqueueResult::Created(_)
    ));
}

#[tokio::test]
async fn concurrent_duplicates_enqueue_once() {
    let store = temp_store();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .enqueue_idempotent(new_message(&["a@x.test"], T0), idem("same", 7))
                .await
                .unwrap()
        }));
    }
    let mut created = Vec::new();
    let mut replayed = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            EnqueueResult::Created(id) => created.push(id),
            EnqueueResult::Replayed { id, .. } => replayed.push(id),
            EnqueueResult::Conflict => panic!("same body is no conflict"),
        }
    }
    assert_eq!(created.len(), 1, "exactly one enqueue");
    assert!(replayed.iter().all(|id| *id == created[0]));
    assert_eq!(store.pending_count(), 1);
}

/// A replay confirms a message just like the first answer did, so it must not come before the
/// message is durable: while journal syncs fail, the key's message is only in memory and a
/// replay is an error too; once syncs work again the replay names the same message.
#[tokio::test]
async fn replays_wait_for_the_message_to_be_durable() {
    let store = temp_store();
    store.set_fail_syncs(true);
    let first = store
        .enqueue_idempotent(new_message(&["a@x.test"], T0), idem("k1", 1))
        .await;
    assert!(first.is_err(), "a failed sync is no success: {first:?}");
    let replay = store
        .enqueue_idempotent(new_message(&["a@x.test"], T0 + 5), idem("k1", 1))
        .await;
    assert!(
        replay.is_err(),
        "a replay before the message is durable is no success either: {replay:?}"
    );
    // A different body under the same key is still a conflict (nothing is confirmed).
    assert_other_body_conflicts(&store).await;

    store.set_fail_syncs(false);
    let again = store
        .enqueue_idempotent(new_message(&["a@x.test"], T0 + 9), idem("k1", 1))
        .await
        .unwrap();
    let EnqueueResult::Replayed { id, .. } = again else {
        panic!("{again:?}")
    };
    assert!(store.message(id).unwrap().is_some());
    store.flush().await.unwrap();
}

#[tokio::test]
async fn events_follow_the_message_lifecycle() {
    let store = temp_store();
    let id = store
        .enqueue(new_message(&["a@x.test", "b@y.test"], T0))
        .await
        .unwrap();
    let lease = store.lease_due(ts(T0), LEASE, 1).unwrap().remove(0);
    // a delivered, b deferred.
    let mut update = deferred(&lease.message, T0 + 10, T0 + 60_000);
    update.message.recipients[0].state = RecipientState::Delivered;
    update.message.recipients[0].last_reply = Some(SmtpReply::new(250, "2.0.0 ok"));
    update.message.recipients[0].mx_host = Some("mx.x.test".into());
    let _ = store.record_attempt(&lease, update).await.unwrap();
    // b expires: bounced with its last transient reply.
    let lease = store
        .lease_due(ts(T0 + 60_000), LEASE, 1)
        .unwrap()
        .remove(0);
    let mut m = lease.message.clone();
    m.recipients[1].state = RecipientState::Bounced;
    m.recipients[1].attempts += 1;
    m.recipients[1].last_attempt_at = Some(ts(T0 + 60_001));
    m.finished_at = Some(ts(T0 + 60_001));
    let update = postrider_store::AttemptUpdate {
        message: m,
        next_attempt_at: None,
        notifications: vec![bounce_for(&lease.message)],
    };
    let _ = store.record_attempt(&lease, update).await.unwrap();

    let events = store.events_after(0, 100).unwrap();
    let kinds: Vec<_> = events
        .iter()
        .filter(|e| e.message_id == id)
        .map(|e| (e.kind, e.recipient.clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::Accepted, None),
            (EventKind::Delivered, Some("a@x.test".into())),
            (EventKind::Deferred, Some("b@y.test".into())),
            (EventKind::Expired, Some("b@y.test".into())),
        ]
    );
    // The bounce notification is a message too: it has its own `accepted` event.
    assert_eq!(events.len(), 5);
    assert_eq!(events[4].kind, EventKind::Accepted);
    assert_ne!(events[4].message_id, id);
    // Sequence numbers increase by one; the cursor pages.
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    assert_eq!(store.last_event_seq().unwrap(), 5);
    let page = store.events_after(2, 2).unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
    assert!(store.events_after(5, 10).unwrap().is_empty());
    // Filters: the page holds only matches; the cursor is the last event examined.
    let only = |filter: EventFilter| {
        let page = store.events_matching(0, 100, &filter).unwrap();
        (
            page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            page.next_cursor,
        )
    };
    assert_eq!(only(EventFilter::default()), (vec![1, 2, 3, 4, 5], 5));
    assert_eq!(
        only(EventFilter {
            recipient: Some("B@Y.test".into()),
            ..EventFilter::default()
        }),
        (vec![3, 4], 5)
    );
    assert_eq!(
        only(EventFilter {
            kinds: vec![EventKind::Delivered, EventKind::Expired],
            message_id: Some(id),
            ..EventFilter::default()
        }),
        (vec![2, 4], 5)
    );
    let (window, _) = only(EventFilter {
        since: Some(events[2].at),
        until: Some(events[3].at),
        ..EventFilter::default()
    });
    assert!(
        window.contains(&3) && !window.contains(&1) && !window.contains(&4),
        "{window:?}"
    );
    assert_eq!(
        only(EventFilter {
            tag: Some("no-such-tag".into()),
            ..EventFilter::default()
        }),
        (vec![], 5)
    );
    let page = store
        .events_matching(0, 1, &EventFilter::default())
        .unwrap();
    assert_eq!(page.next_cursor, 1, "a full page ends at its last event");
    let delivered = &events[1];
    assert_eq!(delivered.mx_host.as_deref(), Some("mx.x.test"));
    assert_eq!(delivered.reply.as_ref().map(|r| r.code), Some(250));
    let json = delivered.to_json();
    assert_eq!(json["type"], "delivered");
    assert_eq!(json["seq"], 2);
    assert_eq!(json["id"], id.to_string());
    assert!(
        json.get("message_id").is_none(),
        "message_id names only the Message-ID header: {json}"
    );
    assert_eq!(json["reply"]["enhanced"], "2.0.0");

    // Retention: events before the cut-off go, oldest first.
    assert_eq!(store.purge_events(ts(T0 + 11)).unwrap(), 3);
    let left: Vec<u64> = store
        .events_after(0, 10)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(left, vec![4, 5]);
}

#[tokio::test]
async fn hard_bounces_are_suppressed_and_suppressed_recipients_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    let store = open_retrying(&path, Metrics::new()).await;
    let id = store
        .enqueue(new_message(&["Gone@X.test", "soft@x.test"], T0))
        .await
        .unwrap();
    let lease = store.lease_due(ts(T0), LEASE, 1).unwrap().remove(0);
    let mut update = bounced_with_dsn(&lease.message, T0 + 5);
    update.notifications.clear();
    // The second one bounced for a policy reason (5.7.1): not an address problem.
    update.message.recipients[1].last_reply = Some(SmtpReply::new(550, "5.7.1 policy"));
    let _ = store.record_attempt(&lease, update).await.unwrap();

    let s = store.suppression("gone@x.test", None).unwrap().unwrap();
    assert_eq!(s.address, "gone@x.test");
    assert_eq!(s.reason, SuppressionReason::HardBounce);
    assert_eq!(s.source_message, Some(id));
    assert_eq!(s.created_at, ts(T0 + 5));
    assert_eq!(s.reply.as_ref().map(|r| r.code), Some(550));
    assert!(store.suppression("soft@x.test", None).unwrap().is_none());
    assert_eq!(store.suppression_count(), 1);

    // Survives a restart; then a message to it is suppressed at enqueue.
    drop(store);
    let store = open_retrying(&path, Metrics::new()).await;
    assert!(store.suppression("GONE@x.test", None).unwrap().is_some());
    let mixed = store
        .enqueue(new_message(&["gone@x.test", "ok@x.test"], T0 + 100))
        .await
        .unwrap();
    let m = store.message(mixed).unwrap().unwrap();
    assert_eq!(m.recipients[0].state, RecipientState::Suppressed);
    assert_eq!(m.recipients[1].state, RecipientState::Queued);
    let lease = store.lease_due(ts(T0 + 100), LEASE, 1).unwrap().remove(0);
    assert_eq!(lease.message.pending().collect::<Vec<_>>(), vec![1]);

    // Every recipient suppressed (an API submission: no notice owed): finished at enqueue,
    // never leased, not pending.
    let pending = store.pending_count();
    let mut api = new_message(&["gone@x.test"], T0 + 200);
    api.source = Source::Http;
    let all = store.enqueue(api).await.unwrap();
    let m = store.message(all).unwrap().unwrap();
    assert!(m.is_finished());
    assert_eq!(m.finished_at, Some(ts(T0 + 200)));
    assert_eq!(store.body(all).unwrap(), None);
    assert_eq!(store.pending_count(), pending);
    assert!(store.lease_due(ts(T0 + 300), LEASE, 10).unwrap().is_empty());
    assert_eq!(
        event_kinds(&store, all),
        vec![EventKind::Accepted, EventKind::Suppressed]
    );
    // It is purged like any finished message.
    assert_eq!(store.purge_finished(ts(T0 + 201)).unwrap(), 2);

    // Manual entries: add (once), list in order with a cursor, remove.
    let manual = |a: &str| Suppression {
        address: a.into(),
        reason: SuppressionReason::Manual,
        created_at: ts(T0),
        source_message: None,
        reply: None,
        scope: None,
        source_report: None,
    };
    assert!(store.add_suppression(manual("B@y.test")).await.unwrap());
    assert!(!store.add_suppression(manual("b@y.test")).await.unwrap());
    assert!(!store.add_suppression(manual("gone@x.test")).await.unwrap());
    let all: Vec<String> = store
        .list_suppressions(None, 10)
        .unwrap()
        .into_iter()
        .map(|s| s.address)
        .collect();
    assert_eq!(all, vec!["b@y.test", "gone@x.test"]);
    let page: Vec<String> = store
        .list_suppressions(Some("b@y.test"), 10)
        .unwrap()
        .into_iter()
        .map(|s| s.address)
        .collect();
    assert_eq!(page, vec!["gone@x.test"]);
    assert!(store.remove_suppression("Gone@x.test", None).await.unwrap());
    assert!(!store.remove_suppression("gone@x.test", None).await.unwrap());
    let id = store
        .enqueue(new_message(&["gone@x.test"], T0 + 300))
        .await
        .unwrap();
    assert_eq!(
        store.message(id).unwrap().unwrap().recipients[0].state,
        RecipientState::Queued
    );
}

/// The kinds of the logged events of message `id`, in order.
fn event_kinds(store: &postrider_store::Store, id: postrider_core::MessageId) -> Vec<EventKind> {
    store
        .events_after(0, 100)
        .unwrap()
        .into_iter()
        .filter(|e| e.message_id == id)
        .map(|e| e.kind)
        .collect()
}

fn manual_suppression(address: &str) -> Suppression {
    Suppression {
        address: address.into(),
        reason: SuppressionReason::Manual,
        created_at: ts(T0),
        source_message: None,
        reply: None,
        scope: None,
        source_report: None,
    }
}

#[tokio::test]
async fn smtp_senders_are_owed_a_notice_for_suppressed_recipients_until_an_attempt_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    let store = open_retrying(&path, Metrics::new()).await;
    assert!(
        store
            .add_suppression(manual_suppression("gone@x.test"))
            .await
            .unwrap()
    );

    // No notice owed: API submissions, the null sender, NOTIFY without FAILURE, notifications.
    let mut api = new_message(&["gone@x.test"], T0);
    api.source = Source::Http;
    let mut null_sender = new_message(&["gone@x.test"], T0);
    null_sender.envelope = postrider_core::Envelope::new(
        ReversePath::Null,
        null_sender.envelope.recipients().to_vec(),
    )
    .unwrap();
    let mut never = new_message(&["gone@x.test"], T0);
    let mut rcpts = never.envelope.recipients().to_vec();
    rcpts[0].notify = Some(NotifyFlags {
        success: true,
        ..NotifyFlags::default()
    });
    never.envelope = postrider_core::Envelope::new(never.envelope.sender().clone(), rcpts).unwrap();
    let mut dsn = new_message(&["gone@x.test"], T0);
    dsn.source = Source::Dsn;
    for msg in [api, null_sender, never, dsn] {
        let source = msg.source;
        let id = store.enqueue(msg).await.unwrap();
        let m = store.message(id).unwrap().unwrap();
        assert!(!m.suppression_notice_due, "{source:?}");
        assert!(m.is_finished() && m.finished_at.is_some(), "{source:?}");
        assert_eq!(store.body(id).unwrap(), None);
    }
    assert_eq!(store.pending_count(), 0);
    assert!(store.lease_due(ts(T0 + 1), LEASE, 10).unwrap().is_empty());

    // An SMTP submission whose only recipient is suppressed: kept, with its body, until the
    // notice is recorded; the recipient stays `suppressed`.
    let all = store
        .enqueue(new_message(&["Gone@x.test"], T0 + 100))
        .await
        .unwrap();
    let m = store.message(all).unwrap().unwrap();
    assert_eq!(m.recipients[0].state, RecipientState::Suppressed);
    assert!(m.suppression_notice_due && !m.is_finished());
    assert_eq!(m.finished_at, None);
    assert!(store.body(all).unwrap().is_some());
    assert_eq!(store.pending_count(), 1);
    assert_eq!(
        event_kinds(&store, all),
        vec![EventKind::Accepted, EventKind::Suppressed]
    );

    // A crash before the attempt loses nothing: the owed notice is part of the durable record.
    drop(store);
    let store = open_retrying(&path, Metrics::new()).await;
    assert_eq!(store.pending_count(), 1);
    let lease = store.lease_due(ts(T0 + 100), LEASE, 10).unwrap().remove(0);
    assert_eq!(lease.message.id, all);
    assert!(lease.message.suppression_notice_due);
    assert_eq!(lease.message.pending().count(), 0);

    // The attempt takes the report and records the notice with the cleared flag, at once.
    let mut message = lease.message.clone();
    assert_eq!(message.take_suppressed_reports(), vec![0]);
    message.finished_at = Some(ts(T0 + 101));
    let update = postrider_store::AttemptUpdate {
        message,
        next_attempt_at: None,
        notifications: vec![bounce_for(&lease.message)],
    };
    let postrider_store::RecordOutcome::Recorded { notification_ids } =
        store.record_attempt(&lease, update.clone()).await.unwrap()
    else {
        panic!("lease lost");
    };
    assert_eq!(notification_ids.len(), 1);
    let m = store.message(all).unwrap().unwrap();
    assert!(!m.suppression_notice_due && m.is_finished());
    assert_eq!(m.finished_at, Some(ts(T0 + 101)));
    assert_eq!(m.recipients[0].state, RecipientState::Suppressed);
    assert_eq!(m.attempts, 0, "nothing was attempted");
    assert_eq!(store.body(all).unwrap(), None);
    assert_eq!(store.pending_count(), 1, "only the notice is pending");
    // Recording the same lease again writes nothing: the notice exists once.
    assert_eq!(
        store.record_attempt(&lease, update).await.unwrap(),
        postrider_store::RecordOutcome::LeaseLost
    );
    let leased = store.lease_due(ts(T0 + 200), LEASE, 10).unwrap();
    assert_eq!(ids(&leased), notification_ids);
    // No new event for the suppressed recipient: it was reported at enqueue.
    assert_eq!(
        event_kinds(&store, all),
        vec![EventKind::Accepted, EventKind::Suppressed]
    );

    // With another recipient the message is scheduled as usual, and deleting an owed-notice
    // message before its attempt keeps the pending count right.
    let before = store.pending_count();
    let mixed = store
        .enqueue(new_message(&["gone@x.test", "ok@x.test"], T0 + 300))
        .await
        .unwrap();
    let m = store.message(mixed).unwrap().unwrap();
    assert!(m.suppression_notice_due);
    assert_eq!(m.pending().collect::<Vec<_>>(), vec![1]);
    let only = store
        .enqueue(new_message(&["gone@x.test"], T0 + 300))
        .await
        .unwrap();
    assert_eq!(store.pending_count(), before + 2);
    store.delete(only).await.unwrap();
    store.delete(mixed).await.unwrap();
    assert_eq!(store.pending_count(), before);
}

#[tokio::test]
async fn outbox_entries_follow_subscriptions_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    let store = open_retrying(&path, Metrics::new()).await;
    store.set_webhooks(vec![
        WebhookSubscription {
            url: "http://127.0.0.1:1/all".into(),
            events: vec![],
        },
        WebhookSubscription {
            url: "http://127.0.0.1:1/delivered".into(),
            events: vec![EventKind::Delivered],
        },
    ]);
    let id = store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
    // accepted → webhook 0 only.
    assert_eq!(store.webhook_outbox_len(), 1);
    let lease = store.lease_due(ts(T0), LEASE, 1).unwrap().remove(0);
    let _ = store
        .record_attempt(&lease, delivered(&lease.message, T0 + 1))
        .await
        .unwrap();
    // delivered → both.
    assert_eq!(store.webhook_outbox_len(), 3);

    drop(store);
    let store = open_retrying(&path, Metrics::new()).await;
    assert_eq!(store.webhook_outbox_len(), 3);
    let now = wall_now().saturating_add(Duration::from_secs(1));
    let mut got = store
        .lease_webhook_deliveries(now, Duration::from_secs(60), 10)
        .unwrap();
    got.sort_by_key(|d| (d.seq, d.webhook));
    let summary: Vec<_> = got
        .iter()
        .map(|d| {
            (
                d.seq,
                d.webhook,
                d.url.as_str(),
                d.event.as_ref().map(|e| e.kind),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, 0, "http://127.0.0.1:1/all", Some(EventKind::Accepted)),
            (2, 0, "http://127.0.0.1:1/all", Some(EventKind::Delivered)),
            (
                2,
                1,
                "http://127.0.0.1:1/delivered",
                Some(EventKind::Delivered)
            ),
        ]
    );
    assert_eq!(got[1].event.as_ref().unwrap().message_id, id);
    // Leased: not due again until the lease ends.
    assert!(
        store
            .lease_webhook_deliveries(now, Duration::from_secs(60), 10)
            .unwrap()
            .is_empty()
    );
    store.webhook_delivered(&got[0]).await.unwrap();
    store.webhook_delivered(&got[1]).await.unwrap();
    let retry_at = now.saturating_add(Duration::from_secs(10));
    store.webhook_retry_at(&got[2], retry_at).await.unwrap();
    assert_eq!(store.webhook_outbox_len(), 1);
    assert_eq!(store.next_webhook_due().unwrap(), Some(retry_at));
    let again = store
        .lease_webhook_deliveries(retry_at, Duration::from_secs(60), 10)
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    assert_eq!(again[0].seq, 2);
    // A lapsed lease makes the entry due again (at-least-once).
    let after_lease = retry_at.saturating_add(Duration::from_secs(61));
    assert_eq!(
        store
            .lease_webhook_deliveries(after_lease, Duration::from_secs(60), 10)
            .unwrap()
            .len(),
        1
    );
}

/// A sandbox message keeps its mark across a reopen, through its lease and its attempt, and
/// a complaint about a delivered recipient is a `complained` event with its webhook entry.
#[tokio::test]
async fn sandbox_mark_survives_reopen_and_complaints_are_evented() {
    let dir = tempfile::tempdir().unwrap();
    let (sandboxed, ordinary) = {
        let store = postrider_store::Store::open(dir.path(), Metrics::new()).unwrap();
        let mut m = new_message(&["complaint@sandbox.invalid"], T0);
        m.sandbox = true;
        let sandboxed = store.enqueue(m).await.unwrap();
        let ordinary = store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
        (sandboxed, ordinary)
    };
    let store = open_retrying(dir.path(), Metrics::new()).await;
    store.set_webhooks(vec![WebhookSubscription {
        url: "http://127.0.0.1:9/hook".into(),
        events: vec![EventKind::Complained],
    }]);
    assert!(store.message(sandboxed).unwrap().unwrap().sandbox);
    assert!(!store.message(ordinary).unwrap().unwrap().sandbox);
    let leases = store.lease_due(ts(T0), LEASE, 10).unwrap();
    let lease = leases.iter().find(|l| l.message.id == sandboxed).unwrap();
    assert!(lease.message.sandbox, "the lease carries the mark");
    let _ = store
        .record_attempt(lease, delivered(&lease.message, T0 + 1))
        .await
        .unwrap();
    let finished = store.message(sandboxed).unwrap().unwrap();
    assert!(finished.sandbox, "recording the attempt keeps the mark");
    assert!(finished.is_finished());
    assert!(
        store.body(sandboxed).unwrap().is_some(),
        "a captured message keeps its content once finished"
    );

    let address = postrider_core::Address::parse("complaint@sandbox.invalid").unwrap();
    assert!(
        store
            .record_complaint(sandboxed, &address, ts(T0 + 2))
            .await
            .unwrap()
    );
    let stranger = postrider_core::Address::parse("other@sandbox.invalid").unwrap();
    assert!(
        !store
            .record_complaint(sandboxed, &stranger, ts(T0 + 2))
            .await
            .unwrap()
    );
    let events = store.events_after(0, 100).unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.kind, EventKind::Complained);
    assert_eq!(last.message_id, sandboxed);
    assert_eq!(last.recipient.as_deref(), Some("complaint@sandbox.invalid"));
    assert_eq!(last.to_json()["type"], "complained");
    assert_eq!(EventKind::parse("complained"), Some(EventKind::Complained));
    assert_eq!(store.webhook_outbox_len(), 1);

    // A sent message's body goes when it finishes; a captured one's when it is purged.
    let lease = leases.iter().find(|l| l.message.id == ordinary).unwrap();
    let _ = store
        .record_attempt(lease, delivered(&lease.message, T0 + 1))
        .await
        .unwrap();
    assert!(store.body(ordinary).unwrap().is_none());
    assert_eq!(store.purge_finished(ts(T0 + 10)).unwrap(), 2);
    assert!(store.body(sandboxed).unwrap().is_none());
    assert!(store.message(sandboxed).unwrap().is_none());
}

/// A one-click unsubscribe suppresses the recipient for the sender's domain only, once, with
/// an `unsubscribed` event and its webhook entry; scoped and global entries live side by side.
#[tokio::test]
async fn unsubscribes_are_scoped_to_the_sender_domain_and_evented_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = postrider_store::Store::open(dir.path(), Metrics::new()).unwrap();
    store.set_webhooks(vec![WebhookSubscription {
        url: "http://127.0.0.1:9/hook".into(),
        events: vec![EventKind::Unsubscribed],
    }]);
    let mut m = new_message(&["keep@x.test", "Leave@x.test"], T0);
    m.unsubscribe = true;
    let id = store.enqueue(m).await.unwrap();
    let plain = store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
    assert!(store.message(id).unwrap().unwrap().unsubscribe);

    // Unknown message, recipient, or a message sent without links: nothing happens.
    let unknown = postrider_core::MessageId::from_u64(999_999);
    for (m, i) in [(unknown, 0), (id, 2), (plain, 0)] {
        assert_eq!(
            store.record_unsubscribe(m, i, ts(T0 + 1)).await.unwrap(),
            UnsubscribeOutcome::Unknown
        );
    }
    let UnsubscribeOutcome::Unsubscribed(entry) =
        store.record_unsubscribe(id, 1, ts(T0 + 1)).await.unwrap()
    else {
        panic!("not unsubscribed");
    };
    assert_eq!(entry.address, "leave@x.test");
    assert_eq!(entry.scope.as_deref(), Some("example.com"));
    assert_eq!(entry.reason, SuppressionReason::Unsubscribed);
    assert_eq!(entry.source_message, Some(id));
    assert_eq!(store.webhook_outbox_len(), 1);
    // Again: nothing new.
    assert!(matches!(
        store.record_unsubscribe(id, 1, ts(T0 + 2)).await.unwrap(),
        UnsubscribeOutcome::AlreadyUnsubscribed(e) if e.created_at == ts(T0 + 1)
    ));
    assert_eq!(store.webhook_outbox_len(), 1);
    let kinds = event_kinds(&store, id);
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == EventKind::Unsubscribed)
            .count(),
        1
    );
    let last = store.events_after(0, 100).unwrap().pop().unwrap();
    assert_eq!(last.recipient.as_deref(), Some("Leave@x.test"));
    assert_eq!(last.to_json()["type"], "unsubscribed");
    assert_eq!(
        EventKind::parse("unsubscribed"),
        Some(EventKind::Unsubscribed)
    );

    // Scoped: suppressed for example.com senders, not for others, not globally.
    let leave = postrider_core::Address::parse("LEAVE@x.test").unwrap();
    let example = postrider_core::Domain::parse("Example.com").unwrap();
    let other = postrider_core::Domain::parse("other.test").unwrap();
    assert!(store.is_suppressed(&leave, Some(&example)).unwrap());
    assert!(!store.is_suppressed(&leave, Some(&other)).unwrap());
    assert!(!store.is_suppressed(&leave, None).unwrap());
    assert!(store.suppression("leave@x.test", None).unwrap().is_none());
    assert!(
        store
            .suppression("leave@x.test", Some("example.com"))
            .unwrap()
            .is_some()
    );
    let same = store
        .enqueue(new_message(&["leave@x.test"], T0 + 3))
        .await
        .unwrap();
    assert_eq!(
        store.message(same).unwrap().unwrap().recipients[0].state,
        RecipientState::Suppressed
    );
    let mut from_other = new_message(&["leave@x.test"], T0 + 3);
    from_other.envelope = postrider_core::Envelope::new(
        ReversePath::parse("news@other.test").unwrap(),
        from_other.envelope.recipients().to_vec(),
    )
    .unwrap();
    let delivered_to = store.enqueue(from_other).await.unwrap();
    assert_eq!(
        store.message(delivered_to).unwrap().unwrap().recipients[0].state,
        RecipientState::Queued
    );

    // A global entry beside the scoped one; both listed, the cursor is the entry key.
    assert!(
        store
            .add_suppression(manual_suppression("leave@x.test"))
            .await
            .unwrap()
    );
    let listed = store.list_suppressions(None, 10).unwrap();
    let keys: Vec<String> = listed.iter().map(|s| s.key()).collect();
    assert_eq!(keys, vec!["leave@x.test", "leave@x.test example.com"]);
    let after_first = store.list_suppressions(Some(&keys[0]), 10).unwrap();
    assert_eq!(after_first.len(), 1);
    assert_eq!(after_first[0].scope.as_deref(), Some("example.com"));
    assert!(store.is_suppressed(&leave, Some(&other)).unwrap());
    // Removing the scoped entry leaves the global one.
    assert!(
        store
            .remove_suppression("leave@x.test", Some("EXAMPLE.com"))
            .await
            .unwrap()
    );
    assert!(store.suppression("leave@x.test", None).unwrap().is_some());
    assert!(
        !store
            .remove_suppression("leave@x.test", Some("example.com"))
            .await
            .unwrap()
    );
}
