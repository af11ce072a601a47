//! The web console in a real headless Chromium: log in with an API key, search, open a message
//! with its sandboxed HTML preview, retry a deferred message, tail events, manage suppressions,
//! and have a form post without its CSRF token refused.
//!
//! Screenshots of the main pages go to a temporary directory, or to `docs/screenshots/` with
//! `POSTRIDER_UPDATE_SCREENSHOTS=1`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{TestRelay, http_request, wait_until};
use crate::webdriver::Browser;
use crate::world::World;

/// Submits a message over the API with `key`; returns its id.
async fn submit(relay: &TestRelay, key: &str, message: &Value) -> String {
    let body = serde_json::to_vec(message).unwrap();
    let auth = format!("Bearer {key}");
    let (status, answer) = http_request(
        relay.http,
        "POST",
        "/v1/messages",
        Some(&body),
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
    )
    .await
    .unwrap();
    let answer: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    assert_eq!(status, 202, "{answer}");
    answer["id"].as_str().unwrap().to_owned()
}

/// The status of a message over the API.
async fn status(relay: &TestRelay, key: &str, id: &str) -> Value {
    let auth = format!("Bearer {key}");
    let (code, body) = http_request(
        relay.http,
        "GET",
        &format!("/v1/messages/{id}"),
        None,
        &[("Authorization", &auth)],
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    serde_json::from_slice(&body).unwrap()
}

fn screenshot_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    if std::env::var_os("POSTRIDER_UPDATE_SCREENSHOTS").is_some() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        (dir, None)
    } else {
        let tmp = tempfile::tempdir().unwrap();
        (tmp.path().to_owned(), Some(tmp))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_headless_chromium() {
    let world = World::start().await;
    let (key, hash) = postrider_api::generate_api_key();
    let config = format!(
        "{}\n[http]\napi_keys = [{{ name = \"ops\", key_hash = \"{hash}\", scopes = [\"send\", \"read\", \"admin\"] }}]\n",
        world.config(&["1h"], "2h")
    );
    let relay = TestRelay::start(&config).await;
    let (shots, _keep) = screenshot_dir();

    // A message that defers (450 from the MX), so its body stays and it can be retried, and
    // two others for the search to leave out.
    let target = submit(
        &relay,
        &key,
        &json!({
            "from": "Reports <reports@sender.test>",
            "to": ["later.ann@example.test"],
            "subject": "Quarterly report",
            "text": "The quarterly numbers.",
            "html": "<p id=\"hello\">Hello <b>console</b></p><script>document.getElementById('hello').textContent = 'script ran';</script><img src=\"https://tracker.invalid/pixel.png\">",
            "tags": ["reports"],
        }),
    )
    .await;
    let other = submit(
        &relay,
        &key,
        &json!({"from": "app@sender.test", "to": ["later.bob@example.test"],
                "subject": "Weekly digest", "text": "Digest"}),
    )
    .await;
    submit(
        &relay,
        &key,
        &json!({"from": "app@sender.test", "to": ["carl@example.test"],
                "subject": "Welcome", "text": "Hi"}),
    )
    .await;
    for id in [&target, &other] {
        wait_until("first attempt deferred", async || {
            let s = status(&relay, &key, id).await;
            (s["state"] == "deferred" && s["attempts"] == 1).then_some(())
        })
        .await;
    }

    let browser = Browser::start().await;
    let base = format!("http://{}", relay.http);

    // Without a session the console asks for a key.
    browser.goto(&format!("{base}/ui/")).await;
    assert!(
        browser.url().await.ends_with("/ui/login"),
        "{}",
        browser.url().await
    );
    let field = browser.find("#key").await;
    browser.type_into(&field, "pr_wrong").await;
    browser
        .click(&browser.find("form.login button").await)
        .await;
    assert!(
        browser
            .text(&browser.find("p.error").await)
            .await
            .contains("not valid"),
        "a wrong key is refused"
    );
    let field = browser.find("#key").await;
    browser.type_into(&field, &key).await;
    browser.screenshot(&shots.join("login.png")).await;
    browser
        .click_to(&browser.find("form.login button").await, "/ui/messages")
        .await;

    // The session cookie is HttpOnly and SameSite=Strict: scripts cannot read it.
    let cookies = browser.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == "postrider_console")
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"));
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Strict");
    assert_eq!(browser.execute("return document.cookie;").await, "");
    assert!(!session["value"].as_str().unwrap().contains(&key[3..]));

    // Search by subject finds only the target; by recipient too.
    let subject = browser.find("input[name=subject]").await;
    browser.type_into(&subject, "quarterly").await;
    browser
        .click_to(
            &browser.find("form.search button").await,
            "subject=quarterly",
        )
        .await;
    let rows = browser.find_all("#messages tbody tr").await;
    assert_eq!(rows.len(), 1, "{}", browser.source().await);
    assert!(browser.text(&rows[0]).await.contains(&target));
    browser.screenshot(&shots.join("messages.png")).await;
    browser
        .goto(&format!(
            "{base}/ui/messages?recipient=later.bob&state=deferred"
        ))
        .await;
    let rows = browser.find_all("#messages tbody tr").await;
    assert_eq!(rows.len(), 1);
    assert!(browser.text(&rows[0]).await.contains(&other));
    browser
        .goto(&format!("{base}/ui/messages?tag=reports&subject=quarterly"))
        .await;

    // Open it: recipient state, last reply, and the HTML preview in a sandboxed frame where
    // its script does not run.
    browser
        .click_to(
            &browser.find("#messages a.id").await,
            &format!("/ui/messages/{target}"),
        )
        .await;
    assert!(
        browser
            .url()
            .await
            .ends_with(&format!("/ui/messages/{target}"))
    );
    assert!(
        browser
            .text(&browser.find("#state").await)
            .await
            .contains("deferred")
    );
    let recipients = browser.text(&browser.find("#recipients tbody").await).await;
    assert!(
        recipients.contains("later.ann@example.test"),
        "{recipients}"
    );
    assert!(recipients.contains("deferred"), "{recipients}");
    assert!(recipients.contains("450"), "{recipients}");
    assert_eq!(
        browser.text(&browser.find("#subject").await).await,
        "Quarterly report"
    );
    let frame = browser.find("iframe#preview").await;
    assert_eq!(
        browser.attribute(&frame, "sandbox").await.as_deref(),
        Some("")
    );
    browser.screenshot(&shots.join("message.png")).await;
    browser.enter_frame(&frame).await;
    let hello = browser.find("#hello").await;
    assert_eq!(browser.text(&hello).await, "Hello console");
    browser.leave_frames().await;

    // A form post without the CSRF token is refused, and nothing changes.
    let refused = browser
        .execute_async(&format!(
            "const done = arguments[arguments.length - 1];
             fetch('/ui/messages/{target}/hold', {{method: 'POST',
               headers: {{'Content-Type': 'application/x-www-form-urlencoded'}}, body: 'back=message'}})
               .then(r => done(r.status), e => done(String(e)));"
        ))
        .await;
    assert_eq!(refused, 403);
    let wrong = browser
        .execute_async(&format!(
            "const done = arguments[arguments.length - 1];
             fetch('/ui/messages/{target}/hold', {{method: 'POST',
               headers: {{'Content-Type': 'application/x-www-form-urlencoded'}}, body: 'csrf=0000&back=message'}})
               .then(r => done(r.status), e => done(String(e)));"
        ))
        .await;
    assert_eq!(wrong, 403);
    assert_eq!(status(&relay, &key, &target).await["state"], "deferred");

    // Retry: the relay attempts it again at once (the schedule would wait an hour).
    browser
        .click_to(&browser.find("button.action.retry").await, "done=retry")
        .await;
    assert!(
        browser
            .text(&browser.find("#notice").await)
            .await
            .contains("Retry")
    );
    browser
        .wait_on_page(
            &format!("{base}/ui/messages/{target}"),
            "second attempt",
            async |b| {
                let attempts = b.text(&b.find("#attempts").await).await;
                (attempts == "2").then_some(())
            },
        )
        .await;
    assert_eq!(status(&relay, &key, &target).await["attempts"], 2);

    // Hold and release from the queue page.
    browser.goto(&format!("{base}/ui/queue")).await;
    browser.screenshot(&shots.join("queue.png")).await;
    let hold = browser
        .find(&format!("form[action='/ui/messages/{other}/hold'] button"))
        .await;
    browser.click_to(&hold, "done=hold").await;
    assert!(
        browser
            .text(&browser.find("#notice").await)
            .await
            .contains("hold")
    );
    assert_eq!(status(&relay, &key, &other).await["state"], "held");
    let release = browser
        .find(&format!(
            "form[action='/ui/messages/{other}/release'] button"
        ))
        .await;
    browser.click_to(&release, "done=release").await;
    assert_ne!(status(&relay, &key, &other).await["state"], "held");

    // The event tail shows new events without a reload.
    browser.goto(&format!("{base}/ui/events")).await;
    assert!(
        browser
            .text(&browser.find("#events tbody").await)
            .await
            .contains(&target)
    );
    let late = submit(
        &relay,
        &key,
        &json!({"from": "app@sender.test", "to": ["dora@example.test"],
                "subject": "Late", "text": "Late"}),
    )
    .await;
    let table = browser.find("#events tbody").await;
    let mut seen = false;
    for _ in 0..60 {
        if browser.text(&table).await.contains(&late) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        seen,
        "the event tail did not show {late}: {}",
        browser.source().await
    );
    browser.screenshot(&shots.join("events.png")).await;

    // Suppressions: add, see, remove.
    browser.goto(&format!("{base}/ui/suppressions")).await;
    let address = browser.find("#add-suppression input[name=address]").await;
    browser.type_into(&address, "gone@example.test").await;
    browser
        .click_to(&browser.find("#add-suppression button").await, "done=added")
        .await;
    assert!(
        browser
            .text(&browser.find("#suppressions").await)
            .await
            .contains("gone@example.test")
    );
    browser.screenshot(&shots.join("suppressions.png")).await;
    let remove = browser.find("#suppressions button.action").await;
    browser.click_to(&remove, "done=removed").await;
    assert!(
        browser
            .text(&browser.find("#notice").await)
            .await
            .contains("removed")
    );
    assert!(browser.find_all("#suppressions").await.is_empty());

    // Logging out ends the session.
    browser.goto(&format!("{base}/ui/messages")).await;
    browser
        .click_to(&browser.find("header form button").await, "/ui/login")
        .await;
    browser.goto(&format!("{base}/ui/messages")).await;
    assert!(browser.url().await.ends_with("/ui/login"));
}
