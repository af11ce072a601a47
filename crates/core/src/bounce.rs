//! Why a delivery failed: a [`BounceCategory`] for every failure reply, sync or async.
//!
//! The knowledge is data, not code: an ordered list of [`BounceRules`] (the built-in ones are
//! `bounce_rules.toml`, embedded at build time) matches the enhanced status code and phrases of
//! the reply text that the big mailbox providers use. Operators may put rules of their own in
//! front of the built-in ones ([`BounceRules::with_overrides`], installed once at start with
//! [`install_rules`]).

use std::fmt;
use std::sync::{LazyLock, OnceLock};

use serde::{Deserialize, Serialize};

use crate::reply::{EnhancedStatus, SmtpReply};

/// The built-in rules file.
const BUILT_IN_RULES: &str = include_str!("bounce_rules.toml");
/// Most rules one file may hold: bounds the work per classification.
pub const MAX_RULES: usize = 1000;
/// Most status patterns or text phrases one rule may hold.
pub const MAX_PATTERNS_PER_RULE: usize = 200;
/// Longest text phrase accepted, in bytes.
pub const MAX_PHRASE_LEN: usize = 200;
/// Longest reply text examined, in bytes (the start of longer texts is used).
const MAX_TEXT_LEN: usize = 4096;

/// What kind of failure a reply reports, for operators and for the suppression list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BounceCategory {
    /// The address does not exist or is disabled.
    InvalidRecipient,
    /// The mailbox is over its quota.
    MailboxFull,
    /// Rejected as spam, or the sending IP or domain has a bad reputation / is on a block list.
    SpamBlock,
    /// Rejected by a local policy of the receiver (including greylisting).
    Policy,
    /// The destination domain cannot be resolved or accepts no mail.
    Dns,
    /// TLS could not be negotiated or was required and missing.
    Tls,
    /// The receiver asks us to send more slowly.
    RateLimited,
    /// The content was refused (size, attachments, viruses, URLs).
    Content,
    /// The sender failed authentication checks (SPF, DKIM, DMARC, reverse DNS).
    Auth,
    /// The connection failed or was cut off.
    Network,
    /// None of the above.
    Other,
}

impl BounceCategory {
    /// Every category, in declaration order (metrics pre-initialise their labels with it).
    pub const ALL: [BounceCategory; 11] = [
        BounceCategory::InvalidRecipient,
        BounceCategory::MailboxFull,
        BounceCategory::SpamBlock,
        BounceCategory::Policy,
        BounceCategory::Dns,
        BounceCategory::Tls,
        BounceCategory::RateLimited,
        BounceCategory::Content,
        BounceCategory::Auth,
        BounceCategory::Network,
        BounceCategory::Other,
    ];

    /// Stable label (`invalid_recipient`, `mailbox_full`, …) used in the API, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BounceCategory::InvalidRecipient => "invalid_recipient",
            BounceCategory::MailboxFull => "mailbox_full",
            BounceCategory::SpamBlock => "spam_block",
            BounceCategory::Policy => "policy",
            BounceCategory::Dns => "dns",
            BounceCategory::Tls => "tls",
            BounceCategory::RateLimited => "rate_limited",
            BounceCategory::Content => "content",
            BounceCategory::Auth => "auth",
            BounceCategory::Network => "network",
            BounceCategory::Other => "other",
        }
    }

    /// Whether a streak of such replies means the destination wants us to slow down.
    pub fn is_throttling(self) -> bool {
        matches!(
            self,
            BounceCategory::RateLimited | BounceCategory::SpamBlock
        )
    }
}

impl fmt::Display for BounceCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rules file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BounceRulesError {
    /// Not valid TOML, or not the expected shape (unknown category, unknown key, …).
    #[error("bounce rules: {0}")]
    Syntax(String),
    /// A rule breaks a limit or is meaningless.
    #[error("bounce rule {index}: {problem}")]
    Rule {
        /// 1-based position of the rule in its file.
        index: usize,
        /// What is wrong with it.
        problem: String,
    },
}

/// One part of a status pattern: a number or `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Any,
    Is(u16),
}

impl Part {
    fn parse(s: &str) -> Option<Part> {
        if s == "*" {
            return Some(Part::Any);
        }
        if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok().map(Part::Is)
    }

    fn matches(self, value: u16) -> bool {
        match self {
            Part::Any => true,
            Part::Is(v) => v == value,
        }
    }
}

