//! SMTP TLS reporting (RFC 8460) end to end: sessions to a domain with an enforced MTA-STS
//! policy are counted, and the report reaches the domain's HTTPS collector (gzip JSON) and its
//! report mailbox (a multipart/report message through the relay's own queue).

use std::io::Read as _;

use postrider_testkit::HttpResponse;

use crate::harness::{TestRelay, wait_until};
use crate::outbound_tls::{
    COLLECTOR, COLLECTOR_PATH, REPORT_MAILBOX, StsWorld, recipient_in, send,
};
use crate::world::received;

/// The TLS report settings of these tests.
const TLS_REPORTS: &str = "\n[tls_reports]\nenabled = true\norganization = \"Sender Org\"\n\
                           contact = \"tls-admin@sender.test\"\nfrom = \"tlsrpt@sender.test\"\n";

/// Today (UTC) as `YYYY-MM-DD`.
fn today() -> String {
    let now = postrider_core::clock::Clock::now(&postrider_core::clock::SystemClock);
    postrider_core::tls_report::UtcDay::of(now).to_string()
}

/// `postrider_tls_reports_total{transport,result}`.
async fn reports_metric(relay: &TestRelay, transport: &str, result: &str) -> f64 {
    relay
        .metric(&format!(
            "postrider_tls_reports_total{{result=\"{result}\",transport=\"{transport}\"}}"
        ))
        .await
        .unwrap_or(0.0)
}

/// The world with the report collector answering 200, and a relay sending TLS reports.
async fn start_with_reports() -> (StsWorld, TestRelay) {
    let world = StsWorld::start().await;
    world.https.respond_to(
        COLLECTOR,
        COLLECTOR_PATH,
        HttpResponse::ok("text/plain", "thanks\n"),
    );
    let relay = TestRelay::start(&format!("{}{TLS_REPORTS}", world.config())).await;
    (world, relay)
}

/// The one report the collector received: a gzipped JSON POST.
fn uploaded_report(world: &StsWorld) -> serde_json::Value {
    let uploads: Vec<_> = world
        .https
        .requests()
        .into_iter()
        .filter(|r| r.path == COLLECTOR_PATH)
        .collect();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    let upload = &uploads[0];
    assert_eq!(upload.method, "POST");
    assert_eq!(
        upload.header("content-type"),
        Some("application/tlsrpt+gzip")
    );
    let mut json = String::new();
    flate2::read::GzDecoder::new(upload.body.as_slice())
        .read_to_string(&mut json)
        .expect("gzip");
    serde_json::from_str(&json).expect("report JSON")
}

