//! Typed errors of the crate.

use std::path::PathBuf;
use std::time::Duration;

/// A registry value that is not a usable Kitex instance.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Not JSON, or a field has the wrong JSON type.
    #[error("not a Kitex registry value: {source}")]
    Json {
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The `network` is not `tcp` (Sluice dials TCP only).
    #[error("network {network:?} is not supported (only \"tcp\")")]
    Network {
        /// The network the value names.
        network: String,
    },
    /// The `address` is not an `ip:port`.
    #[error("address {address:?} is not ip:port: {source}")]
    Address {
        /// The address the value names.
        address: String,
        /// Why it does not parse.
        #[source]
        source: std::net::AddrParseError,
    },
}

/// An [`EtcdConfig`](crate::EtcdConfig) that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No endpoint is configured.
    #[error("no etcd endpoint configured")]
    NoEndpoints,
    /// The key prefix is empty.
    #[error("the etcd key prefix is empty")]
    EmptyPrefix,
    /// A user name without a password, or a password without a user name.
    #[error("etcd username and password must be given together")]
    IncompleteCredentials,
    /// An `http://` endpoint while TLS is configured.
    #[error(
        "etcd endpoint {endpoint:?} is http:// but TLS is configured (use https:// or host:port)"
    )]
    PlainEndpointWithTls {
        /// The endpoint.
        endpoint: String,
    },
    /// A client certificate without its key, or a key without its certificate.
    #[error("the etcd client certificate and key must be given together")]
    IncompleteIdentity,
    /// A TLS file could not be read.
    #[error("reading {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// One failed etcd operation, as the background tasks see (and log) it.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The client library reported an error (transport, gRPC status, ...).
    #[error("etcd {op}: {source}")]
    Client {
        /// What was being done (`connect`, `get`, `watch`, ...).
        op: &'static str,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// The operation did not finish in time (etcd unreachable or stalled).
    #[error("etcd {op}: no answer within {timeout:?}")]
    Timeout {
        /// What was being done.
        op: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// A stream (watch, keep-alive) ended.
    #[error("etcd {op} stream closed")]
    StreamClosed {
        /// Which stream.
        op: &'static str,
    },
    /// The server cancelled the watch.
    #[error("etcd cancelled the watch: {reason}")]
    WatchCanceled {
        /// The server's reason.
        reason: String,
    },
    /// The watch start revision was compacted; the state must be read again.
    #[error("etcd compacted the watched revision (compact revision {compact_revision})")]
    Compacted {
        /// The oldest revision still available.
        compact_revision: i64,
    },
    /// The lease expired or was revoked.
    #[error("etcd lease {lease:x} is gone")]
    LeaseLost {
        /// The lease id.
        lease: i64,
    },
}
