//! SMTP TLS reporting (RFC 8460), the pure part: the UTC day a report covers and the session
//! counts of one policy domain for one day, with their bounds.
//!
//! The delivery side counts sessions in memory, the store keeps the counts between flushes, and
//! the daily report is built from them.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// Most failure-detail rows kept for one domain and day; failures beyond them still count in
/// the totals.
pub const MAX_FAILURE_DETAILS: usize = 100;

/// Milliseconds in a day.
const DAY_MS: u64 = 86_400_000;

/// One UTC day, as days since 1970-01-01: the period of one TLS report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UtcDay(pub u32);

impl UtcDay {
    /// The day `at` falls in.
    pub fn of(at: Timestamp) -> UtcDay {
        UtcDay(u32::try_from(at.as_millis() / DAY_MS).unwrap_or(u32::MAX))
    }

    /// Its first instant (00:00:00 UTC).
    pub fn start(self) -> Timestamp {
        Timestamp::from_millis(u64::from(self.0) * DAY_MS)
    }

    /// The first instant of the next day (the report's end time).
    pub fn end(self) -> Timestamp {
        self.next().start()
    }

    /// The day after.
    pub fn next(self) -> UtcDay {
        UtcDay(self.0.saturating_add(1))
    }

    /// The day before.
    pub fn previous(self) -> UtcDay {
        UtcDay(self.0.saturating_sub(1))
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Option<UtcDay> {
        if s.len() != 10 {
            return None;
        }
        Timestamp::parse_rfc3339(&format!("{s}T00:00:00Z")).map(UtcDay::of)
    }
}

impl std::fmt::Display for UtcDay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let full = self.start().to_rfc3339();
        f.write_str(full.get(..10).unwrap_or(&full))
    }
}

/// Sessions to one policy domain on one day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsSessionCounts {
    /// Sessions that satisfied the policy.
    pub successes: u64,
    /// Sessions that failed it, all of them (also those without a detail row).
    pub failures: u64,
    /// Failures by what went wrong and where, at most [`MAX_FAILURE_DETAILS`] rows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FailureDetail>,
}

/// Failed sessions with one result type, receiving MX host and receiving address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureDetail {
    /// The RFC 8460 result type (`starttls-not-supported`, `validation-failure`, …).
    pub result: String,
    /// The MX host, when the failure concerned one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mx_host: Option<String>,
    /// The MX host's address, when a connection was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_ip: Option<IpAddr>,
    /// How many sessions.
    pub count: u64,
}

impl FailureDetail {
    /// Whether this row counts the same kind of failure as `other`.
    fn same_kind(&self, other: &FailureDetail) -> bool {
        self.result == other.result
            && self.mx_host == other.mx_host
            && self.receiving_ip == other.receiving_ip
    }
}

impl TlsSessionCounts {
    /// Counts `n` successful sessions.
    pub fn add_successes(&mut self, n: u64) {
        self.successes = self.successes.saturating_add(n);
    }

    /// Counts the failures of `detail` (its `count`): in the total, and in its row, which is
    /// added when there is room.
    pub fn add_failures(&mut self, detail: FailureDetail) {
        self.failures = self.failures.saturating_add(detail.count);
        self.add_detail(detail);
    }

    /// Adds `detail` to its row, or as a new row when there is room.
    fn add_detail(&mut self, detail: FailureDetail) {
        if let Some(row) = self.details.iter_mut().find(|r| r.same_kind(&detail)) {
            row.count = row.count.saturating_add(detail.count);
        } else if self.details.len() < MAX_FAILURE_DETAILS {
            self.details.push(detail);
        }
    }

    /// Adds everything `other` counted.
    pub fn merge(&mut self, other: TlsSessionCounts) {
        self.add_successes(other.successes);
        self.failures = self.failures.saturating_add(other.failures);
        for detail in other.details {
            self.add_detail(detail);
        }
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.successes == 0 && self.failures == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(result: &str, mx: &str, count: u64) -> FailureDetail {
        FailureDetail {
            result: result.into(),
            mx_host: Some(mx.into()),
            receiving_ip: Some("192.0.2.1".parse().unwrap()),
            count,
        }
    }

    #[test]
    fn days_print_parse_and_bound_a_report() {
        let day = UtcDay::parse("2026-12-03").unwrap();
        assert_eq!(day.to_string(), "2026-12-03");
        assert_eq!(day.start().to_rfc3339(), "2026-12-03T00:00:00.000Z");
        assert_eq!(day.end().to_rfc3339(), "2026-12-04T00:00:00.000Z");
        assert_eq!(
            UtcDay::of(Timestamp::parse_rfc3339("2026-12-03T23:59:59.999Z").unwrap()),
            day
        );
        assert_eq!(day.previous().to_string(), "2026-12-02");
        assert_eq!(UtcDay::parse("2026-12-3"), None);
        assert_eq!(UtcDay::parse("yesterday!"), None);
        assert_eq!(UtcDay::parse("2026-13-01"), None);
    }

    #[test]
    fn failures_of_one_kind_share_a_row() {
        let mut counts = TlsSessionCounts::default();
        counts.add_successes(3);
        counts.add_failures(failure("starttls-not-supported", "mx1.example", 1));
        counts.add_failures(failure("starttls-not-supported", "mx1.example", 2));
        counts.add_failures(failure("certificate-expired", "mx1.example", 1));
        assert_eq!(counts.successes, 3);
        assert_eq!(counts.failures, 4);
        assert_eq!(counts.details.len(), 2);
        assert_eq!(counts.details[0].count, 3);
    }

    #[test]
    fn merging_adds_totals_and_rows() {
        let mut a = TlsSessionCounts::default();
        a.add_successes(1);
        a.add_failures(failure("validation-failure", "mx1.example", 1));
        let mut b = TlsSessionCounts::default();
        b.add_successes(2);
        b.add_failures(failure("validation-failure", "mx1.example", 4));
        b.add_failures(failure("validation-failure", "mx2.example", 1));
        a.merge(b);
        assert_eq!((a.successes, a.failures), (3, 6));
        assert_eq!(a.details.len(), 2);
        assert_eq!(a.details[0].count, 5);
    }

    #[test]
    fn detail_rows_are_bounded_but_totals_are_not() {
        let mut counts = TlsSessionCounts::default();
        for i in 0..MAX_FAILURE_DETAILS + 50 {
            counts.add_failures(failure(
                "certificate-not-trusted",
                &format!("mx{i}.example"),
                1,
            ));
        }
        assert_eq!(counts.details.len(), MAX_FAILURE_DETAILS);
        assert_eq!(counts.failures, (MAX_FAILURE_DETAILS + 50) as u64);
    }
}
