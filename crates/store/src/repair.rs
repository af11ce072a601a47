//! Offline repair of a data directory whose sled database is damaged: [`check_data_dir`]
//! (`postrider store check`) examines a copy, [`rebuild`] (`postrider store rebuild`) replaces
//! the database with what can still be read of it plus the journal.
//!
//! A rebuild never deletes: the damaged sled files are moved to
//! `<data_dir>/quarantine/sled-<UTC time>/`. What sled can still read of a copy of them is
//! written, tree by tree, into a new database, which then takes the place of the old one;
//! opening it replays every journal record it lacks.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use postrider_metrics::Metrics;

use crate::check::{ConsistencyReport, count_unfinished};
use crate::codec::{DATA_FORMAT_VERSION, FORMAT_VERSION_KEY, PENDING_COUNT_KEY};
use crate::damage::{check_lost_writes, contain, database_seq, guarded};
use crate::error::StoreError;
use crate::journal::{
    JOURNAL_FILE_NAMES, JOURNAL_SEQ_KEY, JournalReport, TreeId, current_records, inspect_journal,
};
use crate::{OpenOptions, Store, clock_now, open_database, sled_settings};

/// Why a data directory could not be checked or rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// A running Postrider holds the database (sled locks `<data_dir>/db` while it is open).
    #[error("{path} is in use by a running Postrider: stop the relay first")]
    InUse {
        /// The locked database file.
        path: PathBuf,
    },
    /// The directory holds neither a database nor a journal.
    #[error("{path} is not a Postrider data directory (no db, no journal files)")]
    NotADataDir {
        /// The directory.
        path: PathBuf,
    },
    /// A file operation failed.
    #[error("cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The store reported an error (opening the result, reading the database).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Result alias of this module.
type Result<T, E = RepairError> = std::result::Result<T, E>;

/// A [`RepairError::Io`] constructor for `map_err`.
fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RepairError {
    let path = path.to_owned();
    move |source| RepairError::Io { what, path, source }
}

/// What was read out of one tree of the damaged database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalvagedTree {
    /// The tree's name.
    pub name: String,
    /// Key/value pairs copied into the new database.
    pub entries: u64,
    /// Why reading stopped before the end of the tree (an error or a panic inside sled).
    pub stopped: Option<String>,
}

/// What [`rebuild`] did.
#[derive(Debug, Clone)]
pub struct RebuildReport {
    /// Where the damaged sled files were moved.
    pub quarantine: PathBuf,
    /// Why sled could not open the damaged files at all (then nothing was salvaged).
    pub unreadable: Option<String>,
    /// Per tree, what was salvaged.
    pub trees: Vec<SalvagedTree>,
    /// `meta/journal_seq` as salvaged: the last journaled write the old database held.
    pub salvaged_journal_seq: Option<u64>,
    /// Records in the journal files newer than what the new database holds (first and last
    /// sequence number, count): what opening it replays.
    pub journal_newer: Option<(u64, u64, u64)>,
    /// Journaled writes held by neither the salvaged database nor the journal (first and last
    /// sequence number).
    pub lost: Option<(u64, u64)>,
    /// Message records salvaged.
    pub messages_salvaged: u64,
    /// Message records after the journal was replayed.
    pub messages: u64,
    /// The consistency check of the result.
    pub consistency: ConsistencyReport,
}

impl RebuildReport {
    /// Whether the rebuilt store is consistent.
    pub fn is_consistent(&self) -> bool {
        self.consistency.is_clean()
    }
}

impl fmt::Display for RebuildReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "damaged sled files kept in {}",
            self.quarantine.display()
        )?;
        self.write_outcome(f)
    }
}

