//! The production delivery engine against real loopback peers: connection reuse and limits, the
//! destination circuit breaker, rate limits, DSNs beyond bounces, routes, the relay host with
//! AUTH over STARTTLS or implicit TLS, egress address, TLS recording (encryption, negotiated
//! version, certificate verification), the DNS cache and the new metrics.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use postrider_core::{
    Address, DsnRet, Envelope, MessageId, NotifyFlags, RecipientRequest, RecipientState,
    RetryPolicy, ReversePath, TlsInfo,
};
use postrider_delivery::{
    BreakerSettings, DeliverySettings, DnsSettings, DomainPolicy, HickoryMxResolver, RelayTls,
    Relayhost, Route, TlsMode,
};
use postrider_testkit::{
    Behaviour, DnsServer, RecordType, Reply, SmtpSink, SmtpSinkBuilder, TlsVersion, Zone,
};

mod common;
use common::{PATIENCE, Relay, ip, now, wait_until};

const BODY: &[u8] =
    b"From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: engine\r\n\r\nHello.\r\n";

impl Relay {
    /// Queues this file's standard body for `envelope`.
    async fn submit_envelope_std(&self, envelope: Envelope) -> MessageId {
        self.submit_envelope(envelope, BODY).await
    }

    /// Queues this file's standard body from `sender` to `recipients`.
    async fn submit(&self, sender: &str, recipients: &[&str]) -> MessageId {
        self.submit_body(sender, recipients, BODY).await
    }
}

async fn dns() -> DnsServer {
    DnsServer::start([Zone::new("test.")
        .mx("example.test", 10, "mx1.example.test")
        .a("mx1.example.test", ip(2))
        .mx("other.test", 10, "mx1.example.test")
        .mx("sender.test", 10, "mx.sender.test")
        .a("mx.sender.test", ip(4))
        .a("relay.provider.test", ip(8))])
    .await
    .unwrap()
}

async fn sink_at(last: u8, port: u16, behaviour: Behaviour) -> SmtpSink {
    SmtpSink::builder()
        .bind(IpAddr::V4(ip(last)), port)
        .behaviour(behaviour)
        .start()
        .await
        .unwrap()
}

/// A `ca_file` that trusts `sink`'s certificate, in a directory that lasts as long as the guard.
fn ca_file_trusting(sink: &SmtpSink) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, sink.tls_cert_pem().unwrap()).unwrap();
    (dir, ca)
}

fn retry_fast() -> RetryPolicy {
    RetryPolicy::new(vec![Duration::from_millis(150)], Duration::from_secs(600)).unwrap()
}

#[tokio::test]
async fn messages_to_one_host_share_connections() {
    let dns = dns().await;
    let mx = sink_at(2, 0, Behaviour::with_standard_rules()).await;
    let relay = Relay::start(&dns, mx.port(), |s| s.max_connections_per_host = 3);
    let mut ids = Vec::new();
    for i in 0..30 {
        // One bad address per message: a 5.1.1 suppresses its address, and an early bounce
        // must not turn a later submission's recipient into `suppressed`.
        let bad = format!("bad{i}@example.test");
        ids.push(
            relay
                // null sender: no bounces to muddle the counts
                .submit("", &["good@example.test", bad.as_str()])
                .await,
        );
    }
    for id in &ids {
        let m = relay.finished(*id).await;
        assert_eq!(m.recipients[0].state, RecipientState::Delivered);
        assert_eq!(m.recipients[1].state, RecipientState::Bounced);
        assert_eq!(
            m.recipients[1].last_reply.as_ref().map(|r| r.code),
            Some(550)
        );
    }
    assert_eq!(mx.messages().len(), 30);
    assert!(
        mx.messages()
            .iter()
            .all(|m| m.rcpt_to == vec!["good@example.test"]),
        "only accepted recipients get the data"
    );
    assert_eq!(mx.transaction_count(), 30);
    assert!(
        mx.connection_count() <= 3,
        "30 messages over {} connections",
        mx.connection_count()
    );
    let text = relay.metrics.render();
    assert!(
        text.contains(
            "postrider_delivery_results_total{result=\"delivered\",status_class=\"2.x\"} 30"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "postrider_delivery_results_total{result=\"bounced\",status_class=\"5.x\"} 30"
        )
    );
    assert!(text.contains(
        "postrider_delivery_by_domain_total{domain=\"example.test\",result=\"delivered\"} 30"
    ));
    assert!(text.contains("postrider_dns_lookups_total{result=\"ok\"} 30"));
    assert!(text.contains("postrider_delivery_queue_time_seconds_count 30"));
    // idle pooled connections are counted as open
    assert!(relay.metrics.outbound_connections.get() >= 1);
    relay.stop().await;
    // shutdown closes the idle connections
    assert_eq!(relay_gauge_after_stop(&mx).await, 0);
}

