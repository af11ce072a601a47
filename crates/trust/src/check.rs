//! `check-domain`: is a sender domain set up so that receivers trust mail from this relay?
//!
//! Looks up SPF, DKIM, DMARC and MX in DNS and says, for each, pass / warn / fail with the
//! exact record to publish when something is missing. The record evaluation is pure
//! (`evaluate_*`), the lookups are a thin async layer.

use std::fmt;
use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, SpfResult};
use postrider_core::Domain;
use postrider_core::mx::is_null_mx;
use postrider_dns::{HickoryMxResolver, MxError, MxResolver};
use serde::Serialize;

use crate::dkim::{DkimAlgorithm, DkimPublicKey, rsa_pkcs1_from_spki};

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Set up correctly.
    Pass,
    /// Works, but should be improved (or could not be determined).
    Warn,
    /// Broken: receivers will distrust or reject mail.
    Fail,
}

impl CheckStatus {
    /// The name used in JSON and the log.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Pass => "pass",
            CheckStatus::Warn => "warn",
            CheckStatus::Fail => "fail",
        }
    }
}

/// One check of a [`DomainReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `spf`, `dkim:<selector>`, `dmarc` or `mx`.
    pub name: String,
    /// The verdict.
    pub status: CheckStatus,
    /// What was found.
    pub detail: String,
    /// What to change, when something should change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status: CheckStatus::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: Option<String>) -> Self {
        Check {
            name: name.into(),
            status: CheckStatus::Warn,
            detail: detail.into(),
            fix,
        }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status: CheckStatus::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// The result of [`check_domain`]: JSON through serde, a text report through `Display`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainReport {
    /// The checked domain.
    pub domain: String,
    /// The worst status of all checks.
    pub status: CheckStatus,
    /// The checks, in order: spf, dkim:*, dmarc, mx.
    pub checks: Vec<Check>,
}

impl DomainReport {
    fn new(domain: &Domain, checks: Vec<Check>) -> Self {
        let status = if checks.iter().any(|c| c.status == CheckStatus::Fail) {
            CheckStatus::Fail
        } else if checks.iter().any(|c| c.status == CheckStatus::Warn) {
            CheckStatus::Warn
        } else {
            CheckStatus::Pass
        };
        DomainReport {
            domain: domain.to_string(),
            status,
            checks,
        }
    }

    /// The check called `name`, if present.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

impl fmt::Display for DomainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Sender domain {}: {}", self.domain, label(self.status))?;
        for check in &self.checks {
            writeln!(
                f,
                "  {} {:<14} {}",
                label(check.status),
                check.name,
                check.detail
            )?;
            if let Some(fix) = &check.fix {
                writeln!(f, "       fix: {fix}")?;
            }
        }
        Ok(())
    }
}

fn label(status: CheckStatus) -> &'static str {
    match status {
        CheckStatus::Pass => "PASS",
        CheckStatus::Warn => "WARN",
        CheckStatus::Fail => "FAIL",
    }
}

/// Checks SPF (are all `egress_ips` authorised?), DKIM (does each key of `dkim` whose domain
/// is `domain` match its published record?), DMARC and MX for `domain`.
///
/// `dkim` may hold keys of other domains; they are skipped. Lookups go through `dns`
/// (use the relay's resolver so the answer is what receivers would see from here).
pub async fn check_domain(
    dns: &HickoryMxResolver,
    domain: &Domain,
    egress_ips: &[IpAddr],
    dkim: &[DkimPublicKey],
) -> DomainReport {
    let mut checks = Vec::new();
    checks.push(check_spf(dns, domain, egress_ips).await);
    for key in dkim.iter().filter(|k| k.domain == domain.as_str()) {
        let name = format!("{}.", key.dns_name());
        let found = txt_records(dns, &name).await;
        checks.push(evaluate_dkim(key, found));
    }
    checks.push(check_dmarc(dns, domain).await);
    checks.push(check_mx(dns, domain).await);
    let report = DomainReport::new(domain, checks);
    tracing::info!(domain = %domain, status = report.status.as_str(), "domain checked");
    report
}

