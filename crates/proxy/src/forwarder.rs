//! The [`Forwarder`]: the proxy's handler for ping-pong requests and streams, and what it
//! shares between them (configuration, router, clients, phases, counters).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sluice_client::ClientConfig;
use sluice_server::{ProxyError, RateLog};

use crate::clients::Clients;
use crate::config::Config;
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
    pub(crate) config: Arc<Config>,
    pub(crate) router: Router,
    pub(crate) clients: Clients,
    pub(crate) phases: Arc<P>,
    /// Forwarded streams waiting for their downstream's first response.
    pub(crate) silence: SilenceWatch,
    pub(crate) stats: Stats,
    /// Budget of warn lines for failed downstream calls and streams.
    pub(crate) downstream_log: RateLog,
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
            router: Router::new(config.routes.clone()),
            config,
            clients: Clients::new(),
            phases: Arc::new(phases),
            silence: SilenceWatch::default(),
            stats: Stats::default(),
            downstream_log: RateLog::default(),
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

    /// The configured routes.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The phases.
    pub fn phases(&self) -> &P {
        &self.phases
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Routes a request or stream: the route phase, then the chosen downstream's settings
    /// (a downstream the configuration lacks is an error). The request's (or stream's) span
    /// names the downstream and the trace id, if a trace came with it.
    pub(crate) fn route<'r>(
        &'r self,
        head: &RequestHead<'_>,
        trace: Option<&TraceContext>,
    ) -> Result<(Target<'r>, &'r ClientConfig), ProxyError> {
        let target = self.phases.route(head, &self.router)?;
        let Some(dc) = self.config.downstreams.get(&*target.downstream) else {
            return Err(crate::error::not_configured(&target.downstream));
        };
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
