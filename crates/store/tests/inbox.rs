//! The inbox of received reports and what processing a report changes: asynchronous bounces
//! and complaints.

mod common;

use common::*;
use postrider_core::{MessageId, MessageState, RecipientState, SmtpReply};
use postrider_metrics::Metrics;
use postrider_store::{
    EventKind, InboxEffect, InboxOutcome, ReportEnvelope, ReportSource, Store, SuppressionReason,
    WebhookSubscription,
};

fn envelope() -> ReportEnvelope {
    ReportEnvelope {
        mail_from: String::new(),
        rcpt_to: vec!["b+token@bounces.example.com".into()],
        client_ip: Some("192.0.2.1".into()),
    }
}

fn source(report: MessageId) -> ReportSource {
    ReportSource {
        report_id: report,
        received_at: ts(T0 + 10),
        status: "5.1.1".into(),
        diagnostic: Some("550 5.1.1 no such user".into()),
    }
}

/// A message to `a@x.test` and `b@y.test`, both delivered.
async fn delivered_message(store: &Store) -> MessageId {
    let id = store
        .enqueue(new_message(&["a@x.test", "b@y.test"], T0))
        .await
        .unwrap();
    let leases = store.lease_due(ts(T0), LEASE, 10).unwrap();
    let _ = store
        .record_attempt(&leases[0], delivered(&leases[0].message, T0 + 1))
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn received_reports_are_durable_and_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    // Larger than one chunk, so the report is stored in several.
    let raw: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let id = {
        let store = open_retrying(&path, Metrics::new()).await;
        let id = store
            .receive_report(envelope(), &raw, ts(T0))
            .await
            .unwrap();
        assert_eq!(store.waiting_reports(10).unwrap(), vec![id]);
        id
    };
    let store = open_retrying(&path, Metrics::new()).await;
    assert_eq!(store.waiting_reports(10).unwrap(), vec![id]);
    let report = store.received_report(id).unwrap().unwrap();
    assert_eq!(report.raw, raw);
    assert_eq!(report.envelope, envelope());
    assert_eq!(report.received_at, ts(T0));
    assert_eq!(
        store
            .finish_report(id, &InboxEffect::Discard, ts(T0 + 1))
            .await
            .unwrap(),
        InboxOutcome::Discarded
    );
    assert!(store.inbox_is_empty());
    assert!(store.received_report(id).unwrap().is_none());
}

