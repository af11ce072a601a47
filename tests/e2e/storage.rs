//! A full disk: submissions are refused with 451 / 503 (never 250 / 202), nothing acknowledged is
//! lost, and the relay recovers by itself when space returns.
//!
//! Needs root to mount a size-limited tmpfs (CI and the project's machines run as root).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use postrider_testkit::Reply;
use serde_json::json;

use crate::harness::{TestRelay, wait_until};
use crate::smtp_client::SmtpClient;
use crate::world::{World, received};

/// A tmpfs mounted for the test, unmounted on drop.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(path).expect("mount point");
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path).output().expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs failed (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { path: path.to_owned() }
    }

    fn resize(&self, size: &str) {
        let out = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.path).output().expect("run mount");
        assert!(out.status.success(), "remount: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

async fn submit_once(relay: &TestRelay, n: usize, filler: &str) -> (u16, String) {
    let (mut c, _) = SmtpClient::connect(relay.smtp).await;
    c.cmd("EHLO client.postrider.test").await;
    assert_eq!(c.cmd("MAIL FROM:<app@sender.test>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<user@example.test>").await.code, 250);
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send_raw(format!("Subject: disk-{n}\r\n\r\n{filler}.\r\n").as_bytes()).await;
    let r = c.read_reply().await;
    let _ = c.cmd("QUIT").await;
    (r.code, r.text)
}

#[tokio::test]
async fn full_disk_refuses_with_451_and_recovers_when_space_returns() {
    let world = World::start().await;
    // Keep everything queued until the end.
    for mx in [&world.mx1, &world.mx2] {
        mx.update_behaviour(|b| b.greeting = Some(Reply::new(421, "4.3.2 not yet")));
    }
    let base = Arc::new(tempfile::tempdir().expect("tempdir"));
    let disk = SmallDisk::mount(&base.path().join("data"), "3m");
    let relay = TestRelay::start_in(base.clone(), &world.config(&["1s"], "1h")).await;

    let filler = format!("{}\r\n", "x".repeat(76)).repeat(2500); // ~195 KB
    let mut acked = Vec::new();
    let mut refused = None;
    for n in 0..60 {
        let (code, text) = submit_once(&relay, n, &filler).await;
        match code {
            250 => acked.push(n),
            _ => {
                refused = Some((code, text));
                break;
            }
        }
    }
    let (code, text) = refused.expect("the 3 MB disk fills up");
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("4.3.0"), "{text}");
    assert!(!acked.is_empty(), "some messages fit before the disk filled");

    // HTTP submissions are refused with 503 and a JSON error while storage fails.
    let (status, body) = relay
        .post_json("/v1/messages", &json!({"envelope": {"from": "app@sender.test", "to": ["user@example.test"]}, "raw": "Subject: http-disk\r\n\r\nx\r\n"}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    let (code, _) = submit_once(&relay, 999, "small\r\n").await;
    assert_eq!(code, 451, "still refused while the disk is full");

    // Space returns: the relay recovers on its own and accepts mail again.
    disk.resize("64m");
    let n = wait_until("submissions accepted again", async || {
        match tokio::time::timeout(std::time::Duration::from_secs(5), submit_once(&relay, 1000, "small\r\n")).await {
            Ok((250, _)) => Some(()),
            _ => None,
        }
    })
    .await;
    let _ = n;

    // Every acknowledged message is still there and gets delivered.
    for mx in [&world.mx1, &world.mx2] {
        mx.update_behaviour(|b| b.greeting = None);
    }
    let got = received(&world.mx1, acked.len() + 1).await;
    let subjects: Vec<String> = got
        .iter()
        .filter_map(|m| String::from_utf8_lossy(&m.data).lines().find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned)))
        .collect();
    for n in &acked {
        assert!(subjects.contains(&format!("disk-{n}")), "acknowledged disk-{n} was delivered: {subjects:?}");
    }
    drop(relay);
    drop(disk);
}
