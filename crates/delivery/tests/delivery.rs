//! End-to-end delivery against real peers on loopback: a sled store, an authoritative DNS server
//! and programmable SMTP sinks from `postrider-testkit`.

use std::net::IpAddr;
use std::time::Duration;

use mail_parser::{MessageParser, MimeHeaders};
use postrider_core::{
    Address, Envelope, MessageId, NewMessage, QueuedMessage, RecipientRequest, RecipientState,
    RetryPolicy, ReversePath, Source,
};
use postrider_store::{ListFilter, Suppression, SuppressionReason};
use postrider_testkit::{Behaviour, DnsServer, FailFirst, Failure, Phase, Reply, SmtpSink, Zone};

mod common;
use common::{PATIENCE, Relay, ip, now, wait_until};

const BODY: &[u8] = b"From: Alice <alice@sender.test>\r\n\
To: bob@example.test\r\n\
Subject: integration\r\n\
Message-ID: <it-1@sender.test>\r\n\
\r\n\
Hello.\r\n\
.leading dot survives\r\n";

impl Relay {
    /// Queues `body` from `sender` to `recipients`.
    async fn submit(&self, sender: &str, recipients: &[&str], body: &[u8]) -> MessageId {
        self.submit_body(sender, recipients, body).await
    }
}

/// The DNS names every test can use:
/// - `example.test` → MX 10 `mx1.example.test` (127.0.0.2)
/// - `sender.test` → MX 10 `mx.sender.test` (127.0.0.4): where failure notices go
/// - `implicit.test`: no MX, A 127.0.0.3
/// - `nullmx.test`: `MX 0 .`
/// - `fallback.test` → MX 10 `down.fallback.test` (127.0.0.6), MX 20 `up.fallback.test` (127.0.0.3)
/// - `noaddr.test` → MX 10 `ghost.noaddr.test` (no address)
/// - anything else under `test.`: NXDOMAIN
async fn dns() -> DnsServer {
    DnsServer::start([Zone::new("test.")
        .mx("example.test", 10, "mx1.example.test")
        .a("mx1.example.test", ip(2))
        .mx("sender.test", 10, "mx.sender.test")
        .a("mx.sender.test", ip(4))
        .a("implicit.test", ip(3))
        .null_mx("nullmx.test")
        .mx("fallback.test", 10, "down.fallback.test")
        .a("down.fallback.test", ip(6))
        .mx("fallback.test", 20, "up.fallback.test")
        .a("up.fallback.test", ip(3))
        .mx("noaddr.test", 10, "ghost.noaddr.test")
        .txt("ghost.noaddr.test", "no address here")
        .mx("broken.test", 10, "mx1.example.test")])
    .await
    .unwrap()
}

async fn sink_at(last: u8, port: u16, behaviour: Behaviour) -> SmtpSink {
    SmtpSink::builder()
        .bind(IpAddr::V4(ip(last)), port)
        .behaviour(behaviour)
        .start()
        .await
        .unwrap()
}

/// The message a sink received for `rcpt`, parsed as a DSN: `(delivery-status text, whole text)`.
fn dsn_parts(raw: &[u8]) -> (String, String) {
    let msg = MessageParser::default().parse(raw).expect("DSN parses");
    let ct = msg.content_type().expect("content type");
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    let status = msg
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|c| c.ctype() == "message" && c.subtype() == Some("delivery-status"))
        })
        .map(|p| String::from_utf8_lossy(p.contents()).into_owned())
        .expect("a message/delivery-status part");
    (status, String::from_utf8_lossy(raw).into_owned())
}

#[tokio::test]
async fn delivers_to_the_mx_with_exact_content() {
    let dns = dns().await;
    let mx = sink_at(2, 0, Behaviour::default()).await;
    let relay = Relay::start(&dns, mx.port(), |_| {});
    let id = relay
        .submit("alice@sender.test", &["bob@example.test"], BODY)
        .await;
    let got = mx.wait_for_messages(1, PATIENCE).await.unwrap();
    assert_eq!(got[0].mail_from, "alice@sender.test");
    assert_eq!(got[0].rcpt_to, vec!["bob@example.test"]);
    assert_eq!(got[0].data, BODY, "content must arrive byte for byte");
    assert!(
        got[0]
            .mail_params
            .iter()
            .any(|p| p == &format!("SIZE={}", BODY.len())),
        "{:?}",
        got[0].mail_params
    );
    assert_eq!(got[0].helo, "relay.test");
    let m = relay.finished(id).await;
    let r = &m.recipients[0];
    assert_eq!(r.state, RecipientState::Delivered);
    assert_eq!(r.mx_host.as_deref(), Some("mx1.example.test"));
    assert_eq!(r.last_reply.as_ref().map(|r| r.code), Some(250));
    assert_eq!(m.attempts, 1);
    assert_eq!(relay.counter("delivered"), 1);
    assert_eq!(relay.store.pending_count(), 0);
    relay.stop().await;
}

