//! Throttling of failed AUTH attempts, per client address and per user name: a growing delay
//! before each failure is answered, then a temporary lockout during which credentials are not
//! checked at all (so a locked-out guesser costs no argon2 CPU). Pure logic: the caller passes
//! the time in and does the waiting.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Longest delay before a failed AUTH is answered, however many failures came before.
pub(crate) const MAX_FAILURE_DELAY: Duration = Duration::from_secs(8);
/// Client addresses and user names tracked each; beyond that the least recently failed are
/// forgotten.
pub(crate) const MAX_TRACKED: usize = 10_000;
/// User names are tracked by at most this many leading octets, so a client sending huge names
/// cannot grow the table's memory.
const MAX_TRACKED_NAME: usize = 128;

/// How failures are counted and punished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ThrottlePolicy {
    /// Failures within `window` that lock the address or user out.
    pub(crate) max_failures: u32,
    /// Failures older than this (counted from the first failure of a window) are forgotten.
    pub(crate) window: Duration,
    /// How long a lockout lasts.
    pub(crate) lockout: Duration,
    /// Delay before answering the first failure; it doubles with every further failure.
    pub(crate) first_delay: Duration,
    /// Addresses and users tracked each.
    pub(crate) max_tracked: usize,
}

/// What a lockout applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockScope {
    /// Every AUTH from the client's address (an IPv6 client's /64).
    Address,
    /// Every AUTH for the user name, from anywhere.
    User,
}

impl LockScope {
    /// Stable metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LockScope::Address => "address",
            LockScope::User => "user",
        }
    }
}

/// The consequence of one recorded failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FailureVerdict {
    /// How long to wait before answering the failure.
    pub(crate) delay: Duration,
    /// Lockouts this failure started (empty, or the address and/or the user).
    pub(crate) lockouts: Vec<LockScope>,
}

#[derive(Debug, Clone, Copy)]
struct FailureRecord {
    failures: u32,
    window_start: Instant,
    locked_until: Option<Instant>,
    last_failure: Instant,
}

impl FailureRecord {
    fn is_locked(&self, now: Instant) -> bool {
        self.locked_until.is_some_and(|until| now < until)
    }

    fn failures_in_window(&self, now: Instant, window: Duration) -> u32 {
        if now.saturating_duration_since(self.window_start) < window {
            self.failures
        } else {
            0
        }
    }

    /// Whether the record says nothing any more: no failures in the window, no lockout.
    fn is_spent(&self, now: Instant, window: Duration) -> bool {
        !self.is_locked(now) && self.failures_in_window(now, window) == 0
    }
}

/// Failure records of one kind of key, bounded to `policy.max_tracked` entries.
#[derive(Debug)]
struct FailureTable<K> {
    records: HashMap<K, FailureRecord>,
}

impl<K: Eq + Hash + Clone> FailureTable<K> {
    fn new() -> Self {
        FailureTable {
            records: HashMap::new(),
        }
    }

    fn is_locked(&self, key: &K, now: Instant) -> bool {
        self.records.get(key).is_some_and(|r| r.is_locked(now))
    }

    /// Counts a failure for `key`; returns the failures in the window including this one and
    /// whether it started a lockout (which also starts a fresh count).
    fn record_failure(&mut self, key: &K, now: Instant, policy: &ThrottlePolicy) -> (u32, bool) {
        if !self.records.contains_key(key) {
            self.make_room(now, policy);
        }
        let record = self.records.entry(key.clone()).or_insert(FailureRecord {
            failures: 0,
            window_start: now,
            locked_until: None,
            last_failure: now,
        });
        if record.failures_in_window(now, policy.window) == 0 {
            record.failures = 0;
            record.window_start = now;
        }
        record.failures = record.failures.saturating_add(1);
        record.last_failure = now;
        let failures = record.failures;
        let locks = failures >= policy.max_failures && !record.is_locked(now);
        if locks {
            record.locked_until = Some(now + policy.lockout);
            record.failures = 0;
            record.window_start = now;
        }
        (failures, locks)
    }

    fn forget(&mut self, key: &K) {
        self.records.remove(key);
    }

    /// Frees one entry when the table is full: spent records first, else the one whose last
    /// failure is oldest.
    fn make_room(&mut self, now: Instant, policy: &ThrottlePolicy) {
        if self.records.len() < policy.max_tracked.max(1) {
            return;
        }
        self.records.retain(|_, r| !r.is_spent(now, policy.window));
        if self.records.len() < policy.max_tracked.max(1) {
            return;
        }
        let oldest = self
            .records
            .iter()
            .min_by_key(|(_, r)| r.last_failure)
            .map(|(k, _)| k.clone());
        if let Some(key) = oldest {
            self.records.remove(&key);
        }
    }
}

