//! Recognising a damaged database.
//!
//! sled 0.34 fails three ways on a damaged `db` file: it panics (a flipped byte in a segment
//! header: "tried to serialize Uninitialized"), it reports corruption (a snapshot pointing past
//! a truncated log), or it recovers silently up to the damage and drops everything after it
//! (a truncated log without a snapshot: often an empty database). [`contain`] turns the panics
//! into errors, [`guarded`] names panics and corruption [`StoreError::DatabaseDamaged`], and
//! [`check_lost_writes`] notices the silent loss: the database lacks writes that the journal shows it
//! had already made durable at a checkpoint.

use std::any::Any;
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use crate::error::{Result, StoreError};
use crate::journal::{JOURNAL_FILE_NAMES, JOURNAL_SEQ_KEY, current_records};

thread_local! {
    /// How many [`contain`] calls the current thread is inside.
    static CONTAINING: Cell<u32> = const { Cell::new(0) };
}

/// Whether the current thread is inside a store call that turns a panic in sled into an error
/// (reported to the caller as [`StoreError::DatabaseDamaged`] or as a salvage note). Panic
/// hooks use it to log such a panic quietly rather than as a crash.
pub fn panic_is_contained() -> bool {
    CONTAINING.with(|c| c.get() > 0)
}

/// Leaves a [`contain`] call, also when unwinding.
struct Contained;

impl Drop for Contained {
    fn drop(&mut self) {
        CONTAINING.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// Runs `f`; a panic inside it comes back as `Err` with the panic's message.
pub(crate) fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    CONTAINING.with(|c| c.set(c.get().saturating_add(1)));
    let _contained = Contained;
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| panic_message(payload.as_ref()))
}

/// The message a panic was raised with.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// [`StoreError::DatabaseDamaged`] for the database file `path`.
pub(crate) fn damaged(path: &Path, detail: String) -> StoreError {
    StoreError::DatabaseDamaged {
        path: path.to_owned(),
        detail,
    }
}

/// Runs `f`, which works on the database file `path`: a panic inside it and an error that
/// means damage ([`as_damage`]) come back as [`StoreError::DatabaseDamaged`].
pub(crate) fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match contain(f) {
        Ok(result) => result.map_err(|e| as_damage(e, path)),
        Err(panic) => Err(damaged(path, format!("sled panicked: {panic}"))),
    }
}

/// Names errors that mean the database file `path` is damaged (sled's corruption and bug
/// reports, a meta record that does not decode) as such; other errors (I/O, permissions, a full
/// disk, a newer format) stay as they are.
pub(crate) fn as_damage(error: StoreError, path: &Path) -> StoreError {
    match error {
        StoreError::Sled(sled::Error::Corruption { at, .. }) => damaged(
            path,
            match at {
                Some(at) => format!("sled read corrupt data at {at:?}"),
                None => "sled read corrupt data".to_owned(),
            },
        ),
        StoreError::Sled(sled::Error::ReportableBug(what)) => {
            damaged(path, format!("sled failed: {what}"))
        }
        e @ StoreError::Corrupt { .. } => damaged(path, e.to_string()),
        other => other,
    }
}

