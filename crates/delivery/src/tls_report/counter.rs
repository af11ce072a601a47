//! Session counts for TLS reports, kept in memory between flushes to the store, so that a
//! session costs a map update and never a write.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use postrider_core::Timestamp;
use postrider_core::tls_report::{FailureDetail, TlsSessionCounts, UtcDay};
use postrider_store::Store;

/// Most policy domains counted per day (per run of the relay); sessions to further domains
/// that day are not counted.
pub(crate) const MAX_DOMAINS_PER_DAY: usize = 10_000;

/// One session's result under a domain's policy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionResult<'a> {
    /// The policy domain (the recipient domain).
    pub domain: &'a str,
    /// `success` or an RFC 8460 result type.
    pub result: &'a str,
    /// The receiving MX host, when the result concerns one.
    pub mx_host: Option<&'a str>,
    /// Its address, when a connection was made.
    pub receiving_ip: Option<IpAddr>,
}

/// Counts per (day, domain) since the last flush, and the domains admitted per day.
#[derive(Debug, Default)]
pub(crate) struct SessionCounter {
    state: Mutex<CounterState>,
}

#[derive(Debug, Default)]
struct CounterState {
    /// Counts not yet flushed.
    pending: HashMap<(UtcDay, String), TlsSessionCounts>,
    /// The day of `admitted`.
    day: Option<UtcDay>,
    /// The domains counted on `day` (bounded by [`MAX_DOMAINS_PER_DAY`]).
    admitted: HashSet<String>,
}

impl CounterState {
    /// Whether `domain` may be counted on `day`; admits it when there is room.
    fn admit(&mut self, day: UtcDay, domain: &str) -> bool {
        if self.day != Some(day) {
            self.day = Some(day);
            self.admitted.clear();
        }
        if self.admitted.contains(domain) {
            return true;
        }
        if self.admitted.len() >= MAX_DOMAINS_PER_DAY {
            return false;
        }
        self.admitted.insert(domain.to_owned());
        true
    }
}

impl SessionCounter {
    /// Counts `session` on the day of `now`.
    pub(crate) fn record(&self, now: Timestamp, session: SessionResult<'_>) {
        let day = UtcDay::of(now);
        let domain = session.domain.to_ascii_lowercase();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.admit(day, &domain) {
            tracing::debug!(domain = %domain, "TLS report: too many domains today; session not counted");
            return;
        }
        let counts = state.pending.entry((day, domain)).or_default();
        if session.result == "success" {
            counts.add_successes(1);
        } else {
            counts.add_failures(FailureDetail {
                result: session.result.to_owned(),
                mx_host: session.mx_host.map(str::to_ascii_lowercase),
                receiving_ip: session.receiving_ip,
                count: 1,
            });
        }
    }

    /// Takes the counts not yet flushed.
    fn take(&self) -> HashMap<(UtcDay, String), TlsSessionCounts> {
        std::mem::take(
            &mut self
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pending,
        )
    }

    /// Adds the counts since the last flush to the store and writes them out. Counts the store
    /// refused are logged and lost (statistics only).
    pub(crate) async fn flush(&self, store: &Store) {
        let pending = self.take();
        if pending.is_empty() {
            return;
        }
        for ((day, domain), counts) in pending {
            if let Err(e) = store.add_tls_report_counts(day, &domain, counts) {
                tracing::warn!(domain = %domain, day = %day, error = %e, "cannot store TLS report counts");
            }
        }
        if let Err(e) = store.flush_tls_report_counts().await {
            tracing::warn!(error = %e, "cannot write out TLS report counts");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session<'a>(domain: &'a str, result: &'a str) -> SessionResult<'a> {
        SessionResult {
            domain,
            result,
            mx_host: Some("MX.example.test"),
            receiving_ip: Some("127.0.8.1".parse().unwrap()),
        }
    }

    #[test]
    fn sessions_are_counted_per_day_and_domain() {
        let counter = SessionCounter::default();
        let now = Timestamp::from_millis(86_400_000 * 20_000 + 5);
        counter.record(now, session("Example.test", "success"));
        counter.record(now, session("example.test", "success"));
        counter.record(now, session("example.test", "certificate-expired"));
        counter.record(
            Timestamp::from_millis(now.as_millis() + 86_400_000),
            session("example.test", "success"),
        );
        let taken = counter.take();
        assert_eq!(taken.len(), 2);
        let today = &taken[&(UtcDay(20_000), "example.test".to_owned())];
        assert_eq!((today.successes, today.failures), (2, 1));
        assert_eq!(today.details[0].mx_host.as_deref(), Some("mx.example.test"));
        assert!(counter.take().is_empty());
    }

    #[test]
    fn domains_per_day_are_bounded() {
        let counter = SessionCounter::default();
        let now = Timestamp::from_millis(86_400_000 * 20_000);
        for i in 0..MAX_DOMAINS_PER_DAY + 10 {
            counter.record(now, session(&format!("d{i}.test"), "success"));
        }
        assert_eq!(counter.take().len(), MAX_DOMAINS_PER_DAY);
        // Admitted domains keep being counted after a flush; others stay out.
        counter.record(now, session("d0.test", "success"));
        counter.record(now, session("new.test", "success"));
        assert_eq!(counter.take().len(), 1);
    }
}
