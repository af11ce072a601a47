//! Pure bookkeeping after an attempt: new recipient states, the retry decision, and the failure
//! notice to queue. No I/O, no clock: `now` is an argument.

use std::collections::BTreeMap;

use postrider_core::dsn::{DsnAction, DsnRecipient, DsnReport, render_dsn, suppressed_reply};
use std::time::Duration;

use postrider_core::{
    Decision, DsnRet, EnhancedStatus, Envelope, NewMessage, QueuedMessage, RecipientRequest,
    RecipientState, ReplyClass, RetryPolicy, ReversePath, SmtpReply, Source, Timestamp, TlsInfo,
};

/// The outcome of this attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutcome {
    /// Index into [`QueuedMessage::recipients`].
    pub index: usize,
    /// The reply that decided it (from a server or synthesised).
    pub reply: SmtpReply,
    /// What the reply means.
    pub class: ReplyClass,
    /// The MX host that gave the reply, when a server was reached.
    pub mx_host: Option<String>,
    /// That host's address and port, when a server was reached (for the log).
    pub mx_addr: Option<std::net::SocketAddr>,
    /// How the session was protected, when a server was reached.
    pub tls: Option<TlsInfo>,
    /// Not attempted (rate limit): state, counters and expiry clock are left alone, and the
    /// recipient is due again at `retry_at`.
    pub postponed: bool,
    /// Try again no earlier than this (postponed recipients, suspended destinations) instead of
    /// the retry policy's interval.
    pub retry_at: Option<Timestamp>,
    /// The next hop supports DSN and received the recipient's requests: success is its to report.
    pub dsn_relayed: bool,
}

impl RecipientOutcome {
    /// An outcome with no TLS, hint or DSN information.
    pub fn new(index: usize, reply: SmtpReply, class: ReplyClass, mx_host: Option<String>) -> Self {
        RecipientOutcome {
            index,
            reply,
            class,
            mx_host,
            mx_addr: None,
            tls: None,
            postponed: false,
            retry_at: None,
            dsn_relayed: false,
        }
    }
}

/// A recipient that reached `Bounced` in this attempt, with the status its notice reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounce {
    /// Index into [`QueuedMessage::recipients`].
    pub index: usize,
    /// The DSN `Status`: the reply's for a permanent failure; for an expired recipient the last
    /// transient reply's 4.x.x code (4.4.7 when the reply had none), as Postfix reports expiry.
    pub status: EnhancedStatus,
}

/// The message after an attempt, and what follows from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedAttempt {
    /// The updated record (attempt counters, states, last replies).
    pub message: QueuedMessage,
    /// When to try again; `None` when every recipient is final.
    pub next_attempt_at: Option<Timestamp>,
    /// Recipients bounced in this attempt (permanent failures and expiry), in recipient order.
    pub bounced: Vec<Bounce>,
    /// Suppressed recipients whose failure the sender is still owed (taken from the record with
    /// [`QueuedMessage::take_suppressed_reports`], so `message` no longer owes it), in recipient
    /// order: reported by this attempt's failure notice, which is stored with `message`.
    pub suppressed: Vec<usize>,
    /// Recipients delivered in this attempt whose success the sender asked to hear about and the
    /// next hop will not report (it does not support DSN).
    pub success_reports: Vec<usize>,
    /// Per-recipient results for metrics: `(delivered, deferred, bounced)`.
    pub counts: (u64, u64, u64),
    /// Recipients postponed by a rate limit (not attempted).
    pub postponed: u64,
}

