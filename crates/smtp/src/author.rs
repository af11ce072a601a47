//! The author fields (`From:`, `Sender:`) of a message submitted by an authenticated user,
//! checked against the senders the user may use (RFC 6409 §8 lets a submission server enforce
//! this). Without the check, a user allowed to send as `app@example.com` could put
//! `From: CEO <ceo@bank.test>` in the message, and recipients (and DKIM) would believe it.
//! Headers are parsed with `mail-parser`, the way mail readers and the DKIM signer see them.

use mail_parser::{HeaderName, HeaderValue, MessageParser};
use postrider_core::Address;

/// What happens to an authenticated user's message whose `From:` or `Sender:` names an address
/// the user may not send as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FromPolicy {
    /// Refuse it at the end of DATA with `550 5.7.1`, naming the field.
    #[default]
    Reject,
    /// Accept it with `From:` unchanged and every `Sender:` replaced by `Sender: <envelope
    /// sender>`, so the message names who really submitted it. DKIM then signs for the
    /// `Sender:` domain, never for the `From:` domain.
    Rewrite,
}

/// An author field whose address the user may not send as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorField {
    /// `From:`.
    From,
    /// `Sender:`.
    Sender,
}

impl AuthorField {
    /// The field name as written in a header.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorField::From => "From",
            AuthorField::Sender => "Sender",
        }
    }
}

/// The first `From:` or `Sender:` field, in header order, naming an address that `allowed`
/// refuses. A field without an address, or with one that is not a valid address, counts as
/// refused (fail closed). `None` when every author address is allowed.
pub fn disallowed_author_field(
    message: &[u8],
    allowed: impl Fn(&Address) -> bool,
) -> Option<AuthorField> {
    let parsed = MessageParser::new().parse_headers(message)?;
    parsed.headers().iter().find_map(|header| {
        let field = match header.name {
            HeaderName::From => AuthorField::From,
            HeaderName::Sender => AuthorField::Sender,
            _ => return None,
        };
        (!field_is_allowed(&header.value, &allowed)).then_some(field)
    })
}

/// Whether a parsed author field holds at least one address and only allowed ones.
fn field_is_allowed(value: &HeaderValue<'_>, allowed: &impl Fn(&Address) -> bool) -> bool {
    let HeaderValue::Address(addresses) = value else {
        return false;
    };
    let mut any = false;
    for entry in addresses.iter() {
        any = true;
        let parsed = entry.address().and_then(|a| Address::parse(a).ok());
        if !parsed.is_some_and(|a| allowed(&a)) {
            return false;
        }
    }
    any
}

/// `message` with every `Sender:` field removed and `Sender: <sender>` added in front.
pub fn with_sender(message: &[u8], sender: &Address) -> Vec<u8> {
    let sender_fields: Vec<(usize, usize)> = MessageParser::new()
        .parse_headers(message)
        .map(|parsed| {
            parsed
                .headers()
                .iter()
                .filter(|h| h.name == HeaderName::Sender)
                .map(|h| (h.offset_field as usize, h.offset_end as usize))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::with_capacity(message.len() + 64);
    out.extend_from_slice(format!("Sender: <{sender}>\r\n").as_bytes());
    let mut copied = 0;
    for (start, end) in sender_fields {
        if start >= copied && end <= message.len() {
            out.extend_from_slice(&message[copied..start]);
            copied = end;
        }
    }
    out.extend_from_slice(&message[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_a_test(address: &Address) -> bool {
        address.domain().as_str() == "a.test"
    }

    #[test]
    fn finds_the_first_forged_field() {
        let check = |m: &[u8]| disallowed_author_field(m, in_a_test);
        assert_eq!(
            check(b"From: Me <me@a.test>\r\nSubject: x\r\n\r\nbody\r\n"),
            None
        );
        assert_eq!(check(b"Subject: no author\r\n\r\nFrom: x@b.test\r\n"), None);
        assert_eq!(
            check(b"From: CEO <ceo@bank.test>\r\n\r\nx\r\n"),
            Some(AuthorField::From)
        );
        assert_eq!(
            check(b"From: me@a.test, ceo@bank.test\r\n\r\nx\r\n"),
            Some(AuthorField::From)
        );
        assert_eq!(
            check(b"From: me@a.test\r\nSender: ceo@bank.test\r\n\r\nx\r\n"),
            Some(AuthorField::Sender)
        );
        // A display name that looks like an address is only a name.
        assert_eq!(
            check(b"From: \"ceo@bank.test\" <me@a.test>\r\n\r\nx\r\n"),
            None
        );
        // Two From: fields: the second one counts too.
        assert_eq!(
            check(b"From: me@a.test\r\nFrom: ceo@bank.test\r\n\r\nx\r\n"),
            Some(AuthorField::From)
        );
        // No address at all fails closed.
        assert_eq!(
            check(b"From: Undisclosed\r\n\r\nx\r\n"),
            Some(AuthorField::From)
        );
    }

    #[test]
    fn sender_is_replaced() {
        let me = Address::parse("me@a.test").unwrap();
        let out = with_sender(
            b"From: CEO <ceo@bank.test>\r\nSender: ceo@bank.test\r\nSubject: x\r\nsender:\r\n\tfolded@bank.test\r\n\r\nSender: body@x\r\n",
            &me,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Sender: <me@a.test>\r\nFrom: CEO <ceo@bank.test>\r\nSubject: x\r\n\r\nSender: body@x\r\n"
        );
        let out = with_sender(b"From: ceo@bank.test\r\n\r\nx\r\n", &me);
        assert_eq!(
            out,
            b"Sender: <me@a.test>\r\nFrom: ceo@bank.test\r\n\r\nx\r\n"
        );
    }
}
