//! The SMTP server session as a state machine with no I/O.
//!
//! The shell feeds received octets with [`Protocol::feed`] and asks [`Protocol::next_event`] what
//! to do next: send a reply, read more input, start TLS, check credentials, admit a message
//! (the queue takes writes, the rate limits allow it), or queue a message. Requests that need
//! the outside world ([`Event::Authenticate`], [`Event::AdmitMessage`], [`Event::Submit`],
//! [`Event::StartTls`]) are answered with the matching `resolve_*` /
//! [`Protocol::tls_established`] call.
//!
//! Replies are queued as events in order; the shell buffers them and flushes when it needs
//! input, which gives RFC 2920 pipelining: every buffered command is processed before replies
//! are flushed.

use std::collections::VecDeque;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use postrider_core::{Address, Envelope, MessageId, RecipientRequest, ReversePath};

use super::body::{BodyError, BodyReceiver};
use super::command::{AuthMechanism, Command, CommandError, MailParams, parse_command};
use super::reply::{Rejection, Reply};
use crate::author::{FromPolicy, disallowed_author_field, with_sender};
use crate::settings::BareNewlinePolicy;

/// Longest command line including CRLF (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// Longest SASL response line including CRLF (RFC 4954 §4 allows up to 12288).
pub const MAX_AUTH_LINE: usize = 12_288;

/// The fixed part of the protocol's behaviour, shared by every session of a server.
#[derive(Debug, Clone)]
pub struct ProtocolConfig {
    /// Name in the greeting, EHLO reply and `Received:`.
    pub hostname: String,
    /// Largest message in octets (SIZE).
    pub max_message_size: usize,
    /// Most recipients per transaction.
    pub max_recipients: usize,
    /// Permanent (5xx) errors tolerated before the session is closed with 421.
    pub max_errors: usize,
    /// What to do with bare CR or LF.
    pub bare_newlines: BareNewlinePolicy,
    /// Whether STARTTLS can be offered (a certificate is configured).
    pub tls_available: bool,
    /// What the server is for: submission, or receiving reports for the bounce domain.
    pub role: SessionRole,
}

/// What an SMTP server is for. Both roles share the whole protocol; they differ in who may
/// send and to whom.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SessionRole {
    /// Mail submission: trusted networks and authenticated users may relay anywhere.
    #[default]
    Submission,
    /// Receive-only for the bounce domain (where reports come back to VERP return paths):
    /// anyone may send, any reverse-path including `<>`, but only to addresses at `domain`
    /// (others get `550 5.7.1`); no AUTH is offered or accepted, and nothing is relayed.
    ReceiveOnly {
        /// The bounce domain.
        domain: String,
    },
}

impl SessionRole {
    /// The only domain recipients may be at, for a receive-only server.
    fn local_domain(&self) -> Option<&str> {
        match self {
            SessionRole::Submission => None,
            SessionRole::ReceiveOnly { domain } => Some(domain),
        }
    }
}

/// Credentials from AUTH PLAIN or LOGIN, to be verified by the shell.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The authentication identity.
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A user whose credentials were verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedUser {
    /// The user name.
    pub name: String,
    /// Senders this user may use (addresses or `@domain`); empty means any.
    pub allowed_senders: Vec<String>,
    /// What to do when `From:`/`Sender:` names a sender not in `allowed_senders`.
    pub from_policy: FromPolicy,
}

impl AuthorizedUser {
    /// Whether this user may send as `sender`.
    pub fn may_send_as(&self, sender: &ReversePath) -> bool {
        if self.allowed_senders.is_empty() {
            return true;
        }
        sender
            .address()
            .is_some_and(|address| self.may_use_address(address))
    }

    /// Whether this user may name `address` as a sender (envelope, `From:` or `Sender:`).
    pub fn may_use_address(&self, address: &Address) -> bool {
        if self.allowed_senders.is_empty() {
            return true;
        }
        let full = address.to_string();
        self.allowed_senders
            .iter()
            .any(|allowed| match allowed.strip_prefix('@') {
                Some(domain) => address
                    .domain()
                    .as_str()
                    .eq_ignore_ascii_case(domain.trim_end_matches('.')),
                None => allowed.eq_ignore_ascii_case(&full),
            })
    }
}

/// A complete message ready to be queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// Sender, recipients and DSN parameters.
    pub envelope: Envelope,
    /// The content as received (dot-unstuffed, CRLF line ends), without trace headers.
    pub body: Vec<u8>,
    /// The EHLO/HELO argument.
    pub helo: String,
    /// RFC 3848 protocol name for `Received:` (`SMTP`, `ESMTP`, `ESMTPS`, `ESMTPA`, `ESMTPSA`).
    pub protocol: &'static str,
    /// The authenticated user, if any.
    pub user: Option<String>,
}

