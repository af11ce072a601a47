//! Outbound TLS policy: MTA-STS (RFC 8461) against a real DNS server, a real HTTPS policy server
//! and real SMTP peers on loopback, with and without STARTTLS, with certificates valid, for the
//! wrong name, or from an unknown issuer.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use postrider_testkit::{DnsServer, HttpResponse, HttpsServer, RecordType, SmtpSink, Zone};

use crate::harness::{TestRelay, wait_until};
use crate::smtp_client::{message, submit};
use crate::world::{received, stays_at};

/// TLS with a trusted certificate valid for every `good.*` MX name.
const GOOD: Ipv4Addr = Ipv4Addr::new(127, 0, 8, 2);
/// No STARTTLS.
const PLAIN: Ipv4Addr = Ipv4Addr::new(127, 0, 8, 3);
/// TLS with a trusted certificate that does not name the MX.
const WRONG_NAME: Ipv4Addr = Ipv4Addr::new(127, 0, 8, 4);
/// TLS with a certificate valid for its name but not trusted.
const UNTRUSTED: Ipv4Addr = Ipv4Addr::new(127, 0, 8, 5);
/// The HTTPS server of every `mta-sts.<domain>`.
const POLICY_SERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 8, 10);
/// An HTTPS server whose certificate is not trusted (`mta-sts.badpki.test`).
const UNTRUSTED_POLICY_SERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 8, 11);

const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// The name of the TLS report collector (served by the policy server).
pub(crate) const COLLECTOR: &str = "collector.reports.test";
/// Where `enforced.test` wants its TLS reports by HTTPS.
pub(crate) const COLLECTOR_PATH: &str = "/tlsrpt";
/// Where `enforced.test` wants its TLS reports by mail (MX: the plain host).
pub(crate) const REPORT_MAILBOX: &str = "tlsrpt@reports.test";

/// Receiving domains with their MTA-STS policies, MX hosts and a policy server.
pub(crate) struct StsWorld {
    pub(crate) dns: DnsServer,
    pub(crate) good: SmtpSink,
    pub(crate) plain: SmtpSink,
    pub(crate) wrong_name: SmtpSink,
    pub(crate) untrusted: SmtpSink,
    /// The policy server, also the TLS report collector ([`COLLECTOR`]).
    pub(crate) https: HttpsServer,
    /// Serves `badpki.test`'s enforce policy with an untrusted certificate, on the same port.
    pub(crate) untrusted_https: HttpsServer,
    /// PEM file trusting the policy server and the `good` and `wrong_name` MX hosts.
    pub(crate) ca: Arc<tempfile::TempDir>,
}

/// The domains served, with their policy (`None`: no `_mta-sts` record).
const POLICIES: [(&str, Option<(&str, &str)>); 6] = [
    ("enforced.test", Some(("enforce", "*.enforced.test"))),
    ("strict.test", Some(("enforce", "*.strict.test"))),
    ("elsewhere.test", Some(("enforce", "mx.elsewhere.test"))),
    ("testing.test", Some(("testing", "*.testing.test"))),
    ("cached.test", Some(("enforce", "*.cached.test"))),
    ("nopolicy.test", None),
];

