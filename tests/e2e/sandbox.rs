//! Sandbox capture through the binary: `delivery.mode = "capture"` and sandbox API keys. Captured
//! messages are stored, shown, evented and webhooked like real ones but never reach a peer or
//! the DNS; reserved addresses on `sandbox.invalid` simulate bounces, deferrals and complaints.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::features::webhook_receiver;
use crate::harness::{TestRelay, http_request, wait_until};
use crate::smtp_client::{message, submit};
use crate::world::{World, stays_at};

/// `GET` with an optional bearer key, returning status and JSON.
async fn get(http: SocketAddr, path: &str, key: Option<&str>) -> (u16, Value) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let (status, body) = http_request(http, "GET", path, None, &headers)
        .await
        .expect("http GET");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// `POST /v1/messages` with an optional bearer key; returns the new message id.
async fn send(http: SocketAddr, body: &Value, key: Option<&str>) -> String {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = auth.as_deref() {
        headers.push(("Authorization", a));
    }
    let raw = serde_json::to_vec(body).expect("json");
    let (status, answer) = http_request(http, "POST", "/v1/messages", Some(&raw), &headers)
        .await
        .expect("http POST");
    let answer: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    assert_eq!(status, 202, "{answer}");
    answer["id"].as_str().expect("id").to_owned()
}

/// Waits until `pick` finds what it looks for in the message's status.
async fn wait_for_message<T>(
    http: SocketAddr,
    id: &str,
    key: Option<&str>,
    what: &str,
    pick: impl Fn(&Value) -> Option<T>,
) -> T {
    wait_until(what, async || {
        let (status, m) = get(http, &format!("/v1/messages/{id}"), key).await;
        if status == 200 { pick(&m) } else { None }
    })
    .await
}

/// The recipient entry of `address` in a message status.
fn recipient<'a>(m: &'a Value, address: &str) -> &'a Value {
    m["recipients"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["address"] == address))
        .unwrap_or(&Value::Null)
}

/// Every event of the log (first page is enough for these tests).
async fn events(http: SocketAddr, key: Option<&str>) -> Vec<Value> {
    let (status, page) = get(http, "/v1/events?limit=1000", key).await;
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().cloned().unwrap_or_default()
}

/// The world's relay configuration with `delivery.mode = "capture"`.
fn capture_config(world: &World, extra: &str) -> String {
    world
        .config(&["1s"], "1h")
        .replacen("[delivery]\n", "[delivery]\nmode = \"capture\"\n", 1)
        + extra
}

#[tokio::test]
async fn capture_mode_simulates_every_outcome_and_nothing_leaves() {
    let world = World::start().await;
    let (hook, seen) = webhook_receiver().await;
    let relay = TestRelay::start(&capture_config(
        &world,
        &format!(
            "\n[[webhooks]]\nurl = \"http://{hook}/hook\"\nsecret = \"0123456789abcdef-secret\"\nevents = [\"delivered\", \"bounced\", \"deferred\", \"complained\"]\n"
        ),
    ))
    .await;
    let http = relay.http;
    let id = send(
        http,
        &json!({"from": "app@sender.test",
                "to": ["user@example.test", "bounce@sandbox.invalid", "defer+1@sandbox.invalid", "complaint@sandbox.invalid"],
                "subject": "captured", "text": "hi"}),
        None,
    )
    .await;
    let smtp_id = submit(
        relay.smtp,
        "app@sender.test",
        &["other@example.test"],
        &message(
            "app@sender.test",
            "other@example.test",
            "captured over smtp",
        ),
    )
    .await;

    // Delivered, bounced and complained at once; the deferral is retried (1 s intervals).
    let m = wait_for_message(http, &id, None, "simulated outcomes", |m| {
        (recipient(m, "defer+1@sandbox.invalid")["attempts"]
            .as_u64()
            .is_some_and(|n| n >= 2)
            && recipient(m, "user@example.test")["state"] == "delivered")
            .then(|| m.clone())
    })
    .await;
    assert_eq!(m["sandbox"], true, "{m}");
    let user = recipient(&m, "user@example.test");
    assert_eq!(user["mx_host"], "sandbox", "{m}");
    assert_eq!(user["last_reply"]["code"], 250, "{m}");
    assert!(
        user["last_reply"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("captured, not sent")),
        "{m}"
    );
    let bounce = recipient(&m, "bounce@sandbox.invalid");
    assert_eq!(bounce["state"], "bounced", "{m}");
    assert_eq!(bounce["last_reply"]["code"], 550, "{m}");
    assert_eq!(bounce["last_reply"]["enhanced"], "5.1.1", "{m}");
    let defer = recipient(&m, "defer+1@sandbox.invalid");
    assert_eq!(defer["state"], "deferred", "{m}");
    assert_eq!(defer["last_reply"]["code"], 451, "{m}");
    assert_eq!(
        recipient(&m, "complaint@sandbox.invalid")["state"],
        "delivered",
        "{m}"
    );
    let over_smtp = wait_for_message(http, &smtp_id, None, "smtp message captured", |m| {
        (m["state"] == "delivered").then(|| m.clone())
    })
    .await;
    assert_eq!(over_smtp["sandbox"], true, "{over_smtp}");
    assert_eq!(
        recipient(&over_smtp, "other@example.test")["mx_host"],
        "sandbox"
    );

    // The events: complained after delivered for the complaining recipient; the bounce DSN is
    // a message of its own, captured too.
    let log = events(http, None).await;
    let of = |kind: &str, rcpt: &str| {
        log.iter()
            .any(|e| e["id"] == id.as_str() && e["type"] == kind && e["recipient"] == rcpt)
    };
    assert!(of("delivered", "complaint@sandbox.invalid"), "{log:?}");
    assert!(of("complained", "complaint@sandbox.invalid"), "{log:?}");
    assert!(of("bounced", "bounce@sandbox.invalid"), "{log:?}");
    assert!(of("deferred", "defer+1@sandbox.invalid"), "{log:?}");
    let dsn_id = log
        .iter()
        .find(|e| e["type"] == "accepted" && e["metadata"]["dsn_for"] == id.as_str())
        .and_then(|e| e["id"].as_str())
        .expect("a bounce notice for the sender")
        .to_owned();
    let dsn = wait_for_message(http, &dsn_id, None, "bounce notice captured", |m| {
        (m["state"] == "delivered").then(|| m.clone())
    })
    .await;
    assert_eq!(dsn["sandbox"], true, "{dsn}");
    assert_eq!(dsn["source"], "dsn", "{dsn}");
    assert_eq!(recipient(&dsn, "app@sender.test")["mx_host"], "sandbox");

    // The hard bounce is suppressed like a real one.
    let (status, s) = get(http, "/v1/suppressions/bounce@sandbox.invalid", None).await;
    assert_eq!(status, 200, "{s}");

    // Webhooks carry the simulated events, the complaint included.
    let posts = wait_until("complained webhook", async || {
        let s = seen.lock().expect("seen").clone();
        s.iter()
            .any(|(_, v)| v["type"] == "complained" && v["id"] == id.as_str())
            .then_some(s)
    })
    .await;
    assert!(
        posts
            .iter()
            .any(|(_, v)| v["type"] == "bounced" && v["recipient"] == "bounce@sandbox.invalid"),
        "{posts:?}"
    );

    // Nothing reached a peer, and nothing was even looked up.
    for sink in [&world.mx1, &world.mx2, &world.sender_mx] {
        stays_at(sink, 0, Duration::from_millis(500)).await;
    }
    assert_eq!(world.dns.query_count(), 0, "{:?}", world.dns.queries());
    for (outcome, at_least) in [
        ("delivered", 3.0),
        ("bounced", 1.0),
        ("deferred", 2.0),
        ("complained", 1.0),
    ] {
        let n = relay
            .metric(&format!(
                "postrider_sandbox_captured_total{{outcome=\"{outcome}\"}}"
            ))
            .await
            .unwrap_or(0.0);
        assert!(n >= at_least, "{outcome}: {n}");
    }
    assert_eq!(
        relay
            .metric("postrider_delivery_attempts_total{result=\"delivered\"}")
            .await,
        Some(0.0),
        "captured mail is not counted as delivered for real"
    );
}

