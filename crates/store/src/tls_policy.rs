//! The outbound TLS policy cache (tree `tls_policies`): the MTA-STS policy last fetched for each
//! recipient domain, so that a domain's policy keeps protecting it when its policy server or
//! its DNS cannot be reached, also after a restart (RFC 8461 §5.1).
//!
//! Keys are the domain in lower case. The tree is a cache, written straight to the database and
//! not journaled: a crash may cost the newest entries, which are then fetched again, while
//! queued messages keep their own guarantees.

use postrider_core::Timestamp;
use postrider_core::mta_sts::StsPolicy;
use serde::{Deserialize, Serialize};

use crate::Store;
use crate::error::Result;

/// The tree's name.
pub(crate) const TREE: &str = "tls_policies";
/// The longest window before expiry in which a cached policy is refreshed (one day).
const RENEWAL_WINDOW_MAX_SECS: u64 = 86_400;
/// The newest record version this build writes and reads.
const RECORD_VERSION: u8 = 1;

/// A cached MTA-STS policy with what is needed to know whether it is still current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedStsPolicy {
    /// The `id` of the `_mta-sts` TXT record the policy was fetched under.
    pub id: String,
    /// The policy.
    pub policy: StsPolicy,
    /// When it was fetched.
    pub fetched_at: Timestamp,
}

impl CachedStsPolicy {
    /// When the policy stops being valid: `fetched_at` plus its `max_age`.
    pub fn expires_at(&self) -> Timestamp {
        Timestamp::from_millis(
            self.fetched_at
                .as_millis()
                .saturating_add(self.policy.max_age_secs.saturating_mul(1000)),
        )
    }

    /// Whether the policy may still be used at `now`.
    pub fn is_valid_at(&self, now: Timestamp) -> bool {
        now < self.expires_at()
    }

    /// When a refresh in the background should start: a quarter of `max_age`, at most a day,
    /// before the policy expires, so that a domain's policy is renewed while it still protects
    /// it (RFC 8461 §5.1).
    pub fn renew_from(&self) -> Timestamp {
        let window_ms = (self.policy.max_age_secs / 4)
            .min(RENEWAL_WINDOW_MAX_SECS)
            .saturating_mul(1000);
        Timestamp::from_millis(self.expires_at().as_millis().saturating_sub(window_ms))
    }

    /// Whether the policy is still valid at `now` but due for a refresh.
    pub fn needs_renewal_at(&self, now: Timestamp) -> bool {
        self.is_valid_at(now) && now >= self.renew_from()
    }
}

impl Store {
    /// The cached policy of `domain` (any case), whether or not it has expired.
    pub fn sts_policy(&self, domain: &str) -> Result<Option<CachedStsPolicy>> {
        let key = domain.to_ascii_lowercase();
        match self.inner.tls_policies.get(key.as_bytes())? {
            Some(bytes) => {
                crate::codec::decode_json_record(TREE, RECORD_VERSION, key.as_bytes(), &bytes)
                    .map(Some)
            }
            None => Ok(None),
        }
    }

    /// Caches `policy` for `domain`, replacing what was there, and asks the database to write
    /// it out.
    pub async fn put_sts_policy(&self, domain: &str, policy: &CachedStsPolicy) -> Result<()> {
        let key = domain.to_ascii_lowercase();
        let value = crate::codec::encode_json_record(TREE, RECORD_VERSION, &key, policy)?;
        self.inner.tls_policies.insert(key.as_bytes(), value)?;
        self.inner.tls_policies.flush_async().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use postrider_core::mta_sts::StsMode;

    use super::*;

    #[tokio::test]
    async fn policies_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let cached = CachedStsPolicy {
            id: "20260101".into(),
            policy: StsPolicy {
                mode: StsMode::Enforce,
                mx: vec!["*.example.test".into()],
                max_age_secs: 60,
            },
            fetched_at: Timestamp::from_millis(1_000),
        };
        {
            let store = Store::open(dir.path(), postrider_metrics::Metrics::new()).unwrap();
            assert_eq!(store.sts_policy("example.test").unwrap(), None);
            store.put_sts_policy("Example.TEST", &cached).await.unwrap();
            store.close().await.unwrap();
        }
        let store = Store::open(dir.path(), postrider_metrics::Metrics::new()).unwrap();
        let got = store.sts_policy("example.test").unwrap().unwrap();
        assert_eq!(got, cached);
        assert_eq!(got.expires_at(), Timestamp::from_millis(61_000));
        assert!(got.is_valid_at(Timestamp::from_millis(60_999)));
        assert!(!got.is_valid_at(Timestamp::from_millis(61_000)));
    }

    #[test]
    fn policies_are_renewed_in_their_last_quarter_or_day() {
        let cached = |max_age_secs| CachedStsPolicy {
            id: "1".into(),
            policy: StsPolicy {
                mode: StsMode::Enforce,
                mx: vec!["mx.example.test".into()],
                max_age_secs,
            },
            fetched_at: Timestamp::from_millis(1_000_000),
        };
        // A short policy: its last quarter (100 s of 400 s).
        let short = cached(400);
        assert_eq!(short.renew_from(), Timestamp::from_millis(1_300_000));
        assert!(!short.needs_renewal_at(Timestamp::from_millis(1_299_999)));
        assert!(short.needs_renewal_at(Timestamp::from_millis(1_300_000)));
        assert!(short.needs_renewal_at(Timestamp::from_millis(1_399_999)));
        // Expired: no longer a renewal, a new fetch.
        assert!(!short.needs_renewal_at(Timestamp::from_millis(1_400_000)));
        // A week-long policy: its last day.
        let week = cached(7 * 86_400);
        assert_eq!(
            week.expires_at().as_millis() - week.renew_from().as_millis(),
            86_400_000
        );
    }
}
