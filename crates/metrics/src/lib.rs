//! Sluice's metrics: Kitex's own RPC series (the names, labels and buckets of
//! `kitex-contrib/monitor-prometheus`, so existing Kitex dashboards work unchanged), Sluice's own
//! `sluice_` series, and the Prometheus text exposition format 0.0.4 they are served in.
//!
//! Label values that come from the wire (caller, callee, method) are capped per label: past
//! [`MetricsConfig::max_label_values`] distinct values, new ones are folded into `other` and the
//! fold is counted in `sluice_metric_label_folds_total{label}`, so a caller cannot grow the
//! registry without bound.
//!
//! ```
//! use std::time::Duration;
//! use sluice_metrics::{Metrics, MetricsConfig, Rpc, Status};
//!
//! let metrics = Metrics::new(MetricsConfig::default());
//! let rpc = Rpc { caller: "", callee: "echo", method: "Echo", retry: 0 };
//! metrics.server().record(&rpc, Status::Succeed, Duration::from_micros(850));
//! let text = metrics.encode();
//! assert!(text.contains(
//!     r#"kitex_server_throughput{callee="echo",caller="unknown",method="Echo",retry="0",status="succeed"} 1"#
//! ));
//! ```
#![forbid(unsafe_code)]

mod labels;
mod rpc;

use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

pub use prometheus;
pub use rpc::{Rpc, RpcSeries, Status};

use labels::Caps;

/// The content type of [`Metrics::encode`]'s text (what Prometheus's Go client serves).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The buckets of Kitex's latency histograms, in microseconds.
pub const LATENCY_BUCKETS_US: [f64; 8] = [
    5_000.0,
    10_000.0,
    25_000.0,
    50_000.0,
    100_000.0,
    250_000.0,
    500_000.0,
    1_000_000.0,
];

/// What a label value is folded into once its label has reached its cap.
pub const OTHER: &str = "other";

/// What an empty label value is reported as (Kitex's `unknown`).
pub const UNKNOWN: &str = "unknown";

/// Limits of the metrics registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsConfig {
    /// Distinct values kept per wire-derived label (caller, callee, method); more are folded
    /// into `other`. Default 1000.
    pub max_label_values: usize,
    /// Label combinations kept per RPC series family (server or client); past it, every
    /// wire-derived label of a new combination is `other`. Default 10 000.
    pub max_series: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            max_label_values: 1000,
            max_series: 10_000,
        }
    }
}

impl MetricsConfig {
    /// Sets [`max_label_values`](Self::max_label_values).
    pub fn with_max_label_values(mut self, n: usize) -> Self {
        self.max_label_values = n;
        self
    }

    /// Sets [`max_series`](Self::max_series).
    pub fn with_max_series(mut self, n: usize) -> Self {
        self.max_series = n;
        self
    }
}

/// A refresh run before each scrape (see [`Metrics::on_scrape`]).
type Hook = Box<dyn Fn() + Send + Sync>;

/// One registry: Kitex's server and client RPC series, whatever else is registered on it, and
/// the hooks that bring counters kept elsewhere up to date before each scrape.
pub struct Metrics {
    registry: Registry,
    server: RpcSeries,
    client: RpcSeries,
    hooks: Mutex<Vec<Hook>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("server", &self.server)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry with Kitex's four RPC series and the label-fold counter.
    pub fn new(config: MetricsConfig) -> Arc<Self> {
        let registry = Registry::new();
        let folds = IntCounterVec::new(
            Opts::new(
                "sluice_metric_label_folds_total",
                "Label values folded into \"other\" because their label reached its cap.",
            ),
            &["label"],
        )
        .expect("a valid metric");
        registry
            .register(Box::new(folds.clone()))
            .expect("registered once");
        let caps = Arc::new(Caps::new(config, folds));
        let server = RpcSeries::new(
            &registry,
            "kitex_server",
            "Total number of RPCs completed by the server, regardless of success or failure.",
            "Latency (microseconds) of RPC that had been application-level handled by the server.",
            caps.clone(),
        );
        let client = RpcSeries::new(
            &registry,
            "kitex_client",
            "Total number of RPCs completed by the client, regardless of success or failure.",
            "Latency (microseconds) of the RPC until it is finished.",
            caps,
        );
        Arc::new(Self {
            registry,
            server,
            client,
            hooks: Mutex::new(Vec::new()),
        })
    }

    /// `kitex_server_throughput` and `kitex_server_latency_us`: calls and streams received.
    pub fn server(&self) -> &RpcSeries {
        &self.server
    }

    /// `kitex_client_throughput` and `kitex_client_latency_us`: calls and streams sent
    /// downstream.
    pub fn client(&self) -> &RpcSeries {
        &self.client
    }

