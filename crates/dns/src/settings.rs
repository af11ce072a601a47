//! How the resolver asks and how long it keeps answers.

use std::time::Duration;

/// Timeouts and cache bounds of [`crate::HickoryMxResolver`] (`[dns]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsSettings {
    /// Timeout of one query (5 s).
    pub timeout: Duration,
    /// Tries per query (2).
    pub attempts: usize,
    /// Cached records and cached domain answers, each bounded by this count (8192); entries
    /// expire with their TTL. 0 turns both caches off.
    pub cache_size: u64,
    /// Longest time a negative answer (NXDOMAIN, NODATA, null MX) is cached (5 min), whatever its
    /// SOA says.
    pub negative_max_ttl: Duration,
    /// Shortest time a positive answer is cached (0 s: as its TTL says), so a destination
    /// publishing very short TTLs still costs one lookup per this period, not one per message.
    pub positive_min_ttl: Duration,
    /// Longest time a positive answer is cached (1 day), whatever its TTL says.
    pub positive_max_ttl: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            timeout: Duration::from_secs(5),
            attempts: 2,
            cache_size: 8192,
            negative_max_ttl: Duration::from_secs(300),
            positive_min_ttl: Duration::ZERO,
            positive_max_ttl: Duration::from_secs(86_400),
        }
    }
}
