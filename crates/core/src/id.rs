//! Message identifiers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The queue's identifier for one accepted message: unique within a data directory and
/// increasing in arrival order. Shown to users as 16 lowercase hex digits
/// (`250 2.0.0 Ok: queued as 00000000000004d2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(u64);

impl MessageId {
    /// Wraps a raw id (as produced by the store's id generator).
    pub const fn from_u64(raw: u64) -> Self {
        MessageId(raw)
    }

    /// The raw id.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Big-endian bytes: the key order of the store matches arrival order.
    pub const fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The text was not 16 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a message id is 16 hexadecimal digits")]
pub struct ParseMessageIdError;

impl FromStr for MessageId {
    type Err = ParseMessageIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseMessageIdError);
        }
        u64::from_str_radix(s, 16)
            .map(MessageId)
            .map_err(|_| ParseMessageIdError)
    }
}

impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_as_hex() {
        let id = MessageId::from_u64(1234);
        assert_eq!(id.to_string(), "00000000000004d2");
        assert_eq!("00000000000004d2".parse::<MessageId>(), Ok(id));
        assert_eq!("00000000000004D2".parse::<MessageId>(), Ok(id));
        assert!("4d2".parse::<MessageId>().is_err());
        assert!("00000000000004g2".parse::<MessageId>().is_err());
        assert!("+0000000000004d2".parse::<MessageId>().is_err());
    }
}
