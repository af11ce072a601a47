//! The SMTP sink against real clients: lettre's low-level connection and a
//! raw TCP client for wire-level details.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, MailParameter, RcptParameter};
use postrider_testkit::{
    Behaviour, FailFirst, Phase, ReceivedMessage, Reply, SinkError, SmtpSink, TlsVersion,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

fn helo() -> ClientId {
    ClientId::Domain("relay.test".into())
}

async fn connect(addr: SocketAddr) -> AsyncSmtpConnection {
    AsyncSmtpConnection::connect_tokio1(addr, Some(WAIT), &helo(), None, None)
        .await
        .unwrap()
}

/// Sends a raw RCPT and returns the reply code (lettre reports 4xx/5xx as
/// errors).
async fn rcpt_code(conn: &mut AsyncSmtpConnection, address: &str) -> u16 {
    let rcpt = Rcpt::new(address.parse().unwrap(), vec![]);
    match conn.command(rcpt).await {
        Ok(response) => u16::from(response.code()),
        Err(error) => u16::from(error.status().unwrap()),
    }
}

#[tokio::test]
async fn per_recipient_replies_and_recorded_message() {
    let sink = SmtpSink::builder()
        .behaviour(Behaviour::with_standard_rules())
        .start()
        .await
        .unwrap();
    let mut conn = connect(sink.addr()).await;
    conn.command(Mail::new(
        Some("sender@relay.test".parse().unwrap()),
        vec![
            MailParameter::Body(
                lettre::transport::smtp::extension::MailBodyParameter::EightBitMime,
            ),
            MailParameter::Other {
                keyword: "RET".into(),
                value: Some("HDRS".into()),
            },
        ],
    ))
    .await
    .unwrap();
    let ok = conn
        .command(Rcpt::new(
            "good@example.test".parse().unwrap(),
            vec![RcptParameter::Other {
                keyword: "NOTIFY".into(),
                value: Some("FAILURE,DELAY".into()),
            }],
        ))
        .await
        .unwrap();
    assert_eq!(u16::from(ok.code()), 250);

    let bad = conn
        .command(Rcpt::new("bad@example.test".parse().unwrap(), vec![]))
        .await
        .unwrap_err();
    assert_eq!(bad.status().map(u16::from), Some(550));
    assert!(bad.is_permanent());
    let text = std::error::Error::source(&bad).unwrap().to_string();
    assert!(text.starts_with("5.1.1"), "{text}");

    let later = conn
        .command(Rcpt::new("later@example.test".parse().unwrap(), vec![]))
        .await
        .unwrap_err();
    assert_eq!(later.status().map(u16::from), Some(450));
    assert!(later.is_transient());
    assert_eq!(rcpt_code(&mut conn, "good2@example.test").await, 250);

    conn.command(Data).await.unwrap();
    // A line starting with a dot is stuffed by lettre and unstuffed by the sink.
    let body = b"Subject: hi\r\n\r\n.hidden dot\r\nline\r\n";
    let end = conn.message(&body[..body.len() - 2]).await.unwrap();
    assert_eq!(u16::from(end.code()), 250);

    let messages = sink.wait_for_messages(1, WAIT).await.unwrap();
    let message = &messages[0];
    assert_eq!(message.mail_from, "sender@relay.test");
    assert_eq!(message.mail_params, vec!["BODY=8BITMIME", "RET=HDRS"]);
    assert_eq!(
        message.rcpt_to,
        vec!["good@example.test", "good2@example.test"]
    );
    assert_eq!(message.rcpt_params[0], vec!["NOTIFY=FAILURE,DELAY"]);
    assert!(message.rcpt_params[1].is_empty());
    assert_eq!(message.data, body.to_vec());
    assert_eq!(message.helo, "relay.test");
    assert!(!message.tls);
    assert_eq!(message.auth_user, None);

    // Same connection: only rejected recipients, DATA refused, RSET works.
    conn.command(Mail::new(None, vec![])).await.unwrap();
    assert_eq!(rcpt_code(&mut conn, "bad@example.test").await, 550);
    let data = conn.command(Data).await.unwrap_err();
    assert_eq!(data.status().map(u16::from), Some(554));
    conn.command(Rset).await.unwrap();
    conn.quit().await.unwrap();

    assert_eq!(sink.connection_count(), 1);
    assert_eq!(sink.messages().len(), 1);
    let transcript = sink.transcript().join("\n");
    assert!(
        transcript.contains("C: RCPT TO:<bad@example.test>"),
        "{transcript}"
    );
    assert!(
        transcript.contains("S: 550 5.1.1 no such user"),
        "{transcript}"
    );
}

#[tokio::test]
async fn starttls_with_trusted_self_signed_certificate() {
    let sink = SmtpSink::builder().tls(true).start().await.unwrap();
    let mut conn = connect(sink.addr()).await;
    assert!(conn.can_starttls());
    conn.starttls(trusting(&sink), &helo()).await.unwrap();
    assert!(conn.is_encrypted());
    assert!(!conn.can_starttls(), "STARTTLS must not be offered twice");
    let message = send_one(&sink, &mut conn).await;
    assert!(message.tls);
    assert_eq!(message.tls_version, Some(TlsVersion::Tls13));
    assert_eq!(message.data, b"Subject: tls\r\n\r\nbody\r\n".to_vec());
}

/// Trusts `sink`'s certificate for the name `sink.test`.
fn trusting(sink: &SmtpSink) -> TlsParameters {
    let pem = sink.tls_cert_pem().unwrap();
    TlsParameters::builder("sink.test".into())
        .add_root_certificate(Certificate::from_pem(pem.as_bytes()).unwrap())
        .build_rustls()
        .unwrap()
}

/// Sends one message on `conn` and returns it as the sink recorded it.
async fn send_one(sink: &SmtpSink, conn: &mut AsyncSmtpConnection) -> ReceivedMessage {
    conn.command(Mail::new(Some("a@relay.test".parse().unwrap()), vec![]))
        .await
        .unwrap();
    assert_eq!(rcpt_code(conn, "x@example.test").await, 250);
    conn.command(Data).await.unwrap();
    conn.message(b"Subject: tls\r\n\r\nbody").await.unwrap();
    let messages = sink.wait_for_messages(1, WAIT).await.unwrap();
    messages[0].clone()
}

#[tokio::test]
async fn starttls_offers_the_configured_versions() {
    for (versions, hello_retry, expected) in [
        (vec![TlsVersion::Tls12], false, TlsVersion::Tls12),
        (vec![TlsVersion::Tls13], false, TlsVersion::Tls13),
        (
            vec![TlsVersion::Tls12, TlsVersion::Tls13],
            true,
            TlsVersion::Tls13,
        ),
    ] {
        let sink = SmtpSink::builder()
            .tls(true)
            .tls_versions(versions)
            .tls_hello_retry(hello_retry)
            .start()
            .await
            .unwrap();
        let mut conn = connect(sink.addr()).await;
        conn.starttls(trusting(&sink), &helo()).await.unwrap();
        let message = send_one(&sink, &mut conn).await;
        assert!(message.tls);
        assert_eq!(message.tls_version, Some(expected));
    }
}

#[tokio::test]
async fn implicit_tls_handshakes_before_the_greeting() {
    let sink = SmtpSink::builder()
        .implicit_tls(true)
        .tls_versions(vec![TlsVersion::Tls12])
        .start()
        .await
        .unwrap();
    let mut conn = AsyncSmtpConnection::connect_tokio1(
        sink.addr(),
        Some(WAIT),
        &helo(),
        Some(trusting(&sink)),
        None,
    )
    .await
    .unwrap();
    assert!(conn.is_encrypted());
    assert!(!conn.can_starttls(), "no STARTTLS inside TLS");
    let message = send_one(&sink, &mut conn).await;
    assert!(message.tls);
    assert_eq!(message.tls_version, Some(TlsVersion::Tls12));

    // a plaintext client gets no greeting
    let mut raw = TcpStream::connect(sink.addr()).await.unwrap();
    raw.write_all(b"EHLO relay.test\r\n").await.unwrap();
    let mut line = String::new();
    let read = tokio::time::timeout(WAIT, BufReader::new(raw).read_line(&mut line)).await;
    assert!(!line.starts_with("220"), "{read:?} {line:?}");
}

#[tokio::test]
async fn require_tls_rejects_plaintext_mail() {
    let sink = SmtpSink::builder()
        .tls(true)
        .require_tls(true)
        .start()
        .await
        .unwrap();
    let mut conn = connect(sink.addr()).await;
    let error = conn
        .command(Mail::new(Some("a@relay.test".parse().unwrap()), vec![]))
        .await
        .unwrap_err();
    assert_eq!(error.status().map(u16::from), Some(530));
}

#[tokio::test]
async fn auth_plain_and_login_check_credentials() {
    let sink = SmtpSink::builder()
        .credentials("user", "secret")
        .require_auth(true)
        .start()
        .await
        .unwrap();

    let mut conn = connect(sink.addr()).await;
    let refused = conn
        .command(Mail::new(Some("a@relay.test".parse().unwrap()), vec![]))
        .await
        .unwrap_err();
    assert_eq!(refused.status().map(u16::from), Some(530));
    let wrong = conn
        .auth(
            &[Mechanism::Plain],
            &Credentials::new("user".into(), "nope".into()),
        )
        .await
        .unwrap_err();
    assert_eq!(wrong.status().map(u16::from), Some(535));
    conn.auth(
        &[Mechanism::Plain],
        &Credentials::new("user".into(), "secret".into()),
    )
    .await
    .unwrap();
    conn.command(Mail::new(Some("a@relay.test".parse().unwrap()), vec![]))
        .await
        .unwrap();
    assert_eq!(rcpt_code(&mut conn, "x@example.test").await, 250);
    conn.command(Data).await.unwrap();
    conn.message(b"plain").await.unwrap();

    let mut conn = connect(sink.addr()).await;
    conn.auth(
        &[Mechanism::Login],
        &Credentials::new("user".into(), "secret".into()),
    )
    .await
    .unwrap();
    conn.command(Mail::new(Some("b@relay.test".parse().unwrap()), vec![]))
        .await
        .unwrap();
    assert_eq!(rcpt_code(&mut conn, "y@example.test").await, 250);
    conn.command(Data).await.unwrap();
    conn.message(b"login").await.unwrap();

    let messages = sink.wait_for_messages(2, WAIT).await.unwrap();
    assert!(
        messages
            .iter()
            .all(|m| m.auth_user.as_deref() == Some("user"))
    );
    let transcript = sink.transcript().join("\n");
    let plain_secret = "AHVzZXIAc2VjcmV0"; // base64 of "\0user\0secret"
    assert!(!transcript.contains(plain_secret), "{transcript}");
    assert!(transcript.contains("AUTH PLAIN <hidden>"), "{transcript}");
}

#[tokio::test]
async fn fail_first_transactions_then_succeed() {
    let sink = SmtpSink::start_default().await.unwrap();
    sink.update_behaviour(|b| {
        b.fail_first = Some(FailFirst {
            phase: Phase::EndOfData,
            transactions: 2,
            reply: Reply::new(451, "4.3.0 try again"),
        });
    });
    let mut conn = connect(sink.addr()).await;
    let mut codes = Vec::new();
    for attempt in 0..3 {
        conn.command(Mail::new(Some("a@relay.test".parse().unwrap()), vec![]))
            .await
            .unwrap();
        assert_eq!(rcpt_code(&mut conn, "x@example.test").await, 250);
        conn.command(Data).await.unwrap();
        let body = format!("attempt {attempt}");
        let code = match conn.message(body.as_bytes()).await {
            Ok(response) => u16::from(response.code()),
            Err(error) => u16::from(error.status().unwrap()),
        };
        codes.push(code);
    }
    assert_eq!(codes, vec![451, 451, 250]);
    let messages = sink.wait_for_messages(1, WAIT).await.unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].data, b"attempt 2\r\n".to_vec());
}

