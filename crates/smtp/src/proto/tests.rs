//! Session state machine tests: whole dialogues fed as octets, split at every offset.

use std::sync::Arc;

use postrider_core::{DsnRet, MessageId, NotifyFlags};

use super::*;
use crate::author::FromPolicy;
use crate::settings::BareNewlinePolicy;

fn config() -> ProtocolConfig {
    ProtocolConfig {
        hostname: "mx.test".into(),
        max_message_size: 10_000,
        max_recipients: 3,
        max_errors: 10,
        bare_newlines: BareNewlinePolicy::Reject,
        tls_available: true,
        role: SessionRole::Submission,
    }
}

/// Drives a [`Protocol`] like the shell does, answering requests from fixed rules.
struct Driver {
    protocol: Protocol,
    transcript: String,
    submissions: Vec<Submission>,
    closed: bool,
    tls_starts: usize,
    admission: Admission,
    store_fails: bool,
    next_id: u64,
    /// The policy of the user `alice` (allowed: `alice@a.test`, `@b.test`).
    from_policy: FromPolicy,
}

impl Driver {
    fn new(config: ProtocolConfig, trusted: bool) -> Self {
        let mut driver = Driver {
            protocol: Protocol::new(Arc::new(config), trusted, false),
            transcript: String::new(),
            submissions: Vec::new(),
            closed: false,
            tls_starts: 0,
            admission: Admission::Admitted,
            store_fails: false,
            next_id: 1,
            from_policy: FromPolicy::Reject,
        };
        driver.run();
        driver
    }

    fn run(&mut self) {
        loop {
            match self.protocol.next_event() {
                Event::Reply(reply) => self.transcript.push_str(&reply.to_wire_string()),
                Event::NeedInput => return,
                Event::StartTls => {
                    self.tls_starts += 1;
                    self.transcript.push_str("<TLS>\r\n");
                    self.protocol.tls_established();
                }
                Event::Authenticate(c) => {
                    let ok = c.username == "alice" && c.password == "secret";
                    let outcome = match (ok, c.username.as_str()) {
                        (true, _) => AuthOutcome::Authorized(AuthorizedUser {
                            name: c.username,
                            allowed_senders: vec!["alice@a.test".into(), "@b.test".into()],
                            from_policy: self.from_policy,
                        }),
                        (false, "locked") => AuthOutcome::LockedOut,
                        (false, "busy") => AuthOutcome::Busy,
                        (false, _) => AuthOutcome::Invalid,
                    };
                    self.protocol.resolve_auth(outcome);
                }
                Event::AdmitMessage { .. } => {
                    self.protocol.resolve_admission(self.admission.clone())
                }
                Event::Submit(submission) => {
                    self.submissions.push(submission);
                    let outcome = if self.store_fails {
                        SubmitOutcome::Failed
                    } else {
                        self.next_id += 1;
                        SubmitOutcome::Queued(MessageId::from_u64(self.next_id - 1))
                    };
                    self.protocol.resolve_submit(outcome);
                }
                Event::Close => {
                    self.closed = true;
                    self.transcript.push_str("<CLOSE>\r\n");
                    return;
                }
                Event::Waiting => panic!("nothing should be outstanding"),
            }
        }
    }

    fn send(&mut self, input: &[u8]) -> &mut Self {
        self.protocol.feed(input);
        self.run();
        self
    }

