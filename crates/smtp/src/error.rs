//! Errors of the SMTP server API.

/// Why the server could not be built or a listener could not be served.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// A setting is unusable (message says which).
    #[error("invalid SMTP settings: {0}")]
    InvalidSettings(String),
    /// An implicit-TLS listener was requested but no certificate is configured.
    #[error("implicit TLS listener requires a TLS certificate")]
    TlsNotConfigured,
}
