//! End-to-end tests of the REST API through `oneshot`, with a real store in a temporary directory.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use base64::Engine as _;
use mail_parser::{MessageParser, MimeHeaders, PartType};
use postrider_api::{ApiKey, ApiSettings, ApiState, RateLimit, Scope, generate_api_key, router};
use postrider_core::{
    Address, Envelope, MessageId, MessageState, NewMessage, RecipientRequest, RecipientState,
    ReversePath, Source, Timestamp,
};
use postrider_metrics::Metrics;
use postrider_store::Store;
use serde_json::{Value, json};
use tower::ServiceExt as _;

const LOOPBACK: &str = "127.0.0.1:40000";

struct Harness {
    app: Router,
    store: Store,
    metrics: Metrics,
    _dir: tempfile::TempDir,
}

fn harness(settings: ApiSettings) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let store = Store::open(&dir.path().join("queue"), metrics.clone()).unwrap();
    let state = ApiState::new(store.clone(), metrics.clone(), settings);
    Harness {
        app: router(state),
        store,
        metrics,
        _dir: dir,
    }
}

fn settings() -> ApiSettings {
    ApiSettings {
        hostname: "relay.test".into(),
        ..ApiSettings::default()
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
    text: String,
}

/// One request: optional JSON body, optional bearer key, optional client address.
struct Call<'a> {
    method: Method,
    uri: &'a str,
    body: Option<Body>,
    key: Option<&'a str>,
    client: Option<&'a str>,
    content_type: Option<&'a str>,
    headers: Vec<(&'a str, &'a str)>,
}

fn call(method: Method, uri: &str) -> Call<'_> {
    Call {
        method,
        uri,
        body: None,
        key: None,
        client: Some(LOOPBACK),
        content_type: None,
        headers: Vec::new(),
    }
}

impl<'a> Call<'a> {
    fn json(mut self, v: &Value) -> Self {
        self.body = Some(Body::from(serde_json::to_vec(v).unwrap()));
        self.content_type = Some("application/json");
        self
    }
    fn raw_body(mut self, bytes: &'static [u8], content_type: Option<&'a str>) -> Self {
        self.body = Some(Body::from(bytes));
        self.content_type = content_type;
        self
    }
    fn key(mut self, key: &'a str) -> Self {
        self.key = Some(key);
        self
    }
    fn header(mut self, name: &'a str, value: &'a str) -> Self {
        self.headers.push((name, value));
        self
    }
    fn client(mut self, client: Option<&'a str>) -> Self {
        self.client = client;
        self
    }
    async fn send(self, app: &Router) -> Reply {
        let mut req = Request::builder().method(self.method).uri(self.uri);
        if let Some(ct) = self.content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        if let Some(k) = self.key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        for (name, value) in self.headers {
            req = req.header(name, value);
        }
        let mut req = req.body(self.body.unwrap_or_else(Body::empty)).unwrap();
        if let Some(c) = self.client {
            req.extensions_mut()
                .insert(ConnectInfo(c.parse::<SocketAddr>().unwrap()));
        }
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
            text,
        }
    }
}

/// Asserts the JSON error shape and returns the error object.
fn assert_error(r: &Reply, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status, status, "body: {}", r.text);
    assert_eq!(
        r.headers.get(header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
    let e = r.json["error"].clone();
    assert_eq!(e["code"], code, "body: {}", r.text);
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "body: {}",
        r.text
    );
    e
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn now_ms() -> u64 {
    postrider_core::clock::Clock::now(&postrider_core::clock::SystemClock).as_millis()
}

fn simple(to: &str) -> Value {
    json!({"from": "sender@example.com", "to": [to], "subject": "Hi", "text": "Hello"})
}

async fn submit(h: &Harness, body: &Value) -> MessageId {
    let r = call(Method::POST, "/v1/messages")
        .json(body)
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    r.json["id"].as_str().unwrap().parse().unwrap()
}

fn header_section(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.split("\r\n\r\n").next().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------------
// Submission
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn structured_message_is_rendered_and_stored() {
    let h = harness(settings());
    let pdf = b"%PDF-1.4 fake pdf bytes \x00\x01\x02".to_vec();
    let png = b"\x89PNG\r\n\x1a\nfake png".to_vec();
    let body = json!({
        "from": {"email": "news@example.com", "name": "Ex Ample News"},
        "to": ["Ann <ann@dest.test>", {"email": "bob@dest.test", "name": "Bob Ünicode"}],
        "cc": "carl@other.test",
        "bcc": ["secret@hidden.test", "ann@dest.test"],
        "reply_to": "replies@example.com",
        "subject": "Grüße from the relay",
        "text": "Plain body\nsecond line\rthird",
        "html": "<p>HTML body <img src=\"cid:logo@ex\"></p>",
        "headers": {"X-Campaign": "spring-2030"},
        "attachments": [
            {"filename": "report.pdf", "content_type": "application/pdf", "content": b64(&pdf)},
            {"filename": "logo.png", "content_type": "image/png", "content": b64(&png), "content_id": "logo@ex"}
        ],
        "tags": ["welcome", "spring"],
        "metadata": {"user_id": "42"}
    });
    let r = call(Method::POST, "/v1/messages")
        .json(&body)
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let id_text = r.json["id"].as_str().unwrap();
    assert_eq!(id_text.len(), 16);
    assert!(id_text.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(r.json["state"], "queued");
    assert_eq!(
        r.headers.get(header::LOCATION).unwrap(),
        &format!("/v1/messages/{id_text}")
    );
    let id: MessageId = id_text.parse().unwrap();

    // The queue record: envelope from the fields, recipients deduplicated, Bcc included.
    let m = h.store.message(id).unwrap().expect("stored");
    assert_eq!(m.sender, ReversePath::parse("news@example.com").unwrap());
    let rcpts: Vec<String> = m
        .recipients
        .iter()
        .map(|r| r.request.address.to_string())
        .collect();
    assert_eq!(
        rcpts,
        [
            "ann@dest.test",
            "bob@dest.test",
            "carl@other.test",
            "secret@hidden.test"
        ]
    );
    assert_eq!(m.source, Source::Http);
    assert_eq!(m.tags, ["welcome", "spring"]);
    assert_eq!(m.metadata.get("user_id").map(String::as_str), Some("42"));

    // The rendered message.
    let raw = h.store.body(id).unwrap().expect("body");
    let headers = header_section(&raw);
    assert!(
        headers.starts_with("Received: from [127.0.0.1] by relay.test (Postrider) with HTTP;"),
        "{headers}"
    );
    assert!(
        !headers.to_ascii_lowercase().contains("\nbcc:"),
        "Bcc header leaked:\n{headers}"
    );
    assert!(
        !String::from_utf8_lossy(&raw).contains("secret@hidden.test"),
        "Bcc address leaked"
    );
    let msg = MessageParser::default().parse(&raw).expect("parses");
    let from = msg.from().unwrap().first().unwrap();
    assert_eq!(from.address(), Some("news@example.com"));
    assert_eq!(from.name(), Some("Ex Ample News"));
    let to: Vec<(Option<&str>, Option<&str>)> = msg
        .to()
        .unwrap()
        .iter()
        .map(|a| (a.name(), a.address()))
        .collect();
    assert_eq!(
        to,
        [
            (Some("Ann"), Some("ann@dest.test")),
            (Some("Bob Ünicode"), Some("bob@dest.test"))
        ]
    );
    assert_eq!(
        msg.cc().unwrap().first().unwrap().address(),
        Some("carl@other.test")
    );
    assert!(msg.bcc().is_none());
    assert_eq!(
        msg.reply_to().unwrap().first().unwrap().address(),
        Some("replies@example.com")
    );
    assert_eq!(msg.subject(), Some("Grüße from the relay"));
    let message_id = msg.message_id().unwrap();
    assert!(message_id.ends_with("@relay.test"), "{message_id}");
    assert_eq!(r.json["message_id"], format!("<{message_id}>"));
    assert!(msg.date().is_some());
    assert!(msg.received().is_some());
    assert_eq!(
        msg.header("X-Campaign").and_then(|v| v.as_text()),
        Some("spring-2030")
    );
    assert_eq!(
        msg.body_text(0).unwrap().replace("\r\n", "\n").trim_end(),
        "Plain body\nsecond line\nthird"
    );
    let everything = String::from_utf8_lossy(&raw).replace("\r\n", "");
    assert!(
        !everything.contains('\n') && !everything.contains('\r'),
        "bare CR or LF in the rendered message"
    );
    assert!(msg.body_html(0).unwrap().contains("HTML body"));

    // Parts: the PDF as an attachment, the PNG inline inside multipart/related with the html.
    let pdf_part = msg
        .attachments()
        .find(|p| p.attachment_name() == Some("report.pdf"))
        .expect("pdf");
    assert_eq!(pdf_part.contents(), &pdf[..]);
    assert_eq!(pdf_part.content_type().unwrap().ctype(), "application");
    let logo = msg
        .parts
        .iter()
        .find(|p| p.content_id() == Some("logo@ex"))
        .expect("inline part");
    assert_eq!(logo.contents(), &png[..]);
    assert_eq!(logo.content_disposition().unwrap().ctype(), "inline");
    assert!(matches!(
        logo.body,
        PartType::Binary(_) | PartType::InlineBinary(_)
    ));
    let related = msg
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|c| c.subtype() == Some("related"))
        })
        .expect("multipart/related");
    let PartType::Multipart(children) = &related.body else {
        panic!("related is multipart")
    };
    let kinds: Vec<String> = children
        .iter()
        .map(|&c| {
            let ct = msg.parts[c as usize].content_type().unwrap();
            format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
        })
        .collect();
    assert_eq!(kinds, ["text/html", "image/png"]);
    let root = msg.root_part().content_type().unwrap();
    assert_eq!((root.ctype(), root.subtype()), ("multipart", Some("mixed")));

    // Counted.
    assert!(
        h.metrics
            .render()
            .contains("postrider_messages_accepted_total{source=\"http\"} 1")
    );
}

