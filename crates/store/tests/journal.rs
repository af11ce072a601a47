//! The write-ahead journal: what a crash leaves on disk (the files as they are while the store
//! is still running) must reopen with every acknowledged write, through journal files that
//! wrapped around several checkpoints and records larger than a journal file.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use postrider_core::{MessageId, NewMessage};
use postrider_metrics::Metrics;
use postrider_store::{ListFilter, Store};

/// Journal files this small make a 4 KiB message fill one in about 15 enqueues.
const SMALL_JOURNAL: u64 = 64 * 1024;

fn message_of(size: usize, n: usize) -> NewMessage {
    let mut m = new_message(&[&format!("u{n}@x.test")], T0);
    let mut body = format!("Subject: journal {n}\r\n\r\n").into_bytes();
    body.resize(size, b'j');
    body.extend_from_slice(b"\r\n");
    m.body = body;
    m
}

/// Copies the data directory as a crash would leave it: whatever the running store has written
/// to its files so far, nothing it holds in memory.
fn crash_copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            crash_copy(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn pending_ids(store: &Store) -> BTreeSet<MessageId> {
    let filter = ListFilter {
        limit: 1000,
        ..ListFilter::default()
    };
    store
        .list(&filter, ts(T0))
        .unwrap()
        .messages
        .into_iter()
        .filter(|m| m.finished_at.is_none())
        .map(|m| m.id)
        .collect()
}

#[tokio::test]
async fn a_crash_keeps_every_acknowledged_write_across_checkpoints() {
    let live = tempfile::tempdir().unwrap();
    let store = Store::open_with_journal_size(live.path(), Metrics::new(), SMALL_JOURNAL).unwrap();
    let mut accepted = Vec::new();
    for n in 0..120 {
        accepted.push(store.enqueue(message_of(4096, n)).await.unwrap());
    }
    // A message larger than a whole journal file is made durable by a checkpoint of its own.
    accepted.push(store.enqueue(message_of(200_000, 1000)).await.unwrap());
    for n in 120..150 {
        accepted.push(store.enqueue(message_of(4096, n)).await.unwrap());
    }
    // Outcomes are journaled too: 40 delivered, then made durable by a later sync.
    let leases = store.lease_due(ts(T0), LEASE, 40).unwrap();
    assert_eq!(leases.len(), 40);
    let mut delivered_ids = BTreeSet::new();
    for lease in &leases {
        let _ = store
            .record_attempt(lease, delivered(&lease.message, T0 + 1))
            .await
            .unwrap();
        delivered_ids.insert(lease.message.id);
    }
    store.flush().await.unwrap();

    let crashed = tempfile::tempdir().unwrap();
    crash_copy(live.path(), crashed.path());
    std::mem::forget(store);

    let expected: BTreeSet<MessageId> = accepted
        .iter()
        .copied()
        .filter(|id| !delivered_ids.contains(id))
        .collect();
    let reopened = Store::open(crashed.path(), Metrics::new()).unwrap();
    assert_eq!(
        pending_ids(&reopened),
        expected,
        "every accepted message is back"
    );
    assert_eq!(
        reopened.pending_count(),
        expected.len() as u64,
        "kept count"
    );
    for id in &delivered_ids {
        let m = reopened
            .message(*id)
            .unwrap()
            .expect("delivered record kept");
        assert!(m.finished_at.is_some(), "{id} stays delivered");
    }
    let big = accepted[120];
    assert_eq!(
        reopened.body(big).unwrap().map(|b| b.len()),
        Some(200_002),
        "the message larger than a journal file"
    );

    // The reopened store goes on journaling after the replay, and a second crash keeps that too.
    let later = reopened.enqueue(message_of(4096, 2000)).await.unwrap();
    let again = tempfile::tempdir().unwrap();
    crash_copy(crashed.path(), again.path());
    std::mem::forget(reopened);
    let reopened = Store::open(again.path(), Metrics::new()).unwrap();
    let mut expected = expected;
    expected.insert(later);
    assert_eq!(pending_ids(&reopened), expected);
    assert_eq!(reopened.pending_count(), expected.len() as u64);
}

/// Between checkpoints, acknowledged writes are on disk only in the journal: without it, the
/// same crash would lose them (this is what makes the tests above meaningful).
#[tokio::test]
async fn between_checkpoints_only_the_journal_holds_acknowledged_writes() {
    let live = tempfile::tempdir().unwrap();
    let store = Store::open(live.path(), Metrics::new()).unwrap();
    let mut accepted = BTreeSet::new();
    for n in 0..20 {
        accepted.insert(store.enqueue(message_of(4096, n)).await.unwrap());
    }
    let with_journal = tempfile::tempdir().unwrap();
    crash_copy(live.path(), with_journal.path());
    let sled_only = tempfile::tempdir().unwrap();
    crash_copy(live.path(), sled_only.path());
    std::mem::forget(store);
    for name in ["journal-0", "journal-1"] {
        std::fs::remove_file(sled_only.path().join(name)).unwrap();
    }
    let without = Store::open(sled_only.path(), Metrics::new()).unwrap();
    assert!(
        pending_ids(&without).len() < accepted.len(),
        "sled alone already held every write; the journal was not needed"
    );
    let with = Store::open(with_journal.path(), Metrics::new()).unwrap();
    assert_eq!(pending_ids(&with), accepted);
    assert_eq!(with.pending_count(), accepted.len() as u64);
}

#[tokio::test]
async fn a_clean_close_leaves_nothing_to_replay_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut accepted = BTreeSet::new();
    for round in 0..3 {
        let store = open_retrying(dir.path(), Metrics::new()).await;
        for n in 0..30 {
            accepted.insert(
                store
                    .enqueue(message_of(4096, round * 100 + n))
                    .await
                    .unwrap(),
            );
        }
        // Delivered messages must not come back from older journal records.
        let leases = store.lease_due(ts(T0), LEASE, 10).unwrap();
        for lease in &leases {
            let _ = store
                .record_attempt(lease, delivered(&lease.message, T0 + 1))
                .await
                .unwrap();
            accepted.remove(&lease.message.id);
        }
        store.flush().await.unwrap();
        assert_eq!(pending_ids(&store), accepted);
    }
    let store = open_retrying(dir.path(), Metrics::new()).await;
    assert_eq!(pending_ids(&store), accepted);
    assert_eq!(store.pending_count(), accepted.len() as u64);
}
