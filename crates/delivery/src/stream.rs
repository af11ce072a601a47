//! The byte streams Postrider hands to lettre, which it connects itself so that the negotiated TLS
//! version is known ([`SmtpStream`]): plain TCP that watches for the ServerHello of a later
//! STARTTLS, or implicit TLS whose handshake Postrider ran.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::transport::smtp::client::AsyncTokioStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::tls_version::{HelloObserver, TlsVersion};

/// Opens a TCP connection to `addr` within `limit`, from `source` when given (any local address
/// otherwise), with Nagle's algorithm off: lettre writes the message and its final `.` line
/// separately, and with Nagle the terminator would wait for the server's delayed ACK (~40 ms per
/// message).
pub(crate) async fn connect_tcp(
    addr: SocketAddr,
    source: Option<IpAddr>,
    limit: Duration,
) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        if ip.is_ipv4() != addr.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("source address {ip} cannot reach {addr}"),
            ));
        }
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.set_nodelay(true)?;
    tokio::time::timeout(limit, socket.connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connection timed out"))?
}

/// The TLS version an [`SmtpStream`] saw negotiated by STARTTLS, readable after the stream was
/// handed to lettre.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeenVersion(Arc<OnceLock<TlsVersion>>);

impl SeenVersion {
    /// The version the server selected, once its ServerHello went by.
    pub(crate) fn get(&self) -> Option<TlsVersion> {
        self.0.get().copied()
    }
}

/// What a TLS handshake established: what lettre reports for the sessions it encrypts itself,
/// plus the version.
#[derive(Debug, Clone)]
pub(crate) struct EstablishedTls {
    /// The negotiated protocol version.
    pub version: Option<TlsVersion>,
    /// The server's certificate chain (DER, leaf first).
    pub chain: Vec<Vec<u8>>,
}

/// What the server may send between two writes of the client: enough for any reply (with
/// pipelined commands, a few KiB per line the client wrote) and for a TLS handshake's
/// certificates, far below what a hostile server could make the relay buffer otherwise
/// (lettre checks its line limit only once a line ends).
const REPLY_BUDGET_BASE: usize = 64 * 1024;
/// Budget added per line the client wrote (one reply each when pipelining).
const REPLY_BUDGET_PER_LINE: usize = 4 * 1024;
/// The most the budget grows to.
const REPLY_BUDGET_MAX: usize = 1024 * 1024;

/// How many more bytes the server may send before the client writes again.
#[derive(Debug)]
struct ReplyBudget {
    left: usize,
}

impl ReplyBudget {
    fn new() -> Self {
        ReplyBudget {
            left: REPLY_BUDGET_BASE,
        }
    }

    /// The client wrote `written`: the server may answer.
    fn client_wrote(&mut self, written: &[u8]) {
        let lines = written.iter().filter(|&&b| b == b'\n').count();
        self.left = self
            .left
            .max(REPLY_BUDGET_BASE)
            .saturating_add(lines.saturating_mul(REPLY_BUDGET_PER_LINE))
            .min(REPLY_BUDGET_MAX);
    }

    /// The server sent `n` bytes; an error once it sent more than it may.
    fn server_sent(&mut self, n: usize) -> io::Result<()> {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => {
                self.left = 0;
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the server sent an over-long reply (more than 64 KiB without a command in between)",
                ))
            }
        }
    }
}

/// The stream of one outbound SMTP connection, as handed to lettre, with a bound on what the
/// server may send between two commands.
#[derive(Debug)]
pub(crate) struct SmtpStream {
    inner: StreamKind,
    budget: ReplyBudget,
}

