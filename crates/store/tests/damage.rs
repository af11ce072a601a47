//! A damaged sled database: opening reports it (never a panic), checking a data directory
//! never writes into it, and a rebuild brings back everything the damaged files still hold
//! plus everything the journal holds.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use postrider_core::{MessageId, NewMessage};
use postrider_metrics::Metrics;
use postrider_store::{
    CheckVerdict, ListFilter, OpenOptions, RepairError, Store, StoreError, check_data_dir, rebuild,
};

/// Journal files this small make the store checkpoint every ten 100 KB messages.
const SMALL_JOURNAL: u64 = 1024 * 1024;

fn options() -> OpenOptions {
    OpenOptions {
        accept_journal_loss: false,
        journal_bytes: Some(SMALL_JOURNAL),
        ..OpenOptions::default()
    }
}

fn message_of(n: usize) -> NewMessage {
    let mut m = new_message(&[&format!("u{n}@x.test")], T0);
    let mut body = format!("Subject: damage {n}\r\n\r\n").into_bytes();
    body.resize(100_000, b'd');
    body.extend_from_slice(format!("\r\nend of {n}\r\n").as_bytes());
    m.body = body;
    m
}

/// Opens the store at `dir` with journal files of `journal_bytes`, enqueues messages `range`,
/// closes it; returns their ids and numbers.
async fn enqueue_all(
    dir: &Path,
    journal_bytes: u64,
    range: std::ops::Range<usize>,
) -> Vec<(MessageId, usize)> {
    let options = OpenOptions {
        accept_journal_loss: false,
        journal_bytes: Some(journal_bytes),
        ..OpenOptions::default()
    };
    let store = Store::open_with(dir, Metrics::new(), &options).unwrap();
    let mut ids = Vec::new();
    for n in range {
        ids.push((store.enqueue(message_of(n)).await.unwrap(), n));
    }
    store.close().await.unwrap();
    drop(store);
    wait_closed(dir);
    ids
}

/// Waits until a dropped store has let go of sled's lock on `dir/db` (its last writes done).
fn wait_closed(dir: &Path) {
    let db = std::fs::File::open(dir.join("db")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while db.try_lock().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the store never closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Opens `dir`, retrying while a just-closed store still holds sled's lock.
async fn reopen(dir: &Path) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match Store::open_with(dir, Metrics::new(), &options()) {
            Ok(s) => return s,
            Err(StoreError::Sled(e)) if std::time::Instant::now() < deadline => {
                eprintln!("reopen not yet possible: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("reopen failed: {e}"),
        }
    }
}

fn assert_damaged(result: Result<Store, StoreError>, dir: &Path) {
    match result {
        Err(StoreError::DatabaseDamaged { path, detail }) => {
            assert_eq!(path, dir.join("db"), "{detail}");
        }
        Err(e) => panic!("expected DatabaseDamaged, got {e:?}"),
        Ok(_) => panic!("expected DatabaseDamaged, the damaged store opened"),
    }
}

fn stored_ids(store: &Store) -> BTreeSet<MessageId> {
    let filter = ListFilter {
        limit: 1000,
        ..ListFilter::default()
    };
    let page = store.list(&filter, ts(T0)).unwrap();
    assert!(page.next_after.is_none(), "one page holds every message");
    page.messages.into_iter().map(|m| m.id).collect()
}

/// Every file of `dir` with its bytes (the quarantine and journal included).
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            out.extend(snapshot(&entry.path()));
        } else {
            out.push((entry.path(), std::fs::read(entry.path()).unwrap()));
        }
    }
    out.sort();
    out
}

/// A data directory `<base>/live` after two runs of the store (so sled has a snapshot too)
/// with 300 messages of 100 KB and journal files of 1 MiB: many checkpoints, and a journal
/// holding only the last twenty messages. Returns the directory, the number of messages and
/// the size of the database file.
async fn checkpointed_store(base: &Path) -> (std::path::PathBuf, u64, u64) {
    let live = base.join("live");
    enqueue_all(&live, SMALL_JOURNAL, 0..150).await;
    enqueue_all(&live, SMALL_JOURNAL, 150..300).await;
    let len = std::fs::metadata(live.join("db")).unwrap().len();
    (live, 300, len)
}

/// Copies the data directory `from` to a fresh directory under `base`, damaged by `damage`.
fn damaged_copy(
    from: &Path,
    base: &Path,
    name: &str,
    damage: impl FnOnce(&Path),
) -> std::path::PathBuf {
    let to = base.join(name);
    copy_path(from, &to);
    damage(&to.join("db"));
    to
}