/// Applies `outcomes` to `message` at `now` and decides what happens next with `policy`.
///
/// Recipients already final are left alone. Pending recipients without an outcome keep their
/// state (they were not attempted) but still count in the retry decision. A failure notice still
/// owed for suppressed recipients is taken into [`AppliedAttempt::suppressed`]; a message with
/// nothing else to deliver then finishes without counting an attempt.
pub fn apply_attempt(
    message: &QueuedMessage,
    outcomes: &[RecipientOutcome],
    now: Timestamp,
    policy: &RetryPolicy,
) -> AppliedAttempt {
    let mut m = message.clone();
    let suppressed = m.take_suppressed_reports();
    let attempted = outcomes.iter().any(|o| !o.postponed)
        || (outcomes.is_empty() && m.pending().next().is_some());
    if attempted {
        m.attempts = m.attempts.saturating_add(1);
    }
    let mut bounced = Vec::new();
    let mut success_reports = Vec::new();
    let (mut delivered, mut transient, mut deferred, mut postponed) = (0u64, 0u64, 0u64, 0u64);
    // When each waiting recipient wants its next try: `None` = the policy's interval.
    let mut hints: Vec<Option<Timestamp>> = Vec::new();
    for o in outcomes {
        let Some(r) = m.recipients.get_mut(o.index) else {
            continue;
        };
        if r.state.is_final() {
            continue;
        }
        if o.postponed {
            postponed += 1;
            hints.push(Some(o.retry_at.unwrap_or(now)));
            continue;
        }
        r.attempts = r.attempts.saturating_add(1);
        r.last_reply = Some(o.reply.clone());
        r.mx_host = o.mx_host.clone();
        r.last_attempt_at = Some(now);
        r.tls = o.tls.clone();
        r.state = match o.class {
            ReplyClass::Success => {
                delivered += 1;
                if r.request.wants_success_notice() && !o.dsn_relayed {
                    success_reports.push(o.index);
                }
                RecipientState::Delivered
            }
            ReplyClass::Permanent => {
                bounced.push(Bounce {
                    index: o.index,
                    status: permanent_status(&o.reply),
                });
                RecipientState::Bounced
            }
            ReplyClass::Transient => {
                transient += 1;
                hints.push(o.retry_at);
                RecipientState::Deferred
            }
        };
    }
    if m.pending().any(|i| !outcomes.iter().any(|o| o.index == i)) {
        // pending recipients that were not part of this attempt follow the policy
        hints.push(None);
    }

    let mut next_attempt_at = None;
    if !m.is_finished() {
        let age = now.saturating_since(m.received_at);
        match policy.decide(m.attempts.max(1), age) {
            Decision::RetryAfter(wait) => {
                let by_policy = now.saturating_add(wait);
                let last_chance = m.received_at.saturating_add(policy.max_age());
                let next = hints
                    .iter()
                    .map(|h| h.map_or(by_policy, |t| t.max(now).min(last_chance)))
                    .min()
                    .unwrap_or(by_policy);
                next_attempt_at = Some(next);
                deferred = transient;
            }
            Decision::GiveUp => {
                for (index, r) in m.recipients.iter_mut().enumerate() {
                    if r.state.is_final() {
                        continue;
                    }
                    r.state = RecipientState::Bounced;
                    let status = expired_status(r.last_reply.as_ref());
                    bounced.push(Bounce { index, status });
                }
                postponed = 0;
            }
        }
    }
    if m.is_finished() {
        m.finished_at = Some(now);
        m.next_attempt_at = None;
    } else {
        m.next_attempt_at = next_attempt_at;
    }
    bounced.sort_by_key(|b| b.index);
    success_reports.sort_unstable();
    let counts = (delivered, deferred, bounced.len() as u64);
    AppliedAttempt {
        message: m,
        next_attempt_at,
        bounced,
        suppressed,
        success_reports,
        counts,
        postponed,
    }
}

/// Status of a permanent failure: the reply's enhanced code when it is a 5.x.x, else `5.0.0`.
fn permanent_status(reply: &SmtpReply) -> EnhancedStatus {
    match reply.enhanced {
        Some(e) if e.class == 5 => e,
        _ => EnhancedStatus::new(5, 0, 0),
    }
}

/// Status of an expired recipient: its last reply's 4.x.x code, or 4.4.7 ("delivery time
/// expired") when there is none.
fn expired_status(reply: Option<&SmtpReply>) -> EnhancedStatus {
    match reply.and_then(|r| r.enhanced) {
        Some(e) => e.with_class(4),
        None => EnhancedStatus::new(4, 4, 7),
    }
}

