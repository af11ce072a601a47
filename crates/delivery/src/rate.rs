//! Per-domain message rate limits (`messages_per_minute`): a token bucket per domain holding up
//! to one minute's worth of messages. Pure; `now` is an argument.

use std::collections::HashMap;

use postrider_core::Timestamp;
use postrider_core::token_bucket::{BucketRate, TokenBucket};

/// The buckets of every rate-limited domain (only configured domains get one, so the map is
/// bounded by the configuration).
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    buckets: HashMap<String, TokenBucket<Timestamp>>,
}

impl RateLimiter {
    /// Takes one message slot for `domain` limited to `per_minute`. `Err(t)` when none is free: a
    /// slot frees at `t`.
    pub(crate) fn try_take(
        &mut self,
        domain: &str,
        per_minute: u32,
        now: Timestamp,
    ) -> Result<(), Timestamp> {
        let rate = BucketRate::per_minute(per_minute);
        self.buckets
            .entry(domain.to_owned())
            .or_insert_with(|| TokenBucket::full(rate, now))
            .try_take(rate, now)
            .map_err(|wait| now.saturating_add(wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_minute_of_burst_then_spaces_out() {
        let mut r = RateLimiter::default();
        let t = |ms: u64| Timestamp::from_millis(1_000_000 + ms);
        for _ in 0..3 {
            assert_eq!(r.try_take("x.test", 3, t(0)), Ok(()));
        }
        // one token refills every 20 s
        assert_eq!(r.try_take("x.test", 3, t(0)), Err(t(20_000)));
        assert_eq!(r.try_take("x.test", 3, t(10_000)), Err(t(20_000)));
        assert_eq!(r.try_take("x.test", 3, t(20_000)), Ok(()));
        // other domains are independent
        assert_eq!(r.try_take("y.test", 1, t(20_000)), Ok(()));
        assert!(r.try_take("y.test", 1, t(20_001)).is_err());
    }
}