/// Checks a VERP bounce domain (`[bounces] domain`): receivers check SPF against it, since it is
/// the envelope sender of every message (are all `egress_ips` authorised?), and its MX must lead
/// to `receiving_host`, the relay that takes the returned reports in.
pub async fn check_bounce_domain(
    dns: &HickoryMxResolver,
    domain: &Domain,
    egress_ips: &[IpAddr],
    receiving_host: &str,
) -> DomainReport {
    let checks = vec![
        check_spf(dns, domain, egress_ips).await,
        bounce_mx_check(domain, mx_hosts(dns, domain).await, receiving_host),
    ];
    let report = DomainReport::new(domain, checks);
    tracing::info!(domain = %domain, status = report.status.as_str(), "bounce domain checked");
    report
}

/// The MX host names of `domain` (without the trailing dot, lowercased), or why there are none.
async fn mx_hosts(dns: &HickoryMxResolver, domain: &Domain) -> Result<Vec<String>, String> {
    match dns.mx_records(domain).await {
        Ok(records) => Ok(records
            .into_iter()
            .map(|r| r.exchange.to_ascii_lowercase())
            .collect()),
        Err(MxError::NoSuchDomain) => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

/// The `mx` check of a bounce domain from its MX hosts.
fn bounce_mx_check(
    domain: &Domain,
    hosts: Result<Vec<String>, String>,
    receiving_host: &str,
) -> Check {
    let want = receiving_host.trim_end_matches('.').to_ascii_lowercase();
    let publish = format!(
        "publish MX 10 {want} for {domain}, the host whose [bounces] listener receives the reports"
    );
    match hosts {
        Err(e) => Check::warn("mx", format!("MX lookup failed: {e}"), None),
        Ok(h) if h.is_empty() || h == [""] => Check::fail(
            "mx",
            format!("{domain} has no MX record: returned reports cannot reach the relay"),
            publish,
        ),
        Ok(h) if h.contains(&want) => Check::pass("mx", format!("MX {}", h.join(", "))),
        Ok(h) => Check::warn(
            "mx",
            format!("MX {} does not include {want}", h.join(", ")),
            Some(publish),
        ),
    }
}

/// TXT records at `fqdn`, each one's strings concatenated (at most
/// [`postrider_dns::MAX_TXT_RECORDS`]). NXDOMAIN / no data is `Ok(empty)`.
async fn txt_records(dns: &HickoryMxResolver, fqdn: &str) -> Result<Vec<String>, String> {
    dns.lookup_txt(fqdn).await.map_err(|e| e.to_string())
}

fn is_spf(record: &str) -> bool {
    let r = record.trim_start();
    r.len() >= 6
        && r[..6].eq_ignore_ascii_case("v=spf1")
        && r[6..].chars().next().is_none_or(|c| c == ' ')
}

/// An SPF mechanism authorising `ip`.
fn ip_mechanism(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("ip4:{v4}"),
        IpAddr::V6(v6) => format!("ip6:{v6}"),
    }
}

/// The configuration key that lists the relay's egress addresses, named in advice that needs them.
const EGRESS_IPS_KEY: &str = "delivery.public_ips";

/// What to publish when `domain` has no SPF record: a record authorising the egress addresses
/// (`mechanisms`, e.g. `ip4:192.0.2.10`). With none known there is no record to suggest, since
/// `v=spf1 ~all` would authorise nobody and make the relay's own mail fail SPF: the advice names
/// the setting that makes the suggestion possible instead.
pub(crate) fn new_spf_advice(domain: &Domain, mechanisms: &[String]) -> String {
    if mechanisms.is_empty() {
        return format!(
            "publish an SPF record at {domain} that authorises the relay's egress addresses; \
             list them in {EGRESS_IPS_KEY} and run check-domain again for the exact record"
        );
    }
    format!(
        "publish TXT at {domain}: \"v=spf1 {} ~all\"",
        mechanisms.join(" ")
    )
}

/// `record` with `mechanisms` inserted before its `all` / `redirect=` term (or at the end).
pub(crate) fn spf_with_mechanisms(record: &str, mechanisms: &[String]) -> String {
    let mut terms: Vec<String> = record.split_whitespace().map(str::to_owned).collect();
    let at = terms
        .iter()
        .position(|t| {
            let bare = t.trim_start_matches(['+', '-', '~', '?']);
            bare.eq_ignore_ascii_case("all") || t.to_ascii_lowercase().starts_with("redirect=")
        })
        .unwrap_or(terms.len());
    for (i, m) in mechanisms.iter().enumerate() {
        terms.insert(at + i, m.clone());
    }
    terms.join(" ")
}

async fn check_spf(dns: &HickoryMxResolver, domain: &Domain, egress_ips: &[IpAddr]) -> Check {
    let records = match txt_records(dns, &domain.to_fqdn()).await {
        Ok(r) => r,
        Err(e) => return Check::warn("spf", format!("TXT lookup failed: {e}"), None),
    };
    let spf: Vec<&String> = records.iter().filter(|r| is_spf(r)).collect();
    let all_ips: Vec<String> = egress_ips.iter().map(ip_mechanism).collect();
    match spf.as_slice() {
        [] => {
            return Check::fail(
                "spf",
                format!("{domain} publishes no SPF record"),
                new_spf_advice(domain, &all_ips),
            );
        }
        [_] => {}
        many => {
            return Check::fail(
                "spf",
                format!(
                    "{domain} publishes {} SPF records; receivers treat that as an error (permerror)",
                    many.len()
                ),
                format!("merge them into one TXT record at {domain}"),
            );
        }
    }
    let record = spf[0];
    if egress_ips.is_empty() {
        return Check::warn(
            "spf",
            format!("record \"{record}\" found; no egress IP configured to test it against"),
            Some(format!(
                "list the relay's egress addresses in {EGRESS_IPS_KEY} to check that the record authorises them"
            )),
        );
    }
    let authenticator = MessageAuthenticator(dns.resolver().clone());
    let sender = format!("postmaster@{domain}");
    let mut missing = Vec::new();
    let mut problems = Vec::new();
    for ip in egress_ips {
        let output = authenticator
            .verify_spf(SpfParameters::verify_mail_from(
                *ip,
                domain.as_str(),
                domain.as_str(),
                &sender,
            ))
            .await;
        match output.result() {
            SpfResult::Pass => {}
            SpfResult::TempError => problems.push(format!("{ip}: temporary DNS error")),
            SpfResult::PermError => {
                return Check::fail(
                    "spf",
                    format!(
                        "record \"{record}\" is invalid or needs more than 10 DNS lookups (permerror)"
                    ),
                    format!("fix the syntax / reduce the includes of the SPF record of {domain}"),
                );
            }
            other => {
                tracing::debug!(%ip, result = %other, "egress IP not authorised by SPF");
                missing.push(*ip);
            }
        }
    }
    if !missing.is_empty() {
        let mechanisms: Vec<String> = missing.iter().map(ip_mechanism).collect();
        let ips: Vec<String> = missing.iter().map(IpAddr::to_string).collect();
        return Check::fail(
            "spf",
            format!(
                "record \"{record}\" does not authorise egress IP {}",
                ips.join(", ")
            ),
            format!(
                "add \"{}\" to the SPF record of {domain}: \"{}\"",
                mechanisms.join(" "),
                spf_with_mechanisms(record, &mechanisms)
            ),
        );
    }
    if !problems.is_empty() {
        return Check::warn(
            "spf",
            format!("record \"{record}\": {}", problems.join("; ")),
            None,
        );
    }
    Check::pass(
        "spf",
        format!("record \"{record}\" authorises {}", all_ips.join(" ")),
    )
}

/// Tag-value pairs of a DKIM / DMARC record (`k=v; k2=v2`), keys lowercased, whitespace removed
/// from values (base64 in `p=` may be folded).
fn tags(record: &str) -> Vec<(String, String)> {
    record
        .split(';')
        .filter_map(|part| {
            let (k, v) = part.split_once('=')?;
            let value: String = v.chars().filter(|c| !c.is_whitespace()).collect();
            Some((k.trim().to_ascii_lowercase(), value))
        })
        .collect()
}

fn tag<'a>(tags: &'a [(String, String)], name: &str) -> Option<&'a str> {
    tags.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Compares the published key record(s) with a configured key.