/// What a failure notice needs beyond the message itself.
#[derive(Debug, Clone, Copy)]
pub struct NoticeContext<'a> {
    /// Our host name (`Reporting-MTA`, `MAILER-DAEMON@`, the notice's `Message-ID`).
    pub hostname: &'a str,
    /// The original message; `None` when its body is lost (then nothing is attached).
    pub original: Option<&'a [u8]>,
    /// Largest original returned in full for `RET=FULL`; bigger ones are returned as headers.
    pub max_returned_message: usize,
    /// The notice's `Date` and arrival time.
    pub now: Timestamp,
}

/// The failure notice for the `bounced` and owed `suppressed` recipients of `message` (all
/// from [`apply_attempt`], which updated `message`), or `None` when none is due: the sender is
/// `<>` (notifications are never bounced), or no such recipient asked for failure notices
/// (`NOTIFY`).
///
/// One notice per attempt lists every such recipient, in recipient order; suppressed ones are
/// reported as [`DsnRecipient::suppressed`] (`5.7.1`). Its envelope is `<>` → original sender.
pub fn failure_notice(
    message: &QueuedMessage,
    bounced: &[Bounce],
    suppressed: &[usize],
    ctx: &NoticeContext<'_>,
) -> Option<NewMessage> {
    let suppressed_reply = suppressed_reply();
    let recipients: Vec<DsnRecipient<'_>> = message
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| r.request.wants_failure_notice())
        .filter_map(|(index, r)| {
            if let Some(b) = bounced.iter().find(|b| b.index == index) {
                Some(DsnRecipient {
                    address: &r.request.address,
                    original_recipient: r.request.orcpt.as_deref(),
                    action: DsnAction::Failed,
                    status: b.status,
                    remote_mta: r.mx_host.as_deref(),
                    reply: r.last_reply.as_ref(),
                    last_attempt_at: r.last_attempt_at,
                    will_retry_until: None,
                })
            } else if suppressed.contains(&index) {
                Some(DsnRecipient::suppressed(r, &suppressed_reply))
            } else {
                None
            }
        })
        .collect();
    let message_id = format!("dsn.{}.{}@{}", message.id, message.attempts, ctx.hostname);
    notice(message, &recipients, ctx, &message_id, true)
}

/// The success notice (`Action: delivered`, `Status: 2.0.0`) for recipients delivered in this
/// attempt that asked for it with `NOTIFY=SUCCESS` and whose next hop does not support DSN
/// ([`AppliedAttempt::success_reports`]). When the next hop supports DSN it received the request
/// and reports delivery itself (RFC 3461 §4.1 "relayed" semantics are thereby avoided: a success
/// notice from us always means the next hop accepted the message, and is reported as
/// `delivered`). Never for the null sender. The original is never returned (RFC 3461 §4.3: `RET`
/// applies to failures only), so only its headers are attached.
pub fn success_notice(
    message: &QueuedMessage,
    delivered: &[usize],
    ctx: &NoticeContext<'_>,
) -> Option<NewMessage> {
    let recipients: Vec<DsnRecipient<'_>> = delivered
        .iter()
        .filter_map(|i| message.recipients.get(*i))
        .filter(|r| r.state == RecipientState::Delivered && r.request.wants_success_notice())
        .map(|r| DsnRecipient {
            address: &r.request.address,
            original_recipient: r.request.orcpt.as_deref(),
            action: DsnAction::Delivered,
            status: EnhancedStatus::new(2, 0, 0),
            remote_mta: r.mx_host.as_deref(),
            reply: r.last_reply.as_ref(),
            last_attempt_at: r.last_attempt_at,
            will_retry_until: None,
        })
        .collect();
    let message_id = format!(
        "dsn.{}.{}.success@{}",
        message.id, message.attempts, ctx.hostname
    );
    notice(message, &recipients, ctx, &message_id, false)
}

