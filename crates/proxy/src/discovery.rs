//! Endpoints that change while the proxy runs: downstreams whose endpoints come from DNS or
//! etcd ([`Source`]), the clients discovering routes make per service on demand
//! ([`Discovered`]), and listeners registered in etcd.
//!
//! A source task per downstream feeds what it finds into the downstream's clients
//! ([`Clients::set_endpoints`]): endpoints that stay keep their connections, removed ones are
//! drained by the calls and streams still on them. When a source cannot be read (etcd
//! unreachable, a name that no longer resolves), the last endpoints found stay in use.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGaugeVec};
use sluice_client::{ClientConfig, Endpoint, GenericClient, TTStreamClient, Transport};
use sluice_discovery::{EtcdConfig, Snapshot, Watcher};
use sluice_http2::GrpcClient;
use sluice_server::{ErrorKind, ProxyError};
use tokio::sync::watch;

use crate::clients::Clients;
use crate::config::{Config, Source};

/// What the source tasks report to the metrics, when metrics are on.
#[derive(Debug, Clone)]
pub(crate) struct SourceMetrics {
    /// `sluice_discovery_endpoints{downstream}`.
    pub(crate) endpoints: IntGaugeVec,
    /// `sluice_discovery_source_up{downstream, source}`: 1 while the source can be read.
    pub(crate) up: IntGaugeVec,
    /// `sluice_discovery_errors_total{downstream, reason}`.
    pub(crate) errors: IntCounterVec,
    /// `sluice_discovered_services`: services discovering routes have clients for.
    pub(crate) services: prometheus::IntGauge,
}

impl SourceMetrics {
    pub(crate) fn new(registry: &sluice_metrics::Metrics) -> Self {
        Self {
            endpoints: registry.gauge_vec(
                "sluice_discovery_endpoints",
                "Endpoints in use per discovered downstream (DNS, etcd, or a service a discovering route found).",
                &["downstream"],
            ),
            up: registry.gauge_vec(
                "sluice_discovery_source_up",
                "1 while a downstream's endpoint source (DNS or etcd) can be read, 0 while the last endpoints found are kept.",
                &["downstream", "source"],
            ),
            errors: registry.counter_vec(
                "sluice_discovery_errors_total",
                "Endpoint source failures, by downstream and reason (etcd_unreachable, resolve_failed, too_many_services, no_instances).",
                &["downstream", "reason"],
            ),
            services: registry
                .gauge_vec(
                    "sluice_discovered_services",
                    "Services discovering routes have clients for now (at most discovery.max_services).",
                    &[],
                )
                .with_label_values(&[] as &[&str]),
        }
    }
}

/// Endpoints of a watch snapshot, as the clients take them.
fn endpoints_of(snapshot: &Snapshot) -> Vec<Endpoint> {
    snapshot
        .instances
        .iter()
        .map(|i| Endpoint {
            addr: i.address,
            weight: i.weight.max(1),
        })
        .collect()
}

/// Runs the source of downstream `name` until dropped (the task is aborted with its owner):
/// every change it finds goes to the downstream's clients.
pub(crate) async fn run_source(
    name: String,
    source: Source,
    etcd: Option<Arc<EtcdConfig>>,
    config: ClientConfig,
    clients: Arc<Clients>,
    metrics: Option<SourceMetrics>,
) {
    match source {
        Source::Static => {}
        Source::Dns { names, refresh } => {
            run_dns(&name, &names, refresh, &config, &clients, metrics.as_ref()).await
        }
        Source::Etcd { service, tags } => {
            let Some(etcd) = etcd else { return };
            let watcher = Watcher::start(etcd, service.clone(), tags);
            let rx = watcher.subscribe();
            let on_change = |eps: Vec<Endpoint>| {
                clients.set_endpoints(&name, || config.clone(), eps);
            };
            follow(&name, &service, rx, on_change, metrics.as_ref()).await;
            drop(watcher);
        }
    }
}