#[tokio::test]
async fn a_dsn_after_delivery_bounces_the_recipient_once() {
    let store = temp_store();
    store.set_webhooks(vec![WebhookSubscription {
        url: "http://127.0.0.1:9/hook".into(),
        events: vec![EventKind::Bounced],
    }]);
    let id = delivered_message(&store).await;
    let reply = SmtpReply::new(550, "5.1.1 no such user");
    let effect = |report| InboxEffect::AsyncBounce {
        message: id,
        recipient: 1,
        reply: reply.clone(),
        source: source(report),
    };
    let report = store
        .receive_report(envelope(), b"dsn", ts(T0 + 10))
        .await
        .unwrap();
    let outcome = store
        .finish_report(report, &effect(report), ts(T0 + 20))
        .await
        .unwrap();
    assert!(
        matches!(
            outcome,
            InboxOutcome::Bounced {
                suppressed: true,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(store.inbox_is_empty());
    let m = store.message(id).unwrap().unwrap();
    assert_eq!(m.state(ts(T0 + 30)), MessageState::PartiallyBounced);
    let r = &m.recipients[1];
    assert_eq!(r.state, RecipientState::Bounced);
    assert!(r.async_bounce);
    assert_eq!(r.last_reply.as_ref(), Some(&reply));
    assert_eq!(m.recipients[0].state, RecipientState::Delivered);

    let last = store.events_after(0, 100).unwrap().pop().unwrap();
    assert_eq!(last.kind, EventKind::Bounced);
    assert!(last.async_bounce);
    assert_eq!(last.to_json()["async"], true);
    assert_eq!(last.recipient.as_deref(), Some("b@y.test"));
    assert_eq!(store.webhook_outbox_len(), 1);

    let listed = store.suppression("b@y.test", None).unwrap().unwrap();
    assert_eq!(listed.reason, SuppressionReason::HardBounce);
    assert_eq!(listed.source_message, Some(id));
    assert_eq!(listed.source_report, Some(source(report)));

    // A second report for the same recipient changes nothing.
    let events = store.last_event_seq().unwrap();
    let again = store
        .receive_report(envelope(), b"dsn", ts(T0 + 40))
        .await
        .unwrap();
    assert_eq!(
        store
            .finish_report(again, &effect(again), ts(T0 + 50))
            .await
            .unwrap(),
        InboxOutcome::Unchanged
    );
    assert_eq!(store.last_event_seq().unwrap(), events);
    assert!(store.inbox_is_empty());
}

#[tokio::test]
async fn a_soft_async_bounce_is_not_suppressed_and_unknown_messages_change_nothing() {
    let store = temp_store();
    let id = delivered_message(&store).await;
    let report = store
        .receive_report(envelope(), b"dsn", ts(T0 + 10))
        .await
        .unwrap();
    let outcome = store
        .finish_report(
            report,
            &InboxEffect::AsyncBounce {
                message: id,
                recipient: 0,
                reply: SmtpReply::new(552, "5.2.2 mailbox full"),
                source: source(report),
            },
            ts(T0 + 20),
        )
        .await
        .unwrap();
    assert!(
        matches!(
            outcome,
            InboxOutcome::Bounced {
                suppressed: false,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(store.suppression("a@x.test", None).unwrap().is_none());
    for (message, recipient) in [(MessageId::from_u64(999_999), 0), (id, 7)] {
        let report = store
            .receive_report(envelope(), b"dsn", ts(T0 + 30))
            .await
            .unwrap();
        let effect = InboxEffect::Complaint {
            message,
            recipient,
            source: source(report),
        };
        assert_eq!(
            store
                .finish_report(report, &effect, ts(T0 + 40))
                .await
                .unwrap(),
            InboxOutcome::UnknownMessage
        );
    }
    assert!(store.inbox_is_empty());
}

#[tokio::test]
async fn a_complaint_is_evented_and_suppressed_once() {
    let store = temp_store();
    let id = delivered_message(&store).await;
    let complain = |report| InboxEffect::Complaint {
        message: id,
        recipient: 0,
        source: ReportSource {
            status: "abuse".into(),
            diagnostic: None,
            ..source(report)
        },
    };
    let report = store
        .receive_report(envelope(), b"arf", ts(T0 + 10))
        .await
        .unwrap();
    assert_eq!(
        store
            .finish_report(report, &complain(report), ts(T0 + 20))
            .await
            .unwrap(),
        InboxOutcome::Complained
    );
    let last = store.events_after(0, 100).unwrap().pop().unwrap();
    assert_eq!(last.kind, EventKind::Complained);
    assert_eq!(last.recipient.as_deref(), Some("a@x.test"));
    assert!(!last.async_bounce);
    let listed = store.suppression("a@x.test", None).unwrap().unwrap();
    assert_eq!(listed.reason, SuppressionReason::Complaint);
    assert_eq!(listed.reason.as_str(), "complaint");
    // The recipient stays delivered.
    let m = store.message(id).unwrap().unwrap();
    assert_eq!(m.recipients[0].state, RecipientState::Delivered);

    let seq = store.last_event_seq().unwrap();
    let again = store
        .receive_report(envelope(), b"arf", ts(T0 + 30))
        .await
        .unwrap();
    assert_eq!(
        store
            .finish_report(again, &complain(again), ts(T0 + 40))
            .await
            .unwrap(),
        InboxOutcome::Unchanged
    );
    assert_eq!(store.last_event_seq().unwrap(), seq);
}