impl StsWorld {
    /// - `enforced.test`: MX 10 plain, 20 wrong-name, 30 good (enforce, `*.enforced.test`)
    /// - `strict.test`: MX 10 plain, 20 untrusted (enforce, `*.strict.test`)
    /// - `elsewhere.test`: MX 10 `good.other.test` (enforce, only `mx.elsewhere.test`)
    /// - `testing.test`: MX 10 plain (testing)
    /// - `cached.test`: MX 10 plain, 20 good (enforce)
    /// - `nopolicy.test`: MX 10 plain, no policy
    /// - `badpki.test`: MX 10 plain, an enforce policy on a server with an untrusted certificate
    /// - `enforced.test` wants TLS reports at `https://collector.reports.test:<port>/tlsrpt`
    ///   and `mailto:tlsrpt@reports.test` (MX 10 plain)
    pub(crate) async fn start() -> StsWorld {
        let good_names = ["good.enforced.test", "good.cached.test", "good.other.test"];
        let good = SmtpSink::builder()
            .bind(IpAddr::V4(GOOD), 0)
            .tls(true)
            .tls_names(good_names.iter().map(|n| (*n).to_owned()).collect())
            .start()
            .await
            .expect("good mx");
        let port = good.port();
        let plain = SmtpSink::builder()
            .bind(IpAddr::V4(PLAIN), port)
            .start()
            .await
            .expect("plain mx");
        let wrong_name = SmtpSink::builder()
            .bind(IpAddr::V4(WRONG_NAME), port)
            .tls(true)
            .start()
            .await
            .expect("wrong-name mx");
        let untrusted = SmtpSink::builder()
            .bind(IpAddr::V4(UNTRUSTED), port)
            .tls(true)
            .tls_names(vec!["untrusted.strict.test".into()])
            .start()
            .await
            .expect("untrusted mx");
        let https = HttpsServer::start(
            IpAddr::V4(POLICY_SERVER),
            0,
            POLICIES
                .iter()
                .map(|(d, _)| format!("mta-sts.{d}"))
                .chain([COLLECTOR.to_owned()])
                .collect(),
        )
        .await
        .expect("policy server");
        let untrusted_https = HttpsServer::start(
            IpAddr::V4(UNTRUSTED_POLICY_SERVER),
            https.addr().port(),
            vec!["mta-sts.badpki.test".into()],
        )
        .await
        .expect("untrusted policy server");
        untrusted_https.respond(
            POLICY_PATH,
            HttpResponse::ok(
                "text/plain",
                "version: STSv1\nmode: enforce\nmx: *.badpki.test\nmax_age: 86400\n",
            ),
        );
        let mut zone = Zone::new("test.")
            .mx("enforced.test", 10, "plain.enforced.test")
            .mx("enforced.test", 20, "wrongname.enforced.test")
            .mx("enforced.test", 30, "good.enforced.test")
            .a("plain.enforced.test", PLAIN)
            .a("wrongname.enforced.test", WRONG_NAME)
            .a("good.enforced.test", GOOD)
            .mx("strict.test", 10, "plain.strict.test")
            .mx("strict.test", 20, "untrusted.strict.test")
            .a("plain.strict.test", PLAIN)
            .a("untrusted.strict.test", UNTRUSTED)
            .mx("elsewhere.test", 10, "good.other.test")
            .a("good.other.test", GOOD)
            .mx("testing.test", 10, "plain.testing.test")
            .a("plain.testing.test", PLAIN)
            .mx("cached.test", 10, "plain.cached.test")
            .mx("cached.test", 20, "good.cached.test")
            .a("plain.cached.test", PLAIN)
            .a("good.cached.test", GOOD)
            .mx("nopolicy.test", 10, "plain.nopolicy.test")
            .a("plain.nopolicy.test", PLAIN)
            .mx("badpki.test", 10, "plain.badpki.test")
            .a("plain.badpki.test", PLAIN)
            .txt("_mta-sts.badpki.test", "v=STSv1; id=1")
            .a("mta-sts.badpki.test", UNTRUSTED_POLICY_SERVER)
            .txt(
                "_smtp._tls.enforced.test",
                &format!(
                    "v=TLSRPTv1; rua=https://{COLLECTOR}:{}{COLLECTOR_PATH},mailto:{REPORT_MAILBOX}",
                    https.addr().port()
                ),
            )
            .a(COLLECTOR, POLICY_SERVER)
            .mx("reports.test", 10, "plain.reports.test")
            .a("plain.reports.test", PLAIN);
        for (domain, policy) in POLICIES {
            let Some((mode, mx)) = policy else {
                continue;
            };
            zone = zone
                .txt(&format!("_mta-sts.{domain}"), "v=STSv1; id=1")
                .a(&format!("mta-sts.{domain}"), POLICY_SERVER);
            https.respond_to(
                &format!("mta-sts.{domain}"),
                POLICY_PATH,
                HttpResponse::ok(
                    "text/plain",
                    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n"),
                ),
            );
        }
        let dns = DnsServer::start([zone]).await.expect("dns");
        let ca = tempfile::tempdir().expect("tempdir");
        let pem = [
            https.cert_pem(),
            good.tls_cert_pem().expect("good cert"),
            wrong_name.tls_cert_pem().expect("wrong-name cert"),
        ]
        .concat();
        std::fs::write(ca.path().join("ca.pem"), pem).expect("write ca file");
        StsWorld {
            dns,
            good,
            plain,
            wrong_name,
            untrusted,
            https,
            untrusted_https,
            ca: Arc::new(ca),
        }
    }

