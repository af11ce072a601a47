//! The PROXY protocol (HAProxy, versions 1 and 2): a load balancer in front of the relay
//! announces the real client address in a header before the first byte of the session.
//!
//! Only connections from [`ProxyTrust`] networks are read for a header, and they must send one;
//! every other connection is its own client. The header is read octet-exact (nothing of the
//! session after it is consumed, so TLS and HTTP start right behind it), bounded in size and
//! time, and decoded with the `ppp` crate.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a trusted proxy may take to send its header, by default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest version 1 header, CRLF included (from the specification).
const V1_MAX_LEN: usize = 107;
/// The 12 octets that open a version 2 header.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Fixed part of a version 2 header: signature, version/command, family, length.
const V2_FIXED_LEN: usize = 16;
/// Octets read before deciding between version 1 and 2 (both headers are longer).
const PREFIX_LEN: usize = 8;

/// Which peers are load balancers that announce the real client with a PROXY header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyTrust {
    networks: Vec<IpNet>,
    header_timeout: Duration,
}

impl Default for ProxyTrust {
    fn default() -> Self {
        ProxyTrust::new(Vec::new())
    }
}

/// Why no client address could be read from a trusted proxy; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The header did not arrive in time.
    #[error("no PROXY header within {0:?}")]
    TimedOut(Duration),
    /// The connection does not start with a PROXY protocol signature.
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    /// The header is malformed or too long.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    /// Reading failed or the peer closed the connection first.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

impl ProxyTrust {
    /// Trusts `networks` (none: the PROXY protocol is off), with the default header timeout.
    pub fn new(networks: Vec<IpNet>) -> ProxyTrust {
        ProxyTrust {
            networks,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        }
    }

    /// The same trust with another bound on the time a proxy may take to send its header.
    #[must_use]
    pub fn with_header_timeout(mut self, timeout: Duration) -> ProxyTrust {
        self.header_timeout = timeout;
        self
    }

    /// Whether a connection from `peer` must start with a PROXY header.
    pub fn expects_header(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.networks.iter().any(|net| net.contains(&peer))
    }

    /// The real client of a connection accepted from `peer`: `peer` itself unless it is a
    /// trusted proxy, whose header is then read off `stream` (and nothing more).
    pub async fn client_address<R: AsyncRead + Unpin>(
        &self,
        stream: &mut R,
        peer: SocketAddr,
    ) -> Result<SocketAddr, ProxyHeaderError> {
        if !self.expects_header(peer.ip()) {
            return Ok(peer);
        }
        let header = tokio::time::timeout(self.header_timeout, read_header(stream))
            .await
            .map_err(|_| ProxyHeaderError::TimedOut(self.header_timeout))??;
        Ok(announced_client(&header)?.unwrap_or(peer))
    }
}

/// Reads exactly one PROXY header (version 1 or 2) off `stream`, not an octet further.
pub async fn read_header<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<Vec<u8>, ProxyHeaderError> {
    let mut header = vec![0u8; PREFIX_LEN];
    stream.read_exact(&mut header).await?;
    if header.starts_with(b"PROXY ") {
        // Octet by octet up to CRLF: the session's first bytes may follow in the same segment.
        while !header.ends_with(b"\r\n") {
            if header.len() >= V1_MAX_LEN {
                return Err(ProxyHeaderError::Malformed(
                    "version 1 header longer than 107 octets".to_owned(),
                ));
            }
            header.push(stream.read_u8().await?);
        }
        return Ok(header);
    }
    if header[..] != V2_SIGNATURE[..PREFIX_LEN] {
        return Err(ProxyHeaderError::Missing);
    }
    header.resize(V2_FIXED_LEN, 0);
    stream.read_exact(&mut header[PREFIX_LEN..]).await?;
    if header[PREFIX_LEN..V2_SIGNATURE.len()] != V2_SIGNATURE[PREFIX_LEN..] {
        return Err(ProxyHeaderError::Missing);
    }
    // The length field is 16 bits: at most 64 KiB of addresses and TLVs.
    let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
    header.resize(V2_FIXED_LEN + length, 0);
    stream.read_exact(&mut header[V2_FIXED_LEN..]).await?;
    Ok(header)
}

