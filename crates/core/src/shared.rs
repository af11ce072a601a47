//! State shared by the nodes of a cluster, seen through small traits so that the API and the
//! delivery side work the same on a single node (no implementation: local state only) and in a
//! cluster (an implementation backed by Valkey/Redis in `postrider-cluster`).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future that may be sent between threads (what the shared-state traits return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One idempotent submission: whose key, which key, and the hash of the request body.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyRef<'a> {
    /// Who the key belongs to (the API key's name, or `loopback`).
    pub scope: &'a str,
    /// The client's `Idempotency-Key`.
    pub key: &'a str,
    /// SHA-256 of the request body.
    pub body_sha256: &'a [u8; 32],
}

/// The cluster's answer to "may this node submit under this idempotency key?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node holds the key now: submit, then [`IdempotencyLedger::settle`] (or
    /// [`IdempotencyLedger::release`] when the submission failed).
    Won,
    /// A submission with the same key and body was answered (on any node): this is the answer
    /// it stored.
    Answered(String),
    /// A submission with the same key and body is still being handled elsewhere.
    InFlight,
    /// The key was used with another body.
    Conflict,
    /// The shared state cannot be reached: decide with the local state alone.
    Unavailable,
}

/// Idempotency keys shared by every node, so a retry sent to another node is recognised.
pub trait IdempotencyLedger: Send + Sync + std::fmt::Debug {
    /// Claims `submission`'s key for this node, atomically across the cluster.
    fn claim<'a>(&'a self, submission: IdempotencyRef<'a>) -> BoxFuture<'a, Claim>;
    /// Records the final `answer` of a won claim; it is kept for `ttl`.
    fn settle<'a>(
        &'a self,
        submission: IdempotencyRef<'a>,
        answer: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, ()>;
    /// Gives a won claim up (the submission failed): a retry may claim the key again.
    fn release<'a>(&'a self, submission: IdempotencyRef<'a>) -> BoxFuture<'a, ()>;
}