async fn relay_gauge_after_stop(mx: &SmtpSink) -> usize {
    wait_until("sessions closed", || mx.active_sessions() == 0).await;
    mx.active_sessions()
}

#[tokio::test]
async fn idle_connections_expire_and_limits_hold() {
    let dns = dns().await;
    let behaviour = Behaviour {
        reply_delay: Duration::from_millis(20),
        ..Behaviour::default()
    };
    let mx = sink_at(2, 0, behaviour).await;
    let relay = Relay::start(&dns, mx.port(), |s| {
        s.max_connections_per_host = 2;
        s.connection_idle_timeout = Duration::from_millis(300);
        s.max_messages_per_connection = 4;
    });
    let mut ids = Vec::new();
    for i in 0..12 {
        // two domains on the same MX host share its limit
        let rcpt = if i % 2 == 0 {
            "a@example.test"
        } else {
            "b@other.test"
        };
        ids.push(relay.submit("alice@sender.test", &[rcpt]).await);
    }
    for id in &ids {
        assert_eq!(
            relay.finished(*id).await.recipients[0].state,
            RecipientState::Delivered
        );
    }
    assert!(
        mx.max_concurrent_sessions() <= 2,
        "{} concurrent sessions",
        mx.max_concurrent_sessions()
    );
    // at most 4 messages per connection: 12 messages need at least 3 connections
    assert!(mx.connection_count() >= 3, "{}", mx.connection_count());
    // idle connections are closed after the idle timeout
    wait_until("idle connections closed", || {
        mx.active_sessions() == 0 && relay.metrics.outbound_connections.get() == 0
    })
    .await;
    relay.stop().await;
}

/// When the server has closed the pooled connections (idle timeout, restart), the next
/// message still goes out in the same attempt, over a new connection.
#[tokio::test]
async fn connections_closed_by_the_server_are_replaced_within_the_attempt() {
    let dns = dns().await;
    let mx = SmtpSink::builder()
        .bind(IpAddr::V4(ip(2)), 0)
        .behaviour(Behaviour {
            reply_delay: Duration::from_millis(30),
            ..Behaviour::default()
        })
        .idle_timeout(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let relay = Relay::start(&dns, mx.port(), |s| {
        s.max_connections_per_host = 4;
        s.connection_idle_timeout = Duration::from_secs(60);
    });
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(relay.submit("", &["a@example.test"]).await);
    }
    for id in &ids {
        relay.finished(*id).await;
    }
    assert!(mx.connection_count() >= 3, "{}", mx.connection_count());
    // The server drops every idle session; the relay still holds them in its pool.
    wait_until("the server closed the idle sessions", || {
        mx.active_sessions() == 0
    })
    .await;
    assert!(relay.metrics.outbound_connections.get() >= 3);
    let id = relay.submit("", &["b@example.test"]).await;
    let m = relay.finished(id).await;
    assert_eq!(m.recipients[0].state, RecipientState::Delivered);
    assert_eq!(m.attempts, 1, "delivered by the first attempt");
    relay.stop().await;
}