async fn per_recipient_mix(pipelining: bool) {
    let dns = dns().await;
    let mut behaviour = Behaviour::with_standard_rules();
    behaviour.extensions.pipelining = pipelining;
    let mx = sink_at(2, 0, behaviour).await;
    let sender_mx = sink_at(4, mx.port(), Behaviour::default()).await;
    let relay = Relay::start(&dns, mx.port(), |_| {});
    let id = relay
        .submit(
            "alice@sender.test",
            &[
                "good@example.test",
                "bad@example.test",
                "later@example.test",
            ],
            BODY,
        )
        .await;
    let got = mx.wait_for_messages(1, PATIENCE).await.unwrap();
    assert_eq!(
        got[0].rcpt_to,
        vec!["good@example.test"],
        "only the accepted recipient gets the message"
    );
    let m = relay
        .wait_for(id, "the first attempt", |m| m.attempts == 1)
        .await;
    let states: Vec<_> = m.recipients.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        vec![
            RecipientState::Delivered,
            RecipientState::Bounced,
            RecipientState::Deferred
        ]
    );
    assert_eq!(
        m.recipients[1]
            .last_reply
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("550 5.1.1 no such user")
    );
    assert_eq!(
        m.recipients[2].last_reply.as_ref().map(|r| r.code),
        Some(450)
    );
    assert!(m.next_attempt_at.is_some() && m.finished_at.is_none());
    // one transaction carried all three recipients
    assert_eq!(mx.transaction_count(), 1);

    // the bounce for bad@ reaches the sender's MX
    let dsn = sender_mx.wait_for_messages(1, PATIENCE).await.unwrap();
    assert_eq!(dsn[0].mail_from, "");
    assert_eq!(dsn[0].rcpt_to, vec!["alice@sender.test"]);
    let (status, whole) = dsn_parts(&dsn[0].data);
    assert!(
        status.contains("Final-Recipient: rfc822; bad@example.test"),
        "{status}"
    );
    assert!(
        !whole.contains("good@example.test>: "),
        "delivered recipient must not be reported"
    );
    assert!(
        !status.contains("later@example.test"),
        "deferred recipient must not be reported"
    );
    // good@ and then the bounce itself were delivered
    wait_until("both deliveries counted", || {
        relay.counter("delivered") == 2
    })
    .await;
    assert_eq!(
        (relay.counter("bounced"), relay.counter("deferred")),
        (1, 1)
    );
    relay.stop().await;
}

#[tokio::test]
async fn per_recipient_replies_in_one_pipelined_transaction() {
    per_recipient_mix(true).await;
}

#[tokio::test]
async fn per_recipient_replies_in_one_sequential_transaction() {
    per_recipient_mix(false).await;
}

#[tokio::test]
async fn transient_failure_then_success_on_retry() {
    let dns = dns().await;
    let behaviour = Behaviour {
        fail_first: Some(FailFirst {
            phase: Phase::EndOfData,
            transactions: 1,
            reply: Reply::new(451, "4.3.0 try again"),
        }),
        ..Behaviour::default()
    };
    let mx = sink_at(2, 0, behaviour).await;
    let relay = Relay::start(&dns, mx.port(), |s| {
        s.retry =
            RetryPolicy::new(vec![Duration::from_millis(200)], Duration::from_secs(600)).unwrap();
    });
    let id = relay
        .submit("alice@sender.test", &["bob@example.test"], BODY)
        .await;
    let m = relay.finished(id).await;
    assert_eq!(m.attempts, 2);
    assert_eq!(m.recipients[0].state, RecipientState::Delivered);
    assert_eq!(m.recipients[0].attempts, 2);
    assert_eq!(mx.messages().len(), 1);
    assert_eq!(mx.transaction_count(), 2);
    assert_eq!(
        (relay.counter("deferred"), relay.counter("delivered")),
        (1, 1)
    );
    relay.stop().await;
}

