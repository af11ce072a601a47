//! Graceful shutdown (SIGTERM): nothing accepted is lost, nothing is delivered twice.

use std::time::Duration;

use crate::harness::{TestRelay, wait_until};
use crate::smtp_client::{SmtpClient, message, submit};
use crate::world::{World, stays_at};

#[tokio::test]
async fn sigterm_lets_in_flight_delivery_finish_and_exits_cleanly() {
    let world = World::start().await;
    // The peer takes a while to accept the message: the delivery is in flight when SIGTERM lands.
    world
        .mx1
        .update_behaviour(|b| b.end_of_data_delay = Duration::from_millis(1500));
    let mut relay = world.relay().await;
    let id = submit(
        relay.smtp,
        "app@sender.test",
        &["user@example.test"],
        &message("app@sender.test", "user@example.test", "in-flight"),
    )
    .await;
    wait_until("delivery in flight", async || {
        world
            .mx1
            .transcript()
            .iter()
            .any(|l| l.contains("C: DATA"))
            .then_some(())
    })
    .await;

    let code = relay.stop_with("TERM").await;
    assert_eq!(code, Some(0), "clean exit; log:\n{}", relay.log_text());
    assert_eq!(
        world.mx1.messages().len(),
        1,
        "the in-flight delivery completed before exit"
    );

    // Restarted, the relay knows the message was delivered and does not send it again.
    relay.restart().await;
    let (_, body) = relay.get_json(&format!("/v1/messages/{id}")).await;
    assert_eq!(body["state"], "delivered", "{body}");
    stays_at(&world.mx1, 1, Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn sigterm_during_data_still_accepts_that_message_then_closes() {
    let world = World::start().await;
    // Hold deliveries back so the accepted message stays queued across the restart.
    world.mx1.update_behaviour(|b| {
        b.greeting = Some(postrider_testkit::Reply::new(421, "4.3.2 not now"))
    });
    world.mx2.update_behaviour(|b| {
        b.greeting = Some(postrider_testkit::Reply::new(421, "4.3.2 not now"))
    });
    let mut relay = TestRelay::start(&world.config(&["1h"], "5d")).await;

    let (mut c, _) = SmtpClient::connect(relay.smtp).await;
    c.cmd("EHLO client.postrider.test").await;
    assert_eq!(c.cmd("MAIL FROM:<app@sender.test>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<user@example.test>").await.code, 250);
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send_raw(b"Subject: mid-data\r\n\r\nfirst line\r\n").await;

    let pid_stop = {
        let smtp = relay.smtp;
        // Send SIGTERM while the message is half transferred.
        let stop = relay.stop_with("TERM");
        tokio::pin!(stop);
        // Give the signal a moment to be handled, then finish the message.
        tokio::select! {
            code = &mut stop => panic!("relay exited before the open DATA finished: {code:?}"),
            () = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        // New connections are refused politely (or the listener is already closed).
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(smtp)).await
        {
            drop(s);
        }
        c.send_raw(b"last line\r\n.\r\n").await;
        let r = c.read_reply().await;
        assert_eq!(r.code, 250, "the message in DATA is accepted: {r:?}");
        let next = c.cmd("NOOP").await;
        assert_eq!(
            (next.code, next.text.starts_with("4.3.2")),
            (421, true),
            "{next:?}"
        );
        stop.await
    };
    assert_eq!(pid_stop, Some(0));

    // The acknowledged message is in the queue after restart.
    relay.restart().await;
    let (_, body) = relay.get_json("/v1/queue?limit=10").await;
    let msgs = body["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(msgs.len(), 1, "{body}");
}
