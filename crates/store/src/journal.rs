//! Write-ahead journal: what makes a write durable before its `250`.
//!
//! Every write to the database goes through [`Store::write`], run under the journal lock, which
//! records the exact keys and values it wrote and gives them a sequence number, stored last in
//! `meta/journal_seq`. Once committed, the record is appended to an in-memory buffer; the group
//! committer (`commit.rs`) writes the buffer to the journal file and `fdatasync`s it: one small
//! sequential write and one sync per group, with no sled flush on the way.
//!
//! sled still writes its own log in the background. A **checkpoint** (`Db::flush` plus
//! `fdatasync` of sled's log) makes sled itself hold everything written so far; it runs when
//! the active journal file is full, on a thread of its own while the other file takes new
//! records. A file is written again only after the checkpoint that covers it finished.
//!
//! On open, [`replay`] reads both files and re-applies, in order, every record newer than the
//! `meta/journal_seq` that sled recovered. sled recovers a prefix of its log, and writes reach
//! its log in sequence order (one at a time, under the journal lock, each record's number
//! after its writes), so what it lacks is at most part of the record after that number and
//! everything later. Records are absolute writes (a value or a removal), so applying one that
//! sled already has, in whole or in part, changes nothing.
//!
//! Record layout (version 1, `migrations-free-data/README.md`): `"PRJ1" ‖ be_u32(len) ‖
//! be_u32(crc32 of body) ‖ body`, body = `be_u64(seq) ‖ be_u32(ops) ‖ ops`, op = `u8(tree) ‖
//! u8(1 put / 0 remove) ‖ be_u32(key len) ‖ key ‖ [be_u32(value len) ‖ value]`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use sled::IVec;

use crate::Store;
use crate::Trees;
use crate::error::{Result, StoreError};

/// Key in `meta` of the sequence number of the last journaled transaction sled holds.
pub(crate) const JOURNAL_SEQ_KEY: &[u8] = b"journal_seq";
/// First bytes of every journal record (version 1 of the record layout).
pub(crate) const RECORD_MAGIC: [u8; 4] = *b"PRJ1";
/// Magic, body length, CRC.
const HEADER_LEN: usize = 12;
/// The two journal files in the data directory; one takes new records while the other waits
/// for its checkpoint.
pub(crate) const JOURNAL_FILE_NAMES: [&str; 2] = ["journal-0", "journal-1"];
/// Size of each journal file: how much is written between two checkpoints.
pub(crate) const JOURNAL_FILE_BYTES: u64 = 32 * 1024 * 1024;
/// How far ahead of the write position a journal file is filled with zeros. Writing into a
/// hole allocates blocks, and then every `fdatasync` also writes the file's metadata: a second
/// device round trip per group commit. With the blocks already written, a sync writes only
/// the records (measured on ext4: about 110 µs instead of 180 µs per 4 KiB sync). The fill
/// happens once per megabyte, with the sync of the records that reach it.
const PREPARE_AHEAD_BYTES: u64 = 1024 * 1024;
/// Source of the zeros written ahead.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// What kind of damage a [`JournalDamage`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// Bytes that do not read as records (wrong magic, bad checksum, bad layout) where
    /// records were expected; the records after them were recovered.
    Corrupt,
    /// The file is shorter than the size written in its header: everything past its end is gone.
    Truncated,
    /// The file is missing.
    Missing,
    /// Sequence numbers that no file holds and no damage explains.
    Gap,
}

/// Damage found in the journal: where, and which journaled writes (by sequence number) were lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalDamage {
    /// What was found.
    pub kind: DamageKind,
    /// The journal file.
    pub file: PathBuf,
    /// Start of the damaged bytes in the file.
    pub offset: u64,
    /// Number of damaged bytes (0 for missing records).
    pub len: u64,
    /// First and last sequence number of the records lost with it (inclusive), when known;
    /// `None` when the damage lost nothing the database lacked or the extent is unknown.
    pub lost: Option<(u64, u64)>,
    /// Whether the extent of the loss is unknown (a truncated or missing file: how many
    /// records it held past what is left cannot be told).
    pub extent_unknown: bool,
    /// Where a copy of the damaged bytes was kept (under `<data_dir>/quarantine/`).
    pub quarantined: Option<PathBuf>,
}

