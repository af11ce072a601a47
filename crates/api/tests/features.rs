//! Idempotency keys, events, suppressions and the OpenAPI document, through `oneshot`.

use std::net::SocketAddr;
use std::path::Path;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use postrider_api::{ApiKey, ApiSettings, ApiState, Scope, generate_api_key, router};
use postrider_core::{MessageId, RecipientState};
use postrider_metrics::Metrics;
use postrider_store::Store;
use serde_json::{Value, json};
use tower::ServiceExt as _;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
    text: String,
}

/// One request from loopback: method, uri, optional JSON text body and extra headers.
async fn send(
    app: &Router,
    method: Method,
    uri: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .unwrap();
    req.extensions_mut().insert(ConnectInfo(
        "127.0.0.1:40000".parse::<SocketAddr>().unwrap(),
    ));
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn settings() -> ApiSettings {
    ApiSettings {
        hostname: "relay.test".into(),
        ..ApiSettings::default()
    }
}

fn app(store: &Store, settings: ApiSettings) -> Router {
    router(ApiState::new(store.clone(), Metrics::new(), settings))
}

fn open(path: &Path) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match Store::open(path, Metrics::new()) {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("reopen not yet possible: {e}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn assert_error(r: &Reply, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "body: {}", r.text);
    assert_eq!(r.json["error"]["code"], code, "body: {}", r.text);
}

const MESSAGE: &str =
    r#"{"from": "app@example.com", "to": ["a@example.net"], "subject": "Hi", "text": "Hello"}"#;

fn id_of(r: &Reply) -> MessageId {
    r.json["id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn idempotency_key_replays_conflicts_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    let store = open(&path);
    let api = app(&store, settings());
    let key = [("Idempotency-Key", "order-1234")];

    let first = send(&api, Method::POST, "/v1/messages", Some(MESSAGE), &key).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let id = id_of(&first);

    let again = send(&api, Method::POST, "/v1/messages", Some(MESSAGE), &key).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text);
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.json, first.json, "the original answer");
    assert_eq!(
        again.headers.get(header::LOCATION),
        first.headers.get(header::LOCATION)
    );
    assert_eq!(store.pending_count(), 1, "nothing new queued");

    let other_body = MESSAGE.replace("Hello", "Hello again");
    let conflict = send(&api, Method::POST, "/v1/messages", Some(&other_body), &key).await;
    assert_error(&conflict, StatusCode::CONFLICT, "idempotency_key_reused");
    assert_eq!(store.pending_count(), 1);

    // Without a key, the same body is a new message.
    let plain = send(&api, Method::POST, "/v1/messages", Some(MESSAGE), &[]).await;
    assert_ne!(id_of(&plain), id);
    assert_eq!(store.pending_count(), 2);

    for bad in ["", "with space", &"x".repeat(256)] {
        let r = send(
            &api,
            Method::POST,
            "/v1/messages",
            Some(MESSAGE),
            &[("Idempotency-Key", bad)],
        )
        .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_idempotency_key");
    }
    assert_eq!(store.pending_count(), 2);

    // Restart: a retry after the crash/restart gets the same id, and nothing is queued.
    drop(api);
    drop(store);
    let store = open(&path);
    let api = app(&store, settings());
    assert_eq!(store.pending_count(), 2);
    let replay = send(&api, Method::POST, "/v1/messages", Some(MESSAGE), &key).await;
    assert_eq!(replay.status, StatusCode::ACCEPTED, "{}", replay.text);
    assert_eq!(id_of(&replay), id);
    assert_eq!(replay.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(store.pending_count(), 2);
}

#[tokio::test]
async fn idempotency_keys_are_scoped_per_api_key_and_concurrent_duplicates_queue_once() {
    let store = Store::temporary(Metrics::new()).unwrap();
    let (k1, h1) = generate_api_key();
    let (k2, h2) = generate_api_key();
    let keys = vec![
        ApiKey {
            name: "one".into(),
            key_hash: h1,
            scopes: vec![Scope::Send],
            sandbox: false,
            unsubscribe: false,
        },
        ApiKey {
            name: "two".into(),
            key_hash: h2,
            scopes: vec![Scope::Send],
            sandbox: false,
            unsubscribe: false,
        },
    ];
    let api = app(
        &store,
        ApiSettings {
            api_keys: keys,
            ..settings()
        },
    );
    let auth1 = format!("Bearer {k1}");
    let auth2 = format!("Bearer {k2}");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let api = api.clone();
        let auth = auth1.clone();
        tasks.push(tokio::spawn(async move {
            send(
                &api,
                Method::POST,
                "/v1/messages",
                Some(MESSAGE),
                &[("Idempotency-Key", "k"), ("Authorization", &auth)],
            )
            .await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        ids.push(id_of(&r));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "all answers name one message");
    assert_eq!(store.pending_count(), 1);
    let other = send(
        &api,
        Method::POST,
        "/v1/messages",
        Some(MESSAGE),
        &[("Idempotency-Key", "k"), ("Authorization", &auth2)],
    )
    .await;
    assert_eq!(other.status, StatusCode::ACCEPTED);
    assert!(other.headers.get("idempotent-replayed").is_none());
    assert_ne!(id_of(&other), ids[0]);
    assert_eq!(store.pending_count(), 2);
}

#[tokio::test]
async fn events_page_with_a_durable_cursor() {
    let store = Store::temporary(Metrics::new()).unwrap();
    let api = app(&store, settings());
    let body = r#"{"from": "app@example.com", "to": ["a@example.net"], "subject": "Hi", "text": "x", "tags": ["t1"], "metadata": {"k": "v"}}"#;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(id_of(
            &send(&api, Method::POST, "/v1/messages", Some(body), &[]).await,
        ));
    }
    let page = send(&api, Method::GET, "/v1/events?limit=2", None, &[]).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let events = page.json["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["type"], "accepted");
    assert_eq!(events[0]["seq"], 1);
    assert_eq!(events[0]["id"], ids[0].to_string());
    assert_eq!(events[0]["tags"], json!(["t1"]));
    assert_eq!(events[0]["metadata"], json!({"k": "v"}));
    assert_eq!(events[0]["source"], "http");
    assert!(events[0]["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(page.json["next_cursor"], 2);
    let rest = send(&api, Method::GET, "/v1/events?after=2&limit=10", None, &[]).await;
    let events = rest.json["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], ids[2].to_string());
    assert_eq!(rest.json["next_cursor"], 3);
    let empty = send(&api, Method::GET, "/v1/events?after=3", None, &[]).await;
    assert_eq!(empty.json["events"], json!([]));
    assert_eq!(empty.json["next_cursor"], 3, "the cursor stays");

    for bad in [
        "/v1/events?limit=0",
        "/v1/events?limit=1001",
        "/v1/events?after=x",
        "/v1/events?bogus=1",
    ] {
        let r = send(&api, Method::GET, bad, None, &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
    }
}

#[tokio::test]
async fn events_need_the_read_scope() {
    let store = Store::temporary(Metrics::new()).unwrap();
    let (key, hash) = generate_api_key();
    let keys = vec![ApiKey {
        name: "sender".into(),
        key_hash: hash,
        scopes: vec![Scope::Send],
        sandbox: false,
        unsubscribe: false,
    }];
    let api = app(
        &store,
        ApiSettings {
            api_keys: keys,
            ..settings()
        },
    );
    let auth = format!("Bearer {key}");
    let r = send(
        &api,
        Method::GET,
        "/v1/events",
        None,
        &[("Authorization", &auth)],
    )
    .await;
    assert_error(&r, StatusCode::FORBIDDEN, "insufficient_scope");
    let r = send(
        &api,
        Method::GET,
        "/v1/suppressions",
        None,
        &[("Authorization", &auth)],
    )
    .await;
    assert_error(&r, StatusCode::FORBIDDEN, "insufficient_scope");
    let r = send(
        &api,
        Method::POST,
        "/v1/suppressions",
        Some(r#"{"address": "a@b.test"}"#),
        &[("Authorization", &auth)],
    )
    .await;
    assert_error(&r, StatusCode::FORBIDDEN, "insufficient_scope");
    let r = send(&api, Method::GET, "/v1/events", None, &[]).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn suppression_list_crud_and_suppressed_recipients() {
    let store = Store::temporary(Metrics::new()).unwrap();
    let api = app(&store, settings());
    let add = send(
        &api,
        Method::POST,
        "/v1/suppressions",
        Some(r#"{"address": "Gone@Example.NET"}"#),
        &[],
    )
    .await;
    assert_eq!(add.status, StatusCode::CREATED, "{}", add.text);
    assert_eq!(add.json["address"], "gone@example.net");
    assert_eq!(add.json["reason"], "manual");
    let again = send(
        &api,
        Method::POST,
        "/v1/suppressions",
        Some(r#"{"address": "gone@example.net", "reason": "hard_bounce"}"#),
        &[],
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json["reason"], "manual", "the existing entry is kept");
    let r = send(
        &api,
        Method::POST,
        "/v1/suppressions",
        Some(r#"{"address": "not an address"}"#),
        &[],
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_address");
    let r = send(
        &api,
        Method::POST,
        "/v1/suppressions",
        Some(r#"{"address": "a@b.test", "reason": "whim"}"#),
        &[],
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_field");
    let _ = send(
        &api,
        Method::POST,
        "/v1/suppressions",
        Some(r#"{"address": "b@example.net"}"#),
        &[],
    )
    .await;

    let one = send(
        &api,
        Method::GET,
        "/v1/suppressions/GONE@example.net",
        None,
        &[],
    )
    .await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.text);
    assert_eq!(one.json["address"], "gone@example.net");
    let r = send(
        &api,
        Method::GET,
        "/v1/suppressions/nobody@example.net",
        None,
        &[],
    )
    .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = send(&api, Method::GET, "/v1/suppressions/nonsense", None, &[]).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_address");

    let page = send(&api, Method::GET, "/v1/suppressions?limit=1", None, &[]).await;
    assert_eq!(page.json["suppressions"][0]["address"], "b@example.net");
    assert_eq!(page.json["next_after"], "b@example.net");
    let next = send(
        &api,
        Method::GET,
        "/v1/suppressions?limit=1&after=b@example.net",
        None,
        &[],
    )
    .await;
    assert_eq!(next.json["suppressions"][0]["address"], "gone@example.net");
    let r = send(&api, Method::GET, "/v1/suppressions?limit=0", None, &[]).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_limit");

    // A message to a suppressed and a normal address: the first is never attempted.
    let body = r#"{"from": "app@example.com", "to": ["gone@example.net", "ok@example.net"], "subject": "Hi", "text": "x"}"#;
    let id = id_of(&send(&api, Method::POST, "/v1/messages", Some(body), &[]).await);
    let status = send(&api, Method::GET, &format!("/v1/messages/{id}"), None, &[]).await;
    assert_eq!(status.json["recipients"][0]["state"], "suppressed");
    assert_eq!(status.json["recipients"][1]["state"], "queued");
    let m = store.message(id).unwrap().unwrap();
    assert_eq!(m.recipients[0].state, RecipientState::Suppressed);
    let events = send(&api, Method::GET, "/v1/events", None, &[]).await;
    let kinds: Vec<&str> = events.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["accepted", "suppressed"]);
    assert_eq!(events.json["events"][1]["recipient"], "gone@example.net");

    let del = send(
        &api,
        Method::DELETE,
        "/v1/suppressions/gone@example.net",
        None,
        &[],
    )
    .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    let r = send(
        &api,
        Method::DELETE,
        "/v1/suppressions/gone@example.net",
        None,
        &[],
    )
    .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
}

// ---------------------------------------------------------------------------------------------
// OpenAPI
// ---------------------------------------------------------------------------------------------

const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

/// The checked-in document is what the code generates. Regenerate with
/// `POSTRIDER_UPDATE_OPENAPI=1 cargo test -p postrider-api --test features openapi`.
#[test]
fn checked_in_openapi_matches_the_code() {
    let generated =
        serde_json::to_string_pretty(&postrider_api::openapi_document()).unwrap() + "\n";
    if std::env::var_os("POSTRIDER_UPDATE_OPENAPI").is_some() {
        std::fs::write(CHECKED_IN, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
    if on_disk != generated {
        let failed = format!("{CHECKED_IN}.failed");
        std::fs::write(&failed, &generated).unwrap();
        panic!(
            "crates/api/openapi.json is stale; the generated document is in {failed}. \
             Regenerate with POSTRIDER_UPDATE_OPENAPI=1 cargo test -p postrider-api --test features openapi"
        );
    }
}

fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            out.push((method.clone(), path.clone(), op.clone()));
        }
    }
    out
}

/// Every route written by hand in `router()` (a `.route("…"` in lib.rs) is documented too.
#[test]
fn hand_written_routes_are_documented() {
    let doc = postrider_api::openapi_document();
    let source = include_str!("../src/lib.rs");
    for piece in source.split(".route(\"").skip(1) {
        let path = piece.split('"').next().unwrap();
        assert!(
            doc["paths"].get(path).is_some(),
            "route {path} registered in router() is missing from the OpenAPI document"
        );
    }
}

/// Every documented operation is served by `router()` (its route template is matched), and
/// `/openapi.json` serves the same document.
#[tokio::test]
async fn every_documented_route_is_routed() {
    let store = Store::temporary(Metrics::new()).unwrap();
    let metrics = Metrics::new();
    let api = router(ApiState::new(store, metrics.clone(), settings()));
    let doc = postrider_api::openapi_document();
    let served = send(&api, Method::GET, "/openapi.json", None, &[]).await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(served.json, doc);
    let ops = operations(&doc);
    assert!(ops.len() >= 20, "{} operations", ops.len());
    for (method, path, _) in &ops {
        let uri = path
            .replace("{id}", "0000000000000001")
            .replace("{address}", "someone@example.net");
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let body = (m == Method::POST).then_some("{}");
        let r = send(&api, m, &uri, body, &[]).await;
        assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        let label = format!("route=\"{path}\"");
        assert!(
            metrics.render().contains(&label),
            "{method} {path} was not routed: {} {}",
            r.status,
            r.text
        );
    }
}

/// Every documented request example is accepted by the real handler with the documented status.
#[tokio::test]
async fn documented_examples_validate() {
    let store = Store::temporary(Metrics::new()).unwrap();
    let api = app(&store, settings());
    let doc = postrider_api::openapi_document();
    let mut checked = 0;
    for (method, path, op) in operations(&doc) {
        let Some(example) = op["requestBody"]["content"]["application/json"].get("example") else {
            continue;
        };
        let status = op["x-example-status"].as_u64().expect("example status");
        let documented = op["responses"].get(status.to_string());
        assert!(
            documented.is_some(),
            "{method} {path}: status {status} is not a documented response"
        );
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let r = send(&api, m, &path, Some(&example.to_string()), &[]).await;
        // Endpoints backed by optional services (the trust endpoints) answer 501
        // `not_configured` in this bare state; they must document that answer, and their own
        // tests run the example with the services attached.
        if r.status == StatusCode::NOT_IMPLEMENTED && r.json["error"]["code"] == "not_configured" {
            assert!(
                op["responses"].get("501").is_some(),
                "{method} {path}: undocumented 501"
            );
            continue;
        }
        assert_eq!(
            u64::from(r.status.as_u16()),
            status,
            "{method} {path}: {}",
            r.text
        );
        checked += 1;
    }
    assert!(checked >= 4, "{checked} examples");
}
