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

mod access_log;
mod clients;
pub mod config;
pub mod error;
mod forwarder;
mod observe;
pub mod phases;
mod pingpong;
pub mod route;
mod silence;
mod stream;
pub mod trace;

use std::net::SocketAddr;
use std::sync::Arc;

use sluice_admin::Health;
use sluice_metrics::Metrics;
use sluice_server::layer::{Identity, Layer};
use sluice_server::{DefaultHandler, Drain, Server, StreamingHandler};
use tokio::net::TcpListener;

pub use clients::Clients;
pub use config::{AccessLog, Admin, Cluster, Config, ConfigError, Tracing};
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
    /// The admin listener, when `[admin]` is configured.
    admin: Option<TcpListener>,
    health: Arc<Health>,
}

impl Proxy {
    /// Binds every listener of `config`; requests go through the default phases.
    pub async fn bind(config: Config) -> std::io::Result<Proxy> {
        Self::bind_with(config, DefaultPhases).await
    }
}

impl<P: Phases> Proxy<P> {
    /// Binds every listener of `config` (and the admin listener, when `[admin]` is set: then
    /// metrics are kept too); requests and streams go through `phases`.
    pub async fn bind_with(config: Config, phases: P) -> std::io::Result<Proxy<P>> {
        let config = Arc::new(config);
        let admin = match &config.admin {
            Some(a) => Some(TcpListener::bind(a.address).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("admin listener on {}: {e}", a.address))
            })?),
            None => None,
        };
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
        let mut forwarder = Forwarder::with_phases(config.clone(), phases);
        if admin.is_some() {
            forwarder = forwarder.with_metrics(Metrics::new(config.metrics));
        }
        if let Some(log) = &config.access_log {
            forwarder = forwarder.with_access_log(log)?;
        }
        let forwarder = Arc::new(forwarder);
        let usable = {
            let (f, c) = (Arc::downgrade(&forwarder), config.clone());
            move || {
                f.upgrade()
                    .is_none_or(|f| f.clients().any_usable(&c.downstreams))
            }
        };
        Ok(Proxy {
            forwarder,
            config,
            bound,
            admin,
            health: Arc::new(Health::new().with_usable(usable)),
        })
    }

    /// Where the admin listener is bound, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// The health `/healthz` and `/readyz` report.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
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
        let metrics = self.forwarder.metrics().cloned();
        let mut tasks = tokio::task::JoinSet::new();
        for (l, tcp) in self.bound {
            let server = Server::new(self.config.server_config(&l), handler.clone())
                .with_streaming(handler.clone());
            if let Some(m) = &self.forwarder.metrics {
                m.listener_series(&l.name, server.stats());
            }
            tasks.spawn(server.serve(tcp, drain.clone()));
        }
        if let Some(m) = &self.forwarder.metrics {
            m.process_series(&self.health);
            // Weak: the forwarder owns the registry whose hook this is.
            let f = Arc::downgrade(&self.forwarder);
            m.pool_series(move || {
                f.upgrade()
                    .map(|f| f.clients().pool_counts())
                    .unwrap_or_default()
            });
        }
        // The admin listener outlives the drain: it answers `/readyz` with 503 while the
        // listeners drain, and stops once they are done.
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = self.admin.map(|listener| {
            let mut admin = sluice_admin::Admin::new(self.health.clone()).with_config({
                let c = self.config.clone();
                move || c.to_toml()
            });
            if let Some(m) = &metrics {
                admin = admin.with_metrics(m.clone());
            }
            tokio::spawn(sluice_admin::serve(listener, Arc::new(admin), async {
                let _ = admin_stopped.await;
            }))
        });
        self.health.set_serving();
        let mut draining = std::pin::pin!(drain.signaled());
        let mut drain_seen = false;
        loop {
            tokio::select! {
                () = &mut draining, if !drain_seen => {
                    drain_seen = true;
                    self.health.set_draining();
                }
                done = tasks.join_next() => if done.is_none() { break },
            }
        }
        let _ = admin_stop.send(());
        if let Some(a) = admin {
            let _ = a.await;
        }
    }
}
