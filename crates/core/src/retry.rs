//! When to try again, and when to give up (RFC 5321 §4.5.4.1).

use std::time::Duration;

/// What to do with a message that still has undelivered recipients after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// Try again after this long.
    RetryAfter(Duration),
    /// The message has been queued for `max_age`: bounce what is left.
    GiveUp,
}

/// The retry schedule: attempt *n* (1-based, counting attempts already made) is followed by a wait
/// of `intervals[n-1]`, the last interval repeating, until the message is `max_age` old.
///
/// The last retry is placed exactly at `max_age`, so a message gets its final chance at the end of
/// its lifetime rather than up to one interval before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    intervals: Vec<Duration>,
    max_age: Duration,
}

/// The policy's intervals were empty or contained zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("retry intervals must be a non-empty list of non-zero durations")]
pub struct InvalidRetryPolicy;

impl RetryPolicy {
    /// Builds a policy; intervals must be non-empty and non-zero.
    pub fn new(intervals: Vec<Duration>, max_age: Duration) -> Result<Self, InvalidRetryPolicy> {
        if intervals.is_empty() || intervals.iter().any(Duration::is_zero) {
            return Err(InvalidRetryPolicy);
        }
        Ok(RetryPolicy { intervals, max_age })
    }

    /// The queue lifetime.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The configured intervals.
    pub fn intervals(&self) -> &[Duration] {
        &self.intervals
    }

    /// Decides after a failed attempt. `attempts` counts attempts made so far (≥ 1), `age` is
    /// now − arrival time.
    pub fn decide(&self, attempts: u32, age: Duration) -> Decision {
        if age >= self.max_age {
            return Decision::GiveUp;
        }
        let idx = (attempts.max(1) as usize - 1).min(self.intervals.len() - 1);
        let wait = self.intervals[idx];
        Decision::RetryAfter(wait.min(self.max_age - age))
    }
}

impl Default for RetryPolicy {
    /// 5m, 10m, 20m, 40m, 1h20m, 2h, 4h (repeating), for 5 days: close to Postfix's backoff and
    /// queue lifetime.
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(n * 60);
        RetryPolicy {
            intervals: vec![m(5), m(10), m(20), m(40), m(80), m(120), m(240)],
            max_age: Duration::from_secs(5 * 86_400),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_default_schedule() {
        let p = RetryPolicy::default();
        let mut age = Duration::ZERO;
        let mut waits = vec![];
        for attempt in 1..=10 {
            match p.decide(attempt, age) {
                Decision::RetryAfter(d) => {
                    waits.push(d.as_secs() / 60);
                    age += d;
                }
                Decision::GiveUp => break,
            }
        }
        assert_eq!(waits, vec![5, 10, 20, 40, 80, 120, 240, 240, 240, 240]);
    }

    #[test]
    fn last_retry_lands_on_max_age_then_gives_up() {
        let p = RetryPolicy::new(vec![Duration::from_secs(10)], Duration::from_secs(25)).unwrap();
        let mut age = Duration::ZERO;
        let mut seen = vec![];
        for attempt in 1.. {
            match p.decide(attempt, age) {
                Decision::RetryAfter(d) => {
                    seen.push(d.as_secs());
                    age += d;
                }
                Decision::GiveUp => break,
            }
        }
        assert_eq!(seen, vec![10, 10, 5]);
        assert_eq!(p.decide(1, Duration::from_secs(30)), Decision::GiveUp);
    }

    #[test]
    fn rejects_degenerate_schedules() {
        assert!(RetryPolicy::new(vec![], Duration::from_secs(1)).is_err());
        assert!(RetryPolicy::new(vec![Duration::ZERO], Duration::from_secs(1)).is_err());
    }
}
