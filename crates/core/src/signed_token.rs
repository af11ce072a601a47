//! Short HMAC-signed tokens: a fixed-size payload followed by a truncated HMAC-SHA256 of it, in
//! lowercase base32 (RFC 4648 "extended hex" alphabet, no padding), so they fit in addresses and
//! URLs and survive case-folding. Whoever holds the key can make and check tokens; nobody else
//! can make one that checks, or alter one without it failing.
//!
//! Used by VERP return paths (`postrider-bounces`) and one-click unsubscribe links
//! ([`crate::unsubscribe`]); each use has its own context label, so a token made for one
//! purpose never checks for another even when both share a secret.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::MessageId;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of a [`RecipientRef`] payload: queue id (8) and recipient index (2).
const RECIPIENT_PAYLOAD_LEN: usize = 10;

/// One recipient of one queued message, as a token names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipientRef {
    /// The message's queue id.
    pub id: MessageId,
    /// The recipient's index in the message's recipient list.
    pub index: usize,
}

/// Makes and checks the tokens of one purpose: a key, a context label and a MAC length.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKey {
    secret: Vec<u8>,
    context: &'static [u8],
    mac_len: usize,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("context", &String::from_utf8_lossy(self.context))
            .field("mac_len", &self.mac_len)
            .finish_non_exhaustive()
    }
}

impl TokenKey {
    /// A key for tokens whose MAC is HMAC-SHA256(`secret`, `context` ‖ payload) cut to
    /// `mac_len` bytes (clamped to 4..=32).
    pub fn new(secret: &[u8], context: &'static [u8], mac_len: usize) -> TokenKey {
        TokenKey {
            secret: secret.to_vec(),
            context,
            mac_len: mac_len.clamp(4, 32),
        }
    }

    fn mac(&self, payload: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(self.context);
        mac.update(payload);
        mac
    }

    /// The token of `payload`: `payload ‖ MAC`, encoded.
    pub fn seal(&self, payload: &[u8]) -> String {
        let tag = self.mac(payload).finalize().into_bytes();
        let mut raw = Vec::with_capacity(payload.len() + self.mac_len);
        raw.extend_from_slice(payload);
        raw.extend_from_slice(&tag[..self.mac_len]);
        data_encoding::BASE32HEX_NOPAD
            .encode(&raw)
            .to_ascii_lowercase()
    }

    /// Length in characters of the token of a `payload_len`-byte payload.
    pub fn token_len(&self, payload_len: usize) -> usize {
        data_encoding::BASE32HEX_NOPAD.encode_len(payload_len + self.mac_len)
    }

    /// The payload of a valid token (any case) of a `payload_len`-byte payload; `None` for a
    /// token of another length, another key or context, or altered in any way. The MAC is
    /// compared in constant time.
    pub fn open(&self, token: &str, payload_len: usize) -> Option<Vec<u8>> {
        if token.len() != self.token_len(payload_len) {
            return None;
        }
        let mut raw = data_encoding::BASE32HEX_NOPAD
            .decode(token.to_ascii_uppercase().as_bytes())
            .ok()?;
        if raw.len() != payload_len + self.mac_len {
            return None;
        }
        let tag = raw.split_off(payload_len);
        self.mac(&raw).verify_truncated_left(&tag).ok()?;
        Some(raw)
    }

    /// The token naming `recipient` (id and index, 10 bytes); `None` when the index does not
    /// fit (more than 65536 recipients).
    pub fn seal_recipient(&self, recipient: RecipientRef) -> Option<String> {
        let index = u16::try_from(recipient.index).ok()?;
        let mut payload = [0u8; RECIPIENT_PAYLOAD_LEN];
        payload[..8].copy_from_slice(&recipient.id.to_be_bytes());
        payload[8..].copy_from_slice(&index.to_be_bytes());
        Some(self.seal(&payload))
    }

    /// The recipient a valid [`TokenKey::seal_recipient`] token names; `None` for anything else.
    pub fn open_recipient(&self, token: &str) -> Option<RecipientRef> {
        let raw = self.open(token, RECIPIENT_PAYLOAD_LEN)?;
        let mut id = [0u8; 8];
        id.copy_from_slice(raw.get(..8)?);
        Some(RecipientRef {
            id: MessageId::from_u64(u64::from_be_bytes(id)),
            index: usize::from(u16::from_be_bytes([*raw.get(8)?, *raw.get(9)?])),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_refusals() {
        let key = TokenKey::new(b"a secret of some length", b"test", 10);
        let token = key.seal(b"payload!");
        assert_eq!(token.len(), key.token_len(8));
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
        assert_eq!(key.open(&token, 8).as_deref(), Some(&b"payload!"[..]));
        assert_eq!(
            key.open(&token.to_ascii_uppercase(), 8).as_deref(),
            Some(&b"payload!"[..])
        );
        // another context, another secret, another length, one character changed
        let other_context = TokenKey::new(b"a secret of some length", b"other", 10);
        assert_eq!(other_context.open(&token, 8), None);
        let other_secret = TokenKey::new(b"another secret", b"test", 10);
        assert_eq!(other_secret.open(&token, 8), None);
        assert_eq!(key.open(&token, 7), None);
        for i in 0..token.len() {
            let mut bad = token.clone().into_bytes();
            bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
            assert_eq!(key.open(&String::from_utf8(bad).unwrap(), 8), None, "{i}");
        }
        assert_eq!(key.open("not base32!", 8), None);
    }
}
