//! The receiving MTA: listener, sessions and recorded state.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::behaviour::{Behaviour, Phase};
use super::command::{Command, DataReceiver, parse_command};
use super::reply::Reply;
use crate::SinkError;
use crate::tls::{self, TlsOptions, TlsVersion};

/// Longest accepted command line (bytes, CRLF included).
const MAX_COMMAND_LINE: usize = 4096;
/// Longest piece of a DATA line read at once (longer lines are split).
const MAX_DATA_SEGMENT: usize = 64 * 1024;
/// Most recipients accepted in one transaction.
const MAX_RECIPIENTS: usize = 1000;
/// Most transcript lines kept (the oldest are dropped).
const MAX_TRANSCRIPT_LINES: usize = 20_000;

/// One message the sink accepted (end-of-data reply was 2xx).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// Reverse path without brackets; empty for the null sender `<>`.
    pub mail_from: String,
    /// Raw `MAIL FROM` parameters (`SIZE=12`, `BODY=8BITMIME`, `RET=HDRS`...).
    pub mail_params: Vec<String>,
    /// Accepted recipients only, in order.
    pub rcpt_to: Vec<String>,
    /// Raw parameters of each accepted recipient (parallel to `rcpt_to`).
    pub rcpt_params: Vec<Vec<String>>,
    /// Message content with dot-stuffing undone, without the final `.` line.
    pub data: Vec<u8>,
    /// True when the session was encrypted (STARTTLS or implicit TLS).
    pub tls: bool,
    /// The TLS version negotiated for the session, when encrypted.
    pub tls_version: Option<TlsVersion>,
    /// The authenticated user, if the client used AUTH.
    pub auth_user: Option<String>,
    /// The HELO/EHLO name given by the client.
    pub helo: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// Number of the session (connection) within this sink, from 1.
    pub session: u64,
}

/// Builder of an [`SmtpSink`]; see [`SmtpSink::builder`].
#[derive(Clone, Debug)]
pub struct SmtpSinkBuilder {
    ip: IpAddr,
    port: u16,
    behaviour: Behaviour,
    tls: bool,
    tls_names: Vec<String>,
    tls_options: TlsOptions,
    implicit_tls: bool,
    credentials: Option<(String, String)>,
    require_auth: bool,
    require_tls: bool,
    auth_requires_tls: bool,
    max_message_bytes: usize,
    idle_timeout: Duration,
    max_sessions: usize,
}

impl Default for SmtpSinkBuilder {
    fn default() -> Self {
        Self {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            behaviour: Behaviour::default(),
            tls: false,
            tls_names: Vec::new(),
            tls_options: TlsOptions::default(),
            implicit_tls: false,
            credentials: None,
            require_auth: false,
            require_tls: false,
            auth_requires_tls: false,
            max_message_bytes: 64 * 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
            max_sessions: 512,
        }
    }
}

impl SmtpSinkBuilder {
    /// Address to listen on (default `127.0.0.1:0`; port 0 = ephemeral).
    /// Several sinks may share a port on different `127.0.0.x` addresses.
    pub fn bind(mut self, ip: IpAddr, port: u16) -> Self {
        self.ip = ip;
        self.port = port;
        self
    }

    /// Initial behaviour (default: accept everything).
    pub fn behaviour(mut self, behaviour: Behaviour) -> Self {
        self.behaviour = behaviour;
        self
    }

    /// Offer STARTTLS with a self-signed certificate generated at start
    /// (default off). The certificate names the behaviour's host name,
    /// `localhost` and the bind address, plus [`Self::tls_names`].
    pub fn tls(mut self, enabled: bool) -> Self {
        self.tls = enabled;
        self
    }

    /// Extra names (DNS names or IP literals) for the certificate.
    pub fn tls_names(mut self, names: Vec<String>) -> Self {
        self.tls_names = names;
        self
    }

    /// The TLS versions offered (default: TLS 1.2 and 1.3).
    pub fn tls_versions(mut self, versions: Vec<TlsVersion>) -> Self {
        self.tls_options.versions = versions;
        self
    }

    /// Answer a TLS 1.3 client's first ClientHello with a HelloRetryRequest
    /// (only the P-384 key exchange is accepted; default false).
    pub fn tls_hello_retry(mut self, enabled: bool) -> Self {
        self.tls_options.hello_retry = enabled;
        self
    }

