//! Builders shared by the unit tests.

use std::collections::BTreeMap;

use postrider_core::{
    Address, DsnRet, Envelope, MessageId, NewMessage, NotifyFlags, QueuedMessage, RecipientRequest,
    RecipientState, ReversePath, SmtpReply, Source, Timestamp,
};

use crate::codec::StoredMessage;

/// A record exercising every optional field of version 1 (the golden fixture's content).
pub(crate) fn sample_record() -> StoredMessage {
    let mut r1 = RecipientRequest::new(Address::parse("alice@example.net").unwrap());
    r1.notify = Some(NotifyFlags {
        never: false,
        success: true,
        failure: true,
        delay: false,
    });
    r1.orcpt = Some("rfc822;alice@example.net".into());
    let r2 = RecipientRequest::new(Address::parse("bob@example.org").unwrap());
    let mut env = Envelope::new(
        ReversePath::parse("sender@example.com").unwrap(),
        vec![r1, r2],
    )
    .unwrap();
    env.ret = Some(DsnRet::Hdrs);
    env.envid = Some("env-42".into());
    let mut nm = NewMessage::new(
        env,
        b"Subject: golden\r\n\r\nhello\r\n".to_vec(),
        Source::Http,
        Timestamp::from_millis(1_795_411_197_123),
    );
    nm.tags = vec!["newsletter".into()];
    nm.metadata = BTreeMap::from([("campaign".to_string(), "c-7".to_string())]);
    let mut m = QueuedMessage::new(MessageId::from_u64(0x1234), &nm);
    m.attempts = 1;
    m.recipients[0].state = RecipientState::Delivered;
    m.recipients[0].attempts = 1;
    m.recipients[0].last_reply = Some(SmtpReply::new(250, "2.0.0 ok queued"));
    m.recipients[0].mx_host = Some("mx1.example.net".into());
    m.recipients[0].last_attempt_at = Some(Timestamp::from_millis(1_795_411_200_000));
    m.recipients[1].state = RecipientState::Deferred;
    m.recipients[1].attempts = 1;
    m.recipients[1].last_reply = Some(SmtpReply::new(451, "4.7.1 try later"));
    m.recipients[1].last_attempt_at = Some(Timestamp::from_millis(1_795_411_200_000));
    m.next_attempt_at = Some(Timestamp::from_millis(1_795_411_500_000));
    StoredMessage {
        schedule_at: Some(Timestamp::from_millis(1_795_411_800_000)),
        lease_until: Some(Timestamp::from_millis(1_795_411_800_000)),
        message: m,
    }
}