/// How opening a damaged copy went.
#[derive(Debug, PartialEq, Eq)]
enum Opened {
    /// Refused with `DatabaseDamaged`.
    Refused,
    /// Opened with every message: the damage hit bytes sled no longer needs, or what sled
    /// lost is still in the journal.
    Whole,
    /// Opened, and the consistency check reports the damage (a page sled reads only on use).
    CheckReportsIt,
}

/// Opens a damaged copy: never a panic, never a silent loss.
fn open_damaged(dir: &Path, messages: u64, what: &str) -> Opened {
    quiet_contained_panics();
    match Store::open_with(dir, Metrics::new(), &options()) {
        Err(StoreError::DatabaseDamaged { path, detail }) => {
            assert_eq!(path, dir.join("db"), "{what}: {detail}");
            Opened::Refused
        }
        Err(e) => panic!("{what}: expected DatabaseDamaged, got {e:?}"),
        Ok(store) => {
            let report = store.check();
            if report.is_clean() {
                assert_eq!(
                    store.pending_count(),
                    messages,
                    "{what}: opened with a loss"
                );
                Opened::Whole
            } else {
                Opened::CheckReportsIt
            }
        }
    }
}

/// Panics that the store contains (reports as errors) are not printed; others are.
fn quiet_contained_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let print = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !postrider_store::panic_is_contained() {
                print(info);
            }
        }));
    });
}

fn flip_byte_at(offset: u64) -> impl FnOnce(&Path) {
    move |db| {
        let mut bytes = std::fs::read(db).unwrap();
        bytes[usize::try_from(offset).unwrap()] ^= 0xff;
        std::fs::write(db, bytes).unwrap();
    }
}

fn truncate_to(len: u64) -> impl FnOnce(&Path) {
    move |db| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(db)
            .unwrap()
            .set_len(len)
            .unwrap()
    }
}

/// Offsets across the whole file: the start of every 8 MiB sled segment and points between.
fn offsets_across(len: u64) -> Vec<u64> {
    let mut out: Vec<u64> = (0..len).step_by(8 * 1024 * 1024).collect();
    out.extend((1..16).map(|i| len * i / 16));
    out.sort_unstable();
    out.dedup();
    out
}