    /// Implicit TLS (SMTPS, RFC 8314): every session starts with the TLS
    /// handshake, before the greeting; STARTTLS is then not offered.
    /// Generates the certificate as [`Self::tls`] does (default false).
    pub fn implicit_tls(mut self, enabled: bool) -> Self {
        self.implicit_tls = enabled;
        self
    }

    /// Accept `AUTH PLAIN` / `AUTH LOGIN` with these credentials and
    /// announce `AUTH PLAIN LOGIN` (default: no AUTH).
    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        self.credentials = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Reject `MAIL` with `530 5.7.0` until the client authenticated
    /// (default false).
    pub fn require_auth(mut self, required: bool) -> Self {
        self.require_auth = required;
        self
    }

    /// Reject `MAIL` with `530 5.7.0` until the session is encrypted
    /// (default false).
    pub fn require_tls(mut self, required: bool) -> Self {
        self.require_tls = required;
        self
    }

    /// Announce and allow AUTH only after STARTTLS (default false).
    pub fn auth_requires_tls(mut self, required: bool) -> Self {
        self.auth_requires_tls = required;
        self
    }

    /// Hard bound on stored message size (default 64 MiB); larger
    /// messages get `552 5.3.4`.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// A session that sends nothing for this long is closed (default 60 s).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Connections beyond this many concurrent sessions get `421` and are
    /// closed (default 512).
    pub fn max_sessions(mut self, sessions: usize) -> Self {
        self.max_sessions = sessions;
        self
    }

    /// Binds the listener, generates the certificate if TLS is on, and
    /// starts accepting connections.
    pub async fn start(self) -> Result<SmtpSink, SinkError> {
        let (listener, addr) = listen(SocketAddr::new(self.ip, self.port))?;
        let certificate = if self.tls || self.implicit_tls {
            let mut names = vec![
                self.behaviour.hostname.clone(),
                "localhost".to_owned(),
                addr.ip().to_string(),
            ];
            names.extend(self.tls_names.iter().cloned());
            Some(tls::generate(names, &self.tls_options)?)
        } else {
            None
        };
        let (cert_pem, cert_der, acceptor) = match certificate {
            Some(c) => (Some(c.cert_pem), Some(c.cert_der), Some(c.acceptor)),
            None => (None, None, None),
        };
        let shared = Arc::new(Shared {
            config: SessionConfig {
                acceptor,
                implicit_tls: self.implicit_tls,
                credentials: self.credentials,
                require_auth: self.require_auth,
                require_tls: self.require_tls,
                auth_requires_tls: self.auth_requires_tls,
                max_message_bytes: self.max_message_bytes,
                idle_timeout: self.idle_timeout,
                max_sessions: self.max_sessions,
            },
            behaviour: Mutex::new(BehaviourSlot {
                behaviour: self.behaviour,
                fail_first_base: 0,
            }),
            transactions: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            messages: Mutex::new(Vec::new()),
            transcript: Mutex::new(VecDeque::new()),
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
            message_added: Notify::new(),
        });
        tracing::debug!(%addr, tls = cert_pem.is_some(), "smtp sink listening");
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(SmtpSink {
            addr,
            shared,
            accept_task: Some(accept_task),
            cert_pem,
            cert_der,
        })
    }
}

/// A programmable receiving MTA on loopback that records what it receives.
///
/// Stops listening (and ends all its sessions) on drop or [`Self::shutdown`].
pub struct SmtpSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: Option<JoinHandle<()>>,
    cert_pem: Option<String>,
    cert_der: Option<Vec<u8>>,
}

impl SmtpSink {
    /// A builder with defaults: `127.0.0.1:0`, accept everything, no TLS.
    pub fn builder() -> SmtpSinkBuilder {
        SmtpSinkBuilder::default()
    }