/// Failed-AUTH throttle of one server: per client address and per user name.
#[derive(Debug)]
pub(crate) struct AuthThrottle {
    policy: ThrottlePolicy,
    addresses: FailureTable<IpAddr>,
    users: FailureTable<String>,
}

impl AuthThrottle {
    /// An empty throttle.
    pub(crate) fn new(policy: ThrottlePolicy) -> Self {
        AuthThrottle {
            policy,
            addresses: FailureTable::new(),
            users: FailureTable::new(),
        }
    }

    /// The lockout that refuses an attempt for `user` from `address` at `now`, if any.
    /// `address` is `None` for clients exempt from the per-address count (trusted networks).
    pub(crate) fn lockout(
        &self,
        address: Option<IpAddr>,
        user: &str,
        now: Instant,
    ) -> Option<LockScope> {
        if address.is_some_and(|a| self.addresses.is_locked(&address_key(a), now)) {
            return Some(LockScope::Address);
        }
        if self.users.is_locked(&user_key(user), now) {
            return Some(LockScope::User);
        }
        None
    }

    /// Records wrong credentials for `user` from `address`.
    pub(crate) fn record_failure(
        &mut self,
        address: Option<IpAddr>,
        user: &str,
        now: Instant,
    ) -> FailureVerdict {
        let mut lockouts = Vec::new();
        let mut failures = 0;
        if let Some(address) = address {
            let (count, locked) =
                self.addresses
                    .record_failure(&address_key(address), now, &self.policy);
            failures = count;
            if locked {
                lockouts.push(LockScope::Address);
            }
        }
        let (count, locked) = self
            .users
            .record_failure(&user_key(user), now, &self.policy);
        failures = failures.max(count);
        if locked {
            lockouts.push(LockScope::User);
        }
        FailureVerdict {
            delay: failure_delay(self.policy.first_delay, failures),
            lockouts,
        }
    }

    /// Records a successful AUTH: the address's failures are forgotten.
    pub(crate) fn record_success(&mut self, address: Option<IpAddr>) {
        if let Some(address) = address {
            self.addresses.forget(&address_key(address));
        }
    }

    /// Addresses and user names tracked now.
    #[cfg(test)]
    fn tracked(&self) -> (usize, usize) {
        (self.addresses.records.len(), self.users.records.len())
    }
}

/// The delay before answering the `failures`-th failure in a row: `first` doubled for every
/// failure after the first, at most [`MAX_FAILURE_DELAY`].
pub(crate) fn failure_delay(first: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(31);
    first
        .checked_mul(1 << doublings)
        .unwrap_or(MAX_FAILURE_DELAY)
        .min(MAX_FAILURE_DELAY)
}

/// The key an address is counted under: IPv4 addresses (and v4-mapped ones) as they are,
/// IPv6 addresses by their /64, which one subscriber usually holds whole.
fn address_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
    }
}