/// The client address a complete header announces; `None` when it names none (a version 2
/// `LOCAL` command such as a health check, or `UNKNOWN`/unspecified): the proxy's own address
/// stands for the client then.
pub fn announced_client(header: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let malformed = |e: &dyn std::fmt::Display| ProxyHeaderError::Malformed(e.to_string());
    if header.starts_with(b"PROXY ") {
        let parsed = ppp::v1::Header::try_from(header).map_err(|e| malformed(&e))?;
        return Ok(match parsed.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Unknown => None,
        });
    }
    let parsed = ppp::v2::Header::try_from(header).map_err(|e| malformed(&e))?;
    if parsed.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match parsed.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: ppp::v2::Command, source: &str, tail: &[u8]) -> Vec<u8> {
        let source: SocketAddr = source.parse().unwrap();
        let destination: SocketAddr = if source.is_ipv4() {
            "10.0.0.11:25".parse().unwrap()
        } else {
            "[2001:db8::11]:25".parse().unwrap()
        };
        let mut wire = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | command,
            ppp::v2::Protocol::Stream,
            (source, destination),
        )
        .write_tlv(ppp::v2::Type::UniqueId, b"abc".as_slice())
        .unwrap()
        .build()
        .unwrap();
        wire.extend_from_slice(tail);
        wire
    }

    async fn read_client(wire: &[u8]) -> (Result<SocketAddr, ProxyHeaderError>, Vec<u8>) {
        let trust = ProxyTrust::new(vec!["127.0.0.0/8".parse().unwrap()]);
        let mut reader = wire;
        let client = trust
            .client_address(&mut reader, "127.0.0.1:40000".parse().unwrap())
            .await;
        (client, reader.to_vec())
    }

    #[tokio::test]
    async fn version_1_names_the_client_and_leaves_the_session_bytes() {
        let (client, rest) =
            read_client(b"PROXY TCP4 203.0.113.7 10.0.0.11 51234 25\r\nEHLO x\r\n").await;
        assert_eq!(client.unwrap(), "203.0.113.7:51234".parse().unwrap());
        assert_eq!(rest, b"EHLO x\r\n");
        let (client, _) = read_client(b"PROXY TCP6 2001:db8::7 2001:db8::11 51234 25\r\n").await;
        assert_eq!(client.unwrap(), "[2001:db8::7]:51234".parse().unwrap());
    }

    #[tokio::test]
    async fn version_2_names_the_client_and_leaves_the_session_bytes() {
        let wire = v2(
            ppp::v2::Command::Proxy,
            "198.51.100.9:4444",
            b"\x16\x03\x01",
        );
        let (client, rest) = read_client(&wire).await;
        assert_eq!(client.unwrap(), "198.51.100.9:4444".parse().unwrap());
        assert_eq!(rest, b"\x16\x03\x01");
        let wire = v2(ppp::v2::Command::Proxy, "[2001:db8::9]:4444", b"");
        assert_eq!(
            read_client(&wire).await.0.unwrap(),
            "[2001:db8::9]:4444".parse().unwrap()
        );
    }

    #[tokio::test]
    async fn local_and_unknown_headers_keep_the_proxy_address() {
        let wire = v2(ppp::v2::Command::Local, "198.51.100.9:4444", b"");
        assert_eq!(
            read_client(&wire).await.0.unwrap(),
            "127.0.0.1:40000".parse().unwrap()
        );
        let (client, _) = read_client(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(client.unwrap(), "127.0.0.1:40000".parse().unwrap());
    }

    #[tokio::test]
    async fn a_trusted_peer_without_a_header_is_refused() {
        let (client, _) = read_client(b"EHLO client.example\r\n").await;
        assert!(
            matches!(client, Err(ProxyHeaderError::Missing)),
            "{client:?}"
        );
        let (client, _) = read_client(b"EHLO").await;
        assert!(matches!(client, Err(ProxyHeaderError::Io(_))), "{client:?}");
    }

    #[tokio::test]
    async fn malformed_and_overlong_headers_are_refused() {
        let (client, _) = read_client(b"PROXY TCP4 not-an-address 10.0.0.11 1 25\r\n").await;
        assert!(
            matches!(client, Err(ProxyHeaderError::Malformed(_))),
            "{client:?}"
        );
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        let (client, _) = read_client(long.as_bytes()).await;
        assert!(
            matches!(client, Err(ProxyHeaderError::Malformed(_))),
            "{client:?}"
        );
        let mut bad_version = v2(ppp::v2::Command::Proxy, "198.51.100.9:4444", b"");
        bad_version[12] = 0x31;
        let (client, _) = read_client(&bad_version).await;
        assert!(
            matches!(client, Err(ProxyHeaderError::Malformed(_))),
            "{client:?}"
        );
    }

    #[tokio::test]
    async fn untrusted_peers_are_their_own_clients_and_nothing_is_read() {
        let trust = ProxyTrust::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let wire: &[u8] = b"PROXY TCP4 203.0.113.7 10.0.0.11 51234 25\r\n";
        let mut reader = wire;
        let peer: SocketAddr = "192.0.2.1:1234".parse().unwrap();
        assert_eq!(trust.client_address(&mut reader, peer).await.unwrap(), peer);
        assert_eq!(reader, wire);
        assert!(trust.expects_header("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!ProxyTrust::default().expects_header("10.1.2.3".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_silent_proxy_times_out() {
        let trust = ProxyTrust::new(vec!["127.0.0.0/8".parse().unwrap()])
            .with_header_timeout(Duration::from_millis(50));
        let (_keep, mut silent) = tokio::io::duplex(64);
        let client = trust
            .client_address(&mut silent, "127.0.0.1:1".parse().unwrap())
            .await;
        assert!(
            matches!(client, Err(ProxyHeaderError::TimedOut(_))),
            "{client:?}"
        );
    }
}
