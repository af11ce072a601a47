//! RFC 3464 delivery status notifications, rendered to bytes.
//!
//! # Brief overview
//! The delivery worker describes what happened in a [`DsnReport`] (one per notification, listing
//! one [`DsnRecipient`] per reported recipient) and [`render_dsn`] turns it into a complete
//! RFC 5322 message: a `multipart/report; report-type=delivery-status` (RFC 6522) with
//!
//! 1. a `text/plain` explanation for people,
//! 2. the `message/delivery-status` part for programs (RFC 3464 §2),
//! 3. the original: `text/rfc822-headers` (RFC 6522 §4; the default and `RET=HDRS`) or the whole
//!    message as `message/rfc822` (`RET=FULL`).
//!
//! Rendering is pure: the date, the `Message-ID` and the reporting host name are inputs, so the
//! output is byte-for-byte reproducible (golden files under `crates/core/tests/dsn/`).
//!
//! The MIME is written by hand rather than with `mail-builder` because every header of the report
//! parts is fixed by RFC 3464/6522 and exact bytes are what the golden tests pin down; the result
//! is checked to parse with `mail-parser`.
//!
//! Text that came from a remote peer (reply text, MX host names) is made into one line of
//! printable ASCII before it is written anywhere, so a hostile reply cannot inject header lines
//! or MIME boundaries.

use std::fmt::Write as _;

use crate::address::Address;
use crate::envelope::DsnRet;
use crate::id::MessageId;
use crate::message::RecipientStatus;
use crate::reply::{EnhancedStatus, SmtpReply};
use crate::time::Timestamp;

/// Longest peer-supplied text (reply, host name) copied into a report line, in octets; keeps every
/// line well below the 998-octet limit of RFC 5322 §2.1.1.
const MAX_PEER_TEXT: usize = 900;

/// RFC 3464 §2.3.3 `Action`: what happened to one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DsnAction {
    /// Delivery failed permanently (or the message expired); no further attempts.
    Failed,
    /// Not delivered yet; still being retried.
    Delayed,
    /// Delivered to the recipient's server.
    Delivered,
}

impl DsnAction {
    /// The RFC 3464 keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
            DsnAction::Delivered => "delivered",
        }
    }

    /// How bad it is, for picking the report's subject: failed > delayed > delivered.
    fn severity(self) -> u8 {
        match self {
            DsnAction::Failed => 2,
            DsnAction::Delayed => 1,
            DsnAction::Delivered => 0,
        }
    }
}

/// What a report says about one recipient (one per-recipient group of RFC 3464 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DsnRecipient<'a> {
    /// The envelope recipient (`Final-Recipient`).
    pub address: &'a Address,
    /// RFC 3461 `ORCPT` as stored (`addr-type;address`); written as `Original-Recipient`.
    pub original_recipient: Option<&'a str>,
    /// What happened.
    pub action: DsnAction,
    /// The RFC 3463 status (`Status`), e.g. `5.1.1`.
    pub status: EnhancedStatus,
    /// The server that gave `reply`, when one was reached (`Remote-MTA`).
    pub remote_mta: Option<&'a str>,
    /// The last reply (`Diagnostic-Code`). A reply from `remote_mta` is typed `smtp`; without a
    /// remote MTA the reply was made up by this relay (DNS, connection failures) and is typed
    /// `X-Postrider`.
    pub reply: Option<&'a SmtpReply>,
    /// When the last attempt for this recipient finished (`Last-Attempt-Date`).
    pub last_attempt_at: Option<Timestamp>,
    /// For [`DsnAction::Delayed`]: when retries stop (`Will-Retry-Until`).
    pub will_retry_until: Option<Timestamp>,
}

/// The `Status` reported for a recipient that was not attempted because its address is on the
/// suppression list: `5.7.1`, "delivery not authorized, message refused", which RFC 3463 §3.8
/// gives for per-recipient filtering. (`5.1.1` would claim the mailbox does not exist, which
/// a suppression added by an operator does not say.)
pub const SUPPRESSED_STATUS: EnhancedStatus = EnhancedStatus::new(5, 7, 1);

