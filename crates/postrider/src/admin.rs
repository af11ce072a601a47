//! `postrider queue …`: queue administration through the running relay's HTTP API
//! (`/v1/queue…`), printed as tables for people or as JSON with `--json`.

use std::fmt::Write as _;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::Value;

/// What to do to the queue.
#[derive(Debug, Subcommand)]
pub(crate) enum QueueAction {
    /// List queued messages (pending ones unless --all).
    List {
        /// Only messages in this state (queued, scheduled, deferred, held, delivered, bounced, partially_bounced).
        #[arg(long)]
        state: Option<String>,
        /// Only messages with a recipient at this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Include finished messages still within retention.
        #[arg(long)]
        all: bool,
        /// At most this many messages.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one message with every recipient's state and last reply.
    Show {
        /// Message id (16 hex digits).
        id: String,
    },
    /// Make messages due now: one id, every message to a domain, or everything.
    Retry {
        /// Message id.
        #[arg(conflicts_with_all = ["domain", "all"], required_unless_present_any = ["domain", "all"])]
        id: Option<String>,
        /// Every pending message with a recipient at this domain.
        #[arg(long, conflicts_with = "all")]
        domain: Option<String>,
        /// Every pending message.
        #[arg(long)]
        all: bool,
    },
    /// Remove a message without notifying the sender.
    Delete {
        /// Message id.
        id: String,
    },
    /// Bounce a message now: its pending recipients fail and the sender gets a DSN.
    Bounce {
        /// Message id.
        id: String,
    },
    /// Stop attempting a message until it is released.
    Hold {
        /// Message id.
        id: String,
    },
    /// Release a held message (due now).
    Release {
        /// Message id.
        id: String,
    },
    /// Counts by state and the busiest destination domains.
    Stats {
        /// How many domains to show.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
}

/// Where the relay's API is and how to talk to it.
#[derive(Debug, clap::Args)]
pub(crate) struct ApiTarget {
    /// Base URL of the relay's HTTP API.
    #[arg(long, env = "POSTRIDER_API", default_value = "http://127.0.0.1:8025")]
    api: String,
    /// API key with the `admin` scope (not needed in loopback-only mode).
    #[arg(long, env = "POSTRIDER_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs one queue command and prints its result.
pub(crate) fn run(target: &ApiTarget, action: QueueAction) -> anyhow::Result<()> {
    let api = target.api.trim_end_matches('/');
    let (method, path, body) = match &action {
        QueueAction::List {
            state,
            domain,
            all,
            limit,
        } => {
            let mut q = format!("limit={limit}");
            if let Some(s) = state {
                let _ = write!(q, "&state={}", encode(s));
            }
            if let Some(d) = domain {
                let _ = write!(q, "&domain={}", encode(d));
            }
            if *all {
                q.push_str("&include_finished=true");
            }
            ("GET", format!("/v1/queue?{q}"), None)
        }
        QueueAction::Show { id } => ("GET", format!("/v1/queue/{}", encode(id)), None),
        QueueAction::Retry { id: Some(id), .. } => {
            ("POST", format!("/v1/queue/{}/retry", encode(id)), None)
        }
        QueueAction::Retry {
            id: None,
            domain: Some(d),
            ..
        } => (
            "POST",
            "/v1/queue/retry".to_owned(),
            Some(serde_json::json!({"domain": d})),
        ),
        QueueAction::Retry {
            id: None,
            domain: None,
            ..
        } => (
            "POST",
            "/v1/queue/retry".to_owned(),
            Some(serde_json::json!({"all": true})),
        ),
        QueueAction::Delete { id } => ("DELETE", format!("/v1/queue/{}", encode(id)), None),
        QueueAction::Bounce { id } => ("POST", format!("/v1/queue/{}/bounce", encode(id)), None),
        QueueAction::Hold { id } => ("POST", format!("/v1/queue/{}/hold", encode(id)), None),
        QueueAction::Release { id } => ("POST", format!("/v1/queue/{}/release", encode(id)), None),
        QueueAction::Stats { top } => ("GET", format!("/v1/queue/stats?top={top}"), None),
    };
    let answer = request(api, target.key.as_deref(), method, &path, body)?;
    if target.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    print!("{}", render(&action, &answer));
    Ok(())
}

fn request(
    api: &str,
    key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = format!("{api}{path}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into();
    let auth = key.map(|k| format!("Bearer {k}"));
    let response = match (method, body) {
        ("GET", _) => {
            let mut r = agent.get(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        ("DELETE", _) => {
            let mut r = agent.delete(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        (_, body) => {
            let mut r = agent.post(&url);
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.send_json(body.unwrap_or_else(|| serde_json::json!({})))
        }
    }
    .with_context(|| format!("cannot reach the relay at {api}"))?;
    let status = response.status().as_u16();
    let value: Value = response.into_body().read_json().unwrap_or(Value::Null);
    if !(200..300).contains(&status) {
        let msg = value["error"]["message"].as_str().unwrap_or("no details");
        bail!("{method} {path}: HTTP {status}: {msg}");
    }
    Ok(value)
}

/// Percent-encodes a path or query component.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn reply_text(r: &Value) -> String {
    if r.is_null() {
        return "-".to_owned();
    }
    let mut s = text(&r["code"]);
    if let Some(e) = r["enhanced"].as_str() {
        s.push(' ');
        s.push_str(e);
    }
    if let Some(t) = r["text"].as_str() {
        s.push(' ');
        s.push_str(t);
    }
    s
}

/// Formats rows as left-aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let joined: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(joined.join("  ").trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect(), &mut out);
    for row in rows {
        line(row.clone(), &mut out);
    }
    out
}

fn render(action: &QueueAction, v: &Value) -> String {
    match action {
        QueueAction::List { .. } => {
            let empty = Vec::new();
            let rows: Vec<Vec<String>> = v["messages"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|m| {
                    let rcpts = m["recipients"].as_array().map_or(0, Vec::len);
                    vec![
                        text(&m["id"]),
                        text(&m["state"]),
                        text(&m["from"]),
                        rcpts.to_string(),
                        text(&m["attempts"]),
                        text(&m["next_attempt_at"]),
                        text(&m["created_at"]),
                    ]
                })
                .collect();
            let mut out = table(
                &[
                    "ID",
                    "STATE",
                    "FROM",
                    "RCPTS",
                    "ATTEMPTS",
                    "NEXT ATTEMPT",
                    "CREATED",
                ],
                &rows,
            );
            if let Some(next) = v["next_after"].as_str() {
                let _ = writeln!(out, "(more: continue after {next})");
            }
            out
        }
        QueueAction::Show { .. } => {
            let mut out = String::new();
            for k in [
                "id",
                "state",
                "from",
                "source",
                "created_at",
                "attempts",
                "next_attempt_at",
                "finished_at",
                "size",
            ] {
                let _ = writeln!(out, "{k:<16}{}", text(&v[k]));
            }
            let empty = Vec::new();
            let rows: Vec<Vec<String>> = v["recipients"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|r| {
                    vec![
                        text(&r["address"]),
                        text(&r["state"]),
                        text(&r["attempts"]),
                        text(&r["mx_host"]),
                        reply_text(&r["last_reply"]),
                    ]
                })
                .collect();
            out.push('\n');
            out.push_str(&table(
                &["RECIPIENT", "STATE", "ATTEMPTS", "MX HOST", "LAST REPLY"],
                &rows,
            ));
            out
        }
        QueueAction::Stats { .. } => {
            let mut out = format!("pending messages: {}\n\n", text(&v["pending"]));
            let rows: Vec<Vec<String>> = v["by_state"].as_object().map_or_else(Vec::new, |m| {
                m.iter().map(|(k, n)| vec![k.clone(), text(n)]).collect()
            });
            out.push_str(&table(&["STATE", "MESSAGES"], &rows));
            let empty = Vec::new();
            let rows: Vec<Vec<String>> = v["top_domains"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|d| vec![text(&d["domain"]), text(&d["count"])])
                .collect();
            out.push('\n');
            out.push_str(&table(&["DOMAIN", "PENDING"], &rows));
            let rows: Vec<Vec<String>> = v["suspended_destinations"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|d| {
                    vec![
                        text(&d["host"]),
                        text(&d["until"]),
                        text(&d["failures"]),
                        text(&d["reason"]),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                out.push('\n');
                out.push_str(&table(
                    &["SUSPENDED HOST", "UNTIL", "FAILURES", "REASON"],
                    &rows,
                ));
            }
            out
        }
        QueueAction::Retry { id: None, .. } => {
            format!(
                "{} deferred message(s) made due now, {} scheduled message(s) left for their send time\n",
                text(&v["retried"]),
                text(&v["scheduled_left"])
            )
        }
        QueueAction::Delete { .. } => format!("{} deleted\n", text(&v["id"])),
        QueueAction::Bounce { .. } => format!(
            "{} bounced ({} recipient(s)); DSN {}\n",
            text(&v["id"]),
            text(&v["bounced"]),
            text(&v["dsn_id"])
        ),
        QueueAction::Retry { .. } | QueueAction::Hold { .. } | QueueAction::Release { .. } => {
            let verb = if v["changed"].as_bool() == Some(true) {
                "changed"
            } else {
                "unchanged"
            };
            format!("{} {verb}, now {}\n", text(&v["id"]), text(&v["state"]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_encode() {
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
        assert_eq!(encode("a b/é"), "a%20b%2F%C3%A9");
    }

    #[test]
    fn show_renders_recipients() {
        let v = serde_json::json!({"id": "00000000000000aa", "state": "deferred", "recipients": [
            {"address": "a@b.test", "state": "deferred", "attempts": 2, "mx_host": "mx.b.test", "last_reply": {"code": 450, "enhanced": "4.2.1", "text": "busy"}}
        ]});
        let out = render(&QueueAction::Show { id: "x".into() }, &v);
        assert!(
            out.contains("a@b.test   deferred  2         mx.b.test  450 4.2.1 busy"),
            "{out}"
        );
    }
}