#[tokio::test]
async fn behaviour_changes_apply_to_running_sink() {
    let sink = SmtpSink::start_default().await.unwrap();
    let mut conn = connect(sink.addr()).await;
    conn.command(Mail::new(Some("a@relay.test".parse().unwrap()), vec![]))
        .await
        .unwrap();
    assert_eq!(rcpt_code(&mut conn, "x@example.test").await, 250);
    sink.update_behaviour(|b| b.rcpt_default = Reply::new(452, "4.2.2 over quota"));
    assert_eq!(rcpt_code(&mut conn, "y@example.test").await, 452);
    sink.set_behaviour(Behaviour::default());
    assert_eq!(rcpt_code(&mut conn, "z@example.test").await, 250);
}

#[tokio::test]
async fn greeting_failures_refuse_the_session() {
    let sink = SmtpSink::builder()
        .behaviour(Behaviour {
            greeting: Some(Reply::new(554, "5.3.2 no service")),
            ..Behaviour::default()
        })
        .start()
        .await
        .unwrap();
    let error = connect_error(sink.addr()).await;
    assert_eq!(error.status().map(u16::from), Some(554));

    sink.update_behaviour(|b| b.greeting = Some(Reply::new(421, "4.3.2 busy")));
    let error = connect_error(sink.addr()).await;
    assert_eq!(error.status().map(u16::from), Some(421));
    assert_eq!(sink.connection_count(), 2);
}