/// The reply reported for a suppressed recipient. No server was asked, so it is written as
/// `Diagnostic-Code: X-Postrider; 550 5.7.1 recipient address is on the suppression list`.
pub fn suppressed_reply() -> SmtpReply {
    SmtpReply::synthetic(
        550,
        SUPPRESSED_STATUS,
        "recipient address is on the suppression list",
    )
}

impl<'a> DsnRecipient<'a> {
    /// The failure report of recipient `r`, which was never attempted because its address is on
    /// the suppression list: `Action: failed`, [`SUPPRESSED_STATUS`], `reply` (normally
    /// [`suppressed_reply`]) as the diagnostic, no remote MTA and no attempt date.
    pub fn suppressed(r: &'a RecipientStatus, reply: &'a SmtpReply) -> Self {
        DsnRecipient {
            address: &r.request.address,
            original_recipient: r.request.orcpt.as_deref(),
            action: DsnAction::Failed,
            status: SUPPRESSED_STATUS,
            remote_mta: None,
            reply: Some(reply),
            last_attempt_at: None,
            will_retry_until: None,
        }
    }
}

/// Everything [`render_dsn`] needs; the caller supplies time and identity so rendering is pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DsnReport<'a> {
    /// This relay's host name: `MAILER-DAEMON@<it>` and `Reporting-MTA: dns; <it>`.
    pub reporting_mta: &'a str,
    /// The report's own `Message-ID`, without angle brackets (`dsn.123@relay.example`).
    pub message_id: &'a str,
    /// The report's `Date`.
    pub date: Timestamp,
    /// The envelope sender of the original message; the report goes to it.
    pub original_sender: &'a Address,
    /// The original's queue id, written as `X-Postrider-Queue-ID` and mentioned in the text.
    pub queue_id: Option<MessageId>,
    /// RFC 3461 `ENVID` of the original (`Original-Envelope-Id`).
    pub envid: Option<&'a str>,
    /// When the original arrived (`Arrival-Date`).
    pub arrival_date: Timestamp,
    /// The recipients reported on, in order; should not be empty.
    pub recipients: &'a [DsnRecipient<'a>],
    /// How much of the original to return.
    pub ret: DsnRet,
    /// The original message (CRLF line endings), as queued.
    pub original: &'a [u8],
}

/// The overall kind of a report, from its most severe recipient action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DsnKind {
    /// At least one recipient failed.
    Failure,
    /// Nothing failed, at least one recipient is delayed.
    Delay,
    /// Every recipient was delivered.
    Success,
}

impl DsnKind {
    /// The `Subject` of a report of this kind.
    pub fn subject(self) -> &'static str {
        match self {
            DsnKind::Failure => "Undelivered Mail Returned to Sender",
            DsnKind::Delay => "Delayed Mail (still being retried)",
            DsnKind::Success => "Successful Mail Delivery Report",
        }
    }
}

impl DsnReport<'_> {
    /// The report's kind: failure if any recipient failed, else delay if any is delayed, else success.
    pub fn kind(&self) -> DsnKind {
        match self.recipients.iter().map(|r| r.action.severity()).max() {
            Some(2) => DsnKind::Failure,
            Some(1) => DsnKind::Delay,
            _ => DsnKind::Success,
        }
    }
}

