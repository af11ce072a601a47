//! A plain SMTP client speaking exact bytes, for submitting to the relay under test.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One reply: code and the text of all lines joined by `\n`.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text after the code on each line.
    pub text: String,
}

/// A connected client.
pub struct SmtpClient {
    stream: BufReader<TcpStream>,
}

impl SmtpClient {
    /// Connects and reads the greeting.
    pub async fn connect(addr: SocketAddr) -> (SmtpClient, Reply) {
        let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .expect("connect timeout")
            .expect("connect");
        SmtpClient::over(s).await
    }

    /// Speaks SMTP on an already connected stream (e.g. after a PROXY header): reads the greeting.
    pub async fn over(s: TcpStream) -> (SmtpClient, Reply) {
        let mut c = SmtpClient {
            stream: BufReader::new(s),
        };
        let greeting = c.read_reply().await;
        (c, greeting)
    }

    /// Reads one complete reply.
    pub async fn read_reply(&mut self) -> Reply {
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(30), self.stream.read_line(&mut line))
                .await
                .expect("reply timeout")
                .expect("read");
            assert!(n > 0, "connection closed while waiting for a reply");
            let line = line.trim_end_matches(['\r', '\n']);
            assert!(line.len() >= 3, "short reply line {line:?}");
            let code: u16 = line[..3].parse().expect("reply code");
            text.push(line.get(4..).unwrap_or("").to_owned());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Reply {
                    code,
                    text: text.join("\n"),
                };
            }
        }
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.expect("write");
    }

    /// Sends one command line (CRLF added) and reads its reply.
    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
        self.read_reply().await
    }

    /// A whole transaction: EHLO is expected to have been sent. `data` is the message without the
    /// terminating dot; dot-stuffing is applied here. Returns the reply to the end of data.
    pub async fn send_mail(&mut self, from: &str, rcpts: &[&str], data: &str) -> Reply {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        assert_eq!(r.code, 250, "MAIL: {r:?}");
        for rcpt in rcpts {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>")).await;
            assert_eq!(r.code, 250, "RCPT {rcpt}: {r:?}");
        }
        let r = self.cmd("DATA").await;
        assert_eq!(r.code, 354, "DATA: {r:?}");
        let mut body = String::new();
        for line in data.split("\r\n") {
            if line.starts_with('.') {
                body.push('.');
            }
            body.push_str(line);
            body.push_str("\r\n");
        }
        if data.ends_with("\r\n") {
            body.truncate(body.len() - 2);
        }
        body.push_str(".\r\n");
        self.send_raw(body.as_bytes()).await;
        self.read_reply().await
    }
}

/// Submits one message in a fresh session and returns the queue id from `250 … queued as <id>`.
pub async fn submit(addr: SocketAddr, from: &str, rcpts: &[&str], data: &str) -> String {
    let (mut c, greeting) = SmtpClient::connect(addr).await;
    assert_eq!(greeting.code, 220, "{greeting:?}");
    let r = c.cmd("EHLO client.postrider.test").await;
    assert_eq!(r.code, 250, "{r:?}");
    let r = c.send_mail(from, rcpts, data).await;
    assert_eq!(r.code, 250, "end of data: {r:?}");
    let id = r.text.rsplit(' ').next().expect("queue id").to_owned();
    let _ = c.cmd("QUIT").await;
    id
}

/// A small RFC 5322 message.
pub fn message(from: &str, to: &str, subject: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@client.postrider.test>\r\n\r\nHello from the end-to-end tests.\r\n.leading dot line\r\n"
    )
}

/// One SMTP submission that treats every error (the relay may die or restart at any byte) as
/// "not acknowledged"; `data` is the message without the final dot. Returns the final reply code.
pub async fn submit_quietly(addr: std::net::SocketAddr, rcpt: &str, data: &str) -> Option<u16> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let mut s = BufReader::new(stream);
    async fn reply(s: &mut BufReader<tokio::net::TcpStream>) -> Option<u16> {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), s.read_line(&mut line))
                .await
                .ok()?
                .ok()?;
            if n < 4 {
                return None;
            }
            if line.as_bytes()[3] != b'-' {
                return line[..3].parse().ok();
            }
        }
    }
    if reply(&mut s).await? != 220 {
        return None;
    }
    for (line, want) in [
        ("EHLO load.postrider.test", 250),
        ("MAIL FROM:<app@sender.test>", 250),
        (&*format!("RCPT TO:<{rcpt}>"), 250),
        ("DATA", 354),
    ] {
        s.get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .ok()?;
        if reply(&mut s).await? != want {
            return None;
        }
    }
    s.get_mut()
        .write_all(format!("{data}.\r\n").as_bytes())
        .await
        .ok()?;
    let code = reply(&mut s).await;
    let _ = s.get_mut().write_all(b"QUIT\r\n").await;
    code
}
