//! Signed VERP return paths.
//!
//! With a bounce domain configured, each outgoing message is sent with the envelope sender
//! `b+<token>@<bounce domain>`, one transaction per recipient. The token holds the queue id
//! (8 bytes) and the recipient's index (2 bytes) followed by the first 5 bytes of
//! HMAC-SHA256(secret, those 10 bytes), in lowercase base32 (RFC 4648 "extended hex" alphabet,
//! no padding): 24 characters. A report returned to that address names the message and
//! recipient, and nobody without the secret can forge one for another message.

use postrider_core::signed_token::{RecipientRef, TokenKey};
use postrider_core::{Address, Domain};

/// The local part before the `+` of every return path.
pub const LOCAL_PREFIX: &str = "b";
/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;
/// Bytes of the MAC kept in a token (40 bits: guessing one takes ~10¹² tries).
const MAC_LEN: usize = 5;

/// A bounce domain and secret that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VerpError {
    /// The secret is too short to be one.
    #[error("the secret must have at least {MIN_SECRET_LEN} characters")]
    ShortSecret,
}

/// The message and recipient a return path was made for.
pub type VerpTarget = RecipientRef;

/// Makes and checks the return paths of one bounce domain.
#[derive(Clone)]
pub struct VerpSigner {
    domain: Domain,
    key: TokenKey,
}

impl std::fmt::Debug for VerpSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerpSigner")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl VerpSigner {
    /// A signer for `domain` keyed with `secret`.
    pub fn new(domain: Domain, secret: &str) -> Result<VerpSigner, VerpError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(VerpError::ShortSecret);
        }
        Ok(VerpSigner {
            domain,
            // No context label: tokens stay those of earlier releases.
            key: TokenKey::new(secret.as_bytes(), b"", MAC_LEN),
        })
    }

    /// The bounce domain.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// The token for recipient `index` of message `id`; `None` when the index does not fit
    /// (more than 65536 recipients).
    pub fn token(&self, target: VerpTarget) -> Option<String> {
        self.key.seal_recipient(target)
    }

    /// The return path for recipient `index` of message `id`.
    pub fn return_path(&self, target: VerpTarget) -> Option<Address> {
        let token = self.token(target)?;
        Address::parse(&format!("{LOCAL_PREFIX}+{token}@{}", self.domain.as_str())).ok()
    }

    /// The message and recipient of a valid token (any case); `None` for anything else.
    pub fn check_token(&self, token: &str) -> Option<VerpTarget> {
        self.key.open_recipient(token)
    }

    /// The target of a return path `b+<token>@<bounce domain>` (case ignored); `None` when the
    /// address is another one or its token is not valid.
    pub fn check_address(&self, address: &str) -> Option<VerpTarget> {
        let (local, domain) = address.rsplit_once('@')?;
        if !domain
            .trim_end_matches('.')
            .eq_ignore_ascii_case(self.domain.as_str())
        {
            return None;
        }
        let (prefix, token) = local.split_once('+')?;
        if !prefix.eq_ignore_ascii_case(LOCAL_PREFIX) {
            return None;
        }
        self.check_token(token)
    }

    /// Whether `address` is in the bounce domain (any local part).
    pub fn is_bounce_domain(&self, address: &str) -> bool {
        address.rsplit_once('@').is_some_and(|(_, d)| {
            d.trim_end_matches('.')
                .eq_ignore_ascii_case(self.domain.as_str())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postrider_core::MessageId;

    fn signer(secret: &str) -> VerpSigner {
        VerpSigner::new(Domain::parse("bounces.example.com").unwrap(), secret).unwrap()
    }

    #[test]
    fn round_trip_and_shape() {
        let s = signer("0123456789abcdef-secret");
        let target = VerpTarget {
            id: MessageId::from_u64(0x0123_4567_89ab_cdef),
            index: 7,
        };
        let rp = s.return_path(target).unwrap().to_string();
        assert!(
            rp.starts_with("b+") && rp.ends_with("@bounces.example.com"),
            "{rp}"
        );
        assert_eq!(rp.len(), "b+".len() + 24 + "@bounces.example.com".len());
        assert_eq!(s.check_address(&rp), Some(target));
        assert_eq!(s.check_address(&rp.to_ascii_uppercase()), Some(target));
        assert!(s.is_bounce_domain("postmaster@Bounces.Example.com"));
        assert!(!s.is_bounce_domain("b@example.com"));
        let too_many = VerpTarget {
            index: 70_000,
            ..target
        };
        assert_eq!(s.token(too_many), None);
    }

    #[test]
    fn forged_or_foreign_addresses_are_refused() {
        let s = signer("0123456789abcdef-secret");
        let target = VerpTarget {
            id: MessageId::from_u64(42),
            index: 0,
        };
        let token = s.token(target).unwrap();
        // another secret's token
        let other = signer("another-secret-of-16").token(target).unwrap();
        assert_eq!(s.check_token(&other), None);
        // one character changed
        let mut bad = token.clone().into_bytes();
        bad[3] = if bad[3] == b'0' { b'1' } else { b'0' };
        assert_eq!(s.check_token(&String::from_utf8(bad).unwrap()), None);
        for addr in [
            format!("b+{token}@other.example.com"),
            format!("x+{token}@bounces.example.com"),
            format!("b{token}@bounces.example.com"),
            "b+short@bounces.example.com".to_owned(),
            format!("b+{token}z@bounces.example.com"),
            "no-at-sign".to_owned(),
        ] {
            assert_eq!(s.check_address(&addr), None, "{addr}");
        }
        assert!(VerpSigner::new(Domain::parse("b.example").unwrap(), "short").is_err());
    }
}
