//! Replies the server sends (RFC 5321 §4.2) with RFC 3463 enhanced status codes (RFC 2034).

use std::fmt::Write as _;

/// Why a command or message was refused: the bounded label set of
/// `postrider_smtp_rejections_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Malformed arguments or parameters (501/555).
    Syntax,
    /// Command out of sequence (503).
    BadSequence,
    /// Unknown command (500).
    UnknownCommand,
    /// Recognised but not implemented (502, 504).
    NotImplemented,
    /// A command line over 512 octets, or one with a bare CR or LF (500).
    LineTooLong,
    /// Declared or actual size over the limit (552 5.3.4).
    TooBig,
    /// Over `max_recipients` (452 4.5.3).
    TooManyRecipients,
    /// MAIL from an untrusted, unauthenticated client (530 5.7.0).
    AuthRequired,
    /// Wrong credentials (535 5.7.8).
    AuthFailed,
    /// AUTH refused without checking: too many failures from the client or for the user
    /// (454 4.7.0).
    AuthLockedOut,
    /// AUTH refused because no password check could start in time (454 4.7.0).
    AuthBusy,
    /// AUTH over plaintext from an untrusted network (538 5.7.11).
    EncryptionRequired,
    /// Relay attempt without permission (554 5.7.1).
    RelayDenied,
    /// The authenticated user may not use this sender (553 5.7.1).
    SenderNotAllowed,
    /// The authenticated user's `From:` or `Sender:` names a sender the user may not use
    /// (550 5.7.1 at the end of DATA).
    AuthorNotAllowed,
    /// A message rate limit was hit (450 4.7.1).
    RateLimited,
    /// Bare CR or LF in message content (550 5.6.11).
    BareNewline,
    /// A text line over 998 octets (552 5.6.0).
    LongTextLine,
    /// A NUL octet in message content (550 5.6.0).
    Nul,
    /// Non-ASCII address without SMTPUTF8 (553 5.6.7).
    Smtputf8Required,
    /// The queue could not store the message (451 4.3.0).
    Storage,
    /// The queue refused writes when the transaction would have started (452 4.3.1 to MAIL).
    StorageUnavailable,
    /// The client was idle too long (421 4.4.2).
    Timeout,
    /// Too many errors in one session (421 4.7.0).
    TooManyErrors,
    /// Connection limit reached (421 4.7.0).
    TooManyConnections,
    /// The server is shutting down (421 4.3.2).
    ShuttingDown,
    /// An idle session closed to make room for a new one (421 4.7.0).
    Overload,
}

impl Rejection {
    /// Every reason, so that each starts as a zero series of the rejection metric.
    pub const ALL: [Rejection; 27] = [
        Rejection::Syntax,
        Rejection::BadSequence,
        Rejection::UnknownCommand,
        Rejection::NotImplemented,
        Rejection::LineTooLong,
        Rejection::TooBig,
        Rejection::TooManyRecipients,
        Rejection::AuthRequired,
        Rejection::AuthFailed,
        Rejection::AuthLockedOut,
        Rejection::AuthBusy,
        Rejection::EncryptionRequired,
        Rejection::RelayDenied,
        Rejection::SenderNotAllowed,
        Rejection::AuthorNotAllowed,
        Rejection::RateLimited,
        Rejection::BareNewline,
        Rejection::LongTextLine,
        Rejection::Nul,
        Rejection::Smtputf8Required,
        Rejection::Storage,
        Rejection::StorageUnavailable,
        Rejection::Timeout,
        Rejection::TooManyErrors,
        Rejection::TooManyConnections,
        Rejection::ShuttingDown,
        Rejection::Overload,
    ];

    /// Stable metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Syntax => "syntax",
            Rejection::BadSequence => "bad_sequence",
            Rejection::UnknownCommand => "unknown_command",
            Rejection::NotImplemented => "not_implemented",
            Rejection::LineTooLong => "bad_command_line",
            Rejection::TooBig => "too_big",
            Rejection::TooManyRecipients => "too_many_recipients",
            Rejection::AuthRequired => "auth_required",
            Rejection::AuthFailed => "auth_failed",
            Rejection::AuthLockedOut => "auth_locked_out",
            Rejection::AuthBusy => "auth_busy",
            Rejection::EncryptionRequired => "encryption_required",
            Rejection::RelayDenied => "relay_denied",
            Rejection::SenderNotAllowed => "sender_not_allowed",
            Rejection::AuthorNotAllowed => "author_not_allowed",
            Rejection::RateLimited => "rate_limited",
            Rejection::BareNewline => "bare_newline",
            Rejection::LongTextLine => "long_text_line",
            Rejection::Nul => "nul",
            Rejection::Smtputf8Required => "smtputf8_required",
            Rejection::Storage => "storage",
            Rejection::StorageUnavailable => "storage_unavailable",
            Rejection::Timeout => "timeout",
            Rejection::TooManyErrors => "too_many_errors",
            Rejection::TooManyConnections => "too_many_connections",
            Rejection::ShuttingDown => "shutting_down",
            Rejection::Overload => "overload",
        }
    }
}