    /// Starts a default sink on `127.0.0.1` with an ephemeral port.
    pub async fn start_default() -> Result<Self, SinkError> {
        Self::builder().start().await
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The self-signed certificate (PEM) when TLS is enabled.
    pub fn tls_cert_pem(&self) -> Option<&str> {
        self.cert_pem.as_deref()
    }

    /// The self-signed certificate (DER) when TLS is enabled.
    pub fn tls_cert_der(&self) -> Option<&[u8]> {
        self.cert_der.as_deref()
    }

    /// A copy of the current behaviour.
    pub fn behaviour(&self) -> Behaviour {
        self.shared.slot().behaviour.clone()
    }

    /// Replaces the behaviour; applies to the next command of every
    /// session. A `fail_first` counts transactions from now on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        let base = self.shared.transactions.load(Ordering::SeqCst);
        let mut slot = self.shared.slot();
        slot.behaviour = behaviour;
        slot.fail_first_base = base;
    }

    /// Changes the behaviour in place (same rules as [`Self::set_behaviour`]).
    pub fn update_behaviour(&self, change: impl FnOnce(&mut Behaviour)) {
        let mut behaviour = self.behaviour();
        change(&mut behaviour);
        self.set_behaviour(behaviour);
    }

    /// All messages accepted so far, in acceptance order.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        lock(&self.shared.messages).clone()
    }

    /// Forgets the recorded messages (connection counters are kept).
    pub fn clear_messages(&self) {
        lock(&self.shared.messages).clear();
    }

    /// Total connections accepted since start.
    pub fn connection_count(&self) -> u64 {
        self.shared.sessions.load(Ordering::SeqCst)
    }

    /// Sessions open right now.
    pub fn active_sessions(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// The largest number of sessions that were open at the same time.
    pub fn max_concurrent_sessions(&self) -> usize {
        self.shared.max_active.load(Ordering::SeqCst)
    }

    /// Transactions started (MAIL commands received) since start.
    pub fn transaction_count(&self) -> u64 {
        self.shared.transactions.load(Ordering::SeqCst)
    }

    /// What was said, for debugging: lines like `#3 C: MAIL FROM:<a@b>` and
    /// `#3 S: 250 2.1.0 sender ok` (bounded; AUTH secrets are hidden).
    pub fn transcript(&self) -> Vec<String> {
        lock(&self.shared.transcript).iter().cloned().collect()
    }

    /// Waits until at least `count` messages were accepted, or fails after
    /// `timeout` with the number seen.
    pub async fn wait_for_messages(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>, SinkError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.message_added.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let messages = self.messages();
            if messages.len() >= count {
                return Ok(messages);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(SinkError::Timeout {
                    wanted: count,
                    got: self.messages().len(),
                });
            }
        }
    }

    /// Stops listening and ends every session; waits for the listener task.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.accept_task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl std::fmt::Debug for SmtpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSink")
            .field("addr", &self.addr)
            .field("tls", &self.cert_pem.is_some())
            .finish()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        if let Some(task) = self.accept_task.take() {
            task.abort();
        }
    }
}

/// A listener on `requested` (port 0: ephemeral) and the address it got.
pub(crate) fn listen(requested: SocketAddr) -> Result<(TcpListener, SocketAddr), SinkError> {
    let bind_error = |source| SinkError::Bind {
        addr: requested,
        source,
    };
    let listener = bind_listener(requested).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    Ok((listener, addr))
}

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Settings fixed at start.
struct SessionConfig {
    acceptor: Option<TlsAcceptor>,
    implicit_tls: bool,
    credentials: Option<(String, String)>,
    require_auth: bool,
    require_tls: bool,
    auth_requires_tls: bool,
    max_message_bytes: usize,
    idle_timeout: Duration,
    max_sessions: usize,
}

#[derive(Debug)]
struct BehaviourSlot {
    behaviour: Behaviour,
    /// Transaction count when the behaviour was installed.
    fail_first_base: u64,
}

/// State shared by the handle, the listener and the sessions.
struct Shared {
    config: SessionConfig,
    behaviour: Mutex<BehaviourSlot>,
    transactions: AtomicU64,
    sessions: AtomicU64,
    messages: Mutex<Vec<ReceivedMessage>>,
    transcript: Mutex<VecDeque<String>>,
    active: AtomicUsize,
    max_active: AtomicUsize,
    message_added: Notify,
}