/// Applies each snapshot of an etcd watch, logging (once per outage) when etcd becomes
/// unreachable and when it is back.
async fn follow(
    name: &str,
    service: &str,
    mut rx: watch::Receiver<Snapshot>,
    mut apply: impl FnMut(Vec<Endpoint>),
    metrics: Option<&SourceMetrics>,
) {
    let mut connected = true;
    let mut last: Option<Vec<Endpoint>> = None;
    loop {
        let snapshot = rx.borrow_and_update().clone();
        if snapshot.revision > 0 {
            let eps = endpoints_of(&snapshot);
            if last.as_ref() != Some(&eps) {
                tracing::info!(
                    downstream = name,
                    service,
                    endpoints = eps.len(),
                    revision = snapshot.revision,
                    "etcd: endpoints changed"
                );
                if let Some(m) = metrics {
                    m.endpoints
                        .with_label_values(&[name])
                        .set(i64::try_from(eps.len()).unwrap_or(i64::MAX));
                }
                apply(eps.clone());
                last = Some(eps);
            }
        }
        if snapshot.connected != connected {
            connected = snapshot.connected;
            if connected {
                tracing::info!(downstream = name, service, "etcd: watching again");
            } else {
                tracing::warn!(
                    downstream = name,
                    service,
                    kept = last.as_ref().map_or(0, Vec::len),
                    "etcd: unreachable; the last endpoints found stay in use"
                );
                if let Some(m) = metrics {
                    m.errors
                        .with_label_values(&[name, "etcd_unreachable"])
                        .inc();
                }
            }
            if let Some(m) = metrics {
                m.up.with_label_values(&[name, "etcd"])
                    .set(i64::from(connected));
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Resolves `names` every `refresh`, every address of every name an endpoint; a failed
/// resolution keeps the last endpoints.
async fn run_dns(
    name: &str,
    names: &[(String, u32)],
    refresh: Duration,
    config: &ClientConfig,
    clients: &Clients,
    metrics: Option<&SourceMetrics>,
) {
    let mut last: Option<Vec<Endpoint>> = None;
    let mut failing = false;
    loop {
        match resolve_all(names, config.connect_timeout.max(Duration::from_secs(1))).await {
            Ok(eps) => {
                if failing {
                    tracing::info!(downstream = name, "dns: resolving again");
                    failing = false;
                }
                if last.as_ref() != Some(&eps) {
                    tracing::info!(
                        downstream = name,
                        endpoints = eps.len(),
                        "dns: endpoints changed"
                    );
                    if let Some(m) = metrics {
                        m.endpoints
                            .with_label_values(&[name])
                            .set(i64::try_from(eps.len()).unwrap_or(i64::MAX));
                    }
                    clients.set_endpoints(name, || config.clone(), eps.clone());
                    last = Some(eps);
                }
            }
            Err(why) => {
                if !failing {
                    tracing::warn!(
                        downstream = name,
                        error = %why,
                        kept = last.as_ref().map_or(0, Vec::len),
                        "dns: resolution failed; the last endpoints found stay in use"
                    );
                    failing = true;
                }
                if let Some(m) = metrics {
                    m.errors.with_label_values(&[name, "resolve_failed"]).inc();
                }
            }
        }
        if let Some(m) = metrics {
            m.up.with_label_values(&[name, "dns"])
                .set(i64::from(!failing));
        }
        tokio::time::sleep(refresh).await;
    }
}

/// Every address of every `host:port`, sorted, each with its name's weight. An error when a
/// name fails or resolves to nothing (then nothing is replaced).
async fn resolve_all(names: &[(String, u32)], timeout: Duration) -> Result<Vec<Endpoint>, String> {
    let mut eps = Vec::new();
    for (host_port, weight) in names {
        let found = tokio::time::timeout(timeout, tokio::net::lookup_host(host_port.as_str()))
            .await
            .map_err(|_| format!("{host_port}: no answer within {timeout:?}"))?
            .map_err(|e| format!("{host_port}: {e}"))?;
        let before = eps.len();
        for addr in found {
            if !eps.iter().any(|e: &Endpoint| e.addr == addr) {
                eps.push(Endpoint {
                    addr,
                    weight: *weight,
                });
            }
        }
        if eps.len() == before {
            return Err(format!("{host_port}: resolves to no address"));
        }
    }
    eps.sort_by_key(|e| e.addr);
    Ok(eps)
}

/// Milliseconds since `base`, for a cheap last-used stamp.
fn stamp(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One service a discovering route found: its watch, the task that applies it, and when a
/// request last used it.
#[derive(Debug)]
struct Service {
    /// The watch of its instances (dropping it stops the watch).
    _watcher: Watcher,
    rx: watch::Receiver<Snapshot>,
    /// True once the first answer from etcd is applied to the clients.
    applied: watch::Receiver<bool>,
    /// Applies the watch to the clients; aborted with the service.
    feeder: tokio::task::JoinHandle<()>,
    last_used: AtomicU64,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.feeder.abort();
    }
}

#[derive(Debug, Clone)]
struct Settings {
    etcd: Option<crate::config::Etcd>,
    max_services: usize,
    idle: Duration,
}

impl Settings {
    fn of(config: &Config) -> Self {
        Self {
            etcd: config.discovery.etcd.clone(),
            max_services: config.discovery.max_services,
            idle: config.discovery.service_idle_timeout,
        }
    }
}

/// The clients of the services discovering routes send requests to, keyed by service name:
/// made on a service's first request, shared by later ones, closed when unused for
/// [`service_idle_timeout`](crate::config::Discovery::service_idle_timeout), and at most
/// [`max_services`](crate::config::Discovery::max_services) at once.
#[derive(Debug)]
pub(crate) struct Discovered {
    /// etcd, the cap of services and the idle timeout: a reload may change them.
    settings: Mutex<Settings>,
    /// The settings of every discovered service's clients but name, endpoints and
    /// transport.
    template: ClientConfig,
    services: Mutex<HashMap<String, Arc<Service>>>,
    clients: Arc<Clients>,
    base: Instant,
    /// The time of the last sweep of idle services (see [`stamp`]).
    swept: AtomicU64,
    pub(crate) metrics: Option<SourceMetrics>,
}

impl Discovered {
    pub(crate) fn new(config: &Config) -> Self {
        let mut template = ClientConfig::new("discovered", Vec::new());
        template.max_frame_size = config.limits.max_frame_size;
        Self {
            settings: Mutex::new(Settings::of(config)),
            template,
            services: Mutex::new(HashMap::new()),
            clients: Arc::new(Clients::new()),
            base: Instant::now(),
            swept: AtomicU64::new(0),
            metrics: None,
        }
    }

    /// Takes a new configuration's discovery settings. The services found so far stay, unless
    /// the etcd connection changed: then they are all found again.
    pub(crate) fn reconfigure(&self, config: &Config) {
        let new = Settings::of(config);
        let mut settings = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        let etcd_changed = settings.etcd != new.etcd;
        *settings = new;
        drop(settings);
        if etcd_changed {
            let mut map = self.services.lock().unwrap_or_else(|e| e.into_inner());
            for name in map.keys() {
                self.clients.remove(name);
            }
            map.clear();
            self.report_len(0);
        }
    }

    fn settings(&self) -> Settings {
        self.settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The settings discovered services' clients are made with (for what the handlers read
    /// of a downstream's settings).
    pub(crate) fn template(&self) -> &ClientConfig {
        &self.template
    }

    /// Services with clients now.
    pub(crate) fn len(&self) -> usize {
        self.services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    fn service_config(&self, service: &str, transport: Transport) -> ClientConfig {
        let mut c = self.template.clone();
        c.name = service.to_owned();
        c.transport = transport;
        c
    }

    /// The ping-pong client of `service`, found in etcd, reached over `transport`.
    pub(crate) async fn pingpong(
        &self,
        service: &str,
        transport: Transport,
    ) -> Result<Arc<GenericClient>, ProxyError> {
        self.ready(service, transport).await?;
        Ok(self
            .clients
            .pingpong(service, || self.service_config(service, transport)))
    }

    /// The TTStream client of `service`.
    pub(crate) async fn ttstream(&self, service: &str) -> Result<Arc<TTStreamClient>, ProxyError> {
        self.ready(service, Transport::TTHeader).await?;
        Ok(self.clients.ttstream(service, || {
            self.service_config(service, Transport::TTHeader)
        }))
    }

    /// The gRPC client of `service`.
    pub(crate) async fn grpc(&self, service: &str) -> Result<Arc<GrpcClient>, ProxyError> {
        self.ready(service, Transport::TTHeader).await?;
        Ok(self.clients.grpc(service, || {
            self.service_config(service, Transport::TTHeader)
        }))
    }

    /// Makes sure `service` is watched and its first answer from etcd is in: a request for a
    /// service with no instances gets an error naming it, and past the cap of services a
    /// request for a new one is refused.
    async fn ready(&self, service: &str, transport: Transport) -> Result<(), ProxyError> {
        let now = stamp(self.base);
        let found = {
            let map = self.services.lock().unwrap_or_else(|e| e.into_inner());
            map.get(service).cloned()
        };
        let s = match found {
            Some(s) => s,
            None => self.start(service, transport, now)?,
        };
        s.last_used.store(now, Ordering::Relaxed);
        let mut applied = s.applied.clone();
        // The first answer: bounded by the etcd connect and request timeouts.
        let wait = self
            .settings()
            .etcd
            .as_ref()
            .map_or(Duration::from_secs(2), |e| {
                e.client.connect_timeout + e.client.request_timeout
            });
        let first = tokio::time::timeout(wait, applied.wait_for(|done| *done)).await;
        let instances = match first {
            Ok(Ok(_)) => s.rx.borrow().instances.len(),
            _ => {
                return Err(ProxyError::new(
                    ErrorKind::Unavailable,
                    format!("sluice: service {service:?}: etcd did not answer within {wait:?}"),
                )
                .retry_safe(true))
            }
        };
        if instances == 0 {
            if let Some(m) = &self.metrics {
                m.errors
                    .with_label_values(&["discovered", "no_instances"])
                    .inc();
            }
            return Err(ProxyError::new(
                ErrorKind::Unavailable,
                format!("sluice: no instances of service {service:?} are registered in etcd"),
            )
            .retry_safe(true));
        }
        Ok(())
    }

    /// Starts watching `service`, unless the cap is reached even after closing idle ones.
    fn start(
        &self,
        service: &str,
        transport: Transport,
        now: u64,
    ) -> Result<Arc<Service>, ProxyError> {
        let settings = self.settings();
        let Some(etcd) = settings.etcd.as_ref().map(|e| e.client.clone()) else {
            return Err(ProxyError::new(
                ErrorKind::Internal,
                "sluice: a discovering route needs [discovery.etcd]",
            ));
        };
        let mut map = self.services.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(service) {
            return Ok(s.clone());
        }
        if map.len() >= settings.max_services {
            self.sweep_locked(&mut map, now);
        }
        if map.len() >= settings.max_services {
            if let Some(m) = &self.metrics {
                m.errors
                    .with_label_values(&["discovered", "too_many_services"])
                    .inc();
            }
            tracing::debug!(
                service,
                max = settings.max_services,
                "discovery: too many services; request refused"
            );
            return Err(ProxyError::new(
                ErrorKind::Overloaded,
                format!(
                    "sluice: service {service:?} refused: {} discovered services already have clients (discovery.max_services)",
                    settings.max_services
                ),
            )
            .retry_safe(true));
        }
        let watcher = Watcher::start(etcd, service.to_owned(), BTreeMap::new());
        let rx = watcher.subscribe();
        let (applied_tx, applied) = watch::channel(false);
        let feeder = tokio::spawn({
            let rx = rx.clone();
            let clients = self.clients.clone();
            let name = service.to_owned();
            let config = self.service_config(service, transport);
            async move {
                let apply = |eps: Vec<Endpoint>| {
                    clients.set_endpoints(&name, || config.clone(), eps);
                    applied_tx.send_replace(true);
                };
                // No per-service series: the names come from callers (the cap bounds the
                // clients, not a label's values).
                follow(&name, &name, rx, apply, None).await;
            }
        });
        tracing::debug!(service, "discovery: watching a new service");
        let s = Arc::new(Service {
            _watcher: watcher,
            rx,
            applied,
            feeder,
            last_used: AtomicU64::new(now),
        });
        map.insert(service.to_owned(), s.clone());
        self.report_len(map.len());
        Ok(s)
    }

    fn report_len(&self, n: usize) {
        if let Some(m) = &self.metrics {
            m.services.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Closes the services no request used within the idle timeout: their watches stop and
    /// their clients go (calls in flight finish on them).
    pub(crate) fn sweep(&self) {
        let now = stamp(self.base);
        let mut map = self.services.lock().unwrap_or_else(|e| e.into_inner());
        self.sweep_locked(&mut map, now);
    }

    fn sweep_locked(&self, map: &mut HashMap<String, Arc<Service>>, now: u64) {
        self.swept.store(now, Ordering::Relaxed);
        let idle = u64::try_from(self.settings().idle.as_millis()).unwrap_or(u64::MAX);
        let before = map.len();
        map.retain(|name, s| {
            let keep = now.saturating_sub(s.last_used.load(Ordering::Relaxed)) < idle;
            if !keep {
                self.clients.remove(name);
                tracing::debug!(service = %name, "discovery: closing an idle service's clients");
            }
            keep
        });
        if map.len() != before {
            self.report_len(map.len());
        }
    }

    /// How often [`sweep`](Self::sweep) should run.
    pub(crate) fn sweep_every(&self) -> Duration {
        (self.settings().idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
    }
}

/// A listener's registration in etcd, made once it is bound.
pub(crate) fn register(
    etcd: &crate::config::Etcd,
    listener: &crate::config::Listener,
    bound: SocketAddr,
) -> sluice_discovery::Registration {
    let service = listener.register.clone().unwrap_or_default();
    let address = listener
        .advertise
        .unwrap_or_else(|| sluice_discovery::advertise_address(bound));
    tracing::info!(
        listener = %listener.name,
        service = %service,
        %address,
        "registering in etcd"
    );
    sluice_discovery::Registration::start(
        etcd.client.clone(),
        service,
        sluice_discovery::Instance::new(address),
        etcd.register_ttl,
    )
}