#[tokio::test]
async fn a_sandbox_key_captures_while_another_key_delivers_even_across_a_crash() {
    let world = World::start().await;
    let live = "pr_live_key_for_the_sandbox_end_to_end_test";
    let test = "pr_test_key_for_the_sandbox_end_to_end_test";
    let keys = format!(
        "\n[[http.api_keys]]\nname = \"live\"\nkey_hash = \"{}\"\nscopes = [\"send\", \"read\"]\n\n[[http.api_keys]]\nname = \"test\"\nkey_hash = \"{}\"\nscopes = [\"send\", \"read\"]\nsandbox = true\n",
        postrider_api::hash_api_key(live),
        postrider_api::hash_api_key(test),
    );
    let mut relay = TestRelay::start(&format!("{}{keys}", world.config(&["1s"], "1h"))).await;
    assert_eq!(
        relay
            .metric("postrider_sandbox_captured_total{outcome=\"delivered\"}")
            .await,
        Some(0.0),
        "the counter exists from the start"
    );

    // A sandbox message scheduled a few seconds ahead: the relay crashes before its attempt.
    let send_at = postrider_core::Timestamp::from_millis(
        postrider_core::clock::Clock::now(&postrider_core::clock::SystemClock).as_millis() + 3000,
    );
    let captured = send(
        relay.http,
        &json!({"from": "app@sender.test", "to": ["user@example.test"], "subject": "test key",
                "text": "hi", "send_at": send_at.to_rfc3339()}),
        Some(test),
    )
    .await;
    let (_, m) = get(relay.http, &format!("/v1/messages/{captured}"), Some(test)).await;
    assert_eq!(m["state"], "scheduled", "{m}");
    assert_eq!(m["sandbox"], true, "{m}");
    relay.stop_with("KILL").await;
    relay.restart().await;

    let real = send(
        relay.http,
        &json!({"from": "app@sender.test", "to": ["user@example.test"], "subject": "live key", "text": "hi"}),
        Some(live),
    )
    .await;
    let m = wait_for_message(
        relay.http,
        &captured,
        Some(test),
        "captured after the crash",
        |m| (m["state"] == "delivered").then(|| m.clone()),
    )
    .await;
    assert_eq!(m["sandbox"], true, "{m}");
    assert_eq!(recipient(&m, "user@example.test")["mx_host"], "sandbox");
    let m = wait_for_message(relay.http, &real, Some(live), "delivered for real", |m| {
        (m["state"] == "delivered").then(|| m.clone())
    })
    .await;
    assert!(m.get("sandbox").is_none(), "{m}");
    assert_eq!(
        recipient(&m, "user@example.test")["mx_host"],
        "mx1.example.test"
    );

    // Only the live message reached the MX.
    stays_at(&world.mx1, 1, Duration::from_millis(1500)).await;
    assert_eq!(world.delivered_subjects(), vec!["live key".to_owned()]);
    assert_eq!(
        relay
            .metric("postrider_sandbox_captured_total{outcome=\"delivered\"}")
            .await,
        Some(1.0)
    );
}
