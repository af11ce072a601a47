//! One SMTP transaction for one (message, destination domain): MX hosts in order, per-recipient
//! replies, over lettre's low-level [`AsyncSmtpConnection`].
//!
//! lettre has no timeouts after connecting, so every call is wrapped in `tokio::time::timeout` and
//! the connection is dropped when one expires. Expected remote outcomes (4xx/5xx) are values in
//! [`DomainAttempt`], never errors.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use postrider_core::{
    Domain, EnhancedStatus, RecipientRequest, ReplyClass, ReversePath, SmtpPhase, SmtpReply,
    classify_reply,
};

use crate::mx::{MxHost, MxResolver};
use crate::settings::{DeliverySettings, TlsMode};

/// What to send to one domain.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transaction<'a> {
    /// Envelope sender.
    pub sender: &'a ReversePath,
    /// `(index in the message's recipient list, recipient)`, all in `domain`.
    pub recipients: &'a [(usize, &'a RecipientRequest)],
    /// The message, CRLF line endings.
    pub body: &'a [u8],
}

/// The outcome for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecipientResult {
    /// Index into the message's recipient list.
    pub index: usize,
    /// The reply that decided it (server's or synthetic).
    pub reply: SmtpReply,
    /// What the reply means.
    pub class: ReplyClass,
}

/// The outcome of delivering to one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DomainAttempt {
    /// One result per recipient of the transaction.
    pub results: Vec<RecipientResult>,
    /// The MX host whose session decided the outcome, when a server was reached.
    pub mx_host: Option<String>,
    /// Whether that session used TLS.
    pub tls: bool,
}

impl DomainAttempt {
    /// The same reply for every recipient, e.g. after a DNS failure.
    fn all(
        tx: &Transaction<'_>,
        reply: SmtpReply,
        class: ReplyClass,
        mx_host: Option<String>,
    ) -> Self {
        let results = tx
            .recipients
            .iter()
            .map(|(i, _)| RecipientResult {
                index: *i,
                reply: reply.clone(),
                class,
            })
            .collect();
        DomainAttempt {
            results,
            mx_host,
            tls: false,
        }
    }
}

/// Delivers `tx` to `domain`: resolves it, then tries hosts and their addresses in order until one
/// session completes a transaction.
///
/// A host is skipped (next address, next host) when the connection fails, times out before the
/// transaction, or the greeting/EHLO is refused. When every host was skipped, the recipients get
/// the last failure: permanent only if every host refused with a 5xx, otherwise transient.
pub(crate) async fn deliver_to_domain(
    resolver: &dyn MxResolver,
    settings: &DeliverySettings,
    domain: &Domain,
    tx: &Transaction<'_>,
) -> DomainAttempt {
    let hosts = match resolver.resolve(domain).await {
        Ok(hosts) => hosts,
        Err(e) => {
            let reply = e.reply(domain);
            let class = classify_reply(SmtpPhase::Greeting, &reply);
            return DomainAttempt::all(tx, reply, class, None);
        }
    };

    let mut last: Option<(SmtpReply, Option<String>)> = None;
    let mut all_permanent = true;
    for host in hosts.iter().take(settings.max_mx_hosts) {
        for ip in host.addresses.iter().take(settings.max_addresses_per_host) {
            match try_host(settings, host, *ip, tx).await {
                HostOutcome::Done(attempt) => return attempt,
                HostOutcome::Skip {
                    reply,
                    permanent,
                    reached,
                } => {
                    tracing::debug!(domain = %domain, mx = %host.name, ip = %ip, reply = %reply, "MX host skipped");
                    all_permanent &= permanent;
                    last = Some((reply, reached.then(|| host.name.clone())));
                }
            }
        }
    }
    match last {
        Some((reply, mx)) => {
            let class = if all_permanent {
                ReplyClass::Permanent
            } else {
                ReplyClass::Transient
            };
            DomainAttempt::all(tx, reply, class, mx)
        }
        None => {
            let reply = SmtpReply::synthetic(
                451,
                EnhancedStatus::new(4, 4, 4),
                format!("no usable mail exchanger for {domain}"),
            );
            DomainAttempt::all(tx, reply, ReplyClass::Transient, None)
        }
    }
}

/// What happened at one address of one host.
enum HostOutcome {
    /// A transaction was carried out (or decided for all recipients at MAIL); final for this attempt.
    Done(DomainAttempt),
    /// This host could not be used; try the next one.
    Skip {
        /// Why (server reply or synthetic).
        reply: SmtpReply,
        /// The host refused with a 5xx (rather than a network error or 4xx).
        permanent: bool,
        /// A server answered at all (so `Remote-MTA` is meaningful).
        reached: bool,
    },
}

