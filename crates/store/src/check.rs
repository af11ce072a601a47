//! Consistency check of the queue ([`Store::check`]): whether the trees agree with each other
//! the way every transaction leaves them (`migrations-free-data/README.md`). Meant for a store
//! nobody writes to meanwhile (`postrider store check` works on a copy); on a live store a
//! change in progress may show as a problem.

use std::fmt;

use postrider_core::{MessageId, Timestamp};

use crate::codec::{self, StoredMessage};
use crate::damage::contain;
use crate::error::{Result, StoreError};
use crate::keys::{TimeKey, hex, id_key, parse_id_key};
use crate::{Store, Trees};

/// Most problems a [`ConsistencyReport`] lists; further ones are only counted.
pub const MAX_PROBLEMS: usize = 1000;

/// One inconsistency: which message (when known) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The message concerned; `None` for problems of the queue as a whole.
    pub id: Option<MessageId>,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.id {
            Some(id) => write!(f, "message {id}: {}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

/// What [`Store::check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsistencyReport {
    /// Message records that decode.
    pub messages: u64,
    /// Of those, the unfinished ones (held ones included): what `meta/pending_count` must say.
    pub unfinished: u64,
    /// The first [`MAX_PROBLEMS`] problems found.
    pub problems: Vec<Problem>,
    /// Problems found beyond those listed.
    pub unlisted: u64,
}

impl ConsistencyReport {
    /// Whether no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.unlisted == 0
    }

    /// Records a problem (listed while fewer than [`MAX_PROBLEMS`] are).
    fn add(&mut self, id: Option<MessageId>, what: impl Into<String>) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem {
                id,
                what: what.into(),
            });
        } else {
            self.unlisted += 1;
        }
    }
}

impl fmt::Display for ConsistencyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let found = self.problems.len() as u64 + self.unlisted;
        writeln!(
            f,
            "queue: {} messages ({} unfinished), {found} problems",
            self.messages, self.unfinished
        )?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        if self.unlisted > 0 {
            writeln!(f, "  … and {} more", self.unlisted)?;
        }
        Ok(())
    }
}

impl Store {
    /// Checks that the queue's trees agree: every message record decodes; every unfinished
    /// message has its body and every body chunk; every schedule entry points at a record
    /// whose `schedule_at` matches, and every unfinished message that is not held has one;
    /// the held and finished indexes match the records; `meta/pending_count` equals a recount.
    /// Reads everything once (O(stored messages)); an error or a panic inside sled while
    /// reading a tree is reported as a problem and ends that tree's pass.
    pub fn check(&self) -> ConsistencyReport {
        let trees = &self.inner.trees;
        let mut report = ConsistencyReport::default();
        let passes: [(&str, Pass); 5] = [
            ("messages", check_records),
            ("schedule", check_schedule),
            ("held", check_held),
            ("finished", check_finished),
            ("meta", check_pending_count),
        ];
        for (tree, pass) in passes {
            let outcome = contain(|| pass(trees, &mut report));
            let failure = match outcome {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(panic) => format!("sled panicked: {panic}"),
            };
            report.add(
                None,
                format!("reading the {tree} tree failed, the rest of it is unchecked: {failure}"),
            );
        }
        report
    }
}

/// Unfinished messages (held ones included) among the records that decode: what
/// `meta/pending_count` must say.
pub(crate) fn count_unfinished(trees: &Trees) -> Result<i64> {
    let mut count = 0;
    for item in trees.messages.iter() {
        let (key, value) = item?;
        if codec::decode_message(&key, &value).is_ok_and(|r| !r.message.is_finished()) {
            count += 1;
        }
    }
    Ok(count)
}

/// One pass of [`Store::check`] over one tree.
type Pass = fn(&Trees, &mut ConsistencyReport) -> Result<()>;

/// Reads the record of `id`: `None` when there is none or it does not decode (reported by
/// [`check_records`]).
fn record_of(trees: &Trees, id: MessageId) -> Result<Option<StoredMessage>> {
    let key = id_key(id);
    Ok(match trees.messages.get(key)? {
        Some(bytes) => codec::decode_message(&key, &bytes).ok(),
        None => None,
    })
}

