//! The answer cache: a domain's assembled host list (MX records and the addresses of each
//! exchange), so a repeat destination costs one map lookup instead of several record lookups.
//!
//! Bounded by entry count; an entry lives as long as the shortest TTL of the records it was built
//! from, clamped by [`DnsSettings`]; transient failures are never kept. Concurrent lookups of one
//! domain are coalesced: the first caller asks DNS, the others wait for its answer.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use postrider_core::Domain;
use postrider_core::mx::shuffle_equal_preference;

use crate::{DnsSettings, MxError, MxHost};

/// How long a negative answer whose SOA gave no TTL is kept (before the `negative_max_ttl` clamp).
const NEGATIVE_TTL_WITHOUT_SOA: Duration = Duration::from_secs(60);

/// One domain's answer and how long to keep it.
#[derive(Debug)]
struct CachedAnswer {
    hosts: Result<Vec<MxHost>, MxError>,
    keep_for: Duration,
}

/// Expires each entry after its own `keep_for`.
struct KeepFor;

impl moka::Expiry<String, Arc<CachedAnswer>> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<CachedAnswer>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.keep_for)
    }
}

/// Counters of the answer cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache, including callers that waited for a lookup in flight.
    pub hits: u64,
    /// Lookups that asked DNS.
    pub misses: u64,
    /// Domains currently cached (approximate).
    pub entries: u64,
}

/// Domain → host list, shared by every caller of one resolver.
pub struct AnswerCache {
    entries: moka::future::Cache<String, Arc<CachedAnswer>>,
    settings: DnsSettings,
    hits: AtomicU64,
    misses: AtomicU64,
    counters: OnceLock<CacheCounters>,
}

/// Exported counters of hits and misses (`postrider_dns_cache_lookups_total{result}`).
#[derive(Debug, Clone)]
pub struct CacheCounters {
    /// Answered from the cache.
    pub hit: prometheus::IntCounter,
    /// Asked DNS.
    pub miss: prometheus::IntCounter,
}

impl std::fmt::Debug for AnswerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerCache")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl AnswerCache {
    /// An empty cache holding at most `settings.cache_size` domains.
    pub fn new(settings: &DnsSettings) -> Self {
        AnswerCache {
            entries: moka::future::Cache::builder()
                .max_capacity(settings.cache_size)
                .expire_after(KeepFor)
                .build(),
            settings: *settings,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            counters: OnceLock::new(),
        }
    }

    /// Counts hits and misses into `counters` from now on (the first call wins).
    pub fn count_into(&self, counters: CacheCounters) {
        let _ = self.counters.set(counters);
    }

    /// The answer for `domain`: cached, or from `lookup` (run by one caller at a time per domain)
    /// which yields the hosts and until when the records they came from are valid. Equally
    /// preferred hosts of a cached answer are reshuffled for every caller.
    pub async fn get_or_lookup(
        &self,
        domain: &Domain,
        lookup: impl Future<Output = (Result<Vec<MxHost>, MxError>, Option<Instant>)>,
    ) -> Result<Vec<MxHost>, MxError> {
        let key = domain.as_str().to_ascii_lowercase();
        let mut asked = false;
        let answer = self
            .entries
            .get_with(key, async {
                asked = true;
                let (hosts, valid_until) = lookup.await;
                let keep_for = keep_for(&hosts, valid_until, Instant::now(), &self.settings);
                Arc::new(CachedAnswer { hosts, keep_for })
            })
            .await;
        if asked {
            self.misses.fetch_add(1, Ordering::Relaxed);
            if let Some(c) = self.counters.get() {
                c.miss.inc();
            }
            return answer.hosts.clone();
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = self.counters.get() {
            c.hit.inc();
        }
        let mut hosts = answer.hosts.clone();
        if let Ok(hosts) = &mut hosts {
            shuffle_equal_preference(hosts, |h| h.preference, &mut rand::rng());
        }
        hosts
    }

    /// Hit and miss counts and the current size.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.entries.entry_count(),
        }
    }
}

/// How long to keep an answer: positive ones as long as their records are valid, clamped to
/// `[positive_min_ttl, positive_max_ttl]`; negative ones (NXDOMAIN, null MX, no address) as their
/// SOA says, at most `negative_max_ttl`; transient failures not at all (callers waiting for the
/// same lookup still share it).
fn keep_for(
    hosts: &Result<Vec<MxHost>, MxError>,
    valid_until: Option<Instant>,
    now: Instant,
    settings: &DnsSettings,
) -> Duration {
    let remaining = valid_until.map(|until| until.saturating_duration_since(now));
    match hosts {
        Err(MxError::Transient(_)) => Duration::ZERO,
        Ok(_) => remaining.map_or(Duration::ZERO, |r| {
            r.clamp(
                settings.positive_min_ttl,
                settings.positive_max_ttl.max(settings.positive_min_ttl),
            )
        }),
        Err(_) => remaining
            .unwrap_or(NEGATIVE_TTL_WITHOUT_SOA)
            .min(settings.negative_max_ttl),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> MxHost {
        MxHost {
            name: "mx.example".into(),
            preference: 10,
            addresses: vec!["127.0.0.1".parse().unwrap()],
        }
    }

    #[test]
    fn answers_are_kept_by_their_ttl_within_the_clamps() {
        let now = Instant::now();
        let s = DnsSettings {
            positive_min_ttl: Duration::from_secs(10),
            positive_max_ttl: Duration::from_secs(600),
            negative_max_ttl: Duration::from_secs(120),
            ..DnsSettings::default()
        };
        let secs = |n| Some(now + Duration::from_secs(n));
        let ok = Ok(vec![host()]);
        assert_eq!(keep_for(&ok, secs(300), now, &s), Duration::from_secs(300));
        assert_eq!(keep_for(&ok, secs(1), now, &s), Duration::from_secs(10));
        assert_eq!(
            keep_for(&ok, secs(86_400), now, &s),
            Duration::from_secs(600)
        );
        // an answer missing hosts for a transient reason is used but not kept
        assert_eq!(keep_for(&ok, None, now, &s), Duration::ZERO);
        let nx = Err(MxError::NoSuchDomain);
        assert_eq!(keep_for(&nx, secs(30), now, &s), Duration::from_secs(30));
        assert_eq!(keep_for(&nx, secs(3600), now, &s), Duration::from_secs(120));
        assert_eq!(keep_for(&nx, None, now, &s), Duration::from_secs(60));
        let null = Err(MxError::NullMx);
        assert_eq!(
            keep_for(&null, secs(3600), now, &s),
            Duration::from_secs(120)
        );
        let failed = Err(MxError::Transient("SERVFAIL".into()));
        assert_eq!(keep_for(&failed, secs(300), now, &s), Duration::ZERO);
    }
}