/// The key a user name is counted under: its first [`MAX_TRACKED_NAME`] octets (cut at a
/// character boundary).
fn user_key(user: &str) -> String {
    let mut end = user.len().min(MAX_TRACKED_NAME);
    while !user.is_char_boundary(end) {
        end -= 1;
    }
    user[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ThrottlePolicy {
        ThrottlePolicy {
            max_failures: 3,
            window: Duration::from_secs(600),
            lockout: Duration::from_secs(900),
            first_delay: Duration::from_millis(250),
            max_tracked: 100,
        }
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let first = Duration::from_millis(250);
        assert_eq!(failure_delay(first, 0), Duration::ZERO);
        assert_eq!(failure_delay(first, 1), Duration::from_millis(250));
        assert_eq!(failure_delay(first, 2), Duration::from_millis(500));
        assert_eq!(failure_delay(first, 4), Duration::from_secs(2));
        assert_eq!(failure_delay(first, 6), MAX_FAILURE_DELAY);
        assert_eq!(failure_delay(first, u32::MAX), MAX_FAILURE_DELAY);
    }

    #[test]
    fn an_address_is_locked_out_after_max_failures_then_released() {
        let now = Instant::now();
        let mut throttle = AuthThrottle::new(policy());
        let a = ip("192.0.2.1");
        for (i, user) in ["u1", "u2"].iter().enumerate() {
            let verdict = throttle.record_failure(a, user, now);
            assert!(verdict.lockouts.is_empty());
            assert_eq!(
                verdict.delay,
                failure_delay(policy().first_delay, i as u32 + 1)
            );
            assert_eq!(throttle.lockout(a, "u3", now), None);
        }
        let verdict = throttle.record_failure(a, "u3", now);
        assert_eq!(verdict.lockouts, vec![LockScope::Address]);
        assert_eq!(throttle.lockout(a, "u9", now), Some(LockScope::Address));
        assert_eq!(
            throttle.lockout(ip("192.0.2.2"), "u9", now),
            None,
            "other addresses are not affected"
        );
        let later = now + policy().lockout;
        assert_eq!(throttle.lockout(a, "u9", later), None, "lockouts expire");
        assert!(
            throttle.record_failure(a, "u4", later).lockouts.is_empty(),
            "a fresh count after the lockout"
        );
    }

    #[test]
    fn a_user_is_locked_out_whatever_the_address() {
        let now = Instant::now();
        let mut throttle = AuthThrottle::new(policy());
        for a in ["192.0.2.1", "198.51.100.1", "203.0.113.1"] {
            assert_eq!(throttle.lockout(ip(a), "app", now), None);
            throttle.record_failure(ip(a), "app", now);
        }
        assert_eq!(
            throttle.lockout(ip("192.0.2.77"), "app", now),
            Some(LockScope::User)
        );
        assert_eq!(throttle.lockout(None, "app", now), Some(LockScope::User));
        assert_eq!(throttle.lockout(ip("192.0.2.77"), "other", now), None);
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let now = Instant::now();
        let mut throttle = AuthThrottle::new(policy());
        let a = ip("192.0.2.1");
        throttle.record_failure(a, "u", now);
        throttle.record_failure(a, "u", now);
        let later = now + policy().window;
        let verdict = throttle.record_failure(a, "u", later);
        assert!(verdict.lockouts.is_empty());
        assert_eq!(verdict.delay, policy().first_delay, "the count restarted");
    }

    #[test]
    fn success_resets_the_address_only() {
        let now = Instant::now();
        let mut throttle = AuthThrottle::new(policy());
        let a = ip("192.0.2.1");
        throttle.record_failure(a, "app", now);
        throttle.record_failure(a, "app", now);
        throttle.record_success(a);
        let verdict = throttle.record_failure(a, "other", now);
        assert!(verdict.lockouts.is_empty());
        assert_eq!(verdict.delay, policy().first_delay);
        assert_eq!(
            throttle
                .record_failure(ip("192.0.2.2"), "app", now)
                .lockouts,
            vec![LockScope::User],
            "the user's failures still count"
        );
    }

    #[test]
    fn exempt_clients_count_per_user_only() {
        let now = Instant::now();
        let mut throttle = AuthThrottle::new(policy());
        for user in ["a", "b", "c", "d"] {
            assert!(throttle.record_failure(None, user, now).lockouts.is_empty());
        }
        assert_eq!(throttle.lockout(None, "e", now), None);
        assert_eq!(throttle.tracked(), (0, 4));
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let now = Instant::now();
        let mut throttle = AuthThrottle::new(policy());
        for a in ["2001:db8::1", "2001:db8::2:3", "2001:db8::ffff:1"] {
            throttle.record_failure(ip(a), a, now);
        }
        assert_eq!(
            throttle.lockout(ip("2001:db8::99"), "x", now),
            Some(LockScope::Address)
        );
        assert_eq!(throttle.lockout(ip("2001:db8:0:1::1"), "x", now), None);
        let mapped = ip("::ffff:192.0.2.1");
        throttle.record_failure(mapped, "m1", now);
        throttle.record_failure(ip("192.0.2.1"), "m2", now);
        throttle.record_failure(mapped, "m3", now);
        assert_eq!(
            throttle.lockout(ip("192.0.2.1"), "x", now),
            Some(LockScope::Address),
            "v4-mapped counts as the IPv4 address"
        );
    }

    #[test]
    fn tables_are_bounded_and_forget_the_oldest() {
        let start = Instant::now();
        let mut throttle = AuthThrottle::new(ThrottlePolicy {
            max_tracked: 3,
            ..policy()
        });
        for i in 0..10u8 {
            let now = start + Duration::from_secs(u64::from(i));
            throttle.record_failure(Some(IpAddr::from([192, 0, 2, i])), &format!("u{i}"), now);
        }
        assert_eq!(throttle.tracked(), (3, 3));
        let now = start + Duration::from_secs(10);
        for _ in 0..2 {
            throttle.record_failure(ip("192.0.2.9"), "u9", now);
        }
        assert_eq!(
            throttle.lockout(ip("192.0.2.9"), "u9", now),
            Some(LockScope::Address),
            "the newest entries were kept"
        );
        // Long names share one entry per prefix, so they cannot inflate memory.
        let long = "x".repeat(10_000);
        throttle.record_failure(None, &long, now);
        throttle.record_failure(None, &format!("{long}y"), now);
        throttle.record_failure(None, &format!("{long}z"), now);
        assert_eq!(throttle.lockout(None, &long, now), Some(LockScope::User));
        assert!(
            throttle
                .users
                .records
                .keys()
                .all(|k| k.len() <= MAX_TRACKED_NAME)
        );
        assert_eq!(user_key("é".repeat(100).as_str()).len(), 128);
    }
}
