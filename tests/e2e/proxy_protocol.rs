//! PROXY protocol: a load balancer at 127.0.0.2 announces the real clients; the relay's
//! policies and logs see those addresses, and nobody else can claim one.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::{TestRelay, wait_until};
use crate::smtp_client::SmtpClient;

/// The load balancer's address; the harness itself connects from 127.0.0.1.
const PROXY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Proxies at 127.0.0.2; only the documentation network 203.0.113.0/24 may relay without AUTH.
const CONFIG: &str = r#"
[proxy]
trusted = ["127.0.0.2/32"]
header_timeout = "2s"

[smtp]
trusted_networks = ["203.0.113.0/24"]
"#;

/// A connection to `to` from the local address `from`.
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .expect("connect timeout")
        .expect("connect")
}

/// A PROXY protocol version 1 header for a TCP/IPv4 client.
fn v1_header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        client.ip(),
        server.ip(),
        client.port(),
        server.port()
    )
    .into_bytes()
}

/// A PROXY protocol version 2 header (PROXY command, TCP over IPv4), built octet by octet.
fn v2_header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(client), SocketAddr::V4(server)) = (client, server) else {
        panic!("IPv4 only");
    };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]);
    header.extend_from_slice(&client.ip().octets());
    header.extend_from_slice(&server.ip().octets());
    header.extend_from_slice(&client.port().to_be_bytes());
    header.extend_from_slice(&server.port().to_be_bytes());
    header
}

/// Sends one message through a proxied connection; returns the reply to the end of data.
async fn submit_through_proxy(relay: &TestRelay, header: &[u8]) -> u16 {
    let mut tcp = connect_from(PROXY_IP, relay.smtp).await;
    tcp.write_all(header).await.unwrap();
    let (mut client, greeting) = SmtpClient::over(tcp).await;
    assert_eq!(greeting.code, 220, "{greeting:?}");
    assert_eq!(client.cmd("EHLO client.example").await.code, 250);
    let reply = client
        .send_mail(
            "app@example.com",
            &["user@example.net"],
            "Subject: proxied\r\n\r\nhello\r\n",
        )
        .await;
    let _ = client.cmd("QUIT").await;
    reply.code
}

