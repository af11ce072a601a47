//! Mailbox addresses, domains and the reverse-path (RFC 5321 §4.1.2).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a text is not an acceptable mailbox address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// No `@`, or nothing on one side of it.
    #[error("an address needs a local part, '@' and a domain")]
    Shape,
    /// The local part is not a dot-atom or quoted string, or is over 64 octets.
    #[error("invalid local part: {0}")]
    LocalPart(&'static str),
    /// The domain is not a valid host name or address literal.
    #[error("invalid domain: {0}")]
    Domain(&'static str),
    /// Control characters (CR, LF, NUL, …) or whitespace where none may be.
    #[error("control characters or spaces are not allowed in an address")]
    Control,
    /// Longer than the 254 octets a path may carry.
    #[error("the address is longer than 254 octets")]
    TooLong,
}

/// A domain name as used for MX lookup and grouping: lowercase, no trailing dot.
///
/// Address literals (`[192.0.2.1]`) are kept with their brackets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Domain(String);

impl Domain {
    /// Validates and normalises a domain (lowercases ASCII, strips one trailing dot).
    pub fn parse(s: &str) -> Result<Domain, AddressError> {
        let s = s.strip_suffix('.').unwrap_or(s);
        if s.is_empty() {
            return Err(AddressError::Domain("empty"));
        }
        if s.len() > 253 {
            return Err(AddressError::Domain("longer than 253 octets"));
        }
        if s.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(AddressError::Control);
        }
        if let Some(lit) = s.strip_prefix('[') {
            let inner = lit
                .strip_suffix(']')
                .ok_or(AddressError::Domain("unclosed address literal"))?;
            let ok = if let Some(v6) = inner
                .strip_prefix("IPv6:")
                .or_else(|| inner.strip_prefix("ipv6:"))
            {
                v6.parse::<std::net::Ipv6Addr>().is_ok()
            } else {
                inner.parse::<std::net::Ipv4Addr>().is_ok()
            };
            if !ok {
                return Err(AddressError::Domain("bad address literal"));
            }
            return Ok(Domain(s.to_ascii_lowercase()));
        }
        for label in s.split('.') {
            if label.is_empty() {
                return Err(AddressError::Domain("empty label"));
            }
            if label.len() > 63 {
                return Err(AddressError::Domain("label longer than 63 octets"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(AddressError::Domain("label starts or ends with '-'"));
            }
            // ASCII labels are letters, digits and hyphens; non-ASCII (SMTPUTF8) labels are allowed
            // as long as they carry no ASCII punctuation.
            if !label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
            {
                return Err(AddressError::Domain(
                    "label has characters other than letters, digits and '-'",
                ));
            }
        }
        Ok(Domain(s.to_ascii_lowercase()))
    }

    /// The normalised text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The fully qualified form with a trailing dot, for DNS queries (no search list applies).
    pub fn to_fqdn(&self) -> String {
        format!("{}.", self.0)
    }

    /// The IP address of an address literal such as `[192.0.2.1]`, if this is one.
    pub fn address_literal(&self) -> Option<std::net::IpAddr> {
        let inner = self.0.strip_prefix('[')?.strip_suffix(']')?;
        match inner.strip_prefix("ipv6:") {
            Some(v6) => v6.parse().ok().map(std::net::IpAddr::V6),
            None => inner.parse().ok().map(std::net::IpAddr::V4),
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Domain {
    type Error = AddressError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Domain::parse(&s)
    }
}

impl From<Domain> for String {
    fn from(d: Domain) -> String {
        d.0
    }
}

impl FromStr for Domain {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Domain::parse(s)
    }
}

/// A mailbox: `local@domain`. The local part keeps its case (RFC 5321 §2.4), the domain is lowercased.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Address {
    local: String,
    domain: Domain,
}

impl Address {
    /// Parses `local@domain` (no angle brackets). The local part is a dot-atom or a quoted string.
    pub fn parse(s: &str) -> Result<Address, AddressError> {
        if s.len() > 254 {
            return Err(AddressError::TooLong);
        }
        if s.bytes().any(|b| b.is_ascii_control()) {
            return Err(AddressError::Control);
        }
        let at = s.rfind('@').ok_or(AddressError::Shape)?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
        if local.is_empty() || domain.is_empty() {
            return Err(AddressError::Shape);
        }
        validate_local(local)?;
        Ok(Address {
            local: local.to_owned(),
            domain: Domain::parse(domain)?,
        })
    }

    /// The local part as written (case preserved).
    pub fn local_part(&self) -> &str {
        &self.local
    }

    /// The domain part.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// Whether any part needs SMTPUTF8 (RFC 6531) to be transmitted.
    pub fn needs_smtputf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.as_str().is_ascii()
    }
}

fn validate_local(local: &str) -> Result<(), AddressError> {
    if local.len() > 64 {
        return Err(AddressError::LocalPart("longer than 64 octets"));
    }
    if let Some(inner) = local.strip_prefix('"') {
        let inner = inner
            .strip_suffix('"')
            .ok_or(AddressError::LocalPart("unclosed quoted string"))?;
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    let next = chars
                        .next()
                        .ok_or(AddressError::LocalPart("dangling backslash"))?;
                    if next.is_ascii_control() {
                        return Err(AddressError::Control);
                    }
                }
                '"' => return Err(AddressError::LocalPart("unescaped quote")),
                c if c.is_ascii_control() => return Err(AddressError::Control),
                _ => {}
            }
        }
        return Ok(());
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(AddressError::LocalPart("misplaced '.'"));
    }
    const SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~.";
    if local.chars().any(|c| c == ' ') {
        return Err(AddressError::Control);
    }
    if !local
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || SPECIALS.contains(c) || !c.is_ascii())
    {
        return Err(AddressError::LocalPart(
            "characters outside a dot-atom; quote the local part",
        ));
    }
    Ok(())
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Address::parse(s)
    }
}

