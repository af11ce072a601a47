//! RFC 8058 one-click unsubscribe links.
//!
//! Each copy of a message sent with [`crate::QueuedMessage::unsubscribe`] carries
//! `List-Unsubscribe: <{base_url}/unsubscribe/{token}>` and
//! `List-Unsubscribe-Post: List-Unsubscribe=One-Click`. The token names the message and the
//! recipient (queue id and recipient index, 10 bytes) and is signed with an 80-bit
//! HMAC-SHA256 tag ([`crate::signed_token`]): 32 lowercase base32 characters. The recipient's
//! address never appears in the URL, and a token cannot be made or altered without the secret.

use crate::signed_token::{RecipientRef, TokenKey};

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// Bytes of the MAC kept in a token (80 bits: the endpoint is public, so guessing must be
/// hopeless even at a high request rate).
const MAC_LEN: usize = 10;
/// The path prefix of the links, under the base URL.
pub const PATH_PREFIX: &str = "/unsubscribe/";
/// The `List-Unsubscribe-Post` value (and the form body) RFC 8058 prescribes.
pub const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

/// Why unsubscribe settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsubscribeError {
    /// The secret is too short to be one.
    #[error("the secret must have at least {MIN_SECRET_LEN} bytes")]
    ShortSecret,
    /// The base URL is not an `https://` origin.
    #[error(
        "the base URL must be https://host[:port] with an optional path, without query, fragment or spaces"
    )]
    BaseUrl,
}

/// The message and recipient an unsubscribe token was made for.
pub type UnsubscribeTarget = RecipientRef;

/// Makes and checks one-click unsubscribe links for one public base URL and secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubscribeLinks {
    base_url: String,
    key: TokenKey,
}

impl UnsubscribeLinks {
    /// Links under `base_url` (the relay's public `https://` address; a trailing `/` is
    /// dropped) signed with `secret`.
    pub fn new(base_url: &str, secret: &[u8]) -> Result<UnsubscribeLinks, UnsubscribeError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(UnsubscribeError::ShortSecret);
        }
        let base_url = base_url.trim_end_matches('/');
        if !is_https_base(base_url) {
            return Err(UnsubscribeError::BaseUrl);
        }
        Ok(UnsubscribeLinks {
            base_url: base_url.to_owned(),
            key: TokenKey::new(secret, b"postrider-unsubscribe\0", MAC_LEN),
        })
    }

    /// The base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The token of `target`; `None` when the index does not fit (more than 65536 recipients).
    pub fn token(&self, target: UnsubscribeTarget) -> Option<String> {
        self.key.seal_recipient(target)
    }

    /// The link of `target`: `{base_url}/unsubscribe/{token}`.
    pub fn url(&self, target: UnsubscribeTarget) -> Option<String> {
        Some(format!(
            "{}{PATH_PREFIX}{}",
            self.base_url,
            self.token(target)?
        ))
    }

    /// The message and recipient of a valid token (any case); `None` for anything else.
    pub fn check_token(&self, token: &str) -> Option<UnsubscribeTarget> {
        self.key.open_recipient(token)
    }

    /// The two header fields (each ending in CRLF) that offer `target` a one-click
    /// unsubscribe; `None` when no token can be made for it.
    pub fn header_fields(&self, target: UnsubscribeTarget) -> Option<String> {
        let url = self.url(target)?;
        Some(format!(
            "List-Unsubscribe: <{url}>\r\nList-Unsubscribe-Post: {ONE_CLICK}\r\n"
        ))
    }
}

/// `https://` followed by a host (letters, digits, `-`, `.`, an optional `:port`) and an
/// optional path of URL-safe characters; no query, fragment, user info or spaces.
fn is_https_base(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("https://") else {
        return false;
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = authority.split_once(':').unwrap_or((authority, ""));
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    let port_ok = port.is_empty() || (port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()));
    let path_ok = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b));
    host_ok && port_ok && path_ok && !authority.ends_with(':')
}

/// Whether the message's header section (up to the first empty line) already has a
/// `List-Unsubscribe` field: then the application's own link wins and none is added.
pub fn has_list_unsubscribe(message: &[u8]) -> bool {
    header_names(message).any(|name| name.eq_ignore_ascii_case(b"List-Unsubscribe"))
}

/// The field names of the header section (continuation lines skipped).
fn header_names(message: &[u8]) -> impl Iterator<Item = &[u8]> {
    message
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty())
        .filter(|line| !matches!(line.first(), Some(b' ' | b'\t')))
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            line.get(..colon).map(<[u8]>::trim_ascii)
        })
}

