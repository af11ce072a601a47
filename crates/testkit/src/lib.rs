//! Real protocol peers for Postrider's tests, on loopback only.
//!
//! - [`SmtpSink`]: a receiving ESMTP server (greeting, EHLO extensions,
//!   MAIL/RCPT/DATA with dot-unstuffing, RSET, NOOP, QUIT, STARTTLS or
//!   implicit TLS with a self-signed certificate and a choice of TLS
//!   versions, AUTH PLAIN/LOGIN, pipelined input) whose
//!   replies are programmable while it runs ([`Behaviour`]) and which
//!   records every accepted message ([`ReceivedMessage`]).
//! - [`DnsServer`]: an authoritative DNS server (hickory-server, UDP and
//!   TCP on one port) serving [`Zone`]s, with injected SERVFAIL, REFUSED or
//!   silence per query name ([`Failure`]).
//! - [`HttpsServer`]: an HTTPS server with a self-signed certificate that
//!   answers programmed responses per path and records every request.
//!
//! Several MX hosts are modelled as sinks on different `127.0.0.x`
//! addresses sharing one port (Linux routes all of `127.0.0.0/8` to `lo`):
//! start the first on port 0, the others on `first.port()`.
//!
//! ```no_run
//! use std::net::{IpAddr, Ipv4Addr};
//! use std::time::Duration;
//! use postrider_testkit::{Behaviour, DnsServer, Failure, SmtpSink, Zone};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // Two MX hosts on one port; `bad*` recipients get 550, `later*` 450.
//! let mx1 = SmtpSink::builder()
//!     .bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 0)
//!     .behaviour(Behaviour::with_standard_rules())
//!     .tls(true)
//!     .start()
//!     .await?;
//! let mx2 = SmtpSink::builder()
//!     .bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)), mx1.port())
//!     .start()
//!     .await?;
//!
//! let dns = DnsServer::start([Zone::new("test.")
//!     .mx("example.test", 10, "mx1.example.test")
//!     .mx("example.test", 20, "mx2.example.test")
//!     .a("mx1.example.test", Ipv4Addr::new(127, 0, 0, 2))
//!     .a("mx2.example.test", Ipv4Addr::new(127, 0, 0, 3))
//!     .a("implicit.test", Ipv4Addr::new(127, 0, 0, 3))
//!     .null_mx("nullmx.test")])
//! .await?;
//! dns.set_failure("broken.test", Failure::ServFail)?;
//!
//! // ... point the relay at dns.addr() and SMTP port mx1.port(), send ...
//!
//! let messages = mx1.wait_for_messages(1, Duration::from_secs(10)).await?;
//! assert_eq!(messages[0].rcpt_to, vec!["good@example.test".to_string()]);
//! # Ok(()) }
//! ```

mod dns;
mod https;
mod smtp;
mod tls;

use std::net::SocketAddr;

pub use dns::{DnsQuery, DnsServer, Failure, Zone};
pub use hickory_proto::rr::RecordType;
pub use https::{HttpRequest, HttpResponse, HttpsServer};
pub use smtp::behaviour::{Behaviour, Extensions, FailFirst, Phase, RcptMatch, RcptRule};
pub use smtp::reply::Reply;
pub use smtp::sink::{ReceivedMessage, SmtpSink, SmtpSinkBuilder};
pub use tls::TlsVersion;

/// Errors of the SMTP sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// Certificate or TLS configuration failed.
    #[error("tls setup: {0}")]
    Tls(String),
    /// [`SmtpSink::wait_for_messages`] ran out of time.
    #[error("timed out waiting for {wanted} messages, got {got}")]
    Timeout {
        /// Messages waited for.
        wanted: usize,
        /// Messages received by the deadline.
        got: usize,
    },
}

/// Errors of the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A name could not be parsed.
    #[error("invalid DNS name {0}")]
    InvalidName(String),
    /// A record's name is not under its zone's origin.
    #[error("{name} is outside zone {zone}")]
    OutsideZone {
        /// The record name.
        name: String,
        /// The zone origin.
        zone: String,
    },
    /// Records were added for a zone not served since start.
    #[error("zone {0} is not served")]
    UnknownZone(String),
    /// The sockets could not be bound.
    #[error("cannot bind DNS sockets: {0}")]
    Bind(std::io::Error),
    /// A resolver for the server could not be built.
    #[error("resolver: {0}")]
    Resolver(String),
}