impl RebuildReport {
    /// What was salvaged, what the journal added, and the consistency of the result.
    fn write_outcome(&self, f: &mut dyn fmt::Write) -> fmt::Result {
        match &self.unreadable {
            Some(why) => writeln!(f, "salvaged: nothing, sled cannot open them: {why}")?,
            None => {
                writeln!(f, "salvaged:")?;
                for t in &self.trees {
                    write!(f, "  {}: {} entries", t.name, t.entries)?;
                    match &t.stopped {
                        Some(why) => writeln!(f, ", the rest unreadable: {why}")?,
                        None => writeln!(f)?,
                    }
                }
            }
        }
        match self.salvaged_journal_seq {
            Some(seq) => writeln!(f, "journal position salvaged: sequence {seq}")?,
            None => writeln!(f, "journal position lost: every journal record is replayed")?,
        }
        match self.journal_newer {
            Some((first, last, n)) => {
                writeln!(f, "journal: {n} newer records replayed ({first}..={last})")?
            }
            None => writeln!(f, "journal: no newer records")?,
        }
        if let Some((first, last)) = self.lost {
            writeln!(
                f,
                "lost: journaled writes {first}..={last} are in neither the database nor the journal"
            )?;
        }
        writeln!(
            f,
            "messages: {} salvaged, {} after the journal",
            self.messages_salvaged, self.messages
        )?;
        write!(f, "{}", self.consistency)
    }
}

/// Rebuilds the data directory `data_dir` (the relay must be stopped): moves the sled files to
/// `quarantine/sled-<UTC time>/`, writes what sled can still read of them into a new database,
/// opens it (which replays every journal record newer than the salvaged `meta/journal_seq`, or
/// all of them when that was lost), checks its consistency and closes it.
pub async fn rebuild(data_dir: &Path) -> Result<RebuildReport> {
    let db_path = data_dir.join("db");
    let lock = lock_database(&db_path)?;
    if lock.is_none() && !has_journal(data_dir) {
        return Err(RepairError::NotADataDir {
            path: data_dir.to_owned(),
        });
    }
    let quarantine_root = data_dir.join("quarantine");
    std::fs::create_dir_all(&quarantine_root).map_err(io("create", &quarantine_root))?;
    let staged = tempfile::Builder::new()
        .prefix("rebuild-")
        .tempdir_in(&quarantine_root)
        .map_err(io("create a directory in", &quarantine_root))?;
    let mut salvage = salvage_into(data_dir, &quarantine_root, staged.path())?;
    let journal = JournalSummary::read(data_dir)?;
    let replay_from = finish_meta(staged.path(), salvage.journal_seq, journal.first)?;
    advance_ids(
        staged.path(),
        salvage.next_id.max(journal.max_message_id.unwrap_or(0)),
    )?;
    let quarantine = new_quarantine_dir(&quarantine_root)?;
    move_sled_files(data_dir, &quarantine)?;
    move_sled_files(staged.path(), data_dir)?;
    drop(lock);
    tracing::info!(quarantine = %quarantine.display(), "database replaced by what could be salvaged of it");

    wait_released(&db_path)?;
    let store = Store::open_with(
        data_dir,
        Metrics::new(),
        &OpenOptions {
            accept_journal_loss: true,
            journal_bytes: journal.file_bytes,
            ..OpenOptions::default()
        },
    )?;
    store.recount_pending().await?;
    let consistency = store.check();
    let messages = store.inner.trees.messages.len() as u64;
    store.close().await?;
    drop(store);
    wait_for_release(&db_path).await?;
    salvage.trees.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(RebuildReport {
        quarantine,
        unreadable: salvage.unreadable,
        messages_salvaged: salvage
            .trees
            .iter()
            .find(|t| t.name == "messages")
            .map_or(0, |t| t.entries),
        trees: salvage.trees,
        salvaged_journal_seq: salvage.journal_seq,
        journal_newer: journal.newer_than(replay_from),
        lost: salvage
            .journal_seq
            .zip(journal.first)
            .filter(|&(held, first)| first > held.saturating_add(1))
            .map(|(held, first)| (held + 1, first - 1)),
        messages,
        consistency,
    })
}

impl Store {
    /// Counts the unfinished messages again and stores the count: the journal records a
    /// rebuild replays carry `meta/pending_count` as it was when they were written, which
    /// differs when writes were lost.
    async fn recount_pending(&self) -> Result<(), StoreError> {
        let count = count_unfinished(&self.inner.trees)?;
        self.write(|tx| tx.insert(TreeId::Meta, PENDING_COUNT_KEY, &count.to_be_bytes()[..]))?;
        self.add_pending(count - i64::try_from(self.pending_count()).unwrap_or(i64::MAX));
        self.durable().await
    }
}

