//! The official Postmark (`postmarker`) and Resend (`resend`) Python SDKs, pointed at the relay,
//! send through the compatibility endpoints; the messages must reach the SMTP sinks with their
//! headers and attachments, and the SDKs must see ids and errors in their own shapes.
//!
//! The SDKs are installed (pinned, `tests/compat/requirements.txt`) into a virtual environment
//! cached under the target directory. Without python3, venv or pip the tests fail: they never
//! skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use mail_parser::{MessageParser, MimeHeaders};
use serde_json::{Value, json};

use crate::harness::{TestRelay, http_request, wait_until};
use crate::world::World;

const REQUIREMENTS: &str = include_str!("../compat/requirements.txt");
const REQUIREMENTS_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/compat/requirements.txt"
);
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/compat/sdk_send.py"
);
/// The API key the SDKs use, and its SHA-256 for the relay's configuration.
const KEY: &str = "pr_compat_test_key";
const KEY_HASH: &str = "0ef9034dc7ea3411d83d17f524e597d0538c9ac2c1b2c8336e3bc6754aba1a37";
/// On the suppression list before the SDKs send.
const SUPPRESSED: &str = "gone@example.test";

/// Serialises the creation of the shared virtual environment between the tests.
static VENV: Mutex<()> = Mutex::new(());

/// FNV-1a of the requirements, naming the cached environment (new pins, new environment).
fn requirements_digest() -> String {
    let hash = REQUIREMENTS
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("{hash:016x}")
}

fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The Python interpreter of a virtual environment with the pinned SDKs, creating it once.
fn sdk_python() -> PathBuf {
    let _guard = VENV.lock().unwrap_or_else(|p| p.into_inner());
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let venv = base.join(format!("compat-venv-{}", requirements_digest()));
    let python = venv.join("bin").join("python");
    if python.exists() {
        return python;
    }
    let partial = base.join(format!("compat-venv-partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&partial),
        "creating a Python virtual environment (install python3 and python3-venv)",
    );
    run(
        Command::new(partial.join("bin").join("python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(REQUIREMENTS_PATH),
        "installing the Postmark and Resend SDKs with pip",
    );
    // Scripts of a venv name its directory, so it is used where it was made: renaming it
    // afterwards would break pip but not `python`, which is all the tests run.
    if let Err(e) = std::fs::rename(&partial, &venv) {
        // Another test process may have published the same environment first.
        let _ = std::fs::remove_dir_all(&partial);
        assert!(python.exists(), "publish the virtual environment: {e}");
    }
    python
}

/// Runs `tests/compat/sdk_send.py` for one SDK against the relay and returns its report.
async fn run_sdk(flavour: &'static str, relay: &TestRelay) -> Value {
    let base = format!("http://{}", relay.http);
    let output = tokio::task::spawn_blocking(move || {
        let python = sdk_python();
        Command::new(python)
            .arg(SCRIPT)
            .args([flavour, &base, KEY])
            .output()
            .expect("run the SDK script")
    })
    .await
    .expect("SDK task");
    assert!(
        output.status.success(),
        "{flavour} SDK script failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "SDK script output is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// A relay with one API key (all scopes) and [`SUPPRESSED`] on its suppression list.
async fn relay_with_key(world: &World) -> TestRelay {
    let config = format!(
        "{}\n[http]\napi_keys = [{{ name = \"app\", key_hash = \"{KEY_HASH}\", scopes = [\"send\", \"read\", \"admin\"] }}]\n",
        world.config(&["1s"], "1h")
    );
    let relay = TestRelay::start(&config).await;
    let (status, _) = authed(
        &relay,
        "POST",
        "/v1/suppressions",
        Some(json!({"address": SUPPRESSED})),
    )
    .await;
    assert_eq!(status, 201, "suppress {SUPPRESSED}");
    relay
}

/// An authenticated request with an optional JSON body.
async fn authed(relay: &TestRelay, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let raw = body.map(|b| serde_json::to_vec(&b).expect("json"));
    let auth = format!("Bearer {KEY}");
    let (status, bytes) = http_request(
        relay.http,
        method,
        path,
        raw.as_deref(),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
    )
    .await
    .expect("http request");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The delivered message whose Subject is `subject`, as text, with its envelope recipients.
fn delivered(world: &World, subject: &str) -> Option<(String, Vec<String>)> {
    [&world.mx1, &world.mx2]
        .iter()
        .flat_map(|mx| mx.messages())
        .find_map(|m| {
            let text = String::from_utf8_lossy(&m.data).into_owned();
            let mut rcpts = m.rcpt_to.clone();
            rcpts.sort();
            text.contains(&format!("\r\nSubject: {subject}\r\n"))
                .then_some((text, rcpts))
        })
}

/// Waits until every subject was delivered; returns them in order.
async fn wait_delivered(world: &World, subjects: &[&str]) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for subject in subjects {
        out.push(
            wait_until(&format!("delivery of {subject}"), async || {
                delivered(world, subject)
            })
            .await,
        );
    }
    out
}

/// The decoded contents of the part named `filename` (or with Content-ID `cid`) in `message`.
fn part<'a>(message: &'a mail_parser::Message<'a>, pick: Pick<'_>) -> &'a [u8] {
    message
        .parts
        .iter()
        .find(|p| match pick {
            Pick::File(name) => p.attachment_name() == Some(name),
            Pick::Cid(cid) => p.content_id() == Some(cid),
        })
        .unwrap_or_else(|| panic!("no part {pick:?}"))
        .contents()
}

/// How [`part`] finds a MIME part.
#[derive(Debug, Clone, Copy)]
enum Pick<'a> {
    File(&'a str),
    Cid(&'a str),
}

fn parse(text: &str) -> mail_parser::Message<'_> {
    MessageParser::default()
        .parse(text.as_bytes())
        .expect("a MIME message")
}

const LOGO: &[u8] = b"\x89PNG fake logo bytes";

fn is_queue_id(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[tokio::test]
async fn postmark_sdk_sends_through_the_relay() {
    let world = World::start().await;
    let relay = relay_with_key(&world).await;
    let report = run_sdk("postmark", &relay).await;

    for case in ["plain", "rich", "attach"] {
        let ok = &report[case]["ok"];
        assert_eq!(ok["ErrorCode"], 0, "{case}: {report:#}");
        assert_eq!(ok["Message"], "OK", "{case}: {report:#}");
        assert!(is_queue_id(&ok["MessageID"]), "{case}: {report:#}");
        assert!(ok["SubmittedAt"].is_string(), "{case}: {report:#}");
    }
    assert_eq!(
        report["plain"]["ok"]["To"],
        "\"Lee, Ann\" <ann@example.test>, bob@example.test"
    );
    let batch = report["batch"]["ok"].as_array().expect("batch answer");
    assert_eq!(batch.len(), 3, "{report:#}");
    assert_eq!(batch[0]["ErrorCode"], 0);
    assert_eq!(batch[1]["ErrorCode"], 300, "{report:#}");
    assert!(batch[1].get("MessageID").is_none());
    assert_eq!(batch[2]["ErrorCode"], 0);
    for (case, code) in [
        ("suppressed", 406),
        ("invalid", 300),
        ("template", 1101),
        ("bad_token", 10),
    ] {
        assert_eq!(report[case]["error"], "ClientError", "{case}: {report:#}");
        assert_eq!(report[case]["code"], code, "{case}: {report:#}");
    }
    assert!(
        report["suppressed"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(SUPPRESSED)),
        "{report:#}"
    );

    let got = wait_delivered(
        &world,
        &[
            "pm-plain",
            "pm-rich",
            "pm-attach",
            "pm-batch-1",
            "pm-batch-2",
        ],
    )
    .await;
    let (plain, rcpts) = &got[0];
    assert_eq!(rcpts, &["ann@example.test", "bob@example.test"]);
    assert!(
        plain.contains("To: \"Lee, Ann\" <ann@example.test>"),
        "{plain}"
    );
    assert!(
        plain.contains("From: \"The App\" <app@sender.test>"),
        "{plain}"
    );
    assert!(plain.contains("plain body from postmark"), "{plain}");

    let (rich, rcpts) = &got[1];
    assert_eq!(
        rcpts,
        &[
            "carol@example.test",
            "dave@example.test",
            "hidden@example.test"
        ]
    );
    assert!(rich.contains("Cc: \"Dave\" <dave@example.test>"), "{rich}");
    assert!(rich.contains("Reply-To: <help@sender.test>"), "{rich}");
    assert!(rich.contains("X-Order: 42"), "{rich}");
    assert!(!rich.to_ascii_lowercase().contains("\nbcc:"), "{rich}");
    assert!(rich.contains("multipart/alternative"), "{rich}");
    assert!(
        rich.contains("<p>rich html</p>") && rich.contains("rich text"),
        "{rich}"
    );
    let id = report["rich"]["ok"]["MessageID"].as_str().expect("id");
    let (_, status) = authed(&relay, "GET", &format!("/v1/messages/{id}"), None).await;
    assert_eq!(status["tags"], json!(["welcome"]), "{status}");
    assert_eq!(status["metadata"], json!({"user": "7"}), "{status}");

    let (attach, _) = &got[2];
    let message = parse(attach);
    assert_eq!(
        part(&message, Pick::File("report.txt")),
        b"quarterly report"
    );
    assert_eq!(part(&message, Pick::Cid("logo@app")), LOGO);
    assert!(attach.contains("Content-Type: image/png"), "{attach}");
    assert!(attach.contains("multipart/related"), "{attach}");

    // The suppressed message was recorded like any other, and never attempted.
    assert!(delivered(&world, "pm-suppressed").is_none());
    assert!(delivered(&world, "pm-batch-bad").is_none());
    assert!(delivered(&world, "pm-bad-token").is_none());
}

#[tokio::test]
async fn resend_sdk_sends_through_the_relay() {
    let world = World::start().await;
    let relay = relay_with_key(&world).await;
    let report = run_sdk("resend", &relay).await;

    for case in ["plain", "rich", "attach", "idempotent_first", "suppressed"] {
        assert!(is_queue_id(&report[case]["ok"]["id"]), "{case}: {report:#}");
    }
    assert_eq!(
        report["idempotent_first"]["ok"]["id"], report["idempotent_again"]["ok"]["id"],
        "{report:#}"
    );
    let data = report["batch"]["ok"]["data"]
        .as_array()
        .expect("batch data");
    assert_eq!(data.len(), 2, "{report:#}");
    assert!(data.iter().all(|d| is_queue_id(&d["id"])), "{report:#}");
    assert_eq!(
        report["batch_invalid"]["error"], "ValidationError",
        "{report:#}"
    );
    assert_eq!(
        report["remote_attachment"]["error"], "ValidationError",
        "{report:#}"
    );
    assert!(
        report["remote_attachment"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("path")),
        "{report:#}"
    );
    assert_eq!(
        report["bad_key"]["error"], "InvalidApiKeyError",
        "{report:#}"
    );
    let plain_id = report["plain"]["ok"]["id"].as_str().expect("id").to_owned();
    assert_eq!(report["get"]["ok"]["id"], plain_id, "{report:#}");
    assert_eq!(report["get"]["ok"]["object"], "email", "{report:#}");
    assert_eq!(
        report["get"]["ok"]["to"],
        json!(["frank@example.test"]),
        "{report:#}"
    );

    let got = wait_delivered(
        &world,
        &[
            "rs-plain",
            "rs-rich",
            "rs-attach",
            "rs-batch-1",
            "rs-batch-2",
            "rs-idem",
        ],
    )
    .await;
    let (plain, rcpts) = &got[0];
    assert_eq!(rcpts, &["frank@example.test"]);
    assert!(plain.contains("plain body from resend"), "{plain}");

    let (rich, rcpts) = &got[1];
    assert_eq!(
        rcpts,
        &[
            "hidden@example.test",
            "ivy@example.test",
            "jack@example.test",
            "kate@example.test"
        ]
    );
    assert!(rich.contains("\"Jack\" <jack@example.test>"), "{rich}");
    assert!(rich.contains("Cc: <kate@example.test>"), "{rich}");
    assert!(rich.contains("Reply-To: <help@sender.test>"), "{rich}");
    assert!(rich.contains("X-Order: 43"), "{rich}");
    assert!(!rich.to_ascii_lowercase().contains("\nbcc:"), "{rich}");
    let rich_id = report["rich"]["ok"]["id"].as_str().expect("id");
    let (_, status) = authed(&relay, "GET", &format!("/v1/messages/{rich_id}"), None).await;
    assert_eq!(
        status["metadata"],
        json!({"category": "welcome"}),
        "{status}"
    );

    let (attach, _) = &got[2];
    let message = parse(attach);
    assert_eq!(part(&message, Pick::File("data.txt")), b"raw byte content");
    assert_eq!(part(&message, Pick::Cid("logo@app")), LOGO);

    // One message for the two idempotent calls; none for the refused ones.
    let idem = [&world.mx1, &world.mx2]
        .iter()
        .flat_map(|mx| mx.messages())
        .filter(|m| String::from_utf8_lossy(&m.data).contains("Subject: rs-idem\r\n"))
        .count();
    assert_eq!(idem, 1);
    for subject in [
        "rs-batch-never",
        "rs-batch-bad",
        "rs-remote",
        "rs-bad-key",
        "rs-suppressed",
    ] {
        assert!(
            delivered(&world, subject).is_none(),
            "{subject} was delivered"
        );
    }

    // GET /emails/{id} follows the message: delivered, or suppressed.
    let last_event = async |id: &str| {
        let (status, body) = authed(&relay, "GET", &format!("/emails/{id}"), None).await;
        assert_eq!(status, 200, "{body}");
        body["last_event"].as_str().map(str::to_owned)
    };
    wait_until("plain message reported delivered", async || {
        (last_event(&plain_id).await.as_deref() == Some("delivered")).then_some(())
    })
    .await;
    let suppressed_id = report["suppressed"]["ok"]["id"].as_str().expect("id");
    assert_eq!(
        last_event(suppressed_id).await.as_deref(),
        Some("suppressed")
    );
    let (status, body) = authed(&relay, "GET", "/emails/0000000000000000", None).await;
    assert_eq!(
        (status, &body["name"]),
        (404, &json!("not_found")),
        "{body}"
    );
}