#[tokio::test]
async fn status_endpoint_reports_the_message() {
    let h = harness(settings());
    let id = submit(
        &h,
        &json!({"from": "a@example.com", "to": ["x@dest.test", "y@dest.test"], "text": "hi",
        "tags": ["t1"], "metadata": {"k": "v"}}),
    )
    .await;
    let r = call(Method::GET, &format!("/v1/messages/{id}"))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = &r.json;
    assert_eq!(v["id"], id.to_string());
    assert_eq!(v["state"], "queued");
    assert_eq!(v["from"], "a@example.com");
    assert_eq!(v["attempts"], 0);
    assert!(Timestamp::parse_rfc3339(v["created_at"].as_str().unwrap()).is_some());
    assert!(Timestamp::parse_rfc3339(v["next_attempt_at"].as_str().unwrap()).is_some());
    assert_eq!(
        v["size"].as_u64().unwrap(),
        h.store.body(id).unwrap().unwrap().len() as u64
    );
    assert_eq!(v["tags"], json!(["t1"]));
    assert_eq!(v["metadata"], json!({"k": "v"}));
    assert_eq!(
        v["recipients"][1],
        json!({"address": "y@dest.test", "state": "queued", "attempts": 0, "last_reply": null,
               "mx_host": null, "last_attempt_at": null, "tls": null})
    );

    // After an attempt over TLS, each recipient shows the transport it got.
    let lease = h
        .store
        .lease_due(
            Timestamp::from_millis(now_ms() + 1000),
            Duration::from_secs(60),
            1,
        )
        .unwrap()
        .remove(0);
    let mut tried = lease.message.clone();
    tried.attempts = 1;
    for r in &mut tried.recipients {
        r.attempts = 1;
        r.state = RecipientState::Deferred;
        r.mx_host = Some("mx.dest.test".into());
        r.last_reply = Some(postrider_core::SmtpReply::new(
            452,
            "4.2.2 The email account that you tried to reach is over quota.",
        ));
        r.tls = Some(postrider_core::TlsInfo {
            encrypted: true,
            version: Some("TLSv1.3".into()),
            verified: true,
            policy: None,
        });
    }
    let outcome = h
        .store
        .record_attempt(
            &lease,
            postrider_store::AttemptUpdate {
                message: tried,
                next_attempt_at: Some(Timestamp::from_millis(now_ms() + 60_000)),
                notifications: Vec::new(),
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        outcome,
        postrider_store::RecordOutcome::Recorded { .. }
    ));
    let r = call(Method::GET, &format!("/v1/messages/{id}"))
        .send(&h.app)
        .await;
    assert_eq!(
        r.json["recipients"][0]["tls"],
        json!({"encrypted": true, "version": "TLSv1.3", "verified": true})
    );
    assert_eq!(r.json["recipients"][0]["mx_host"], "mx.dest.test");
    // ... and why it failed, in the status and in the event
    assert_eq!(r.json["recipients"][0]["category"], "mailbox_full");
    let r = call(Method::GET, "/v1/events?type=deferred")
        .send(&h.app)
        .await;
    let events = r.json["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{}", r.json);
    assert!(
        events.iter().all(|e| e["category"] == "mailbox_full"),
        "{}",
        r.json
    );

    let r = call(Method::GET, "/v1/messages/00000000deadbeef")
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = call(Method::GET, "/v1/messages/not-an-id")
        .send(&h.app)
        .await;
    let e = assert_error(&r, StatusCode::BAD_REQUEST, "invalid_id");
    assert_eq!(e["field"], "id");
}

/// `/raw`, `/content` and `/attachments/{n}`: the stored octets, the parsed view and a decoded
/// attachment served as a download; 410 once the message finished; scope `read`.
#[tokio::test]
async fn message_content_endpoints() {
    let (h, send_key, read_key, admin_key) = keyed(None);
    let pdf = b"%PDF-1.4 \x00\x01 not really".to_vec();
    let body = json!({
        "from": "Shop <shop@example.com>",
        "to": ["Ann <ann@dest.test>"],
        "cc": "carl@other.test",
        "subject": "Your <order>",
        "text": "Plain text",
        "html": "<p>Rich <b>text</b></p>",
        "attachments": [{"filename": "invoice \"1\".pdf", "content_type": "application/pdf",
                          "content": b64(&pdf)}],
    });
    let r = call(Method::POST, "/v1/messages")
        .json(&body)
        .key(&send_key)
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let id: MessageId = r.json["id"].as_str().unwrap().parse().unwrap();
    let message_id = r.json["message_id"].as_str().unwrap().to_owned();

    // A send-only key may not read content.
    for path in ["raw", "content", "attachments/0"] {
        let r = call(Method::GET, &format!("/v1/messages/{id}/{path}"))
            .key(&send_key)
            .send(&h.app)
            .await;
        assert_error(&r, StatusCode::FORBIDDEN, "insufficient_scope");
    }

    let r = call(Method::GET, &format!("/v1/messages/{id}/raw"))
        .key(&read_key)
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "message/rfc822");
    assert_eq!(r.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert!(
        r.headers[header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .starts_with("attachment;")
    );
    assert_eq!(r.text.as_bytes(), h.store.body(id).unwrap().unwrap());

    let r = call(Method::GET, &format!("/v1/messages/{id}/content"))
        .key(&read_key)
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = &r.json;
    assert_eq!(v["id"], id.to_string());
    assert_eq!(v["subject"], "Your <order>");
    assert_eq!(
        v["from"],
        json!([{"name": "Shop", "email": "shop@example.com"}])
    );
    assert_eq!(v["to"], json!([{"name": "Ann", "email": "ann@dest.test"}]));
    assert_eq!(v["cc"], json!([{"name": null, "email": "carl@other.test"}]));
    assert_eq!(
        format!("<{}>", v["message_id"].as_str().unwrap()),
        message_id
    );
    assert!(Timestamp::parse_rfc3339(v["date"].as_str().unwrap()).is_some());
    assert!(
        v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "Subject" && h["value"] == "Your <order>")
    );
    assert_eq!(v["headers_truncated"], false);
    assert_eq!(v["text"].as_str().unwrap().trim_end(), "Plain text");
    assert_eq!(
        v["html"].as_str().unwrap().trim_end(),
        "<p>Rich <b>text</b></p>"
    );
    assert_eq!(
        v["attachments"],
        json!([{"index": 0, "name": "invoice \"1\".pdf", "content_type": "application/pdf",
                "size": pdf.len(), "content_id": null}])
    );

    let r = call(Method::GET, &format!("/v1/messages/{id}/attachments/0"))
        .key(&read_key)
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/pdf");
    assert_eq!(
        r.headers[header::CONTENT_DISPOSITION],
        "attachment; filename=\"invoice _1_.pdf\"; filename*=UTF-8''invoice%20%221%22.pdf"
    );
    assert!(
        r.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("sandbox")
    );
    assert_eq!(r.text.as_bytes(), pdf.as_slice());
    let r = call(Method::GET, &format!("/v1/messages/{id}/attachments/1"))
        .key(&read_key)
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = call(Method::GET, &format!("/v1/messages/{id}/attachments/x"))
        .key(&read_key)
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_index");
    let r = call(Method::GET, "/v1/messages/00000000deadbeef/content")
        .key(&read_key)
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = call(Method::GET, "/v1/messages/nope/raw")
        .key(&read_key)
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_id");

    // Once finished, the body is gone: 410 with the JSON error shape.
    let r = call(Method::POST, &format!("/v1/queue/{id}/bounce"))
        .key(&admin_key)
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    for path in ["raw", "content", "attachments/0"] {
        let r = call(Method::GET, &format!("/v1/messages/{id}/{path}"))
            .key(&read_key)
            .send(&h.app)
            .await;
        assert_error(&r, StatusCode::GONE, "content_gone");
    }
}

