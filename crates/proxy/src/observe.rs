//! What the forwarder reports to the metrics registry: Kitex's server series for every call and
//! stream it receives, Kitex's client series for every call and stream it sends downstream, and
//! Sluice's own counters of errors, requests in flight and active streams.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec};
use sluice_metrics::{Metrics, Rpc, Status};
use sluice_server::{ErrorKind, ProxyError};

use crate::route::Family;

/// The `kind` label of an error.
pub(crate) fn kind_label(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NoRoute => "no_route",
        ErrorKind::WrongCluster => "wrong_cluster",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Deadline => "deadline",
        ErrorKind::DownstreamReset => "downstream_reset",
        ErrorKind::BadReply => "bad_reply",
        ErrorKind::Refused => "refused",
        ErrorKind::Overloaded => "overloaded",
        ErrorKind::RateLimited => "rate_limited",
        _ => "internal",
    }
}

/// The forwarder's series, resolved once.
#[derive(Debug)]
pub(crate) struct ProxyMetrics {
    pub(crate) registry: Arc<Metrics>,
    /// `sluice_downstream_errors_total{downstream, kind}`: every error the forwarder answered a
    /// caller with (`downstream="none"` when no route matched).
    errors: IntCounterVec,
    /// `sluice_requests_in_flight`: ping-pong requests being forwarded.
    in_flight: IntGauge,
    /// `sluice_streams_active{protocol}`: streams being forwarded (TTStream, gRPC).
    streams: [IntGauge; 2],
    /// Per listener, filled from the servers' counters at scrape time.
    accepted: IntCounterVec,
    open: IntGaugeVec,
    refusals: IntCounterVec,
    bytes_received: IntCounterVec,
    bytes_sent: IntCounterVec,
    /// Endpoint sources (DNS, etcd) and discovered services.
    pub(crate) sources: crate::discovery::SourceMetrics,
    /// `sluice_config_reloads_total{result}`.
    pub(crate) reloads: IntCounterVec,
}

impl ProxyMetrics {
    pub(crate) fn new(registry: Arc<Metrics>) -> Self {
        let errors = registry.counter_vec(
            "sluice_downstream_errors_total",
            "Calls and streams Sluice answered with an error of its own, by downstream and kind.",
            &["downstream", "kind"],
        );
        let in_flight = registry
            .gauge_vec(
                "sluice_requests_in_flight",
                "Ping-pong requests being forwarded.",
                &[],
            )
            .with_label_values(&[] as &[&str]);
        let streams = registry.gauge_vec(
            "sluice_streams_active",
            "Streams being forwarded, by protocol.",
            &["protocol"],
        );
        let accepted = registry.counter_vec(
            "sluice_connections_accepted_total",
            "Connections accepted, by listener and recognised protocol.",
            &["listener", "protocol"],
        );
        let open = registry.gauge_vec(
            "sluice_connections_open",
            "Connections open, by listener and protocol (\"sniffing\": not yet recognised).",
            &["listener", "protocol"],
        );
        let refusals = registry.counter_vec(
            "sluice_refusals_total",
            "Connections and streams refused or closed by the server, by listener and reason.",
            &["listener", "reason"],
        );
        let bytes_received = registry.counter_vec(
            "sluice_bytes_received_total",
            "Bytes read from callers, by listener (TLS records included).",
            &["listener"],
        );
        let bytes_sent = registry.counter_vec(
            "sluice_bytes_sent_total",
            "Bytes written to callers, by listener (TLS records included).",
            &["listener"],
        );
        Self {
            sources: crate::discovery::SourceMetrics::new(&registry),
            reloads: registry.counter_vec(
                "sluice_config_reloads_total",
                "Configuration reloads, by result (ok, failed).",
                &["result"],
            ),
            bytes_received,
            bytes_sent,
            errors,
            in_flight,
            streams: [
                streams.with_label_values(&["ttstream"]),
                streams.with_label_values(&["grpc"]),
            ],
            accepted,
            open,
            refusals,
            registry,
        }
    }

    /// Counts an error the forwarder answered a caller with.
    pub(crate) fn error(&self, downstream: Option<&str>, e: &ProxyError) {
        self.errors
            .with_label_values(&[downstream.unwrap_or("none"), kind_label(e.kind())])
            .inc();
    }

    /// The gauge of requests or streams of `family` being forwarded.
    pub(crate) fn active(&self, family: Family) -> &IntGauge {
        match family {
            Family::PingPong => &self.in_flight,
            Family::TTStream => &self.streams[0],
            Family::Grpc => &self.streams[1],
        }
    }

