//! One SMTP transaction for one (message, destination domain): destinations in order (route,
//! relay host or MX hosts), pooled sessions, per-recipient replies, over lettre's low-level
//! [`AsyncSmtpConnection`].
//!
//! lettre has no timeouts after connecting, so every call is wrapped in `tokio::time::timeout` and
//! the connection is dropped when one expires. Expected remote outcomes (4xx/5xx) are values in
//! [`DomainAttempt`], never errors.
//!
//! Sessions are reused ([`crate::pool`]): after a transaction that ended cleanly (final reply to
//! the data, or a successful RSET) the session goes back to the pool, so the next message to the
//! same address skips connect, greeting, EHLO, STARTTLS and AUTH. A pooled session the server has
//! closed meanwhile fails before any reply to MAIL; the transaction is then repeated on another
//! session, which is safe because nothing was accepted.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use postrider_core::{
    Domain, DsnRet, EnhancedStatus, RecipientRequest, ReplyClass, ReversePath, SmtpPhase,
    SmtpReply, Timestamp, TlsInfo, classify_reply,
};

use crate::health::throttling_reply;
use postrider_core::mta_sts::StsMode;

use crate::mx::MxError;
use crate::pool::{Capabilities, Checkout, ConnectionSlot, PoolKey, Session, SessionMode};
use crate::settings::{DeliverySettings, RelayTls, Relayhost, TlsMode};
use crate::stream::{EstablishedTls, SeenVersion, SmtpStream, connect_tcp};
use crate::tls_report::counter::SessionResult;
use crate::worker::{Shared, clock_now};

/// What to send to one domain.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transaction<'a> {
    /// Envelope sender.
    pub sender: &'a ReversePath,
    /// `(index in the message's recipient list, recipient)`, all in `domain`.
    pub recipients: &'a [(usize, &'a RecipientRequest)],
    /// The message, CRLF line endings.
    pub body: &'a [u8],
    /// RFC 3461 `RET`, passed on when the server supports DSN.
    pub ret: Option<DsnRet>,
    /// RFC 3461 `ENVID`, passed on when the server supports DSN.
    pub envid: Option<&'a str>,
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
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct DomainAttempt {
    /// One result per recipient of the transaction.
    pub results: Vec<RecipientResult>,
    /// The host whose session decided the outcome, when a server was reached.
    pub mx_host: Option<String>,
    /// The address and port of that host's session, when a server was reached.
    pub mx_addr: Option<SocketAddr>,
    /// How that session was protected, when a server was reached.
    pub tls: Option<TlsInfo>,
    /// Retry no earlier than this (every host was suspended: the end of the suspension).
    pub retry_at: Option<Timestamp>,
    /// Not attempted at all (rate limit): the recipients wait until `retry_at` without the
    /// attempt counting.
    pub postponed: bool,
    /// The server supports DSN and got the recipients' DSN requests (it reports success itself).
    pub dsn_relayed: bool,
}

impl DomainAttempt {
    /// The same reply for every recipient, e.g. after a DNS failure; `reached` is the host
    /// that gave it (name and address), when a server answered.
    fn all(
        tx: &Transaction<'_>,
        reply: SmtpReply,
        class: ReplyClass,
        reached: Option<(String, SocketAddr)>,
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
        let (mx_host, mx_addr) = reached.unzip();
        DomainAttempt {
            results,
            mx_host,
            mx_addr,
            ..DomainAttempt::default()
        }
    }
}

/// One host to try.
struct Target<'s> {
    name: String,
    port: u16,
    addresses: Vec<IpAddr>,
    mode: SessionMode,
    relay: Option<&'s Relayhost>,
    /// The recipient domain's MTA-STS policy, when one is in force.
    sts: Option<StsTarget>,
}

/// An MTA-STS policy applied to one MX host.
#[derive(Debug, Clone)]
struct StsTarget {
    /// `enforce` or `testing`.
    mode: StsMode,
    /// The recipient domain that published it.
    domain: String,
}

impl StsTarget {
    /// A `451 4.7.5` reply naming the policy and what `host` failed.
    fn refusal(&self, host: &str, what: &str) -> SmtpReply {
        SmtpReply::synthetic(
            451,
            EnhancedStatus::new(4, 7, 5),
            format!("MTA-STS policy of {}: {host}: {what}", self.domain),
        )
    }
}

/// A stable hash of an MX name, for [`SessionMode::MxAuthenticated`].
fn name_hash(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.to_ascii_lowercase().hash(&mut h);
    h.finish()
}

/// A configured host (route or relay host) as the only target.
async fn fixed_target<'s>(
    shared: &Shared,
    host: &str,
    port: u16,
    mode: SessionMode,
    relay: Option<&'s Relayhost>,
) -> Result<Vec<Target<'s>>, MxError> {
    let addresses = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => shared.resolver.resolve_host(host).await?,
    };
    Ok(vec![Target {
        name: host.to_owned(),
        port,
        addresses,
        mode,
        relay,
        sts: None,
    }])
}