/// Renders `report` as a complete RFC 5322 message with CRLF line endings, ready to enqueue with
/// the null reverse-path.
pub fn render_dsn(report: &DsnReport<'_>) -> Vec<u8> {
    let kind = report.kind();
    let notification = render_notification(report, kind);
    let status = render_delivery_status(report);
    let (original_type, original): (&str, &[u8]) = match report.ret {
        DsnRet::Full => ("message/rfc822", report.original),
        DsnRet::Hdrs => ("text/rfc822-headers", header_section(report.original)),
    };
    let what = match kind {
        DsnKind::Failure => "Undelivered Message",
        DsnKind::Delay => "Delayed Message",
        DsnKind::Success => "Delivered Message",
    };
    let original_desc = match report.ret {
        DsnRet::Full => what.to_owned(),
        DsnRet::Hdrs => format!("{what} Headers"),
    };
    let boundary = pick_boundary(
        report.message_id,
        &[notification.as_bytes(), status.as_bytes(), original],
    );

    let mut out = Vec::with_capacity(notification.len() + status.len() + original.len() + 1024);
    let mut head = String::with_capacity(512);
    let host = one_line(report.reporting_mta);
    let _ = write!(
        head,
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n"
    );
    let _ = write!(head, "To: <{}>\r\n", report.original_sender);
    let _ = write!(head, "Subject: {}\r\n", kind.subject());
    let _ = write!(head, "Date: {}\r\n", report.date.to_rfc5322());
    let _ = write!(head, "Message-ID: <{}>\r\n", one_line(report.message_id));
    head.push_str("Auto-Submitted: auto-replied\r\n");
    head.push_str("MIME-Version: 1.0\r\n");
    let _ = write!(
        head,
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n"
    );
    head.push_str("\r\nThis is a MIME-encapsulated message.\r\n");
    out.extend_from_slice(head.as_bytes());

    let text_cte = if notification.is_ascii() {
        "7bit"
    } else {
        "8bit"
    };
    let part_head = format!(
        "\r\n--{boundary}\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {text_cte}\r\n\r\n"
    );
    out.extend_from_slice(part_head.as_bytes());
    out.extend_from_slice(notification.as_bytes());

    let part_head = format!(
        "\r\n--{boundary}\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n"
    );
    out.extend_from_slice(part_head.as_bytes());
    out.extend_from_slice(status.as_bytes());

    let original_cte = if original.is_ascii() { "7bit" } else { "8bit" };
    let part_head = format!(
        "\r\n--{boundary}\r\nContent-Description: {original_desc}\r\nContent-Type: {original_type}\r\nContent-Transfer-Encoding: {original_cte}\r\n\r\n"
    );
    out.extend_from_slice(part_head.as_bytes());
    out.extend_from_slice(original);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// The human-readable first part.
fn render_notification(report: &DsnReport<'_>, kind: DsnKind) -> String {
    let mut t = String::with_capacity(1024);
    let host = one_line(report.reporting_mta);
    let _ = write!(t, "This is the mail delivery system at {host}.\r\n\r\n");
    let intro = match kind {
        DsnKind::Failure => {
            "Your message could not be delivered to one or more recipients.\r\n\
             These failures are permanent: the message will not be sent to them again.\r\n"
        }
        DsnKind::Delay => {
            "Your message has not been delivered yet to one or more recipients.\r\n\
             Delivery is still being retried; you do not need to send it again.\r\n"
        }
        DsnKind::Success => "Your message was delivered to the recipients listed below.\r\n",
    };
    t.push_str(intro);
    if let Some(id) = report.queue_id {
        let _ = write!(t, "Queue id of your message: {id}\r\n");
    }
    for r in report.recipients {
        let _ = write!(t, "\r\n<{}>: ", r.address);
        match r.action {
            DsnAction::Failed => t.push_str("delivery failed"),
            DsnAction::Delayed => t.push_str("delivery delayed"),
            DsnAction::Delivered => t.push_str("delivered"),
        }
        let _ = write!(t, " (status {})\r\n", r.status);
        if let Some(mta) = r.remote_mta {
            let _ = write!(t, "    Server: {}\r\n", one_line(mta));
        }
        if let Some(reply) = r.reply {
            let label = if r.remote_mta.is_some() {
                "The server replied"
            } else {
                "Reason"
            };
            let _ = write!(t, "    {label}: {}\r\n", one_line(&reply.to_string()));
        }
        if let (DsnAction::Delayed, Some(until)) = (r.action, r.will_retry_until) {
            let _ = write!(t, "    Retrying until: {}\r\n", until.to_rfc5322());
        }
    }
    let tail = match report.ret {
        DsnRet::Full => "\r\nYour original message is attached.\r\n",
        DsnRet::Hdrs => "\r\nThe headers of your original message are attached.\r\n",
    };
    t.push_str(tail);
    t
}

/// The `message/delivery-status` body (RFC 3464 §2.1): per-message fields, then one group per
/// recipient, groups separated by blank lines.
fn render_delivery_status(report: &DsnReport<'_>) -> String {
    let mut s = String::with_capacity(512);
    let _ = write!(
        s,
        "Reporting-MTA: dns; {}\r\n",
        one_line(report.reporting_mta)
    );
    if let Some(id) = report.queue_id {
        let _ = write!(s, "X-Postrider-Queue-ID: {id}\r\n");
    }
    if let Some(envid) = report.envid {
        let _ = write!(s, "Original-Envelope-Id: {}\r\n", one_line(envid));
    }
    let _ = write!(s, "Arrival-Date: {}\r\n", report.arrival_date.to_rfc5322());
    for r in report.recipients {
        s.push_str("\r\n");
        if let Some(orcpt) = r.original_recipient {
            let _ = write!(s, "Original-Recipient: {}\r\n", typed_address(orcpt));
        }
        let _ = write!(s, "Final-Recipient: {}\r\n", final_recipient(r.address));
        let _ = write!(s, "Action: {}\r\n", r.action.as_str());
        let _ = write!(s, "Status: {}\r\n", r.status);
        if let Some(mta) = r.remote_mta {
            let _ = write!(s, "Remote-MTA: dns; {}\r\n", one_line(mta));
        }
        if let Some(reply) = r.reply {
            let kind = if r.remote_mta.is_some() {
                "smtp"
            } else {
                "X-Postrider"
            };
            let _ = write!(
                s,
                "Diagnostic-Code: {kind}; {}\r\n",
                one_line(&reply.to_string())
            );
        }
        if let Some(at) = r.last_attempt_at {
            let _ = write!(s, "Last-Attempt-Date: {}\r\n", at.to_rfc5322());
        }
        if let (DsnAction::Delayed, Some(until)) = (r.action, r.will_retry_until) {
            let _ = write!(s, "Will-Retry-Until: {}\r\n", until.to_rfc5322());
        }
    }
    s
}

/// The header section of a message: everything up to and including the CRLF that ends the last
/// header line (the whole input if there is no body).
fn header_section(message: &[u8]) -> &[u8] {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &message[..i + 2],
        None if message.starts_with(b"\r\n") => &[],
        None => message,
    }
}

