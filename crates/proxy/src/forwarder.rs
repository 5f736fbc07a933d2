//! The [`Forwarder`]: the proxy's handler for ping-pong requests and streams, and what it
//! shares between them (configuration, router, clients, phases, counters).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sluice_client::ClientConfig;
use sluice_server::{ProxyError, RateLog};

use crate::access_log::AccessLogger;
use crate::clients::Clients;
use crate::config::Config;
use crate::observe::ProxyMetrics;
use crate::phases::{CallInfo, DefaultPhases, Phases};
use crate::route::{RequestHead, Router, Target};
use crate::silence::SilenceWatch;
use crate::trace::TraceContext;

/// Counters of a [`Forwarder`].
#[derive(Debug, Default)]
pub struct Stats {
    streams: AtomicU64,
    requests: AtomicU64,
    unrouted: AtomicU64,
    downstream_errors: AtomicU64,
}

impl Stats {
    /// Ping-pong requests handled.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Streams handled.
    pub fn streams(&self) -> u64 {
        self.streams.load(Ordering::Relaxed)
    }

    /// Requests and streams with no route.
    pub fn unrouted(&self) -> u64 {
        self.unrouted.load(Ordering::Relaxed)
    }

    /// Requests and streams whose downstream failed (connect, I/O, timeout, bad reply, reset).
    pub fn downstream_errors(&self) -> u64 {
        self.downstream_errors.load(Ordering::Relaxed)
    }

