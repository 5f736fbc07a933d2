//! TLS on the client side of a connection: what a downstream's certificate is checked against,
//! the client's own certificate, and the stream that carries either plain TCP or TLS.
//!
//! Rustls with the ring provider, TLS 1.2 and 1.3, as on Sluice's listeners. There are no
//! built-in roots: the CAs a downstream's certificate is checked against are always given.

use std::fmt;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Which part of a client's TLS settings a [`ClientTlsError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTlsPart {
    /// The CA bundle.
    Ca,
    /// The client certificate chain.
    Cert,
    /// The client certificate's private key.
    Key,
    /// The name the server's certificate is checked against.
    ServerName,
}

/// Why a client's TLS settings could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientTlsError {
    /// A file could not be read.
    #[error("cannot read {path:?}: {source}")]
    Read {
        /// What the file holds.
        part: ClientTlsPart,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The PEM text is malformed.
    #[error("bad PEM{}: {source}", at(path))]
    BadPem {
        /// What the text holds.
        part: ClientTlsPart,
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// No certificate was found where one is needed.
    #[error("no certificate{}", at(path))]
    NoCertificate {
        /// The CA bundle or the client certificate.
        part: ClientTlsPart,
        /// The file, when read from one.
        path: Option<PathBuf>,
    },
    /// A CA certificate was refused as a trust anchor.
    #[error("unusable CA certificate{}: {source}", at(path))]
    BadCa {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// Why.
        source: rustls::Error,
    },
    /// The client certificate and key do not fit together, or the provider refused them.
    #[error("client certificate and key do not fit: {0}")]
    Identity(#[source] rustls::Error),
    /// The crypto provider offers none of the protocol versions asked for.
    #[error("TLS provider: {0}")]
    Provider(#[source] rustls::Error),
    /// The server name is neither a DNS name nor an IP address.
    #[error("{0:?} is not a DNS name or an IP address")]
    ServerName(String),
}

fn at(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" in {p:?}"))
        .unwrap_or_default()
}

impl ClientTlsError {
    /// The part of the settings at fault.
    pub fn part(&self) -> ClientTlsPart {
        match self {
            ClientTlsError::Read { part, .. }
            | ClientTlsError::BadPem { part, .. }
            | ClientTlsError::NoCertificate { part, .. } => *part,
            ClientTlsError::BadCa { .. } | ClientTlsError::Provider(_) => ClientTlsPart::Ca,
            ClientTlsError::Identity(_) => ClientTlsPart::Cert,
            ClientTlsError::ServerName(_) => ClientTlsPart::ServerName,
        }
    }
}

/// The files a [`ClientTls`] was read from, as given (for showing the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The CA bundle.
    pub ca: PathBuf,
    /// The client certificate chain and its key.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// What the settings were made from: two settings are equal when this is.
#[derive(PartialEq, Eq)]
struct Material {
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    files: Option<ClientTlsFiles>,
}

/// A client's TLS settings: the CAs a server's certificate must chain to, an optional client
/// certificate (for servers that ask for one), and the name the certificate is checked
/// against. Cheap to clone; connections made through clones share one session cache, so
/// reconnecting to a server resumes its session.
///
/// Two settings compare equal when they were made from the same PEM bytes, files and name:
/// settings read again from files whose contents changed are different.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<ServerName<'static>>,
    material: Arc<Material>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No key material in logs or configuration dumps.
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field("client_auth", &self.material.identity.is_some())
            .field("files", &self.material.files)
            .field("alpn", &self.config.alpn_protocols)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        self.material == other.material
            && self.server_name == other.server_name
            && self.config.alpn_protocols == other.config.alpn_protocols
    }
}

fn certs(
    part: ClientTlsPart,
    pem: &[u8],
    path: Option<&Path>,
) -> Result<Vec<CertificateDer<'static>>, ClientTlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|source| ClientTlsError::BadPem {
            part,
            path: path.map(Path::to_owned),
            source,
        })?;
    if certs.is_empty() {
        return Err(ClientTlsError::NoCertificate {
            part,
            path: path.map(Path::to_owned),
        });
    }
    Ok(certs)
}

fn read(part: ClientTlsPart, path: &Path) -> Result<Vec<u8>, ClientTlsError> {
    std::fs::read(path).map_err(|source| ClientTlsError::Read {
        part,
        path: path.to_owned(),
        source,
    })
}

