//! SMTP submission listener of Postrider.
//!
//! # Brief overview
//! - [`proto`]: the protocol with no I/O — command parser, DATA/BDAT receivers with the
//!   smuggling-safe end-of-data rule, replies, and the session state machine [`proto::Protocol`].
//! - [`SmtpServer`]: the thin tokio shell. It accepts connections under global and per-IP limits,
//!   drives one [`proto::Protocol`] per connection over plain TCP, STARTTLS or implicit TLS,
//!   verifies AUTH passwords (argon2, on blocking threads), applies rate limits, answers MAIL
//!   with `452 4.3.1` while the [`postrider_store::Store`] refuses writes, and queues accepted
//!   messages in it before answering 250.
//! - [`SmtpSettings`]: limits, timeouts, trusted networks, TLS, users.
//! - [`proxy_protocol`]: the real client address announced by a trusted load balancer
//!   (PROXY protocol v1/v2), for these listeners and the HTTP API's.
//! - [`hash_password`]: argon2 PHC strings for the `users` setting.
//! - [`FromPolicy`]: an authenticated user's `From:`/`Sender:` must name senders the user may
//!   use, like the envelope sender; otherwise the message is refused or gets a `Sender:`.
//!
//! Postrider is never an open relay: only clients from `trusted_networks` or authenticated
//! users may submit mail, and AUTH is only offered over TLS or from a trusted network.

pub mod proto;
pub mod proxy_protocol;

mod auth_throttle;
mod author;
mod error;
mod limits;
mod message;
mod overload;
mod password;
mod server;
mod settings;

pub use author::{AuthorField, FromPolicy, disallowed_author_field, with_sender};
pub use error::SmtpError;
pub use message::{HeaderPresence, TraceInfo, header_presence, prepare_message};
pub use password::{PasswordError, hash_password, validate_password_hash};
pub use server::SmtpServer;
pub use settings::{
    BareNewlinePolicy, SmtpSettings, SmtpUser, TlsConfigError, load_tls_config, tls_config_from_pem,
};
