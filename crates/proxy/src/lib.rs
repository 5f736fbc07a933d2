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
mod convert;
mod discovery;
pub mod error;
mod forwarder;
mod observe;
pub mod phases;
mod pingpong;
pub mod reload;
pub mod route;
mod silence;
mod stream;
pub mod trace;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use sluice_admin::Health;
use sluice_metrics::Metrics;
use sluice_server::layer::{Identity, Layer};
use sluice_server::{DefaultHandler, Drain, DrainHandle, Server, StreamingHandler};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

pub use clients::Clients;
pub use config::{AccessLog, Admin, Cluster, Config, ConfigError, Tracing};
pub use forwarder::{Forwarder, State, Stats};
pub use phases::{CallInfo, DefaultPhases, Metainfo, Phases};
pub use reload::{ReloadError, ReloadHandle};
pub use route::{Family, Payload, RequestHead, Router, Target};
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
    /// Reload requests, and the file they read.
    reload_tx: mpsc::Sender<reload::Request>,
    reload_rx: mpsc::Receiver<reload::Request>,
    config_path: Option<PathBuf>,
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
            let f = Arc::downgrade(&forwarder);
            // The downstreams of the configuration in force (a reload may change them).
            move || {
                f.upgrade()
                    .is_none_or(|f| f.clients().any_usable(&f.config().downstreams))
            }
        };
        let (reload_tx, reload_rx) = mpsc::channel(4);
        Ok(Proxy {
            forwarder,
            config,
            bound,
            admin,
            health: Arc::new(Health::new().with_usable(usable)),
            reload_tx,
            reload_rx,
            config_path: None,
        })
    }

    /// The file the configuration was read from: reloads read it again.
    pub fn with_config_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_path = Some(path.into());
        self
    }

    /// A handle that asks the serving proxy to reload its file (see [`reload`]).
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            tx: self.reload_tx.clone(),
            path: self.config_path.clone(),
        }
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
        let mut run = Running {
            forwarder: self.forwarder.clone(),
            handler,
            config: self.config.clone(),
            servers: JoinSet::new(),
            listeners: BTreeMap::new(),
            sources: BTreeMap::new(),
            config_path: self.config_path.clone(),
        };
        for (l, tcp) in self.bound {
            run.start_listener(l, tcp);
        }
        run.start_sources(&BTreeMap::new(), &BTreeMap::new(), false);
        if let Some(m) = &self.forwarder.metrics {
            m.process_series(&self.health);
            // Weak: the forwarder owns the registry whose hook this is.
            let f = Arc::downgrade(&self.forwarder);
            m.pool_series(move || {
                f.upgrade()
                    .map(|f| f.clients().pool_counts())
                    .unwrap_or_default()
            });
            let f = Arc::downgrade(&self.forwarder);
            m.resilience_series(move || {
                f.upgrade()
                    .map(|f| f.clients().resilience_counts())
                    .unwrap_or_default()
            });
        }
        // The admin listener outlives the drain: it answers `/readyz` with 503 while the
        // listeners drain, and stops once they are done.
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = self.admin.map(|listener| {
            let f = self.forwarder.clone();
            let mut admin = sluice_admin::Admin::new(self.health.clone())
                .with_config(move || f.config().to_toml());
            if self.config_path.is_some() {
                let handle = ReloadHandle {
                    tx: self.reload_tx.clone(),
                    path: self.config_path.clone(),
                };
                admin = admin.with_reload(move || {
                    let handle = handle.clone();
                    async move {
                        handle
                            .reload()
                            .await
                            .map_err(|e| Box::new(e) as sluice_admin::ReloadError)
                    }
                });
            }
            if let Some(m) = &metrics {
                admin = admin.with_metrics(m.clone());
            }
            tokio::spawn(sluice_admin::serve(listener, Arc::new(admin), async {
                let _ = admin_stopped.await;
            }))
        });
        drop(self.reload_tx);
        let mut reloads = self.reload_rx;
        self.health.set_serving();
        let mut draining = std::pin::pin!(drain.signaled());
        let mut drain_seen = false;
        let mut sweep = tokio::time::interval(self.forwarder.discovered.sweep_every());
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if drain_seen && run.servers.is_empty() {
                break;
            }
            tokio::select! {
                () = &mut draining, if !drain_seen => {
                    drain_seen = true;
                    self.health.set_draining();
                    // Registrations go first, so Kitex clients stop picking this proxy before
                    // its connections close.
                    run.deregister_all().await;
                    tracing::info!("draining listeners");
                    for l in run.listeners.values() {
                        l.drain.drain();
                    }
                }
                // A listener removed by a reload, or every listener once drained.
                Some(_) = run.servers.join_next(), if !run.servers.is_empty() => {}
                Some(reply) = reloads.recv(), if !drain_seen => {
                    let outcome = run.reload().await;
                    if let Some(m) = &self.forwarder.metrics {
                        m.reloads
                            .with_label_values(&[if outcome.is_ok() { "ok" } else { "failed" }])
                            .inc();
                    }
                    match &outcome {
                        Ok(()) => tracing::info!("configuration reloaded"),
                        Err(e) => tracing::error!(error = %e, "configuration reload refused; the configuration in force stays"),
                    }
                    let _ = reply.send(outcome);
                }
                _ = sweep.tick() => self.forwarder.discovered.sweep(),
            }
        }
        run.sources.clear();
        let _ = admin_stop.send(());
        if let Some(a) = admin {
            let _ = a.await;
        }
    }
}

