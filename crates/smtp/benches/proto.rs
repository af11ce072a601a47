//! Micro-benchmarks of the SMTP protocol core (no I/O): command parsing, DATA ingestion
//! (dot-terminated content, 4 KiB in one read and in 1460-octet TCP segments) and the
//! `Received:`/`Date:`/`Message-ID:` preparation of the stored content.
//!
//! Run with `cargo bench -p postrider-smtp --bench proto`. Plain timing loops (`harness =
//! false`, no extra dependency): each case runs for about `POSTRIDER_BENCH_SECS` seconds
//! (default 0.5) after a warm-up and prints ns/op (median of 5 rounds) and, where it applies,
//! MB/s.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use postrider_core::Timestamp;
use postrider_smtp::proto::{BodyReceiver, parse_command};
use postrider_smtp::{BareNewlinePolicy, TraceInfo, prepare_message};

/// Median ns per call of `f` over 5 rounds of about `budget / 5` each.
fn time_ns<F: FnMut()>(budget: Duration, mut f: F) -> f64 {
    // Calibrate: how many calls fit in ~10 ms.
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

fn report(name: &str, ns: f64, bytes: Option<usize>) {
    match bytes {
        Some(b) => println!(
            "{name:<48} {ns:>10.1} ns/op {:>9.0} MB/s",
            b as f64 / ns * 1e3
        ),
        None => println!("{name:<48} {ns:>10.1} ns/op"),
    }
}

/// What smtp-source sends: headers plus `size` octets of payload in 80-column lines, CRLF,
/// then the terminator.
fn data_stream(size: usize) -> Vec<u8> {
    let mut s = b"From: <sender@bench.example>\r\nTo: <rcpt@sink.example>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-Id: <1.2.3@client.bench.example>\r\n\r\n".to_vec();
    let line = [b'x'; 78];
    let mut written = 0;
    while written < size {
        let n = (size - written).min(line.len());
        s.extend_from_slice(&line[..n]);
        s.extend_from_slice(b"\r\n");
        written += n;
    }
    s.extend_from_slice(b".\r\n");
    s
}

fn main() {
    let secs: f64 = std::env::var("POSTRIDER_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.5);
    let budget = Duration::from_secs_f64(secs);

    let commands: [(&str, &[u8]); 6] = [
        ("parse EHLO", b"EHLO client.bench.example"),
        ("parse MAIL FROM", b"MAIL FROM:<sender@bench.example>"),
        (
            "parse MAIL FROM with SIZE BODY",
            b"MAIL FROM:<sender@bench.example> SIZE=4242 BODY=8BITMIME",
        ),
        ("parse RCPT TO", b"RCPT TO:<rcpt@sink.example>"),
        (
            "parse RCPT TO with NOTIFY ORCPT",
            b"RCPT TO:<rcpt@sink.example> NOTIFY=FAILURE,DELAY ORCPT=rfc822;rcpt@sink.example",
        ),
        ("parse DATA", b"DATA"),
    ];
    for (name, line) in commands {
        let ns = time_ns(budget, || {
            let _ = black_box(parse_command(black_box(line)));
        });
        report(name, ns, None);
    }
    // One whole smtp-source transaction's commands.
    let transaction: [&[u8]; 5] = [
        b"EHLO client.bench.example",
        b"MAIL FROM:<sender@bench.example>",
        b"RCPT TO:<rcpt@sink.example>",
        b"DATA",
        b"QUIT",
    ];
    let ns = time_ns(budget, || {
        for line in transaction {
            let _ = black_box(parse_command(black_box(line)));
        }
    });
    report("parse EHLO+MAIL+RCPT+DATA+QUIT", ns, None);

    for size in [4096usize, 65536] {
        let stream = data_stream(size);
        let ns = time_ns(budget, || {
            let mut rx = BodyReceiver::dot_terminated(BareNewlinePolicy::Reject, 25_000_000);
            let (used, done) = rx.ingest(black_box(&stream));
            assert!(done && used == stream.len());
            black_box(rx.finish().expect("valid content"));
        });
        report(
            &format!("DATA ingest {size} B, one read"),
            ns,
            Some(stream.len()),
        );
        let ns = time_ns(budget, || {
            let mut rx = BodyReceiver::dot_terminated(BareNewlinePolicy::Reject, 25_000_000);
            let mut done = false;
            for seg in stream.chunks(1460) {
                let (_, d) = rx.ingest(black_box(seg));
                done = d;
            }
            assert!(done);
            black_box(rx.finish().expect("valid content"));
        });
        report(
            &format!("DATA ingest {size} B, 1460 B segments"),
            ns,
            Some(stream.len()),
        );
    }

    let stream = data_stream(4096);
    let mut rx = BodyReceiver::dot_terminated(BareNewlinePolicy::Reject, 25_000_000);
    rx.ingest(&stream);
    let body = rx.finish().expect("valid content");
    let trace = TraceInfo {
        helo: "client.bench.example",
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        hostname: "relay.bench.example",
        protocol: "ESMTP",
    };
    let now = Timestamp::from_millis(1_795_411_197_000);
    let ns = time_ns(budget, || {
        black_box(prepare_message(
            black_box(&body),
            &trace,
            now,
            "0000000000000001",
        ));
    });
    report(
        "prepare_message 4 KiB (Received header)",
        ns,
        Some(body.len()),
    );
}