/// An enhanced status pattern such as `5.1.1`, `*.1.1` or `5.7.*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatusPattern([Part; 3]);

impl StatusPattern {
    fn parse(s: &str) -> Option<StatusPattern> {
        let mut it = s.trim().split('.').map(Part::parse);
        let p = [it.next()??, it.next()??, it.next()??];
        it.next().is_none().then_some(StatusPattern(p))
    }

    fn matches(self, e: EnhancedStatus) -> bool {
        let [c, s, d] = self.0;
        c.matches(u16::from(e.class)) && s.matches(e.subject) && d.matches(e.detail)
    }
}

/// One rule as written in a rules file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    category: BounceCategory,
    #[serde(default)]
    status: Option<Vec<String>>,
    #[serde(default)]
    text: Option<Vec<String>>,
}

/// A rules file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default)]
    rule: Vec<RawRule>,
}

/// One checked rule.
#[derive(Debug, Clone)]
struct Rule {
    category: BounceCategory,
    status: Option<Vec<StatusPattern>>,
    /// Lowercased phrases.
    text: Option<Vec<String>>,
}

/// `list` when it holds 1 to [`MAX_PATTERNS_PER_RULE`] entries (or is absent).
fn checked_list<'a>(list: Option<&'a [String]>, key: &str) -> Result<Option<&'a [String]>, String> {
    match list {
        Some(v) if v.is_empty() || v.len() > MAX_PATTERNS_PER_RULE => Err(format!(
            "`{key}` needs 1 to {MAX_PATTERNS_PER_RULE} entries"
        )),
        _ => Ok(list),
    }
}

