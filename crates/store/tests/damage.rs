//! A damaged sled database: opening reports it, never a panic and never a silent loss.

mod common;

use std::path::Path;

use common::*;
use postrider_core::{MessageId, NewMessage};
use postrider_metrics::Metrics;
use postrider_store::{OpenOptions, Store, StoreError};

/// Journal files this small make the store checkpoint every ten 100 KB messages.
const SMALL_JOURNAL: u64 = 1024 * 1024;

fn options() -> OpenOptions {
    OpenOptions {
        accept_journal_loss: false,
        journal_bytes: Some(SMALL_JOURNAL),
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

fn assert_damaged(result: Result<Store, StoreError>, dir: &Path) {
    match result {
        Err(StoreError::DatabaseDamaged { path, detail }) => {
            assert_eq!(path, dir.join("db"), "{detail}");
        }
        Err(e) => panic!("expected DatabaseDamaged, got {e:?}"),
        Ok(_) => panic!("expected DatabaseDamaged, the damaged store opened"),
    }
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
