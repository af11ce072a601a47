//! The DNS server against hickory-resolver, the resolver the relay uses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RData;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as ResolveDnsError, NetError};
use postrider_testkit::{DnsServer, Failure, RecordType, Zone};

const TIMEOUT: Duration = Duration::from_millis(300);

fn test_zone() -> Zone {
    Zone::new("test.")
        .mx("example.test", 20, "mx2.example.test")
        .mx("example.test", 10, "mx1.example.test")
        .a("mx1.example.test", Ipv4Addr::new(127, 0, 0, 2))
        .a("mx2.example.test", Ipv4Addr::new(127, 0, 0, 3))
        .aaaa("mx2.example.test", Ipv6Addr::LOCALHOST)
        .a("implicit.test", Ipv4Addr::new(127, 0, 0, 4))
        .txt("example.test", "v=spf1 -all")
        .null_mx("nullmx.test")
        .cname("alias.test", "mx1.example.test")
}

async fn mx(resolver: &TokioResolver, name: &str) -> Result<Vec<(u16, String)>, NetError> {
    let lookup = resolver.mx_lookup(name).await?;
    let mut out: Vec<(u16, String)> = lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::MX(mx) => Some((mx.preference, mx.exchange.to_string())),
            _ => None,
        })
        .collect();
    out.sort();
    Ok(out)
}

fn response_code(error: &NetError) -> Option<ResponseCode> {
    match error {
        NetError::Dns(ResolveDnsError::ResponseCode(code)) => Some(*code),
        _ => None,
    }
}

#[tokio::test]
async fn answers_mx_a_aaaa_txt_and_cname() {
    let dns = DnsServer::start([test_zone()]).await.unwrap();
    let resolver = dns.resolver(TIMEOUT).unwrap();
    assert_eq!(
        mx(&resolver, "example.test.").await.unwrap(),
        vec![
            (10, "mx1.example.test.".to_string()),
            (20, "mx2.example.test.".to_string())
        ]
    );
    let ips: Vec<IpAddr> = resolver
        .lookup_ip("mx2.example.test.")
        .await
        .unwrap()
        .iter()
        .collect();
    assert!(
        ips.contains(&IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))),
        "{ips:?}"
    );
    assert!(ips.contains(&IpAddr::V6(Ipv6Addr::LOCALHOST)), "{ips:?}");
    let txt = resolver.txt_lookup("example.test.").await.unwrap();
    let texts: Vec<String> = txt
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::TXT(t) => Some(t.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, vec!["v=spf1 -all".to_string()]);
    let alias: Vec<IpAddr> = resolver
        .lookup_ip("alias.test.")
        .await
        .unwrap()
        .iter()
        .collect();
    assert_eq!(alias, vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))]);
    assert!(dns.query_count() >= 4);
    assert!(
        dns.queries()
            .iter()
            .any(|q| q.name == "example.test." && q.record_type == RecordType::MX)
    );
}

#[tokio::test]
async fn nodata_nxdomain_and_null_mx() {
    let dns = DnsServer::start([test_zone()]).await.unwrap();
    let resolver = dns.resolver(TIMEOUT).unwrap();

    let nodata = mx(&resolver, "implicit.test.").await.unwrap_err();
    assert!(nodata.is_no_records_found(), "{nodata:?}");
    assert!(!nodata.is_nx_domain(), "{nodata:?}");
    let implicit: Vec<IpAddr> = resolver
        .lookup_ip("implicit.test.")
        .await
        .unwrap()
        .iter()
        .collect();
    assert_eq!(implicit, vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4))]);

    let nx = mx(&resolver, "missing.test.").await.unwrap_err();
    assert!(nx.is_nx_domain(), "{nx:?}");
    match &nx {
        NetError::Dns(ResolveDnsError::NoRecordsFound(no_records)) => {
            let soa = no_records.soa.as_ref().expect("NXDOMAIN carries the SOA");
            assert_eq!(soa.name.to_string(), "test.");
        }
        other => panic!("unexpected {other:?}"),
    }
    let nx_ip = resolver.lookup_ip("missing.test.").await.unwrap_err();
    assert!(nx_ip.is_nx_domain(), "{nx_ip:?}");

    let null = resolver.mx_lookup("nullmx.test.").await.unwrap();
    let exchanges: Vec<(u16, bool)> = null
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::MX(mx) => Some((mx.preference, mx.exchange.is_root())),
            _ => None,
        })
        .collect();
    assert_eq!(exchanges, vec![(0, true)]);
}