/// Whether `tree` has the `(at, id)` entry.
fn has_entry(tree: &sled::Tree, at: Timestamp, id: MessageId) -> Result<bool> {
    Ok(tree.contains_key(TimeKey::new(at, id).to_bytes())?)
}

/// Every record decodes, and has what its state needs: body, schedule, held and finished
/// entries.
fn check_records(trees: &Trees, report: &mut ConsistencyReport) -> Result<()> {
    for item in trees.messages.iter() {
        let (key, value) = item?;
        let Some(id) = parse_id_key(&key) else {
            report.add(
                None,
                format!("messages key {} is not a message id", hex(&key)),
            );
            continue;
        };
        let rec = match codec::decode_message(&key, &value) {
            Ok(rec) => rec,
            Err(e) => {
                report.add(Some(id), format!("record does not decode: {e}"));
                continue;
            }
        };
        report.messages += 1;
        if rec.message.id != id {
            report.add(Some(id), format!("record holds the id {}", rec.message.id));
        }
        let links = RecordLinks {
            trees,
            id,
            held: trees.held.contains_key(key)?,
            rec: &rec,
        };
        if rec.message.is_finished() {
            links.check_finished(report)?;
        } else {
            report.unfinished += 1;
            links.check_unfinished(report)?;
        }
    }
    Ok(())
}

/// One decoded message record and what it needs from the other trees.
struct RecordLinks<'a> {
    trees: &'a Trees,
    id: MessageId,
    rec: &'a StoredMessage,
    /// Whether the held index lists it.
    held: bool,
}

