//! Token buckets: bursts up to a capacity, refilled at a steady rate.
//!
//! One rule for every rate limit of the relay (SMTP messages per client, API requests per key,
//! deliveries per destination). Pure: the time is an argument, either a monotonic
//! [`std::time::Instant`] or a wall-clock [`Timestamp`].

use std::time::{Duration, Instant};

use crate::Timestamp;

/// A point in time a bucket can be refilled against.
pub trait Moment: Copy {
    /// How long after `earlier` this is; zero when `earlier` is later (clocks may step back).
    fn saturating_since(self, earlier: Self) -> Duration;
}

impl Moment for Instant {
    fn saturating_since(self, earlier: Self) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl Moment for Timestamp {
    fn saturating_since(self, earlier: Self) -> Duration {
        Timestamp::saturating_since(self, earlier)
    }
}

/// The shape of a limit: how many tokens a bucket holds and how fast it refills.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketRate {
    capacity: f64,
    per_second: f64,
}

impl BucketRate {
    /// `n` per minute, with a burst of a minute's worth (`n` at least 1).
    pub fn per_minute(n: u32) -> BucketRate {
        let n = f64::from(n.max(1));
        BucketRate {
            capacity: n,
            per_second: n / 60.0,
        }
    }

    /// `per_second` sustained with bursts of `burst` (at least 1); `None` when `per_second` is
    /// not a positive number, which means "no limit".
    pub fn new(burst: u32, per_second: f64) -> Option<BucketRate> {
        (per_second.is_finite() && per_second > 0.0).then_some(BucketRate {
            capacity: f64::from(burst.max(1)),
            per_second,
        })
    }
}

/// One bucket: its tokens as of its last update.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket<T> {
    tokens: f64,
    updated: T,
}

impl<T: Moment> TokenBucket<T> {
    /// A bucket holding its whole burst at `now`.
    pub fn full(rate: BucketRate, now: T) -> Self {
        TokenBucket {
            tokens: rate.capacity,
            updated: now,
        }
    }

    /// The tokens it would hold at `now`.
    fn tokens_at(&self, rate: BucketRate, now: T) -> f64 {
        let elapsed = now.saturating_since(self.updated).as_secs_f64();
        (self.tokens + elapsed * rate.per_second).min(rate.capacity)
    }

    /// Whether it is full again at `now`: such a bucket can be forgotten and re-created full.
    pub fn is_full_at(&self, rate: BucketRate, now: T) -> bool {
        self.tokens_at(rate, now) >= rate.capacity
    }

    /// Takes one token at `now`. `Err` says how long until one is available.
    pub fn try_take(&mut self, rate: BucketRate, now: T) -> Result<(), Duration> {
        self.tokens = self.tokens_at(rate, now);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait_secs = (1.0 - self.tokens) / rate.per_second;
        // Whole milliseconds, rounded up; the small allowance absorbs float noise so that an
        // exact 20 s does not become 20.001 s.
        let wait_ms = (wait_secs * 1000.0 - 1e-6).ceil().max(1.0);
        Err(Duration::from_millis(wait_ms as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(1_000_000 + ms)
    }

    #[test]
    fn a_minute_of_burst_then_evenly_spaced() {
        let rate = BucketRate::per_minute(3);
        let mut b = TokenBucket::full(rate, t(0));
        for _ in 0..3 {
            assert_eq!(b.try_take(rate, t(0)), Ok(()));
        }
        // One token refills every 20 s.
        assert_eq!(b.try_take(rate, t(0)), Err(Duration::from_secs(20)));
        assert_eq!(b.try_take(rate, t(10_000)), Err(Duration::from_secs(10)));
        assert_eq!(b.try_take(rate, t(20_000)), Ok(()));
        assert!(!b.is_full_at(rate, t(20_000)));
        assert!(b.is_full_at(rate, t(80_000)));
    }

    #[test]
    fn burst_and_rate_are_separate() {
        let rate = BucketRate::new(2, 2.0).unwrap();
        let t0 = Instant::now();
        let mut b = TokenBucket::full(rate, t0);
        assert_eq!(b.try_take(rate, t0), Ok(()));
        assert_eq!(b.try_take(rate, t0), Ok(()));
        assert_eq!(b.try_take(rate, t0), Err(Duration::from_millis(500)));
        assert_eq!(b.try_take(rate, t0 + Duration::from_millis(500)), Ok(()));
        // Never more than the burst, however long it waited.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.try_take(rate, later), Ok(()));
        assert_eq!(b.try_take(rate, later), Ok(()));
        assert!(b.try_take(rate, later).is_err());
    }

    #[test]
    fn a_clock_stepping_back_refills_nothing() {
        let rate = BucketRate::per_minute(1);
        let mut b = TokenBucket::full(rate, t(60_000));
        assert_eq!(b.try_take(rate, t(60_000)), Ok(()));
        assert!(b.try_take(rate, t(0)).is_err());
    }

    #[test]
    fn no_rate_means_no_limit() {
        assert_eq!(BucketRate::new(5, 0.0), None);
        assert_eq!(BucketRate::new(5, f64::NAN), None);
        assert_eq!(BucketRate::new(5, f64::INFINITY), None);
        assert_eq!(
            BucketRate::new(0, 1.0),
            Some(BucketRate {
                capacity: 1.0,
                per_second: 1.0
            })
        );
    }
}
