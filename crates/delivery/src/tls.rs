//! Trust material for outbound TLS: the roots, the after-the-fact chain check that records
//! whether a certificate would have verified, and the rustls client configuration of implicit-TLS
//! sessions (lettre cannot run implicit TLS over a stream it did not open itself).

use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};

/// Trust material for outbound TLS.
#[derive(Debug)]
pub(crate) struct TlsTrust {
    /// Extra roots from `ca_file` (DER).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Checks chains after the fact when certificates are not verified during the handshake, to
    /// record whether they would have verified.
    verifier: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    /// Client configuration of implicit-TLS sessions, under the same verification policy as
    /// STARTTLS; an error text when it could not be built.
    implicit: Result<Arc<rustls::ClientConfig>, String>,
    /// Client configuration that always verifies (MTA-STS policy fetches over HTTPS).
    verifying: Result<Arc<rustls::ClientConfig>, String>,
}

/// Why a certificate chain does not authenticate a host, as RFC 8460 names the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CertFailure {
    /// The certificate is not valid for the host name (`certificate-host-mismatch`).
    HostMismatch,
    /// The certificate has expired or is not valid yet (`certificate-expired`).
    Expired,
    /// The chain does not lead to a trusted root (`certificate-not-trusted`).
    NotTrusted,
    /// Anything else wrong with it, or no certificate at all (`validation-failure`).
    Invalid,
}

impl CertFailure {
    /// The RFC 8460 result type.
    pub(crate) fn result_type(self) -> &'static str {
        match self {
            CertFailure::HostMismatch => "certificate-host-mismatch",
            CertFailure::Expired => "certificate-expired",
            CertFailure::NotTrusted => "certificate-not-trusted",
            CertFailure::Invalid => "validation-failure",
        }
    }

    /// What is wrong, for replies and logs.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            CertFailure::HostMismatch => "its certificate is not valid for its name",
            CertFailure::Expired => "its certificate has expired or is not valid yet",
            CertFailure::NotTrusted => "its certificate is not issued by a trusted authority",
            CertFailure::Invalid => "its certificate does not validate",
        }
    }

    /// The failure a rustls certificate error stands for.
    pub(crate) fn of(e: &rustls::Error) -> CertFailure {
        use rustls::CertificateError as C;
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                C::NotValidForName | C::NotValidForNameContext { .. } => CertFailure::HostMismatch,
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => CertFailure::Expired,
                // A bad signature means the issuer named is not the trusted one that signs
                // under that name: no chain to a trusted root either.
                C::UnknownIssuer | C::BadSignature => CertFailure::NotTrusted,
                _ => CertFailure::Invalid,
            },
            _ => CertFailure::Invalid,
        }
    }
}

impl TlsTrust {
    /// Builds the trust store: webpki roots plus `extra_roots`. With `verify_certificates`,
    /// implicit-TLS handshakes fail on a certificate that does not verify; without, any
    /// certificate is accepted (and whether it verified is recorded).
    pub(crate) fn new(
        extra_roots: Vec<CertificateDer<'static>>,
        verify_certificates: bool,
    ) -> Self {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for c in &extra_roots {
            let _ = roots.add(c.clone());
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::clone(&roots),
            Arc::clone(&provider),
        )
        .build()
        .ok();
        let implicit = implicit_config(
            Arc::clone(&roots),
            Arc::clone(&provider),
            verify_certificates,
        )
        .map(Arc::new)
        .map_err(|e| e.to_string());
        let verifying = implicit_config(roots, provider, true)
            .map(Arc::new)
            .map_err(|e| e.to_string());
        TlsTrust {
            extra_roots,
            verifier,
            implicit,
            verifying,
        }
    }

    /// A client configuration that verifies certificates against the trusted roots.
    pub(crate) fn verifying_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.verifying.clone()
    }

    /// Checks that `chain` (leaf first) authenticates host `name`, and says why not.
    pub(crate) fn check(&self, chain: &[Vec<u8>], name: &str) -> Result<(), CertFailure> {
        let (Some(verifier), Some((leaf, rest))) = (&self.verifier, chain.split_first()) else {
            return Err(CertFailure::Invalid);
        };
        let server_name =
            ServerName::try_from(name.to_owned()).map_err(|_| CertFailure::HostMismatch)?;
        let leaf = CertificateDer::from(leaf.as_slice());
        let intermediates: Vec<_> = rest
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        verifier
            .verify_server_cert(&leaf, &intermediates, &server_name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| CertFailure::of(&e))
    }

    /// The client configuration of implicit-TLS sessions.
    pub(crate) fn implicit_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.implicit.clone()
    }

    /// Whether `chain` (leaf first) verifies for `name`.
    pub(crate) fn verifies(&self, chain: &[Vec<u8>], name: &str) -> bool {
        self.check(chain, name).is_ok()
    }
}

/// TLS 1.2 and 1.3 (as lettre offers for STARTTLS), verifying against `roots` or accepting any
/// certificate.
fn implicit_config(
    roots: Arc<rustls::RootCertStore>,
    provider: Arc<CryptoProvider>,
    verify_certificates: bool,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = if verify_certificates {
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider }))
    };
    Ok(builder.with_no_client_auth())
}

/// Accepts any server certificate (opportunistic encryption without verification), while still
/// checking that the server holds the key of the certificate it presented.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_map_to_rfc_8460_result_types() {
        use rustls::CertificateError as C;
        let of = |c: C| CertFailure::of(&rustls::Error::InvalidCertificate(c)).result_type();
        assert_eq!(of(C::NotValidForName), "certificate-host-mismatch");
        assert_eq!(of(C::Expired), "certificate-expired");
        assert_eq!(of(C::NotValidYet), "certificate-expired");
        assert_eq!(of(C::UnknownIssuer), "certificate-not-trusted");
        assert_eq!(of(C::BadSignature), "certificate-not-trusted");
        assert_eq!(of(C::BadEncoding), "validation-failure");
        assert_eq!(
            CertFailure::of(&rustls::Error::DecryptError).result_type(),
            "validation-failure"
        );
    }

    #[test]
    fn an_empty_chain_does_not_authenticate() {
        let trust = TlsTrust::new(Vec::new(), false);
        assert_eq!(
            trust.check(&[], "mx.example.test"),
            Err(CertFailure::Invalid)
        );
    }
}
