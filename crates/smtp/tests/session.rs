//! The SMTP server over real TCP on 127.0.0.1, with the real store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use postrider_core::MessageId;
use postrider_metrics::Metrics;
use postrider_smtp::{
    BareNewlinePolicy, FromPolicy, SmtpError, SmtpServer, SmtpSettings, SmtpUser, hash_password,
    tls_config_from_pem,
};
use postrider_store::Store;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::aws_lc_rs};
use tokio_util::sync::CancellationToken;

/// Upper bound for any single wait in these tests (a hung server fails instead of hanging).
const PATIENCE: Duration = Duration::from_secs(20);

struct TestServer {
    addr: SocketAddr,
    server: Arc<SmtpServer>,
    store: Store,
    metrics: Metrics,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), SmtpError>>,
    client_tls: Arc<ClientConfig>,
}

struct TestCert {
    server_cert_pem: String,
    server_key_pem: String,
    client: Arc<ClientConfig>,
}

fn test_cert() -> TestCert {
    let certified = rcgen::generate_simple_self_signed(vec!["mx.test".to_owned()]).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let client = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TestCert {
        server_cert_pem: certified.cert.pem(),
        server_key_pem: certified.signing_key.serialize_pem(),
        client: Arc::new(client),
    }
}

fn settings() -> SmtpSettings {
    SmtpSettings {
        hostname: "mx.test".into(),
        ..SmtpSettings::default()
    }
}

async fn start(mut settings: SmtpSettings, implicit_tls: bool) -> TestServer {
    let cert = test_cert();
    if settings.tls.is_none() {
        settings.tls = Some(
            tls_config_from_pem(
                cert.server_cert_pem.as_bytes(),
                cert.server_key_pem.as_bytes(),
            )
            .unwrap(),
        );
    }
    let metrics = Metrics::new();
    let store = Store::temporary(metrics.clone()).unwrap();
    let server = Arc::new(SmtpServer::new(settings, store.clone(), metrics.clone()).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let serving = Arc::clone(&server);
    let handle = tokio::spawn(async move { serving.serve(listener, implicit_tls, token).await });
    TestServer {
        addr,
        server,
        store,
        metrics,
        shutdown,
        handle,
        client_tls: cert.client,
    }
}

/// A line-oriented SMTP client over any stream.
struct Client<S> {
    io: BufReader<S>,
}

impl<S: AsyncRead + Unpin> Client<S> {
    /// Reads one whole (possibly multi-line) reply; `None` at EOF.
    async fn reply(&mut self) -> Option<String> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(PATIENCE, self.io.read_line(&mut line))
                .await
                .expect("reply in time")
                .ok()?;
            if n == 0 {
                return if text.is_empty() { None } else { Some(text) };
            }
            text.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Some(text);
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn send(&mut self, octets: &[u8]) {
        self.io.get_mut().write_all(octets).await.unwrap();
        self.io.get_mut().flush().await.unwrap();
    }

    /// Sends one command and returns its reply.
    async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await.unwrap_or_default()
    }

    /// Whether the server has closed the connection (after reading anything left).
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(PATIENCE, self.io.read_to_end(&mut rest)).await,
            Ok(Ok(_))
        )
    }
}

async fn connect(addr: SocketAddr) -> Client<TcpStream> {
    Client {
        io: BufReader::new(TcpStream::connect(addr).await.unwrap()),
    }
}

async fn connect_from(source: &str, addr: SocketAddr) -> Client<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    Client {
        io: BufReader::new(socket.connect(addr).await.unwrap()),
    }
}

/// Connects and reads the greeting.
async fn greeted(addr: SocketAddr) -> Client<TcpStream> {
    let mut client = connect(addr).await;
    let greeting = client.reply().await.unwrap();
    assert_eq!(greeting, "220 mx.test ESMTP Postrider\r\n");
    client
}

