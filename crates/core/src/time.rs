//! Wall-clock time as milliseconds since the Unix epoch, passed around as a value.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A point in time: milliseconds since 1970-01-01T00:00:00Z.
///
/// The core never reads the clock; adapters create a `Timestamp` from `SystemTime` and hand it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The epoch itself; the smallest timestamp.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// A timestamp from milliseconds since the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch.
    pub const fn as_secs(self) -> u64 {
        self.0 / 1000
    }

    /// This time plus `d`, saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// How long after `earlier` this is; zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// RFC 3339 / ISO 8601 form in UTC with millisecond precision, e.g. `2026-11-23T05:19:57.123Z`.
    pub fn to_rfc3339(self) -> String {
        self.to_jiff()
            .strftime("%Y-%m-%dT%H:%M:%S.%3fZ")
            .to_string()
    }

    /// RFC 5322 date-time in UTC, e.g. `Mon, 23 Nov 2026 05:19:57 +0000`.
    pub fn to_rfc5322(self) -> String {
        self.to_jiff()
            .strftime("%a, %-d %b %Y %H:%M:%S +0000")
            .to_string()
    }

    /// Parses an RFC 3339 date-time (`2026-11-23T05:19:57Z`, fractional seconds and numeric
    /// offsets allowed). Returns `None` for anything else, and for instants before the epoch.
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        let parsed: jiff::Timestamp = s.parse().ok()?;
        u64::try_from(parsed.as_millisecond()).ok().map(Timestamp)
    }

    /// The same instant as a `jiff` timestamp, clamped to the latest one it can hold (year 9999).
    fn to_jiff(self) -> jiff::Timestamp {
        i64::try_from(self.0)
            .ok()
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
            .unwrap_or(jiff::Timestamp::MAX)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        let t = Timestamp::from_millis(1_795_411_197_123);
        assert_eq!(t.to_rfc3339(), "2026-11-23T05:19:57.123Z");
        assert_eq!(t.to_rfc5322(), "Mon, 23 Nov 2026 05:19:57 +0000");
        assert_eq!(Timestamp::EPOCH.to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp::from_millis(951_782_400_000).to_rfc3339(),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn parses_rfc3339_round_trip_and_offsets() {
        let t = Timestamp::from_millis(1_795_411_197_123);
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
        assert_eq!(
            Timestamp::parse_rfc3339("2026-11-23T06:19:57+01:00"),
            Some(Timestamp::from_millis(1_795_411_197_000))
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2000-02-29T00:00:00Z").map(Timestamp::as_secs),
            Some(951_782_400)
        );
        for bad in [
            "",
            "2026-11-23",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-23T05:19:57",
            "2026-11-23T05:19:57+1:00",
            "x026-11-23T05:19:57Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_millis(1000);
        assert_eq!(t.saturating_add(Duration::from_secs(1)).as_millis(), 2000);
        assert_eq!(
            Timestamp::from_millis(u64::MAX)
                .saturating_add(Duration::from_secs(1))
                .as_millis(),
            u64::MAX
        );
        assert_eq!(
            t.saturating_since(Timestamp::from_millis(5000)),
            Duration::ZERO
        );
        assert_eq!(
            Timestamp::from_millis(5000).saturating_since(t),
            Duration::from_secs(4)
        );
    }
}
