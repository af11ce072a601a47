//! Console sessions: who is looking, what they may do, and the CSRF token of their forms.
//!
//! A session lives on the server; the browser holds only its random id, in an `HttpOnly`,
//! `SameSite=Strict` cookie scoped to `/ui`. A session opened with an API key keeps the key's
//! SHA-256, never the key, and the key ring is asked again on every request, so removing a key
//! from the configuration ends its sessions. In loopback-only mode (no keys configured) every
//! loopback client gets a session without logging in; it still carries a CSRF token.
//!
//! The table is bounded ([`MAX_SESSIONS`]); when full, expired sessions go first, then the
//! oldest.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::http::header;
use rand::RngCore as _;

use crate::auth::{constant_time_eq, key_digest};
use crate::{ApiState, Scope};

/// Name of the cookie holding the session id.
pub(crate) const SESSION_COOKIE: &str = "postrider_console";
/// Name of the cookie holding the login form's CSRF token (double-submit: no session yet).
pub(crate) const LOGIN_COOKIE: &str = "postrider_console_login";
/// Most sessions kept at once.
pub(crate) const MAX_SESSIONS: usize = 1024;
/// How long a session lasts after login.
pub(crate) const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// What a session stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Credential {
    /// Loopback-only mode: the client's address was the credential.
    Loopback,
    /// SHA-256 of the API key given at login.
    Key([u8; 32]),
}

#[derive(Debug, Clone)]
struct Session {
    credential: Credential,
    csrf: String,
    created: Instant,
}

/// The server-side session table.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    table: Mutex<HashMap<String, Session>>,
}

/// A signed-in viewer of the console, as established for one request.
#[derive(Debug, Clone)]
pub(crate) struct Viewer {
    /// The key's name, or `loopback`.
    pub(crate) name: String,
    /// What the viewer may do.
    pub(crate) scopes: Vec<Scope>,
    /// The token every form of this session must send back.
    pub(crate) csrf: String,
    /// Whether the viewer logged in with a key (and so can log out).
    pub(crate) keyed: bool,
    /// A `Set-Cookie` value to send (a session opened for this request).
    pub(crate) set_cookie: Option<String>,
}

impl Viewer {
    /// Whether the viewer has `scope`.
    pub(crate) fn can(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// 32 random bytes as 64 hex digits.
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether two tokens are equal, in time independent of where they differ.
pub(crate) fn tokens_match(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    let a: [u8; 32] = Sha256::digest(a.as_bytes()).into();
    let b: [u8; 32] = Sha256::digest(b.as_bytes()).into();
    constant_time_eq(&a, &b)
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim())
}

/// A `Set-Cookie` value for the console: `HttpOnly`, `SameSite=Strict`, path `/ui`.
pub(crate) fn set_cookie(name: &str, value: &str) -> String {
    format!("{name}={value}; Path=/ui; HttpOnly; SameSite=Strict")
}

/// A `Set-Cookie` value that deletes a console cookie.
pub(crate) fn clear_cookie(name: &str) -> String {
    format!("{name}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0")
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        match self.table.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Opens a session and returns its id.
    fn open(&self, credential: Credential, now: Instant) -> (String, String) {
        let id = random_token();
        let csrf = random_token();
        let mut table = self.lock();
        table.retain(|_, s| now.saturating_duration_since(s.created) < SESSION_LIFETIME);
        while table.len() >= MAX_SESSIONS {
            let oldest = table
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => table.remove(&k),
                None => break,
            };
        }
        table.insert(
            id.clone(),
            Session {
                credential,
                csrf: csrf.clone(),
                created: now,
            },
        );
        (id, csrf)
    }

    /// Opens a session for a presented API key. `None` when the key is unknown or lacks the
    /// `read` scope; otherwise the new session id.
    pub(crate) fn login(&self, state: &ApiState, presented: &str) -> Option<String> {
        let digest = key_digest(presented);
        let access = state.access.load();
        let scopes = &access.keys().find_digest(&digest)?.scopes;
        if !scopes.contains(&Scope::Read) {
            return None;
        }
        Some(self.open(Credential::Key(digest), Instant::now()).0)
    }

    /// Ends a session.
    pub(crate) fn logout(&self, id: &str) {
        self.lock().remove(id);
    }

    /// The viewer behind the request's session cookie. In loopback-only mode a request without a
    /// valid session gets a new one (the caller checked the client is on loopback).
    pub(crate) fn viewer(&self, state: &ApiState, headers: &HeaderMap) -> Option<Viewer> {
        let keyless = !state.has_keys();
        let now = Instant::now();
        let found = cookie(headers, SESSION_COOKIE).and_then(|id| {
            let table = self.lock();
            table
                .get(id)
                .filter(|s| now.saturating_duration_since(s.created) < SESSION_LIFETIME)
                .cloned()
        });
        match found {
            Some(Session {
                credential: Credential::Key(digest),
                csrf,
                ..
            }) if !keyless => {
                let access = state.access.load();
                let key = access.keys().find_digest(&digest)?;
                let (name, scopes) = (key.name.as_str(), key.scopes.as_slice());
                scopes.contains(&Scope::Read).then(|| Viewer {
                    name: name.to_owned(),
                    scopes: scopes.to_vec(),
                    csrf,
                    keyed: true,
                    set_cookie: None,
                })
            }
            Some(Session {
                credential: Credential::Loopback,
                csrf,
                ..
            }) if keyless => Some(loopback_viewer(csrf, None)),
            _ if keyless => {
                let (id, csrf) = self.open(Credential::Loopback, now);
                Some(loopback_viewer(csrf, Some(set_cookie(SESSION_COOKIE, &id))))
            }
            _ => None,
        }
    }
}

fn loopback_viewer(csrf: String, set_cookie: Option<String>) -> Viewer {
    Viewer {
        name: "loopback".to_owned(),
        scopes: vec![Scope::Send, Scope::Read, Scope::Admin],
        csrf,
        keyed: false,
        set_cookie,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; postrider_console=abc ; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "postrider"), None);
    }

    #[test]
    fn table_is_bounded() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let (first, _) = sessions.open(Credential::Loopback, t0);
        for i in 1..=MAX_SESSIONS {
            sessions.open(Credential::Loopback, t0 + Duration::from_millis(i as u64));
        }
        let table = sessions.lock();
        assert_eq!(table.len(), MAX_SESSIONS);
        assert!(!table.contains_key(&first), "the oldest session went first");
    }

    #[test]
    fn tokens_compare() {
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abc", "abd"));
        assert!(!tokens_match("", "abd"));
    }
}