/// A relay whose breaker opens after two failures, and a message to `mx` that it submitted,
/// once the message was deferred because the breaker suspended the destination.
async fn deferred_by_suspension(
    dns: &DnsServer,
    mx: &SmtpSink,
) -> (
    Relay,
    postrider_core::MessageId,
    postrider_core::QueuedMessage,
) {
    let relay = Relay::start(dns, mx.port(), |s| {
        s.retry = retry_fast();
        s.breaker = BreakerSettings {
            failure_threshold: 2,
            initial_backoff: Duration::from_millis(1500),
            max_backoff: Duration::from_secs(10),
        };
    });
    let id = relay
        .submit("alice@sender.test", &["bob@example.test"])
        .await;
    let m = relay
        .wait_for(id, "a deferral by suspension", |m| {
            m.recipients[0]
                .last_reply
                .as_ref()
                .is_some_and(|r| r.text.contains("suspended"))
        })
        .await;
    (relay, id, m)
}

#[tokio::test]
async fn breaker_suspends_a_failing_destination_and_closes_after_success() {
    let dns = dns().await;
    let busy = Behaviour {
        greeting: Some(Reply::new(421, "4.3.2 too busy")),
        ..Behaviour::default()
    };
    let mx = sink_at(2, 0, busy).await;
    let (relay, id, m) = deferred_by_suspension(&dns, &mx).await;
    let reply = m.recipients[0].last_reply.clone().unwrap();
    assert_eq!(
        (reply.code, reply.status().to_string()),
        (451, "4.4.5".to_owned())
    );
    assert!(
        reply.text.contains(
            "destination mx1.example.test suspended after 2 consecutive failures; next try at "
        ),
        "{reply}"
    );
    assert_eq!(m.recipients[0].state, RecipientState::Deferred);
    // two failing connections opened the breaker; the suspended attempt made none
    assert_eq!(mx.connection_count(), 2);
    let suspended = relay.handle().suspended();
    assert_eq!(suspended.len(), 1);
    assert_eq!(suspended[0].host, "mx1.example.test");
    assert_eq!(suspended[0].failures, 2);
    assert!(suspended[0].reason.contains("421"), "{:?}", suspended[0]);
    assert!(suspended[0].until > now());
    assert_eq!(relay.metrics.destinations_suspended.get(), 1);
    // the next try is at the end of the suspension, not at the retry interval
    assert_eq!(m.next_attempt_at, Some(suspended[0].until));

    mx.set_behaviour(Behaviour::default());
    let m = relay.finished(id).await;
    assert_eq!(m.recipients[0].state, RecipientState::Delivered);
    assert_eq!(mx.connection_count(), 3, "no connection while suspended");
    assert!(relay.handle().suspended().is_empty());
    assert_eq!(relay.metrics.destinations_suspended.get(), 0);
    relay.stop().await;
}

#[tokio::test]
async fn rate_limit_replies_suspend_a_destination_until_it_recovers() {
    let dns = dns().await;
    let throttling = Behaviour {
        rcpt_default: Reply::new(
            450,
            "4.7.28 Our system has detected an unusual rate of unsolicited mail from your IP",
        ),
        ..Behaviour::default()
    };
    let mx = sink_at(2, 0, throttling).await;
    let (relay, id, m) = deferred_by_suspension(&dns, &mx).await;
    assert_eq!(m.recipients[0].state, RecipientState::Deferred);
    let suspended = relay.handle().suspended();
    assert_eq!(suspended.len(), 1);
    assert_eq!(suspended[0].failures, 2);
    assert!(suspended[0].reason.contains("4.7.28"), "{:?}", suspended[0]);
    let by_category = |kind: &str| {
        relay
            .metrics
            .bounces
            .with_label_values(&["rate_limited", kind])
            .get()
    };
    assert_eq!(by_category("soft"), 2);
    assert_eq!(by_category("hard"), 0);

    // the destination recovers by itself once the receiver accepts again
    mx.set_behaviour(Behaviour::default());
    let m = relay.finished(id).await;
    assert_eq!(m.recipients[0].state, RecipientState::Delivered);
    assert!(relay.handle().suspended().is_empty());
    relay.stop().await;
}