/// One HTTP/1.1 request on `tcp` (after whatever was written already); the status code.
async fn http_status(mut tcp: TcpStream, path: &str) -> u16 {
    let host = tcp
        .peer_addr()
        .map_or_else(|_| "relay".to_owned(), |a| a.to_string());
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    // A connection the relay closes may fail the write or be reset: no answer either way.
    let _ = tcp.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("answer timeout");
    String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn smtp_clients_behind_a_trusted_proxy_are_seen_by_their_real_address() {
    let relay = TestRelay::start(CONFIG).await;
    let v1_client: SocketAddr = "203.0.113.7:51234".parse().unwrap();
    let v2_client: SocketAddr = "203.0.113.8:40000".parse().unwrap();
    // Relaying without AUTH is allowed for 203.0.113.0/24 only: the header's address counts.
    assert_eq!(
        submit_through_proxy(&relay, &v1_header(v1_client, relay.smtp)).await,
        250
    );
    assert_eq!(
        submit_through_proxy(&relay, &v2_header(v2_client, relay.smtp)).await,
        250
    );
    wait_until("both clients in the log", async || {
        let log = relay.log_text();
        let accepted = |ip: &str| {
            log.lines().any(|l| {
                l.contains("smtp message accepted") && l.contains(&format!("client_ip={ip}"))
            })
        };
        (accepted("203.0.113.7") && accepted("203.0.113.8")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn smtp_without_a_header_from_the_proxy_or_with_one_from_elsewhere_is_refused() {
    let relay = TestRelay::start(CONFIG).await;

    // The trusted proxy must send the header: a session without one is closed, ungreeted.
    let mut tcp = connect_from(PROXY_IP, relay.smtp).await;
    let _ = tcp.write_all(b"EHLO client.example\r\n").await;
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("closed in time");
    // Closed with the command unread, the connection may also be reset.
    assert!(
        closed.is_err() || answer.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    // Anyone else is a plain client: a header is an unknown command and claims nothing.
    let tcp = connect_from(Ipv4Addr::LOCALHOST, relay.smtp).await;
    let (mut client, greeting) = SmtpClient::over(tcp).await;
    assert_eq!(greeting.code, 220, "{greeting:?}");
    let spoofed = "PROXY TCP4 203.0.113.7 127.0.0.1 51234 25";
    let reply = client.cmd(spoofed).await;
    assert!(reply.code >= 500, "{reply:?}");
    assert_eq!(client.cmd("EHLO client.example").await.code, 250);
    let mail = client.cmd("MAIL FROM:<app@example.com>").await;
    let refused = if mail.code == 250 {
        client.cmd("RCPT TO:<user@example.net>").await
    } else {
        mail
    };
    assert!(refused.code >= 500, "relaying allowed: {refused:?}");
    assert!(!relay.log_text().contains("client_ip=203.0.113.7"));
}

#[tokio::test]
async fn the_http_api_sees_the_client_the_proxy_announces() {
    let relay = TestRelay::start(CONFIG).await;
    let server = relay.http;
    // Without API keys only loopback clients are served: the announced address decides.
    let mut remote = connect_from(PROXY_IP, server).await;
    remote
        .write_all(&v2_header("203.0.113.7:5000".parse().unwrap(), server))
        .await
        .unwrap();
    let remote_status = http_status(remote, "/v1/queue").await;
    assert!(
        (400..500).contains(&remote_status) && remote_status != 404,
        "a remote client was served: {remote_status}"
    );

    let mut local = connect_from(PROXY_IP, server).await;
    local
        .write_all(&v1_header("127.0.0.1:5000".parse().unwrap(), server))
        .await
        .unwrap();
    assert_eq!(http_status(local, "/v1/queue").await, 200);

    // A trusted proxy without a header gets no answer; a header from elsewhere is no HTTP.
    let silent = connect_from(PROXY_IP, server).await;
    assert_eq!(http_status(silent, "/v1/queue").await, 0);
    let mut spoofing = connect_from(Ipv4Addr::LOCALHOST, server).await;
    spoofing
        .write_all(&v1_header("127.0.0.1:5000".parse().unwrap(), server))
        .await
        .unwrap();
    assert_eq!(http_status(spoofing, "/v1/queue").await, 400);
}

/// A real HAProxy in TCP mode in front of the relay's SMTP listener, connecting from
/// [`PROXY_IP`] with `send-proxy-v2`, as `deploy/haproxy/haproxy.cfg` does. Stopped on drop.
struct Haproxy {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    /// Where clients connect.
    front: SocketAddr,
}

impl Haproxy {
    async fn start(backend: SocketAddr) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let front = SocketAddr::from((PROXY_IP, crate::harness::free_port("127.0.0.2")));
        let config = format!(
            "global\n    maxconn 100\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
             frontend smtp\n    bind {front}\n    default_backend relay\n\
             backend relay\n    server relay1 {backend} send-proxy-v2 source {PROXY_IP}\n"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        // tests/run.sh installs Debian's haproxy when it is missing.
        let child = std::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("haproxy must be installed (tests/run.sh installs it)");
        let haproxy = Haproxy {
            child,
            _dir: dir,
            front,
        };
        wait_until("haproxy listening", async || {
            TcpStream::connect(front).await.ok().map(|_| ())
        })
        .await;
        haproxy
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one message through HAProxy from the local address `from`; the first refusal (a
/// client that may not relay gets `530` at MAIL) or the reply to the end of data.
async fn submit_through_haproxy(haproxy: &Haproxy, from: Ipv4Addr) -> u16 {
    let tcp = connect_from(from, haproxy.front).await;
    let (mut client, greeting) = SmtpClient::over(tcp).await;
    assert_eq!(greeting.code, 220, "{greeting:?}");
    assert_eq!(client.cmd("EHLO client.example").await.code, 250);
    for line in [
        "MAIL FROM:<app@example.com>",
        "RCPT TO:<user@example.net>",
        "DATA",
    ] {
        let reply = client.cmd(line).await;
        if reply.code >= 400 {
            return reply.code;
        }
    }
    client
        .send_raw(b"Subject: through haproxy\r\n\r\nhello\r\n.\r\n")
        .await;
    let reply = client.read_reply().await;
    let _ = client.cmd("QUIT").await;
    reply.code
}

#[tokio::test]
async fn haproxy_with_send_proxy_v2_hands_the_relay_each_clients_own_address() {
    // Only 127.0.0.9 may relay without AUTH; HAProxy itself (127.0.0.2) may not.
    let relay = TestRelay::start(
        "[proxy]\ntrusted = [\"127.0.0.2/32\"]\n\n[smtp]\ntrusted_networks = [\"127.0.0.9/32\"]\n",
    )
    .await;
    let haproxy = Haproxy::start(relay.smtp).await;

    assert_eq!(
        submit_through_haproxy(&haproxy, Ipv4Addr::new(127, 0, 0, 9)).await,
        250,
        "the trusted application, seen through the proxy, may relay"
    );
    let other = submit_through_haproxy(&haproxy, Ipv4Addr::new(127, 0, 0, 10)).await;
    assert!(
        other >= 500,
        "another client behind the same proxy relayed: {other}"
    );
    wait_until("the application's address in the log", async || {
        let log = relay.log_text();
        log.lines()
            .any(|l| l.contains("smtp message accepted") && l.contains("client_ip=127.0.0.9"))
            .then_some(())
    })
    .await;
    let log = relay.log_text();
    assert!(
        !log.lines()
            .any(|l| l.contains("smtp message accepted") && l.contains("client_ip=127.0.0.2")),
        "{log}"
    );
}
