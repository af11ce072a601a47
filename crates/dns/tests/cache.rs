//! The answer cache against a real DNS server on loopback: repeat destinations ask DNS once,
//! concurrent lookups of one domain are coalesced, negative answers are kept, failures are not.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use postrider_core::Domain;
use postrider_dns::{DnsSettings, HickoryMxResolver, MxError, MxResolver};
use postrider_testkit::{DnsServer, Failure, RecordType, Zone};

/// A resolver with the answer cache on and the record cache (hickory's) small, asking `dns`.
fn cached(dns: &DnsServer) -> HickoryMxResolver {
    let settings = DnsSettings {
        timeout: Duration::from_secs(2),
        attempts: 1,
        ..DnsSettings::default()
    };
    HickoryMxResolver::with_nameservers_and(&[dns.addr()], &settings).unwrap()
}

fn zone() -> Zone {
    Zone::new("test.")
        .mx("many.test", 10, "mx1.many.test")
        .mx("many.test", 10, "mx2.many.test")
        .mx("many.test", 20, "backup.many.test")
        .a("mx1.many.test", Ipv4Addr::new(127, 0, 0, 11))
        .a("mx2.many.test", Ipv4Addr::new(127, 0, 0, 12))
        .a("backup.many.test", Ipv4Addr::new(127, 0, 0, 13))
        .null_mx("nomail.test")
        .a("implicit.test", Ipv4Addr::new(127, 0, 0, 14))
}

#[tokio::test]
async fn a_repeat_destination_asks_dns_once() {
    let dns = DnsServer::start([zone()]).await.unwrap();
    let resolver = cached(&dns);
    let domain = Domain::parse("many.test").unwrap();
    let first = resolver.resolve(&domain).await.unwrap();
    let asked = dns.query_count();
    assert!(asked >= 4, "MX and three address lookups, got {asked}");
    let mut firsts = std::collections::HashSet::new();
    for _ in 0..200 {
        let hosts = resolver.resolve(&domain).await.unwrap();
        assert_eq!(hosts.len(), 3);
        assert_eq!(hosts[2].name, "backup.many.test", "preference order kept");
        firsts.insert(hosts[0].name.clone());
    }
    assert_eq!(dns.query_count(), asked, "no DNS query for cached answers");
    // equally preferred hosts are still spread over
    assert_eq!(firsts.len(), 2, "{firsts:?}");
    let mut names: Vec<_> = first.iter().map(|h| h.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["backup.many.test", "mx1.many.test", "mx2.many.test"]
    );
    let stats = resolver.cache_stats();
    assert_eq!((stats.hits, stats.misses), (200, 1));
}

#[tokio::test]
async fn concurrent_lookups_of_one_domain_are_coalesced() {
    let dns = DnsServer::start([zone()]).await.unwrap();
    let resolver = Arc::new(cached(&dns));
    let lookups: Vec<_> = (0..50)
        .map(|_| {
            let r = Arc::clone(&resolver);
            tokio::spawn(async move {
                r.resolve(&Domain::parse("implicit.test").unwrap())
                    .await
                    .unwrap()
            })
        })
        .collect();
    for l in lookups {
        let hosts = l.await.unwrap();
        assert_eq!(hosts[0].name, "implicit.test");
    }
    let mx_queries = dns
        .queries()
        .iter()
        .filter(|q| q.name.starts_with("implicit.test") && q.record_type == RecordType::MX)
        .count();
    assert_eq!(mx_queries, 1, "{:?}", dns.queries());
    assert_eq!(resolver.cache_stats().misses, 1);
}

#[tokio::test]
async fn negative_answers_are_kept_and_failures_are_not() {
    let dns = DnsServer::start([zone()]).await.unwrap();
    let resolver = cached(&dns);
    let nomail = Domain::parse("nomail.test").unwrap();
    assert_eq!(resolver.resolve(&nomail).await, Err(MxError::NullMx));
    let nx = Domain::parse("missing.test").unwrap();
    assert_eq!(resolver.resolve(&nx).await, Err(MxError::NoSuchDomain));
    let asked = dns.query_count();
    assert_eq!(resolver.resolve(&nomail).await, Err(MxError::NullMx));
    assert_eq!(resolver.resolve(&nx).await, Err(MxError::NoSuchDomain));
    assert_eq!(dns.query_count(), asked);

    // a SERVFAIL is answered as transient, and the next lookup asks again
    dns.set_failure("broken.test.", Failure::ServFail).unwrap();
    let broken = Domain::parse("broken.test").unwrap();
    assert!(matches!(
        resolver.resolve(&broken).await,
        Err(MxError::Transient(_))
    ));
    dns.clear_failure("broken.test.").unwrap();
    dns.add_records(Zone::new("test.").a("broken.test", Ipv4Addr::new(127, 0, 0, 15)))
        .await
        .unwrap();
    let hosts = resolver.resolve(&broken).await.unwrap();
    assert_eq!(
        hosts[0].addresses,
        ["127.0.0.15".parse::<std::net::IpAddr>().unwrap()]
    );
}

#[tokio::test]
async fn without_a_cache_every_lookup_asks() {
    let dns = DnsServer::start([zone()]).await.unwrap();
    let resolver =
        HickoryMxResolver::with_nameservers(&[dns.addr()], Duration::from_secs(2)).unwrap();
    let domain = Domain::parse("implicit.test").unwrap();
    resolver.resolve(&domain).await.unwrap();
    let asked = dns.query_count();
    resolver.resolve(&domain).await.unwrap();
    assert!(dns.query_count() > asked);
    assert_eq!(resolver.cache_stats().misses, 0);
}
