//! What happens after the 250: with `[bounces] domain`, every recipient of a message gets its
//! own transaction from a signed return path in the bounce domain, while the relay's own
//! failure notices still go to the original sender from the null reverse-path. With `[bounces]
//! listen`, reports sent back to those return paths bounce a delivered recipient
//! asynchronously or record a complaint.

use crate::features::webhook_receiver;
use crate::harness::{TestRelay, free_port, wait_until};
use crate::smtp_client::{Reply, SmtpClient, message, submit};
use crate::world::{World, received};

/// The `[bounces]` section of the relay under test.
const BOUNCES: &str =
    "\n[bounces]\ndomain = \"bounces.postrider.test\"\nsecret = \"verp-secret-for-the-tests\"\n";

#[tokio::test]
async fn each_recipient_gets_its_own_signed_return_path() {
    let world = World::start().await;
    let relay = TestRelay::start(&format!("{}{BOUNCES}", world.config(&["1s"], "1h"))).await;
    let data = message("app@sender.test", "one@example.test", "verp");
    let id = submit(
        relay.smtp,
        "app@sender.test",
        &["one@example.test", "two@example.test", "bad@example.test"],
        &data,
    )
    .await;

    let got = received(&world.mx1, 2).await;
    assert_eq!(got.len(), 2, "one transaction per accepted recipient");
    let mut return_paths = Vec::new();
    for m in &got {
        assert_eq!(m.rcpt_to.len(), 1, "{:?}", m.rcpt_to);
        let (local, domain) = m.mail_from.rsplit_once('@').unwrap();
        assert_eq!(domain, "bounces.postrider.test", "{}", m.mail_from);
        let token = local.strip_prefix("b+").unwrap();
        assert_eq!(token.len(), 24, "{}", m.mail_from);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
            "{token}"
        );
        let text = String::from_utf8_lossy(&m.data);
        assert!(
            text.contains("From: <app@sender.test>"),
            "From is untouched:\n{text}"
        );
        return_paths.push(m.mail_from.clone());
    }
    return_paths.dedup();
    assert_eq!(
        return_paths.len(),
        2,
        "distinct per recipient: {return_paths:?}"
    );

    // The relay's own notice for the refused recipient goes to the real sender, from <>.
    let dsn = received(&world.sender_mx, 1).await;
    assert_eq!(dsn[0].mail_from, "");
    assert_eq!(dsn[0].rcpt_to, vec!["app@sender.test"]);
    // ... and that notice itself, sent with the null reverse-path, gets no return path.
    let (_, body) = relay.get_json(&format!("/v1/messages/{id}")).await;
    assert_eq!(body["state"], "partially_bounced", "{body}");
}

/// A relay with a bounce listener on `bounce_port` and a webhook for bounces and complaints.
fn listening_config(world: &World, bounce_port: u16, hook: std::net::SocketAddr) -> String {
    format!(
        "{}{BOUNCES}listen = \"127.0.0.1:{bounce_port}\"\n\n[[webhooks]]\nurl = \"http://{hook}/hook\"\nsecret = \"0123456789abcdef-secret\"\nevents = [\"bounced\", \"complained\"]\n",
        world.config(&["1s"], "1h")
    )
}

/// An RFC 3464 report from the recipient's domain: `recipient` failed with 5.1.1.
fn dsn_report(return_path: &str, recipient: &str) -> String {
    format!(
        "From: MAILER-DAEMON@store.example.test\r\nTo: {return_path}\r\nSubject: Undelivered Mail Returned to Sender\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"dsn-b\"\r\n\r\n--dsn-b\r\nContent-Type: text/plain\r\n\r\nThe mailbox does not exist.\r\n\r\n--dsn-b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; store.example.test\r\n\r\nFinal-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <{recipient}>: mailbox unknown\r\n\r\n--dsn-b--\r\n"
    )
}

/// An ARF (RFC 5965) abuse report about the message sent to `recipient`.
fn arf_report(return_path: &str, recipient: &str) -> String {
    format!(
        "From: Feedback Loop <fbl@example.test>\r\nTo: {return_path}\r\nSubject: FW: verp\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"arf-b\"\r\n\r\n--arf-b\r\nContent-Type: text/plain\r\n\r\nAn abuse report.\r\n\r\n--arf-b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: TestFBL/1.0\r\nVersion: 1\r\nOriginal-Mail-From: <{return_path}>\r\nOriginal-Rcpt-To: <{recipient}>\r\n\r\n--arf-b\r\nContent-Type: message/rfc822\r\n\r\nFrom: <app@sender.test>\r\nTo: <{recipient}>\r\nSubject: verp\r\n\r\nHello.\r\n\r\n--arf-b--\r\n"
    )
}

/// An out-of-office reply.
fn vacation_reply(return_path: &str) -> String {
    format!(
        "From: <one@example.test>\r\nTo: {return_path}\r\nSubject: Out of office\r\nAuto-Submitted: auto-replied\r\n\r\nBack on Monday.\r\n"
    )
}

/// Sends `data` from the null reverse-path to `rcpt` at the bounce listener; the final reply.
async fn send_report(listener: std::net::SocketAddr, rcpt: &str, data: &str) -> Reply {
    let (mut c, greeting) = SmtpClient::connect(listener).await;
    assert_eq!(greeting.code, 220, "{greeting:?}");
    let ehlo = c.cmd("EHLO store.example.test").await;
    assert!(!ehlo.text.contains("AUTH"), "no AUTH offered: {ehlo:?}");
    let r = c.send_mail("", &[rcpt], data).await;
    let _ = c.cmd("QUIT").await;
    r
}

