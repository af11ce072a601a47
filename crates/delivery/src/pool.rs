//! Outbound connection reuse and limits.
//!
//! Every open connection holds one permit of the global limit (`max_outbound_connections`) and
//! one of its destination address (`max_connections_per_host`), idle pooled connections included,
//! so the peer never sees more sessions than the limits allow. A session that needs a connection
//! takes an idle one of the same [`PoolKey`] first; otherwise it waits for permits (bounded:
//! waiting sessions belong to the bounded set of in-flight messages). While waiting it wakes when
//! a connection is returned, and it closes idle connections of other destinations when the global
//! limit is the obstacle.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lettre::transport::smtp::client::AsyncSmtpConnection;
use postrider_core::TlsInfo;
use prometheus::IntGauge;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::settings::TlsMode;

/// What makes two sessions interchangeable: the peer address and how the session was set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    /// Peer IP and port.
    pub addr: SocketAddr,
    /// How the session was opened.
    pub mode: SessionMode,
}

/// How a session was set up (sessions of different modes are never mixed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SessionMode {
    /// A plain MX (or route) session with this STARTTLS policy.
    Mx(TlsMode),
    /// An MX session held to an enforced policy (MTA-STS `enforce`): TLS with a certificate
    /// valid for the MX name, whose hash this is (a session is only reused for the same name).
    MxAuthenticated(u64),
    /// An authenticated session with the relay host.
    Relay,
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
    /// `DSN` (RFC 3461).
    pub dsn: bool,
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
                "DSN" => caps.dsn = true,
                _ => {}
            }
        }
        caps
    }
}

/// The permits of one open connection; releasing them (on drop) lets another connection open.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    _global: OwnedSemaphorePermit,
    _host: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// An open, ready SMTP session (greeting, EHLO, STARTTLS and AUTH done).
pub(crate) struct Session {
    pub conn: AsyncSmtpConnection,
    pub caps: Capabilities,
    pub tls: TlsInfo,
    /// Transactions carried out on it.
    pub transactions: u32,
    pub idle_since: Instant,
    pub _slot: ConnectionSlot,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("caps", &self.caps)
            .field("tls", &self.tls)
            .field("transactions", &self.transactions)
            .finish_non_exhaustive()
    }
}

/// What [`Pool::checkout`] found.
// Moving a session (about 1.3 KB) once per checkout is negligible next to the network I/O; boxing
// would add an allocation per message.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Checkout {
    /// An idle session of the same key.
    Reused(Session),
    /// Permission to open a new connection.
    New(ConnectionSlot),
}

/// The pool and the limits.
pub(crate) struct Pool {
    global: Arc<Semaphore>,
    per_host: usize,
    hosts: Mutex<HashMap<SocketAddr, Arc<Semaphore>>>,
    idle: Mutex<HashMap<PoolKey, Vec<Session>>>,
    returned: Notify,
    idle_timeout: Duration,
    gauge: IntGauge,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("free_global", &self.global.available_permits())
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub(crate) fn new(
        max_total: usize,
        per_host: usize,
        idle_timeout: Duration,
        gauge: IntGauge,
    ) -> Self {
        Pool {
            global: Arc::new(Semaphore::new(max_total)),
            per_host,
            hosts: Mutex::new(HashMap::new()),
            idle: Mutex::new(HashMap::new()),
            returned: Notify::new(),
            idle_timeout,
            gauge,
        }
    }

    fn host_semaphore(&self, addr: SocketAddr) -> Arc<Semaphore> {
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            hosts
                .entry(addr)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_host))),
        )
    }

    /// The freshest idle session of `key` that has not timed out.
    fn take_idle(&self, key: &PoolKey) -> Option<Session> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(key)?;
        let mut found = None;
        while let Some(s) = list.pop() {
            if s.idle_since.elapsed() < self.idle_timeout {
                found = Some(s);
                break;
            }
        }
        if list.is_empty() {
            idle.remove(key);
        }
        found
    }

    /// Closes (drops) the longest idle session whose key satisfies `which`. Returns whether one
    /// was closed.
    fn evict_idle(&self, which: impl Fn(&PoolKey) -> bool) -> bool {
        let victim = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let oldest = idle
                .iter()
                .filter(|(k, v)| which(k) && !v.is_empty())
                .min_by_key(|(_, v)| v.first().map(|s| s.idle_since))
                .map(|(k, _)| *k);
            oldest.and_then(|k| {
                let list = idle.get_mut(&k)?;
                let s = (!list.is_empty()).then(|| list.remove(0));
                if list.is_empty() {
                    idle.remove(&k);
                }
                s
            })
        };
        victim.is_some()
    }

    /// An idle session for `key`, or the permits for a new connection, waiting as long as needed.
    pub(crate) async fn checkout(&self, key: &PoolKey) -> Checkout {
        loop {
            if let Some(s) = self.take_idle(key) {
                return Checkout::Reused(s);
            }
            let host = self.host_semaphore(key.addr);
            let host_permit = match Arc::clone(&host).try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    // Idle sessions of the same address in another mode hold permits too.
                    if self.evict_idle(|k| k.addr == key.addr && k != key) {
                        continue;
                    }
                    let returned = self.returned.notified();
                    tokio::pin!(returned);
                    returned.as_mut().enable();
                    if let Some(s) = self.take_idle(key) {
                        return Checkout::Reused(s);
                    }
                    tokio::select! {
                        p = Arc::clone(&host).acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => continue,
                        },
                        _ = returned => continue,
                    }
                }
            };
            let global_permit = loop {
                if let Ok(p) = Arc::clone(&self.global).try_acquire_owned() {
                    break p;
                }
                if self.evict_idle(|_| true) {
                    continue;
                }
                let returned = self.returned.notified();
                tokio::pin!(returned);
                returned.as_mut().enable();
                tokio::select! {
                    p = Arc::clone(&self.global).acquire_owned() => if let Ok(p) = p { break p },
                    _ = returned => {}
                }
            };
            self.gauge.inc();
            return Checkout::New(ConnectionSlot {
                _global: global_permit,
                _host: host_permit,
                gauge: self.gauge.clone(),
            });
        }
    }

    /// Puts a healthy session back for reuse.
    pub(crate) fn put_back(&self, key: PoolKey, mut session: Session) {
        session.idle_since = Instant::now();
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_default()
            .push(session);
        self.returned.notify_waiters();
    }

    /// Removes idle sessions past the idle timeout (returned for a polite QUIT) and forgets
    /// per-address limits nobody uses.
    pub(crate) fn reap(&self) -> Vec<Session> {
        let mut expired = Vec::new();
        {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            for list in idle.values_mut() {
                let (old, fresh): (Vec<_>, Vec<_>) = std::mem::take(list)
                    .into_iter()
                    .partition(|s| s.idle_since.elapsed() >= self.idle_timeout);
                *list = fresh;
                expired.extend(old);
            }
            idle.retain(|_, v| !v.is_empty());
        }
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        hosts.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < self.per_host);
        expired
    }

    /// Takes every idle session of `key`: when one of them turned out to be closed by the
    /// server, the others, idle just as long, most likely are too (e.g. the server restarted).
    pub(crate) fn take_all_idle(&self, key: &PoolKey) -> Vec<Session> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key)
            .unwrap_or_default()
    }

    /// Takes every idle session (shutdown).
    pub(crate) fn drain(&self) -> Vec<Session> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.drain().flat_map(|(_, v)| v).collect()
    }
}
