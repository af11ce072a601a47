//! `postrider sendmail`: the `/usr/sbin/sendmail` interface that cron, PHP's `mail()`, git hooks
//! and many other programs use to send mail.
//!
//! It reads one message from standard input, completes it (`Date:`, `Message-ID:`, `From:`;
//! `Bcc:` removed), and submits it to the running relay over its local SMTP listener, so the
//! relay's own checks, durability and queue apply. The exit status follows `sysexits.h`, as
//! callers of sendmail expect: 75 means "try again later", anything else non-zero is final.
//!
//! The command line is parsed by hand: sendmail's flags (`-oi`, `-faddr`, `-bm`, grouped `-ti`)
//! predate getopt conventions that argument-parsing libraries understand.

use std::ffi::OsString;
use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use lettre::Address as SmtpAddress;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Mail, Quit, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use mail_builder::headers::Header as _;
use mail_parser::{HeaderName, HeaderValue, MessageParser};

use crate::config::Config;

/// Where the relay's configuration is looked for when neither `-C`/`--config` nor
/// `POSTRIDER_CONFIG` names one (the path the systemd unit uses).
const SYSTEM_CONFIG: &str = "/etc/postrider/postrider.toml";

/// Connecting to the relay, including its greeting and EHLO.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Waiting for the reply to MAIL, RCPT, DATA, RSET or QUIT.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Sending the content and waiting for the relay's verdict (it syncs to disk first).
const DATA_TIMEOUT: Duration = Duration::from_secs(600);
/// `sysexits.h` statuses this command exits with.
mod sysexits {
    pub(super) const USAGE: u8 = 64;
    pub(super) const DATAERR: u8 = 65;
    pub(super) const NOUSER: u8 = 67;
    pub(super) const UNAVAILABLE: u8 = 69;
    pub(super) const OSERR: u8 = 71;
    pub(super) const IOERR: u8 = 74;
    pub(super) const TEMPFAIL: u8 = 75;
    pub(super) const PROTOCOL: u8 = 76;
    pub(super) const CONFIG: u8 = 78;
}

/// Why a message was not (entirely) handed to the relay; each maps to one `sysexits.h` status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendmailError {
    /// Bad command line, unsupported mode, or no recipients (EX_USAGE, as Postfix does).
    #[error("{0}")]
    Usage(String),
    /// The message cannot be sent as it is: too large, or refused by the relay (EX_DATAERR).
    #[error("{0}")]
    Data(String),
    /// A recipient address is malformed or was refused with a 5xx reply (EX_NOUSER).
    #[error("{0}")]
    NoUser(String),
    /// The relay refused the session or the sender for good (EX_UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// The login name of the calling user cannot be found (EX_OSERR).
    #[error("{0}")]
    Os(String),
    /// Standard input could not be read (EX_IOERR).
    #[error("{0}")]
    Input(String),
    /// The relay is down, busy or answered 4xx: nothing was queued, try again (EX_TEMPFAIL).
    #[error("{0}")]
    TempFail(String),
    /// The relay's replies could not be understood (EX_PROTOCOL).
    #[error("{0}")]
    Protocol(String),
    /// The configuration cannot be loaded (EX_CONFIG).
    #[error("{0}")]
    Config(String),
}

impl SendmailError {
    /// The `sysexits.h` status for this failure.
    pub(crate) fn exit_status(&self) -> u8 {
        match self {
            SendmailError::Usage(_) => sysexits::USAGE,
            SendmailError::Data(_) => sysexits::DATAERR,
            SendmailError::NoUser(_) => sysexits::NOUSER,
            SendmailError::Unavailable(_) => sysexits::UNAVAILABLE,
            SendmailError::Os(_) => sysexits::OSERR,
            SendmailError::Input(_) => sysexits::IOERR,
            SendmailError::TempFail(_) => sysexits::TEMPFAIL,
            SendmailError::Protocol(_) => sysexits::PROTOCOL,
            SendmailError::Config(_) => sysexits::CONFIG,
        }
    }
}

/// What one invocation asks for, from its command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Invocation {
    /// `-C`/`--config`: the relay's configuration file.
    pub(crate) config: Option<PathBuf>,
    /// `-t`: take recipients from `To:`, `Cc:` and `Bcc:` as well.
    pub(crate) recipients_from_headers: bool,
    /// Without `-i`/`-oi`, a line holding a single `.` ends the message.
    pub(crate) dot_ends_input: bool,
    /// `-f`/`-r`: the envelope sender as given (`""` or `<>`: the null sender).
    pub(crate) sender: Option<String>,
    /// `-F`: display name for the `From:` added to a message without one.
    pub(crate) full_name: Option<String>,
    /// `-v`: print the SMTP dialogue and the queue id.
    pub(crate) verbose: bool,
    /// Recipient arguments, each an address list (`a@x, Name <b@y>`).
    pub(crate) recipients: Vec<String>,
    /// Options accepted for compatibility and ignored (shown with `-v`).
    pub(crate) ignored: Vec<String>,
}

