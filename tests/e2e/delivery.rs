//! Submission → queue → MX delivery, per-recipient results, retries, MX rules, restarts.

use std::time::Duration;

use postrider_testkit::{FailFirst, Phase, Reply};

use crate::harness::wait_until;
use crate::smtp_client::{message, submit};
use crate::world::{World, received, stays_at};

async fn recipient_states(relay: &crate::harness::TestRelay, id: &str) -> Vec<(String, String)> {
    let (status, body) = relay.get_json(&format!("/v1/messages/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body["recipients"]
        .as_array()
        .expect("recipients")
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap_or("").to_owned(),
                r["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn smtp_submission_is_delivered_to_the_mx() {
    let world = World::start().await;
    let relay = world.relay().await;
    let id = submit(
        relay.smtp,
        "app@sender.test",
        &["user@example.test"],
        &message("app@sender.test", "user@example.test", "hello"),
    )
    .await;
    assert_eq!(id.len(), 16, "queue id {id:?}");

    let got = received(&world.mx1, 1).await;
    assert_eq!(got[0].mail_from, "app@sender.test");
    assert_eq!(got[0].rcpt_to, vec!["user@example.test"]);
    assert_eq!(got[0].helo, "relay.postrider.test");
    let data = String::from_utf8_lossy(&got[0].data);
    assert!(
        data.starts_with("Received: from "),
        "Received header first:\n{data}"
    );
    assert!(data.contains("by relay.postrider.test"), "{data}");
    assert!(data.contains("Subject: hello\r\n"), "{data}");
    assert!(
        data.contains("\r\n.leading dot line\r\n"),
        "dot-unstuffed on the way in, re-stuffed on the way out:\n{data}"
    );
    assert!(
        data.ends_with("Hello from the end-to-end tests.\r\n.leading dot line\r\n"),
        "no extra lines:\n{data:?}"
    );

    let states = wait_until("delivered state", async || {
        let s = recipient_states(&relay, &id).await;
        (s[0].1 == "delivered").then_some(s)
    })
    .await;
    assert_eq!(
        states,
        vec![("user@example.test".to_owned(), "delivered".to_owned())]
    );
    let (_, body) = relay.get_json(&format!("/v1/messages/{id}")).await;
    assert_eq!(body["state"], "delivered");
    assert_eq!(body["recipients"][0]["attempts"], 1);
    assert_eq!(body["recipients"][0]["last_reply"]["code"], 250);
    assert_eq!(body["recipients"][0]["mx_host"], "mx1.example.test");

    assert_eq!(
        relay
            .metric("postrider_messages_accepted_total{source=\"smtp\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        relay
            .metric("postrider_delivery_attempts_total{result=\"delivered\"}")
            .await,
        Some(1.0)
    );
    wait_until("queue gauge back to zero", async || {
        (relay.metric("postrider_queue_messages").await == Some(0.0)).then_some(())
    })
    .await;
    assert_eq!(
        relay
            .metric("postrider_delivery_duration_seconds_count")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn one_transaction_per_domain_with_per_recipient_results() {
    let world = World::start().await;
    let relay = world.relay().await;
    let rcpts = [
        "good@example.test",
        "bad@example.test",
        "later@example.test",
        "other@implicit.test",
    ];
    let id = submit(
        relay.smtp,
        "app@sender.test",
        &rcpts,
        &message("app@sender.test", "good@example.test", "mixed"),
    )
    .await;

    // example.test: one transaction carrying the three recipients; only `good` was accepted.
    let got = received(&world.mx1, 1).await;
    assert_eq!(got[0].rcpt_to, vec!["good@example.test"]);
    let transcript = world.mx1.transcript().join("\n");
    for r in ["good", "bad", "later"] {
        assert!(
            transcript.contains(&format!("RCPT TO:<{r}@example.test>")),
            "{transcript}"
        );
    }
    // implicit.test went to its A record (mx2) in a separate transaction.
    let got2 = received(&world.mx2, 1).await;
    assert_eq!(got2[0].rcpt_to, vec!["other@implicit.test"]);

    let states = wait_until("first attempt recorded", async || {
        let s = recipient_states(&relay, &id).await;
        s.iter().all(|(_, st)| st != "queued").then_some(s)
    })
    .await;
    let state_of = |a: &str| {
        states
            .iter()
            .find(|(r, _)| r == a)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    };
    assert_eq!(state_of("good@example.test"), "delivered");
    assert_eq!(state_of("bad@example.test"), "bounced");
    assert_eq!(state_of("later@example.test"), "deferred");
    assert_eq!(state_of("other@implicit.test"), "delivered");
    let (_, body) = relay.get_json(&format!("/v1/messages/{id}")).await;
    assert_eq!(body["state"], "deferred");
    let later = body["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == "later@example.test")
        .cloned()
        .unwrap();
    assert_eq!(later["last_reply"]["code"], 450);
    assert_eq!(later["last_reply"]["enhanced"], "4.2.1");

    // The bounce for `bad` reached the sender's MX right away, while `later` keeps being retried.
    let dsn = received(&world.sender_mx, 1).await;
    assert_eq!(dsn[0].mail_from, "");
    let text = String::from_utf8_lossy(&dsn[0].data);
    assert!(
        text.contains("Final-Recipient: rfc822; bad@example.test"),
        "{text}"
    );
    assert!(
        !text.contains("Final-Recipient: rfc822; later@example.test"),
        "{text}"
    );
    assert!(
        !text.contains("Final-Recipient: rfc822; good@example.test"),
        "{text}"
    );
}

#[tokio::test]
async fn transient_failure_then_success_on_retry() {
    let world = World::start().await;
    world.mx1.update_behaviour(|b| {
        b.fail_first = Some(FailFirst {
            phase: Phase::Rcpt,
            transactions: 1,
            reply: Reply::new(451, "4.7.1 greylisted, come back later"),
        })
    });
    let relay = world.relay().await;
    let id = submit(
        relay.smtp,
        "app@sender.test",
        &["user@example.test"],
        &message("app@sender.test", "user@example.test", "greylist"),
    )
    .await;

    let got = received(&world.mx1, 1).await;
    assert_eq!(got[0].rcpt_to, vec!["user@example.test"]);
    assert!(
        world.mx1.transaction_count() >= 2,
        "one refused transaction, then the delivery"
    );
    let (_, body) = wait_until("delivered", async || {
        let (s, b) = relay.get_json(&format!("/v1/messages/{id}")).await;
        (b["state"] == "delivered").then_some((s, b))
    })
    .await;
    assert_eq!(body["recipients"][0]["attempts"], 2);
    assert_eq!(body["attempts"], 2);
    assert_eq!(
        relay
            .metric("postrider_delivery_attempts_total{result=\"deferred\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        relay
            .metric("postrider_delivery_attempts_total{result=\"delivered\"}")
            .await,
        Some(1.0)
    );
    stays_at(&world.sender_mx, 0, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn falls_back_to_the_next_mx_when_the_first_refuses() {
    let world = World::start().await;
    let relay = world.relay().await;
    // fallback.test: MX 10 is 127.0.0.4 (nothing listens), MX 20 is mx2.
    submit(
        relay.smtp,
        "app@sender.test",
        &["user@fallback.test"],
        &message("app@sender.test", "user@fallback.test", "fallback"),
    )
    .await;
    let got = received(&world.mx2, 1).await;
    assert_eq!(got[0].rcpt_to, vec!["user@fallback.test"]);

    // A 421 greeting on the preferred MX also moves on to the next one.
    world
        .mx1
        .update_behaviour(|b| b.greeting = Some(Reply::new(421, "4.3.2 too busy")));
    submit(
        relay.smtp,
        "app@sender.test",
        &["user2@example.test"],
        &message("app@sender.test", "user2@example.test", "busy"),
    )
    .await;
    let got = received(&world.mx2, 2).await;
    assert_eq!(got[1].rcpt_to, vec!["user2@example.test"]);
    assert!(world.mx1.messages().is_empty());
    assert!(world.mx1.connection_count() >= 1, "mx1 was tried first");
}

#[tokio::test]
async fn dns_failure_is_transient_and_recovers() {
    let world = World::start().await;
    let relay = world.relay().await;
    world
        .dns
        .set_failure("example.test", postrider_testkit::Failure::ServFail)
        .expect("inject");
    let id = submit(
        relay.smtp,
        "app@sender.test",
        &["user@example.test"],
        &message("app@sender.test", "user@example.test", "servfail"),
    )
    .await;
    let body = wait_until("deferred by SERVFAIL", async || {
        let (_, b) = relay.get_json(&format!("/v1/messages/{id}")).await;
        (b["state"] == "deferred").then_some(b)
    })
    .await;
    let reply = &body["recipients"][0]["last_reply"];
    assert_eq!(reply["code"].as_u64().map(|c| c / 100), Some(4), "{body}");
    world.dns.clear_failure("example.test").expect("clear");
    received(&world.mx1, 1).await;
    stays_at(&world.sender_mx, 0, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn queued_mail_survives_a_restart() {
    let world = World::start().await;
    world
        .mx1
        .update_behaviour(|b| b.greeting = Some(Reply::new(421, "4.3.2 down for maintenance")));
    world
        .mx2
        .update_behaviour(|b| b.greeting = Some(Reply::new(421, "4.3.2 down for maintenance")));
    let mut relay = world.relay().await;
    let id = submit(
        relay.smtp,
        "app@sender.test",
        &["user@example.test"],
        &message("app@sender.test", "user@example.test", "restart"),
    )
    .await;
    wait_until("deferred", async || {
        let (_, b) = relay.get_json(&format!("/v1/messages/{id}")).await;
        (b["state"] == "deferred").then_some(())
    })
    .await;

    // Both MX hosts keep answering 421: the circuit breaker suspends them, visible in queue stats.
    let stats = wait_until("destinations suspended", async || {
        let (_, s) = relay.get_json("/v1/queue/stats").await;
        (s["suspended_destinations"]
            .as_array()
            .is_some_and(|a| !a.is_empty()))
        .then_some(s)
    })
    .await;
    let hosts: Vec<&str> = stats["suspended_destinations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["host"].as_str())
        .collect();
    assert!(hosts.contains(&"mx1.example.test"), "{stats}");
    assert!(
        stats["suspended_destinations"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("421")),
        "{stats}"
    );

    // A hard kill: whatever was acknowledged must be on disk.
    assert_eq!(relay.stop_with("KILL").await, None, "killed by signal");
    world.mx1.update_behaviour(|b| b.greeting = None);
    world.mx2.update_behaviour(|b| b.greeting = None);
    relay.restart().await;
    let got = received(&world.mx1, 1).await;
    assert_eq!(got[0].rcpt_to, vec!["user@example.test"]);
    let body = wait_until("delivered after restart", async || {
        let (_, b) = relay.get_json(&format!("/v1/messages/{id}")).await;
        (b["state"] == "delivered").then_some(b)
    })
    .await;
    assert!(body["attempts"].as_u64() >= Some(2), "{body}");
}

#[tokio::test]
async fn a_route_overrides_mx_lookup() {
    let world = World::start().await;
    // routed.test has no DNS records at all: only the route can deliver it.
    let config = format!(
        "{}\n[[routes]]\ndomain = \"routed.test\"\nto = \"127.0.0.3:{}\"\n",
        world.config(&["1s"], "1h"),
        world.smtp_port()
    );
    let relay = crate::harness::TestRelay::start(&config).await;
    submit(
        relay.smtp,
        "app@sender.test",
        &["user@routed.test"],
        &message("app@sender.test", "user@routed.test", "routed"),
    )
    .await;
    let got = received(&world.mx2, 1).await;
    assert_eq!(got[0].rcpt_to, vec!["user@routed.test"]);
    assert!(
        world
            .dns
            .queries()
            .iter()
            .all(|q| !q.name.contains("routed")),
        "no DNS lookup for a routed domain: {:?}",
        world.dns.queries()
    );
}