pub(crate) fn evaluate_dkim(key: &DkimPublicKey, found: Result<Vec<String>, String>) -> Check {
    let name = format!("dkim:{}", key.selector);
    let publish = format!("publish TXT at {}: \"{}\"", key.dns_name(), key.dns_txt());
    let records = match found {
        Ok(r) => r,
        Err(e) => return Check::warn(name, format!("TXT lookup failed: {e}"), None),
    };
    let keys: Vec<Vec<(String, String)>> = records
        .iter()
        .map(|r| tags(r))
        .filter(|t| tag(t, "p").is_some())
        .collect();
    let record = match keys.as_slice() {
        [] => {
            return Check::fail(
                name,
                format!("no DKIM key record at {}", key.dns_name()),
                publish,
            );
        }
        [one] => one,
        _ => {
            return Check::fail(
                name,
                format!("{} has several key records", key.dns_name()),
                format!("keep only one: {publish}"),
            );
        }
    };
    let published_type = tag(record, "k").unwrap_or("rsa").to_ascii_lowercase();
    if published_type != key.algorithm.key_type() {
        return Check::fail(
            name,
            format!(
                "published key type k={published_type}, configured key is {}",
                key.algorithm
            ),
            publish,
        );
    }
    let p = tag(record, "p").unwrap_or_default();
    if p.is_empty() {
        return Check::fail(name, "the published key is revoked (empty p=)", publish);
    }
    let matches = match (BASE64.decode(p), BASE64.decode(&key.public_key_base64)) {
        (Ok(published), Ok(configured)) => match key.algorithm {
            DkimAlgorithm::RsaSha256 => {
                rsa_pkcs1_from_spki(&published) == rsa_pkcs1_from_spki(&configured)
            }
            DkimAlgorithm::Ed25519Sha256 => published == configured,
        },
        _ => false,
    };
    if !matches {
        return Check::fail(
            name,
            format!(
                "the key published at {} does not match the configured key",
                key.dns_name()
            ),
            format!("replace it: {publish}"),
        );
    }
    if tag(record, "t").is_some_and(|t| t.split(':').any(|f| f.eq_ignore_ascii_case("y"))) {
        return Check::warn(
            name,
            "key matches, but the record is in test mode (t=y)",
            Some("remove t=y once signing works".to_owned()),
        );
    }
    Check::pass(
        name,
        format!(
            "{} publishes the configured {} key",
            key.dns_name(),
            key.algorithm
        ),
    )
}

