//! Pure domain core of Postrider: no sockets, no disk; the wall clock is read in [`clock`] only.
//!
//! # Brief overview
//! - [`Address`], [`Domain`], [`ReversePath`] and [`Envelope`]: who a message is from and for.
//! - [`MessageId`] and [`Timestamp`]: identity and time, always handed in by the caller.
//! - [`QueuedMessage`] and [`RecipientStatus`]: what the queue knows about a message, per recipient.
//! - [`SmtpReply`] and [`classify_reply`]: what a remote server said and what it means for us.
//! - [`RetryPolicy`]: when to try again and when to give up (RFC 5321 §4.5.4.1).
//! - [`bounce`]: why a failure happened ([`BounceCategory`]), from rules kept as data.
//! - [`mx`]: MX ordering, implicit MX and null MX (RFC 5321 §5.1, RFC 7505).
//! - [`dsn`]: RFC 3464 delivery status notifications rendered to bytes.
//! - [`mta_sts`]: RFC 8461 policy files and MX pattern matching.
//! - [`clock`]: the one place the wall clock is read.
//! - [`token_bucket`]: the one rate-limit rule, with time passed in.
//! - [`signed_token`]: short HMAC-signed tokens (VERP return paths, unsubscribe links).
//! - [`unsubscribe`]: RFC 8058 one-click unsubscribe links and their header fields.
//! - [`shared`]: the traits through which nodes of a cluster share state (idempotency keys).
//!
//! Everything here is deterministic: time and randomness are arguments, so the policy can be
//! tested with whole tables of expected values.

mod address;
pub mod bounce;
pub mod clock;
pub mod dsn;
mod envelope;
mod id;
mod message;
pub mod mta_sts;
pub mod mx;
mod reply;
mod retry;
pub mod shared;
pub mod signed_token;
mod time;
pub mod tls_report;
pub mod token_bucket;
pub mod unsubscribe;

pub use address::{Address, AddressError, Domain, ReversePath};
pub use bounce::{BounceCategory, classify_failure, failure_category};
pub use envelope::{DsnRet, Envelope, EnvelopeError, NotifyFlags, RecipientRequest};
pub use id::{MessageId, ParseMessageIdError};
pub use message::{
    MessageState, NewMessage, QueuedMessage, RecipientState, RecipientStatus, Source, TlsInfo,
};
pub use reply::{EnhancedStatus, ReplyClass, SmtpPhase, SmtpReply, classify_reply};
pub use retry::{Decision, InvalidRetryPolicy, RetryPolicy};
pub use time::Timestamp;

/// Signs outgoing messages (DKIM, RFC 6376) just before they are transmitted.
///
/// Implementations are pure with respect to the relay: they get the raw message and return the
/// header field(s) to prepend, or `None` when the message should go out unsigned (no key for the
/// author domain, or the message cannot be signed). Signing happens per delivery attempt, so key
/// rotation takes effect for messages already queued.
pub trait MessageSigner: Send + Sync + std::fmt::Debug {
    /// Header lines (each ending in CRLF) to prepend to `message`, or `None` to send it as is.
    fn sign(&self, message: &[u8]) -> Option<Vec<u8>>;
}
