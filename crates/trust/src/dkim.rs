//! DKIM signing (RFC 6376, Ed25519 per RFC 8463) and key generation.
//!
//! Keys are loaded once at start ([`DkimSigner::load`]); a bad key file is a start-up error
//! naming the file. At send time [`DkimSigner`] (a [`MessageSigner`]) picks the keys of the
//! [`signing_domain`] (the `From:` domain, or the `Sender:` domain when that differs) and
//! returns the `DKIM-Signature:` field(s) to prepend.

use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use mail_auth::AuthenticatedMessage;
use mail_auth::common::crypto::{DkimKey as MailAuthKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner as MailAuthSigner, Done};
use postrider_core::{Domain, MessageSigner};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

/// Largest key file read at start-up; real PEM keys are a few KiB.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// The signature algorithm of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum DkimAlgorithm {
    /// `rsa-sha256` (RFC 6376): what every verifier understands. The default.
    #[default]
    #[serde(rename = "rsa-sha256", alias = "rsa")]
    RsaSha256,
    /// `ed25519-sha256` (RFC 8463): short keys, not yet checked by every receiver, so
    /// publish it next to an RSA key (dual signing) rather than alone.
    #[serde(rename = "ed25519-sha256", alias = "ed25519")]
    Ed25519Sha256,
}

impl DkimAlgorithm {
    /// The `k=` tag value of the DNS record (`rsa` or `ed25519`).
    pub fn key_type(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa",
            DkimAlgorithm::Ed25519Sha256 => "ed25519",
        }
    }

    /// The `a=` tag value of a signature.
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}

impl fmt::Display for DkimAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DkimAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "rsa" | "rsa-sha256" => Ok(DkimAlgorithm::RsaSha256),
            "ed25519" | "ed25519-sha256" => Ok(DkimAlgorithm::Ed25519Sha256),
            other => Err(format!(
                "unknown DKIM algorithm {other:?} (use rsa-sha256 or ed25519-sha256)"
            )),
        }
    }
}

/// One configured signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DkimKeyConfig {
    /// The signing domain (`d=`). `example.com` signs mail whose `From:` domain is exactly
    /// `example.com`; `*.example.com` also signs any subdomain (with `d=example.com`, which
    /// DMARC's relaxed alignment accepts). An exact entry wins over a wildcard one.
    pub domain: String,
    /// The selector (`s=`): the key is published at `selector._domainkey.domain`.
    pub selector: String,
    /// PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`) or, for RSA, PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`).
    pub key_file: PathBuf,
    /// Algorithm of the key in `key_file` (default `rsa-sha256`).
    #[serde(default)]
    pub algorithm: DkimAlgorithm,
}

/// DKIM configuration. `Default` has no keys (nothing is signed) and [`DEFAULT_SIGNED_HEADERS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DkimSettings {
    /// Signing keys. Several keys of one domain all sign (e.g. RSA and Ed25519 dual signing).
    #[serde(default)]
    pub keys: Vec<DkimKeyConfig>,
    /// Header fields to sign (those present in the message; `From`, `List-Unsubscribe` and
    /// `List-Unsubscribe-Post` are always signed).
    #[serde(default = "default_signed_headers")]
    pub headers: Vec<String>,
}

impl Default for DkimSettings {
    fn default() -> Self {
        DkimSettings {
            keys: Vec::new(),
            headers: default_signed_headers(),
        }
    }
}

/// Header fields signed unless configured otherwise: the ones a receiver shows or acts on.
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Sender",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
];

fn default_signed_headers() -> Vec<String> {
    DEFAULT_SIGNED_HEADERS
        .iter()
        .map(|h| (*h).to_owned())
        .collect()
}

