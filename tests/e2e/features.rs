//! Features wired through the binary's configuration: DKIM signing and `check-domain`, webhooks,
//! idempotent submission across a restart, and the event log.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::harness::{TestRelay, http_request, wait_until};
use crate::smtp_client::{message, submit};
use crate::world::{World, received};

/// Runs the CLI without blocking the test's runtime (the DNS server and sinks live on it).
async fn postrider(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_postrider"))
        .args(args)
        .output()
        .await
        .expect("run postrider");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn dkim_keygen_signing_and_check_domain() {
    let world = World::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("sender.test.ed.pem");
    let (ok, out, err) = postrider(&[
        "dkim",
        "keygen",
        "--domain",
        "sender.test",
        "--selector",
        "ed1",
        "--algorithm",
        "ed25519-sha256",
        "--out",
        key.to_str().unwrap(),
    ])
    .await;
    assert!(ok, "{err}");
    let txt_line = out
        .lines()
        .find(|l| l.starts_with("ed1._domainkey.sender.test"))
        .unwrap_or_else(|| panic!("TXT record line in\n{out}"));
    let txt = txt_line
        .split_once("TXT \"")
        .map(|(_, t)| t.trim_end_matches('"'))
        .expect("quoted TXT");
    assert!(txt.starts_with("v=DKIM1; k=ed25519; p="), "{txt}");
    // Never overwrites an existing key.
    let (ok, _, _) = postrider(&[
        "dkim",
        "keygen",
        "--domain",
        "sender.test",
        "--selector",
        "ed1",
        "--algorithm",
        "ed25519-sha256",
        "--out",
        key.to_str().unwrap(),
    ])
    .await;
    assert!(!ok);

    world
        .dns
        .add_records(
            postrider_testkit::Zone::new("test.")
                .txt("ed1._domainkey.sender.test", txt)
                .txt("sender.test", "v=spf1 ip4:127.0.0.1 -all"),
        )
        .await
        .expect("publish records");
    let config = format!(
        "{}\n[[dkim.keys]]\ndomain = \"sender.test\"\nselector = \"ed1\"\nkey_file = {:?}\nalgorithm = \"ed25519-sha256\"\n",
        world
            .config(&["1s"], "1h")
            .replace("[delivery]\n", "[delivery]\npublic_ips = [\"127.0.0.1\"]\n"),
        key.display().to_string()
    );
    let relay = TestRelay::start(&config).await;
    submit(
        relay.smtp,
        "app@sender.test",
        &["user@example.test"],
        &message("app@sender.test", "user@example.test", "signed"),
    )
    .await;
    let got = received(&world.mx1, 1).await;
    let data = String::from_utf8_lossy(&got[0].data);
    let sig = data
        .lines()
        .find(|l| l.starts_with("DKIM-Signature:"))
        .unwrap_or_else(|| panic!("signed:\n{data}"));
    assert!(
        sig.contains("d=sender.test") && sig.contains("s=ed1") && sig.contains("a=ed25519-sha256"),
        "{sig}"
    );

    // check-domain with the same config: SPF authorises 127.0.0.1, DKIM matches, DMARC is missing.
    let cfg_path = dir.path().join("check.toml");
    std::fs::write(
        &cfg_path,
        format!("hostname = \"relay.postrider.test\"\n{config}"),
    )
    .expect("write config");
    let (ok, out, err) = postrider(&[
        "check-domain",
        "sender.test",
        "--config",
        cfg_path.to_str().unwrap(),
        "--json",
    ])
    .await;
    assert!(
        !ok,
        "DMARC missing fails the report: {out}{err}\nDNS queries: {:?}",
        world.dns.queries()
    );
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    let check = |name: &str| {
        report["checks"]
            .as_array()
            .and_then(|c| {
                c.iter()
                    .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with(name)))
            })
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(check("spf")["status"], "pass", "{report}");
    assert_eq!(check("dkim")["status"], "pass", "{report}");
    assert_eq!(check("dmarc")["status"], "fail", "{report}");
    assert!(
        check("dmarc")["fix"]
            .as_str()
            .is_some_and(|f| f.contains("v=DMARC1")),
        "{report}"
    );
    drop(relay);
}

