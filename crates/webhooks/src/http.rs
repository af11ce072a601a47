//! A minimal HTTP/1.1 POST client: one connection per request (webhook rates are low), plain
//! TCP or TLS (rustls with the aws-lc provider and the webpki trust anchors), one overall
//! timeout. Only the status code of the answer is read.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// Most response-body bytes read (and discarded) so the connection ends cleanly.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Why a POST failed before a status code was received.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The URL is unusable.
    #[error("invalid webhook url")]
    Url,
    /// Nothing answered within the timeout.
    #[error("timed out")]
    Timeout,
    /// Connecting failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed.
    #[error("tls: {0}")]
    Tls(std::io::Error),
    /// HTTP protocol error.
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// The TLS stack could not be set up.
    #[error("tls setup: {0}")]
    TlsSetup(String),
}

/// A parsed `http(s)://host[:port]/path?query` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Path and query, at least `/`.
    pub(crate) path: String,
}

impl Target {
    /// Parses an absolute http or https URL; `None` for anything else.
    pub(crate) fn parse(url: &str) -> Option<Target> {
        let uri: hyper::Uri = url.parse().ok()?;
        let tls = match uri.scheme_str()? {
            "http" => false,
            "https" => true,
            _ => return None,
        };
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return None;
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        Some(Target {
            tls,
            host: host.to_owned(),
            port,
            path: if path.is_empty() { "/".into() } else { path },
        })
    }

    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.tls, self.port) {
            (false, 80) | (true, 443) => host,
            _ => format!("{host}:{}", self.port),
        }
    }
}

/// Cheap-to-clone client holding the TLS configuration.
#[derive(Clone)]
pub(crate) struct Client {
    tls: Arc<std::sync::OnceLock<Result<TlsConnector, String>>>,
}

impl Client {
    pub(crate) fn new() -> Client {
        Client {
            tls: Arc::new(std::sync::OnceLock::new()),
        }
    }

    fn connector(&self) -> Result<TlsConnector, PostError> {
        self.tls
            .get_or_init(|| {
                let provider =
                    Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
                let roots = RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map(|b| {
                        TlsConnector::from(Arc::new(
                            b.with_root_certificates(roots).with_no_client_auth(),
                        ))
                    })
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(PostError::TlsSetup)
    }

    /// POSTs `body` as JSON to `url` with extra `headers`; returns the status code.
    pub(crate) async fn post(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<u16, PostError> {
        let target = Target::parse(url).ok_or(PostError::Url)?;
        tokio::time::timeout(timeout, self.post_inner(&target, headers, body))
            .await
            .map_err(|_| PostError::Timeout)?
    }

    async fn post_inner(
        &self,
        target: &Target,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<u16, PostError> {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(PostError::Connect)?;
        let _ = tcp.set_nodelay(true);
        if target.tls {
            let name = ServerName::try_from(target.host.clone()).map_err(|_| PostError::Url)?;
            let tls = self
                .connector()?
                .connect(name, tcp)
                .await
                .map_err(PostError::Tls)?;
            send(tls, target, headers, body).await
        } else {
            send(tcp, target, headers, body).await
        }
    }
}

async fn send<S>(
    stream: S,
    target: &Target,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<u16, PostError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "webhook connection ended with an error");
        }
    });
    let mut builder = Request::post(target.path.as_str())
        .header(hyper::header::HOST, target.authority())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("postrider/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        builder = builder.header(*name, value.as_str());
    }
    let request = builder
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| PostError::Url)?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    // Read a bounded amount of the answer so the server sees a clean exchange.
    let mut body = response.into_body();
    let mut read = 0usize;
    while read < MAX_RESPONSE_BODY {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            _ => break,
        }
    }
    driver.abort();
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = Target::parse("https://hooks.example.com/a/b?c=1").unwrap();
        assert_eq!(
            t,
            Target {
                tls: true,
                host: "hooks.example.com".into(),
                port: 443,
                path: "/a/b?c=1".into()
            }
        );
        assert_eq!(t.authority(), "hooks.example.com");
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((t.port, t.path.as_str()), (8080, "/"));
        assert_eq!(t.authority(), "127.0.0.1:8080");
        let t = Target::parse("http://[::1]:9/x").unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(t.authority(), "[::1]:9");
        assert_eq!(Target::parse("ftp://x/"), None);
        assert_eq!(Target::parse("/relative"), None);
        assert_eq!(Target::parse("not a url"), None);
    }
}