impl Rule {
    fn from_raw(index: usize, raw: RawRule) -> Result<Rule, BounceRulesError> {
        let bad = |problem: String| BounceRulesError::Rule { index, problem };
        if raw.status.is_none() && raw.text.is_none() {
            return Err(bad("needs `status` or `text`".into()));
        }
        let status = checked_list(raw.status.as_deref(), "status")
            .map_err(bad)?
            .map(|v| {
                v.iter()
                    .map(|s| {
                        StatusPattern::parse(s).ok_or_else(|| {
                            bad(format!(
                                "`{s}` is not a status pattern like 5.1.1, *.1.1 or 5.7.*"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let text = checked_list(raw.text.as_deref(), "text").map_err(bad)?;
        if let Some(p) = text
            .unwrap_or_default()
            .iter()
            .find(|p| p.trim().is_empty() || p.len() > MAX_PHRASE_LEN)
        {
            return Err(bad(format!(
                "phrase `{p}` is empty or longer than {MAX_PHRASE_LEN} bytes"
            )));
        }
        let text = text.map(|v| v.iter().map(|p| p.to_lowercase()).collect());
        Ok(Rule {
            category: raw.category,
            status,
            text,
        })
    }

    fn matches(&self, status: EnhancedStatus, lowered_text: &str) -> bool {
        self.status
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p.matches(status)))
            && self
                .text
                .as_ref()
                .is_none_or(|ps| ps.iter().any(|p| lowered_text.contains(p.as_str())))
    }
}

/// An ordered list of classification rules: the first that matches decides.
#[derive(Debug, Clone)]
pub struct BounceRules {
    rules: Vec<Rule>,
}

impl BounceRules {
    /// Parses a rules file (TOML: `[[rule]]` tables with `category`, `status` and/or `text`).
    pub fn parse(toml_text: &str) -> Result<BounceRules, BounceRulesError> {
        let raw: RawRules =
            toml::from_str(toml_text).map_err(|e| BounceRulesError::Syntax(e.to_string()))?;
        if raw.rule.len() > MAX_RULES {
            return Err(BounceRulesError::Syntax(format!(
                "{} rules; at most {MAX_RULES} are allowed",
                raw.rule.len()
            )));
        }
        let rules = raw
            .rule
            .into_iter()
            .enumerate()
            .map(|(i, r)| Rule::from_raw(i + 1, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BounceRules { rules })
    }

    /// The rules built into Postrider.
    pub fn built_in() -> &'static BounceRules {
        static RULES: LazyLock<BounceRules> = LazyLock::new(|| {
            // The embedded file is checked by the tests; an empty list would only mean `other`.
            BounceRules::parse(BUILT_IN_RULES).unwrap_or(BounceRules { rules: Vec::new() })
        });
        &RULES
    }

    /// An operator's rules (`toml_text`), tried before the built-in ones.
    pub fn with_overrides(toml_text: &str) -> Result<BounceRules, BounceRulesError> {
        let mut own = BounceRules::parse(toml_text)?;
        own.rules
            .extend(BounceRules::built_in().rules.iter().cloned());
        Ok(own)
    }

    /// The category of a failure with enhanced status `status` and reply text `text`.
    pub fn classify_status(&self, status: EnhancedStatus, text: &str) -> BounceCategory {
        let end = floor_char_boundary(text, MAX_TEXT_LEN);
        let lowered = text[..end].to_lowercase();
        self.rules
            .iter()
            .find(|r| r.matches(status, &lowered))
            .map_or(BounceCategory::Other, |r| r.category)
    }

    /// The category of a failure reply.
    pub fn classify(&self, reply: &SmtpReply) -> BounceCategory {
        self.classify_status(reply.status(), &reply.text)
    }
}

/// The largest char boundary of `s` at or below `max`.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// The rules in force, when the operator installed some.
static INSTALLED: OnceLock<BounceRules> = OnceLock::new();

/// Makes `rules` the ones [`classify_failure`] uses for the rest of the process. Only the first
/// call has an effect (returns `false` afterwards): categories must not change under a running
/// relay.
pub fn install_rules(rules: BounceRules) -> bool {
    INSTALLED.set(rules).is_ok()
}

/// The rules in force: the installed ones, else the built-in ones.
pub fn rules() -> &'static BounceRules {
    INSTALLED.get().unwrap_or_else(|| BounceRules::built_in())
}

/// The category of a failure reply under the rules in force.
pub fn classify_failure(reply: &SmtpReply) -> BounceCategory {
    rules().classify(reply)
}

/// The category of `reply` when it reports a failure (4xx/5xx), `None` for a success: what the
/// API, events and logs show next to a reply. Derived, never stored, so records written before
/// categories existed show one too.
pub fn failure_category(reply: &SmtpReply) -> Option<BounceCategory> {
    (!reply.is_positive()).then(|| classify_failure(reply))
}

#[cfg(test)]
mod tests {
    use super::*;
    use BounceCategory::*;

    #[test]
    fn built_in_rules_parse() {
        let rules = BounceRules::parse(BUILT_IN_RULES).unwrap();
        assert!(rules.rules.len() > 10);
    }

    #[test]
    fn provider_replies_table() {
        let table: &[(u16, &str, BounceCategory)] = &[
            // Gmail
            (
                550,
                "5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos",
                InvalidRecipient,
            ),
            (
                452,
                "4.2.2 The email account that you tried to reach is over quota. Please direct the recipient to",
                MailboxFull,
            ),
            (
                550,
                "5.7.1 Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked.",
                SpamBlock,
            ),
            (
                450,
                "4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered.",
                RateLimited,
            ),
            (
                421,
                "4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address.",
                RateLimited,
            ),
            (
                550,
                "5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM.",
                Auth,
            ),
            (
                552,
                "5.7.0 This message was blocked because its content presents a potential security issue.",
                Policy,
            ),
            (
                552,
                "5.3.4 Your message exceeded Google's message size limits.",
                Content,
            ),
            // Microsoft
            (
                550,
                "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
                InvalidRecipient,
            ),
            (
                550,
                "5.4.1 Recipient address rejected: Access denied. AS(201806281)",
                InvalidRecipient,
            ),
            (
                550,
                "5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).",
                SpamBlock,
            ),
            (
                550,
                "5.7.606 Access denied, banned sending IP [192.0.2.1].",
                SpamBlock,
            ),
            (
                451,
                "4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.",
                RateLimited,
            ),
            (
                550,
                "5.7.515 Access denied, sending domain example.com does not meet the required authentication level.",
                Auth,
            ),
            (
                554,
                "5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException",
                MailboxFull,
            ),
            // Yahoo
            (
                421,
                "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints",
                RateLimited,
            ),
            (
                554,
                "delivery error: dd This user doesn't have a yahoo.com account (someone@yahoo.com) [0]",
                InvalidRecipient,
            ),
            (
                554,
                "delivery error: dd Sorry your message to someone@yahoo.com cannot be delivered. This mailbox is disabled (554.30).",
                InvalidRecipient,
            ),
            (
                553,
                "5.7.1 [BL21] Connections will not be accepted from 192.0.2.1, because the ip is in Spamhaus's list",
                SpamBlock,
            ),
            (
                554,
                "5.7.9 Message not accepted for policy reasons.",
                Policy,
            ),
            // Apple iCloud
            (
                554,
                "5.7.1 [CS01] Message rejected due to local policy.",
                SpamBlock,
            ),
            (
                550,
                "5.1.1 <someone@icloud.com>: user does not exist",
                InvalidRecipient,
            ),
            // Proton, Postfix and friends
            (550, "5.1.1 Address does not exist", InvalidRecipient),
            (
                450,
                "4.2.0 <someone@example.org>: Recipient address rejected: Greylisted, see https://example.org/greylisting",
                Policy,
            ),
            (
                554,
                "5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
                SpamBlock,
            ),
            (550, "5.7.1 Message rejected: virus found", Content),
            (
                550,
                "5.1.1 <x@example.org>: Recipient address rejected: User unknown in local recipient table",
                InvalidRecipient,
            ),
            // status codes alone
            (550, "5.1.1 rejected", InvalidRecipient),
            (552, "5.2.2 rejected", MailboxFull),
            (550, "5.7.1 rejected", Policy),
            (451, "4.4.2 connection dropped", Network),
            (554, "5.6.0 rejected", Content),
            (550, "5.7.25 rejected", Auth),
            (550, "rejected", Other),
            (451, "later", Other),
        ];
        let rules = BounceRules::built_in();
        for (code, text, want) in table {
            let reply = SmtpReply::new(*code, text);
            assert_eq!(rules.classify(&reply), *want, "{reply}");
        }
    }

    #[test]
    fn replies_this_relay_makes_up() {
        let s = |c, sub, det, text: &str| {
            classify_failure(&SmtpReply::synthetic(
                c,
                EnhancedStatus::new((c / 100) as u8, sub, det),
                text,
            ))
        };
        assert_eq!(s(550, 1, 2, "domain x.test does not exist (NXDOMAIN)"), Dns);
        assert_eq!(
            s(550, 1, 10, "domain x.test does not accept mail (null MX)"),
            Dns
        );
        assert_eq!(s(451, 4, 4, "no usable mail exchanger for x.test"), Dns);
        assert_eq!(
            s(
                421,
                4,
                2,
                "cannot connect to mx.x.test [192.0.2.1]:25: refused"
            ),
            Network
        );
        assert_eq!(
            s(
                451,
                7,
                10,
                "TLS is required, but mx does not offer STARTTLS"
            ),
            Tls
        );
        assert_eq!(s(451, 7, 0, "TLS with mx failed: bad certificate"), Tls);
    }

    #[test]
    fn overrides_come_first_and_bad_files_are_refused() {
        let rules = BounceRules::with_overrides(
            "[[rule]]\ncategory = \"spam_block\"\nstatus = [\"5.7.1\"]\ntext = [\"Local Policy\"]\n",
        )
        .unwrap();
        let r = SmtpReply::new(550, "5.7.1 refused by local policy");
        assert_eq!(rules.classify(&r), SpamBlock);
        assert_eq!(BounceRules::built_in().classify(&r), Policy);
        // the built-in rules still apply after the operator's
        assert_eq!(
            rules.classify(&SmtpReply::new(550, "5.1.1 x")),
            InvalidRecipient
        );
        for bad in [
            "[[rule]]\ncategory = \"nope\"\nstatus = [\"5.1.1\"]\n",
            "[[rule]]\ncategory = \"dns\"\n",
            "[[rule]]\ncategory = \"dns\"\nstatus = [\"5.x.1\"]\n",
            "[[rule]]\ncategory = \"dns\"\ntext = [\"\"]\n",
            "[[rule]]\ncategory = \"dns\"\ntext = [\"a\"]\ncolour = 1\n",
            "not toml [",
        ] {
            assert!(BounceRules::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn long_texts_are_cut_at_a_char_boundary() {
        let text = format!("{}user unknown", "é".repeat(3000));
        let r = SmtpReply::new(550, &text);
        // the phrase lies beyond the examined start: only the status decides
        assert_eq!(BounceRules::built_in().classify(&r), Other);
        assert_eq!(floor_char_boundary("é", 1), 0);
    }
}
