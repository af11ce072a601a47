//! Pure bookkeeping after an attempt: new recipient states, the retry decision, and the failure
//! notice to queue. No I/O, no clock: `now` is an argument.

use std::collections::BTreeMap;

use postrider_core::dsn::{DsnAction, DsnRecipient, DsnReport, render_dsn};
use postrider_core::{
    Decision, DsnRet, EnhancedStatus, Envelope, NewMessage, QueuedMessage, RecipientRequest,
    RecipientState, ReplyClass, RetryPolicy, ReversePath, SmtpReply, Source, Timestamp,
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
    /// Per-recipient results for metrics: `(delivered, deferred, bounced)`.
    pub counts: (u64, u64, u64),
}

/// Applies `outcomes` to `message` at `now` and decides what happens next with `policy`.
///
/// Recipients already final are left alone. Pending recipients without an outcome keep their
/// state (they were not attempted) but still count in the retry decision.
pub fn apply_attempt(
    message: &QueuedMessage,
    outcomes: &[RecipientOutcome],
    now: Timestamp,
    policy: &RetryPolicy,
) -> AppliedAttempt {
    let mut m = message.clone();
    m.attempts = m.attempts.saturating_add(1);
    let mut bounced = Vec::new();
    let (mut delivered, mut transient, mut deferred) = (0u64, 0u64, 0u64);
    for o in outcomes {
        let Some(r) = m.recipients.get_mut(o.index) else {
            continue;
        };
        if r.state.is_final() {
            continue;
        }
        r.attempts = r.attempts.saturating_add(1);
        r.last_reply = Some(o.reply.clone());
        r.mx_host = o.mx_host.clone();
        r.last_attempt_at = Some(now);
        r.state = match o.class {
            ReplyClass::Success => {
                delivered += 1;
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
                RecipientState::Deferred
            }
        };
    }

    let mut next_attempt_at = None;
    if !m.is_finished() {
        match policy.decide(m.attempts, now.saturating_since(m.received_at)) {
            Decision::RetryAfter(wait) => {
                next_attempt_at = Some(now.saturating_add(wait));
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
    let counts = (delivered, deferred, bounced.len() as u64);
    AppliedAttempt {
        message: m,
        next_attempt_at,
        bounced,
        counts,
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

/// The failure notice for `bounced` recipients of `message` (already updated by
/// [`apply_attempt`]), or `None` when none is due: the sender is `<>` (notifications are never
/// bounced), or no bounced recipient asked for failure notices (`NOTIFY`).
///
/// One notice per attempt lists every such recipient. Its envelope is `<>` → original sender.
pub fn failure_notice(
    message: &QueuedMessage,
    bounced: &[Bounce],
    ctx: &NoticeContext<'_>,
) -> Option<NewMessage> {
    let ReversePath::Address(sender) = &message.sender else {
        return None;
    };
    let reported: Vec<(&Bounce, &postrider_core::RecipientStatus)> = bounced
        .iter()
        .filter_map(|b| message.recipients.get(b.index).map(|r| (b, r)))
        .filter(|(_, r)| r.request.wants_failure_notice())
        .collect();
    if reported.is_empty() {
        return None;
    }
    let recipients: Vec<DsnRecipient<'_>> = reported
        .iter()
        .map(|(b, r)| DsnRecipient {
            address: &r.request.address,
            original_recipient: r.request.orcpt.as_deref(),
            action: DsnAction::Failed,
            status: b.status,
            remote_mta: r.mx_host.as_deref(),
            reply: r.last_reply.as_ref(),
            last_attempt_at: r.last_attempt_at,
            will_retry_until: None,
        })
        .collect();
    let original = ctx.original.unwrap_or_default();
    let ret = match message.ret {
        Some(DsnRet::Full) if original.len() <= ctx.max_returned_message => DsnRet::Full,
        _ => DsnRet::Hdrs,
    };
    let message_id = format!("dsn.{}.{}@{}", message.id, message.attempts, ctx.hostname);
    let body = render_dsn(&DsnReport {
        reporting_mta: ctx.hostname,
        message_id: &message_id,
        date: ctx.now,
        original_sender: sender,
        queue_id: Some(message.id),
        envid: message.envid.as_deref(),
        arrival_date: message.received_at,
        recipients: &recipients,
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
    Some(notice)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
        RecipientOutcome {
            index,
            reply: SmtpReply::new(code, text),
            class,
            mx_host: Some("mx.example.org".into()),
        }
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
        let notice = failure_notice(&applied.message, &applied.bounced, &ctx).unwrap();
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
        assert!(failure_notice(&applied.message, &applied.bounced, &ctx).is_none());

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
        assert!(failure_notice(&applied.message, &applied.bounced, &ctx).is_none());
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
            let body = failure_notice(&applied.message, &applied.bounced, &ctx)
                .unwrap()
                .body;
            assert!(String::from_utf8(body).unwrap().contains(want), "{limit}");
        }
    }
}
