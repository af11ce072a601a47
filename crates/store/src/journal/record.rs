//! The byte layout of the journal: records and file headers (`migrations-free-data/README.md`).
//!
//! Record (version 1): `"PRJ1" ‖ be_u32(len) ‖ be_u32(crc32 of body) ‖ body`, body =
//! `be_u64(seq) ‖ be_u32(ops) ‖ ops`, op = `u8(tree) ‖ u8(1 put / 0 remove) ‖ be_u32(key len) ‖
//! key ‖ [be_u32(value len) ‖ value]`. Records are self-delimiting and checksummed, so a reader
//! can find the next good record after damaged bytes.
//!
//! File header (data format 4), the first [`FILE_HEADER_LEN`] bytes of each journal file:
//! `"PRJF" ‖ be_u32(1) ‖ be_u32(file index) ‖ be_u64(capacity) ‖ be_u64(first seq) ‖
//! be_u32(crc32 of the 28 bytes before)`, then zeros. `first seq` is the number of the first
//! record of the round the file holds now: older records still in the file are stale.

use sled::IVec;

use super::TreeId;

/// First bytes of every journal record (version 1 of the record layout).
pub(crate) const RECORD_MAGIC: [u8; 4] = *b"PRJ1";
/// Magic, body length, CRC.
pub(crate) const HEADER_LEN: usize = 12;
/// First bytes of a journal file header.
pub(crate) const FILE_MAGIC: [u8; 4] = *b"PRJF";
/// Space the file header takes; records start after it.
pub(crate) const FILE_HEADER_LEN: u64 = 64;
/// Bytes of the header the CRC covers.
const FILE_HEADER_CRC_AT: usize = 28;
/// Largest body a record may claim (far above a 64 KiB body chunk and a batch of leases):
/// a damaged length never makes the reader allocate or skip more than this.
pub(crate) const MAX_RECORD_BODY: usize = 256 * 1024 * 1024;

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

