//! check-domain against a real DNS server on loopback.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use postrider_core::Domain;
use postrider_testkit::{DnsServer, Zone};
use postrider_trust::{
    CheckStatus, DkimAlgorithm, DkimPublicKey, DomainReport, check_domain, generate_dkim_key,
};

const EGRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));

fn key(domain: &str, selector: &str, txt: &str) -> DkimPublicKey {
    let p = txt.split("p=").nth(1).unwrap().to_owned();
    DkimPublicKey {
        domain: domain.into(),
        selector: selector.into(),
        algorithm: DkimAlgorithm::Ed25519Sha256,
        public_key_base64: p,
    }
}

async fn run(dns: &DnsServer, domain: &str, keys: &[DkimPublicKey]) -> DomainReport {
    let resolver =
        postrider_dns::HickoryMxResolver::with_nameservers(&[dns.addr()], Duration::from_secs(2))
            .unwrap();
    check_domain(&resolver, &Domain::parse(domain).unwrap(), &[EGRESS], keys).await
}

#[tokio::test]
async fn passing_and_failing_domains() {
    let good = generate_dkim_key(
        &Domain::parse("good.test").unwrap(),
        "s1",
        DkimAlgorithm::Ed25519Sha256,
    )
    .unwrap();
    let rsa = generate_dkim_key(
        &Domain::parse("good.test").unwrap(),
        "r1",
        DkimAlgorithm::RsaSha256,
    )
    .unwrap();
    let configured_bad = generate_dkim_key(
        &Domain::parse("bad.test").unwrap(),
        "s1",
        DkimAlgorithm::Ed25519Sha256,
    )
    .unwrap();
    let published_other = generate_dkim_key(
        &Domain::parse("bad.test").unwrap(),
        "s1",
        DkimAlgorithm::Ed25519Sha256,
    )
    .unwrap();
    let zone = Zone::new("test.")
        // A domain set up right.
        .txt("good.test", "v=spf1 mx ip4:192.0.2.0/24 -all")
        .txt("good.test", "google-site-verification=abc")
        .txt(&good.dns_name, &good.dns_txt)
        .txt(&rsa.dns_name, &rsa.dns_txt)
        .txt(
            "_dmarc.good.test",
            "v=DMARC1; p=reject; rua=mailto:d@good.test",
        )
        .mx("good.test", 10, "mx.good.test")
        .a("mx.good.test", Ipv4Addr::new(192, 0, 2, 25))
        // SPF that does not authorise us, another DKIM key, no DMARC.
        .txt("bad.test", "v=spf1 ip4:198.51.100.1 -all")
        .txt(&published_other.dns_name, &published_other.dns_txt)
        .mx("bad.test", 10, "mx.good.test")
        // Nothing at all but an A record.
        .a("bare.test", Ipv4Addr::new(192, 0, 2, 30))
        // Two SPF records.
        .txt("twice.test", "v=spf1 -all")
        .txt("twice.test", "v=spf1 ip4:192.0.2.10 -all")
        .a("twice.test", Ipv4Addr::new(192, 0, 2, 30))
        // A subdomain inheriting the DMARC policy of its parent.
        .txt("news.good.test", "v=spf1 ip4:192.0.2.10 -all")
        .mx("news.good.test", 10, "mx.good.test");
    let dns = DnsServer::start([zone]).await.unwrap();

    let keys = vec![
        {
            let mut k = key("good.test", "r1", &rsa.dns_txt);
            k.algorithm = DkimAlgorithm::RsaSha256;
            k
        },
        key("good.test", "s1", &good.dns_txt),
        key("bad.test", "s1", &configured_bad.dns_txt),
        key("bare.test", "s9", &configured_bad.dns_txt),
    ];

    // good.test passes everything; keys of other domains are not checked.
    let report = run(&dns, "good.test", &keys).await;
    assert_eq!(report.status, CheckStatus::Pass, "{report}");
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["spf", "dkim:r1", "dkim:s1", "dmarc", "mx"]);
    assert!(report.checks.iter().all(|c| c.fix.is_none()), "{report}");

    // bad.test: SPF does not authorise the egress IP, DKIM mismatch, no DMARC.
    let report = run(&dns, "bad.test", &keys).await;
    assert_eq!(report.status, CheckStatus::Fail);
    let spf = report.check("spf").unwrap();
    assert_eq!(spf.status, CheckStatus::Fail, "{report}");
    assert_eq!(
        spf.fix.as_deref(),
        Some(
            "add \"ip4:192.0.2.10\" to the SPF record of bad.test: \"v=spf1 ip4:198.51.100.1 ip4:192.0.2.10 -all\""
        )
    );
    let dkim = report.check("dkim:s1").unwrap();
    assert_eq!(dkim.status, CheckStatus::Fail);
    assert_eq!(
        dkim.fix.as_deref().unwrap(),
        format!(
            "replace it: publish TXT at s1._domainkey.bad.test: \"{}\"",
            configured_bad.dns_txt
        )
    );
    let dmarc = report.check("dmarc").unwrap();
    assert_eq!(dmarc.status, CheckStatus::Fail);
    assert_eq!(
        dmarc.fix.as_deref(),
        Some("publish TXT at _dmarc.bad.test: \"v=DMARC1; p=none; rua=mailto:dmarc@bad.test\"")
    );
    assert_eq!(report.check("mx").unwrap().status, CheckStatus::Pass);

    // bare.test: no SPF, DKIM record missing, no MX.
    let report = run(&dns, "bare.test", &keys).await;
    let spf = report.check("spf").unwrap();
    assert_eq!(spf.status, CheckStatus::Fail);
    assert_eq!(
        spf.fix.as_deref(),
        Some("publish TXT at bare.test: \"v=spf1 ip4:192.0.2.10 ~all\"")
    );
    let dkim = report.check("dkim:s9").unwrap();
    assert_eq!(dkim.status, CheckStatus::Fail);
    assert!(dkim.detail.contains("no DKIM key record"), "{report}");
    assert_eq!(report.check("mx").unwrap().status, CheckStatus::Warn);

    // twice.test: multiple SPF records are a permerror.
    let report = run(&dns, "twice.test", &[]).await;
    let spf = report.check("spf").unwrap();
    assert_eq!(spf.status, CheckStatus::Fail);
    assert!(spf.detail.contains("2 SPF records"), "{report}");

    // news.good.test inherits DMARC from good.test.
    let report = run(&dns, "news.good.test", &[]).await;
    assert_eq!(report.status, CheckStatus::Pass, "{report}");
    assert!(report.check("dmarc").unwrap().detail.contains("inherited"));

    // The text and JSON renderings carry the fixes.
    let report = run(&dns, "bad.test", &keys).await;
    let text = report.to_string();
    assert!(text.contains("FAIL spf"), "{text}");
    assert!(text.contains("fix: add \"ip4:192.0.2.10\""), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["domain"], "bad.test");
    assert_eq!(json["status"], "fail");
    assert_eq!(json["checks"][0]["name"], "spf");
    assert_eq!(json["checks"][0]["status"], "fail");
    assert!(
        json["checks"][0]["fix"]
            .as_str()
            .unwrap()
            .contains("ip4:192.0.2.10")
    );
    assert_eq!(json["checks"][3]["name"], "mx");
    assert!(json["checks"][3].get("fix").is_none());
}

