//! What the sink answers: a plain data description, changeable while the
//! sink runs (see [`crate::SmtpSink::set_behaviour`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::reply::Reply;

/// The ESMTP extensions announced in the EHLO reply.
///
/// `STARTTLS` is added automatically when TLS is enabled (and the session
/// is not yet encrypted); `AUTH PLAIN LOGIN` when credentials are set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extensions {
    /// Announce `PIPELINING` (default true). Pipelined input is accepted
    /// either way.
    pub pipelining: bool,
    /// Announce `8BITMIME` (default true).
    pub eight_bit_mime: bool,
    /// Announce `SMTPUTF8` (default true).
    pub smtputf8: bool,
    /// Announce `SIZE n` (default `Some(10 MiB)`); also enforced on the
    /// `SIZE=` parameter and on the received data.
    pub size: Option<u64>,
    /// Announce `ENHANCEDSTATUSCODES` (default true).
    pub enhanced_status_codes: bool,
    /// Announce `DSN` (default true).
    pub dsn: bool,
    /// Extra lines to announce verbatim (e.g. `"CHUNKING"`; not implemented
    /// by the sink, only announced).
    pub extra: Vec<String>,
}

impl Default for Extensions {
    fn default() -> Self {
        Self {
            pipelining: true,
            eight_bit_mime: true,
            smtputf8: true,
            size: Some(10 * 1024 * 1024),
            enhanced_status_codes: true,
            dsn: true,
            extra: Vec::new(),
        }
    }
}

/// How a recipient rule matches the `RCPT TO` address (case-insensitive).
#[derive(Clone)]
pub enum RcptMatch {
    /// The local part (before the last `@`) starts with this text.
    LocalPartPrefix(String),
    /// The whole address equals this text.
    Exact(String),
    /// The domain (after the last `@`) equals this text.
    Domain(String),
    /// Any address for which the function returns true.
    Predicate(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl fmt::Debug for RcptMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LocalPartPrefix(p) => write!(f, "LocalPartPrefix({p:?})"),
            Self::Exact(p) => write!(f, "Exact({p:?})"),
            Self::Domain(p) => write!(f, "Domain({p:?})"),
            Self::Predicate(_) => write!(f, "Predicate(..)"),
        }
    }
}

impl RcptMatch {
    /// True when `address` (without angle brackets) matches.
    pub fn matches(&self, address: &str) -> bool {
        let (local, domain) = match address.rsplit_once('@') {
            Some((local, domain)) => (local, domain),
            None => (address, ""),
        };
        match self {
            Self::LocalPartPrefix(prefix) => local
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix)),
            Self::Exact(exact) => address.eq_ignore_ascii_case(exact),
            Self::Domain(wanted) => domain.eq_ignore_ascii_case(wanted),
            Self::Predicate(predicate) => predicate(address),
        }
    }
}

/// One recipient rule: the first matching rule decides the RCPT reply.
#[derive(Clone, Debug)]
pub struct RcptRule {
    /// Which addresses the rule applies to.
    pub matcher: RcptMatch,
    /// The reply for them.
    pub reply: Reply,
}

impl RcptRule {
    /// Rule for local parts starting with `prefix`.
    pub fn local_prefix(prefix: &str, reply: Reply) -> Self {
        Self {
            matcher: RcptMatch::LocalPartPrefix(prefix.to_owned()),
            reply,
        }
    }

    /// The conventional test rules: local part `bad*` → `550 5.1.1 no such
    /// user`, `later*` → `450 4.2.1 mailbox busy, try later`, `full*` →
    /// `552 5.2.2 mailbox full`.
    pub fn standard() -> Vec<Self> {
        vec![
            Self::local_prefix("bad", Reply::new(550, "5.1.1 no such user")),
            Self::local_prefix("later", Reply::new(450, "4.2.1 mailbox busy, try later")),
            Self::local_prefix("full", Reply::new(552, "5.2.2 mailbox full")),
        ]
    }
}

/// A point in the SMTP transaction where a reply can be overridden.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The `MAIL FROM` reply.
    Mail,
    /// Every `RCPT TO` reply of the transaction.
    Rcpt,
    /// The reply to the `DATA` command (instead of `354`).
    Data,
    /// The reply after the final `.` of the message.
    EndOfData,
}

/// "Reply `reply` at `phase` for the next `transactions` transactions, then
/// behave normally": e.g. `451` at end of data twice, then success.
///
/// A transaction is counted when its `MAIL` command arrives; the count
/// starts when the behaviour is installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailFirst {
    /// Where the reply is overridden.
    pub phase: Phase,
    /// How many transactions (counted over all connections) get it.
    pub transactions: u64,
    /// The overriding reply.
    pub reply: Reply,
}

