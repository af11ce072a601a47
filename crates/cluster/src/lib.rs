//! Cluster mode of Postrider: what the nodes must agree on lives in Valkey/Redis, while each
//! node keeps its own durable queue (the fsync path stays local).
//!
//! # Brief overview
//! - [`Cluster`]: one reconnecting connection to Valkey/Redis with short call timeouts, the
//!   `postrider_cluster_up` gauge and the degraded mode: while Valkey cannot be reached every
//!   call answers "unavailable" at once (after its timeout), callers fall back to their local
//!   state, and the state change is logged once per transition. It recovers by itself.
//! - [`RedisIdempotency`]: cluster-wide idempotency keys
//!   ([`postrider_core::shared::IdempotencyLedger`]): the first node to claim a key wins
//!   atomically (a Lua script), and the final answer is stored for the others.
//!
//! Without a `[cluster]` section nothing here runs: a single node needs no external service.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postrider_metrics::Metrics;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;

mod idempotency;

pub use idempotency::RedisIdempotency;

/// Default bound on one call made on the submission path.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
/// How often the connection is checked (and the gauge refreshed) when nothing else uses it.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Longest node id accepted.
pub const MAX_NODE_ID_LEN: usize = 64;

/// How to reach Valkey/Redis and who this node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `redis://host:port/db` or `rediss://` (TLS).
    pub url: String,
    /// This node's unique, stable name (letters, digits, `-`, `_`, `.`).
    pub node_id: String,
    /// Bound on each call; past it the call counts as failed and the caller uses local state.
    pub timeout: Duration,
}

/// Why the cluster settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The URL is not a Valkey/Redis URL.
    #[error("invalid Valkey/Redis URL: {0}")]
    Url(String),
    /// The node id is empty, too long or has characters other than letters, digits, `-_.`.
    #[error(
        "node_id {0:?} must be 1 to {MAX_NODE_ID_LEN} letters, digits, '-', '_' or '.' (without node_id, the host name is used)"
    )]
    NodeId(String),
    /// The timeout is zero.
    #[error("timeout must be positive")]
    Timeout,
}

impl ClusterSettings {
    /// Checks the settings without connecting.
    pub fn validate(&self) -> Result<(), ClusterError> {
        redis::Client::open(self.url.as_str()).map_err(|e| ClusterError::Url(e.to_string()))?;
        if !is_valid_node_id(&self.node_id) {
            return Err(ClusterError::NodeId(self.node_id.clone()));
        }
        if self.timeout.is_zero() {
            return Err(ClusterError::Timeout);
        }
        Ok(())
    }
}

/// Whether `id` may name a node (it becomes part of keys and logs).
fn is_valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NODE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The connection to the cluster's shared state. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ClusterSettings,
    connection: ConnectionManager,
    up: AtomicBool,
    metrics: Metrics,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.inner.settings.node_id)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts cluster mode: the connection is made in the background (a node starts even while
    /// Valkey is down, in degraded mode) and checked every second until `shutdown`.
    pub fn start(
        settings: ClusterSettings,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Result<Cluster, ClusterError> {
        settings.validate()?;
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| ClusterError::Url(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(HEALTH_INTERVAL);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| ClusterError::Url(e.to_string()))?;
        metrics.cluster_up.set(0);
        let cluster = Cluster {
            inner: Arc::new(Inner {
                settings,
                connection,
                up: AtomicBool::new(false),
                metrics,
            }),
        };
        tracing::info!(node_id = %cluster.node_id(), "cluster mode: connecting to Valkey/Redis");
        tokio::spawn(cluster.clone().watch(shutdown));
        Ok(cluster)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.settings.node_id
    }

    /// Whether the last call to Valkey/Redis succeeded.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// Cluster-wide idempotency keys over this connection.
    pub fn idempotency(&self) -> RedisIdempotency {
        RedisIdempotency::new(self.clone())
    }

    /// Pings every [`HEALTH_INTERVAL`] so the gauge and the log follow Valkey even when idle.
    async fn watch(self, shutdown: CancellationToken) {
        loop {
            let ping = redis::cmd("PING");
            let _: Option<String> = self.query(&ping).await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(HEALTH_INTERVAL) => {}
            }
        }
    }

    /// Runs one command within the timeout; `None` (and degraded mode) when it fails.
    pub(crate) async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Option<T> {
        let mut connection = self.inner.connection.clone();
        let call = command.query_async::<T>(&mut connection);
        self.settle_call(tokio::time::timeout(self.inner.settings.timeout, call).await)
    }

    /// Runs one Lua script within the timeout; `None` (and degraded mode) when it fails.
    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Option<T> {
        let mut connection = self.inner.connection.clone();
        let call = invocation.invoke_async::<T>(&mut connection);
        self.settle_call(tokio::time::timeout(self.inner.settings.timeout, call).await)
    }

    fn settle_call<T>(
        &self,
        outcome: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Option<T> {
        match outcome {
            Ok(Ok(value)) => {
                self.mark(true, None);
                Some(value)
            }
            Ok(Err(error)) => {
                self.mark(false, Some(error.to_string()));
                None
            }
            Err(_) => {
                self.mark(
                    false,
                    Some(format!(
                        "no answer within {:?}",
                        self.inner.settings.timeout
                    )),
                );
                None
            }
        }
    }

    /// Records whether Valkey answered; logs only when that changes.
    fn mark(&self, up: bool, error: Option<String>) {
        self.inner.metrics.cluster_up.set(i64::from(up));
        if self.inner.up.swap(up, Ordering::Relaxed) == up {
            return;
        }
        if up {
            tracing::info!(node_id = %self.node_id(), "cluster state reachable again: shared limits and keys apply");
        } else {
            tracing::warn!(
                node_id = %self.node_id(),
                error = error.as_deref().unwrap_or("unknown"),
                "cluster state unreachable: degraded mode, this node decides with its local state"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str, node_id: &str) -> ClusterSettings {
        ClusterSettings {
            url: url.to_owned(),
            node_id: node_id.to_owned(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    #[test]
    fn settings_are_checked_without_connecting() {
        assert!(
            settings("redis://127.0.0.1:6379/0", "node-a")
                .validate()
                .is_ok()
        );
        assert!(
            settings("redis://valkey.example:6380/2", "n1.dc_2")
                .validate()
                .is_ok()
        );
        assert!(matches!(
            settings("http://127.0.0.1/", "node-a").validate(),
            Err(ClusterError::Url(_))
        ));
        for bad in ["", "node a", "node/a", &"x".repeat(65)] {
            assert!(matches!(
                settings("redis://127.0.0.1", bad).validate(),
                Err(ClusterError::NodeId(_))
            ));
        }
    }
}
