//! The tokio shell: accepting connections and running one [`Protocol`] per connection.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use postrider_core::{NewMessage, Source, Timestamp};
use postrider_metrics::Metrics;
use postrider_store::{ReportEnvelope, Store};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth_throttle::{AuthThrottle, LockScope, MAX_TRACKED, ThrottlePolicy};
use crate::error::SmtpError;
use crate::limits::{ConnectionLimiter, ConnectionPermit, RateLimiter, Refusal, acquire_within};
use crate::message::{TraceInfo, logged_message_id, prepare_message};
use crate::overload::{
    SessionEntry, SessionTable, command_deadline, high_water_mark, idle_timeout,
};
use crate::password::verify_password;
use crate::proto::{
    Admission, AuthOutcome, AuthorizedUser, Credentials, Event, Protocol, ProtocolConfig,
    Rejection, Reply, SessionRole, Submission, SubmitOutcome,
};
use crate::proxy_protocol::ProxyTrust;
use crate::settings::{SmtpSettings, SmtpUser};

/// Octets read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Pending reply octets that force a flush even while pipelined input remains.
const MAX_PENDING_OUTPUT: usize = 64 * 1024;
/// Concurrent argon2 verifications (each needs about 19 MiB and a core for tens of ms).
const AUTH_CONCURRENCY: usize = 4;
/// Longest wait for a verification slot; then AUTH is answered `454 4.7.0`.
const AUTH_SLOT_WAIT: Duration = Duration::from_secs(5);
/// Time allowed for the final reply and TLS close on the way out.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Longest wait of a new client for the slot of an idle session asked to close (which has
/// [`CLOSE_GRACE`] to say goodbye); then it is refused with `421 4.7.0`.
const SLOT_HANDOVER_WAIT: Duration = Duration::from_secs(10);

/// The SMTP submission server: settings, shared limits and the sessions of every listener.
/// Cheap to clone; clones share limits and sessions.
#[derive(Clone, Debug)]
pub struct SmtpServer {
    inner: Arc<Inner>,
}

struct Inner {
    protocol: Arc<ProtocolConfig>,
    command_timeout: Duration,
    data_timeout: Duration,
    overload_timeout: Duration,
    trusted_networks: Vec<ipnet::IpNet>,
    /// Load balancers whose connections start with a PROXY header.
    proxy: ProxyTrust,
    store: Store,
    metrics: Metrics,
    tls: Option<TlsAcceptor>,
    /// The users; replaced as a whole by [`SmtpServer::reload`].
    accounts: ArcSwap<Accounts>,
    connections: Arc<ConnectionLimiter>,
    open_sessions: Arc<SessionTable>,
    ip_rates: Mutex<Option<RateLimiter<IpAddr>>>,
    user_rates: Mutex<Option<RateLimiter<String>>>,
    sessions: TaskTracker,
    auth_slots: Semaphore,
    auth_throttle: Mutex<AuthThrottle>,
    auth_lockout: Duration,
    /// Mark every accepted message sandbox ([`SmtpSettings::capture_all`]).
    capture_all: bool,
}

/// The users who may authenticate.
struct Accounts {
    users: HashMap<String, SmtpUser>,
    /// A real hash to verify unknown user names against, so they take as long as known ones.
    decoy_hash: Option<String>,
}

impl Accounts {
    fn new(users: HashMap<String, SmtpUser>, in_order: &[SmtpUser]) -> Accounts {
        Accounts {
            users,
            decoy_hash: in_order.first().map(|u| u.password_hash.clone()),
        }
    }
}

/// Sets a message rate limit to `per_minute` (`None`: unlimited); an unchanged limit keeps its
/// buckets.
fn replace_rate_limit<K: Eq + std::hash::Hash + Clone>(
    limiter: &Mutex<Option<RateLimiter<K>>>,
    per_minute: Option<u32>,
) {
    let mut current = limiter.lock().unwrap_or_else(PoisonError::into_inner);
    if current.as_ref().map(RateLimiter::per_minute) != per_minute {
        *current = per_minute.map(RateLimiter::new);
    }
}