impl RecordLinks<'_> {
    /// A finished record: its finished entry, no hold, no schedule time.
    fn check_finished(&self, report: &mut ConsistencyReport) -> Result<()> {
        let (trees, id, rec) = (self.trees, self.id, self.rec);
        match rec.message.finished_at {
            Some(at) if !has_entry(&trees.finished, at, id)? => report.add(
                Some(id),
                format!(
                    "finished at {}, but the finished index has no entry",
                    at.to_rfc3339()
                ),
            ),
            Some(_) => {}
            None => report.add(Some(id), "finished, but without a finish time"),
        }
        if self.held {
            report.add(Some(id), "finished, but still in the held index");
        }
        if let Some(at) = rec.schedule_at {
            report.add(
                Some(id),
                format!("finished, but has a schedule time ({})", at.to_rfc3339()),
            );
        }
        Ok(())
    }

    /// An unfinished record: its body and every chunk, its hold, its schedule entry.
    fn check_unfinished(&self, report: &mut ConsistencyReport) -> Result<()> {
        let (trees, id, rec) = (self.trees, self.id, self.rec);
        let key = id_key(id);
        match trees.bodies.get(key)? {
            None => report.add(Some(id), "unfinished, but its body is missing"),
            Some(head) => {
                let body = codec::decode_body_records(&key, &head, |i| {
                    let mut k = key.to_vec();
                    k.extend_from_slice(&i.to_be_bytes());
                    Ok(trees.bodies.get(k)?.map(|c| c.to_vec()))
                });
                match body {
                    Ok(_) => {}
                    Err(e @ (StoreError::Corrupt { .. } | StoreError::UnknownFormat { .. })) => {
                        report.add(Some(id), format!("body: {e}"));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        match (rec.message.held, self.held) {
            (true, false) => report.add(Some(id), "held, but the held index has no entry"),
            (false, true) => report.add(Some(id), "in the held index, but not held"),
            _ => {}
        }
        match rec.schedule_at {
            Some(at) if !has_entry(&trees.schedule, at, id)? => report.add(
                Some(id),
                format!("its schedule entry at {} is missing", at.to_rfc3339()),
            ),
            Some(_) => {}
            None if !rec.message.held => {
                report.add(Some(id), "unfinished and not held, but not scheduled")
            }
            None => {}
        }
        Ok(())
    }
}

/// Every schedule entry belongs to an unfinished record scheduled at that time.
fn check_schedule(trees: &Trees, report: &mut ConsistencyReport) -> Result<()> {
    check_time_index(trees, &trees.schedule, "schedule", report, |at, rec| {
        if rec.message.is_finished() {
            Some("the message is finished".to_owned())
        } else if rec.schedule_at != Some(at) {
            Some(format!(
                "the record is scheduled at {}",
                rec.schedule_at
                    .map_or_else(|| "no time".to_owned(), Timestamp::to_rfc3339)
            ))
        } else {
            None
        }
    })
}

/// Every held entry belongs to a message record (whether that record is held is checked from
/// the record's side).
fn check_held(trees: &Trees, report: &mut ConsistencyReport) -> Result<()> {
    for key in trees.held.iter().keys() {
        let key = key?;
        match parse_id_key(&key) {
            None => report.add(None, format!("held key {} is not a message id", hex(&key))),
            Some(id) if !trees.messages.contains_key(&key)? => {
                report.add(Some(id), "in the held index, but no message record");
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Every finished entry belongs to a record finished at that time.
fn check_finished(trees: &Trees, report: &mut ConsistencyReport) -> Result<()> {
    check_time_index(
        trees,
        &trees.finished,
        "finished index",
        report,
        |at, rec| match rec.message.finished_at {
            _ if !rec.message.is_finished() => Some("the record is not finished".to_owned()),
            Some(t) if t != at => Some(format!("the record finished at {}", t.to_rfc3339())),
            Some(_) => None,
            None => Some("the record has no finish time".to_owned()),
        },
    )
}

/// Checks every `(time, id)` entry of the index `tree` (called `index` in problems): an entry
/// must have a message record, and `judge` says what is wrong with the record it points at,
/// given the entry's time. Records that do not decode are left to [`check_records`].
fn check_time_index(
    trees: &Trees,
    tree: &sled::Tree,
    index: &str,
    report: &mut ConsistencyReport,
    judge: impl Fn(Timestamp, &StoredMessage) -> Option<String>,
) -> Result<()> {
    for key in tree.iter().keys() {
        let key = key?;
        let Some(entry) = TimeKey::from_bytes(&key) else {
            report.add(None, format!("{index} key {} is malformed", hex(&key)));
            continue;
        };
        let at = entry.at.to_rfc3339();
        match record_of(trees, entry.id)? {
            None if trees.messages.contains_key(id_key(entry.id))? => {}
            None => report.add(
                Some(entry.id),
                format!("{index} entry at {at}, but no message record"),
            ),
            Some(rec) => {
                if let Some(what) = judge(entry.at, &rec) {
                    report.add(Some(entry.id), format!("{index} entry at {at}, but {what}"));
                }
            }
        }
    }
    Ok(())
}

/// `meta/pending_count` equals the unfinished records counted by [`check_records`].
fn check_pending_count(trees: &Trees, report: &mut ConsistencyReport) -> Result<()> {
    let counted = report.unfinished;
    match trees.meta.get(codec::PENDING_COUNT_KEY)? {
        None => report.add(
            None,
            format!("meta/pending_count is missing ({counted} messages are unfinished)"),
        ),
        Some(bytes) => match codec::decode_pending_count(&bytes) {
            Ok(kept) if i64::try_from(counted).is_ok_and(|c| c == kept) => {}
            Ok(kept) => report.add(
                None,
                format!("meta/pending_count is {kept}, but {counted} messages are unfinished"),
            ),
            Err(e) => report.add(None, format!("meta/pending_count: {e}")),
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use postrider_core::{Address, Envelope, NewMessage, RecipientRequest, ReversePath, Source};
    use postrider_metrics::Metrics;

    use super::*;

    const T0: u64 = 1_795_411_197_000;

    fn message(n: usize, size: usize) -> NewMessage {
        let env = Envelope::new(
            ReversePath::parse("sender@example.com").unwrap(),
            vec![RecipientRequest::new(
                Address::parse(&format!("u{n}@example.net")).unwrap(),
            )],
        )
        .unwrap();
        let mut body = format!("Subject: check {n}\r\n\r\n").into_bytes();
        body.resize(size, b'c');
        NewMessage::new(env, body, Source::Smtp, Timestamp::from_millis(T0))
    }

    fn ids(report: &ConsistencyReport) -> Vec<(Option<MessageId>, String)> {
        report
            .problems
            .iter()
            .map(|p| (p.id, p.what.clone()))
            .collect()
    }

    #[tokio::test]
    async fn a_consistent_queue_is_clean() {
        let store = Store::temporary(Metrics::new()).unwrap();
        let a = store.enqueue(message(1, 100)).await.unwrap();
        store.enqueue(message(2, 200_000)).await.unwrap();
        store.enqueue(message(3, 100)).await.unwrap();
        store.hold(a).await.unwrap();
        let report = store.check();
        assert!(report.is_clean(), "{report}");
        assert_eq!((report.messages, report.unfinished), (3, 3));
    }

    #[tokio::test]
    async fn each_broken_link_is_named_with_its_message() {
        let store = Store::temporary(Metrics::new()).unwrap();
        let small = store.enqueue(message(1, 100)).await.unwrap();
        let chunked = store.enqueue(message(2, 200_000)).await.unwrap();
        let unscheduled = store.enqueue(message(3, 100)).await.unwrap();
        let undecodable = store.enqueue(message(4, 100)).await.unwrap();
        let trees = &store.inner.trees;
        trees.bodies.remove(id_key(small)).unwrap();
        let mut chunk = id_key(chunked).to_vec();
        chunk.extend_from_slice(&2u32.to_be_bytes());
        trees.bodies.remove(chunk).unwrap();
        let rec = store.record(unscheduled).unwrap().unwrap();
        let at = rec.schedule_at.unwrap();
        trees
            .schedule
            .remove(TimeKey::new(at, unscheduled).to_bytes())
            .unwrap();
        let stray = MessageId::from_u64(9999);
        trees
            .schedule
            .insert(TimeKey::new(at, stray).to_bytes(), &[][..])
            .unwrap();
        trees.held.insert(id_key(stray), &[][..]).unwrap();
        trees
            .messages
            .insert(id_key(undecodable), &b"\x01{not json"[..])
            .unwrap();
        trees
            .meta
            .insert(codec::PENDING_COUNT_KEY, &7i64.to_be_bytes()[..])
            .unwrap();

        let report = store.check();
        let when = at.to_rfc3339();
        let found = ids(&report);
        let expect = [
            (
                Some(small),
                "unfinished, but its body is missing".to_owned(),
            ),
            (
                Some(unscheduled),
                format!("its schedule entry at {when} is missing"),
            ),
            (
                Some(stray),
                format!("schedule entry at {when}, but no message record"),
            ),
            (
                Some(stray),
                "in the held index, but no message record".to_owned(),
            ),
            (
                None,
                "meta/pending_count is 7, but 3 messages are unfinished".to_owned(),
            ),
        ];
        for e in &expect {
            assert!(found.contains(e), "{e:?} not in {report}");
        }
        assert!(
            found
                .iter()
                .any(|(id, what)| *id == Some(chunked) && what.contains("chunk 2 of 4 is missing")),
            "{report}"
        );
        assert!(
            found
                .iter()
                .any(|(id, what)| *id == Some(undecodable) && what.contains("does not decode")),
            "{report}"
        );
        assert_eq!(report.problems.len(), expect.len() + 2, "{report}");
        assert!(report.to_string().contains(&format!("message {small}: ")));
    }

    #[tokio::test]
    async fn finished_messages_need_their_index_entry_only() {
        let store = Store::temporary(Metrics::new()).unwrap();
        let id = store.enqueue(message(1, 100)).await.unwrap();
        let lease = store
            .lease_due(
                Timestamp::from_millis(T0),
                std::time::Duration::from_secs(60),
                1,
            )
            .unwrap()
            .remove(0);
        let mut done = lease.message.clone();
        for r in &mut done.recipients {
            r.state = postrider_core::RecipientState::Delivered;
        }
        let update = crate::AttemptUpdate {
            message: done,
            next_attempt_at: None,
            notifications: Vec::new(),
        };
        let _ = store.record_attempt(&lease, update).await.unwrap();
        assert!(store.check().is_clean(), "{}", store.check());
        let finished_at = store.message(id).unwrap().unwrap().finished_at.unwrap();
        store
            .inner
            .trees
            .finished
            .remove(TimeKey::new(finished_at, id).to_bytes())
            .unwrap();
        assert_eq!(
            ids(&store.check()),
            vec![(
                Some(id),
                format!(
                    "finished at {}, but the finished index has no entry",
                    finished_at.to_rfc3339()
                )
            )]
        );
    }
}