/// Capabilities from the EHLO reply that lettre does not record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Capabilities {
    /// `SIZE`, with the limit when given (0 = no fixed limit).
    pub size: Option<u64>,
    /// `PIPELINING` (RFC 2920).
    pub pipelining: bool,
    /// `8BITMIME` (RFC 6152).
    pub eight_bit_mime: bool,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `STARTTLS` (RFC 3207).
    pub starttls: bool,
}

impl Capabilities {
    /// Parses the lines of an EHLO reply (the first line is the greeting and is skipped).
    pub(crate) fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Self {
        let mut caps = Capabilities::default();
        for line in lines.into_iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "PIPELINING" => caps.pipelining = true,
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "STARTTLS" => caps.starttls = true,
                _ => {}
            }
        }
        caps
    }
}

/// A reply from lettre's `Ok(Response)`.
fn reply_of(resp: &Response) -> SmtpReply {
    let text: Vec<&str> = resp.message().collect();
    SmtpReply::new(u16::from(resp.code()), &text.join("\n"))
}

/// How a lettre call ended.
enum Step {
    /// The server replied (any code).
    Reply(SmtpReply),
    /// Network or protocol failure: the connection is unusable. Holds a synthetic reply.
    Broken(SmtpReply),
}

/// Runs one lettre call under a timeout and maps every ending to a [`Step`].
async fn step<F>(limit: Duration, what: &str, call: F) -> Step
where
    F: Future<Output = Result<Response, lettre::transport::smtp::Error>>,
{
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(resp)) => Step::Reply(reply_of(&resp)),
        Ok(Err(e)) => match e.status() {
            Some(code) => {
                let text = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                Step::Reply(SmtpReply::new(u16::from(code), &text))
            }
            None => Step::Broken(SmtpReply::synthetic(
                451,
                EnhancedStatus::new(4, 4, 2),
                format!(
                    "connection failed during {what}: {}",
                    postrider_core::dsn::one_line(&e.to_string())
                ),
            )),
        },
        Err(_) => Step::Broken(SmtpReply::synthetic(
            451,
            EnhancedStatus::new(4, 4, 2),
            format!(
                "timed out after {}s waiting for the reply to {what}",
                limit.as_secs_f32()
            ),
        )),
    }
}

/// Why [`open_session`] gave no usable connection.
enum OpenError {
    /// The host cannot be used (connection, greeting or EHLO failure).
    Skip(HostOutcome),
    /// The server offered STARTTLS but it failed; the connection is gone. Opportunistic mode
    /// reconnects in plaintext.
    TlsFailed(SmtpReply),
}

/// Connects to `ip` and runs the greeting, EHLO and STARTTLS (when `use_tls` and offered).
/// Returns the connection and whether it is encrypted.
async fn open_session(
    settings: &DeliverySettings,
    host: &MxHost,
    ip: IpAddr,
    helo: &ClientId,
    use_tls: bool,
) -> Result<(AsyncSmtpConnection, bool), OpenError> {
    let t = &settings.timeouts;
    let addr = SocketAddr::new(ip, settings.port);
    // lettre reads the greeting and sends EHLO inside connect, so one timeout covers all three.
    let limit = t.connect + t.greeting + t.ehlo;
    let connect = AsyncSmtpConnection::connect_tokio1(addr, Some(t.connect), helo, None, None);
    let mut conn = match tokio::time::timeout(limit, connect).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            return Err(OpenError::Skip(match e.status() {
                Some(code) => {
                    let text = std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_default();
                    let reply = SmtpReply::new(u16::from(code), &text);
                    let permanent =
                        classify_reply(SmtpPhase::Greeting, &reply) == ReplyClass::Permanent;
                    HostOutcome::Skip {
                        reply,
                        permanent,
                        reached: true,
                    }
                }
                None => HostOutcome::Skip {
                    reply: SmtpReply::synthetic(
                        451,
                        EnhancedStatus::new(4, 4, 1),
                        format!(
                            "cannot connect to {} [{ip}]: {}",
                            host.name,
                            postrider_core::dsn::one_line(&e.to_string())
                        ),
                    ),
                    permanent: false,
                    reached: false,
                },
            }));
        }
        Err(_) => {
            return Err(OpenError::Skip(HostOutcome::Skip {
                reply: SmtpReply::synthetic(
                    451,
                    EnhancedStatus::new(4, 4, 2),
                    format!(
                        "timed out connecting to {} [{ip}] or waiting for its greeting",
                        host.name
                    ),
                ),
                permanent: false,
                reached: false,
            }));
        }
    };
    let mut tls = false;
    if use_tls && conn.can_starttls() {
        let sni = host
            .name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let params = TlsParameters::builder(sni)
            .dangerous_accept_invalid_certs(true)
            .dangerous_accept_invalid_hostnames(true)
            .build_rustls();
        let handshake = async {
            match params {
                Ok(p) => conn.starttls(p, helo).await,
                Err(e) => Err(e),
            }
        };
        match tokio::time::timeout(t.ehlo, handshake).await {
            Ok(Ok(())) => tls = true,
            Ok(Err(e)) => {
                return Err(OpenError::TlsFailed(SmtpReply::synthetic(
                    451,
                    EnhancedStatus::new(4, 7, 0),
                    format!(
                        "STARTTLS with {} failed: {}",
                        host.name,
                        postrider_core::dsn::one_line(&e.to_string())
                    ),
                )));
            }
            Err(_) => {
                return Err(OpenError::TlsFailed(SmtpReply::synthetic(
                    451,
                    EnhancedStatus::new(4, 7, 0),
                    format!("STARTTLS with {} timed out", host.name),
                )));
            }
        }
    }
    Ok((conn, tls))
}

