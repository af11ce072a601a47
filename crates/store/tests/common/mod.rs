//! Builders shared by the store's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::time::Duration;

use postrider_core::{
    Address, Envelope, MessageId, NewMessage, QueuedMessage, RecipientRequest, RecipientState,
    ReversePath, SmtpReply, Source, Timestamp,
};
use postrider_metrics::Metrics;
use postrider_store::{AttemptUpdate, Store, StoreError};

/// A fixed "now" for tests: 2026-11-23T05:19:57Z.
pub const T0: u64 = 1_795_411_197_000;
/// The lease length used in tests.
pub const LEASE: Duration = Duration::from_secs(600);

pub fn ts(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

pub fn new_message(rcpts: &[&str], received_at: u64) -> NewMessage {
    let env = Envelope::new(
        ReversePath::parse("sender@example.com").unwrap(),
        rcpts
            .iter()
            .map(|r| RecipientRequest::new(Address::parse(r).unwrap()))
            .collect(),
    )
    .unwrap();
    let body = format!("Subject: test {received_at}\r\n\r\nhello {rcpts:?}\r\n").into_bytes();
    NewMessage::new(env, body, Source::Smtp, ts(received_at))
}

pub fn bounce_for(original: &QueuedMessage) -> NewMessage {
    let env = Envelope::new(
        ReversePath::Null,
        vec![RecipientRequest::new(
            original.sender.address().unwrap().clone(),
        )],
    )
    .unwrap();
    NewMessage::new(
        env,
        format!("Subject: bounce of {}\r\n\r\nfailed\r\n", original.id).into_bytes(),
        Source::Dsn,
        ts(T0),
    )
}

/// Marks every recipient `state` after one attempt at `at`.
pub fn attempted(m: &QueuedMessage, state: RecipientState, at: u64) -> QueuedMessage {
    let mut m = m.clone();
    m.attempts += 1;
    for r in &mut m.recipients {
        r.state = state;
        r.attempts += 1;
        r.last_attempt_at = Some(ts(at));
        r.last_reply = Some(match state {
            RecipientState::Delivered => SmtpReply::new(250, "2.0.0 ok"),
            RecipientState::Bounced => SmtpReply::new(550, "5.1.1 no such user"),
            _ => SmtpReply::new(451, "4.3.0 later"),
        });
    }
    m
}

pub fn delivered(m: &QueuedMessage, at: u64) -> AttemptUpdate {
    let mut message = attempted(m, RecipientState::Delivered, at);
    message.finished_at = Some(ts(at));
    AttemptUpdate {
        message,
        next_attempt_at: None,
        notifications: Vec::new(),
    }
}

pub fn deferred(m: &QueuedMessage, at: u64, next: u64) -> AttemptUpdate {
    AttemptUpdate {
        message: attempted(m, RecipientState::Deferred, at),
        next_attempt_at: Some(ts(next)),
        notifications: Vec::new(),
    }
}

pub fn bounced_with_dsn(m: &QueuedMessage, at: u64) -> AttemptUpdate {
    let mut message = attempted(m, RecipientState::Bounced, at);
    message.finished_at = Some(ts(at));
    AttemptUpdate {
        message,
        next_attempt_at: None,
        notifications: vec![bounce_for(m)],
    }
}

pub fn temp_store() -> Store {
    Store::temporary(Metrics::new()).unwrap()
}

/// Opens the store at `path`, retrying for a while when a just-dropped handle still holds
/// sled's file lock.
pub async fn open_retrying(path: &Path, metrics: Metrics) -> Store {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match Store::open(path, metrics.clone()) {
            Ok(s) => return s,
            Err(StoreError::Sled(e)) if std::time::Instant::now() < deadline => {
                eprintln!("reopen not yet possible: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("reopen failed: {e}"),
        }
    }
}

pub fn ids(leases: &[postrider_store::Lease]) -> Vec<MessageId> {
    leases.iter().map(|l| l.message.id).collect()
}
