//! Reading the journal at open: each file is scanned past damaged bytes, the damage is told
//! apart from harmless leftovers (stale records, records sled already holds), losses are
//! reported and quarantined, missing records that nothing explains refuse the open, and the
//! records sled lacks are applied.
//!
//! The rules (`migrations-free-data/README.md`, "Reading the journal"):
//! - In a file, the current round's records start after the header, have numbers from the
//!   header's `first_seq` on, and increase. Where the bytes do not read as such a record, the
//!   reader looks for the next intact record of the round (magic, CRC, a number above the last
//!   one); the bytes in between are damaged. When there is none, the round ends there; bytes
//!   that still look like a record there (magic and a length that fits) are a damaged last
//!   record.
//! - A damaged stretch loses the numbers between its neighbours that no file holds and sled
//!   does not have. A file shorter than its header says was truncated; when its round reached
//!   the cut, what followed is lost (how much is unknown). Numbers missing with no damage to
//!   explain them, and a missing file, are not recoverable by reading: the open refuses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::files::{JOURNAL_FILE_NAMES, checkpoint, io_error, open_file, retire_file, sync_parent};
use super::record::{
    FILE_HEADER_LEN, FILE_MAGIC, FileHeader, HEADER_LEN, RECORD_MAGIC, Record, decode_one,
    looks_like_record,
};
use super::{JOURNAL_CLEAN_KEY, sled_seq};
use crate::Trees;
use crate::error::{Result, StoreError};

/// Directory under the data directory where damaged bytes and loss reports are kept.
pub(crate) const QUARANTINE_DIR: &str = "quarantine";

/// What kind of damage a [`JournalDamage`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// Bytes that do not read as records (wrong magic, bad checksum, bad layout) where
    /// records were expected; the intact records after them were recovered.
    Corrupt,
    /// The file is shorter than the size written in its header.
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
    /// The journal file (the data directory for a gap).
    pub file: PathBuf,
    /// Start of the damaged bytes in the file.
    pub offset: u64,
    /// Number of damaged bytes (0 for missing records).
    pub len: u64,
    /// First and last sequence number of the records lost with it (inclusive), when known;
    /// with [`JournalDamage::extent_unknown`], the first one lost and an unknown number after.
    /// `None` when nothing the database lacked was lost.
    pub lost: Option<(u64, u64)>,
    /// Whether the extent of the loss is unknown (a truncated or missing file: how many
    /// records it held past what is left cannot be told).
    pub extent_unknown: bool,
    /// Where a copy of the damaged bytes was kept (under `<data_dir>/quarantine/`).
    pub quarantined: Option<PathBuf>,
}

impl JournalDamage {
    /// Records lost (at least 1 when the extent is unknown).
    pub fn lost_count(&self) -> u64 {
        match (self.lost, self.extent_unknown) {
            (_, true) => self.lost.map_or(1, |(a, b)| b.saturating_sub(a) + 1),
            (Some((first, last)), false) => last.saturating_sub(first) + 1,
            (None, false) => 0,
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
        if matches!(self.kind, DamageKind::Corrupt | DamageKind::Truncated) {
            write!(f, " at bytes {}..{}", self.offset, self.offset + self.len)?;
        }
        match (self.lost, self.extent_unknown) {
            (Some((a, b)), false) if a == b => write!(f, ", journal record {a} lost")?,
            (Some((a, b)), false) => write!(f, ", journal records {a}..={b} lost")?,
            (Some((a, _)), true) => write!(
                f,
                ", journal records from {a} on lost (how many is unknown)"
            )?,
            (None, true) => write!(f, ", an unknown number of journal records lost")?,
            (None, false) => write!(f, ", nothing lost (the database holds those records)")?,
        }
        if let Some(q) = &self.quarantined {
            write!(f, "; a copy is kept in {}", q.display())?;
        }
        Ok(())
    }
}

/// What reading the journal found ([`inspect_journal`], and at every open:
/// [`crate::Store::journal_report`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalReport {
    /// The last sequence number the database itself held.
    pub database_seq: u64,
    /// Intact records of the current rounds in the files.
    pub records: u64,
    /// Records newer than the database (applied at open).
    pub newer: u64,
    /// The last sequence number found.
    pub last_seq: u64,
    /// Damage that lost journaled writes the database lacked, or may have.
    pub damage: Vec<JournalDamage>,
    /// Damage that lost nothing (records the database already holds, stale bytes).
    pub harmless: Vec<JournalDamage>,
}

