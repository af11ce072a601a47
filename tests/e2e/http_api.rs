//! Submission over the REST API, status queries and error answers.

use serde_json::json;

use crate::harness::{http_request, wait_until};
use crate::world::{World, received};

#[tokio::test]
async fn structured_message_is_rendered_queued_and_delivered() {
    let world = World::start().await;
    let relay = world.relay().await;
    let (status, body) = relay
        .post_json(
            "/v1/messages",
            &json!({
                "from": {"email": "app@sender.test", "name": "The App"},
                "to": ["user@example.test"],
                "bcc": ["hidden@example.test"],
                "subject": "Your receipt",
                "text": "Thanks for your order.",
                "html": "<p>Thanks for your order.</p>",
                "attachments": [{"filename": "r.txt", "content_type": "text/plain", "content": "cmVjZWlwdA=="}]
            }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();

    let got = received(&world.mx1, 1).await;
    let mut rcpts = got[0].rcpt_to.clone();
    rcpts.sort();
    assert_eq!(rcpts, vec!["hidden@example.test", "user@example.test"]);
    assert_eq!(got[0].mail_from, "app@sender.test");
    let data = String::from_utf8_lossy(&got[0].data);
    assert!(data.starts_with("Received: "), "{data}");
    assert!(data.contains("Subject: Your receipt"), "{data}");
    assert!(data.contains("Message-ID: <"), "{data}");
    assert!(data.contains("Date: "), "{data}");
    assert!(
        !data.to_ascii_lowercase().contains("\nbcc:"),
        "Bcc never appears in headers:\n{data}"
    );
    assert!(data.contains("r.txt"), "{data}");

    let body = wait_until("delivered", async || {
        let (_, b) = relay.get_json(&format!("/v1/messages/{id}")).await;
        (b["state"] == "delivered").then_some(b)
    })
    .await;
    assert_eq!(body["recipients"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        relay
            .metric("postrider_messages_accepted_total{source=\"http\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn raw_message_with_envelope_is_delivered_unchanged_below_received() {
    let world = World::start().await;
    let relay = world.relay().await;
    let raw = "From: app@sender.test\r\nTo: user@example.test\r\nSubject: raw\r\nMessage-ID: <raw-1@sender.test>\r\nDate: Mon, 23 Nov 2026 05:00:00 +0000\r\n\r\nraw body\r\n";
    let (status, body) = relay
        .post_json("/v1/messages", &json!({"envelope": {"from": "app@sender.test", "to": ["user@example.test"]}, "raw": raw}))
        .await;
    assert_eq!(status, 202, "{body}");
    let got = received(&world.mx1, 1).await;
    let data = String::from_utf8_lossy(&got[0].data);
    assert!(data.starts_with("Received: "), "{data}");
    assert!(data.ends_with(raw), "{data:?}");
}

#[tokio::test]
async fn bad_requests_get_json_errors_and_queue_nothing() {
    let world = World::start().await;
    let relay = world.relay().await;
    let cases = [
        json!({"to": ["user@example.test"], "subject": "x", "text": "y"}),
        json!({"from": "app@sender.test", "to": [], "subject": "x", "text": "y"}),
        json!({"from": "app@sender.test", "to": ["not an address"], "subject": "x", "text": "y"}),
        json!({"from": "app@sender.test", "to": ["user@example.test"], "subject": "x\r\nBcc: victim@example.test", "text": "y"}),
        json!({"from": "app@sender.test", "to": ["user@example.test"], "subject": "x", "text": "y", "headers": {"X-Evil": "a\nb"}}),
        json!({"envelope": {"from": "app@sender.test", "to": ["user@example.test"]}}),
        json!({"from": 42, "to": ["user@example.test"]}),
    ];
    for case in cases {
        let (status, body) = relay.post_json("/v1/messages", &case).await;
        assert!((400..500).contains(&status), "{case} → {status} {body}");
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{case} → {body}"
        );
    }
    let (status, body) = http_request(
        relay.http,
        "POST",
        "/v1/messages",
        Some(b"{not json"),
        &[("Content-Type", "application/json")],
    )
    .await
    .expect("post");
    assert_eq!(status, 400);
    let body: serde_json::Value = serde_json::from_slice(&body).expect("json error body");
    assert!(body["error"]["code"].is_string());

    let (status, body) = relay.get_json("/v1/messages/00000000000fffff").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]["code"].is_string());
    let (status, _) = relay.get_json("/v1/messages/nonsense").await;
    assert_eq!(status, 400);
    let (status, body) = relay.get_json("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    assert_eq!(
        relay
            .metric("postrider_messages_accepted_total{source=\"http\"}")
            .await,
        Some(0.0)
    );
}
