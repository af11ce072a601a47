//! Permanent failures and expiry produce RFC 3464 bounces to the sender; `<>` is never bounced.
//! Suppressed recipients are reported to SMTP senders, not to API submitters.

use std::time::Duration;

use mail_parser::{MessageParser, MimeHeaders};
use postrider_testkit::{RcptRule, ReceivedMessage, Reply};
use serde_json::json;

use crate::harness::{TestRelay, wait_until};
use crate::smtp_client::{SmtpClient, message, submit};
use crate::world::{World, received, stays_at};

/// The `message/delivery-status` part of a DSN, checking the report's MIME structure on the way.
fn delivery_status(dsn: &ReceivedMessage) -> String {
    let parsed = MessageParser::default()
        .parse(&dsn.data)
        .expect("DSN parses as a message");
    let ct = parsed.content_type().expect("content type");
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let from = parsed
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(from, "MAILER-DAEMON@relay.postrider.test");
    assert!(parsed.message_id().is_some(), "DSN has a Message-ID");
    assert!(parsed.date().is_some(), "DSN has a Date");
    let kinds: Vec<String> = parsed
        .parts
        .iter()
        .filter_map(|p| {
            p.content_type()
                .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")))
        })
        .collect();
    assert!(kinds.iter().any(|k| k == "text/plain"), "{kinds:?}");
    assert!(
        kinds.iter().any(|k| k == "message/delivery-status"),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().any(|k| k == "text/rfc822-headers"),
        "{kinds:?}"
    );
    let raw = String::from_utf8_lossy(&dsn.data).to_string();
    let start = raw.find("Reporting-MTA:").expect("Reporting-MTA field");
    raw[start..].to_owned()
}

