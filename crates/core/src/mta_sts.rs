//! MTA-STS (RFC 8461): the policy file a receiving domain publishes at
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt`, parsed and matched against MX host names.
//!
//! Only the pure parts live here: fetching, caching and enforcing belong to the delivery side.

use serde::{Deserialize, Serialize};

/// Longest `max_age` a policy may ask for (RFC 8461 §3.2: about one year).
pub const MAX_POLICY_AGE_SECS: u64 = 31_557_600;

/// Most `mx` patterns kept from one policy; a policy with more is refused rather than truncated,
/// so a match is never decided on part of it.
pub const MAX_MX_PATTERNS: usize = 64;

/// What a domain asks senders to do when TLS to its MX hosts cannot be authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StsMode {
    /// Deliver only to MX hosts matching the policy, over TLS with a valid certificate.
    Enforce,
    /// Deliver as usual, but report what would have failed (TLS-RPT).
    Testing,
    /// The domain withdrew its policy.
    None,
}

impl StsMode {
    /// `enforce`, `testing` or `none`, as in the policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            StsMode::Enforce => "enforce",
            StsMode::Testing => "testing",
            StsMode::None => "none",
        }
    }
}

/// A parsed, valid policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StsPolicy {
    /// The mode.
    pub mode: StsMode,
    /// MX host patterns, lower case, without trailing dot: `mx.example.com` or `*.example.com`.
    pub mx: Vec<String>,
    /// How long the policy may be cached, in seconds (at most [`MAX_POLICY_AGE_SECS`]).
    pub max_age_secs: u64,
}

/// Why a policy file was refused (TLS-RPT `sts-policy-invalid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StsPolicyError {
    /// `version: STSv1` is missing or another version.
    #[error("the policy does not declare version STSv1")]
    Version,
    /// `mode` is missing or not `enforce`, `testing` or `none`.
    #[error("the policy has no valid mode (enforce, testing or none)")]
    Mode,
    /// `max_age` is missing, not a number of up to 10 digits, or above one year.
    #[error("the policy has no valid max_age (0 to {MAX_POLICY_AGE_SECS} seconds)")]
    MaxAge,
    /// A mode other than `none` without any `mx` line.
    #[error("the policy lists no mx host")]
    NoMx,
    /// An `mx` value that is not a host name or `*.` and a host name.
    #[error("the policy has an invalid mx pattern {0:?}")]
    BadMx(String),
    /// More than [`MAX_MX_PATTERNS`] `mx` lines.
    #[error("the policy lists more than {MAX_MX_PATTERNS} mx patterns")]
    TooManyMx,
    /// The file is not UTF-8 text.
    #[error("the policy is not text")]
    NotText,
}

impl StsPolicy {
    /// Parses a policy file (RFC 8461 §3.2): `key: value` lines ending in LF or CRLF. Unknown
    /// keys are ignored; for keys other than `mx` the first occurrence counts.
    pub fn parse(body: &[u8]) -> Result<StsPolicy, StsPolicyError> {
        let text = std::str::from_utf8(body).map_err(|_| StsPolicyError::NotText)?;
        let mut version = None;
        let mut mode = None;
        let mut max_age = None;
        let mut mx = Vec::new();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim_matches(|c| c == ' ' || c == '\t');
            match key {
                "version" => {
                    version.get_or_insert(value);
                }
                "mode" => {
                    mode.get_or_insert(value);
                }
                "max_age" => {
                    max_age.get_or_insert(value);
                }
                "mx" => {
                    if mx.len() == MAX_MX_PATTERNS {
                        return Err(StsPolicyError::TooManyMx);
                    }
                    mx.push(mx_pattern(value)?);
                }
                _ => {}
            }
        }
        if version != Some("STSv1") {
            return Err(StsPolicyError::Version);
        }
        let mode = match mode {
            Some("enforce") => StsMode::Enforce,
            Some("testing") => StsMode::Testing,
            Some("none") => StsMode::None,
            _ => return Err(StsPolicyError::Mode),
        };
        let max_age_secs = max_age
            .filter(|v| !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|n| *n <= MAX_POLICY_AGE_SECS)
            .ok_or(StsPolicyError::MaxAge)?;
        if mode != StsMode::None && mx.is_empty() {
            return Err(StsPolicyError::NoMx);
        }
        Ok(StsPolicy {
            mode,
            mx,
            max_age_secs,
        })
    }

    /// Whether MX host `host` is allowed by one of the policy's patterns (RFC 8461 §4.1).
    pub fn allows_mx(&self, host: &str) -> bool {
        self.mx.iter().any(|p| mx_matches(p, host))
    }
}