    /// Replies since the greeting, one per line.
    fn lines(&self) -> Vec<&str> {
        self.transcript
            .split("\r\n")
            .skip(1)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// The last reply line.
    fn last(&self) -> &str {
        self.lines().last().copied().unwrap_or("")
    }
}

/// Runs `input` fed whole, byte by byte, and split in two at every offset; every way must give
/// the same transcript and submissions. Returns the whole-feed driver.
fn run_all_splits(config: ProtocolConfig, trusted: bool, input: &[u8]) -> Driver {
    let mut whole = Driver::new(config.clone(), trusted);
    whole.send(input);
    let mut bytewise = Driver::new(config.clone(), trusted);
    for b in input {
        bytewise.send(std::slice::from_ref(b));
    }
    assert_eq!(
        bytewise.transcript, whole.transcript,
        "byte-by-byte feed differs"
    );
    assert_eq!(bytewise.submissions, whole.submissions);
    for split in 1..input.len() {
        let mut driver = Driver::new(config.clone(), trusted);
        driver.send(&input[..split]).send(&input[split..]);
        assert_eq!(driver.transcript, whole.transcript, "split at {split}");
        assert_eq!(driver.submissions, whole.submissions, "split at {split}");
    }
    whole
}

#[test]
fn full_transaction_in_one_pipelined_write_at_every_split() {
    let input = b"EHLO client.test\r\nMAIL FROM:<s@a.test> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<r@b.test>\r\nDATA\r\nSubject: hi\r\n\r\n..dotted\r\n.\r\nQUIT\r\n";
    let driver = run_all_splits(config(), true, input);
    assert!(
        driver
            .transcript
            .starts_with("220 mx.test ESMTP Postrider\r\n"),
        "{}",
        driver.transcript
    );
    let expected = [
        "250-mx.test",
        "250-PIPELINING",
        "250-SIZE 10000",
        "250-8BITMIME",
        "250-SMTPUTF8",
        "250-ENHANCEDSTATUSCODES",
        "250-CHUNKING",
        "250-DSN",
        "250-STARTTLS",
        "250 AUTH PLAIN LOGIN",
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>",
        "250 2.0.0 Ok: queued as 0000000000000001",
        "221 2.0.0 Bye",
        "<CLOSE>",
    ];
    assert_eq!(driver.lines(), expected);
    let submission = &driver.submissions[0];
    assert_eq!(submission.body, b"Subject: hi\r\n\r\n.dotted\r\n");
    assert_eq!(submission.helo, "client.test");
    assert_eq!(submission.protocol, "ESMTP");
    assert_eq!(submission.envelope.sender().to_string(), "s@a.test");
    assert_eq!(
        submission.envelope.recipients()[0].address.to_string(),
        "r@b.test"
    );
}

#[test]
fn dsn_parameters_reach_the_envelope() {
    let input = b"EHLO c\r\nMAIL FROM:<s@a.test> RET=FULL ENVID=abc+2Bd\r\nRCPT TO:<r@b.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;r+2Bx@b.test\r\nRCPT TO:<q@b.test>\r\nRCPT TO:<r@B.TEST>\r\nDATA\r\nx\r\n.\r\n";
    let driver = run_all_splits(config(), true, input);
    let envelope = &driver.submissions[0].envelope;
    assert_eq!(envelope.ret, Some(DsnRet::Full));
    assert_eq!(envelope.envid.as_deref(), Some("abc+d"));
    assert_eq!(
        envelope.recipients().len(),
        2,
        "the duplicate recipient is accepted once"
    );
    let first = &envelope.recipients()[0];
    assert_eq!(
        first.notify,
        Some(NotifyFlags {
            success: true,
            failure: true,
            ..Default::default()
        })
    );
    assert_eq!(first.orcpt.as_deref(), Some("rfc822;r+x@b.test"));
    assert_eq!(envelope.recipients()[1].notify, None);
    assert_eq!(
        driver
            .lines()
            .iter()
            .filter(|l| l.starts_with("250 2.1.5"))
            .count(),
        3
    );
}

#[test]
fn sequence_and_syntax_errors_have_enhanced_codes() {
    let mut d = Driver::new(
        ProtocolConfig {
            max_errors: 100,
            ..config()
        },
        true,
    );
    let cases: &[(&str, &str)] = &[
        ("MAIL FROM:<a@b.test>", "503 5.5.1"),
        ("HELO", "501 5.5.4"),
        ("FROB", "500 5.5.2"),
        ("EXPN list", "502 5.5.1"),
        ("VRFY bob", "252 2.5.0"),
        ("HELP", "214 2.0.0"),
        ("NOOP", "250 2.0.0"),
        ("EHLO c.test", "250 AUTH PLAIN LOGIN"),
        ("RCPT TO:<a@b.test>", "503 5.5.1"),
        ("DATA", "503 5.5.1"),
        ("MAIL FROM:<bad address@x>", "501 5.1.7"),
        ("MAIL FROM:<a@b.test> FOO=BAR", "555 5.5.4"),
        ("MAIL FROM:<a@b.test> SIZE=10001", "552 5.3.4"),
        ("MAIL FROM:<ü@b.test>", "553 5.6.7"),
        ("MAIL FROM:<a@b.test>", "250 2.1.0"),
        ("MAIL FROM:<a@b.test>", "503 5.5.1"),
        ("DATA", "503 5.5.1"),
        ("RCPT TO:<not an address>", "501 5.1.3"),
        ("RCPT TO:<ü@b.test>", "553 5.6.7"),
        ("RCPT TO:<1@b.test>", "250 2.1.5"),
        ("RCPT TO:<2@b.test>", "250 2.1.5"),
        ("RCPT TO:<3@b.test>", "250 2.1.5"),
        ("RCPT TO:<4@b.test>", "452 4.5.3"),
        ("AUTH PLAIN", "503 5.5.1"),
        ("STARTTLS", "503 5.5.1"),
        ("RSET", "250 2.0.0"),
        ("MAIL FROM:<ü@b.test> SMTPUTF8", "250 2.1.0"),
        ("RCPT TO:<ü@b.test>", "250 2.1.5"),
    ];
    for (command, expected) in cases {
        d.send(format!("{command}\r\n").as_bytes());
        assert!(
            d.last().starts_with(expected),
            "{command}: got {:?}",
            d.last()
        );
    }
    assert!(!d.closed);
}

#[test]
fn too_many_errors_close_the_session() {
    let mut d = Driver::new(
        ProtocolConfig {
            max_errors: 3,
            ..config()
        },
        true,
    );
    d.send(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n");
    assert_eq!(
        d.lines(),
        ["500 5.5.2 Command unrecognized"; 3]
            .into_iter()
            .chain(["421 4.7.0 mx.test Error: too many errors", "<CLOSE>"])
            .collect::<Vec<_>>()
    );
}

#[test]
fn long_command_lines_are_refused_without_buffering() {
    let mut d = Driver::new(config(), true);
    d.send(b"NOOP ");
    for _ in 0..1000 {
        d.send(&[b'x'; 100]);
        assert!(
            d.protocol.buffered_input() <= MAX_COMMAND_LINE,
            "buffered {}",
            d.protocol.buffered_input()
        );
    }
    d.send(b"\r\nNOOP\r\n");
    assert_eq!(d.lines(), ["500 5.5.2 Line too long", "250 2.0.0 Ok"]);
    // Exactly 512 octets with CRLF is fine; 513 is not.
    let mut d = Driver::new(config(), true);
    let line = format!("NOOP {}\r\n", "y".repeat(MAX_COMMAND_LINE - 7));
    assert_eq!(line.len(), MAX_COMMAND_LINE);
    d.send(line.as_bytes());
    let line = format!("NOOP {}\r\n", "y".repeat(MAX_COMMAND_LINE - 6));
    d.send(line.as_bytes());
    assert_eq!(d.lines(), ["250 2.0.0 Ok", "500 5.5.2 Line too long"]);
}

#[test]
fn garbage_and_bare_line_ends_in_commands() {
    let mut d = Driver::new(config(), true);
    d.send(
        b"\x00\xff\xfe\x01\r\nNOOP\nNOOP\rX\r\n\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n",
    );
    assert_eq!(
        d.lines(),
        [
            "500 5.5.2 Command unrecognized",
            "500 5.5.2 Command lines must end with CRLF",
            "500 5.5.2 Command lines must end with CRLF",
            "500 5.5.2 Command unrecognized"
        ]
    );
    let mut d = Driver::new(
        ProtocolConfig {
            bare_newlines: BareNewlinePolicy::Normalize,
            ..config()
        },
        true,
    );
    d.send(b"NOOP\n");
    assert_eq!(d.lines(), ["250 2.0.0 Ok"]);
}

fn data_session(policy: BareNewlinePolicy, content: &[u8]) -> Driver {
    let mut input = b"EHLO c\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\nDATA\r\n".to_vec();
    input.extend_from_slice(content);
    input.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
    run_all_splits(
        ProtocolConfig {
            bare_newlines: policy,
            ..config()
        },
        true,
        &input,
    )
}

#[test]
fn smuggling_variants_are_content_under_both_policies() {
    for fake_end in [
        &b"\n.\n"[..],
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r",
        b"\r\n.\r",
        b"\r.\r\n",
        b"\n.\r",
    ] {
        let mut content = b"Subject: a\r\n\r\nbody".to_vec();
        content.extend_from_slice(fake_end);
        content.extend_from_slice(
            b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nsmuggled",
        );
        let rejected = data_session(BareNewlinePolicy::Reject, &content);
        let lines = rejected.lines();
        assert_eq!(
            &lines[lines.len() - 2..],
            [
                "550 5.6.11 Message contains bare CR or LF; lines must end with CRLF",
                "250 2.0.0 Ok"
            ],
            "{fake_end:?}"
        );
        assert!(rejected.submissions.is_empty());
        let normalized = data_session(BareNewlinePolicy::Normalize, &content);
        let lines = normalized.lines();
        assert_eq!(
            &lines[lines.len() - 2..],
            ["250 2.0.0 Ok: queued as 0000000000000001", "250 2.0.0 Ok"],
            "{fake_end:?}"
        );
        assert_eq!(normalized.submissions.len(), 1, "one message, not two");
        let body = &normalized.submissions[0].body;
        assert!(
            body.windows(8).any(|w| w == b"smuggled"),
            "the fake commands stay in the content"
        );
        assert!(
            !body
                .iter()
                .enumerate()
                .any(|(i, &b)| b == b'\n' && (i == 0 || body[i - 1] != b'\r'))
        );
    }
}

#[test]
fn message_limits_are_enforced_after_the_data() {
    let d = data_session(BareNewlinePolicy::Reject, &vec![b'x'; 1200]);
    assert_eq!(
        &d.lines()[d.lines().len() - 2..],
        [
            "552 5.6.0 Message has a line longer than 998 octets",
            "250 2.0.0 Ok"
        ]
    );
    let big: Vec<u8> = (0..200)
        .flat_map(|_| {
            b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n".to_vec()
        })
        .collect();
    let mut d = Driver::new(config(), true);
    d.send(b"EHLO c\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\nDATA\r\n")
        .send(&big)
        .send(b".\r\nNOOP\r\n");
    assert_eq!(
        &d.lines()[d.lines().len() - 2..],
        [
            "552 5.3.4 Message size exceeds fixed maximum message size",
            "250 2.0.0 Ok"
        ]
    );
    // The session is usable afterwards.
    d.send(b"MAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\nDATA\r\nsmall\r\n.\r\n");
    assert!(d.last().starts_with("250 2.0.0 Ok: queued as"));
}

#[test]
fn store_failure_is_451_and_never_250() {
    let mut d = Driver::new(config(), true);
    d.store_fails = true;
    d.send(b"EHLO c\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(
        d.last(),
        "451 4.3.0 Temporary storage failure, try again later"
    );
    assert!(!d.transcript.contains("queued as"));
    d.send(b"RCPT TO:<r@b.test>\r\n");
    assert!(d.last().starts_with("503"), "the transaction is over");
}

#[test]
fn rate_limited_mail_is_450() {
    let mut d = Driver::new(config(), true);
    d.admission = Admission::RateLimited;
    d.send(b"EHLO c\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\n");
    assert_eq!(
        d.lines()[d.lines().len() - 2..],
        [
            "450 4.7.1 Rate limit exceeded, try again later",
            "503 5.5.1 Need MAIL command"
        ]
    );
}

#[test]
fn unavailable_store_refuses_mail_with_452() {
    let mut d = Driver::new(config(), true);
    d.admission = Admission::StoreUnavailable(
        "queue storage failed to write (disk full or I/O error); waiting for space\r\nX".into(),
    );
    d.send(b"EHLO c\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\nDATA\r\n");
    assert_eq!(
        d.lines()[d.lines().len() - 3..],
        [
            "452 4.3.1 queue storage failed to write (disk full or I/O error); try again later",
            "503 5.5.1 Need MAIL command",
            "503 5.5.1 Need MAIL command"
        ]
    );
    assert!(d.submissions.is_empty());
    // The reason is cut to one bounded clause; an empty one gets a generic text.
    d.admission = Admission::StoreUnavailable("x".repeat(500));
    d.send(b"MAIL FROM:<s@a.test>\r\n");
    assert_eq!(
        d.last(),
        format!("452 4.3.1 {}; try again later", "x".repeat(100))
    );
    d.admission = Admission::StoreUnavailable(String::new());
    d.send(b"MAIL FROM:<s@a.test>\r\n");
    assert_eq!(
        d.last(),
        "452 4.3.1 Queue storage unavailable; try again later"
    );
    // Once the store takes writes again, the session goes on normally.
    d.admission = Admission::Admitted;
    d.send(b"MAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\nDATA\r\nx\r\n.\r\n");
    assert!(
        d.last().starts_with("250 2.0.0 Ok: queued as"),
        "{}",
        d.last()
    );
}

#[test]
fn bdat_chunks_at_every_split() {
    let input = b"EHLO c\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\nBDAT 12\r\nSubject: x\r\nBDAT 9 LAST\r\n\r\n.body\r\nQUIT\r\n";
    let d = run_all_splits(config(), true, input);
    assert_eq!(
        d.lines()[d.lines().len() - 4..],
        [
            "250 2.0.0 12 octets received",
            "250 2.0.0 Ok: queued as 0000000000000001",
            "221 2.0.0 Bye",
            "<CLOSE>"
        ]
    );
    assert_eq!(
        d.submissions[0].body, b"Subject: x\r\n\r\n.body\r\n",
        "no dot-unstuffing in BDAT"
    );
}

#[test]
fn bdat_refusals_still_consume_the_chunk() {
    // Without MAIL the chunk is discarded, not executed as commands.
    let mut d = Driver::new(config(), true);
    d.send(b"EHLO c\r\nBDAT 19\r\nMAIL FROM:<x@y.z>\r\nNOOP\r\n");
    assert_eq!(
        d.lines()[d.lines().len() - 2..],
        ["503 5.5.1 Need MAIL command", "250 2.0.0 Ok"]
    );
    // Bare LF in a chunk, then DATA may not follow BDAT.
    let mut d = Driver::new(config(), true);
    d.send(b"EHLO c\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\nBDAT 3\r\na\nb");
    assert_eq!(
        d.last(),
        "550 5.6.11 Message contains bare CR or LF; lines must end with CRLF"
    );
    d.send(b"MAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\nBDAT 3\r\nab\rDATA\r\n");
    assert_eq!(d.last(), "503 5.5.1 DATA not allowed in a BDAT transaction");
    d.send(b"BDAT 1 LAST\r\nx");
    assert_eq!(
        d.last(),
        "550 5.6.11 Message contains bare CR or LF; lines must end with CRLF",
        "CR at the end of one chunk, no LF at the start of the next"
    );
    // CR at the end of one chunk and LF at the start of the next make a proper CRLF.
    d.send(b"MAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\nBDAT 3\r\nab\rBDAT 1 LAST\r\n\n");
    assert!(
        d.last().starts_with("250 2.0.0 Ok: queued as"),
        "{}",
        d.transcript
    );
    assert_eq!(d.submissions[0].body, b"ab\r\n");
    // Too big: declared chunk sizes over the limit.
    let mut d = Driver::new(
        ProtocolConfig {
            max_message_size: 10,
            ..config()
        },
        true,
    );
    d.send(b"EHLO c\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\nBDAT 11 LAST\r\n0123456789\nNOOP\r\n");
    assert_eq!(
        d.lines()[d.lines().len() - 2..],
        [
            "552 5.3.4 Message size exceeds fixed maximum message size",
            "250 2.0.0 Ok"
        ]
    );
    // BDAT 0 LAST with nothing before it is an empty message.
    let mut d = Driver::new(config(), true);
    d.send(b"EHLO c\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\nBDAT 0 LAST\r\n");
    assert!(d.last().starts_with("250 2.0.0 Ok: queued as"));
    assert_eq!(d.submissions[0].body, b"");
}

#[test]
fn starttls_discards_pipelined_plaintext_and_resets() {
    let mut d = Driver::new(config(), false);
    d.send(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected@x.test>\r\n");
    assert_eq!(d.tls_starts, 1);
    assert!(
        d.transcript
            .ends_with("220 2.0.0 Ready to start TLS\r\n<TLS>\r\n"),
        "{}",
        d.transcript
    );
    d.send(b"MAIL FROM:<s@a.test>\r\n");
    assert_eq!(
        d.last(),
        "503 5.5.1 Send EHLO or HELO first",
        "EHLO is forgotten after STARTTLS"
    );
    d.send(b"EHLO c\r\n");
    assert!(
        !d.transcript
            .rsplit("<TLS>")
            .next()
            .unwrap()
            .contains("STARTTLS"),
        "not offered twice"
    );
    assert_eq!(d.last(), "250 AUTH PLAIN LOGIN", "AUTH offered over TLS");
    d.send(b"STARTTLS\r\n");
    assert_eq!(d.last(), "503 5.5.1 TLS already active");
    let mut no_tls = Driver::new(
        ProtocolConfig {
            tls_available: false,
            ..config()
        },
        true,
    );
    no_tls.send(b"EHLO c\r\nSTARTTLS\r\n");
    assert!(!no_tls.transcript.contains("250-STARTTLS"));
    assert_eq!(no_tls.last(), "502 5.5.1 Command not implemented");
}

#[test]
fn untrusted_clients_must_authenticate_over_tls() {
    let mut d = Driver::new(config(), false);
    d.send(b"EHLO c\r\n");
    assert!(
        !d.transcript.contains("AUTH"),
        "no AUTH over plaintext from untrusted networks"
    );
    d.send(b"MAIL FROM:<s@a.test>\r\n");
    assert_eq!(d.last(), "530 5.7.0 Authentication required");
    d.send(b"RCPT TO:<r@b.test>\r\n");
    assert!(d.last().starts_with("503 5.5.1"));
    d.send(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    assert_eq!(
        d.last(),
        "538 5.7.11 Encryption required for requested authentication mechanism"
    );
    d.send(b"STARTTLS\r\n")
        .send(b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHdyb25n\r\n");
    assert_eq!(d.last(), "535 5.7.8 Authentication credentials invalid");
    d.send(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    assert_eq!(d.last(), "235 2.7.0 Authentication successful");
    d.send(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    assert_eq!(d.last(), "503 5.5.1 Already authenticated");
    d.send(b"MAIL FROM:<mallory@a.test>\r\n");
    assert_eq!(
        d.last(),
        "553 5.7.1 Sender address not allowed for this user"
    );
    d.send(b"MAIL FROM:<>\r\n");
    assert_eq!(
        d.last(),
        "553 5.7.1 Sender address not allowed for this user"
    );
    d.send(b"MAIL FROM:<Alice@A.test>\r\nRSET\r\nMAIL FROM:<anyone@b.test>\r\nRCPT TO:<r@c.test>\r\nDATA\r\nx\r\n.\r\n");
    assert!(
        d.last().starts_with("250 2.0.0 Ok: queued as"),
        "{}",
        d.transcript
    );
    assert_eq!(d.submissions[0].protocol, "ESMTPSA");
    assert_eq!(d.submissions[0].user.as_deref(), Some("alice"));
}

/// The last reply queued a message, and submission `index` holds `body`.
fn assert_queued(d: &Driver, index: usize, body: &[u8]) {
    assert!(
        d.last().starts_with("250 2.0.0 Ok: queued as"),
        "{}",
        d.transcript
    );
    assert_eq!(d.submissions[index].body, body);
}

/// Alice, authenticated, sends one message with `header` as its header section.
fn alice_sends(d: &mut Driver, header: &str) {
    d.send(b"MAIL FROM:<alice@a.test>\r\nRCPT TO:<r@c.test>\r\nDATA\r\n");
    d.send(format!("{header}\r\nbody\r\n.\r\n").as_bytes());
}

fn authenticated_alice(from_policy: FromPolicy) -> Driver {
    let mut d = Driver::new(config(), true);
    d.from_policy = from_policy;
    d.send(b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    assert_eq!(d.last(), "235 2.7.0 Authentication successful");
    d
}

#[test]
fn forged_author_fields_are_refused_under_the_reject_policy() {
    let mut d = authenticated_alice(FromPolicy::Reject);
    alice_sends(&mut d, "From: CEO <ceo@bank.test>\r\nSubject: pay\r\n");
    assert_eq!(
        d.last(),
        "550 5.7.1 From: header address not allowed for this user"
    );
    alice_sends(&mut d, "From: alice@a.test\r\nSender: ceo@bank.test\r\n");
    assert_eq!(
        d.last(),
        "550 5.7.1 Sender: header address not allowed for this user"
    );
    alice_sends(&mut d, "From: Mallory <mallory@a.test>\r\n");
    assert_eq!(
        d.last(),
        "550 5.7.1 From: header address not allowed for this user"
    );
    assert!(d.submissions.is_empty());
    // Allowed addresses (an exact one, any of an allowed domain) still pass, unchanged.
    alice_sends(
        &mut d,
        "From: Alice <Alice@A.test>\r\nSender: news@b.test\r\n",
    );
    assert_queued(
        &d,
        0,
        b"From: Alice <Alice@A.test>\r\nSender: news@b.test\r\n\r\nbody\r\n",
    );
}

#[test]
fn forged_from_gets_the_envelope_sender_under_the_rewrite_policy() {
    let mut d = authenticated_alice(FromPolicy::Rewrite);
    alice_sends(
        &mut d,
        "From: CEO <ceo@bank.test>\r\nSender: ceo@bank.test\r\n",
    );
    assert_queued(
        &d,
        0,
        b"Sender: <alice@a.test>\r\nFrom: CEO <ceo@bank.test>\r\n\r\nbody\r\n",
    );
    alice_sends(&mut d, "From: news@b.test\r\n");
    assert_eq!(d.submissions[1].body, b"From: news@b.test\r\n\r\nbody\r\n");
}

#[test]
fn trusted_clients_without_auth_keep_their_from() {
    let mut d = Driver::new(config(), true);
    d.send(b"EHLO c\r\n");
    alice_sends(&mut d, "From: CEO <ceo@bank.test>\r\n");
    assert_queued(&d, 0, b"From: CEO <ceo@bank.test>\r\n\r\nbody\r\n");
}

#[test]
fn auth_login_and_plain_continuations() {
    let mut d = Driver::new(config(), true);
    d.send(b"EHLO c\r\nAUTH LOGIN\r\n");
    assert_eq!(d.last(), "334 VXNlcm5hbWU6");
    d.send(b"YWxpY2U=\r\n");
    assert_eq!(d.last(), "334 UGFzc3dvcmQ6");
    d.send(b"c2VjcmV0\r\n");
    assert_eq!(d.last(), "235 2.7.0 Authentication successful");

    let mut d = Driver::new(config(), true);
    d.send(b"EHLO c\r\nAUTH LOGIN YWxpY2U=\r\nd3Jvbmc=\r\n");
    assert_eq!(d.last(), "535 5.7.8 Authentication credentials invalid");
    d.send(b"AUTH PLAIN\r\n");
    assert_eq!(d.last(), "334 ");
    d.send(b"*\r\n");
    assert_eq!(d.last(), "501 5.7.0 Authentication cancelled");
    d.send(b"AUTH PLAIN\r\nnot base64!\r\n");
    assert_eq!(d.last(), "501 5.5.2 Cannot decode authentication response");
    // authzid different from authcid is refused.
    d.send(b"AUTH PLAIN Ym9iAGFsaWNlAHNlY3JldA==\r\n");
    assert_eq!(d.last(), "535 5.7.8 Authentication credentials invalid");
    d.send(b"AUTH CRAM-MD5\r\n");
    assert_eq!(d.last(), "504 5.5.4 Unrecognized authentication type");
    d.send(b"AUTH PLAIN\r\nYWxpY2UAYWxpY2UAc2VjcmV0\r\n");
    assert_eq!(d.last(), "235 2.7.0 Authentication successful");
}

#[test]
fn auth_temporary_failures_answer_454_and_keep_the_session() {
    let mut d = Driver::new(config(), true);
    // PLAIN for "locked" / "busy" with a wrong password: the shell answers without checking.
    d.send(b"EHLO c\r\nAUTH PLAIN AGxvY2tlZAB4\r\n");
    assert_eq!(d.last(), "454 4.7.0 Temporary authentication failure");
    d.send(b"AUTH PLAIN AGJ1c3kAeA==\r\n");
    assert_eq!(d.last(), "454 4.7.0 Temporary authentication failure");
    assert!(d.protocol.user().is_none());
    d.send(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    assert_eq!(d.last(), "235 2.7.0 Authentication successful");
}

#[test]
fn idle_sessions_can_be_closed_for_overload() {
    let mut d = Driver::new(config(), true);
    d.send(b"EHLO c\r\n");
    assert!(!d.protocol.in_transaction());
    d.send(b"MAIL FROM:<s@a.test>\r\n");
    assert!(d.protocol.in_transaction(), "MAIL starts a transaction");
    d.send(b"RSET\r\n");
    assert!(!d.protocol.in_transaction());
    d.protocol.close_for_overload();
    d.run();
    assert_eq!(
        d.lines()[d.lines().len() - 2..],
        [
            "421 4.7.0 mx.test Too many connections, closing idle session",
            "<CLOSE>"
        ]
    );
}

#[test]
fn timeout_and_shutdown_replies() {
    let mut d = Driver::new(config(), true);
    d.protocol.timeout();
    d.run();
    assert_eq!(
        d.lines(),
        ["421 4.4.2 mx.test Error: timeout exceeded", "<CLOSE>"]
    );
    let mut d = Driver::new(config(), true);
    d.send(b"EHLO c\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\nDATA\r\npart");
    assert!(d.protocol.is_mid_message());
    d.send(b"\r\n.\r\n");
    assert!(!d.protocol.is_mid_message());
    d.protocol.shutdown();
    d.run();
    assert_eq!(
        d.lines()[d.lines().len() - 3..],
        [
            "250 2.0.0 Ok: queued as 0000000000000001",
            "421 4.3.2 mx.test Service shutting down",
            "<CLOSE>"
        ]
    );
    d.send(b"NOOP\r\n");
    assert!(
        d.transcript.ends_with("<CLOSE>\r\n<CLOSE>\r\n"),
        "nothing more after close"
    );
}

/// RFC 5321 §4.5.3.1.6: a text line is at most 998 octets plus CRLF, "not counting the leading
/// dot duplicated for transparency".
#[test]
fn the_transparency_dot_does_not_count_toward_the_line_length() {
    for (len, dotted, accepted) in [
        (997, false, true),
        (998, false, true),
        (999, false, false),
        (997, true, true),
        (998, true, true),
        (999, true, false),
    ] {
        // A content line of `len` octets; when `dotted` it starts with `.`, sent stuffed.
        let line: Vec<u8> = if dotted {
            let mut l = b"..".to_vec();
            l.resize(len + 1, b'y');
            l
        } else {
            vec![b'y'; len]
        };
        let mut content = b"Subject: long\r\n\r\n".to_vec();
        content.extend_from_slice(&line);
        let d = data_session(BareNewlinePolicy::Reject, &content);
        let reply = d.lines()[d.lines().len() - 2];
        if accepted {
            assert!(reply.starts_with("250"), "{len} dotted={dotted}: {reply}");
            let body = &d.submissions[0].body;
            let kept = body.split(|&b| b == b'\n').nth(2).expect("the line");
            assert_eq!(kept.len(), len + 1, "unstuffed, with its CR");
            assert_eq!(kept[0] == b'.', dotted);
        } else {
            assert_eq!(
                reply, "552 5.6.0 Message has a line longer than 998 octets",
                "{len} dotted={dotted}"
            );
        }
    }
}

#[test]
fn nul_octets_in_content_are_refused() {
    for content in [
        &b"Subject: a\r\n\r\nbe\0fore\r\nafter"[..],
        b"Subject: a\r\n\r\nx\r\n.\0",
        b"Subject: a\r\n\r\nx\r\n\0.",
    ] {
        let d = data_session(BareNewlinePolicy::Normalize, content);
        assert_eq!(
            d.lines()[d.lines().len() - 2],
            "550 5.6.0 Message contains NUL octets",
            "{content:?}"
        );
        assert!(d.submissions.is_empty());
    }
    // In a command line, a NUL is a syntax error.
    let d = run_all_splits(config(), true, b"EHLO c\r\nMAIL FROM:<s@a.test>\0\r\n");
    assert!(d.last().starts_with("501"), "{}", d.last());
}

fn receive_only() -> ProtocolConfig {
    ProtocolConfig {
        role: SessionRole::ReceiveOnly {
            domain: "bounces.test".into(),
        },
        ..config()
    }
}

#[test]
fn a_receive_only_server_takes_reports_for_its_domain_from_anyone() {
    // Not a trusted client, no AUTH, the null reverse-path.
    let input = b"EHLO mx.remote.test\r\nMAIL FROM:<>\r\nRCPT TO:<b+token@Bounces.Test>\r\nRCPT TO:<victim@elsewhere.test>\r\nDATA\r\nSubject: failure\r\n\r\nreport\r\n.\r\n";
    let driver = run_all_splits(receive_only(), false, input);
    let lines = driver.lines();
    assert!(!lines.iter().any(|l| l.contains("AUTH")), "{lines:?}");
    assert!(lines.contains(&"250 2.1.0 Ok"), "{lines:?}");
    assert!(lines.contains(&"250 2.1.5 Ok"), "{lines:?}");
    assert!(lines.contains(&"550 5.7.1 Relaying denied"), "{lines:?}");
    assert_eq!(driver.last(), "250 2.0.0 Ok: queued as 0000000000000001");
    let submission = &driver.submissions[0];
    assert_eq!(submission.envelope.sender().to_string(), "");
    assert_eq!(submission.envelope.recipients().len(), 1);
    assert_eq!(submission.body, b"Subject: failure\r\n\r\nreport\r\n");
}

#[test]
fn a_receive_only_server_never_relays_nor_authenticates() {
    // Even a trusted client may not relay through it.
    let mut d = Driver::new(receive_only(), true);
    d.send(b"EHLO c\r\n");
    assert!(!d.lines().iter().any(|l| l.contains("AUTH")));
    d.send(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    assert_eq!(d.last(), "502 5.5.1 Command not implemented");
    d.send(b"MAIL FROM:<s@a.test>\r\nRCPT TO:<r@b.test>\r\n");
    assert_eq!(d.last(), "550 5.7.1 Relaying denied");
    d.send(b"DATA\r\n");
    assert_eq!(d.last(), "503 5.5.1 Need RCPT command");
    assert!(d.submissions.is_empty());
}