/// A stored message over `max_message_size` is served raw but not parsed (413).
#[tokio::test]
async fn oversized_messages_are_not_parsed() {
    let h = harness(ApiSettings {
        max_message_size: 200,
        ..settings()
    });
    let body = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(400)).into_bytes();
    let envelope = Envelope::new(
        ReversePath::Address(Address::parse("a@example.com").unwrap()),
        vec![RecipientRequest::new(
            Address::parse("b@dest.test").unwrap(),
        )],
    )
    .unwrap();
    let id = h
        .store
        .enqueue(NewMessage::new(
            envelope,
            body.clone(),
            Source::Smtp,
            Timestamp::from_millis(now_ms()),
        ))
        .await
        .unwrap();
    let r = call(Method::GET, &format!("/v1/messages/{id}/content"))
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "message_too_large");
    let r = call(Method::GET, &format!("/v1/messages/{id}/raw"))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text.as_bytes(), body.as_slice());
}

#[tokio::test]
async fn raw_message_is_normalised_and_traced() {
    let h = harness(settings());
    let raw =
        "From: Someone <s@example.com>\nTo: r@dest.test\nSubject: raw one\n\nline one\nline two\n";
    let r = call(Method::POST, "/v1/messages")
        .json(&json!({"envelope": {"from": "", "to": ["r@dest.test", "r2@dest.test"]}, "raw": raw}))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let id: MessageId = r.json["id"].as_str().unwrap().parse().unwrap();
    let m = h.store.message(id).unwrap().unwrap();
    assert!(m.sender.is_null());
    assert_eq!(m.recipients.len(), 2);
    let body = h.store.body(id).unwrap().unwrap();
    let text = String::from_utf8(body.clone()).unwrap();
    assert!(
        text.starts_with("Received: from [127.0.0.1] by relay.test"),
        "{text}"
    );
    assert!(
        !text.replace("\r\n", "").contains('\n'),
        "bare LF left: {text:?}"
    );
    assert!(text.ends_with("line one\r\nline two\r\n"));
    let msg = MessageParser::default().parse(&body).unwrap();
    assert!(msg.message_id().unwrap().ends_with("@relay.test"));
    assert!(msg.date().is_some());
    assert_eq!(msg.subject(), Some("raw one"));

    // An existing Message-ID and Date are kept, not duplicated.
    let raw = "Message-ID: <keep@client.test>\r\nDate: Mon, 1 Jan 2029 00:00:00 +0000\r\nSubject: k\r\n\r\nb\r\n";
    let r = call(Method::POST, "/v1/messages")
        .json(&json!({"envelope": {"from": "s@example.com", "to": ["r@dest.test"]}, "raw": raw}))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.json["message_id"], "<keep@client.test>");
    let id: MessageId = r.json["id"].as_str().unwrap().parse().unwrap();
    let text = String::from_utf8(h.store.body(id).unwrap().unwrap()).unwrap();
    assert_eq!(text.matches("Message-ID:").count(), 1, "{text}");
    assert_eq!(text.matches("Date:").count(), 1, "{text}");
}

#[tokio::test]
async fn send_at_schedules_the_message() {
    let h = harness(settings());
    let at = Timestamp::from_millis((now_ms() / 1000 + 3600) * 1000);
    let mut body = simple("x@dest.test");
    body["send_at"] = json!(at.to_rfc3339());
    let r = call(Method::POST, "/v1/messages")
        .json(&body)
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.json["state"], "scheduled");
    let id: MessageId = r.json["id"].as_str().unwrap().parse().unwrap();
    let m = h.store.message(id).unwrap().unwrap();
    assert_eq!(m.next_attempt_at, Some(at));
    assert_eq!(
        m.state(Timestamp::from_millis(now_ms())),
        MessageState::Scheduled
    );
    let r = call(Method::GET, &format!("/v1/messages/{id}"))
        .send(&h.app)
        .await;
    assert_eq!(r.json["state"], "scheduled");
    assert_eq!(r.json["next_attempt_at"], at.to_rfc3339());
    // Retrying the queue never sends a scheduled message early.
    let r = call(Method::POST, "/v1/queue/retry")
        .json(&json!({"all": true}))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json, json!({"retried": 0, "scheduled_left": 1}));
    let r = call(Method::POST, &format!("/v1/queue/{id}/retry"))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(
        h.store.message(id).unwrap().unwrap().next_attempt_at,
        Some(at)
    );

    for (send_at, code) in [
        (
            Timestamp::from_millis(now_ms() - 60_000).to_rfc3339(),
            "send_at_in_past",
        ),
        (
            Timestamp::from_millis(now_ms() + 73 * 3600 * 1000).to_rfc3339(),
            "send_at_too_far",
        ),
        ("tomorrow".to_owned(), "invalid_send_at"),
    ] {
        let mut body = simple("x@dest.test");
        body["send_at"] = json!(send_at);
        let r = call(Method::POST, "/v1/messages")
            .json(&body)
            .send(&h.app)
            .await;
        let e = assert_error(&r, StatusCode::BAD_REQUEST, code);
        assert_eq!(e["field"], "send_at");
    }
}

