//! The web console through `oneshot`: access, sessions, CSRF, security headers and escaping.
//! (`tests/e2e/console.rs` drives the same pages in a real browser.)

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use postrider_api::{ApiKey, ApiSettings, ApiState, Scope, generate_api_key, router};
use postrider_core::MessageId;
use postrider_metrics::Metrics;
use postrider_store::Store;
use serde_json::json;
use tower::ServiceExt as _;

struct Page {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// `name=value` of a `Set-Cookie` for `name`, with its attributes.
    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_owned)
    }

    /// The value of the hidden `csrf` field of the first form.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("csrf field");
        let rest = &self.body[at + 19..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

async fn fetch(
    app: &Router,
    method: Method,
    uri: &str,
    client: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> Page {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "127.0.0.1:8025");
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    if form.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    }
    let mut req = req
        .body(form.map_or_else(Body::empty, |f| Body::from(f.to_owned())))
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(client.parse::<SocketAddr>().unwrap()));
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    Page {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

const LOOPBACK: &str = "127.0.0.1:40000";
const REMOTE: &str = "203.0.113.9:5000";

fn app(settings: ApiSettings) -> (Router, Store) {
    let store = Store::temporary(Metrics::new()).unwrap();
    let state = ApiState::new(store.clone(), Metrics::new(), settings);
    (router(state), store)
}

fn settings() -> ApiSettings {
    ApiSettings {
        hostname: "relay.test".into(),
        ..ApiSettings::default()
    }
}

async fn submit(app: &Router, key: Option<&str>, body: serde_json::Value) -> MessageId {
    let mut req = Request::post("/v1/messages")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::HOST, "127.0.0.1:8025");
    if let Some(k) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    let mut req = req.body(Body::from(body.to_string())).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(LOOPBACK.parse::<SocketAddr>().unwrap()));
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["id"].as_str().unwrap().parse().unwrap()
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

