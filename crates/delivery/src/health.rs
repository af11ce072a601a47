//! Destination health: a circuit breaker per MX host. Pure bookkeeping; `now` is an argument.
//!
//! Consecutive connection failures, `421` replies, or transactions whose every recipient was
//! refused as rate-limited or as spam ([`throttling_reply`]) from a host open its breaker for a backoff
//! period (doubling on every renewed failure, capped). While open, the host is not contacted and
//! its recipients are deferred with a synthetic `451 4.4.5`. When the period ends, the next
//! attempt goes through ("half-open"): a success closes the breaker, a failure reopens it at once
//! with the doubled backoff. Every concurrent attempt may probe in the half-open state; with
//! bounded concurrency per host that is at most a handful of connections.

use std::collections::HashMap;
use std::time::Duration;

use postrider_core::{EnhancedStatus, SmtpReply, Timestamp, failure_category};

use crate::settings::BreakerSettings;

/// Hosts tracked at most; beyond it, hosts that are not suspended are forgotten first.
const MAX_TRACKED_HOSTS: usize = 10_000;

/// A destination that is currently not contacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuspendedDestination {
    /// The MX (or route / relay) host name.
    pub host: String,
    /// When attempts resume.
    pub until: Timestamp,
    /// The failure that opened the breaker (one line).
    pub reason: String,
    /// Consecutive failures so far.
    pub failures: u32,
}

impl SuspendedDestination {
    /// The reply recorded for recipients deferred because of the suspension.
    pub fn reply(&self) -> SmtpReply {
        SmtpReply::synthetic(
            451,
            EnhancedStatus::new(4, 4, 5),
            format!(
                "destination {} suspended after {} consecutive failures; next try at {}",
                self.host,
                self.failures,
                self.until.to_rfc3339()
            ),
        )
    }
}

#[derive(Debug, Clone)]
struct HostHealth {
    failures: u32,
    suspended_until: Option<Timestamp>,
    backoff: Duration,
    reason: String,
    last_failure: Timestamp,
}

/// The first reply of a transaction in which the host refused every recipient with a reply that
/// asks us to slow down (category `rate_limited` or `spam_block`): such a transaction counts as a
/// failure of the host, so a streak of them suspends it like a streak of `421`s. `None` when any
/// recipient got another reply, or there were none.
pub(crate) fn throttling_reply<'a>(
    replies: impl IntoIterator<Item = &'a SmtpReply>,
) -> Option<&'a SmtpReply> {
    let mut first = None;
    for r in replies {
        if !failure_category(r).is_some_and(|c| c.is_throttling()) {
            return None;
        }
        first = first.or(Some(r));
    }
    first
}

/// The breaker table.
#[derive(Debug)]
pub(crate) struct Breaker {
    settings: BreakerSettings,
    hosts: HashMap<String, HostHealth>,
}

impl Breaker {
    pub(crate) fn new(settings: BreakerSettings) -> Self {
        Breaker {
            settings,
            hosts: HashMap::new(),
        }
    }

    /// `Some` when `host` must not be contacted at `now`.
    pub(crate) fn check(&self, host: &str, now: Timestamp) -> Option<SuspendedDestination> {
        let h = self.hosts.get(host)?;
        let until = h.suspended_until.filter(|u| *u > now)?;
        Some(SuspendedDestination {
            host: host.to_owned(),
            until,
            reason: h.reason.clone(),
            failures: h.failures,
        })
    }

    /// Records a connection failure or `421`. Returns the suspension when this failure opened (or
    /// reopened) the breaker.
    pub(crate) fn record_failure(
        &mut self,
        host: &str,
        reason: &str,
        now: Timestamp,
    ) -> Option<SuspendedDestination> {
        if self.settings.failure_threshold == 0 {
            return None;
        }
        if self.hosts.len() >= MAX_TRACKED_HOSTS && !self.hosts.contains_key(host) {
            self.hosts
                .retain(|_, h| h.suspended_until.is_some_and(|u| u > now));
            if self.hosts.len() >= MAX_TRACKED_HOSTS {
                return None;
            }
        }
        let s = self.settings;
        let h = self.hosts.entry(host.to_owned()).or_insert(HostHealth {
            failures: 0,
            suspended_until: None,
            backoff: Duration::ZERO,
            reason: String::new(),
            last_failure: now,
        });
        h.failures = h.failures.saturating_add(1);
        h.reason = postrider_core::dsn::one_line(reason);
        h.last_failure = now;
        if h.failures < s.failure_threshold {
            return None;
        }
        if h.suspended_until.is_some_and(|u| u > now) {
            // Already open (a concurrent attempt failed too): keep the current period.
            return None;
        }
        h.backoff = if h.backoff.is_zero() {
            s.initial_backoff
        } else {
            (h.backoff * 2).min(s.max_backoff)
        };
        let until = now.saturating_add(h.backoff);
        h.suspended_until = Some(until);
        Some(SuspendedDestination {
            host: host.to_owned(),
            until,
            reason: h.reason.clone(),
            failures: h.failures,
        })
    }