/// The parsed command line: send a message, or print the usage.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// Read a message from standard input and submit it.
    Send(Invocation),
    /// `--help`.
    Help,
}

/// Usage text for `--help` and usage errors.
const USAGE: &str = "usage: sendmail [-t] [-i] [-f sender] [-F name] [-v] [-C config] [recipient ...]
  -t           also send to the To:, Cc: and Bcc: recipients of the message
  -i, -oi      a line with a single \".\" does not end the message
  -f, -r ADDR  envelope sender (default: login name @ the relay's hostname)
  -F NAME      display name of the From: added when the message has none
  -v           print the SMTP dialogue and the queue id
  -C, --config FILE  the relay's configuration (else POSTRIDER_CONFIG, /etc/postrider/postrider.toml)
  -bm, -odi, -odb, -oem, -oee, -om, -o..., -B, -N, -R, -V, -X ... are accepted and ignored";

/// Whether sendmail option letter `flag` takes a value (attached, `-faddr`, or the next argument).
fn takes_value(flag: char) -> bool {
    matches!(
        flag,
        'A' | 'B'
            | 'C'
            | 'F'
            | 'L'
            | 'N'
            | 'O'
            | 'R'
            | 'V'
            | 'X'
            | 'b'
            | 'e'
            | 'f'
            | 'h'
            | 'o'
            | 'p'
            | 'r'
    )
}

/// Parses sendmail's command line (`args` without the program name).
pub(crate) fn parse_args(args: &[OsString]) -> Result<Request, SendmailError> {
    let args: Vec<&str> = args
        .iter()
        .map(|a| {
            a.to_str()
                .ok_or_else(|| SendmailError::Usage(format!("argument {a:?} is not valid UTF-8")))
        })
        .collect::<Result<_, _>>()?;
    let mut inv = Invocation {
        dot_ends_input: true,
        ..Invocation::default()
    };
    let mut i = 0;
    while let Some(&arg) = args.get(i) {
        i += 1;
        if arg == "--" {
            break;
        }
        if arg == "--help" {
            return Ok(Request::Help);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            inv.config = Some(PathBuf::from(path));
            continue;
        }
        if arg == "--config" {
            let path = args
                .get(i)
                .ok_or_else(|| SendmailError::Usage("--config needs a file".into()))?;
            inv.config = Some(PathBuf::from(path));
            i += 1;
            continue;
        }
        if arg.starts_with("--") {
            return Err(SendmailError::Usage(format!("unknown option {arg}")));
        }
        let Some(letters) = arg.strip_prefix('-').filter(|l| !l.is_empty()) else {
            i -= 1;
            break;
        };
        if letters.starts_with('q') {
            return Err(unsupported(
                arg,
                "the relay retries on its own schedule; `postrider queue retry --all` makes everything due",
            ));
        }
        for (pos, flag) in letters.char_indices() {
            if takes_value(flag) {
                let attached = &letters[pos + flag.len_utf8()..];
                let value = if attached.is_empty() {
                    let v = args.get(i).ok_or_else(|| {
                        SendmailError::Usage(format!("option -{flag} needs a value"))
                    })?;
                    i += 1;
                    *v
                } else {
                    attached
                };
                apply_valued_option(&mut inv, flag, value)?;
                break;
            }
            apply_flag(&mut inv, flag)?;
        }
    }
    inv.recipients = args[i.min(args.len())..]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    Ok(Request::Send(inv))
}

/// A mode of sendmail this command does not offer, with what to do instead.
fn unsupported(option: &str, instead: &str) -> SendmailError {
    SendmailError::Usage(format!("{option} is not supported: {instead}"))
}

/// Applies an option letter that takes no value.
fn apply_flag(inv: &mut Invocation, flag: char) -> Result<(), SendmailError> {
    match flag {
        't' => inv.recipients_from_headers = true,
        'i' => inv.dot_ends_input = false,
        'v' => inv.verbose = true,
        'G' | 'U' | 'c' | 'm' | 'n' | 'x' => inv.ignored.push(format!("-{flag}")),
        'I' => return Err(unsupported("-I", "Postrider has no aliases database")),
        _ => {
            return Err(SendmailError::Usage(format!(
                "unknown option -{flag}\n{USAGE}"
            )));
        }
    }
    Ok(())
}

/// Applies an option letter with its value.
fn apply_valued_option(inv: &mut Invocation, flag: char, value: &str) -> Result<(), SendmailError> {
    match flag {
        'f' | 'r' => inv.sender = Some(value.to_owned()),
        'F' => inv.full_name = Some(value.to_owned()),
        'C' => inv.config = Some(PathBuf::from(value)),
        'o' if value == "i" => inv.dot_ends_input = false,
        'b' => match value {
            "m" => {}
            "s" => {
                return Err(unsupported(
                    "-bs",
                    "speak SMTP to the relay's submission port (smtp.listen) instead",
                ));
            }
            "p" => return Err(unsupported("-bp", "use `postrider queue list`")),
            "d" => return Err(unsupported("-bd", "use `postrider serve`")),
            "i" => return Err(unsupported("-bi", "Postrider has no aliases database")),
            _ => return Err(SendmailError::Usage(format!("unsupported mode -b{value}"))),
        },
        _ => inv.ignored.push(format!("-{flag}{value}")),
    }
    Ok(())
}

/// Reads the message from `input`: LF or CRLF line ends become CRLF, a leading mbox `From `
/// line is dropped, and unless `dot_ends_input` is false a line holding a single `.` ends it.
/// More than `limit` bytes of input is [`SendmailError::Data`].
pub(crate) fn read_message(
    input: impl BufRead,
    dot_ends_input: bool,
    limit: u64,
) -> Result<Vec<u8>, SendmailError> {
    let too_large = || {
        SendmailError::Data(format!(
            "message too large: the relay accepts {limit} bytes"
        ))
    };
    let mut input = input.take(limit.saturating_add(1));
    let mut message = Vec::new();
    let mut line = Vec::new();
    let mut first = true;
    loop {
        line.clear();
        let read = input
            .read_until(b'\n', &mut line)
            .map_err(|e| SendmailError::Input(format!("cannot read the message: {e}")))?;
        if read == 0 {
            break;
        }
        if input.limit() == 0 {
            return Err(too_large());
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if dot_ends_input && text == b"." {
            break;
        }
        if std::mem::take(&mut first) && text.starts_with(b"From ") {
            continue;
        }
        message.extend_from_slice(text);
        message.extend_from_slice(b"\r\n");
    }
    if message.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(message)
}

/// Who is sending and the relay settings applied before connecting.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    /// The calling user's login name, for the default envelope sender and `From:`.
    pub(crate) user: String,
    /// The relay's host name: the domain of unqualified addresses and of new `Message-ID:`s.
    pub(crate) hostname: String,
    /// The relay's `smtp.limits.max_recipients`: more is refused here, as the relay would
    /// answer the extra ones with a 4xx again and again.
    pub(crate) max_recipients: usize,
}

/// A message ready for submission.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// Envelope sender; `None` is the null reverse-path `<>`.
    pub(crate) sender: Option<SmtpAddress>,
    /// Envelope recipients, without duplicates, in the order given.
    pub(crate) recipients: Vec<SmtpAddress>,
    /// The content to send (CRLF line ends, completed headers, no `Bcc:`).
    pub(crate) content: Vec<u8>,
}