// ---------------------------------------------------------------------------------------------
// Validation errors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_submissions_get_json_errors() {
    let h = harness(ApiSettings {
        max_recipients: 3,
        ..settings()
    });
    let base = simple("x@dest.test");
    let with = |patch: Value| {
        let mut b = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                b.as_object_mut().unwrap().remove(k);
            } else {
                b[k] = v.clone();
            }
        }
        b
    };
    let cases: Vec<(Value, &str, Option<&str>)> = vec![
        (with(json!({"to": 5})), "invalid_field", Some("to")),
        (
            with(json!({"subject": ["x"]})),
            "invalid_field",
            Some("subject"),
        ),
        (
            with(json!({"attachements": []})),
            "invalid_field",
            Some("attachements"),
        ),
        (
            with(json!({"to": [{"email": "a@b.test", "nmae": "typo"}]})),
            "invalid_field",
            Some("to[0].nmae"),
        ),
        (with(json!({"from": null})), "missing_from", Some("from")),
        (with(json!({"to": null})), "missing_recipients", Some("to")),
        (
            with(json!({"to": ["ok@dest.test", "not an address"]})),
            "invalid_address",
            Some("to[1]"),
        ),
        (
            with(json!({"from": "@nope"})),
            "invalid_address",
            Some("from"),
        ),
        (
            with(json!({"to": ["a@b.test", "c@b.test", "d@b.test", "e@b.test"]})),
            "too_many_recipients",
            Some("to"),
        ),
        (with(json!({"text": null})), "missing_body", Some("text")),
        (
            with(json!({"attachments": [{"filename": "a.bin", "content": "!!!not base64"}]})),
            "invalid_attachment",
            Some("attachments[0].content"),
        ),
        (
            with(json!({"attachments": [{"content": "aGk="}]})),
            "invalid_attachment",
            Some("attachments[0].filename"),
        ),
        (
            with(
                json!({"attachments": [{"filename": "a", "content": "aGk=", "content_type": "bad type"}]}),
            ),
            "invalid_content_type",
            Some("attachments[0].content_type"),
        ),
        (
            with(json!({"headers": {"Bcc": "x@y.test"}})),
            "reserved_header",
            Some("headers.Bcc"),
        ),
        (
            with(json!({"headers": {"X Bad": "v"}})),
            "invalid_header_name",
            Some("headers.X Bad"),
        ),
        (
            with(json!({"tags": ["a","b","c","d","e","f","g","h","i","j","k"]})),
            "too_many_tags",
            Some("tags"),
        ),
        (
            with(json!({"tags": ["x".repeat(65)]})),
            "invalid_tag",
            Some("tags[0]"),
        ),
        (
            with(json!({"metadata": {"k": "v".repeat(257)}})),
            "invalid_metadata",
            Some("metadata.k"),
        ),
        (json!([1, 2]), "invalid_field", None),
        (
            json!({"raw": "Subject: x\r\n\r\nb", "envelope": {"to": ["a@b.test"]}}),
            "missing_from",
            Some("envelope.from"),
        ),
        (
            json!({"raw": "Subject: x\r\n\r\nb"}),
            "missing_envelope",
            Some("envelope"),
        ),
        (
            json!({"raw": "Subject: x\r\n\r\nb", "envelope": {"from": "s@e.test", "to": []}}),
            "missing_recipients",
            Some("envelope.to"),
        ),
        (
            json!({"raw": "Subject: x\r\n\r\nb", "envelope": {"from": "s@e.test", "to": ["bad"]}}),
            "invalid_address",
            Some("envelope.to[0]"),
        ),
        (
            json!({"raw": "not a header\r\n\r\nb", "envelope": {"from": "s@e.test", "to": ["r@d.test"]}}),
            "invalid_raw_message",
            Some("raw"),
        ),
        (
            json!({"raw": format!("A: b\r\n\r\n{}\r\n", "x".repeat(1200)), "envelope": {"from": "s@e.test", "to": ["r@d.test"]}}),
            "line_too_long",
            Some("raw"),
        ),
    ];
    for (body, code, field) in cases {
        let r = call(Method::POST, "/v1/messages")
            .json(&body)
            .send(&h.app)
            .await;
        let e = assert_error(&r, StatusCode::BAD_REQUEST, code);
        assert_eq!(e["field"].as_str(), field, "case {body}: {}", r.text);
    }
    // Nothing was queued by any of them.
    assert_eq!(h.store.pending_count(), 0);
}

#[tokio::test]
async fn header_injection_is_refused() {
    let h = harness(settings());
    let inj = "hello\r\nBcc: victim@evil.test";
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"from": "a@example.com", "to": ["x@dest.test"], "text": "t", "subject": inj}),
            "subject",
        ),
        (
            json!({"from": "a@example.com", "to": ["x@dest.test"], "text": "t", "subject": "a\nb"}),
            "subject",
        ),
        (
            json!({"from": {"email": "a@example.com", "name": inj}, "to": ["x@dest.test"], "text": "t"}),
            "from.name",
        ),
        (
            json!({"from": "a@example.com", "to": [{"email": "x@dest.test", "name": "X\rY"}], "text": "t"}),
            "to[0].name",
        ),
        (
            json!({"from": "a@example.com\r\nBcc: v@evil.test", "to": ["x@dest.test"], "text": "t"}),
            "from",
        ),
        (
            json!({"from": "a@example.com", "to": ["x@dest.test"], "text": "t", "headers": {"X-A": inj}}),
            "headers.X-A",
        ),
        (
            json!({"from": "a@example.com", "to": ["x@dest.test"], "text": "t", "headers": {"X-A\r\nBcc": "v"}}),
            "headers.X-A\r\nBcc",
        ),
        (
            json!({"from": "a@example.com", "to": ["x@dest.test"], "text": "t",
            "attachments": [{"filename": "a.txt\r\nX-Evil: 1", "content": "aGk="}]}),
            "attachments[0].filename",
        ),
        (
            json!({"from": "a@example.com", "to": ["x@dest.test"], "html": "h",
            "attachments": [{"filename": "a.png", "content": "aGk=", "content_id": "x\r\nX-Evil: 1"}]}),
            "attachments[0].content_id",
        ),
        (
            json!({"envelope": {"from": "s@e.test", "to": ["r@d.test\r\nRCPT TO:<v@evil.test>"]}, "raw": "A: b\r\n\r\n"}),
            "envelope.to[0]",
        ),
    ];
    for (body, field) in cases {
        let r = call(Method::POST, "/v1/messages")
            .json(&body)
            .send(&h.app)
            .await;
        let e = assert_error(&r, StatusCode::BAD_REQUEST, "header_injection");
        assert_eq!(e["field"], field, "{}", r.text);
    }
    assert_eq!(h.store.pending_count(), 0);
}

#[tokio::test]
async fn body_and_message_size_limits() {
    let h = harness(ApiSettings {
        max_body_bytes: 4096,
        max_message_size: 2048,
        ..settings()
    });
    let mut big = simple("x@dest.test");
    big["text"] = json!("a".repeat(5000));
    let r = call(Method::POST, "/v1/messages")
        .json(&big)
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    let mut over = simple("x@dest.test");
    over["attachments"] = json!([{"filename": "f.bin", "content": b64(&[7u8; 2100])}]);
    // 2100 octets decode to more than max_message_size but fit in the body limit.
    let r = call(Method::POST, "/v1/messages")
        .json(&over)
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "message_too_large");

    let r = call(Method::POST, "/v1/messages")
        .raw_body(b"{\"from\": ", Some("application/json"))
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_json");
    let r = call(Method::POST, "/v1/messages")
        .raw_body(b"from=a", Some("application/x-www-form-urlencoded"))
        .send(&h.app)
        .await;
    assert_error(
        &r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
}

// ---------------------------------------------------------------------------------------------
// Requests a web page can make the browser send
// ---------------------------------------------------------------------------------------------

const FORM_LIKE_JSON: &[u8] =
    br#"{"from":"a@example.com","to":"b@dest.test","subject":"s","text":"t"}"#;