#[tokio::test]
async fn permanent_failure_queues_a_bounce_with_the_details() {
    let dns = dns().await;
    let mx = sink_at(2, 0, Behaviour::with_standard_rules()).await;
    let sender_mx = sink_at(4, mx.port(), Behaviour::default()).await;
    let relay = Relay::start(&dns, mx.port(), |_| {});
    let id = relay
        .submit("alice@sender.test", &["bad@example.test"], BODY)
        .await;
    let m = relay.finished(id).await;
    assert_eq!(m.recipients[0].state, RecipientState::Bounced);
    assert_eq!(m.attempts, 1, "a 5xx is never retried");

    let dsn = sender_mx.wait_for_messages(1, PATIENCE).await.unwrap();
    assert_eq!(dsn[0].mail_from, "", "bounces use the null sender");
    assert_eq!(dsn[0].rcpt_to, vec!["alice@sender.test"]);
    let (status, whole) = dsn_parts(&dsn[0].data);
    for line in [
        "Reporting-MTA: dns; relay.test",
        "Final-Recipient: rfc822; bad@example.test",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; mx1.example.test",
        "Diagnostic-Code: smtp; 550 5.1.1 no such user",
    ] {
        assert!(status.contains(line), "missing {line:?} in\n{status}");
    }
    assert!(whole.contains("From: Mail Delivery System <MAILER-DAEMON@relay.test>"));
    assert!(whole.contains("Auto-Submitted: auto-replied"));
    assert!(
        whole.contains("Subject: integration"),
        "original headers are returned"
    );
    assert!(
        !whole.contains("leading dot survives"),
        "RET=HDRS by default: no body"
    );
    assert_eq!(relay.metrics.bounces_generated.get(), 1);
    relay.stop().await;
}

/// Submits to `rcpt`, waits for the bounce at the sender's MX and returns its delivery-status part.
async fn bounce_status_for(rcpt: &str) -> (String, QueuedMessage) {
    let dns = dns().await;
    let sender_mx = sink_at(4, 0, Behaviour::default()).await;
    let relay = Relay::start(&dns, sender_mx.port(), |_| {});
    let id = relay.submit("alice@sender.test", &[rcpt], BODY).await;
    let m = relay.finished(id).await;
    let dsn = sender_mx.wait_for_messages(1, PATIENCE).await.unwrap();
    relay.stop().await;
    (dsn_parts(&dsn[0].data).0, m)
}

#[tokio::test]
async fn null_mx_bounces_with_5_1_10() {
    let (status, m) = bounce_status_for("bob@nullmx.test").await;
    assert_eq!(m.recipients[0].state, RecipientState::Bounced);
    assert!(status.contains("Status: 5.1.10"), "{status}");
    assert!(
        status.contains("Diagnostic-Code: X-Postrider; 556 5.1.10"),
        "{status}"
    );
    assert!(
        !status.contains("Remote-MTA"),
        "no server was reached: {status}"
    );
}

#[tokio::test]
async fn nxdomain_bounces_with_5_1_2() {
    let (status, m) = bounce_status_for("bob@nowhere.test").await;
    assert_eq!(m.recipients[0].state, RecipientState::Bounced);
    assert!(status.contains("Status: 5.1.2"), "{status}");
    assert!(status.contains("does not exist"), "{status}");
}

#[tokio::test]
async fn implicit_mx_uses_the_domain_address() {
    let dns = dns().await;
    let host = sink_at(3, 0, Behaviour::default()).await;
    let relay = Relay::start(&dns, host.port(), |_| {});
    let id = relay
        .submit("alice@sender.test", &["bob@implicit.test"], BODY)
        .await;
    let got = host.wait_for_messages(1, PATIENCE).await.unwrap();
    assert_eq!(got[0].rcpt_to, vec!["bob@implicit.test"]);
    let m = relay.finished(id).await;
    assert_eq!(m.recipients[0].mx_host.as_deref(), Some("implicit.test"));
    relay.stop().await;
}

