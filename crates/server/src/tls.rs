//! TLS for a listener, without a TLS library's types in Sluice's API.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;

/// A listener's TLS settings: a certificate chain and its private key, the ALPN protocols
/// offered, and, for mutual TLS, the CAs client certificates are checked against. Cheap to
/// clone.
///
/// After the handshake the decrypted stream is sniffed and served like a plain connection, so
/// TLS carries every protocol family the listener serves.
#[derive(Clone)]
pub struct TlsConfig {
    pub(crate) inner: Arc<rustls::ServerConfig>,
    client_auth: Option<ClientAuth>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key never appears in logs or config dumps.
        f.debug_struct("TlsConfig")
            .field("alpn", &self.inner.alpn_protocols)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

/// Whether a listener with a client CA bundle insists on a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// A client without a certificate is refused in the handshake (the default).
    #[default]
    Required,
    /// A client may present no certificate; one it presents must chain to the bundle.
    Optional,
}

impl ClientAuth {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Required => "required",
            ClientAuth::Optional => "optional",
        }
    }
}

/// Builds a [`TlsConfig`]: from [`TlsConfig::builder`], then [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct TlsConfigBuilder {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<(PathBuf, ClientAuth)>,
    alpn: Vec<Vec<u8>>,
}

impl TlsConfigBuilder {
    /// Checks client certificates against the PEM bundle `ca` (mutual TLS); `auth` says
    /// whether a client must present one.
    pub fn client_ca(mut self, ca: &Path, auth: ClientAuth) -> Self {
        self.client_ca = Some((ca.to_owned(), auth));
        self
    }

    /// The ALPN protocols offered, in order of preference. Default `h2` (gRPC); an empty list
    /// offers none, and a client's offer is then ignored rather than refused (TTStream and
    /// ping-pong have no ALPN name).
    pub fn alpn(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// Reads the files and makes the settings.
    pub fn build(self) -> Result<TlsConfig, TlsError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::PrivateKeyDer;
        let certs = read_certs(
            &self.cert,
            |path, source| TlsError::ReadCert { path, source },
            |path, source| TlsError::BadCert { path, source },
        )?;
        if certs.is_empty() {
            return Err(TlsError::NoCert { path: self.cert });
        }
        let key_der = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| TlsError::Key {
            path: self.key.clone(),
            source: e.into(),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Mismatch(e.into()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some((ca, auth)) => {
                let cas = read_certs(
                    ca,
                    |path, source| TlsError::ReadClientCa { path, source },
                    |path, source| TlsError::BadClientCa { path, source },
                )?;
                if cas.is_empty() {
                    return Err(TlsError::NoClientCa { path: ca.clone() });
                }
                let mut roots = rustls::RootCertStore::empty();
                for c in cas {
                    roots.add(c).map_err(|e| TlsError::BadClientCa {
                        path: ca.clone(),
                        source: e.into(),
                    })?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                );
                let verifier = match auth {
                    ClientAuth::Required => verifier,
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                };
                let verifier = verifier.build().map_err(|e| TlsError::BadClientCa {
                    path: ca.clone(),
                    source: e.into(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut cfg = builder
            .with_single_cert(certs, key_der)
            .map_err(|e| TlsError::Mismatch(e.into()))?;
        cfg.alpn_protocols = self.alpn;
        Ok(TlsConfig {
            inner: Arc::new(cfg),
            client_auth: self.client_ca.map(|(_, auth)| auth),
        })
    }
}

/// The certificates of a PEM file, with the error each failure makes: the file cannot be
/// read, or its PEM is malformed.
fn read_certs(
    path: &Path,
    unreadable: impl FnOnce(PathBuf, Box<dyn std::error::Error + Send + Sync>) -> TlsError,
    malformed: impl FnOnce(PathBuf, Box<dyn std::error::Error + Send + Sync>) -> TlsError,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(path.to_owned(), e.into()))?
        .collect::<Result<_, _>>()
        .map_err(|e| malformed(path.to_owned(), e.into()))
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
    /// The client CA bundle could not be read.
    #[error("cannot read {path:?}: {source}")]
    ReadClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The client CA bundle holds no certificate.
    #[error("no certificate in the client CA bundle {path:?}")]
    NoClientCa {
        /// The file.
        path: PathBuf,
    },
    /// The client CA bundle holds malformed PEM, or a certificate that cannot be a trust
    /// anchor.
    #[error("bad client CA bundle {path:?}: {source}")]
    BadClientCa {
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
    /// True when the certificate (not the key or the client CA bundle) is at fault.
    pub fn is_cert(&self) -> bool {
        matches!(
            self,
            TlsError::ReadCert { .. } | TlsError::BadCert { .. } | TlsError::NoCert { .. }
        )
    }

    /// True when the client CA bundle is at fault.
    pub fn is_client_ca(&self) -> bool {
        matches!(
            self,
            TlsError::ReadClientCa { .. }
                | TlsError::NoClientCa { .. }
                | TlsError::BadClientCa { .. }
        )
    }
}

impl TlsConfig {
    /// Reads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1), offering
    /// ALPN `h2` and asking for no client certificate.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Self::builder(cert, key).build()
    }

    /// Settings from a PEM certificate chain and private key, to complete with client
    /// authentication and ALPN; by default ALPN `h2` and no client certificate asked for.
    pub fn builder(cert: &Path, key: &Path) -> TlsConfigBuilder {
        TlsConfigBuilder {
            cert: cert.to_owned(),
            key: key.to_owned(),
            client_ca: None,
            alpn: vec![b"h2".to_vec()],
        }
    }

    /// Whether client certificates are checked, and if so, required or optional.
    pub fn client_auth(&self) -> Option<ClientAuth> {
        self.client_auth
    }

    /// The ALPN protocols offered.
    pub fn alpn(&self) -> &[Vec<u8>] {
        &self.inner.alpn_protocols
    }
}