/// `Final-Recipient`: `rfc822; addr` for ASCII addresses, `utf-8; ...` with RFC 6533 `\x{HEX}`
/// escapes otherwise (a delivery-status body is ASCII).
fn final_recipient(address: &Address) -> String {
    let text = address.to_string();
    if text.is_ascii() {
        format!("rfc822; {}", one_line(&text))
    } else {
        format!("utf-8; {}", escape_utf8_addr(&text))
    }
}

/// An `ORCPT` value (`addr-type;address`) for `Original-Recipient`; an untyped value is taken as
/// `rfc822`. Non-ASCII is escaped as in RFC 6533.
fn typed_address(orcpt: &str) -> String {
    let (ty, addr) = match orcpt.split_once(';') {
        Some((ty, addr)) if !ty.trim().is_empty() => (ty.trim(), addr.trim()),
        _ => ("rfc822", orcpt.trim()),
    };
    let ty: String = ty
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(32)
        .collect();
    let ty = if ty.is_empty() {
        "rfc822".to_owned()
    } else {
        ty
    };
    format!("{ty};{}", escape_utf8_addr(addr))
}

/// Escapes non-ASCII as `\x{HEX}` (RFC 6533 §3) and drops controls.
fn escape_utf8_addr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if out.len() >= MAX_PEER_TEXT {
            break;
        }
        match c {
            c if c.is_ascii_control() => {}
            c if c.is_ascii() => out.push(c),
            c => {
                let _ = write!(out, "\\x{{{:X}}}", u32::from(c));
            }
        }
    }
    out
}

