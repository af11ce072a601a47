//! Micro-benchmarks of the pure core on the delivery path: reply parsing and classification
//! (once per SMTP reply received) and DSN rendering (once per bounce).
//!
//! Run with `cargo bench -p postrider-core --bench core`. Plain timing loops (`harness =
//! false`, no extra dependency): each case runs for about `POSTRIDER_BENCH_SECS` seconds
//! (default 0.5) and prints ns/op (median of 5 rounds).
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use postrider_core::dsn::{DsnAction, DsnRecipient, DsnReport, render_dsn};
use postrider_core::{
    Address, DsnRet, EnhancedStatus, MessageId, SmtpPhase, SmtpReply, Timestamp, classify_reply,
};

/// Median ns per call of `f` over 5 rounds of about `budget / 5` each.
fn time_ns<F: FnMut()>(budget: Duration, mut f: F) -> f64 {
    let mut batch = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        if t.elapsed() >= Duration::from_millis(10) || batch >= 1 << 30 {
            break;
        }
        batch *= 2;
    }
    let round = budget / 5;
    let mut per_call = Vec::with_capacity(5);
    for _ in 0..5 {
        let t = Instant::now();
        let mut calls = 0u64;
        while t.elapsed() < round {
            for _ in 0..batch {
                f();
            }
            calls += batch;
        }
        per_call.push(t.elapsed().as_nanos() as f64 / calls as f64);
    }
    per_call.sort_by(f64::total_cmp);
    per_call[2]
}

fn report(name: &str, ns: f64) {
    println!("{name:<52} {ns:>10.1} ns/op");
}

fn original(size: usize) -> Vec<u8> {
    let mut m = b"From: <sender@bench.example>\r\nTo: <rcpt@sink.example>\r\nSubject: bench\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-Id: <1.2.3@client.bench.example>\r\n\r\n".to_vec();
    while m.len() < size {
        m.extend_from_slice(&[b'x'; 78]);
        m.extend_from_slice(b"\r\n");
    }
    m
}

fn main() {
    let secs: f64 = std::env::var("POSTRIDER_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.5);
    let budget = Duration::from_secs_f64(secs);

    let texts = [
        (250, "2.0.0 Ok: queued as 4F2A1B"),
        (450, "4.2.1 Mailbox busy, try again later"),
        (
            550,
            "5.1.1 <rcpt@sink.example>: Recipient address rejected: User unknown",
        ),
        (421, "Service not available, closing transmission channel"),
    ];
    let ns = time_ns(budget, || {
        for (code, text) in texts {
            let reply = SmtpReply::new(black_box(code), black_box(text));
            let _ = black_box(classify_reply(SmtpPhase::RcptTo, &reply));
        }
    });
    report("SmtpReply::new + classify_reply (per reply)", ns / 4.0);
    let replies: Vec<SmtpReply> = texts.iter().map(|(c, t)| SmtpReply::new(*c, t)).collect();
    let ns = time_ns(budget, || {
        for r in &replies {
            let _ = black_box(classify_reply(SmtpPhase::DataEnd, black_box(r)));
        }
    });
    report("classify_reply alone (per reply)", ns / 4.0);

    let sender = Address::parse("sender@bench.example").expect("static address");
    let reply = SmtpReply::new(550, "5.1.1 <rcpt@sink.example>: User unknown");
    let addresses: Vec<Address> = (0..10)
        .map(|i| Address::parse(&format!("rcpt{i}@sink.example")).expect("generated address"))
        .collect();
    let recipients: Vec<DsnRecipient<'_>> = addresses
        .iter()
        .map(|a| DsnRecipient {
            address: a,
            original_recipient: None,
            action: DsnAction::Failed,
            status: EnhancedStatus::new(5, 1, 1),
            remote_mta: Some("mx.sink.example"),
            reply: Some(&reply),
            last_attempt_at: Some(Timestamp::from_millis(1_795_411_197_000)),
            will_retry_until: None,
        })
        .collect();
    for (size, ret, n) in [
        (4096usize, DsnRet::Hdrs, 1usize),
        (4096, DsnRet::Full, 1),
        (4096, DsnRet::Hdrs, 10),
        (65536, DsnRet::Full, 1),
    ] {
        let orig = original(size);
        let report_in = DsnReport {
            reporting_mta: "relay.bench.example",
            message_id: "dsn.1@relay.bench.example",
            date: Timestamp::from_millis(1_795_411_198_000),
            original_sender: &sender,
            queue_id: Some(MessageId::from_u64(1)),
            envid: None,
            arrival_date: Timestamp::from_millis(1_795_411_190_000),
            recipients: &recipients[..n],
            ret,
            original: &orig,
        };
        let ns = time_ns(budget, || {
            black_box(render_dsn(black_box(&report_in)));
        });
        report(
            &format!("render_dsn {n} rcpt, RET={ret:?}, original {size} B"),
            ns,
        );
    }
}
