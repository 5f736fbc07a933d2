//! Opening a connection, and bounding every etcd call in time.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::{EtcdConfig, EtcdError};

/// HTTP/2 PING interval on the connection while a stream (watch, keep-alive) is open. etcd
/// answers GOAWAY to pings more often than every 5 s (`--grpc-keepalive-min-time`), so not less.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a PING may go unanswered before the connection counts as dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `fut`, failing with [`EtcdError::Timeout`] after `limit` and mapping the client's error.
pub(crate) async fn timed<T>(
    op: &'static str,
    limit: Duration,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(EtcdError::Client { op, source }),
        Err(_) => Err(EtcdError::Timeout { op, timeout: limit }),
    }
}

/// A new client for `config`. Every failure (and every stream that breaks) makes the caller
/// drop its client and open a new one: a fresh connection is the simplest reliable recovery.
pub(crate) async fn connect(config: &EtcdConfig) -> Result<Client, EtcdError> {
    config.validate()?;
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.connect_timeout)
        .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        // Without an open stream etcd rejects pings (GOAWAY too_many_pings).
        .with_keep_alive_while_idle(false)
        // A member cut off from the leader fails requests and cancels watches instead of
        // serving stale data, so the task reconnects (possibly to another endpoint).
        .with_require_leader(true);
    if let (Some(user), Some(password)) = (&config.username, &config.password) {
        options = options
            .with_user(user.clone(), password.clone())
            .with_auto_token_refresh(true);
    }
    if let Some(tls) = &config.tls {
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
        if let (Some(cert), Some(key)) = (&tls.client_cert_pem, &tls.client_key_pem) {
            t = t.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &tls.server_name {
            t = t.domain_name(name.clone());
        }
        options = options.with_tls(t);
    }
    let endpoints: Vec<&str> = config
        .endpoints
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .collect();
    // Connecting is lazy, except for the authentication request when credentials are set.
    let limit = config.connect_timeout + config.request_timeout;
    timed("connect", limit, Client::connect(endpoints, Some(options))).await
}