#[tokio::test]
async fn daily_report_reaches_the_https_collector_and_the_report_mailbox() {
    let (world, relay) = start_with_reports().await;

    // enforced.test: the plaintext host (starttls-not-supported) and the wrong-name host
    // (certificate-host-mismatch) fail the policy, the good host passes it.
    let id = send(&relay, "user@enforced.test", "counted").await;
    received(&world.good, 1).await;
    recipient_in(&relay, &id, "delivered").await;
    // elsewhere.test: its only MX is not in the policy; it publishes no reporting record.
    let id = send(&relay, "user@elsewhere.test", "unlisted").await;
    recipient_in(&relay, &id, "deferred").await;

    let day = today();
    let (status, body) = relay
        .post_json("/v1/tls-reports/send", &serde_json::json!({ "day": day }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["day"], day.as_str(), "{body}");
    let domains = body["domains"].as_array().expect("domains");
    let enforced = domains
        .iter()
        .find(|d| d["domain"] == "enforced.test")
        .unwrap_or_else(|| panic!("enforced.test reported: {body}"));
    let collector_url = format!(
        "https://{COLLECTOR}:{}{COLLECTOR_PATH}",
        world.https.addr().port()
    );
    assert_eq!(
        enforced["sent"],
        serde_json::json!([collector_url, format!("mailto:{REPORT_MAILBOX}")]),
        "{body}"
    );
    let elsewhere = domains
        .iter()
        .find(|d| d["domain"] == "elsewhere.test")
        .unwrap_or_else(|| panic!("elsewhere.test counted: {body}"));
    assert_eq!(elsewhere["sent"], serde_json::json!([]), "{body}");
    assert!(
        elsewhere["failed"][0]
            .as_str()
            .is_some_and(|f| f.contains("TLSRPTv1")),
        "{body}"
    );

    // The collector got the gzipped JSON report.
    let report = uploaded_report(&world);
    assert_eq!(report["organization-name"], "Sender Org", "{report}");
    assert_eq!(report["contact-info"], "tls-admin@sender.test", "{report}");
    assert_eq!(
        report["date-range"]["start-datetime"],
        format!("{day}T00:00:00Z"),
        "{report}"
    );
    let policy = &report["policies"][0];
    assert_eq!(policy["policy"]["policy-type"], "sts", "{report}");
    assert_eq!(
        policy["policy"]["policy-domain"], "enforced.test",
        "{report}"
    );
    assert_eq!(
        policy["policy"]["mx-host"],
        serde_json::json!(["*.enforced.test"]),
        "{report}"
    );
    assert!(
        policy["policy"]["policy-string"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l == "mode: enforce")),
        "{report}"
    );
    assert_eq!(
        policy["summary"],
        serde_json::json!({
            "total-successful-session-count": 1,
            "total-failure-session-count": 2
        }),
        "{report}"
    );
    let detail = |result: &str| {
        policy["failure-details"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["result-type"] == result).cloned())
            .unwrap_or_else(|| panic!("no {result} in {report}"))
    };
    let no_tls = detail("starttls-not-supported");
    assert_eq!(no_tls["receiving-mx-hostname"], "plain.enforced.test");
    assert_eq!(no_tls["receiving-ip"], "127.0.8.3");
    assert_eq!(no_tls["failed-session-count"], 1);
    let mismatch = detail("certificate-host-mismatch");
    assert_eq!(mismatch["receiving-mx-hostname"], "wrongname.enforced.test");
    assert_eq!(mismatch["receiving-ip"], "127.0.8.4");

    // The report mailbox got the RFC 8460 message through the queue.
    let mail = wait_until("the report message", async || {
        world
            .plain
            .messages()
            .into_iter()
            .find(|m| m.rcpt_to.iter().any(|r| r == REPORT_MAILBOX))
    })
    .await;
    let text = String::from_utf8_lossy(&mail.data);
    assert_eq!(mail.mail_from, "tlsrpt@sender.test");
    assert!(text.contains("TLS-Report-Domain: enforced.test"), "{text}");
    assert!(text.contains("TLS-Report-Submitter: "), "{text}");
    assert!(text.contains("multipart/report"), "{text}");
    assert!(text.contains("report-type=\"tlsrpt\""), "{text}");
    assert!(text.contains("application/tlsrpt+gzip"), "{text}");
    assert!(text.contains(".json.gz"), "{text}");

    assert_eq!(reports_metric(&relay, "https", "sent").await, 1.0);
    assert_eq!(reports_metric(&relay, "mailto", "sent").await, 1.0);

    // Reported counts are gone: a second run sends nothing more for enforced.test.
    let (status, body) = relay
        .post_json("/v1/tls-reports/send", &serde_json::json!({ "day": day }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !body["domains"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["domain"] == "enforced.test")),
        "{body}"
    );
    assert_eq!(reports_metric(&relay, "https", "sent").await, 1.0);
}

#[tokio::test]
async fn the_trigger_is_refused_while_reports_are_off_or_for_a_bad_day() {
    let world = StsWorld::start().await;
    let relay = TestRelay::start(&world.config()).await;
    let (status, body) = relay
        .post_json("/v1/tls-reports/send", &serde_json::json!({}))
        .await;
    assert_eq!(status, 501, "{body}");
    assert_eq!(body["error"]["code"], "not_configured", "{body}");
    let (status, body) = relay
        .post_json(
            "/v1/tls-reports/send",
            &serde_json::json!({"day": "03/12/2026"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn counts_in_memory_are_kept_across_a_restart() {
    let (world, mut relay) = start_with_reports().await;
    let id = send(&relay, "user@enforced.test", "before the restart").await;
    recipient_in(&relay, &id, "delivered").await;
    // Well within the flush interval: the counts are only in memory until the shutdown.
    relay.restart().await;

    let (status, body) = relay
        .post_json(
            "/v1/tls-reports/send",
            &serde_json::json!({ "day": today() }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let report = uploaded_report(&world);
    assert_eq!(
        report["policies"][0]["summary"],
        serde_json::json!({
            "total-successful-session-count": 1,
            "total-failure-session-count": 2
        }),
        "{report}"
    );
}