/// The hosts for `domain`: a matching route, else the relay host, else its MX hosts.
async fn targets<'s>(
    shared: &Shared,
    s: &'s DeliverySettings,
    domain: &Domain,
    name: &str,
) -> Result<Vec<Target<'s>>, MxError> {
    let mode = SessionMode::Mx(s.tls_for(name));
    if let Some(route) = s.routes.iter().find(|r| r.matches(name)) {
        return fixed_target(shared, &route.host, route.port, mode, None).await;
    }
    if let Some(relay) = &s.relayhost {
        return fixed_target(
            shared,
            &relay.host,
            relay.port,
            SessionMode::Relay,
            Some(relay),
        )
        .await;
    }
    let hosts = shared.resolver.resolve(domain).await?;
    let policy = if s.mta_sts_for(name) && domain.address_literal().is_none() {
        crate::mta_sts::policy_for(shared, name).await
    } else {
        None
    };
    let Some(policy) = policy else {
        return Ok(hosts
            .into_iter()
            .take(s.max_mx_hosts)
            .map(|h| Target {
                name: h.name,
                port: s.port,
                addresses: h.addresses,
                mode,
                relay: None,
                sts: None,
            })
            .collect());
    };
    let enforce = policy.mode == StsMode::Enforce;
    let mut allowed = Vec::with_capacity(hosts.len());
    for h in hosts {
        if policy.allows_mx(&h.name) {
            allowed.push(h);
            continue;
        }
        shared.sts_result(SessionResult {
            domain: name,
            result: "validation-failure",
            mx_host: Some(&h.name),
            receiving_ip: None,
        });
        tracing::warn!(domain = %name, mx = %h.name, policy = %crate::mta_sts::policy_label(policy.mode), "MX host not listed in the MTA-STS policy");
        if !enforce {
            allowed.push(h);
        }
    }
    if allowed.is_empty() {
        return Err(MxError::TlsPolicy(format!(
            "MTA-STS policy of {name}: no MX host matches the policy (mx: {})",
            policy.mx.join(", ")
        )));
    }
    Ok(allowed
        .into_iter()
        .take(s.max_mx_hosts)
        .map(|h| Target {
            mode: if enforce {
                SessionMode::MxAuthenticated(name_hash(&h.name))
            } else {
                mode
            },
            name: h.name,
            port: s.port,
            addresses: h.addresses,
            relay: None,
            sts: Some(StsTarget {
                mode: policy.mode,
                domain: name.to_owned(),
            }),
        })
        .collect())
}

