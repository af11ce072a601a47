//! Key encodings. All integers are big-endian so that sled's byte order is numeric order.
//!
//! - `messages`, `bodies`, `held`: `be_u64(id)` (8 bytes).
//! - `schedule`, `finished`: `be_u64(time_ms) ‖ be_u64(id)` (16 bytes), so a range scan up to
//!   `(now, u64::MAX)` yields everything due at `now`, oldest first, ties by arrival order.

use postrider_core::{MessageId, Timestamp};

/// Length of a [`TimeKey`] in bytes.
pub(crate) const TIME_KEY_LEN: usize = 16;

/// A `(time, id)` key of the `schedule` or `finished` tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct TimeKey {
    /// Due time (schedule) or finish time (finished index).
    pub(crate) at: Timestamp,
    /// The message.
    pub(crate) id: MessageId,
}

impl TimeKey {
    /// A key for `id` at `at`.
    pub(crate) fn new(at: Timestamp, id: MessageId) -> Self {
        TimeKey { at, id }
    }

    /// The 16-byte encoding.
    pub(crate) fn to_bytes(self) -> [u8; TIME_KEY_LEN] {
        let mut out = [0u8; TIME_KEY_LEN];
        out[..8].copy_from_slice(&self.at.as_millis().to_be_bytes());
        out[8..].copy_from_slice(&self.id.to_be_bytes());
        out
    }

    /// Decodes a 16-byte key; `None` for any other length.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let at: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
        let id: [u8; 8] = bytes.get(8..)?.try_into().ok()?;
        Some(TimeKey {
            at: Timestamp::from_millis(u64::from_be_bytes(at)),
            id: MessageId::from_u64(u64::from_be_bytes(id)),
        })
    }

    /// The greatest key at time `at`: `range(..=last_at(now))` is everything due at `now`.
    pub(crate) fn last_at(at: Timestamp) -> [u8; TIME_KEY_LEN] {
        TimeKey::new(at, MessageId::from_u64(u64::MAX)).to_bytes()
    }

    /// The smallest key at time `at`.
    pub(crate) fn first_at(at: Timestamp) -> [u8; TIME_KEY_LEN] {
        TimeKey::new(at, MessageId::from_u64(0)).to_bytes()
    }
}

/// The 8-byte key of a message in `messages`, `bodies` and `held`.
pub(crate) fn id_key(id: MessageId) -> [u8; 8] {
    id.to_be_bytes()
}

/// Decodes an 8-byte id key.
pub(crate) fn parse_id_key(bytes: &[u8]) -> Option<MessageId> {
    let raw: [u8; 8] = bytes.try_into().ok()?;
    Some(MessageId::from_u64(u64::from_be_bytes(raw)))
}

/// Hex form of a key for error messages.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_keys_round_trip() {
        let k = TimeKey::new(
            Timestamp::from_millis(1_795_411_197_123),
            MessageId::from_u64(42),
        );
        assert_eq!(TimeKey::from_bytes(&k.to_bytes()), Some(k));
        assert_eq!(TimeKey::from_bytes(&[0u8; 15]), None);
        assert_eq!(TimeKey::from_bytes(&[0u8; 17]), None);
        assert_eq!(
            parse_id_key(&id_key(MessageId::from_u64(7))),
            Some(MessageId::from_u64(7))
        );
        assert_eq!(parse_id_key(&[1, 2, 3]), None);
        assert_eq!(hex(&[0, 0xab]), "00ab");
    }

    #[test]
    fn byte_order_is_time_then_id() {
        let keys = [
            (5u64, 9u64),
            (10, 1),
            (256, 3),
            (256, 4),
            (300, 0),
            (70_000, 2),
        ];
        let mut encoded: Vec<_> = keys
            .iter()
            .rev()
            .map(|&(t, id)| {
                TimeKey::new(Timestamp::from_millis(t), MessageId::from_u64(id)).to_bytes()
            })
            .collect();
        encoded.sort();
        let decoded: Vec<_> = encoded
            .iter()
            .map(|b| TimeKey::from_bytes(b).map(|k| (k.at.as_millis(), k.id.as_u64())))
            .collect::<Option<_>>()
            .unwrap_or_default();
        assert_eq!(decoded, keys.to_vec());
        let due = TimeKey::last_at(Timestamp::from_millis(256));
        assert_eq!(
            encoded
                .iter()
                .filter(|k| k.as_slice() <= due.as_slice())
                .count(),
            4
        );
        assert!(TimeKey::first_at(Timestamp::from_millis(256)).as_slice() < encoded[2].as_slice());
    }
}
