//! The pure part of a TLS report: where the policy domain wants it (its `_smtp._tls` TXT
//! record), the RFC 8460 JSON built from one day's counts, and its gzip form.

use std::io::Write as _;

use mail_auth::common::parse::TxtRecordParser as _;
use mail_auth::mta_sts::{ReportUri, TlsRpt};
use mail_auth::report::tlsrpt::{
    DateRange, FailureDetails, Policy, PolicyDetails, PolicyType, ResultType, Summary, TlsReport,
};
use mail_parser::DateTime;
use postrider_core::mta_sts::StsPolicy;
use postrider_core::tls_report::{TlsSessionCounts, UtcDay};

/// Most report addresses used from one record.
pub(crate) const MAX_RUA: usize = 8;

/// Why a domain's reporting record is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RuaError {
    /// No `v=TLSRPTv1` record.
    #[error("no v=TLSRPTv1 record")]
    NoRecord,
    /// More than one (RFC 8460 §3: then none applies).
    #[error("more than one v=TLSRPTv1 record")]
    Several,
    /// The record does not parse or names no usable address.
    #[error("the v=TLSRPTv1 record is invalid or has no mailto: or https: address")]
    Invalid,
}

/// The report addresses (`rua`) of the one TLS-RPT record among the TXT `records` of
/// `_smtp._tls.<domain>`, at most [`MAX_RUA`].
pub(crate) fn rua_of(records: &[String]) -> Result<Vec<ReportUri>, RuaError> {
    let tlsrpt: Vec<&String> = records
        .iter()
        .filter(|r| r.trim_start().starts_with("v=TLSRPTv1"))
        .collect();
    let record = match tlsrpt.as_slice() {
        [] => return Err(RuaError::NoRecord),
        [one] => *one,
        _ => return Err(RuaError::Several),
    };
    let parsed = TlsRpt::parse(record.as_bytes()).map_err(|_| RuaError::Invalid)?;
    let rua: Vec<ReportUri> = parsed.rua.into_iter().take(MAX_RUA).collect();
    if rua.is_empty() {
        return Err(RuaError::Invalid);
    }
    Ok(rua)
}

/// Who reports, for the report's header fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reporter<'a> {
    /// `organization-name`.
    pub organization: &'a str,
    /// `contact-info`.
    pub contact: &'a str,
    /// The relay's host name, which makes the report id unique.
    pub hostname: &'a str,
}

/// The RFC 8460 report of `domain` for `day`: one policy (`sts` with its text and MX patterns
/// when `policy` is known, else `no-policy-found`) with the counts.
pub(crate) fn build_report(
    reporter: Reporter<'_>,
    day: UtcDay,
    domain: &str,
    policy: Option<&StsPolicy>,
    counts: &TlsSessionCounts,
) -> TlsReport {
    let details = match policy {
        Some(p) => PolicyDetails {
            policy_type: PolicyType::Sts,
            policy_string: policy_strings(p),
            policy_domain: domain.to_owned(),
            mx_host: p.mx.clone(),
        },
        None => PolicyDetails {
            policy_type: PolicyType::NoPolicyFound,
            policy_string: Vec::new(),
            policy_domain: domain.to_owned(),
            mx_host: Vec::new(),
        },
    };
    TlsReport {
        organization_name: Some(reporter.organization.to_owned()),
        date_range: DateRange {
            start_datetime: date_time(day.start().as_secs()),
            end_datetime: date_time(day.end().as_secs()),
        },
        contact_info: Some(reporter.contact.to_owned()),
        report_id: format!("{day}.{domain}@{}", reporter.hostname),
        policies: vec![Policy {
            policy: details,
            summary: Summary {
                total_success: saturating_u32(counts.successes),
                total_failure: saturating_u32(counts.failures),
            },
            failure_details: counts
                .details
                .iter()
                .map(|d| FailureDetails {
                    result_type: result_type(&d.result),
                    receiving_mx_hostname: d.mx_host.clone(),
                    receiving_ip: d.receiving_ip,
                    failed_session_count: saturating_u32(d.count),
                    ..FailureDetails::default()
                })
                .collect(),
        }],
    }
}

/// The policy as the lines of its file (RFC 8460 §4.4 `policy-string`).
fn policy_strings(policy: &StsPolicy) -> Vec<String> {
    let mut lines = vec![
        "version: STSv1".to_owned(),
        format!("mode: {}", policy.mode.as_str()),
    ];
    lines.extend(policy.mx.iter().map(|mx| format!("mx: {mx}")));
    lines.push(format!("max_age: {}", policy.max_age_secs));
    lines
}

/// The result type named `name` (`other` when unknown).
fn result_type(name: &str) -> ResultType {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).unwrap_or_default()
}

/// Seconds since the epoch as a mail-parser date-time.
fn date_time(secs: u64) -> DateTime {
    DateTime::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
}

fn saturating_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The report as JSON, without the `null` members mail-auth writes for absent optional
/// fields (RFC 8460 leaves them out).
pub(crate) fn report_json(report: &TlsReport) -> String {
    match serde_json::to_value(report) {
        Ok(v) => without_nulls(v).to_string(),
        Err(_) => report.to_json(),
    }
}

