//! Postrider's view of what happens after the next hop said `250`.
//!
//! - [`verp`]: the signed return path (`b+<token>@<bounce domain>`) that ties a returned report
//!   to the message and recipient it is about.

pub mod verp;

pub use verp::{VerpError, VerpSigner, VerpTarget};
