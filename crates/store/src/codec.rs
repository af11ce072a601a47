//! Versioned value encodings. Every value starts with one format-version byte; readers decode
//! every version ever written and refuse newer ones with [`StoreError::UnknownFormat`].
//!
//! | tree | version | layout |
//! |---|---|---|
//! | `messages` | 1 | `0x01 ‖ JSON(StoredMessage)` |
//! | `messages` | 2 | `0x02 ‖ JSON(StoredMessage)`, a sandbox (captured) message |
//! | `bodies` | 1 | `0x01 ‖ raw RFC 5322 bytes` |
//! | `meta` `format_version` | — | `be_u32` data-directory format version |
//! | `meta` `lease_horizon` | — | `be_u64` ms, the latest lease expiry granted |
//! | `schedule` | — | empty, or [`LEASE_MARK`] for a lease |

use postrider_core::{QueuedMessage, Timestamp};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::keys::hex;

/// The newest message-record version this build writes and reads.
pub(crate) const MESSAGE_RECORD_VERSION: u8 = 2;
/// The message-record version of ordinary messages. Sandbox messages are written as
/// [`SANDBOX_MESSAGE_VERSION`] instead, so that a build that does not know the sandbox mark
/// refuses them as a newer format rather than delivering them for real.
pub(crate) const ORDINARY_MESSAGE_VERSION: u8 = 1;
/// The message-record version of sandbox messages (same JSON; the version itself is the mark).
pub(crate) const SANDBOX_MESSAGE_VERSION: u8 = 2;
/// The newest body-record version this build writes and reads.
pub(crate) const BODY_RECORD_VERSION: u8 = 1;
/// The data-directory format version stored in `meta` under [`FORMAT_VERSION_KEY`].
///
/// 1: the first layout. 2: adds `meta/pending_count`, kept by every transaction that changes
/// the number of unfinished messages, so opening never counts the queue. Version 1 directories
/// are counted once when opened and then marked 2 (a build that only knows 1 refuses them,
/// since it would not keep the count). 3: writes are journaled (`journal-0`, `journal-1` and
/// `meta/journal_seq`, see `journal.rs`); the journal may hold acknowledged writes sled does
/// not, so a build that knows only 2 (and would ignore the journal) refuses it. 4: journal
/// files start with a header (file index, size, first record of the round), which a build that
/// knows only 3 would read as damage; version 3 files (no header) are still read.
pub(crate) const DATA_FORMAT_VERSION: u32 = 4;
/// The first version with journal files.
pub(crate) const JOURNAL_SINCE: u32 = 3;
/// The first version with `meta/pending_count`.
pub(crate) const PENDING_COUNT_SINCE: u32 = 2;
/// Key of the data-directory format version in the `meta` tree.
pub(crate) const FORMAT_VERSION_KEY: &[u8] = b"format_version";

/// The stored form of a message record (version 1): the public [`QueuedMessage`] plus where its
/// one schedule entry is, so admin operations can find it without scanning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredMessage {
    /// Time of the message's entry in `schedule` (a retry time, or a lease expiry while
    /// leased); `None` when it has none (held and not in flight, or finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) schedule_at: Option<Timestamp>,
    /// Set while the schedule entry is a lease: its expiry (equal to `schedule_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) lease_until: Option<Timestamp>,
    /// The message record as the rest of Postrider sees it.
    pub(crate) message: QueuedMessage,
}

impl StoredMessage {
    /// Whether the message's schedule entry is currently a lease (an attempt is in flight).
    pub(crate) fn is_leased(&self) -> bool {
        self.lease_until.is_some() && self.lease_until == self.schedule_at
    }
}

/// The record version a message is written with: 2 for sandbox messages, 1 for the others.
fn message_version(message: &QueuedMessage) -> u8 {
    if message.sandbox {
        SANDBOX_MESSAGE_VERSION
    } else {
        ORDINARY_MESSAGE_VERSION
    }
}

/// Encodes a message record: version 1, or version 2 for a sandbox message.
pub(crate) fn encode_message(record: &StoredMessage) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(512);
    out.push(message_version(&record.message));
    serde_json::to_writer(&mut out, record).map_err(|e| StoreError::Corrupt {
        tree: "messages",
        key: record.message.id.to_string(),
        reason: format!("cannot encode: {e}"),
    })?;
    Ok(out)
}

