//! `postrider mailq`: the pending queue in the layout of Postfix's `mailq`, for operators and
//! scripts used to it: queue id (`!` when held), size, arrival time and sender, then each
//! recipient indented under the reason it is still waiting (in parentheses), and a
//! `-- N Kbytes in M Requests.` footer (or `Mail queue is empty`).

use std::fmt::Write as _;

use postrider_core::Timestamp;
use serde_json::Value;

use crate::admin::{ListQuery, for_each_page, reply_text, text};
use crate::api_client::{ApiClient, ApiTarget};

/// The column where recipients start (under the sender).
const RECIPIENT_COLUMN: usize = 50;

/// Lists every pending message; with `--json`, the API's message objects as one JSON array.
pub(crate) fn run(target: &ApiTarget) -> anyhow::Result<()> {
    let client = ApiClient::new(target);
    let mut totals = Totals::default();
    let mut collected = Vec::new();
    for_each_page(&client, &ListQuery::default(), None, None, |messages| {
        if target.json {
            collected.extend_from_slice(messages);
            return Ok(());
        }
        let mut out = String::new();
        for m in messages {
            if totals.requests == 0 {
                out.push_str(&header());
            }
            totals.add(m);
            out.push_str(&entry(m));
        }
        print!("{out}");
        Ok(())
    })?;
    if target.json {
        println!("{}", serde_json::to_string_pretty(&collected)?);
    } else {
        println!("{}", totals.footer());
    }
    Ok(())
}

/// The title line.
fn header() -> String {
    format!(
        "{:<18}{:>8} {:<21}  {}\n",
        "-Queue ID-", "--Size--", "----Arrival Time----", "-Sender/Recipient-------"
    )
}

/// Messages and bytes listed so far.
#[derive(Debug, Default)]
struct Totals {
    requests: u64,
    bytes: u64,
}

impl Totals {
    fn add(&mut self, m: &Value) {
        self.requests += 1;
        self.bytes = self.bytes.saturating_add(m["size"].as_u64().unwrap_or(0));
    }

    /// `-- 3 Kbytes in 2 Requests.`, or `Mail queue is empty`.
    fn footer(&self) -> String {
        if self.requests == 0 {
            return "Mail queue is empty".to_owned();
        }
        let kbytes = self.bytes.div_ceil(1024);
        let noun = if self.requests == 1 {
            "Request"
        } else {
            "Requests"
        };
        format!("-- {kbytes} Kbytes in {} {noun}.", self.requests)
    }
}

/// One message: its line, then its pending recipients grouped under their last reply, and a
/// blank line.
fn entry(m: &Value) -> String {
    let marker = if m["state"] == "held" { "!" } else { "" };
    let id = format!("{}{marker}", text(&m["id"]));
    let arrival = m["created_at"]
        .as_str()
        .and_then(Timestamp::parse_rfc3339)
        .map_or_else(|| "-".to_owned(), arrival_time);
    let sender = match text(&m["from"]).as_str() {
        "" | "<>" => "MAILER-DAEMON".to_owned(),
        s => s.to_owned(),
    };
    let mut out = format!(
        "{id:<18}{:>8} {arrival:<21}  {sender}\n",
        m["size"].as_u64().unwrap_or(0)
    );
    let mut groups: Vec<(Option<String>, Vec<String>)> = Vec::new();
    for r in m["recipients"].as_array().map_or(&[][..], Vec::as_slice) {
        if !matches!(r["state"].as_str(), Some("queued" | "deferred")) {
            continue;
        }
        let reason = r["last_reply"]
            .is_object()
            .then(|| reply_text(&r["last_reply"]));
        let address = text(&r["address"]);
        match groups.iter_mut().find(|(g, _)| *g == reason) {
            Some((_, addresses)) => addresses.push(address),
            None => groups.push((reason, vec![address])),
        }
    }
    for (reason, addresses) in groups {
        if let Some(reason) = reason {
            let _ = writeln!(out, "({reason})");
        }
        for a in addresses {
            let _ = writeln!(out, "{:RECIPIENT_COLUMN$}{a}", "");
        }
    }
    out.push('\n');
    out
}

/// `Thu Dec  3 12:25:21` (UTC), the arrival time as `mailq` prints it.
fn arrival_time(t: Timestamp) -> String {
    // "Thu, 3 Dec 2026 12:25:21 +0000"
    let rfc = t.to_rfc5322();
    let parts: Vec<&str> = rfc.split_whitespace().collect();
    match parts.as_slice() {
        [weekday, day, month, _year, time, _zone] => {
            format!("{} {month} {day:>2} {time}", weekday.trim_end_matches(','))
        }
        _ => rfc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deferred_message_looks_like_postfix_mailq() {
        let m = serde_json::json!({
            "id": "00000000000004d3", "state": "deferred", "from": "app@example.com",
            "size": 2100, "created_at": "2026-12-03T09:05:07.000Z",
            "recipients": [
                {"address": "a@example.net", "state": "deferred",
                 "last_reply": {"code": 450, "enhanced": "4.2.1", "text": "mailbox busy"}},
                {"address": "b@example.net", "state": "delivered",
                 "last_reply": {"code": 250, "text": "ok"}},
                {"address": "c@example.org", "state": "queued", "last_reply": null}
            ]
        });
        let pad = " ".repeat(RECIPIENT_COLUMN);
        assert_eq!(
            entry(&m),
            format!(
                "00000000000004d3      2100 Thu Dec  3 09:05:07    app@example.com\n\
                 (450 4.2.1 mailbox busy)\n{pad}a@example.net\n{pad}c@example.org\n\n"
            )
        );
        let mut totals = Totals::default();
        assert_eq!(totals.footer(), "Mail queue is empty");
        totals.add(&m);
        assert_eq!(totals.footer(), "-- 3 Kbytes in 1 Request.");
        totals.add(&m);
        assert_eq!(totals.footer(), "-- 5 Kbytes in 2 Requests.");
    }

    #[test]
    fn held_messages_are_marked_and_null_senders_named() {
        let m = serde_json::json!({"id": "00000000000000aa", "state": "held", "from": "<>",
            "size": 10, "created_at": "2026-01-01T00:00:00Z", "recipients": []});
        assert!(
            entry(&m)
                .starts_with("00000000000000aa!       10 Thu Jan  1 00:00:00    MAILER-DAEMON\n"),
            "{}",
            entry(&m)
        );
    }
}
