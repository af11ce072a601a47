//! DKIM signing checked independently: mail-auth's verifier against a real DNS server on
//! loopback publishing the key records.

use std::time::Duration;

use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use postrider_core::{Domain, MessageSigner};
use postrider_testkit::{DnsServer, Zone};
use postrider_trust::{
    DkimAlgorithm, DkimConfigError, DkimKeyConfig, DkimSettings, DkimSigner, generate_dkim_key,
};

const MESSAGE: &str = "From: Alice <alice@example.test>\r\n\
To: bob@elsewhere.test\r\n\
Subject: Hello DKIM\r\n\
Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <m1@example.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Hello Bob,\r\n\
this body is signed.\r\n";

struct Fixture {
    dns: DnsServer,
    signer: DkimSigner,
    _dir: tempfile::TempDir,
}

/// Generates one key per algorithm for example.test, writes them to files, loads them through
/// the settings path and publishes the generated TXT records.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let domain = Domain::parse("example.test").unwrap();
    let mut zone = Zone::new("test.");
    let mut keys = Vec::new();
    for (selector, algorithm) in [
        ("rsa1", DkimAlgorithm::RsaSha256),
        ("ed1", DkimAlgorithm::Ed25519Sha256),
    ] {
        let generated = generate_dkim_key(&domain, selector, algorithm).unwrap();
        assert_eq!(
            generated.dns_name,
            format!("{selector}._domainkey.example.test")
        );
        assert!(
            generated
                .dns_txt
                .starts_with(&format!("v=DKIM1; k={}; p=", algorithm.key_type())),
            "{}",
            generated.dns_txt
        );
        assert!(
            generated
                .private_pem
                .starts_with("-----BEGIN PRIVATE KEY-----\n")
        );
        let path = dir.path().join(format!("{selector}.pem"));
        std::fs::write(&path, &generated.private_pem).unwrap();
        zone = zone.txt(&generated.dns_name, &generated.dns_txt);
        keys.push(DkimKeyConfig {
            domain: "example.test".into(),
            selector: selector.into(),
            key_file: path,
            algorithm,
        });
    }
    let dns = DnsServer::start([zone]).await.unwrap();
    let signer = DkimSigner::load(&DkimSettings {
        keys,
        ..DkimSettings::default()
    })
    .unwrap();
    Fixture {
        dns,
        signer,
        _dir: dir,
    }
}

async fn verify(dns: &DnsServer, signed: &[u8]) -> Vec<(String, DkimResult)> {
    let auth = MessageAuthenticator(dns.resolver(Duration::from_secs(2)).unwrap());
    let message = AuthenticatedMessage::parse(signed).expect("parsable");
    auth.verify_dkim(&message)
        .await
        .into_iter()
        .map(|o| {
            let algo = o.signature().map(|s| s.s.clone()).unwrap_or_default();
            (algo, o.result().clone())
        })
        .collect()
}

#[tokio::test]
async fn both_algorithms_sign_and_verify_against_published_records() {
    let f = fixture().await;
    let headers = f.signer.sign(MESSAGE.as_bytes()).expect("signed");
    let text = String::from_utf8(headers.clone()).unwrap();
    assert_eq!(text.matches("DKIM-Signature:").count(), 2, "{text}");
    assert!(text.ends_with("\r\n"));
    assert!(
        text.contains("a=rsa-sha256") && text.contains("a=ed25519-sha256"),
        "{text}"
    );
    assert!(text.contains("c=relaxed/relaxed"), "{text}");
    assert!(text.contains("d=example.test"), "{text}");

    let mut signed = headers;
    signed.extend_from_slice(MESSAGE.as_bytes());
    let mut results = verify(&f.dns, &signed).await;
    results.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        results,
        vec![
            ("ed1".to_string(), DkimResult::Pass),
            ("rsa1".to_string(), DkimResult::Pass)
        ]
    );
}

#[tokio::test]
async fn tampered_body_fails_verification() {
    let f = fixture().await;
    let mut signed = f.signer.sign(MESSAGE.as_bytes()).unwrap();
    signed.extend_from_slice(MESSAGE.replace("is signed", "was changed").as_bytes());
    let results = verify(&f.dns, &signed).await;
    assert_eq!(results.len(), 2);
    for (selector, result) in results {
        // mail-auth reports a body hash mismatch as neutral (RFC 6376 §6.1.3 permfail); the
        // point is: never pass, and the reason is the body.
        assert!(
            matches!(
                result,
                DkimResult::Fail(_)
                    | DkimResult::Neutral(mail_auth::Error::Dkim(
                        mail_auth::dkim::DkimError::FailedBodyHashMatch
                    ))
            ),
            "{selector}: {result:?}"
        );
    }
}

#[tokio::test]
async fn tampered_signed_header_fails_verification() {
    let f = fixture().await;
    let mut signed = f.signer.sign(MESSAGE.as_bytes()).unwrap();
    signed.extend_from_slice(MESSAGE.replace("Hello DKIM", "Hello forged").as_bytes());
    let results = verify(&f.dns, &signed).await;
    assert_eq!(results.len(), 2);
    for (selector, result) in results {
        assert!(
            matches!(result, DkimResult::Fail(_)),
            "{selector}: {result:?}"
        );
    }
}

#[tokio::test]
async fn no_signature_without_a_key_for_the_from_domain() {
    let f = fixture().await;
    let other = MESSAGE.replace("alice@example.test", "alice@other.test");
    assert_eq!(f.signer.sign(other.as_bytes()), None);
    // Sub-domains are not signed by an exact entry either.
    let sub = MESSAGE.replace("alice@example.test", "alice@news.example.test");
    assert_eq!(f.signer.sign(sub.as_bytes()), None);
    assert_eq!(f.signer.sign(b"not a message at all"), None);
}