/// Takes sled's lock on the database file (a running relay holds it); `None` when there is no
/// database file.
fn lock_database(path: &Path) -> Result<Option<File>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("open", path)(e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(RepairError::InUse {
            path: path.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io("lock", path)(e)),
    }
}

/// How long [`wait_for_release`] waits.
const RELEASE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until the store just dropped has let go of sled's lock on `path` (its committer
/// finishes in the background), so that the caller can open the database again at once.
async fn wait_for_release(path: &Path) -> Result<()> {
    let deadline = std::time::Instant::now() + RELEASE_PATIENCE;
    loop {
        match lock_database(path) {
            Err(RepairError::InUse { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => return other.map(drop),
        }
    }
}

/// Waits (up to [`RELEASE_PATIENCE`]) until no handle of this process holds sled's lock on the
/// database file `path` any more: a dropped `sled::Db` lets go of it only once sled's
/// background threads have dropped their references, so opening the same files again right
/// away can find them still locked.
fn wait_released(path: &Path) -> Result<()> {
    let deadline = std::time::Instant::now() + RELEASE_PATIENCE;
    loop {
        match lock_database(path) {
            Err(RepairError::InUse { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.map(drop),
        }
    }
}

/// Whether `dir` holds a journal file.
fn has_journal(dir: &Path) -> bool {
    JOURNAL_FILE_NAMES.iter().any(|n| dir.join(n).is_file())
}

/// Whether the directory entry `name` belongs to sled (its log, its config, its blob files,
/// its snapshots).
fn is_sled_file(name: &str) -> bool {
    matches!(name, "db" | "conf" | "blobs") || name.starts_with("snap.")
}

/// The sled files of `dir`.
fn sled_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("read", dir))? {
        let entry = entry.map_err(io("read", dir))?;
        if entry.file_name().to_str().is_some_and(is_sled_file) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Moves the sled files of `from` into the directory `to`.
fn move_sled_files(from: &Path, to: &Path) -> Result<()> {
    for path in sled_files(from)? {
        let target = to.join(path.file_name().unwrap_or_default());
        std::fs::rename(&path, &target).map_err(io("move", &path))?;
    }
    Ok(())
}

/// Copies the file or directory `from` to `to` (directories with everything in them).
fn copy_entry(from: &Path, to: &Path) -> Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to).map_err(io("create", to))?;
        for entry in std::fs::read_dir(from).map_err(io("read", from))? {
            let entry = entry.map_err(io("read", from))?;
            copy_entry(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else {
        std::fs::copy(from, to).map_err(io("copy", from))?;
        Ok(())
    }
}

/// Copies the sled files of `from` and, with `journal`, its journal files into `to`.
fn copy_data_files(from: &Path, to: &Path, journal: bool) -> Result<()> {
    std::fs::create_dir_all(to).map_err(io("create", to))?;
    for path in sled_files(from)? {
        copy_entry(&path, &to.join(path.file_name().unwrap_or_default()))?;
    }
    if journal {
        for name in JOURNAL_FILE_NAMES {
            let path = from.join(name);
            if path.is_file() {
                copy_entry(&path, &to.join(name))?;
            }
        }
    }
    Ok(())
}

/// A new directory `quarantine/sled-<UTC time>` (with a counter when that exists already).
fn new_quarantine_dir(root: &Path) -> Result<PathBuf> {
    let stamp = quarantine_stamp(&clock_now().to_rfc3339());
    for n in 1..=100u32 {
        let name = match n {
            1 => format!("sled-{stamp}"),
            n => format!("sled-{stamp}-{n}"),
        };
        let path = root.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io("create", &path)(e)),
        }
    }
    Err(io("create a directory in", root)(std::io::Error::from(
        std::io::ErrorKind::AlreadyExists,
    )))
}

/// `2026-11-23T05:19:57.123Z` → `20261123T051957Z`.
fn quarantine_stamp(rfc3339: &str) -> String {
    let seconds = rfc3339.split('.').next().unwrap_or(rfc3339);
    let mut out: String = seconds.chars().filter(|c| *c != '-' && *c != ':').collect();
    out.push('Z');
    out
}

/// What [`salvage_into`] read.
#[derive(Debug, Default)]
struct Salvage {
    unreadable: Option<String>,
    trees: Vec<SalvagedTree>,
    journal_seq: Option<u64>,
    /// Lower bound of the id generator: above every message id seen and the old generator.
    next_id: u64,
}

/// Creates a database in `staged` holding what sled can still read of the sled files of
/// `data_dir` (read from a copy, made in a temporary directory under `scratch`): each tree up
/// to the first entry that fails or panics.
fn salvage_into(data_dir: &Path, scratch: &Path, staged: &Path) -> Result<Salvage> {
    let copy = tempfile::Builder::new()
        .prefix("salvage-")
        .tempdir_in(scratch)
        .map_err(io("create a directory in", scratch))?;
    copy_data_files(data_dir, copy.path(), false)?;
    let target = sled_settings(sled::Config::new().path(staged))
        .open()
        .map_err(StoreError::from)?;
    let mut salvage = Salvage::default();
    let opened = contain(|| sled_settings(sled::Config::new().path(copy.path())).open());
    let source = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(e)) => {
            salvage.unreadable = Some(e.to_string());
            target.flush().map_err(StoreError::from)?;
            return Ok(salvage);
        }
        Err(panic) => {
            salvage.unreadable = Some(format!("sled panicked: {panic}"));
            target.flush().map_err(StoreError::from)?;
            return Ok(salvage);
        }
    };
    for name in contain(|| source.tree_names()).unwrap_or_default() {
        let (tree, max_id) = salvage_tree(&source, &name, &target)?;
        salvage.next_id = salvage.next_id.max(max_id);
        salvage.trees.push(tree);
    }
    if let Ok(Ok(next)) = contain(|| source.generate_id()) {
        salvage.next_id = salvage.next_id.max(next);
    }
    let meta = target.open_tree("meta").map_err(StoreError::from)?;
    salvage.journal_seq = meta
        .contains_key(JOURNAL_SEQ_KEY)
        .map_err(StoreError::from)?
        .then(|| database_seq(&meta))
        .transpose()?;
    target.flush().map_err(StoreError::from)?;
    // Dropping the damaged database may meet the damage again.
    let _ = contain(move || drop(source));
    Ok(salvage)
}