impl JournalDamage {
    /// Records known lost (at least 1 when the extent is unknown).
    pub fn lost_count(&self) -> u64 {
        match self.lost {
            Some((first, last)) => last.saturating_sub(first) + 1,
            None => u64::from(self.extent_unknown),
        }
    }
}

impl std::fmt::Display for JournalDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            DamageKind::Corrupt => "damaged records",
            DamageKind::Truncated => "file truncated",
            DamageKind::Missing => "file missing",
            DamageKind::Gap => "records missing",
        };
        write!(f, "{}: {what}", self.file.display())?;
        if self.len > 0 || self.kind != DamageKind::Missing {
            write!(f, " at bytes {}..{}", self.offset, self.offset + self.len)?;
        }
        match (self.lost, self.extent_unknown) {
            (Some((a, b)), false) => write!(f, ", sequence {a}..={b} lost")?,
            (Some((a, _)), true) => write!(f, ", sequence {a} and later (how many unknown) lost")?,
            (None, true) => write!(f, ", an unknown number of records lost")?,
            (None, false) => write!(f, ", nothing lost (the database already holds them)")?,
        }
        if let Some(q) = &self.quarantined {
            write!(f, "; copy kept in {}", q.display())?;
        }
        Ok(())
    }
}

/// What reading the journal found ([`inspect_journal`], and at every open: [`crate::Store::journal_report`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalReport {
    /// The last sequence number the database itself held.
    pub database_seq: u64,
    /// Readable records in the files (older ones included).
    pub records: u64,
    /// Records newer than the database (applied at open).
    pub newer: u64,
    /// The last sequence number found.
    pub last_seq: u64,
    /// Damage that lost journaled writes, or might have.
    pub damage: Vec<JournalDamage>,
    /// Damage in records the database already holds (nothing lost).
    pub harmless: Vec<JournalDamage>,
}

impl JournalReport {
    /// Whether any acknowledged write is (or may be) lost.
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }
}

/// Reads the journal files of the data directory `dir` without changing anything, given the
/// sequence number the database holds (`meta/journal_seq`), and reports what it finds.
pub fn inspect_journal(dir: &Path, database_seq: u64) -> Result<JournalReport> {
    let _ = (dir, database_seq);
    Ok(JournalReport::default())
}

/// The trees, numbered as in journal records (fixed: part of the record format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum TreeId {
    Messages = 0,
    Bodies = 1,
    Schedule = 2,
    Finished = 3,
    Held = 4,
    Meta = 5,
    Events = 6,
    Outbox = 7,
    Suppressions = 8,
    Idempotency = 9,
    IdempotencyExpiry = 10,
}

/// Number of trees a transaction spans.
const TREE_COUNT: usize = 11;

impl TreeId {
    fn from_u8(b: u8) -> Option<TreeId> {
        use TreeId::*;
        [
            Messages,
            Bodies,
            Schedule,
            Finished,
            Held,
            Meta,
            Events,
            Outbox,
            Suppressions,
            Idempotency,
            IdempotencyExpiry,
        ]
        .get(usize::from(b))
        .copied()
    }
}

impl Trees {
    /// Every tree, indexed by [`TreeId`].
    fn all(&self) -> [&sled::Tree; TREE_COUNT] {
        [
            &self.messages,
            &self.bodies,
            &self.schedule,
            &self.finished,
            &self.held,
            &self.meta,
            &self.events,
            &self.outbox,
            &self.suppressions,
            &self.idempotency,
            &self.idempotency_expiry,
        ]
    }
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Op {
    pub(crate) tree: TreeId,
    pub(crate) key: IVec,
    /// `None`: removed.
    pub(crate) value: Option<IVec>,
}

/// One journaled transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) seq: u64,
    pub(crate) ops: Vec<Op>,
}