/// A listener being served: its own drain (so a reload can remove it), its registration.
struct ServedListener {
    config: config::Listener,
    /// Where it is bound.
    bound: Option<SocketAddr>,
    /// Its server's settings (limits, TLS): a reload replaces them for new connections.
    server: sluice_server::ConfigHandle,
    drain: DrainHandle,
    registration: Option<sluice_discovery::Registration>,
}

/// A downstream's endpoint source task (aborted when dropped).
struct SourceTask {
    task: AbortHandle,
}

impl Drop for SourceTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a serving proxy runs, and what a reload changes.
struct Running<P, H> {
    forwarder: Arc<Forwarder<P>>,
    handler: Arc<H>,
    config: Arc<Config>,
    servers: JoinSet<()>,
    listeners: BTreeMap<String, ServedListener>,
    sources: BTreeMap<String, SourceTask>,
    config_path: Option<PathBuf>,
}

/// The settings of a listener that a reload cannot change in place. TLS is not among them:
/// its settings (files read again) go to the server with the limits, for new connections.
fn listener_key(l: &config::Listener) -> impl PartialEq + '_ {
    (
        l.address,
        l.cluster,
        &l.default_service,
        &l.register,
        l.advertise,
    )
}

impl<P: Phases, H> Running<P, H>
where
    H: DefaultHandler + StreamingHandler,
{
    fn start_listener(&mut self, l: config::Listener, tcp: TcpListener) {
        let (handle, drain) = sluice_server::drain::channel();
        let server = Server::new(self.config.server_config(&l), self.handler.clone())
            .with_streaming(self.handler.clone());
        if let Some(m) = &self.forwarder.metrics {
            m.listener_series(&l.name, server.stats());
        }
        let server_config = server.config_handle();
        let bound = tcp.local_addr().ok();
        let registration = match (&l.register, &self.config.discovery.etcd) {
            (Some(_), Some(etcd)) => bound.map(|bound| discovery::register(etcd, &l, bound)),
            _ => None,
        };
        self.servers.spawn(server.serve(tcp, drain));
        self.listeners.insert(
            l.name.clone(),
            ServedListener {
                config: l,
                bound,
                server: server_config,
                drain: handle,
                registration,
            },
        );
    }

    /// Starts the source of every downstream of the configuration in force whose source or
    /// settings differ from `old` (all of them at start), and stops the ones that went.
    fn start_sources(
        &mut self,
        old_sources: &BTreeMap<String, config::Source>,
        old_clients: &BTreeMap<String, sluice_client::ClientConfig>,
        etcd_changed: bool,
    ) {
        let config = self.config.clone();
        self.sources.retain(|name, _| {
            config
                .sources
                .get(name)
                .is_some_and(|s| *s != config::Source::Static)
        });
        for (name, source) in &config.sources {
            if *source == config::Source::Static {
                continue;
            }
            let Some(client) = config.downstreams.get(name) else {
                continue;
            };
            let unchanged = old_sources.get(name) == Some(source)
                && old_clients.get(name) == Some(client)
                && !(etcd_changed && matches!(source, config::Source::Etcd { .. }))
                && self.sources.contains_key(name);
            if unchanged {
                continue;
            }
            let task = tokio::spawn(discovery::run_source(
                name.clone(),
                source.clone(),
                config.discovery.etcd.as_ref().map(|e| e.client.clone()),
                client.clone(),
                self.forwarder.clients.clone(),
                self.forwarder.metrics.as_ref().map(|m| m.sources.clone()),
            ));
            self.sources.insert(
                name.clone(),
                SourceTask {
                    task: task.abort_handle(),
                },
            );
        }
    }

    async fn deregister_all(&mut self) {
        let regs: Vec<_> = self
            .listeners
            .values_mut()
            .filter_map(|l| l.registration.take())
            .collect();
        let mut set = JoinSet::new();
        for r in regs {
            set.spawn(r.deregister());
        }
        while set.join_next().await.is_some() {}
    }

    /// Reads the file again and applies it (see [`reload`]).
    async fn reload(&mut self) -> Result<(), ReloadError> {
        let Some(path) = &self.config_path else {
            return Err(ReloadError::NoFile);
        };
        let new = Config::load(path)?;
        let old = self.config.clone();
        // What the running proxy cannot change.
        if new.admin != old.admin {
            return Err(ReloadError::NeedsRestart {
                key: "admin.address".into(),
                what: "the admin listener",
            });
        }
        if new.worker_threads != old.worker_threads {
            return Err(ReloadError::NeedsRestart {
                key: "runtime.worker_threads".into(),
                what: "the number of worker threads",
            });
        }
        for (i, l) in new.listeners.iter().enumerate() {
            if let Some(running) = self.listeners.get(&l.name) {
                if listener_key(&running.config) != listener_key(l) {
                    return Err(ReloadError::NeedsRestart {
                        key: format!("listeners[{i}]"),
                        what: "changing a listener in place (give the new one another name and address, or remove it in one reload and add it back in the next)",
                    });
                }
            }
        }
        // Bind the new listeners first: if one cannot be bound, nothing changes.
        let mut bound = Vec::new();
        for l in &new.listeners {
            if self.listeners.contains_key(&l.name) {
                continue;
            }
            let tcp =
                sluice_server::bind_listener(l.address).map_err(|source| ReloadError::Bind {
                    listener: l.name.clone(),
                    address: l.address,
                    source,
                })?;
            bound.push((l.clone(), tcp));
        }
        let new = Arc::new(new);
        // The swap: requests from now on route on the new snapshot.
        self.forwarder
            .state
            .store(Arc::new(forwarder::State::new(new.clone())));
        self.forwarder.discovered.reconfigure(&new);
        // Downstreams whose settings changed (or that went) get new clients on their next
        // request; the others keep theirs. A discovered downstream whose source stays starts
        // its new clients on the endpoints found so far, so no request waits for (or misses)
        // the restarted source's first answer.
        for (name, client) in &old.downstreams {
            let source = new.sources.get(name);
            let same_source = source == old.sources.get(name);
            if new.downstreams.get(name) == Some(client) && same_source {
                continue;
            }
            match (new.downstreams.get(name), same_source) {
                (Some(config), true) => self.forwarder.clients.renew(name, config.clone()),
                _ => {
                    self.forwarder.clients.remove(name);
                }
            }
        }
        let etcd_changed = new.discovery.etcd != old.discovery.etcd;
        self.config = new.clone();
        self.start_sources(&old.sources, &old.downstreams, etcd_changed);
        // Listeners: removed ones drain (their registrations go first), new ones serve.
        let removed: Vec<String> = self
            .listeners
            .keys()
            .filter(|n| !new.listeners.iter().any(|l| &l.name == *n))
            .cloned()
            .collect();
        for name in removed {
            if let Some(mut l) = self.listeners.remove(&name) {
                if let Some(r) = l.registration.take() {
                    r.deregister().await;
                }
                tracing::info!(listener = %name, "listener removed by reload; draining");
                l.drain.drain();
            }
        }
        for (l, tcp) in bound {
            tracing::info!(listener = %l.name, address = %l.address, "listener added by reload");
            self.start_listener(l, tcp);
        }
        // Listeners that stay: limits (and TLS files read again) for their new connections,
        // and, when the etcd connection changed, their registration made anew there.
        for l in &new.listeners {
            if let Some(running) = self.listeners.get_mut(&l.name) {
                running.server.set(new.server_config(l));
                running.config = l.clone();
                if etcd_changed {
                    if let Some(r) = running.registration.take() {
                        r.deregister().await;
                    }
                    running.registration = match (&l.register, &new.discovery.etcd) {
                        (Some(_), Some(etcd)) => running
                            .bound
                            .map(|bound| discovery::register(etcd, l, bound)),
                        _ => None,
                    };
                }
            }
        }
        Ok(())
    }
}