/// A cross-site `fetch(..., {mode: "no-cors", body})` or form post needs no preflight as long
/// as the body is not declared JSON: such bodies are refused, whatever they contain.
#[tokio::test]
async fn bodies_must_be_declared_json() {
    let h = harness(settings());
    for content_type in [None, Some("text/plain"), Some("multipart/form-data")] {
        let r = call(Method::POST, "/v1/messages")
            .raw_body(FORM_LIKE_JSON, content_type)
            .send(&h.app)
            .await;
        assert_error(
            &r,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
    }
    // A declared length counts as a body even where the route reads none.
    let r = call(Method::POST, "/v1/queue/0000000000000001/hold")
        .raw_body(b"x=1", Some("text/plain"))
        .header("content-length", "3")
        .send(&h.app)
        .await;
    assert_error(
        &r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let r = call(Method::POST, "/v1/messages")
        .raw_body(FORM_LIKE_JSON, Some("application/json; charset=utf-8"))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let id: MessageId = r.json["id"].as_str().unwrap().parse().unwrap();
    assert!(h.store.message(id).unwrap().is_some());
}

/// serde_json keeps the last of two equal keys; a body that means different things to
/// different readers is refused instead, at any depth.
#[tokio::test]
async fn duplicate_object_keys_are_refused() {
    let h = harness(settings());
    let bodies: [&[u8]; 3] = [
        br#"{"from":"a@example.com","to":"b@dest.test","to":"c@dest.test","subject":"s","text":"t"}"#,
        br#"{"from":"a@example.com","to":[{"email":"b@dest.test","email":"c@dest.test"}],"subject":"s","text":"t"}"#,
        br#"{"envelope":{"from":"a@example.com","to":["b@dest.test"],"from":"c@example.com"},"raw":"From: a@example.com\r\n\r\nx\r\n"}"#,
    ];
    for body in bodies {
        let r = call(Method::POST, "/v1/messages")
            .raw_body(body, Some("application/json"))
            .send(&h.app)
            .await;
        let e = assert_error(&r, StatusCode::BAD_REQUEST, "invalid_json");
        assert!(
            e["message"].as_str().unwrap().contains("duplicate"),
            "{}",
            r.text
        );
    }
    // Equal keys in different objects are fine.
    let r = call(Method::POST, "/v1/messages")
        .raw_body(
            br#"{"from":{"email":"a@example.com"},"to":[{"email":"b@dest.test"}],"subject":"s","text":"t"}"#,
            Some("application/json"),
        )
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
}

/// A DNS-rebinding page makes its own name resolve to 127.0.0.1 and reads the answers: without
/// keys, only loopback host names are served.
#[tokio::test]
async fn keyless_mode_serves_only_loopback_host_names() {
    let h = harness(settings());
    for host in [
        "evil.example",
        "evil.example:8025",
        "localhost.evil.example",
    ] {
        for (method, uri) in [
            (Method::GET, "/v1/queue"),
            (Method::GET, "/metrics"),
            (Method::POST, "/v1/queue/retry"),
        ] {
            let r = call(method, uri).header("host", host).send(&h.app).await;
            assert_error(&r, StatusCode::MISDIRECTED_REQUEST, "misdirected_request");
        }
    }
    for host in [
        "localhost",
        "localhost:8025",
        "127.0.0.1:8025",
        "[::1]:8025",
        "127.0.0.1",
    ] {
        let r = call(Method::GET, "/v1/queue")
            .header("host", host)
            .send(&h.app)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{host}: {}", r.text);
    }
}

/// Browsers mark cross-site requests with `Origin`; without keys they are refused, also those
/// without a body (a no-cors `POST /v1/queue/{id}/bounce`).
#[tokio::test]
async fn keyless_mode_refuses_other_origins() {
    let h = harness(settings());
    let id = submit(&h, &simple("x@dest.test")).await;
    let uri = format!("/v1/queue/{id}/hold");
    for origin in ["https://evil.example", "null"] {
        let r = call(Method::POST, &uri)
            .header("host", "127.0.0.1:8025")
            .header("origin", origin)
            .send(&h.app)
            .await;
        assert_error(&r, StatusCode::FORBIDDEN, "cross_origin");
    }
    assert!(!h.store.message(id).unwrap().unwrap().held);
    let r = call(Method::POST, &uri)
        .header("origin", "http://127.0.0.1:8025")
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

/// With keys the key is the credential: any host name and origin is served to a valid key.
#[tokio::test]
async fn with_keys_any_host_name_is_served() {
    let (h, _send, read, _admin) = keyed(None);
    let r = call(Method::GET, "/v1/events")
        .key(&read)
        .header("host", "relay.example.com")
        .header("origin", "https://console.example.com")
        .client(Some("192.0.2.7:5000"))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = call(Method::GET, "/v1/events")
        .header("host", "relay.example.com")
        .client(Some("192.0.2.7:5000"))
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let h = harness(settings());
    let r = call(Method::GET, "/v2/nothing").send(&h.app).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = call(Method::GET, "/v1/messages").send(&h.app).await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let r = call(Method::PUT, "/healthz").send(&h.app).await;
    assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

// ---------------------------------------------------------------------------------------------
// Batch and store failures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn batch_reports_each_item_in_order() {
    let h = harness(ApiSettings {
        max_batch: 3,
        ..settings()
    });
    let body = json!({"messages": [
        simple("one@dest.test"),
        {"from": "a@example.com", "to": ["broken"], "text": "x"},
        {"envelope": {"from": "", "to": ["three@dest.test"]}, "raw": "Subject: 3\r\n\r\nthree\r\n"},
    ]});
    let r = call(Method::POST, "/v1/messages/batch")
        .json(&body)
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let results = r.json["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    let first: MessageId = results[0]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(results[0]["state"], "queued");
    assert_eq!(results[1]["error"]["code"], "invalid_address");
    assert_eq!(results[1]["error"]["field"], "to[0]");
    assert!(results[1].get("id").is_none());
    let third: MessageId = results[2]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        h.store.message(first).unwrap().unwrap().recipients[0]
            .request
            .address
            .to_string(),
        "one@dest.test"
    );
    assert_eq!(
        h.store.message(third).unwrap().unwrap().recipients[0]
            .request
            .address
            .to_string(),
        "three@dest.test"
    );
    assert_eq!(h.store.pending_count(), 2);

    let four = json!({"messages": [simple("a@d.test"), simple("b@d.test"), simple("c@d.test"), simple("e@d.test")]});
    let r = call(Method::POST, "/v1/messages/batch")
        .json(&four)
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "batch_too_large");
    let r = call(Method::POST, "/v1/messages/batch")
        .json(&json!({"messages": []}))
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "empty_batch");
    let r = call(Method::POST, "/v1/messages/batch")
        .json(&json!({"msgs": []}))
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_field");
}

#[tokio::test]
async fn store_failure_is_503_and_nothing_is_acknowledged() {
    let h = harness(settings());
    h.store.set_fail_writes(true);
    let r = call(Method::POST, "/v1/messages")
        .json(&simple("x@dest.test"))
        .send(&h.app)
        .await;
    let e = assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    assert!(
        !e["message"].as_str().unwrap().contains("injected"),
        "internal error leaked: {e}"
    );
    assert!(r.headers.get(header::RETRY_AFTER).is_some());
    let r = call(Method::POST, "/v1/messages/batch")
        .json(&json!({"messages": [simple("x@dest.test")]}))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["results"][0]["error"]["code"], "store_unavailable");
    assert!(
        h.metrics
            .render()
            .contains("postrider_messages_accepted_total{source=\"http\"} 0")
    );
    h.store.set_fail_writes(false);
    assert_eq!(h.store.pending_count(), 0);
    submit(&h, &simple("x@dest.test")).await;
}

#[tokio::test]
async fn readiness_follows_the_store() {
    let h = harness(settings());
    let ready = |r: &Reply| {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json, json!({"status": "ready"}));
    };
    ready(&call(Method::GET, "/readyz").send(&h.app).await);

    for (fail, mentions) in [
        (Store::set_fail_writes as fn(&Store, bool), "disabled"),
        (Store::set_fail_syncs, "sync"),
    ] {
        fail(&h.store, true);
        let r = call(Method::GET, "/readyz").send(&h.app).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
        assert_eq!(
            r.headers.get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
        assert_eq!(r.json["status"], "unavailable", "{}", r.text);
        let reason = r.json["reason"].as_str().unwrap_or_default().to_owned();
        assert!(reason.contains(mentions), "{reason}");
        // Liveness stays 200 and names the same reason.
        let r = call(Method::GET, "/healthz").send(&h.app).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json, json!({"status": "ok", "store": reason}));
        fail(&h.store, false);
        ready(&call(Method::GET, "/readyz").send(&h.app).await);
    }
    assert!(
        h.metrics
            .render()
            .contains("postrider_http_requests_total{route=\"/readyz\",status=\"503\"} 2")
    );
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

fn keyed(rate_limit: Option<RateLimit>) -> (Harness, String, String, String) {
    keyed_with(ApiSettings {
        rate_limit,
        ..settings()
    })
}

/// A harness with three keys (send, read, admin) added to `base`; returns the keys in clear.
fn keyed_with(base: ApiSettings) -> (Harness, String, String, String) {
    let (send_key, send_hash) = generate_api_key();
    let (read_key, read_hash) = generate_api_key();
    let (admin_key, admin_hash) = generate_api_key();
    let h = harness(ApiSettings {
        api_keys: vec![
            ApiKey {
                name: "app".into(),
                key_hash: send_hash,
                scopes: vec![Scope::Send],
                sandbox: false,
                unsubscribe: false,
            },
            ApiKey {
                name: "dash".into(),
                key_hash: read_hash,
                scopes: vec![Scope::Read],
                sandbox: false,
                unsubscribe: false,
            },
            ApiKey {
                name: "ops".into(),
                key_hash: admin_hash,
                scopes: vec![Scope::Admin],
                sandbox: false,
                unsubscribe: false,
            },
        ],
        ..base
    });
    (h, send_key, read_key, admin_key)
}