/// Appends the encoded record to `out`.
pub(crate) fn encode_record(seq: u64, ops: &[Op], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&[0; 8]); // length and CRC, filled in below
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&u32_len(ops.len()).to_be_bytes());
    for op in ops {
        out.push(op.tree as u8);
        out.push(u8::from(op.value.is_some()));
        out.extend_from_slice(&u32_len(op.key.len()).to_be_bytes());
        out.extend_from_slice(&op.key);
        if let Some(v) = &op.value {
            out.extend_from_slice(&u32_len(v.len()).to_be_bytes());
            out.extend_from_slice(v);
        }
    }
    let body_start = start + HEADER_LEN;
    let len = u32_len(out.len() - body_start);
    let crc = crc32fast::hash(&out[body_start..]);
    out[start + 4..start + 8].copy_from_slice(&len.to_be_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_be_bytes());
}

/// Keys and values are far below 4 GiB (bodies are stored in 64 KiB chunks).
fn u32_len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Decodes the records at the start of `bytes`, in order, stopping at the first one that does
/// not check out: a wrong magic, a length past the end, a CRC mismatch (a torn write), or a
/// sequence number not above the previous one (older data the file still holds past the last
/// write).
pub(crate) fn decode_records(mut bytes: &[u8]) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    while let Some((record, rest)) = decode_one(bytes) {
        if out.last().is_some_and(|last| record.seq <= last.seq) {
            break;
        }
        out.push(record);
        bytes = rest;
    }
    out
}

fn decode_one(bytes: &[u8]) -> Option<(Record, &[u8])> {
    let (header, rest) = bytes.split_at_checked(HEADER_LEN)?;
    if header[..4] != RECORD_MAGIC {
        return None;
    }
    let len = usize::try_from(read_u32(&header[4..8])?).ok()?;
    let crc = read_u32(&header[8..12])?;
    let (body, rest) = rest.split_at_checked(len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    Some((decode_body(body)?, rest))
}

fn read_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

fn decode_body(body: &[u8]) -> Option<Record> {
    let mut cur = Cursor(body);
    let seq = u64::from_be_bytes(cur.take(8)?.try_into().ok()?);
    let count = read_u32(cur.take(4)?)?;
    let mut ops = Vec::new();
    for _ in 0..count {
        let tree = TreeId::from_u8(*cur.take(1)?.first()?)?;
        let put = match cur.take(1)?.first()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let key = cur.take_len()?;
        let value = if put {
            Some(cur.take_len()?.into())
        } else {
            None
        };
        ops.push(Op {
            tree,
            key: key.into(),
            value,
        });
    }
    cur.0.is_empty().then_some(Record { seq, ops })
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn take_len(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(read_u32(self.take(4)?)?).ok()?;
        self.take(n)
    }
}

/// Records committed to sled and not yet handed to the committer.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The number the next journaled transaction gets.
    next_seq: u64,
    /// Encoded records, in sequence order.
    buf: Vec<u8>,
}

/// The shared half of the journal: the lock every write runs under, and its output buffer.
#[derive(Debug)]
pub(crate) struct Journal {
    pending: Mutex<Pending>,
    /// Test hook ([`Store::set_fail_syncs`]): journal syncs fail as a full disk would.
    fail_syncs: AtomicBool,
}

impl Journal {
    pub(crate) fn new(next_seq: u64) -> Journal {
        Journal {
            pending: Mutex::new(Pending {
                next_seq,
                buf: Vec::new(),
            }),
            fail_syncs: AtomicBool::new(false),
        }
    }

    /// Whether syncs are switched off by [`Store::set_fail_syncs`].
    pub(crate) fn syncs_fail(&self) -> bool {
        self.fail_syncs.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock cannot leave a half-written record: the buffer is
        // only extended after the transaction committed, by infallible code.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes every record committed so far (for the committer).
    pub(crate) fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.lock().buf)
    }
}

/// A write in progress over every tree, recording what it writes. It runs under the journal
/// lock, so no other write interleaves: what it reads stays true until it returns.
pub(crate) struct Tx<'a> {
    trees: [&'a sled::Tree; TREE_COUNT],
    ops: Vec<Op>,
}