/// Copies the tree `name` of `from` into `into` up to the first entry that cannot be read.
/// Also returns the largest message id seen (keys of `messages` and `bodies` start with one).
fn salvage_tree(
    from: &sled::Db,
    name: &sled::IVec,
    into: &sled::Db,
) -> Result<(SalvagedTree, u64)> {
    let mut out = SalvagedTree {
        name: String::from_utf8_lossy(name).into_owned(),
        entries: 0,
        stopped: None,
    };
    let has_ids = matches!(out.name.as_str(), "messages" | "bodies" | "bounce_inbox");
    let mut max_id = 0;
    let tree = match contain(|| from.open_tree(name)) {
        Ok(Ok(tree)) => tree,
        Ok(Err(e)) => {
            out.stopped = Some(e.to_string());
            return Ok((out, max_id));
        }
        Err(panic) => {
            out.stopped = Some(format!("sled panicked: {panic}"));
            return Ok((out, max_id));
        }
    };
    let target = into.open_tree(name).map_err(StoreError::from)?;
    let mut entries = tree.iter();
    loop {
        match contain(|| entries.next()) {
            Ok(None) => break,
            Ok(Some(Ok((key, value)))) => {
                if has_ids && let Some(id) = key.get(..8).and_then(|k| <[u8; 8]>::try_from(k).ok())
                {
                    max_id = max_id.max(u64::from_be_bytes(id));
                }
                target.insert(key, value).map_err(StoreError::from)?;
                out.entries += 1;
            }
            Ok(Some(Err(e))) => {
                out.stopped = Some(e.to_string());
                break;
            }
            Err(panic) => {
                out.stopped = Some(format!("sled panicked: {panic}"));
                break;
            }
        }
    }
    Ok((out, max_id))
}