#[tokio::test]
async fn api_keys_and_scopes() {
    let (h, send_key, read_key, admin_key) = keyed(None);
    // No key, a wrong key, and a malformed header: 401 with a Bearer challenge.
    let remote = Some("203.0.113.9:5000");
    let r = call(Method::POST, "/v1/messages")
        .json(&simple("x@d.test"))
        .client(remote)
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(
        r.headers
            .get(header::WWW_AUTHENTICATE)
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let r = call(Method::POST, "/v1/messages")
        .json(&simple("x@d.test"))
        .key("pr_wrong")
        .client(remote)
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    // Keys work from anywhere once configured; loopback gets no free pass either.
    let r = call(Method::POST, "/v1/messages")
        .json(&simple("x@d.test"))
        .client(None)
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    let r = call(Method::POST, "/v1/messages")
        .json(&simple("x@d.test"))
        .key(&send_key)
        .client(remote)
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let id = r.json["id"].as_str().unwrap().to_owned();
    assert!(
        String::from_utf8(h.store.body(id.parse().unwrap()).unwrap().unwrap())
            .unwrap()
            .starts_with("Received: from [203.0.113.9]")
    );
    // Wrong scope: 403.
    let r = call(Method::POST, "/v1/messages")
        .json(&simple("x@d.test"))
        .key(&read_key)
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "insufficient_scope");
    let r = call(Method::GET, &format!("/v1/messages/{id}"))
        .key(&send_key)
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "insufficient_scope");
    let r = call(Method::GET, &format!("/v1/messages/{id}"))
        .key(&read_key)
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = call(Method::GET, "/v1/queue")
        .key(&read_key)
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "insufficient_scope");
    let r = call(Method::GET, "/v1/queue")
        .key(&admin_key)
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // Health, readiness and metrics are open.
    for path in ["/healthz", "/readyz"] {
        let r = call(Method::GET, path).client(remote).send(&h.app).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
    }
    let r = call(Method::GET, "/metrics")
        .client(remote)
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn without_keys_only_loopback_is_served() {
    let h = harness(settings());
    for client in [Some("198.51.100.7:1234"), Some("[2001:db8::1]:443"), None] {
        let r = call(Method::POST, "/v1/messages")
            .json(&simple("x@d.test"))
            .client(client)
            .send(&h.app)
            .await;
        assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
    }
    for client in ["127.0.0.1:1", "[::1]:1", "[::ffff:127.0.0.1]:1"] {
        let r = call(Method::POST, "/v1/messages")
            .json(&simple("x@d.test"))
            .client(Some(client))
            .send(&h.app)
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{client}: {}", r.text);
    }
    let r = call(Method::GET, "/healthz")
        .client(Some("198.51.100.7:1234"))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let (h, send_key, read_key, _) = keyed(Some(RateLimit {
        per_second: 0.01,
        burst: 2,
    }));
    for _ in 0..2 {
        let r = call(Method::GET, "/v1/messages/0000000000000001")
            .key(&read_key)
            .send(&h.app)
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    let r = call(Method::GET, "/v1/messages/0000000000000001")
        .key(&read_key)
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let wait: u64 = r
        .headers
        .get(header::RETRY_AFTER)
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait >= 1);
    // Another key is not affected.
    let r = call(Method::POST, "/v1/messages")
        .json(&simple("x@d.test"))
        .key(&send_key)
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
}

// ---------------------------------------------------------------------------------------------
// Health, metrics, queue admin
// ---------------------------------------------------------------------------------------------

/// `/metrics` and `/openapi.json` are open by default even with keys; `metrics_auth` makes them
/// need a `read` key, while the health checks stay open for probes.
#[tokio::test]
async fn metrics_auth_is_a_choice() {
    let remote = Some("192.0.2.7:5000");
    let (open, ..) = keyed(None);
    for uri in ["/metrics", "/openapi.json", "/healthz", "/readyz"] {
        let r = call(Method::GET, uri).client(remote).send(&open.app).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text);
    }
    let (h, send, read, _admin) = keyed_with(ApiSettings {
        metrics_auth: true,
        ..settings()
    });
    for uri in ["/metrics", "/openapi.json"] {
        let r = call(Method::GET, uri).client(remote).send(&h.app).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
        let r = call(Method::GET, uri)
            .key(&send)
            .client(remote)
            .send(&h.app)
            .await;
        assert_error(&r, StatusCode::FORBIDDEN, "insufficient_scope");
        let r = call(Method::GET, uri)
            .key(&read)
            .client(remote)
            .send(&h.app)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text);
    }
    for uri in ["/healthz", "/readyz"] {
        let r = call(Method::GET, uri).client(remote).send(&h.app).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text);
    }
}

#[tokio::test]
async fn health_and_metrics() {
    let h = harness(settings());
    let r = call(Method::GET, "/healthz").send(&h.app).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json, json!({"status": "ok", "store": "ok"}));
    call(Method::GET, "/v1/messages/0000000000000009")
        .send(&h.app)
        .await;
    call(Method::GET, "/no/such/path").send(&h.app).await;
    let r = call(Method::GET, "/metrics").send(&h.app).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers.get(header::CONTENT_TYPE).unwrap(),
        "text/plain; version=0.0.4"
    );
    assert!(
        r.text
            .contains("postrider_http_requests_total{route=\"/healthz\",status=\"200\"} 1"),
        "{}",
        r.text
    );
    assert!(
        r.text.contains(
            "postrider_http_requests_total{route=\"/v1/messages/{id}\",status=\"404\"} 1"
        ),
        "{}",
        r.text
    );
    assert!(
        r.text
            .contains("postrider_http_requests_total{route=\"unmatched\",status=\"404\"} 1"),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn queue_admin_operations() {
    let h = harness(settings());
    let a = submit(&h, &simple("x@alpha.test")).await;
    let b = submit(&h, &simple("y@beta.test")).await;
    let c = submit(
        &h,
        &json!({"from": "s@example.com", "to": ["z@beta.test", "w@gamma.test"], "text": "t"}),
    )
    .await;

    // List with filters and paging.
    let r = call(Method::GET, "/v1/queue").send(&h.app).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let ids: Vec<&str> = r.json["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a.to_string(), b.to_string(), c.to_string()]);
    let r = call(Method::GET, "/v1/queue?domain=beta.test&limit=1")
        .send(&h.app)
        .await;
    assert_eq!(r.json["messages"].as_array().unwrap().len(), 1);
    assert_eq!(r.json["messages"][0]["id"], b.to_string());
    assert_eq!(r.json["next_after"], b.to_string());
    let r = call(
        Method::GET,
        &format!("/v1/queue?domain=beta.test&after={b}"),
    )
    .send(&h.app)
    .await;
    assert_eq!(r.json["messages"][0]["id"], c.to_string());
    for bad in [
        "/v1/queue?state=sleeping",
        "/v1/queue?limit=0",
        "/v1/queue?after=xyz",
        "/v1/queue?bogus=1",
        "/v1/queue?limit=abc",
    ] {
        let r = call(Method::GET, bad).send(&h.app).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_query");
    }

    // Hold, list by state, release.
    let r = call(Method::POST, &format!("/v1/queue/{a}/hold"))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"id": a.to_string(), "changed": true, "state": "held"})
    );
    let r = call(Method::GET, "/v1/queue?state=held").send(&h.app).await;
    assert_eq!(r.json["messages"].as_array().unwrap().len(), 1);
    let r = call(Method::GET, "/v1/queue/stats").send(&h.app).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["by_state"]["held"], 1);
    assert_eq!(r.json["by_state"]["queued"], 2);
    assert_eq!(r.json["pending"], 3);
    assert_eq!(
        r.json["top_domains"][0],
        json!({"domain": "beta.test", "count": 2})
    );
    let r = call(Method::POST, &format!("/v1/queue/{a}/release"))
        .send(&h.app)
        .await;
    assert_eq!(r.json["changed"], true);
    assert_eq!(r.json["state"], "queued");
    let r = call(Method::POST, &format!("/v1/queue/{a}/release"))
        .send(&h.app)
        .await;
    assert_eq!(r.json["changed"], false);

    // Retry one and many.
    let r = call(Method::POST, &format!("/v1/queue/{a}/retry"))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = call(Method::POST, "/v1/queue/retry")
        .json(&json!({"domain": "beta.test"}))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.json["retried"].is_u64());
    let r = call(Method::POST, "/v1/queue/retry")
        .json(&json!({"all": true}))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = call(Method::POST, "/v1/queue/retry")
        .json(&json!({}))
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_field");

    // Show and delete.
    let r = call(Method::GET, &format!("/v1/queue/{b}"))
        .send(&h.app)
        .await;
    assert_eq!(r.json["recipients"][0]["address"], "y@beta.test");
    let r = call(Method::DELETE, &format!("/v1/queue/{b}"))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(h.store.message(b).unwrap().is_none());
    let r = call(Method::DELETE, &format!("/v1/queue/{b}"))
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = call(Method::POST, "/v1/queue/zzz/hold").send(&h.app).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_id");

    // Store failure on an admin write is a 503.
    h.store.set_fail_writes(true);
    let r = call(Method::POST, &format!("/v1/queue/{a}/hold"))
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    h.store.set_fail_writes(false);
}

