//! Sluice's proxy: configuration, routing, and the forwarding handler that joins the
//! binary-generic server to the generic clients.
//!
//! Ping-pong in, ping-pong out: a request is routed by service name, method and optional header
//! match (first match wins), sent with its args bytes untouched through the downstream's generic
//! client (created on first use), and the reply's bytes come back as they are. Errors are
//! rendered once, here, in the caller's protocol: no route is `UNKNOWN_METHOD`, an unreachable
//! or failing downstream is an `INTERNAL_ERROR` naming the downstream and the cause, a passed
//! deadline is an `INTERNAL_ERROR` that says so. Downstream exceptions and `biz-*` keys pass
//! through unchanged.
#![forbid(unsafe_code)]

pub mod config;
mod forward;
mod silence;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_server::{Drain, Server, ServerConfig};
use tokio::net::TcpListener;

pub use config::{Cluster, Config, ConfigError};
pub use forward::Forwarder;

/// A bound, not yet serving, proxy.
#[derive(Debug)]
pub struct Proxy {
    config: Arc<Config>,
    forwarder: Arc<Forwarder>,
    bound: Vec<(config::Listener, TcpListener)>,
}

impl Proxy {
    /// Binds every listener of `config`.
    pub async fn bind(config: Config) -> std::io::Result<Proxy> {
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
            forwarder: Arc::new(Forwarder::new(config.clone())),
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
    pub fn forwarder(&self) -> Arc<Forwarder> {
        self.forwarder.clone()
    }

    /// Serves until `drain` is signalled and every listener has drained.
    pub async fn serve(self, drain: Drain) {
        let mut tasks = tokio::task::JoinSet::new();
        for (l, tcp) in self.bound {
            let limits = &self.config.limits;
            let sc = ServerConfig {
                name: l.name.clone(),
                sniff_timeout: limits.sniff_timeout,
                idle_timeout: limits.idle_timeout,
                max_frame_size: limits.max_frame_size,
                max_in_flight_per_conn: limits.max_in_flight_per_conn,
                max_connections: limits.max_connections,
                default_service: l.default_service.clone(),
                drain_grace: limits.drain_grace,
                frame_timeout: limits.frame_timeout,
                max_streams_per_conn: limits.max_streams_per_conn,
                cluster: l.cluster,
                tls: l.tls.clone(),
            };
            let server =
                Server::new(sc, self.forwarder.clone()).with_streaming(self.forwarder.clone());
            let drain = drain.clone();
            tasks.spawn(server.serve(tcp, drain));
        }
        while tasks.join_next().await.is_some() {}
    }
}