/// Appends `@hostname` to an address without a domain, as sendmail does for local users.
fn qualify(address: &str, hostname: &str) -> String {
    if address.contains('@') {
        address.to_owned()
    } else {
        format!("{address}@{hostname}")
    }
}

/// Parses one address for the envelope, qualifying a bare local part.
fn envelope_address(address: &str, hostname: &str) -> Result<SmtpAddress, String> {
    let qualified = qualify(address.trim(), hostname);
    qualified
        .parse::<SmtpAddress>()
        .map_err(|e| format!("invalid address {address:?}: {e}"))
}

/// The address of one list entry. A lone word (`root`, as cron writes it) is read by the
/// parser as a display name without address; like sendmail, take it as a local user.
fn entry_address<'a>(entry: &'a mail_parser::Addr<'_>) -> Option<&'a str> {
    entry.address().or_else(|| {
        entry
            .name()
            .map(str::trim)
            .filter(|n| !n.is_empty() && !n.contains(char::is_whitespace))
    })
}

/// The addresses of an address-list header value (groups flattened).
fn header_addresses(value: &HeaderValue<'_>) -> Vec<String> {
    value
        .as_address()
        .map(|list| {
            list.iter()
                .filter_map(entry_address)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The addresses of a recipient argument, read like an address-list header (`a@x, B <b@y>`).
fn argument_addresses(argument: &str) -> Result<Vec<String>, SendmailError> {
    if argument.contains(['\r', '\n']) {
        return Err(SendmailError::NoUser(format!(
            "invalid recipient {argument:?}: line break in the address"
        )));
    }
    let line = format!("{argument}\r\n");
    let value = mail_parser::parsers::MessageStream::new(line.as_bytes()).parse_address();
    let addresses = header_addresses(&value);
    if addresses.is_empty() {
        return Err(SendmailError::NoUser(format!(
            "invalid recipient {argument:?}: no address found"
        )));
    }
    Ok(addresses)
}

/// The envelope sender: `-f` when given (`""`/`<>` is the null sender; `Name <a@b>` gives
/// `a@b`), else `user@hostname`.
fn envelope_sender(
    given: Option<&str>,
    ctx: &Context,
) -> Result<Option<SmtpAddress>, SendmailError> {
    let raw = match given.map(str::trim) {
        Some("" | "<>") => return Ok(None),
        Some(s) => argument_addresses(s)
            .ok()
            .and_then(|list| list.into_iter().next())
            .ok_or_else(|| SendmailError::Usage(format!("sender: no address in {s:?}")))?,
        None => ctx.user.clone(),
    };
    envelope_address(&raw, &ctx.hostname)
        .map(Some)
        .map_err(|e| SendmailError::Usage(format!("sender: {e}")))
}

/// The header fields to put in front of a message whose fields are named in `present`:
/// `Date:`, `Message-ID:` and `From:`, each only when missing.
fn missing_headers(
    present: &[HeaderName<'_>],
    from: &str,
    full_name: Option<&str>,
    hostname: &str,
) -> Vec<u8> {
    let mut out = Vec::new();
    if !present.contains(&HeaderName::Date) {
        out.extend_from_slice(b"Date: ");
        mail_builder::headers::date::Date::now().write_header(&mut out, 6);
    }
    if !present.contains(&HeaderName::MessageId) {
        out.extend_from_slice(b"Message-ID: ");
        mail_builder::headers::message_id::generate_message_id_header(&mut out, hostname);
        out.extend_from_slice(b"\r\n");
    }
    if !present.contains(&HeaderName::From) {
        out.extend_from_slice(b"From: ");
        mail_builder::headers::address::Address::new_address(full_name, from)
            .write_header(&mut out, 6);
    }
    out
}

/// Completes the message read from input and works out its envelope.
pub(crate) fn prepare(
    message: &[u8],
    inv: &Invocation,
    ctx: &Context,
) -> Result<Prepared, SendmailError> {
    let parsed = MessageParser::new().parse_headers(message);
    let headers = parsed.as_ref().map(|m| m.headers()).unwrap_or_default();

    let mut wanted: Vec<String> = Vec::new();
    for argument in &inv.recipients {
        wanted.extend(argument_addresses(argument)?);
    }
    if inv.recipients_from_headers {
        for h in headers {
            if matches!(h.name, HeaderName::To | HeaderName::Cc | HeaderName::Bcc) {
                wanted.extend(header_addresses(&h.value));
            }
        }
    }
    if wanted.is_empty() {
        return Err(SendmailError::Usage(if inv.recipients_from_headers {
            "no recipient addresses found in the message's To:, Cc: or Bcc:".into()
        } else {
            "no recipients: name them on the command line or use -t".into()
        }));
    }
    let mut recipients: Vec<SmtpAddress> = Vec::new();
    for address in &wanted {
        let address = envelope_address(address, &ctx.hostname).map_err(SendmailError::NoUser)?;
        if !recipients.contains(&address) {
            recipients.push(address);
        }
    }
    if recipients.len() > ctx.max_recipients {
        return Err(SendmailError::Usage(format!(
            "{} recipients: the relay accepts at most {} per message",
            recipients.len(),
            ctx.max_recipients
        )));
    }

    let sender = envelope_sender(inv.sender.as_deref(), ctx)?;
    let from = match &sender {
        Some(a) => a.to_string(),
        None => qualify(&ctx.user, &ctx.hostname),
    };
    let present: Vec<HeaderName<'_>> = headers.iter().map(|h| h.name.clone()).collect();
    let mut content = missing_headers(&present, &from, inv.full_name.as_deref(), &ctx.hostname);
    let mut copied = 0usize;
    for h in headers.iter().filter(|h| h.name == HeaderName::Bcc) {
        let (start, end) = (h.offset_field as usize, h.offset_end as usize);
        content.extend_from_slice(message.get(copied..start).unwrap_or_default());
        copied = end.max(copied);
    }
    content.extend_from_slice(message.get(copied..).unwrap_or_default());
    Ok(Prepared {
        sender,
        recipients,
        content,
    })
}

/// The address to submit to: the first `smtp.listen` address, with a wildcard address
/// (`0.0.0.0`, `::`) replaced by loopback.
fn submission_address(listen: &[SocketAddr]) -> Result<SocketAddr, SendmailError> {
    let first = listen.first().ok_or_else(|| {
        SendmailError::Config(
            "the configuration has no smtp.listen address to submit to (smtp.tls_listen is not used)"
                .into(),
        )
    })?;
    let ip = match first.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, first.port()))
}

/// One reply, as printed: code and text.
fn describe(response: &Response) -> String {
    let text: Vec<&str> = response.message().collect();
    format!("{} {}", response.code(), text.join(" "))
}

/// The queue id in the relay's final reply (`250 2.0.0 Ok: queued as <id>`).
fn queue_id(reply: &str) -> Option<&str> {
    let (_, rest) = reply.split_once("queued as ")?;
    rest.split_whitespace().next()
}

/// How a negative or failed step ended.
enum StepFailure {
    /// A 4xx reply, a broken connection, a timeout.
    Temporary(String),
    /// A 5xx reply (with its code, to tell `552` apart).
    Permanent(u16, String),
    /// A reply that cannot be understood.
    Protocol(String),
}

/// Runs one SMTP step with a time limit and classifies its failure.
async fn step(
    what: &str,
    limit: Duration,
    fut: impl Future<Output = Result<Response, lettre::transport::smtp::Error>>,
) -> Result<Response, StepFailure> {
    match tokio::time::timeout(limit, fut).await {
        Err(_) => Err(StepFailure::Temporary(format!(
            "{what}: no reply from the relay within {}s",
            limit.as_secs()
        ))),
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(match e.status() {
            Some(code) if e.is_permanent() => {
                StepFailure::Permanent(u16::from(code), format!("{what}: {e}"))
            }
            Some(_) => StepFailure::Temporary(format!("{what}: {e}")),
            None if e.is_response() => StepFailure::Protocol(format!("{what}: {e}")),
            None => StepFailure::Temporary(format!("{what}: {e}")),
        }),
    }
}

/// What a submission achieved.
#[derive(Debug)]
pub(crate) struct Submitted {
    /// The relay's queue id, when its reply named one.
    pub(crate) queue_id: Option<String>,
    /// One line per command and reply, for `-v`.
    pub(crate) transcript: Vec<String>,
    /// Recipients refused with a 5xx reply, with that reply (the others were queued).
    pub(crate) refused: Vec<String>,
}

/// Maps a failed step outside RCPT: 4xx → retry later, 5xx `552` → data error, 5xx → `permanent`.
fn outside_rcpt(failure: StepFailure, permanent: fn(String) -> SendmailError) -> SendmailError {
    match failure {
        StepFailure::Temporary(m) => SendmailError::TempFail(m),
        StepFailure::Permanent(552, m) => SendmailError::Data(m),
        StepFailure::Permanent(_, m) => permanent(m),
        StepFailure::Protocol(m) => SendmailError::Protocol(m),
    }
}

/// Submits `message` to the relay at `relay` over SMTP, saying `EHLO helo`.
///
/// Nothing is queued unless every recipient was accepted or refused for good: a 4xx for any
/// recipient resets the transaction, so that retrying later cannot duplicate the message.
pub(crate) async fn submit(
    relay: SocketAddr,
    helo: &str,
    message: &Prepared,
) -> Result<Submitted, (SendmailError, Vec<String>)> {
    let mut transcript = vec![format!("connecting to {relay}")];
    let client_id = ClientId::Domain(helo.to_owned());
    let connect =
        AsyncSmtpConnection::connect_tokio1(relay, Some(CONNECT_TIMEOUT), &client_id, None, None);
    let mut conn = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) if e.is_permanent() => {
            let m = format!("the relay at {relay} refused the session: {e}");
            return Err((SendmailError::Unavailable(m), transcript));
        }
        Ok(Err(e)) => {
            let m = format!("cannot submit to the relay at {relay}: {e}");
            return Err((SendmailError::TempFail(m), transcript));
        }
        Err(_) => {
            let m = format!("the relay at {relay} did not answer within {CONNECT_TIMEOUT:?}");
            return Err((SendmailError::TempFail(m), transcript));
        }
    };
    let result = transaction(&mut conn, message, &mut transcript).await;
    if result.is_err() {
        let _ = tokio::time::timeout(COMMAND_TIMEOUT, conn.command(Rset)).await;
    }
    let _ = tokio::time::timeout(COMMAND_TIMEOUT, conn.command(Quit)).await;
    match result {
        Ok((queue_id, refused)) => Ok(Submitted {
            queue_id,
            transcript,
            refused,
        }),
        Err(e) => Err((e, transcript)),
    }
}

