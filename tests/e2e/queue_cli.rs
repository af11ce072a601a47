//! `postrider queue …` and `postrider mailq` as an operator uses them: options after the
//! subcommand, key hints, paging, bulk actions by filter and event filters.

use std::process::Command;

use crate::harness::{TestRelay, wait_until};
use crate::smtp_client::{message, submit};
use crate::world::World;

/// Runs `postrider <args> --api <relay>` (the target option after the subcommand) without any
/// `POSTRIDER_API*` variable from the environment; returns success, stdout and stderr.
fn postrider(relay: &TestRelay, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_postrider"))
        .args(args)
        .arg("--api")
        .arg(format!("http://{}", relay.http))
        .env_remove("POSTRIDER_API")
        .env_remove("POSTRIDER_API_KEY")
        .output()
        .expect("run postrider");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A relay with an `admin` key and a `read` key; returns it with both keys.
async fn relay_with_keys() -> (TestRelay, String, String) {
    let (admin, admin_hash) = postrider_api::generate_api_key();
    let (read, read_hash) = postrider_api::generate_api_key();
    let relay = TestRelay::start(&format!(
        "[http]\napi_keys = [{{ name = \"ops\", key_hash = \"{admin_hash}\", scopes = [\"admin\"] }}, \
         {{ name = \"app\", key_hash = \"{read_hash}\", scopes = [\"read\"] }}]\n"
    ))
    .await;
    (relay, admin, read)
}

#[tokio::test]
async fn target_options_follow_the_subcommand_and_refusals_say_which_key_to_use() {
    let (relay, admin, read) = relay_with_keys().await;

    let (ok, out, err) = postrider(&relay, &["queue", "list", "--json", "--key", &admin]);
    assert!(ok, "{err}");
    let page: serde_json::Value = serde_json::from_str(&out).expect("json list");
    assert!(page["messages"].is_array(), "{page}");
    let (ok, out, err) = postrider(&relay, &["queue", "stats", "--key", &admin, "--json"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"pending\""), "{out}");

    let (ok, _, err) = postrider(&relay, &["queue", "list"]);
    assert!(!ok);
    assert!(err.contains("HTTP 401"), "{err}");
    assert!(
        err.contains("--key") && err.contains("POSTRIDER_API_KEY") && err.contains("`admin`"),
        "{err}"
    );

    let (ok, _, err) = postrider(&relay, &["queue", "list", "--key", &read]);
    assert!(!ok);
    assert!(err.contains("HTTP 403"), "{err}");
    assert!(err.contains("lacks the `admin` scope"), "{err}");
}

#[tokio::test]
async fn list_pages_past_the_api_cap_and_mailq_looks_like_postfix() {
    let world = World::start().await;
    let relay = TestRelay::start(&world.config(&["1h"], "5d")).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let to = format!("later{n}@example.test");
        ids.push(
            submit(
                relay.smtp,
                "app@sender.test",
                &[to.as_str()],
                &message("app@sender.test", &to, &format!("list-{n}")),
            )
            .await,
        );
    }
    wait_until("all deferred", async || {
        let (_, page) = relay.get_json("/v1/queue?state=deferred").await;
        (page["messages"].as_array().map_or(0, Vec::len) == 3).then_some(())
    })
    .await;

    // A short page names the cursor, and --after goes on from it.
    let (ok, out, err) = postrider(&relay, &["queue", "list", "--limit", "2"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&ids[0]) && out.contains(&ids[1]) && !out.contains(&ids[2]),
        "{out}"
    );
    let cursor = out
        .lines()
        .find_map(|l| l.strip_prefix("(more: continue with --after "))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no cursor in {out}"));
    let (ok, out, err) = postrider(&relay, &["queue", "list", "--after", cursor]);
    assert!(ok, "{err}");
    assert!(out.contains(&ids[2]) && !out.contains(&ids[0]), "{out}");
    assert!(!out.contains("(more"), "{out}");
    // Columns, and the deferral reason on the line under each message.
    let (ok, out, _) = postrider(&relay, &["queue", "list", "--all-pages"]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("RECIPIENTS"),
        "{out}"
    );
    let row = lines
        .iter()
        .position(|l| l.starts_with(&ids[0]))
        .expect("row");
    assert!(
        lines[row].contains("app@sender.test") && lines[row].contains("later0@example.test"),
        "{out}"
    );
    assert!(
        lines[row + 1].trim_start().starts_with("(450 4.2.1"),
        "{out}"
    );

    // Events of one recipient (any case), of one type.
    let (ok, out, err) = postrider(
        &relay,
        &[
            "queue",
            "events",
            "--recipient",
            "LATER1@example.test",
            "--type",
            "deferred",
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let events: serde_json::Value = serde_json::from_str(&out).expect("json events");
    let got = events["events"].as_array().expect("events");
    assert!(!got.is_empty(), "{events}");
    assert!(
        got.iter()
            .all(|e| e["recipient"] == "later1@example.test" && e["type"] == "deferred"),
        "{events}"
    );

    let (ok, out, err) = postrider(&relay, &["mailq"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("-Queue ID-"), "{out}");
    let entry = out.find(&ids[1]).expect("id in mailq");
    let block: Vec<&str> = out[entry..].lines().take(3).collect();
    assert!(block[0].ends_with("app@sender.test"), "{out}");
    assert!(block[1].starts_with("(450 4.2.1"), "{out}");
    assert!(
        block[2].starts_with("    ") && block[2].trim() == "later1@example.test",
        "{out}"
    );
    assert!(out.trim_end().ends_with("Kbytes in 3 Requests."), "{out}");
}

#[tokio::test]
async fn mailq_of_an_empty_queue_and_with_a_key() {
    let (relay, admin, _) = relay_with_keys().await;
    let (ok, out, err) = postrider(&relay, &["mailq", "--key", &admin]);
    assert!(ok, "{err}");
    assert_eq!(out, "Mail queue is empty\n");
    let (ok, _, err) = postrider(&relay, &["mailq"]);
    assert!(!ok && err.contains("POSTRIDER_API_KEY"), "{err}");
}

/// Submits `count` messages scheduled an hour ahead (never attempted during the test) to
/// `user-N@domain`, tagged `tag`, through the batch API; returns their ids.
async fn schedule(relay: &TestRelay, domain: &str, count: usize, tag: &str) -> Vec<String> {
    let now = postrider_core::clock::Clock::now(&postrider_core::clock::SystemClock).as_millis();
    let send_at = postrider_core::Timestamp::from_millis(now + 3_600_000).to_rfc3339();
    let mut ids = Vec::new();
    let mut n = 0;
    while n < count {
        let items: Vec<serde_json::Value> = (n..count.min(n + 500))
            .map(|i| {
                serde_json::json!({"from": "app@sender.test", "to": [format!("user-{i}@{domain}")],
                    "subject": format!("bulk {i}"), "text": "x", "tags": [tag], "send_at": send_at})
            })
            .collect();
        n += items.len();
        let (status, answer) = relay
            .post_json(
                "/v1/messages/batch",
                &serde_json::json!({ "messages": items }),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        for r in answer["results"].as_array().expect("results") {
            ids.push(r["id"].as_str().expect("accepted").to_owned());
        }
    }
    ids
}

#[tokio::test]
async fn bulk_actions_by_filter_page_through_the_queue_and_events_filter() {
    let world = World::start().await;
    let relay = TestRelay::start(&world.config(&["1h"], "5d")).await;
    let many = schedule(&relay, "example.test", 996, "news").await;
    let few = schedule(&relay, "servfail.test", 5, "vip").await;

    // More than one API page (1000), listed by the CLI paging itself.
    let rows = |out: &str| {
        out.lines()
            .filter(|l| l.len() >= 16 && l.as_bytes()[..16].iter().all(u8::is_ascii_hexdigit))
            .count()
    };
    let (ok, out, err) = postrider(&relay, &["queue", "list", "--limit", "0"]);
    assert!(ok, "{err}");
    assert_eq!(rows(&out), 1001, "{err}");
    let (ok, out, _) = postrider(&relay, &["queue", "list", "--limit", "1001", "--json"]);
    assert!(ok);
    let listed: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(listed["messages"].as_array().map(Vec::len), Some(1001));

    // Dry run counts; destructive actions by filter need a terminal or --yes.
    let (ok, out, err) = postrider(
        &relay,
        &["queue", "delete", "--domain", "servfail.test", "--dry-run"],
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "5 message(s) would be deleted");
    let (ok, _, err) = postrider(&relay, &["queue", "delete", "--domain", "servfail.test"]);
    assert!(!ok && err.contains("--yes"), "{err}");
    let (_, stats) = relay.get_json("/v1/queue/stats").await;
    assert_eq!(stats["pending"], 1001, "{stats}");
    let (ok, _, err) = postrider(&relay, &["queue", "delete"]);
    assert!(!ok, "an id or a filter is required: {err}");

    // Hold by filter, in pages, with progress on stderr.
    let (ok, out, err) = postrider(&relay, &["queue", "hold", "--domain", "example.test"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("996 message(s) held"), "{out}");
    assert!(
        err.contains("held 500/996") && err.contains("held 996/996"),
        "{err}"
    );
    let (_, stats) = relay.get_json("/v1/queue/stats").await;
    assert_eq!(stats["by_state"]["held"], 996, "{stats}");
    assert_eq!(stats["by_state"]["scheduled"], 5, "{stats}");

    // Retry by filter never moves a scheduled message.
    let (ok, out, err) = postrider(&relay, &["queue", "retry", "--state", "scheduled"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("0 deferred message(s) made due now, 5 scheduled"),
        "{out}"
    );
    // Nothing arrived more than an hour ago.
    let (ok, out, _) = postrider(
        &relay,
        &[
            "queue",
            "delete",
            "--all",
            "--older-than",
            "1h",
            "--dry-run",
        ],
    );
    assert!(ok);
    assert_eq!(out.trim(), "0 message(s) would be deleted");

    let (ok, out, err) = postrider(
        &relay,
        &["queue", "delete", "--all", "--state", "held", "--yes"],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("996 message(s) deleted"), "{out}");
    assert!(err.contains("deleted 996/996"), "{err}");
    let (_, stats) = relay.get_json("/v1/queue/stats").await;
    assert_eq!(stats["pending"], 5, "{stats}");
    let (status, _) = relay.get_json(&format!("/v1/messages/{}", many[0])).await;
    assert_eq!(status, 404);

    // Events: filters on type, recipient, tag, message and time.
    let (ok, out, err) = postrider(
        &relay,
        &["queue", "events", "--limit", "0", "--tag", "vip", "--json"],
    );
    assert!(ok, "{err}");
    let events: serde_json::Value = serde_json::from_str(&out).expect("json events");
    let got = events["events"].as_array().expect("events");
    assert_eq!(got.len(), 5, "{events}");
    assert!(got.iter().all(|e| e["type"] == "accepted"), "{events}");
    let (ok, out, _) = postrider(
        &relay,
        &[
            "queue",
            "events",
            "--id",
            &few[2],
            "--type",
            "accepted,deferred",
        ],
    );
    assert!(ok);
    assert_eq!(
        out.lines().filter(|l| l.contains(&few[2])).count(),
        1,
        "{out}"
    );
    assert!(
        out.lines().next().is_some_and(|h| h.starts_with("SEQ")),
        "{out}"
    );
    let (ok, out, _) = postrider(
        &relay,
        &["queue", "events", "--until", "1h", "--limit", "0", "--json"],
    );
    assert!(ok);
    assert!(out.contains("\"events\": []"), "{out}");
    let (ok, out, _) = postrider(
        &relay,
        &[
            "queue", "events", "--since", "1h", "--type", "accepted", "--limit", "0", "--json",
        ],
    );
    assert!(ok);
    let all: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(all["events"].as_array().map(Vec::len), Some(1001));
    let (status, body) = relay.get_json("/v1/events?type=opened").await;
    assert_eq!(status, 400, "{body}");
}