/// Loopback-only mode: a loopback browser gets a session without logging in; others get 403.
/// Pages are escaped and carry the strict policy; the preview has its own, script-free one.
#[tokio::test]
async fn keyless_console_serves_loopback_with_a_session() {
    let (app, store) = app(settings());
    let id = submit(
        &app,
        None,
        json!({"from": "a@example.com", "to": ["x@dest.test"],
               "subject": "<script>alert(1)</script>", "text": "hi",
               "html": "<p>Hi</p><script>alert(2)</script>"}),
    )
    .await;

    let r = fetch(&app, Method::GET, "/ui/messages", REMOTE, None, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let r = fetch(&app, Method::GET, "/ui/messages", LOOPBACK, None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let session = r.set_cookie("postrider_console").expect("session cookie");
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict"));
    assert!(session.contains("Path=/ui"));
    let csp = r.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(r.headers[header::X_FRAME_OPTIONS], "DENY");
    assert!(!r.body.contains("<script>alert(1)"), "subject not escaped");
    assert!(r.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(r.body.contains(&id.to_string()));

    let cookie = cookie_pair(&session);
    let r = fetch(
        &app,
        Method::GET,
        &format!("/ui/messages/{id}/preview"),
        LOOPBACK,
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let csp = r.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        csp.starts_with("default-src 'none'; img-src data: cid:; style-src 'unsafe-inline'"),
        "{csp}"
    );
    assert!(csp.contains("sandbox"));
    assert!(r.body.contains("<p>Hi</p>"));

    // The same session is kept; a CSRF-less action is refused, a proper one works.
    let page = fetch(
        &app,
        Method::GET,
        &format!("/ui/messages/{id}"),
        LOOPBACK,
        Some(&cookie),
        None,
    )
    .await;
    assert!(page.set_cookie("postrider_console").is_none());
    assert!(page.body.contains("sandbox=\"\""));
    let token = page.csrf();
    let hold = format!("/ui/messages/{id}/hold");
    let r = fetch(
        &app,
        Method::POST,
        &hold,
        LOOPBACK,
        Some(&cookie),
        Some("back=message"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = fetch(
        &app,
        Method::POST,
        &hold,
        LOOPBACK,
        Some(&cookie),
        Some("csrf=nope"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(!store.message(id).unwrap().unwrap().held);
    let r = fetch(
        &app,
        Method::POST,
        &hold,
        LOOPBACK,
        Some(&cookie),
        Some(&format!("csrf={token}&back=message")),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location(), format!("/ui/messages/{id}?done=hold"));
    assert!(store.message(id).unwrap().unwrap().held);

    // Another session's token does not do.
    let other = fetch(&app, Method::GET, "/ui/messages", LOOPBACK, None, None).await;
    let other_cookie = cookie_pair(&other.set_cookie("postrider_console").unwrap());
    let r = fetch(
        &app,
        Method::POST,
        &format!("/ui/messages/{id}/release"),
        LOOPBACK,
        Some(&other_cookie),
        Some(&format!("csrf={token}")),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

/// With keys: the login form (double-submit token), key checks, scopes, logout.
#[tokio::test]
async fn keyed_console_needs_a_login() {
    let (read_key, read_hash) = generate_api_key();
    let (send_key, send_hash) = generate_api_key();
    let (app, store) = app(ApiSettings {
        api_keys: vec![
            ApiKey {
                name: "viewer".into(),
                key_hash: read_hash,
                scopes: vec![Scope::Read, Scope::Send],
                sandbox: false,
                unsubscribe: false,
            },
            ApiKey {
                name: "app".into(),
                key_hash: send_hash,
                scopes: vec![Scope::Send],
                sandbox: false,
                unsubscribe: false,
            },
        ],
        ..settings()
    });
    let id = submit(
        &app,
        Some(&send_key),
        json!({"from": "a@example.com", "to": ["x@dest.test"], "subject": "S", "text": "hi"}),
    )
    .await;

    let r = fetch(&app, Method::GET, "/ui/messages", REMOTE, None, None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/ui/login");
    let login = fetch(&app, Method::GET, "/ui/login", REMOTE, None, None).await;
    assert_eq!(login.status, StatusCode::OK);
    let login_cookie = cookie_pair(&login.set_cookie("postrider_console_login").unwrap());
    let token = login.csrf();
    let form = |key: &str, token: &str| format!("key={key}&csrf={token}");

    // Without the login cookie's token, with a wrong key, with a key lacking `read`: refused.
    let r = fetch(
        &app,
        Method::POST,
        "/ui/login",
        REMOTE,
        None,
        Some(&form(&read_key, &token)),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    for key in ["pr_wrong", send_key.as_str()] {
        let r = fetch(
            &app,
            Method::POST,
            "/ui/login",
            REMOTE,
            Some(&login_cookie),
            Some(&form(key, &token)),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{key}");
        assert!(r.set_cookie("postrider_console").is_none());
    }
    let r = fetch(
        &app,
        Method::POST,
        "/ui/login",
        REMOTE,
        Some(&login_cookie),
        Some(&form(&read_key, &token)),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let session = r.set_cookie("postrider_console").unwrap();
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict"));
    assert!(
        !session.contains(&read_key),
        "the key is never put in a cookie"
    );
    let cookie = cookie_pair(&session);

    let page = fetch(
        &app,
        Method::GET,
        &format!("/ui/messages/{id}"),
        REMOTE,
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("x@dest.test"));
    assert!(
        !page.body.contains("action retry"),
        "no actions without admin"
    );
    // The read-only viewer may not act, even with its token, nor see the queue page.
    let token = page.csrf();
    let r = fetch(
        &app,
        Method::POST,
        &format!("/ui/messages/{id}/hold"),
        REMOTE,
        Some(&cookie),
        Some(&format!("csrf={token}")),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(!store.message(id).unwrap().unwrap().held);
    let r = fetch(&app, Method::GET, "/ui/queue", REMOTE, Some(&cookie), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // A forged cross-site post with the right token but another Origin is refused.
    let mut req = Request::post("/ui/logout")
        .header(header::HOST, "127.0.0.1:8025")
        .header(header::ORIGIN, "https://evil.example")
        .header(header::COOKIE, &cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("csrf={token}")))
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(REMOTE.parse::<SocketAddr>().unwrap()));
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    let r = fetch(
        &app,
        Method::POST,
        "/ui/logout",
        REMOTE,
        Some(&cookie),
        Some(&format!("csrf={token}")),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = fetch(
        &app,
        Method::GET,
        "/ui/messages",
        REMOTE,
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(r.location(), "/ui/login", "the session ended");
}

/// A suppression scoped to one sender domain (a one-click unsubscribe) is shown as such and its
/// remove button removes that entry, not the global one of the same address.
#[tokio::test]
async fn scoped_suppressions_are_shown_and_removed_on_their_own() {
    use postrider_store::{Suppression, SuppressionReason};
    let (app, store) = app(settings());
    let entry = |scope: Option<&str>, reason| Suppression {
        address: "reader@example.test".into(),
        reason,
        created_at: postrider_core::Timestamp::from_millis(1_795_411_270_000),
        source_message: None,
        reply: None,
        scope: scope.map(str::to_owned),
        source_report: None,
    };
    assert!(
        store
            .add_suppression(entry(Some("news.test"), SuppressionReason::Unsubscribed))
            .await
            .unwrap()
    );
    assert!(
        store
            .add_suppression(entry(None, SuppressionReason::Manual))
            .await
            .unwrap()
    );

    let page = fetch(&app, Method::GET, "/ui/suppressions", LOOPBACK, None, None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("from news.test"), "{}", page.body);
    assert!(page.body.contains("unsubscribed"), "{}", page.body);
    assert!(
        page.body.contains("name=\"scope\" value=\"news.test\""),
        "{}",
        page.body
    );
    let cookie = cookie_pair(&page.set_cookie("postrider_console").unwrap());
    let token = page.csrf();
    let r = fetch(
        &app,
        Method::POST,
        "/ui/suppressions/remove",
        LOOPBACK,
        Some(&cookie),
        Some(&format!(
            "csrf={token}&address=reader%40example.test&scope=news.test"
        )),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert!(
        store
            .suppression("reader@example.test", Some("news.test"))
            .unwrap()
            .is_none(),
        "the scoped entry is removed"
    );
    assert!(
        store
            .suppression("reader@example.test", None)
            .unwrap()
            .is_some(),
        "the global entry stays"
    );
}