/// The delay warning (`Action: delayed`) for `message` (already updated by [`apply_attempt`]),
/// due once when the message has waited `warn_after` (zero disables) and is still pending. Lists
/// the deferred recipients that want delay notices (`NOTIFY` absent or containing `DELAY`), with
/// `Will-Retry-Until` at the end of the queue lifetime. Sets `message.delay_notified` when the
/// warning time has come, whether or not anyone asked, so it is decided only once.
pub fn delay_notice(
    message: &mut QueuedMessage,
    warn_after: Duration,
    max_age: Duration,
    ctx: &NoticeContext<'_>,
) -> Option<NewMessage> {
    if warn_after.is_zero()
        || message.delay_notified
        || message.is_finished()
        || ctx.now.saturating_since(message.received_at) < warn_after
    {
        return None;
    }
    message.delay_notified = true;
    let until = message.received_at.saturating_add(max_age);
    let recipients: Vec<DsnRecipient<'_>> = message
        .recipients
        .iter()
        .filter(|r| r.state == RecipientState::Deferred && r.request.wants_delay_notice())
        .map(|r| DsnRecipient {
            address: &r.request.address,
            original_recipient: r.request.orcpt.as_deref(),
            action: DsnAction::Delayed,
            status: r
                .last_reply
                .as_ref()
                .and_then(|r| r.enhanced)
                .map_or(EnhancedStatus::new(4, 0, 0), |e| e.with_class(4)),
            remote_mta: r.mx_host.as_deref(),
            reply: r.last_reply.as_ref(),
            last_attempt_at: r.last_attempt_at,
            will_retry_until: Some(until),
        })
        .collect();
    let message_id = format!("dsn.{}.delay@{}", message.id, ctx.hostname);
    notice(message, &recipients, ctx, &message_id, false)
}

