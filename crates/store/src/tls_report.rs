//! SMTP TLS reporting statistics (RFC 8460): session counts per UTC day and policy domain (tree
//! `tls_report_counts`) and the state of each day's report run (tree `tls_report_runs`).
//!
//! Like the policy cache, both trees are written straight to the database and not journaled:
//! the delivery side flushes its in-memory counts at most once a minute and at shutdown, so a
//! crash may cost the last minute of statistics, never a queued message.
//!
//! Keys: counts `be_u32(day) ‖ domain` (lower case), runs `be_u32(day)`, where `day` counts
//! days since 1970-01-01 UTC. Values: `0x01 ‖ JSON`.

use postrider_core::tls_report::{TlsSessionCounts, UtcDay};
use serde::{Deserialize, Serialize};

use crate::Store;
use crate::error::Result;

/// The counts tree.
pub(crate) const COUNTS_TREE: &str = "tls_report_counts";
/// The runs tree.
pub(crate) const RUNS_TREE: &str = "tls_report_runs";
/// The newest record version this build writes and reads, in both trees.
const RECORD_VERSION: u8 = 1;

/// How far the report of one day has got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsReportRun {
    /// Sending rounds started for the day.
    pub attempts: u32,
    /// No more rounds: every domain was reported, or the attempts ran out.
    pub done: bool,
}

/// The key of `domain`'s counts on `day`.
fn counts_key(day: UtcDay, domain: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + domain.len());
    key.extend_from_slice(&day.0.to_be_bytes());
    key.extend_from_slice(domain.to_ascii_lowercase().as_bytes());
    key
}

impl Store {
    /// Adds `counts` to what is stored for `domain` on `day`. Not durable by itself: see
    /// [`Store::flush_tls_report_counts`].
    pub fn add_tls_report_counts(
        &self,
        day: UtcDay,
        domain: &str,
        counts: TlsSessionCounts,
    ) -> Result<()> {
        let key = counts_key(day, domain);
        let tree = &self.inner.tls_report_counts;
        let mut total: TlsSessionCounts = match tree.get(&key)? {
            Some(bytes) => {
                crate::codec::decode_json_record(COUNTS_TREE, RECORD_VERSION, &key, &bytes)?
            }
            None => TlsSessionCounts::default(),
        };
        total.merge(counts);
        let value = crate::codec::encode_json_record(COUNTS_TREE, RECORD_VERSION, domain, &total)?;
        tree.insert(key, value)?;
        Ok(())
    }

    /// Asks the database to write out the counts and runs.
    pub async fn flush_tls_report_counts(&self) -> Result<()> {
        self.inner.tls_report_counts.flush_async().await?;
        self.inner.tls_report_runs.flush_async().await?;
        Ok(())
    }

    /// Every domain with counts on `day`, in domain order, with them. A damaged record is
    /// logged and skipped.
    pub fn tls_report_counts(&self, day: UtcDay) -> Result<Vec<(String, TlsSessionCounts)>> {
        let mut out = Vec::new();
        for entry in self
            .inner
            .tls_report_counts
            .scan_prefix(day.0.to_be_bytes())
        {
            let (key, value) = entry?;
            let domain = String::from_utf8_lossy(&key[4..]).into_owned();
            match crate::codec::decode_json_record(COUNTS_TREE, RECORD_VERSION, &key, &value) {
                Ok(counts) => out.push((domain, counts)),
                Err(e) => {
                    tracing::warn!(domain = %domain, day = %day, error = %e, "skipping damaged TLS report counts");
                }
            }
        }
        Ok(out)
    }