/// One reply: a three-digit code, an optional enhanced status code and one or more text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The basic reply code (e.g. 250).
    pub code: u16,
    /// The RFC 3463 code (e.g. `"2.1.0"`); `None` only for the greeting, EHLO/HELO, 334 and 354,
    /// where RFC 2034 does not use one.
    pub enhanced: Option<&'static str>,
    /// Text lines; never empty. Control characters are replaced when rendered.
    pub lines: Vec<String>,
    /// Set for refusals, for the rejection metric.
    pub rejection: Option<Rejection>,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
            rejection: None,
        }
    }

    /// A one-line reply without an enhanced status code.
    pub fn plain(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines: vec![text.into()],
            rejection: None,
        }
    }

    /// A refusal, labelled for the metric.
    pub fn reject(
        code: u16,
        enhanced: &'static str,
        text: impl Into<String>,
        why: Rejection,
    ) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
            rejection: Some(why),
        }
    }

    /// Whether the code is a permanent (5xx) failure.
    pub fn is_permanent_failure(&self) -> bool {
        self.code >= 500
    }

    /// The reply in wire form: `code[-| ][enhanced ]text CRLF` per line.
    pub fn render_into(&self, out: &mut Vec<u8>) {
        let count = self.lines.len().max(1);
        for index in 0..count {
            let text = self.lines.get(index).map(String::as_str).unwrap_or("");
            let separator = if index + 1 == count { ' ' } else { '-' };
            let mut line = String::with_capacity(text.len() + 12);
            let _ = write!(line, "{}{}", self.code, separator);
            if let Some(enhanced) = self.enhanced {
                line.push_str(enhanced);
                line.push(' ');
            }
            line.extend(text.chars().map(|c| if c.is_control() { '?' } else { c }));
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The rendered reply as a string (tests and logs).
    pub fn to_wire_string(&self) -> String {
        let mut out = Vec::new();
        self.render_into(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_single_and_multi_line() {
        assert_eq!(
            Reply::new(250, "2.1.0", "Ok").to_wire_string(),
            "250 2.1.0 Ok\r\n"
        );
        let multi = Reply {
            code: 250,
            enhanced: None,
            lines: vec!["host".into(), "PIPELINING".into()],
            rejection: None,
        };
        assert_eq!(multi.to_wire_string(), "250-host\r\n250 PIPELINING\r\n");
        assert_eq!(Reply::plain(334, "").to_wire_string(), "334 \r\n");
    }

    #[test]
    fn all_lists_every_reason_once() {
        let labels: std::collections::HashSet<&str> =
            Rejection::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), Rejection::ALL.len());
        // A new variant must be added to ALL: this match fails to compile until it is handled.
        for r in Rejection::ALL {
            match r {
                Rejection::Syntax
                | Rejection::BadSequence
                | Rejection::UnknownCommand
                | Rejection::NotImplemented
                | Rejection::LineTooLong
                | Rejection::TooBig
                | Rejection::TooManyRecipients
                | Rejection::AuthRequired
                | Rejection::AuthFailed
                | Rejection::AuthLockedOut
                | Rejection::AuthBusy
                | Rejection::EncryptionRequired
                | Rejection::RelayDenied
                | Rejection::SenderNotAllowed
                | Rejection::AuthorNotAllowed
                | Rejection::RateLimited
                | Rejection::BareNewline
                | Rejection::LongTextLine
                | Rejection::Nul
                | Rejection::Smtputf8Required
                | Rejection::Storage
                | Rejection::StorageUnavailable
                | Rejection::Timeout
                | Rejection::TooManyErrors
                | Rejection::TooManyConnections
                | Rejection::ShuttingDown
                | Rejection::Overload => {}
            }
        }
    }

    #[test]
    fn never_renders_control_characters() {
        let r = Reply::new(501, "5.5.4", "bad\r\nMAIL FROM:<x>");
        assert_eq!(r.to_wire_string(), "501 5.5.4 bad??MAIL FROM:<x>\r\n");
    }
}
