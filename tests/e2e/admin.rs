//! `postrider queue …` against a running relay.

use std::process::Command;

use crate::harness::{TestRelay, wait_until};
use crate::smtp_client::{message, submit};
use crate::world::{World, received};

fn queue_cmd(relay: &TestRelay, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_postrider"))
        .arg("queue")
        .arg("--api")
        .arg(format!("http://{}", relay.http))
        .args(args)
        .output()
        .expect("run postrider queue");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn queue_commands_inspect_hold_retry_bounce_and_delete() {
    let world = World::start().await;
    // Retries are an hour apart: only operator actions move these messages.
    let relay = TestRelay::start(&world.config(&["1h"], "5d")).await;
    let later = submit(
        relay.smtp,
        "app@sender.test",
        &["later@example.test"],
        &message("app@sender.test", "later@example.test", "admin-1"),
    )
    .await;
    let doomed = submit(
        relay.smtp,
        "app@sender.test",
        &["later2@example.test"],
        &message("app@sender.test", "later2@example.test", "admin-2"),
    )
    .await;
    wait_until("both deferred", async || {
        let (_, a) = relay.get_json(&format!("/v1/messages/{later}")).await;
        let (_, b) = relay.get_json(&format!("/v1/messages/{doomed}")).await;
        (a["state"] == "deferred" && b["state"] == "deferred").then_some(())
    })
    .await;

    let (ok, out, err) = queue_cmd(&relay, &["list"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("ID"), "{out}");
    assert!(
        out.contains(&later) && out.contains(&doomed) && out.contains("deferred"),
        "{out}"
    );

    let (ok, out, _) = queue_cmd(&relay, &["show", &later]);
    assert!(ok);
    assert!(
        out.contains("later@example.test") && out.contains("450 4.2.1"),
        "{out}"
    );

    let (ok, out, _) = queue_cmd(&relay, &["--json", "stats"]);
    assert!(ok);
    let stats: serde_json::Value = serde_json::from_str(&out).expect("json stats");
    assert_eq!(stats["pending"], 2, "{stats}");
    assert_eq!(stats["top_domains"][0]["domain"], "example.test", "{stats}");

    let (ok, out, _) = queue_cmd(&relay, &["hold", &later]);
    assert!(ok && out.contains("held"), "{out}");
    let (_, m) = relay.get_json(&format!("/v1/messages/{later}")).await;
    assert_eq!(m["state"], "held");

    // Released and retried now: the peer now accepts, so it is delivered at once.
    world.mx1.update_behaviour(|b| b.rcpt_rules.clear());
    let (ok, out, err) = queue_cmd(&relay, &["release", &later]);
    assert!(ok, "{out}{err}");
    let got = received(&world.mx1, 1).await;
    assert_eq!(got[0].rcpt_to, vec!["later@example.test"]);

    // Bounce now: the sender gets a DSN even though the peer never said 5xx.
    let (ok, out, err) = queue_cmd(&relay, &["bounce", &doomed]);
    assert!(ok, "{out}{err}");
    let dsn = received(&world.sender_mx, 1).await;
    assert!(
        String::from_utf8_lossy(&dsn[0].data)
            .contains("Final-Recipient: rfc822; later2@example.test")
    );

    // Delete: gone without a trace, and unknown ids are errors.
    let third = submit(
        relay.smtp,
        "app@sender.test",
        &["x@servfail.test"],
        &message("app@sender.test", "x@servfail.test", "admin-3"),
    )
    .await;
    let (ok, _, _) = queue_cmd(&relay, &["delete", &third]);
    assert!(ok);
    let (status, _) = relay.get_json(&format!("/v1/messages/{third}")).await;
    assert_eq!(status, 404);
    let (ok, _, err) = queue_cmd(&relay, &["show", &third]);
    assert!(!ok && err.contains("404"), "{err}");

    let (ok, out, _) = queue_cmd(&relay, &["retry", "--all"]);
    assert!(ok && out.contains("due now"), "{out}");
}
