//! Address verification by callout against real SMTP sinks and DNS on loopback.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use postrider_testkit::{Behaviour, DnsServer, SmtpSink, Zone};
use postrider_trust::{Deliverability, Verifier, VerifierSettings, VerifyError};

struct World {
    sink: SmtpSink,
    _dns: DnsServer,
    verifier: Verifier,
}

async fn world(per_domain_per_minute: u32) -> World {
    let sink = SmtpSink::builder()
        .bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 0)
        .behaviour(Behaviour::with_standard_rules())
        .start()
        .await
        .unwrap();
    let dns = DnsServer::start([Zone::new("test.")
        .mx("example.test", 10, "mx.example.test")
        .a("mx.example.test", Ipv4Addr::new(127, 0, 0, 1))
        // Down host first, the sink second: the verifier moves on.
        .mx("fallback.test", 10, "down.fallback.test")
        .mx("fallback.test", 20, "mx.example.test")
        .a("down.fallback.test", Ipv4Addr::new(127, 0, 0, 9))
        .mx("unreachable.test", 10, "down.fallback.test")
        .null_mx("nullmx.test")
        .a("other.test", Ipv4Addr::new(127, 0, 0, 1))])
    .await
    .unwrap();
    let settings = VerifierSettings {
        helo_name: "relay.test".into(),
        smtp_port: sink.port(),
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        per_domain_per_minute,
        ..VerifierSettings::default()
    };
    let verifier = Verifier::new(
        settings,
        postrider_dns::HickoryMxResolver::with_nameservers(&[dns.addr()], Duration::from_secs(2))
            .unwrap(),
    );
    World {
        sink,
        _dns: dns,
        verifier,
    }
}

#[tokio::test]
async fn accept_reject_and_defer() {
    let w = world(100).await;

    let ok = w.verifier.verify("good@example.test").await.unwrap();
    assert_eq!(ok.result, Deliverability::Deliverable);
    assert_eq!(ok.reply.as_ref().unwrap().code, 250);
    assert_eq!(ok.mx_host.as_deref(), Some("mx.example.test"));
    assert!(!ok.cached);

    let bad = w.verifier.verify("bad@example.test").await.unwrap();
    assert_eq!(bad.result, Deliverability::Undeliverable);
    let reply = bad.reply.unwrap();
    assert_eq!(reply.code, 550);
    assert_eq!(reply.enhanced.unwrap().to_string(), "5.1.1");
    assert_eq!(reply.text, "no such user");

    let later = w.verifier.verify("later@example.test").await.unwrap();
    assert_eq!(later.result, Deliverability::Unknown);
    assert_eq!(later.reply.unwrap().code, 450);

    // The sink saw a null sender and no message.
    let transcript = w.sink.transcript().join("\n");
    assert!(transcript.contains("MAIL FROM:<>"), "{transcript}");
    assert!(!transcript.contains("DATA"), "{transcript}");
    assert!(w.sink.messages().is_empty());

    // Implicit MX (A record only).
    let implicit = w.verifier.verify("x@other.test").await.unwrap();
    assert_eq!(implicit.result, Deliverability::Deliverable);
    assert_eq!(implicit.mx_host.as_deref(), Some("other.test"));
}

#[tokio::test]
async fn dns_outcomes() {
    let w = world(100).await;
    let nx = w.verifier.verify("a@nowhere.test").await.unwrap();
    assert_eq!(nx.result, Deliverability::Undeliverable);
    assert_eq!(nx.reply.unwrap().enhanced.unwrap().to_string(), "5.1.2");

    let null = w.verifier.verify("a@nullmx.test").await.unwrap();
    assert_eq!(null.result, Deliverability::Undeliverable);
    assert_eq!(null.reply.unwrap().enhanced.unwrap().to_string(), "5.1.10");

    let fallback = w.verifier.verify("good@fallback.test").await.unwrap();
    assert_eq!(fallback.result, Deliverability::Deliverable);
    assert_eq!(fallback.mx_host.as_deref(), Some("mx.example.test"));

    let down = w.verifier.verify("a@unreachable.test").await.unwrap();
    assert_eq!(down.result, Deliverability::Unknown);
    assert!(down.reply.is_none());
    assert!(
        down.reason
            .as_deref()
            .unwrap()
            .contains("down.fallback.test"),
        "{down:?}"
    );

    assert!(matches!(
        w.verifier.verify("not an address").await,
        Err(VerifyError::InvalidAddress(_))
    ));
}

#[tokio::test]
async fn answers_are_cached_but_unknown_is_not() {
    let w = world(100).await;
    let first = w.verifier.verify("good@example.test").await.unwrap();
    assert_eq!(w.sink.connection_count(), 1);
    let second = w.verifier.verify("good@EXAMPLE.test").await.unwrap();
    assert_eq!(
        w.sink.connection_count(),
        1,
        "second answer came from the cache"
    );
    assert!(second.cached);
    assert_eq!(second.result, first.result);
    assert_eq!(second.reply, first.reply);

    w.verifier.verify("bad@example.test").await.unwrap();
    let again = w.verifier.verify("bad@example.test").await.unwrap();
    assert!(again.cached, "negative answers are cached too");
    assert_eq!(w.sink.connection_count(), 2);

    w.verifier.verify("later@example.test").await.unwrap();
    let again = w.verifier.verify("later@example.test").await.unwrap();
    assert!(!again.cached);
    assert_eq!(w.sink.connection_count(), 4, "unknown is asked again");
}

#[tokio::test]
async fn callouts_are_rate_limited_per_domain() {
    let w = world(2).await;
    w.verifier.verify("a1@example.test").await.unwrap();
    w.verifier.verify("a2@example.test").await.unwrap();
    match w.verifier.verify("a3@example.test").await {
        Err(VerifyError::RateLimited {
            domain,
            retry_after,
        }) => {
            assert_eq!(domain, "example.test");
            assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(60));
        }
        other => panic!("expected rate limit, got {other:?}"),
    }
    assert_eq!(w.sink.connection_count(), 2);
    // Cache hits are not limited, nor are other domains.
    assert!(w.verifier.verify("a1@example.test").await.unwrap().cached);
    assert_eq!(
        w.verifier.verify("x@other.test").await.unwrap().result,
        Deliverability::Deliverable
    );
}