async fn connect_error(addr: SocketAddr) -> lettre::transport::smtp::Error {
    match AsyncSmtpConnection::connect_tokio1(addr, Some(WAIT), &helo(), None, None).await {
        Ok(_) => panic!("connection unexpectedly succeeded"),
        Err(error) => error,
    }
}

/// Minimal raw client: sends bytes, reads complete (multi-line) replies.
struct RawClient {
    reader: BufReader<TcpStream>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut client = Self {
            reader: BufReader::new(stream),
        };
        let greeting = client.reply().await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        client
    }

    async fn send(&mut self, bytes: &str) {
        self.reader
            .get_mut()
            .write_all(bytes.as_bytes())
            .await
            .unwrap();
    }

    /// The next reply, all lines joined; empty on EOF.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
                .await
                .unwrap()
                .unwrap();
            if read == 0 {
                return all;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    async fn command(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        self.reply().await
    }
}

#[tokio::test]
async fn wire_level_ehlo_pipelining_and_dot_handling() {
    let sink = SmtpSink::builder()
        .behaviour(Behaviour::with_standard_rules())
        .start()
        .await
        .unwrap();
    let mut client = RawClient::connect(sink.addr()).await;
    let ehlo = client.command("EHLO raw.test").await;
    for extension in [
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "SIZE ",
        "ENHANCEDSTATUSCODES",
        "DSN",
    ] {
        assert!(ehlo.contains(extension), "{extension} missing in {ehlo}");
    }
    assert!(
        !ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert_eq!(client.command("NOOP").await, "250 2.0.0 OK\r\n");
    assert!(client.command("XYZZY").await.starts_with("500 "));
    assert!(
        client
            .command("RCPT TO:<a@b.test>")
            .await
            .starts_with("503 ")
    );

    // Everything in one write; replies come back in order.
    client
        .send(concat!(
            "MAIL FROM:<> SIZE=100\r\n",
            "RCPT TO:<one@example.test>\r\n",
            "RCPT TO:<bad@example.test>\r\n",
            "RCPT TO:<two@example.test> ORCPT=rfc822;two@example.test\r\n",
            "DATA\r\n",
        ))
        .await;
    assert!(client.reply().await.starts_with("250 "));
    assert!(client.reply().await.starts_with("250 "));
    assert!(client.reply().await.starts_with("550 5.1.1"));
    assert!(client.reply().await.starts_with("250 "));
    assert!(client.reply().await.starts_with("354 "));
    // `\n.\r\n` (bare LF before the dot) does not end the data; `..x` is unstuffed.
    client
        .send("line1\r\n..x\r\nbare\n.\r\nstill data\r\n.\r\n")
        .await;
    assert!(client.reply().await.starts_with("250 "));
    let messages = sink.wait_for_messages(1, WAIT).await.unwrap();
    assert_eq!(messages[0].mail_from, "");
    assert_eq!(messages[0].mail_params, vec!["SIZE=100"]);
    assert_eq!(
        messages[0].rcpt_to,
        vec!["one@example.test", "two@example.test"]
    );
    assert_eq!(
        messages[0].rcpt_params[1],
        vec!["ORCPT=rfc822;two@example.test"]
    );
    assert_eq!(
        messages[0].data,
        b"line1\r\n.x\r\nbare\n.\r\nstill data\r\n".to_vec()
    );

    // SIZE above the announced limit is refused at MAIL.
    assert!(
        client
            .command("MAIL FROM:<a@b.test> SIZE=999999999999")
            .await
            .starts_with("552 ")
    );
    assert_eq!(client.command("QUIT").await, "221 2.0.0 bye\r\n");
    assert_eq!(client.reply().await, "", "connection closed after QUIT");
}

#[tokio::test]
async fn oversized_message_is_refused() {
    let sink = SmtpSink::builder()
        .max_message_bytes(16)
        .start()
        .await
        .unwrap();
    let mut client = RawClient::connect(sink.addr()).await;
    client.command("EHLO raw.test").await;
    client.command("MAIL FROM:<a@b.test>").await;
    client.command("RCPT TO:<c@d.test>").await;
    assert!(client.command("DATA").await.starts_with("354"));
    client.send("0123456789\r\n0123456789\r\n.\r\n").await;
    assert!(client.reply().await.starts_with("552 5.3.4"));
    assert!(client.command("NOOP").await.starts_with("250"));
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn disconnects_on_command_and_after_data() {
    let sink = SmtpSink::builder()
        .behaviour(Behaviour {
            disconnect_at_command: Some(2),
            ..Behaviour::default()
        })
        .start()
        .await
        .unwrap();
    let mut client = RawClient::connect(sink.addr()).await;
    assert!(client.command("EHLO raw.test").await.starts_with("250"));
    assert_eq!(client.command("MAIL FROM:<a@b.test>").await, "");

    sink.set_behaviour(Behaviour {
        disconnect_after_data: true,
        ..Behaviour::default()
    });
    let mut client = RawClient::connect(sink.addr()).await;
    client.command("EHLO raw.test").await;
    client.command("MAIL FROM:<a@b.test>").await;
    client.command("RCPT TO:<c@d.test>").await;
    client.command("DATA").await;
    client.send("body\r\n.\r\n").await;
    assert_eq!(client.reply().await, "", "no reply after data");
    assert!(sink.messages().is_empty());
}

/// Polls `condition` until it holds or the deadline passes.
async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

#[tokio::test]
async fn counts_concurrent_sessions() {
    let sink = SmtpSink::start_default().await.unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(sink.addr()).await);
    }
    assert!(eventually(|| sink.active_sessions() == 3).await);
    assert_eq!(sink.max_concurrent_sessions(), 3);
    drop(clients);
    assert!(eventually(|| sink.active_sessions() == 0).await);
    assert_eq!(sink.max_concurrent_sessions(), 3);
    assert_eq!(sink.connection_count(), 3);
}