/// Decodes a message record of any known version.
pub(crate) fn decode_message(key: &[u8], bytes: &[u8]) -> Result<StoredMessage> {
    let corrupt = |reason: String| StoreError::Corrupt {
        tree: "messages",
        key: hex(key),
        reason,
    };
    match bytes.split_first() {
        None => Err(corrupt("empty value".into())),
        Some((&1, json)) => {
            serde_json::from_slice(json).map_err(|e| corrupt(format!("version 1: {e}")))
        }
        Some((&2, json)) => {
            let mut record: StoredMessage =
                serde_json::from_slice(json).map_err(|e| corrupt(format!("version 2: {e}")))?;
            // The version is the mark: whatever the JSON says, this message is never sent.
            record.message.sandbox = true;
            Ok(record)
        }
        Some((&0, _)) => Err(corrupt("format version 0 was never written".into())),
        Some((&v, _)) => Err(StoreError::UnknownFormat {
            tree: "messages",
            found: u32::from(v),
            supported: u32::from(MESSAGE_RECORD_VERSION),
        }),
    }
}

/// Encodes a body in the current version.
pub(crate) fn encode_body(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 1);
    out.push(BODY_RECORD_VERSION);
    out.extend_from_slice(raw);
    out
}

/// Encodes a version-1 JSON record (`version ‖ JSON`) for a side tree. `key` names the
/// record in the (unlikely) encoding error.
pub(crate) fn encode_json_record<T: Serialize>(
    tree: &'static str,
    version: u8,
    key: &str,
    value: &T,
) -> Result<sled::IVec> {
    let mut out = Vec::with_capacity(256);
    out.push(version);
    serde_json::to_writer(&mut out, value).map_err(|e| StoreError::Corrupt {
        tree,
        key: key.to_owned(),
        reason: format!("cannot encode: {e}"),
    })?;
    Ok(out.into())
}

/// Decodes a side-tree JSON record whose only version so far is 1: a zero or missing version is
/// corruption, a newer one is [`StoreError::UnknownFormat`].
pub(crate) fn decode_json_record<T: serde::de::DeserializeOwned>(
    tree: &'static str,
    supported: u8,
    key: &[u8],
    bytes: &[u8],
) -> Result<T> {
    let corrupt = |reason: String| StoreError::Corrupt {
        tree,
        key: hex(key),
        reason,
    };
    match bytes.split_first() {
        Some((&1, json)) => {
            serde_json::from_slice(json).map_err(|e| corrupt(format!("version 1: {e}")))
        }
        Some((&0, _)) | None => Err(corrupt("missing or zero format version".into())),
        Some((&v, _)) => Err(StoreError::UnknownFormat {
            tree,
            found: u32::from(v),
            supported: u32::from(supported),
        }),
    }
}

/// Version of a chunked body's head record (bodies larger than [`BODY_CHUNK`]).
pub(crate) const CHUNKED_BODY_VERSION: u8 = 2;

/// Largest piece of a body stored under one key. sled writes pages above a quarter of its log
/// segment to separate "blob" files, which its flush never syncs; chunks this size keep even a
/// full leaf (17 items) of them well below that threshold with the store's 8 MiB segments, so
/// all of a message stays in the log that the group commit makes durable.
pub(crate) const BODY_CHUNK: usize = 64 * 1024;

/// The body as `(key, value)` pairs for the `bodies` tree: one version-1 record when it fits in
/// one chunk; otherwise a version-2 head `0x02 ‖ be_u32(chunks) ‖ chunk 0` under the id and
/// the remaining chunks, raw, under `id ‖ be_u32(index)`.
pub(crate) fn encode_body_records(id_key: &[u8], raw: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    if raw.len() <= BODY_CHUNK {
        return vec![(id_key.to_vec(), encode_body(raw))];
    }
    let chunks: Vec<&[u8]> = raw.chunks(BODY_CHUNK).collect();
    let mut out = Vec::with_capacity(chunks.len());
    let mut head = Vec::with_capacity(5 + BODY_CHUNK);
    head.push(CHUNKED_BODY_VERSION);
    head.extend_from_slice(&(chunks.len() as u32).to_be_bytes());
    head.extend_from_slice(chunks[0]);
    out.push((id_key.to_vec(), head));
    for (i, c) in chunks.iter().enumerate().skip(1) {
        let mut k = id_key.to_vec();
        k.extend_from_slice(&(i as u32).to_be_bytes());
        out.push((k, c.to_vec()));
    }
    out
}