    /// One call or stream received (`kitex_server_*`).
    pub(crate) fn server(&self, rpc: &Rpc<'_>, ok: bool, elapsed: Duration) {
        self.registry.server().record(rpc, status(ok), elapsed);
    }

    /// One call or stream sent downstream (`kitex_client_*`).
    pub(crate) fn client(&self, rpc: &Rpc<'_>, ok: bool, elapsed: Duration) {
        self.registry.client().record(rpc, status(ok), elapsed);
    }
}

fn status(ok: bool) -> Status {
    if ok {
        Status::Succeed
    } else {
        Status::Error
    }
}

/// Decrements its gauge when dropped: a request or stream counted active until it is done,
/// whichever way it ends.
#[derive(Debug)]
pub(crate) struct Active<'a>(Option<&'a IntGauge>);

impl<'a> Active<'a> {
    pub(crate) fn new(gauge: Option<&'a IntGauge>) -> Self {
        if let Some(g) = gauge {
            g.inc();
        }
        Self(gauge)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.0 {
            g.dec();
        }
    }
}

impl ProxyMetrics {
    /// Sluice's series of one listener, copied at each scrape from the server's own counters
    /// (the data path pays nothing more for them):
    /// `sluice_connections_accepted_total{listener, protocol}`,
    /// `sluice_connections_open{listener, protocol}` (`protocol="sniffing"`: not yet
    /// recognised) and `sluice_refusals_total{listener, reason}`.
    pub(crate) fn listener_series(&self, listener: &str, stats: Arc<sluice_server::ServerStats>) {
        use sluice_metrics::set_counter;
        use sluice_sniff::Family as Sniffed;
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

        let per_family: Vec<_> = [Sniffed::PingPong, Sniffed::TTStream, Sniffed::Http2]
            .into_iter()
            .map(|f| {
                (
                    f,
                    self.accepted.with_label_values(&[listener, f.as_str()]),
                    self.open.with_label_values(&[listener, f.as_str()]),
                )
            })
            .collect();
        let sniffing = self.open.with_label_values(&[listener, "sniffing"]);
        let received = self.bytes_received.with_label_values(&[listener]);
        let sent = self.bytes_sent.with_label_values(&[listener]);
        type Counted = fn(&sluice_server::ServerStats) -> &AtomicU64;
        let reasons: [(&str, Counted); 12] = [
            ("wrong_cluster", |s| &s.wrong_cluster),
            ("not_ours", |s| &s.not_ours),
            ("max_connections", |s| &s.connections_refused),
            ("idle_timeout", |s| &s.idle_closed),
            ("frame_timeout", |s| &s.frame_timeouts),
            ("stream_limit", |s| &s.streams_refused),
            ("reset_flood", |s| &s.reset_floods),
            ("sniff_timeout", |s| &s.sniff_timeouts),
            ("protocol_error", |s| &s.protocol_errors),
            ("tls_handshake", |s| &s.tls_handshake_failures),
            ("grpc_stream_refused", |s| &s.grpc.streams_refused),
            ("grpc_idle_timeout", |s| &s.grpc.connections_idle_closed),
        ];
        let reasons: Vec<_> = reasons
            .into_iter()
            .map(|(name, get)| (self.refusals.with_label_values(&[listener, name]), get))
            .collect();
        // Weak: a listener a reload removed leaves its series at their last values, and its
        // counters are freed with its server.
        let stats = Arc::downgrade(&stats);
        self.registry.on_scrape(move || {
            let Some(stats) = stats.upgrade() else {
                return;
            };
            let mut sniffed = 0;
            for (f, accepted, open) in &per_family {
                let counts = stats.family(*f);
                set_counter(accepted, counts.accepted.load(Relaxed));
                let n = counts.open.load(Relaxed);
                sniffed += n;
                open.set(n);
            }
            sniffing.set((stats.open.load(Relaxed) - sniffed).max(0));
            set_counter(&received, stats.bytes.read.load(Relaxed));
            set_counter(&sent, stats.bytes.written.load(Relaxed));
            for (counter, get) in &reasons {
                set_counter(counter, get(&stats).load(Relaxed));
            }
        });
    }