/// Renders a notice about `recipients` to the original sender; `None` for the null sender or no
/// recipients. `honour_ret`: return the full original for `RET=FULL` (failure notices only).
fn notice(
    message: &QueuedMessage,
    recipients: &[DsnRecipient<'_>],
    ctx: &NoticeContext<'_>,
    message_id: &str,
    honour_ret: bool,
) -> Option<NewMessage> {
    let ReversePath::Address(sender) = &message.sender else {
        return None;
    };
    if recipients.is_empty() {
        return None;
    }
    let original = ctx.original.unwrap_or_default();
    let ret = match message.ret {
        Some(DsnRet::Full) if honour_ret && original.len() <= ctx.max_returned_message => {
            DsnRet::Full
        }
        _ => DsnRet::Hdrs,
    };
    let body = render_dsn(&DsnReport {
        reporting_mta: ctx.hostname,
        message_id,
        date: ctx.now,
        original_sender: sender,
        queue_id: Some(message.id),
        envid: message.envid.as_deref(),
        arrival_date: message.received_at,
        recipients,
        ret,
        original,
    });
    let envelope = Envelope::new(
        ReversePath::Null,
        vec![RecipientRequest::new(sender.clone())],
    )
    .ok()?;
    let mut notice = NewMessage::new(envelope, body, Source::Dsn, ctx.now);
    notice.metadata = BTreeMap::from([("dsn_for".to_owned(), message.id.to_string())]);
    // A notice about a captured message is captured too: it must not leave either.
    notice.sandbox = message.sandbox;
    Some(notice)
}

#[cfg(test)]
mod tests {
    use postrider_core::{Address, MessageId, NotifyFlags};

    use super::*;

    fn message(sender: &str, rcpts: &[&str]) -> QueuedMessage {
        let env = Envelope::new(
            ReversePath::parse(sender).unwrap(),
            rcpts
                .iter()
                .map(|r| RecipientRequest::new(Address::parse(r).unwrap()))
                .collect(),
        )
        .unwrap();
        let body = b"Subject: hi\r\nMessage-ID: <m1@example.com>\r\n\r\nbody\r\n".to_vec();
        QueuedMessage::new(
            MessageId::from_u64(42),
            &NewMessage::new(env, body, Source::Smtp, Timestamp::from_millis(1_000_000)),
        )
    }

    fn outcome(index: usize, code: u16, text: &str, class: ReplyClass) -> RecipientOutcome {
        RecipientOutcome::new(
            index,
            SmtpReply::new(code, text),
            class,
            Some("mx.example.org".into()),
        )
    }

    fn policy() -> RetryPolicy {
        RetryPolicy::new(
            vec![Duration::from_secs(60), Duration::from_secs(120)],
            Duration::from_secs(3600),
        )
        .unwrap()
    }

    #[test]
    fn mixed_outcome_defers_only_the_transient_recipient() {
        let m = message(
            "s@example.com",
            &["a@example.org", "b@example.org", "c@example.org"],
        );
        let now = Timestamp::from_millis(1_010_000);
        let applied = apply_attempt(
            &m,
            &[
                outcome(0, 250, "2.0.0 ok", ReplyClass::Success),
                outcome(1, 550, "5.1.1 no such user", ReplyClass::Permanent),
                outcome(2, 450, "4.2.1 busy", ReplyClass::Transient),
            ],
            now,
            &policy(),
        );
        let states: Vec<_> = applied.message.recipients.iter().map(|r| r.state).collect();
        assert_eq!(
            states,
            vec![
                RecipientState::Delivered,
                RecipientState::Bounced,
                RecipientState::Deferred
            ]
        );
        assert_eq!(applied.message.attempts, 1);
        assert!(
            applied
                .message
                .recipients
                .iter()
                .all(|r| r.attempts == 1 && r.last_attempt_at == Some(now))
        );
        assert_eq!(
            applied.next_attempt_at,
            Some(Timestamp::from_millis(1_070_000))
        );
        assert_eq!(
            applied.bounced,
            vec![Bounce {
                index: 1,
                status: EnhancedStatus::new(5, 1, 1)
            }]
        );
        assert_eq!(applied.counts, (1, 1, 1));
        assert_eq!(applied.message.finished_at, None);
    }

    #[test]
    fn second_attempt_uses_second_interval_and_skips_final_recipients() {
        let mut m = message("s@example.com", &["a@example.org", "b@example.org"]);
        m.attempts = 1;
        m.recipients[0].state = RecipientState::Delivered;
        m.recipients[1].state = RecipientState::Deferred;
        let now = Timestamp::from_millis(1_100_000);
        let applied = apply_attempt(
            &m,
            &[
                outcome(0, 550, "5.0.0 ignored", ReplyClass::Permanent),
                outcome(1, 451, "4.3.0 later", ReplyClass::Transient),
            ],
            now,
            &policy(),
        );
        assert_eq!(
            applied.message.recipients[0].state,
            RecipientState::Delivered
        );
        assert_eq!(applied.message.recipients[0].attempts, 0);
        assert_eq!(
            applied.next_attempt_at,
            Some(now.saturating_add(Duration::from_secs(120)))
        );
        assert!(applied.bounced.is_empty());
    }

    #[test]
    fn all_delivered_finishes() {
        let m = message("s@example.com", &["a@example.org"]);
        let now = Timestamp::from_millis(1_010_000);
        let applied = apply_attempt(
            &m,
            &[outcome(0, 250, "ok", ReplyClass::Success)],
            now,
            &policy(),
        );
        assert_eq!(applied.next_attempt_at, None);
        assert_eq!(applied.message.finished_at, Some(now));
        assert!(applied.message.is_finished());
    }

    #[test]
    fn expiry_bounces_with_the_last_transient_status() {
        let m = message("s@example.com", &["a@example.org", "b@example.org"]);
        let now = Timestamp::from_millis(1_000_000 + 3_600_000);
        let applied = apply_attempt(
            &m,
            &[
                outcome(0, 452, "4.2.2 mailbox full", ReplyClass::Transient),
                outcome(1, 421, "try later", ReplyClass::Transient),
            ],
            now,
            &policy(),
        );
        assert_eq!(applied.next_attempt_at, None);
        assert!(applied.message.is_finished());
        assert_eq!(
            applied.bounced,
            vec![
                Bounce {
                    index: 0,
                    status: EnhancedStatus::new(4, 2, 2)
                },
                Bounce {
                    index: 1,
                    status: EnhancedStatus::new(4, 4, 7)
                }
            ]
        );
        // the diagnostic stays the last transient reply
        assert_eq!(
            applied.message.recipients[0]
                .last_reply
                .as_ref()
                .map(|r| r.code),
            Some(452)
        );
    }

    #[test]
    fn notice_lists_bounced_recipients_that_asked() {
        let mut m = message(
            "s@example.com",
            &["a@example.org", "b@example.org", "c@example.org"],
        );
        m.recipients[2].request.notify = Some(NotifyFlags {
            never: true,
            ..Default::default()
        });
        let now = Timestamp::from_millis(1_010_000);
        let applied = apply_attempt(
            &m,
            &[
                outcome(0, 550, "5.1.1 no such user", ReplyClass::Permanent),
                outcome(1, 250, "ok", ReplyClass::Success),
                outcome(2, 550, "5.1.1 no such user", ReplyClass::Permanent),
            ],
            now,
            &policy(),
        );
        let original = b"Subject: hi\r\n\r\nbody\r\n";
        let ctx = NoticeContext {
            hostname: "relay.test",
            original: Some(original),
            max_returned_message: 1000,
            now,
        };
        let notice = failure_notice(
            &applied.message,
            &applied.bounced,
            &applied.suppressed,
            &ctx,
        )
        .unwrap();
        assert!(notice.envelope.sender().is_null());
        assert_eq!(notice.envelope.recipients().len(), 1);
        assert_eq!(
            notice.envelope.recipients()[0].address.to_string(),
            "s@example.com"
        );
        assert_eq!(notice.source, Source::Dsn);
        let text = String::from_utf8(notice.body).unwrap();
        assert!(
            text.contains("Final-Recipient: rfc822; a@example.org\r\n"),
            "{text}"
        );
        assert!(
            !text.contains("c@example.org"),
            "NOTIFY=NEVER recipient listed:\n{text}"
        );
        assert!(!text.contains("Final-Recipient: rfc822; b@example.org"));
        assert!(text.contains("Remote-MTA: dns; mx.example.org\r\n"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"));
        assert!(text.contains("Message-ID: <dsn.000000000000002a.1@relay.test>\r\n"));
        assert!(text.contains("Content-Type: text/rfc822-headers"));
    }

    fn notice_text(message: &QueuedMessage, applied: &AppliedAttempt) -> Option<String> {
        let ctx = NoticeContext {
            hostname: "relay.test",
            original: Some(b"Subject: hi\r\n\r\nbody\r\n"),
            max_returned_message: 1000,
            now: Timestamp::from_millis(1_010_000),
        };
        failure_notice(message, &applied.bounced, &applied.suppressed, &ctx).map(|n| {
            assert_eq!(n.metadata.get("dsn_for"), Some(&message.id.to_string()));
            String::from_utf8(n.body).unwrap()
        })
    }

    #[test]
    fn owed_suppressed_recipients_join_the_failure_notice_once() {
        let mut m = message(
            "s@example.com",
            &[
                "a@example.org",
                "b@example.org",
                "c@example.org",
                "d@example.org",
            ],
        );
        for i in [0, 2] {
            m.recipients[i].state = RecipientState::Suppressed;
        }
        m.recipients[2].request.notify = Some(NotifyFlags {
            never: true,
            ..Default::default()
        });
        m.suppression_notice_due = m.owes_suppression_notice();
        assert!(m.suppression_notice_due);
        let now = Timestamp::from_millis(1_010_000);
        let applied = apply_attempt(
            &m,
            &[
                outcome(1, 550, "5.1.1 no such user", ReplyClass::Permanent),
                outcome(3, 250, "ok", ReplyClass::Success),
            ],
            now,
            &policy(),
        );
        assert_eq!(applied.suppressed, vec![0, 2]);
        assert!(!applied.message.suppression_notice_due);
        assert!(applied.message.is_finished());
        assert_eq!(applied.counts, (1, 0, 1), "suppressed ones are no results");
        assert_eq!(
            applied.message.recipients[0].state,
            RecipientState::Suppressed
        );
        assert_eq!(applied.message.recipients[0].attempts, 0);
        let text = notice_text(&applied.message, &applied).unwrap();
        let a = text
            .find("Final-Recipient: rfc822; a@example.org\r\nAction: failed\r\nStatus: 5.7.1\r\nDiagnostic-Code: X-Postrider; 550 5.7.1 recipient address is on the suppression list\r\n")
            .unwrap_or_else(|| panic!("suppressed a missing:\n{text}"));
        let b = text
            .find("Final-Recipient: rfc822; b@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n")
            .unwrap_or_else(|| panic!("bounced b missing:\n{text}"));
        assert!(a < b, "recipient order");
        assert!(!text.contains("c@example.org"), "NOTIFY=NEVER:\n{text}");
        assert!(!text.contains("Final-Recipient: rfc822; d@example.org"));

        // Reported once: a later attempt of the updated record owes nothing more.
        let again = apply_attempt(&applied.message, &[], now, &policy());
        assert!(again.suppressed.is_empty());
        assert!(notice_text(&again.message, &again).is_none());
    }

    #[test]
    fn only_suppressed_recipients_finish_without_an_attempt() {
        let mut m = message("s@example.com", &["a@example.org"]);
        m.recipients[0].state = RecipientState::Suppressed;
        m.suppression_notice_due = m.owes_suppression_notice();
        assert!(!m.is_finished());
        let now = Timestamp::from_millis(1_010_000);
        let applied = apply_attempt(&m, &[], now, &policy());
        assert_eq!(applied.suppressed, vec![0]);
        assert_eq!(applied.message.attempts, 0, "nothing was attempted");
        assert_eq!(applied.next_attempt_at, None);
        assert_eq!(applied.message.finished_at, Some(now));
        let text = notice_text(&applied.message, &applied).unwrap();
        assert!(text.contains("Status: 5.7.1"), "{text}");
        assert!(
            text.contains("Message-ID: <dsn.000000000000002a.0@relay.test>"),
            "{text}"
        );

        // Without an owed notice (an API submission or a record from before): no report.
        let mut api = m.clone();
        api.suppression_notice_due = false;
        let applied = apply_attempt(&api, &[], now, &policy());
        assert!(applied.suppressed.is_empty());
        assert!(notice_text(&applied.message, &applied).is_none());
    }

    #[test]
    fn no_notice_for_null_sender_or_when_nobody_asked() {
        let m = message("", &["a@example.org"]);
        let now = Timestamp::from_millis(1_010_000);
        let applied = apply_attempt(
            &m,
            &[outcome(0, 550, "5.1.1 x", ReplyClass::Permanent)],
            now,
            &policy(),
        );
        let ctx = NoticeContext {
            hostname: "relay.test",
            original: None,
            max_returned_message: 0,
            now,
        };
        assert_eq!(applied.bounced.len(), 1);
        assert!(
            failure_notice(
                &applied.message,
                &applied.bounced,
                &applied.suppressed,
                &ctx
            )
            .is_none()
        );

        let mut m = message("s@example.com", &["a@example.org"]);
        m.recipients[0].request.notify = Some(NotifyFlags {
            success: true,
            ..Default::default()
        });
        let applied = apply_attempt(
            &m,
            &[outcome(0, 550, "5.1.1 x", ReplyClass::Permanent)],
            now,
            &policy(),
        );
        assert!(
            failure_notice(
                &applied.message,
                &applied.bounced,
                &applied.suppressed,
                &ctx
            )
            .is_none()
        );
    }

    #[test]
    fn full_return_is_bounded() {
        let mut m = message("s@example.com", &["a@example.org"]);
        m.ret = Some(DsnRet::Full);
        let now = Timestamp::from_millis(1_010_000);
        let applied = apply_attempt(
            &m,
            &[outcome(0, 550, "5.1.1 x", ReplyClass::Permanent)],
            now,
            &policy(),
        );
        let original = b"Subject: hi\r\n\r\nbody\r\n";
        for (limit, want) in [(1000, "message/rfc822"), (5, "text/rfc822-headers")] {
            let ctx = NoticeContext {
                hostname: "relay.test",
                original: Some(original),
                max_returned_message: limit,
                now,
            };
            let body = failure_notice(
                &applied.message,
                &applied.bounced,
                &applied.suppressed,
                &ctx,
            )
            .unwrap()
            .body;
            assert!(String::from_utf8(body).unwrap().contains(want), "{limit}");
        }
    }

    #[test]
    fn postponed_recipients_keep_their_state_and_clock() {
        let m = message("s@example.com", &["a@example.org", "b@example.net"]);
        let now = Timestamp::from_millis(1_010_000);
        let mut p = outcome(0, 451, "4.7.0 rate", ReplyClass::Transient);
        p.postponed = true;
        p.retry_at = Some(Timestamp::from_millis(1_030_000));
        let applied = apply_attempt(&m, std::slice::from_ref(&p), now, &policy());
        assert_eq!(applied.message.attempts, 0, "not an attempt");
        assert_eq!(applied.message.recipients[0].state, RecipientState::Queued);
        assert_eq!(applied.message.recipients[0].last_reply, None);
        assert_eq!(applied.postponed, 1);
        // b was not part of the attempt: the policy (60 s) is later than the slot (20 s)
        assert_eq!(
            applied.next_attempt_at,
            Some(Timestamp::from_millis(1_030_000))
        );

        // with a real transient failure next to it, the attempt counts
        let mut s = outcome(1, 451, "4.4.5 suspended", ReplyClass::Transient);
        s.retry_at = Some(Timestamp::from_millis(1_500_000));
        let applied = apply_attempt(&m, &[p, s], now, &policy());
        assert_eq!(applied.message.attempts, 1);
        assert_eq!(
            applied.message.recipients[1].state,
            RecipientState::Deferred
        );
        assert_eq!(
            applied.next_attempt_at,
            Some(Timestamp::from_millis(1_030_000))
        );
    }

    #[test]
    fn success_and_delay_notices() {
        let mut m = message(
            "s@example.com",
            &["a@example.org", "b@example.org", "c@example.org"],
        );
        m.recipients[0].request.notify = Some(NotifyFlags {
            success: true,
            ..Default::default()
        });
        m.recipients[1].request.notify = Some(NotifyFlags {
            success: true,
            ..Default::default()
        });
        let now = Timestamp::from_millis(1_010_000);
        let mut relayed = outcome(1, 250, "ok", ReplyClass::Success);
        relayed.dsn_relayed = true;
        let applied = apply_attempt(
            &m,
            &[
                outcome(0, 250, "2.0.0 ok", ReplyClass::Success),
                relayed,
                outcome(2, 450, "4.2.1 busy", ReplyClass::Transient),
            ],
            now,
            &policy(),
        );
        assert_eq!(applied.success_reports, vec![0]);
        let ctx = NoticeContext {
            hostname: "relay.test",
            original: Some(b"Subject: hi\r\n\r\nbody\r\n"),
            max_returned_message: 1000,
            now,
        };
        let n = success_notice(&applied.message, &applied.success_reports, &ctx).unwrap();
        let text = String::from_utf8(n.body).unwrap();
        assert!(text.contains("Action: delivered\r\n") && text.contains("Status: 2.0.0\r\n"));
        assert!(!text.contains("b@example.org"));

        // delay warning: not before warn_after, once, only deferred recipients
        let mut after = applied.message.clone();
        let early = delay_notice(
            &mut after,
            Duration::from_secs(60),
            Duration::from_secs(3600),
            &ctx,
        );
        assert!(early.is_none() && !after.delay_notified);
        let late_ctx = NoticeContext {
            now: Timestamp::from_millis(1_000_000 + 61_000),
            ..ctx
        };
        let n = delay_notice(
            &mut after,
            Duration::from_secs(60),
            Duration::from_secs(3600),
            &late_ctx,
        )
        .unwrap();
        assert!(after.delay_notified);
        let text = String::from_utf8(n.body).unwrap();
        assert!(
            text.contains("Final-Recipient: rfc822; c@example.org"),
            "{text}"
        );
        assert!(text.contains("Action: delayed") && text.contains("Status: 4.2.1"));
        assert!(text.contains("Will-Retry-Until: "));
        assert!(!text.contains("Final-Recipient: rfc822; a@example.org"));
        assert!(
            delay_notice(
                &mut after,
                Duration::from_secs(60),
                Duration::from_secs(3600),
                &late_ctx
            )
            .is_none()
        );
        // zero disables
        let mut fresh = applied.message.clone();
        assert!(
            delay_notice(
                &mut fresh,
                Duration::ZERO,
                Duration::from_secs(3600),
                &late_ctx
            )
            .is_none()
        );
    }
}