/// Reassembles a body from its head record, fetching further chunks with `chunk(index)`.
pub(crate) fn decode_body_records(
    key: &[u8],
    head: &[u8],
    mut chunk: impl FnMut(u32) -> Result<Option<Vec<u8>>>,
) -> Result<Vec<u8>> {
    match head.split_first() {
        Some((&CHUNKED_BODY_VERSION, rest)) if rest.len() >= 4 => {
            let count = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let mut out = rest[4..].to_vec();
            for i in 1..count {
                let part = chunk(i)?.ok_or_else(|| StoreError::Corrupt {
                    tree: "bodies",
                    key: hex(key),
                    reason: format!("chunk {i} of {count} is missing"),
                })?;
                out.extend_from_slice(&part);
            }
            Ok(out)
        }
        _ => decode_body(key, head),
    }
}

/// Decodes a body of any known version, returning the raw message bytes.
pub(crate) fn decode_body(key: &[u8], bytes: &[u8]) -> Result<Vec<u8>> {
    match bytes.split_first() {
        Some((&1, raw)) => Ok(raw.to_vec()),
        Some((&0, _)) | None => Err(StoreError::Corrupt {
            tree: "bodies",
            key: hex(key),
            reason: "missing or zero format version".into(),
        }),
        Some((&v, _)) => Err(StoreError::UnknownFormat {
            tree: "bodies",
            found: u32::from(v),
            supported: u32::from(BODY_RECORD_VERSION),
        }),
    }
}

/// `meta` key of the number of unfinished messages (`be_i64`), from format version 2 on.
pub(crate) const PENDING_COUNT_KEY: &[u8] = b"pending_count";

/// Decodes `meta/pending_count`.
pub(crate) fn decode_pending_count(bytes: &[u8]) -> Result<i64> {
    Ok(i64::from_be_bytes(meta_word(PENDING_COUNT_KEY, bytes)?))
}

/// The value of a `meta` key that holds one 64-bit integer; `Corrupt` for any other length.
fn meta_word(key: &[u8], bytes: &[u8]) -> Result<[u8; 8]> {
    bytes.try_into().map_err(|_| StoreError::Corrupt {
        tree: "meta",
        key: hex(key),
        reason: format!("expected 8 bytes, found {}", bytes.len()),
    })
}

/// `meta` key of the latest lease expiry ever granted (`be_u64` ms), so that start-up knows how
/// far ahead of now leases of an earlier run can be and scans only that window of `schedule`.
/// Absent in directories written before leases were marked (their leases simply expire).
pub(crate) const LEASE_HORIZON_KEY: &[u8] = b"lease_horizon";

/// Value of a `schedule` entry that is a lease (an attempt in flight); ordinary entries have an
/// empty value. Start-up tells leases of an earlier run from due times by it without decoding
/// the message record.
pub(crate) const LEASE_MARK: &[u8] = b"L";

/// Encodes `meta/lease_horizon`.
pub(crate) fn encode_lease_horizon(at: Timestamp) -> [u8; 8] {
    at.as_millis().to_be_bytes()
}

/// Decodes `meta/lease_horizon`.
pub(crate) fn decode_lease_horizon(bytes: &[u8]) -> Result<Timestamp> {
    Ok(Timestamp::from_millis(u64::from_be_bytes(meta_word(
        LEASE_HORIZON_KEY,
        bytes,
    )?)))
}