impl Shared {
    fn slot(&self) -> MutexGuard<'_, BehaviourSlot> {
        lock(&self.behaviour)
    }

    fn behaviour(&self) -> Behaviour {
        self.slot().behaviour.clone()
    }

    /// The `fail_first` reply for this phase of transaction `index`, if any.
    fn fail_first(&self, phase: Phase, index: u64) -> Option<Reply> {
        let slot = self.slot();
        let rule = slot.behaviour.fail_first.as_ref()?;
        let in_window = index > slot.fail_first_base
            && index <= slot.fail_first_base.saturating_add(rule.transactions);
        (rule.phase == phase && in_window).then(|| rule.reply.clone())
    }

    fn note(&self, session: u64, line: String) {
        let mut transcript = lock(&self.transcript);
        if transcript.len() >= MAX_TRANSCRIPT_LINES {
            transcript.pop_front();
        }
        transcript.push_back(format!("#{session} {line}"));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Owned here: aborting this task drops the set, which aborts sessions.
    let mut sessions = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "smtp sink accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        while sessions.try_join_next().is_some() {}
        let id = shared.sessions.fetch_add(1, Ordering::SeqCst) + 1;
        let active = shared.active.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_active.fetch_max(active, Ordering::SeqCst);
        let guard = ActiveGuard(shared.clone());
        let shared = shared.clone();
        sessions.spawn(async move {
            let _guard = guard;
            if active > shared.config.max_sessions {
                let mut stream = stream;
                let _ = stream
                    .write_all(b"421 4.3.2 too many connections\r\n")
                    .await;
                return;
            }
            tracing::debug!(session = id, %peer, "smtp sink session start");
            let mut session = Session::new(&shared, id, peer, stream);
            match session.run().await {
                Ok(()) => tracing::debug!(session = id, "smtp sink session end"),
                Err(error) => {
                    tracing::debug!(session = id, %error, "smtp sink session ended with error");
                    shared.note(id, format!("-- connection error: {error}"));
                }
            }
        });
    }
}

/// Decrements the open-session count when a session ends (or is aborted).
struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A plain TCP or TLS stream.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type BoxedIo = Box<dyn Io>;

/// Result of reading one bounded line.
enum LineRead {
    /// A line including its LF.
    Complete,
    /// The bound was hit before LF.
    Truncated,
    /// The peer closed (possibly after a partial line).
    Eof,
}

async fn read_bounded(
    reader: &mut BufReader<BoxedIo>,
    out: &mut Vec<u8>,
    max: usize,
) -> io::Result<LineRead> {
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(LineRead::Eof);
        }
        let room = max.saturating_sub(out.len());
        let window = &buffer[..buffer.len().min(room)];
        if let Some(index) = window.iter().position(|&b| b == b'\n') {
            out.extend_from_slice(&window[..=index]);
            reader.consume(index + 1);
            return Ok(LineRead::Complete);
        }
        let taken = window.len();
        out.extend_from_slice(window);
        reader.consume(taken);
        if out.len() >= max {
            return Ok(LineRead::Truncated);
        }
    }
}

/// A command line for the transcript, with AUTH initial responses hidden.
fn redact_auth(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(verb), Some(mechanism), Some(_)) if verb.eq_ignore_ascii_case("AUTH") => {
            format!("{verb} {mechanism} <hidden>")
        }
        _ => text.into_owned(),
    }
}

struct Transaction {
    index: u64,
    mail_from: String,
    mail_params: Vec<String>,
    rcpt_to: Vec<String>,
    rcpt_params: Vec<Vec<String>>,
}

/// What the session loop does next.
enum Flow {
    Continue,
    Close,
}

struct Session<'a> {
    shared: &'a Shared,
    id: u64,
    peer: SocketAddr,
    io: BufReader<BoxedIo>,
    tls: bool,
    tls_version: Option<TlsVersion>,
    helo: Option<String>,
    auth_user: Option<String>,
    transaction: Option<Transaction>,
    commands: u32,
}

impl<'a> Session<'a> {
    fn new(shared: &'a Shared, id: u64, peer: SocketAddr, stream: TcpStream) -> Self {
        Self {
            shared,
            id,
            peer,
            io: BufReader::new(Box::new(stream)),
            tls: false,
            tls_version: None,
            helo: None,
            auth_user: None,
            transaction: None,
            commands: 0,
        }
    }

