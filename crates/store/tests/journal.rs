//! The write-ahead journal: what a crash leaves on disk (the files as they are while the store
//! is still running) must reopen with every acknowledged write, through journal files that
//! wrapped around several checkpoints and records larger than a journal file.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use postrider_core::{MessageId, NewMessage};
use postrider_metrics::Metrics;
use postrider_store::{DamageKind, ListFilter, OpenOptions, Store, StoreError};

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
    let without = open_accepting_loss(sled_only.path(), Metrics::new()).unwrap();
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

/// A relay that accepted `n` messages of 4 KiB and then crashed: the files as they were,
/// with everything after the last checkpoint only in the journal. Returns the directory and
/// the accepted ids in order.
async fn crashed_with(n: usize) -> (tempfile::TempDir, Vec<MessageId>) {
    let live = tempfile::tempdir().unwrap();
    let store = Store::open(live.path(), Metrics::new()).unwrap();
    let mut accepted = Vec::new();
    for i in 0..n {
        accepted.push(store.enqueue(message_of(4096, i)).await.unwrap());
    }
    let crashed = tempfile::tempdir().unwrap();
    crash_copy(live.path(), crashed.path());
    std::mem::forget(store);
    (crashed, accepted)
}

/// Byte offsets of the records in a journal file (after its 64-byte header), read with the
/// documented layout: `"PRJ1" ‖ be_u32(len) ‖ be_u32(crc) ‖ body`.
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut at = 64;
    let mut out = Vec::new();
    while bytes.get(at..at + 4) == Some(&b"PRJ1"[..]) {
        out.push(at);
        let len = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        at += 12 + len;
    }
    out
}

/// Opens as `postrider serve --accept-journal-loss` does.
fn open_accepting_loss(dir: &Path, metrics: Metrics) -> Result<Store, StoreError> {
    let options = OpenOptions {
        accept_journal_loss: true,
        ..OpenOptions::default()
    };
    Store::open_with(dir, metrics, &options)
}

fn open_counting(dir: &Path) -> (Result<Store, StoreError>, Metrics) {
    let metrics = Metrics::new();
    (Store::open(dir, metrics.clone()), metrics)
}

fn quarantined(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("quarantine"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_flipped_byte_in_the_journal_costs_only_the_message_its_record_carried() {
    let (dir, accepted) = crashed_with(300).await;
    let path = dir.path().join("journal-0");
    let mut bytes = std::fs::read(&path).unwrap();
    let offsets = record_offsets(&bytes);
    assert_eq!(offsets.len(), 300, "one record per accepted message");
    bytes[offsets[86] + 40] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let (store, metrics) = open_counting(dir.path());
    let store = store.expect("opens past the damage");
    let mut expected: BTreeSet<MessageId> = accepted.iter().copied().collect();
    expected.remove(&accepted[86]);
    assert_eq!(
        pending_ids(&store),
        expected,
        "all but the damaged record's message"
    );
    assert_eq!(store.pending_count(), 299);
    let report = store.journal_report();
    assert_eq!(report.damage.len(), 1, "{report:?}");
    assert_eq!(report.damage[0].kind, DamageKind::Corrupt);
    assert_eq!(report.damage[0].lost, Some((87, 87)));
    assert_eq!(metrics.store_corrupt_records.get(), 1);
    let q = quarantined(dir.path());
    assert!(q.iter().any(|f| f.starts_with("journal-0-at-")), "{q:?}");
    assert!(q.iter().any(|f| f.starts_with("journal-damage-")), "{q:?}");
    // Reported once: the next open finds nothing to report.
    drop(store);
    let (again, metrics) = open_counting(dir.path());
    let again = again.unwrap();
    assert!(again.journal_report().is_clean());
    assert_eq!(metrics.store_corrupt_records.get(), 0);
    assert_eq!(pending_ids(&again), expected);
}

#[tokio::test]
async fn random_flips_in_the_journal_cost_at_most_the_records_they_hit() {
    let (dir, accepted) = crashed_with(300).await;
    let path = dir.path().join("journal-0");
    let mut bytes = std::fs::read(&path).unwrap();
    let offsets = record_offsets(&bytes);
    let end = offsets[299] + (offsets[299] - offsets[298]);
    // 20 flips at positions spread over the records (a fixed pseudo-random walk).
    let mut hit = BTreeSet::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = offsets[0] + (x as usize % (end - offsets[0]));
        bytes[at] ^= 0xFF;
        hit.insert(offsets.iter().rposition(|&o| o <= at).unwrap());
    }
    std::fs::write(&path, &bytes).unwrap();

    let (store, metrics) = open_counting(dir.path());
    let store = store.expect("opens past the damage");
    let expected: BTreeSet<MessageId> = accepted
        .iter()
        .enumerate()
        .filter(|(i, _)| !hit.contains(i))
        .map(|(_, id)| *id)
        .collect();
    assert_eq!(pending_ids(&store), expected);
    assert_eq!(
        store.journal_report().lost_records(),
        hit.len() as u64,
        "{:?}",
        store.journal_report()
    );
    assert_eq!(metrics.store_corrupt_records.get(), hit.len() as u64);
}

#[tokio::test]
async fn a_truncated_journal_keeps_what_is_left_and_reports_the_cut() {
    let (dir, accepted) = crashed_with(300).await;
    let path = dir.path().join("journal-0");
    let bytes = std::fs::read(&path).unwrap();
    let offsets = record_offsets(&bytes);
    let cut = offsets[150] + 100;
    std::fs::write(&path, &bytes[..cut]).unwrap();

    let (store, metrics) = open_counting(dir.path());
    let store = store.expect("a truncated file does not refuse the open");
    let expected: BTreeSet<MessageId> = accepted[..150].iter().copied().collect();
    assert_eq!(pending_ids(&store), expected);
    let report = store.journal_report();
    let t = report
        .damage
        .iter()
        .find(|d| d.kind == DamageKind::Truncated)
        .expect("the cut is reported");
    assert_eq!(t.lost, Some((151, 151)));
    assert!(t.extent_unknown);
    assert!(t.to_string().contains("journal-0"), "{t}");
    assert!(metrics.store_corrupt_records.get() >= 1);
}

#[tokio::test]
async fn deleted_journal_files_refuse_the_open_until_the_loss_is_accepted() {
    let (dir, _accepted) = crashed_with(30).await;
    for name in ["journal-0", "journal-1"] {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    let (store, _) = open_counting(dir.path());
    let err = store.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, StoreError::JournalIncomplete { .. }),
        "{text}"
    );
    assert!(
        text.contains("journal-0: file missing") && text.contains("journal-1: file missing"),
        "{text}"
    );
    assert!(
        text.contains("--accept-journal-loss") && text.contains("store check"),
        "{text}"
    );
    // Refusing changed nothing: it refuses again.
    assert!(open_counting(dir.path()).0.is_err());

    let metrics = Metrics::new();
    let store =
        open_accepting_loss(dir.path(), metrics.clone()).expect("opens when the loss is accepted");
    assert!(!store.journal_report().is_clean());
    assert!(metrics.store_corrupt_records.get() >= 2);
    assert!(
        !quarantined(dir.path()).is_empty(),
        "the loss is written down"
    );
    drop(store);
    // The files exist again and the loss is not reported twice.
    let (again, _) = open_counting(dir.path());
    assert!(again.unwrap().journal_report().is_clean());
}