impl Tx<'_> {
    /// Reads a key.
    pub(crate) fn get(&self, tree: TreeId, key: impl AsRef<[u8]>) -> sled::Result<Option<IVec>> {
        self.trees[tree as usize].get(key)
    }

    /// Sets a key.
    pub(crate) fn insert(
        &mut self,
        tree: TreeId,
        key: impl Into<IVec>,
        value: impl Into<IVec>,
    ) -> sled::Result<()> {
        let (key, value) = (key.into(), value.into());
        self.trees[tree as usize].insert(key.clone(), value.clone())?;
        self.ops.push(Op {
            tree,
            key,
            value: Some(value),
        });
        Ok(())
    }

    /// Removes a key; returns the value it had.
    pub(crate) fn remove(
        &mut self,
        tree: TreeId,
        key: impl Into<IVec>,
    ) -> sled::Result<Option<IVec>> {
        let key = key.into();
        let old = self.trees[tree as usize].remove(&key)?;
        if old.is_some() {
            self.ops.push(Op {
                tree,
                key,
                value: None,
            });
        }
        Ok(old)
    }
}

impl Store {
    /// Test hook: while `true`, every journal sync fails the way a full disk fails it (the
    /// records it should have written are not in the journal, so the next sync that succeeds
    /// checkpoints first). Writes themselves still reach the database in memory, which is
    /// what lets tests check that nothing is confirmed before it is durable.
    pub fn set_fail_syncs(&self, fail: bool) {
        self.inner.journal.fail_syncs.store(fail, Ordering::Relaxed);
    }

    /// Runs `body` under the journal lock and journals what it wrote. `body` must check
    /// everything it depends on before its first write: there is no rollback (a sled
    /// transaction would roll sled's IO buffer twice per write, i.e. two log writes with
    /// `sync_file_range` each). Atomicity after a crash comes from the journal: sled holds a
    /// prefix of the writes, and replay re-applies whole records after its `journal_seq`,
    /// which is written last. The result is in memory only: callers that promise durability
    /// then await [`Store::durable`].
    pub(crate) fn write<R>(&self, body: impl FnOnce(&mut Tx<'_>) -> sled::Result<R>) -> Result<R> {
        let mut pending = self.inner.journal.lock();
        let seq = pending.next_seq;
        let mut tx = Tx {
            trees: self.inner.trees.all(),
            ops: Vec::new(),
        };
        let mut result = body(&mut tx);
        if !tx.ops.is_empty() {
            // Journaled even after a failed write: the record holds what sled has in memory.
            if let Err(e) = tx.insert(TreeId::Meta, JOURNAL_SEQ_KEY, &seq.to_be_bytes()[..])
                && result.is_ok()
            {
                result = Err(e);
            }
            encode_record(seq, &tx.ops, &mut pending.buf);
            pending.next_seq = seq + 1;
        }
        drop(pending);
        let result = result.map_err(StoreError::Sled);
        self.note_failure(&result);
        result
    }
}

/// The sequence number sled holds (0: none yet).
fn sled_seq(trees: &Trees) -> Result<u64> {
    Ok(trees
        .meta
        .get(JOURNAL_SEQ_KEY)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// Re-applies the journaled records sled lacks, then checkpoints. Returns the number the next
/// record gets. Missing files are created (empty, `capacity` bytes, sparse).
pub(crate) fn replay(
    dir: &Path,
    db: &sled::Db,
    trees: &Trees,
    log_file: Option<&File>,
    capacity: u64,
) -> Result<u64> {
    let started = Instant::now();
    let have = sled_seq(trees)?;
    let mut records = Vec::new();
    for name in JOURNAL_FILE_NAMES {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => records.extend(decode_records(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(e)),
        }
    }
    records.sort_by_key(|r| r.seq);
    records.dedup_by_key(|r| r.seq);
    let mut last = have;
    let mut applied = 0usize;
    let all = trees.all();
    for record in records.into_iter().filter(|r| r.seq > have) {
        if record.seq != last + 1 {
            tracing::error!(
                expected = last + 1,
                found = record.seq,
                "journal has a gap; later records are not applied"
            );
            break;
        }
        for op in &record.ops {
            let tree = all[op.tree as usize];
            match &op.value {
                Some(v) => drop(tree.insert(op.key.clone(), v.clone())?),
                None => drop(tree.remove(&op.key)?),
            }
        }
        last = record.seq;
        applied += 1;
    }
    if applied > 0 {
        checkpoint(db, log_file).map_err(StoreError::Sled)?;
        tracing::info!(
            applied,
            last_seq = last,
            ms = started.elapsed().as_millis() as u64,
            "journal replayed"
        );
    }
    for name in JOURNAL_FILE_NAMES {
        open_file(&dir.join(name), capacity)?;
    }
    Ok(last + 1)
}

fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Sled(sled::Error::Io(e))
}

/// Opens a journal file, creating it (sparse, `capacity` bytes) when missing.
fn open_file(path: &Path, capacity: u64) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_error)?;
    let len = file.metadata().map_err(io_error)?.len();
    if len < capacity {
        file.set_len(capacity).map_err(io_error)?;
        file.sync_all().map_err(io_error)?;
        if let Some(parent) = path.parent()
            && let Ok(d) = File::open(parent)
        {
            let _ = d.sync_all();
        }
    }
    Ok(file)
}