#[test]
fn bounce_metric_labels_are_the_categories() {
    let labels: Vec<&str> = postrider_core::BounceCategory::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(labels, postrider_metrics::BOUNCE_CATEGORIES);
}

#[tokio::test]
async fn rate_limited_domain_postpones_without_counting_attempts() {
    let dns = dns().await;
    let mx = sink_at(2, 0, Behaviour::default()).await;
    let relay = Relay::start(&dns, mx.port(), |s| {
        s.domains.insert(
            "example.test".into(),
            DomainPolicy {
                messages_per_minute: Some(2),
                ..DomainPolicy::default()
            },
        );
        s.max_concurrent_deliveries = 1;
    });
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            relay
                .submit("alice@sender.test", &["bob@example.test"])
                .await,
        );
    }
    mx.wait_for_messages(2, PATIENCE).await.unwrap();
    let mut postponed = 0;
    for id in &ids {
        let m = relay
            .wait_for(*id, "delivered or postponed", |m| {
                m.is_finished() || m.next_attempt_at.is_some_and(|t| t > now())
            })
            .await;
        if !m.is_finished() {
            postponed += 1;
            assert_eq!(m.attempts, 0, "a postponement is not an attempt");
            assert_eq!(m.recipients[0].state, RecipientState::Queued);
            assert_eq!(m.recipients[0].attempts, 0);
            let wait = m.next_attempt_at.unwrap().as_millis() - now().as_millis();
            assert!((5_000..=31_000).contains(&wait), "due in {wait} ms");
        }
    }
    assert_eq!(postponed, 2);
    assert_eq!(mx.messages().len(), 2);
    assert!(
        relay.metrics.render().contains(
            "postrider_delivery_results_total{result=\"postponed\",status_class=\"4.x\"} 2"
        )
    );
    relay.stop().await;
}

