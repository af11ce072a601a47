//! The SMTP protocol without I/O: command parsing, content receivers, replies and the session
//! state machine. Nothing here touches sockets, clocks or the store, so every behaviour can be
//! tested by feeding octets, and fuzzed.

pub mod body;
pub mod command;
pub mod reply;
pub mod session;

pub use body::{BodyError, BodyReceiver, MAX_TEXT_LINE};
pub use command::{
    AuthMechanism, BodyType, Command, CommandError, MailParams, RcptParams, parse_command,
};
pub use reply::{Rejection, Reply};
pub use session::{
    Admission, AuthOutcome, AuthorizedUser, Credentials, Event, MAX_AUTH_LINE, MAX_COMMAND_LINE,
    Protocol, ProtocolConfig, SessionRole, Submission, SubmitOutcome,
};

#[cfg(test)]
mod tests;
