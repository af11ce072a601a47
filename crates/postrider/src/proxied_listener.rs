//! The HTTP API's listener behind a load balancer: connections from `[proxy] trusted` networks
//! have their PROXY header read before axum sees them, and every request then carries the
//! real client address as `ConnectInfo<SocketAddr>` (loopback check, rate limits, logs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::serve::IncomingStream;
use postrider_smtp::proxy_protocol::ProxyTrust;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// Connections whose PROXY header may be awaited at once; more wait to be read.
const MAX_PENDING_HEADERS: usize = 1024;
/// Connections resolved but not yet taken by the HTTP server.
const QUEUE_LEN: usize = 64;

/// A listener whose connections come with their real client address.
pub(crate) struct ProxiedListener {
    local: SocketAddr,
    incoming: mpsc::Receiver<(TcpStream, SocketAddr)>,
}

/// The client address of an HTTP connection (the one the PROXY header named, if any).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(SocketAddr);

impl Connected<IncomingStream<'_, ProxiedListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, ProxiedListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

impl ProxiedListener {
    /// Accepts on `listener` until `shutdown`, reading the header of trusted peers in tasks of
    /// their own (a slow proxy holds up no other connection).
    pub(crate) fn spawn(
        listener: TcpListener,
        trust: ProxyTrust,
        shutdown: CancellationToken,
    ) -> std::io::Result<ProxiedListener> {
        let local = listener.local_addr()?;
        let (sender, incoming) = mpsc::channel(QUEUE_LEN);
        tokio::spawn(accept_loop(listener, Arc::new(trust), sender, shutdown));
        Ok(ProxiedListener { local, incoming })
    }
}

async fn accept_loop(
    listener: TcpListener,
    trust: Arc<ProxyTrust>,
    sender: mpsc::Sender<(TcpStream, SocketAddr)>,
    shutdown: CancellationToken,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HEADERS));
    loop {
        let (mut tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: back off briefly instead of spinning.
                    tracing::warn!(%error, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !trust.expects_header(peer.ip()) {
            if sender.send((tcp, peer)).await.is_err() {
                return;
            }
            continue;
        }
        let Ok(slot) = Arc::clone(&pending).acquire_owned().await else {
            return;
        };
        let (trust, sender) = (Arc::clone(&trust), sender.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match trust.client_address(&mut tcp, peer).await {
                Ok(client) => {
                    let _ = sender.send((tcp, client)).await;
                }
                Err(error) => {
                    tracing::warn!(proxy = %peer, %error, "http connection from a trusted proxy refused");
                }
            }
        });
    }
}

impl axum::serve::Listener for ProxiedListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        match self.incoming.recv().await {
            Some(connection) => connection,
            // The accept loop ended (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// `router` with each request's `ConnectInfo<SocketAddr>` set to the client address the
/// listener resolved; serve it with `into_make_service_with_connect_info::<ClientAddr>()`.
pub(crate) fn with_client_addresses(router: Router) -> Router {
    router.layer(axum::middleware::map_request(
        |mut request: Request| async move {
            if let Some(ConnectInfo(ClientAddr(client))) = request.extensions().get().copied() {
                request.extensions_mut().insert(ConnectInfo(client));
            }
            request
        },
    ))
}