#[tokio::test]
async fn address_literal_domains_skip_dns() {
    let dns = dns().await;
    let host = sink_at(3, 0, Behaviour::default()).await;
    let relay = Relay::start(&dns, host.port(), |_| {});
    let id = relay
        .submit("alice@sender.test", &["bob@[127.0.0.3]"], BODY)
        .await;
    let got = host.wait_for_messages(1, PATIENCE).await.unwrap();
    assert_eq!(got[0].rcpt_to, vec!["bob@[127.0.0.3]"]);
    assert_eq!(
        relay.finished(id).await.recipients[0].state,
        RecipientState::Delivered
    );
    relay.stop().await;
}

#[tokio::test]
async fn falls_back_to_the_next_mx_when_the_first_refuses_connections() {
    let dns = dns().await;
    // nothing listens on 127.0.0.6 (down.fallback.test): connection refused
    let up = sink_at(3, 0, Behaviour::default()).await;
    let relay = Relay::start(&dns, up.port(), |_| {});
    let id = relay
        .submit("alice@sender.test", &["bob@fallback.test"], BODY)
        .await;
    up.wait_for_messages(1, PATIENCE).await.unwrap();
    let m = relay.finished(id).await;
    assert_eq!(m.recipients[0].mx_host.as_deref(), Some("up.fallback.test"));
    relay.stop().await;
}

/// Submits to `fallback.test` and waits until the message was delivered by its second MX, `up`.
async fn delivered_through_the_second_mx(relay: &Relay, up: &SmtpSink) {
    let id = relay
        .submit("alice@sender.test", &["bob@fallback.test"], BODY)
        .await;
    up.wait_for_messages(1, PATIENCE).await.unwrap();
    let m = relay.finished(id).await;
    assert_eq!(m.recipients[0].state, RecipientState::Delivered);
    assert_eq!(m.recipients[0].mx_host.as_deref(), Some("up.fallback.test"));
}

#[tokio::test]
async fn falls_back_to_the_next_mx_after_a_421_greeting() {
    let dns = dns().await;
    let up = sink_at(3, 0, Behaviour::default()).await;
    let busy = Behaviour {
        greeting: Some(Reply::new(421, "4.3.2 too busy")),
        ..Behaviour::default()
    };
    let down = sink_at(6, up.port(), busy).await;
    let relay = Relay::start(&dns, up.port(), |_| {});
    delivered_through_the_second_mx(&relay, &up).await;
    assert!(
        down.connection_count() >= 1,
        "the preferred MX was tried first"
    );
    assert!(down.messages().is_empty());
    relay.stop().await;
}