impl SmtpServer {
    /// Builds a server; checks the settings first ([`SmtpSettings::validate`]).
    pub fn new(
        settings: SmtpSettings,
        store: Store,
        metrics: Metrics,
    ) -> Result<SmtpServer, SmtpError> {
        metrics.init_smtp_rejections(Rejection::ALL.iter().map(|r| r.as_str()));
        let users = settings.users_by_name()?;
        let protocol = Arc::new(ProtocolConfig {
            hostname: settings.hostname.clone(),
            max_message_size: settings.max_message_size,
            max_recipients: settings.max_recipients,
            max_errors: settings.max_errors,
            bare_newlines: settings.bare_newlines,
            tls_available: settings.tls.is_some(),
            role: settings.role.clone(),
        });
        let inner = Inner {
            protocol,
            command_timeout: settings.command_timeout,
            data_timeout: settings.data_timeout,
            overload_timeout: settings.overload_timeout,
            trusted_networks: settings.trusted_networks.clone(),
            proxy: settings.proxy.clone(),
            open_sessions: SessionTable::new(
                high_water_mark(settings.max_connections, settings.overload_percent),
                metrics.clone(),
            ),
            store,
            metrics,
            tls: settings.tls.clone().map(TlsAcceptor::from),
            accounts: ArcSwap::from_pointee(Accounts::new(users, &settings.users)),
            capture_all: settings.capture_all,
            connections: ConnectionLimiter::new(
                settings.max_connections,
                settings.max_connections_per_ip,
            ),
            ip_rates: Mutex::new(settings.messages_per_minute_per_ip.map(RateLimiter::new)),
            user_rates: Mutex::new(settings.messages_per_minute_per_user.map(RateLimiter::new)),
            sessions: TaskTracker::new(),
            auth_slots: Semaphore::new(AUTH_CONCURRENCY),
            auth_throttle: Mutex::new(AuthThrottle::new(ThrottlePolicy {
                max_failures: settings.auth_max_failures,
                window: settings.auth_failure_window,
                lockout: settings.auth_lockout,
                first_delay: settings.auth_failure_delay,
                max_tracked: MAX_TRACKED,
            })),
            auth_lockout: settings.auth_lockout,
        };
        Ok(SmtpServer {
            inner: Arc::new(inner),
        })
    }

    /// Replaces the users and the message rate limits of a running server (configuration
    /// reload): sessions check them from their next AUTH or MAIL on. The other settings stay
    /// as they were built. Refused as a whole, with nothing changed, when `settings` do not
    /// pass [`SmtpSettings::validate`].
    pub fn reload(&self, settings: &SmtpSettings) -> Result<(), SmtpError> {
        let users = settings.users_by_name()?;
        self.inner
            .accounts
            .store(Arc::new(Accounts::new(users, &settings.users)));
        replace_rate_limit(&self.inner.ip_rates, settings.messages_per_minute_per_ip);
        replace_rate_limit(
            &self.inner.user_rates,
            settings.messages_per_minute_per_user,
        );
        Ok(())
    }

