//! Idempotency keys shared by the nodes of a cluster: checked before the local ones, so a
//! retry that the load balancer sends to another node is answered like the first call there
//! too. Without a ledger (a single node), or while the cluster is unreachable, only the local
//! keys count.

use std::time::Duration;

use axum::http::StatusCode;
use postrider_core::MessageId;
use postrider_core::shared::{Claim, IdempotencyLedger, IdempotencyRef};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::routes::Accepted;

/// What the cluster says before this node submits.
pub(crate) enum Before {
    /// Submit here; `claimed`: this node holds the key and must record the answer.
    Proceed {
        /// Whether [`finish`] must record the outcome.
        claimed: bool,
    },
    /// Another node answered this key and body already: replay its answer.
    Replay(Accepted),
    /// Refuse: the key is in flight elsewhere, or was used with another body.
    Refuse(ApiError),
}

/// The answer kept in the cluster, enough to replay the `202` on any node.
#[derive(Serialize, Deserialize)]
struct SharedAnswer {
    id: String,
    state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
}

/// Claims `submission`'s key in the cluster (if there is one).
pub(crate) async fn claim(
    ledger: Option<&dyn IdempotencyLedger>,
    submission: IdempotencyRef<'_>,
) -> Before {
    let Some(ledger) = ledger else {
        return Before::Proceed { claimed: false };
    };
    match ledger.claim(submission).await {
        Claim::Won => Before::Proceed { claimed: true },
        Claim::Unavailable => Before::Proceed { claimed: false },
        Claim::Answered(answer) => match decode_answer(&answer) {
            Some(accepted) => Before::Replay(accepted),
            None => Before::Proceed { claimed: false },
        },
        Claim::InFlight => Before::Refuse(
            ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_flight",
                "a request with this Idempotency-Key is still being processed; retry later",
            )
            .with_field("Idempotency-Key"),
        ),
        Claim::Conflict => Before::Refuse(key_reused()),
    }
}

/// Records the outcome of a claimed submission: its answer, or (`None`: it failed) gives the
/// key up for a retry.
pub(crate) async fn finish(
    ledger: Option<&dyn IdempotencyLedger>,
    submission: IdempotencyRef<'_>,
    accepted: Option<&Accepted>,
    ttl: Duration,
) {
    let Some(ledger) = ledger else { return };
    match accepted {
        Some(accepted) => {
            let answer = encode_answer(accepted);
            ledger.settle(submission, &answer, ttl).await;
        }
        None => ledger.release(submission).await,
    }
}

/// The 409 of a key used with another request body.
pub(crate) fn key_reused() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "idempotency_key_reused",
        "this Idempotency-Key was already used with a different request body",
    )
    .with_field("Idempotency-Key")
}

fn encode_answer(accepted: &Accepted) -> String {
    serde_json::to_string(&SharedAnswer {
        id: accepted.id.to_string(),
        state: accepted.state.to_owned(),
        message_id: accepted.message_id.clone(),
    })
    .unwrap_or_default()
}

fn decode_answer(text: &str) -> Option<Accepted> {
    let answer: SharedAnswer = serde_json::from_str(text).ok()?;
    Some(Accepted {
        id: answer.id.parse::<MessageId>().ok()?,
        state: if answer.state == "scheduled" {
            "scheduled"
        } else {
            "queued"
        },
        message_id: answer.message_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_survive_the_round_trip_and_garbage_is_ignored() {
        let accepted = Accepted {
            id: "00000000000000ab".parse().unwrap(),
            state: "scheduled",
            message_id: Some("<a@b>".to_owned()),
        };
        let back = decode_answer(&encode_answer(&accepted)).unwrap();
        assert_eq!(back.id, accepted.id);
        assert_eq!(back.state, "scheduled");
        assert_eq!(back.message_id.as_deref(), Some("<a@b>"));
        assert!(decode_answer("not json").is_none());
        assert!(decode_answer(r#"{"id":"zz","state":"queued"}"#).is_none());
    }
}