#[tokio::test]
async fn bounce_now_notifies_the_sender() {
    let h = harness(settings());
    let id = submit(
        &h,
        &json!({"from": "sender@example.com", "to": ["x@dest.test", "y@dest.test"],
        "subject": "to be bounced", "text": "t"}),
    )
    .await;
    let r = call(Method::POST, &format!("/v1/queue/{id}/bounce"))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["bounced"], 2);
    let dsn_id: MessageId = r.json["dsn_id"].as_str().unwrap().parse().unwrap();

    let m = h.store.message(id).unwrap().unwrap();
    assert_eq!(
        m.state(Timestamp::from_millis(now_ms())),
        MessageState::Bounced
    );
    let reply = m.recipients[0].last_reply.as_ref().unwrap();
    assert_eq!(reply.code, 550);

    let dsn = h.store.message(dsn_id).unwrap().unwrap();
    assert!(dsn.sender.is_null());
    assert_eq!(dsn.source, Source::Dsn);
    assert_eq!(
        dsn.recipients[0].request.address.to_string(),
        "sender@example.com"
    );
    let body = h.store.body(dsn_id).unwrap().unwrap();
    let parsed = MessageParser::default().parse(&body).unwrap();
    let root = parsed.root_part().content_type().unwrap();
    assert_eq!(
        (root.ctype(), root.subtype()),
        ("multipart", Some("report"))
    );
    assert!(String::from_utf8_lossy(&body).contains("x@dest.test"));
    assert!(
        h.metrics
            .render()
            .contains("postrider_bounces_generated_total 1")
    );

    // A finished message cannot be bounced again; the status endpoint shows the outcome.
    let r = call(Method::POST, &format!("/v1/queue/{id}/bounce"))
        .send(&h.app)
        .await;
    assert_error(&r, StatusCode::CONFLICT, "invalid_state");
    let r = call(Method::GET, &format!("/v1/messages/{id}"))
        .send(&h.app)
        .await;
    assert_eq!(r.json["state"], "bounced");
    assert_eq!(r.json["recipients"][1]["state"], "bounced");
    assert_eq!(r.json["recipients"][1]["last_reply"]["code"], 550);
    assert_eq!(r.json["recipients"][1]["last_reply"]["enhanced"], "5.0.0");
    assert!(
        Timestamp::parse_rfc3339(r.json["recipients"][1]["last_attempt_at"].as_str().unwrap())
            .is_some()
    );
}

#[tokio::test]
async fn bounce_now_also_reports_suppressed_recipients_still_owed_to_an_smtp_sender() {
    let h = harness(settings());
    assert!(
        h.store
            .add_suppression(postrider_store::Suppression {
                address: "gone@dest.test".into(),
                reason: postrider_store::SuppressionReason::Manual,
                created_at: Timestamp::from_millis(now_ms()),
                source_message: None,
                reply: None,
                scope: None,
                source_report: None,
            })
            .await
            .unwrap()
    );
    let rcpts = ["gone@dest.test", "y@dest.test"]
        .iter()
        .map(|a| RecipientRequest::new(Address::parse(a).unwrap()))
        .collect();
    let env = Envelope::new(ReversePath::parse("sender@example.com").unwrap(), rcpts).unwrap();
    let id = h
        .store
        .enqueue(NewMessage::new(
            env,
            b"Subject: s\r\n\r\nb\r\n".to_vec(),
            Source::Smtp,
            Timestamp::from_millis(now_ms()),
        ))
        .await
        .unwrap();
    assert!(h.store.message(id).unwrap().unwrap().suppression_notice_due);
    let r = call(Method::POST, &format!("/v1/queue/{id}/bounce"))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["bounced"], 1);
    let dsn_id: MessageId = r.json["dsn_id"].as_str().unwrap().parse().unwrap();
    let body = String::from_utf8(h.store.body(dsn_id).unwrap().unwrap()).unwrap();
    for line in [
        "Final-Recipient: rfc822; y@dest.test\r\nAction: failed\r\nStatus: 5.0.0\r\n",
        "Final-Recipient: rfc822; gone@dest.test\r\nAction: failed\r\nStatus: 5.7.1\r\n",
    ] {
        assert!(body.contains(line), "missing {line:?} in\n{body}");
    }
    let m = h.store.message(id).unwrap().unwrap();
    assert!(m.is_finished() && !m.suppression_notice_due);
    assert_eq!(m.recipients[0].state, RecipientState::Suppressed);
}

#[tokio::test]
async fn bounce_of_null_sender_makes_no_dsn() {
    let h = harness(settings());
    let r = call(Method::POST, "/v1/messages")
        .json(&json!({"envelope": {"from": "", "to": ["r@dest.test"]}, "raw": "Subject: n\r\n\r\nb\r\n"}))
        .send(&h.app)
        .await;
    let id: MessageId = r.json["id"].as_str().unwrap().parse().unwrap();
    let r = call(Method::POST, &format!("/v1/queue/{id}/bounce"))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["dsn_id"], Value::Null);
    assert_eq!(h.store.pending_count(), 0);
    tokio::time::timeout(Duration::from_secs(5), h.store.flush())
        .await
        .unwrap()
        .unwrap();
}

// -------------------------------------------------------------------------------------------
// Postmark- and Resend-compatible endpoints
// -------------------------------------------------------------------------------------------

fn postmark_email(subject: &str) -> Value {
    json!({"From": "App <app@sender.test>", "To": "\"Lee, Ann\" <ann@example.test>, bob@example.test",
           "Subject": subject, "TextBody": "hi", "TrackLinks": "None", "Cc": null})
}

#[tokio::test]
async fn postmark_token_header_scopes_and_error_shape() {
    let (h, send_key, read_key, _) = keyed(None);
    let email = postmark_email("token");
    // The key in Postmark's header; the answer in Postmark's shape.
    let r = call(Method::POST, "/email")
        .json(&email)
        .header("X-Postmark-Server-Token", &send_key)
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["ErrorCode"], 0);
    assert_eq!(r.json["To"], email["To"]);
    let id: MessageId = r.json["MessageID"].as_str().unwrap().parse().unwrap();
    let m = h.store.message(id).unwrap().unwrap();
    assert_eq!(m.recipients.len(), 2);
    // Missing or wrong token: 401 with ErrorCode 10; a key without `send`: 403 with 405.
    for token in [None, Some("pr_wrong")] {
        let mut c = call(Method::POST, "/email").json(&email);
        if let Some(t) = token {
            c = c.header("X-Postmark-Server-Token", t);
        }
        let r = c.send(&h.app).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
        assert_eq!(r.json["ErrorCode"], 10, "{}", r.text);
        assert!(r.json["Message"].is_string());
    }
    let r = call(Method::POST, "/email")
        .json(&email)
        .header("X-Postmark-Server-Token", &read_key)
        .send(&h.app)
        .await;
    assert_eq!(
        (r.status, &r.json["ErrorCode"]),
        (StatusCode::FORBIDDEN, &json!(405))
    );
    // Invalid request: 422 with ErrorCode 300 naming the Postmark field.
    let r = call(Method::POST, "/email")
        .json(&json!({"From": "app@sender.test", "To": "ann@example.test, not an address", "TextBody": "x"}))
        .key(&send_key)
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.json["ErrorCode"], 300);
    assert!(
        r.json["Message"].as_str().unwrap().contains("To[1]"),
        "{}",
        r.text
    );
    // Templates are refused clearly.
    let r = call(Method::POST, "/email/withTemplate/")
        .json(&json!({"TemplateId": 1}))
        .key(&send_key)
        .send(&h.app)
        .await;
    assert_eq!(
        (r.status, &r.json["ErrorCode"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!(1101))
    );
}

