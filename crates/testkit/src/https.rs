//! A small HTTPS server on loopback for the relay's HTTP clients: it answers each path with a
//! programmed response (404 otherwise) and records every request. One request per connection
//! (`Connection: close`), with a self-signed certificate for the names it is given.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::SinkError;
use crate::tls::{TlsOptions, generate};

/// Largest request head read, in bytes.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body read, in bytes.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// A client that sends nothing for this long is dropped.
const IDLE: Duration = Duration::from_secs(10);

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target (path and query).
    pub path: String,
    /// Header fields, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The body (by `Content-Length`).
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// The first header field called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A programmed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Extra header fields (`Content-Length` and `Connection` are added).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// `200` with `Content-Type: content_type`.
    pub fn ok(content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        HttpResponse {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }
}

#[derive(Default)]
struct State {
    responses: HashMap<String, HttpResponse>,
    requests: Vec<HttpRequest>,
}

/// The server; stops when dropped or shut down.
pub struct HttpsServer {
    addr: SocketAddr,
    cert_pem: String,
    state: Arc<Mutex<State>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HttpsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl HttpsServer {
    /// Listens on `ip:port` (0: ephemeral) with a self-signed certificate for `names` (DNS
    /// names or IP literals).
    pub async fn start(ip: IpAddr, port: u16, names: Vec<String>) -> Result<Self, SinkError> {
        let (listener, addr) = crate::smtp::sink::listen(SocketAddr::new(ip, port))?;
        let cert = generate(names, &TlsOptions::default())?;
        let state = Arc::new(Mutex::new(State::default()));
        let task = tokio::spawn(accept_loop(listener, cert.acceptor, Arc::clone(&state)));
        Ok(HttpsServer {
            addr,
            cert_pem: cert.cert_pem,
            state,
            task: Some(task),
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The certificate in PEM, for clients that must trust it.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Answers requests for `path` with `response` from now on (whatever their `Host`).
    pub fn respond(&self, path: &str, response: HttpResponse) {
        self.lock().responses.insert(path.to_owned(), response);
    }

    /// Answers requests for `path` with `Host: host` with `response` from now on; this takes
    /// precedence over [`HttpsServer::respond`].
    pub fn respond_to(&self, host: &str, path: &str, response: HttpResponse) {
        self.lock().responses.insert(host_key(host, path), response);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<HttpRequest> {
        self.lock().requests.clone()
    }

    /// Stops listening; connections in progress are cut.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The key of a host-specific response.
fn host_key(host: &str, path: &str) -> String {
    format!("{} {path}", host.to_ascii_lowercase())
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, state: Arc<Mutex<State>>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, state) = (acceptor.clone(), Arc::clone(&state));
        connections.spawn(async move {
            let _ = tokio::time::timeout(IDLE, serve(tcp, acceptor, state)).await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn serve(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    state: Arc<Mutex<State>>,
) -> std::io::Result<()> {
    let mut tls = acceptor.accept(tcp).await?;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Ok(());
        }
        let mut chunk = [0u8; 4096];
        let n = tls.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_BODY);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 16 * 1024];
        let n = tls.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    let response = {
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        let host = headers
            .iter()
            .find(|(n, _)| n == "host")
            .map(|(_, v)| v.rsplit_once(':').map_or(v.as_str(), |(h, _)| h).to_owned())
            .unwrap_or_default();
        let response = state
            .responses
            .get(&host_key(&host, &path))
            .or_else(|| state.responses.get(&path))
            .cloned();
        state.requests.push(HttpRequest {
            method,
            path,
            headers,
            body,
        });
        response
    }
    .unwrap_or(HttpResponse {
        status: 404,
        headers: vec![("Content-Type".into(), "text/plain".into())],
        body: b"not found\n".to_vec(),
    });
    let mut out = format!("HTTP/1.1 {} X\r\n", response.status);
    for (n, v) in &response.headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        response.body.len()
    ));
    tls.write_all(out.as_bytes()).await?;
    tls.write_all(&response.body).await?;
    tls.shutdown().await
}