impl ClientTls {
    /// Settings from PEM text: `ca`, the CA certificates a server's chain must lead to, and
    /// `identity`, a client certificate chain and its private key (PKCS#8, PKCS#1 or SEC1).
    /// A server is checked against the name set with
    /// [`with_server_name`](Self::with_server_name), else against the IP address dialled.
    pub fn from_pem(ca: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<Self, ClientTlsError> {
        Self::build(
            ca.to_vec(),
            identity.map(|(c, k)| (c.to_vec(), k.to_vec())),
            None,
        )
    }

    /// Settings from PEM files, as [`from_pem`](Self::from_pem); errors name the file.
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, ClientTlsError> {
        let ca_pem = read(ClientTlsPart::Ca, ca)?;
        let id = match identity {
            Some((c, k)) => Some((read(ClientTlsPart::Cert, c)?, read(ClientTlsPart::Key, k)?)),
            None => None,
        };
        let files = ClientTlsFiles {
            ca: ca.to_owned(),
            identity: identity.map(|(c, k)| (c.to_owned(), k.to_owned())),
        };
        Self::build(ca_pem, id, Some(files))
    }

    fn build(
        ca: Vec<u8>,
        identity: Option<(Vec<u8>, Vec<u8>)>,
        files: Option<ClientTlsFiles>,
    ) -> Result<Self, ClientTlsError> {
        let ca_path = files.as_ref().map(|f| f.ca.as_path());
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs(ClientTlsPart::Ca, &ca, ca_path)? {
            roots.add(cert).map_err(|source| ClientTlsError::BadCa {
                path: ca_path.map(Path::to_owned),
                source,
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(ClientTlsError::Provider)?
            .with_root_certificates(roots);
        let config = match &identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let id_files = files.as_ref().and_then(|f| f.identity.as_ref());
                let chain = certs(
                    ClientTlsPart::Cert,
                    cert,
                    id_files.map(|(c, _)| c.as_path()),
                )?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|source| {
                    ClientTlsError::BadPem {
                        part: ClientTlsPart::Key,
                        path: id_files.map(|(_, k)| k.clone()),
                        source,
                    }
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(ClientTlsError::Identity)?
            }
        };
        Ok(Self {
            config: Arc::new(config),
            server_name: None,
            material: Arc::new(Material {
                ca,
                identity,
                files,
            }),
        })
    }

    /// Checks servers' certificates against `name` (a DNS name, or an IP address for an IP
    /// SAN) instead of the IP address dialled.
    pub fn with_server_name(mut self, name: &str) -> Result<Self, ClientTlsError> {
        let parsed = ServerName::try_from(name.to_owned())
            .map_err(|_| ClientTlsError::ServerName(name.to_owned()))?;
        self.server_name = Some(parsed);
        Ok(self)
    }

    /// The same settings offering `protocols` in ALPN (gRPC clients offer `h2`).
    pub fn with_alpn(mut self, protocols: &[&[u8]]) -> Self {
        let mut config = (*self.config).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        self.config = Arc::new(config);
        self
    }

    /// The name servers' certificates are checked against, when one was set.
    pub fn server_name(&self) -> Option<String> {
        self.server_name.as_ref().map(|n| n.to_str().into_owned())
    }

    /// The files the settings were read from, when they were.
    pub fn files(&self) -> Option<&ClientTlsFiles> {
        self.material.files.as_ref()
    }

    /// True when a client certificate is presented to servers that ask for one.
    pub fn has_client_cert(&self) -> bool {
        self.material.identity.is_some()
    }

    /// Runs the TLS handshake on `tcp`, a connection to `addr`. The error is rustls's reason
    /// (an unknown issuer, an expired certificate, a name mismatch, an alert from the server)
    /// as an I/O error.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
    }
}

/// A client connection: plain TCP or TLS over TCP.
///
/// Readers and writers that split the stream can keep TCP's owned halves for [`ClientIo::Tcp`]
/// (no lock per poll) and use [`tokio::io::split`] for TLS only.
#[derive(Debug)]
pub enum ClientIo {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP (boxed: the TLS state is large, and most connections are plain).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientIo::Tcp(s) => s.is_write_vectored(),
            ClientIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
