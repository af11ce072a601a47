//! The signature scheme of webhook requests.
//!
//! Each request carries `Postrider-Timestamp: <unix seconds>` and
//! `Postrider-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`. A receiver
//! recomputes the HMAC over the timestamp header, a `.`, and the raw body bytes, compares it
//! in constant time, and rejects timestamps too far from its clock (e.g. 5 minutes) to stop
//! replays. `v1` names this scheme; a future scheme would add another `vN=` entry.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The keyed MAC over `"<timestamp>.<body>"`, ready for its result or a constant-time check.
fn signed_mac(secret: &str, timestamp: u64, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of every length; the error case of `new_from_slice` cannot happen.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Postrider-Signature` value for a body sent at `timestamp` (unix seconds).
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mac = signed_mac(secret, timestamp, body).finalize().into_bytes();
    let mut out = String::with_capacity(3 + 64);
    out.push_str("v1=");
    for b in mac {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Checks a `Postrider-Signature` header value (for receivers written in Rust, and tests):
/// true when one of its comma-separated entries is a valid `v1=` signature.
pub fn verify(secret: &str, timestamp: u64, body: &[u8], header: &str) -> bool {
    header
        .split(',')
        .filter_map(|entry| entry.trim().strip_prefix("v1="))
        .filter_map(decode_hex)
        .any(|tag| {
            signed_mac(secret, timestamp, body)
                .verify_slice(&tag)
                .is_ok()
        })
}

/// Lowercase or uppercase hex to bytes; `None` for anything else.
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(key).unwrap();
        mac.update(message);
        mac.finalize().into_bytes().to_vec()
    }

    #[test]
    fn rfc4231_vectors() {
        // Test case 2.
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 1.
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        // Test case 6: a key longer than the block is hashed first.
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn signatures_verify_and_bind_timestamp_and_body() {
        let sig = signature("s3cret", 1_700_000_000, b"{\"a\":1}");
        assert!(sig.starts_with("v1=") && sig.len() == 67);
        assert!(verify("s3cret", 1_700_000_000, b"{\"a\":1}", &sig));
        assert!(!verify("s3cret", 1_700_000_001, b"{\"a\":1}", &sig));
        assert!(!verify("s3cret", 1_700_000_000, b"{\"a\":2}", &sig));
        assert!(!verify("other", 1_700_000_000, b"{\"a\":1}", &sig));
        assert!(!verify("s3cret", 1_700_000_000, b"{\"a\":1}", "v1=zz"));
        assert!(!verify("s3cret", 1_700_000_000, b"{\"a\":1}", &sig[..40]));
        assert!(verify(
            "s3cret",
            1_700_000_000,
            b"{\"a\":1}",
            &format!("v0=00, {sig}")
        ));
    }
}