    /// Relay configuration using this world, retrying every second.
    pub(crate) fn config(&self) -> String {
        format!(
            "[dns]\nnameservers = [\"{dns}\"]\ntimeout = \"1s\"\n\n[delivery]\nport = {port}\n\
             connect_timeout = \"2s\"\ncommand_timeout = \"3s\"\ndata_timeout = \"3s\"\n\
             lease = \"20s\"\nca_file = {ca:?}\nmta_sts_https_port = {https}\n\n\
             [retry]\nintervals = [\"1s\"]\nmax_age = \"1h\"\n",
            dns = self.dns.addr(),
            port = self.good.port(),
            ca = self.ca.path().join("ca.pem").display().to_string(),
            https = self.https.addr().port(),
        )
    }
}

/// Submits one message to `rcpt` and returns its queue id.
pub(crate) async fn send(relay: &TestRelay, rcpt: &str, subject: &str) -> String {
    submit(
        relay.smtp,
        "app@sender.test",
        &[rcpt],
        &message("app@sender.test", rcpt, subject),
    )
    .await
}

/// The first recipient of message `id` once its state is `state`.
pub(crate) async fn recipient_in(relay: &TestRelay, id: &str, state: &str) -> serde_json::Value {
    wait_until(&format!("{id} {state}"), async || {
        let (status, body) = relay.get_json(&format!("/v1/messages/{id}")).await;
        assert_eq!(status, 200, "{body}");
        let r = body["recipients"][0].clone();
        (r["state"] == state).then_some(r)
    })
    .await
}

/// The last reply of a recipient as `code text`.
fn last_reply(r: &serde_json::Value) -> String {
    format!(
        "{} {}",
        r["last_reply"]["code"],
        r["last_reply"]["text"].as_str().unwrap_or("")
    )
}

/// `postrider_tls_policy_results_total{policy="mta-sts",result}`.
async fn policy_results(relay: &TestRelay, result: &str) -> f64 {
    relay
        .metric(&format!(
            "postrider_tls_policy_results_total{{policy=\"mta-sts\",result=\"{result}\"}}"
        ))
        .await
        .unwrap_or(0.0)
}

fn subjects(sink: &SmtpSink) -> Vec<String> {
    sink.messages()
        .iter()
        .filter_map(|m| {
            String::from_utf8_lossy(&m.data)
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
        })
        .collect()
}

#[tokio::test]
async fn enforced_policy_delivers_only_to_authenticated_listed_hosts() {
    let world = StsWorld::start().await;
    let relay = TestRelay::start(&world.config()).await;

    // The plaintext and wrong-name hosts come first by preference; only the good host is used.
    let id = send(&relay, "user@enforced.test", "enforced").await;
    received(&world.good, 1).await;
    let r = recipient_in(&relay, &id, "delivered").await;
    assert_eq!(r["mx_host"], "good.enforced.test", "{r}");
    assert_eq!(r["tls"]["encrypted"], true, "{r}");
    assert_eq!(r["tls"]["verified"], true, "{r}");
    assert_eq!(r["tls"]["policy"], "mta-sts:enforce", "{r}");
    assert!(subjects(&world.plain).is_empty());
    assert!(world.wrong_name.messages().is_empty());
    assert!(policy_results(&relay, "starttls-not-supported").await >= 1.0);
    assert!(policy_results(&relay, "certificate-host-mismatch").await >= 1.0);
    assert!(policy_results(&relay, "success").await >= 1.0);
    wait_until("the delivery log line naming the policy", async || {
        relay
            .log_text()
            .lines()
            .any(|l| l.contains("delivery attempt") && l.contains("tls_policy=mta-sts:enforce"))
            .then_some(())
    })
    .await;

    // No STARTTLS, and an untrusted certificate: deferred, never sent.
    let id = send(&relay, "user@strict.test", "strict").await;
    let r = recipient_in(&relay, &id, "deferred").await;
    let reply = last_reply(&r);
    assert!(
        reply.starts_with("451 ") && reply.contains("MTA-STS policy of strict.test"),
        "{reply}"
    );
    assert_eq!(r["last_reply"]["enhanced"], "4.7.5", "{r}");
    assert!(
        policy_results(&relay, "certificate-not-trusted").await >= 1.0,
        "{reply}\n{}",
        relay.log_text()
    );
    assert!(world.untrusted.messages().is_empty());

    // The only MX is not listed in the policy: deferred, the host is not even contacted.
    let before = world.good.connection_count();
    let id = send(&relay, "user@elsewhere.test", "elsewhere").await;
    let r = recipient_in(&relay, &id, "deferred").await;
    let reply = last_reply(&r);
    assert!(
        reply.contains("MTA-STS policy of elsewhere.test: no MX host matches the policy"),
        "{reply}"
    );
    assert_eq!(world.good.connection_count(), before);
    stays_at(&world.plain, 0, Duration::from_secs(2)).await;
    assert_eq!(subjects(&world.good), vec!["enforced".to_owned()]);
}