impl JournalReport {
    /// Whether no acknowledged write is (or may be) lost.
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }

    /// Journal records lost, as counted in `postrider_store_corrupt_records_total`.
    pub fn lost_records(&self) -> u64 {
        self.damage.iter().map(JournalDamage::lost_count).sum()
    }

    /// Damage that makes the open refuse unless the loss is accepted: missing files and gaps.
    fn refusal(&self) -> Option<String> {
        let lines: Vec<String> = self
            .damage
            .iter()
            .filter(|d| matches!(d.kind, DamageKind::Missing | DamageKind::Gap))
            .map(ToString::to_string)
            .collect();
        (!lines.is_empty()).then(|| lines.join("; "))
    }
}

/// An intact record of the current round.
#[derive(Debug)]
pub(crate) struct ScannedRecord {
    pub(crate) record: Record,
}

/// Bytes where a record of the round was expected and none could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadRange {
    pub(crate) offset: u64,
    pub(crate) len: u64,
    /// The number of the intact record before it in the file (or before the round, from the
    /// header), if known.
    pub(crate) prev_seq: Option<u64>,
    /// The number of the intact record after it; `None`: it ends the round.
    pub(crate) next_seq: Option<u64>,
}

/// What one journal file holds.
#[derive(Debug, Default)]
pub(crate) struct FileScan {
    pub(crate) header: Option<FileHeader>,
    /// The first bytes are neither a header nor a record (a damaged header).
    pub(crate) header_damaged: bool,
    pub(crate) records: Vec<ScannedRecord>,
    pub(crate) bad: Vec<BadRange>,
    /// Where the round's bytes (records and damage) end.
    pub(crate) round_end: u64,
    /// The round reached the end of the file (nothing after it read as the end of a round):
    /// a file cut short there lost whatever followed.
    pub(crate) round_runs_off: bool,
    pub(crate) len: u64,
}