impl TryFrom<String> for Address {
    type Error = AddressError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Address::parse(&s)
    }
}

impl From<Address> for String {
    fn from(a: Address) -> String {
        a.to_string()
    }
}

/// The envelope sender: a mailbox, or the null reverse-path `<>` used by bounces and other
/// notifications, which must never themselves be bounced (RFC 5321 §4.5.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ReversePath {
    /// `MAIL FROM:<>`.
    Null,
    /// `MAIL FROM:<address>`.
    Address(Address),
}

impl ReversePath {
    /// Parses an address, or the empty string as the null path.
    pub fn parse(s: &str) -> Result<ReversePath, AddressError> {
        if s.is_empty() {
            Ok(ReversePath::Null)
        } else {
            Address::parse(s).map(ReversePath::Address)
        }
    }

    /// The mailbox, unless this is the null path.
    pub fn address(&self) -> Option<&Address> {
        match self {
            ReversePath::Null => None,
            ReversePath::Address(a) => Some(a),
        }
    }

    /// Whether this is `<>`.
    pub fn is_null(&self) -> bool {
        matches!(self, ReversePath::Null)
    }
}

impl fmt::Display for ReversePath {
    /// The bare path: the address, or the empty string for `<>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => Ok(()),
            ReversePath::Address(a) => a.fmt(f),
        }
    }
}

impl TryFrom<String> for ReversePath {
    type Error = AddressError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ReversePath::parse(&s)
    }
}

impl From<ReversePath> for String {
    fn from(r: ReversePath) -> String {
        r.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_addresses() {
        for ok in [
            "a@example.com",
            "First.Last+tag@Example.COM",
            "\"john doe\"@example.com",
            "user@[192.0.2.1]",
            "user@[IPv6:2001:db8::1]",
            "üser@bücher.example",
            "x@a-b.c",
        ] {
            assert!(Address::parse(ok).is_ok(), "{ok}");
        }
        let a = Address::parse("First.Last@Example.COM.").unwrap();
        assert_eq!(a.to_string(), "First.Last@example.com");
        assert_eq!(a.domain().to_fqdn(), "example.com.");
    }

    #[test]
    fn rejects_invalid_addresses() {
        for bad in [
            "",
            "@",
            "a@",
            "@b.c",
            "a..b@c.d",
            ".a@c.d",
            "a.@c.d",
            "a b@c.d",
            "a@b c.d",
            "a@-b.c",
            "a@b-.c",
            "a@b..c",
            "a\r\n@b.c",
            "a@b.c\r\nRCPT TO:<x@y>",
            "a<b@c.d",
            "a@[1.2.3]",
            "a@b_c.d",
            "\"unclosed@b.c",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Address::parse(&format!("{}@b.c", "a".repeat(65))),
            Err(AddressError::LocalPart("longer than 64 octets"))
        );
        assert_eq!(
            Address::parse(&format!("a@{}.c", "b".repeat(260))),
            Err(AddressError::TooLong)
        );
    }

    #[test]
    fn reverse_path_null_round_trips() {
        assert_eq!(ReversePath::parse(""), Ok(ReversePath::Null));
        let json = serde_json::to_string(&ReversePath::Null).unwrap();
        assert_eq!(json, "\"\"");
        let back: ReversePath = serde_json::from_str(&json).unwrap();
        assert!(back.is_null());
        let a: ReversePath = serde_json::from_str("\"a@b.c\"").unwrap();
        assert_eq!(a.address().map(|a| a.domain().as_str()), Some("b.c"));
    }

    #[test]
    fn address_literals_resolve() {
        let d = Domain::parse("[IPv6:2001:db8::1]").unwrap();
        assert_eq!(d.address_literal(), "2001:db8::1".parse().ok());
        assert_eq!(
            Domain::parse("[192.0.2.1]").unwrap().address_literal(),
            "192.0.2.1".parse().ok()
        );
        assert_eq!(
            Domain::parse("example.com").unwrap().address_literal(),
            None
        );
    }
}