/// `message` with the unsubscribe header fields of `target` in front, or unchanged when it
/// already has a `List-Unsubscribe` field or no token can be made.
pub fn with_unsubscribe_headers(
    links: &UnsubscribeLinks,
    target: UnsubscribeTarget,
    message: &[u8],
) -> Vec<u8> {
    match links
        .header_fields(target)
        .filter(|_| !has_list_unsubscribe(message))
    {
        Some(fields) => {
            let mut out = Vec::with_capacity(fields.len() + message.len());
            out.extend_from_slice(fields.as_bytes());
            out.extend_from_slice(message);
            out
        }
        None => message.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MessageId;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn links() -> UnsubscribeLinks {
        UnsubscribeLinks::new("https://mail.example.com/", SECRET).unwrap()
    }

    #[test]
    fn token_round_trip_and_shape() {
        let l = links();
        let target = UnsubscribeTarget {
            id: MessageId::from_u64(0x0123_4567_89ab_cdef),
            index: 3,
        };
        let token = l.token(target).unwrap();
        assert_eq!(token.len(), 32);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
        assert_eq!(l.check_token(&token), Some(target));
        assert_eq!(
            l.url(target).unwrap(),
            format!("https://mail.example.com/unsubscribe/{token}")
        );
        let other = UnsubscribeTarget { index: 4, ..target };
        assert_ne!(l.token(other).unwrap(), token);
        assert_eq!(
            l.token(UnsubscribeTarget {
                index: 70_000,
                ..target
            }),
            None
        );
    }

    #[test]
    fn forged_or_altered_tokens_are_refused() {
        let l = links();
        let target = UnsubscribeTarget {
            id: MessageId::from_u64(42),
            index: 0,
        };
        let token = l.token(target).unwrap();
        let foreign = UnsubscribeLinks::new(
            "https://mail.example.com",
            b"another secret of at least 32 bytes!",
        )
        .unwrap()
        .token(target)
        .unwrap();
        assert_eq!(l.check_token(&foreign), None);
        for i in 0..token.len() {
            let mut bad = token.clone().into_bytes();
            bad[i] = if bad[i] == b'a' { b'b' } else { b'a' };
            assert_eq!(l.check_token(&String::from_utf8(bad).unwrap()), None, "{i}");
        }
        assert_eq!(l.check_token(&token[..31]), None);
        assert_eq!(l.check_token(""), None);
        // A VERP-shaped token of the same secret does not check as an unsubscribe token.
        let verp = crate::signed_token::TokenKey::new(SECRET, b"", 10).seal(&[0u8; 10]);
        assert_eq!(l.check_token(&verp), None);
    }

    #[test]
    fn settings_are_checked() {
        assert_eq!(
            UnsubscribeLinks::new("https://mail.example.com", b"short").unwrap_err(),
            UnsubscribeError::ShortSecret
        );
        for bad in [
            "http://mail.example.com",
            "https://",
            "https://mail.example.com?x=1",
            "https://user@mail.example.com",
            "https://mail example.com",
            "https://mail.example.com:",
        ] {
            assert_eq!(
                UnsubscribeLinks::new(bad, SECRET).unwrap_err(),
                UnsubscribeError::BaseUrl,
                "{bad}"
            );
        }
        let l = UnsubscribeLinks::new("https://mail.example.com:8443/relay/", SECRET).unwrap();
        assert_eq!(l.base_url(), "https://mail.example.com:8443/relay");
    }

    #[test]
    fn headers_are_inserted_unless_the_message_has_its_own() {
        let l = links();
        let target = UnsubscribeTarget {
            id: MessageId::from_u64(7),
            index: 1,
        };
        let message =
            b"From: a@example.com\r\nSubject: hi\r\n\r\nList-Unsubscribe: in the body\r\n";
        let out = with_unsubscribe_headers(&l, target, message);
        let text = String::from_utf8(out).unwrap();
        let url = l.url(target).unwrap();
        assert!(
            text.starts_with(&format!(
                "List-Unsubscribe: <{url}>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nFrom:"
            )),
            "{text}"
        );
        assert!(text.ends_with(std::str::from_utf8(message).unwrap()));
        let own = b"From: a@example.com\r\nlist-unsubscribe : <mailto:u@example.com>\r\n\r\nbody";
        assert_eq!(with_unsubscribe_headers(&l, target, own), own.to_vec());
        let folded = b"Subject: x\r\n List-Unsubscribe: folded, not a field\r\n\r\n";
        assert!(!has_list_unsubscribe(folded));
    }
}