/// A message whose `Sender:` names another domain than its `From:` (what Postrider writes for
/// an SMTP user whose forged `From:` it rewrites) is never signed for the `From:` domain.
#[tokio::test]
async fn forged_from_with_a_foreign_sender_is_not_signed_for_the_from_domain() {
    let f = fixture().await;
    let rewritten = format!("Sender: <app@allowed.test>\r\n{MESSAGE}");
    assert_eq!(f.signer.sign(rewritten.as_bytes()), None);
    // The Sender: domain is signed when it has a key, and the signature verifies.
    let other_author = format!(
        "Sender: <news@example.test>\r\n{}",
        MESSAGE.replace("alice@example.test", "ceo@bank.test")
    );
    let headers = f.signer.sign(other_author.as_bytes()).expect("signed");
    let text = String::from_utf8(headers.clone()).unwrap();
    assert!(text.contains("d=example.test"), "{text}");
    let mut signed = headers;
    signed.extend_from_slice(other_author.as_bytes());
    assert!(
        verify(&f.dns, &signed)
            .await
            .iter()
            .all(|(_, r)| *r == DkimResult::Pass)
    );
    // A Sender: of the From: domain changes nothing.
    let same = format!("Sender: <ops@example.test>\r\n{MESSAGE}");
    assert!(f.signer.sign(same.as_bytes()).is_some());
}

#[tokio::test]
async fn wildcard_entry_signs_subdomains_with_the_parent_domain() {
    let domain = Domain::parse("example.test").unwrap();
    let generated = generate_dkim_key(&domain, "w1", DkimAlgorithm::Ed25519Sha256).unwrap();
    let config = DkimKeyConfig {
        domain: "*.example.test".into(),
        selector: "w1".into(),
        key_file: "inline.pem".into(),
        algorithm: DkimAlgorithm::Ed25519Sha256,
    };
    let signer = DkimSigner::from_pem(
        &config,
        &generated.private_pem,
        &DkimSettings::default().headers,
    )
    .unwrap();
    let dns = DnsServer::start([Zone::new("test.").txt(&generated.dns_name, &generated.dns_txt)])
        .await
        .unwrap();
    let sub = MESSAGE.replace("alice@example.test", "alice@news.example.test");
    let mut signed = signer.sign(sub.as_bytes()).expect("subdomain signed");
    signed.extend_from_slice(sub.as_bytes());
    assert_eq!(
        verify(&dns, &signed).await,
        vec![("w1".to_string(), DkimResult::Pass)]
    );
}

#[test]
fn bad_key_files_are_startup_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let missing = dir.path().join("missing.pem");
    let domain = Domain::parse("example.test").unwrap();
    let ed = generate_dkim_key(&domain, "s", DkimAlgorithm::Ed25519Sha256).unwrap();
    let ed_path = dir.path().join("ed.pem");
    std::fs::write(&ed_path, &ed.private_pem).unwrap();

    for (path, algorithm) in [
        (&garbage, DkimAlgorithm::RsaSha256),
        (&missing, DkimAlgorithm::RsaSha256),
        // An Ed25519 key configured as RSA.
        (&ed_path, DkimAlgorithm::RsaSha256),
    ] {
        let settings = DkimSettings {
            keys: vec![DkimKeyConfig {
                domain: "example.test".into(),
                selector: "s".into(),
                key_file: path.clone(),
                algorithm,
            }],
            ..DkimSettings::default()
        };
        let err = DkimSigner::load(&settings).unwrap_err();
        assert!(
            matches!(
                err,
                DkimConfigError::Read { .. } | DkimConfigError::Key { .. }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn pkcs1_rsa_keys_load() {
    // A PKCS#1 ("BEGIN RSA PRIVATE KEY") file, as `openssl genrsa -traditional` writes.
    let domain = Domain::parse("example.test").unwrap();
    let generated = generate_dkim_key(&domain, "s", DkimAlgorithm::RsaSha256).unwrap();
    let pkcs8 = rustls_pki_types_der(&generated.private_pem);
    let pkcs1 = pkcs1_from_pkcs8(&pkcs8);
    let pem = pem("RSA PRIVATE KEY", &pkcs1);
    let config = DkimKeyConfig {
        domain: "example.test".into(),
        selector: "s".into(),
        key_file: "pkcs1.pem".into(),
        algorithm: DkimAlgorithm::RsaSha256,
    };
    let signer = DkimSigner::from_pem(&config, &pem, &DkimSettings::default().headers).unwrap();
    assert_eq!(
        format!(
            "v=DKIM1; k=rsa; p={}",
            signer.public_keys()[0].public_key_base64
        ),
        generated.dns_txt
    );
}

fn rustls_pki_types_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// The OCTET STRING payload of a PKCS#8 PrivateKeyInfo (version, algorithm, privateKey).
fn pkcs1_from_pkcs8(der: &[u8]) -> Vec<u8> {
    fn header(b: &[u8]) -> (usize, usize) {
        // (header length, content length)
        let first = b[1];
        if first & 0x80 == 0 {
            (2, first as usize)
        } else {
            let n = (first & 0x7f) as usize;
            let mut len = 0;
            for byte in &b[2..2 + n] {
                len = (len << 8) | *byte as usize;
            }
            (2 + n, len)
        }
    }
    let (h, _) = header(der);
    let mut rest = &der[h..];
    for _ in 0..2 {
        // skip version INTEGER and AlgorithmIdentifier SEQUENCE
        let (h, len) = header(rest);
        rest = &rest[h + len..];
    }
    assert_eq!(rest[0], 0x04, "OCTET STRING");
    let (h, len) = header(rest);
    rest[h..h + len].to_vec()
}