/// The shell's answer to [`Event::AdmitMessage`]: whether a new mail transaction may start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// It may (`250` to MAIL).
    Admitted,
    /// A message rate limit was hit (`450 4.7.1`).
    RateLimited,
    /// The queue refuses writes now, for the given reason (e.g. a full disk): `452 4.3.1`
    /// before the client uploads a message that could only be refused at the end of DATA.
    StoreUnavailable(String),
}

/// The shell's answer to [`Event::Authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The credentials are right: `235 2.7.0`.
    Authorized(AuthorizedUser),
    /// The credentials are wrong (or the user unknown): `535 5.7.8`.
    Invalid,
    /// Too many failures from this client or for this user: `454 4.7.0` (RFC 4954), without
    /// checking the credentials.
    LockedOut,
    /// No password check could start in time (the server is busy verifying others): `454 4.7.0`.
    Busy,
}

/// The result of queueing a [`Submission`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// Durably queued under this id.
    Queued(MessageId),
    /// The store failed; the client must retry later.
    Failed,
}

/// What the shell should do next.
#[derive(Debug)]
pub enum Event {
    /// Send this reply (buffer it; flush before reading).
    Reply(Reply),
    /// Flush pending replies and read more input, then [`Protocol::feed`] it.
    NeedInput,
    /// Flush pending replies, run the TLS handshake, then call [`Protocol::tls_established`]
    /// (or close the connection if it fails).
    StartTls,
    /// Verify these credentials and call [`Protocol::resolve_auth`].
    Authenticate(Credentials),
    /// Check that the queue takes writes and the message rate limits allow another message,
    /// then call [`Protocol::resolve_admission`].
    AdmitMessage {
        /// The authenticated user, if any.
        user: Option<String>,
    },
    /// Queue this message and call [`Protocol::resolve_submit`].
    Submit(Submission),
    /// Flush pending replies and close the connection.
    Close,
    /// A request is outstanding: call the matching `resolve_*` method first.
    Waiting,
}

#[derive(Debug)]
enum Pending {
    Admission(Transaction),
    Auth,
    Submit,
    Tls,
}

#[derive(Debug)]
enum Phase {
    Command,
    AuthPlain,
    AuthLoginUser,
    AuthLoginPassword {
        username: String,
    },
    Data(BodyReceiver),
    /// Reading a BDAT chunk; with `refusal` the chunk is discarded and that reply sent after it.
    Chunk {
        size: u64,
        remaining: u64,
        last: bool,
        refusal: Option<Reply>,
    },
    Awaiting(Pending),
    Closed,
}

#[derive(Debug)]
struct Transaction {
    sender: ReversePath,
    params: MailParams,
    recipients: Vec<RecipientRequest>,
    chunks: Option<BodyReceiver>,
}

#[derive(Debug)]
struct Helo {
    name: String,
    extended: bool,
}

enum LineProblem {
    TooLong,
    BareLineEnd,
}

/// One SMTP server session, without I/O.
#[derive(Debug)]
pub struct Protocol {
    config: Arc<ProtocolConfig>,
    trusted: bool,
    tls: bool,
    phase: Phase,
    input: Vec<u8>,
    pos: usize,
    discarding_line: bool,
    helo: Option<Helo>,
    user: Option<AuthorizedUser>,
    transaction: Option<Transaction>,
    errors: usize,
    events: VecDeque<Event>,
}

impl Protocol {
    /// A new session. `trusted` says whether the client is in a trusted network (may relay
    /// without AUTH and may AUTH without TLS); `tls` whether the connection is already
    /// encrypted (implicit TLS). The greeting is the first event.
    pub fn new(config: Arc<ProtocolConfig>, trusted: bool, tls: bool) -> Self {
        let greeting = Reply::plain(220, format!("{} ESMTP Postrider", config.hostname));
        let mut protocol = Protocol {
            config,
            trusted,
            tls,
            phase: Phase::Command,
            input: Vec::new(),
            pos: 0,
            discarding_line: false,
            helo: None,
            user: None,
            transaction: None,
            errors: 0,
            events: VecDeque::new(),
        };
        protocol.events.push_back(Event::Reply(greeting));
        protocol
    }

    /// Adds received octets.
    pub fn feed(&mut self, octets: &[u8]) {
        if self.pos > 0 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        if !matches!(self.phase, Phase::Closed) {
            self.input.extend_from_slice(octets);
        }
    }

    /// Whether the client is in the middle of sending a message (DATA content or a BDAT
    /// transaction); such sessions are allowed to finish during shutdown and use the data timeout.
    pub fn is_mid_message(&self) -> bool {
        matches!(
            self.phase,
            Phase::Data(_) | Phase::Chunk { .. } | Phase::Awaiting(Pending::Submit)
        ) || self
            .transaction
            .as_ref()
            .is_some_and(|t| t.chunks.is_some())
    }

