//! SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463), and what they mean.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An RFC 3463 enhanced status code `class.subject.detail`, e.g. `5.1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnhancedStatus {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// 0–999: the subject (1 = addressing, 2 = mailbox, 3 = mail system, 4 = network/routing, …).
    pub subject: u16,
    /// 0–999: the detail within the subject.
    pub detail: u16,
}

impl EnhancedStatus {
    /// A code from its three parts.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        EnhancedStatus {
            class,
            subject,
            detail,
        }
    }

    /// Parses `class.subject.detail` with class 2, 4 or 5 and at most three digits per part.
    pub fn parse(s: &str) -> Option<EnhancedStatus> {
        let mut parts = s.split('.');
        let (c, sub, det) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let digits = |p: &str, max: usize| {
            !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(c, 1) || !digits(sub, 3) || !digits(det, 3) {
            return None;
        }
        let class: u8 = c.parse().ok()?;
        if !matches!(class, 2 | 4 | 5) {
            return None;
        }
        Some(EnhancedStatus {
            class,
            subject: sub.parse().ok()?,
            detail: det.parse().ok()?,
        })
    }

    /// The same subject and detail with another class: used to turn the last 4.x.x of an expired
    /// message into the status of its bounce while keeping the reason.
    pub const fn with_class(self, class: u8) -> Self {
        EnhancedStatus { class, ..self }
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl Serialize for EnhancedStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EnhancedStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        EnhancedStatus::parse(&s)
            .ok_or_else(|| serde::de::Error::custom("invalid enhanced status code"))
    }
}

/// One complete (possibly multi-line) SMTP reply.
///
/// `text` holds the lines joined with `\n`, without the code and without the enhanced code of the
/// first line, which is parsed into `enhanced`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtpReply {
    /// The three-digit reply code.
    pub code: u16,
    /// The RFC 3463 code from the start of the first line, when the server sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<EnhancedStatus>,
    /// Human-readable text.
    pub text: String,
}

impl SmtpReply {
    /// Builds a reply, pulling an enhanced status code off the front of `text` when present.
    pub fn new(code: u16, text: &str) -> Self {
        let text = text.trim_end_matches(['\r', '\n']);
        let (first, _) = text.split_once(' ').unwrap_or((text, ""));
        match EnhancedStatus::parse(first) {
            Some(e) if u16::from(e.class) == code / 100 => SmtpReply {
                code,
                enhanced: Some(e),
                text: text[first.len()..].trim_start().to_owned(),
            },
            _ => SmtpReply {
                code,
                enhanced: None,
                text: text.to_owned(),
            },
        }
    }

    /// A reply this relay makes up for a failure with no server reply (DNS, connection, timeout),
    /// so every outcome carries a code for logs, DSNs and the API.
    pub fn synthetic(code: u16, enhanced: EnhancedStatus, text: impl Into<String>) -> Self {
        SmtpReply {
            code,
            enhanced: Some(enhanced),
            text: text.into(),
        }
    }

    /// The enhanced code, or one derived from the basic code's class (`x.0.0`) when absent.
    pub fn status(&self) -> EnhancedStatus {
        self.enhanced.unwrap_or(EnhancedStatus::new(
            (self.code / 100).clamp(2, 5) as u8,
            0,
            0,
        ))
    }

    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

impl fmt::Display for SmtpReply {
    /// One line: `550 5.1.1 no such user` (continuation lines joined by spaces).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        if !self.text.is_empty() {
            f.write_str(" ")?;
            let mut first = true;
            for line in self.text.lines() {
                if !first {
                    f.write_str(" ")?;
                }
                first = false;
                f.write_str(line)?;
            }
        }
        Ok(())
    }
}

/// Which command a reply answered; the same code can mean different things in different phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpPhase {
    /// The 220 greeting.
    Greeting,
    /// EHLO/HELO.
    Ehlo,
    /// STARTTLS.
    StartTls,
    /// AUTH.
    Auth,
    /// MAIL FROM.
    MailFrom,
    /// RCPT TO.
    RcptTo,
    /// DATA (the 354 stage).
    Data,
    /// The reply after the message content.
    DataEnd,
}

/// What a reply means for the recipients it applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use]
pub enum ReplyClass {
    /// Accepted (2xx/3xx).
    Success,
    /// Try again later (4xx; also 552 at RCPT, per RFC 5321 §4.5.3.1.10).
    Transient,
    /// Give up and bounce (5xx).
    Permanent,
}

/// Classifies a reply received in `phase`.
///
/// - 2xx and 3xx are success.
/// - 4xx is transient.
/// - 5xx is permanent, except `552` to RCPT, which RFC 5321 §4.5.3.1.10 says to treat as
///   "too many recipients" (transient), as old servers used it that way.
/// - Codes outside 200–599 are a protocol violation; they are treated as transient so that a
///   broken server cannot make us bounce mail.
pub fn classify_reply(phase: SmtpPhase, reply: &SmtpReply) -> ReplyClass {
    match reply.code {
        200..=399 => ReplyClass::Success,
        552 if phase == SmtpPhase::RcptTo => ReplyClass::Transient,
        400..=499 => ReplyClass::Transient,
        500..=599 => ReplyClass::Permanent,
        _ => ReplyClass::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_enhanced_codes() {
        let r = SmtpReply::new(550, "5.1.1 no such user\r\n");
        assert_eq!(r.enhanced, Some(EnhancedStatus::new(5, 1, 1)));
        assert_eq!(r.text, "no such user");
        assert_eq!(r.to_string(), "550 5.1.1 no such user");

        // a mismatched class is text, not an enhanced code
        let r = SmtpReply::new(450, "5.1.1 odd");
        assert_eq!(r.enhanced, None);
        assert_eq!(r.status(), EnhancedStatus::new(4, 0, 0));
        assert_eq!(r.to_string(), "450 5.1.1 odd");

        for bad in ["5.1", "5.1.1.1", "3.1.1", "5.1000.1", "5..1", "a.b.c"] {
            assert_eq!(EnhancedStatus::parse(bad), None, "{bad}");
        }
        assert_eq!(
            EnhancedStatus::parse("4.7.0").map(|e| e.with_class(5).to_string()),
            Some("5.7.0".into())
        );
    }

    #[test]
    fn multi_line_display_is_one_line() {
        let r = SmtpReply::new(250, "2.0.0 first\nsecond");
        assert_eq!(r.to_string(), "250 2.0.0 first second");
    }

    #[test]
    fn classification_table() {
        use ReplyClass::*;
        use SmtpPhase::*;
        let table = [
            (RcptTo, 250, Success),
            (Data, 354, Success),
            (Greeting, 421, Transient),
            (RcptTo, 450, Transient),
            (RcptTo, 452, Transient),
            (RcptTo, 550, Permanent),
            (RcptTo, 552, Transient),
            (DataEnd, 552, Permanent),
            (MailFrom, 553, Permanent),
            (DataEnd, 554, Permanent),
            (RcptTo, 199, Transient),
            (RcptTo, 600, Transient),
        ];
        for (phase, code, want) in table {
            assert_eq!(
                classify_reply(phase, &SmtpReply::new(code, "x")),
                want,
                "{phase:?} {code}"
            );
        }
    }

    #[test]
    fn serde_keeps_status_as_text() {
        let r = SmtpReply::new(451, "4.4.1 try later");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"code":451,"enhanced":"4.4.1","text":"try later"}"#
        );
        assert_eq!(serde_json::from_str::<SmtpReply>(&json).unwrap(), r);
    }
}