#[tokio::test]
async fn testing_policy_and_no_policy_deliver_as_before() {
    let world = StsWorld::start().await;
    let relay = TestRelay::start(&world.config()).await;

    let id = send(&relay, "user@testing.test", "testing").await;
    let r = recipient_in(&relay, &id, "delivered").await;
    assert_eq!(r["tls"]["encrypted"], false, "{r}");
    assert_eq!(r["tls"]["policy"], "mta-sts:testing", "{r}");
    assert!(policy_results(&relay, "starttls-not-supported").await >= 1.0);
    let log = relay.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("MX host fails the MTA-STS policy")
                && l.contains("policy=mta-sts:testing")
                && l.contains("result=starttls-not-supported")),
        "the failure is reported:\n{log}"
    );

    let id = send(&relay, "user@nopolicy.test", "opportunistic").await;
    let r = recipient_in(&relay, &id, "delivered").await;
    assert_eq!(r["tls"]["encrypted"], false, "{r}");
    assert!(r["tls"].get("policy").is_none(), "{r}");

    // A policy whose server's certificate does not validate is no policy: delivered as before.
    let id = send(&relay, "user@badpki.test", "unvalidated policy").await;
    let r = recipient_in(&relay, &id, "delivered").await;
    assert!(r["tls"].get("policy").is_none(), "{r}");
    assert_eq!(
        world.untrusted_https.requests().len(),
        0,
        "no request after a failed handshake"
    );
    assert!(policy_results(&relay, "sts-webpki-invalid").await >= 1.0);
    assert_eq!(
        subjects(&world.plain),
        vec![
            "testing".to_owned(),
            "opportunistic".to_owned(),
            "unvalidated policy".to_owned()
        ]
    );
}

#[tokio::test]
async fn cached_policy_applies_while_the_policy_server_is_down_also_after_a_restart() {
    let world = StsWorld::start().await;
    let mut relay = TestRelay::start(&world.config()).await;
    // Several messages at once: the policy is fetched once.
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(send(&relay, &format!("user{n}@cached.test"), "first").await);
    }
    for id in &ids {
        let r = recipient_in(&relay, id, "delivered").await;
        assert_eq!(r["mx_host"], "good.cached.test", "{r}");
    }
    let fetches = |https: &HttpsServer| {
        https
            .requests()
            .iter()
            .filter(|q| q.header("host") == Some("mta-sts.cached.test"))
            .count()
    };
    assert_eq!(fetches(&world.https), 1);

    // The policy server goes away and the record announces a new policy: the fetch fails, so
    // the cached policy stays in force, across a restart too.
    let StsWorld {
        dns,
        good,
        plain,
        https,
        ca: _ca,
        ..
    } = world;
    https.shutdown().await;
    dns.remove_records("_mta-sts.cached.test", RecordType::TXT)
        .await
        .expect("remove txt");
    dns.add_records(Zone::new("test.").txt("_mta-sts.cached.test", "v=STSv1; id=2"))
        .await
        .expect("add txt");
    relay.restart().await;
    let id = send(&relay, "user@cached.test", "second").await;
    let r = recipient_in(&relay, &id, "delivered").await;
    assert_eq!(r["mx_host"], "good.cached.test", "{r}");
    assert_eq!(r["tls"]["policy"], "mta-sts:enforce", "{r}");
    assert_eq!(
        subjects(&good),
        ["first", "first", "first", "first", "second"]
    );
    assert!(plain.messages().is_empty());
    assert!(policy_results(&relay, "sts-policy-fetch-error").await >= 1.0);
}