/// Why the DKIM configuration cannot be used (reported at start-up).
#[derive(Debug, thiserror::Error)]
pub enum DkimConfigError {
    /// The key file could not be read.
    #[error("DKIM key file {path}: {source}")]
    Read {
        /// The configured path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file holds no usable key of the configured algorithm.
    #[error("DKIM key file {path}: {reason}")]
    Key {
        /// The configured path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The domain or selector is not a valid DNS name.
    #[error("DKIM key for {domain:?} selector {selector:?}: {reason}")]
    Name {
        /// The configured domain.
        domain: String,
        /// The configured selector.
        selector: String,
        /// What is wrong.
        reason: String,
    },
    /// Key generation failed in the crypto library.
    #[error("DKIM key generation failed: {0}")]
    Generate(String),
}

/// The public half of a configured key: what must be published in DNS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DkimPublicKey {
    /// The signing domain (`d=`), without any `*.` prefix.
    pub domain: String,
    /// The selector.
    pub selector: String,
    /// The algorithm.
    pub algorithm: DkimAlgorithm,
    /// The `p=` value: base64 of the SubjectPublicKeyInfo (RSA) or of the raw 32-byte key
    /// (Ed25519, RFC 8463).
    pub public_key_base64: String,
}

impl DkimPublicKey {
    /// The DNS name of the key record: `selector._domainkey.domain`.
    pub fn dns_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// The TXT record to publish: `v=DKIM1; k=rsa; p=…`.
    pub fn dns_txt(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm.key_type(),
            self.public_key_base64
        )
    }
}

/// One loaded key, ready to sign.
struct LoadedKey {
    /// `example.com`, or `example.com` for a `*.example.com` entry.
    domain: String,
    wildcard: bool,
    public: DkimPublicKey,
    signer: MailAuthSigner<MailAuthKey, Done>,
}

/// Signs outgoing messages with the key(s) of the `From:` domain. Implements
/// [`MessageSigner`]; cheap to share behind an `Arc`.
pub struct DkimSigner {
    keys: Vec<LoadedKey>,
}

impl fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| {
                format!(
                    "{}{} s={} a={}",
                    if k.wildcard { "*." } else { "" },
                    k.domain,
                    k.public.selector,
                    k.public.algorithm
                )
            })
            .collect();
        f.debug_struct("DkimSigner").field("keys", &keys).finish()
    }
}

impl DkimSigner {
    /// Loads and checks every configured key file. Fails on the first unusable one, naming it.
    pub fn load(settings: &DkimSettings) -> Result<Self, DkimConfigError> {
        let mut keys = Vec::with_capacity(settings.keys.len());
        for config in &settings.keys {
            let pem = read_key_file(&config.key_file)?;
            keys.push(load_key(config, &pem, &settings.headers)?);
        }
        tracing::info!(keys = keys.len(), "DKIM keys loaded");
        Ok(DkimSigner { keys })
    }

    /// Builds a one-key signer from PEM text instead of a file (errors name `config.key_file`).
    pub fn from_pem(
        config: &DkimKeyConfig,
        pem: &str,
        headers: &[String],
    ) -> Result<Self, DkimConfigError> {
        Ok(DkimSigner {
            keys: vec![load_key(config, pem.as_bytes(), headers)?],
        })
    }