#[tokio::test]
async fn expired_message_bounces_with_the_last_transient_reply() {
    let dns = dns().await;
    let mx = sink_at(2, 0, Behaviour::with_standard_rules()).await;
    let sender_mx = sink_at(4, mx.port(), Behaviour::default()).await;
    let relay = Relay::start(&dns, mx.port(), |s| {
        s.retry =
            RetryPolicy::new(vec![Duration::from_millis(100)], Duration::from_millis(600)).unwrap();
    });
    let id = relay
        .submit("alice@sender.test", &["later@example.test"], BODY)
        .await;
    let m = relay.finished(id).await;
    assert_eq!(m.recipients[0].state, RecipientState::Bounced);
    assert!(m.attempts >= 2, "retried before giving up: {}", m.attempts);
    assert_eq!(
        m.recipients[0].last_reply.as_ref().map(|r| r.code),
        Some(450)
    );
    let dsn = sender_mx.wait_for_messages(1, PATIENCE).await.unwrap();
    let (status, _) = dsn_parts(&dsn[0].data);
    assert!(status.contains("Action: failed"), "{status}");
    assert!(
        status.contains("Status: 4.2.1"),
        "expiry keeps the 4.x.x status: {status}"
    );
    assert!(
        status.contains("Diagnostic-Code: smtp; 450 4.2.1 mailbox busy, try later"),
        "{status}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn null_sender_is_never_bounced() {
    let dns = dns().await;
    let mx = sink_at(2, 0, Behaviour::with_standard_rules()).await;
    let relay = Relay::start(&dns, mx.port(), |_| {});
    let id = relay.submit("", &["bad@example.test"], BODY).await;
    let m = relay.finished(id).await;
    assert_eq!(m.recipients[0].state, RecipientState::Bounced);
    assert_eq!(relay.metrics.bounces_generated.get(), 0);
    assert_eq!(relay.store.pending_count(), 0, "no notification was queued");
    relay.stop().await;
}

#[tokio::test]
async fn suppressed_recipients_of_smtp_submissions_get_a_failure_notice() {
    let dns = dns().await;
    let mx = sink_at(2, 0, Behaviour::default()).await;
    let sender_mx = sink_at(4, mx.port(), Behaviour::default()).await;
    let relay = Relay::start(&dns, mx.port(), |_| {});
    let listed = relay
        .store
        .add_suppression(Suppression {
            address: "gone@example.test".into(),
            reason: SuppressionReason::Manual,
            created_at: now(),
            source_message: None,
            reply: None,
            scope: None,
            source_report: None,
        })
        .await
        .unwrap();
    assert!(listed);

    // One suppressed and one normal recipient: the normal one is delivered, the suppressed one
    // reported to the sender.
    let mixed = relay
        .submit(
            "alice@sender.test",
            &["gone@example.test", "bob@example.test"],
            BODY,
        )
        .await;
    let got = mx.wait_for_messages(1, PATIENCE).await.unwrap();
    assert_eq!(got[0].rcpt_to, vec!["bob@example.test"]);
    let m = relay.finished(mixed).await;
    let states: Vec<_> = m.recipients.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        vec![RecipientState::Suppressed, RecipientState::Delivered]
    );
    assert!(!m.suppression_notice_due);
    let dsn = sender_mx.wait_for_messages(1, PATIENCE).await.unwrap();
    assert_eq!(dsn[0].mail_from, "", "notices use the null sender");
    assert_eq!(dsn[0].rcpt_to, vec!["alice@sender.test"]);
    let (status, whole) = dsn_parts(&dsn[0].data);
    for line in [
        "Final-Recipient: rfc822; gone@example.test\r\nAction: failed\r\nStatus: 5.7.1\r\n",
        "Diagnostic-Code: X-Postrider; 550 5.7.1 recipient address is on the suppression list",
    ] {
        assert!(status.contains(line), "missing {line:?} in\n{status}");
    }
    assert!(!status.contains("bob@example.test"), "{status}");
    assert!(whole.contains("Subject: integration"), "original headers");

    // Only a suppressed recipient: nothing is delivered, the notice still goes out.
    let only = relay
        .submit("alice@sender.test", &["gone@example.test"], BODY)
        .await;
    let m = relay.finished(only).await;
    assert_eq!(m.recipients[0].state, RecipientState::Suppressed);
    assert_eq!(m.attempts, 0);
    let dsn = sender_mx.wait_for_messages(2, PATIENCE).await.unwrap();
    assert!(dsn_parts(&dsn[1].data).0.contains("Status: 5.7.1"));

    // An API submission: finished at enqueue, no notice.
    let env = Envelope::new(
        ReversePath::parse("alice@sender.test").unwrap(),
        vec![RecipientRequest::new(
            Address::parse("gone@example.test").unwrap(),
        )],
    )
    .unwrap();
    let api = relay
        .store
        .enqueue(NewMessage::new(env, BODY.to_vec(), Source::Http, now()))
        .await
        .unwrap();
    assert!(relay.store.message(api).unwrap().unwrap().is_finished());
    wait_until("the notices delivered", || relay.store.pending_count() == 0).await;
    assert_eq!(sender_mx.messages().len(), 2);
    assert_eq!(mx.messages().len(), 1);
    assert_eq!(relay.metrics.bounces_generated.get(), 2);

    // The notices are normal messages that name the original.
    let all = relay
        .store
        .list(
            &ListFilter {
                include_finished: true,
                ..ListFilter::default()
            },
            now(),
        )
        .unwrap();
    let mut dsn_for: Vec<String> = all
        .messages
        .iter()
        .filter(|m| m.source == Source::Dsn)
        .filter_map(|m| m.metadata.get("dsn_for").cloned())
        .collect();
    dsn_for.sort();
    assert_eq!(dsn_for, vec![mixed.to_string(), only.to_string()]);
    relay.stop().await;
}