    /// The days before `before` that still have counts (reports not sent, or left over).
    pub fn tls_report_days_before(&self, before: UtcDay) -> Result<Vec<UtcDay>> {
        let mut days = Vec::new();
        let mut from = 0u32;
        while from < before.0 {
            let Some((key, _)) = self
                .inner
                .tls_report_counts
                .range(from.to_be_bytes()..before.0.to_be_bytes())
                .next()
                .transpose()?
            else {
                break;
            };
            let Some(day) = key.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
                break;
            };
            let day = u32::from_be_bytes(day);
            days.push(UtcDay(day));
            from = day.saturating_add(1);
        }
        Ok(days)
    }

    /// Removes what was counted for `domain` on `day` (its report was sent).
    pub fn remove_tls_report_counts(&self, day: UtcDay, domain: &str) -> Result<()> {
        self.inner
            .tls_report_counts
            .remove(counts_key(day, domain))?;
        Ok(())
    }

    /// Removes every count of `day`.
    pub fn remove_tls_report_day(&self, day: UtcDay) -> Result<()> {
        for entry in self
            .inner
            .tls_report_counts
            .scan_prefix(day.0.to_be_bytes())
        {
            let (key, _) = entry?;
            self.inner.tls_report_counts.remove(key)?;
        }
        Ok(())
    }

    /// The report run of `day` (default: not started).
    pub fn tls_report_run(&self, day: UtcDay) -> Result<TlsReportRun> {
        let key = day.0.to_be_bytes();
        match self.inner.tls_report_runs.get(key)? {
            Some(bytes) => {
                crate::codec::decode_json_record(RUNS_TREE, RECORD_VERSION, &key, &bytes)
            }
            None => Ok(TlsReportRun::default()),
        }
    }

    /// Records the report run of `day`, and writes it out so a restart does not report the
    /// day again.
    pub async fn put_tls_report_run(&self, day: UtcDay, run: &TlsReportRun) -> Result<()> {
        let value =
            crate::codec::encode_json_record(RUNS_TREE, RECORD_VERSION, &day.to_string(), run)?;
        self.inner
            .tls_report_runs
            .insert(day.0.to_be_bytes(), value)?;
        self.flush_tls_report_counts().await
    }
}

#[cfg(test)]
mod tests {
    use postrider_core::tls_report::FailureDetail;

    use super::*;

    fn counts(successes: u64, failures: u64) -> TlsSessionCounts {
        let mut c = TlsSessionCounts::default();
        c.add_successes(successes);
        if failures > 0 {
            c.add_failures(FailureDetail {
                result: "starttls-not-supported".into(),
                mx_host: Some("mx.example.test".into()),
                receiving_ip: Some("127.0.8.1".parse().unwrap()),
                count: failures,
            });
        }
        c
    }

    #[tokio::test]
    async fn counts_add_up_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let day = UtcDay(20_000);
        {
            let store = Store::open(dir.path(), postrider_metrics::Metrics::new()).unwrap();
            store
                .add_tls_report_counts(day, "Example.TEST", counts(2, 1))
                .unwrap();
            store
                .add_tls_report_counts(day, "example.test", counts(3, 2))
                .unwrap();
            store
                .add_tls_report_counts(day.next(), "other.test", counts(1, 0))
                .unwrap();
            store
                .put_tls_report_run(
                    day,
                    &TlsReportRun {
                        attempts: 1,
                        done: false,
                    },
                )
                .await
                .unwrap();
            store.flush_tls_report_counts().await.unwrap();
            store.close().await.unwrap();
        }
        let store = Store::open(dir.path(), postrider_metrics::Metrics::new()).unwrap();
        let got = store.tls_report_counts(day).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "example.test");
        assert_eq!((got[0].1.successes, got[0].1.failures), (5, 3));
        assert_eq!(got[0].1.details[0].count, 3);
        assert_eq!(store.tls_report_run(day).unwrap().attempts, 1);
        assert_eq!(
            store.tls_report_run(day.next()).unwrap(),
            TlsReportRun::default()
        );
        assert_eq!(
            store.tls_report_days_before(UtcDay(20_005)).unwrap(),
            vec![day, day.next()]
        );
        assert_eq!(store.tls_report_days_before(day.next()).unwrap(), vec![day]);
        store.remove_tls_report_counts(day, "EXAMPLE.test").unwrap();
        assert!(store.tls_report_counts(day).unwrap().is_empty());
        store.remove_tls_report_day(day.next()).unwrap();
        assert!(
            store
                .tls_report_days_before(UtcDay(20_005))
                .unwrap()
                .is_empty()
        );
    }

    /// The fixture in `migrations-free-data/v1/tls-report-counts.bin` (written once by this
    /// test with `POSTRIDER_WRITE_FIXTURES=1`) keeps decoding.
    #[test]
    fn golden_counts_record_decodes() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../migrations-free-data/v1/tls-report-counts.bin");
        let fixture = counts(7, 2);
        if std::env::var_os("POSTRIDER_WRITE_FIXTURES").is_some() && !path.exists() {
            let bytes = crate::codec::encode_json_record(
                COUNTS_TREE,
                RECORD_VERSION,
                "example.test",
                &fixture,
            )
            .unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        let decoded: TlsSessionCounts =
            crate::codec::decode_json_record(COUNTS_TREE, RECORD_VERSION, b"k", &bytes).unwrap();
        assert_eq!(decoded, fixture);
    }
}