#[tokio::test]
async fn injected_failures_and_recovery() {
    let dns = DnsServer::start([test_zone()]).await.unwrap();
    let resolver = dns.resolver(TIMEOUT).unwrap();

    dns.set_failure("example.test", Failure::ServFail).unwrap();
    let error = mx(&resolver, "example.test.").await.unwrap_err();
    assert_eq!(
        response_code(&error),
        Some(ResponseCode::ServFail),
        "{error:?}"
    );

    dns.set_failure("example.test.", Failure::Refused).unwrap();
    let error = mx(&resolver, "example.test.").await.unwrap_err();
    assert_eq!(
        response_code(&error),
        Some(ResponseCode::Refused),
        "{error:?}"
    );

    dns.set_failure("example.test", Failure::NoAnswer).unwrap();
    let error = mx(&resolver, "example.test.").await.unwrap_err();
    assert!(matches!(error, NetError::Timeout), "{error:?}");

    // Other names are unaffected; clearing restores normal answers.
    assert!(resolver.lookup_ip("mx1.example.test.").await.is_ok());
    dns.clear_failure("example.test").unwrap();
    assert_eq!(mx(&resolver, "example.test.").await.unwrap().len(), 2);

    // Per-type failure: MX fails, A still answers.
    dns.set_failure_for("implicit.test", RecordType::MX, Failure::ServFail)
        .unwrap();
    let error = mx(&resolver, "implicit.test.").await.unwrap_err();
    assert_eq!(
        response_code(&error),
        Some(ResponseCode::ServFail),
        "{error:?}"
    );
    assert!(resolver.lookup_ip("implicit.test.").await.is_ok());
    dns.clear_failures();
    assert!(
        mx(&resolver, "implicit.test.")
            .await
            .unwrap_err()
            .is_no_records_found()
    );
}

#[tokio::test]
async fn serves_over_tcp_too() {
    let dns = DnsServer::start([test_zone()]).await.unwrap();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = dns.port();
    let name_server = NameServerConfig::new(dns.addr().ip(), true, vec![tcp]);
    let mut options = ResolverOpts::default();
    options.timeout = Duration::from_secs(2);
    options.attempts = 1;
    options.cache_size = 0;
    let resolver = TokioResolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], vec![name_server]),
        TokioRuntimeProvider::default(),
    )
    .with_options(options)
    .build()
    .unwrap();
    assert_eq!(mx(&resolver, "example.test.").await.unwrap().len(), 2);
}

#[tokio::test]
async fn records_change_at_runtime_and_several_zones() {
    let other = Zone::new("other.example.").mx("other.example", 5, "mx.other.example");
    let dns = DnsServer::start([test_zone(), other]).await.unwrap();
    let resolver = dns.resolver(TIMEOUT).unwrap();
    assert_eq!(
        mx(&resolver, "other.example.").await.unwrap(),
        vec![(5, "mx.other.example.".to_string())]
    );

    dns.remove_records("example.test", RecordType::MX)
        .await
        .unwrap();
    assert!(
        mx(&resolver, "example.test.")
            .await
            .unwrap_err()
            .is_no_records_found()
    );
    dns.add_records(Zone::new("test.").mx("example.test", 30, "mx3.example.test"))
        .await
        .unwrap();
    assert_eq!(
        mx(&resolver, "example.test.").await.unwrap(),
        vec![(30, "mx3.example.test.".to_string())]
    );
    dns.add_records(Zone::new("test.").a("new.test", Ipv4Addr::new(127, 0, 0, 9)))
        .await
        .unwrap();
    assert!(resolver.lookup_ip("new.test.").await.is_ok());

    assert!(dns.add_records(Zone::new("nothere.")).await.is_err());
    assert!(
        DnsServer::start([Zone::new("test.").a("outside.example", Ipv4Addr::LOCALHOST)])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn shutdown_stops_answering() {
    let dns = DnsServer::start([test_zone()]).await.unwrap();
    let resolver = dns.resolver(TIMEOUT).unwrap();
    assert!(mx(&resolver, "example.test.").await.is_ok());
    dns.shutdown().await;
    let error = mx(&resolver, "example.test.").await.unwrap_err();
    assert!(response_code(&error).is_none(), "{error:?}");
}
