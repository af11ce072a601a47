//! Drives the sans-IO SMTP session with arbitrary octets fed in arbitrary pieces and checks
//! its invariants: no panic, bounded buffering, well-formed replies, and queued content that
//! never holds a bare CR or LF and never exceeds the size limit.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use postrider_core::MessageId;
use postrider_smtp::{BareNewlinePolicy, FromPolicy};
use postrider_smtp::proto::{
    Admission, AuthOutcome, AuthorizedUser, Event, MAX_AUTH_LINE, Protocol, ProtocolConfig,
    SessionRole, SubmitOutcome,
};

const MAX_SIZE: usize = 4096;

fn has_bare_line_end(body: &[u8]) -> bool {
    body.iter().enumerate().any(|(i, &b)| match b {
        b'\n' => i == 0 || body[i - 1] != b'\r',
        b'\r' => body.get(i + 1) != Some(&b'\n'),
        _ => false,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let config = ProtocolConfig {
        hostname: "fuzz.test".into(),
        max_message_size: MAX_SIZE,
        max_recipients: 5,
        max_errors: 50,
        bare_newlines: if flags & 1 == 0 {
            BareNewlinePolicy::Reject
        } else {
            BareNewlinePolicy::Normalize
        },
        tls_available: flags & 2 != 0,
        role: if flags & 64 == 0 {
            SessionRole::Submission
        } else {
            SessionRole::ReceiveOnly {
                domain: "bounces.fuzz.test".into(),
            }
        },
    };
    let mut protocol = Protocol::new(Arc::new(config), flags & 4 != 0, false);
    let step = 1 + usize::from(flags >> 3);
    let mut pos = 0;
    let mut next_id = 1;
    loop {
        match protocol.next_event() {
            Event::NeedInput => {
                if pos >= input.len() {
                    break;
                }
                let end = (pos + step).min(input.len());
                protocol.feed(&input[pos..end]);
                pos = end;
                assert!(protocol.buffered_input() <= MAX_AUTH_LINE + step);
            }
            Event::Reply(reply) => {
                let wire = reply.to_wire_string();
                assert!((200..600).contains(&reply.code), "{wire}");
                assert!(wire.ends_with("\r\n"));
                assert!(!has_bare_line_end(wire.as_bytes()), "{wire:?}");
            }
            Event::StartTls => protocol.tls_established(),
            Event::Authenticate(credentials) => {
                let ok = credentials.username == "u" && credentials.password == "p";
                protocol.resolve_auth(if ok {
                    AuthOutcome::Authorized(AuthorizedUser {
                        name: "u".into(),
                        allowed_senders: vec!["@a.test".into()],
                        from_policy: if flags & 32 == 0 {
                            FromPolicy::Reject
                        } else {
                            FromPolicy::Rewrite
                        },
                    })
                } else {
                    AuthOutcome::Invalid
                });
            }
            Event::AdmitMessage { .. } => protocol.resolve_admission(match flags & 24 {
                0 => Admission::Admitted,
                8 => Admission::RateLimited,
                _ => Admission::StoreUnavailable("queue storage full".into()),
            }),
            Event::Submit(submission) => {
                assert!(submission.body.len() <= MAX_SIZE);
                assert!(
                    !has_bare_line_end(&submission.body),
                    "{:?}",
                    submission.body
                );
                assert!(!submission.envelope.recipients().is_empty());
                protocol.resolve_submit(SubmitOutcome::Queued(MessageId::from_u64(next_id)));
                next_id += 1;
            }
            Event::Close => break,
            Event::Waiting => panic!("a request was left unanswered"),
        }
    }
});