/// A local HTTP receiver recording webhook posts.
pub(crate) async fn webhook_receiver() -> (
    SocketAddr,
    Arc<Mutex<Vec<(axum::http::HeaderMap, serde_json::Value)>>>,
) {
    let seen: Arc<Mutex<Vec<(axum::http::HeaderMap, serde_json::Value)>>> = Arc::default();
    let store = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let store = store.clone();
                async move {
                    let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    store.lock().expect("seen").push((headers, v));
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, seen)
}

#[tokio::test]
async fn webhooks_events_and_idempotency_through_the_binary() {
    let world = World::start().await;
    let (hook, seen) = webhook_receiver().await;
    let config = format!(
        "{}\n[[webhooks]]\nurl = \"http://{hook}/hook\"\nsecret = \"0123456789abcdef-secret\"\nevents = [\"delivered\", \"bounced\"]\n",
        world.config(&["1s"], "1h")
    );
    let mut relay = TestRelay::start(&config).await;

    let body = serde_json::to_vec(&json!({"from": "app@sender.test", "to": ["user@example.test", "bad@example.test"], "subject": "hooks", "text": "hi"})).unwrap();
    let headers = [
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "order-42"),
    ];
    let (status, first) = http_request(relay.http, "POST", "/v1/messages", Some(&body), &headers)
        .await
        .expect("post");
    assert_eq!(status, 202);
    let first: serde_json::Value = serde_json::from_slice(&first).expect("json");
    let id = first["id"].as_str().expect("id").to_owned();

    // Webhooks: one delivered and one bounced event for the message, signed, and only the
    // subscribed kinds (the bounce DSN's own delivery may be posted too).
    let posts = wait_until("two webhook posts for the message", async || {
        let s = seen.lock().expect("seen").clone();
        let about = s.iter().filter(|(_, v)| v["id"] == id.as_str()).count();
        (about >= 2).then_some(s)
    })
    .await;
    let mut kinds: Vec<String> = posts
        .iter()
        .filter(|(_, v)| v["id"] == id.as_str())
        .map(|(_, v)| v["type"].as_str().unwrap_or("").to_owned())
        .collect();
    kinds.sort();
    assert_eq!(kinds, vec!["bounced", "delivered"], "{posts:?}");
    for (h, v) in &posts {
        assert!(
            v["id"] == id.as_str()
                || (v["type"] == "delivered" && v["metadata"]["dsn_for"] == id.as_str()),
            "{v}"
        );
        assert!(
            h.get("postrider-signature")
                .and_then(|s| s.to_str().ok())
                .is_some_and(|s| s.starts_with("v1=")),
            "{h:?}"
        );
        assert!(h.get("postrider-timestamp").is_some());
    }

    // Events: the durable log has accepted, delivered and bounced entries for the message.
    let (status, events) = relay.get_json("/v1/events?limit=100").await;
    assert_eq!(status, 200, "{events}");
    let types: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["id"] == id.as_str())
        .filter_map(|e| e["type"].as_str())
        .collect();
    for t in ["accepted", "delivered", "bounced"] {
        assert!(types.contains(&t), "{t} in {types:?}");
    }

    // Idempotency: the same request after a restart returns the same id and queues nothing.
    relay.restart().await;
    let (status, again) = http_request(relay.http, "POST", "/v1/messages", Some(&body), &headers)
        .await
        .expect("post");
    assert_eq!(status, 202);
    let again: serde_json::Value = serde_json::from_slice(&again).expect("json");
    assert_eq!(again["id"], id.as_str());
    let other = serde_json::to_vec(&json!({"from": "app@sender.test", "to": ["user@example.test"], "subject": "different", "text": "x"})).unwrap();
    let (status, _) = http_request(relay.http, "POST", "/v1/messages", Some(&other), &headers)
        .await
        .expect("post");
    assert_eq!(status, 409);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(world.mx1.messages().len(), 1, "delivered once");

    // The hard bounce (5.1.1) put bad@example.test on the suppression list.
    let (status, s) = relay.get_json("/v1/suppressions/bad@example.test").await;
    assert_eq!(status, 200, "{s}");
}