/// The sequence number of the first record in `encoded` (as written by [`encode_record`]).
pub(crate) fn first_seq(encoded: &[u8]) -> Option<u64> {
    let b = encoded.get(HEADER_LEN..HEADER_LEN + 8)?;
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// Keys and values are far below 4 GiB (bodies are stored in 64 KiB chunks).
fn u32_len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Decodes the record at the start of `bytes`; returns it with its encoded length, or `None`
/// when the bytes there are not a whole, intact record.
pub(crate) fn decode_one(bytes: &[u8]) -> Option<(Record, usize)> {
    let (header, rest) = bytes.split_at_checked(HEADER_LEN)?;
    if header[..4] != RECORD_MAGIC {
        return None;
    }
    let len = usize::try_from(read_u32(&header[4..8])?).ok()?;
    if len > MAX_RECORD_BODY {
        return None;
    }
    let crc = read_u32(&header[8..12])?;
    let body = rest.get(..len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    Some((decode_body(body)?, HEADER_LEN + len))
}

/// Whether `bytes` start like a record (its magic) whose claimed length fits in `bytes`: what
/// a record damaged in place looks like, as opposed to zeros or the end of the data.
pub(crate) fn looks_like_record(bytes: &[u8]) -> bool {
    bytes.get(..4) == Some(&RECORD_MAGIC[..])
        && bytes
            .get(4..8)
            .and_then(read_u32)
            .and_then(|len| usize::try_from(len).ok())
            .is_some_and(|len| len <= MAX_RECORD_BODY && HEADER_LEN + len <= bytes.len())
}

fn read_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

fn read_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

fn decode_body(body: &[u8]) -> Option<Record> {
    let mut cur = Cursor(body);
    let seq = read_u64(cur.take(8)?)?;
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

/// The header of a journal file (data format 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileHeader {
    /// Which of the two files this is (0 or 1).
    pub(crate) index: u32,
    /// The file's size when it was created: a shorter file was truncated.
    pub(crate) capacity: u64,
    /// Number of the first record of the round the file holds; smaller numbers are stale.
    pub(crate) first_seq: u64,
}

impl FileHeader {
    /// The header's bytes ([`FILE_HEADER_LEN`] long).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FILE_HEADER_LEN as usize);
        out.extend_from_slice(&FILE_MAGIC);
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.capacity.to_be_bytes());
        out.extend_from_slice(&self.first_seq.to_be_bytes());
        let crc = crc32fast::hash(&out[..FILE_HEADER_CRC_AT]);
        out.extend_from_slice(&crc.to_be_bytes());
        out.resize(FILE_HEADER_LEN as usize, 0);
        out
    }

    /// Reads a header; `None` when the bytes are not an intact version 1 header.
    pub(crate) fn decode(bytes: &[u8]) -> Option<FileHeader> {
        let b = bytes.get(..FILE_HEADER_CRC_AT + 4)?;
        if b[..4] != FILE_MAGIC || read_u32(&b[4..8])? != 1 {
            return None;
        }
        if crc32fast::hash(&b[..FILE_HEADER_CRC_AT]) != read_u32(&b[FILE_HEADER_CRC_AT..])? {
            return None;
        }
        Some(FileHeader {
            index: read_u32(&b[8..12])?,
            capacity: read_u64(&b[12..20])?,
            first_seq: read_u64(&b[20..28])?,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_ops() -> Vec<Op> {
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
    fn records_round_trip() {
        let mut buf = Vec::new();
        encode_record(5, &sample_ops(), &mut buf);
        let first_len = buf.len();
        encode_record(6, &[], &mut buf);
        let (one, len) = decode_one(&buf).unwrap();
        assert_eq!(
            one,
            Record {
                seq: 5,
                ops: sample_ops()
            }
        );
        assert_eq!(len, first_len);
        assert_eq!(decode_one(&buf[len..]).unwrap().0.seq, 6);
        assert_eq!(first_seq(&buf), Some(5));
    }

    #[test]
    fn torn_or_flipped_records_do_not_decode() {
        let mut buf = Vec::new();
        encode_record(1, &sample_ops(), &mut buf);
        assert!(decode_one(&buf[..buf.len() - 3]).is_none(), "torn");
        assert!(looks_like_record(&buf));
        assert!(!looks_like_record(&buf[..buf.len() - 3]));
        for at in 0..buf.len() {
            let mut bad = buf.clone();
            bad[at] ^= 0x10;
            assert!(decode_one(&bad).is_none(), "flip at {at} detected");
        }
        assert!(decode_one(&[0; 64]).is_none());
        assert!(!looks_like_record(&[0; 64]));
    }

    #[test]
    fn a_damaged_length_never_claims_more_than_the_limit() {
        let mut buf = Vec::new();
        encode_record(1, &sample_ops(), &mut buf);
        buf[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_one(&buf).is_none());
        assert!(!looks_like_record(&buf));
    }

    #[test]
    fn file_headers_round_trip_and_refuse_damage() {
        let h = FileHeader {
            index: 1,
            capacity: 32 << 20,
            first_seq: 99,
        };
        let bytes = h.encode();
        assert_eq!(bytes.len() as u64, FILE_HEADER_LEN);
        assert_eq!(FileHeader::decode(&bytes), Some(h));
        for at in 0..FILE_HEADER_CRC_AT + 4 {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert_eq!(FileHeader::decode(&bad), None, "flip at {at}");
        }
    }

    fn fixtures(version: &str) -> std::path::PathBuf {
        std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../migrations-free-data"
        ))
        .join(version)
    }

    /// Writes the fixtures that are missing (only with `POSTRIDER_WRITE_FIXTURES=1`), then
    /// reads one back.
    fn fixture(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Vec<u8> {
        let path = dir.join(name);
        if std::env::var_os("POSTRIDER_WRITE_FIXTURES").is_some() && !path.exists() {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(&path, bytes).unwrap();
        }
        std::fs::read(&path).expect(name)
    }

    /// Golden fixtures of data-directory format 3: a journal record, the format version and
    /// `meta/journal_seq`.
    #[test]
    fn golden_format_3_decodes() {
        let dir = fixtures("v3");
        let mut record = Vec::new();
        encode_record(42, &sample_ops(), &mut record);
        let bytes = fixture(&dir, "journal-record.bin", &record);
        let (decoded, len) = decode_one(&bytes).unwrap();
        assert_eq!(
            decoded,
            Record {
                seq: 42,
                ops: sample_ops()
            }
        );
        assert_eq!(len, bytes.len());
        // The layout is fixed: this build writes the same bytes.
        assert_eq!(bytes, record);
        let version = fixture(&dir, "meta-format-version.bin", &3u32.to_be_bytes());
        assert_eq!(crate::codec::check_format_version(&version).unwrap(), 3);
        assert_eq!(
            fixture(&dir, "meta-journal-seq.bin", &42u64.to_be_bytes()),
            42u64.to_be_bytes()
        );
    }

    /// Golden fixtures of data-directory format 4: a journal file header, the format version
    /// and the clean-close mark in `meta`.
    #[test]
    fn golden_format_4_decodes() {
        let dir = fixtures("v4");
        let header = FileHeader {
            index: 1,
            capacity: 32 * 1024 * 1024,
            first_seq: 4242,
        };
        let bytes = fixture(&dir, "journal-file-header.bin", &header.encode());
        assert_eq!(FileHeader::decode(&bytes), Some(header));
        assert_eq!(bytes, header.encode(), "this build writes the same bytes");
        let version = fixture(&dir, "meta-format-version.bin", &4u32.to_be_bytes());
        assert_eq!(crate::codec::check_format_version(&version).unwrap(), 4);
        assert_eq!(
            fixture(
                &dir,
                "meta-journal-closed-at-seq.bin",
                &4242u64.to_be_bytes()
            ),
            4242u64.to_be_bytes()
        );
    }
}
