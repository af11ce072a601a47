//! The programmable SMTP sink (a receiving MTA for tests).

pub(crate) mod behaviour;
pub(crate) mod command;
pub(crate) mod reply;
pub(crate) mod sink;
