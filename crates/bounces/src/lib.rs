//! Postrider's view of what happens after the next hop said `250`.
//!
//! - [`verp`]: the signed return path (`b+<token>@<bounce domain>`) that ties a returned report
//!   to the message and recipient it is about.
//! - [`report`]: what came back: a DSN, an ARF complaint, an auto-reply, or something else.
//! - [`inbox`]: the task that processes what the bounce-domain listener received: asynchronous
//!   bounces and complaints.

pub mod inbox;
pub mod report;
pub mod verp;

pub use inbox::ReportProcessor;
pub use report::{DsnAction, DsnRecipient, InboundReport, OriginalMessage, parse_report};
pub use verp::{VerpError, VerpSigner, VerpTarget};