#[tokio::test]
async fn reports_at_the_bounce_listener_bounce_complain_or_change_nothing() {
    let world = World::start().await;
    let (hook, seen) = webhook_receiver().await;
    let bounce_port = free_port("127.0.0.1");
    let listener: std::net::SocketAddr = ([127, 0, 0, 1], bounce_port).into();
    let relay = TestRelay::start(&listening_config(&world, bounce_port, hook)).await;
    let rcpts = ["one@example.test", "two@example.test"];
    let id = submit(
        relay.smtp,
        "app@sender.test",
        &rcpts,
        &message("app@sender.test", "one@example.test", "verp"),
    )
    .await;
    let got = received(&world.mx1, 2).await;
    let return_path = |rcpt: &str| {
        got.iter()
            .find(|m| m.rcpt_to == [rcpt])
            .map(|m| m.mail_from.clone())
            .expect("delivered")
    };
    let status = async || relay.get_json(&format!("/v1/messages/{id}")).await.1;
    wait_until("both recipients delivered", async || {
        (status().await["state"] == "delivered").then_some(())
    })
    .await;

    // (d) Not the bounce domain: refused, with its enhanced code.
    let (mut c, _) = SmtpClient::connect(listener).await;
    let _ = c.cmd("EHLO store.example.test").await;
    assert_eq!(c.cmd("MAIL FROM:<>").await.code, 250);
    let r = c.cmd("RCPT TO:<someone@example.test>").await;
    assert_eq!(r.code, 550, "{r:?}");
    assert!(r.text.starts_with("5.7.1"), "{r:?}");
    let r = c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==").await;
    assert_eq!(r.code, 502, "no AUTH: {r:?}");
    let _ = c.cmd("QUIT").await;

    // (c) An auto-reply: counted, nothing changes.
    let r = send_report(
        listener,
        &return_path("one@example.test"),
        &vacation_reply(&return_path("one@example.test")),
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    wait_until("the auto-reply counted", async || {
        (relay
            .metric("postrider_inbound_reports_total{type=\"auto_reply\"}")
            .await
            == Some(1.0))
        .then_some(())
    })
    .await;
    assert_eq!(status().await["state"], "delivered");

    // (a) A DSN to the return path of two@: bounced asynchronously, suppressed, evented.
    let two = return_path("two@example.test");
    let r = send_report(listener, &two, &dsn_report(&two, "two@example.test")).await;
    assert_eq!(r.code, 250, "{r:?}");
    let body = wait_until("the asynchronous bounce", async || {
        let body = status().await;
        (body["state"] == "partially_bounced").then_some(body)
    })
    .await;
    let r2 = &body["recipients"][1];
    assert_eq!(r2["address"], "two@example.test", "{body}");
    assert_eq!(r2["state"], "bounced", "{body}");
    assert_eq!(r2["async"], true, "{body}");
    assert_eq!(r2["category"], "invalid_recipient", "{body}");
    assert_eq!(r2["last_reply"]["code"], 550, "{body}");
    assert_eq!(body["recipients"][0]["state"], "delivered", "{body}");
    assert!(body["recipients"][0].get("async").is_none(), "{body}");
    let (code, listed) = relay.get_json("/v1/suppressions/two@example.test").await;
    assert_eq!(code, 200, "{listed}");
    assert_eq!(listed["reason"], "hard_bounce", "{listed}");
    assert_eq!(listed["source_report"]["status"], "5.1.1", "{listed}");
    let (_, events) = relay
        .get_json(&format!("/v1/events?type=bounced&id={id}"))
        .await;
    let events = events["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["async"], true, "{events:?}");
    assert_eq!(events[0]["recipient"], "two@example.test");
    wait_until("the bounced webhook", async || {
        seen.lock()
            .expect("seen")
            .iter()
            .any(|(_, v)| v["type"] == "bounced" && v["id"] == id.as_str() && v["async"] == true)
            .then_some(())
    })
    .await;
    assert_eq!(
        relay
            .metric("postrider_bounces_total{category=\"invalid_recipient\",kind=\"async\"}")
            .await,
        Some(1.0)
    );

    // (b) A complaint about the message to one@: complained event, suppressed for it.
    let one = return_path("one@example.test");
    let r = send_report(listener, &one, &arf_report(&one, "one@example.test")).await;
    assert_eq!(r.code, 250, "{r:?}");
    let listed = wait_until("the complaint suppression", async || {
        let (code, listed) = relay.get_json("/v1/suppressions/one@example.test").await;
        (code == 200).then_some(listed)
    })
    .await;
    assert_eq!(listed["reason"], "complaint", "{listed}");
    let (_, events) = relay
        .get_json(&format!("/v1/events?type=complained&id={id}"))
        .await;
    let events = events["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["recipient"], "one@example.test");
    assert_eq!(relay.metric("postrider_complaints_total").await, Some(1.0));
    assert_eq!(status().await["recipients"][0]["state"], "delivered");
    assert_eq!(
        relay
            .metric("postrider_inbound_reports_total{type=\"dsn\"}")
            .await,
        Some(1.0)
    );
}