/// Prepares `meta` of the staged database in `dir` for its first open: `pending_count` removed
/// (the open counts the queue again), the format version set when it was lost, and
/// `journal_seq` moved up to just before the journal's first record when the salvaged one is
/// lower or lost, so that every journal record is replayed. Returns the journal position the
/// database continues from.
fn finish_meta(dir: &Path, salvaged: Option<u64>, journal_first: Option<u64>) -> Result<u64> {
    wait_released(&dir.join("db"))?;
    let db = sled_settings(sled::Config::new().path(dir))
        .open()
        .map_err(StoreError::from)?;
    let meta = db.open_tree("meta").map_err(StoreError::from)?;
    meta.remove(PENDING_COUNT_KEY).map_err(StoreError::from)?;
    if !meta
        .contains_key(FORMAT_VERSION_KEY)
        .map_err(StoreError::from)?
    {
        meta.insert(FORMAT_VERSION_KEY, &DATA_FORMAT_VERSION.to_be_bytes()[..])
            .map_err(StoreError::from)?;
    }
    let replay_from = replay_position(salvaged, journal_first);
    if Some(replay_from) != salvaged && (salvaged.is_some() || journal_first.is_some()) {
        meta.insert(JOURNAL_SEQ_KEY, &replay_from.to_be_bytes()[..])
            .map_err(StoreError::from)?;
    }
    db.flush().map_err(StoreError::from)?;
    Ok(replay_from)
}

/// The journal position a rebuilt database continues from: the salvaged one, but never
/// before the journal's first record (what lies before it is nowhere to be had).
fn replay_position(salvaged: Option<u64>, journal_first: Option<u64>) -> u64 {
    let floor = journal_first.map_or(0, |f| f.saturating_sub(1));
    salvaged.unwrap_or(0).max(floor)
}

/// sled's default `idgen_persist_interval`, which the store keeps.
const ID_PERSIST_INTERVAL: u64 = 1_000_000;

/// Makes sled's id generator in the new database in `dir` start at `at_least` or above, so
/// that no new message gets the id of one already stored or journaled. sled adds twice its
/// persist interval to the persisted counter when it reopens a database, and persists the
/// counter when an id reaches the next multiple of that interval: reopened once with an
/// interval of half of a multiple of [`ID_PERSIST_INTERVAL`] at or above `at_least`, its first
/// id is that multiple, which the call persists (a multiple, as later opens expect).
fn advance_ids(dir: &Path, at_least: u64) -> Result<()> {
    let target = at_least.div_ceil(ID_PERSIST_INTERVAL).max(1) * ID_PERSIST_INTERVAL;
    let half = target / 2;
    wait_released(&dir.join("db"))?;
    let db = sled_settings(sled::Config::new().path(dir))
        .idgen_persist_interval(half)
        .open()
        .map_err(StoreError::from)?;
    let next = db.generate_id().map_err(StoreError::from)?;
    db.flush().map_err(StoreError::from)?;
    if next < at_least {
        return Err(StoreError::Sled(sled::Error::ReportableBug(format!(
            "the id generator of the rebuilt database starts at {next}, below {at_least}"
        )))
        .into());
    }
    Ok(())
}

/// What the journal files of a data directory hold.
#[derive(Debug, Default)]
struct JournalSummary {
    /// Sequence numbers of the readable records.
    seqs: Vec<u64>,
    /// The lowest of them.
    first: Option<u64>,
    /// The largest message id written by a record.
    max_message_id: Option<u64>,
    /// The size of the journal files (kept when the rebuilt store opens them).
    file_bytes: Option<u64>,
}

impl JournalSummary {
    /// Reads the journal files of `dir`.
    fn read(dir: &Path) -> Result<JournalSummary> {
        let mut out = JournalSummary::default();
        for name in JOURNAL_FILE_NAMES {
            let path = dir.join(name);
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("read", &path)(e)),
            };
            out.file_bytes = Some(bytes.len() as u64);
            for record in current_records(&bytes) {
                out.seqs.push(record.seq);
                let ids = record
                    .ops
                    .iter()
                    .filter(|op| op.tree == TreeId::Messages)
                    .filter_map(|op| <[u8; 8]>::try_from(op.key.as_ref()).ok())
                    .map(u64::from_be_bytes);
                out.max_message_id = out.max_message_id.max(ids.max());
            }
        }
        out.seqs.sort_unstable();
        out.seqs.dedup();
        out.first = out.seqs.first().copied();
        Ok(out)
    }

    /// First, last and number of the records newer than `seq`.
    fn newer_than(&self, seq: u64) -> Option<(u64, u64, u64)> {
        let newer: Vec<u64> = self.seqs.iter().copied().filter(|&s| s > seq).collect();
        Some((*newer.first()?, *newer.last()?, newer.len() as u64))
    }
}