    async fn run(&mut self) -> io::Result<()> {
        let behaviour = self.shared.behaviour();
        if behaviour.disconnect_at_command == Some(0) {
            self.shared
                .note(self.id, "-- dropped before greeting".into());
            return Ok(());
        }
        if self.shared.config.implicit_tls && matches!(self.start_tls().await?, Flow::Close) {
            return Ok(());
        }
        let greeting = behaviour.effective_greeting();
        self.send(&greeting).await?;
        if greeting.code == 421 {
            return Ok(());
        }
        let refusing = !(200..300).contains(&greeting.code);
        loop {
            let Some(line) = self.read_command().await? else {
                return Ok(());
            };
            self.commands = self.commands.saturating_add(1);
            let line = match line {
                Ok(line) => line,
                Err(too_long) => {
                    self.send(&too_long).await?;
                    continue;
                }
            };
            self.shared
                .note(self.id, format!("C: {}", redact_auth(&line)));
            let behaviour = self.shared.behaviour();
            if behaviour
                .disconnect_at_command
                .is_some_and(|n| self.commands >= n)
            {
                self.shared.note(self.id, "-- dropped connection".into());
                return Ok(());
            }
            let command = parse_command(&line);
            if refusing {
                let reply = match command {
                    Command::Quit => Reply::new(221, "2.0.0 bye"),
                    _ => Reply::new(503, "5.5.1 no service, please QUIT"),
                };
                self.send(&reply).await?;
                if reply.code == 221 {
                    return Ok(());
                }
                continue;
            }
            if let Flow::Close = self.handle(command, &behaviour).await? {
                return Ok(());
            }
        }
    }

