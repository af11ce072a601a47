//! Per-domain message rate limits (`messages_per_minute`): a token bucket per domain holding up
//! to one minute's worth of messages. Pure; `now` is an argument.

use std::collections::HashMap;

use postrider_core::Timestamp;

/// Milliseconds in a minute.
const MINUTE_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens in thousandths, to refill smoothly with integer maths.
    milli_tokens: u64,
    last: Timestamp,
}

/// The buckets of every rate-limited domain (only configured domains get one, so the map is
/// bounded by the configuration).
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    buckets: HashMap<String, Bucket>,
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
        let capacity = u64::from(per_minute.max(1)) * 1000;
        let b = self.buckets.entry(domain.to_owned()).or_insert(Bucket {
            milli_tokens: capacity,
            last: now,
        });
        let elapsed = now.as_millis().saturating_sub(b.last.as_millis());
        // per_minute tokens per 60 000 ms = per_minute milli-tokens per 60 ms
        let refill = elapsed.saturating_mul(u64::from(per_minute)) * 1000 / MINUTE_MS;
        b.milli_tokens = b.milli_tokens.saturating_add(refill).min(capacity);
        b.last = now;
        if b.milli_tokens >= 1000 {
            b.milli_tokens -= 1000;
            return Ok(());
        }
        let missing = 1000 - b.milli_tokens;
        let wait_ms = (missing * MINUTE_MS).div_ceil(u64::from(per_minute.max(1)) * 1000);
        Err(Timestamp::from_millis(
            now.as_millis().saturating_add(wait_ms.max(1)),
        ))
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