#[tokio::test]
async fn sinks_share_a_port_on_different_loopback_addresses() {
    let first = SmtpSink::builder()
        .bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 0)
        .start()
        .await
        .unwrap();
    let second = SmtpSink::builder()
        .bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)), first.port())
        .behaviour(Behaviour {
            rcpt_default: Reply::new(550, "5.7.1 not here"),
            ..Behaviour::default()
        })
        .start()
        .await
        .unwrap();
    assert_eq!(first.port(), second.port());
    assert_ne!(first.addr(), second.addr());
    let mut conn = connect(first.addr()).await;
    conn.command(Mail::new(Some("a@relay.test".parse().unwrap()), vec![]))
        .await
        .unwrap();
    assert_eq!(rcpt_code(&mut conn, "x@example.test").await, 250);
    let mut conn = connect(second.addr()).await;
    conn.command(Mail::new(Some("a@relay.test".parse().unwrap()), vec![]))
        .await
        .unwrap();
    assert_eq!(rcpt_code(&mut conn, "x@example.test").await, 550);
    assert_eq!(first.connection_count(), 1);
    assert_eq!(second.connection_count(), 1);
}

#[tokio::test]
async fn wait_times_out_and_shutdown_frees_the_port() {
    let sink = SmtpSink::start_default().await.unwrap();
    let addr = sink.addr();
    match sink.wait_for_messages(1, Duration::from_millis(50)).await {
        Err(SinkError::Timeout { wanted: 1, got: 0 }) => {}
        other => panic!("unexpected {other:?}"),
    }
    // An open session ends with the sink.
    let mut client = RawClient::connect(addr).await;
    sink.shutdown().await;
    assert_eq!(client.reply().await, "", "session closed by shutdown");
    assert!(TcpStream::connect(addr).await.is_err());
    // The same address can be used again at once.
    let again = SmtpSink::builder()
        .bind(addr.ip(), addr.port())
        .start()
        .await
        .unwrap();
    assert_eq!(again.addr(), addr);
}