#[tokio::test]
async fn after_a_clean_close_the_journal_files_are_not_needed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Metrics::new()).unwrap();
    let mut accepted = BTreeSet::new();
    for n in 0..40 {
        accepted.insert(store.enqueue(message_of(4096, n)).await.unwrap());
    }
    store.close().await.unwrap();
    drop(store);
    for name in ["journal-0", "journal-1"] {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    let (store, metrics) = open_counting(dir.path());
    let store = store.expect("nothing was needed from the journal");
    assert_eq!(pending_ids(&store), accepted);
    assert!(store.journal_report().is_clean());
    assert_eq!(metrics.store_corrupt_records.get(), 0);
    // The mark is gone once the store runs again: deleting the files now would refuse.
    let more = store.enqueue(message_of(4096, 99)).await.unwrap();
    let crashed = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), crashed.path());
    std::mem::forget(store);
    for name in ["journal-0", "journal-1"] {
        std::fs::remove_file(crashed.path().join(name)).unwrap();
    }
    assert!(matches!(
        open_counting(crashed.path()).0,
        Err(StoreError::JournalIncomplete { .. })
    ));
    let _ = more;
}

/// A quiet relay's database trails the journal by one checkpoint interval, not by a whole
/// journal file: after the interval, sled's own files hold every acknowledged write.
#[tokio::test]
async fn sled_catches_up_with_the_journal_after_the_checkpoint_interval() {
    let live = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        live.path(),
        Metrics::new(),
        &OpenOptions {
            checkpoint_interval: Some(std::time::Duration::from_millis(300)),
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let mut accepted = BTreeSet::new();
    for n in 0..20 {
        accepted.insert(store.enqueue(message_of(4096, n)).await.unwrap());
    }
    let sled_only = tempfile::tempdir().unwrap();
    // Waits for the timed checkpoint (a wait with a deadline, not a speed check).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let _ = std::fs::remove_dir_all(sled_only.path());
        crash_copy(live.path(), sled_only.path());
        for name in ["journal-0", "journal-1"] {
            std::fs::remove_file(sled_only.path().join(name)).unwrap();
        }
        let without = open_accepting_loss(sled_only.path(), Metrics::new()).unwrap();
        if pending_ids(&without) == accepted {
            break;
        }
        drop(without);
        assert!(
            std::time::Instant::now() < deadline,
            "sled never caught up with the journal"
        );
    }
    std::mem::forget(store);
}

/// The journal goes on across restarts instead of starting over, so it keeps earlier runs'
/// records as a second copy (what `store rebuild` replays when the database is lost).
#[tokio::test]
async fn the_journal_goes_on_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let store = Store::open(dir.path(), Metrics::new()).unwrap();
        for n in 0..10 {
            store
                .enqueue(message_of(1024, round * 100 + n))
                .await
                .unwrap();
        }
        if round == 1 {
            store.close().await.unwrap();
        }
        drop(store);
    }
    let bytes = std::fs::read(dir.path().join("journal-0")).unwrap();
    assert_eq!(record_offsets(&bytes).len(), 30, "all three runs' records");
}