    /// Serves one bound listener until `shutdown` is cancelled. `implicit_tls` makes it an
    /// RFC 8314 listener (TLS handshake before the greeting, port 465).
    ///
    /// After cancellation no new session starts (new connections get `421 4.3.2`), idle
    /// sessions are told `421 4.3.2` and closed, and sessions in the middle of a message finish
    /// it first. Returns once every session of this server (all listeners) has ended.
    pub async fn serve(
        &self,
        listener: TcpListener,
        implicit_tls: bool,
        shutdown: CancellationToken,
    ) -> Result<(), SmtpError> {
        if implicit_tls && self.inner.tls.is_none() {
            return Err(SmtpError::TlsNotConfigured);
        }
        let local = listener
            .local_addr()
            .map_or_else(|_| "unknown".to_owned(), |a| a.to_string());
        tracing::info!(listener = %local, implicit_tls, "smtp listener started");
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => self.accept_maybe_proxied(tcp, peer, implicit_tls, &shutdown),
                    Err(error) => {
                        // Usually out of file descriptors: back off briefly instead of spinning.
                        tracing::warn!(%error, "smtp accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        tracing::info!(listener = %local, "smtp listener draining");
        self.inner.sessions.close();
        loop {
            tokio::select! {
                biased;
                () = self.inner.sessions.wait() => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => {
                        self.refuse(&tcp, implicit_tls, 421, "4.3.2", "Service shutting down", Rejection::ShuttingDown);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                },
            }
        }
        tracing::info!(listener = %local, "smtp listener stopped");
        Ok(())
    }

    /// Resolves once every session has ended after shutdown (when [`SmtpServer::serve`] has
    /// been told to stop).
    pub async fn wait_sessions(&self) {
        self.inner.sessions.close();
        self.inner.sessions.wait().await;
    }

    /// Sessions running now.
    pub fn active_sessions(&self) -> usize {
        self.inner.sessions.len()
    }

    /// Starts the session of a new connection. One from a trusted proxy first has its PROXY
    /// header read (in its own task, so a slow proxy never holds up accepting) and then counts
    /// as coming from the client the header names: limits, policies and logs see that address.
    fn accept_maybe_proxied(
        &self,
        mut tcp: TcpStream,
        peer: SocketAddr,
        implicit_tls: bool,
        shutdown: &CancellationToken,
    ) {
        if !self.inner.proxy.expects_header(peer.ip()) {
            return self.accept(tcp, peer, implicit_tls, shutdown);
        }
        let server = self.clone();
        let shutdown = shutdown.clone();
        self.inner.sessions.spawn(async move {
            match server.inner.proxy.client_address(&mut tcp, peer).await {
                Ok(client) => {
                    tracing::debug!(proxy = %peer, client_ip = %client.ip(), "smtp connection through a proxy");
                    server.accept(tcp, client, implicit_tls, &shutdown);
                }
                Err(error) => {
                    tracing::warn!(proxy = %peer, %error, "smtp connection from a trusted proxy refused");
                }
            }
        });
    }

    fn accept(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        implicit_tls: bool,
        shutdown: &CancellationToken,
    ) {
        let waiting = match self.inner.connections.try_acquire(peer.ip()) {
            Ok(permit) => return self.start_session(tcp, peer, implicit_tls, shutdown, permit),
            Err(Refusal::PerIp) => None,
            // Full: an idle session makes room, if there is one.
            Err(Refusal::Full(ip)) => self.inner.open_sessions.evict_idlest().then_some(ip),
        };
        let Some(ip) = waiting else {
            tracing::debug!(client_ip = %peer.ip(), "smtp connection refused: too many connections");
            return self.refuse_too_many(&tcp, implicit_tls);
        };
        tracing::debug!(client_ip = %peer.ip(), "smtp server full: closing the session idle the longest for a new client");
        let server = self.clone();
        let shutdown = shutdown.clone();
        self.inner.sessions.spawn(async move {
            let limiter = Arc::clone(&server.inner.connections);
            match limiter.acquire_within(ip, SLOT_HANDOVER_WAIT).await {
                Some(permit) => server.start_session(tcp, peer, implicit_tls, &shutdown, permit),
                None => server.refuse_too_many(&tcp, implicit_tls),
            }
        });
    }

    fn start_session(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        implicit_tls: bool,
        shutdown: &CancellationToken,
        permit: ConnectionPermit,
    ) {
        let _ = tcp.set_nodelay(true);
        self.inner.metrics.smtp_sessions.inc();
        let inner = Arc::clone(&self.inner);
        let shutdown = shutdown.clone();
        self.inner.sessions.spawn(async move {
            run_session(inner, tcp, peer, implicit_tls, shutdown, permit).await;
        });
    }

    fn refuse_too_many(&self, tcp: &TcpStream, implicit_tls: bool) {
        self.refuse(
            tcp,
            implicit_tls,
            421,
            "4.7.0",
            "Too many connections, try again later",
            Rejection::TooManyConnections,
        );
    }

    /// Refuses a connection without a session: one non-blocking write, then close.
    fn refuse(
        &self,
        tcp: &TcpStream,
        implicit_tls: bool,
        code: u16,
        enhanced: &'static str,
        text: &str,
        why: Rejection,
    ) {
        self.inner
            .metrics
            .smtp_rejections
            .with_label_values(&[why.as_str()])
            .inc();
        if !implicit_tls {
            let reply = Reply::reject(
                code,
                enhanced,
                format!("{} {text}", self.inner.protocol.hostname),
                why,
            );
            let mut wire = Vec::new();
            reply.render_into(&mut wire);
            let _ = tcp.try_write(&wire);
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpServer")
            .field("hostname", &self.protocol.hostname)
            .field("tls", &self.tls.is_some())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// A plain or TLS connection.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How a session ended, for its log event.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Closed,
    ClientDisconnected,
    ReadError,
    WriteError,
    TlsFailed,
    Internal,
}

impl Ending {
    /// The name in the log (`tls_failed` matches the event of a failed implicit-TLS handshake).
    fn as_str(self) -> &'static str {
        match self {
            Ending::Closed => "closed",
            Ending::ClientDisconnected => "client_disconnected",
            Ending::ReadError => "read_error",
            Ending::WriteError => "write_error",
            Ending::TlsFailed => "tls_failed",
            Ending::Internal => "internal",
        }
    }
}

struct Session {
    inner: Arc<Inner>,
    client_ip: IpAddr,
    trusted: bool,
    protocol: Protocol,
    output: Vec<u8>,
    messages: u64,
    /// When the last reply was produced: the client's next command must be complete within
    /// the command timeout from then, so a client trickling a command line octet by octet
    /// (slowloris) still times out.
    last_reply: Instant,
    /// This session in the server's table of open sessions.
    entry: SessionEntry,
    /// Whether the server is in overload (idle sessions get the overload timeout).
    overload: tokio::sync::watch::Receiver<bool>,
}

async fn run_session(
    inner: Arc<Inner>,
    tcp: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
    shutdown: CancellationToken,
    _permit: ConnectionPermit,
) {
    let started = Instant::now();
    let client_ip = peer.ip().to_canonical();
    let trusted = inner
        .trusted_networks
        .iter()
        .any(|net| net.contains(&client_ip));
    let entry = inner.open_sessions.register();
    let overload = inner.open_sessions.overload();
    let mut stream = Stream::Plain(tcp);
    if implicit_tls {
        let timeout = handshake_timeout(&inner, *overload.borrow());
        let eviction = entry.eviction();
        let tls = tokio::select! {
            tls = handshake(&inner, stream, timeout) => tls,
            () = eviction.cancelled() => None,
        };
        match tls {
            Some(tls) => stream = tls,
            None => {
                tracing::info!(%client_ip, outcome = "tls_failed", "smtp session ended");
                return;
            }
        }
    }
    let protocol = Protocol::new(Arc::clone(&inner.protocol), trusted, implicit_tls);
    let mut session = Session {
        inner,
        client_ip,
        trusted,
        protocol,
        output: Vec::new(),
        messages: 0,
        last_reply: Instant::now(),
        entry,
        overload,
    };
    let ending = session.run(stream, &shutdown).await;
    tracing::info!(
        %client_ip,
        helo = session.protocol.helo().unwrap_or(""),
        user = session.protocol.user().unwrap_or(""),
        tls = session.protocol.is_tls(),
        trusted,
        messages = session.messages,
        outcome = ending.as_str(),
        duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "smtp session ended"
    );
}

/// How long a TLS handshake may take: the command timeout, or the overload timeout in
/// overload.
fn handshake_timeout(inner: &Inner, overloaded: bool) -> Duration {
    idle_timeout(
        inner.command_timeout,
        overloaded.then_some(inner.overload_timeout),
    )
}

/// Runs the TLS handshake on a plain stream, bounded by `timeout`.
async fn handshake(inner: &Inner, stream: Stream, timeout: Duration) -> Option<Stream> {
    let (Some(acceptor), Stream::Plain(tcp)) = (&inner.tls, stream) else {
        return None;
    };
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(Stream::Tls(Box::new(tls))),
        Ok(Err(error)) => {
            tracing::debug!(%error, "smtp TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

enum ReadOutcome {
    Data(usize),
    Eof,
    Error,
    TimedOut,
    ShuttingDown,
    /// The server needs this idle session's slot for a new client.
    Evicted,
}

impl Session {
    async fn run(&mut self, mut stream: Stream, shutdown: &CancellationToken) -> Ending {
        let mut buffer = vec![0u8; READ_CHUNK];
        loop {
            match self.protocol.next_event() {
                Event::Reply(reply) => {
                    self.last_reply = Instant::now();
                    if let Some(why) = reply.rejection {
                        let metrics = &self.inner.metrics;
                        metrics
                            .smtp_rejections
                            .with_label_values(&[why.as_str()])
                            .inc();
                        // Refusals of the message content end a transaction.
                        if matches!(
                            why,
                            Rejection::TooBig | Rejection::BareNewline | Rejection::LongTextLine
                        ) {
                            metrics
                                .smtp_transactions
                                .with_label_values(&["rejected"])
                                .inc();
                        }
                    }
                    reply.render_into(&mut self.output);
                    if self.output.len() > MAX_PENDING_OUTPUT && !self.flush(&mut stream).await {
                        return Ending::WriteError;
                    }
                }
                Event::NeedInput => {
                    if !self.flush(&mut stream).await {
                        return Ending::WriteError;
                    }
                    match self.read(&mut stream, &mut buffer, shutdown).await {
                        ReadOutcome::Data(n) => self.protocol.feed(&buffer[..n]),
                        ReadOutcome::Eof => return Ending::ClientDisconnected,
                        ReadOutcome::Error => return Ending::ReadError,
                        ReadOutcome::TimedOut => self.protocol.timeout(),
                        ReadOutcome::ShuttingDown => self.protocol.shutdown(),
                        ReadOutcome::Evicted => self.protocol.close_for_overload(),
                    }
                }
                Event::StartTls => {
                    if !self.flush(&mut stream).await {
                        return Ending::WriteError;
                    }
                    let timeout = handshake_timeout(&self.inner, *self.overload.borrow());
                    match handshake(&self.inner, stream, timeout).await {
                        Some(tls) => stream = tls,
                        None => return Ending::TlsFailed,
                    }
                    self.protocol.tls_established();
                    self.last_reply = Instant::now();
                }
                Event::Authenticate(credentials) => {
                    let outcome = self.verify(credentials).await;
                    self.protocol.resolve_auth(outcome);
                }
                Event::AdmitMessage { user } => {
                    let admitted = self.admit(user.as_deref());
                    self.protocol.resolve_admission(admitted);
                }
                Event::Submit(submission) => {
                    let outcome = self.submit(submission).await;
                    self.protocol.resolve_submit(outcome);
                }
                Event::Close => {
                    let _ = tokio::time::timeout(CLOSE_GRACE, async {
                        let _ = stream.write_all(&self.output).await;
                        let _ = stream.shutdown().await;
                    })
                    .await;
                    self.output.clear();
                    return Ending::Closed;
                }
                Event::Waiting => return Ending::Internal,
            }
        }
    }

    async fn flush(&mut self, stream: &mut Stream) -> bool {
        if self.output.is_empty() {
            return true;
        }
        let write = async {
            stream.write_all(&self.output).await?;
            stream.flush().await
        };
        let ok = matches!(
            tokio::time::timeout(self.inner.command_timeout, write).await,
            Ok(Ok(()))
        );
        self.output.clear();
        ok
    }

    async fn read(
        &mut self,
        stream: &mut Stream,
        buffer: &mut [u8],
        shutdown: &CancellationToken,
    ) -> ReadOutcome {
        let mid_message = self.protocol.is_mid_message();
        if !mid_message && shutdown.is_cancelled() {
            return ReadOutcome::ShuttingDown;
        }
        // Idle sessions (no mail transaction) may be closed for a new client and get the
        // overload timeout in overload.
        let idle = !self.protocol.in_transaction();
        if idle {
            self.entry.mark_idle(self.last_reply);
        } else {
            self.entry.mark_busy();
        }
        let eviction = self.entry.eviction();
        if idle && eviction.is_cancelled() {
            return ReadOutcome::Evicted;
        }
        // Message content has a per-read timeout (large messages on slow links take long in
        // total); commands have a deadline per command.
        let data_deadline = Instant::now() + self.inner.data_timeout;
        let mut watching_overload = true;
        loop {
            let overloaded = idle && *self.overload.borrow_and_update();
            let deadline = if mid_message {
                data_deadline
            } else {
                command_deadline(
                    self.last_reply,
                    self.inner.command_timeout,
                    overloaded.then_some(self.inner.overload_timeout),
                )
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled(), if !mid_message => return ReadOutcome::ShuttingDown,
                () = eviction.cancelled(), if idle => return ReadOutcome::Evicted,
                // Overload began or ended: wait again with the deadline that applies now.
                changed = self.overload.changed(), if idle && watching_overload => {
                    watching_overload = changed.is_ok();
                }
                read = tokio::time::timeout_at(deadline.into(), stream.read(buffer)) => return match read {
                    Err(_) => ReadOutcome::TimedOut,
                    Ok(Ok(0)) => ReadOutcome::Eof,
                    Ok(Ok(n)) => ReadOutcome::Data(n),
                    Ok(Err(_)) => ReadOutcome::Error,
                },
            }
        }
    }

    /// Checks AUTH credentials under the failure throttle: locked-out clients and users are
    /// refused without running argon2, failures are answered after a growing delay, and
    /// waiting for a verification slot is bounded.
    async fn verify(&self, credentials: Credentials) -> AuthOutcome {
        let username = credentials.username.as_str();
        if let Some(scope) = self.lockout(username) {
            return self.refuse_locked_out(username, scope);
        }
        let accounts = self.inner.accounts.load_full();
        let user = accounts.users.get(username);
        // Unknown users are checked against a real hash too, so they take as long as known ones.
        let hash = user
            .map(|u| u.password_hash.clone())
            .or_else(|| accounts.decoy_hash.clone());
        let matches = match hash {
            Some(hash) => {
                let Some(_slot) = acquire_within(&self.inner.auth_slots, AUTH_SLOT_WAIT).await
                else {
                    self.count_auth_failure("busy");
                    tracing::warn!(client_ip = %self.client_ip, "smtp authentication refused: no password check slot free");
                    return AuthOutcome::Busy;
                };
                // Concurrent guesses may have started a lockout while this one waited.
                if let Some(scope) = self.lockout(username) {
                    return self.refuse_locked_out(username, scope);
                }
                let password = credentials.password.clone();
                tokio::task::spawn_blocking(move || verify_password(&hash, &password))
                    .await
                    .unwrap_or(false)
            }
            None => false,
        };
        match user.filter(|_| matches) {
            Some(user) => {
                self.auth_throttle()
                    .record_success(self.throttled_address());
                AuthOutcome::Authorized(AuthorizedUser {
                    name: user.name.clone(),
                    allowed_senders: user.allowed_senders.clone(),
                    from_policy: user.from_policy,
                })
            }
            None => {
                self.record_auth_failure(username).await;
                AuthOutcome::Invalid
            }
        }
    }

    /// The address failed AUTH attempts are counted under: none for trusted networks (behind a
    /// load balancer every client shares its address), which are throttled per user only.
    fn throttled_address(&self) -> Option<IpAddr> {
        (!self.trusted).then_some(self.client_ip)
    }

    fn auth_throttle(&self) -> std::sync::MutexGuard<'_, AuthThrottle> {
        self.inner
            .auth_throttle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lockout(&self, username: &str) -> Option<LockScope> {
        self.auth_throttle()
            .lockout(self.throttled_address(), username, Instant::now())
    }

    fn refuse_locked_out(&self, username: &str, scope: LockScope) -> AuthOutcome {
        self.count_auth_failure("locked_out");
        tracing::debug!(client_ip = %self.client_ip, username = %loggable(username), scope = scope.as_str(), "smtp authentication refused: locked out");
        AuthOutcome::LockedOut
    }

    fn count_auth_failure(&self, reason: &str) {
        self.inner
            .metrics
            .smtp_auth_failures
            .with_label_values(&[reason])
            .inc();
    }

    /// Counts wrong credentials, logs the lockouts they start, and waits the delay before the
    /// failure may be answered.
    async fn record_auth_failure(&self, username: &str) {
        self.count_auth_failure("invalid_credentials");
        let verdict =
            self.auth_throttle()
                .record_failure(self.throttled_address(), username, Instant::now());
        tracing::info!(client_ip = %self.client_ip, username = %loggable(username), "smtp authentication failed");
        for scope in verdict.lockouts {
            self.inner
                .metrics
                .smtp_auth_lockouts
                .with_label_values(&[scope.as_str()])
                .inc();
            tracing::warn!(
                client_ip = %self.client_ip,
                username = %loggable(username),
                scope = scope.as_str(),
                lockout_secs = self.inner.auth_lockout.as_secs(),
                "smtp authentication locked out after repeated failures"
            );
        }
        tokio::time::sleep(verdict.delay).await;
    }

    /// Whether a new transaction may start: the queue must take writes (checked first, so a
    /// refusal costs no rate-limit token), then the per-IP and per-user rate limits.
    fn admit(&self, user: Option<&str>) -> Admission {
        if let Some(reason) = self.inner.store.unavailable_reason() {
            tracing::debug!(client_ip = %self.client_ip, %reason, "smtp transaction refused: queue storage unavailable");
            return Admission::StoreUnavailable(reason);
        }
        let now = Instant::now();
        if let Some(limiter) = self
            .inner
            .ip_rates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            && !limiter.try_take(&self.client_ip, now)
        {
            return Admission::RateLimited;
        }
        if let Some(user) = user
            && let Some(limiter) = self
                .inner
                .user_rates
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_mut()
            && !limiter.try_take(&user.to_owned(), now)
        {
            return Admission::RateLimited;
        }
        Admission::Admitted
    }

    async fn submit(&mut self, submission: Submission) -> SubmitOutcome {
        if self.inner.protocol.role != SessionRole::Submission {
            return self.receive_report(submission).await;
        }
        let now = now_timestamp();
        let unique = format!("{:x}.{:016x}", now.as_millis(), random_u64());
        let trace = TraceInfo {
            helo: &submission.helo,
            client_ip: self.client_ip,
            hostname: &self.inner.protocol.hostname,
            protocol: submission.protocol,
        };
        let body = prepare_message(&submission.body, &trace, now, &unique);
        let size = body.len();
        let sender = submission.envelope.sender().to_string();
        let recipients = submission.envelope.recipients().len();
        let header_id = logged_message_id(&body).unwrap_or_else(|| "-".to_owned());
        let mut message = NewMessage::new(submission.envelope, body, Source::Smtp, now);
        message.sandbox = self.inner.capture_all
            || submission
                .user
                .as_deref()
                .and_then(|name| {
                    self.inner
                        .accounts
                        .load()
                        .users
                        .get(name)
                        .map(|u| u.sandbox)
                })
                .unwrap_or(false);
        match self.inner.store.enqueue(message).await {
            Ok(id) => {
                self.messages += 1;
                let metrics = &self.inner.metrics;
                metrics
                    .messages_accepted
                    .with_label_values(&[Source::Smtp.as_str()])
                    .inc();
                metrics
                    .smtp_transactions
                    .with_label_values(&["accepted"])
                    .inc();
                tracing::info!(
                    id = %id,
                    message_id = %header_id,
                    sender = %sender,
                    recipients,
                    size,
                    client_ip = %self.client_ip,
                    user = submission.user.as_deref().unwrap_or(""),
                    "smtp message accepted"
                );
                SubmitOutcome::Queued(id)
            }
            Err(error) => {
                self.inner
                    .metrics
                    .smtp_transactions
                    .with_label_values(&["failed"])
                    .inc();
                tracing::error!(%error, client_ip = %self.client_ip, sender = %sender, "smtp message could not be queued");
                SubmitOutcome::Failed
            }
        }
    }
}

impl Session {
    /// Stores a message received by a receive-only server in the report inbox, durably,
    /// before its `250`.
    async fn receive_report(&mut self, submission: Submission) -> SubmitOutcome {
        let envelope = ReportEnvelope {
            mail_from: submission.envelope.sender().to_string(),
            rcpt_to: submission
                .envelope
                .recipients()
                .iter()
                .map(|r| r.address.to_string())
                .collect(),
            client_ip: Some(self.client_ip.to_string()),
        };
        let size = submission.body.len();
        let transactions = &self.inner.metrics.smtp_transactions;
        match self
            .inner
            .store
            .receive_report(envelope, &submission.body, now_timestamp())
            .await
        {
            Ok(id) => {
                self.messages += 1;
                transactions.with_label_values(&["accepted"]).inc();
                tracing::info!(report = %id, size, client_ip = %self.client_ip, "report received at the bounce domain");
                SubmitOutcome::Queued(id)
            }
            Err(error) => {
                transactions.with_label_values(&["failed"]).inc();
                tracing::error!(%error, client_ip = %self.client_ip, "received report could not be stored");
                SubmitOutcome::Failed
            }
        }
    }
}

/// Longest user name written to the log, in characters.
const MAX_LOGGED_NAME: usize = 64;

/// A client-supplied user name bounded for the log, with control characters escaped (`\n`,
/// `\u{1b}`) so that it cannot forge log lines or colour the terminal.
fn loggable(username: &str) -> String {
    let mut out = String::new();
    for c in username.chars().take(MAX_LOGGED_NAME) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn now_timestamp() -> Timestamp {
    postrider_core::clock::Clock::now(&postrider_core::clock::SystemClock)
}

fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        // No OS randomness: fall back to the clock; uniqueness also comes from the timestamp.
        now_timestamp().as_millis()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_user_names_are_bounded_and_cannot_break_lines() {
        assert_eq!(loggable("alice"), "alice");
        assert_eq!(loggable("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        assert_eq!(loggable(&"x".repeat(500)).len(), MAX_LOGGED_NAME);
    }
}