/// Makes peer text safe for a header field or report line: line breaks and tabs become spaces,
/// runs of spaces collapse, other controls and non-ASCII are dropped, and the result is trimmed
/// and cut to `MAX_PEER_TEXT` octets.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_PEER_TEXT));
    let mut pending_space = false;
    for c in text.chars() {
        if c == '\r' || c == '\n' || c == '\t' || c == ' ' {
            pending_space = !out.is_empty();
            continue;
        }
        if !c.is_ascii() || c.is_ascii_control() {
            continue;
        }
        if out.len() + 2 > MAX_PEER_TEXT {
            break;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
    }
    out
}

/// A MIME boundary derived from the report's id, lengthened until it occurs in no part.
fn pick_boundary(seed: &str, parts: &[&[u8]]) -> String {
    // FNV-1a: deterministic and dependency-free; uniqueness is checked below anyway.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut boundary = format!("=_postrider_report_{hash:016x}");
    let mut n = 0u32;
    while parts.iter().any(|p| contains(p, boundary.as_bytes())) {
        n += 1;
        boundary = format!("=_postrider_report_{hash:016x}_{n}");
    }
    boundary
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use mail_parser::{MessageParser, MimeHeaders};

    use super::*;

    const ORIGINAL: &[u8] =
        b"Received: from client.example by relay.example; Mon, 23 Nov 2026 05:00:00 +0000\r\n\
From: Alice <alice@example.com>\r\n\
To: bob@example.org\r\n\
Subject: Quarterly report\r\n\
Message-ID: <orig-1@example.com>\r\n\
\r\n\
Hello Bob,\r\n\
the report is attached.\r\n";

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    fn t(ms: u64) -> Timestamp {
        // 2026-11-23T05:00:00Z plus `ms`
        Timestamp::from_millis(1_795_410_000_000 + ms)
    }

    fn check_golden(name: &str, bytes: &[u8]) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("dsn");
        let golden = dir.join(format!("{name}.eml"));
        let failed = dir.join(format!("{name}.failed"));
        if std::env::var_os("POSTRIDER_BLESS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&golden, bytes).unwrap();
        }
        let want = std::fs::read(&golden).unwrap_or_default();
        if want != bytes {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&failed, bytes).unwrap();
            panic!(
                "{name}: output differs from {}; wrote {}",
                golden.display(),
                failed.display()
            );
        }
        let _ = std::fs::remove_file(&failed);
    }

    fn render(recipients: &[DsnRecipient<'_>], ret: DsnRet, envid: Option<&str>) -> Vec<u8> {
        let sender = addr("alice@example.com");
        render_dsn(&DsnReport {
            reporting_mta: "relay.example",
            message_id: "dsn.00000000000004d2.1@relay.example",
            date: t(3_600_000),
            original_sender: &sender,
            queue_id: Some(MessageId::from_u64(0x4d2)),
            envid,
            arrival_date: t(0),
            recipients,
            ret,
            original: ORIGINAL,
        })
    }

    #[test]
    fn golden_failure() {
        let bob = addr("bob@example.org");
        let reply = SmtpReply::new(
            550,
            "5.1.1 <bob@example.org>: no such user\r\nplease check the address",
        );
        let r = [DsnRecipient {
            address: &bob,
            original_recipient: Some("rfc822;bob@example.org"),
            action: DsnAction::Failed,
            status: reply.status(),
            remote_mta: Some("mx1.example.org"),
            reply: Some(&reply),
            last_attempt_at: Some(t(3_599_000)),
            will_retry_until: None,
        }];
        check_golden("failure", &render(&r, DsnRet::Hdrs, Some("q-123")));
    }

    #[test]
    fn suppressed_recipient_is_reported_failed_with_5_7_1() {
        let mut r = RecipientStatus::new(crate::RecipientRequest::new(addr("bob@example.org")));
        r.state = crate::RecipientState::Suppressed;
        r.request.orcpt = Some("rfc822;Bob@example.org".into());
        let reply = suppressed_reply();
        let text = String::from_utf8(render(
            &[DsnRecipient::suppressed(&r, &reply)],
            DsnRet::Hdrs,
            None,
        ))
        .unwrap();
        for line in [
            "Original-Recipient: rfc822;Bob@example.org\r\n",
            "Final-Recipient: rfc822; bob@example.org\r\nAction: failed\r\nStatus: 5.7.1\r\n",
            "Diagnostic-Code: X-Postrider; 550 5.7.1 recipient address is on the suppression list\r\n",
            "<bob@example.org>: delivery failed (status 5.7.1)\r\n",
            "Subject: Undelivered Mail Returned to Sender\r\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("Remote-MTA") && !text.contains("Last-Attempt-Date"));
    }

    #[test]
    fn golden_delay() {
        let bob = addr("bob@example.org");
        let reply = SmtpReply::new(451, "4.7.1 greylisted, try again later");
        let r = [DsnRecipient {
            address: &bob,
            original_recipient: None,
            action: DsnAction::Delayed,
            status: reply.status(),
            remote_mta: Some("mx1.example.org"),
            reply: Some(&reply),
            last_attempt_at: Some(t(3_599_000)),
            will_retry_until: Some(t(5 * 86_400_000)),
        }];
        check_golden("delay", &render(&r, DsnRet::Hdrs, None));
    }

    #[test]
    fn golden_success() {
        let bob = addr("bob@example.org");
        let reply = SmtpReply::new(250, "2.0.0 Ok: queued as 4F2A");
        let r = [DsnRecipient {
            address: &bob,
            original_recipient: None,
            action: DsnAction::Delivered,
            status: reply.status(),
            remote_mta: Some("mx1.example.org"),
            reply: Some(&reply),
            last_attempt_at: Some(t(3_599_000)),
            will_retry_until: None,
        }];
        check_golden("success", &render(&r, DsnRet::Hdrs, None));
    }

    fn mixed_recipients<'a>(
        addrs: &'a [Address; 3],
        replies: &'a [SmtpReply; 3],
    ) -> [DsnRecipient<'a>; 3] {
        [
            DsnRecipient {
                address: &addrs[0],
                original_recipient: Some("rfc822;Bob.Original@example.org"),
                action: DsnAction::Failed,
                status: replies[0].status(),
                remote_mta: Some("mx1.example.org"),
                reply: Some(&replies[0]),
                last_attempt_at: Some(t(3_599_000)),
                will_retry_until: None,
            },
            // expired: the last transient reply, kept with its 4.x.x status
            DsnRecipient {
                address: &addrs[1],
                original_recipient: None,
                action: DsnAction::Failed,
                status: replies[1].status(),
                remote_mta: Some("mx.example.net"),
                reply: Some(&replies[1]),
                last_attempt_at: Some(t(3_599_500)),
                will_retry_until: None,
            },
            // no server reached: a synthetic reply
            DsnRecipient {
                address: &addrs[2],
                original_recipient: None,
                action: DsnAction::Failed,
                status: replies[2].status(),
                remote_mta: None,
                reply: Some(&replies[2]),
                last_attempt_at: Some(t(3_599_900)),
                will_retry_until: None,
            },
        ]
    }

    fn mixed_inputs() -> ([Address; 3], [SmtpReply; 3]) {
        (
            [
                addr("bob@example.org"),
                addr("carol@example.net"),
                addr("dave@gone.example"),
            ],
            [
                SmtpReply::new(550, "5.1.1 no such user"),
                SmtpReply::new(452, "4.2.2 mailbox full"),
                SmtpReply::synthetic(
                    550,
                    EnhancedStatus::new(5, 1, 2),
                    "domain gone.example does not exist (NXDOMAIN)",
                ),
            ],
        )
    }

    #[test]
    fn golden_mixed_full() {
        let (addrs, replies) = mixed_inputs();
        let r = mixed_recipients(&addrs, &replies);
        check_golden("mixed", &render(&r, DsnRet::Full, Some("batch-7")));
    }

    #[test]
    fn parses_back_with_mail_parser() {
        let (addrs, replies) = mixed_inputs();
        let r = mixed_recipients(&addrs, &replies);
        for ret in [DsnRet::Hdrs, DsnRet::Full] {
            let bytes = render(&r, ret, Some("batch-7"));
            let msg = MessageParser::default().parse(&bytes).expect("parses");
            assert_eq!(msg.subject(), Some("Undelivered Mail Returned to Sender"));
            let from = msg.from().and_then(|f| f.first()).unwrap();
            assert_eq!(from.address(), Some("MAILER-DAEMON@relay.example"));
            assert_eq!(from.name(), Some("Mail Delivery System"));
            assert_eq!(
                msg.to().and_then(|f| f.first()).and_then(|a| a.address()),
                Some("alice@example.com")
            );
            assert_eq!(
                msg.message_id(),
                Some("dsn.00000000000004d2.1@relay.example")
            );
            assert_eq!(
                msg.header_raw("Auto-Submitted").map(str::trim),
                Some("auto-replied")
            );
            let ct = msg.content_type().unwrap();
            assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
            assert_eq!(ct.attribute("report-type"), Some("delivery-status"));

            let root = msg.root_part();
            let children = match &root.body {
                mail_parser::PartType::Multipart(ids) => ids.clone(),
                other => panic!("not multipart: {other:?}"),
            };
            assert_eq!(children.len(), 3);
            let part = |i: usize| &msg.parts[children[i] as usize];
            let types: Vec<String> = (0..3)
                .map(|i| {
                    let ct = part(i).content_type().unwrap();
                    format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
                })
                .collect();
            let third = match ret {
                DsnRet::Hdrs => "text/rfc822-headers",
                DsnRet::Full => "message/rfc822",
            };
            assert_eq!(types, vec!["text/plain", "message/delivery-status", third]);

            let text = String::from_utf8_lossy(part(0).contents());
            assert!(
                text.contains("<bob@example.org>: delivery failed (status 5.1.1)"),
                "{text}"
            );
            assert!(text.contains("550 5.1.1 no such user"), "{text}");

            let status = String::from_utf8_lossy(part(1).contents()).into_owned();
            for line in [
                "Reporting-MTA: dns; relay.example",
                "Original-Envelope-Id: batch-7",
                "Original-Recipient: rfc822;Bob.Original@example.org",
                "Final-Recipient: rfc822; bob@example.org",
                "Status: 5.1.1",
                "Remote-MTA: dns; mx1.example.org",
                "Diagnostic-Code: smtp; 550 5.1.1 no such user",
                "Final-Recipient: rfc822; carol@example.net",
                "Status: 4.2.2",
                "Diagnostic-Code: smtp; 452 4.2.2 mailbox full",
                "Final-Recipient: rfc822; dave@gone.example",
                "Diagnostic-Code: X-Postrider; 550 5.1.2 domain gone.example does not exist (NXDOMAIN)",
            ] {
                assert!(status.contains(line), "missing {line:?} in\n{status}");
            }
            assert_eq!(status.matches("Action: failed").count(), 3);
            // three recipient groups, each introduced by a blank line
            assert_eq!(status.matches("\r\n\r\n").count(), 3, "{status}");

            match ret {
                DsnRet::Hdrs => {
                    let headers = String::from_utf8_lossy(part(2).contents());
                    assert!(headers.contains("Subject: Quarterly report"));
                    assert!(!headers.contains("Hello Bob"));
                }
                DsnRet::Full => {
                    let inner = part(2)
                        .message()
                        .expect("message/rfc822 is parsed as a message");
                    assert_eq!(inner.subject(), Some("Quarterly report"));
                    assert!(inner.body_text(0).unwrap().contains("Hello Bob"));
                }
            }
        }
    }

    #[test]
    fn hostile_reply_cannot_inject_lines() {
        let bob = addr("bob@example.org");
        let reply = SmtpReply::new(
            550,
            "5.7.1 bad\r\nX-Injected: yes\r\n\r\n--=_postrider\u{7f}\u{0}é fin",
        );
        let r = [DsnRecipient {
            address: &bob,
            original_recipient: Some("rfc822;evil\r\nX-Evil: 1"),
            action: DsnAction::Failed,
            status: reply.status(),
            remote_mta: Some("mx.example.org\r\nX-Host: 1"),
            reply: Some(&reply),
            last_attempt_at: None,
            will_retry_until: None,
        }];
        let bytes = render(&r, DsnRet::Hdrs, Some("id\r\nX-Envid: 1"));
        let text = String::from_utf8(bytes.clone()).unwrap();
        for bad in [
            "\r\nX-Injected",
            "\r\nX-Evil",
            "\r\nX-Host",
            "\r\nX-Envid",
            "\u{7f}",
            "\u{0}",
            "é",
        ] {
            assert!(!text.contains(bad), "{bad:?} leaked into\n{text}");
        }
        assert!(
            text.contains(
                "Diagnostic-Code: smtp; 550 5.7.1 bad X-Injected: yes --=_postrider fin\r\n"
            ),
            "{text}"
        );
        // every line is CRLF-terminated: no bare CR or LF anywhere
        assert!(!text.replace("\r\n", "").contains(['\r', '\n']));
        let msg = MessageParser::default().parse(&bytes).unwrap();
        assert_eq!(msg.parts.len(), 4);
    }

    #[test]
    fn utf8_recipients_are_escaped_in_the_report() {
        let u = addr("üser@bücher.example");
        let reply =
            SmtpReply::synthetic(553, EnhancedStatus::new(5, 6, 7), "server lacks SMTPUTF8");
        let r = [DsnRecipient {
            address: &u,
            original_recipient: Some("utf-8;üser@bücher.example"),
            action: DsnAction::Failed,
            status: reply.status(),
            remote_mta: Some("mx.example"),
            reply: Some(&reply),
            last_attempt_at: None,
            will_retry_until: None,
        }];
        let text = String::from_utf8(render(&r, DsnRet::Hdrs, None)).unwrap();
        assert!(
            text.contains("Final-Recipient: utf-8; \\x{FC}ser@b\\x{FC}cher.example\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Original-Recipient: utf-8;\\x{FC}ser@b\\x{FC}cher.example\r\n"),
            "{text}"
        );
        // the human-readable part may carry UTF-8 and says so
        assert!(text.contains("Content-Transfer-Encoding: 8bit"));
    }

    #[test]
    fn boundary_avoids_content() {
        let b = pick_boundary("x", &[]);
        let b2 = pick_boundary("x", &[b.as_bytes()]);
        assert_ne!(b, b2);
        assert!(b2.starts_with(&b));
    }

    #[test]
    fn header_section_stops_at_blank_line() {
        assert_eq!(
            header_section(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_section(b"A: 1\r\n"), b"A: 1\r\n");
        assert_eq!(header_section(b"\r\nbody"), b"");
    }

    #[test]
    fn kind_follows_worst_action() {
        let a = addr("a@b.c");
        let mk = |action| DsnRecipient {
            address: &a,
            original_recipient: None,
            action,
            status: EnhancedStatus::new(2, 0, 0),
            remote_mta: None,
            reply: None,
            last_attempt_at: None,
            will_retry_until: None,
        };
        let kind = |rs: &[DsnRecipient<'_>]| {
            DsnReport {
                reporting_mta: "h",
                message_id: "m@h",
                date: t(0),
                original_sender: &a,
                queue_id: None,
                envid: None,
                arrival_date: t(0),
                recipients: rs,
                ret: DsnRet::Hdrs,
                original: b"",
            }
            .kind()
        };
        assert_eq!(
            kind(&[mk(DsnAction::Delivered), mk(DsnAction::Delayed)]),
            DsnKind::Delay
        );
        assert_eq!(
            kind(&[mk(DsnAction::Delayed), mk(DsnAction::Failed)]),
            DsnKind::Failure
        );
        assert_eq!(kind(&[mk(DsnAction::Delivered)]), DsnKind::Success);
    }
}
