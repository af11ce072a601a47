//! Self-signed certificates for the test peers (rcgen + rustls, aws-lc-rs).

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig, pki_types};

use crate::SinkError;

/// A freshly generated self-signed certificate and the acceptor using it.
pub(crate) struct TestCertificate {
    /// The certificate in PEM, for clients that want to trust it.
    pub(crate) cert_pem: String,
    /// The certificate in DER.
    pub(crate) cert_der: Vec<u8>,
    /// A TLS acceptor presenting the certificate.
    pub(crate) acceptor: TlsAcceptor,
}

/// Generates a certificate for `names` (DNS names or IP literals).
pub(crate) fn generate(names: Vec<String>) -> Result<TestCertificate, SinkError> {
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|e| SinkError::Tls(format!("certificate generation: {e}")))?;
    let cert_der = certified.cert.der().to_vec();
    let key_der = pki_types::PrivateKeyDer::Pkcs8(pki_types::PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    // An explicit provider: a process-wide default may be ambiguous when
    // several crypto back-ends are compiled in.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
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
