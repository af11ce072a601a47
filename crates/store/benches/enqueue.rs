//! Enqueue + group-commit throughput with 1, 8 and 64 concurrent submitters.
//!
//! Run with `cargo bench -p postrider-store --bench enqueue` (optionally
//! `POSTRIDER_BENCH_MESSAGES=N`, default 4000). Uses a store in a fresh directory under
//! `POSTRIDER_BENCH_DIR` (default: the system temp dir; point it at the production disk), with
//! the same flush + fdatasync per group commit as production, and prints msgs/s.
#![allow(missing_docs)]

use std::time::Instant;

use postrider_core::{
    Address, Envelope, NewMessage, RecipientRequest, ReversePath, Source, Timestamp,
};
use postrider_metrics::Metrics;
use postrider_store::Store;

fn message(i: usize, body: &[u8]) -> NewMessage {
    let env = Envelope::new(
        ReversePath::parse("sender@example.com").expect("static address"),
        vec![RecipientRequest::new(
            Address::parse(&format!("user{i}@example.net")).expect("generated address"),
        )],
    )
    .expect("one recipient");
    NewMessage::new(
        env,
        body.to_vec(),
        Source::Smtp,
        Timestamp::from_millis(1_795_411_197_000),
    )
}

fn main() {
    let total: usize = std::env::var("POSTRIDER_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let body = {
        let mut b = b"Subject: bench\r\nFrom: sender@example.com\r\n\r\n".to_vec();
        b.resize(4096, b'x');
        b
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for submitters in [1usize, 8, 64] {
        let metrics = Metrics::new();
        let base = std::env::var_os("POSTRIDER_BENCH_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::tempdir_in(base).expect("bench directory");
        let store = Store::open(dir.path(), metrics.clone()).expect("store");
        let per_task = total / submitters;
        let started = Instant::now();
        rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for t in 0..submitters {
                let store = store.clone();
                let body = body.clone();
                tasks.spawn(async move {
                    for i in 0..per_task {
                        store
                            .enqueue(message(t * per_task + i, &body))
                            .await
                            .expect("enqueue");
                    }
                });
            }
            tasks.join_all().await;
        });
        let elapsed = started.elapsed().as_secs_f64();
        let done = per_task * submitters;
        let flushes = metrics.store_flush_batch.get_sample_count();
        let flush_secs = metrics.store_flush_duration.get_sample_sum();
        println!(
            "enqueue 4 KiB, {submitters:>2} submitters: {done} msgs in {elapsed:.3} s = {:>8.0} msgs/s, {flushes} flushes ({:.1} msgs/flush, {flush_secs:.3} s flushing)",
            done as f64 / elapsed,
            done as f64 / flushes.max(1) as f64
        );
        drop(store);
    }
}
