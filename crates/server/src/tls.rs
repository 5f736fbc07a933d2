//! TLS for a listener, without a TLS library's types in Sluice's API.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;

/// A listener's TLS settings: a certificate chain and its private key, offering ALPN `h2`
/// (TLS is for gRPC listeners). Cheap to clone.
#[derive(Clone)]
pub struct TlsConfig {
    pub(crate) inner: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key never appears in logs or config dumps.
        f.debug_struct("TlsConfig")
            .field("alpn", &self.inner.alpn_protocols)
            .finish_non_exhaustive()
    }
}

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file could not be read.
    #[error("cannot read {path:?}: {source}")]
    ReadCert {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The certificate file holds malformed PEM.
    #[error("bad PEM in {path:?}: {source}")]
    BadCert {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate in {path:?}")]
    NoCert {
        /// The file.
        path: PathBuf,
    },
    /// No private key could be read from the key file.
    #[error("cannot read a private key from {path:?}: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The certificate and the key do not belong together, or the crypto provider refused
    /// them.
    #[error("certificate and key do not fit: {0}")]
    Mismatch(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl TlsError {
    /// True when the certificate (not the key) is at fault.
    pub fn is_cert(&self) -> bool {
        matches!(
            self,
            TlsError::ReadCert { .. } | TlsError::BadCert { .. } | TlsError::NoCert { .. }
        )
    }
}

impl TlsConfig {
    /// Reads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| TlsError::ReadCert {
                path: cert.to_owned(),
                source: e.into(),
            })?
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::BadCert {
                path: cert.to_owned(),
                source: e.into(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCert {
                path: cert.to_owned(),
            });
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
            path: key.to_owned(),
            source: e.into(),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Mismatch(e.into()))?
            .with_no_client_auth()
            .with_single_cert(certs, key_der)
            .map_err(|e| TlsError::Mismatch(e.into()))?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            inner: Arc::new(cfg),
        })
    }
}