#[tokio::test]
async fn permanent_failure_bounces_with_a_full_dsn() {
    let world = World::start().await;
    world.mx1.update_behaviour(|b| {
        b.rcpt_rules.push(RcptRule::local_prefix(
            "nobody",
            Reply::new(553, "5.1.3 mailbox name not allowed"),
        ))
    });
    let relay = world.relay().await;
    let data = message("app@sender.test", "bad@example.test", "will-bounce");
    let id = submit(
        relay.smtp,
        "app@sender.test",
        &["bad@example.test", "nobody@example.test"],
        &data,
    )
    .await;

    let dsn = received(&world.sender_mx, 1).await;
    assert_eq!(dsn.len(), 1, "one DSN per message");
    assert_eq!(dsn[0].mail_from, "", "DSNs use the null reverse-path");
    assert_eq!(dsn[0].rcpt_to, vec!["app@sender.test"]);
    let status = delivery_status(&dsn[0]);
    assert!(
        status.contains("Reporting-MTA: dns; relay.postrider.test"),
        "{status}"
    );
    assert!(status.contains("Arrival-Date: "), "{status}");
    for (rcpt, code, diag) in [
        ("bad", "5.1.1", "550 5.1.1 no such user"),
        ("nobody", "5.1.3", "553 5.1.3 mailbox name not allowed"),
    ] {
        let group_start = status
            .find(&format!("Final-Recipient: rfc822; {rcpt}@example.test"))
            .unwrap_or_else(|| panic!("{rcpt} in\n{status}"));
        let group = &status[group_start..];
        let group = &group[..group.find("\r\n\r\n").unwrap_or(group.len())];
        assert!(group.contains("Action: failed"), "{group}");
        assert!(group.contains(&format!("Status: {code}")), "{group}");
        assert!(
            group.contains("Remote-MTA: dns; mx1.example.test"),
            "{group}"
        );
        assert!(
            group.contains(&format!("Diagnostic-Code: smtp; {diag}")),
            "{group}"
        );
    }
    let raw = String::from_utf8_lossy(&dsn[0].data);
    assert!(
        raw.contains("Subject: will-bounce"),
        "original headers are returned:\n{raw}"
    );
    assert!(
        !raw.contains("Hello from the end-to-end tests."),
        "RET=HDRS by default: no body:\n{raw}"
    );

    let (_, body) = relay.get_json(&format!("/v1/messages/{id}")).await;
    assert_eq!(body["state"], "bounced");
    // why: both replies say the address does not exist
    for r in 0..2 {
        assert_eq!(
            body["recipients"][r]["category"], "invalid_recipient",
            "{body}"
        );
    }
    let (_, events) = relay
        .get_json(&format!("/v1/events?type=bounced&id={id}"))
        .await;
    let events = events["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.iter().all(|e| e["category"] == "invalid_recipient"));
    assert_eq!(
        relay
            .metric("postrider_bounces_total{category=\"invalid_recipient\",kind=\"hard\"}")
            .await,
        Some(2.0)
    );
    assert!(
        relay.log_text().contains("category=invalid_recipient"),
        "{}",
        relay.log_text()
    );
    assert_eq!(
        relay.metric("postrider_bounces_generated_total").await,
        Some(1.0)
    );
    assert_eq!(
        relay
            .metric("postrider_delivery_attempts_total{result=\"bounced\"}")
            .await,
        Some(2.0)
    );
    // 5xx is never retried.
    stays_at(&world.sender_mx, 1, Duration::from_millis(1500)).await;
    assert_eq!(
        world.mx1.transaction_count(),
        1,
        "{:?}",
        world.mx1.transcript()
    );
}

#[tokio::test]
async fn null_mx_and_nxdomain_bounce_immediately() {
    let world = World::start().await;
    let relay = world.relay().await;
    submit(
        relay.smtp,
        "app@sender.test",
        &["user@nullmx.test", "user@missing.test"],
        &message("app@sender.test", "user@nullmx.test", "dns-bounce"),
    )
    .await;
    let dsn = received(&world.sender_mx, 1).await;
    let status = delivery_status(&dsn[0]);
    let group = |rcpt: &str| recipient_group(&status, rcpt);
    assert!(
        group("user@nullmx.test").contains("Status: 5.1.10"),
        "{status}"
    );
    assert!(
        group("user@missing.test").contains("Status: 5.1.2"),
        "{status}"
    );
    assert!(
        group("user@nullmx.test").contains("Action: failed"),
        "{status}"
    );
}

#[tokio::test]
async fn undeliverable_past_max_age_bounces_with_the_last_transient_reply() {
    let world = World::start().await;
    let relay = TestRelay::start(&world.config(&["1s"], "3s")).await;
    let id = submit(
        relay.smtp,
        "app@sender.test",
        &["later@example.test"],
        &message("app@sender.test", "later@example.test", "expires"),
    )
    .await;
    let dsn = received(&world.sender_mx, 1).await;
    let status = delivery_status(&dsn[0]);
    assert!(
        status.contains("Final-Recipient: rfc822; later@example.test"),
        "{status}"
    );
    assert!(status.contains("Action: failed"), "{status}");
    assert!(
        status.contains("Status: 4.2.1"),
        "expiry keeps the 4.x.x status:\n{status}"
    );
    assert!(
        status.contains("Diagnostic-Code: smtp; 450 4.2.1 mailbox busy, try later"),
        "{status}"
    );
    let (_, body) = relay.get_json(&format!("/v1/messages/{id}")).await;
    assert_eq!(body["state"], "bounced");
    assert!(
        world.mx1.transaction_count() >= 2,
        "retried before expiring"
    );
}

#[tokio::test]
async fn a_message_from_the_null_sender_is_never_bounced() {
    let world = World::start().await;
    let relay = world.relay().await;
    let (mut c, _) = SmtpClient::connect(relay.smtp).await;
    c.cmd("EHLO client.postrider.test").await;
    let r = c
        .send_mail(
            "",
            &["bad@example.test"],
            &message("", "bad@example.test", "bounce-of-bounce"),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let id = r.text.rsplit(' ').next().unwrap().to_owned();
    wait_until("bounced", async || {
        let (_, b) = relay.get_json(&format!("/v1/messages/{id}")).await;
        (b["state"] == "bounced").then_some(())
    })
    .await;
    assert_eq!(
        relay.metric("postrider_bounces_generated_total").await,
        Some(0.0)
    );
    stays_at(&world.sender_mx, 0, Duration::from_millis(500)).await;
}

/// The per-recipient group of `rcpt` in a delivery-status text.
fn recipient_group(status: &str, rcpt: &str) -> String {
    let start = status
        .find(&format!("Final-Recipient: rfc822; {rcpt}"))
        .unwrap_or_else(|| panic!("{rcpt} in\n{status}"));
    let group = &status[start..];
    group[..group.find("\r\n\r\n").unwrap_or(group.len())].to_owned()
}

#[tokio::test]
async fn suppressed_recipients_are_reported_to_smtp_senders_only() {
    let world = World::start().await;
    let relay = world.relay().await;
    let (status, body) = relay
        .post_json("/v1/suppressions", &json!({"address": "gone@example.test"}))
        .await;
    assert_eq!(status, 201, "{body}");

    // API submissions first: the scheduler takes messages oldest first, so their attempts are
    // over before the SMTP notices below arrive.
    let mut api_ids = Vec::new();
    for to in [
        vec!["gone@example.test"],
        vec!["gone@example.test", "api-good@example.test"],
    ] {
        let (status, body) = relay
            .post_json(
                "/v1/messages",
                &json!({"from": "app@sender.test", "to": to, "subject": "api", "text": "x"}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        api_ids.push(body["id"].as_str().expect("id").to_owned());
    }
    let mixed = submit(
        relay.smtp,
        "app@sender.test",
        &["gone@example.test", "good@example.test"],
        &message("app@sender.test", "good@example.test", "partly-suppressed"),
    )
    .await;
    let only = submit(
        relay.smtp,
        "app@sender.test",
        &["gone@example.test"],
        &message("app@sender.test", "gone@example.test", "all-suppressed"),
    )
    .await;

    // Delivery of the other recipients is unaffected.
    let delivered = received(&world.mx1, 2).await;
    let mut rcpts: Vec<String> = delivered.iter().flat_map(|m| m.rcpt_to.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, vec!["api-good@example.test", "good@example.test"]);

    // One notice per SMTP message, from <> to the sender, naming the suppressed recipient.
    let dsns = received(&world.sender_mx, 2).await;
    let mut reported = Vec::new();
    for dsn in &dsns {
        assert_eq!(dsn.mail_from, "", "notices use the null reverse-path");
        assert_eq!(dsn.rcpt_to, vec!["app@sender.test"]);
        let status = delivery_status(dsn);
        let group = recipient_group(&status, "gone@example.test");
        for line in [
            "Action: failed",
            "Status: 5.7.1",
            "Diagnostic-Code: X-Postrider; 550 5.7.1 recipient address is on the suppression list",
        ] {
            assert!(group.contains(line), "missing {line:?} in\n{group}");
        }
        assert!(!group.contains("Remote-MTA"), "{group}");
        assert!(
            !status.contains("Final-Recipient: rfc822; good@example.test"),
            "{status}"
        );
        let queue_id = status
            .lines()
            .find_map(|l| l.strip_prefix("X-Postrider-Queue-ID: "))
            .expect("queue id of the original")
            .to_owned();
        reported.push(queue_id);
    }
    reported.sort();
    let mut smtp_ids = vec![mixed.clone(), only.clone()];
    smtp_ids.sort();
    assert_eq!(reported, smtp_ids, "each SMTP message reported once");

    // Every message is done, the notices included: an API notice would have been queued in the
    // same step as its message's attempt, and delivered by now.
    wait_until("queue drained", async || {
        (relay.metric("postrider_queue_messages").await == Some(0.0)).then_some(())
    })
    .await;
    stays_at(&world.sender_mx, 2, Duration::from_millis(1000)).await;
    assert_eq!(
        relay.metric("postrider_bounces_generated_total").await,
        Some(2.0)
    );

    // The suppressed recipient keeps its state in the status of every message.
    for id in api_ids.iter().chain([&mixed, &only]) {
        let (status, body) = relay.get_json(&format!("/v1/messages/{id}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["recipients"][0]["address"], "gone@example.test");
        assert_eq!(body["recipients"][0]["state"], "suppressed", "{body}");
    }
    let (_, body) = relay.get_json(&format!("/v1/messages/{mixed}")).await;
    assert_eq!(body["recipients"][1]["state"], "delivered", "{body}");
    let (_, body) = relay.get_json(&format!("/v1/messages/{only}")).await;
    assert_eq!(body["attempts"], 0, "nothing was attempted: {body}");

    // The notices are normal queued messages that name their original.
    let (_, queue) = relay
        .get_json("/v1/queue?include_finished=true&limit=100")
        .await;
    let mut dsn_for: Vec<String> = queue["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["source"] == "dsn")
        .filter_map(|m| m["metadata"]["dsn_for"].as_str().map(str::to_owned))
        .collect();
    dsn_for.sort();
    assert_eq!(dsn_for, smtp_ids);

    // And the event log says `suppressed` for it, once per message.
    let (_, events) = relay.get_json("/v1/events?limit=100").await;
    let suppressed = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "suppressed" && e["recipient"] == "gone@example.test")
        .count();
    assert_eq!(suppressed, 4, "{events}");
}
