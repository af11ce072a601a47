//! What operators read: the relay's log lines and its `/metrics` page.

use crate::harness::wait_until;
use crate::smtp_client::{message, submit};
use crate::world::{MX1, World, received};

/// The relay's log lines containing `needle`.
fn lines_with(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn log_lines_are_plain_text_and_name_the_message_and_the_relay() {
    let world = World::start().await;
    let relay = world.relay().await;
    submit(
        relay.smtp,
        "app@sender.test",
        &["user@example.test"],
        &message("app@sender.test", "user@example.test", "log-lines"),
    )
    .await;
    received(&world.mx1, 1).await;
    let expected_relay = format!("relay=mx1.example.test[{MX1}]:{}", world.smtp_port());
    let log = wait_until("delivery attempt logged", async || {
        let log = relay.log_text();
        (!lines_with(&log, "delivery attempt").is_empty()).then_some(log)
    })
    .await;

    assert!(
        !log.contains('\u{1b}'),
        "no ANSI escape codes when stderr is a pipe:\n{log}"
    );
    for debug_form in ["Some(", "None", "=?"] {
        assert!(
            !log.contains(debug_form),
            "no Rust debug formatting ({debug_form}):\n{log}"
        );
    }
    let accepted = lines_with(&log, "smtp message accepted");
    assert_eq!(accepted.len(), 1, "{log}");
    assert!(
        accepted[0].contains("message_id=<log-lines@client.postrider.test>"),
        "the acceptance line carries the Message-ID header: {}",
        accepted[0]
    );
    let attempts = lines_with(&log, "delivery attempt");
    assert!(
        attempts[0].contains(&expected_relay),
        "the attempt names host and address ({expected_relay}): {}",
        attempts[0]
    );
}
