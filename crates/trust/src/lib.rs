//! Sender authentication for the Postrider relay.
//!
//! # Brief overview
//! - [`DkimSigner`]: DKIM signing (RFC 6376, relaxed/relaxed; `rsa-sha256` and RFC 8463
//!   `ed25519-sha256`) of outgoing mail with the key(s) of the `From:` domain. It implements
//!   [`postrider_core::MessageSigner`]; keys are loaded once at start from [`DkimSettings`].
//! - [`generate_dkim_key`]: a new RSA-2048 or Ed25519 key with the TXT record to publish.
//! - [`check_domain`]: SPF / DKIM / DMARC / MX of a sender domain, with the fix for each
//!   failure ([`DomainReport`], JSON via serde, text via `Display`).
//! - [`Verifier`]: address verification by SMTP callout (`MAIL FROM:<>`, `RCPT TO`, `QUIT`),
//!   rate limited per domain and cached.
//! - [`TrustServices`]: what the HTTP API needs for `GET /v1/domains/{domain}/check` and
//!   `POST /v1/verify`.
//!
//! # Caveats of address verification
//! - Catch-all domains accept every address at RCPT time: `deliverable` means "the server would
//!   take it", not "a mailbox exists".
//! - Greylisting and other temporary replies (4xx), timeouts and DNS failures give `unknown`.
//! - Some providers accept everything and bounce later, or block callouts altogether.
//! - Callouts in bulk look like directory-harvest attacks and can get the relay's IP listed.
//!   Keep the per-domain limit low and do not verify whole lists.

mod check;
mod dkim;
mod verify;

use std::net::IpAddr;
use std::sync::Arc;

use postrider_dns::HickoryMxResolver;

pub use check::{Check, CheckStatus, DomainReport, check_bounce_domain, check_domain};
pub use dkim::{
    DEFAULT_SIGNED_HEADERS, DkimAlgorithm, DkimConfigError, DkimKeyConfig, DkimPublicKey,
    DkimSettings, DkimSigner, GeneratedKey, MAX_TXT_STRING, author_domain, generate_dkim_key,
    signing_domain, zone_file_txt,
};
pub use verify::{Deliverability, Verifier, VerifierSettings, VerifyError, VerifyResult};

/// Everything the API's trust routes need. Build once at start; share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct TrustServices {
    /// Resolver for `check-domain` lookups (the relay's own, so answers match what it sees).
    pub resolver: HickoryMxResolver,
    /// The relay's public egress addresses, checked against SPF.
    pub egress_ips: Vec<IpAddr>,
    /// Public halves of the configured DKIM keys ([`DkimSigner::public_keys`]).
    pub dkim_keys: Vec<DkimPublicKey>,
    /// The callout verifier; `None` disables `POST /v1/verify` (answered with 501).
    pub verifier: Option<Arc<Verifier>>,
}
