//! A planned state change: preconditions plus one write batch per tree, applied in a single sled
//! transaction. Plans are computed outside the transaction (decoding and JSON encoding happen
//! once), so the transaction closure only checks preconditions and applies batches: it is
//! side-effect free and cheap to re-run on conflict.

use std::convert::Infallible;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Batch, IVec, Transactional};

use crate::Trees;
use crate::error::{Result, StoreError};

/// Writes to apply atomically, and what must still hold for them to apply.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// `(id key, expected value)`: the record must still be exactly this (`None`: absent).
    pub(crate) expect_record: Option<([u8; 8], Option<IVec>)>,
    /// This `schedule` key must still be present (e.g. the lease being recorded).
    pub(crate) expect_scheduled: Option<[u8; 16]>,
    pub(crate) messages: Batch,
    pub(crate) bodies: Batch,
    pub(crate) schedule: Batch,
    pub(crate) finished: Batch,
    pub(crate) held: Batch,
    /// Change of the pending-message count once applied.
    pub(crate) pending_delta: i64,
    /// Whether the scheduler should be woken once applied (new or earlier schedule entries).
    pub(crate) wakes: bool,
}

/// What happened to a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every write was applied.
    Applied,
    /// The record differed from the snapshot; nothing was written.
    RecordChanged,
    /// The expected schedule entry was gone; nothing was written.
    NotScheduled,
}

/// Applies `plan` in one transaction over every tree.
pub(crate) fn apply(trees: &Trees, plan: &Plan) -> Result<Verdict> {
    let tuple = (
        &trees.messages,
        &trees.bodies,
        &trees.schedule,
        &trees.finished,
        &trees.held,
    );
    let result = tuple.transaction(|(m, b, s, f, h)| {
        if let Some((key, expected)) = &plan.expect_record
            && m.get(key)? != *expected
        {
            return Ok(Verdict::RecordChanged);
        }
        if let Some(key) = &plan.expect_scheduled
            && s.get(key)?.is_none()
        {
            return Ok(Verdict::NotScheduled);
        }
        m.apply_batch(&plan.messages)?;
        b.apply_batch(&plan.bodies)?;
        s.apply_batch(&plan.schedule)?;
        f.apply_batch(&plan.finished)?;
        h.apply_batch(&plan.held)?;
        Ok::<_, ConflictableTransactionError<Infallible>>(Verdict::Applied)
    });
    match result {
        Ok(v) => Ok(v),
        Err(TransactionError::Storage(e)) => Err(StoreError::Sled(e)),
        Err(TransactionError::Abort(never)) => match never {},
    }
}