/// Delivers `tx` to `domain`: applies the domain's rate and connection limits, finds its hosts,
/// then tries hosts and their addresses in order until one session completes a transaction.
///
/// A host is skipped (next address, next host) when it is suspended by the circuit breaker, the
/// connection fails, times out before the transaction, or the greeting/EHLO is refused. When every
/// host was skipped, the recipients get the last failure: permanent only if every host refused
/// with a 5xx, otherwise transient.
pub(crate) async fn deliver_to_domain(
    shared: &Shared,
    domain: &Domain,
    tx: &Transaction<'_>,
) -> DomainAttempt {
    let settings = shared.settings();
    let name = domain.as_str().to_ascii_lowercase();
    let policy = settings.policy(&name);
    if let Some(per_minute) = policy.messages_per_minute
        && let Err(at) = shared.rate_limit(&name, per_minute, clock_now())
    {
        let reply = SmtpReply::synthetic(
            451,
            EnhancedStatus::new(4, 7, 0),
            format!(
                "rate limit of {per_minute} messages per minute for {name} reached; postponed until {}",
                at.to_rfc3339()
            ),
        );
        let mut attempt = DomainAttempt::all(tx, reply, ReplyClass::Transient, None);
        attempt.retry_at = Some(at);
        attempt.postponed = true;
        return attempt;
    }
    let _domain_permit = match policy.max_connections {
        Some(n) => shared.domain_semaphore(&name, n).acquire_owned().await.ok(),
        None => None,
    };

    let resolved = targets(shared, &settings, domain, &name).await;
    if let Ok(m) = shared
        .metrics
        .dns_lookups
        .get_metric_with_label_values(&[match &resolved {
            Ok(_) => "ok",
            Err(e) => e.label(),
        }])
    {
        m.inc();
    }
    let targets = match resolved {
        Ok(t) => t,
        Err(e) => {
            let reply = e.reply(domain);
            let class = classify_reply(SmtpPhase::Greeting, &reply);
            return DomainAttempt::all(tx, reply, class, None);
        }
    };

    let mut last: Option<(SmtpReply, Option<(String, SocketAddr)>)> = None;
    let mut all_permanent = true;
    let mut suspended_until: Option<Timestamp> = None;
    let mut only_suspended = true;
    for target in &targets {
        if let Some(s) = shared.breaker_check(&target.name) {
            tracing::debug!(domain = %name, mx = %target.name, until = %s.until.to_rfc3339(), "destination suspended; skipped");
            all_permanent = false;
            suspended_until = Some(suspended_until.map_or(s.until, |u| u.min(s.until)));
            last = Some((s.reply(), None));
            continue;
        }
        for ip in target
            .addresses
            .iter()
            .take(settings.max_addresses_per_host)
        {
            only_suspended = false;
            match try_address(shared, target, *ip, tx).await {
                HostOutcome::Done(attempt) => return attempt,
                HostOutcome::Skip {
                    reply,
                    permanent,
                    reached,
                } => {
                    let addr = SocketAddr::new(*ip, target.port);
                    tracing::debug!(domain = %name, relay = %relay_label(Some(target.name.as_str()), Some(addr)), reply = %reply, "host skipped");
                    all_permanent &= permanent;
                    last = Some((reply, reached.then(|| (target.name.clone(), addr))));
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
            let mut attempt = DomainAttempt::all(tx, reply, class, mx);
            if only_suspended {
                attempt.retry_at = suspended_until;
            }
            attempt
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

/// The peer of a delivery attempt for the log, as Postfix writes it: `mx.example.org[192.0.2.5]:25`,
/// the bare host when its address is unknown, and `none` when no server was reached.
pub(crate) fn relay_label(host: Option<&str>, addr: Option<SocketAddr>) -> String {
    match (host, addr) {
        (Some(host), Some(addr)) => format!("{host}[{}]:{}", addr.ip(), addr.port()),
        (Some(host), None) => host.to_owned(),
        (None, Some(addr)) => format!("[{}]:{}", addr.ip(), addr.port()),
        (None, None) => "none".to_owned(),
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

/// A reply from lettre's `Ok(Response)`.
fn reply_of(resp: &Response) -> SmtpReply {
    let text: Vec<&str> = resp.message().collect();
    SmtpReply::new(u16::from(resp.code()), &text.join("\n"))
}

/// A reply from a lettre error that carries a status code.
fn reply_of_error(e: &lettre::transport::smtp::Error) -> Option<SmtpReply> {
    let code = e.status()?;
    let text = std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_default();
    Some(SmtpReply::new(u16::from(code), &text))
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
        Ok(Err(e)) => match reply_of_error(&e) {
            Some(reply) => Step::Reply(reply),
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
    /// The host cannot be used (connection, greeting, EHLO or AUTH failure).
    Skip(HostOutcome),
    /// The server offered STARTTLS but it failed; the connection is gone. Opportunistic mode
    /// reconnects in plaintext.
    TlsFailed(SmtpReply),
}

fn skip(reply: SmtpReply, permanent: bool, reached: bool) -> OpenError {
    OpenError::Skip(HostOutcome::Skip {
        reply,
        permanent,
        reached,
    })
}

/// TLS client parameters for server name `sni` under the verification policy.
fn tls_parameters(
    shared: &Shared,
    sni: &str,
    verify: bool,
) -> Result<TlsParameters, lettre::transport::smtp::Error> {
    let mut builder = TlsParameters::builder(sni.to_owned());
    if verify {
        for der in &shared.tls.extra_roots {
            builder = builder.add_root_certificate(Certificate::from_der(der.to_vec())?);
        }
    } else {
        builder = builder
            .dangerous_accept_invalid_certs(true)
            .dangerous_accept_invalid_hostnames(true);
    }
    builder.build_rustls()
}

/// What Postrider knows of a connection's TLS that lettre does not report.
enum Wire {
    /// Plain TCP (STARTTLS may follow): the version, once the ServerHello went by.
    Plain(SeenVersion),
    /// Implicit TLS, whose handshake Postrider ran.
    Implicit(EstablishedTls),
}

/// Why [`connect`] gave no connection.
enum ConnectError {
    /// The TCP connection failed.
    Tcp(std::io::Error),
    /// The implicit-TLS handshake failed.
    Tls(String),
    /// lettre failed at the greeting or EHLO (with the server's reply, when it sent one).
    Smtp(lettre::transport::smtp::Error),
}

/// Opens the TCP connection to `addr` (from the configured source address), runs the implicit-TLS
/// handshake when `implicit`, then lets lettre read the greeting and send EHLO.
async fn connect(
    shared: &Shared,
    addr: SocketAddr,
    sni: &str,
    implicit: bool,
    helo: &ClientId,
) -> Result<(AsyncSmtpConnection, Wire), ConnectError> {
    let settings = shared.settings();
    let tcp = connect_tcp(addr, settings.source_ip, settings.timeouts.connect)
        .await
        .map_err(ConnectError::Tcp)?;
    let (stream, wire) = if implicit {
        let config = shared.tls.implicit_config().map_err(ConnectError::Tls)?;
        let (stream, established) = SmtpStream::implicit(tcp, config, sni)
            .await
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        (stream, Wire::Implicit(established))
    } else {
        let (stream, seen) = SmtpStream::plain(tcp);
        (stream, Wire::Plain(seen))
    };
    let conn = AsyncSmtpConnection::connect_with_transport(Box::new(stream), helo)
        .await
        .map_err(ConnectError::Smtp)?;
    Ok((conn, wire))
}

/// Connects to `ip` and runs the greeting, EHLO, STARTTLS (when `use_tls` and offered), AUTH
/// (relay host) and a second EHLO to learn the extensions lettre does not record.
async fn open_session(
    shared: &Shared,
    target: &Target<'_>,
    ip: IpAddr,
    use_tls: bool,
    slot: ConnectionSlot,
) -> Result<Session, OpenError> {
    let settings = shared.settings();
    let t = &settings.timeouts;
    let helo = ClientId::Domain(settings.helo().to_owned());
    let addr = SocketAddr::new(ip, target.port);
    let sni = target
        .name
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let implicit_tls = target.relay.is_some_and(|r| r.tls == RelayTls::Implicit);
    let cannot_connect = |e: &dyn std::fmt::Display| {
        SmtpReply::synthetic(
            451,
            EnhancedStatus::new(4, 4, 1),
            format!(
                "cannot connect to {} [{ip}]:{}: {}",
                target.name,
                target.port,
                postrider_core::dsn::one_line(&e.to_string())
            ),
        )
    };
    // The greeting and EHLO are read inside connect, so one timeout covers all three.
    let limit = t.connect + t.greeting + t.ehlo;
    let connected =
        tokio::time::timeout(limit, connect(shared, addr, &sni, implicit_tls, &helo)).await;
    let (mut conn, wire) = match connected {
        Ok(Ok(connected)) => connected,
        Ok(Err(ConnectError::Smtp(e))) => {
            return Err(match reply_of_error(&e) {
                Some(reply) => {
                    let permanent =
                        classify_reply(SmtpPhase::Greeting, &reply) == ReplyClass::Permanent;
                    skip(reply, permanent, true)
                }
                None => skip(cannot_connect(&e), false, false),
            });
        }
        Ok(Err(ConnectError::Tcp(e))) => return Err(skip(cannot_connect(&e), false, false)),
        Ok(Err(ConnectError::Tls(e))) => {
            return Err(skip(tls_error_reply(&target.name, &e), false, false));
        }
        Err(_) => {
            return Err(skip(
                SmtpReply::synthetic(
                    451,
                    EnhancedStatus::new(4, 4, 2),
                    format!(
                        "timed out connecting to {} [{ip}] or waiting for its greeting",
                        target.name
                    ),
                ),
                false,
                false,
            ));
        }
    };
    // Under an enforced policy the certificate is checked right after the handshake (below),
    // before anything but EHLO is sent, so that the failure can be named precisely.
    let authenticated = matches!(target.mode, SessionMode::MxAuthenticated(_));
    if use_tls && matches!(wire, Wire::Plain(_)) && conn.can_starttls() {
        let handshake = async {
            let params =
                tls_parameters(shared, &sni, settings.verify_certificates && !authenticated)?;
            conn.starttls(params, &helo).await
        };
        match tokio::time::timeout(t.ehlo, handshake).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(OpenError::TlsFailed(tls_error_reply(&target.name, &e))),
            Err(_) => {
                return Err(OpenError::TlsFailed(SmtpReply::synthetic(
                    451,
                    EnhancedStatus::new(4, 7, 0),
                    format!("STARTTLS with {} timed out", target.name),
                )));
            }
        }
    }
    let established = match wire {
        Wire::Implicit(established) => Some(established),
        Wire::Plain(seen) if conn.is_encrypted() => Some(EstablishedTls {
            version: seen.get(),
            chain: conn.certificate_chain().unwrap_or_default(),
        }),
        Wire::Plain(_) => None,
    };
    let encrypted = established.is_some();
    let policy_check = match &target.sts {
        Some(sts) => {
            let checked = policy_check(shared, sts, target, ip, established.as_ref(), &sni);
            if let Err(reply) = &checked
                && sts.mode == StsMode::Enforce
            {
                quit(&mut conn, t.quit).await;
                return Err(skip(reply.clone(), false, true));
            }
            Some(checked.is_ok())
        }
        None => None,
    };
    let tls_required = match target.mode {
        SessionMode::Mx(m) => m == TlsMode::Required,
        SessionMode::MxAuthenticated(_) => true,
        SessionMode::Relay => target
            .relay
            .is_some_and(|r| r.tls != RelayTls::Opportunistic),
    };
    if tls_required && !encrypted {
        quit(&mut conn, t.quit).await;
        return Err(skip(
            SmtpReply::synthetic(
                451,
                EnhancedStatus::new(4, 7, 10),
                format!(
                    "TLS is required, but {} does not offer STARTTLS",
                    target.name
                ),
            ),
            false,
            true,
        ));
    }
    if let Some(relay) = target.relay
        && let (Some(user), Some(password)) = (&relay.username, &relay.password)
    {
        if !encrypted && !relay.allow_plaintext_auth {
            quit(&mut conn, t.quit).await;
            return Err(skip(
                SmtpReply::synthetic(
                    451,
                    EnhancedStatus::new(4, 7, 10),
                    format!(
                        "refusing to send credentials to {} over a plaintext session",
                        target.name
                    ),
                ),
                false,
                true,
            ));
        }
        let credentials = Credentials::new(user.clone(), password.clone());
        let auth = conn.auth(&[Mechanism::Plain, Mechanism::Login], &credentials);
        match tokio::time::timeout(t.ehlo, auth).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let reply = reply_of_error(&e).unwrap_or_else(|| {
                    SmtpReply::synthetic(
                        451,
                        EnhancedStatus::new(4, 7, 0),
                        format!(
                            "AUTH with {} failed: {}",
                            target.name,
                            postrider_core::dsn::one_line(&e.to_string())
                        ),
                    )
                });
                quit(&mut conn, t.quit).await;
                // A refused login is our configuration's fault: never bounce mail over it.
                return Err(skip(reply, false, true));
            }
            Err(_) => {
                return Err(skip(
                    SmtpReply::synthetic(
                        451,
                        EnhancedStatus::new(4, 4, 2),
                        format!("AUTH with {} timed out", target.name),
                    ),
                    false,
                    true,
                ));
            }
        }
    }
    // lettre keeps only a few extensions; ask again to learn SIZE, PIPELINING and DSN.
    let caps = match step(t.ehlo, "EHLO", conn.command(format!("EHLO {helo}\r\n"))).await {
        Step::Reply(reply) if reply.is_positive() => {
            Capabilities::parse(reply.text.lines().map(|l| l.trim()))
        }
        Step::Reply(reply) => {
            quit(&mut conn, t.quit).await;
            let permanent = classify_reply(SmtpPhase::Ehlo, &reply) == ReplyClass::Permanent;
            return Err(skip(reply, permanent, true));
        }
        Step::Broken(reply) => return Err(skip(reply, false, true)),
    };
    let tls = match &established {
        Some(established) => TlsInfo {
            encrypted: true,
            version: established.version.map(|v| v.to_string()),
            verified: policy_check.unwrap_or_else(|| {
                settings.verify_certificates || shared.tls.verifies(&established.chain, &sni)
            }),
            policy: None,
        },
        None => TlsInfo {
            encrypted: false,
            version: None,
            verified: false,
            policy: None,
        },
    };
    let label = if encrypted { "tls" } else { "plaintext" };
    if let Ok(c) = shared
        .metrics
        .outbound_tls
        .get_metric_with_label_values(&[label])
    {
        c.inc();
    }
    Ok(Session {
        conn,
        caps,
        tls,
        transactions: 0,
        idle_since: Instant::now(),
        _slot: slot,
    })
}

/// Checks an opened session against the MTA-STS policy of its domain: TLS, and a certificate
/// valid for the MX name. Counts the result; a failure is logged, and returned as the reply
/// that refuses the host (used in `enforce` mode only).
fn policy_check(
    shared: &Shared,
    sts: &StsTarget,
    target: &Target<'_>,
    ip: IpAddr,
    established: Option<&EstablishedTls>,
    name: &str,
) -> Result<(), SmtpReply> {
    let failure = match established {
        None => Some(("starttls-not-supported", "it does not offer STARTTLS")),
        Some(tls) => shared
            .tls
            .check(&tls.chain, name)
            .err()
            .map(|f| (f.result_type(), f.describe())),
    };
    let label = crate::mta_sts::policy_label(sts.mode);
    shared.sts_result(SessionResult {
        domain: &sts.domain,
        result: failure.map_or("success", |(result, _)| result),
        mx_host: Some(&target.name),
        receiving_ip: Some(ip),
    });
    match failure {
        None => Ok(()),
        Some((result, what)) => {
            tracing::warn!(domain = %sts.domain, mx = %target.name, policy = %label, result = %result, "MX host fails the MTA-STS policy");
            Err(sts.refusal(&target.name, what))
        }
    }
}

fn tls_error_reply(host: &str, e: &dyn std::fmt::Display) -> SmtpReply {
    SmtpReply::synthetic(
        451,
        EnhancedStatus::new(4, 7, 0),
        format!(
            "TLS with {host} failed: {}",
            postrider_core::dsn::one_line(&e.to_string())
        ),
    )
}

/// A new session to `ip`, with the plaintext fallback of opportunistic TLS.
async fn new_session(
    shared: &Shared,
    target: &Target<'_>,
    ip: IpAddr,
    key: &PoolKey,
    slot: ConnectionSlot,
) -> Result<Session, HostOutcome> {
    let want_tls = match target.mode {
        SessionMode::Mx(m) => m != TlsMode::Disabled,
        SessionMode::MxAuthenticated(_) | SessionMode::Relay => true,
    };
    let opportunistic = match target.mode {
        SessionMode::Mx(m) => m == TlsMode::Opportunistic,
        SessionMode::MxAuthenticated(_) => false,
        SessionMode::Relay => target
            .relay
            .is_some_and(|r| r.tls == RelayTls::Opportunistic),
    };
    match open_session(shared, target, ip, want_tls, slot).await {
        Ok(s) => Ok(s),
        Err(OpenError::TlsFailed(reply)) if opportunistic => {
            tracing::info!(relay = %relay_label(Some(target.name.as_str()), Some(SocketAddr::new(ip, target.port))), reply = %reply, "STARTTLS failed; retrying the host in plaintext");
            // The failed connection's permits were released with it: take new ones.
            let slot = match shared.pool.checkout(key).await {
                Checkout::New(slot) => slot,
                Checkout::Reused(s) => return Ok(s),
            };
            match open_session(shared, target, ip, false, slot).await {
                Ok(s) => Ok(s),
                Err(OpenError::Skip(skip)) => Err(skip),
                Err(OpenError::TlsFailed(reply)) => Err(HostOutcome::Skip {
                    reply,
                    permanent: false,
                    reached: true,
                }),
            }
        }
        Err(OpenError::TlsFailed(reply)) => {
            let reply = match &target.sts {
                Some(sts) if sts.mode == StsMode::Enforce => {
                    shared.sts_result(SessionResult {
                        domain: &sts.domain,
                        result: "validation-failure",
                        mx_host: Some(&target.name),
                        receiving_ip: Some(ip),
                    });
                    sts.refusal(
                        &target.name,
                        &format!("the TLS handshake failed ({})", reply.text),
                    )
                }
                _ => reply,
            };
            Err(HostOutcome::Skip {
                reply,
                permanent: false,
                reached: true,
            })
        }
        Err(OpenError::Skip(skip)) => Err(skip),
    }
}

/// Tries one address of one host: a pooled or new session, then the transaction; returns the
/// session to the pool when it is still clean. Updates the circuit breaker.
async fn try_address(
    shared: &Shared,
    target: &Target<'_>,
    ip: IpAddr,
    tx: &Transaction<'_>,
) -> HostOutcome {
    let settings = shared.settings();
    let key = PoolKey {
        addr: SocketAddr::new(ip, target.port),
        mode: target.mode,
    };
    let mut round = 0;
    loop {
        round += 1;
        let (mut session, reused) = match shared.pool.checkout(&key).await {
            Checkout::Reused(s) => (s, true),
            Checkout::New(slot) => match new_session(shared, target, ip, &key, slot).await {
                Ok(s) => (s, false),
                Err(outcome) => {
                    if let HostOutcome::Skip { reply, reached, .. } = &outcome
                        && (!reached || reply.code == 421)
                    {
                        shared.breaker_failure(&target.name, &reply.to_string());
                    }
                    return outcome;
                }
            },
        };
        let (results, flow) = transaction(&mut session.conn, &settings, &session.caps, tx).await;
        if reused && flow.broken && !flow.any_reply && round < 3 {
            // Its idle siblings are most likely closed too: drop them (politely), so the next
            // round opens a new connection instead of finding the next dead one.
            let stale = shared.pool.take_all_idle(&key);
            tracing::debug!(relay = %relay_label(Some(target.name.as_str()), Some(key.addr)), dropped = stale.len(), "pooled session was closed by the server; opening a new one");
            let limit = settings.timeouts.quit;
            for mut s in stale {
                tokio::spawn(async move { quit(&mut s.conn, limit).await });
            }
            continue;
        }
        session.transactions = session.transactions.saturating_add(1);
        if flow.closing {
            shared.breaker_failure(&target.name, "421 during the transaction");
        } else if let Some(r) = throttling_reply(results.iter().map(|r| &r.reply)) {
            shared.breaker_failure(&target.name, &r.to_string());
        } else if !flow.broken {
            shared.breaker_success(&target.name);
        }
        let mut tls = session.tls.clone();
        tls.policy = target
            .sts
            .as_ref()
            .map(|sts| crate::mta_sts::policy_label(sts.mode).to_owned());
        let tls = Some(tls);
        let dsn_relayed = session.caps.dsn;
        let addr = key.addr;
        if flow.reusable() && session.transactions < settings.max_messages_per_connection {
            shared.pool.put_back(key, session);
        } else if !flow.broken {
            quit(&mut session.conn, settings.timeouts.quit).await;
        }
        return HostOutcome::Done(DomainAttempt {
            results,
            mx_host: Some(target.name.clone()),
            mx_addr: Some(addr),
            tls,
            retry_at: None,
            postponed: false,
            dsn_relayed,
        });
    }
}

/// Sends QUIT and waits briefly for the 221; failures are irrelevant by now.
pub(crate) async fn quit(conn: &mut AsyncSmtpConnection, limit: Duration) {
    let _ = tokio::time::timeout(limit, conn.command("QUIT\r\n")).await;
}

/// A recipient's outcome within one transaction; `None` until a reply decides it.
type Slot = Option<(SmtpReply, ReplyClass)>;

/// How the session fared during one transaction.
#[derive(Debug, Default, Clone, Copy)]
struct Flow {
    /// The connection is unusable (network error, timeout).
    broken: bool,
    /// At least one reply arrived.
    any_reply: bool,
    /// The server said `421` (closing).
    closing: bool,
    /// An RSET was sent and not answered with 250.
    dirty: bool,
}

impl Flow {
    fn see(&mut self, step: Step) -> Result<SmtpReply, SmtpReply> {
        match step {
            Step::Reply(r) => {
                self.any_reply = true;
                if r.code == 421 {
                    self.closing = true;
                }
                Ok(r)
            }
            Step::Broken(r) => {
                self.broken = true;
                Err(r)
            }
        }
    }

    fn reusable(&self) -> bool {
        !self.broken && !self.closing && !self.dirty
    }

    /// Sends RSET to leave the session clean for the next transaction.
    async fn rset(&mut self, conn: &mut AsyncSmtpConnection, limit: Duration) {
        match step(limit, "RSET", conn.command("RSET\r\n")).await {
            Step::Reply(r) if r.code == 250 => {}
            Step::Reply(r) => {
                self.closing |= r.code == 421;
                self.dirty = true;
            }
            Step::Broken(_) => self.broken = true,
        }
    }
}

/// RFC 3461 xtext: `+`, `=`, controls, space and non-ASCII become `+XX`.
fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// `RCPT TO` with the DSN parameters when the server supports DSN.
fn rcpt_line(r: &RecipientRequest, dsn: bool) -> String {
    let mut line = format!("RCPT TO:<{}>", r.address);
    if dsn {
        if let Some(n) = r.notify {
            if n.never {
                line.push_str(" NOTIFY=NEVER");
            } else {
                let words: Vec<&str> = [
                    (n.success, "SUCCESS"),
                    (n.failure, "FAILURE"),
                    (n.delay, "DELAY"),
                ]
                .into_iter()
                .filter_map(|(on, w)| on.then_some(w))
                .collect();
                if !words.is_empty() {
                    line.push_str(" NOTIFY=");
                    line.push_str(&words.join(","));
                }
            }
        }
        if let Some(orcpt) = &r.orcpt
            && let Some((kind, addr)) = orcpt.split_once(';')
            && !kind.is_empty()
            && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            line.push_str(&format!(" ORCPT={kind};{}", xtext(addr)));
        }
    }
    line.push_str("\r\n");
    line
}

/// One transaction on an open session. Returns a result for every recipient of `tx`, and how the
/// session fared.
async fn transaction(
    conn: &mut AsyncSmtpConnection,
    settings: &DeliverySettings,
    caps: &Capabilities,
    tx: &Transaction<'_>,
) -> (Vec<RecipientResult>, Flow) {
    let mut flow = Flow::default();
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
        return (all(reply, ReplyClass::Permanent), flow);
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
        return (all(utf8_reply(), ReplyClass::Permanent), flow);
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
        return (results, flow);
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
    if caps.dsn {
        match tx.ret {
            Some(DsnRet::Full) => mail.push_str(" RET=FULL"),
            Some(DsnRet::Hdrs) => mail.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = tx.envid {
            mail.push_str(" ENVID=");
            mail.push_str(&xtext(envid));
        }
    }
    mail.push_str("\r\n");

    let mut slots: Vec<Slot> = vec![None; sendable.len()];
    let broken = run_envelope(
        conn, settings, caps, mail, &sendable, tx.body, &mut slots, &mut flow,
    )
    .await
    .err();
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
    (results, flow)
}

/// MAIL, RCPTs, DATA and the content, filling `slots` (parallel to `sendable`) as replies arrive.
/// `Err` means the connection broke; recipients whose slot is still empty are then undecided.
#[allow(clippy::too_many_arguments)]
async fn run_envelope(
    conn: &mut AsyncSmtpConnection,
    settings: &DeliverySettings,
    caps: &Capabilities,
    mail: String,
    sendable: &[(usize, &RecipientRequest)],
    body: &[u8],
    slots: &mut [Slot],
    flow: &mut Flow,
) -> Result<(), SmtpReply> {
    let t = &settings.timeouts;
    let mut accepted: Vec<usize> = Vec::with_capacity(sendable.len());
    let data_reply = if caps.pipelining {
        // RFC 2920: MAIL, every RCPT and DATA in one write, then one reply each, in order.
        let mut batch = mail;
        for (_, r) in sendable {
            batch.push_str(&rcpt_line(r, caps.dsn));
        }
        batch.push_str("DATA\r\n");
        let mail_reply = flow.see(step(t.mail, "MAIL FROM", conn.command(batch)).await)?;
        let mail_class = classify_reply(SmtpPhase::MailFrom, &mail_reply);
        for (k, slot) in slots.iter_mut().enumerate() {
            let reply = flow.see(step(t.rcpt, "RCPT TO", conn.read_response()).await)?;
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
        flow.see(step(t.data, "DATA", conn.read_response()).await)?
    } else {
        let mail_reply = flow.see(step(t.mail, "MAIL FROM", conn.command(mail)).await)?;
        let mail_class = classify_reply(SmtpPhase::MailFrom, &mail_reply);
        if mail_class != ReplyClass::Success {
            for slot in slots.iter_mut() {
                *slot = Some((mail_reply.clone(), mail_class));
            }
            flow.rset(conn, t.quit).await;
            return Ok(());
        }
        for (k, (_, r)) in sendable.iter().enumerate() {
            let reply =
                flow.see(step(t.rcpt, "RCPT TO", conn.command(rcpt_line(r, caps.dsn))).await)?;
            match classify_reply(SmtpPhase::RcptTo, &reply) {
                ReplyClass::Success => accepted.push(k),
                class => slots[k] = Some((reply, class)),
            }
        }
        if accepted.is_empty() {
            flow.rset(conn, t.quit).await;
            return Ok(());
        }
        flow.see(step(t.data, "DATA", conn.command("DATA\r\n")).await)?
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
        flow.rset(conn, t.quit).await;
        return Ok(());
    }
    if accepted.is_empty() {
        // 354 with no recipient accepted: end the empty data and reset.
        flow.see(step(t.data_end, "end of data", conn.message(b"")).await)?;
        flow.rset(conn, t.quit).await;
        return Ok(());
    }
    // lettre appends CRLF.CRLF itself; drop one trailing CRLF so the content is sent unchanged.
    let content = body.strip_suffix(b"\r\n").unwrap_or(body);
    let final_reply = flow.see(step(t.data_end, "end of data", conn.message(content)).await)?;
    let class = classify_reply(SmtpPhase::DataEnd, &final_reply);
    for k in &accepted {
        slots[*k] = Some((final_reply.clone(), class));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use postrider_core::{Address, NotifyFlags};

    #[test]
    fn relay_label_names_host_and_address_like_postfix() {
        let v4: SocketAddr = "192.0.2.5:25".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::5]:2525".parse().unwrap();
        assert_eq!(
            relay_label(Some("mx.example.org"), Some(v4)),
            "mx.example.org[192.0.2.5]:25"
        );
        assert_eq!(
            relay_label(Some("mx.example.org"), Some(v6)),
            "mx.example.org[2001:db8::5]:2525"
        );
        assert_eq!(relay_label(Some("mx.example.org"), None), "mx.example.org");
        assert_eq!(relay_label(None, None), "none");
    }

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
                starttls: true,
                dsn: true,
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

    #[test]
    fn dsn_parameters_are_xtext_encoded() {
        assert_eq!(xtext("a+b=c d\u{e9}"), "a+2Bb+3Dc+20d+C3+A9");
        let mut r = RecipientRequest::new(Address::parse("bob@example.test").unwrap());
        assert_eq!(rcpt_line(&r, true), "RCPT TO:<bob@example.test>\r\n");
        r.notify = Some(NotifyFlags {
            success: true,
            delay: true,
            ..Default::default()
        });
        r.orcpt = Some("rfc822;Bob+x@example.test".into());
        assert_eq!(
            rcpt_line(&r, true),
            "RCPT TO:<bob@example.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Bob+2Bx@example.test\r\n"
        );
        assert_eq!(rcpt_line(&r, false), "RCPT TO:<bob@example.test>\r\n");
        r.notify = Some(NotifyFlags {
            never: true,
            ..Default::default()
        });
        assert!(rcpt_line(&r, true).contains(" NOTIFY=NEVER "));
    }
}
