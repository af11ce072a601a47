//! Queue scale: a store filled with up to 1,000,000 deferred messages (512-byte bodies).
//!
//! Run with `cargo bench -p postrider-store --bench scale`. Environment:
//! - `POSTRIDER_SCALE_MAX` (default 1000000): the last checkpoint; checkpoints are 10k, 100k,
//!   1M (those not above the maximum, plus the maximum itself);
//! - `POSTRIDER_SCALE_DIR` (default `/var/tmp/postrider-scale`): the data directory, on a real
//!   disk (not tmpfs) on purpose; it is emptied first and removed at the end unless
//!   `POSTRIDER_SCALE_KEEP=1`.
//!
//! The parent fills the store through [`Store::enqueue`] (durable, group commit, 256
//! concurrent submitters). Every message is deferred: due 1 hour after the fill started plus
//! 1 ms per message, so nothing is due at fill time. At each checkpoint it closes the store and
//! runs a **fresh child process** (this binary again) that measures what a restarting relay
//! sees: `Store::open` time, RSS after open, the time of `lease_due` claiming a batch of 100
//! due entries (20 batches, median and max), RSS afterwards, and the disk use.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use postrider_core::{
    Address, Envelope, NewMessage, RecipientRequest, ReversePath, Source, Timestamp,
};
use postrider_metrics::Metrics;
use postrider_store::Store;

const CHILD_ENV: &str = "POSTRIDER_SCALE_CHILD";
const SUBMITTERS: usize = 256;
const BATCH: usize = 100;
const BATCHES: usize = 20;
const LEASE: Duration = Duration::from_secs(600);

fn base_ms() -> u64 {
    std::env::var("POSTRIDER_SCALE_BASE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Message number `i`: due at `base + i ms` (its arrival time; nothing else delays it).
fn message(i: u64, base: u64, body: &[u8]) -> NewMessage {
    let env = Envelope::new(
        ReversePath::parse("sender@bench.example").expect("static address"),
        vec![RecipientRequest::new(
            Address::parse(&format!("user{i}@dest{}.example", i % 1000))
                .expect("generated address"),
        )],
    )
    .expect("one recipient");
    NewMessage::new(
        env,
        body.to_vec(),
        Source::Smtp,
        Timestamp::from_millis(base + i),
    )
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// The child: open, lease, report one line.
fn child(dir: &Path, filled: u64, leased_before: u64) {
    let base = base_ms();
    let rss0 = status_kib("VmRSS:");
    let t = Instant::now();
    let store = Store::open(dir, Metrics::new()).expect("open store");
    let open_s = t.elapsed().as_secs_f64();
    let rss_open = status_kib("VmRSS:");
    let pending = store.pending_count();
    // Batches of 100 due entries: the ones after those leased by earlier checkpoints.
    let mut times = Vec::with_capacity(BATCHES);
    for b in 0..BATCHES as u64 {
        let due_until = leased_before + (b + 1) * BATCH as u64 - 1;
        let now = Timestamp::from_millis(base + due_until);
        let t = Instant::now();
        let leases = store.lease_due(now, LEASE, BATCH).expect("lease_due");
        times.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(
            leases.len(),
            BATCH,
            "batch {b}: expected {BATCH} due entries"
        );
    }
    // A call with nothing due (the scheduler's idle poll).
    let t = Instant::now();
    let none = store
        .lease_due(Timestamp::from_millis(base.saturating_sub(1)), LEASE, BATCH)
        .expect("lease_due");
    let idle_ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(none.is_empty());
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let rss_after = status_kib("VmRSS:");
    let hwm = status_kib("VmHWM:");
    let disk = store.size_on_disk().unwrap_or(0);
    drop(store);
    println!(
        "queued={filled:>8} pending_at_open={pending:>8} open_s={open_s:.3} \
         rss_before_open_mib={:.1} rss_after_open_mib={:.1} rss_after_leases_mib={:.1} peak_rss_mib={:.1} \
         lease100_ms_median={:.3} lease100_ms_max={:.3} lease_idle_ms={idle_ms:.3} \
         sled_size_on_disk_mib={:.1} dir_mib={:.1}",
        rss0 as f64 / 1024.0,
        rss_open as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        hwm as f64 / 1024.0,
        sorted[BATCHES / 2],
        sorted[BATCHES - 1],
        disk as f64 / 1048576.0,
        dir_bytes(dir) as f64 / 1048576.0,
    );
}

fn main() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let filled = std::env::var("POSTRIDER_SCALE_FILLED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let leased = std::env::var("POSTRIDER_SCALE_LEASED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        child(Path::new(&dir), filled, leased);
        return;
    }
    let max: u64 = std::env::var("POSTRIDER_SCALE_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
        .clamp(10 * BATCH as u64 * BATCHES as u64, 5_000_000);
    let dir = PathBuf::from(
        std::env::var("POSTRIDER_SCALE_DIR").unwrap_or_else(|_| "/var/tmp/postrider-scale".into()),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let mut checkpoints: Vec<u64> = [10_000u64, 100_000, 1_000_000]
        .into_iter()
        .filter(|&c| c < max)
        .collect();
    checkpoints.push(max);

    let now_ms = postrider_core::clock::Clock::now(&postrider_core::clock::SystemClock).as_millis();
    let base = now_ms + 3_600_000; // deferred: due an hour from now, 1 ms apart
    let body = {
        let mut b = b"Subject: scale\r\nFrom: sender@bench.example\r\n\r\n".to_vec();
        b.resize(512, b'x');
        b
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "scale bench: data dir {}, up to {max} deferred messages of 512 B",
        dir.display()
    );
    let mut filled = 0u64;
    let mut leased = 0u64;
    for cp in checkpoints {
        let store = Store::open(&dir, Metrics::new()).expect("open store");
        let t = Instant::now();
        let start = filled;
        rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for s in 0..SUBMITTERS as u64 {
                let store = store.clone();
                let body = body.clone();
                tasks.spawn(async move {
                    let mut i = start + s;
                    while i < cp {
                        store
                            .enqueue(message(i, base, &body))
                            .await
                            .expect("enqueue");
                        i += SUBMITTERS as u64;
                    }
                });
            }
            tasks.join_all().await;
        });
        let fill_s = t.elapsed().as_secs_f64();
        println!(
            "filled {start}..{cp}: {} msgs in {fill_s:.1} s = {:.0} msgs/s (durable enqueue, {SUBMITTERS} submitters)",
            cp - start,
            (cp - start) as f64 / fill_s
        );
        filled = cp;
        drop(store);
        let exe = std::env::current_exe().expect("own path");
        let status = Command::new(exe)
            .env(CHILD_ENV, &dir)
            .env("POSTRIDER_SCALE_FILLED", filled.to_string())
            .env("POSTRIDER_SCALE_LEASED", leased.to_string())
            .env("POSTRIDER_SCALE_BASE_MS", base.to_string())
            .status()
            .expect("run child");
        assert!(status.success(), "child failed: {status}");
        leased += (BATCH * BATCHES) as u64;
    }
    if std::env::var("POSTRIDER_SCALE_KEEP").as_deref() != Ok("1") {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
