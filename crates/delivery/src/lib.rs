//! Scheduler and outbound SMTP delivery of the Postrider relay.
//!
//! # Brief overview
//! - [`spawn_delivery`] starts the scheduler: it leases due messages from the
//!   [`postrider_store::Store`] (bounded by [`DeliverySettings::max_concurrent_deliveries`]),
//!   runs one attempt per message and records the outcome. It returns a [`DeliveryHandle`] to
//!   join on shutdown.
//! - An attempt groups the pending recipients by domain and runs one SMTP transaction per domain
//!   ([`MxResolver`] → MX hosts in order → per-recipient replies over lettre's low-level client).
//! - [`outcome`] is the pure part: new recipient states, the retry decision
//!   ([`postrider_core::RetryPolicy`]) and the RFC 3464 failure notice
//!   ([`postrider_core::dsn`]), all with `now` passed in.
//! - [`mx`] holds MX ordering (pure, seeded-RNG tested) and [`HickoryMxResolver`].
//! - Production engine: sessions are pooled and reused per destination address (`pool`), with
//!   global, per-address and per-domain connection limits; a circuit breaker per host
//!   (`health`, exposed by [`DeliveryHandle::suspended`]); per-domain message rates (`rate`);
//!   static [`Route`]s and a [`Relayhost`] with AUTH; TLS policy per domain with the outcome
//!   (encryption, negotiated version, certificate verification) recorded per recipient
//!   ([`postrider_core::TlsInfo`]); success and delay DSNs next to bounces.
//!
//! - Sandbox capture ([`capture`]): messages marked [`postrider_core::QueuedMessage::sandbox`],
//!   or every message with [`DeliverySettings::capture_all`], are never sent: each recipient's
//!   outcome is simulated from its address and recorded like a real one (notifications they
//!   cause are marked too), with no DNS lookup and no connection.
//!
//! Reply classes: 2xx delivered; 4xx, network errors and timeouts deferred (retried); 5xx bounced
//! at once. A recipient still deferred when the message reaches the retry policy's `max_age` is
//! bounced with its last 4xx reply and a 4.x.x status. Failure notices are never sent for
//! messages with the null sender `<>`. Recipients suppressed at enqueue whose SMTP sender is owed
//! a notice ([`postrider_core::QueuedMessage::suppression_notice_due`]) are reported as failed
//! (`5.7.1`) by the failure notice of the message's next attempt, recorded with it.

pub mod capture;
mod health;
mod mta_sts;
pub mod mx;
pub mod outcome;
mod pool;
mod rate;
mod scheduler;
mod settings;
mod smtp;
mod stream;
mod tls;
mod tls_report;
mod tls_version;
mod worker;

pub use health::SuspendedDestination;
pub use mx::{BoxFuture, HickoryMxResolver, MxError, MxHost, MxResolver, ResolverBuildError};
pub use scheduler::{
    DeliveryHandle, DeliveryReloader, DestinationHealth, TlsReporter, spawn_delivery,
};
pub use settings::{
    BreakerSettings, DeliverySettings, DnsSettings, DomainPolicy, InvalidSettings, RelayTls,
    Relayhost, Route, SmtpTimeouts, TlsMode, TlsReportSettings,
};
pub use tls_report::{DayReport, DomainReport};