/// MAIL, RCPTs, DATA and the content on an open session; returns the queue id and the
/// recipients refused for good.
async fn transaction(
    conn: &mut AsyncSmtpConnection,
    message: &Prepared,
    transcript: &mut Vec<String>,
) -> Result<(Option<String>, Vec<String>), SendmailError> {
    let mut params = vec![MailParameter::Size(message.content.len())];
    if !message.content.is_ascii() && conn.server_info().supports_feature(Extension::EightBitMime) {
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    let non_ascii_addresses = message
        .sender
        .iter()
        .chain(&message.recipients)
        .any(|a: &SmtpAddress| !AsRef::<str>::as_ref(a).is_ascii());
    if non_ascii_addresses && conn.server_info().supports_feature(Extension::SmtpUtfEight) {
        params.push(MailParameter::SmtpUtfEight);
    }
    let mail = Mail::new(message.sender.clone(), params);
    let mail_line = mail.to_string();
    let reply = step("MAIL FROM", COMMAND_TIMEOUT, conn.command(mail)).await;
    log_step(transcript, &mail_line, &reply);
    reply.map_err(|f| outside_rcpt(f, SendmailError::Unavailable))?;

    let mut accepted = 0usize;
    let mut refused = Vec::new();
    for rcpt in &message.recipients {
        let command = Rcpt::new(rcpt.clone(), Vec::new());
        let line = command.to_string();
        let reply = step("RCPT TO", COMMAND_TIMEOUT, conn.command(command)).await;
        log_step(transcript, &line, &reply);
        match reply {
            Ok(_) => accepted += 1,
            Err(StepFailure::Permanent(_, m)) => refused.push(format!("<{rcpt}>: {m}")),
            Err(StepFailure::Temporary(m)) => return Err(SendmailError::TempFail(m)),
            Err(StepFailure::Protocol(m)) => return Err(SendmailError::Protocol(m)),
        }
    }
    if accepted == 0 {
        return Err(SendmailError::NoUser(format!(
            "every recipient was refused, nothing was sent:\n{}",
            refused.join("\n")
        )));
    }

    let reply = step("DATA", COMMAND_TIMEOUT, conn.command(Data)).await;
    log_step(transcript, "DATA", &reply);
    reply.map_err(|f| outside_rcpt(f, SendmailError::Data))?;
    // lettre ends the data with CRLF.CRLF itself: without this, one empty line would be added.
    let content = message
        .content
        .strip_suffix(b"\r\n")
        .unwrap_or(&message.content);
    let reply = step("end of data", DATA_TIMEOUT, conn.message(content)).await;
    log_step(
        transcript,
        &format!("({} bytes of message)", message.content.len()),
        &reply,
    );
    let reply = reply.map_err(|f| outside_rcpt(f, SendmailError::Data))?;
    let id = queue_id(&describe(&reply)).map(str::to_owned);
    Ok((id, refused))
}

/// Records a command and its outcome in the `-v` transcript.
fn log_step(transcript: &mut Vec<String>, command: &str, reply: &Result<Response, StepFailure>) {
    transcript.push(format!(">>> {}", command.trim_end()));
    transcript.push(match reply {
        Ok(r) => format!("<<< {}", describe(r)),
        Err(
            StepFailure::Temporary(m) | StepFailure::Permanent(_, m) | StepFailure::Protocol(m),
        ) => {
            format!("<<< {m}")
        }
    });
}

/// The configuration file to read: `-C`/`--config`, else `POSTRIDER_CONFIG`, else the system
/// file when it exists, else none (the embedded defaults).
fn config_path(given: Option<&Path>) -> Option<PathBuf> {
    given
        .map(Path::to_owned)
        .or_else(|| std::env::var_os("POSTRIDER_CONFIG").map(PathBuf::from))
        .or_else(|| {
            let system = PathBuf::from(SYSTEM_CONFIG);
            system.exists().then_some(system)
        })
}

/// The calling user's login name: the password database entry of the real user id, else
/// `LOGNAME` or `USER` from the environment.
fn login_name() -> Result<String, SendmailError> {
    whoami::username()
        .ok()
        .or_else(|| std::env::var("LOGNAME").ok())
        .or_else(|| std::env::var("USER").ok())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| SendmailError::Os("cannot find the login name of the calling user".into()))
}