    /// The registry, for series of an embedder's own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A new counter family registered here. Panics on an invalid or already registered name
    /// (a programming error, not an input).
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric");
        self.registry
            .register(Box::new(c.clone()))
            .expect("a metric name registered once");
        c
    }

    /// A new gauge family registered here. Panics like [`counter_vec`](Self::counter_vec).
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric");
        self.registry
            .register(Box::new(g.clone()))
            .expect("a metric name registered once");
        g
    }

    /// Runs `hook` before each scrape: where counters kept as plain atomics elsewhere (a
    /// server's connection counts, say) are copied into registered series, so the data path
    /// pays nothing for them.
    pub fn on_scrape(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.hooks.lock().push(Box::new(hook));
    }

    /// Every series, in the Prometheus text exposition format 0.0.4 ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        // Held through the gather, so two scrapes at once do not interleave their refreshes.
        let hooks = self.hooks.lock();
        for hook in hooks.iter() {
            hook();
        }
        let families = self.registry.gather();
        drop(hooks);
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding to a Vec fails only for a family without metrics, which gather never returns.
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Sets a counter to `value` (counters only go up; a lower value is ignored). For copying a
/// monotonic atomic kept elsewhere into a registered counter at scrape time.
pub fn set_counter(c: &prometheus::IntCounter, value: u64) {
    let now = c.get();
    if value > now {
        c.inc_by(value - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn series_lines<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
            .collect()
    }

    #[test]
    fn the_text_matches_kitex_names_labels_and_buckets() {
        let m = Metrics::new(MetricsConfig::default());
        let ok = Rpc {
            caller: "",
            callee: "kxserver",
            method: "Echo",
            retry: 0,
        };
        for _ in 0..3 {
            m.server()
                .record(&ok, Status::Succeed, Duration::from_micros(80));
        }
        let fail = Rpc {
            method: "EchoFail",
            ..ok
        };
        m.server()
            .record(&fail, Status::Error, Duration::from_millis(7));
        let text = m.encode();
        // No `_total` on the counter, as Go's client serves it.
        assert!(text.contains("# TYPE kitex_server_throughput counter\n"));
        assert!(text.contains(
            "kitex_server_throughput{callee=\"kxserver\",caller=\"unknown\",method=\"Echo\",retry=\"0\",status=\"succeed\"} 3\n"
        ));
        assert!(text.contains(
            "kitex_server_throughput{callee=\"kxserver\",caller=\"unknown\",method=\"EchoFail\",retry=\"0\",status=\"error\"} 1\n"
        ));
        assert!(text.contains("# TYPE kitex_server_latency_us histogram\n"));
        assert!(text.contains("# HELP kitex_server_latency_us Latency (microseconds) of RPC that had been application-level handled by the server.\n"));
        let buckets: Vec<&str> = series_lines(&text, "kitex_server_latency_us_bucket")
            .into_iter()
            .filter(|l| l.contains("method=\"EchoFail\""))
            .collect();
        let les: Vec<&str> = buckets
            .iter()
            .map(|l| {
                let i = l.find("le=\"").unwrap() + 4;
                &l[i..i + l[i..].find('"').unwrap()]
            })
            .collect();
        assert_eq!(
            les,
            ["5000", "10000", "25000", "50000", "100000", "250000", "500000", "1000000", "+Inf"]
        );
        // 7 ms: above 5000 us, within 10000 us.
        assert!(buckets[0].ends_with("} 0"), "{}", buckets[0]);
        assert!(buckets[1].ends_with("} 1"), "{}", buckets[1]);
        assert!(text.contains(
            "kitex_server_latency_us_sum{callee=\"kxserver\",caller=\"unknown\",method=\"EchoFail\",retry=\"0\",status=\"error\"} 7000\n"
        ));
        // Nothing was recorded on the client side: no series.
        assert!(series_lines(&text, "kitex_client_throughput").is_empty());
    }

    #[test]
    fn wire_labels_past_the_cap_fold_into_other_and_are_counted() {
        let m = Metrics::new(MetricsConfig::default().with_max_label_values(10));
        for i in 0..50 {
            let method = format!("M{i}");
            let rpc = Rpc {
                caller: "c",
                callee: "svc",
                method: &method,
                retry: 0,
            };
            m.server().record(&rpc, Status::Succeed, Duration::ZERO);
            // Again: a known value stays itself, a folded one stays folded.
            m.server().record(&rpc, Status::Succeed, Duration::ZERO);
        }
        let text = m.encode();
        let lines = series_lines(&text, "kitex_server_throughput");
        assert_eq!(lines.len(), 11, "{lines:#?}");
        assert!(text.contains("method=\"M9\""));
        assert!(!text.contains("method=\"M10\""));
        assert!(text.contains(
            "kitex_server_throughput{callee=\"svc\",caller=\"c\",method=\"other\",retry=\"0\",status=\"succeed\"} 80\n"
        ));
        assert!(text.contains("sluice_metric_label_folds_total{label=\"method\"} 80\n"));
    }

    #[test]
    fn series_past_the_series_cap_fold_every_wire_label() {
        let m = Metrics::new(
            MetricsConfig::default()
                .with_max_label_values(100)
                .with_max_series(5),
        );
        for i in 0..20 {
            let method = format!("M{i}");
            let rpc = Rpc {
                caller: "c",
                callee: "svc",
                method: &method,
                retry: 0,
            };
            m.client().record(&rpc, Status::Error, Duration::ZERO);
        }
        let text = m.encode();
        let lines = series_lines(&text, "kitex_client_throughput");
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert!(text.contains(
            "kitex_client_throughput{callee=\"other\",caller=\"other\",method=\"other\",retry=\"0\",status=\"error\"} 15\n"
        ));
    }

    #[test]
    fn scrape_hooks_copy_counters_kept_elsewhere() {
        let m = Metrics::new(MetricsConfig::default());
        let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = m.counter_vec("sluice_test_total", "A test counter.", &["listener"]);
        let (src, dst) = (seen.clone(), c.with_label_values(&["main"]));
        m.on_scrape(move || set_counter(&dst, src.load(std::sync::atomic::Ordering::Relaxed)));
        seen.store(5, std::sync::atomic::Ordering::Relaxed);
        assert!(m
            .encode()
            .contains("sluice_test_total{listener=\"main\"} 5\n"));
        seen.store(9, std::sync::atomic::Ordering::Relaxed);
        assert!(m
            .encode()
            .contains("sluice_test_total{listener=\"main\"} 9\n"));
    }
}