    /// The public keys of all configured keys (for `check-domain` and for printing).
    pub fn public_keys(&self) -> Vec<DkimPublicKey> {
        self.keys.iter().map(|k| k.public.clone()).collect()
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys that sign mail from `domain`: all keys of the exact domain, else all keys of the
    /// closest `*.` parent.
    fn keys_for(&self, domain: &str) -> Vec<&LoadedKey> {
        let exact: Vec<&LoadedKey> = self.keys.iter().filter(|k| k.domain == domain).collect();
        if !exact.is_empty() {
            return exact;
        }
        let best = self
            .keys
            .iter()
            .filter(|k| k.wildcard && is_subdomain(domain, &k.domain))
            .map(|k| k.domain.len())
            .max();
        match best {
            Some(len) => self
                .keys
                .iter()
                .filter(|k| k.wildcard && k.domain.len() == len && is_subdomain(domain, &k.domain))
                .collect(),
            None => Vec::new(),
        }
    }
}

impl MessageSigner for DkimSigner {
    fn sign(&self, message: &[u8]) -> Option<Vec<u8>> {
        if self.keys.is_empty() {
            return None;
        }
        let domain = signing_domain(message)?;
        let keys = self.keys_for(&domain);
        if keys.is_empty() {
            tracing::debug!(%domain, "no DKIM key for the signing domain; sending unsigned");
            return None;
        }
        let mut out = Vec::new();
        for key in keys {
            match key.signer.sign(message) {
                Ok(signature) => {
                    let mut header = signature.to_header();
                    if !header.ends_with("\r\n") {
                        header.push_str("\r\n");
                    }
                    out.extend_from_slice(header.as_bytes());
                }
                Err(e) => {
                    tracing::warn!(%domain, selector = %key.public.selector, error = %e, "DKIM signing failed");
                }
            }
        }
        if out.is_empty() { None } else { Some(out) }
    }
}

/// The domain a message is signed for: the `From:` domain ([`author_domain`]), unless a
/// `Sender:` field names an address of another domain: then the `Sender:` domain, because the
/// sender, not the author, handed the message to Postrider. That is what keeps a forged
/// `From:` unsigned: an SMTP user under `from_policy = "rewrite"` gets its envelope sender as
/// `Sender:`, so its message is signed for its own domain (when a key exists), never for the
/// `From:` domain it may not use. `None` without a `From:` address.
pub fn signing_domain(message: &[u8]) -> Option<String> {
    let author = author_domain(message)?;
    match sender_domain(message) {
        Some(sender) if sender != author => Some(sender),
        _ => Some(author),
    }
}

/// The domain of the first `Sender:` address, lowercased; `None` if there is none.
fn sender_domain(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let address = parsed.sender()?.first()?.address()?;
    let (_, domain) = address.rsplit_once('@')?;
    let domain = Domain::parse(domain).ok()?;
    Some(domain.as_str().to_owned())
}

/// The domain of the first `From:` address, lowercased; `None` if there is none.
pub fn author_domain(message: &[u8]) -> Option<String> {
    let parsed = AuthenticatedMessage::parse(message)?;
    let from = parsed.from.first()?;
    let (_, domain) = from.rsplit_once('@')?;
    let domain = Domain::parse(domain).ok()?;
    Some(domain.as_str().to_owned())
}

/// `child` is a proper subdomain of `parent`.
fn is_subdomain(child: &str, parent: &str) -> bool {
    child.len() > parent.len() + 1
        && child.ends_with(parent)
        && child.as_bytes()[child.len() - parent.len() - 1] == b'.'
}

fn read_key_file(path: &Path) -> Result<Vec<u8>, DkimConfigError> {
    use std::io::Read;
    let read_err = |source| DkimConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(DkimConfigError::Key {
            path: path.to_owned(),
            reason: format!("larger than {MAX_KEY_FILE_BYTES} bytes; not a PEM key"),
        });
    }
    Ok(bytes)
}

