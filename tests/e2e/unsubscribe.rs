//! RFC 8058 one-click unsubscribe through the binary: per-recipient signed links covered by
//! DKIM, a confirm page that changes nothing, the one-click POST that suppresses the recipient
//! for the sender's domain only, and forged links refused.

use serde_json::json;

use crate::harness::{TestRelay, http_request, run_postrider, wait_until};
use crate::world::{World, received};

const BASE_URL: &str = "https://mail.sender.test";

/// The value of the first header field `name` of `data`, unfolded.
fn header(data: &str, name: &str) -> Option<String> {
    let head = data.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n").peekable();
    while let Some(line) = lines.next() {
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        if field.eq_ignore_ascii_case(name) {
            let mut value = value.trim().to_owned();
            while let Some(next) = lines.peek().filter(|l| l.starts_with([' ', '\t'])) {
                value.push(' ');
                value.push_str(next.trim());
                lines.next();
            }
            return Some(value);
        }
    }
    None
}

/// The signed header names (`h=`) of a DKIM-Signature value, lowercased.
fn signed_names(signature: &str) -> Vec<String> {
    signature
        .split(';')
        .filter_map(|tag| tag.trim().strip_prefix("h="))
        .flat_map(|h| h.split(':').map(|n| n.trim().to_ascii_lowercase()))
        .collect()
}