    /// `sluice_pool_connections{downstream, state}`: each downstream's connections at scrape
    /// time (`idle`, `in_use` and `mux` for ping-pong, `grpc` for HTTP/2).
    pub(crate) fn pool_series(
        &self,
        counts: impl Fn() -> Vec<(String, sluice_client::PoolCounts, usize)> + Send + Sync + 'static,
    ) {
        let pool = self.registry.gauge_vec(
            "sluice_pool_connections",
            "Connections to each downstream, by state (idle, in_use, mux: ping-pong; grpc: HTTP/2).",
            &["downstream", "state"],
        );
        self.registry.on_scrape(move || {
            for (name, p, grpc) in counts() {
                for (state, n) in [
                    ("idle", p.idle),
                    ("in_use", p.in_use),
                    ("mux", p.mux),
                    ("grpc", grpc),
                ] {
                    pool.with_label_values(&[name.as_str(), state])
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
        });
    }

    /// What the downstreams' failure policies did, copied at each scrape from their clients'
    /// counts: `sluice_retries_total{downstream, reason}`,
    /// `sluice_retry_budget_exhausted_total{downstream}`,
    /// `sluice_outlier_ejections_total{downstream}`, `sluice_endpoints_ejected{downstream}`
    /// and `sluice_downstream_overloaded_total{downstream, limit}`.
    pub(crate) fn resilience_series(
        &self,
        counts: impl Fn() -> Vec<(String, Arc<sluice_client::Counters>, usize)> + Send + Sync + 'static,
    ) {
        use sluice_metrics::set_counter;
        use std::sync::atomic::Ordering::Relaxed;
        let r = &self.registry;
        let retries = r.counter_vec(
            "sluice_retries_total",
            "Attempts made again on another endpoint, by reason (refused: the connection was refused before anything was sent; reset, unavailable, timeout: as a route's retry_on allows).",
            &["downstream", "reason"],
        );
        let exhausted = r.counter_vec(
            "sluice_retry_budget_exhausted_total",
            "Retries a route allowed that its retry budget refused.",
            &["downstream"],
        );
        let ejections = r.counter_vec(
            "sluice_outlier_ejections_total",
            "Endpoints ejected after consecutive failures.",
            &["downstream"],
        );
        let ejected = r.gauge_vec(
            "sluice_endpoints_ejected",
            "Endpoints of each downstream ejected now (ping-pong client).",
            &["downstream"],
        );
        let overloaded = r.counter_vec(
            "sluice_downstream_overloaded_total",
            "Calls and streams refused at once by a downstream limit (max_in_flight, max_pending).",
            &["downstream", "limit"],
        );
        self.registry.on_scrape(move || {
            for (name, c, now_ejected) in counts() {
                let d = name.as_str();
                for why in sluice_client::RetryReason::ALL {
                    set_counter(
                        &retries.with_label_values(&[d, why.as_str()]),
                        c.retries(why),
                    );
                }
                set_counter(
                    &exhausted.with_label_values(&[d]),
                    c.budget_exhausted.load(Relaxed),
                );
                set_counter(
                    &ejections.with_label_values(&[d]),
                    c.ejections.load(Relaxed),
                );
                ejected
                    .with_label_values(&[d])
                    .set(i64::try_from(now_ejected).unwrap_or(i64::MAX));
                set_counter(
                    &overloaded.with_label_values(&[d, "max_in_flight"]),
                    c.over_max_in_flight.load(Relaxed),
                );
                set_counter(
                    &overloaded.with_label_values(&[d, "max_pending"]),
                    c.over_max_pending.load(Relaxed),
                );
            }
        });
    }

    /// `sluice_access_log_dropped_total`, copied at each scrape from the access log's count.
    pub(crate) fn access_log_drops(&self, dropped: Arc<std::sync::atomic::AtomicU64>) {
        let counter = self
            .registry
            .counter_vec(
                "sluice_access_log_dropped_total",
                "Access log lines dropped because the writer's queue was full.",
                &[],
            )
            .with_label_values(&[] as &[&str]);
        self.registry.on_scrape(move || {
            sluice_metrics::set_counter(
                &counter,
                dropped.load(std::sync::atomic::Ordering::Relaxed),
            );
        });
    }

    /// `sluice_draining` (1 once a shutdown signal arrived) and `sluice_config_reloads_total`.
    pub(crate) fn process_series(&self, health: &Arc<sluice_admin::Health>) {
        let draining = self
            .registry
            .gauge_vec(
                "sluice_draining",
                "1 while the proxy drains after a shutdown signal, else 0.",
                &[],
            )
            .with_label_values(&[] as &[&str]);
        let health = Arc::downgrade(health);
        self.registry.on_scrape(move || {
            let on = health.upgrade().is_some_and(|h| h.is_draining());
            draining.set(i64::from(on));
        });
    }
}
