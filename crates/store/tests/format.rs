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
                supported: 1
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

#[tokio::test]
async fn fresh_directory_records_format_version_1() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), Metrics::new()).unwrap());
    let db = raw_db(dir.path());
    let v = db
        .open_tree("meta")
        .unwrap()
        .get("format_version")
        .unwrap()
        .unwrap();
    assert_eq!(&v[..], &1u32.to_be_bytes()[..]);
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
        v[0] = 2; // a version from the future
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
            found: 2,
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
