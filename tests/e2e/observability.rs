//! What operators read: the relay's log lines and its `/metrics` page.

use crate::harness::{TestRelay, wait_until};
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
    let id = submit(
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
    assert!(
        accepted[0].contains(&format!(" id={id} ")),
        "the queue id is named id: {}",
        accepted[0]
    );
    let attempts = lines_with(&log, "delivery attempt");
    assert!(
        attempts[0].contains(&expected_relay),
        "the attempt names host and address ({expected_relay}): {}",
        attempts[0]
    );
    assert!(
        attempts[0].contains(&format!(" id={id} ")) && !attempts[0].contains("message_id="),
        "the queue id is named id, never message_id: {}",
        attempts[0]
    );
}

#[tokio::test]
async fn a_fresh_relay_exports_process_series_and_zero_counters() {
    let relay = TestRelay::start("").await;
    for series in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            relay.metric(series).await.is_some(),
            "{series} missing from /metrics"
        );
    }
    // One known label of every labelled counter, before anything happened.
    for series in [
        "postrider_messages_accepted_total{source=\"http\"}",
        "postrider_delivery_attempts_total{result=\"bounced\"}",
        "postrider_delivery_results_total{result=\"deferred\",status_class=\"4.x\"}",
        "postrider_delivery_status_codes_total{code=\"other\"}",
        "postrider_delivery_by_domain_total{domain=\"other\",result=\"delivered\"}",
        "postrider_smtp_rejections_total{reason=\"relay_denied\"}",
        "postrider_smtp_rejections_total{reason=\"too_big\"}",
        "postrider_smtp_transactions_total{result=\"rejected\"}",
        "postrider_smtp_auth_failures_total{reason=\"invalid_credentials\"}",
        "postrider_smtp_auth_lockouts_total{scope=\"user\"}",
        "postrider_dns_lookups_total{result=\"servfail\"}",
        "postrider_outbound_tls_total{result=\"plaintext\"}",
        "postrider_webhook_deliveries_total{result=\"failed\"}",
        "postrider_http_requests_total{route=\"/v1/messages\",status=\"202\"}",
        "postrider_http_request_duration_seconds_count{route=\"/v1/messages\",status=\"202\"}",
    ] {
        assert_eq!(relay.metric(series).await, Some(0.0), "{series}");
    }
    // Requests are timed by route template, not by raw path.
    let (status, _) = relay.get_json("/v1/messages/0000000000000000").await;
    assert_eq!(status, 404);
    let timed = wait_until("request timed", async || {
        relay
            .metric(
                "postrider_http_request_duration_seconds_count{route=\"/v1/messages/{id}\",status=\"404\"}",
            )
            .await
    })
    .await;
    assert_eq!(timed, 1.0);
}

#[tokio::test]
async fn a_repeat_destination_is_resolved_once_and_counted_as_cache_hits() {
    let world = World::start().await;
    let relay = world.relay().await;
    for n in 1..=3 {
        let tag = format!("dns-cache-{n}");
        submit(
            relay.smtp,
            "app@sender.test",
            &["user@example.test"],
            &message("app@sender.test", "user@example.test", &tag),
        )
        .await;
        received(&world.mx1, n).await;
    }
    let mx_queries = world
        .dns
        .queries()
        .iter()
        .filter(|q| q.name == "example.test." && q.record_type == postrider_testkit::RecordType::MX)
        .count();
    assert_eq!(mx_queries, 1, "one MX query for three deliveries");
    assert_eq!(
        relay
            .metric("postrider_dns_cache_lookups_total{result=\"miss\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        relay
            .metric("postrider_dns_cache_lookups_total{result=\"hit\"}")
            .await,
        Some(2.0)
    );
}