    pub(crate) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_stream(&self) {
        self.streams.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_error(&self, e: &ProxyError) {
        match e.kind() {
            sluice_server::ErrorKind::NoRoute => &self.unrouted,
            _ => &self.downstream_errors,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

/// Joins the server to the clients: routes each ping-pong request and stream, forwards it with
/// its payload untouched through the downstream's generic client (created on first use), and
/// answers errors in the caller's protocol. One per proxy, shared by all its listeners.
///
/// `P` are the [`Phases`] (routing, metainfo filters, error and logging hooks); the default
/// ones route by the configuration.
#[derive(Debug)]
pub struct Forwarder<P = DefaultPhases> {
    /// The configuration and routes in force, replaced whole by a reload; each request and
    /// stream routes on the snapshot it loaded first.
    pub(crate) state: arc_swap::ArcSwap<State>,
    pub(crate) clients: Arc<Clients>,
    /// Clients of the services discovering routes found, made on demand and bounded.
    pub(crate) discovered: crate::discovery::Discovered,
    pub(crate) phases: Arc<P>,
    /// Forwarded streams waiting for their downstream's first response.
    pub(crate) silence: SilenceWatch,
    pub(crate) stats: Stats,
    /// Budget of warn lines for failed downstream calls and streams.
    pub(crate) downstream_log: RateLog,
    /// Kitex's RPC series and Sluice's own, when metrics are on.
    pub(crate) metrics: Option<ProxyMetrics>,
    /// Requests and streams forwarded now, under `[limits] max_in_flight`.
    pub(crate) in_flight: AtomicUsize,
    /// The access log, when on.
    pub(crate) access_log: Option<AccessLogger>,
}

/// A request or stream counted under `[limits] max_in_flight` while it lives.
pub(crate) struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One configuration in force: what a reload replaces.
#[derive(Debug)]
pub struct State {
    /// The configuration.
    pub config: Arc<Config>,
    /// Its routes.
    pub router: Router,
}

impl State {
    /// The snapshot of `config`.
    pub fn new(config: Arc<Config>) -> Self {
        Self {
            router: Router::new(config.routes.clone()),
            config,
        }
    }
}

/// How a call or stream ended, for the metrics and the access log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Done<'a> {
    /// How the caller's answer reads: success, or an error (an exception, an error status, a
    /// reset, or Sluice's own error).
    pub(crate) ok: bool,
    /// Sluice's own error, when it answered with one.
    pub(crate) error: Option<&'a ProxyError>,
    /// When a downstream call or stream was attempted: whether it succeeded and how long it
    /// took.
    pub(crate) downstream: Option<(bool, Duration)>,
    /// The access log's protocol name.
    pub(crate) protocol: &'static str,
    /// The downstream endpoint that answered, when known.
    pub(crate) endpoint: Option<std::net::SocketAddr>,
    /// Payload bytes from and to the caller.
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    /// When it ended, if already read from the clock.
    pub(crate) end: Option<Instant>,
    /// Retries the downstream call took (Kitex's `retry` label of the client series).
    pub(crate) retries: u32,
}

impl Done<'_> {
    /// Nothing known yet but the protocol.
    pub(crate) fn new(protocol: &'static str) -> Self {
        Self {
            ok: false,
            error: None,
            downstream: None,
            protocol,
            endpoint: None,
            bytes_in: 0,
            bytes_out: 0,
            retries: 0,
            end: None,
        }
    }
}

impl Forwarder {
    /// A forwarder for `config` with the default phases.
    pub fn new(config: Arc<Config>) -> Self {
        Self::with_phases(config, DefaultPhases)
    }
}

impl<P: Phases> Forwarder<P> {
    /// A forwarder for `config` whose requests and streams go through `phases`.
    pub fn with_phases(config: Arc<Config>, phases: P) -> Self {
        Self {
            discovered: crate::discovery::Discovered::new(&config),
            state: arc_swap::ArcSwap::from_pointee(State::new(config)),
            clients: Arc::new(Clients::new()),
            phases: Arc::new(phases),
            silence: SilenceWatch::default(),
            stats: Stats::default(),
            in_flight: AtomicUsize::new(0),
            downstream_log: RateLog::default(),
            metrics: None,
            access_log: None,
        }
    }

    /// Writes a line per call and stream to `log` (see [`AccessLog`](crate::AccessLog)).
    pub fn with_access_log(mut self, log: &crate::AccessLog) -> std::io::Result<Self> {
        let logger = AccessLogger::start(log)?;
        if let Some(m) = &self.metrics {
            m.access_log_drops(logger.dropped.clone());
        }
        self.access_log = Some(logger);
        Ok(self)
    }

    /// Reports every call and stream to `metrics` (Kitex's `kitex_server_*` and
    /// `kitex_client_*` series, and Sluice's `sluice_downstream_errors_total`,
    /// `sluice_requests_in_flight` and `sluice_streams_active`).
    pub fn with_metrics(mut self, metrics: Arc<sluice_metrics::Metrics>) -> Self {
        let m = ProxyMetrics::new(metrics);
        self.discovered.metrics = Some(m.sources.clone());
        self.metrics = Some(m);
        self
    }

    /// The metrics registry, when metrics are on.
    pub fn metrics(&self) -> Option<&Arc<sluice_metrics::Metrics>> {
        self.metrics.as_ref().map(|m| &m.registry)
    }

    /// True when metrics or the access log are on: only then are the caller's name and the
    /// downstream call's duration taken.
    pub(crate) fn observed(&self) -> bool {
        self.metrics.is_some() || self.access_log.is_some()
    }

    /// Reports a finished call or stream to the metrics and the access log.
    pub(crate) fn finish(&self, info: &CallInfo<'_>, done: Done<'_>) {
        if !self.observed() {
            return;
        }
        let took = done.end.unwrap_or_else(Instant::now) - info.start;
        if let Some(m) = &self.metrics {
            let rpc = sluice_metrics::Rpc {
                caller: info.caller,
                callee: info.service,
                method: info.method,
                retry: 0,
            };
            m.server(&rpc, done.ok, took);
            if let (Some((down_ok, elapsed)), Some(name)) = (done.downstream, info.downstream) {
                m.client(
                    &sluice_metrics::Rpc {
                        callee: name,
                        retry: done.retries,
                        ..rpc
                    },
                    down_ok,
                    elapsed,
                );
            }
        }
        if let Some(log) = &self.access_log {
            if log.sampled() {
                log.log(&crate::access_log::Line {
                    time: crate::access_log::rfc3339(SystemTime::now() - took),
                    listener: info.listener,
                    peer: info.peer,
                    protocol: done.protocol,
                    service: info.service,
                    method: info.method,
                    caller: info.caller,
                    downstream: info.downstream,
                    endpoint: done.endpoint,
                    status: if done.ok { "succeed" } else { "error" },
                    error_kind: done.error.map(|e| crate::observe::kind_label(e.kind())),
                    error: done.error.map(|e| e.to_string()),
                    duration_us: crate::access_log::micros(took),
                    bytes_in: done.bytes_in,
                    bytes_out: done.bytes_out,
                });
            }
        }
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The generic clients created so far.
    pub fn clients(&self) -> &Clients {
        &self.clients
    }

    /// Services a discovering route has clients for now.
    pub fn discovered_services(&self) -> usize {
        self.discovered.len()
    }

    /// The configuration and routes in force now (a later reload does not change the
    /// snapshot returned).
    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }

    /// The phases.
    pub fn phases(&self) -> &P {
        &self.phases
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        self.state.load().config.clone()
    }

    /// Routes a request or stream: the route phase, then the chosen downstream's settings
    /// (a downstream the configuration lacks is an error). The request's (or stream's) span
    /// names the downstream and the trace id, if a trace came with it.
    pub(crate) fn route<'r, 'h>(
        &'r self,
        state: &'r State,
        head: &RequestHead<'h>,
        trace: Option<&TraceContext>,
        caller: impl FnOnce() -> Option<&'h [u8]>,
    ) -> Result<(Target<'r>, &'r ClientConfig), ProxyError> {
        let mut target = self.phases.route(head, &state.router)?;
        if let Some(limiter) = target.policy.and_then(|p| p.rate_limit.as_ref()) {
            if !limiter.admit(caller, |k| head.metainfo(k)) {
                return Err(crate::error::rate_limited(&target.downstream, limiter));
            }
        }
        let dc = if target.discovered.is_some() {
            self.discovered.template()
        } else {
            match state.config.downstreams.get(&*target.downstream) {
                Some(dc) => dc,
                None => return Err(crate::error::not_configured(&target.downstream)),
            }
        };
        if let Some(k) = &dc.hash_key {
            target.hash = head.metainfo(k).map(sluice_resilience::hash_key);
        }
        // The span is the server's, at debug level. Looking up the current span costs a
        // registry lookup, so only when debug spans can exist at all.
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            let span = tracing::Span::current();
            span.record("downstream", &*target.downstream);
            if let Some(t) = trace {
                span.record("trace_id", tracing::field::display(t.trace_id_hex()));
            }
        }
        Ok((target, dc))
    }

    /// A place under the process-wide `[limits] max_in_flight`, or the overloaded error.
    pub(crate) fn admit(&self, state: &State) -> Result<InFlight<'_>, ProxyError> {
        let max = state.config.limits.max_in_flight;
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= max {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return Err(crate::error::process_overloaded(max));
        }
        Ok(InFlight(&self.in_flight))
    }

    /// Passes an error Sluice answers with through [`Phases::on_error`], counts it and logs
    /// it (within the log budget).
    pub(crate) fn fail(&self, info: &CallInfo<'_>, e: ProxyError) -> ProxyError {
        let e = self.phases.on_error(info, e);
        self.record(info, &e);
        e
    }

    /// Counts and logs (within the log budget) an error a caller was answered with.
    pub(crate) fn record(&self, info: &CallInfo<'_>, e: &ProxyError) {
        self.stats.count_error(e);
        if let Some(m) = &self.metrics {
            m.error(info.downstream, e);
        }
        if e.kind() != sluice_server::ErrorKind::NoRoute {
            if let Some(suppressed) = self.downstream_log.allow() {
                tracing::warn!(
                    peer = %info.peer,
                    service = %info.service,
                    method = %info.method,
                    downstream = info.downstream.unwrap_or(""),
                    kind = %e.kind(),
                    error = %e,
                    suppressed,
                    "downstream call failed"
                );
            }
        }
    }
}
