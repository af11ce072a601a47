//! Sandbox capture: the outcome of a message that must not leave the machine, decided locally
//! from each recipient's address instead of by a server. No DNS lookup, no connection.
//!
//! Recipients on the reserved domain [`SANDBOX_DOMAIN`] (RFC 2606 `.invalid`, which can never
//! be a real destination) simulate what an application must handle, by local part (a `+tag`
//! suffix is ignored, so tests can use distinct addresses): `bounce` → a hard bounce (550
//! 5.1.1), `defer` → a deferral (451 4.3.0, retried per the retry policy), `complaint` →
//! delivered, then a complaint. Every other address is delivered. Every reply says that the
//! message was captured, not sent, and names [`SANDBOX_HOST`] as the host that gave it.

use postrider_core::{Address, EnhancedStatus, QueuedMessage, ReplyClass, SmtpReply};

use crate::outcome::RecipientOutcome;

/// The reserved recipient domain whose local parts choose a simulated outcome.
pub const SANDBOX_DOMAIN: &str = "sandbox.invalid";

/// The `mx_host` recorded for captured recipients, so nobody mistakes them for deliveries.
pub const SANDBOX_HOST: &str = "sandbox";

/// What a captured recipient simulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simulated {
    /// Accepted (captured, not sent).
    Delivered,
    /// Refused permanently: bounced, reported to the sender, suppressed.
    Bounced,
    /// Refused transiently: retried per the retry policy, then expired.
    Deferred,
    /// Accepted, then reported as unwanted by the recipient (a `complained` event).
    Complained,
}

impl Simulated {
    /// Every outcome, for initialising metric labels.
    pub const ALL: [Simulated; 4] = [
        Simulated::Delivered,
        Simulated::Bounced,
        Simulated::Deferred,
        Simulated::Complained,
    ];

    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Simulated::Delivered => "delivered",
            Simulated::Bounced => "bounced",
            Simulated::Deferred => "deferred",
            Simulated::Complained => "complained",
        }
    }

    /// The reply recorded for the recipient and what it means.
    pub fn reply(self) -> (SmtpReply, ReplyClass) {
        match self {
            Simulated::Delivered => (
                SmtpReply::synthetic(
                    250,
                    EnhancedStatus::new(2, 0, 0),
                    "captured, not sent (sandbox)",
                ),
                ReplyClass::Success,
            ),
            Simulated::Complained => (
                SmtpReply::synthetic(
                    250,
                    EnhancedStatus::new(2, 0, 0),
                    "captured, not sent (sandbox: a complaint follows)",
                ),
                ReplyClass::Success,
            ),
            Simulated::Bounced => (
                SmtpReply::synthetic(
                    550,
                    EnhancedStatus::new(5, 1, 1),
                    "simulated hard bounce: captured, not sent (sandbox)",
                ),
                ReplyClass::Permanent,
            ),
            Simulated::Deferred => (
                SmtpReply::synthetic(
                    451,
                    EnhancedStatus::new(4, 3, 0),
                    "simulated deferral: captured, not sent (sandbox)",
                ),
                ReplyClass::Transient,
            ),
        }
    }
}

/// The simulated outcome for `address` (see the module documentation for the rules).
pub fn simulate(address: &Address) -> Simulated {
    if !address
        .domain()
        .as_str()
        .trim_end_matches('.')
        .eq_ignore_ascii_case(SANDBOX_DOMAIN)
    {
        return Simulated::Delivered;
    }
    let local = address.local_part();
    let base = local.split_once('+').map_or(local, |(base, _)| base);
    match base.to_ascii_lowercase().as_str() {
        "bounce" => Simulated::Bounced,
        "defer" => Simulated::Deferred,
        "complaint" => Simulated::Complained,
        _ => Simulated::Delivered,
    }
}

/// The outcomes of one captured attempt of `message`: one per pending recipient, in recipient
/// order, with what each simulates.
pub(crate) fn capture_outcomes(message: &QueuedMessage) -> Vec<(RecipientOutcome, Simulated)> {
    message
        .pending()
        .map(|index| {
            let simulated = simulate(&message.recipients[index].request.address);
            let (reply, class) = simulated.reply();
            let outcome = RecipientOutcome::new(index, reply, class, Some(SANDBOX_HOST.to_owned()));
            (outcome, simulated)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postrider_core::{
        Envelope, MessageId, NewMessage, RecipientRequest, RecipientState, ReversePath, Source,
        Timestamp,
    };

    fn sim(address: &str) -> Simulated {
        simulate(&Address::parse(address).unwrap())
    }

    #[test]
    fn reserved_local_parts_choose_the_outcome() {
        assert_eq!(sim("bounce@sandbox.invalid"), Simulated::Bounced);
        assert_eq!(sim("defer@sandbox.invalid"), Simulated::Deferred);
        assert_eq!(sim("complaint@sandbox.invalid"), Simulated::Complained);
        assert_eq!(sim("anyone@sandbox.invalid"), Simulated::Delivered);
    }

    #[test]
    fn tags_and_case_do_not_matter() {
        assert_eq!(sim("bounce+order-17@sandbox.invalid"), Simulated::Bounced);
        assert_eq!(sim("Defer+x@SANDBOX.Invalid"), Simulated::Deferred);
        assert_eq!(sim("COMPLAINT@sandbox.invalid"), Simulated::Complained);
    }

    #[test]
    fn other_domains_are_delivered() {
        for address in [
            "bounce@example.com",
            "defer@sandbox.example",
            "complaint@invalid",
            "bounce@sub.sandbox.invalid",
            "bouncer@sandbox.invalid",
        ] {
            assert_eq!(sim(address), Simulated::Delivered, "{address}");
        }
    }

    #[test]
    fn replies_say_captured_and_have_the_right_class() {
        for s in Simulated::ALL {
            let (reply, class) = s.reply();
            assert!(reply.text.contains("captured, not sent"), "{s:?}");
            let expected = match s {
                Simulated::Delivered | Simulated::Complained => (250, ReplyClass::Success),
                Simulated::Bounced => (550, ReplyClass::Permanent),
                Simulated::Deferred => (451, ReplyClass::Transient),
            };
            assert_eq!((reply.code, class), expected, "{s:?}");
        }
        let (bounce, _) = Simulated::Bounced.reply();
        assert_eq!(bounce.status(), EnhancedStatus::new(5, 1, 1));
    }

    #[test]
    fn only_pending_recipients_get_outcomes_named_sandbox() {
        let env = Envelope::new(
            ReversePath::parse("app@example.com").unwrap(),
            [
                "ok@example.net",
                "bounce@sandbox.invalid",
                "defer@sandbox.invalid",
            ]
            .iter()
            .map(|a| RecipientRequest::new(Address::parse(a).unwrap()))
            .collect(),
        )
        .unwrap();
        let nm = NewMessage::new(env, b"x".to_vec(), Source::Http, Timestamp::from_millis(1));
        let mut m = QueuedMessage::new(MessageId::from_u64(1), &nm);
        m.recipients[0].state = RecipientState::Delivered;
        let outcomes = capture_outcomes(&m);
        let summary: Vec<_> = outcomes
            .iter()
            .map(|(o, s)| (o.index, *s, o.mx_host.as_deref()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, Simulated::Bounced, Some(SANDBOX_HOST)),
                (2, Simulated::Deferred, Some(SANDBOX_HOST)),
            ]
        );
    }
}