/// The transport under an [`SmtpStream`].
#[derive(Debug)]
pub(crate) enum StreamKind {
    /// Plain TCP, passed through unchanged. When lettre starts TLS on it (STARTTLS), the server's
    /// ServerHello is read on the way to learn the version lettre does not report.
    Plain {
        /// The connection.
        tcp: TcpStream,
        /// Watches the handshake.
        observer: HelloObserver,
        /// Where the version goes.
        seen: SeenVersion,
    },
    /// Implicit TLS (SMTPS), whose handshake Postrider ran. lettre treats it as a plain stream;
    /// what the handshake established is kept in an [`EstablishedTls`].
    Implicit(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl SmtpStream {
    /// A plain stream over `tcp`; the version of a later STARTTLS will show in the returned
    /// [`SeenVersion`].
    pub(crate) fn plain(tcp: TcpStream) -> (Self, SeenVersion) {
        let seen = SeenVersion::default();
        let stream = StreamKind::Plain {
            tcp,
            observer: HelloObserver::default(),
            seen: seen.clone(),
        };
        (SmtpStream::over(stream), seen)
    }

    /// Runs the TLS handshake on `tcp` for `server_name` (a DNS name or an IP literal).
    pub(crate) async fn implicit(
        tcp: TcpStream,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> io::Result<(Self, EstablishedTls)> {
        let name = ServerName::try_from(server_name.to_owned()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{server_name} is not a valid TLS server name"),
            )
        })?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        let conn = stream.get_ref().1;
        let established = EstablishedTls {
            version: conn.protocol_version().map(|v| TlsVersion(u16::from(v))),
            chain: conn
                .peer_certificates()
                .map(|chain| chain.iter().map(|c| c.to_vec()).collect())
                .unwrap_or_default(),
        };
        Ok((
            SmtpStream::over(StreamKind::Implicit(Box::new(stream))),
            established,
        ))
    }

    fn over(inner: StreamKind) -> Self {
        SmtpStream {
            inner,
            budget: ReplyBudget::new(),
        }
    }
}

/// Notes a write of `offered` that the socket accepted (part of) in the observer.
fn client_wrote(
    observer: &mut HelloObserver,
    written: io::Result<usize>,
    offered: &[u8],
) -> io::Result<usize> {
    if let Ok(n) = written
        && n > 0
        && !observer.is_done()
    {
        observer.client_sent(offered);
    }
    written
}

impl AsyncRead for SmtpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = match &mut this.inner {
            StreamKind::Plain {
                tcp,
                observer,
                seen,
            } => {
                let polled = Pin::new(tcp).poll_read(cx, buf);
                if let Poll::Ready(Ok(())) = polled
                    && !observer.is_done()
                    && let Some(version) = observer.server_sent(&buf.filled()[before..])
                {
                    let _ = seen.0.set(version);
                }
                polled
            }
            StreamKind::Implicit(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        };
        match polled {
            Poll::Ready(Ok(())) => {
                Poll::Ready(this.budget.server_sent(buf.filled().len() - before))
            }
            other => other,
        }
    }
}

impl AsyncWrite for SmtpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            StreamKind::Plain { tcp, observer, .. } => Pin::new(tcp)
                .poll_write(cx, buf)
                .map(|written| client_wrote(observer, written, buf)),
            StreamKind::Implicit(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        };
        if let Poll::Ready(Ok(n)) = polled {
            this.budget.client_wrote(&buf[..n.min(buf.len())]);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            StreamKind::Plain { tcp, observer, .. } => {
                let first = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &b[..]);
                Pin::new(tcp)
                    .poll_write_vectored(cx, bufs)
                    .map(|written| client_wrote(observer, written, first))
            }
            StreamKind::Implicit(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        };
        if let Poll::Ready(Ok(mut n)) = polled {
            for b in bufs {
                let part = &b[..n.min(b.len())];
                this.budget.client_wrote(part);
                n -= part.len();
                if n == 0 {
                    break;
                }
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            StreamKind::Plain { tcp, .. } => tcp.is_write_vectored(),
            StreamKind::Implicit(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            StreamKind::Plain { tcp, .. } => Pin::new(tcp).poll_flush(cx),
            StreamKind::Implicit(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            StreamKind::Plain { tcp, .. } => Pin::new(tcp).poll_shutdown(cx),
            StreamKind::Implicit(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

impl AsyncTokioStream for SmtpStream {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        match &self.inner {
            StreamKind::Plain { tcp, .. } => tcp.peer_addr(),
            StreamKind::Implicit(tls) => tls.get_ref().0.peer_addr(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_may_send_a_bounded_amount_between_commands() {
        let mut budget = ReplyBudget::new();
        assert!(budget.server_sent(REPLY_BUDGET_BASE).is_ok(), "a greeting");
        assert!(
            budget.server_sent(1).is_err(),
            "nothing more before a command"
        );
        budget.client_wrote(b"EHLO relay\r\n");
        assert!(budget.server_sent(REPLY_BUDGET_BASE).is_ok());
        // Pipelined commands: room for each one's reply.
        budget.client_wrote("RCPT TO:<a@x.test>\r\n".repeat(100).as_bytes());
        assert!(
            budget
                .server_sent(REPLY_BUDGET_BASE + 99 * REPLY_BUDGET_PER_LINE)
                .is_ok()
        );
        budget.client_wrote("RCPT TO:<a@x.test>\r\n".repeat(100_000).as_bytes());
        assert!(budget.server_sent(REPLY_BUDGET_MAX).is_ok());
        assert!(
            budget.server_sent(1).is_err(),
            "never more than the maximum"
        );
    }

    #[tokio::test]
    async fn outbound_connections_do_not_wait_for_delayed_acks() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tcp = connect_tcp(addr, None, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(tcp.nodelay().unwrap(), "Nagle's algorithm is off");
        let from = connect_tcp(
            addr,
            Some("127.0.0.1".parse().unwrap()),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(from.nodelay().unwrap());
        assert!(
            connect_tcp(addr, Some("::1".parse().unwrap()), Duration::from_secs(5))
                .await
                .is_err(),
            "an IPv6 source cannot reach an IPv4 address"
        );
    }
}