/// Tries one address of one host: session setup (with the plaintext fallback of opportunistic
/// TLS), then the transaction.
async fn try_host(
    settings: &DeliverySettings,
    host: &MxHost,
    ip: IpAddr,
    tx: &Transaction<'_>,
) -> HostOutcome {
    let helo = ClientId::Domain(settings.hostname.clone());
    let want_tls = settings.tls != TlsMode::Disabled;
    let (mut conn, tls) = match open_session(settings, host, ip, &helo, want_tls).await {
        Ok(session) => session,
        Err(OpenError::TlsFailed(reply)) if settings.tls == TlsMode::Opportunistic => {
            tracing::info!(mx = %host.name, ip = %ip, reply = %reply, "STARTTLS failed; retrying the host in plaintext");
            match open_session(settings, host, ip, &helo, false).await {
                Ok(session) => session,
                Err(OpenError::Skip(skip)) => return skip,
                Err(OpenError::TlsFailed(reply)) => {
                    return HostOutcome::Skip {
                        reply,
                        permanent: false,
                        reached: true,
                    };
                }
            }
        }
        Err(OpenError::TlsFailed(reply)) => {
            return HostOutcome::Skip {
                reply,
                permanent: false,
                reached: true,
            };
        }
        Err(OpenError::Skip(skip)) => return skip,
    };
    if settings.tls == TlsMode::Required && !tls {
        quit(&mut conn, settings.timeouts.quit).await;
        return HostOutcome::Skip {
            reply: SmtpReply::synthetic(
                451,
                EnhancedStatus::new(4, 7, 10),
                format!("TLS is required, but {} does not offer STARTTLS", host.name),
            ),
            permanent: false,
            reached: true,
        };
    }
    // lettre keeps only a few extensions; ask again to learn SIZE and PIPELINING.
    let caps = match step(
        settings.timeouts.ehlo,
        "EHLO",
        conn.command(format!("EHLO {helo}\r\n")),
    )
    .await
    {
        Step::Reply(reply) if reply.is_positive() => {
            Capabilities::parse(reply.text.lines().map(|l| l.trim()))
        }
        Step::Reply(reply) => {
            quit(&mut conn, settings.timeouts.quit).await;
            let permanent = classify_reply(SmtpPhase::Ehlo, &reply) == ReplyClass::Permanent;
            return HostOutcome::Skip {
                reply,
                permanent,
                reached: true,
            };
        }
        Step::Broken(reply) => {
            return HostOutcome::Skip {
                reply,
                permanent: false,
                reached: true,
            };
        }
    };
    let (results, broken) = transaction(&mut conn, settings, &caps, tx).await;
    if !broken {
        quit(&mut conn, settings.timeouts.quit).await;
    }
    HostOutcome::Done(DomainAttempt {
        results,
        mx_host: Some(host.name.clone()),
        tls,
    })
}

/// Sends QUIT and waits briefly for the 221; failures are irrelevant by now.
async fn quit(conn: &mut AsyncSmtpConnection, limit: Duration) {
    let _ = tokio::time::timeout(limit, conn.command("QUIT\r\n")).await;
}

