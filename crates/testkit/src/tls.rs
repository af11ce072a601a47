//! Self-signed certificates for the test peers (rcgen + rustls, aws-lc-rs).

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig, pki_types};

use crate::SinkError;

/// A TLS protocol version a test peer may offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

impl TlsVersion {
    /// The version rustls negotiated, when it is one of these.
    pub(crate) fn of(version: rustls::ProtocolVersion) -> Option<Self> {
        match version {
            rustls::ProtocolVersion::TLSv1_2 => Some(TlsVersion::Tls12),
            rustls::ProtocolVersion::TLSv1_3 => Some(TlsVersion::Tls13),
            _ => None,
        }
    }

    /// The version's rustls counterpart.
    fn rustls(self) -> &'static rustls::SupportedProtocolVersion {
        match self {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        }
    }
}

impl std::fmt::Display for TlsVersion {
    /// `TLSv1.2`, `TLSv1.3`: the names OpenSSL logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        })
    }
}

/// How a test peer's TLS server behaves.
#[derive(Clone, Debug)]
pub(crate) struct TlsOptions {
    /// The versions offered (both by default).
    pub(crate) versions: Vec<TlsVersion>,
    /// Accept only the P-384 key exchange, which clients do not send a key share for first, so
    /// that a TLS 1.3 handshake starts with a HelloRetryRequest.
    pub(crate) hello_retry: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            versions: vec![TlsVersion::Tls12, TlsVersion::Tls13],
            hello_retry: false,
        }
    }
}

/// A freshly generated self-signed certificate and the acceptor using it.
pub(crate) struct TestCertificate {
    /// The certificate in PEM, for clients that want to trust it.
    pub(crate) cert_pem: String,
    /// The certificate in DER.
    pub(crate) cert_der: Vec<u8>,
    /// A TLS acceptor presenting the certificate.
    pub(crate) acceptor: TlsAcceptor,
}

/// Generates a certificate for `names` (DNS names or IP literals) and a server using it.
pub(crate) fn generate(
    names: Vec<String>,
    options: &TlsOptions,
) -> Result<TestCertificate, SinkError> {
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|e| SinkError::Tls(format!("certificate generation: {e}")))?;
    let cert_der = certified.cert.der().to_vec();
    let key_der = pki_types::PrivateKeyDer::Pkcs8(pki_types::PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    // An explicit provider: a process-wide default may be ambiguous when
    // several crypto back-ends are compiled in.
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if options.hello_retry {
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::SECP384R1];
    }
    let versions: Vec<_> = options.versions.iter().map(|v| v.rustls()).collect();
    let config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&versions)
        .map_err(|e| SinkError::Tls(format!("protocol versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(
            vec![pki_types::CertificateDer::from(cert_der.clone())],
            key_der,
        )
        .map_err(|e| SinkError::Tls(format!("server config: {e}")))?;
    Ok(TestCertificate {
        cert_pem: certified.cert.pem(),
        cert_der,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    })
}