/// How [`check_data_dir`] judges a data directory (and the exit status of `postrider store
/// check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckVerdict {
    /// The database opens, the journal is complete and the queue consistent.
    Clean,
    /// Something is damaged or inconsistent; the report says what.
    Problems,
    /// Not even a copy of the data could be opened (not with salvage either).
    Unreadable,
}

/// What [`check_data_dir`] found.
#[derive(Debug, Clone)]
pub struct DataDirCheck {
    /// Why sled cannot open the database (or holds less than the journal shows it had made
    /// durable); `None` when it opens.
    pub database_damage: Option<String>,
    /// The journal as it is, read against the database's `meta/journal_seq` (0 when the
    /// database cannot be read); `Err` when the journal files cannot be read.
    pub journal: Result<JournalReport, String>,
    /// When the database is damaged: what a rebuild of the copy gave.
    pub rebuild: Option<RebuildReport>,
    /// When the database opens: the consistency check of the copy, the journal replayed.
    pub queue: Option<ConsistencyReport>,
    /// Why not even the copy could be opened.
    pub unreadable: Option<String>,
}

impl DataDirCheck {
    /// The overall verdict.
    pub fn verdict(&self) -> CheckVerdict {
        let journal_clean = self.journal.as_ref().is_ok_and(JournalReport::is_clean);
        if self.unreadable.is_some() {
            CheckVerdict::Unreadable
        } else if self.database_damage.is_none()
            && journal_clean
            && self.queue.as_ref().is_some_and(ConsistencyReport::is_clean)
        {
            CheckVerdict::Clean
        } else {
            CheckVerdict::Problems
        }
    }
}

impl fmt::Display for DataDirCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.database_damage {
            Some(why) => writeln!(f, "database: DAMAGED: {why}")?,
            None => writeln!(f, "database: opens")?,
        }
        match &self.journal {
            Ok(j) => {
                writeln!(
                    f,
                    "journal: {} records, {} newer than the database (which holds sequence {}), last {}",
                    j.records, j.newer, j.database_seq, j.last_seq
                )?;
                for d in &j.damage {
                    writeln!(f, "  DAMAGE: {d}")?;
                }
                for d in &j.harmless {
                    writeln!(f, "  harmless: {d}")?;
                }
            }
            Err(why) => writeln!(f, "journal: cannot be read: {why}")?,
        }
        if let Some(r) = &self.rebuild {
            writeln!(
                f,
                "a rebuild (`postrider store rebuild`) would give, tried on a copy:"
            )?;
            let mut outcome = String::new();
            r.write_outcome(&mut outcome)?;
            for line in outcome.lines() {
                writeln!(f, "  {line}")?;
            }
        }
        if let Some(q) = &self.queue {
            write!(f, "{q}")?;
        }
        if let Some(why) = &self.unreadable {
            writeln!(f, "cannot open a copy of the data: {why}")?;
        }
        Ok(())
    }
}

