//! Tunables of the scheduler and the SMTP client, with RFC 5321 defaults.

use std::time::Duration;

use postrider_core::RetryPolicy;

/// How the client uses STARTTLS (RFC 3207).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Use STARTTLS when the server offers it, without verifying the certificate (anything is
    /// better than plaintext against a passive observer). If the handshake fails, the same host is
    /// retried in plaintext.
    #[default]
    Opportunistic,
    /// Deliver only over TLS (certificate still not verified); a host without STARTTLS, or a
    /// failed handshake, is a transient failure (`4.7.10`-style, retried later).
    Required,
    /// Never use STARTTLS.
    Disabled,
}

/// Per-phase client timeouts. The defaults are RFC 5321 §4.5.3.2's minimums; lettre has no timeout
/// of its own after connecting, so each call is wrapped and the connection dropped on expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpTimeouts {
    /// TCP connect (30 s; not in the RFC, common practice).
    pub connect: Duration,
    /// Waiting for the 220 greeting (5 min).
    pub greeting: Duration,
    /// EHLO and STARTTLS including the handshake (5 min, as for MAIL).
    pub ehlo: Duration,
    /// MAIL FROM (5 min).
    pub mail: Duration,
    /// Each RCPT TO (5 min).
    pub rcpt: Duration,
    /// DATA until the 354 (2 min).
    pub data: Duration,
    /// Sending the content and waiting for the final reply (10 min).
    pub data_end: Duration,
    /// RSET and QUIT: we do not wait long for a courtesy reply.
    pub quit: Duration,
}

impl Default for SmtpTimeouts {
    fn default() -> Self {
        let min = |n: u64| Duration::from_secs(n * 60);
        SmtpTimeouts {
            connect: Duration::from_secs(30),
            greeting: min(5),
            ehlo: min(5),
            mail: min(5),
            rcpt: min(5),
            data: min(2),
            data_end: min(10),
            quit: Duration::from_secs(5),
        }
    }
}

impl SmtpTimeouts {
    /// Every timeout set to `d`: convenient for tests against local peers.
    pub fn uniform(d: Duration) -> Self {
        SmtpTimeouts {
            connect: d,
            greeting: d,
            ehlo: d,
            mail: d,
            rcpt: d,
            data: d,
            data_end: d,
            quit: d,
        }
    }
}

/// Everything the delivery side can be tuned with.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Our host name: sent in EHLO, used in `Reporting-MTA`, `MAILER-DAEMON@…` and DSN
    /// `Message-ID`s. Default `localhost`; production configs must set a real FQDN.
    pub hostname: String,
    /// The TCP port of remote MX hosts (25; tests point it at local sinks).
    pub port: u16,
    /// Messages being attempted at once, process-wide (256). Due messages beyond this stay in the
    /// store, not in memory.
    pub max_concurrent_deliveries: usize,
    /// Destination domains of one message attempted at once (8).
    pub max_domains_per_message: usize,
    /// How long a leased message is ours before another scheduler pass may take it (10 min). Must
    /// exceed `max_attempt_duration`, see [`DeliverySettings::validate`].
    pub lease: Duration,
    /// Upper bound on one attempt of one message, all domains together (9 min). Domains still
    /// running when it expires count as a transient failure (`4.4.7`).
    pub max_attempt_duration: Duration,
    /// Leases taken per scheduler pass (256).
    pub batch_size: usize,
    /// Longest idle sleep of the scheduler between passes (30 s): a safety net in case a wake-up is
    /// missed; normally it wakes on the next due time or on new work.
    pub max_idle: Duration,
    /// Per-phase SMTP client timeouts.
    pub timeouts: SmtpTimeouts,
    /// STARTTLS policy.
    pub tls: TlsMode,
    /// When to retry and when to give up.
    pub retry: RetryPolicy,
    /// MX hosts tried per domain and attempt (5).
    pub max_mx_hosts: usize,
    /// Addresses tried per MX host (2).
    pub max_addresses_per_host: usize,
    /// Largest original returned in full by a `RET=FULL` bounce (10 MiB); larger originals are
    /// returned as headers only.
    pub max_returned_message: usize,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            hostname: "localhost".to_owned(),
            port: 25,
            max_concurrent_deliveries: 256,
            max_domains_per_message: 8,
            lease: Duration::from_secs(600),
            max_attempt_duration: Duration::from_secs(540),
            batch_size: 256,
            max_idle: Duration::from_secs(30),
            timeouts: SmtpTimeouts::default(),
            tls: TlsMode::default(),
            retry: RetryPolicy::default(),
            max_mx_hosts: 5,
            max_addresses_per_host: 2,
            max_returned_message: 10 * 1024 * 1024,
        }
    }
}

/// A setting is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid delivery setting {setting}: {reason}")]
pub struct InvalidSettings {
    /// The field name.
    pub setting: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl DeliverySettings {
    /// Checks the relations between settings: non-zero limits, and an attempt that always ends
    /// before its lease does (otherwise a second attempt of the same message could start).
    pub fn validate(&self) -> Result<(), InvalidSettings> {
        let bad = |setting, reason| Err(InvalidSettings { setting, reason });
        if self.hostname.is_empty() || self.hostname.bytes().any(|b| !b.is_ascii_graphic()) {
            return bad("hostname", "must be a non-empty ASCII host name");
        }
        if self.max_concurrent_deliveries == 0 {
            return bad("max_concurrent_deliveries", "must be at least 1");
        }
        if self.max_domains_per_message == 0 {
            return bad("max_domains_per_message", "must be at least 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.max_mx_hosts == 0 || self.max_addresses_per_host == 0 {
            return bad(
                "max_mx_hosts",
                "MX host and address limits must be at least 1",
            );
        }
        if self.max_idle.is_zero() {
            return bad("max_idle", "must be positive");
        }
        if self.max_attempt_duration.is_zero() || self.max_attempt_duration >= self.lease {
            return bad(
                "max_attempt_duration",
                "must be positive and shorter than lease",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_rfc_sized() {
        let s = DeliverySettings::default();
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.port, 25);
        assert_eq!(s.timeouts.greeting, Duration::from_secs(300));
        assert_eq!(s.timeouts.data_end, Duration::from_secs(600));
    }

    #[test]
    fn attempt_must_fit_in_lease() {
        let s = DeliverySettings {
            max_attempt_duration: Duration::from_secs(600),
            ..Default::default()
        };
        assert_eq!(
            s.validate().map_err(|e| e.setting),
            Err("max_attempt_duration")
        );
        let s = DeliverySettings {
            hostname: "bad host".into(),
            ..Default::default()
        };
        assert!(s.validate().is_err());
    }
}
