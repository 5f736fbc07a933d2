//! Reloading the configuration while serving: on SIGHUP (the binary), `POST /reload` (the
//! admin listener), or a change of the file (`sluice run --watch`).
//!
//! A reload reads and checks the whole file first; a bad one changes nothing. Then new
//! listeners are bound (if one cannot be, nothing changes either), the routes, downstreams and
//! discovery settings are swapped at once (requests in flight finish on the snapshot they
//! started with), removed listeners drain, and downstreams whose settings did not change keep
//! their clients, pools and streams.

use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

use crate::config::ConfigError;

/// Why a reload was refused. The configuration in force stays.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The proxy was not given the file it was configured from.
    #[error("the proxy was not started from a configuration file")]
    NoFile,
    /// The new configuration is not valid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A listener the new configuration adds could not be bound.
    #[error("listener {listener:?} on {address}: {source}")]
    Bind {
        /// The listener's name.
        listener: String,
        /// Its address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A change the running proxy cannot make.
    #[error("{key}: {what} needs a restart")]
    NeedsRestart {
        /// The key that changed.
        key: String,
        /// What it is.
        what: &'static str,
    },
    /// The proxy is no longer serving.
    #[error("the proxy is not serving")]
    Stopped,
}

/// A request to reload, answered when done.
pub(crate) type Request = oneshot::Sender<Result<(), ReloadError>>;

/// Asks a serving [`Proxy`](crate::Proxy) to reload its configuration file. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    pub(crate) tx: mpsc::Sender<Request>,
    pub(crate) path: Option<PathBuf>,
}

impl ReloadHandle {
    /// Reloads the file and waits for the outcome.
    pub async fn reload(&self) -> Result<(), ReloadError> {
        if self.path.is_none() {
            return Err(ReloadError::NoFile);
        }
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).await.map_err(|_| ReloadError::Stopped)?;
        rx.await.map_err(|_| ReloadError::Stopped)?
    }

    /// The file reloads read.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }
}