/// The JSON without `null` members (mail-auth writes absent optional fields as `null`).
fn without_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(without_nulls).collect())
        }
        other => other,
    }
}

/// `data` compressed with gzip (`application/tlsrpt+gzip`).
pub(crate) fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = mail_auth::flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        mail_auth::flate2::Compression::default(),
    );
    encoder.write_all(data)?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use postrider_core::mta_sts::StsMode;
    use postrider_core::tls_report::FailureDetail;

    use super::*;

    fn records(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_one_tlsrpt_record_gives_the_addresses() {
        assert_eq!(
            rua_of(&records(&[
                "v=spf1 -all",
                "v=TLSRPTv1; rua=mailto:tls@example.test,https://reports.example.test/tlsrpt"
            ])),
            Ok(vec![
                ReportUri::Mail("tls@example.test".into()),
                ReportUri::Http("https://reports.example.test/tlsrpt".into()),
            ])
        );
        assert_eq!(
            rua_of(&records(&["v=TLSRPTv1;rua=mailto:a@example.test"])),
            Ok(vec![ReportUri::Mail("a@example.test".into())])
        );
        assert_eq!(rua_of(&records(&[])), Err(RuaError::NoRecord));
        assert_eq!(rua_of(&records(&["v=spf1 -all"])), Err(RuaError::NoRecord));
        assert_eq!(
            rua_of(&records(&[
                "v=TLSRPTv1; rua=mailto:a@example.test",
                "v=TLSRPTv1; rua=mailto:b@example.test"
            ])),
            Err(RuaError::Several)
        );
        assert_eq!(
            rua_of(&records(&["v=TLSRPTv1; rua=ftp://example.test"])),
            Err(RuaError::Invalid)
        );
        assert_eq!(rua_of(&records(&["v=TLSRPTv1;"])), Err(RuaError::Invalid));
    }

    #[test]
    fn report_json_for_given_counts() {
        let mut counts = TlsSessionCounts::default();
        counts.add_successes(5);
        counts.add_failures(FailureDetail {
            result: "starttls-not-supported".into(),
            mx_host: Some("mx2.example.test".into()),
            receiving_ip: Some("192.0.2.7".parse().unwrap()),
            count: 2,
        });
        counts.add_failures(FailureDetail {
            result: "validation-failure".into(),
            mx_host: Some("rogue.example.net".into()),
            receiving_ip: None,
            count: 1,
        });
        let policy = StsPolicy {
            mode: StsMode::Enforce,
            mx: vec!["mx1.example.test".into(), "*.example.test".into()],
            max_age_secs: 86_400,
        };
        let reporter = Reporter {
            organization: "Example Sender",
            contact: "tls-admin@sender.test",
            hostname: "relay.sender.test",
        };
        let report = build_report(
            reporter,
            UtcDay::parse("2026-12-02").unwrap(),
            "example.test",
            Some(&policy),
            &counts,
        );
        let json: serde_json::Value = serde_json::from_str(&report_json(&report)).unwrap();
        let golden = serde_json::json!({
            "organization-name": "Example Sender",
            "date-range": {
                "start-datetime": "2026-12-02T00:00:00Z",
                "end-datetime": "2026-12-03T00:00:00Z"
            },
            "contact-info": "tls-admin@sender.test",
            "report-id": "2026-12-02.example.test@relay.sender.test",
            "policies": [{
                "policy": {
                    "policy-type": "sts",
                    "policy-string": [
                        "version: STSv1",
                        "mode: enforce",
                        "mx: mx1.example.test",
                        "mx: *.example.test",
                        "max_age: 86400"
                    ],
                    "policy-domain": "example.test",
                    "mx-host": ["mx1.example.test", "*.example.test"]
                },
                "summary": {
                    "total-successful-session-count": 5,
                    "total-failure-session-count": 3
                },
                "failure-details": [
                    {
                        "result-type": "starttls-not-supported",
                        "receiving-mx-hostname": "mx2.example.test",
                        "receiving-ip": "192.0.2.7",
                        "failed-session-count": 2
                    },
                    {
                        "result-type": "validation-failure",
                        "receiving-mx-hostname": "rogue.example.net",
                        "failed-session-count": 1
                    }
                ]
            }]
        });
        assert_eq!(json, golden);
    }

    #[test]
    fn a_domain_without_a_known_policy_is_no_policy_found() {
        let mut counts = TlsSessionCounts::default();
        counts.add_failures(FailureDetail {
            result: "sts-policy-fetch-error".into(),
            mx_host: None,
            receiving_ip: None,
            count: 1,
        });
        let reporter = Reporter {
            organization: "o",
            contact: "c@o.test",
            hostname: "h.o.test",
        };
        let report = build_report(reporter, UtcDay(20_000), "x.test", None, &counts);
        let policy = &report.policies[0];
        assert_eq!(policy.policy.policy_type, PolicyType::NoPolicyFound);
        assert_eq!(
            policy.failure_details[0].result_type,
            ResultType::StsPolicyFetchError
        );
        assert_eq!(result_type("something-new"), ResultType::Other);
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read as _;
        let packed = gzip(b"{\"a\":1}").unwrap();
        let mut out = String::new();
        mail_auth::flate2::read::GzDecoder::new(packed.as_slice())
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "{\"a\":1}");
    }
}