#[tokio::test]
async fn a_flipped_byte_in_the_database_is_reported_as_damage_not_a_panic() {
    let base = tempfile::tempdir().unwrap();
    let (live, messages, len) = checkpointed_store(base.path()).await;
    let mut reported = 0;
    for offset in offsets_across(len) {
        let name = format!("flip-{offset}");
        let dir = damaged_copy(&live, base.path(), &name, flip_byte_at(offset));
        if open_damaged(&dir, messages, &name) == Opened::Refused {
            reported += 1;
            // The failure is the same on every start, not a loop of crashes.
            assert_eq!(open_damaged(&dir, messages, &name), Opened::Refused);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    assert!(reported > 0, "no flipped byte was refused as damage");
}

#[tokio::test]
async fn a_truncated_database_is_reported_as_damage() {
    let base = tempfile::tempdir().unwrap();
    let (live, messages, len) = checkpointed_store(base.path()).await;
    let half = damaged_copy(&live, base.path(), "half", truncate_to(len / 2));
    assert_damaged(Store::open_with(&half, Metrics::new(), &options()), &half);
    for cut in offsets_across(len) {
        let name = format!("truncated-{cut}");
        let dir = damaged_copy(&live, base.path(), &name, truncate_to(cut));
        open_damaged(&dir, messages, &name);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The whole queue is still in the journal: whatever sled lost, a rebuild gives it all back.
#[tokio::test]
async fn a_rebuild_replays_the_journal_into_what_is_salvaged() {
    let dir = tempfile::tempdir().unwrap();
    let accepted = enqueue_all(dir.path(), 64 * 1024 * 1024, 0..200).await;
    flip_byte_at(0)(&dir.path().join("db"));
    let damaged_bytes = std::fs::read(dir.path().join("db")).unwrap();

    let report = rebuild(dir.path()).await.unwrap();
    assert!(report.is_consistent(), "{report}");
    assert_eq!(report.messages, 200, "{report}");
    // The damaged files are kept as they were.
    assert_eq!(
        std::fs::read(report.quarantine.join("db")).unwrap(),
        damaged_bytes
    );
    assert!(report.quarantine.starts_with(dir.path().join("quarantine")));

    let store = reopen(dir.path()).await;
    assert_eq!(store.pending_count(), 200);
    for (id, n) in &accepted {
        assert_eq!(
            store.body(*id).unwrap(),
            Some(message_of(*n).body),
            "body of {id}"
        );
    }
    let newest = accepted.iter().map(|(id, _)| *id).max().unwrap();
    let next = store.enqueue(message_of(1000)).await.unwrap();
    assert!(next > newest, "a new id {next} above every stored one");
}

/// The database went back in time (it lost writes it had checkpointed, as sled does when its
/// log is cut short) and the journal no longer holds them: opening refuses, and a rebuild
/// keeps what the database holds plus what the journal holds, and says what is lost.
#[tokio::test]
async fn a_database_that_lost_checkpointed_writes_is_rebuilt_from_both_sources() {
    let dir = tempfile::tempdir().unwrap();
    let early = enqueue_all(dir.path(), SMALL_JOURNAL, 0..100).await;
    let old = tempfile::tempdir().unwrap();
    let sled_files = ["db", "conf", "blobs"];
    for name in sled_files {
        copy_path(&dir.path().join(name), &old.path().join(name));
    }
    let late = enqueue_all(dir.path(), SMALL_JOURNAL, 100..300).await;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if sled_files.contains(&name.as_str()) || name.starts_with("snap.") {
            remove_path(&entry.path());
        }
    }
    for name in sled_files {
        copy_path(&old.path().join(name), &dir.path().join(name));
    }
    assert_damaged(
        Store::open_with(dir.path(), Metrics::new(), &options()),
        dir.path(),
    );

    let report = rebuild(dir.path()).await.unwrap();
    assert!(report.is_consistent(), "{report}");
    assert_eq!(report.messages_salvaged, 100, "{report}");
    let (_, _, replayed) = report.journal_newer.expect("journal records replayed");
    assert!(report.lost.is_some(), "{report}");
    let store = reopen(dir.path()).await;
    let present = stored_ids(&store);
    assert_eq!(present.len() as u64, 100 + replayed, "{report}");
    let early_ids: BTreeSet<_> = early.iter().map(|(id, _)| *id).collect();
    assert!(early_ids.is_subset(&present), "every salvaged message");
    let newest: BTreeSet<_> = late.iter().rev().take(10).map(|(id, _)| *id).collect();
    assert!(newest.is_subset(&present), "the journaled messages");
    for (id, n) in early.iter().chain(&late) {
        if present.contains(id) {
            assert_eq!(store.body(*id).unwrap(), Some(message_of(*n).body));
        }
    }
    let next = store.enqueue(message_of(1000)).await.unwrap();
    let issued = late.iter().map(|(id, _)| *id).max().unwrap();
    assert!(
        next > issued,
        "{next} reuses no id issued before (up to {issued})"
    );
}

#[tokio::test]
async fn a_rebuild_refuses_while_the_store_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), Metrics::new(), &options()).unwrap();
    store.enqueue(message_of(1)).await.unwrap();
    let before = snapshot(dir.path());
    match rebuild(dir.path()).await {
        Err(RepairError::InUse { path }) => assert_eq!(path, dir.path().join("db")),
        other => panic!("expected InUse, got {other:?}"),
    }
    assert_eq!(snapshot(dir.path()).len(), before.len(), "nothing moved");
    assert!(!dir.path().join("quarantine").exists());
}

#[tokio::test]
async fn checking_a_data_directory_never_writes_into_it() {
    let dir = tempfile::tempdir().unwrap();
    enqueue_all(dir.path(), SMALL_JOURNAL, 0..50).await;
    let scratch = tempfile::tempdir().unwrap();

    let before = snapshot(dir.path());
    let healthy = check_data_dir(dir.path(), scratch.path()).await.unwrap();
    assert_eq!(healthy.verdict(), CheckVerdict::Clean, "{healthy}");
    assert_eq!(healthy.queue.as_ref().unwrap().unfinished, 50);
    assert!(
        snapshot(dir.path()) == before,
        "the check changed the data directory"
    );

    truncate_to(0)(&dir.path().join("db"));
    let before = snapshot(dir.path());
    let damaged = check_data_dir(dir.path(), scratch.path()).await.unwrap();
    assert_eq!(damaged.verdict(), CheckVerdict::Problems, "{damaged}");
    let text = damaged.to_string();
    assert!(text.contains("DAMAGED"), "{text}");
    assert!(
        text.contains(&dir.path().join("db").display().to_string()),
        "{text}"
    );
    let rebuilt = damaged.rebuild.as_ref().expect("a rebuild of the copy");
    assert!(rebuilt.is_consistent(), "{text}");
    assert!(rebuilt.messages > 0, "{text}");
    assert!(
        snapshot(dir.path()) == before,
        "the check changed the data directory"
    );
    assert_eq!(
        std::fs::read_dir(scratch.path()).unwrap().count(),
        0,
        "the copies are removed"
    );
}

fn copy_path(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_path(&entry.path(), &to.join(entry.file_name()));
        }
    } else if from.exists() {
        std::fs::copy(from, to).unwrap();
    }
}

fn remove_path(path: &Path) {
    if path.is_dir() {
        std::fs::remove_dir_all(path).unwrap();
    } else {
        std::fs::remove_file(path).unwrap();
    }
}
