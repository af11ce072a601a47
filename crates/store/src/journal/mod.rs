//! Write-ahead journal: what makes a write durable before its `250`, and what lets a damaged
//! file cost only the records it held.
//!
//! Every write to the database goes through [`Store::write`], run under the journal lock, which
//! records the exact keys and values it wrote and gives them a sequence number, stored last in
//! `meta/journal_seq`. Once committed, the record is appended to an in-memory buffer; the group
//! committer (`commit.rs`) writes the buffer to the journal file and `fdatasync`s it: one small
//! sequential write and one sync per group, with no sled flush on the way.
//!
//! sled still writes its own log in the background. A **checkpoint** (`Db::flush` plus
//! `fdatasync` of sled's log) makes sled itself hold everything written so far; it runs when
//! the active journal file is full (on a thread of its own while the other file takes new
//! records), every [`crate::commit::CHECKPOINT_INTERVAL`] while anything changed, and when the
//! store is closed. A file is written again only after the checkpoint that covers it finished.
//!
//! On open, [`replay`] reads both files and re-applies, in order, every record newer than the
//! `meta/journal_seq` that sled recovered. sled recovers a prefix of its log, and writes reach
//! its log in sequence order (one at a time, under the journal lock, each record's number
//! after its writes), so what it lacks is at most part of the record after that number and
//! everything later. Records are absolute writes (a value or a removal), so applying one that
//! sled already has, in whole or in part, changes nothing. Damaged bytes are skipped: the
//! reader finds the next intact record and goes on, and reports what was lost.
//!
//! The parts: `record.rs` (byte layout), `files.rs` (the committer's files and checkpoints),
//! `replay.rs` (reading, damage, replay at open).

mod files;
mod record;
mod replay;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use sled::IVec;

use crate::Store;
use crate::Trees;
use crate::error::{Result, StoreError};

pub(crate) use files::{JOURNAL_FILE_BYTES, JOURNAL_FILE_NAMES, JournalFiles};
pub(crate) use record::{Op, encode_record};
pub use replay::{DamageKind, JournalDamage, JournalReport, inspect_journal};
pub(crate) use replay::{ReplaySettings, Replayed, current_records, replay};

/// Key in `meta` of the sequence number of the last journaled transaction sled holds.
pub(crate) const JOURNAL_SEQ_KEY: &[u8] = b"journal_seq";
/// Key in `meta` written by a clean close: the `journal_seq` at that moment. While it equals
/// `journal_seq`, sled alone holds every write and the journal files are not needed.
pub(crate) const JOURNAL_CLEAN_KEY: &[u8] = b"journal_closed_at_seq";

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
    Inbox = 11,
}

/// Number of trees a transaction spans.
const TREE_COUNT: usize = 12;

impl TreeId {
    pub(crate) fn from_u8(b: u8) -> Option<TreeId> {
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
            Inbox,
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
            &self.inbox,
        ]
    }
}

/// Records committed to sled and not yet handed to the committer.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The number the next journaled transaction gets.
    pub(crate) next_seq: u64,
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

    pub(crate) fn lock(&self) -> MutexGuard<'_, Pending> {
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
pub(crate) fn sled_seq(trees: &Trees) -> Result<u64> {
    Ok(trees
        .meta
        .get(JOURNAL_SEQ_KEY)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, u64::from_be_bytes))
}
