//! A small Internet on loopback: an authoritative DNS server and several MX hosts (SMTP sinks on
//! different 127.0.0.x addresses sharing one port), plus the relay configured to use them.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use postrider_testkit::{Behaviour, DnsServer, Failure, SmtpSink, Zone};

use crate::harness::TestRelay;

/// Address of the primary MX of `example.test`.
pub const MX1: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Address of the secondary MX (also the implicit-MX host of `implicit.test`).
pub const MX2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// An address where nothing listens (connection refused).
pub const DEAD: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
/// The MX of `sender.test`, where bounces to senders arrive.
pub const SENDER_MX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);

/// DNS plus MX hosts.
pub struct World {
    /// The DNS server the relay uses.
    pub dns: DnsServer,
    /// `mx1.example.test` (preference 10 for `example.test`).
    pub mx1: SmtpSink,
    /// `mx2.example.test` (preference 20 for `example.test`; the only live MX of `fallback.test`).
    pub mx2: SmtpSink,
    /// `mx.sender.test`: receives bounces for `@sender.test` senders.
    pub sender_mx: SmtpSink,
}

impl World {
    /// Starts DNS and sinks. Zone `test.`:
    /// - `example.test`: MX 10 mx1 (127.0.0.2), MX 20 mx2 (127.0.0.3); standard rules on mx1
    ///   (`bad*` → 550 5.1.1, `later*` → 450 4.2.1, `full*` → 552 5.2.2)
    /// - `fallback.test`: MX 10 → 127.0.0.4 (refused), MX 20 → mx2
    /// - `implicit.test`: no MX, A 127.0.0.3
    /// - `nullmx.test`: `MX 0 .`
    /// - `servfail.test`: SERVFAIL
    /// - `sender.test`: MX → 127.0.0.5
    /// - anything else under `test.`: NXDOMAIN
    pub async fn start() -> World {
        let mx1 = SmtpSink::builder()
            .bind(IpAddr::V4(MX1), 0)
            .behaviour(Behaviour::with_standard_rules())
            .start()
            .await
            .expect("mx1");
        let port = mx1.port();
        let mx2 = SmtpSink::builder()
            .bind(IpAddr::V4(MX2), port)
            .behaviour(Behaviour::with_standard_rules())
            .start()
            .await
            .expect("mx2");
        let sender_mx = SmtpSink::builder()
            .bind(IpAddr::V4(SENDER_MX), port)
            .start()
            .await
            .expect("sender mx");
        let dns = DnsServer::start([Zone::new("test.")
            .mx("example.test", 10, "mx1.example.test")
            .mx("example.test", 20, "mx2.example.test")
            .a("mx1.example.test", MX1)
            .a("mx2.example.test", MX2)
            .mx("fallback.test", 10, "dead.fallback.test")
            .mx("fallback.test", 20, "mx2.example.test")
            .a("dead.fallback.test", DEAD)
            .a("implicit.test", MX2)
            .null_mx("nullmx.test")
            .mx("sender.test", 10, "mx.sender.test")
            .a("mx.sender.test", SENDER_MX)])
        .await
        .expect("dns");
        dns.set_failure("servfail.test", Failure::ServFail)
            .expect("servfail");
        World {
            dns,
            mx1,
            mx2,
            sender_mx,
        }
    }

    /// The port every MX host listens on.
    pub fn smtp_port(&self) -> u16 {
        self.mx1.port()
    }

    /// Relay configuration pointing at this world, with the given retry schedule.
    pub fn config(&self, intervals: &[&str], max_age: &str) -> String {
        let intervals = intervals
            .iter()
            .map(|i| format!("{i:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "[dns]\nnameservers = [\"{dns}\"]\ntimeout = \"1s\"\n\n[delivery]\nport = {port}\nconnect_timeout = \"1s\"\ncommand_timeout = \"3s\"\ndata_timeout = \"3s\"\nlease = \"20s\"\n\n[retry]\nintervals = [{intervals}]\nmax_age = {max_age:?}\n",
            dns = self.dns.addr(),
            port = self.smtp_port(),
        )
    }

    /// Subjects of the messages the MX hosts of `example.test` received.
    pub fn delivered_subjects(&self) -> Vec<String> {
        [&self.mx1, &self.mx2]
            .iter()
            .flat_map(|mx| mx.messages())
            .filter_map(|m| {
                String::from_utf8_lossy(&m.data)
                    .lines()
                    .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
            })
            .collect()
    }

    /// Lets the MX hosts of `example.test` accept mail again (after a `421` greeting held it
    /// back), makes everything in `relay`'s queue due now, and waits until messages with every
    /// one of `subjects` arrived; after `patience` fails naming the missing ones.
    pub async fn accept_queued(&self, relay: &TestRelay, subjects: &[String], patience: Duration) {
        for mx in [&self.mx1, &self.mx2] {
            mx.update_behaviour(|b| b.greeting = None);
        }
        let deadline = tokio::time::Instant::now() + patience;
        // Retried again every few seconds: an attempt already under way when the greeting
        // changed still met the 421 and was deferred after the first retry.
        let mut next_retry = tokio::time::Instant::now();
        loop {
            let got = self.delivered_subjects();
            let missing: Vec<&String> = subjects.iter().filter(|s| !got.contains(s)).collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "messages not delivered: {missing:?}; delivered {got:?}; relay log:\n{}",
                relay.log_text()
            );
            if tokio::time::Instant::now() >= next_retry {
                let (status, body) = relay
                    .post_json("/v1/queue/retry", &serde_json::json!({"all": true}))
                    .await;
                assert_eq!(status, 200, "{body}");
                next_retry = tokio::time::Instant::now() + Duration::from_secs(3);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts a relay using this world with a fast retry schedule (1s, forever-ish lifetime).
    pub async fn relay(&self) -> TestRelay {
        TestRelay::start(&self.config(&["1s"], "1h")).await
    }
}

/// Waits for `n` messages at `sink` (panics with the transcript after the patience runs out).
pub async fn received(sink: &SmtpSink, n: usize) -> Vec<postrider_testkit::ReceivedMessage> {
    match sink.wait_for_messages(n, crate::harness::PATIENCE).await {
        Ok(m) => m,
        Err(e) => panic!("{e}; transcript:\n{}", sink.transcript().join("\n")),
    }
}

/// Asserts that `sink` receives nothing more than `n` messages within `quiet`.
pub async fn stays_at(sink: &SmtpSink, n: usize, quiet: Duration) {
    tokio::time::sleep(quiet).await;
    assert_eq!(
        sink.messages().len(),
        n,
        "unexpected messages: {:#?}",
        sink.messages()
    );
}