fn queued_id(reply: &str) -> MessageId {
    let id = reply
        .trim_end()
        .strip_prefix("250 2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("not queued: {reply:?}"));
    id.parse().unwrap()
}

fn metric(metrics: &Metrics, series: &str) -> String {
    metrics
        .render()
        .lines()
        .find(|l| l.starts_with(series))
        .map(|l| l.rsplit(' ').next().unwrap_or("").to_owned())
        .unwrap_or_default()
}

async fn send_message<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client<S>,
    from: &str,
    to: &str,
    content: &str,
) -> String {
    assert_eq!(
        client.cmd(&format!("MAIL FROM:<{from}>")).await,
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(
        client.cmd(&format!("RCPT TO:<{to}>")).await,
        "250 2.1.5 Ok\r\n"
    );
    assert!(client.cmd("DATA").await.starts_with("354 "));
    client.send(content.as_bytes()).await;
    client.send(b".\r\n").await;
    client.reply().await.unwrap()
}

#[tokio::test]
async fn full_transaction_is_queued_with_trace_headers() {
    let server = start(settings(), false).await;
    let mut client = greeted(server.addr).await;
    let ehlo = client.cmd("EHLO client.test").await;
    for capability in [
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "SIZE 26214400",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
        "STARTTLS",
        "AUTH PLAIN LOGIN",
    ] {
        assert!(
            ehlo.contains(capability),
            "{capability} missing from {ehlo}"
        );
    }
    let reply = send_message(
        &mut client,
        "sender@a.test",
        "rcpt@b.test",
        "Subject: hello\r\n\r\nHi there.\r\n..leading dot\r\n",
    )
    .await;
    let id = queued_id(&reply);
    assert_eq!(client.cmd("QUIT").await, "221 2.0.0 Bye\r\n");
    assert!(client.closed().await);

    let record = server.store.message(id).unwrap().expect("message stored");
    assert_eq!(record.sender.to_string(), "sender@a.test");
    assert_eq!(record.recipients.len(), 1);
    assert_eq!(record.source, postrider_core::Source::Smtp);
    let body = String::from_utf8(server.store.body(id).unwrap().expect("body stored")).unwrap();
    assert!(
        body.starts_with(
            "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (Postrider) with ESMTP;\r\n\t"
        ),
        "{body}"
    );
    assert!(body.contains("\r\nDate: "), "{body}");
    assert!(
        body.contains("\r\nMessage-ID: <") && body.contains("@mx.test>\r\n"),
        "{body}"
    );
    assert!(
        body.ends_with("Subject: hello\r\n\r\nHi there.\r\n.leading dot\r\n"),
        "{body}"
    );
    assert_eq!(
        metric(
            &server.metrics,
            "postrider_messages_accepted_total{source=\"smtp\"}"
        ),
        "1"
    );
    assert_eq!(
        metric(&server.metrics, "postrider_smtp_sessions_total"),
        "1"
    );
}

#[tokio::test]
async fn pipelined_commands_get_all_replies_in_order() {
    let server = start(settings(), false).await;
    let mut client = greeted(server.addr).await;
    client.cmd("EHLO c").await;
    client
        .send(b"MAIL FROM:<s@a.test>\r\nRCPT TO:<r1@b.test>\r\nRCPT TO:<bad>\r\nRCPT TO:<r2@b.test>\r\nDATA\r\n")
        .await;
    let mut replies = Vec::new();
    for _ in 0..5 {
        replies.push(client.reply().await.unwrap());
    }
    assert_eq!(
        replies,
        [
            "250 2.1.0 Ok\r\n",
            "250 2.1.5 Ok\r\n",
            "501 5.1.3 Bad recipient address syntax\r\n",
            "250 2.1.5 Ok\r\n",
            "354 End data with <CR><LF>.<CR><LF>\r\n"
        ]
    );
    client.send(b"x\r\n.\r\nNOOP\r\n").await;
    let id = queued_id(&client.reply().await.unwrap());
    assert_eq!(client.reply().await.unwrap(), "250 2.0.0 Ok\r\n");
    assert_eq!(
        server.store.message(id).unwrap().unwrap().recipients.len(),
        2
    );
}

#[tokio::test]
async fn smuggling_attempts_never_split_the_message() {
    for policy in [BareNewlinePolicy::Reject, BareNewlinePolicy::Normalize] {
        let server = start(
            SmtpSettings {
                bare_newlines: policy,
                ..settings()
            },
            false,
        )
        .await;
        for fake_end in ["\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r", "\r\n.\r", "\r.\r\n"] {
            let mut client = greeted(server.addr).await;
            client.cmd("EHLO c").await;
            let content = format!(
                "Subject: x\r\n\r\nfirst{fake_end}MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nsmuggled\r\n"
            );
            let reply = send_message(&mut client, "s@a.test", "r@b.test", &content).await;
            match policy {
                BareNewlinePolicy::Reject => assert_eq!(
                    reply,
                    "550 5.6.11 Message contains bare CR or LF; lines must end with CRLF\r\n",
                    "{fake_end:?}"
                ),
                BareNewlinePolicy::Normalize => {
                    let id = queued_id(&reply);
                    let record = server.store.message(id).unwrap().unwrap();
                    assert_eq!(record.recipients[0].request.address.to_string(), "r@b.test");
                    let body = server.store.body(id).unwrap().unwrap();
                    assert!(String::from_utf8_lossy(&body).contains("smuggled"));
                }
            }
            // The session goes on cleanly: the next command is a command again.
            assert_eq!(client.cmd("NOOP").await, "250 2.0.0 Ok\r\n", "{fake_end:?}");
        }
        assert_eq!(
            server.store.pending_count(),
            if policy == BareNewlinePolicy::Normalize {
                6
            } else {
                0
            }
        );
        if policy == BareNewlinePolicy::Reject {
            assert_eq!(
                metric(
                    &server.metrics,
                    "postrider_smtp_rejections_total{reason=\"bare_newline\"}"
                ),
                "6"
            );
        }
    }
}

#[tokio::test]
async fn size_limits_at_mail_and_after_data() {
    let server = start(
        SmtpSettings {
            max_message_size: 2000,
            ..settings()
        },
        false,
    )
    .await;
    let mut client = greeted(server.addr).await;
    assert!(client.cmd("EHLO c").await.contains("250-SIZE 2000\r\n"));
    assert_eq!(
        client.cmd("MAIL FROM:<s@a.test> SIZE=2001").await,
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    let big = "x".repeat(78) + "\r\n";
    let reply = send_message(&mut client, "s@a.test", "r@b.test", &big.repeat(100)).await;
    assert_eq!(
        reply,
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    let reply = send_message(
        &mut client,
        "s@a.test",
        "r@b.test",
        &("y".repeat(999) + "\r\n"),
    )
    .await;
    assert_eq!(
        reply,
        "552 5.6.0 Message has a line longer than 998 octets\r\n"
    );
    let reply = send_message(&mut client, "s@a.test", "r@b.test", "small\r\n").await;
    queued_id(&reply);
}

#[tokio::test]
async fn bdat_chunks_are_queued() {
    let server = start(settings(), false).await;
    let mut client = greeted(server.addr).await;
    client.cmd("EHLO c").await;
    client.send(b"MAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\nBDAT 14\r\nSubject: b\r\n\r\nBDAT 7 LAST\r\n.body\r\n").await;
    assert_eq!(client.reply().await.unwrap(), "250 2.1.0 Ok\r\n");
    assert_eq!(client.reply().await.unwrap(), "250 2.1.5 Ok\r\n");
    assert_eq!(
        client.reply().await.unwrap(),
        "250 2.0.0 14 octets received\r\n"
    );
    let id = queued_id(&client.reply().await.unwrap());
    let body = server.store.body(id).unwrap().unwrap();
    assert!(body.ends_with(b"Subject: b\r\n\r\n.body\r\n"));
    assert!(client.cmd("DATA").await.starts_with("503 5.5.1"));
}

#[tokio::test]
async fn dsn_parameters_are_stored() {
    let server = start(settings(), false).await;
    let mut client = greeted(server.addr).await;
    client.cmd("EHLO c").await;
    assert_eq!(
        client
            .cmd("MAIL FROM:<s@a.test> RET=HDRS ENVID=env+2B1")
            .await,
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(
        client
            .cmd("RCPT TO:<r@b.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;r@b.test")
            .await,
        "250 2.1.5 Ok\r\n"
    );
    assert!(client.cmd("DATA").await.starts_with("354"));
    client.send(b"x\r\n.\r\n").await;
    let id = queued_id(&client.reply().await.unwrap());
    let record = server.store.message(id).unwrap().unwrap();
    assert_eq!(record.ret, Some(postrider_core::DsnRet::Hdrs));
    assert_eq!(record.envid.as_deref(), Some("env+1"));
    let notify = record.recipients[0].request.notify.unwrap();
    assert!(notify.failure && notify.delay && !notify.success && !notify.never);
    assert_eq!(
        record.recipients[0].request.orcpt.as_deref(),
        Some("rfc822;r@b.test")
    );
}

#[tokio::test]
async fn store_failure_during_the_transaction_answers_451() {
    let server = start(settings(), false).await;
    let mut client = greeted(server.addr).await;
    client.cmd("EHLO c").await;
    assert_eq!(client.cmd("MAIL FROM:<s@a.test>").await, "250 2.1.0 Ok\r\n");
    assert_eq!(client.cmd("RCPT TO:<r@b.test>").await, "250 2.1.5 Ok\r\n");
    assert!(client.cmd("DATA").await.starts_with("354 "));
    // The store fails while the message is being uploaded.
    server.store.set_fail_writes(true);
    client.send(b"x\r\n.\r\n").await;
    assert_eq!(
        client.reply().await.unwrap(),
        "451 4.3.0 Temporary storage failure, try again later\r\n"
    );
    server.store.set_fail_writes(false);
    queued_id(&send_message(&mut client, "s@a.test", "r@b.test", "x\r\n").await);
    assert_eq!(
        metric(
            &server.metrics,
            "postrider_smtp_rejections_total{reason=\"storage\"}"
        ),
        "1"
    );
}

#[tokio::test]
async fn unavailable_store_refuses_mail_with_452() {
    let server = start(settings(), false).await;
    let mut client = greeted(server.addr).await;
    client.cmd("EHLO c").await;
    for (fail, reason) in [
        (
            Store::set_fail_writes as fn(&Store, bool),
            "queue storage writes are disabled",
        ),
        (
            Store::set_fail_syncs,
            "queue storage cannot sync its journal",
        ),
    ] {
        fail(&server.store, true);
        // Refused before any message content is sent, and no transaction starts.
        assert_eq!(
            client.cmd("MAIL FROM:<s@a.test>").await,
            format!("452 4.3.1 {reason}; try again later\r\n")
        );
        assert!(client.cmd("RCPT TO:<r@b.test>").await.starts_with("503 "));
        fail(&server.store, false);
    }
    // Once the store takes writes again, the same session queues mail.
    queued_id(&send_message(&mut client, "s@a.test", "r@b.test", "x\r\n").await);
    assert_eq!(server.store.pending_count(), 1);
    let count = |reason: &str| {
        metric(
            &server.metrics,
            &format!("postrider_smtp_rejections_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(count("storage_unavailable"), "2");
    assert_eq!(count("storage"), "0");
}

#[tokio::test]
async fn idle_and_trickling_clients_time_out() {
    let server = start(
        SmtpSettings {
            command_timeout: Duration::from_millis(300),
            ..settings()
        },
        false,
    )
    .await;
    let mut idle = greeted(server.addr).await;
    assert_eq!(
        idle.reply().await.unwrap(),
        "421 4.4.2 mx.test Error: timeout exceeded\r\n"
    );
    assert!(idle.closed().await);
    // A client sending one octet at a time never completes a command: it must still time out.
    let slow = greeted(server.addr).await;
    let (read_half, mut write_half) = slow.io.into_inner().into_split();
    let trickle = tokio::spawn(async move {
        for b in b"NOOP".iter().cycle().take(400) {
            if write_half.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut slow = Client {
        io: BufReader::new(read_half),
    };
    assert_eq!(
        slow.reply().await.unwrap(),
        "421 4.4.2 mx.test Error: timeout exceeded\r\n"
    );
    trickle.abort();
}

/// Starts a mail transaction (EHLO, MAIL) on a greeted client.
async fn in_transaction(mut client: Client<TcpStream>) -> Client<TcpStream> {
    client.cmd("EHLO c").await;
    assert_eq!(client.cmd("MAIL FROM:<s@a.test>").await, "250 2.1.0 Ok\r\n");
    client
}

#[tokio::test]
async fn connection_limits_refuse_with_421() {
    let server = start(
        SmtpSettings {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..settings()
        },
        false,
    )
    .await;
    // Sessions in a transaction: a full server has no idle session to close for a newcomer.
    let first = in_transaction(greeted(server.addr).await).await;
    let _second = in_transaction(greeted(server.addr).await).await;
    let mut third = connect(server.addr).await;
    assert_eq!(
        third.reply().await.unwrap(),
        "421 4.7.0 mx.test Too many connections, try again later\r\n"
    );
    assert!(third.closed().await);
    // Another address still gets in, up to the global limit.
    let _other = {
        let mut c = connect_from("127.0.0.2", server.addr).await;
        assert!(c.reply().await.unwrap().starts_with("220 "));
        in_transaction(c).await
    };
    let mut over_global = connect_from("127.0.0.3", server.addr).await;
    assert!(over_global.reply().await.unwrap().starts_with("421 4.7.0"));
    // Closing a session frees its slot.
    drop(first);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut c = connect(server.addr).await;
        if c.reply().await.unwrap().starts_with("220 ") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        metric(
            &server.metrics,
            "postrider_smtp_rejections_total{reason=\"too_many_connections\"}"
        )
        .parse::<u32>()
        .unwrap()
            >= 2
    );
}

#[tokio::test]
async fn garbage_and_half_closed_clients_do_not_disturb_others() {
    let server = start(settings(), false).await;
    let mut garbage = greeted(server.addr).await;
    let noise: Vec<u8> = (0u32..200_000)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let writer = tokio::spawn(async move {
        let _ = garbage.io.get_mut().write_all(&noise).await;
        // The server closes the connection (EOF or reset, as it leaves our noise unread).
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, garbage.io.read_to_end(&mut rest))
            .await
            .is_ok()
    });
    // Half-closed: a partial command, then EOF from the client.
    let mut half = greeted(server.addr).await;
    half.send(b"EHLO half").await;
    half.io.get_mut().shutdown().await.unwrap();
    assert!(half.closed().await);
    // A well-behaved client is served meanwhile.
    let mut good = greeted(server.addr).await;
    good.cmd("EHLO good").await;
    queued_id(&send_message(&mut good, "s@a.test", "r@b.test", "fine\r\n").await);
    assert!(writer.await.unwrap(), "the garbage client is disconnected");
    assert_eq!(
        metric(
            &server.metrics,
            "postrider_smtp_rejections_total{reason=\"too_many_errors\"}"
        ),
        "1"
    );
    assert_eq!(good.cmd("NOOP").await, "250 2.0.0 Ok\r\n");
}

#[tokio::test]
async fn untrusted_clients_cannot_relay() {
    let server = start(
        SmtpSettings {
            trusted_networks: Vec::new(),
            ..settings()
        },
        false,
    )
    .await;
    let mut client = greeted(server.addr).await;
    let ehlo = client.cmd("EHLO c").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert_eq!(
        client.cmd("MAIL FROM:<s@a.test>").await,
        "530 5.7.0 Authentication required\r\n"
    );
    assert!(
        client
            .cmd("RCPT TO:<victim@elsewhere.test>")
            .await
            .starts_with("503 5.5.1")
    );
    assert_eq!(
        client.cmd("AUTH PLAIN AHUAcA==").await,
        "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    );
    assert!(client.cmd("DATA").await.starts_with("503"));
    assert_eq!(server.store.pending_count(), 0);
    assert_eq!(
        metric(
            &server.metrics,
            "postrider_smtp_rejections_total{reason=\"auth_required\"}"
        ),
        "1"
    );
}

fn user(name: &str, password: &str, allowed: &[&str]) -> SmtpUser {
    SmtpUser {
        name: name.into(),
        password_hash: hash_password(password).unwrap(),
        allowed_senders: allowed.iter().map(|s| s.to_string()).collect(),
        from_policy: FromPolicy::Reject,
        sandbox: false,
    }
}

/// The client side of a TLS handshake (implicit TLS before the greeting, or after STARTTLS).
async fn tls_handshake(
    server: &TestServer,
    tcp: TcpStream,
) -> Client<tokio_rustls::client::TlsStream<TcpStream>> {
    let tls = TlsConnector::from(server.client_tls.clone())
        .connect(ServerName::try_from("mx.test").unwrap(), tcp)
        .await
        .unwrap();
    Client {
        io: BufReader::new(tls),
    }
}

async fn starttls(
    server: &TestServer,
    mut client: Client<TcpStream>,
) -> Client<tokio_rustls::client::TlsStream<TcpStream>> {
    assert_eq!(
        client.cmd("STARTTLS").await,
        "220 2.0.0 Ready to start TLS\r\n"
    );
    tls_handshake(server, client.io.into_inner()).await
}

#[tokio::test]
async fn starttls_then_auth_then_submit() {
    let settings = SmtpSettings {
        trusted_networks: Vec::new(),
        users: vec![user(
            "app",
            "s3cret",
            &["@allowed.test", "exact@other.test"],
        )],
        ..settings()
    };
    let server = start(settings, false).await;
    let mut plain = greeted(server.addr).await;
    assert!(plain.cmd("EHLO c").await.contains("STARTTLS"));
    let mut client = starttls(&server, plain).await;
    assert!(
        client
            .cmd("MAIL FROM:<s@allowed.test>")
            .await
            .starts_with("503 5.5.1"),
        "EHLO forgotten after STARTTLS"
    );
    let ehlo = client.cmd("EHLO c").await;
    assert!(
        !ehlo.contains("STARTTLS") && ehlo.contains("AUTH PLAIN LOGIN"),
        "{ehlo}"
    );
    assert_eq!(
        client.cmd("STARTTLS").await,
        "503 5.5.1 TLS already active\r\n"
    );
    // AUTH PLAIN with a wrong password, then LOGIN with the right one.
    assert_eq!(
        client.cmd("AUTH PLAIN AGFwcAB3cm9uZw==").await,
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
    assert_eq!(
        client.cmd("AUTH PLAIN AG5vYm9keQBzM2NyZXQ=").await,
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
    assert_eq!(client.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6\r\n");
    assert_eq!(client.cmd("YXBw").await, "334 UGFzc3dvcmQ6\r\n");
    assert_eq!(
        client.cmd("czNjcmV0").await,
        "235 2.7.0 Authentication successful\r\n"
    );
    assert_eq!(
        client.cmd("MAIL FROM:<boss@elsewhere.test>").await,
        "553 5.7.1 Sender address not allowed for this user\r\n"
    );
    assert_eq!(
        client.cmd("MAIL FROM:<exact@other.test>").await,
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(client.cmd("RSET").await, "250 2.0.0 Ok\r\n");
    let id = queued_id(
        &send_message(
            &mut client,
            "news@allowed.test",
            "r@b.test",
            "Subject: t\r\n\r\nx\r\n",
        )
        .await,
    );
    let body = String::from_utf8(server.store.body(id).unwrap().unwrap()).unwrap();
    assert!(body.contains("with ESMTPSA;"), "{body}");
    assert_eq!(
        metric(
            &server.metrics,
            "postrider_smtp_rejections_total{reason=\"auth_failed\"}"
        ),
        "2"
    );
}

#[tokio::test]
async fn auth_plain_from_trusted_network_without_tls() {
    let server = start(
        SmtpSettings {
            users: vec![user("app", "pw", &[])],
            ..settings()
        },
        false,
    )
    .await;
    let mut client = greeted(server.addr).await;
    assert!(client.cmd("EHLO c").await.contains("AUTH PLAIN LOGIN"));
    assert_eq!(client.cmd("AUTH PLAIN").await, "334 \r\n");
    assert_eq!(
        client.cmd("AGFwcABwdw==").await,
        "235 2.7.0 Authentication successful\r\n"
    );
    let id = queued_id(&send_message(&mut client, "any@where.test", "r@b.test", "x\r\n").await);
    let body = String::from_utf8(server.store.body(id).unwrap().unwrap()).unwrap();
    assert!(body.contains("with ESMTPA;"), "{body}");
}

/// An authenticated user's From:/Sender: is held to the user's allowed senders: refused and
/// counted under `reject`, stored with the envelope sender as `Sender:` under `rewrite`.
#[tokio::test]
async fn forged_from_is_refused_or_rewritten_per_user() {
    let mut rewriting = user("bulk", "pw2", &["@allowed.test"]);
    rewriting.from_policy = FromPolicy::Rewrite;
    let server = start(
        SmtpSettings {
            users: vec![user("app", "pw", &["@allowed.test"]), rewriting],
            ..settings()
        },
        false,
    )
    .await;
    let forged = "From: CEO <ceo@bank.test>\r\nSubject: wire\r\n\r\nx\r\n";

    let mut client = greeted(server.addr).await;
    client.cmd("EHLO c").await;
    // AUTH PLAIN \0app\0pw
    assert!(
        client
            .cmd("AUTH PLAIN AGFwcABwdw==")
            .await
            .starts_with("235")
    );
    let reply = send_message(&mut client, "app@allowed.test", "r@b.test", forged).await;
    assert_eq!(
        reply,
        "550 5.7.1 From: header address not allowed for this user\r\n"
    );
    assert_eq!(server.store.pending_count(), 0);
    assert_eq!(
        metric(
            &server.metrics,
            "postrider_smtp_rejections_total{reason=\"author_not_allowed\"}"
        ),
        "1"
    );
    let allowed = "From: App <app@allowed.test>\r\n\r\nx\r\n";
    let id = queued_id(&send_message(&mut client, "app@allowed.test", "r@b.test", allowed).await);
    let body = String::from_utf8(server.store.body(id).unwrap().unwrap()).unwrap();
    assert!(
        body.ends_with(allowed) && !body.contains("Sender:"),
        "{body}"
    );

    let mut client = greeted(server.addr).await;
    client.cmd("EHLO c").await;
    // AUTH PLAIN \0bulk\0pw2
    assert!(
        client
            .cmd("AUTH PLAIN AGJ1bGsAcHcy")
            .await
            .starts_with("235")
    );
    let id = queued_id(&send_message(&mut client, "bulk@allowed.test", "r@b.test", forged).await);
    let body = String::from_utf8(server.store.body(id).unwrap().unwrap()).unwrap();
    assert!(
        body.contains("\r\nSender: <bulk@allowed.test>\r\nFrom: CEO <ceo@bank.test>\r\n"),
        "{body}"
    );
}

#[tokio::test]
async fn starttls_drops_pipelined_plaintext() {
    let server = start(settings(), false).await;
    let mut plain = greeted(server.addr).await;
    plain.cmd("EHLO c").await;
    plain.send(b"STARTTLS\r\nNOOP\r\n").await;
    assert_eq!(
        plain.reply().await.unwrap(),
        "220 2.0.0 Ready to start TLS\r\n"
    );
    let tcp = plain.io.into_inner();
    let tls = TlsConnector::from(server.client_tls.clone())
        .connect(ServerName::try_from("mx.test").unwrap(), tcp)
        .await
        .unwrap();
    let mut client = Client {
        io: BufReader::new(tls),
    };
    let first = client.cmd("EHLO c").await;
    assert!(
        first.starts_with("250-mx.test\r\n"),
        "the injected NOOP must not be answered: {first}"
    );
}

#[tokio::test]
async fn implicit_tls_listener_greets_after_handshake() {
    let server = start(settings(), true).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut client = tls_handshake(&server, tcp).await;
    assert_eq!(
        client.reply().await.unwrap(),
        "220 mx.test ESMTP Postrider\r\n"
    );
    let ehlo = client.cmd("EHLO c").await;
    assert!(
        !ehlo.contains("STARTTLS") && ehlo.contains("AUTH PLAIN LOGIN"),
        "{ehlo}"
    );
    let id = queued_id(&send_message(&mut client, "s@a.test", "r@b.test", "x\r\n").await);
    let body = String::from_utf8(server.store.body(id).unwrap().unwrap()).unwrap();
    assert!(body.contains("with ESMTPS;"), "{body}");
}

#[tokio::test]
async fn implicit_tls_needs_a_certificate() {
    let metrics = Metrics::new();
    let store = Store::temporary(metrics.clone()).unwrap();
    let server = SmtpServer::new(settings(), store, metrics).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let result = server.serve(listener, true, CancellationToken::new()).await;
    assert!(matches!(result, Err(SmtpError::TlsNotConfigured)));
}

#[tokio::test]
async fn rate_limits_and_recipient_limits() {
    let settings = SmtpSettings {
        messages_per_minute_per_ip: Some(1),
        max_recipients: 2,
        ..settings()
    };
    let server = start(settings, false).await;
    let mut client = greeted(server.addr).await;
    client.cmd("EHLO c").await;
    assert_eq!(client.cmd("MAIL FROM:<s@a.test>").await, "250 2.1.0 Ok\r\n");
    assert_eq!(client.cmd("RCPT TO:<1@b.test>").await, "250 2.1.5 Ok\r\n");
    assert_eq!(client.cmd("RCPT TO:<2@b.test>").await, "250 2.1.5 Ok\r\n");
    assert_eq!(
        client.cmd("RCPT TO:<1@b.test>").await,
        "250 2.1.5 Ok\r\n",
        "duplicates are accepted silently"
    );
    assert_eq!(
        client.cmd("RCPT TO:<3@b.test>").await,
        "452 4.5.3 Too many recipients\r\n"
    );
    assert!(client.cmd("DATA").await.starts_with("354"));
    client.send(b"x\r\n.\r\n").await;
    let id = queued_id(&client.reply().await.unwrap());
    assert_eq!(
        server.store.message(id).unwrap().unwrap().recipients.len(),
        2
    );
    assert_eq!(
        client.cmd("MAIL FROM:<s@a.test>").await,
        "450 4.7.1 Rate limit exceeded, try again later\r\n"
    );
}

#[tokio::test]
async fn per_user_rate_limit() {
    let settings = SmtpSettings {
        users: vec![user("u", "p", &[])],
        messages_per_minute_per_user: Some(1),
        ..settings()
    };
    let server = start(settings, false).await;
    for expected in [
        "250 2.1.0 Ok\r\n",
        "450 4.7.1 Rate limit exceeded, try again later\r\n",
    ] {
        let mut client = greeted(server.addr).await;
        client.cmd("EHLO c").await;
        assert_eq!(
            client.cmd("AUTH PLAIN AHUAcA==").await,
            "235 2.7.0 Authentication successful\r\n"
        );
        assert_eq!(client.cmd("MAIL FROM:<s@a.test>").await, expected);
    }
    // Unauthenticated trusted clients are not limited per user.
    let mut client = greeted(server.addr).await;
    client.cmd("EHLO c").await;
    assert_eq!(client.cmd("MAIL FROM:<s@a.test>").await, "250 2.1.0 Ok\r\n");
}

#[tokio::test]
async fn shutdown_closes_idle_sessions_and_lets_messages_finish() {
    let server = start(settings(), false).await;
    let mut idle = greeted(server.addr).await;
    idle.cmd("EHLO idle").await;
    let mut busy = greeted(server.addr).await;
    busy.cmd("EHLO busy").await;
    busy.cmd("MAIL FROM:<s@a.test>").await;
    busy.cmd("RCPT TO:<r@b.test>").await;
    assert!(busy.cmd("DATA").await.starts_with("354"));
    busy.send(b"Subject: in flight\r\n\r\nfirst part\r\n").await;

    server.shutdown.cancel();
    assert_eq!(
        idle.reply().await.unwrap(),
        "421 4.3.2 mx.test Service shutting down\r\n"
    );
    assert!(idle.closed().await);
    // New connections are refused while the busy session drains.
    let mut late = connect(server.addr).await;
    assert_eq!(
        late.reply().await.unwrap(),
        "421 4.3.2 mx.test Service shutting down\r\n"
    );
    assert!(
        !server.handle.is_finished(),
        "serve waits for the busy session"
    );

    busy.send(b"second part\r\n.\r\n").await;
    let id = queued_id(&busy.reply().await.unwrap());
    assert_eq!(
        busy.reply().await.unwrap(),
        "421 4.3.2 mx.test Service shutting down\r\n"
    );
    assert!(busy.closed().await);
    tokio::time::timeout(PATIENCE, server.handle)
        .await
        .expect("serve returns")
        .unwrap()
        .unwrap();
    assert!(server.store.body(id).unwrap().is_some());
}

/// Connects from `source` to an implicit-TLS listener, reads the greeting and says EHLO.
async fn tls_client_from(
    server: &TestServer,
    source: &str,
) -> Client<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = connect_from(source, server.addr).await.io.into_inner();
    let mut client = tls_handshake(server, tcp).await;
    assert!(client.reply().await.unwrap().starts_with("220 "));
    assert!(client.cmd("EHLO c").await.contains("AUTH PLAIN"));
    client
}

/// `AUTH PLAIN` with an initial response for `user` and `password`.
fn auth_plain(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let response = format!("\0{user}\0{password}");
    format!(
        "AUTH PLAIN {}",
        base64::engine::general_purpose::STANDARD.encode(response)
    )
}

/// Untrusted clients (AUTH over implicit TLS) with a lockout after 3 failures and short delays.
fn throttled_settings() -> SmtpSettings {
    SmtpSettings {
        trusted_networks: Vec::new(),
        users: vec![user("app", "s3cret", &[]), user("ops", "0ps", &[])],
        auth_max_failures: 3,
        auth_failure_delay: Duration::from_millis(1),
        ..settings()
    }
}

const INVALID: &str = "535 5.7.8 Authentication credentials invalid\r\n";
const LOCKED_OUT: &str = "454 4.7.0 Temporary authentication failure\r\n";
const AUTHORIZED: &str = "235 2.7.0 Authentication successful\r\n";

#[tokio::test]
async fn an_address_guessing_passwords_is_locked_out() {
    let server = start(throttled_settings(), true).await;
    let mut guesser = tls_client_from(&server, "127.0.0.1").await;
    // Three wrong guesses, each for another user, so no single user reaches the limit.
    for (name, password) in [("nobody", "x"), ("ops", "guess"), ("app", "guess")] {
        assert_eq!(guesser.cmd(&auth_plain(name, password)).await, INVALID);
    }
    // Now even the right password is refused, temporarily, from this address, on any session.
    assert_eq!(guesser.cmd(&auth_plain("app", "s3cret")).await, LOCKED_OUT);
    let mut again = tls_client_from(&server, "127.0.0.1").await;
    assert_eq!(again.cmd(&auth_plain("ops", "0ps")).await, LOCKED_OUT);
    assert_eq!(
        again.cmd("NOOP").await,
        "250 2.0.0 Ok\r\n",
        "the session goes on"
    );
    // Another address still logs in as the same users.
    let mut other = tls_client_from(&server, "127.0.0.2").await;
    assert_eq!(other.cmd(&auth_plain("app", "s3cret")).await, AUTHORIZED);
    let count = |series: &str| metric(&server.metrics, series);
    assert_eq!(
        count("postrider_smtp_auth_failures_total{reason=\"invalid_credentials\"}"),
        "3"
    );
    assert_eq!(
        count("postrider_smtp_auth_failures_total{reason=\"locked_out\"}"),
        "2"
    );
    assert_eq!(
        count("postrider_smtp_auth_lockouts_total{scope=\"address\"}"),
        "1"
    );
    assert_eq!(
        count("postrider_smtp_auth_lockouts_total{scope=\"user\"}"),
        "0"
    );
    assert_eq!(
        count("postrider_smtp_rejections_total{reason=\"auth_locked_out\"}"),
        "2"
    );
}

#[tokio::test]
async fn a_user_guessed_from_several_addresses_is_locked_out() {
    let server = start(throttled_settings(), true).await;
    for source in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        let mut guesser = tls_client_from(&server, source).await;
        assert_eq!(guesser.cmd(&auth_plain("app", "guess")).await, INVALID);
    }
    // The user is locked out everywhere, even with the right password from a fresh address.
    let mut fresh = tls_client_from(&server, "127.0.0.5").await;
    assert_eq!(fresh.cmd(&auth_plain("app", "s3cret")).await, LOCKED_OUT);
    // Other users are not.
    assert_eq!(fresh.cmd(&auth_plain("ops", "0ps")).await, AUTHORIZED);
    // Unknown user names are counted like known ones, so a lockout reveals nothing.
    for source in ["127.0.0.6", "127.0.0.7", "127.0.0.8"] {
        let mut guesser = tls_client_from(&server, source).await;
        assert_eq!(guesser.cmd(&auth_plain("ghost", "guess")).await, INVALID);
    }
    let mut probe = tls_client_from(&server, "127.0.0.9").await;
    assert_eq!(probe.cmd(&auth_plain("ghost", "guess")).await, LOCKED_OUT);
    assert_eq!(
        metric(
            &server.metrics,
            "postrider_smtp_auth_lockouts_total{scope=\"user\"}"
        ),
        "2"
    );
}

const OVERLOAD_CLOSE: &str = "421 4.7.0 mx.test Too many connections, closing idle session\r\n";
const TIMED_OUT: &str = "421 4.4.2 mx.test Error: timeout exceeded\r\n";

#[tokio::test]
async fn a_full_server_closes_its_idlest_session_for_a_new_client() {
    let server = start(
        SmtpSettings {
            max_connections: 10,
            ..settings()
        },
        false,
    )
    .await;
    // The oldest session is in a transaction: it is left alone.
    let mut busy = in_transaction(greeted(server.addr).await).await;
    let mut idle = Vec::new();
    for _ in 0..9 {
        idle.push(greeted(server.addr).await);
    }
    // Every slot is taken; a new client still gets in, and can send mail.
    let mut newcomer = greeted(server.addr).await;
    newcomer.cmd("EHLO new").await;
    queued_id(&send_message(&mut newcomer, "s@a.test", "r@b.test", "x\r\n").await);
    // The session idle the longest made room.
    assert_eq!(idle[0].reply().await.unwrap(), OVERLOAD_CLOSE);
    assert!(idle[0].closed().await);
    assert_eq!(idle[1].cmd("NOOP").await, "250 2.0.0 Ok\r\n");
    assert_eq!(
        busy.cmd("RCPT TO:<r@b.test>").await,
        "250 2.1.5 Ok\r\n",
        "the transaction goes on"
    );
    assert_eq!(
        metric(
            &server.metrics,
            "postrider_smtp_rejections_total{reason=\"overload\"}"
        ),
        "1"
    );
}

#[tokio::test]
async fn a_full_server_of_transactions_still_refuses_newcomers() {
    let server = start(
        SmtpSettings {
            max_connections: 2,
            ..settings()
        },
        false,
    )
    .await;
    let mut sessions = Vec::new();
    for _ in 0..2 {
        sessions.push(in_transaction(greeted(server.addr).await).await);
    }
    let mut refused = connect(server.addr).await;
    assert_eq!(
        refused.reply().await.unwrap(),
        "421 4.7.0 mx.test Too many connections, try again later\r\n"
    );
    assert_eq!(sessions[0].cmd("NOOP").await, "250 2.0.0 Ok\r\n");
}

#[tokio::test]
async fn in_overload_idle_sessions_get_the_short_timeout() {
    let server = start(
        SmtpSettings {
            max_connections: 10,
            overload_percent: 80,
            overload_timeout: Duration::from_millis(300),
            ..settings()
        },
        false,
    )
    .await;
    // An idle session that started before the overload.
    let mut idle = greeted(server.addr).await;
    // Seven sessions in a transaction bring the open sessions to the high-water mark (80 % of
    // 10) and keep them there.
    let mut busy = Vec::new();
    for _ in 0..7 {
        busy.push(in_transaction(greeted(server.addr).await).await);
    }
    assert_eq!(metric(&server.metrics, "postrider_smtp_overload"), "1");
    // The idle session is closed after the overload timeout, long before the command timeout
    // (5 minutes; waiting for that would exceed PATIENCE).
    assert_eq!(idle.reply().await.unwrap(), TIMED_OUT);
    assert!(idle.closed().await);
    // Sessions in a transaction keep the normal timeout; the overload is over.
    for client in &mut busy {
        assert_eq!(client.cmd("RCPT TO:<r@b.test>").await, "250 2.1.5 Ok\r\n");
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metric(&server.metrics, "postrider_smtp_overload") != "0" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "overload never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_reload_changes_the_message_rate_limit_and_refuses_bad_users() {
    let server = start(settings(), false).await;
    let mut client = greeted(server.addr).await;
    client.cmd("EHLO c").await;
    for _ in 0..2 {
        assert_eq!(client.cmd("MAIL FROM:<s@a.test>").await, "250 2.1.0 Ok\r\n");
        assert!(client.cmd("RSET").await.starts_with("250"));
    }
    let limited = SmtpSettings {
        messages_per_minute_per_ip: Some(1),
        ..settings()
    };
    server.server.reload(&limited).unwrap();
    assert_eq!(client.cmd("MAIL FROM:<s@a.test>").await, "250 2.1.0 Ok\r\n");
    assert!(client.cmd("RSET").await.starts_with("250"));
    assert_eq!(
        client.cmd("MAIL FROM:<s@a.test>").await,
        "450 4.7.1 Rate limit exceeded, try again later\r\n"
    );
    // A user with an unusable hash: refused whole, the limit in force stays.
    let broken = SmtpSettings {
        users: vec![SmtpUser {
            name: "app".into(),
            password_hash: "not a hash".into(),
            allowed_senders: Vec::new(),
            from_policy: FromPolicy::Reject,
            sandbox: false,
        }],
        ..settings()
    };
    assert!(server.server.reload(&broken).is_err());
    assert_eq!(
        client.cmd("MAIL FROM:<s@a.test>").await,
        "450 4.7.1 Rate limit exceeded, try again later\r\n"
    );
}

#[tokio::test]
async fn implicit_tls_behind_a_proxy_reads_the_header_before_the_handshake() {
    let settings = SmtpSettings {
        trusted_networks: vec!["203.0.113.0/24".parse().unwrap()],
        proxy: postrider_smtp::proxy_protocol::ProxyTrust::new(vec![
            "127.0.0.1/32".parse().unwrap(),
        ]),
        ..settings()
    };
    let server = start(settings, true).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 5000 465\r\n")
        .await
        .unwrap();
    let mut client = tls_handshake(&server, tcp).await;
    assert!(client.reply().await.unwrap().starts_with("220 "));
    assert!(client.cmd("EHLO c").await.starts_with("250"));
    // Relaying without AUTH is allowed for the announced client only.
    let id = queued_id(&send_message(&mut client, "s@a.test", "r@b.test", "x\r\n").await);
    let body = String::from_utf8(server.store.body(id).unwrap().unwrap()).unwrap();
    assert!(body.contains("[203.0.113.7]"), "{body}");
}
