//! Sluice's proxy: configuration, routing, and the forwarding handler that joins the
//! binary-generic server to the generic clients.
//!
//! Ping-pong in, ping-pong out: a request is routed by service name, method and optional header
//! match (first match wins), sent with its args bytes untouched through the downstream's generic
//! client (created on first use), and the reply's bytes come back as they are. Errors are
//! rendered once, here, in the caller's protocol: no route is `UNKNOWN_METHOD`, an unreachable
//! or failing downstream is an `INTERNAL_ERROR` naming the downstream and the cause, a passed
//! deadline is an `INTERNAL_ERROR` that says so. Downstream exceptions and `biz-*` keys pass
//! through unchanged. A W3C `traceparent` that arrives is continued: the downstream gets one of
//! the same trace naming this hop as its parent ([`trace`]).
#![forbid(unsafe_code)]

mod clients;
pub mod config;
pub mod error;
mod forwarder;
pub mod phases;
mod pingpong;
pub mod route;
mod silence;
mod stream;
pub mod trace;

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_server::layer::{Identity, Layer};
use sluice_server::{DefaultHandler, Drain, Server, StreamingHandler};
use tokio::net::TcpListener;

pub use clients::Clients;
pub use config::{Cluster, Config, ConfigError};
pub use forwarder::{Forwarder, Stats};
pub use phases::{CallInfo, DefaultPhases, Metainfo, Phases};
pub use route::{Family, RequestHead, Router, Target};
pub use sluice_server::{ErrorKind, ProxyError};
pub use trace::TraceContext;

/// A bound, not yet serving, proxy.
#[derive(Debug)]
pub struct Proxy<P = DefaultPhases> {
    config: Arc<Config>,
    forwarder: Arc<Forwarder<P>>,
    bound: Vec<(config::Listener, TcpListener)>,
}

impl Proxy {
    /// Binds every listener of `config`; requests go through the default phases.
    pub async fn bind(config: Config) -> std::io::Result<Proxy> {
        Self::bind_with(config, DefaultPhases).await
    }
}

impl<P: Phases> Proxy<P> {
    /// Binds every listener of `config`; requests and streams go through `phases`.
    pub async fn bind_with(config: Config, phases: P) -> std::io::Result<Proxy<P>> {
        let config = Arc::new(config);
        let mut bound = Vec::new();
        for l in &config.listeners {
            let tcp = sluice_server::bind_listener(l.address).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("listener {:?} on {}: {e}", l.name, l.address),
                )
            })?;
            bound.push((l.clone(), tcp));
        }
        Ok(Proxy {
            forwarder: Arc::new(Forwarder::with_phases(config.clone(), phases)),
            config,
            bound,
        })
    }

    /// Where each listener is bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.bound
            .iter()
            .filter_map(|(l, t)| t.local_addr().ok().map(|a| (l.name.clone(), a)))
            .collect()
    }

    /// The forwarding handler (for stats).
    pub fn forwarder(&self) -> Arc<Forwarder<P>> {
        self.forwarder.clone()
    }

    /// Serves until `drain` is signalled and every listener has drained.
    pub async fn serve(self, drain: Drain) {
        self.serve_layered(drain, Identity::new()).await
    }

    /// Serves like [`serve`](Self::serve), with every ping-pong request and stream handled by
    /// `layer` wrapped around the forwarder (see [`sluice_server::layer`]).
    pub async fn serve_layered<L>(self, drain: Drain, layer: L)
    where
        L: Layer<Arc<Forwarder<P>>>,
        L::Service: DefaultHandler + StreamingHandler,
    {
        let handler = Arc::new(layer.layer(self.forwarder.clone()));
        let mut tasks = tokio::task::JoinSet::new();
        for (l, tcp) in self.bound {
            let server = Server::new(self.config.server_config(&l), handler.clone())
                .with_streaming(handler.clone());
            tasks.spawn(server.serve(tcp, drain.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }
}
