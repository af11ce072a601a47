//! Connection counting and message rate limiting, shared by every session of a server.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use postrider_core::token_bucket::{BucketRate, TokenBucket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

/// A permit of `slots` if one frees within `wait`; `None` otherwise, so that a crowd of
/// waiters (e.g. for password checks) cannot queue up without bound.
pub(crate) async fn acquire_within(
    slots: &Semaphore,
    wait: Duration,
) -> Option<SemaphorePermit<'_>> {
    tokio::time::timeout(wait, slots.acquire()).await.ok()?.ok()
}

/// Global and per-IP session limits. Acquisition never waits on its own: an over-limit
/// client is told so right away (or, when the server is full, gets the slot of an idle session
/// asked to close) instead of piling up in the accept queue.
#[derive(Debug)]
pub(crate) struct ConnectionLimiter {
    global: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
}

/// Held for the lifetime of one session; releases both counts on drop.
#[derive(Debug)]
pub(crate) struct ConnectionPermit {
    _global: OwnedSemaphorePermit,
    _ip: IpPermit,
}

/// One session counted against its IP address; released on drop.
#[derive(Debug)]
pub(crate) struct IpPermit {
    limiter: Arc<ConnectionLimiter>,
    ip: IpAddr,
}

/// Why no permit was given.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The client's address has `max_per_ip` sessions already.
    PerIp,
    /// Every slot of the server is taken; the address's count is held in the permit, for
    /// waiting on a slot with [`ConnectionLimiter::acquire_within`].
    Full(IpPermit),
}

impl ConnectionLimiter {
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(ConnectionLimiter {
            global: Arc::new(Semaphore::new(max_total.min(Semaphore::MAX_PERMITS))),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip,
        })
    }

    /// A permit for a new session from `ip`, or why not.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let ip_permit = self.try_acquire_ip(ip).ok_or(Refusal::PerIp)?;
        match Arc::clone(&self.global).try_acquire_owned() {
            Ok(global) => Ok(ConnectionPermit {
                _global: global,
                _ip: ip_permit,
            }),
            Err(_) => Err(Refusal::Full(ip_permit)),
        }
    }

    /// A permit for the session counted in `ip`, once a slot frees within `wait`.
    pub(crate) async fn acquire_within(
        &self,
        ip: IpPermit,
        wait: Duration,
    ) -> Option<ConnectionPermit> {
        let global = tokio::time::timeout(wait, Arc::clone(&self.global).acquire_owned())
            .await
            .ok()?
            .ok()?;
        Some(ConnectionPermit {
            _global: global,
            _ip: ip,
        })
    }

    fn try_acquire_ip(self: &Arc<Self>, ip: IpAddr) -> Option<IpPermit> {
        let ip = ip.to_canonical();
        let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            if *count == 0 {
                per_ip.remove(&ip);
            }
            return None;
        }
        *count += 1;
        Some(IpPermit {
            limiter: Arc::clone(self),
            ip,
        })
    }

    /// Sessions currently open from `ip`.
    #[cfg(test)]
    pub(crate) fn count(&self, ip: IpAddr) -> usize {
        self.per_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ip.to_canonical())
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut per_ip = self
            .limiter
            .per_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// A token bucket per key: `per_minute` messages in a burst, refilled at `per_minute` a
/// minute. Keys whose bucket is full again are forgotten, so the map only holds keys seen in
/// the last minute.
#[derive(Debug)]
pub(crate) struct RateLimiter<K> {
    per_minute: u32,
    rate: BucketRate,
    buckets: HashMap<K, TokenBucket<Instant>>,
    last_prune: Option<Instant>,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    pub(crate) fn new(per_minute: u32) -> Self {
        RateLimiter {
            per_minute,
            rate: BucketRate::per_minute(per_minute),
            buckets: HashMap::new(),
            last_prune: None,
        }
    }

    /// The limit it applies.
    pub(crate) fn per_minute(&self) -> u32 {
        self.per_minute
    }

    /// Takes one token for `key` at time `now`; false when the bucket is empty.
    pub(crate) fn try_take(&mut self, key: &K, now: Instant) -> bool {
        self.prune(now);
        let rate = self.rate;
        self.buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::full(rate, now))
            .try_take(rate, now)
            .is_ok()
    }

    fn prune(&mut self, now: Instant) {
        if self
            .last_prune
            .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(10))
        {
            return;
        }
        self.last_prune = Some(now);
        let rate = self.rate;
        self.buckets
            .retain(|_, bucket| !bucket.is_full_at(rate, now));
    }

    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_and_global_limits() {
        let limiter = ConnectionLimiter::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = limiter.try_acquire(a).unwrap();
        let _a2 = limiter.try_acquire(a).unwrap();
        assert!(
            matches!(limiter.try_acquire(a), Err(Refusal::PerIp)),
            "per-IP limit"
        );
        let _b1 = limiter.try_acquire(b).unwrap();
        assert!(
            matches!(limiter.try_acquire(b), Err(Refusal::Full(_))),
            "global limit"
        );
        assert_eq!(limiter.count(b), 1, "a refused session is not counted");
        drop(a1);
        assert_eq!(limiter.count(a), 1);
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert!(
            limiter.try_acquire(mapped).is_ok(),
            "v4-mapped counts as the same IP"
        );
    }

    #[tokio::test]
    async fn a_full_server_hands_a_freed_slot_to_the_waiting_client() {
        let limiter = ConnectionLimiter::new(1, 5);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let held = limiter.try_acquire(a).unwrap();
        let Err(Refusal::Full(waiting)) = limiter.try_acquire(a) else {
            panic!("the server is full");
        };
        assert_eq!(limiter.count(a), 2, "the waiting client is counted");
        let wait = Duration::from_millis(10);
        let waiting = match limiter.try_acquire(a) {
            Err(Refusal::Full(other)) => {
                assert!(limiter.acquire_within(other, wait).await.is_none());
                waiting
            }
            _ => panic!("still full"),
        };
        assert_eq!(limiter.count(a), 2, "a client that gave up is not counted");
        drop(held);
        let permit = limiter.acquire_within(waiting, wait).await;
        assert!(permit.is_some());
        assert_eq!(limiter.count(a), 1);
    }

    #[tokio::test]
    async fn waiting_for_a_slot_is_bounded() {
        let slots = Semaphore::new(1);
        let held = acquire_within(&slots, Duration::from_millis(10)).await;
        assert!(held.is_some());
        assert!(
            acquire_within(&slots, Duration::from_millis(10))
                .await
                .is_none(),
            "no slot freed in time"
        );
        drop(held);
        assert!(
            acquire_within(&slots, Duration::from_millis(10))
                .await
                .is_some()
        );
    }

    #[test]
    fn token_bucket_refills_and_forgets() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(2);
        assert!(limiter.try_take(&"a", start));
        assert!(limiter.try_take(&"a", start));
        assert!(!limiter.try_take(&"a", start));
        assert!(limiter.try_take(&"b", start), "keys are independent");
        assert!(!limiter.try_take(&"a", start + Duration::from_secs(29)));
        assert!(limiter.try_take(&"a", start + Duration::from_secs(61)));
        assert!(limiter.try_take(&"c", start + Duration::from_secs(200)));
        assert_eq!(limiter.tracked(), 1, "full buckets are pruned");
    }
}