fn dsn_text(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

fn request(addr: &str, notify: Option<NotifyFlags>, orcpt: Option<&str>) -> RecipientRequest {
    let mut r = RecipientRequest::new(Address::parse(addr).unwrap());
    r.notify = notify;
    r.orcpt = orcpt.map(str::to_owned);
    r
}

#[tokio::test]
async fn dsn_requests_go_to_the_next_hop_when_it_supports_dsn() {
    let dns = dns().await;
    let mx = sink_at(2, 0, Behaviour::default()).await;
    let sender_mx = sink_at(4, mx.port(), Behaviour::default()).await;
    let relay = Relay::start(&dns, mx.port(), |_| {});
    let success = NotifyFlags {
        success: true,
        failure: true,
        ..NotifyFlags::default()
    };
    let mut env = Envelope::new(
        ReversePath::parse("alice@sender.test").unwrap(),
        vec![request(
            "bob@example.test",
            Some(success),
            Some("rfc822;Bob+1@example.test"),
        )],
    )
    .unwrap();
    env.ret = Some(DsnRet::Full);
    env.envid = Some("env 42".into());
    let id = relay.submit_envelope_std(env).await;
    let got = mx.wait_for_messages(1, PATIENCE).await.unwrap();
    assert!(
        got[0].mail_params.iter().any(|p| p == "RET=FULL"),
        "{:?}",
        got[0].mail_params
    );
    assert!(
        got[0].mail_params.iter().any(|p| p == "ENVID=env+2042"),
        "{:?}",
        got[0].mail_params
    );
    assert_eq!(
        got[0].rcpt_params[0],
        vec![
            "NOTIFY=SUCCESS,FAILURE".to_owned(),
            "ORCPT=rfc822;Bob+2B1@example.test".to_owned()
        ]
    );
    relay.finished(id).await;
    // the next hop reports success: no notice from us
    assert_eq!(relay.store.pending_count(), 0);
    assert!(sender_mx.messages().is_empty());
    relay.stop().await;
}

#[tokio::test]
async fn success_notice_when_the_next_hop_lacks_dsn() {
    let dns = dns().await;
    let mut behaviour = Behaviour::default();
    behaviour.extensions.dsn = false;
    let mx = sink_at(2, 0, behaviour).await;
    let sender_mx = sink_at(4, mx.port(), Behaviour::default()).await;
    let relay = Relay::start(&dns, mx.port(), |_| {});
    let success = NotifyFlags {
        success: true,
        ..NotifyFlags::default()
    };
    let mut env = Envelope::new(
        ReversePath::parse("alice@sender.test").unwrap(),
        vec![
            request(
                "bob@example.test",
                Some(success),
                Some("rfc822;bob@example.test"),
            ),
            request("carol@example.test", None, None),
        ],
    )
    .unwrap();
    env.envid = Some("E1".into());
    env.ret = Some(DsnRet::Full);
    let id = relay.submit_envelope_std(env).await;
    let got = mx.wait_for_messages(1, PATIENCE).await.unwrap();
    assert!(
        got[0].rcpt_params.iter().all(Vec::is_empty),
        "no DSN parameters without DSN"
    );
    assert!(
        !got[0]
            .mail_params
            .iter()
            .any(|p| p.starts_with("RET=") || p.starts_with("ENVID="))
    );
    relay.finished(id).await;
    let dsn = sender_mx.wait_for_messages(1, PATIENCE).await.unwrap();
    assert_eq!(dsn[0].mail_from, "");
    let text = dsn_text(&dsn[0].data);
    for line in [
        "Subject: Successful Mail Delivery Report",
        "Original-Envelope-Id: E1",
        "Final-Recipient: rfc822; bob@example.test",
        "Original-Recipient: rfc822;bob@example.test",
        "Action: delivered",
        "Status: 2.0.0",
        "Remote-MTA: dns; mx1.example.test",
        "text/rfc822-headers",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains("carol@example.test>"), "{text}");
    assert!(!text.contains("Final-Recipient: rfc822; carol"), "{text}");
    relay.stop().await;
}

#[tokio::test]
async fn delay_warning_is_sent_once_and_notify_never_is_honoured() {
    let dns = dns().await;
    let mx = sink_at(2, 0, Behaviour::with_standard_rules()).await;
    let sender_mx = sink_at(4, mx.port(), Behaviour::default()).await;
    let relay = Relay::start(&dns, mx.port(), |s| {
        s.retry = retry_fast();
        s.delay_warning_after = Duration::from_millis(400);
    });
    let never = NotifyFlags {
        never: true,
        ..NotifyFlags::default()
    };
    let env = Envelope::new(
        ReversePath::parse("alice@sender.test").unwrap(),
        vec![
            request("later1@example.test", None, None),
            request("later2@example.test", Some(never), None),
            request("bad@example.test", Some(never), None),
        ],
    )
    .unwrap();
    let id = relay.submit_envelope_std(env).await;
    let dsn = sender_mx.wait_for_messages(1, PATIENCE).await.unwrap();
    let text = dsn_text(&dsn[0].data);
    for line in [
        "Subject: Delayed Mail (still being retried)",
        "Final-Recipient: rfc822; later1@example.test",
        "Action: delayed",
        "Status: 4.2.1",
        "Will-Retry-Until: ",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(
        !text.contains("later2@"),
        "NOTIFY=NEVER recipient listed:\n{text}"
    );
    assert!(!text.contains("bad@"), "{text}");
    let m = relay
        .wait_for(id, "more retries", |m| m.attempts >= 6 && m.delay_notified)
        .await;
    assert_eq!(m.recipients[2].state, RecipientState::Bounced);
    assert_eq!(
        sender_mx.messages().len(),
        1,
        "one warning, no bounce for NOTIFY=NEVER"
    );
    relay.stop().await;
}

#[tokio::test]
async fn routes_override_mx_lookup() {
    let dns = dns().await;
    let routed = sink_at(7, 0, Behaviour::default()).await;
    let relay = Relay::start(&dns, 9, |s| {
        s.routes =
            vec![Route::parse("*.internal.test", &format!("127.0.0.7:{}", routed.port())).unwrap()];
    });
    // nowhere.internal.test does not exist in DNS: only the route can deliver it
    let id = relay
        .submit("alice@sender.test", &["bob@a.internal.test"])
        .await;
    let got = routed.wait_for_messages(1, PATIENCE).await.unwrap();
    assert_eq!(got[0].rcpt_to, vec!["bob@a.internal.test"]);
    let m = relay.finished(id).await;
    assert_eq!(m.recipients[0].mx_host.as_deref(), Some("127.0.0.7"));
    relay.stop().await;
}

/// The mail provider's server on 127.0.0.8: AUTH required, and offered only over TLS.
fn provider() -> SmtpSinkBuilder {
    SmtpSink::builder()
        .bind(IpAddr::V4(ip(8)), 0)
        .credentials("postrider", "s3cret")
        .require_auth(true)
        .auth_requires_tls(true)
}

/// The provider as the relay host, with its credentials.
fn provider_relayhost(port: u16, tls: RelayTls) -> Relayhost {
    Relayhost {
        host: "relay.provider.test".into(),
        port,
        username: Some("postrider".into()),
        password: Some("s3cret".into()),
        tls,
        allow_plaintext_auth: false,
    }
}

#[tokio::test]
async fn relayhost_authenticates_over_tls() {
    let dns = dns().await;
    let provider = provider().tls(true).start().await.unwrap();
    let relay = Relay::start(&dns, 9, |s| {
        s.relayhost = Some(provider_relayhost(provider.port(), RelayTls::Required));
    });
    let ids = [
        relay
            .submit("alice@sender.test", &["bob@example.test"])
            .await,
        relay
            .submit("alice@sender.test", &["carol@elsewhere.test"])
            .await,
    ];
    let got = provider.wait_for_messages(2, PATIENCE).await.unwrap();
    for m in &got {
        assert!(m.tls);
        assert_eq!(m.auth_user.as_deref(), Some("postrider"));
    }
    for id in ids {
        let m = relay.finished(id).await;
        assert_eq!(m.recipients[0].state, RecipientState::Delivered);
        let tls = m.recipients[0].tls.clone().expect("tls recorded");
        assert!(tls.encrypted && !tls.verified, "{tls:?}");
        assert_eq!(tls.version.as_deref(), Some("TLSv1.3"), "{tls:?}");
    }
    relay.stop().await;
}

/// Delivers one message to bob@example.test under `tweak`ed settings and returns the TLS
/// recorded for it.
async fn delivered_tls(
    dns: &DnsServer,
    port: u16,
    tweak: impl FnOnce(&mut DeliverySettings),
) -> TlsInfo {
    let relay = Relay::start(dns, port, tweak);
    let id = relay
        .submit("alice@sender.test", &["bob@example.test"])
        .await;
    let m = relay.finished(id).await;
    relay.stop().await;
    assert_eq!(m.recipients[0].state, RecipientState::Delivered);
    m.recipients[0].tls.clone().expect("tls recorded")
}

/// The TLS version `sink` negotiated for the last message it received.
fn negotiated_by(sink: &SmtpSink) -> Option<String> {
    let got = sink.messages();
    got.last()
        .and_then(|m| m.tls_version)
        .map(|v| v.to_string())
}

async fn mx_offering(versions: Vec<TlsVersion>, hello_retry: bool) -> SmtpSink {
    SmtpSink::builder()
        .bind(IpAddr::V4(ip(2)), 0)
        .tls(true)
        .tls_versions(versions)
        .tls_hello_retry(hello_retry)
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn starttls_version_is_recorded() {
    let dns = dns().await;
    for (versions, hello_retry, expected) in [
        (vec![TlsVersion::Tls12], false, "TLSv1.2"),
        (vec![TlsVersion::Tls12, TlsVersion::Tls13], false, "TLSv1.3"),
        // the server answers the first ClientHello with a HelloRetryRequest
        (vec![TlsVersion::Tls13], true, "TLSv1.3"),
    ] {
        let mx = mx_offering(versions, hello_retry).await;
        let tls = delivered_tls(&dns, mx.port(), |_| {}).await;
        assert!(tls.encrypted, "{tls:?}");
        assert_eq!(tls.version.as_deref(), Some(expected), "{tls:?}");
        assert_eq!(tls.version, negotiated_by(&mx));
    }

    let plain = sink_at(2, 0, Behaviour::default()).await;
    let tls = delivered_tls(&dns, plain.port(), |_| {}).await;
    assert_eq!(
        tls,
        TlsInfo {
            encrypted: false,
            version: None,
            verified: false,
            policy: None
        }
    );
}

#[tokio::test]
async fn relayhost_with_implicit_tls() {
    let dns = dns().await;
    let provider = provider()
        .implicit_tls(true)
        .tls_versions(vec![TlsVersion::Tls12])
        .tls_names(vec!["relay.provider.test".into()])
        .start()
        .await
        .unwrap();
    let (_dir, ca) = ca_file_trusting(&provider);
    let relayhost = provider_relayhost(provider.port(), RelayTls::Implicit);
    // (verify certificates, trust the provider's certificate) -> recorded as verified
    for (verify, trust, verified) in [
        (false, false, false),
        (false, true, true),
        (true, true, true),
    ] {
        let tls = delivered_tls(&dns, 9, |s| {
            s.relayhost = Some(relayhost.clone());
            s.verify_certificates = verify;
            s.ca_file = trust.then(|| ca.clone());
        })
        .await;
        assert_eq!(
            tls,
            TlsInfo {
                encrypted: true,
                version: Some("TLSv1.2".into()),
                verified,
                policy: None
            },
            "verify {verify}, trust {trust}"
        );
        assert_eq!(tls.version, negotiated_by(&provider));
        let got = provider.messages();
        assert_eq!(got.last().unwrap().auth_user.as_deref(), Some("postrider"));
    }

    // verification required, certificate not trusted: the handshake fails, nothing is sent
    let relay = Relay::start(&dns, 9, |s| {
        s.relayhost = Some(relayhost.clone());
        s.verify_certificates = true;
    });
    let id = relay
        .submit("alice@sender.test", &["bob@example.test"])
        .await;
    let m = relay.wait_for(id, "an attempt", |m| m.attempts == 1).await;
    relay.stop().await;
    assert_eq!(m.recipients[0].state, RecipientState::Deferred);
    let reply = m.recipients[0].last_reply.clone().unwrap();
    assert_eq!(reply.status().to_string(), "4.7.0", "{reply}");
    assert_eq!(provider.messages().len(), 3);
}

#[tokio::test]
async fn relayhost_with_wrong_password_defers() {
    let dns = dns().await;
    let provider = SmtpSink::builder()
        .bind(IpAddr::V4(ip(8)), 0)
        .tls(true)
        .credentials("postrider", "s3cret")
        .require_auth(true)
        .start()
        .await
        .unwrap();
    let relay = Relay::start(&dns, 9, |s| {
        s.relayhost = Some(Relayhost {
            host: "127.0.0.8".into(),
            port: provider.port(),
            username: Some("postrider".into()),
            password: Some("wrong".into()),
            tls: RelayTls::Required,
            allow_plaintext_auth: false,
        });
    });
    let id = relay
        .submit("alice@sender.test", &["bob@example.test"])
        .await;
    let m = relay.wait_for(id, "an attempt", |m| m.attempts == 1).await;
    assert_eq!(m.recipients[0].state, RecipientState::Deferred);
    assert_eq!(
        m.recipients[0].last_reply.as_ref().map(|r| r.code),
        Some(535)
    );
    assert!(provider.messages().is_empty());
    relay.stop().await;
}

#[tokio::test]
async fn source_ip_binds_outbound_connections() {
    let dns = dns().await;
    let mx = sink_at(2, 0, Behaviour::default()).await;
    let relay = Relay::start(&dns, mx.port(), |s| {
        s.source_ip = Some(IpAddr::V4(ip(9)));
        s.helo_name = Some("out.relay.test".into());
    });
    relay
        .submit("alice@sender.test", &["bob@example.test"])
        .await;
    let got = mx.wait_for_messages(1, PATIENCE).await.unwrap();
    assert_eq!(got[0].peer.ip(), IpAddr::V4(ip(9)));
    assert_eq!(got[0].helo, "out.relay.test");
    relay.stop().await;
}

#[tokio::test]
async fn certificate_verification_is_recorded_and_enforced() {
    let dns = dns().await;
    let mx = SmtpSink::builder()
        .bind(IpAddr::V4(ip(2)), 0)
        .tls(true)
        .start()
        .await
        .unwrap();
    // trusted through ca_file: the route to the IP literal verifies against the IP SAN
    let (_dir, ca) = ca_file_trusting(&mx);
    let port = mx.port();
    let relay = Relay::start(&dns, port, |s| {
        s.verify_certificates = true;
        s.ca_file = Some(ca.clone());
        s.tls = TlsMode::Required;
        s.routes = vec![Route::parse("trusted.test", &format!("127.0.0.2:{port}")).unwrap()];
    });
    let id = relay
        .submit("alice@sender.test", &["bob@trusted.test"])
        .await;
    let m = relay.finished(id).await;
    let tls = m.recipients[0].tls.clone().unwrap();
    assert!(tls.encrypted && tls.verified, "{tls:?}");
    assert_eq!(tls.version.as_deref(), Some("TLSv1.3"), "{tls:?}");
    relay.stop().await;

    // not trusted, verification on, TLS required: a transient failure, nothing delivered
    let relay = Relay::start(&dns, port, |s| {
        s.verify_certificates = true;
        s.domains.insert(
            "example.test".into(),
            DomainPolicy {
                tls: Some(TlsMode::Required),
                ..DomainPolicy::default()
            },
        );
    });
    let id = relay
        .submit("alice@sender.test", &["bob@example.test"])
        .await;
    let m = relay.wait_for(id, "an attempt", |m| m.attempts == 1).await;
    assert_eq!(m.recipients[0].state, RecipientState::Deferred);
    let reply = m.recipients[0].last_reply.clone().unwrap();
    assert_eq!(reply.status().to_string(), "4.7.0", "{reply}");
    assert_eq!(mx.messages().len(), 1);
    relay.stop().await;

    // opportunistic without verification: delivered, recorded as unverified
    let relay = Relay::start(&dns, port, |_| {});
    let id = relay
        .submit("alice@sender.test", &["bob@example.test"])
        .await;
    let m = relay.finished(id).await;
    let tls = m.recipients[0].tls.clone().unwrap();
    assert!(tls.encrypted && !tls.verified, "{tls:?}");
    assert!(
        relay
            .metrics
            .render()
            .contains("postrider_outbound_tls_total{result=\"tls\"} 1")
    );
    relay.stop().await;
}

#[tokio::test]
async fn dns_answers_are_cached() {
    let dns = dns().await;
    let mx = sink_at(2, 0, Behaviour::default()).await;
    let resolver = HickoryMxResolver::with_nameservers_and(
        &[dns.addr()],
        &DnsSettings {
            timeout: Duration::from_millis(500),
            attempts: 1,
            ..DnsSettings::default()
        },
    )
    .unwrap();
    let relay = Relay::start_with(resolver, mx.port(), |s| s.max_concurrent_deliveries = 1);
    for _ in 0..3 {
        let id = relay
            .submit("alice@sender.test", &["bob@example.test"])
            .await;
        relay.finished(id).await;
    }
    let mx_queries = dns
        .queries()
        .iter()
        .filter(|q| q.name == "example.test." && q.record_type == RecordType::MX)
        .count();
    assert_eq!(mx_queries, 1, "{:?}", dns.queries());
    relay.stop().await;
}
