//! A receiver that answers like real ones do, for `bench/realistic.sh`: most recipients are
//! accepted, some deferred, some refused, and some hosts are slow.
//!
//! ```text
//! postrider-bench-sink --port 2626 --status /tmp/sink.json \
//!     --host 127.0.0.11 --host 127.0.0.12 --host 127.0.0.13:slow=50ms --host 127.0.0.14:accept-all
//! ```
//!
//! The answer to `RCPT TO` depends only on the recipient, so every relay under test gets the
//! same answers for the same load: a local part starting with a sequence number `n` (as
//! `smtp-source -N` writes them) gets `550 5.1.1` when `n % 100 < 3`, `451 4.2.1` when
//! `n % 100 < 10`, and `250` otherwise; other local parts, and every recipient of an
//! `accept-all` host, are accepted. `slow=DURATION` delays every end-of-data reply of that host.
//! Per host, the counts of accepted, deferred and refused recipients are written as JSON to the
//! status file ten times a second (and once more on SIGTERM/SIGINT). Loopback only.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use postrider_testkit::{Behaviour, RcptMatch, RcptRule, Reply, SmtpSink};

/// One listening host and how it answers.
struct HostSpec {
    ip: IpAddr,
    slow: Duration,
    accept_all: bool,
}

/// Recipient counts of one host.
#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    deferred: AtomicU64,
    refused: AtomicU64,
}

/// What the mix says for a recipient address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Accept,
    Defer,
    Refuse,
}

fn answer_for(address: &str) -> Answer {
    let digits: String = address.chars().take_while(char::is_ascii_digit).collect();
    match digits.parse::<u64>().map(|n| n % 100) {
        Ok(n) if n < 3 => Answer::Refuse,
        Ok(n) if n < 10 => Answer::Defer,
        _ => Answer::Accept,
    }
}

fn parse_host(spec: &str) -> Result<HostSpec, String> {
    let mut parts = spec.split(':');
    let ip: IpAddr = parts
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("{spec}: {e}"))?;
    if !ip.is_loopback() {
        return Err(format!("{ip} is not a loopback address"));
    }
    let mut host = HostSpec {
        ip,
        slow: Duration::ZERO,
        accept_all: false,
    };
    for option in parts {
        if option == "accept-all" {
            host.accept_all = true;
        } else if let Some(ms) = option
            .strip_prefix("slow=")
            .and_then(|v| v.strip_suffix("ms"))
        {
            host.slow = Duration::from_millis(ms.parse().map_err(|e| format!("{spec}: {e}"))?);
        } else {
            return Err(format!("{spec}: unknown option {option}"));
        }
    }
    Ok(host)
}

/// The behaviour of one host: the mix (counted), or accept everything (counted).
fn behaviour(host: &HostSpec, counts: &Arc<Counts>) -> Behaviour {
    let rule = |reply: Reply, wanted: Answer, accept_all: bool, counts: Arc<Counts>| RcptRule {
        matcher: RcptMatch::Predicate(Arc::new(move |address: &str| {
            let answer = if accept_all {
                Answer::Accept
            } else {
                answer_for(address)
            };
            if answer != wanted {
                return false;
            }
            let counter = match answer {
                Answer::Accept => &counts.accepted,
                Answer::Defer => &counts.deferred,
                Answer::Refuse => &counts.refused,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            true
        })),
        reply,
    };
    Behaviour {
        rcpt_rules: vec![
            rule(
                Reply::new(550, "5.1.1 no such user"),
                Answer::Refuse,
                host.accept_all,
                Arc::clone(counts),
            ),
            rule(
                Reply::new(451, "4.2.1 mailbox busy, try again later"),
                Answer::Defer,
                host.accept_all,
                Arc::clone(counts),
            ),
            rule(
                Reply::new(250, "2.1.5 recipient ok"),
                Answer::Accept,
                host.accept_all,
                Arc::clone(counts),
            ),
        ],
        end_of_data_delay: host.slow,
        ..Behaviour::default()
    }
}

fn status_json(hosts: &[(IpAddr, Arc<Counts>)]) -> String {
    let mut by_host = BTreeMap::new();
    for (ip, c) in hosts {
        by_host.insert(
            ip.to_string(),
            format!(
                "{{\"accepted\": {}, \"deferred\": {}, \"refused\": {}}}",
                c.accepted.load(Ordering::Relaxed),
                c.deferred.load(Ordering::Relaxed),
                c.refused.load(Ordering::Relaxed)
            ),
        );
    }
    let body: Vec<String> = by_host
        .iter()
        .map(|(ip, counts)| format!("\"{ip}\": {counts}"))
        .collect();
    format!("{{{}}}\n", body.join(", "))
}

fn write_status(path: &PathBuf, hosts: &[(IpAddr, Arc<Counts>)]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, status_json(hosts))?;
    std::fs::rename(&tmp, path)
}

fn usage(why: &str) -> ! {
    eprintln!(
        "postrider-bench-sink: {why}\nusage: postrider-bench-sink --port PORT --status FILE --host IP[:slow=NNms][:accept-all] ..."
    );
    std::process::exit(64)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut port, mut status, mut hosts) = (None, None, Vec::new());
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| usage(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--port" => {
                port = Some(
                    value
                        .parse::<u16>()
                        .unwrap_or_else(|e| usage(&e.to_string())),
                )
            }
            "--status" => status = Some(PathBuf::from(value)),
            "--host" => hosts.push(parse_host(&value).unwrap_or_else(|e| usage(&e))),
            other => usage(&format!("unknown option {other}")),
        }
    }
    let (Some(port), Some(status)) = (port, status) else {
        usage("--port and --status are required")
    };
    if hosts.is_empty() {
        usage("at least one --host");
    }
    let mut sinks = Vec::new();
    let mut counted = Vec::new();
    for host in &hosts {
        let counts = Arc::new(Counts::default());
        let sink = SmtpSink::builder()
            .bind(host.ip, port)
            .behaviour(behaviour(host, &counts))
            .max_sessions(1000)
            .start()
            .await
            .unwrap_or_else(|e| usage(&format!("cannot listen on {}:{port}: {e}", host.ip)));
        sinks.push(sink);
        counted.push((host.ip, counts));
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .unwrap_or_else(|e| usage(&e.to_string()));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        // Only the counts matter: drop the recorded messages so memory stays flat.
        for sink in &sinks {
            sink.clear_messages();
        }
        if let Err(e) = write_status(&status, &counted) {
            eprintln!(
                "postrider-bench-sink: cannot write {}: {e}",
                status.display()
            );
        }
    }
    let _ = write_status(&status, &counted);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_depends_on_the_sequence_number_only() {
        let answers: Vec<Answer> = (0..100)
            .map(|n| answer_for(&format!("{n}rcpt@d1.example")))
            .collect();
        assert_eq!(answers.iter().filter(|a| **a == Answer::Refuse).count(), 3);
        assert_eq!(answers.iter().filter(|a| **a == Answer::Defer).count(), 7);
        assert_eq!(answer_for("1202rcpt@d2.example"), Answer::Refuse);
        assert_eq!(answer_for("sender@bench.example"), Answer::Accept);
        assert!(parse_host("192.0.2.1").is_err());
        assert_eq!(
            parse_host("127.0.0.13:slow=50ms").unwrap().slow,
            Duration::from_millis(50)
        );
    }
}