#[tokio::test]
async fn reply_delay_holds_replies() {
    let sink = SmtpSink::start_default().await.unwrap();
    let mut client = RawClient::connect(sink.addr()).await;
    client.command("EHLO raw.test").await;
    sink.update_behaviour(|b| b.reply_delay = Duration::from_secs(2));
    client.send("NOOP\r\n").await;
    // The reply cannot come before the delay (a lower bound only).
    let early = tokio::time::timeout(Duration::from_millis(100), client.reply()).await;
    assert!(early.is_err(), "reply arrived despite the delay");
    sink.update_behaviour(|b| b.reply_delay = Duration::ZERO);
    assert_eq!(client.reply().await, "250 2.0.0 OK\r\n");

    sink.update_behaviour(|b| b.end_of_data_delay = Duration::from_secs(2));
    client.command("MAIL FROM:<a@b.test>").await;
    client.command("RCPT TO:<c@d.test>").await;
    client.command("DATA").await;
    client.send("held\r\n.\r\n").await;
    let early = tokio::time::timeout(Duration::from_millis(100), client.reply()).await;
    assert!(
        early.is_err(),
        "end-of-data reply arrived despite the delay"
    );
    assert!(
        sink.messages().is_empty(),
        "recorded only when the reply is sent"
    );
    assert!(client.reply().await.starts_with("250 "));
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn sessions_beyond_the_limit_get_421() {
    let sink = SmtpSink::builder().max_sessions(1).start().await.unwrap();
    let _first = RawClient::connect(sink.addr()).await;
    let stream = TcpStream::connect(sink.addr()).await.unwrap();
    let mut second = RawClient {
        reader: BufReader::new(stream),
    };
    assert!(second.reply().await.starts_with("421 "));
    assert_eq!(second.reply().await, "");
}
