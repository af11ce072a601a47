//! On-disk format guards: newer data directories and records are refused clearly, and a
//! corrupt record only affects itself.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use postrider_core::MessageId;
use postrider_metrics::Metrics;
use postrider_store::{ListFilter, Store, StoreError};

fn raw_db(path: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match sled::Config::new()
            .path(path)
            .segment_size(8 * 1024 * 1024)
            .open()
        {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("raw open not yet possible: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("raw open failed: {e}"),
        }
    }
}

#[test]
fn newer_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = raw_db(dir.path());
        db.open_tree("meta")
            .unwrap()
            .insert("format_version", &99u32.to_be_bytes()[..])
            .unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(dir.path(), Metrics::new()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::UnknownFormat {
                tree: "meta",
                found: 99,
                supported: 4
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("99") && text.contains("upgrade Postrider"),
        "{text}"
    );
}

fn meta_value(path: &Path, key: &str) -> Option<sled::IVec> {
    raw_db(path).open_tree("meta").unwrap().get(key).unwrap()
}

#[tokio::test]
async fn fresh_directory_records_the_current_format_version_and_an_empty_queue() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), Metrics::new()).unwrap());
    let v = meta_value(dir.path(), "format_version").unwrap();
    assert_eq!(&v[..], &4u32.to_be_bytes()[..]);
    let count = meta_value(dir.path(), "pending_count").unwrap();
    assert_eq!(&count[..], &0i64.to_be_bytes()[..]);
}

/// Every kind of change keeps `meta/pending_count` equal to a full count of the queue.
#[tokio::test]
async fn kept_pending_count_matches_a_recount_after_every_kind_of_change() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), Metrics::new()).unwrap();
        store
            .add_suppression(postrider_store::Suppression {
                address: "gone@x.test".into(),
                reason: postrider_store::SuppressionReason::Manual,
                created_at: ts(T0),
                source_message: None,
                reply: None,
                scope: None,
                source_report: None,
            })
            .await
            .unwrap();
        let mut ids = Vec::new();
        for i in 0..8 {
            ids.push(
                store
                    .enqueue(new_message(&[&format!("u{i}@x.test")], T0))
                    .await
                    .unwrap(),
            );
        }
        // Its only recipient is suppressed, but it stays pending: the SMTP sender is owed a
        // failure notice, sent by its first attempt.
        store
            .enqueue(new_message(&["gone@x.test"], T0))
            .await
            .unwrap();
        let leases = store.lease_due(ts(T0), LEASE, 5).unwrap();
        let _ = store
            .record_attempt(&leases[0], delivered(&leases[0].message, T0 + 1))
            .await
            .unwrap();
        let _ = store
            .record_attempt(
                &leases[1],
                deferred(&leases[1].message, T0 + 1, T0 + 60_000),
            )
            .await
            .unwrap();
        let _ = store
            .record_attempt(&leases[2], bounced_with_dsn(&leases[2].message, T0 + 1))
            .await
            .unwrap();
        store.hold(leases[3].message.id).await.unwrap();
        store.hold(ids[6]).await.unwrap();
        store.release(ids[6], ts(T0)).await.unwrap();
        store.hold(ids[7]).await.unwrap();
        store.delete(ids[5]).await.unwrap();
        let _ = store
            .complete_without_lease(ids[7], |m| bounced_with_dsn(m, T0 + 2))
            .await
            .unwrap();
        // 8 + 1 owing a notice - delivered - bounced - deleted - bounced now + 2 notices.
        assert_eq!(store.pending_count(), 7);
        assert_eq!(store.purge_finished(ts(T0 + 10)).unwrap(), 3);
        assert_eq!(store.pending_count(), 7);
    }
    let store = open_retrying(dir.path(), Metrics::new()).await;
    assert_eq!(store.pending_count(), 7, "kept count");
    drop(store);
    // Make it look like a version 1 directory: opening counts the queue from scratch.
    {
        let db = raw_db(dir.path());
        let meta = db.open_tree("meta").unwrap();
        meta.insert("format_version", &1u32.to_be_bytes()[..])
            .unwrap();
        meta.remove("pending_count").unwrap();
        db.flush().unwrap();
    }
    let store = open_retrying(dir.path(), Metrics::new()).await;
    assert_eq!(store.pending_count(), 7, "recount");
    drop(store);
    let v = meta_value(dir.path(), "format_version").unwrap();
    assert_eq!(
        &v[..],
        &4u32.to_be_bytes()[..],
        "marked current once counted"
    );
    let count = meta_value(dir.path(), "pending_count").unwrap();
    assert_eq!(&count[..], &7i64.to_be_bytes()[..]);
}

#[tokio::test]
async fn unknown_and_corrupt_records_only_affect_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let (newer, broken, good);
    {
        let store = Store::open(dir.path(), Metrics::new()).unwrap();
        newer = store.enqueue(new_message(&["a@x.test"], T0)).await.unwrap();
        broken = store.enqueue(new_message(&["b@x.test"], T0)).await.unwrap();
        good = store.enqueue(new_message(&["c@x.test"], T0)).await.unwrap();
    }
    {
        let db = raw_db(dir.path());
        let messages = db.open_tree("messages").unwrap();
        let key = newer.to_be_bytes();
        let mut v = messages.get(key).unwrap().unwrap().to_vec();
        v[0] = 3; // a version from the future (2 marks sandbox messages)
        messages.insert(key, v).unwrap();
        messages
            .insert(broken.to_be_bytes(), &b"\x01{not json"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let store = open_retrying(dir.path(), Metrics::new()).await;
    assert_eq!(store.pending_count(), 3);
    assert!(matches!(
        store.message(newer),
        Err(StoreError::UnknownFormat {
            tree: "messages",
            found: 3,
            ..
        })
    ));
    assert!(matches!(
        store.message(broken),
        Err(StoreError::Corrupt {
            tree: "messages",
            ..
        })
    ));
    assert!(store.message(good).unwrap().is_some());

    // The scheduler still gets the readable message; unreadable ones are parked, not lost.
    let leases = store.lease_due(ts(T0), LEASE, 10).unwrap();
    assert_eq!(ids(&leases), vec![good]);
    assert!(store.lease_due(ts(T0 + 1), LEASE, 10).unwrap().is_empty());
    assert_eq!(store.next_due_at().unwrap(), Some(ts(T0 + 600_000)));

    let page = store.list(&ListFilter::default(), ts(T0)).unwrap();
    assert_eq!(
        page.messages
            .iter()
            .map(|m| m.id)
            .collect::<Vec<MessageId>>(),
        vec![good]
    );
    assert_eq!(store.stats(ts(T0), 5).unwrap().corrupt, 2);
    assert!(matches!(
        store.hold(broken).await,
        Err(StoreError::Corrupt { .. })
    ));

    // An operator can still remove the broken record.
    store.delete(broken).await.unwrap();
    assert_eq!(store.message(broken).unwrap(), None);
    assert_eq!(store.pending_count(), 2);
    assert_eq!(store.stats(ts(T0), 5).unwrap().corrupt, 1);
}
