//! Cluster mode: relays sharing a real `redis-server` on loopback (installed by tests/run.sh).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use serde_json::json;

use crate::harness::{TestRelay, free_port, http_request, run_postrider, wait_until};

/// A throw-away `redis-server` on 127.0.0.1, without persistence, in a temporary directory.
struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    async fn start() -> RedisServer {
        let mut server = RedisServer {
            port: free_port("127.0.0.1"),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.resume().await;
        server
    }

    /// Starts (again) on the same port, and waits until it takes connections.
    async fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (tests/run.sh installs it)");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        wait_until("redis-server listening", async || {
            tokio::net::TcpStream::connect(addr).await.ok().map(drop)
        })
        .await;
    }

    /// Kills the server (as a crash would).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The `[cluster]` section of a node.
    fn config(&self, node_id: &str) -> String {
        format!(
            "[delivery]\nmode = \"capture\"\n\n[cluster]\nurl = \"redis://127.0.0.1:{}/0\"\nnode_id = \"{node_id}\"\ntimeout = \"250ms\"\n",
            self.port
        )
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// POSTs `body` to `/v1/messages` with an Idempotency-Key; status and JSON answer.
async fn submit(
    relay: &TestRelay,
    key: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let raw = serde_json::to_vec(body).unwrap();
    let headers = [
        ("Content-Type", "application/json"),
        ("Idempotency-Key", key),
    ];
    let (status, answer) = http_request(relay.http, "POST", "/v1/messages", Some(&raw), &headers)
        .await
        .expect("post");
    (
        status,
        serde_json::from_slice(&answer).unwrap_or(serde_json::Value::Null),
    )
}

async fn wait_cluster_up(relay: &TestRelay, up: f64) {
    wait_until(&format!("postrider_cluster_up {up}"), async || {
        (relay.metric("postrider_cluster_up").await == Some(up)).then_some(())
    })
    .await;
}

fn message(subject: &str) -> serde_json::Value {
    json!({"from": "app@sender.test", "to": ["user@example.test"], "subject": subject, "text": "hi"})
}

#[tokio::test]
async fn one_idempotency_key_sent_to_two_nodes_queues_one_message() {
    let redis = RedisServer::start().await;
    let a = TestRelay::start(&redis.config("node-a")).await;
    let b = TestRelay::start(&redis.config("node-b")).await;
    wait_cluster_up(&a, 1.0).await;
    wait_cluster_up(&b, 1.0).await;

    let (status, first) = submit(&a, "order-7", &message("once")).await;
    assert_eq!(status, 202, "{first}");
    // The retry lands on the other node: the first answer, and nothing queued there.
    let (status, again) = submit(&b, "order-7", &message("once")).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(
        b.metric("postrider_messages_accepted_total{source=\"http\"}")
            .await,
        Some(0.0)
    );
    // Another body under the same key is refused on either node.
    let (status, reused) = submit(&b, "order-7", &message("other")).await;
    assert_eq!(status, 409, "{reused}");
    assert_eq!(reused["error"]["code"], "idempotency_key_reused");
    // Other keys are independent.
    let (status, _) = submit(&b, "order-8", &message("once")).await;
    assert_eq!(status, 202);
    assert_eq!(
        b.metric("postrider_messages_accepted_total{source=\"http\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_node_keeps_accepting_while_valkey_is_down_and_recovers_by_itself() {
    let mut redis = RedisServer::start().await;
    let a = TestRelay::start(&redis.config("node-a")).await;
    wait_cluster_up(&a, 1.0).await;

    redis.stop();
    wait_cluster_up(&a, 0.0).await;
    // Degraded: the node decides with its own state, submissions still succeed.
    let (status, first) = submit(&a, "while-down", &message("degraded")).await;
    assert_eq!(status, 202, "{first}");
    let (status, again) = submit(&a, "while-down", &message("degraded")).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert!(a.log_text().contains("degraded mode"), "{}", a.log_text());

    redis.resume().await;
    wait_cluster_up(&a, 1.0).await;
    let (status, _) = submit(&a, "after-recovery", &message("back")).await;
    assert_eq!(status, 202);
    let log = a.log_text();
    assert_eq!(log.matches("degraded mode").count(), 1, "{log}");
    assert!(log.contains("reachable again"), "{log}");
}

#[tokio::test]
async fn a_bad_cluster_section_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("postrider.toml");
    std::fs::write(
        &path,
        "[cluster]\nurl = \"http://127.0.0.1:1/\"\nnode_id = \"node a\"\n",
    )
    .unwrap();
    let path = path.display().to_string();
    let finished = run_postrider(["check-config", "--config", path.as_str()]).await;
    assert_eq!(finished.code, Some(64), "{finished:?}");
    assert!(finished.stderr.contains("cluster"), "{finished:?}");
}
