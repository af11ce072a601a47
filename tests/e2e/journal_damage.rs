//! Damage at rest in the journal: the relay is killed with mail queued (the journal is then the
//! only copy of it), a byte of one message's journal record is flipped, and the relay starts
//! again. Only that message is lost; the loss is logged at ERROR with the file and range,
//! counted in the metric and kept in quarantine/, and every other message is delivered.

use std::sync::Arc;

use postrider_testkit::Reply;

use crate::harness::{PATIENCE, TestRelay, wait_until_for};
use crate::world::World;

const MESSAGES: usize = 120;
const DAMAGED: usize = 87;

fn subject(n: usize) -> String {
    format!("Subject: damage-{n}\r\n")
}

/// Positions of the journal records in a journal file: `"PRJ1" ‖ be_u32(len) ‖ be_u32(crc) ‖
/// body`, after the file's 64-byte header.
fn records(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut at = 64;
    let mut out = Vec::new();
    while bytes.get(at..at + 4) == Some(&b"PRJ1"[..]) {
        let len = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        out.push(at..at + 12 + len);
        at += 12 + len;
    }
    out
}

#[tokio::test]
async fn a_damaged_journal_record_costs_only_its_message_and_is_reported() {
    let world = World::start().await;
    for mx in [&world.mx1, &world.mx2] {
        mx.update_behaviour(|b| b.greeting = Some(Reply::new(421, "4.3.2 not yet")));
    }
    let config = format!(
        "{}\n[delivery.breaker]\nfailure_threshold = 1000000\ninitial_backoff = \"1s\"\nmax_backoff = \"1s\"\n",
        world.config(&["2s"], "5d")
    );
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let mut relay = TestRelay::start_in(dir.clone(), &config).await;
    for n in 0..MESSAGES {
        let data = format!("{}\r\nbody of message {n}\r\n", subject(n));
        crate::smtp_client::submit(relay.smtp, "app@sender.test", &["user@example.test"], &data)
            .await;
    }
    // A crash: the acknowledged messages are in the journal, not yet in sled's files.
    relay.stop_with("KILL").await;

    let journal = dir.path().join("data").join("journal-0");
    let mut bytes = std::fs::read(&journal).expect("journal-0");
    let needle = subject(DAMAGED);
    let damaged = records(&bytes)
        .into_iter()
        .find(|r| {
            bytes[r.clone()]
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        })
        .expect("the record that queued the message");
    bytes[damaged.end - 5] ^= 0x20;
    std::fs::write(&journal, &bytes).expect("write journal");

    for mx in [&world.mx1, &world.mx2] {
        mx.update_behaviour(|b| b.greeting = None);
    }
    relay.restart().await;

    let received = || {
        let mut subjects: Vec<String> = [&world.mx1, &world.mx2]
            .iter()
            .flat_map(|mx| mx.messages())
            .filter_map(|m| {
                String::from_utf8_lossy(&m.data)
                    .lines()
                    .find_map(|l| l.strip_prefix("Subject: damage-").map(str::to_owned))
            })
            .collect();
        subjects.sort();
        subjects.dedup();
        subjects
    };
    let mut expected: Vec<String> = (0..MESSAGES)
        .filter(|&n| n != DAMAGED)
        .map(|n| n.to_string())
        .collect();
    expected.sort();
    wait_until_for(PATIENCE * 4, "every intact message delivered", async || {
        (received() == expected).then_some(())
    })
    .await;
    assert!(
        !received().contains(&DAMAGED.to_string()),
        "the damaged record's message cannot come back"
    );

    let log = relay.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("journal damage") && l.contains("ERROR"))
        .unwrap_or_else(|| panic!("no ERROR line for the damage in:\n{log}"));
    assert!(
        line.contains("journal-0") && line.contains(&format!("at bytes {}..", damaged.start)),
        "{line}"
    );
    assert_eq!(
        relay.metric("postrider_store_corrupt_records_total").await,
        Some(1.0)
    );
    let quarantine: Vec<String> = std::fs::read_dir(dir.path().join("data").join("quarantine"))
        .expect("quarantine directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        quarantine.iter().any(|f| f.starts_with("journal-0-at-")),
        "{quarantine:?}"
    );
}