/// The sequence number of the last journaled write the database holds (`meta/journal_seq`;
/// 0: none).
pub(crate) fn database_seq(meta: &sled::Tree) -> Result<u64> {
    Ok(meta
        .get(JOURNAL_SEQ_KEY)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// Fails with [`StoreError::DatabaseDamaged`] for the database file `path` when the database
/// of the data directory `dir` lacks writes it had made durable. A journal file is written
/// again only after the checkpoint covering its records finished, so an intact database holds
/// every sequence number below the first record the journal files still hold. When a journal
/// file is missing, the journal is the damaged part, which the journal's own checks report.
pub(crate) fn check_lost_writes(
    dir: &Path,
    path: &Path,
    format_version: Option<u32>,
    meta: &sled::Tree,
) -> Result<()> {
    if !JOURNAL_FILE_NAMES.iter().all(|n| dir.join(n).is_file()) {
        return Ok(());
    }
    let Some(first) = first_journal_seq(dir)? else {
        return Ok(());
    };
    match describe_lost_writes(format_version.is_some(), database_seq(meta)?, first) {
        Some(detail) => Err(damaged(path, detail)),
        None => Ok(()),
    }
}

/// [`check_lost_writes`] given whether the database holds any data (its format version), the
/// sequence number it holds and the first one the journal holds.
fn describe_lost_writes(has_data: bool, database_seq: u64, journal_first: u64) -> Option<String> {
    if !has_data {
        Some(format!(
            "it reads as empty, yet the journal holds writes from sequence {journal_first} on: \
             its contents were lost"
        ))
    } else if journal_first > database_seq.saturating_add(1) {
        Some(format!(
            "it holds journaled writes up to sequence {database_seq}, yet the journal starts at \
             {journal_first}: writes {}..={} it had made durable are gone",
            database_seq + 1,
            journal_first - 1
        ))
    } else {
        None
    }
}

/// The lowest sequence number at the start of a journal file in `dir` (where each file's
/// records begin), or `None` when neither starts with a readable record.
pub(crate) fn first_journal_seq(dir: &Path) -> Result<Option<u64>> {
    let mut first: Option<u64> = None;
    for name in JOURNAL_FILE_NAMES {
        let seq =
            first_record_seq(&dir.join(name)).map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        first = match (first, seq) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(first)
}

/// The sequence number of the first record of the current round of the journal file at
/// `path`, if it has one.
fn first_record_seq(path: &Path) -> std::io::Result<Option<u64>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(current_records(&bytes).first().map(|r| r.seq)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Op, TreeId, encode_record};

    #[test]
    fn a_panic_becomes_an_error_and_is_marked_contained_while_it_happens() {
        assert!(!panic_is_contained());
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| assert!(panic_is_contained())));
        let caught = contain(|| -> u32 { panic!("tried to serialize Uninitialized") });
        std::panic::set_hook(previous);
        assert_eq!(caught, Err("tried to serialize Uninitialized".to_owned()));
        assert!(!panic_is_contained(), "left again after the panic");
        assert_eq!(contain(|| 7), Ok(7));
        let formatted = contain(|| -> u32 { panic!("page {} missing", 3) });
        assert_eq!(formatted, Err("page 3 missing".to_owned()));
    }

    #[test]
    fn corruption_is_damage_and_io_errors_stay_io_errors() {
        let path = Path::new("/data/db");
        let corrupt = as_damage(
            StoreError::Sled(sled::Error::Corruption { at: None, bt: () }),
            path,
        );
        assert!(
            matches!(&corrupt, StoreError::DatabaseDamaged { path: p, .. } if p == path),
            "{corrupt:?}"
        );
        assert!(corrupt.to_string().contains("/data/db"), "{corrupt}");
        let bug = as_damage(
            StoreError::Sled(sled::Error::ReportableBug("no meta".into())),
            path,
        );
        assert!(matches!(bug, StoreError::DatabaseDamaged { .. }));
        let io = as_damage(
            StoreError::Sled(sled::Error::Io(std::io::Error::from(
                std::io::ErrorKind::PermissionDenied,
            ))),
            path,
        );
        assert!(matches!(io, StoreError::Sled(sled::Error::Io(_))), "{io:?}");
    }

    #[test]
    fn a_database_behind_the_journal_has_lost_writes() {
        assert_eq!(describe_lost_writes(true, 300, 281), None, "overlap");
        assert_eq!(describe_lost_writes(true, 280, 281), None, "adjacent");
        let lost = describe_lost_writes(true, 278, 281).unwrap();
        assert!(lost.contains("279..=280"), "{lost}");
        assert!(describe_lost_writes(false, 0, 1).is_some(), "emptied");
    }

    #[test]
    fn the_journal_starts_at_the_lowest_first_record() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(first_journal_seq(dir.path()).unwrap(), None);
        let op = Op {
            tree: TreeId::Meta,
            key: b"k".to_vec().into(),
            value: Some(b"v".to_vec().into()),
        };
        let file = |seqs: &[u64]| {
            let mut buf = Vec::new();
            for &s in seqs {
                encode_record(s, std::slice::from_ref(&op), &mut buf);
            }
            buf.resize(buf.len() + 4096, 0);
            buf
        };
        std::fs::write(dir.path().join(JOURNAL_FILE_NAMES[0]), file(&[21, 22])).unwrap();
        std::fs::write(dir.path().join(JOURNAL_FILE_NAMES[1]), file(&[11, 12])).unwrap();
        assert_eq!(first_journal_seq(dir.path()).unwrap(), Some(11));
        // A torn first record does not count.
        let mut torn = file(&[11]);
        torn[12 + 3] ^= 1; // in the body of the record (after its 12-byte header)
        std::fs::write(dir.path().join(JOURNAL_FILE_NAMES[1]), torn).unwrap();
        assert_eq!(first_journal_seq(dir.path()).unwrap(), Some(21));
    }
}