/// Sends RSET, briefly waiting for its reply, to leave the session clean before QUIT.
async fn rset(conn: &mut AsyncSmtpConnection, limit: Duration) {
    let _ = tokio::time::timeout(limit, conn.command("RSET\r\n")).await;
}

/// A recipient's outcome within one transaction; `None` until a reply decides it.
type Slot = Option<(SmtpReply, ReplyClass)>;

/// One transaction on an open session. Returns a result for every recipient of `tx`, and whether
/// the connection broke (then it must not be used again).
async fn transaction(
    conn: &mut AsyncSmtpConnection,
    settings: &DeliverySettings,
    caps: &Capabilities,
    tx: &Transaction<'_>,
) -> (Vec<RecipientResult>, bool) {
    let mut results: Vec<RecipientResult> = Vec::with_capacity(tx.recipients.len());
    let all = |reply: SmtpReply, class: ReplyClass| {
        tx.recipients
            .iter()
            .map(|(i, _)| RecipientResult {
                index: *i,
                reply: reply.clone(),
                class,
            })
            .collect::<Vec<_>>()
    };

    // Size and SMTPUTF8 are checked before anything is sent.
    if let Some(limit) = caps.size.filter(|l| *l > 0)
        && tx.body.len() as u64 > limit
    {
        let reply = SmtpReply::synthetic(
            552,
            EnhancedStatus::new(5, 3, 4),
            format!(
                "message size {} exceeds the server's fixed limit of {limit} octets",
                tx.body.len()
            ),
        );
        return (all(reply, ReplyClass::Permanent), false);
    }
    let utf8_reply = || {
        SmtpReply::synthetic(
            550,
            EnhancedStatus::new(5, 6, 7),
            "SMTPUTF8 is required, but was not offered by the server",
        )
    };
    let sender_utf8 = tx.sender.address().is_some_and(|a| a.needs_smtputf8());
    if sender_utf8 && !caps.smtputf8 {
        return (all(utf8_reply(), ReplyClass::Permanent), false);
    }
    let mut sendable: Vec<(usize, &RecipientRequest)> = Vec::with_capacity(tx.recipients.len());
    for (i, r) in tx.recipients {
        if r.address.needs_smtputf8() && !caps.smtputf8 {
            results.push(RecipientResult {
                index: *i,
                reply: utf8_reply(),
                class: ReplyClass::Permanent,
            });
        } else {
            sendable.push((*i, r));
        }
    }
    if sendable.is_empty() {
        return (results, false);
    }
    let needs_utf8 = sender_utf8 || sendable.iter().any(|(_, r)| r.address.needs_smtputf8());
    let mut mail = format!("MAIL FROM:<{}>", tx.sender);
    if caps.size.is_some() {
        mail.push_str(&format!(" SIZE={}", tx.body.len()));
    }
    if caps.eight_bit_mime && !tx.body.is_ascii() {
        mail.push_str(" BODY=8BITMIME");
    }
    if needs_utf8 {
        mail.push_str(" SMTPUTF8");
    }
    mail.push_str("\r\n");

    let mut slots: Vec<Slot> = vec![None; sendable.len()];
    let broken = run_envelope(conn, settings, caps, mail, &sendable, tx.body, &mut slots)
        .await
        .err();
    let is_broken = broken.is_some();
    let fallback = broken.unwrap_or_else(|| {
        SmtpReply::synthetic(
            451,
            EnhancedStatus::new(4, 4, 2),
            "the transaction ended without a reply for this recipient",
        )
    });
    for ((i, _), slot) in sendable.iter().zip(slots) {
        let (reply, class) = slot.unwrap_or_else(|| (fallback.clone(), ReplyClass::Transient));
        results.push(RecipientResult {
            index: *i,
            reply,
            class,
        });
    }
    results.sort_by_key(|r| r.index);
    (results, is_broken)
}

impl Step {
    /// The reply, or the synthetic reply of a broken connection as `Err`.
    fn into_result(self) -> Result<SmtpReply, SmtpReply> {
        match self {
            Step::Reply(r) => Ok(r),
            Step::Broken(r) => Err(r),
        }
    }
}