/// The sequence number a record at the start of `bytes` claims, without checking it.
fn peek_seq(bytes: &[u8]) -> Option<u64> {
    let b = bytes.get(HEADER_LEN..HEADER_LEN + 8)?;
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// The next position from `from` on where an intact record of the round starts (a number at
/// least `min_seq` and above `last`), with that record.
fn find_next(
    bytes: &[u8],
    from: usize,
    min_seq: u64,
    last: Option<u64>,
) -> Option<(usize, Record, usize)> {
    let wanted = |seq: u64| seq >= min_seq && last.is_none_or(|l| seq > l);
    let mut at = from;
    while let Some(found) = bytes
        .get(at..)?
        .windows(RECORD_MAGIC.len())
        .position(|w| w == RECORD_MAGIC)
    {
        let pos = at + found;
        // Stale records (older rounds) are skipped without checking their CRC.
        if peek_seq(&bytes[pos..]).is_some_and(wanted)
            && let Some((record, len)) = decode_one(&bytes[pos..])
            && wanted(record.seq)
        {
            return Some((pos, record, len));
        }
        at = pos + 1;
    }
    None
}

/// Reads one journal file's current round, skipping damaged bytes.
pub(crate) fn scan_file(bytes: &[u8]) -> FileScan {
    let mut scan = FileScan {
        len: bytes.len() as u64,
        ..FileScan::default()
    };
    let header_len = FILE_HEADER_LEN as usize;
    let start = if let Some(h) = FileHeader::decode(bytes) {
        scan.header = Some(h);
        header_len
    } else if bytes.starts_with(&RECORD_MAGIC) {
        0 // a data format 3 file: records from the first byte, no header
    } else {
        let head = &bytes[..bytes.len().min(header_len)];
        scan.header_damaged = head.starts_with(&FILE_MAGIC) || head.iter().any(|&b| b != 0);
        header_len.min(bytes.len())
    };
    let min_seq = scan.header.map_or(0, |h| h.first_seq);
    let mut pos = start;
    let mut last: Option<u64> = scan.header.and_then(|h| h.first_seq.checked_sub(1));
    let mut last_in_file: Option<u64> = None;
    let mut runs_off = false;
    while pos < bytes.len() {
        if let Some((record, len)) = decode_one(&bytes[pos..])
            && record.seq >= min_seq
            && last_in_file.is_none_or(|l| record.seq > l)
        {
            last = Some(record.seq);
            last_in_file = Some(record.seq);
            scan.records.push(ScannedRecord { record });
            pos += len;
            continue;
        }
        match find_next(bytes, pos + 1, min_seq, last_in_file) {
            Some((next, _, _)) => {
                let next_seq = peek_seq(&bytes[next..]);
                scan.bad.push(BadRange {
                    offset: pos as u64,
                    len: (next - pos) as u64,
                    prev_seq: last,
                    next_seq,
                });
                pos = next;
            }
            None => {
                let rest = &bytes[pos..];
                if looks_like_record(rest) && decode_one(rest).is_none() {
                    // A record damaged in place ends the round (an intact one here is stale).
                    let claimed = rest
                        .get(4..8)
                        .and_then(|b| <[u8; 4]>::try_from(b).ok())
                        .map_or(0, |b| u32::from_be_bytes(b) as usize);
                    let len = (HEADER_LEN + claimed).min(rest.len());
                    scan.bad.push(BadRange {
                        offset: pos as u64,
                        len: len as u64,
                        prev_seq: last,
                        next_seq: None,
                    });
                    pos += len;
                    runs_off = pos >= bytes.len();
                } else {
                    // Zeros, stale records, or a record cut off by the end of the file.
                    runs_off = rest.len() < HEADER_LEN
                        || (rest.starts_with(&RECORD_MAGIC) && decode_one(rest).is_none());
                }
                break;
            }
        }
    }
    scan.round_end = pos as u64;
    scan.round_runs_off = runs_off || pos >= bytes.len();
    scan
}

/// The intact records of the current round in a journal file's bytes, in order (damaged
/// bytes skipped, stale records left out).
pub(crate) fn current_records(bytes: &[u8]) -> Vec<Record> {
    scan_file(bytes)
        .records
        .into_iter()
        .map(|r| r.record)
        .collect()
}

/// One journal file as found on disk.
#[derive(Debug)]
pub(crate) struct FoundFile {
    pub(crate) path: PathBuf,
    /// `None`: the file does not exist.
    pub(crate) scan: Option<FileScan>,
}

/// Reads both journal files of `dir`.
fn read_files(dir: &Path) -> Result<Vec<(FoundFile, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in JOURNAL_FILE_NAMES {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => out.push((
                FoundFile {
                    path,
                    scan: Some(scan_file(&bytes)),
                },
                bytes,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                out.push((FoundFile { path, scan: None }, Vec::new()));
            }
            Err(e) => return Err(io_error(e)),
        }
    }
    Ok(out)
}

/// What the open knows besides the files.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expectations {
    /// The number of the last record sled holds.
    pub(crate) database_seq: u64,
    /// The directory has journal files (data format 3 and later, not a new directory).
    pub(crate) files_expected: bool,
    /// The last run closed cleanly: sled holds everything, the files are not needed.
    pub(crate) closed_cleanly: bool,
    /// The size journal files are created with (for files without a header).
    pub(crate) capacity: u64,
}

