//! Bodies larger than one chunk are stored in pieces that stay in sled's synced log, read back
//! whole across a reopen, and disappear with the message.

mod common;

use std::time::Duration;

use postrider_core::{
    Address, Envelope, NewMessage, RecipientRequest, ReversePath, Source, Timestamp,
};
use postrider_metrics::Metrics;
use postrider_store::{AttemptUpdate, RecordOutcome, Store};

fn big_message(len: usize) -> NewMessage {
    let env = Envelope::new(
        ReversePath::parse("a@sender.test").unwrap(),
        vec![RecipientRequest::new(
            Address::parse("b@example.test").unwrap(),
        )],
    )
    .unwrap();
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    body.extend((0..len).map(|i| b"abcdefghijklmnopqrstuvwxyz\r\n"[i % 28]));
    NewMessage::new(env, body, Source::Smtp, Timestamp::from_millis(1_000))
}

#[tokio::test]
async fn large_body_round_trips_across_reopen_and_is_removed_when_finished() {
    let dir = tempfile::tempdir().unwrap();
    let msg = big_message(700_000);
    let id = {
        let store = Store::open(dir.path(), Metrics::new()).unwrap();
        store.enqueue(msg.clone()).await.unwrap()
    };
    let store = common::open_retrying(dir.path(), Metrics::new()).await;
    assert_eq!(store.body(id).unwrap().as_deref(), Some(&msg.body[..]));
    // No blob files: every piece lives in the log that the group commit syncs.
    let blobs = dir.path().join("blobs");
    let blob_count = std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(blob_count, 0, "no sled blob files for a chunked body");

    let lease = store
        .lease_due(Timestamp::from_millis(2_000), Duration::from_secs(60), 10)
        .unwrap()
        .remove(0);
    let mut done = lease.message.clone();
    for r in &mut done.recipients {
        r.state = postrider_core::RecipientState::Delivered;
    }
    let outcome = store
        .record_attempt(
            &lease,
            AttemptUpdate {
                message: done,
                next_attempt_at: None,
                notifications: vec![],
            },
        )
        .await
        .unwrap();
    assert!(matches!(outcome, RecordOutcome::Recorded { .. }));
    assert_eq!(store.body(id).unwrap(), None);
    drop(store);
    // Reopened (once the committer has made the outcome durable and let go of the database),
    // the finished message has no body chunks left behind.
    let store = common::open_retrying(dir.path(), Metrics::new()).await;
    assert_eq!(store.body(id).unwrap(), None);
    assert_eq!(store.pending_count(), 0);
}