#[tokio::test]
async fn servfail_defers() {
    let dns = dns().await;
    dns.set_failure("broken.test", Failure::ServFail).unwrap();
    let mx = sink_at(2, 0, Behaviour::default()).await;
    let relay = Relay::start(&dns, mx.port(), |_| {});
    let id = relay
        .submit("alice@sender.test", &["bob@broken.test"], BODY)
        .await;
    let m = relay
        .wait_for(id, "the first attempt", |m| m.attempts == 1)
        .await;
    let r = &m.recipients[0];
    assert_eq!(r.state, RecipientState::Deferred);
    let reply = r.last_reply.as_ref().unwrap();
    assert_eq!(
        (reply.code, reply.status().to_string()),
        (451, "4.4.3".to_owned()),
        "{reply}"
    );
    assert!(m.next_attempt_at.is_some_and(|t| t > now()));
    assert!(mx.messages().is_empty());
    relay.stop().await;
}

#[tokio::test]
async fn mx_without_addresses_defers() {
    let dns = dns().await;
    let relay = Relay::start(&dns, 2525, |_| {});
    let id = relay
        .submit("alice@sender.test", &["bob@noaddr.test"], BODY)
        .await;
    let m = relay
        .wait_for(id, "the first attempt", |m| m.attempts == 1)
        .await;
    assert_eq!(m.recipients[0].state, RecipientState::Deferred);
    assert_eq!(
        m.recipients[0]
            .last_reply
            .as_ref()
            .map(|r| r.status().to_string())
            .as_deref(),
        Some("4.4.4")
    );
    relay.stop().await;
}

#[tokio::test]
async fn starttls_is_used_when_offered() {
    let dns = dns().await;
    let mx = SmtpSink::builder()
        .bind(IpAddr::V4(ip(2)), 0)
        .tls(true)
        .start()
        .await
        .unwrap();
    let relay = Relay::start(&dns, mx.port(), |_| {});
    let id = relay
        .submit("alice@sender.test", &["bob@example.test"], BODY)
        .await;
    let got = mx.wait_for_messages(1, PATIENCE).await.unwrap();
    assert!(got[0].tls, "the session must be encrypted");
    assert_eq!(got[0].data, BODY);
    assert_eq!(
        relay.finished(id).await.recipients[0].state,
        RecipientState::Delivered
    );
    relay.stop().await;
}

#[tokio::test]
async fn required_tls_defers_when_not_offered() {
    let dns = dns().await;
    let mx = sink_at(2, 0, Behaviour::default()).await;
    let relay = Relay::start(&dns, mx.port(), |s| {
        s.tls = postrider_delivery::TlsMode::Required
    });
    let id = relay
        .submit("alice@sender.test", &["bob@example.test"], BODY)
        .await;
    let m = relay
        .wait_for(id, "the first attempt", |m| m.attempts == 1)
        .await;
    assert_eq!(m.recipients[0].state, RecipientState::Deferred);
    assert_eq!(
        m.recipients[0]
            .last_reply
            .as_ref()
            .map(|r| r.status().to_string())
            .as_deref(),
        Some("4.7.10")
    );
    assert!(mx.messages().is_empty());
    relay.stop().await;
}

#[tokio::test]
async fn eight_bit_body_is_announced() {
    let dns = dns().await;
    let mx = sink_at(2, 0, Behaviour::default()).await;
    let relay = Relay::start(&dns, mx.port(), |_| {});
    let body = "Subject: caf\u{e9}\r\n\r\nna\u{ef}ve\r\n".as_bytes();
    relay
        .submit("alice@sender.test", &["bob@example.test"], body)
        .await;
    let got = mx.wait_for_messages(1, PATIENCE).await.unwrap();
    assert!(
        got[0]
            .mail_params
            .iter()
            .any(|p| p.eq_ignore_ascii_case("BODY=8BITMIME")),
        "{:?}",
        got[0].mail_params
    );
    assert_eq!(got[0].data, body);
    relay.stop().await;
}