#[tokio::test]
async fn metrics_after_a_scripted_run() {
    let world = World::start().await;
    let relay = world.relay().await;
    // One SMTP message with a good and a bad recipient, one HTTP message, one refused message.
    submit(
        relay.smtp,
        "app@sender.test",
        &["good@example.test", "bad@example.test"],
        &message("app@sender.test", "good@example.test", "m1"),
    )
    .await;
    let (status, _) = relay.post_json("/v1/messages", &json!({"from": "app@sender.test", "to": ["user2@example.test"], "subject": "m2", "text": "x"})).await;
    assert_eq!(status, 202);
    {
        let (mut c, _) = crate::smtp_client::SmtpClient::connect(relay.smtp).await;
        c.cmd("EHLO client.postrider.test").await;
        c.cmd("MAIL FROM:<app@sender.test>").await;
        c.cmd("RCPT TO:<x@example.test>").await;
        c.cmd("DATA").await;
        c.send_raw(b"Subject: bare\n\nbare LF\r\n.\r\n").await;
        assert_eq!(c.read_reply().await.code, 550);
    }
    // Delivery of both messages plus the bounce to the sender.
    received(&world.mx1, 2).await;
    received(&world.sender_mx, 1).await;
    wait_until("queue drained", async || {
        (relay.metric("postrider_queue_messages").await == Some(0.0)).then_some(())
    })
    .await;

    let expect = [
        ("postrider_messages_accepted_total{source=\"smtp\"}", 1.0),
        ("postrider_messages_accepted_total{source=\"http\"}", 1.0),
        (
            "postrider_delivery_attempts_total{result=\"delivered\"}",
            3.0,
        ), // good, user2, the DSN
        ("postrider_delivery_attempts_total{result=\"bounced\"}", 1.0),
        (
            "postrider_delivery_attempts_total{result=\"deferred\"}",
            0.0,
        ),
        ("postrider_bounces_generated_total", 1.0),
        ("postrider_queue_messages", 0.0),
        (
            "postrider_smtp_transactions_total{result=\"accepted\"}",
            1.0,
        ),
        (
            "postrider_smtp_transactions_total{result=\"rejected\"}",
            1.0,
        ),
        (
            "postrider_smtp_rejections_total{reason=\"bare_newline\"}",
            1.0,
        ),
        (
            "postrider_delivery_results_total{result=\"bounced\",status_class=\"5.x\"}",
            1.0,
        ),
        ("postrider_delivery_status_codes_total{code=\"5.1.1\"}", 1.0),
        ("postrider_destinations_suspended", 0.0),
        ("postrider_webhook_outbox", 0.0),
        ("postrider_build_info{version=\"0.1.0\"}", 1.0),
    ];
    let (_, body) = http_request(relay.http, "GET", "/metrics", None, &[])
        .await
        .expect("scrape");
    let text = String::from_utf8(body).expect("utf-8");
    for (series, want) in expect {
        let got = text.lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|r| r.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        assert_eq!(got, Some(want), "{series} in\n{text}");
    }
    // Every family the relay defines is exported (sampled gauges included).
    for name in [
        "postrider_delivery_duration_seconds_count",
        "postrider_delivery_queue_time_seconds_count",
        "postrider_delivery_by_domain_total",
        "postrider_dns_lookups_total",
        "postrider_outbound_connections",
        "postrider_outbound_tls_total",
        "postrider_queue_messages_by_state",
        "postrider_queue_oldest_message_age_seconds",
        "postrider_smtp_sessions_total",
        "postrider_http_requests_total",
        "postrider_store_flush_seconds_count",
        "postrider_store_flush_batch_count",
        "postrider_store_corrupt_records_total",
        "postrider_store_size_bytes",
        "postrider_data_dir_free_bytes",
        "postrider_webhook_deliveries_total",
        "postrider_webhook_dropped_total",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from\n{text}"
        );
    }
    let free = relay
        .metric("postrider_data_dir_free_bytes")
        .await
        .unwrap_or(0.0);
    assert!(free > 0.0, "disk free is sampled");
}