/// The records to apply (numbers above the database's, in order) and the report.
pub(crate) fn analyse<'a>(
    files: &[&'a FoundFile],
    expect: Expectations,
) -> (Vec<&'a Record>, JournalReport) {
    let db = expect.database_seq;
    let mut present: BTreeMap<u64, &'a Record> = BTreeMap::new();
    let mut records = 0;
    for scan in files.iter().filter_map(|f| f.scan.as_ref()) {
        for r in &scan.records {
            records += 1;
            present.entry(r.record.seq).or_insert(&r.record);
        }
    }
    let mut report = JournalReport {
        database_seq: db,
        records,
        last_seq: present.keys().next_back().copied().unwrap_or(0).max(db),
        ..JournalReport::default()
    };
    // The number of the first record after `seq` that some file holds.
    let next_present = |seq: u64| present.range(seq + 1..).next().map(|(s, _)| *s);
    // Numbers in `first..=last` above the database's that no file holds.
    let missing_in = |first: u64, last: u64| -> Option<(u64, u64)> {
        let first = first.max(db + 1);
        if first > last {
            return None;
        }
        let lo = (first..=last).find(|s| !present.contains_key(s))?;
        let hi = (lo..=last).rev().find(|s| !present.contains_key(s))?;
        Some((lo, hi))
    };
    let mut explained: Vec<(u64, u64)> = Vec::new();
    for file in files.iter().copied() {
        let Some(scan) = &file.scan else {
            if expect.files_expected && !expect.closed_cleanly {
                let first = next_present(db).map_or(db + 1, |_| db + 1);
                report.damage.push(JournalDamage {
                    kind: DamageKind::Missing,
                    file: file.path.clone(),
                    offset: 0,
                    len: 0,
                    lost: Some((first, first)),
                    extent_unknown: true,
                    quarantined: None,
                });
            }
            continue;
        };
        let mut add = |damage: JournalDamage| {
            if let (Some(range), false) = (damage.lost, expect.closed_cleanly) {
                explained.push(range);
                report.damage.push(damage);
            } else {
                report.harmless.push(JournalDamage {
                    lost: None,
                    extent_unknown: false,
                    ..damage
                });
            }
        };
        for bad in &scan.bad {
            let lower = bad.prev_seq.unwrap_or(db);
            let lost = match bad.next_seq {
                Some(next) => missing_in(lower + 1, next.saturating_sub(1)),
                // The damaged record that ended the round: lost unless the round went on in
                // the other file.
                None => match next_present(lower) {
                    Some(next) => missing_in(lower + 1, next - 1),
                    None => missing_in(lower + 1, lower + 1),
                },
            };
            add(JournalDamage {
                kind: DamageKind::Corrupt,
                file: file.path.clone(),
                offset: bad.offset,
                len: bad.len,
                lost,
                extent_unknown: false,
                quarantined: None,
            });
        }
        let capacity = scan.header.map_or(expect.capacity, |h| h.capacity);
        if scan.len < capacity && expect.files_expected {
            let last = scan
                .records
                .last()
                .map(|r| r.record.seq)
                .or(scan.header.and_then(|h| h.first_seq.checked_sub(1)))
                .unwrap_or(db);
            let (lost, unknown) = if !scan.round_runs_off {
                (None, false)
            } else {
                match next_present(last) {
                    Some(next) => (missing_in(last + 1, next - 1), false),
                    None => (Some((last + 1, last + 1)).filter(|(a, _)| *a > db), true),
                }
            };
            add(JournalDamage {
                kind: DamageKind::Truncated,
                file: file.path.clone(),
                offset: scan.len,
                len: capacity - scan.len,
                lost,
                extent_unknown: unknown,
                quarantined: None,
            });
        }
        if scan.header_damaged && scan.bad.iter().all(|b| b.offset != FILE_HEADER_LEN) {
            add(JournalDamage {
                kind: DamageKind::Corrupt,
                file: file.path.clone(),
                offset: 0,
                len: FILE_HEADER_LEN,
                lost: None,
                extent_unknown: false,
                quarantined: None,
            });
        }
    }
    // Numbers that no file holds and no damage explains.
    let mut expected = db + 1;
    for &seq in present.range(db + 1..).map(|(s, _)| s) {
        if seq > expected {
            let (first, last) = (expected, seq - 1);
            let covered = explained.iter().any(|&(a, b)| a <= first && last <= b);
            if !covered {
                report.damage.push(JournalDamage {
                    kind: DamageKind::Gap,
                    file: files
                        .first()
                        .and_then(|f| f.path.parent())
                        .map(Path::to_path_buf)
                        .unwrap_or_default(),
                    offset: 0,
                    len: 0,
                    lost: Some((first, last)),
                    extent_unknown: false,
                    quarantined: None,
                });
            }
        }
        expected = seq + 1;
    }
    let apply: Vec<&Record> = present.range(db + 1..).map(|(_, r)| *r).collect();
    report.newer = apply.len() as u64;
    (apply, report)
}

/// Reads the journal files of the data directory `dir` without changing anything, given the
/// sequence number the database holds (`meta/journal_seq`; 0 when unknown), and reports what
/// it finds: damage, truncation, missing files, gaps. For `postrider store check`.
pub fn inspect_journal(dir: &Path, database_seq: u64) -> Result<JournalReport> {
    let found: Vec<FoundFile> = read_files(dir)?.into_iter().map(|(f, _)| f).collect();
    let refs: Vec<&FoundFile> = found.iter().collect();
    let (_, report) = analyse(
        &refs,
        Expectations {
            database_seq,
            files_expected: true,
            closed_cleanly: false,
            capacity: super::JOURNAL_FILE_BYTES,
        },
    );
    Ok(report)
}

