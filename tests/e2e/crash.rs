//! Crash safety: SIGKILL while clients submit concurrently and deliveries are in flight. Every
//! message that got 250/202 must be delivered after restart; a message may be delivered twice only
//! inside the at-least-once window (the peer accepted it but the relay had not recorded that when
//! it died), i.e. its first copy reached the peer before a kill and the second after it.
//!
//! `POSTRIDER_CRASH_ITERATIONS` sets the number of kill/restart rounds (default 2, as in CI;
//! `tests/crash-stress.sh` runs 20).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postrider_testkit::Reply;
use serde_json::json;

use crate::harness::{TestRelay, http_request, wait_until};
use crate::world::World;

const SMTP_CLIENTS: usize = 4;
const HTTP_CLIENTS: usize = 2;

async fn smtp_submitter(
    relay_smtp: std::net::SocketAddr,
    tag: String,
    acked: Arc<Mutex<HashSet<String>>>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let token = format!("{tag}-{n}");
        if let Some(250) = crate::smtp_client::submit_quietly(
            relay_smtp,
            "user@example.test",
            &format!("Subject: crash-{token}\r\n\r\nload\r\n"),
        )
        .await
        {
            acked.lock().expect("acked").insert(token);
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn http_submitter(
    http: std::net::SocketAddr,
    tag: String,
    acked: Arc<Mutex<HashSet<String>>>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let token = format!("{tag}-{n}");
        let body = json!({"envelope": {"from": "app@sender.test", "to": ["user@example.test"]}, "raw": format!("Subject: crash-{token}\r\n\r\nload\r\n")});
        let raw = serde_json::to_vec(&body).expect("json");
        match http_request(
            http,
            "POST",
            "/v1/messages",
            Some(&raw),
            &[("Content-Type", "application/json")],
        )
        .await
        {
            Ok((202, _)) => {
                acked.lock().expect("acked").insert(token);
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn token_of(data: &[u8]) -> Option<String> {
    String::from_utf8_lossy(data)
        .lines()
        .find_map(|l| l.strip_prefix("Subject: crash-").map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_message() {
    let iterations: usize = std::env::var("POSTRIDER_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let world = World::start().await;
    // Deliveries take a moment at the peer, so some are in flight at every kill.
    world
        .mx1
        .update_behaviour(|b| b.end_of_data_delay = Duration::from_millis(25));
    let mut relay = TestRelay::start(&world.config(&["1s"], "1h")).await;
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut kill_marks = Vec::new();

    for round in 0..iterations {
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for c in 0..SMTP_CLIENTS {
            clients.push(tokio::spawn(smtp_submitter(
                relay.smtp,
                format!("r{round}s{c}"),
                acked.clone(),
                stop.clone(),
            )));
        }
        for c in 0..HTTP_CLIENTS {
            clients.push(tokio::spawn(http_submitter(
                relay.http,
                format!("r{round}h{c}"),
                acked.clone(),
                stop.clone(),
            )));
        }
        let pause = 400 + (round * 137) % 600;
        tokio::time::sleep(Duration::from_millis(pause as u64)).await;
        assert_eq!(relay.stop_with("KILL").await, None, "killed by SIGKILL");
        // Let the peer finish sessions whose data was complete before the kill, then mark.
        tokio::time::sleep(Duration::from_millis(200)).await;
        kill_marks.push(world.mx1.messages().len());
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = c.await;
        }
        relay.restart().await;
    }

    let acked: HashSet<String> = acked.lock().expect("acked").clone();
    assert!(
        acked.len() >= iterations,
        "load was applied: {} acknowledged",
        acked.len()
    );
    // The backlog can be large after many rounds: fail only when delivery stops making progress.
    let mut last_progress = (0usize, tokio::time::Instant::now());
    let delivered = loop {
        let msgs = world.mx1.messages();
        let seen: HashSet<String> = msgs.iter().filter_map(|m| token_of(&m.data)).collect();
        let missing: Vec<&String> = acked.iter().filter(|t| !seen.contains(*t)).collect();
        if missing.is_empty() {
            break msgs;
        }
        if msgs.len() > last_progress.0 {
            last_progress = (msgs.len(), tokio::time::Instant::now());
        }
        assert!(
            last_progress.1.elapsed() < Duration::from_secs(60),
            "{} acknowledged messages never delivered (no progress for 60 s), e.g. {:?}\nrelay log (tail):\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            relay
                .log_text()
                .lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let mut positions: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, m) in delivered.iter().enumerate() {
        if let Some(t) = token_of(&m.data) {
            positions.entry(t).or_default().push(i);
        }
    }
    let mut duplicates = 0;
    for (token, pos) in &positions {
        for pair in pos.windows(2) {
            duplicates += 1;
            let justified = kill_marks.iter().any(|&k| pair[0] < k && pair[1] >= k);
            assert!(
                justified,
                "{token} delivered twice (positions {pos:?}) without a crash in between; kills at {kill_marks:?}"
            );
        }
    }
    println!(
        "crash test: {iterations} SIGKILL rounds, {} acknowledged, {} delivered copies, {duplicates} duplicate(s) inside the at-least-once window, 0 lost",
        acked.len(),
        delivered.len()
    );
}

/// Deliveries the peers of `world` are holding: message data received, no reply sent yet.
fn held_deliveries(world: &World) -> usize {
    [&world.mx1, &world.mx2]
        .iter()
        .flat_map(|mx| mx.transcript())
        .filter(|l| l.contains("C: <message data> ."))
        .count()
}

/// A relay killed while deliveries are in flight leaves their messages leased for
/// `delivery.lease` (10 minutes here). A restart releases those leases: every acknowledged
/// message arrives soon after the restart, not when the leases expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_delivery_releases_leases_at_restart() {
    let world = World::start().await;
    // The peers hold each delivery at the end of data and then refuse it (nothing recorded),
    // so every attempt is still in flight, its message leased, when the relay is killed.
    for mx in [&world.mx1, &world.mx2] {
        mx.update_behaviour(|b| {
            b.end_of_data_delay = Duration::from_secs(120);
            b.end_of_data_reply = Reply::new(451, "4.3.0 not now");
        });
    }
    let config = world
        .config(&["1h"], "1d")
        .replace("lease = \"20s\"", "lease = \"10m\"")
        .replace("data_timeout = \"3s\"", "data_timeout = \"5m\"");
    assert!(config.contains("lease = \"10m\"") && config.contains("data_timeout = \"5m\""));
    let mut relay = TestRelay::start(&config).await;

    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..SMTP_CLIENTS)
        .map(|c| {
            tokio::spawn(smtp_submitter(
                relay.smtp,
                format!("lease{c}"),
                acked.clone(),
                stop.clone(),
            ))
        })
        .collect();
    wait_until("deliveries held by the peers", async || {
        (held_deliveries(&world) >= 8).then_some(())
    })
    .await;
    // Submissions go on a moment longer: their syncs also make the leases durable.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(relay.stop_with("KILL").await, None, "killed by SIGKILL");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    assert!(
        world.mx1.messages().is_empty() && world.mx2.messages().is_empty(),
        "nothing was delivered before the kill"
    );

    for mx in [&world.mx1, &world.mx2] {
        mx.update_behaviour(|b| {
            b.end_of_data_delay = Duration::ZERO;
            b.end_of_data_reply = Reply::new(250, "2.0.0 accepted");
        });
    }
    relay.restart().await;
    let acked: HashSet<String> = acked.lock().expect("acked").clone();
    assert!(!acked.is_empty(), "load was applied");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seen: HashSet<String> = [&world.mx1, &world.mx2]
            .iter()
            .flat_map(|mx| mx.messages())
            .filter_map(|m| token_of(&m.data))
            .collect();
        let missing: Vec<&String> = acked.iter().filter(|t| !seen.contains(*t)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} acknowledged messages not delivered within 60 s of the restart (still leased?), e.g. {:?}\nrelay log:\n{}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)],
            relay.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        relay
            .log_text()
            .contains("leases of an earlier run released"),
        "the restart reports the released leases"
    );
}