/// Decodes the data-directory format version and checks this build can read it.
pub(crate) fn check_format_version(bytes: &[u8]) -> Result<u32> {
    let raw: [u8; 4] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        tree: "meta",
        key: hex(FORMAT_VERSION_KEY),
        reason: format!("expected 4 bytes, found {}", bytes.len()),
    })?;
    match u32::from_be_bytes(raw) {
        0 => Err(StoreError::Corrupt {
            tree: "meta",
            key: hex(FORMAT_VERSION_KEY),
            reason: "format version 0 was never written".into(),
        }),
        v if v > DATA_FORMAT_VERSION => Err(StoreError::UnknownFormat {
            tree: "meta",
            found: v,
            supported: DATA_FORMAT_VERSION,
        }),
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::sample_record;

    #[test]
    fn message_round_trip() {
        let rec = sample_record();
        let bytes = encode_message(&rec).unwrap();
        assert_eq!(bytes[0], 1);
        assert_eq!(decode_message(b"k", &bytes).unwrap(), rec);
        let mut owed = rec.clone();
        owed.message.suppression_notice_due = true;
        let bytes = encode_message(&owed).unwrap();
        assert_eq!(decode_message(b"k", &bytes).unwrap(), owed);
    }

    #[test]
    fn sandbox_messages_are_written_as_version_2_and_ordinary_ones_as_version_1() {
        let ordinary = sample_record();
        assert_eq!(encode_message(&ordinary).unwrap()[0], 1);
        let mut sandbox = ordinary.clone();
        sandbox.message.sandbox = true;
        let bytes = encode_message(&sandbox).unwrap();
        assert_eq!(bytes[0], 2, "a build that predates the mark must refuse it");
        assert_eq!(decode_message(b"k", &bytes).unwrap(), sandbox);
        // The version is the mark, even if the JSON lacked the flag.
        let ordinary_bytes = encode_message(&ordinary).unwrap();
        let mut relabelled = vec![2];
        relabelled.extend_from_slice(&ordinary_bytes[1..]);
        assert!(decode_message(b"k", &relabelled).unwrap().message.sandbox);
        assert!(
            !decode_message(b"k", &ordinary_bytes)
                .unwrap()
                .message
                .sandbox
        );
    }

    /// The golden fixtures directory `migrations-free-data/<version_dir>`: writes those of
    /// `files` that are missing when `POSTRIDER_WRITE_FIXTURES` is set, and returns a reader of
    /// the committed files.
    fn golden_fixtures(
        version_dir: &str,
        files: &[(&str, &[u8])],
    ) -> impl Fn(&str) -> Vec<u8> + use<> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../migrations-free-data")
            .join(version_dir);
        for (name, bytes) in files {
            let path = dir.join(name);
            if std::env::var_os("POSTRIDER_WRITE_FIXTURES").is_some() && !path.exists() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, bytes).unwrap();
            }
        }
        move |name: &str| {
            std::fs::read(dir.join(name)).unwrap_or_else(|e| {
                panic!("fixture {name}: {e} (POSTRIDER_WRITE_FIXTURES=1 creates it)")
            })
        }
    }

    /// Golden fixture of message record version 2 (a sandbox message): the same JSON shape as
    /// version 1 with `message.sandbox` set. Created like the others with
    /// `POSTRIDER_WRITE_FIXTURES=1`.
    #[test]
    fn golden_sandbox_message_record_decodes() {
        let mut rec = sample_record();
        rec.message.sandbox = true;
        let bin = encode_message(&rec).unwrap();
        let json = serde_json::to_vec_pretty(&rec).unwrap();
        let read = golden_fixtures(
            "v1",
            &[
                ("message-record-v2.bin", &bin),
                ("message-record-v2.json", &json),
            ],
        );
        let bin = read("message-record-v2.bin");
        assert_eq!(bin[0], 2);
        let stored = decode_message(&[0, 0, 0, 0, 0, 0, 0x12, 0x34], &bin).unwrap();
        let from_json: StoredMessage =
            serde_json::from_slice(&read("message-record-v2.json")).unwrap();
        assert_eq!(
            stored, from_json,
            "the .json fixture documents the .bin payload"
        );
        assert!(stored.message.sandbox);
        assert_eq!(stored.message.id.to_string(), "0000000000001234");
        assert_eq!(stored.message.recipients.len(), 2);
        assert_eq!(stored, rec, "today's writer produces the same record");
    }

    #[test]
    fn newer_or_broken_records_are_refused() {
        let mut bytes = encode_message(&sample_record()).unwrap();
        bytes[0] = 3;
        let err = decode_message(&[0, 1], &bytes).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::UnknownFormat {
                    tree: "messages",
                    found: 3,
                    supported: 2
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("upgrade Postrider"));
        bytes[0] = 1;
        bytes.truncate(10);
        assert!(matches!(
            decode_message(&[0, 1], &bytes),
            Err(StoreError::Corrupt {
                tree: "messages",
                ..
            })
        ));
        assert!(matches!(
            decode_message(&[0, 1], &[]),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_message(&[0, 1], &[0, b'{', b'}']),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn large_bodies_are_chunked_below_the_blob_threshold() {
        let raw: Vec<u8> = (0..(3 * BODY_CHUNK + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let records = encode_body_records(b"\0\0\0\0\0\0\0\x07", &raw);
        assert_eq!(records.len(), 4);
        assert!(records.iter().all(|(_, v)| v.len() <= BODY_CHUNK + 5));
        assert_eq!(records[0].1[0], CHUNKED_BODY_VERSION);
        let map: std::collections::HashMap<Vec<u8>, Vec<u8>> = records.iter().cloned().collect();
        let back = decode_body_records(&records[0].0, &records[0].1, |i| {
            let mut k = records[0].0.clone();
            k.extend_from_slice(&i.to_be_bytes());
            Ok(map.get(&k).cloned())
        })
        .unwrap();
        assert_eq!(back, raw);
        // A missing chunk is corruption of that body, not a panic.
        let missing = decode_body_records(&records[0].0, &records[0].1, |_| Ok(None));
        assert!(matches!(missing, Err(StoreError::Corrupt { .. })));
        // Small bodies keep the version-1 layout.
        let small = encode_body_records(b"k", b"hi");
        assert_eq!(small, vec![(b"k".to_vec(), encode_body(b"hi"))]);
    }

    #[test]
    fn body_round_trip_and_versions() {
        let raw = b"Subject: x\r\n\r\nhi\r\n";
        assert_eq!(decode_body(b"k", &encode_body(raw)).unwrap(), raw.to_vec());
        assert!(matches!(
            decode_body(b"k", &[7, 1]),
            Err(StoreError::UnknownFormat {
                tree: "bodies",
                found: 7,
                ..
            })
        ));
        assert!(matches!(
            decode_body(b"k", &[]),
            Err(StoreError::Corrupt { .. })
        ));
    }

    /// Golden fixtures of data-directory format 2: its version value and the kept pending
    /// count it added to `meta`.
    #[test]
    fn golden_format_2_meta_decodes() {
        let dir = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../migrations-free-data/v2"
        ));
        let files = [
            ("meta-format-version.bin", 2u32.to_be_bytes().to_vec()),
            ("meta-pending-count.bin", 1234i64.to_be_bytes().to_vec()),
        ];
        for (name, bytes) in &files {
            let path = dir.join(name);
            if std::env::var_os("POSTRIDER_WRITE_FIXTURES").is_some() && !path.exists() {
                std::fs::create_dir_all(dir).unwrap();
                std::fs::write(&path, bytes).unwrap();
            }
        }
        let read = |name: &str| {
            std::fs::read(dir.join(name)).unwrap_or_else(|e| {
                panic!("fixture {name}: {e} (POSTRIDER_WRITE_FIXTURES=1 creates it)")
            })
        };
        assert_eq!(
            check_format_version(&read("meta-format-version.bin")).unwrap(),
            2
        );
        assert_eq!(
            decode_pending_count(&read("meta-pending-count.bin")).unwrap(),
            1234
        );
        assert!(matches!(
            decode_pending_count(b"short"),
            Err(StoreError::Corrupt { tree: "meta", .. })
        ));
    }

    /// Golden fixture of the chunked body layout (body record version 2): its head record and
    /// its one further chunk. Created like the others with `POSTRIDER_WRITE_FIXTURES=1`.
    #[test]
    fn golden_chunked_body_decodes() {
        let raw: Vec<u8> = (0..(BODY_CHUNK + 100))
            .map(|i| b"golden chunked body\r\n"[i % 21])
            .collect();
        let key = 42u64.to_be_bytes();
        let records = encode_body_records(&key, &raw);
        assert_eq!(records.len(), 2);
        let read = golden_fixtures(
            "v1",
            &[
                ("body-record-v2-head.bin", &records[0].1),
                ("body-record-v2-chunk-1.bin", &records[1].1),
            ],
        );
        let head = read("body-record-v2-head.bin");
        let chunk = read("body-record-v2-chunk-1.bin");
        assert_eq!(head[0], CHUNKED_BODY_VERSION);
        let decoded =
            decode_body_records(&key, &head, |i| Ok((i == 1).then(|| chunk.clone()))).unwrap();
        assert_eq!(
            decoded, raw,
            "today's reader decodes the committed chunked body"
        );
        assert_eq!(
            (&head, &chunk),
            (&records[0].1, &records[1].1),
            "today's writer produces the same layout"
        );
    }

    /// Golden fixtures of every record version ever written. They are created once (run the
    /// tests with `POSTRIDER_WRITE_FIXTURES=1` when adding a version), committed, and never
    /// changed: this test proves today's reader still decodes them.
    #[test]
    fn golden_fixtures_decode() {
        let dir = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../migrations-free-data/v1"
        ));
        let write = std::env::var_os("POSTRIDER_WRITE_FIXTURES").is_some();
        let rec = sample_record();
        let fixtures: [(&str, Vec<u8>); 4] = [
            ("message-record.bin", encode_message(&rec).unwrap()),
            (
                "message-record.json",
                serde_json::to_vec_pretty(&rec).unwrap(),
            ),
            (
                "body-record.bin",
                encode_body(b"Subject: golden\r\n\r\nhello\r\n"),
            ),
            ("meta-format-version.bin", 1u32.to_be_bytes().to_vec()),
        ];
        for (name, bytes) in &fixtures {
            let path = dir.join(name);
            if write && !path.exists() {
                std::fs::create_dir_all(dir).unwrap();
                std::fs::write(&path, bytes).unwrap();
            }
        }
        let read = |name: &str| {
            std::fs::read(dir.join(name)).unwrap_or_else(|e| {
                panic!("fixture {name}: {e} (POSTRIDER_WRITE_FIXTURES=1 creates it)")
            })
        };

        let stored =
            decode_message(&[0, 0, 0, 0, 0, 0, 0x12, 0x34], &read("message-record.bin")).unwrap();
        let from_json: StoredMessage =
            serde_json::from_slice(&read("message-record.json")).unwrap();
        assert_eq!(
            stored, from_json,
            "the .json fixture documents the .bin payload"
        );
        assert_eq!(
            stored.schedule_at,
            Some(Timestamp::from_millis(1_795_411_800_000))
        );
        assert_eq!(stored.lease_until, stored.schedule_at);
        assert!(stored.is_leased());
        let m = &stored.message;
        assert_eq!(m.id.to_string(), "0000000000001234");
        assert_eq!(m.sender.to_string(), "sender@example.com");
        assert_eq!(m.ret, Some(postrider_core::DsnRet::Hdrs));
        assert_eq!(m.envid.as_deref(), Some("env-42"));
        assert_eq!(m.source, postrider_core::Source::Http);
        assert_eq!(m.received_at, Timestamp::from_millis(1_795_411_197_123));
        assert_eq!(m.size, 26);
        assert_eq!(m.attempts, 1);
        assert_eq!(
            m.next_attempt_at,
            Some(Timestamp::from_millis(1_795_411_500_000))
        );
        assert!(!m.held);
        assert!(
            !m.suppression_notice_due,
            "a flag added later reads as false in older records"
        );
        assert_eq!(m.finished_at, None);
        assert_eq!(m.tags, vec!["newsletter".to_string()]);
        assert_eq!(m.metadata.get("campaign").map(String::as_str), Some("c-7"));
        assert_eq!(m.recipients.len(), 2);
        let (r0, r1) = (&m.recipients[0], &m.recipients[1]);
        assert_eq!(r0.request.address.to_string(), "alice@example.net");
        assert!(r0.request.wants_success_notice());
        assert_eq!(
            r0.request.orcpt.as_deref(),
            Some("rfc822;alice@example.net")
        );
        assert_eq!(r0.state, postrider_core::RecipientState::Delivered);
        assert_eq!(r0.last_reply.as_ref().map(|r| r.code), Some(250));
        assert_eq!(r0.mx_host.as_deref(), Some("mx1.example.net"));
        assert_eq!(
            r0.last_attempt_at,
            Some(Timestamp::from_millis(1_795_411_200_000))
        );
        assert_eq!(r1.request.address.to_string(), "bob@example.org");
        assert_eq!(r1.request.notify, None);
        assert_eq!(r1.state, postrider_core::RecipientState::Deferred);
        assert_eq!(r1.last_reply.as_ref().map(|r| r.code), Some(451));

        assert_eq!(
            decode_body(b"k", &read("body-record.bin")).unwrap(),
            b"Subject: golden\r\n\r\nhello\r\n".to_vec()
        );
        assert_eq!(
            check_format_version(&read("meta-format-version.bin")).unwrap(),
            1
        );
    }

    #[test]
    fn lease_horizon_round_trip() {
        let at = Timestamp::from_millis(1_795_411_800_000);
        assert_eq!(decode_lease_horizon(&encode_lease_horizon(at)).unwrap(), at);
        assert!(matches!(
            decode_lease_horizon(b"short"),
            Err(StoreError::Corrupt { tree: "meta", .. })
        ));
    }

    #[test]
    fn format_version_checks() {
        assert_eq!(check_format_version(&1u32.to_be_bytes()).unwrap(), 1);
        assert_eq!(check_format_version(&2u32.to_be_bytes()).unwrap(), 2);
        assert!(matches!(
            check_format_version(&99u32.to_be_bytes()),
            Err(StoreError::UnknownFormat { found: 99, .. })
        ));
        assert!(matches!(
            check_format_version(&0u32.to_be_bytes()),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            check_format_version(b"abc"),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