/// Examines the data directory `data_dir` without writing into it, on a copy of its sled and
/// journal files in a temporary directory under `scratch` (removed afterwards): whether sled
/// opens the database, what the journal holds and lacks, and the consistency of the queue
/// (the journal replayed into the copy). When sled cannot open the database, the copy is
/// rebuilt ([`rebuild`]) and the report says what that gives. Safe while a relay runs (its
/// files are only read), though a copy taken mid-write may show a torn last record.
pub async fn check_data_dir(data_dir: &Path, scratch: &Path) -> Result<DataDirCheck> {
    if !data_dir.join("db").is_file() && !has_journal(data_dir) {
        return Err(RepairError::NotADataDir {
            path: data_dir.to_owned(),
        });
    }
    let work = tempfile::Builder::new()
        .prefix("postrider-check-")
        .tempdir_in(scratch)
        .map_err(io("create a directory in", scratch))?;
    let copy = work.path().join("data");
    copy_data_files(data_dir, &copy, true)?;
    let mut report = DataDirCheck {
        database_damage: None,
        journal: Ok(JournalReport::default()),
        rebuild: None,
        queue: None,
        unreadable: None,
    };
    let database = data_dir.join("db");
    let database_seq = match probe_database(&copy) {
        Ok(seq) => seq,
        Err(StoreError::DatabaseDamaged { detail, .. }) => {
            report.database_damage = Some(format!("{}: {detail}", database.display()));
            0
        }
        Err(e) => {
            report.unreadable = Some(e.to_string());
            0
        }
    };
    report.journal = inspect_journal(&copy, database_seq)
        .map(|j| name_original_files(j, &copy, data_dir))
        .map_err(|e| e.to_string());
    if report.unreadable.is_some() {
        return Ok(report);
    }
    if report.database_damage.is_none() {
        let options = OpenOptions {
            accept_journal_loss: true,
            journal_bytes: JournalSummary::read(&copy)?.file_bytes,
            ..OpenOptions::default()
        };
        wait_released(&copy.join("db"))?;
        match Store::open_with(&copy, Metrics::new(), &options) {
            Ok(store) => {
                report.queue = Some(store.check());
                store.close().await?;
                return Ok(report);
            }
            Err(StoreError::DatabaseDamaged { detail, .. }) => {
                report.database_damage = Some(format!("{}: {detail}", database.display()));
            }
            Err(e) => {
                report.unreadable = Some(e.to_string());
                return Ok(report);
            }
        }
    }
    // The copy's failed open may still hold sled's lock for a moment.
    wait_released(&copy.join("db"))?;
    match rebuild(&copy).await {
        Ok(r) => report.rebuild = Some(r),
        Err(e) => report.unreadable = Some(e.to_string()),
    }
    Ok(report)
}

/// The journal report of the copy in `copy`, its files named as in `data_dir`.
fn name_original_files(mut report: JournalReport, copy: &Path, data_dir: &Path) -> JournalReport {
    for damage in report.damage.iter_mut().chain(report.harmless.iter_mut()) {
        if let Ok(name) = damage.file.strip_prefix(copy) {
            damage.file = data_dir.join(name);
        }
    }
    report
}

/// Opens the database in `dir` the way the store does (panics and corruption are
/// [`StoreError::DatabaseDamaged`], and so is a database that lost writes the journal shows it
/// had made durable) and returns the journal position it holds.
fn probe_database(dir: &Path) -> Result<u64, StoreError> {
    let path = dir.join("db");
    guarded(&path, || {
        let (_db, meta, format_version) = open_database(sled::Config::new().path(dir))?;
        check_lost_writes(dir, &path, format_version, &meta)?;
        database_seq(&meta)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarantine_directories_are_named_by_utc_second() {
        assert_eq!(
            quarantine_stamp("2026-11-23T05:19:57.123Z"),
            "20261123T051957Z"
        );
    }

    #[test]
    fn the_journal_position_never_stays_before_the_journal() {
        assert_eq!(replay_position(Some(300), Some(281)), 300);
        assert_eq!(replay_position(Some(278), Some(281)), 280);
        assert_eq!(replay_position(None, Some(281)), 280);
        assert_eq!(replay_position(None, None), 0);
        assert_eq!(replay_position(Some(5), None), 5);
    }

    #[test]
    fn sled_files_are_told_from_the_journal_and_the_quarantine() {
        for name in ["db", "conf", "blobs", "snap.00000000064ED154"] {
            assert!(is_sled_file(name), "{name}");
        }
        for name in ["journal-0", "journal-1", "quarantine", "dbx"] {
            assert!(!is_sled_file(name), "{name}");
        }
    }

    #[test]
    fn the_id_generator_is_moved_past_the_given_id() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled_settings(sled::Config::new().path(dir.path()))
                .open()
                .unwrap();
            db.insert("k", "v").unwrap();
            db.flush().unwrap();
        }
        advance_ids(dir.path(), 5_000_001).unwrap();
        let db = sled_settings(sled::Config::new().path(dir.path()))
            .open()
            .unwrap();
        assert!(db.generate_id().unwrap() >= 5_000_001);
        assert_eq!(db.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    }
}