/// An `mx` value checked and normalised: lower case, no trailing dot.
fn mx_pattern(value: &str) -> Result<String, StsPolicyError> {
    let bad = || StsPolicyError::BadMx(value.chars().take(100).collect());
    let pattern = value.trim_end_matches('.').to_ascii_lowercase();
    let host = pattern.strip_prefix("*.").unwrap_or(&pattern);
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(bad());
    }
    Ok(pattern)
}

/// Whether `host` matches `pattern`: equal ignoring case and a trailing dot, or, for
/// `*.example.com`, exactly one label followed by `.example.com`.
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == parent),
        None => host == pattern,
    }
}

/// The `id` of an `_mta-sts` TXT record when it is one (`v=STSv1; id=...`), `None` otherwise.
/// The id is 1 to 32 letters and digits (RFC 8461 §3.1); anything else makes the record
/// invalid.
pub fn sts_record_id(txt: &str) -> Option<String> {
    let mut fields = txt.split(';').map(str::trim).filter(|f| !f.is_empty());
    if fields.next()? != "v=STSv1" {
        return None;
    }
    let id = fields.find_map(|f| f.strip_prefix("id="))?;
    let id_ok = !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric());
    id_ok.then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_rfc_example() {
        let p = StsPolicy::parse(
            b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.net\r\nmx: backupmx.example.com.\r\nmax_age: 604800\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, StsMode::Enforce);
        assert_eq!(
            p.mx,
            ["mail.example.com", "*.example.net", "backupmx.example.com"]
        );
        assert_eq!(p.max_age_secs, 604_800);
        assert!(p.allows_mx("MAIL.example.com."));
        assert!(p.allows_mx("a.example.net"));
        assert!(!p.allows_mx("a.b.example.net"));
        assert!(!p.allows_mx("example.net"));
        assert!(!p.allows_mx("evil.example.com"));
    }

    #[test]
    fn refuses_invalid_policies() {
        let table: [(&[u8], StsPolicyError); 7] = [
            (
                b"version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n",
                StsPolicyError::Version,
            ),
            (
                b"version: STSv1\nmode: strict\nmx: a.b\nmax_age: 1\n",
                StsPolicyError::Mode,
            ),
            (
                b"version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 31557601\n",
                StsPolicyError::MaxAge,
            ),
            (
                b"version: STSv1\nmode: enforce\nmx: a.b\nmax_age: -1\n",
                StsPolicyError::MaxAge,
            ),
            (
                b"version: STSv1\nmode: testing\nmax_age: 1\n",
                StsPolicyError::NoMx,
            ),
            (
                b"version: STSv1\nmode: enforce\nmx: a b\nmax_age: 1\n",
                StsPolicyError::BadMx("a b".into()),
            ),
            (b"\xff\xfe", StsPolicyError::NotText),
        ];
        for (body, want) in table {
            assert_eq!(StsPolicy::parse(body), Err(want), "{body:?}");
        }
        let many: String = (0..=MAX_MX_PATTERNS)
            .map(|i| format!("mx: m{i}.x\n"))
            .collect();
        let body = format!("version: STSv1\nmode: enforce\nmax_age: 1\n{many}");
        assert_eq!(
            StsPolicy::parse(body.as_bytes()),
            Err(StsPolicyError::TooManyMx)
        );
    }

    #[test]
    fn none_needs_no_mx_and_first_value_wins() {
        let p =
            StsPolicy::parse(b"version: STSv1\nmode: none\nmode: enforce\nmax_age: 0\nextra: x\n")
                .unwrap();
        assert_eq!((p.mode, p.max_age_secs), (StsMode::None, 0));
        assert!(p.mx.is_empty() && !p.allows_mx("anything"));
    }

    #[test]
    fn wildcards_match_one_label() {
        assert!(mx_matches("*.example.com", "mx1.example.com"));
        assert!(!mx_matches("*.example.com", "example.com"));
        assert!(!mx_matches("*.example.com", ".example.com"));
        assert!(!mx_matches("*.example.com", "a.mx.example.com"));
        assert!(!mx_matches("*.example.com", "mx1.badexample.com"));
        assert!(mx_matches("mx.example.com", "MX.Example.Com."));
    }

    #[test]
    fn txt_records() {
        assert_eq!(
            sts_record_id("v=STSv1; id=20160831085700Z;").as_deref(),
            Some("20160831085700Z")
        );
        assert_eq!(sts_record_id("v=STSv1;id=a1").as_deref(), Some("a1"));
        assert_eq!(sts_record_id("v=spf1 -all"), None);
        assert_eq!(sts_record_id("v=STSv1; id="), None);
        assert_eq!(sts_record_id("v=STSv1; id=no-dashes"), None);
        assert_eq!(
            sts_record_id(&format!("v=STSv1; id={}", "a".repeat(33))),
            None
        );
        assert_eq!(sts_record_id("id=1; v=STSv1"), None);
    }
}