/// Copies the damaged bytes of each lossy damage into `<dir>/quarantine/` and writes a report
/// file there listing every damage; fills in `quarantined`.
fn quarantine(dir: &Path, report: &mut JournalReport, files: &[(FoundFile, Vec<u8>)]) {
    let stamp = crate::clock_now().as_millis();
    let qdir = dir.join(QUARANTINE_DIR);
    if let Err(e) = std::fs::create_dir_all(&qdir) {
        tracing::error!(dir = %qdir.display(), error = %e, "cannot create the quarantine directory");
        return;
    }
    for damage in &mut report.damage {
        if damage.kind != DamageKind::Corrupt {
            continue;
        }
        let Some((_, bytes)) = files.iter().find(|(f, _)| f.path == damage.file) else {
            continue;
        };
        let start = usize::try_from(damage.offset).unwrap_or(usize::MAX);
        let end = usize::try_from(damage.offset + damage.len).unwrap_or(usize::MAX);
        let Some(slice) = bytes.get(start..end.min(bytes.len())) else {
            continue;
        };
        let name = format!(
            "{}-at-{}-len-{}-{stamp}.bin",
            damage
                .file
                .file_name()
                .map_or_else(|| "journal".into(), |n| n.to_string_lossy()),
            damage.offset,
            damage.len
        );
        let path = qdir.join(name);
        match std::fs::write(&path, slice) {
            Ok(()) => damage.quarantined = Some(path),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot keep a copy of damaged journal bytes");
            }
        }
    }
    let mut text = format!(
        "Postrider journal damage found at open ({} ms since the epoch).\n\
         The database held journal records up to {}; the files held {} intact records up to {}.\n\n",
        stamp, report.database_seq, report.records, report.last_seq
    );
    for d in &report.damage {
        text.push_str(&format!("LOST      {d}\n"));
    }
    for d in &report.harmless {
        text.push_str(&format!("harmless  {d}\n"));
    }
    let path = qdir.join(format!("journal-damage-{stamp}.txt"));
    if let Err(e) = std::fs::write(&path, text) {
        tracing::error!(path = %path.display(), error = %e, "cannot write the journal damage report");
    }
    sync_parent(&path);
}

/// How [`replay`] treats the directory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplaySettings {
    /// The journal files' size.
    pub(crate) capacity: u64,
    /// The directory has journal files (data format 3 and later).
    pub(crate) files_expected: bool,
    /// Open even when records are missing that no damage explains.
    pub(crate) accept_loss: bool,
}

