//! A headless Chromium driven over the W3C WebDriver protocol (chromedriver on loopback).
//!
//! Only the handful of commands the console test needs. Chromium and chromedriver must be
//! installed (`tests/run.sh` installs Debian's `chromium` and `chromium-driver`); without them
//! [`Browser::start`] panics, so the test fails instead of passing unseen.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::free_port;

/// The W3C key of an element reference in WebDriver answers.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long a command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A chromedriver process with one Chromium session.
pub struct Browser {
    driver: Child,
    base: String,
    _profile: tempfile::TempDir,
}

/// A reference to an element of the current page.
#[derive(Debug, Clone)]
pub struct Element(String);

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile.
    pub async fn start() -> Browser {
        let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]).expect(
            "chromium is not installed: the console test needs it (apt-get install chromium chromium-driver; tests/run.sh does this)",
        );
        let driver_bin = find_program(&["chromedriver"]).expect(
            "chromedriver is not installed: the console test needs it (apt-get install chromium-driver; tests/run.sh does this)",
        );
        let port = free_port("127.0.0.1");
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            _profile: profile,
        };
        browser.wait_ready().await;
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let created = browser
            .call(
                "POST",
                "/session",
                Some(json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": chromium, "args": args},
                }}})),
            )
            .await;
        let session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_owned();
        browser.base = format!("{}/session/{session}", browser.base);
        browser
    }

    async fn wait_ready(&mut self) {
        for _ in 0..200 {
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!("chromedriver exited early: {status}");
            }
            let url = format!("{}/status", self.base);
            let ready = tokio::task::spawn_blocking(move || {
                let agent = agent();
                agent
                    .get(&url)
                    .call()
                    .ok()
                    .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
                    .is_some_and(|v| v["value"]["ready"] == true)
            })
            .await
            .unwrap_or(false);
            if ready {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not become ready");
    }

    /// One WebDriver command; returns the answer's `value`, panicking on a WebDriver error.
    async fn call(&self, method: &'static str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let shown = format!("{method} {path}");
        let answer = tokio::task::spawn_blocking(move || {
            let agent = agent();
            let response = match method {
                "GET" => agent.get(&url).call(),
                "DELETE" => agent.delete(&url).call(),
                _ => agent
                    .post(&url)
                    .send_json(body.unwrap_or_else(|| json!({}))),
            };
            response.map_err(|e| e.to_string()).and_then(|mut r| {
                r.body_mut()
                    .with_config()
                    .limit(64 * 1024 * 1024)
                    .read_json::<Value>()
                    .map_err(|e| e.to_string())
            })
        })
        .await
        .expect("webdriver task");
        let value = answer.unwrap_or_else(|e| panic!("{shown}: {e}"));
        let value = value.get("value").cloned().unwrap_or(Value::Null);
        if let Some(error) = value.get("error").and_then(Value::as_str) {
            panic!("{shown}: {error}: {}", value["message"]);
        }
        value
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).await;
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.call("GET", "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The elements matching a CSS selector (none is not an error).
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.call(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .await
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|e| e[ELEMENT_KEY].as_str().map(|s| Element(s.to_owned())))
                .collect()
        })
        .unwrap_or_default()
    }

    /// The first element matching a CSS selector, waiting up to ~10 s for it to appear; panics
    /// with the page source when none does.
    pub async fn find(&self, css: &str) -> Element {
        for _ in 0..100 {
            if let Some(e) = self.find_all(css).await.into_iter().next() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no element {css:?} on {}:\n{}",
            self.url().await,
            self.source().await
        )
    }

    /// Clicks an element that navigates, and waits until the new page, whose URL contains
    /// `url_part`, has loaded.
    pub async fn click_to(&self, e: &Element, url_part: &str) {
        self.click(e).await;
        for _ in 0..100 {
            let loaded = self.execute("return document.readyState;").await == "complete";
            if loaded && self.url().await.contains(url_part) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "clicking did not lead to {url_part:?}; at {}:\n{}",
            self.url().await,
            self.source().await
        );
    }

    /// The page's HTML as the browser has it.
    pub async fn source(&self) -> String {
        self.call("GET", "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Types `text` into an element.
    pub async fn type_into(&self, e: &Element, text: &str) {
        self.call(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Clicks an element.
    pub async fn click(&self, e: &Element) {
        self.call("POST", &format!("/element/{}/click", e.0), Some(json!({})))
            .await;
    }

    /// The rendered text of an element.
    pub async fn text(&self, e: &Element) -> String {
        self.call("GET", &format!("/element/{}/text", e.0), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// An attribute of an element (`None` when absent).
    pub async fn attribute(&self, e: &Element, name: &str) -> Option<String> {
        self.call("GET", &format!("/element/{}/attribute/{name}", e.0), None)
            .await
            .as_str()
            .map(str::to_owned)
    }

    /// Runs `script` in the page; for an async script the last argument is the callback.
    pub async fn execute_async(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/async",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Runs `script` in the page and returns its value.
    pub async fn execute(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// The cookies of the current page as WebDriver reports them.
    pub async fn cookies(&self) -> Vec<Value> {
        self.call("GET", "/cookie", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Moves into an `<iframe>` element.
    pub async fn enter_frame(&self, frame: &Element) {
        self.call(
            "POST",
            "/frame",
            Some(json!({ "id": { ELEMENT_KEY: frame.0 } })),
        )
        .await;
    }

    /// Back to the top-level page.
    pub async fn leave_frames(&self) {
        self.call("POST", "/frame", Some(json!({ "id": null })))
            .await;
    }

    /// Saves a PNG screenshot of the window.
    pub async fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let data = self.call("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .expect("screenshot base64");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Polls `check` on a fresh load of `url` until it yields a value (panics after ~30 s).
    pub async fn wait_on_page<T>(
        &self,
        url: &str,
        what: &str,
        mut check: impl AsyncFnMut(&Browser) -> Option<T>,
    ) -> T {
        for _ in 0..120 {
            self.goto(url).await;
            if let Some(v) = check(self).await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("{what}: not seen on {url}:\n{}", self.source().await);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let url = self.base.clone();
        if url.contains("/session/") {
            let _ = std::thread::spawn(move || agent().delete(&url).call()).join();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(COMMAND_TIMEOUT))
        .build()
        .into()
}