    /// Records a completed session: closes the breaker. Returns whether it had failures.
    pub(crate) fn record_success(&mut self, host: &str) -> bool {
        self.hosts.remove(host).is_some()
    }

    /// Destinations suspended at `now`, by host name.
    pub(crate) fn suspended(&self, now: Timestamp) -> Vec<SuspendedDestination> {
        let mut v: Vec<_> = self
            .hosts
            .keys()
            .filter_map(|host| self.check(host, now))
            .collect();
        v.sort_by(|a, b| a.host.cmp(&b.host));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            failure_threshold: 2,
            initial_backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(150),
        })
    }

    #[test]
    fn opens_after_threshold_doubles_and_closes_on_success() {
        let mut b = breaker();
        let t = |s: u64| Timestamp::from_millis(s * 1000);
        assert!(b.record_failure("mx", "refused", t(0)).is_none());
        assert!(b.check("mx", t(0)).is_none());
        let s = b.record_failure("mx", "421 busy", t(1)).unwrap();
        assert_eq!((s.until, s.failures), (t(61), 2));
        assert!(b.check("mx", t(60)).is_some());
        assert!(b.check("other", t(60)).is_none());
        // concurrent failure while open keeps the period
        assert!(b.record_failure("mx", "x", t(2)).is_none());
        assert_eq!(b.suspended(t(10)).len(), 1);
        // half-open after expiry; a failure reopens with double backoff
        assert!(b.check("mx", t(61)).is_none());
        let s = b.record_failure("mx", "refused", t(70)).unwrap();
        assert_eq!(s.until, t(190));
        // capped
        let s = b.record_failure("mx", "refused", t(200)).unwrap();
        assert_eq!(s.until, t(350));
        let reply = s.reply().to_string();
        assert!(
            reply.starts_with(
                "451 4.4.5 destination mx suspended after 5 consecutive failures; next try at "
            ),
            "{reply}"
        );
        assert!(b.record_success("mx"));
        assert!(b.check("mx", t(201)).is_none());
        assert!(b.suspended(t(201)).is_empty());
        // after a success the count starts over
        assert!(b.record_failure("mx", "refused", t(300)).is_none());
    }

    #[test]
    fn throttling_transactions_count_as_failures() {
        let limited = SmtpReply::new(450, "4.7.28 unusual rate of unsolicited mail from your IP");
        let spam = SmtpReply::new(550, "5.7.1 Client host blocked using zen.spamhaus.org");
        let unknown = SmtpReply::new(550, "5.1.1 no such user");
        let ok = SmtpReply::new(250, "2.1.5 ok");
        assert_eq!(throttling_reply([&limited, &spam]), Some(&limited));
        assert_eq!(throttling_reply([&spam]), Some(&spam));
        assert_eq!(throttling_reply([&limited, &unknown]), None);
        assert_eq!(throttling_reply([&limited, &ok]), None);
        assert_eq!(throttling_reply([]), None);

        // a streak opens the breaker; it closes again by itself after a success
        let mut b = breaker();
        let t = |s: u64| Timestamp::from_millis(s * 1000);
        for i in 0..2 {
            if let Some(r) = throttling_reply([&limited]) {
                b.record_failure("mx", &r.to_string(), t(i));
            }
        }
        assert!(
            b.check("mx", t(2))
                .is_some_and(|s| s.reason.contains("4.7.28"))
        );
        assert!(
            b.check("mx", t(62)).is_none(),
            "half-open after the backoff"
        );
        assert!(b.record_success("mx"));
        assert!(b.suspended(t(62)).is_empty());
    }

    #[test]
    fn threshold_zero_disables() {
        let mut b = Breaker::new(BreakerSettings {
            failure_threshold: 0,
            ..BreakerSettings::default()
        });
        for i in 0..10 {
            assert!(
                b.record_failure("mx", "x", Timestamp::from_millis(i))
                    .is_none()
            );
        }
        assert!(b.check("mx", Timestamp::from_millis(10)).is_none());
    }
}