#[tokio::test]
async fn smtputf8_recipient_fails_on_a_server_without_it() {
    let dns = dns().await;
    let mut behaviour = Behaviour::default();
    behaviour.extensions.smtputf8 = false;
    let mx = sink_at(2, 0, behaviour).await;
    let relay = Relay::start(&dns, mx.port(), |_| {});
    let id = relay
        .submit("", &["b\u{f6}b@example.test", "bob@example.test"], BODY)
        .await;
    let m = relay.finished(id).await;
    assert_eq!(m.recipients[0].state, RecipientState::Bounced);
    assert_eq!(
        m.recipients[0]
            .last_reply
            .as_ref()
            .map(|r| r.status().to_string())
            .as_deref(),
        Some("5.6.7")
    );
    assert_eq!(
        m.recipients[1].state,
        RecipientState::Delivered,
        "the ASCII recipient still gets it"
    );
    let got = mx.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_to, vec!["bob@example.test"]);
    assert!(
        !got[0]
            .mail_params
            .iter()
            .any(|p| p.eq_ignore_ascii_case("SMTPUTF8"))
    );
    relay.stop().await;
}

#[tokio::test]
async fn shutdown_stops_leasing() {
    let dns = dns().await;
    let mx = sink_at(2, 0, Behaviour::default()).await;
    let relay = Relay::start(&dns, mx.port(), |_| {});
    relay.shutdown.cancel();
    let Relay { store, handle, .. } = relay;
    tokio::time::timeout(PATIENCE, handle.unwrap().join())
        .await
        .expect("joins");
    let rcpts = vec![RecipientRequest::new(
        Address::parse("bob@example.test").unwrap(),
    )];
    let envelope = Envelope::new(ReversePath::parse("alice@sender.test").unwrap(), rcpts).unwrap();
    let id = store
        .enqueue(NewMessage::new(
            envelope,
            BODY.to_vec(),
            Source::Smtp,
            now(),
        ))
        .await
        .unwrap();
    // nobody leased it: it is still due for whoever starts next
    let leases = store.lease_due(now(), Duration::from_secs(60), 10).unwrap();
    assert_eq!(
        leases.iter().map(|l| l.message.id).collect::<Vec<_>>(),
        vec![id]
    );
    assert_eq!(leases[0].message.attempts, 0);
    assert_eq!(mx.connection_count(), 0);
}

#[tokio::test]
async fn failed_starttls_falls_back_to_plaintext_in_opportunistic_mode() {
    let dns = dns().await;
    // announces STARTTLS without being able to do it
    let mut behaviour = Behaviour::default();
    behaviour.extensions.extra.push("STARTTLS".into());
    let mx = sink_at(2, 0, behaviour).await;
    let relay = Relay::start(&dns, mx.port(), |_| {});
    let id = relay
        .submit("alice@sender.test", &["bob@example.test"], BODY)
        .await;
    let got = mx.wait_for_messages(1, PATIENCE).await.unwrap();
    assert!(!got[0].tls);
    assert_eq!(
        mx.connection_count(),
        2,
        "one failed TLS session, one plaintext session"
    );
    assert_eq!(
        relay.finished(id).await.recipients[0].state,
        RecipientState::Delivered
    );
    relay.stop().await;
}

/// A hostile MX that answers with a greeting line that never ends: the relay stops reading after
/// a bounded amount (it neither buffers the flood nor waits for the timeout), treats the host as
/// failed for now and delivers through the next MX.
#[tokio::test]
async fn an_endless_reply_line_is_cut_off_and_the_next_mx_is_used() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;

    const FLOOD: usize = 48 * 1024 * 1024;
    let dns = dns().await;
    let up = sink_at(3, 0, Behaviour::default()).await;
    let hostile = tokio::net::TcpListener::bind((ip(6), up.port()))
        .await
        .unwrap();
    let written = Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        let Ok((mut conn, _)) = hostile.accept().await else {
            return;
        };
        let chunk = vec![b'x'; 64 * 1024];
        if conn.write_all(b"220 ").await.is_err() {
            return;
        }
        while counter.load(Ordering::Relaxed) < FLOOD {
            if conn.write_all(&chunk).await.is_err() {
                return;
            }
            counter.fetch_add(chunk.len(), Ordering::Relaxed);
        }
    });
    let relay = Relay::start(&dns, up.port(), |_| {});
    delivered_through_the_second_mx(&relay, &up).await;
    let flooded = written.load(Ordering::Relaxed);
    assert!(
        flooded < FLOOD / 4,
        "the relay kept reading the endless line: {flooded} bytes taken"
    );
    relay.stop().await;
}