fn load_key(
    config: &DkimKeyConfig,
    pem: &[u8],
    headers: &[String],
) -> Result<LoadedKey, DkimConfigError> {
    let (domain, wildcard) = match config.domain.strip_prefix("*.") {
        Some(parent) => (parent, true),
        None => (config.domain.as_str(), false),
    };
    let name_err = |reason: &str| DkimConfigError::Name {
        domain: config.domain.clone(),
        selector: config.selector.clone(),
        reason: reason.to_owned(),
    };
    let domain = Domain::parse(domain)
        .map_err(|e| name_err(&e.to_string()))?
        .as_str()
        .to_owned();
    validate_selector(&config.selector).map_err(name_err)?;
    let key_err = |reason: String| DkimConfigError::Key {
        path: config.key_file.clone(),
        reason,
    };
    let der = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| key_err(format!("no PEM private key found ({e})")))?;
    let (key, public_raw): (MailAuthKey, Vec<u8>) = match config.algorithm {
        DkimAlgorithm::RsaSha256 => {
            let key = match &der {
                PrivateKeyDer::Pkcs1(_) | PrivateKeyDer::Pkcs8(_) => {
                    RsaKey::<Sha256>::from_key_der(der.clone_key()).map_err(|e| {
                        key_err(format!("not an RSA private key (PKCS#1 or PKCS#8): {e}"))
                    })?
                }
                _ => {
                    return Err(key_err(
                        "expected an RSA key in PKCS#1 or PKCS#8 PEM".into(),
                    ));
                }
            };
            let pkcs1 = key.public_key();
            (MailAuthKey::Rsa(key), rsa_spki_from_pkcs1(&pkcs1))
        }
        DkimAlgorithm::Ed25519Sha256 => {
            let PrivateKeyDer::Pkcs8(pkcs8) = &der else {
                return Err(key_err("expected an Ed25519 key in PKCS#8 PEM".into()));
            };
            let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der())
                .map_err(|e| key_err(format!("not an Ed25519 PKCS#8 private key: {e}")))?;
            let public = key.public_key();
            (MailAuthKey::Ed25519(key), public)
        }
    };
    let mut signed: Vec<String> = headers.to_vec();
    if !signed.iter().any(|h| h.eq_ignore_ascii_case("from")) {
        signed.insert(0, "From".to_owned());
    }
    // The relay's own one-click unsubscribe fields are always covered when present (RFC 8058
    // §4 requires the signature to cover them), whatever the configured list says.
    for field in ["List-Unsubscribe", "List-Unsubscribe-Post"] {
        if !signed.iter().any(|h| h.eq_ignore_ascii_case(field)) {
            signed.push(field.to_owned());
        }
    }
    let signer = MailAuthSigner::from_key(key)
        .domain(domain.clone())
        .selector(config.selector.clone())
        .headers(signed)
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed);
    Ok(LoadedKey {
        public: DkimPublicKey {
            domain: domain.clone(),
            selector: config.selector.clone(),
            algorithm: config.algorithm,
            public_key_base64: BASE64.encode(public_raw),
        },
        domain,
        wildcard,
        signer,
    })
}

/// A selector is one or more DNS labels (letters, digits, `-`, `_`).
fn validate_selector(selector: &str) -> Result<(), &'static str> {
    if selector.is_empty() || selector.len() > 63 {
        return Err("selector must be 1 to 63 characters");
    }
    let ok = selector.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if ok {
        Ok(())
    } else {
        Err("selector must be DNS labels of letters, digits, '-' and '_'")
    }
}

/// A freshly generated key pair with its DNS record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GeneratedKey {
    /// The private key, PKCS#8 PEM (`BEGIN PRIVATE KEY`): store it as `key_file`, mode 0600.
    pub private_pem: String,
    /// Where to publish the record: `selector._domainkey.domain`.
    pub dns_name: String,
    /// The TXT record value: `v=DKIM1; k=rsa|ed25519; p=…`.
    pub dns_txt: String,
}