/// Runs a parsed invocation to its end.
fn send(inv: &Invocation) -> Result<Submitted, SendmailError> {
    let path = config_path(inv.config.as_deref());
    let config = Config::load(path.as_deref()).map_err(|e| SendmailError::Config(e.to_string()))?;
    let ctx = Context {
        user: login_name()?,
        hostname: config.hostname.clone(),
        max_recipients: config.raw.smtp.limits.max_recipients,
    };
    let relay = submission_address(&config.raw.smtp.listen)?;
    let limit = config.raw.smtp.limits.max_message_size.0;
    let stdin = std::io::stdin();
    let message = read_message(stdin.lock(), inv.dot_ends_input, limit)?;
    let prepared = prepare(&message, inv, &ctx)?;
    if prepared.content.len() as u64 > limit {
        return Err(SendmailError::Data(format!(
            "message too large: the relay accepts {limit} bytes"
        )));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SendmailError::Os(format!("cannot start the async runtime: {e}")))?;
    let outcome = runtime.block_on(submit(relay, &config.hostname, &prepared));
    match outcome {
        Ok(done) => Ok(done),
        Err((e, transcript)) => {
            if inv.verbose {
                print_transcript(&transcript);
            }
            Err(e)
        }
    }
}

/// Prints the `-v` transcript on standard output.
fn print_transcript(transcript: &[String]) {
    for line in transcript {
        println!("{line}");
    }
}