#[tokio::test]
async fn postmark_idempotency_and_suppressed_recipients() {
    let h = harness(settings());
    let email = postmark_email("idem");
    let first = call(Method::POST, "/email")
        .json(&email)
        .header("Idempotency-Key", "pm-1")
        .send(&h.app)
        .await;
    let again = call(Method::POST, "/email")
        .json(&email)
        .header("Idempotency-Key", "pm-1")
        .send(&h.app)
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.json["MessageID"], again.json["MessageID"]);
    assert_eq!(h.store.pending_count(), 1);

    let r = call(Method::POST, "/v1/suppressions")
        .json(&json!({"address": "gone@example.test"}))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let gone = json!({"From": "app@sender.test", "To": "gone@example.test", "TextBody": "x"});
    let r = call(Method::POST, "/email").json(&gone).send(&h.app).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.json["ErrorCode"], 406);
    // Partly suppressed: accepted for the others.
    let partly = json!({"From": "app@sender.test", "To": "gone@example.test, ann@example.test", "TextBody": "x"});
    let r = call(Method::POST, "/email")
        .json(&partly)
        .send(&h.app)
        .await;
    assert_eq!(
        (r.status, &r.json["ErrorCode"]),
        (StatusCode::OK, &json!(0)),
        "{}",
        r.text
    );
    // In a batch, per message, in order.
    let r = call(Method::POST, "/email/batch")
        .json(&json!([postmark_email("b1"), gone, {"From": "app@sender.test", "TextBody": "x"}]))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let codes: Vec<&Value> = r
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["ErrorCode"])
        .collect();
    assert_eq!(codes, [&json!(0), &json!(406), &json!(300)]);
}

#[tokio::test]
async fn resend_keys_batches_and_status() {
    let (h, send_key, read_key, _) = keyed(None);
    let email =
        json!({"from": "app@sender.test", "to": "ann@example.test", "subject": "s", "text": "t"});
    let r = call(Method::POST, "/emails")
        .json(&email)
        .send(&h.app)
        .await;
    assert_eq!(
        (r.status, &r.json["name"]),
        (StatusCode::UNAUTHORIZED, &json!("missing_api_key"))
    );
    assert_eq!(r.json["statusCode"], 401);
    let r = call(Method::POST, "/emails")
        .json(&email)
        .key("pr_wrong")
        .send(&h.app)
        .await;
    assert_eq!(
        (r.status, &r.json["name"]),
        (StatusCode::FORBIDDEN, &json!("invalid_api_key"))
    );
    let r = call(Method::POST, "/emails")
        .json(&email)
        .key(&send_key)
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let id = r.json["id"].as_str().unwrap().to_owned();

    // Strict batch: one bad email refuses all; permissive: the good ones are queued.
    let before = h.store.pending_count();
    let bad = json!({"from": "app@sender.test", "to": "nope", "text": "t"});
    let r = call(Method::POST, "/emails/batch")
        .json(&json!([email, bad]))
        .key(&send_key)
        .send(&h.app)
        .await;
    assert_eq!(
        (r.status, &r.json["name"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("validation_error"))
    );
    assert_eq!(h.store.pending_count(), before);
    let r = call(Method::POST, "/emails/batch")
        .json(&json!([email, bad]))
        .key(&send_key)
        .header("x-batch-validation", "permissive")
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["data"].as_array().unwrap().len(), 1);
    assert_eq!(r.json["errors"][0]["index"], 1);

    // Status in Resend's shape with the read scope; the send key is restricted.
    let r = call(Method::GET, &format!("/emails/{id}"))
        .key(&read_key)
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["last_event"], "queued");
    assert_eq!(r.json["to"], json!(["ann@example.test"]));
    let r = call(Method::GET, &format!("/emails/{id}"))
        .key(&send_key)
        .send(&h.app)
        .await;
    assert_eq!(r.json["name"], "restricted_api_key", "{}", r.text);
    let r = call(Method::GET, "/emails/zz")
        .key(&read_key)
        .send(&h.app)
        .await;
    assert_eq!(
        (r.status, &r.json["name"]),
        (StatusCode::NOT_FOUND, &json!("not_found"))
    );
}

#[tokio::test]
async fn bulk_queue_actions_page_and_validate_their_filter() {
    let h = harness(settings());
    let a = submit(&h, &simple("x@alpha.test")).await;
    let b = submit(&h, &simple("y@beta.test")).await;
    let c = submit(&h, &simple("z@beta.test")).await;

    let bulk = |body: serde_json::Value| call(Method::POST, "/v1/queue/bulk").json(&body);
    let r = bulk(json!({"action": "hold", "domain": "beta.test", "dry_run": true}))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["matched"], 2);
    assert_eq!(r.json["changed"], 0);
    // One match per page: the cursor leads to the next one.
    let r = bulk(json!({"action": "hold", "domain": "beta.test", "limit": 1}))
        .send(&h.app)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (r.json["matched"].as_u64(), r.json["changed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(r.json["next_after"], b.to_string());
    let r =
        bulk(json!({"action": "hold", "domain": "beta.test", "limit": 1, "after": b.to_string()}))
            .send(&h.app)
            .await;
    assert_eq!(r.json["changed"], 1, "{}", r.text);
    let r = call(Method::GET, "/v1/queue?state=held").send(&h.app).await;
    assert_eq!(r.json["messages"].as_array().map(Vec::len), Some(2));
    assert_eq!(r.json["messages"][1]["id"], c.to_string());

    // Nothing arrived two hours ago; then every pending message goes.
    let r = bulk(json!({"action": "delete", "all": true, "older_than": "2h"}))
        .send(&h.app)
        .await;
    assert_eq!(r.json["matched"], 0, "{}", r.text);
    let r = bulk(json!({"action": "delete", "all": true}))
        .send(&h.app)
        .await;
    assert_eq!(r.json["changed"], 3, "{}", r.text);
    assert!(h.store.message(a).unwrap().is_none());

    for bad in [
        json!({"action": "delete"}),
        json!({"action": "explode", "all": true}),
        json!({"action": "hold", "older_than": "soon"}),
        json!({"action": "hold", "state": "sleeping"}),
        json!({"action": "hold", "all": true, "limit": 0}),
        json!({"action": "hold", "all": true, "bogus": 1}),
    ] {
        let r = bulk(bad.clone()).send(&h.app).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_field");
    }
}
#[tokio::test]
async fn replaced_keys_apply_to_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("queue"), Metrics::new()).unwrap();
    let (old_key, old_hash) = generate_api_key();
    let (new_key, new_hash) = generate_api_key();
    let key = |name: &str, key_hash: String| ApiKey {
        name: name.into(),
        key_hash,
        scopes: vec![Scope::Read],
        sandbox: false,
        unsubscribe: false,
    };
    let state = ApiState::new(
        store,
        Metrics::new(),
        ApiSettings {
            api_keys: vec![key("old", old_hash.clone())],
            ..settings()
        },
    );
    let app = router(state.clone());
    let events = |k| call(Method::GET, "/v1/events").key(k);
    assert_eq!(events(&old_key).send(&app).await.status, StatusCode::OK);
    assert_eq!(
        events(&new_key).send(&app).await.status,
        StatusCode::UNAUTHORIZED
    );

    state
        .replace_keys(&[key("new", new_hash.clone())], None)
        .unwrap();
    assert_eq!(events(&new_key).send(&app).await.status, StatusCode::OK);
    assert_eq!(
        events(&old_key).send(&app).await.status,
        StatusCode::UNAUTHORIZED
    );

    // An unusable list is refused whole; the keys in force stay.
    let refused = state.replace_keys(&[key("new", new_hash.clone()), key("new", old_hash)], None);
    assert!(refused.is_err());
    assert_eq!(events(&new_key).send(&app).await.status, StatusCode::OK);

    // The rate limit changes with the keys.
    let limit = RateLimit {
        per_second: 0.001,
        burst: 1,
    };
    state
        .replace_keys(&[key("new", new_hash)], Some(limit))
        .unwrap();
    assert_eq!(events(&new_key).send(&app).await.status, StatusCode::OK);
    assert_eq!(
        events(&new_key).send(&app).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}