    /// Octets received and not yet processed (bounded by the line limits plus one read).
    pub fn buffered_input(&self) -> usize {
        self.input.len() - self.pos
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The EHLO/HELO name, once given.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_ref().map(|h| h.name.as_str())
    }

    /// The authenticated user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.name.as_str())
    }

    /// Whether TLS is active.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The client was idle too long: reply 421 4.4.2 and close.
    pub fn timeout(&mut self) {
        let text = format!("{} Error: timeout exceeded", self.config.hostname);
        self.close_with(Reply::reject(421, "4.4.2", text, Rejection::Timeout));
    }

    /// Whether a mail transaction has started (MAIL accepted or being admitted, or a message
    /// being received). Sessions without one are idle: in overload they get the short
    /// timeout and may be closed to make room for new clients.
    pub fn in_transaction(&self) -> bool {
        self.transaction.is_some()
            || matches!(self.phase, Phase::Awaiting(Pending::Admission(_)))
            || self.is_mid_message()
    }

    /// The server needs this idle session's connection slot for a new client: reply
    /// 421 4.7.0 and close.
    pub fn close_for_overload(&mut self) {
        let text = format!(
            "{} Too many connections, closing idle session",
            self.config.hostname
        );
        self.close_with(Reply::reject(421, "4.7.0", text, Rejection::Overload));
    }

    /// The server is shutting down: reply 421 4.3.2 and close.
    pub fn shutdown(&mut self) {
        let text = format!("{} Service shutting down", self.config.hostname);
        self.close_with(Reply::reject(421, "4.3.2", text, Rejection::ShuttingDown));
    }

    /// The TLS handshake after STARTTLS succeeded: the session starts over (RFC 3207 §4.2).
    pub fn tls_established(&mut self) {
        if matches!(self.phase, Phase::Awaiting(Pending::Tls)) {
            self.tls = true;
            self.helo = None;
            self.user = None;
            self.transaction = None;
            self.input.clear();
            self.pos = 0;
            self.discarding_line = false;
            self.phase = Phase::Command;
        }
    }

    /// The answer to [`Event::Authenticate`].
    pub fn resolve_auth(&mut self, outcome: AuthOutcome) {
        if !matches!(self.phase, Phase::Awaiting(Pending::Auth)) {
            return;
        }
        self.phase = Phase::Command;
        let temporary_failure =
            |why| Reply::reject(454, "4.7.0", "Temporary authentication failure", why);
        match outcome {
            AuthOutcome::Authorized(user) => {
                self.user = Some(user);
                self.reply(Reply::new(235, "2.7.0", "Authentication successful"));
            }
            AuthOutcome::Invalid => self.reply(Reply::reject(
                535,
                "5.7.8",
                "Authentication credentials invalid",
                Rejection::AuthFailed,
            )),
            AuthOutcome::LockedOut => self.reply(temporary_failure(Rejection::AuthLockedOut)),
            AuthOutcome::Busy => self.reply(temporary_failure(Rejection::AuthBusy)),
        }
    }

    /// The answer to [`Event::AdmitMessage`]: whether the transaction may start.
    pub fn resolve_admission(&mut self, admission: Admission) {
        let Phase::Awaiting(Pending::Admission(_)) = &self.phase else {
            return;
        };
        let Phase::Awaiting(Pending::Admission(transaction)) =
            std::mem::replace(&mut self.phase, Phase::Command)
        else {
            return;
        };
        match admission {
            Admission::Admitted => {
                self.transaction = Some(transaction);
                self.reply(Reply::new(250, "2.1.0", "Ok"));
            }
            Admission::RateLimited => self.reply(Reply::reject(
                450,
                "4.7.1",
                "Rate limit exceeded, try again later",
                Rejection::RateLimited,
            )),
            // RFC 3463 4.3.1: mail system full.
            Admission::StoreUnavailable(reason) => self.reply(Reply::reject(
                452,
                "4.3.1",
                format!("{}; try again later", short_reason(&reason)),
                Rejection::StorageUnavailable,
            )),
        }
    }

    /// The answer to [`Event::Submit`].
    pub fn resolve_submit(&mut self, outcome: SubmitOutcome) {
        if !matches!(self.phase, Phase::Awaiting(Pending::Submit)) {
            return;
        }
        self.phase = Phase::Command;
        self.transaction = None;
        match outcome {
            SubmitOutcome::Queued(id) => {
                self.reply(Reply::new(250, "2.0.0", format!("Ok: queued as {id}")))
            }
            SubmitOutcome::Failed => self.reply(Reply::reject(
                451,
                "4.3.0",
                "Temporary storage failure, try again later",
                Rejection::Storage,
            )),
        }
    }

    /// The next thing to do.
    pub fn next_event(&mut self) -> Event {
        loop {
            if let Some(event) = self.events.pop_front() {
                return event;
            }
            match &self.phase {
                Phase::Closed => return Event::Close,
                Phase::Awaiting(_) => return Event::Waiting,
                Phase::Command => match self.take_line(MAX_COMMAND_LINE) {
                    None => return Event::NeedInput,
                    Some(Ok(line)) => self.command(&line),
                    Some(Err(LineProblem::TooLong)) => self.reply(Reply::reject(
                        500,
                        "5.5.2",
                        "Line too long",
                        Rejection::LineTooLong,
                    )),
                    Some(Err(LineProblem::BareLineEnd)) => self.reply(Reply::reject(
                        500,
                        "5.5.2",
                        "Command lines must end with CRLF",
                        Rejection::LineTooLong,
                    )),
                },
                Phase::AuthPlain | Phase::AuthLoginUser | Phase::AuthLoginPassword { .. } => {
                    match self.take_line(MAX_AUTH_LINE) {
                        None => return Event::NeedInput,
                        Some(Ok(line)) => self.auth_response(&line),
                        Some(Err(_)) => {
                            self.phase = Phase::Command;
                            self.reply(Reply::reject(
                                500,
                                "5.5.2",
                                "Invalid authentication response line",
                                Rejection::Syntax,
                            ));
                        }
                    }
                }
                Phase::Data(_) => {
                    if !self.data() {
                        return Event::NeedInput;
                    }
                }
                Phase::Chunk { .. } => {
                    if !self.chunk() {
                        return Event::NeedInput;
                    }
                }
            }
        }
    }

    /// Queues a reply, counting permanent failures toward `max_errors`.
    fn reply(&mut self, reply: Reply) {
        let failed = reply.is_permanent_failure();
        self.events.push_back(Event::Reply(reply));
        if failed {
            self.errors += 1;
            if self.config.max_errors > 0 && self.errors >= self.config.max_errors {
                let text = format!("{} Error: too many errors", self.config.hostname);
                self.close_with(Reply::reject(421, "4.7.0", text, Rejection::TooManyErrors));
            }
        }
    }

    fn close_with(&mut self, reply: Reply) {
        if self.is_closed() {
            return;
        }
        self.events.push_back(Event::Reply(reply));
        self.events.push_back(Event::Close);
        self.phase = Phase::Closed;
        self.input.clear();
        self.pos = 0;
    }

    /// Takes one line (without its CRLF) from the input, if a whole one is there. A line over
    /// `max` octets (CRLF included) is reported once and skipped to its end without buffering.
    fn take_line(&mut self, max: usize) -> Option<Result<Vec<u8>, LineProblem>> {
        loop {
            let available = &self.input[self.pos..];
            let newline = available.iter().position(|&b| b == b'\n');
            if self.discarding_line {
                match newline {
                    Some(end) => {
                        self.pos += end + 1;
                        self.discarding_line = false;
                        continue;
                    }
                    None => {
                        self.pos = self.input.len();
                        return None;
                    }
                }
            }
            return match newline {
                None if available.len() >= max => {
                    self.discarding_line = true;
                    self.pos = self.input.len();
                    Some(Err(LineProblem::TooLong))
                }
                None => None,
                Some(end) => {
                    let raw = &available[..end];
                    self.pos += end + 1;
                    if end + 1 > max {
                        return Some(Err(LineProblem::TooLong));
                    }
                    let (line, bare_lf) = match raw.strip_suffix(b"\r") {
                        Some(line) => (line, false),
                        None => (raw, true),
                    };
                    if line.contains(&b'\r') {
                        return Some(Err(LineProblem::BareLineEnd));
                    }
                    if bare_lf && self.config.bare_newlines == BareNewlinePolicy::Reject {
                        return Some(Err(LineProblem::BareLineEnd));
                    }
                    Some(Ok(line.to_vec()))
                }
            };
        }
    }

    fn protocol_name(&self) -> &'static str {
        match (
            self.helo.as_ref().is_some_and(|h| h.extended),
            self.tls,
            self.user.is_some(),
        ) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        }
    }

    /// Whether the client may start a mail transaction (a receive-only server takes mail from
    /// anyone, for its own domain only).
    fn may_relay(&self) -> bool {
        self.trusted || self.user.is_some() || self.config.role.local_domain().is_some()
    }

    fn auth_offered(&self) -> bool {
        (self.tls || self.trusted) && self.config.role == SessionRole::Submission
    }

    fn sequence_error(&mut self, text: &str) {
        self.reply(Reply::reject(
            503,
            "5.5.1",
            text.to_owned(),
            Rejection::BadSequence,
        ));
    }

    fn command(&mut self, line: &[u8]) {
        let command = match parse_command(line) {
            Ok(command) => command,
            Err(CommandError::Unknown) => {
                return self.reply(Reply::reject(
                    500,
                    "5.5.2",
                    "Command unrecognized",
                    Rejection::UnknownCommand,
                ));
            }
            Err(CommandError::Syntax(why)) => {
                return self.reply(Reply::reject(
                    501,
                    "5.5.4",
                    format!("Syntax error: {why}"),
                    Rejection::Syntax,
                ));
            }
            Err(CommandError::UnsupportedParameter) => {
                return self.reply(Reply::reject(
                    555,
                    "5.5.4",
                    "Unsupported parameter",
                    Rejection::Syntax,
                ));
            }
            Err(CommandError::BadParameter(why)) => {
                return self.reply(Reply::reject(
                    501,
                    "5.5.4",
                    format!("Invalid parameter: {why}"),
                    Rejection::Syntax,
                ));
            }
        };
        match command {
            Command::Ehlo(name) => self.ehlo(name, true),
            Command::Helo(name) => self.ehlo(name, false),
            Command::Mail { path, params } => self.mail(&path, params),
            Command::Rcpt { path, params } => self.rcpt(&path, params),
            Command::Data => self.data_command(),
            Command::Bdat { size, last } => self.bdat_command(size, last),
            Command::Rset => {
                self.transaction = None;
                self.reply(Reply::new(250, "2.0.0", "Ok"));
            }
            Command::Noop => self.reply(Reply::new(250, "2.0.0", "Ok")),
            Command::Quit => {
                self.events
                    .push_back(Event::Reply(Reply::new(221, "2.0.0", "Bye")));
                self.events.push_back(Event::Close);
                self.phase = Phase::Closed;
            }
            Command::Vrfy => self.reply(Reply::new(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Help => self.reply(Reply::new(
                214,
                "2.0.0",
                "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
            )),
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial),
            Command::NotImplemented => self.reply(Reply::reject(
                502,
                "5.5.1",
                "Command not implemented",
                Rejection::NotImplemented,
            )),
        }
    }

    fn ehlo(&mut self, name: String, extended: bool) {
        self.transaction = None;
        let mut lines = vec![self.config.hostname.clone()];
        if extended {
            lines.extend([
                "PIPELINING".to_owned(),
                format!("SIZE {}", self.config.max_message_size),
                "8BITMIME".to_owned(),
                "SMTPUTF8".to_owned(),
                "ENHANCEDSTATUSCODES".to_owned(),
                "CHUNKING".to_owned(),
                "DSN".to_owned(),
            ]);
            if self.config.tls_available && !self.tls {
                lines.push("STARTTLS".to_owned());
            }
            if self.auth_offered() {
                lines.push("AUTH PLAIN LOGIN".to_owned());
            }
        }
        self.helo = Some(Helo { name, extended });
        self.reply(Reply {
            code: 250,
            enhanced: None,
            lines,
            rejection: None,
        });
    }

    fn mail(&mut self, path: &str, params: MailParams) {
        if self.helo.is_none() {
            return self.sequence_error("Send EHLO or HELO first");
        }
        if self.transaction.is_some() {
            return self.sequence_error("Nested MAIL command");
        }
        if !self.may_relay() {
            return self.reply(Reply::reject(
                530,
                "5.7.0",
                "Authentication required",
                Rejection::AuthRequired,
            ));
        }
        let limit = self.config.max_message_size;
        if params.size.is_some_and(|size| size > limit as u64) {
            return self.reply(Reply::reject(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
                Rejection::TooBig,
            ));
        }
        let Ok(sender) = ReversePath::parse(path) else {
            return self.reply(Reply::reject(
                501,
                "5.1.7",
                "Bad sender address syntax",
                Rejection::Syntax,
            ));
        };
        if sender.address().is_some_and(Address::needs_smtputf8) && !params.smtputf8 {
            return self.reply(Reply::reject(
                553,
                "5.6.7",
                "Non-ASCII address requires SMTPUTF8",
                Rejection::Smtputf8Required,
            ));
        }
        if let Some(user) = &self.user
            && !user.may_send_as(&sender)
        {
            return self.reply(Reply::reject(
                553,
                "5.7.1",
                "Sender address not allowed for this user",
                Rejection::SenderNotAllowed,
            ));
        }
        let user = self.user.as_ref().map(|u| u.name.clone());
        self.phase = Phase::Awaiting(Pending::Admission(Transaction {
            sender,
            params,
            recipients: Vec::new(),
            chunks: None,
        }));
        self.events.push_back(Event::AdmitMessage { user });
    }

    fn rcpt(&mut self, path: &str, params: super::command::RcptParams) {
        let may_relay = self.may_relay();
        let max = self.config.max_recipients;
        let config = Arc::clone(&self.config);
        let local_domain = config.role.local_domain();
        let Some(transaction) = self.transaction.as_mut() else {
            return self.sequence_error("Need MAIL command");
        };
        if transaction.chunks.is_some() {
            return self.sequence_error("RCPT not allowed after BDAT");
        }
        if !may_relay {
            return self.reply(Reply::reject(
                554,
                "5.7.1",
                "Relay access denied",
                Rejection::RelayDenied,
            ));
        }
        let Ok(address) = Address::parse(path) else {
            return self.reply(Reply::reject(
                501,
                "5.1.3",
                "Bad recipient address syntax",
                Rejection::Syntax,
            ));
        };
        if let Some(domain) = local_domain
            && !address
                .domain()
                .as_str()
                .trim_end_matches('.')
                .eq_ignore_ascii_case(domain.trim_end_matches('.'))
        {
            return self.reply(Reply::reject(
                550,
                "5.7.1",
                "Relaying denied",
                Rejection::RelayDenied,
            ));
        }
        if address.needs_smtputf8() && !transaction.params.smtputf8 {
            return self.reply(Reply::reject(
                553,
                "5.6.7",
                "Non-ASCII address requires SMTPUTF8",
                Rejection::Smtputf8Required,
            ));
        }
        if transaction.recipients.iter().any(|r| r.address == address) {
            return self.reply(Reply::new(250, "2.1.5", "Ok"));
        }
        if transaction.recipients.len() >= max {
            return self.reply(Reply::reject(
                452,
                "4.5.3",
                "Too many recipients",
                Rejection::TooManyRecipients,
            ));
        }
        transaction.recipients.push(RecipientRequest {
            address,
            notify: params.notify,
            orcpt: params.orcpt,
        });
        self.reply(Reply::new(250, "2.1.5", "Ok"));
    }

    fn data_command(&mut self) {
        match &self.transaction {
            None => self.sequence_error("Need MAIL command"),
            Some(t) if t.chunks.is_some() => {
                self.sequence_error("DATA not allowed in a BDAT transaction")
            }
            Some(t) if t.recipients.is_empty() => self.sequence_error("Need RCPT command"),
            Some(_) => {
                self.events.push_back(Event::Reply(Reply::plain(
                    354,
                    "End data with <CR><LF>.<CR><LF>",
                )));
                self.phase = Phase::Data(BodyReceiver::dot_terminated(
                    self.config.bare_newlines,
                    self.config.max_message_size,
                ));
            }
        }
    }

    /// Processes DATA content; returns false when more input is needed.
    fn data(&mut self) -> bool {
        let Phase::Data(receiver) = &mut self.phase else {
            return true;
        };
        let (used, ended) = receiver.ingest(&self.input[self.pos..]);
        self.pos += used;
        if !ended {
            return false;
        }
        let Phase::Data(receiver) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return true;
        };
        self.finish_message(receiver.finish());
        true
    }

    fn bdat_command(&mut self, size: u64, last: bool) {
        let refusal = match &self.transaction {
            None => Some("Need MAIL command"),
            Some(t) if t.recipients.is_empty() => Some("Need RCPT command"),
            Some(_) => None,
        };
        // The chunk follows the command whatever the reply, so it is always read (and then
        // discarded when refused): otherwise its content would be taken as commands.
        let refusal = refusal.map(|text| Reply::reject(503, "5.5.1", text, Rejection::BadSequence));
        let policy = self.config.bare_newlines;
        let max = self.config.max_message_size;
        if refusal.is_none()
            && let Some(transaction) = self.transaction.as_mut()
        {
            let receiver = transaction
                .chunks
                .get_or_insert_with(|| BodyReceiver::chunked(policy, max));
            if (receiver.len() as u64).saturating_add(size) > max as u64 {
                receiver.mark_too_big();
            }
        }
        self.phase = Phase::Chunk {
            size,
            remaining: size,
            last,
            refusal,
        };
    }

    /// Processes BDAT chunk content; returns false when more input is needed.
    fn chunk(&mut self) -> bool {
        let Phase::Chunk {
            remaining, refusal, ..
        } = &mut self.phase
        else {
            return true;
        };
        let available = &self.input[self.pos..];
        let take = usize::try_from(*remaining)
            .unwrap_or(usize::MAX)
            .min(available.len());
        if take > 0 {
            if refusal.is_none()
                && let Some(receiver) = self.transaction.as_mut().and_then(|t| t.chunks.as_mut())
                && !receiver.is_doomed()
            {
                receiver.ingest(&available[..take]);
            }
            self.pos += take;
            *remaining -= take as u64;
        }
        if *remaining > 0 {
            return false;
        }
        let Phase::Chunk {
            size,
            last,
            refusal,
            ..
        } = std::mem::replace(&mut self.phase, Phase::Command)
        else {
            return true;
        };
        if let Some(reply) = refusal {
            self.reply(reply);
            return true;
        }
        let doomed = self
            .transaction
            .as_ref()
            .and_then(|t| t.chunks.as_ref())
            .is_some_and(BodyReceiver::is_doomed);
        if last || doomed {
            let receiver = self.transaction.as_mut().and_then(|t| t.chunks.take());
            match receiver {
                Some(receiver) => self.finish_message(receiver.finish()),
                None => self.sequence_error("No BDAT transaction"),
            }
        } else {
            self.reply(Reply::new(250, "2.0.0", format!("{size} octets received")));
        }
        true
    }

    /// Ends the current transaction with the received content: queue it, or refuse it.
    fn finish_message(&mut self, body: Result<Vec<u8>, BodyError>) {
        let body = match body {
            Ok(body) => body,
            Err(error) => {
                self.transaction = None;
                let reply = match error {
                    BodyError::TooBig => Reply::reject(
                        552,
                        "5.3.4",
                        "Message size exceeds fixed maximum message size",
                        Rejection::TooBig,
                    ),
                    BodyError::BareNewline => Reply::reject(
                        550,
                        "5.6.11",
                        "Message contains bare CR or LF; lines must end with CRLF",
                        Rejection::BareNewline,
                    ),
                    BodyError::LineTooLong => Reply::reject(
                        552,
                        "5.6.0",
                        "Message has a line longer than 998 octets",
                        Rejection::LongTextLine,
                    ),
                    BodyError::Nul => {
                        Reply::reject(550, "5.6.0", "Message contains NUL octets", Rejection::Nul)
                    }
                };
                return self.reply(reply);
            }
        };
        let Some(transaction) = self.transaction.take() else {
            return self.sequence_error("No mail transaction");
        };
        let Ok(mut envelope) = Envelope::new(transaction.sender, transaction.recipients) else {
            return self.sequence_error("Need RCPT command");
        };
        envelope.ret = transaction.params.ret;
        envelope.envid = transaction.params.envid;
        let body = match self.apply_from_policy(body, &envelope) {
            Ok(body) => body,
            Err(refusal) => return self.reply(refusal),
        };
        let submission = Submission {
            envelope,
            body,
            helo: self
                .helo
                .as_ref()
                .map(|h| h.name.clone())
                .unwrap_or_default(),
            protocol: self.protocol_name(),
            user: self.user.as_ref().map(|u| u.name.clone()),
        };
        self.phase = Phase::Awaiting(Pending::Submit);
        self.events.push_back(Event::Submit(submission));
    }

    /// Holds an authenticated user's `From:` and `Sender:` to the user's allowed senders: the
    /// content to queue (with `Sender:` rewritten under [`FromPolicy::Rewrite`]) or the refusal.
    fn apply_from_policy(&self, body: Vec<u8>, envelope: &Envelope) -> Result<Vec<u8>, Reply> {
        let Some(user) = self.user.as_ref().filter(|u| !u.allowed_senders.is_empty()) else {
            return Ok(body);
        };
        let Some(field) = disallowed_author_field(&body, |a| user.may_use_address(a)) else {
            return Ok(body);
        };
        match (user.from_policy, envelope.sender().address()) {
            (FromPolicy::Rewrite, Some(sender)) => Ok(with_sender(&body, sender)),
            _ => Err(Reply::reject(
                550,
                "5.7.1",
                format!(
                    "{}: header address not allowed for this user",
                    field.as_str()
                ),
                Rejection::AuthorNotAllowed,
            )),
        }
    }

    fn starttls(&mut self) {
        if !self.config.tls_available {
            return self.reply(Reply::reject(
                502,
                "5.5.1",
                "Command not implemented",
                Rejection::NotImplemented,
            ));
        }
        if self.tls {
            return self.sequence_error("TLS already active");
        }
        if self.transaction.is_some() {
            return self.sequence_error("STARTTLS not allowed during a mail transaction");
        }
        self.events
            .push_back(Event::Reply(Reply::new(220, "2.0.0", "Ready to start TLS")));
        self.events.push_back(Event::StartTls);
        // Anything pipelined after STARTTLS was sent in plaintext and must not be trusted
        // (command injection, CVE-2011-0411 class): drop it.
        self.input.clear();
        self.pos = 0;
        self.discarding_line = false;
        self.phase = Phase::Awaiting(Pending::Tls);
    }

    fn auth(&mut self, mechanism: AuthMechanism, initial: Option<String>) {
        if self.config.role != SessionRole::Submission {
            return self.reply(Reply::reject(
                502,
                "5.5.1",
                "Command not implemented",
                Rejection::NotImplemented,
            ));
        }
        if !self.helo.as_ref().is_some_and(|h| h.extended) {
            return self.sequence_error("Send EHLO first");
        }
        if self.user.is_some() {
            return self.sequence_error("Already authenticated");
        }
        if self.transaction.is_some() {
            return self.sequence_error("AUTH not allowed during a mail transaction");
        }
        if !self.auth_offered() {
            return self.reply(Reply::reject(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
                Rejection::EncryptionRequired,
            ));
        }
        match (mechanism, initial) {
            (AuthMechanism::Other, _) => self.reply(Reply::reject(
                504,
                "5.5.4",
                "Unrecognized authentication type",
                Rejection::NotImplemented,
            )),
            (AuthMechanism::Plain, None) => {
                self.phase = Phase::AuthPlain;
                self.events.push_back(Event::Reply(Reply::plain(334, "")));
            }
            (AuthMechanism::Plain, Some(initial)) => self.plain_response(initial.as_bytes()),
            (AuthMechanism::Login, None) => {
                self.phase = Phase::AuthLoginUser;
                self.events
                    .push_back(Event::Reply(Reply::plain(334, "VXNlcm5hbWU6")));
            }
            (AuthMechanism::Login, Some(initial)) => {
                self.phase = Phase::AuthLoginUser;
                self.auth_response(initial.as_bytes());
            }
        }
    }

    fn auth_response(&mut self, line: &[u8]) {
        if line == b"*" {
            self.phase = Phase::Command;
            return self.reply(Reply::reject(
                501,
                "5.7.0",
                "Authentication cancelled",
                Rejection::Syntax,
            ));
        }
        match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::AuthPlain => self.plain_response(line),
            Phase::AuthLoginUser => match decode_text(line) {
                Some(username) => {
                    self.phase = Phase::AuthLoginPassword { username };
                    self.events
                        .push_back(Event::Reply(Reply::plain(334, "UGFzc3dvcmQ6")));
                }
                None => self.bad_auth_encoding(),
            },
            Phase::AuthLoginPassword { username } => match decode_text(line) {
                Some(password) => self.authenticate(Credentials { username, password }),
                None => self.bad_auth_encoding(),
            },
            other => self.phase = other,
        }
    }

    /// RFC 4616: `[authzid] NUL authcid NUL passwd`. An authorization identity other than the
    /// user's own is refused.
    fn plain_response(&mut self, response: &[u8]) {
        self.phase = Phase::Command;
        let decoded = if response == b"=" {
            Some(Vec::new())
        } else {
            BASE64.decode(response).ok()
        };
        let Some(decoded) = decoded else {
            return self.bad_auth_encoding();
        };
        let mut parts = decoded.split(|&b| b == 0);
        let (Some(authzid), Some(authcid), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.bad_auth_encoding();
        };
        let (Ok(authzid), Ok(username), Ok(password)) = (
            std::str::from_utf8(authzid),
            std::str::from_utf8(authcid),
            std::str::from_utf8(password),
        ) else {
            return self.bad_auth_encoding();
        };
        if !authzid.is_empty() && authzid != username {
            return self.reply(Reply::reject(
                535,
                "5.7.8",
                "Authentication credentials invalid",
                Rejection::AuthFailed,
            ));
        }
        self.authenticate(Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
        });
    }

    fn authenticate(&mut self, credentials: Credentials) {
        self.phase = Phase::Awaiting(Pending::Auth);
        self.events.push_back(Event::Authenticate(credentials));
    }

    fn bad_auth_encoding(&mut self) {
        self.phase = Phase::Command;
        self.reply(Reply::reject(
            501,
            "5.5.2",
            "Cannot decode authentication response",
            Rejection::Syntax,
        ));
    }
}

fn decode_text(line: &[u8]) -> Option<String> {
    let decoded = BASE64.decode(line).ok()?;
    String::from_utf8(decoded).ok()
}

/// Longest store reason quoted in a reply, in characters.
const MAX_REASON_CHARS: usize = 100;

/// The first clause of a store's unavailability reason, bounded, for a one-line reply.
fn short_reason(reason: &str) -> String {
    let clause = reason.split(';').next().unwrap_or_default().trim();
    if clause.is_empty() {
        return "Queue storage unavailable".to_owned();
    }
    clause.chars().take(MAX_REASON_CHARS).collect()
}