/// Whether the program was started under the name `sendmail` (e.g. through a symlink
/// `/usr/sbin/sendmail -> postrider`), judging by the file name in `argv[0]`.
pub(crate) fn invoked_as_sendmail(argv0: &std::ffi::OsStr) -> bool {
    Path::new(argv0).file_name() == Some(std::ffi::OsStr::new("sendmail"))
}

/// Entry point for `postrider sendmail ARGS` and for the binary run as `sendmail`: `program`
/// prefixes messages, `args` excludes it. Returns the `sysexits.h` status.
pub(crate) fn main(program: &str, args: &[OsString]) -> ExitCode {
    let inv = match parse_args(args) {
        Ok(Request::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Request::Send(inv)) => inv,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::from(e.exit_status());
        }
    };
    if inv.verbose && !inv.ignored.is_empty() {
        println!("ignored options: {}", inv.ignored.join(" "));
    }
    match send(&inv) {
        Ok(done) => {
            if inv.verbose {
                print_transcript(&done.transcript);
                if let Some(id) = &done.queue_id {
                    println!("queued as {id}");
                }
            }
            if done.refused.is_empty() {
                return ExitCode::SUCCESS;
            }
            let queued = done
                .queue_id
                .map(|id| format!(" (queued as {id})"))
                .unwrap_or_default();
            eprintln!(
                "{program}: sent to the accepted recipients{queued}, but these were refused:\n{}",
                done.refused.join("\n")
            );
            ExitCode::from(sysexits::NOUSER)
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::from(e.exit_status())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn invocation(list: &[&str]) -> Invocation {
        match parse_args(&args(list)) {
            Ok(Request::Send(inv)) => inv,
            other => panic!("{list:?}: {other:?}"),
        }
    }

    fn me() -> Context {
        Context {
            user: "www-data".into(),
            hostname: "relay.example.com".into(),
            max_recipients: 10,
        }
    }

    #[test]
    fn php_and_cron_command_lines_parse() {
        let inv = invocation(&["-t", "-i", "-fapp@example.com"]);
        assert!(inv.recipients_from_headers && !inv.dot_ends_input);
        assert_eq!(inv.sender.as_deref(), Some("app@example.com"));
        assert!(inv.recipients.is_empty());

        let inv = invocation(&["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"]);
        assert_eq!(inv.full_name.as_deref(), Some("CronDaemon"));
        assert!(!inv.dot_ends_input);
        assert_eq!(inv.recipients, vec!["root"]);
        assert_eq!(inv.ignored, vec!["-B8BITMIME", "-oem"]);
    }

    #[test]
    fn values_may_be_attached_or_separate_and_flags_grouped() {
        let inv = invocation(&[
            "-ti",
            "-f",
            "a@b.c",
            "-F",
            "Full Name",
            "-oi",
            "-r",
            "x@y.z",
        ]);
        assert!(inv.recipients_from_headers && !inv.dot_ends_input);
        assert_eq!(
            inv.sender.as_deref(),
            Some("x@y.z"),
            "the last of -f/-r wins"
        );
        assert_eq!(inv.full_name.as_deref(), Some("Full Name"));
        let inv = invocation(&[
            "-bm", "-odi", "-N", "never", "-X", "/tmp/log", "-v", "--", "-x@y",
        ]);
        assert!(inv.verbose && inv.dot_ends_input);
        assert_eq!(inv.recipients, vec!["-x@y"]);
        let inv = invocation(&["--config", "/etc/p.toml", "a@b.c", "d@e.f"]);
        assert_eq!(inv.config, Some(PathBuf::from("/etc/p.toml")));
        assert_eq!(inv.recipients, vec!["a@b.c", "d@e.f"]);
        assert_eq!(
            invocation(&["-C/x.toml"]).config,
            Some(PathBuf::from("/x.toml"))
        );
    }

    #[test]
    fn unknown_and_unsupported_options_are_usage_errors() {
        for bad in [
            &["-Z"][..],
            &["-bs"],
            &["-bp"],
            &["-q"],
            &["-q1h"],
            &["-f"],
            &["--nope"],
        ] {
            let err = parse_args(&args(bad)).expect_err("usage error");
            assert_eq!(err.exit_status(), 64, "{bad:?}: {err}");
        }
        assert_eq!(parse_args(&args(&["--help"])).ok(), Some(Request::Help));
    }

    #[test]
    fn input_ends_at_a_lone_dot_unless_i_and_gets_crlf() {
        let input = b"From sender Mon Jan  1 00:00:00 2026\nSubject: s\n\nline\r\n.\nafter\nlast";
        let all = read_message(&input[..], false, 1000).expect("read");
        assert_eq!(all, b"Subject: s\r\n\r\nline\r\n.\r\nafter\r\nlast\r\n");
        let cut = read_message(&input[..], true, 1000).expect("read");
        assert_eq!(cut, b"Subject: s\r\n\r\nline\r\n");
    }

    #[test]
    fn input_beyond_the_limit_is_a_data_error() {
        let input = [b'x'; 101];
        let err = read_message(&input[..], false, 100).expect_err("too large");
        assert_eq!(err.exit_status(), 65);
        // LF → CRLF growth counts too.
        let err = read_message(&b"\n\n\n\n\n\n"[..], false, 10).expect_err("too large");
        assert_eq!(err.exit_status(), 65);
        assert!(read_message(&[b'x'; 100][..], false, 102).is_ok());
    }

    #[test]
    fn headers_give_recipients_bcc_is_removed_and_missing_headers_added() {
        let inv = Invocation {
            recipients_from_headers: true,
            dot_ends_input: true,
            full_name: Some("Cron Daemon".into()),
            recipients: vec!["extra, Ann <ann@x.test>".into(), "root".into()],
            ..Invocation::default()
        };
        let message = b"To: undisclosed-recipients: a@x.test, b@x.test;\r\nBcc: c@x.test,\r\n d@x.test\r\nCc: \"Doe, J\" <a@x.test>\r\nSubject: s\r\n\r\nBcc: in the body stays\r\n";
        let p = prepare(message, &inv, &me()).expect("prepare");
        let rcpts: Vec<String> = p.recipients.iter().map(ToString::to_string).collect();
        assert_eq!(
            rcpts,
            [
                "extra@relay.example.com",
                "ann@x.test",
                "root@relay.example.com",
                "a@x.test",
                "b@x.test",
                "c@x.test",
                "d@x.test"
            ]
        );
        assert_eq!(
            p.sender.map(|s| s.to_string()).as_deref(),
            Some("www-data@relay.example.com")
        );
        let content = String::from_utf8(p.content).expect("utf-8");
        let (added, rest) = content.split_once("To: ").expect("original headers follow");
        assert!(added.starts_with("Date: "), "{content}");
        assert!(added.contains("\r\nMessage-ID: <"), "{content}");
        assert!(
            added.ends_with("\r\nFrom: \"Cron Daemon\" <www-data@relay.example.com>\r\n"),
            "{content}"
        );
        assert_eq!(
            rest,
            "undisclosed-recipients: a@x.test, b@x.test;\r\nCc: \"Doe, J\" <a@x.test>\r\nSubject: s\r\n\r\nBcc: in the body stays\r\n"
        );
    }

    #[test]
    fn present_headers_are_kept_and_sender_forms_understood() {
        let inv = Invocation {
            sender: Some("<>".into()),
            recipients: vec!["a@x.test".into()],
            ..Invocation::default()
        };
        let message = b"Date: Mon, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <1@x>\r\nFrom: me@x.test\r\n\r\nbody\r\n";
        let p = prepare(message, &inv, &me()).expect("prepare");
        assert!(p.sender.is_none(), "null sender");
        assert_eq!(p.content, message);

        let inv = Invocation {
            sender: Some("<app@x.test>".into()),
            ..inv
        };
        let p = prepare(b"\r\nbody\r\n", &inv, &me()).expect("prepare");
        assert_eq!(
            p.sender.map(|s| s.to_string()).as_deref(),
            Some("app@x.test")
        );
        let inv = Invocation {
            sender: Some("App Server <app@x.test>".into()),
            ..inv
        };
        let p = prepare(b"\r\nbody\r\n", &inv, &me()).expect("prepare");
        assert_eq!(
            p.sender.map(|s| s.to_string()).as_deref(),
            Some("app@x.test")
        );
    }

    #[test]
    fn no_recipients_is_a_usage_error_and_a_bad_one_no_user() {
        let mut inv = Invocation {
            recipients_from_headers: true,
            ..Invocation::default()
        };
        let err = prepare(b"Subject: s\r\n\r\nx\r\n", &inv, &me()).expect_err("none");
        assert_eq!(err.exit_status(), 64);
        inv.recipients = vec!["a@x.test, b@x.test, c@x.test".into()];
        let few = Context {
            max_recipients: 2,
            ..me()
        };
        let err = prepare(b"\r\nx\r\n", &inv, &few).expect_err("too many");
        assert_eq!(err.exit_status(), 64, "{err}");
        inv.recipients = vec!["not an address@@".into()];
        let err = prepare(b"Subject: s\r\n\r\nx\r\n", &inv, &me()).expect_err("bad");
        assert_eq!(err.exit_status(), 67, "{err}");
    }

    #[test]
    fn wildcard_listen_addresses_are_reached_on_loopback() {
        let any: SocketAddr = "0.0.0.0:2525".parse().expect("addr");
        let any6: SocketAddr = "[::]:2526".parse().expect("addr");
        let one: SocketAddr = "127.0.0.9:25".parse().expect("addr");
        assert_eq!(
            submission_address(&[any]).ok(),
            "127.0.0.1:2525".parse().ok()
        );
        assert_eq!(submission_address(&[any6]).ok(), "[::1]:2526".parse().ok());
        assert_eq!(submission_address(&[one, any]).ok(), Some(one));
        assert_eq!(
            submission_address(&[]).map_err(|e| e.exit_status()).err(),
            Some(78)
        );
    }

    #[test]
    fn the_queue_id_is_read_from_the_final_reply() {
        assert_eq!(
            queue_id("250 2.0.0 Ok: queued as 00000000000004d2"),
            Some("00000000000004d2")
        );
        assert_eq!(queue_id("250 Ok"), None);
    }

    #[test]
    fn the_program_name_sendmail_selects_sendmail_mode() {
        assert!(invoked_as_sendmail("/usr/sbin/sendmail".as_ref()));
        assert!(invoked_as_sendmail("sendmail".as_ref()));
        assert!(!invoked_as_sendmail("/usr/local/bin/postrider".as_ref()));
        assert!(!invoked_as_sendmail("sendmail.postfix".as_ref()));
    }
}
