//! A small blocking client of the running relay's HTTP API for the operator commands
//! (`postrider queue …`, `postrider mailq`): one agent, the API key, and errors that say what to
//! do about a refused request.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

/// How long one API call may take before the command gives up.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the relay's API is and how to talk to it. The options are global: they may come
/// before or after the subcommand (`queue --json list` and `queue list --json`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ApiTarget {
    /// Base URL of the relay's HTTP API.
    #[arg(
        long,
        global = true,
        env = "POSTRIDER_API",
        default_value = "http://127.0.0.1:8025"
    )]
    pub(crate) api: String,
    /// API key (scope `admin` for the queue, `read` for events; not needed in loopback-only mode).
    #[arg(long, global = true, env = "POSTRIDER_API_KEY", hide_env_values = true)]
    pub(crate) key: Option<String>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// A connection to the relay's API with the key to send.
pub(crate) struct ApiClient {
    base: String,
    key: Option<String>,
    agent: ureq::Agent,
}

impl ApiClient {
    /// A client for `target` (its base URL and key).
    pub(crate) fn new(target: &ApiTarget) -> ApiClient {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(CALL_TIMEOUT))
            .build()
            .into();
        ApiClient {
            base: target.api.trim_end_matches('/').to_owned(),
            key: target.key.clone(),
            agent,
        }
    }

    /// `GET path`; `scope` is the key scope the call needs (named in the hint on 401/403).
    pub(crate) fn get(&self, path: &str, scope: &str) -> anyhow::Result<Value> {
        self.call("GET", path, None, scope)
    }

    /// `POST path` with a JSON body (`{}` when `None`).
    pub(crate) fn post(
        &self,
        path: &str,
        body: Option<Value>,
        scope: &str,
    ) -> anyhow::Result<Value> {
        self.call("POST", path, body, scope)
    }

    /// One call; a non-2xx answer is an error carrying the API's message (and a hint on
    /// 401/403).
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        scope: &str,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let auth = self.key.as_ref().map(|k| format!("Bearer {k}"));
        let response = match method {
            "GET" => {
                let mut r = self.agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            "DELETE" => {
                let mut r = self.agent.delete(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            _ => {
                let mut r = self.agent.post(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send_json(body.unwrap_or_else(|| serde_json::json!({})))
            }
        }
        .with_context(|| format!("cannot reach the relay at {}", self.base))?;
        let status = response.status().as_u16();
        let value: Value = response.into_body().read_json().unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let msg = value["error"]["message"].as_str().unwrap_or("no details");
            let hint = auth_hint(status, self.key.is_some(), scope).unwrap_or_default();
            bail!("{method} {path}: HTTP {status}: {msg}{hint}");
        }
        Ok(value)
    }
}

/// What to do about a refused request (401, 403): which key to pass, and how. `scope` is the
/// API key scope the command needs.
fn auth_hint(status: u16, key_given: bool, scope: &str) -> Option<String> {
    let advice = match (status, key_given) {
        (401, false) => format!("this relay wants an API key with the `{scope}` scope"),
        (401, true) => "the relay does not accept this key".to_owned(),
        (403, false) => format!(
            "without a key the relay serves loopback clients only; use a key with the `{scope}` scope"
        ),
        (403, true) => format!("this key lacks the `{scope}` scope"),
        _ => return None,
    };
    Some(format!(
        "\nhint: {advice}: pass --key <key> or set POSTRIDER_API_KEY (`postrider apikey new --name ops --scopes {scope}` makes one)"
    ))
}

/// Percent-encodes a path or query component.
pub(crate) fn encode(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_scope_and_the_ways_to_pass_a_key() {
        let h = auth_hint(401, false, "admin").unwrap_or_default();
        assert!(
            h.contains("`admin` scope") && h.contains("--key") && h.contains("POSTRIDER_API_KEY")
        );
        let h = auth_hint(403, true, "read").unwrap_or_default();
        assert!(h.contains("lacks the `read` scope"), "{h}");
        assert_eq!(auth_hint(404, true, "admin"), None);
        assert_eq!(encode("a b/é"), "a%20b%2F%C3%A9");
    }
}