#[tokio::test]
async fn bounce_domain_needs_spf_and_an_mx_to_the_relay() {
    let zone = Zone::new("test.")
        .txt("bounces.good.test", "v=spf1 ip4:192.0.2.10 -all")
        .mx("bounces.good.test", 10, "relay.good.test")
        .a("relay.good.test", Ipv4Addr::new(192, 0, 2, 10))
        .a("bounces.bare.test", Ipv4Addr::new(192, 0, 2, 30));
    let dns = DnsServer::start([zone]).await.unwrap();
    let resolver =
        postrider_dns::HickoryMxResolver::with_nameservers(&[dns.addr()], Duration::from_secs(2))
            .unwrap();
    let check = |domain: &'static str| {
        let resolver = resolver.clone();
        async move {
            postrider_trust::check_bounce_domain(
                &resolver,
                &Domain::parse(domain).unwrap(),
                &[EGRESS],
                "relay.good.test",
            )
            .await
        }
    };
    let good = check("bounces.good.test").await;
    assert_eq!(good.status, CheckStatus::Pass, "{good}");
    let bare = check("bounces.bare.test").await;
    assert_eq!(bare.status, CheckStatus::Fail, "{bare}");
    let mx = bare.check("mx").unwrap();
    assert_eq!(mx.status, CheckStatus::Fail);
    assert!(
        mx.fix.as_deref().unwrap().contains("MX 10 relay.good.test"),
        "{bare}"
    );
    assert_eq!(bare.check("spf").unwrap().status, CheckStatus::Fail);
}
