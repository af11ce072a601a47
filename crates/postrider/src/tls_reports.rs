//! `postrider tls-reports …`: SMTP TLS reports through the running relay's HTTP API
//! (`POST /v1/tls-reports/send`).

use std::fmt::Write as _;

use clap::Subcommand;
use serde_json::Value;

use crate::api_client::{ApiClient, ApiTarget};

/// What to do with TLS reports.
#[derive(Debug, Subcommand)]
pub(crate) enum TlsReportsAction {
    /// Send the reports of one UTC day now, whatever the daily schedule says.
    Send {
        /// The day, YYYY-MM-DD (UTC); default yesterday.
        #[arg(long)]
        day: Option<String>,
    },
}

/// Runs `action` against the relay at `target`.
pub(crate) fn run(target: &ApiTarget, action: TlsReportsAction) -> anyhow::Result<()> {
    let client = ApiClient::new(target);
    match action {
        TlsReportsAction::Send { day } => {
            let body = match day {
                Some(day) => serde_json::json!({ "day": day }),
                None => serde_json::json!({}),
            };
            let answer = client.post("/v1/tls-reports/send", Some(body), "admin")?;
            if target.json {
                println!("{answer}");
            } else {
                print!("{}", summary(&answer));
            }
            Ok(())
        }
    }
}

/// One line per domain: where its report went and what failed.
fn summary(answer: &Value) -> String {
    let mut out = String::new();
    let day = answer["day"].as_str().unwrap_or("?");
    let domains = answer["domains"].as_array().map_or(&[][..], Vec::as_slice);
    if domains.is_empty() {
        let _ = writeln!(out, "{day}: nothing to report");
    }
    let list = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    for d in domains {
        let domain = d["domain"].as_str().unwrap_or("?");
        let sent = list(&d["sent"]);
        let failed = list(&d["failed"]);
        let _ = write!(out, "{day} {domain}:");
        if !sent.is_empty() {
            let _ = write!(out, " sent to {sent}");
        }
        if !failed.is_empty() {
            let _ = write!(out, " failed: {failed}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_each_domain() {
        let answer = serde_json::json!({
            "day": "2026-12-02",
            "domains": [
                {"domain": "a.test", "sent": ["https://r.a.test/", "mailto:t@a.test"], "failed": []},
                {"domain": "b.test", "sent": [], "failed": ["no v=TLSRPTv1 record"]}
            ]
        });
        assert_eq!(
            summary(&answer),
            "2026-12-02 a.test: sent to https://r.a.test/, mailto:t@a.test\n\
             2026-12-02 b.test: failed: no v=TLSRPTv1 record\n"
        );
        assert_eq!(
            summary(&serde_json::json!({"day": "2026-12-02", "domains": []})),
            "2026-12-02: nothing to report\n"
        );
    }
}