/// Generates an RSA-2048 or Ed25519 key for `domain` / `selector`.
pub fn generate_dkim_key(
    domain: &Domain,
    selector: &str,
    algorithm: DkimAlgorithm,
) -> Result<GeneratedKey, DkimConfigError> {
    validate_selector(selector).map_err(|reason| DkimConfigError::Name {
        domain: domain.to_string(),
        selector: selector.to_owned(),
        reason: reason.to_owned(),
    })?;
    let gen_err = |e: aws_lc_rs::error::Unspecified| DkimConfigError::Generate(e.to_string());
    let (pkcs8, public_raw): (Vec<u8>, Vec<u8>) = match algorithm {
        DkimAlgorithm::RsaSha256 => {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(gen_err)?;
            let private: Pkcs8V1Der<'static> = pair.as_der().map_err(gen_err)?;
            let public: PublicKeyX509Der<'static> = pair.public_key().as_der().map_err(gen_err)?;
            (private.as_ref().to_vec(), public.as_ref().to_vec())
        }
        DkimAlgorithm::Ed25519Sha256 => {
            let pair = Ed25519KeyPair::generate().map_err(gen_err)?;
            let private = pair.to_pkcs8v1().map_err(gen_err)?;
            (
                private.as_ref().to_vec(),
                pair.public_key().as_ref().to_vec(),
            )
        }
    };
    let public = DkimPublicKey {
        domain: domain.to_string(),
        selector: selector.to_owned(),
        algorithm,
        public_key_base64: BASE64.encode(public_raw),
    };
    Ok(GeneratedKey {
        private_pem: pem_encode("PRIVATE KEY", &pkcs8),
        dns_name: public.dns_name(),
        dns_txt: public.dns_txt(),
    })
}

/// Longest character-string of a TXT record (RFC 1035 §3.3: one length octet); longer values,
/// such as RSA-2048 DKIM keys, must be split into several strings of one record.
pub const MAX_TXT_STRING: usize = 255;

impl GeneratedKey {
    /// The record in zone-file syntax, ready to paste into a BIND-style zone: the fully
    /// qualified name, then the value split into strings of at most [`MAX_TXT_STRING`]
    /// characters, which DNS servers and receivers join back into one value.
    pub fn zone_file_record(&self) -> String {
        zone_file_txt(&self.dns_name, &self.dns_txt)
    }
}

/// `name. IN TXT ( "…" "…" )` with one quoted string of at most [`MAX_TXT_STRING`] characters
/// per line; quotes and backslashes in `value` are escaped.
pub fn zone_file_txt(name: &str, value: &str) -> String {
    let fqdn = if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    };
    let strings: Vec<String> = txt_strings(value)
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{fqdn} IN TXT (\n  {}\n)", strings.join("\n  "))
}

/// `value` cut into pieces of at most [`MAX_TXT_STRING`] bytes, never inside a character.
fn txt_strings(value: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let mut end = rest.len().min(MAX_TXT_STRING);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (piece, tail) = rest.split_at(end);
        pieces.push(piece);
        rest = tail;
    }
    if pieces.is_empty() {
        pieces.push("");
    }
    pieces
}

/// PEM armour with 64-character lines.
fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// DER of the `AlgorithmIdentifier` for rsaEncryption with NULL parameters.
const RSA_ALGORITHM_ID: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

/// Wraps a PKCS#1 `RSAPublicKey` into a SubjectPublicKeyInfo, the form DKIM records
/// conventionally carry (what `openssl rsa -pubout` prints).
pub(crate) fn rsa_spki_from_pkcs1(pkcs1: &[u8]) -> Vec<u8> {
    let mut bit_string = vec![0x00];
    bit_string.extend_from_slice(pkcs1);
    let mut inner = RSA_ALGORITHM_ID.to_vec();
    inner.push(0x03);
    der_len(bit_string.len(), &mut inner);
    inner.extend_from_slice(&bit_string);
    let mut out = vec![0x30];
    der_len(inner.len(), &mut out);
    out.extend_from_slice(&inner);
    out
}