    /// Reads one command line without its line ending. `Ok(None)` on EOF or
    /// idle timeout; `Ok(Some(Err(reply)))` for an overlong line.
    async fn read_command(&mut self) -> io::Result<Option<Result<Vec<u8>, Reply>>> {
        let mut line = Vec::new();
        let idle = self.shared.config.idle_timeout;
        let read = tokio::time::timeout(
            idle,
            read_bounded(&mut self.io, &mut line, MAX_COMMAND_LINE),
        )
        .await;
        match read {
            Err(_) => {
                self.shared.note(self.id, "-- idle timeout".into());
                Ok(None)
            }
            Ok(Err(error)) => Err(error),
            Ok(Ok(LineRead::Eof)) => Ok(None),
            Ok(Ok(LineRead::Truncated)) => {
                // Skip the rest of the line, a bounded piece at a time.
                loop {
                    let mut rest = Vec::new();
                    match tokio::time::timeout(
                        idle,
                        read_bounded(&mut self.io, &mut rest, MAX_COMMAND_LINE),
                    )
                    .await
                    {
                        Ok(Ok(LineRead::Complete)) => break,
                        Ok(Ok(LineRead::Truncated)) => continue,
                        Ok(Ok(LineRead::Eof)) | Err(_) => return Ok(None),
                        Ok(Err(error)) => return Err(error),
                    }
                }
                Ok(Some(Err(Reply::new(500, "5.5.6 line too long"))))
            }
            Ok(Ok(LineRead::Complete)) => {
                while matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.pop();
                }
                Ok(Some(Ok(line)))
            }
        }
    }

    async fn send(&mut self, reply: &Reply) -> io::Result<()> {
        let delay = self.shared.slot().behaviour.reply_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.shared.note(self.id, format!("S: {reply}"));
        self.io
            .get_mut()
            .write_all(reply.to_wire().as_bytes())
            .await?;
        self.io.get_mut().flush().await
    }

    async fn handle(&mut self, command: Command, behaviour: &Behaviour) -> io::Result<Flow> {
        let reply = match command {
            Command::Ehlo(domain) => {
                self.transaction = None;
                let reply = match &behaviour.ehlo_reply {
                    Some(reply) => reply.clone(),
                    None => self.ehlo_reply(behaviour, &domain),
                };
                if reply.is_positive() {
                    self.helo = Some(domain);
                }
                reply
            }
            Command::Helo(domain) => {
                self.transaction = None;
                self.helo = Some(domain);
                Reply::new(250, behaviour.hostname.clone())
            }
            Command::Mail { path, params } => self.mail(path, params, behaviour),
            Command::Rcpt { path, params } => self.rcpt(path, params, behaviour),
            Command::Data => return self.data(behaviour).await,
            Command::Rset => {
                self.transaction = None;
                Reply::ok()
            }
            Command::Noop => Reply::ok(),
            Command::Vrfy => Reply::new(252, "2.5.2 cannot verify, will attempt delivery"),
            Command::Help => Reply::new(214, "2.0.0 postrider-testkit sink"),
            Command::Quit => {
                self.send(&Reply::new(221, "2.0.0 bye")).await?;
                return Ok(Flow::Close);
            }
            Command::StartTls => return self.starttls().await,
            Command::Auth { mechanism, initial } => {
                return self.auth(&mechanism, initial).await;
            }
            Command::Syntax(what) => Reply::new(501, format!("5.5.4 syntax error: {what}")),
            Command::Unknown(_) => Reply::new(500, "5.5.2 command not recognized"),
        };
        self.send(&reply).await?;
        Ok(Flow::Continue)
    }

    fn auth_offered(&self) -> bool {
        self.shared.config.credentials.is_some()
            && (self.tls || !self.shared.config.auth_requires_tls)
    }

    fn ehlo_reply(&self, behaviour: &Behaviour, domain: &str) -> Reply {
        let extensions = &behaviour.extensions;
        let mut lines = vec![format!("{} greets {}", behaviour.hostname, domain)];
        if extensions.pipelining {
            lines.push("PIPELINING".into());
        }
        if extensions.eight_bit_mime {
            lines.push("8BITMIME".into());
        }
        if extensions.smtputf8 {
            lines.push("SMTPUTF8".into());
        }
        if let Some(size) = extensions.size {
            lines.push(format!("SIZE {size}"));
        }
        if extensions.enhanced_status_codes {
            lines.push("ENHANCEDSTATUSCODES".into());
        }
        if extensions.dsn {
            lines.push("DSN".into());
        }
        if self.shared.config.acceptor.is_some() && !self.tls {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines.extend(extensions.extra.iter().cloned());
        Reply { code: 250, lines }
    }

    fn size_limit(&self, behaviour: &Behaviour) -> usize {
        let advertised = behaviour
            .extensions
            .size
            .and_then(|size| usize::try_from(size).ok())
            .unwrap_or(usize::MAX);
        advertised.min(self.shared.config.max_message_bytes)
    }

    fn mail(&mut self, path: String, params: Vec<String>, behaviour: &Behaviour) -> Reply {
        if self.helo.is_none() {
            return Reply::new(503, "5.5.1 say EHLO first");
        }
        if self.transaction.is_some() {
            return Reply::new(503, "5.5.1 nested MAIL command");
        }
        if self.shared.config.require_tls && !self.tls {
            return Reply::new(530, "5.7.0 must issue a STARTTLS command first");
        }
        if self.shared.config.require_auth && self.auth_user.is_none() {
            return Reply::new(530, "5.7.0 authentication required");
        }
        let declared_size = params.iter().find_map(|param| {
            let (key, value) = param.split_once('=')?;
            key.eq_ignore_ascii_case("SIZE")
                .then(|| value.parse::<u64>().ok())
                .flatten()
        });
        let limit = u64::try_from(self.size_limit(behaviour)).unwrap_or(u64::MAX);
        if declared_size.is_some_and(|size| size > limit) {
            return Reply::new(552, "5.3.4 message size exceeds fixed limit");
        }
        let index = self.shared.transactions.fetch_add(1, Ordering::SeqCst) + 1;
        let reply = self
            .shared
            .fail_first(Phase::Mail, index)
            .unwrap_or_else(|| behaviour.mail_reply.clone());
        if reply.is_positive() {
            self.transaction = Some(Transaction {
                index,
                mail_from: path,
                mail_params: params,
                rcpt_to: Vec::new(),
                rcpt_params: Vec::new(),
            });
        }
        reply
    }

    fn rcpt(&mut self, path: String, params: Vec<String>, behaviour: &Behaviour) -> Reply {
        let Some(transaction) = self.transaction.as_mut() else {
            return Reply::new(503, "5.5.1 need MAIL before RCPT");
        };
        if transaction.rcpt_to.len() >= MAX_RECIPIENTS {
            return Reply::new(452, "4.5.3 too many recipients");
        }
        let reply = self
            .shared
            .fail_first(Phase::Rcpt, transaction.index)
            .unwrap_or_else(|| behaviour.rcpt_reply(&path));
        if reply.is_positive() {
            transaction.rcpt_to.push(path);
            transaction.rcpt_params.push(params);
        }
        reply
    }

    async fn data(&mut self, behaviour: &Behaviour) -> io::Result<Flow> {
        let Some(transaction) = self.transaction.take() else {
            self.send(&Reply::new(503, "5.5.1 need MAIL before DATA"))
                .await?;
            return Ok(Flow::Continue);
        };
        if transaction.rcpt_to.is_empty() {
            self.send(&Reply::new(554, "5.5.1 no valid recipients"))
                .await?;
            return Ok(Flow::Continue);
        }
        let reply = self
            .shared
            .fail_first(Phase::Data, transaction.index)
            .unwrap_or_else(|| behaviour.data_reply.clone());
        self.send(&reply).await?;
        if reply.code != 354 {
            return Ok(Flow::Continue);
        }
        let mut receiver = DataReceiver::new(self.size_limit(behaviour));
        let idle = self.shared.config.idle_timeout;
        loop {
            let mut segment = Vec::new();
            let read = tokio::time::timeout(
                idle,
                read_bounded(&mut self.io, &mut segment, MAX_DATA_SEGMENT),
            )
            .await;
            match read {
                Err(_) => {
                    self.shared.note(self.id, "-- idle timeout in DATA".into());
                    return Ok(Flow::Close);
                }
                Ok(Err(error)) => return Err(error),
                Ok(Ok(LineRead::Eof)) => {
                    self.shared
                        .note(self.id, "-- connection closed in DATA".into());
                    return Ok(Flow::Close);
                }
                Ok(Ok(LineRead::Complete | LineRead::Truncated)) => {
                    if receiver.feed(&segment) {
                        break;
                    }
                }
            }
        }
        self.shared.note(self.id, "C: <message data> .".into());
        // Behaviour may have changed while the data arrived.
        let behaviour = self.shared.behaviour();
        if behaviour.disconnect_after_data {
            self.shared
                .note(self.id, "-- dropped connection after data".into());
            return Ok(Flow::Close);
        }
        if receiver.overflowed() {
            self.send(&Reply::new(552, "5.3.4 message size exceeds fixed limit"))
                .await?;
            return Ok(Flow::Continue);
        }
        if !behaviour.end_of_data_delay.is_zero() {
            tokio::time::sleep(behaviour.end_of_data_delay).await;
        }
        let reply = self
            .shared
            .fail_first(Phase::EndOfData, transaction.index)
            .unwrap_or_else(|| behaviour.end_of_data_reply.clone());
        if (200..300).contains(&reply.code) {
            let message = ReceivedMessage {
                mail_from: transaction.mail_from,
                mail_params: transaction.mail_params,
                rcpt_to: transaction.rcpt_to,
                rcpt_params: transaction.rcpt_params,
                data: receiver.into_body(),
                tls: self.tls,
                tls_version: self.tls_version,
                auth_user: self.auth_user.clone(),
                helo: self.helo.clone().unwrap_or_default(),
                peer: self.peer,
                session: self.id,
            };
            tracing::debug!(
                session = self.id,
                from = %message.mail_from,
                recipients = message.rcpt_to.len(),
                bytes = message.data.len(),
                "smtp sink accepted message"
            );
            lock(&self.shared.messages).push(message);
            self.shared.message_added.notify_waiters();
        }
        self.send(&reply).await?;
        Ok(Flow::Continue)
    }

    async fn starttls(&mut self) -> io::Result<Flow> {
        if self.shared.config.acceptor.is_none() {
            self.send(&Reply::new(502, "5.5.1 STARTTLS not available"))
                .await?;
            return Ok(Flow::Continue);
        }
        if self.tls {
            self.send(&Reply::new(503, "5.5.1 already using TLS"))
                .await?;
            return Ok(Flow::Continue);
        }
        self.send(&Reply::new(220, "2.0.0 ready to start TLS"))
            .await?;
        if !self.io.buffer().is_empty() {
            // RFC 3207: anything pipelined after STARTTLS is discarded.
            self.shared.note(
                self.id,
                "-- discarded input pipelined after STARTTLS".into(),
            );
        }
        self.start_tls().await
    }

    /// Runs the server side of the TLS handshake on the connection and
    /// starts the session afresh over it (RFC 3207 §4.2).
    async fn start_tls(&mut self) -> io::Result<Flow> {
        let Some(acceptor) = self.shared.config.acceptor.clone() else {
            return Ok(Flow::Close);
        };
        let placeholder: BoxedIo = Box::new(tokio::io::empty());
        let plain = std::mem::replace(&mut self.io, BufReader::new(placeholder)).into_inner();
        let handshake =
            tokio::time::timeout(self.shared.config.idle_timeout, acceptor.accept(plain)).await;
        match handshake {
            Ok(Ok(stream)) => {
                self.tls_version = stream
                    .get_ref()
                    .1
                    .protocol_version()
                    .and_then(TlsVersion::of);
                self.io = BufReader::new(Box::new(stream));
                self.tls = true;
                self.helo = None;
                self.auth_user = None;
                self.transaction = None;
                self.shared.note(self.id, "-- TLS established".into());
                Ok(Flow::Continue)
            }
            Ok(Err(error)) => {
                self.shared
                    .note(self.id, format!("-- TLS handshake failed: {error}"));
                Ok(Flow::Close)
            }
            Err(_) => {
                self.shared
                    .note(self.id, "-- TLS handshake timed out".into());
                Ok(Flow::Close)
            }
        }
    }

    /// Reads one AUTH continuation line (hidden from the transcript).
    async fn read_auth_line(&mut self) -> io::Result<Option<String>> {
        match self.read_command().await? {
            Some(Ok(line)) => {
                self.shared.note(self.id, "C: <auth data>".into());
                Ok(Some(String::from_utf8_lossy(&line).into_owned()))
            }
            Some(Err(_)) | None => Ok(None),
        }
    }

    async fn auth(&mut self, mechanism: &str, initial: Option<String>) -> io::Result<Flow> {
        let early = if !self.auth_offered() {
            Some(Reply::new(502, "5.5.1 AUTH not available"))
        } else if self.auth_user.is_some() {
            Some(Reply::new(503, "5.5.1 already authenticated"))
        } else if self.transaction.is_some() {
            Some(Reply::new(
                503,
                "5.5.1 AUTH not allowed during a transaction",
            ))
        } else if mechanism != "PLAIN" && mechanism != "LOGIN" {
            Some(Reply::new(504, "5.5.4 unrecognized authentication type"))
        } else {
            None
        };
        if let Some(reply) = early {
            self.send(&reply).await?;
            return Ok(Flow::Continue);
        }
        let mut responses = Vec::new();
        let prompts: &[&str] = if mechanism == "PLAIN" {
            &[""]
        } else {
            &["VXNlcm5hbWU6", "UGFzc3dvcmQ6"]
        };
        let mut initial = initial;
        for prompt in prompts {
            let response = match initial.take() {
                Some(first) => first,
                None => {
                    self.send(&Reply::new(334, prompt)).await?;
                    match self.read_auth_line().await? {
                        Some(line) => line,
                        None => return Ok(Flow::Close),
                    }
                }
            };
            if response == "*" {
                self.send(&Reply::new(501, "5.0.0 authentication cancelled"))
                    .await?;
                return Ok(Flow::Continue);
            }
            let decoded = if response == "=" {
                Some(Vec::new())
            } else {
                BASE64.decode(response.trim()).ok()
            };
            let Some(decoded) = decoded else {
                self.send(&Reply::new(501, "5.5.2 invalid base64")).await?;
                return Ok(Flow::Continue);
            };
            responses.push(String::from_utf8_lossy(&decoded).into_owned());
        }
        let (user, password) = if mechanism == "PLAIN" {
            let mut parts = responses[0].split('\0');
            let _authorization = parts.next();
            (
                parts.next().unwrap_or_default().to_owned(),
                parts.next().unwrap_or_default().to_owned(),
            )
        } else {
            (responses[0].clone(), responses[1].clone())
        };
        let valid = self
            .shared
            .config
            .credentials
            .as_ref()
            .is_some_and(|(u, p)| *u == user && *p == password);
        let reply = if valid {
            self.auth_user = Some(user);
            Reply::new(235, "2.7.0 authentication successful")
        } else {
            Reply::new(535, "5.7.8 authentication credentials invalid")
        };
        self.send(&reply).await?;
        Ok(Flow::Continue)
    }
}
