//! Kitex's RPC series: a throughput counter and a latency histogram (microseconds) labelled
//! `caller`, `callee`, `method`, `retry`, `status`.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;
use std::time::Duration;

use hashbrown::{Equivalent, HashMap};

use parking_lot::RwLock;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

use crate::labels::{Caps, Label};
use crate::{LATENCY_BUCKETS_US, OTHER, UNKNOWN};

/// The label values of one call or stream. Empty values are reported as `unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rpc<'a> {
    /// The calling service (TTHeader `FromService`, gRPC `source-service`).
    pub caller: &'a str,
    /// The called service.
    pub callee: &'a str,
    /// The method.
    pub method: &'a str,
    /// The attempt number: 0 for a first attempt.
    pub retry: u32,
}

impl<'a> Rpc<'a> {
    fn or_unknown(self) -> Self {
        let f = |s: &'a str| if s.is_empty() { UNKNOWN } else { s };
        Rpc {
            caller: f(self.caller),
            callee: f(self.callee),
            method: f(self.method),
            retry: self.retry,
        }
    }
}

/// Hashed as the cache's owned key is, so a borrowed label set finds its entry without an
/// allocation.
impl Hash for Rpc<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.caller.hash(h);
        self.callee.hash(h);
        self.method.hash(h);
        self.retry.hash(h);
    }
}

/// The owned label set an entry is kept under.
#[derive(Debug, PartialEq, Eq)]
struct Key {
    caller: Box<str>,
    callee: Box<str>,
    method: Box<str>,
    retry: u32,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.caller.hash(h);
        self.callee.hash(h);
        self.method.hash(h);
        self.retry.hash(h);
    }
}

impl Equivalent<Key> for Rpc<'_> {
    fn equivalent(&self, k: &Key) -> bool {
        *k.method == *self.method
            && *k.callee == *self.callee
            && *k.caller == *self.caller
            && k.retry == self.retry
    }
}

/// How a call or stream ended, as Kitex labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `succeed`.
    Succeed,
    /// `error`: Sluice or the downstream answered with an error (an exception, a non-OK
    /// status, a reset).
    Error,
}

impl Status {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeed => "succeed",
            Status::Error => "error",
        }
    }
}

/// A counter and a histogram of one label set.
#[derive(Debug)]
struct Pair {
    count: IntCounter,
    latency: Histogram,
}

/// One label combination's series per status, made when first observed (so a status that
/// never happened has no series, as in Kitex).
type Entry = [OnceLock<Pair>; 2];

/// One of Kitex's two RPC series families (server or client).
pub struct RpcSeries {
    throughput: IntCounterVec,
    latency: HistogramVec,
    /// Label combinations (folded ones under their folded labels), hashed with hashbrown's
    /// fast default hasher: label values are bounded by the caps, so flooding the table is not
    /// a concern.
    entries: RwLock<HashMap<Key, Entry>>,
    caps: std::sync::Arc<Caps>,
}

impl std::fmt::Debug for RpcSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcSeries")
            .field("series", &self.entries.read().len())
            .finish_non_exhaustive()
    }
}

const LABELS: [&str; 5] = ["caller", "callee", "method", "status", "retry"];

impl RpcSeries {
    pub(crate) fn new(
        registry: &Registry,
        prefix: &str,
        throughput_help: &str,
        latency_help: &str,
        caps: std::sync::Arc<Caps>,
    ) -> Self {
        let throughput = IntCounterVec::new(
            Opts::new(format!("{prefix}_throughput"), throughput_help),
            &LABELS,
        )
        .expect("a valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(format!("{prefix}_latency_us"), latency_help)
                .buckets(LATENCY_BUCKETS_US.to_vec()),
            &LABELS,
        )
        .expect("a valid metric");
        registry
            .register(Box::new(throughput.clone()))
            .expect("registered once");
        registry
            .register(Box::new(latency.clone()))
            .expect("registered once");
        Self {
            throughput,
            latency,
            entries: RwLock::new(HashMap::new()),
            caps,
        }
    }

    /// Counts one call or stream and observes its duration (in microseconds).
    pub fn record(&self, rpc: &Rpc<'_>, status: Status, elapsed: Duration) {
        let rpc = rpc.or_unknown();
        {
            let entries = self.entries.read();
            if let Some((k, e)) = entries.get_key_value(&rpc) {
                self.observe(k, e, status, elapsed);
                return;
            }
        }
        self.record_new(rpc, status, elapsed);
    }

    /// A label combination not seen as it is: its values pass the caps (and may be folded),
    /// then the (possibly folded) combination is found or made.
    #[cold]
    fn record_new(&self, rpc: Rpc<'_>, status: Status, elapsed: Duration) {
        let mut folded = Rpc {
            caller: self.caps.admit(Label::Caller, rpc.caller),
            callee: self.caps.admit(Label::Callee, rpc.callee),
            method: self.caps.admit(Label::Method, rpc.method),
            retry: rpc.retry,
        };
        let mut entries = self.entries.write();
        if !entries.contains_key(&folded) && entries.len() >= self.caps.config.max_series {
            for (label, value) in [
                (Label::Caller, folded.caller),
                (Label::Callee, folded.callee),
                (Label::Method, folded.method),
            ] {
                if value != OTHER {
                    self.caps.fold(label);
                }
            }
            folded = Rpc {
                caller: OTHER,
                callee: OTHER,
                method: OTHER,
                retry: folded.retry,
            };
        }
        if !entries.contains_key(&folded) {
            let key = Key {
                caller: folded.caller.into(),
                callee: folded.callee.into(),
                method: folded.method.into(),
                retry: folded.retry,
            };
            entries.insert(key, Default::default());
        }
        // Observed under the write lock: this path runs once per new combination (and for
        // folded values), never in the steady state.
        if let Some((k, e)) = entries.get_key_value(&folded) {
            self.observe(k, e, status, elapsed);
        }
    }

    fn observe(&self, k: &Key, e: &Entry, status: Status, elapsed: Duration) {
        let pair = e[status as usize].get_or_init(|| {
            let retry = k.retry.to_string();
            let values = [
                &*k.caller,
                &*k.callee,
                &*k.method,
                status.as_str(),
                retry.as_str(),
            ];
            Pair {
                count: self.throughput.with_label_values(&values),
                latency: self.latency.with_label_values(&values),
            }
        });
        pair.count.inc();
        pair.latency.observe(elapsed.as_micros() as f64);
    }
}