/// Re-applies the journaled records sled lacks, reporting (and quarantining) damage, then
/// checkpoints. Returns the number the next record gets and what was found. Fails with
/// [`StoreError::JournalIncomplete`] when records are missing that nothing explains (unless
/// `accept_loss`). Missing files are created (empty, `capacity` bytes, sparse).
pub(crate) fn replay(
    dir: &Path,
    db: &sled::Db,
    trees: &Trees,
    log_file: Option<&std::fs::File>,
    settings: ReplaySettings,
) -> Result<Replayed> {
    let started = Instant::now();
    let database_seq = sled_seq(trees)?;
    let clean_marker = trees.meta.get(JOURNAL_CLEAN_KEY)?;
    let closed_cleanly = clean_marker
        .as_ref()
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .is_some_and(|v| u64::from_be_bytes(v) == database_seq);
    let files = read_files(dir)?;
    let file_refs: Vec<&FoundFile> = files.iter().map(|(f, _)| f).collect();
    let (apply, mut report) = analyse(
        &file_refs,
        Expectations {
            database_seq,
            files_expected: settings.files_expected,
            closed_cleanly,
            capacity: settings.capacity,
        },
    );
    if let Some(refused) = report.refusal() {
        if !settings.accept_loss {
            for d in &report.damage {
                tracing::error!(damage = %d, "journal records are missing");
            }
            return Err(StoreError::JournalIncomplete { detail: refused });
        }
        tracing::error!(
            "starting although journal records are missing (--accept-journal-loss): {refused}"
        );
    }
    if !report.damage.is_empty() || !report.harmless.is_empty() {
        if !report.damage.is_empty() {
            quarantine(dir, &mut report, &files);
        }
        for d in &report.damage {
            tracing::error!(
                file = %d.file.display(),
                offset = d.offset,
                len = d.len,
                first_lost = d.lost.map(|l| l.0),
                last_lost = d.lost.map(|l| l.1),
                extent_unknown = d.extent_unknown,
                "journal damage: {d}"
            );
        }
        for d in &report.harmless {
            tracing::warn!(file = %d.file.display(), "journal damage that lost nothing: {d}");
        }
    }
    let all = trees.all();
    let mut applied = 0u64;
    let mut last = database_seq;
    for record in &apply {
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
    let lost_something = !report.damage.is_empty();
    if lost_something {
        // The lost records may have changed the count: recount it at this open.
        trees.meta.remove(crate::codec::PENDING_COUNT_KEY)?;
    }
    if clean_marker.is_some() {
        // From now on the journal matters again.
        trees.meta.remove(JOURNAL_CLEAN_KEY)?;
    }
    if applied > 0 || lost_something || clean_marker.is_some() {
        checkpoint(db, log_file).map_err(StoreError::Sled)?;
    }
    if applied > 0 {
        tracing::info!(
            applied,
            last_seq = last,
            ms = started.elapsed().as_millis() as u64,
            "journal replayed"
        );
    }
    for name in JOURNAL_FILE_NAMES {
        open_file(&dir.join(name), settings.capacity)?;
    }
    let lost_max = report
        .damage
        .iter()
        .filter_map(|d| d.lost.map(|l| l.1))
        .max()
        .unwrap_or(0);
    let next_seq = report.last_seq.max(last).max(lost_max) + 1;
    let resume = resume_point(&file_refs, report.last_seq, settings.capacity)
        .filter(|_| report.damage.is_empty() && report.harmless.is_empty());
    // A file that held damage starts over: its records are all in sled now (checkpointed
    // above), and its damage was reported once.
    for (index, file) in file_refs.iter().enumerate() {
        if report
            .damage
            .iter()
            .chain(&report.harmless)
            .any(|d| d.file == file.path)
        {
            retire_file(&file.path, index as u32, settings.capacity, next_seq)?;
        }
    }
    Ok(Replayed {
        next_seq,
        report,
        resume,
    })
}

/// What [`replay`] found and where writing goes on.
#[derive(Debug)]
pub(crate) struct Replayed {
    /// The number the next record gets.
    pub(crate) next_seq: u64,
    /// What was found.
    pub(crate) report: JournalReport,
    /// The file (index) and offset where the newest round ends, to go on writing there; `None`
    /// starts a new round in the first file.
    pub(crate) resume: Option<(usize, u64)>,
}

/// Where the newest round can simply go on: the file holding the last record, when it has an
/// intact header and its full size, nothing damaged, and room left. Going on (rather than
/// starting a new round at every start) keeps the records of earlier runs in the journal as a
/// second copy, which `postrider store rebuild` replays when the database is lost.
fn resume_point(files: &[&FoundFile], last_seq: u64, capacity: u64) -> Option<(usize, u64)> {
    files.iter().enumerate().find_map(|(index, file)| {
        let scan = file.scan.as_ref()?;
        let header = scan.header?;
        let last = scan.records.last()?.record.seq;
        let intact = scan.bad.is_empty()
            && !scan.header_damaged
            && header.capacity == capacity
            && scan.len >= capacity
            && usize::try_from(header.index).ok() == Some(index);
        (intact && last == last_seq && scan.round_end < capacity).then_some((index, scan.round_end))
    })
}

#[cfg(test)]
mod tests {
    use super::super::record::tests::sample_ops;
    use super::super::record::{FileHeader, encode_record};
    use super::*;

    const CAPACITY: u64 = 256 * 1024;

    /// A journal file holding a round of records `seqs` (after a header naming the first),
    /// then zeros up to `CAPACITY`, then `stale` older records.
    fn file_with(index: u32, seqs: impl IntoIterator<Item = u64>, stale: &[u64]) -> Vec<u8> {
        let seqs: Vec<u64> = seqs.into_iter().collect();
        let mut bytes = FileHeader {
            index,
            capacity: CAPACITY,
            first_seq: seqs.first().copied().unwrap_or(1),
        }
        .encode();
        for &s in &seqs {
            encode_record(s, &sample_ops(), &mut bytes);
        }
        bytes.resize(bytes.len() + 4096, 0);
        for &s in stale {
            encode_record(s, &sample_ops(), &mut bytes);
        }
        bytes.resize(CAPACITY as usize, 0);
        bytes
    }

    /// Where record `n` (0-based) of a file made by [`file_with`] starts.
    fn record_offset(n: usize) -> usize {
        let mut one = Vec::new();
        encode_record(1, &sample_ops(), &mut one);
        FILE_HEADER_LEN as usize + n * one.len()
    }

    fn found(name: &str, bytes: Option<&[u8]>) -> FoundFile {
        FoundFile {
            path: PathBuf::from(name),
            scan: bytes.map(scan_file),
        }
    }

    fn expect(database_seq: u64) -> Expectations {
        Expectations {
            database_seq,
            files_expected: true,
            closed_cleanly: false,
            capacity: CAPACITY,
        }
    }

    fn run(files: &[FoundFile], e: Expectations) -> (Vec<u64>, JournalReport) {
        let refs: Vec<&FoundFile> = files.iter().collect();
        let (apply, report) = analyse(&refs, e);
        (apply.iter().map(|r| r.seq).collect(), report)
    }

    #[test]
    fn an_intact_journal_applies_every_newer_record_and_ignores_stale_ones() {
        let a = file_with(0, 11..=20, &[3, 4, 5]);
        let b = file_with(1, 21..=25, &[6, 7]);
        let files = [found("journal-0", Some(&a)), found("journal-1", Some(&b))];
        let (applied, report) = run(&files, expect(15));
        assert_eq!(applied, (16..=25).collect::<Vec<_>>());
        assert!(
            report.is_clean() && report.harmless.is_empty(),
            "{report:?}"
        );
        assert_eq!(
            (report.records, report.newer, report.last_seq),
            (15, 10, 25)
        );
    }

    #[test]
    fn a_flipped_byte_costs_only_its_record() {
        let mut a = file_with(0, 1..=200, &[]);
        a[record_offset(86) + 20] ^= 0x01;
        let files = [found("journal-0", Some(&a)), found("journal-1", None)];
        let (applied, report) = run(
            &files,
            Expectations {
                closed_cleanly: false,
                ..expect(0)
            },
        );
        let mut want: Vec<u64> = (1..=200).collect();
        want.retain(|&s| s != 87);
        assert_eq!(applied, want, "everything after the damage is recovered");
        let corrupt: Vec<_> = report
            .damage
            .iter()
            .filter(|d| d.kind == DamageKind::Corrupt)
            .collect();
        assert_eq!(corrupt.len(), 1, "{report:?}");
        assert_eq!(corrupt[0].lost, Some((87, 87)));
        assert_eq!(corrupt[0].offset as usize, record_offset(86));
        assert_eq!(
            corrupt[0].len as usize,
            record_offset(87) - record_offset(86)
        );
        assert!(
            !report.damage.iter().any(|d| d.kind == DamageKind::Gap),
            "the damage explains the missing number"
        );
        assert_eq!(
            report.lost_records(),
            1 + 1,
            "one record and the missing file"
        );
        let line = corrupt[0].to_string();
        assert!(
            line.contains("journal-0") && line.contains("record 87"),
            "{line}"
        );
    }

    #[test]
    fn scattered_flips_cost_only_the_records_they_hit() {
        let mut a = file_with(0, 1..=300, &[]);
        let hit = [5usize, 6, 90, 91, 92, 200, 299];
        for (i, &n) in hit.iter().enumerate() {
            a[record_offset(n) + 3 + i * 7] ^= 0xA5;
        }
        let b = file_with(1, std::iter::empty(), &[]);
        let files = [found("journal-0", Some(&a)), found("journal-1", Some(&b))];
        let (applied, report) = run(&files, expect(0));
        let lost: Vec<u64> = hit.iter().map(|&n| n as u64 + 1).collect();
        let want: Vec<u64> = (1..=300).filter(|s| !lost.contains(s)).collect();
        assert_eq!(applied, want);
        assert_eq!(report.lost_records(), lost.len() as u64, "{report:#?}");
        assert!(report.refusal().is_none(), "damage alone does not refuse");
    }

    #[test]
    fn the_damaged_last_record_is_reported() {
        let mut a = file_with(0, 1..=10, &[]);
        a[record_offset(9) + 30] ^= 0x40;
        let files = [found("journal-0", Some(&a))];
        let (applied, report) = run(&files, expect(0));
        assert_eq!(applied, (1..=9).collect::<Vec<_>>());
        assert_eq!(report.damage.len(), 1, "{report:?}");
        assert_eq!(report.damage[0].lost, Some((10, 10)));
    }

    #[test]
    fn a_truncated_round_loses_what_followed_the_cut() {
        let a = file_with(0, 1..=100, &[]);
        let cut = record_offset(50) + 17;
        let files = [found("journal-0", Some(&a[..cut]))];
        let (applied, report) = run(&files, expect(0));
        assert_eq!(applied, (1..=50).collect::<Vec<_>>());
        let t = report
            .damage
            .iter()
            .find(|d| d.kind == DamageKind::Truncated)
            .expect("truncation reported");
        assert_eq!(t.lost, Some((51, 51)));
        assert!(t.extent_unknown);
        assert_eq!(t.offset as usize, cut);
        assert!(report.refusal().is_none());
        // Cut after the round's end: nothing lost.
        let after = record_offset(100) + 100;
        let files = [found("journal-0", Some(&a[..after]))];
        let (applied, report) = run(&files, expect(0));
        assert_eq!(applied.len(), 100);
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.harmless.len(), 1);
    }

    #[test]
    fn a_missing_file_refuses_unless_the_last_run_closed_cleanly() {
        let a = file_with(0, 1..=10, &[]);
        let files = [found("journal-0", Some(&a)), found("journal-1", None)];
        let (_, report) = run(&files, expect(0));
        let refusal = report.refusal().expect("refused");
        assert!(refusal.contains("journal-1: file missing"), "{refusal}");
        let (_, report) = run(
            &files,
            Expectations {
                closed_cleanly: true,
                ..expect(10)
            },
        );
        assert!(report.is_clean() && report.refusal().is_none());
        // A new directory has no files yet.
        let none = [found("journal-0", None), found("journal-1", None)];
        let (_, report) = run(
            &none,
            Expectations {
                files_expected: false,
                ..expect(0)
            },
        );
        assert!(report.is_clean());
    }

    #[test]
    fn missing_numbers_without_damage_refuse() {
        let a = file_with(0, 11..=20, &[]);
        let files = [found("journal-0", Some(&a))];
        let (_, report) = run(&files, expect(5));
        let gap = report
            .damage
            .iter()
            .find(|d| d.kind == DamageKind::Gap)
            .expect("gap");
        assert_eq!(gap.lost, Some((6, 10)));
        assert!(report.refusal().is_some());
    }

    #[test]
    fn damage_in_records_the_database_holds_loses_nothing() {
        let mut a = file_with(0, 1..=50, &[]);
        a[record_offset(10) + 25] ^= 0x08;
        let files = [found("journal-0", Some(&a))];
        let (applied, report) = run(&files, expect(30));
        assert_eq!(applied, (31..=50).collect::<Vec<_>>());
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.harmless.len(), 1);
    }

    #[test]
    fn the_damaged_end_of_a_round_that_went_on_in_the_other_file_loses_nothing() {
        // The older file ends with bytes that look like a damaged record (a write over stale
        // data); the round went on in the other file at the next number.
        let mut a = file_with(0, 1..=10, &[]);
        let end = record_offset(10);
        let mut junk = Vec::new();
        encode_record(3, &sample_ops(), &mut junk);
        junk[30] ^= 0x01;
        a[end..end + junk.len()].copy_from_slice(&junk);
        let b = file_with(1, 11..=12, &[]);
        let files = [found("journal-0", Some(&a)), found("journal-1", Some(&b))];
        let (applied, report) = run(&files, expect(0));
        assert_eq!(applied, (1..=12).collect::<Vec<_>>());
        assert!(report.is_clean(), "{report:?}");
    }

    #[test]
    fn a_data_format_3_file_without_header_is_read() {
        let mut bytes = Vec::new();
        for s in 1..=5 {
            encode_record(s, &sample_ops(), &mut bytes);
        }
        bytes.resize(CAPACITY as usize, 0);
        let files = [found("journal-0", Some(&bytes))];
        let (applied, report) = run(&files, expect(2));
        assert_eq!(applied, vec![3, 4, 5]);
        assert!(report.is_clean(), "{report:?}");
    }

    #[test]
    fn a_damaged_header_is_reported_and_the_records_still_read() {
        let mut a = file_with(0, 1..=5, &[]);
        a[9] ^= 0xFF;
        let files = [found("journal-0", Some(&a))];
        let (applied, report) = run(&files, expect(0));
        assert_eq!(applied, (1..=5).collect::<Vec<_>>());
        assert!(report.is_clean());
        assert!(report.harmless.iter().any(|d| d.offset == 0), "{report:?}");
    }
}