fn is_dmarc(record: &str) -> bool {
    tags(record)
        .first()
        .is_some_and(|(k, v)| k == "v" && v.eq_ignore_ascii_case("DMARC1"))
}

async fn check_dmarc(dns: &HickoryMxResolver, domain: &Domain) -> Check {
    // RFC 7489 §6.6.3: the policy of the domain itself, else of the organisational domain. Without
    // a public suffix list, every parent with at least two labels stands in for the latter.
    let mut candidate = domain.as_str();
    let mut first_error = None;
    loop {
        let name = format!("_dmarc.{candidate}.");
        match txt_records(dns, &name).await {
            Ok(records) => {
                let found: Vec<&String> = records.iter().filter(|r| is_dmarc(r)).collect();
                if !found.is_empty() {
                    return evaluate_dmarc(domain, candidate, &found);
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        match candidate.split_once('.') {
            Some((_, parent)) if parent.contains('.') => candidate = parent,
            _ => break,
        }
    }
    if let Some(e) = first_error {
        return Check::warn("dmarc", format!("TXT lookup failed: {e}"), None);
    }
    Check::fail(
        "dmarc",
        format!("no DMARC record at _dmarc.{domain}"),
        format!("publish TXT at _dmarc.{domain}: \"v=DMARC1; p=none; rua=mailto:dmarc@{domain}\""),
    )
}

fn evaluate_dmarc(domain: &Domain, at: &str, found: &[&String]) -> Check {
    if found.len() > 1 {
        return Check::fail(
            "dmarc",
            format!("_dmarc.{at} has {} DMARC records", found.len()),
            format!("keep exactly one DMARC record at _dmarc.{at}"),
        );
    }
    let record = found[0];
    let t = tags(record);
    let inherited = at != domain.as_str();
    let policy = if inherited {
        tag(&t, "sp").or_else(|| tag(&t, "p"))
    } else {
        tag(&t, "p")
    };
    let source = if inherited {
        format!(" (inherited from _dmarc.{at})")
    } else {
        String::new()
    };
    match policy.map(str::to_ascii_lowercase).as_deref() {
        Some("none") => Check::pass(
            "dmarc",
            format!("\"{record}\"{source}: policy none (monitoring only)"),
        ),
        Some("quarantine" | "reject") => Check::pass("dmarc", format!("\"{record}\"{source}")),
        _ => Check::fail(
            "dmarc",
            format!("\"{record}\"{source} has no valid p= policy"),
            format!("publish TXT at _dmarc.{at}: \"v=DMARC1; p=none; rua=mailto:dmarc@{at}\""),
        ),
    }
}

async fn check_mx(resolver: &HickoryMxResolver, domain: &Domain) -> Check {
    match resolver.mx_records(domain).await {
        Ok(records) if records.is_empty() => Check::warn(
            "mx",
            format!("{domain} has no MX record; bounces and replies rely on its A/AAAA record"),
            Some(format!("publish an MX record for {domain}")),
        ),
        Ok(records) => {
            if is_null_mx(&records) {
                return Check::warn(
                    "mx",
                    format!("{domain} publishes a null MX: bounces and replies cannot reach it"),
                    Some(format!(
                        "use a Return-Path / From domain that receives mail, or publish real MX records for {domain}"
                    )),
                );
            }
            let mut hosts: Vec<(u16, &str)> = records
                .iter()
                .map(|r| (r.preference, r.exchange.as_str()))
                .collect();
            hosts.sort();
            let list: Vec<String> = hosts.iter().map(|(p, h)| format!("{p} {h}")).collect();
            Check::pass("mx", format!("MX {}", list.join(", ")))
        }
        Err(MxError::NoSuchDomain) => Check::fail(
            "mx",
            format!("{domain} does not exist in DNS (NXDOMAIN)"),
            format!("register/publish {domain} before sending from it"),
        ),
        Err(e) => Check::warn("mx", format!("MX lookup failed: {e}"), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounce_domain_mx_advice() {
        let d = Domain::parse("bounces.example.com").unwrap();
        let host = "relay.example.com";
        let ok = bounce_mx_check(&d, Ok(vec!["relay.example.com".into()]), host);
        assert_eq!(ok.status, CheckStatus::Pass);
        let none = bounce_mx_check(&d, Ok(Vec::new()), host);
        assert_eq!(none.status, CheckStatus::Fail);
        assert!(
            none.fix
                .as_deref()
                .unwrap()
                .contains("MX 10 relay.example.com"),
            "{none:?}"
        );
        let null_mx = bounce_mx_check(&d, Ok(vec![String::new()]), host);
        assert_eq!(null_mx.status, CheckStatus::Fail);
        let other = bounce_mx_check(&d, Ok(vec!["mx.elsewhere.test".into()]), host);
        assert_eq!(other.status, CheckStatus::Warn);
    }

    #[test]
    fn spf_detection() {
        assert!(is_spf("v=spf1 -all"));
        assert!(is_spf("V=SPF1"));
        assert!(!is_spf("v=spf10 -all"));
        assert!(!is_spf("google-site-verification=x"));
    }

    #[test]
    fn new_spf_advice_never_authorises_nobody() {
        let domain = Domain::parse("bare.test").unwrap();
        let advice = new_spf_advice(&domain, &[]);
        assert!(!advice.contains("v=spf1"), "{advice}");
        assert!(advice.contains("delivery.public_ips"), "{advice}");
        assert_eq!(
            new_spf_advice(
                &domain,
                &["ip4:192.0.2.10".to_owned(), "ip6:2001:db8::1".to_owned()]
            ),
            "publish TXT at bare.test: \"v=spf1 ip4:192.0.2.10 ip6:2001:db8::1 ~all\""
        );
    }

    #[test]
    fn spf_suggestion_goes_before_all() {
        let ips = vec!["ip4:203.0.113.5".to_owned()];
        assert_eq!(
            spf_with_mechanisms("v=spf1 mx -all", &ips),
            "v=spf1 mx ip4:203.0.113.5 -all"
        );
        assert_eq!(
            spf_with_mechanisms("v=spf1 redirect=_spf.example.com", &ips),
            "v=spf1 ip4:203.0.113.5 redirect=_spf.example.com"
        );
        assert_eq!(
            spf_with_mechanisms("v=spf1 a", &ips),
            "v=spf1 a ip4:203.0.113.5"
        );
    }

    fn ed_key(p: &str) -> DkimPublicKey {
        DkimPublicKey {
            domain: "example.test".into(),
            selector: "s1".into(),
            algorithm: DkimAlgorithm::Ed25519Sha256,
            public_key_base64: p.into(),
        }
    }

    #[test]
    fn dkim_record_evaluation() {
        let key = ed_key("AAAA");
        let pass = evaluate_dkim(&key, Ok(vec!["v=DKIM1; k=ed25519; p=AA AA".into()]));
        assert_eq!(pass.status, CheckStatus::Pass, "{pass:?}");
        let missing = evaluate_dkim(&key, Ok(vec![]));
        assert_eq!(missing.status, CheckStatus::Fail);
        assert_eq!(
            missing.fix.as_deref(),
            Some("publish TXT at s1._domainkey.example.test: \"v=DKIM1; k=ed25519; p=AAAA\"")
        );
        let wrong = evaluate_dkim(&key, Ok(vec!["v=DKIM1; k=ed25519; p=BBBB".into()]));
        assert_eq!(wrong.status, CheckStatus::Fail);
        let wrong_type = evaluate_dkim(&key, Ok(vec!["v=DKIM1; p=AAAA".into()]));
        assert_eq!(wrong_type.status, CheckStatus::Fail);
        let revoked = evaluate_dkim(&key, Ok(vec!["v=DKIM1; k=ed25519; p=".into()]));
        assert_eq!(revoked.status, CheckStatus::Fail);
        let testing = evaluate_dkim(&key, Ok(vec!["v=DKIM1; k=ed25519; t=y; p=AAAA".into()]));
        assert_eq!(testing.status, CheckStatus::Warn);
        let dns = evaluate_dkim(&key, Err("timeout".into()));
        assert_eq!(dns.status, CheckStatus::Warn);
    }

    #[test]
    fn report_text_and_status() {
        let domain = Domain::parse("example.test").unwrap();
        let report = DomainReport::new(
            &domain,
            vec![
                Check::pass("spf", "ok"),
                Check::fail("dmarc", "none", "publish it"),
            ],
        );
        assert_eq!(report.status, CheckStatus::Fail);
        let text = report.to_string();
        assert!(text.contains("PASS spf"), "{text}");
        assert!(text.contains("FAIL dmarc"), "{text}");
        assert!(text.contains("fix: publish it"), "{text}");
    }
}
