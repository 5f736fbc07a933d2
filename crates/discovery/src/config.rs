//! How to reach etcd.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::kitex::DEFAULT_PREFIX;
use crate::ConfigError;

/// Where etcd is and how to talk to it. Shared (in an `Arc`) by every [`Watcher`](crate::Watcher)
/// and [`Registration`](crate::Registration) of a process; each of them opens its own
/// connection.
#[derive(Clone)]
pub struct EtcdConfig {
    /// etcd client endpoints, `host:port` or `http://host:port` (`https://host:port`, or
    /// `host:port` with [`tls`](Self::tls) set, for TLS).
    pub endpoints: Vec<String>,
    /// Key prefix; Kitex's is [`DEFAULT_PREFIX`] (`kitex/registry-etcd`). A trailing `/` is
    /// ignored.
    pub prefix: String,
    /// User name for etcd authentication (with [`password`](Self::password)).
    pub username: Option<String>,
    /// Password for etcd authentication (with [`username`](Self::username)).
    pub password: Option<String>,
    /// Limit for establishing a connection to an endpoint.
    pub connect_timeout: Duration,
    /// Limit for each request (Get, Put, lease grant, ...) and for a stalled stream to answer a
    /// liveness probe.
    pub request_timeout: Duration,
    /// TLS to etcd; `None` for plain HTTP/2.
    pub tls: Option<EtcdTls>,
}

impl Default for EtcdConfig {
    /// `127.0.0.1:2379`, the Kitex prefix, no authentication, no TLS, 3 s to connect, 5 s per
    /// request.
    fn default() -> EtcdConfig {
        EtcdConfig {
            endpoints: vec!["127.0.0.1:2379".to_string()],
            prefix: DEFAULT_PREFIX.to_string(),
            username: None,
            password: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            tls: None,
        }
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

impl EtcdConfig {
    /// Checks what can be checked without contacting etcd: at least one endpoint, a non-empty
    /// prefix, credentials and TLS identity given in pairs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.endpoints.iter().all(|e| e.trim().is_empty()) {
            return Err(ConfigError::NoEndpoints);
        }
        if self.prefix.trim_end_matches('/').is_empty() {
            return Err(ConfigError::EmptyPrefix);
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(ConfigError::IncompleteCredentials);
        }
        if let Some(tls) = &self.tls {
            if tls.client_cert_pem.is_some() != tls.client_key_pem.is_some() {
                return Err(ConfigError::IncompleteIdentity);
            }
            if let Some(e) = self
                .endpoints
                .iter()
                .find(|e| e.trim().starts_with("http://"))
            {
                return Err(ConfigError::PlainEndpointWithTls {
                    endpoint: e.clone(),
                });
            }
        }
        Ok(())
    }
}

/// TLS to etcd (rustls with ring). The server certificate is verified against
/// [`ca_pem`](Self::ca_pem) only (the system roots are not used, as etcd clusters normally have
/// their own CA).
#[derive(Clone)]
pub struct EtcdTls {
    /// PEM certificate(s) of the CA that signed etcd's server certificates.
    pub ca_pem: Vec<u8>,
    /// PEM client certificate (chain), for etcd's `--client-cert-auth`.
    pub client_cert_pem: Option<Vec<u8>>,
    /// PEM private key of [`client_cert_pem`](Self::client_cert_pem).
    pub client_key_pem: Option<Vec<u8>>,
    /// The name to check the server certificate against, when it is not the endpoint's host.
    pub server_name: Option<String>,
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("client_cert", &self.client_cert_pem.is_some())
            .field(
                "client_key",
                &self.client_key_pem.as_ref().map(|_| "<redacted>"),
            )
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl EtcdTls {
    /// Reads the CA and, optionally, a client certificate and key from PEM files.
    pub fn from_files(
        ca: &Path,
        client_cert: Option<&Path>,
        client_key: Option<&Path>,
    ) -> Result<EtcdTls, ConfigError> {
        if client_cert.is_some() != client_key.is_some() {
            return Err(ConfigError::IncompleteIdentity);
        }
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| ConfigError::ReadFile {
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(EtcdTls {
            ca_pem: read(ca)?,
            client_cert_pem: client_cert.map(read).transpose()?,
            client_key_pem: client_key.map(read).transpose()?,
            server_name: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(EtcdConfig::default().validate().is_ok());
        let c = EtcdConfig {
            endpoints: vec![],
            ..EtcdConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::NoEndpoints)));
        let c = EtcdConfig {
            prefix: "/".into(),
            ..EtcdConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::EmptyPrefix)));
        let c = EtcdConfig {
            username: Some("u".into()),
            ..EtcdConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::IncompleteCredentials)
        ));
        let c = EtcdConfig {
            tls: Some(EtcdTls {
                ca_pem: vec![],
                client_cert_pem: Some(vec![]),
                client_key_pem: None,
                server_name: None,
            }),
            ..EtcdConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::IncompleteIdentity)));
        let tls = EtcdTls {
            ca_pem: vec![],
            client_cert_pem: None,
            client_key_pem: None,
            server_name: None,
        };
        let c = EtcdConfig {
            endpoints: vec!["http://10.0.0.1:2379".into()],
            tls: Some(tls.clone()),
            ..EtcdConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::PlainEndpointWithTls { .. })
        ));
        let c = EtcdConfig {
            endpoints: vec!["https://10.0.0.1:2379".into(), "10.0.0.2:2379".into()],
            tls: Some(tls),
            ..EtcdConfig::default()
        };
        assert!(c.validate().is_ok());
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let c = EtcdConfig {
            username: Some("root".into()),
            password: Some("hunter2".into()),
            tls: Some(EtcdTls {
                ca_pem: b"ca".to_vec(),
                client_cert_pem: Some(b"cert".to_vec()),
                client_key_pem: Some(b"PRIVATE KEY".to_vec()),
                server_name: None,
            }),
            ..EtcdConfig::default()
        };
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2") && !s.contains("PRIVATE"), "{s}");
        assert!(s.contains("root"));
    }

    #[test]
    fn missing_tls_file_is_a_typed_error() {
        let e = EtcdTls::from_files(Path::new("/nonexistent/ca.pem"), None, None).unwrap_err();
        assert!(matches!(e, ConfigError::ReadFile { .. }));
        let e = EtcdTls::from_files(Path::new("/x"), Some(Path::new("/y")), None).unwrap_err();
        assert!(matches!(e, ConfigError::IncompleteIdentity));
    }
}