/// MAIL, RCPTs, DATA and the content, filling `slots` (parallel to `sendable`) as replies arrive.
/// `Err` means the connection broke; recipients whose slot is still empty are then undecided.
async fn run_envelope(
    conn: &mut AsyncSmtpConnection,
    settings: &DeliverySettings,
    caps: &Capabilities,
    mail: String,
    sendable: &[(usize, &RecipientRequest)],
    body: &[u8],
    slots: &mut [Slot],
) -> Result<(), SmtpReply> {
    let t = &settings.timeouts;
    let rcpt_line = |r: &RecipientRequest| format!("RCPT TO:<{}>\r\n", r.address);
    let mut accepted: Vec<usize> = Vec::with_capacity(sendable.len());
    let data_reply = if caps.pipelining {
        // RFC 2920: MAIL, every RCPT and DATA in one write, then one reply each, in order.
        let mut batch = mail;
        for (_, r) in sendable {
            batch.push_str(&rcpt_line(r));
        }
        batch.push_str("DATA\r\n");
        let mail_reply = step(t.mail, "MAIL FROM", conn.command(batch))
            .await
            .into_result()?;
        let mail_class = classify_reply(SmtpPhase::MailFrom, &mail_reply);
        for (k, slot) in slots.iter_mut().enumerate() {
            let reply = step(t.rcpt, "RCPT TO", conn.read_response())
                .await
                .into_result()?;
            if mail_class != ReplyClass::Success {
                // After a refused MAIL the RCPT replies only say "need MAIL"; MAIL's reply decides.
                *slot = Some((mail_reply.clone(), mail_class));
                continue;
            }
            match classify_reply(SmtpPhase::RcptTo, &reply) {
                ReplyClass::Success => accepted.push(k),
                class => *slot = Some((reply, class)),
            }
        }
        step(t.data, "DATA", conn.read_response())
            .await
            .into_result()?
    } else {
        let mail_reply = step(t.mail, "MAIL FROM", conn.command(mail))
            .await
            .into_result()?;
        let mail_class = classify_reply(SmtpPhase::MailFrom, &mail_reply);
        if mail_class != ReplyClass::Success {
            for slot in slots.iter_mut() {
                *slot = Some((mail_reply.clone(), mail_class));
            }
            rset(conn, t.quit).await;
            return Ok(());
        }
        for (k, (_, r)) in sendable.iter().enumerate() {
            let reply = step(t.rcpt, "RCPT TO", conn.command(rcpt_line(r)))
                .await
                .into_result()?;
            match classify_reply(SmtpPhase::RcptTo, &reply) {
                ReplyClass::Success => accepted.push(k),
                class => slots[k] = Some((reply, class)),
            }
        }
        if accepted.is_empty() {
            rset(conn, t.quit).await;
            return Ok(());
        }
        step(t.data, "DATA", conn.command("DATA\r\n"))
            .await
            .into_result()?
    };

    if data_reply.code != 354 {
        // Expected when pipelining with no accepted recipient. Anything but 354 means no data
        // may follow; a positive code here is a protocol violation, treated as transient.
        let class = match classify_reply(SmtpPhase::Data, &data_reply) {
            ReplyClass::Success => ReplyClass::Transient,
            class => class,
        };
        for k in &accepted {
            slots[*k] = Some((data_reply.clone(), class));
        }
        rset(conn, t.quit).await;
        return Ok(());
    }
    if accepted.is_empty() {
        // 354 with no recipient accepted: end the empty data and reset.
        step(t.data_end, "end of data", conn.message(b""))
            .await
            .into_result()?;
        rset(conn, t.quit).await;
        return Ok(());
    }
    // lettre appends CRLF.CRLF itself; drop one trailing CRLF so the content is sent unchanged.
    let content = body.strip_suffix(b"\r\n").unwrap_or(body);
    let final_reply = step(t.data_end, "end of data", conn.message(content))
        .await
        .into_result()?;
    let class = classify_reply(SmtpPhase::DataEnd, &final_reply);
    for k in &accepted {
        slots[*k] = Some((final_reply.clone(), class));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ehlo_capabilities() {
        let caps = Capabilities::parse([
            "mx.example greets you",
            "SIZE 1000",
            "pipelining",
            "8BITMIME",
            "STARTTLS",
            "DSN",
        ]);
        assert_eq!(
            caps,
            Capabilities {
                size: Some(1000),
                pipelining: true,
                eight_bit_mime: true,
                smtputf8: false,
                starttls: true
            }
        );
        let caps = Capabilities::parse(["hi", "SIZE", "SMTPUTF8"]);
        assert_eq!(caps.size, Some(0));
        assert!(caps.smtputf8 && !caps.pipelining);
        assert_eq!(
            Capabilities::parse(["only a greeting"]),
            Capabilities::default()
        );
    }
}
