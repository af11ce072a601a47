//! A damaged queue database: the relay refuses to start with exit status 65 and a message
//! naming the file (never a crash on every start), `postrider store check` lists the damage,
//! `postrider store rebuild` repairs it, and every acknowledged message is delivered afterwards.

use std::ffi::OsString;
use std::time::Duration;

use postrider_testkit::Reply;

use crate::harness::{TestRelay, run_postrider};
use crate::smtp_client::submit;
use crate::world::World;

#[tokio::test]
async fn a_damaged_database_stops_start_up_until_rebuilt_and_loses_nothing_acknowledged() {
    let world = World::start().await;
    // Keep everything queued until the end.
    for mx in [&world.mx1, &world.mx2] {
        mx.update_behaviour(|b| b.greeting = Some(Reply::new(421, "4.3.2 not yet")));
    }
    let mut relay = TestRelay::start(&world.config(&["1h"], "5d")).await;
    let filler = format!("{}\r\n", "x".repeat(76)).repeat(1300); // ~100 KB
    let mut acked = Vec::new();
    for n in 0..30 {
        let subject = format!("damage-{n}");
        let data = format!(
            "From: <app@sender.test>\r\nTo: <user@example.test>\r\nSubject: {subject}\r\n\r\n{filler}"
        );
        submit(relay.smtp, "app@sender.test", &["user@example.test"], &data).await;
        acked.push(subject);
    }
    // A restart replays the journal into sled and checkpoints it: the database file holds the
    // queue (and sled a snapshot of it).
    relay.restart().await;
    assert_eq!(
        relay.stop_with("TERM").await,
        Some(0),
        "{}",
        relay.log_text()
    );

    // The database file is cut to nothing, as a filesystem repair may leave it.
    let data_dir = relay.data_dir();
    let db = data_dir.join("db");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .expect("open db")
        .set_len(0)
        .expect("truncate db");
    let config = relay.config_path().as_os_str().to_owned();
    let args = |words: &[&str]| -> Vec<OsString> {
        let mut out: Vec<OsString> = words.iter().map(OsString::from).collect();
        out.extend([OsString::from("--config"), config.clone()]);
        out
    };

    let serve = run_postrider(&args(&["serve"])).await;
    assert_eq!(serve.code, Some(65), "{serve:?}");
    assert!(
        serve.stderr.contains(&db.display().to_string()) && serve.stderr.contains("store check"),
        "{serve:?}"
    );

    let check = run_postrider(&args(&["store", "check"])).await;
    assert_eq!(check.code, Some(1), "{check:?}");
    assert!(
        check.stdout.contains("database: DAMAGED")
            && check.stdout.contains(&db.display().to_string()),
        "{check:?}"
    );

    let rebuild = run_postrider(&args(&["store", "rebuild"])).await;
    assert_eq!(rebuild.code, Some(0), "{rebuild:?}");
    assert!(
        rebuild
            .stdout
            .contains("messages: 0 salvaged, 30 after the journal"),
        "{rebuild:?}"
    );
    let kept: Vec<_> = std::fs::read_dir(data_dir.join("quarantine"))
        .expect("quarantine")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(
        kept.iter().any(|d| d.join("db").is_file()),
        "the damaged files are kept: {kept:?}"
    );

    relay.restart().await;
    world
        .accept_queued(&relay, &acked, Duration::from_secs(60))
        .await;
}
