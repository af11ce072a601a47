//! Configuration reload without a restart: `postrider reload` (SIGHUP) applies new API keys and
//! routes to the running relay; an invalid file is refused as a whole and the relay keeps
//! serving with the configuration it had.

use std::path::Path;

use crate::harness::{TestRelay, http_request, run_postrider, wait_until};
use crate::smtp_client::{message, submit};
use crate::world::{World, received};

/// A new API key from `postrider apikey new`: the key and the config block to append.
async fn new_api_key(name: &str) -> (String, String) {
    let run = run_postrider(["apikey", "new", "--name", name, "--scopes", "send,read"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    let key = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .expect("a key line")
        .to_owned();
    let block = &run.stdout[run.stdout.find("[[http.api_keys]]").expect("a key block")..];
    (key, block.to_owned())
}

/// The status of `GET /v1/events` with `key`.
async fn events_status(relay: &TestRelay, key: &str) -> u16 {
    let auth = format!("Bearer {key}");
    http_request(
        relay.http,
        "GET",
        "/v1/events",
        None,
        &[("Authorization", auth.as_str())],
    )
    .await
    .expect("GET /v1/events")
    .0
}

async fn reload(config: &Path) -> crate::harness::Finished {
    run_postrider([Path::new("reload"), Path::new("--config"), config]).await
}

#[tokio::test]
async fn reload_applies_new_keys_and_routes_and_refuses_a_broken_file() {
    let world = World::start().await;
    let (old_key, old_block) = new_api_key("old").await;
    let (new_key, new_block) = new_api_key("new").await;
    let base = world.config(&["1s"], "1h");
    let relay = TestRelay::start(&format!("{base}\n[http]\n\n{old_block}")).await;
    assert_eq!(events_status(&relay, &old_key).await, 200);
    assert_eq!(events_status(&relay, &new_key).await, 401);

    // Swap the key and add a route for a domain that has no DNS records at all.
    let path = relay.config_path().to_owned();
    let running = std::fs::read_to_string(&path).unwrap();
    let route = format!(
        "\n[[routes]]\ndomain = \"routed.test\"\nto = \"127.0.0.3:{}\"\n",
        world.smtp_port()
    );
    let next = running.replace(&old_block, &new_block) + &route;
    std::fs::write(&path, &next).unwrap();
    let run = reload(&path).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    wait_until("the new key to be accepted", async || {
        (events_status(&relay, &new_key).await == 200).then_some(())
    })
    .await;
    assert_eq!(events_status(&relay, &old_key).await, 401);
    submit(
        relay.smtp,
        "app@sender.test",
        &["user@routed.test"],
        &message("app@sender.test", "user@routed.test", "routed after reload"),
    )
    .await;
    let got = received(&world.mx2, 1).await;
    assert_eq!(got[0].rcpt_to, vec!["user@routed.test"]);
    assert_eq!(
        relay
            .metric("postrider_config_reloads_total{result=\"ok\"}")
            .await,
        Some(1.0)
    );

    // A broken file: `postrider reload` refuses it without signalling, and a SIGHUP sent anyway
    // leaves the running configuration in place.
    let broken =
        format!("{next}\n[[webhooks]]\nurl = \"ftp://x\"\nsecret = \"0123456789abcdef\"\n");
    std::fs::write(&path, broken).unwrap();
    let run = reload(&path).await;
    assert_eq!(run.code, Some(64), "{run:?}");
    assert!(run.stderr.contains("webhooks.url"), "{run:?}");
    let pid = std::fs::read_to_string(relay.data_dir().join("postrider.pid")).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", pid.trim()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_until("the refused reload to be counted", async || {
        let refused = relay
            .metric("postrider_config_reloads_total{result=\"refused\"}")
            .await;
        (refused == Some(1.0)).then_some(())
    })
    .await;
    assert!(
        relay
            .log_text()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("webhooks.url")),
        "{}",
        relay.log_text()
    );
    assert_eq!(events_status(&relay, &new_key).await, 200);
    assert_eq!(events_status(&relay, &old_key).await, 401);
    assert_eq!(relay.get_json("/healthz").await.0, 200);
}

#[tokio::test]
async fn a_changed_listener_is_reported_as_needing_a_restart() {
    let relay = TestRelay::start("").await;
    let path = relay.config_path().to_owned();
    let running = std::fs::read_to_string(&path).unwrap();
    let moved = running.replace(
        &format!("listen = [\"{}\"]", relay.smtp),
        &format!(
            "listen = [\"127.0.0.1:{}\"]",
            crate::harness::free_port("127.0.0.1")
        ),
    );
    assert_ne!(moved, running);
    std::fs::write(&path, moved).unwrap();
    let run = reload(&path).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    wait_until("the restart warning", async || {
        relay
            .log_text()
            .contains("smtp.listen changed; needs a restart")
            .then_some(())
    })
    .await;
    // Still listening where it was.
    assert!(tokio::net::TcpStream::connect(relay.smtp).await.is_ok());
}

#[tokio::test]
async fn reload_applies_the_log_level_and_new_webhooks() {
    let world = World::start().await;
    let (hook, seen) = crate::features::webhook_receiver().await;
    let base = world.config(&["1s"], "1h");
    let relay = TestRelay::start(&format!("{base}\n[log]\nlevel = \"warn\"\n")).await;
    let accepted_lines = |relay: &TestRelay| {
        relay
            .log_text()
            .lines()
            .filter(|l| l.contains("smtp message accepted"))
            .count()
    };

    // At warn: the acceptance line (INFO) is not written, and no webhook is configured.
    submit(
        relay.smtp,
        "app@sender.test",
        &["before@example.test"],
        &message("app@sender.test", "before@example.test", "before reload"),
    )
    .await;
    received(&world.mx1, 1).await;
    assert_eq!(accepted_lines(&relay), 0, "{}", relay.log_text());

    let path = relay.config_path().to_owned();
    let running = std::fs::read_to_string(&path).unwrap();
    let next = running.replace("level = \"warn\"", "level = \"info\"")
        + &format!(
            "\n[[webhooks]]\nurl = \"http://{hook}/hook\"\nsecret = \"0123456789abcdef-secret\"\nevents = [\"delivered\"]\n"
        );
    std::fs::write(&path, &next).unwrap();
    let run = reload(&path).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    wait_until("the reload to be applied", async || {
        let ok = relay
            .metric("postrider_config_reloads_total{result=\"ok\"}")
            .await;
        (ok == Some(1.0)).then_some(())
    })
    .await;

    // At info, with the webhook: the next message is logged and its delivery is posted.
    submit(
        relay.smtp,
        "app@sender.test",
        &["after@example.test"],
        &message("app@sender.test", "after@example.test", "after reload"),
    )
    .await;
    wait_until("the delivered event at the new webhook", async || {
        seen.lock()
            .expect("seen")
            .iter()
            .any(|(_, e)| e["type"] == "delivered" && e["recipient"] == "after@example.test")
            .then_some(())
    })
    .await;
    assert_eq!(accepted_lines(&relay), 1, "{}", relay.log_text());
    assert!(
        !seen
            .lock()
            .expect("seen")
            .iter()
            .any(|(_, e)| e["recipient"] == "before@example.test"),
        "events from before the webhook existed are not posted"
    );
}