async fn form_post(relay: &TestRelay, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_request(
        relay.http,
        "POST",
        path,
        Some(body.as_bytes()),
        &[("Content-Type", "application/x-www-form-urlencoded")],
    )
    .await
    .expect("POST");
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn one_click_unsubscribe_links_are_signed_per_recipient_and_scope_the_suppression() {
    let world = World::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("sender.test.pem");
    let keygen = run_postrider([
        "dkim",
        "keygen",
        "--domain",
        "sender.test",
        "--selector",
        "s1",
        "--algorithm",
        "ed25519-sha256",
        "--out",
        key.to_str().unwrap(),
    ])
    .await;
    assert_eq!(keygen.code, Some(0), "{}", keygen.stderr);
    let config = format!(
        "{}\n[[dkim.keys]]\ndomain = \"sender.test\"\nselector = \"s1\"\nkey_file = {:?}\nalgorithm = \"ed25519-sha256\"\n\n[unsubscribe]\nbase_url = \"{BASE_URL}\"\nsecret = \"0123456789abcdef0123456789abcdef-e2e\"\n",
        world.config(&["1s"], "1h"),
        key.display().to_string()
    );
    let relay = TestRelay::start(&config).await;

    let (status, accepted) = relay
        .post_json(
            "/v1/messages",
            &json!({
                "from": {"email": "news@sender.test"},
                "to": [{"email": "a@example.test"}, {"email": "b@example.test"}],
                "subject": "newsletter",
                "text": "hello",
                "unsubscribe": true,
            }),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();

    // One transaction per recipient, each with its own link, both fields signed by DKIM.
    let got = received(&world.mx1, 2).await;
    let mut token_of = std::collections::BTreeMap::new();
    for m in &got {
        assert_eq!(m.rcpt_to.len(), 1, "one recipient per transaction");
        let data = String::from_utf8_lossy(&m.data).into_owned();
        let link = header(&data, "List-Unsubscribe").unwrap_or_else(|| panic!("{data}"));
        let token = link
            .strip_prefix(&format!("<{BASE_URL}/unsubscribe/"))
            .and_then(|t| t.strip_suffix('>'))
            .unwrap_or_else(|| panic!("{link}"))
            .to_owned();
        assert!(!token.contains('@') && token.len() == 32, "{token}");
        assert_eq!(
            header(&data, "List-Unsubscribe-Post").as_deref(),
            Some("List-Unsubscribe=One-Click")
        );
        let signature = header(&data, "DKIM-Signature").unwrap_or_else(|| panic!("{data}"));
        let names = signed_names(&signature);
        assert!(
            names.contains(&"list-unsubscribe".to_owned())
                && names.contains(&"list-unsubscribe-post".to_owned()),
            "{signature}"
        );
        token_of.insert(m.rcpt_to[0].clone(), token);
    }
    assert_eq!(token_of.len(), 2);
    assert_ne!(token_of["a@example.test"], token_of["b@example.test"]);
    let path = format!("/unsubscribe/{}", token_of["b@example.test"]);

    // GET shows a confirm form and unsubscribes nobody.
    let (status, page) = http_request(relay.http, "GET", &path, None, &[])
        .await
        .expect("GET");
    let page = String::from_utf8_lossy(&page);
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("<form method=\"post\"") && page.contains("One-Click"),
        "{page}"
    );
    let (_, listed) = relay.get_json("/v1/suppressions").await;
    assert_eq!(listed["suppressions"], json!([]), "{listed}");

    // A POST without the RFC 8058 body changes nothing.
    let (status, _) = form_post(&relay, &path, "confirm=yes").await;
    assert_eq!(status, 400);

    // The one-click POST unsubscribes, once.
    let (status, body) = form_post(&relay, &path, "List-Unsubscribe=One-Click").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("unsubscribed")),
        "{body}"
    );
    let (status, body) = form_post(&relay, &path, "List-Unsubscribe=One-Click").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("already_unsubscribed")),
        "{body}"
    );
    let (_, listed) = relay.get_json("/v1/suppressions").await;
    let entries = listed["suppressions"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{listed}");
    assert_eq!(entries[0]["address"], "b@example.test");
    assert_eq!(entries[0]["scope"], "sender.test");
    assert_eq!(entries[0]["reason"], "unsubscribed");
    let (_, events) = relay.get_json("/v1/events?type=unsubscribed").await;
    let events = events["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["id"], id.as_str());
    assert_eq!(events[0]["recipient"], "b@example.test");

    // The same sender's next message is suppressed for b; another sender's is delivered.
    let send = |from: &'static str| json!({"from": {"email": from}, "to": [{"email": "b@example.test"}], "subject": from, "text": "again"});
    let (status, same) = relay
        .post_json("/v1/messages", &send("news@sender.test"))
        .await;
    assert_eq!(status, 202, "{same}");
    let same_id = same["id"].as_str().unwrap().to_owned();
    let state = wait_until("the same sender's message is finished", async || {
        let (_, m) = relay.get_json(&format!("/v1/messages/{same_id}")).await;
        let state = m["recipients"][0]["state"].as_str()?.to_owned();
        (state != "queued").then_some(state)
    })
    .await;
    assert_eq!(state, "suppressed");
    let (status, other) = relay
        .post_json("/v1/messages", &send("shop@another.test"))
        .await;
    assert_eq!(status, 202, "{other}");
    let got = received(&world.mx1, 3).await;
    assert_eq!(got.len(), 3, "only the other sender's message arrived");
    assert_eq!(got[2].mail_from, "shop@another.test");
    assert_eq!(got[2].rcpt_to, ["b@example.test"]);

    // Forged or altered links are refused, on both methods.
    let token = &token_of["a@example.test"];
    let mut forged = token.clone().into_bytes();
    forged[5] = if forged[5] == b'a' { b'b' } else { b'a' };
    let forged = format!("/unsubscribe/{}", String::from_utf8(forged).unwrap());
    let (status, body) = form_post(&relay, &forged, "List-Unsubscribe=One-Click").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].is_object(), "{body}");
    let (status, _) = http_request(relay.http, "GET", &forged, None, &[])
        .await
        .expect("GET");
    assert_eq!(status, 404);
    let (_, listed) = relay.get_json("/v1/suppressions").await;
    assert_eq!(listed["suppressions"].as_array().unwrap().len(), 1);
}

/// A message asking for links is refused while `[unsubscribe]` is not configured.
#[tokio::test]
async fn unsubscribe_without_configuration_is_refused() {
    let relay = TestRelay::start("").await;
    let (status, body) = relay
        .post_json(
            "/v1/messages",
            &json!({
                "from": {"email": "news@sender.test"},
                "to": [{"email": "a@example.test"}],
                "subject": "s",
                "text": "t",
                "unsubscribe": true,
            }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["code"], "unsubscribe_not_configured",
        "{body}"
    );
}
