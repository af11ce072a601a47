//! Cluster-wide idempotency keys: one Valkey hash per key (`body`, `node`, and once answered
//! `answer`), changed only by Lua scripts so that claiming is atomic without `WATCH`.
//!
//! A claim holds the key for [`IN_FLIGHT_LEASE`] (a node that dies mid-submission does not
//! block the key for a day); the answer then keeps it for the key lifetime.

use std::sync::LazyLock;
use std::time::Duration;

use postrider_core::shared::{BoxFuture, Claim, IdempotencyLedger, IdempotencyRef};

use crate::Cluster;

/// How long a claimed key stays in flight without an answer before another node may take it.
pub(crate) const IN_FLIGHT_LEASE: Duration = Duration::from_secs(60);

/// `ARGV`: body hash, lease (ms), node. Returns `{outcome, answer}`.
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local body = redis.call('HGET', KEYS[1], 'body')
if not body then
  redis.call('HSET', KEYS[1], 'body', ARGV[1], 'node', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'won', ''}
end
if body ~= ARGV[1] then return {'conflict', ''} end
local answer = redis.call('HGET', KEYS[1], 'answer')
if answer then return {'answered', answer} end
return {'in_flight', ''}
",
    )
});

/// `ARGV`: body hash, answer, lifetime (ms). Returns 1, or 0 when another body holds the key.
static SETTLE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local body = redis.call('HGET', KEYS[1], 'body')
if body and body ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'body', ARGV[1], 'answer', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
",
    )
});

/// `ARGV`: body hash. Deletes an unanswered claim of this body.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('HGET', KEYS[1], 'body') == ARGV[1] and redis.call('HEXISTS', KEYS[1], 'answer') == 0 then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// Idempotency keys kept in Valkey/Redis for every node.
#[derive(Debug, Clone)]
pub struct RedisIdempotency {
    cluster: Cluster,
}

impl RedisIdempotency {
    pub(crate) fn new(cluster: Cluster) -> RedisIdempotency {
        RedisIdempotency { cluster }
    }
}

/// `postrider:idem:<scope length>:<scope>:<key>`: scopes never collide with keys.
fn redis_key(submission: &IdempotencyRef<'_>) -> String {
    format!(
        "postrider:idem:{}:{}:{}",
        submission.scope.len(),
        submission.scope,
        submission.key
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What the claim script's reply means.
fn claim_outcome(reply: Option<(String, String)>) -> Claim {
    match reply {
        None => Claim::Unavailable,
        Some((outcome, answer)) => match outcome.as_str() {
            "won" => Claim::Won,
            "answered" => Claim::Answered(answer),
            "in_flight" => Claim::InFlight,
            "conflict" => Claim::Conflict,
            _ => Claim::Unavailable,
        },
    }
}

impl IdempotencyLedger for RedisIdempotency {
    fn claim<'a>(&'a self, submission: IdempotencyRef<'a>) -> BoxFuture<'a, Claim> {
        Box::pin(async move {
            let mut invocation = CLAIM.key(redis_key(&submission));
            invocation
                .arg(hex(submission.body_sha256))
                .arg(millis(IN_FLIGHT_LEASE))
                .arg(self.cluster.node_id());
            claim_outcome(self.cluster.invoke(&invocation).await)
        })
    }

    fn settle<'a>(
        &'a self,
        submission: IdempotencyRef<'a>,
        answer: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut invocation = SETTLE.key(redis_key(&submission));
            invocation
                .arg(hex(submission.body_sha256))
                .arg(answer)
                .arg(millis(ttl).max(1));
            let settled: Option<i64> = self.cluster.invoke(&invocation).await;
            if settled == Some(0) {
                tracing::warn!(key = %submission.key, "idempotency key taken by another body after its claim expired");
            }
        })
    }

    fn release<'a>(&'a self, submission: IdempotencyRef<'a>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut invocation = RELEASE.key(redis_key(&submission));
            invocation.arg(hex(submission.body_sha256));
            let _: Option<i64> = self.cluster.invoke(&invocation).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_different_scopes_never_collide() {
        let hash = [0u8; 32];
        let a = IdempotencyRef {
            scope: "a:b",
            key: "c",
            body_sha256: &hash,
        };
        let b = IdempotencyRef {
            scope: "a",
            key: "b:c",
            body_sha256: &hash,
        };
        assert_ne!(redis_key(&a), redis_key(&b));
        assert_eq!(redis_key(&a), "postrider:idem:3:a:b:c");
    }

    #[test]
    fn script_replies_map_to_claims() {
        let reply = |o: &str, a: &str| Some((o.to_owned(), a.to_owned()));
        assert_eq!(claim_outcome(reply("won", "")), Claim::Won);
        assert_eq!(
            claim_outcome(reply("answered", "{}")),
            Claim::Answered("{}".to_owned())
        );
        assert_eq!(claim_outcome(reply("in_flight", "")), Claim::InFlight);
        assert_eq!(claim_outcome(reply("conflict", "")), Claim::Conflict);
        assert_eq!(claim_outcome(None), Claim::Unavailable);
    }
}