/// The PKCS#1 `RSAPublicKey` inside a SubjectPublicKeyInfo, or the input when it is not one
/// (DKIM verifiers accept both forms, so comparisons normalise to PKCS#1).
pub(crate) fn rsa_pkcs1_from_spki(spki: &[u8]) -> &[u8] {
    fn read_len(b: &[u8]) -> Option<(usize, &[u8])> {
        let first = *b.first()?;
        if first & 0x80 == 0 {
            return Some((usize::from(first), b.get(1..)?));
        }
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for byte in b.get(1..=n)? {
            len = (len << 8) | usize::from(*byte);
        }
        Some((len, b.get(1 + n..)?))
    }
    let parse = || -> Option<&[u8]> {
        if *spki.first()? != 0x30 {
            return None;
        }
        let (_, rest) = read_len(spki.get(1..)?)?;
        let rest = rest.strip_prefix(RSA_ALGORITHM_ID)?;
        if *rest.first()? != 0x03 {
            return None;
        }
        let (len, rest) = read_len(rest.get(1..)?)?;
        let bits = rest.get(..len)?;
        bits.strip_prefix(&[0x00])
    };
    parse().unwrap_or(spki)
}

fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomain_matching() {
        assert!(is_subdomain("news.example.com", "example.com"));
        assert!(!is_subdomain("example.com", "example.com"));
        assert!(!is_subdomain("badexample.com", "example.com"));
    }

    #[test]
    fn spki_round_trip() {
        let pkcs1: Vec<u8> = (0..300u16).map(|i| (i % 251) as u8).collect();
        let spki = rsa_spki_from_pkcs1(&pkcs1);
        assert_eq!(rsa_pkcs1_from_spki(&spki), &pkcs1[..]);
        assert_eq!(rsa_pkcs1_from_spki(&pkcs1), &pkcs1[..]);
    }

    #[test]
    fn generated_rsa_spki_matches_aws_lc() {
        // The SPKI we build from PKCS#1 must equal the one aws-lc encodes itself.
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let spki: PublicKeyX509Der<'static> = pair.public_key().as_der().unwrap();
        let pkcs1 = rsa_pkcs1_from_spki(spki.as_ref()).to_vec();
        assert_ne!(pkcs1, spki.as_ref());
        assert_eq!(rsa_spki_from_pkcs1(&pkcs1), spki.as_ref());
    }

    #[test]
    fn selector_validation() {
        assert!(validate_selector("s2026").is_ok());
        assert!(validate_selector("a.b_c-d").is_ok());
        assert!(validate_selector("").is_err());
        assert!(validate_selector("bad selector").is_err());
        assert!(validate_selector("x;p=").is_err());
    }

    #[test]
    fn algorithm_names() {
        assert_eq!(
            "ed25519".parse::<DkimAlgorithm>(),
            Ok(DkimAlgorithm::Ed25519Sha256)
        );
        assert_eq!(
            "RSA-SHA256".parse::<DkimAlgorithm>(),
            Ok(DkimAlgorithm::RsaSha256)
        );
        assert!("dsa".parse::<DkimAlgorithm>().is_err());
    }

    #[test]
    fn zone_file_record_splits_long_values_into_255_character_strings() {
        let value = format!("v=DKIM1; k=rsa; p={}", "A".repeat(392));
        let record = zone_file_txt("s1._domainkey.example.com", &value);
        let lines: Vec<&str> = record.lines().collect();
        assert_eq!(lines[0], "s1._domainkey.example.com. IN TXT (");
        assert_eq!(lines.last(), Some(&")"));
        let strings: Vec<&str> = lines[1..lines.len() - 1]
            .iter()
            .map(|l| {
                l.trim()
                    .strip_prefix('"')
                    .unwrap()
                    .strip_suffix('"')
                    .unwrap()
            })
            .collect();
        assert_eq!(strings.len(), 2, "{record}");
        assert!(
            strings.iter().all(|s| s.len() <= MAX_TXT_STRING),
            "{record}"
        );
        assert_eq!(strings.concat(), value);
    }

    #[test]
    fn zone_file_record_escapes_and_keeps_short_values_whole() {
        assert_eq!(
            zone_file_txt("x.example.", "a\"b\\c"),
            "x.example. IN TXT (\n  \"a\\\"b\\\\c\"\n)"
        );
        assert_eq!(txt_strings(""), vec![""]);
        assert_eq!(txt_strings(&"é".repeat(200)).len(), 2);
    }
}