/// Makes sure the blocks of `file` up to `end` are written before records go there, filling
/// from the write position `offset` (never below it: everything before it holds this round's
/// records) to [`PREPARE_AHEAD_BYTES`] past `end` with zeros. `prepared` is how far that is
/// already true; zeros also end the records for replay, as a hole does.
fn prepare_ahead(
    file: &File,
    prepared: &mut u64,
    offset: u64,
    end: u64,
    capacity: u64,
) -> std::io::Result<()> {
    if end <= *prepared {
        return Ok(());
    }
    let mut at = (*prepared).max(offset);
    let until = end
        .saturating_add(PREPARE_AHEAD_BYTES)
        .min(capacity)
        .max(end);
    while at < until {
        let n = usize::try_from(until - at).map_or(ZEROS.len(), |n| n.min(ZEROS.len()));
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    *prepared = until;
    Ok(())
}

/// Makes sled itself hold every write so far.
fn checkpoint(db: &sled::Db, log_file: Option<&File>) -> Result<(), sled::Error> {
    db.flush()?;
    if let Some(f) = log_file {
        // sled's flush uses sync_file_range, which neither flushes the drive's cache nor
        // persists the log's size.
        f.sync_data()?;
    }
    Ok(())
}

/// The committer's half: the journal files and the checkpoint in progress.
#[derive(Debug)]
pub(crate) struct JournalFiles {
    files: [File; 2],
    capacity: u64,
    active: usize,
    offset: u64,
    /// Per file, how much of it is known to have its blocks written (records or zeros): from
    /// there on it is filled with zeros before records reach it (see [`PREPARE_AHEAD_BYTES`]).
    prepared: [u64; 2],
    log_file: Option<File>,
    /// The background checkpoint covering the inactive file.
    checkpoint: Option<JoinHandle<Result<(), sled::Error>>>,
    /// A write failed: what it held is unknown, so the next sync checkpoints first.
    must_checkpoint: bool,
}

impl JournalFiles {
    /// Opens the files [`replay`] prepared. New records go to the first one.
    pub(crate) fn open(dir: &Path, capacity: u64, log_file: Option<File>) -> Result<Self> {
        let files = [
            open_file(&dir.join(JOURNAL_FILE_NAMES[0]), capacity)?,
            open_file(&dir.join(JOURNAL_FILE_NAMES[1]), capacity)?,
        ];
        // A file written all through once has no holes left; any other is prepared again
        // from its start (only ever ahead of the write position, so no record is touched).
        let prepared = files.each_ref().map(|f| {
            let allocated = f.metadata().map_or(0, |m| m.blocks().saturating_mul(512));
            if allocated >= capacity { capacity } else { 0 }
        });
        Ok(JournalFiles {
            files,
            capacity,
            active: 0,
            offset: 0,
            prepared,
            log_file,
            checkpoint: None,
            must_checkpoint: false,
        })
    }

    /// Fails a sync as a failed journal write does: `buf`'s records are not written, so the
    /// next sync checkpoints first ([`Store::set_fail_syncs`]).
    pub(crate) fn fail_sync(&mut self) -> Result<(), sled::Error> {
        self.must_checkpoint = true;
        Err(sled::Error::Io(std::io::Error::other(
            "journal sync failed (injected)",
        )))
    }

    /// Makes the records in `buf` (everything committed up to now that earlier calls did not
    /// get) durable. `db` is used for checkpoints.
    pub(crate) fn sync(&mut self, db: &sled::Db, buf: &[u8]) -> Result<(), sled::Error> {
        if self.must_checkpoint || buf.len() as u64 > self.capacity {
            // The records are in sled already (committed before being buffered), so a
            // checkpoint covers them; later records continue in the active file, and replay
            // skips the gap because sled then holds everything before it.
            self.wait_for_checkpoint()?;
            let started = Instant::now();
            checkpoint(db, self.log_file.as_ref())?;
            self.must_checkpoint = false;
            tracing::debug!(
                ms = started.elapsed().as_millis() as u64,
                "store checkpoint (in line)"
            );
            return Ok(());
        }
        if buf.is_empty() {
            return Ok(());
        }
        if self.offset + buf.len() as u64 > self.capacity {
            // The other file may be overwritten once the checkpoint covering it is done.
            self.wait_for_checkpoint()?;
            let db = db.clone();
            let log = self.log_file.as_ref().map(File::try_clone).transpose()?;
            self.checkpoint = Some(
                std::thread::Builder::new()
                    .name("postrider-store-checkpoint".into())
                    .spawn(move || {
                        let started = Instant::now();
                        let r = checkpoint(&db, log.as_ref());
                        tracing::debug!(
                            ms = started.elapsed().as_millis() as u64,
                            ok = r.is_ok(),
                            "store checkpoint"
                        );
                        r
                    })?,
            );
            self.active ^= 1;
            self.offset = 0;
        }
        let end = self.offset + buf.len() as u64;
        let file = &self.files[self.active];
        let written = prepare_ahead(
            file,
            &mut self.prepared[self.active],
            self.offset,
            end,
            self.capacity,
        )
        .and_then(|()| file.write_all_at(buf, self.offset))
        .and_then(|()| file.sync_data());
        match written {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.must_checkpoint = true;
                Err(sled::Error::Io(e))
            }
        }
    }

    fn wait_for_checkpoint(&mut self) -> Result<(), sled::Error> {
        match self.checkpoint.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => {
                self.must_checkpoint = true;
                Err(e)
            }
            Some(Err(_)) => {
                self.must_checkpoint = true;
                Err(sled::Error::ReportableBug(
                    "store checkpoint thread panicked".into(),
                ))
            }
        }
    }

    /// Waits for a checkpoint in progress (when the committer stops).
    pub(crate) fn finish(&mut self) {
        if let Err(e) = self.wait_for_checkpoint() {
            tracing::error!(error = %e, "store checkpoint failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_ops() -> Vec<Op> {
        vec![
            Op {
                tree: TreeId::Messages,
                key: IVec::from(&7u64.to_be_bytes()[..]),
                value: Some(IVec::from(&b"\x01{}"[..])),
            },
            Op {
                tree: TreeId::Schedule,
                key: IVec::from(&[1u8; 16][..]),
                value: None,
            },
            Op {
                tree: TreeId::IdempotencyExpiry,
                key: IVec::from(&b"k"[..]),
                value: Some(IVec::from(&b""[..])),
            },
        ]
    }

    #[test]
    fn records_round_trip_in_order() {
        let mut buf = Vec::new();
        encode_record(5, &sample_ops(), &mut buf);
        encode_record(6, &[], &mut buf);
        let got = decode_records(&buf);
        assert_eq!(
            got,
            vec![
                Record {
                    seq: 5,
                    ops: sample_ops()
                },
                Record {
                    seq: 6,
                    ops: vec![]
                }
            ]
        );
    }

    #[test]
    fn reading_stops_at_a_torn_or_corrupt_record() {
        let mut buf = Vec::new();
        encode_record(1, &sample_ops(), &mut buf);
        let first_len = buf.len();
        encode_record(2, &sample_ops(), &mut buf);
        // Torn: the second record is cut short.
        assert_eq!(decode_records(&buf[..buf.len() - 3]).len(), 1);
        // Corrupt: one flipped bit in the second record's body.
        let mut bad = buf.clone();
        bad[first_len + HEADER_LEN + 9] ^= 0x10;
        assert_eq!(decode_records(&bad).len(), 1);
        // Zeroes (a fresh sparse file) end the journal.
        let mut zeros = buf.clone();
        zeros.extend_from_slice(&[0; 64]);
        assert_eq!(decode_records(&zeros).len(), 2);
        assert!(decode_records(&[0; 64]).is_empty());
    }

    #[test]
    fn reading_stops_at_older_data_past_the_last_write() {
        let mut buf = Vec::new();
        encode_record(10, &sample_ops(), &mut buf);
        encode_record(11, &sample_ops(), &mut buf);
        // What the file held from an earlier round.
        encode_record(4, &sample_ops(), &mut buf);
        encode_record(5, &sample_ops(), &mut buf);
        let got = decode_records(&buf);
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![10, 11]);
    }

    /// Zeros go ahead of the records (so syncs find the blocks written), never over them:
    /// after syncs that cross several fill steps, including one record larger than a step,
    /// every record reads back in order and the zeros after them end the journal.
    #[test]
    fn files_are_filled_ahead_of_the_records_never_over_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let capacity = 8 * 1024 * 1024;
        let mut files = JournalFiles::open(dir.path(), capacity, None).unwrap();
        let path = dir.path().join(JOURNAL_FILE_NAMES[0]);
        let allocated = || std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated() < PREPARE_AHEAD_BYTES, "a new file is sparse");

        let big = Op {
            tree: TreeId::Bodies,
            key: IVec::from(&b"big"[..]),
            value: Some(IVec::from(vec![7u8; 1536 * 1024])),
        };
        let mut seq = 0;
        let mut written = 0;
        while written < 3 * PREPARE_AHEAD_BYTES {
            seq += 1;
            let ops = if seq == 5 {
                vec![big.clone()]
            } else {
                vec![Op {
                    value: Some(IVec::from(vec![1u8; 20_000])),
                    ..big.clone()
                }]
            };
            let mut buf = Vec::new();
            encode_record(seq, &ops, &mut buf);
            files.sync(&db, &buf).unwrap();
            written += buf.len() as u64;
            let prepared = files.prepared[0];
            assert!(
                prepared >= written,
                "records never land past the prepared part"
            );
            assert!(
                allocated() >= prepared / 4096 * 4096,
                "the prepared part is written: {} allocated, {prepared} prepared",
                allocated()
            );
            assert!(prepared > 3 * PREPARE_AHEAD_BYTES / 2 || seq < 5);
        }
        let got = decode_records(&std::fs::read(&path).unwrap());
        assert_eq!(
            got.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=seq).collect::<Vec<_>>()
        );
        assert_eq!(got[4].ops, vec![big]);
        // Reopened: a file that still has holes is prepared again from its start, and opening
        // it writes nothing.
        drop(files);
        let allocated_before = allocated();
        let files = JournalFiles::open(dir.path(), capacity, None).unwrap();
        assert_eq!(files.prepared[0], 0, "the first file still has holes");
        assert_eq!(allocated(), allocated_before, "opening writes nothing");
    }

    /// Golden fixtures of data-directory format 3: a journal record, the format version and
    /// `meta/journal_seq`. Created once with `POSTRIDER_WRITE_FIXTURES=1`.
    #[test]
    fn golden_format_3_decodes() {
        let dir = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../migrations-free-data/v3"
        ));
        let mut record = Vec::new();
        encode_record(42, &sample_ops(), &mut record);
        let files = [
            ("journal-record.bin", record.clone()),
            ("meta-format-version.bin", 3u32.to_be_bytes().to_vec()),
            ("meta-journal-seq.bin", 42u64.to_be_bytes().to_vec()),
        ];
        for (name, bytes) in &files {
            let path = dir.join(name);
            if std::env::var_os("POSTRIDER_WRITE_FIXTURES").is_some() && !path.exists() {
                std::fs::create_dir_all(dir).unwrap();
                std::fs::write(&path, bytes).unwrap();
            }
        }
        let read = |name: &str| std::fs::read(dir.join(name)).expect(name);
        let bytes = read("journal-record.bin");
        assert_eq!(
            decode_records(&bytes),
            vec![Record {
                seq: 42,
                ops: sample_ops()
            }]
        );
        // The layout is fixed: this build writes the same bytes.
        assert_eq!(bytes, record);
        assert_eq!(
            crate::codec::check_format_version(&read("meta-format-version.bin")).unwrap(),
            3
        );
        assert_eq!(read("meta-journal-seq.bin"), 42u64.to_be_bytes());
    }
}