/// Everything the sink answers. `Behaviour::default()` accepts everything.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// Host name used in the greeting and EHLO reply (default `sink.test`).
    pub hostname: String,
    /// Greeting; a non-2xx greeting is followed by `503` to every command
    /// but QUIT, and `421` closes the connection right after it.
    /// `None` means `220 <hostname> ESMTP postrider-testkit`.
    pub greeting: Option<Reply>,
    /// Replaces the whole EHLO reply (e.g. `550`) when set; HELO still works.
    pub ehlo_reply: Option<Reply>,
    /// Announced extensions.
    pub extensions: Extensions,
    /// Reply to `MAIL FROM` (default `250 2.1.0 sender ok`).
    pub mail_reply: Reply,
    /// Recipient rules, first match wins (default none).
    pub rcpt_rules: Vec<RcptRule>,
    /// Reply to recipients no rule matches (default `250 2.1.5 recipient ok`).
    pub rcpt_default: Reply,
    /// Reply to `DATA` when at least one recipient was accepted (default
    /// `354`); with no accepted recipient it is always `554 5.5.1`.
    pub data_reply: Reply,
    /// Reply after the final `.` (default `250 2.0.0 message accepted`).
    /// Only a 2xx here records the message.
    pub end_of_data_reply: Reply,
    /// Override of one phase for the first N transactions.
    pub fail_first: Option<FailFirst>,
    /// Pause before every reply, greeting included (default zero).
    pub reply_delay: Duration,
    /// Extra pause before the end-of-data reply only (default zero): keeps
    /// sessions busy for concurrency tests.
    pub end_of_data_delay: Duration,
    /// Close the connection, without a reply, when the n-th command of a
    /// session arrives (1-based; `Some(0)` closes before the greeting).
    pub disconnect_at_command: Option<u32>,
    /// Close the connection after the message data arrived, without
    /// replying (the "was it delivered?" case). Nothing is recorded.
    pub disconnect_after_data: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            hostname: "sink.test".to_owned(),
            greeting: None,
            ehlo_reply: None,
            extensions: Extensions::default(),
            mail_reply: Reply::new(250, "2.1.0 sender ok"),
            rcpt_rules: Vec::new(),
            rcpt_default: Reply::new(250, "2.1.5 recipient ok"),
            data_reply: Reply::new(354, "start mail input; end with <CRLF>.<CRLF>"),
            end_of_data_reply: Reply::new(250, "2.0.0 message accepted"),
            fail_first: None,
            reply_delay: Duration::ZERO,
            end_of_data_delay: Duration::ZERO,
            disconnect_at_command: None,
            disconnect_after_data: false,
        }
    }
}

impl Behaviour {
    /// Accept everything except the [`RcptRule::standard`] recipients.
    pub fn with_standard_rules() -> Self {
        Self {
            rcpt_rules: RcptRule::standard(),
            ..Self::default()
        }
    }

    /// The reply for one recipient according to the rules.
    pub fn rcpt_reply(&self, address: &str) -> Reply {
        self.rcpt_rules
            .iter()
            .find(|rule| rule.matcher.matches(address))
            .map(|rule| rule.reply.clone())
            .unwrap_or_else(|| self.rcpt_default.clone())
    }

    /// The greeting actually sent.
    pub fn effective_greeting(&self) -> Reply {
        self.greeting.clone().unwrap_or_else(|| {
            Reply::new(220, format!("{} ESMTP postrider-testkit", self.hostname))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_rules_pick_replies_by_local_part() {
        let behaviour = Behaviour::with_standard_rules();
        assert_eq!(behaviour.rcpt_reply("bad@x.test").code, 550);
        assert_eq!(behaviour.rcpt_reply("BAD2@x.test").code, 550);
        assert_eq!(behaviour.rcpt_reply("later@x.test").code, 450);
        assert_eq!(behaviour.rcpt_reply("good@x.test").code, 250);
        // the prefix applies to the local part only
        assert_eq!(behaviour.rcpt_reply("good@bad.test").code, 250);
        let domain = RcptMatch::Domain("Bad.test".into());
        assert!(domain.matches("good@bad.test"));
        let predicate = RcptMatch::Predicate(Arc::new(|a: &str| a.len() > 10));
        assert!(predicate.matches("long-address@x.test"));
    }
}
