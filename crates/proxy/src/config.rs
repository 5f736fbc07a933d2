//! The TOML configuration: listeners, routes, downstreams, limits, runtime, tracing.
//!
//! Every key, its default and an example are in `docs/configuration.md`. Loading checks the
//! whole file and reports the first problem with the key that holds it, e.g.
//! `downstreams.echo.transport: unknown transport "tcp" (...)`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
pub use sluice_client::Transport;
use sluice_client::{Balance, ClientConfig, Endpoint};

/// A configuration problem, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// Dotted path of the offending key (`routes[2].downstream`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

fn err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// The raw file, as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listeners: Vec<RawListener>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    downstreams: BTreeMap<String, RawDownstream>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    runtime: RawRuntime,
    #[serde(default)]
    tracing: RawTracing,
    admin: Option<RawAdmin>,
    #[serde(default)]
    metrics: RawMetrics,
    access_log: Option<RawAccessLog>,
    #[serde(default)]
    discovery: RawDiscovery,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDiscovery {
    etcd: Option<RawEtcd>,
    max_services: Option<usize>,
    service_idle_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    endpoints: Vec<String>,
    prefix: Option<String>,
    username: Option<String>,
    password: Option<String>,
    connect_timeout_ms: Option<u64>,
    register_ttl_ms: Option<u64>,
    tls_ca: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    tls_server_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    address: String,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    max_label_values: Option<usize>,
    max_series: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    path: String,
    sample_ratio: Option<f64>,
    queue: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTracing {
    otlp_endpoint: Option<String>,
    sample_ratio: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    worker_threads: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Option<String>,
    address: String,
    cluster: String,
    default_service: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    tls_client_ca: Option<String>,
    tls_client_auth: Option<String>,
    register: Option<String>,
    advertise: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    service: Option<String>,
    method: Option<String>,
    header: Option<RawHeaderMatch>,
    downstream: Option<String>,
    discover: Option<String>,
    transport: Option<String>,
    timeout_ms: Option<u64>,
    max_timeout_ms: Option<u64>,
    retry_on: Option<Vec<String>>,
    max_retries: Option<u32>,
    retry_budget_percent: Option<u32>,
    per_try_timeout_ms: Option<u64>,
    rate_limit: Option<RawRateLimit>,
    idl: Option<String>,
    include_dirs: Option<Vec<String>>,
    field: Option<String>,
    equals: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    rps: f64,
    burst: Option<f64>,
    key: Option<String>,
    max_keys: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderMatch {
    key: String,
    value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawEndpoint {
    Address(String),
    Weighted {
        address: String,
        weight: Option<u32>,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDownstream {
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
    discovery: Option<String>,
    service: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    dns_refresh_ms: Option<u64>,
    transport: Option<String>,
    balance: Option<String>,
    multiplex: Option<bool>,
    connect_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
    max_idle_per_endpoint: Option<usize>,
    idle_timeout_ms: Option<u64>,
    failure_backoff_ms: Option<u64>,
    first_response_timeout_ms: Option<u64>,
    hash_key: Option<String>,
    stream_protocol: Option<String>,
    grpc_unary: Option<String>,
    grpc_package: Option<String>,
    consecutive_failures: Option<u32>,
    base_ejection_ms: Option<u64>,
    max_ejection_ms: Option<u64>,
    max_ejection_percent: Option<u8>,
    max_pending: Option<usize>,
    max_in_flight: Option<usize>,
    max_connections: Option<usize>,
    tls: Option<RawDownstreamTls>,
}

/// `tls = { ca, server_name, cert, key }` on a downstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDownstreamTls {
    ca: Option<String>,
    server_name: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_frame_size: Option<usize>,
    sniff_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    max_in_flight_per_conn: Option<usize>,
    drain_grace_ms: Option<u64>,
    frame_timeout_ms: Option<u64>,
    max_streams_per_conn: Option<usize>,
    max_in_flight: Option<usize>,
}

use sluice_server::TlsConfig;
pub use sluice_server::{ClientAuth, Cluster};

/// A listener.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Listener {
    /// Name for logs (defaults to the address).
    pub name: String,
    /// Address to bind.
    pub address: SocketAddr,
    /// Protocol family.
    pub cluster: Cluster,
    /// Service for requests that carry no name (Framed, Buffered).
    pub default_service: Option<String>,
    /// TLS, with ALPN `h2` on `grpc` listeners and none on `ttstream` ones.
    pub tls: Option<TlsConfig>,
    /// The certificate and key files `tls` was read from (shown by the admin `/config`; the
    /// key's contents never are).
    pub tls_files: Option<(String, String)>,
    /// The client CA bundle `tls` checks client certificates against (`tls_client_ca`), and
    /// whether one is required (`tls_client_auth`).
    pub tls_client_ca: Option<(String, ClientAuth)>,
    /// Service name to register this listener under in etcd (`register`), in Kitex's
    /// registry format, so Kitex clients using registry-etcd find the proxy.
    pub register: Option<String>,
    /// Address to register (`advertise`); `None`: the bound address, or this host's first
    /// non-loopback IPv4 address with the bound port when bound to `0.0.0.0` / `::`.
    pub advertise: Option<SocketAddr>,
}

/// Where a downstream's endpoints come from (`discovery` on a downstream).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// `endpoints`, resolved once when the configuration loads (the default).
    Static,
    /// `endpoints` are `host:port` names re-resolved every `refresh`, every A and AAAA
    /// record an endpoint (with the name's weight).
    Dns {
        /// The names and their weights.
        names: Vec<(String, u32)>,
        /// How often they are resolved again.
        refresh: Duration,
    },
    /// The instances registered in etcd under `service`, watched.
    Etcd {
        /// The registry service name.
        service: String,
        /// Only instances whose tags include all of these.
        tags: BTreeMap<String, String>,
    },
}

impl Source {
    /// The configuration spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Dns { .. } => "dns",
            Source::Etcd { .. } => "etcd",
        }
    }
}

/// The etcd connection (`[discovery.etcd]`), for downstreams found in etcd, routes that
/// discover, and listeners that register.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Etcd {
    /// The client settings these make (TLS files read).
    pub client: Arc<sluice_discovery::EtcdConfig>,
    /// TLS to etcd, as configured (files by path).
    pub tls_files: Option<EtcdTlsFiles>,
    /// etcd client endpoints (`host:port` or URLs).
    pub endpoints: Vec<String>,
    /// Key prefix. Default `kitex/registry-etcd` (Kitex's registry-etcd).
    pub prefix: String,
    /// User name, when etcd has authentication on.
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<String>,
    /// Connect timeout. Default 2 s.
    pub connect_timeout: Duration,
    /// TTL of the lease a registered listener's key lives on (kept alive). Default 60 s, as
    /// Kitex.
    pub register_ttl: Duration,
}

/// Two etcd connections are the same when every setting is, TLS material (as read from its
/// files) included; a reload that changes any of them watches and registers anew.
impl PartialEq for Etcd {
    fn eq(&self, other: &Self) -> bool {
        let tls = |e: &Etcd| {
            e.client.tls.as_ref().map(|t| {
                (
                    t.ca_pem.clone(),
                    t.client_cert_pem.clone(),
                    t.client_key_pem.clone(),
                    t.server_name.clone(),
                )
            })
        };
        self.endpoints == other.endpoints
            && self.prefix == other.prefix
            && self.username == other.username
            && self.password == other.password
            && self.connect_timeout == other.connect_timeout
            && self.register_ttl == other.register_ttl
            && self.tls_files == other.tls_files
            && tls(self) == tls(other)
    }
}

/// A downstream's `transport` as configured: `grpc` for a gRPC-only one.
fn transport_name(d: &ClientConfig) -> &'static str {
    if d.grpc_only {
        "grpc"
    } else {
        d.transport.as_str()
    }
}

/// Refuses a route that can only send protobuf streams to a downstream whose streams leave as
/// TTStream. A protobuf payload route on a streaming method matches gRPC protobuf streams and
/// nothing else (payload routes never read TTStream streams), and every one of them would be
/// refused per stream; other routes to such a downstream may carry thrift streams, which
/// convert, so `describe` only notes them.
fn refuse_pb_over_ttstream(
    payload: Option<&PayloadMatch>,
    downstream: Option<&str>,
    downstreams: &BTreeMap<String, ClientConfig>,
    key: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let (Some(p), Some(name)) = (payload, downstream) else {
        return Ok(());
    };
    let converting = downstreams
        .get(name)
        .is_some_and(|d| d.stream_protocol == sluice_client::StreamProtocol::TTStream);
    if converting
        && p.matcher.is_protobuf()
        && p.matcher.streaming() != sluice_idl::StreamingMode::Unary
    {
        return Err(err(
            key("downstream"),
            format!(
                "{name} has stream_protocol = \"ttstream\" and this route matches only gRPC \
                 protobuf streams: {}",
                crate::convert::PB_OVER_TTSTREAM
            ),
        ));
    }
    Ok(())
}

/// A route's `idl` / `field` / `equals`: all three or none, with a method to read the
/// arguments of.
fn payload_match(
    r: &RawRoute,
    service: Option<&str>,
    key: &dyn Fn(&str) -> String,
) -> Result<Option<PayloadMatch>, ConfigError> {
    let (idl, field, equals) = match (&r.idl, &r.field, &r.equals) {
        (None, None, None) => {
            if r.include_dirs.is_some() {
                return Err(err(key("include_dirs"), "applies to routes with an idl"));
            }
            return Ok(None);
        }
        (Some(i), Some(f), Some(e)) => (i, f, e),
        (i, f, _) => {
            let missing = if i.is_none() {
                "idl"
            } else if f.is_none() {
                "field"
            } else {
                "equals"
            };
            return Err(err(
                key(missing),
                "missing: a payload route needs idl, field and equals",
            ));
        }
    };
    let Some(method) = r.method.as_deref() else {
        return Err(err(
            key("method"),
            "missing: a payload route reads the arguments of one method",
        ));
    };
    let include_dirs = r.include_dirs.clone().unwrap_or_default();
    let dirs: Vec<std::path::PathBuf> = include_dirs.iter().map(std::path::PathBuf::from).collect();
    let loaded = sluice_idl::Idl::load(std::path::Path::new(idl), &dirs)
        .map_err(|e| err(key("idl"), e.to_string()))?;
    let matcher = sluice_idl::FieldMatch::new(&loaded, service, method, field, equals)
        .map_err(|e| err(key("field"), e.to_string()))?;
    Ok(Some(PayloadMatch {
        idl: idl.clone(),
        include_dirs,
        field: field.clone(),
        equals: equals.clone(),
        matcher,
    }))
}

/// A route's retries and rate limit, from its keys.
fn route_policy(r: &RawRoute, key: &dyn Fn(&str) -> String) -> Result<RoutePolicy, ConfigError> {
    let (mut on_reset, mut on_unavailable, mut on_timeout) = (false, false, false);
    for (i, why) in r.retry_on.iter().flatten().enumerate() {
        match why.as_str() {
            "reset" => on_reset = true,
            "unavailable" => on_unavailable = true,
            "timeout" => on_timeout = true,
            other => {
                return Err(err(
                    format!("{}[{i}]", key("retry_on")),
                    format!(
                    "unknown retry condition {other:?} (expected reset, unavailable or timeout)"
                ),
                ))
            }
        }
    }
    let per_try_timeout = r.per_try_timeout_ms.map(Duration::from_millis);
    if per_try_timeout.is_some_and(|d| d.is_zero()) {
        return Err(err(key("per_try_timeout_ms"), "must be greater than 0"));
    }
    if on_timeout && per_try_timeout.is_none() {
        return Err(err(
            key("retry_on"),
            "\"timeout\" needs per_try_timeout_ms (a call out of its whole deadline is never retried)",
        ));
    }
    let percent = r.retry_budget_percent.unwrap_or(20);
    if percent > 100 {
        return Err(err(key("retry_budget_percent"), "must be at most 100"));
    }
    let retry = Some(sluice_client::RetryPolicy {
        on_reset,
        on_unavailable,
        on_timeout,
        max_retries: r.max_retries.unwrap_or(2),
        per_try_timeout,
        budget: sluice_resilience::RetryBudget::new(percent),
    });
    let rate_limit = match &r.rate_limit {
        None => None,
        Some(l) => {
            if !(l.rps > 0.0 && l.rps.is_finite()) {
                return Err(err(key("rate_limit.rps"), "must be greater than 0"));
            }
            let burst = l.burst.unwrap_or(l.rps.max(1.0));
            if !(burst >= 1.0 && burst.is_finite()) {
                return Err(err(key("rate_limit.burst"), "must be at least 1"));
            }
            let limit = sluice_resilience::RateLimit { rps: l.rps, burst };
            let key_kind = match l.key.as_deref() {
                None => RateKey::Route,
                Some("caller") => RateKey::Caller,
                Some("") => return Err(err(key("rate_limit.key"), "must not be empty")),
                Some(k) => RateKey::Metainfo(k.to_owned()),
            };
            let max_keys = l.max_keys.unwrap_or(10_000);
            if max_keys == 0 {
                return Err(err(key("rate_limit.max_keys"), "must be at least 1"));
            }
            let now = sluice_resilience::now();
            Some(RateLimiter {
                limit,
                key: key_kind,
                bucket: sluice_resilience::TokenBucket::new(limit, now),
                keyed: sluice_resilience::KeyedBuckets::new(limit, max_keys, now),
            })
        }
    };
    Ok(RoutePolicy { retry, rate_limit })
}

/// The TLS files of `[discovery.etcd]` (`tls_ca`, `tls_cert`, `tls_key`, `tls_server_name`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdTlsFiles {
    /// The CA that signed etcd's certificate.
    pub ca: String,
    /// A client certificate and its key, for etcd's client certificate authentication.
    pub identity: Option<(String, String)>,
    /// The name etcd's certificate is checked against, when not the endpoint's host.
    pub server_name: Option<String>,
}

/// Discovery settings (`[discovery]`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Discovery {
    /// The etcd connection, if any.
    pub etcd: Option<Etcd>,
    /// Services a discovering route keeps clients for at once; a request for another
    /// service past it is refused. Default 1000.
    pub max_services: usize,
    /// A discovered service's clients are closed once unused this long. Default 5 min.
    pub service_idle_timeout: Duration,
}

impl Default for Discovery {
    fn default() -> Self {
        Self {
            etcd: None,
            max_services: 1000,
            service_idle_timeout: Duration::from_secs(300),
        }
    }
}

/// How a discovering route (`discover = "etcd"`) reaches the services it finds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Discover {
    /// Ping-pong transport to the instances found. Default `ttheader`.
    pub transport: Transport,
}

/// The admin listener (`[admin]`): `/metrics`, `/healthz`, `/readyz`, `/config`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Admin {
    /// Address to bind (HTTP/1.1).
    pub address: SocketAddr,
}

/// The access log (`[access_log]`): one JSON line per call or stream.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AccessLog {
    /// `"stdout"`, `"stderr"`, or a file path (appended to).
    pub path: String,
    /// Share of calls and streams logged, 0 to 1. Default 1.
    pub sample_ratio: f64,
    /// Lines waiting to be written at most; past it lines are dropped (and counted).
    /// Default 4096.
    pub queue: usize,
}

impl AccessLog {
    /// An access log to `path` (`"stdout"`, `"stderr"` or a file), every call logged, a queue
    /// of 4096 lines.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            sample_ratio: 1.0,
            queue: 4096,
        }
    }

    /// Sets [`sample_ratio`](Self::sample_ratio) (clamped to 0..=1).
    pub fn with_sample_ratio(mut self, ratio: f64) -> Self {
        self.sample_ratio = ratio.clamp(0.0, 1.0);
        self
    }

    /// Sets [`queue`](Self::queue) (at least 1).
    pub fn with_queue(mut self, lines: usize) -> Self {
        self.queue = lines.max(1);
        self
    }
}

/// A header/metainfo match.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeaderMatch {
    /// String key (TTHeader info block 0x01, or mesh header).
    pub key: String,
    /// Exact value.
    pub value: String,
}

/// A payload match: the field at a path of names in the request's arguments equals a value.
///
/// The route's IDL turns the names into field ids when the configuration loads; per request only
/// that one field is read, every other one skipped ([`sluice_idl::FieldMatch`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PayloadMatch {
    /// The IDL file, as configured.
    pub idl: String,
    /// More directories for its includes and imports, as configured.
    pub include_dirs: Vec<String>,
    /// The path as configured (`req.tenant`).
    pub field: String,
    /// The value as configured.
    pub equals: String,
    /// The compiled condition.
    pub matcher: sluice_idl::FieldMatch,
}

/// A route: the first that matches a request wins.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Route {
    /// Exact service name, or `None` for `"*"` (any, including none).
    pub service: Option<String>,
    /// Exact method name, if set.
    pub method: Option<String>,
    /// Header match, if set.
    pub header: Option<HeaderMatch>,
    /// Payload match (`idl`, `field`, `equals`), if set.
    pub payload: Option<PayloadMatch>,
    /// Downstream name (empty when the route discovers).
    pub downstream: String,
    /// Set when the route sends each request to the service it addresses, found in etcd
    /// (`discover = "etcd"`), instead of a configured downstream.
    pub discover: Option<Discover>,
    /// Deadline for requests that carry none.
    pub timeout: Option<Duration>,
    /// Upper bound on any request's deadline.
    pub max_timeout: Option<Duration>,
    /// Retries and rate limit, with their state (budget, buckets), shared by the route's
    /// requests.
    pub policy: Arc<RoutePolicy>,
}

/// A route's retries and rate limit, and their state.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RoutePolicy {
    /// Retries beyond refused connections (`retry_on`, `max_retries`,
    /// `retry_budget_percent`, `per_try_timeout_ms`); `None`: refused connections only
    /// (still within a budget of `retry_budget_percent`).
    pub retry: Option<sluice_client::RetryPolicy>,
    /// `rate_limit`.
    pub rate_limit: Option<RateLimiter>,
}

/// Routes compare by their policies' identity: two routes with equal settings still keep
/// budgets and buckets of their own.
impl PartialEq for RoutePolicy {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for RoutePolicy {}

/// What a rate limit counts by (`rate_limit.key`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateKey {
    /// One bucket for the whole route (no `key`).
    Route,
    /// One bucket per caller (`key = "caller"`: TTHeader `FromService`, gRPC
    /// `source-service`).
    Caller,
    /// One bucket per value of this metainfo / header key (requests without it share one).
    Metainfo(String),
}

/// A route's token buckets.
#[derive(Debug)]
#[non_exhaustive]
pub struct RateLimiter {
    /// `rps` and `burst`.
    pub limit: sluice_resilience::RateLimit,
    /// What it counts by.
    pub key: RateKey,
    /// The route's one bucket (`RateKey::Route`).
    pub bucket: sluice_resilience::TokenBucket,
    /// One bucket per key, bounded by `max_keys`.
    pub keyed: sluice_resilience::KeyedBuckets,
}

impl RateLimiter {
    /// Takes a token for a request from `caller` (read only for `RateKey::Caller`) whose
    /// metainfo `lookup` reads; false: refuse it. A request without the key counted by
    /// shares the route's one bucket.
    pub fn admit<'a>(
        &self,
        caller: impl FnOnce() -> Option<&'a [u8]>,
        lookup: impl FnOnce(&str) -> Option<&'a [u8]>,
    ) -> bool {
        let now = sluice_resilience::now();
        let key = match &self.key {
            RateKey::Route => None,
            RateKey::Caller => caller(),
            RateKey::Metainfo(k) => lookup(k),
        };
        match key {
            Some(v) => self.keyed.try_take(v, now),
            None => self.bucket.try_take(now),
        }
    }
}

/// Server-side limits, shared by all listeners.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Largest frame or message. Default 16 MiB.
    pub max_frame_size: usize,
    /// Sniff timeout. Default 5 s.
    pub sniff_timeout: Duration,
    /// Idle connection timeout. Default 10 min.
    pub idle_timeout: Duration,
    /// Connections per listener. Default 10 000.
    pub max_connections: usize,
    /// Requests in flight per TTHeader connection. Default 256.
    pub max_in_flight_per_conn: usize,
    /// Drain grace period. Default 10 s.
    pub drain_grace: Duration,
    /// Time a started frame (or request) has to complete. Default 30 s.
    pub frame_timeout: Duration,
    /// TTStream streams open at once per connection. Default 1000.
    pub max_streams_per_conn: usize,
    /// Requests and streams forwarded at once by the whole process; past it a caller gets an
    /// overloaded error at once. Default 100 000.
    pub max_in_flight: usize,
}

/// Export of the hop spans (`[tracing]`). The relay of W3C trace context
/// ([`trace`](crate::trace)) does not depend on it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Tracing {
    /// OTLP/gRPC collector (`http://host:port`) to export one span per forwarded call or
    /// stream to; `None` (the default): nothing is exported.
    pub otlp_endpoint: Option<String>,
    /// Share of the calls that arrive without a trace whose span is exported, as a new trace
    /// (0.0 to 1.0). A call that arrives with a trace is exported when its caller sampled it.
    /// Default 1.0.
    pub sample_ratio: f64,
}

impl Default for Tracing {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: 1.0,
        }
    }
}

/// A checked configuration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Listeners.
    pub listeners: Vec<Listener>,
    /// Routes, in match order.
    pub routes: Vec<Route>,
    /// Downstream clients' settings, by name.
    pub downstreams: BTreeMap<String, ClientConfig>,
    /// Where each downstream's endpoints come from, by name (every downstream has one).
    pub sources: BTreeMap<String, Source>,
    /// Discovery: etcd, and the limits of discovering routes.
    pub discovery: Discovery,
    /// Limits.
    pub limits: Limits,
    /// Runtime worker threads (`[runtime] worker_threads`); `None`: one per core.
    pub worker_threads: Option<usize>,
    /// The admin listener; `None` (the default): none, and no metrics are kept.
    pub admin: Option<Admin>,
    /// Limits of the metrics registry (`[metrics]`).
    pub metrics: sluice_metrics::MetricsConfig,
    /// The access log; `None` (the default): off.
    pub access_log: Option<AccessLog>,
    /// Span export (`[tracing]`).
    pub tracing: Tracing,
}

fn ms(v: Option<u64>, default_ms: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default_ms))
}

impl Config {
    /// The server settings of listener `l`: its own, and the shared limits.
    pub fn server_config(&self, l: &Listener) -> sluice_server::ServerConfig {
        let limits = &self.limits;
        sluice_server::ServerConfig::default()
            .with_name(l.name.clone())
            .with_sniff_timeout(limits.sniff_timeout)
            .with_idle_timeout(limits.idle_timeout)
            .with_max_frame_size(limits.max_frame_size)
            .with_max_in_flight_per_conn(limits.max_in_flight_per_conn)
            .with_max_connections(limits.max_connections)
            .with_default_service(l.default_service.clone())
            .with_drain_grace(limits.drain_grace)
            .with_frame_timeout(limits.frame_timeout)
            .with_max_streams_per_conn(limits.max_streams_per_conn)
            .with_cluster(l.cluster)
            .with_tls(l.tls.clone())
    }

    /// Parses and checks a TOML document.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // toml reports the key path and position in its message.
            let msg = e.message().to_owned();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].lines().count().max(1);
                    format!("line {line}")
                })
                .unwrap_or_else(|| "config".to_owned());
            err(at, msg)
        })?;
        Self::check(raw)
    }

    /// Reads and checks a file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(path.display().to_string(), format!("cannot read: {e}")))?;
        Self::from_toml(&text)
    }

    fn check(raw: RawConfig) -> Result<Config, ConfigError> {
        let discovery = check_discovery(&raw.discovery)?;
        let mut downstreams = BTreeMap::new();
        let mut sources = BTreeMap::new();
        for (name, d) in &raw.downstreams {
            let key = |k: &str| format!("downstreams.{name}.{k}");
            let kind = d.discovery.as_deref().unwrap_or("static");
            if kind != "etcd" && (d.service.is_some() || d.tags.is_some()) {
                let k = if d.service.is_some() {
                    "service"
                } else {
                    "tags"
                };
                return Err(err(key(k), "applies to discovery = \"etcd\" only"));
            }
            if kind != "dns" && d.dns_refresh_ms.is_some() {
                return Err(err(
                    key("dns_refresh_ms"),
                    "applies to discovery = \"dns\" only",
                ));
            }
            let mut endpoints = Vec::new();
            let mut names = Vec::new();
            for (i, e) in d.endpoints.iter().enumerate() {
                let (address, weight) = match e {
                    RawEndpoint::Address(a) => (a, 1),
                    RawEndpoint::Weighted { address, weight } => (address, weight.unwrap_or(1)),
                };
                if weight == 0 {
                    return Err(err(
                        format!("{}[{i}].weight", key("endpoints")),
                        "weight must be at least 1",
                    ));
                }
                if kind == "dns" {
                    // Resolved by the DNS source, again and again: only the form is checked
                    // here, so a name that does not resolve yet does not stop the proxy.
                    check_host_port(address)
                        .map_err(|m| err(format!("{}[{i}]", key("endpoints")), m))?;
                    names.push((address.clone(), weight));
                    continue;
                }
                let addr =
                    resolve(address).map_err(|m| err(format!("{}[{i}]", key("endpoints")), m))?;
                endpoints.push(Endpoint { addr, weight });
            }
            let source = match kind {
                "static" => {
                    if endpoints.is_empty() {
                        return Err(err(key("endpoints"), "at least one endpoint is needed"));
                    }
                    Source::Static
                }
                "dns" => {
                    if names.is_empty() {
                        return Err(err(key("endpoints"), "at least one name is needed"));
                    }
                    let refresh = ms(d.dns_refresh_ms, 5000);
                    if refresh < Duration::from_millis(100) {
                        return Err(err(key("dns_refresh_ms"), "must be at least 100"));
                    }
                    Source::Dns { names, refresh }
                }
                "etcd" => {
                    if discovery.etcd.is_none() {
                        return Err(err(
                            key("discovery"),
                            "\"etcd\" needs a [discovery.etcd] section",
                        ));
                    }
                    if !endpoints.is_empty() {
                        return Err(err(
                            key("endpoints"),
                            "a downstream found in etcd takes no endpoints",
                        ));
                    }
                    let service = d.service.clone().unwrap_or_else(|| name.clone());
                    if service.is_empty() || service.contains('/') {
                        return Err(err(key("service"), "must be a name without '/'"));
                    }
                    Source::Etcd {
                        service,
                        tags: d.tags.clone().unwrap_or_default(),
                    }
                }
                other => {
                    return Err(err(
                        key("discovery"),
                        format!("unknown discovery {other:?} (expected static, dns or etcd)"),
                    ))
                }
            };
            sources.insert(name.clone(), source);
            let mut c = ClientConfig::new(name.clone(), endpoints);
            match d.transport.as_deref() {
                // A gRPC-only downstream: ping-pong calls to it become gRPC unary calls.
                Some("grpc") => c.grpc_only = true,
                Some(t) => {
                    c.transport = t.parse::<Transport>().map_err(|e| {
                        err(
                            key("transport"),
                            format!("{e}, or grpc for a gRPC-only downstream"),
                        )
                    })?
                }
                None => {}
            }
            if d.grpc_package.is_some() && !c.grpc_only {
                return Err(err(
                    key("grpc_package"),
                    "applies with transport = \"grpc\" only",
                ));
            }
            c.grpc_package = d.grpc_package.clone();
            if let Some(b) = &d.balance {
                c.balance = b
                    .parse::<Balance>()
                    .map_err(|e| err(key("balance"), e.to_string()))?;
            }
            c.multiplex = d.multiplex.unwrap_or(false);
            if c.multiplex && !c.transport.is_ttheader() {
                return Err(err(
                    key("multiplex"),
                    "multiplexing needs a ttheader transport",
                ));
            }
            c.connect_timeout = ms(d.connect_timeout_ms, 1000);
            c.request_timeout = ms(d.request_timeout_ms, 30_000);
            if c.connect_timeout.is_zero() {
                return Err(err(key("connect_timeout_ms"), "must be greater than 0"));
            }
            if c.request_timeout.is_zero() {
                return Err(err(key("request_timeout_ms"), "must be greater than 0"));
            }
            c.max_idle_per_endpoint = d.max_idle_per_endpoint.unwrap_or(64);
            c.idle_timeout = ms(d.idle_timeout_ms, 60_000);
            c.failure_backoff = ms(d.failure_backoff_ms, 1000);
            c.first_response_timeout = ms(d.first_response_timeout_ms, 30_000);
            if let Some(p) = &d.stream_protocol {
                c.stream_protocol = p.parse().map_err(|e: sluice_client::UnknownName| {
                    err(key("stream_protocol"), e.to_string())
                })?;
            }
            if let Some(u) = &d.grpc_unary {
                c.grpc_unary = u.parse().map_err(|e: sluice_client::UnknownName| {
                    err(key("grpc_unary"), e.to_string())
                })?;
            }
            c.hash_key = d.hash_key.clone();
            if c.hash_key.as_deref() == Some("") {
                return Err(err(key("hash_key"), "must not be empty"));
            }
            if c.hash_key.is_some() && c.balance != Balance::ConsistentHash {
                return Err(err(
                    key("hash_key"),
                    "applies with balance = \"consistent-hash\" only",
                ));
            }
            if let Some(n) = d.consecutive_failures {
                c.outlier.consecutive_failures = n;
            }
            c.outlier.base_ejection = ms(d.base_ejection_ms, 30_000);
            c.outlier.max_ejection = ms(d.max_ejection_ms, 300_000);
            if c.outlier.base_ejection.is_zero() {
                return Err(err(key("base_ejection_ms"), "must be greater than 0"));
            }
            if c.outlier.max_ejection < c.outlier.base_ejection {
                return Err(err(
                    key("max_ejection_ms"),
                    "is smaller than base_ejection_ms",
                ));
            }
            if let Some(p) = d.max_ejection_percent {
                if p > 100 {
                    return Err(err(key("max_ejection_percent"), "must be at most 100"));
                }
                c.outlier.max_ejection_percent = p;
            }
            if let Some(n) = d.max_in_flight {
                c.max_in_flight = n;
            }
            if let Some(n) = d.max_connections {
                c.max_connections = n;
            }
            if let Some(n) = d.max_pending {
                c.max_pending = n;
            }
            if let Some(t) = &d.tls {
                let first_host = d.endpoints.first().and_then(|e| match e {
                    RawEndpoint::Address(a) | RawEndpoint::Weighted { address: a, .. } => {
                        dns_host(a)
                    }
                });
                c.tls = Some(check_downstream_tls(t, first_host, &|k| key(k))?);
            }
            downstreams.insert(name.clone(), c);
        }

        let limits = Limits {
            max_frame_size: raw
                .limits
                .max_frame_size
                .unwrap_or(sluice_ttheader::DEFAULT_MAX_FRAME_SIZE),
            sniff_timeout: ms(raw.limits.sniff_timeout_ms, 5000),
            idle_timeout: ms(raw.limits.idle_timeout_ms, 600_000),
            max_connections: raw.limits.max_connections.unwrap_or(10_000),
            max_in_flight_per_conn: raw.limits.max_in_flight_per_conn.unwrap_or(256),
            drain_grace: ms(raw.limits.drain_grace_ms, 10_000),
            frame_timeout: ms(raw.limits.frame_timeout_ms, 30_000),
            max_streams_per_conn: raw.limits.max_streams_per_conn.unwrap_or(1000),
            max_in_flight: raw.limits.max_in_flight.unwrap_or(100_000),
        };
        if limits.max_in_flight == 0 {
            return Err(err("limits.max_in_flight", "must be at least 1"));
        }
        if limits.max_frame_size < 64 {
            return Err(err("limits.max_frame_size", "must be at least 64 bytes"));
        }
        if limits.max_connections == 0 {
            return Err(err("limits.max_connections", "must be at least 1"));
        }
        if limits.max_in_flight_per_conn == 0 {
            return Err(err("limits.max_in_flight_per_conn", "must be at least 1"));
        }
        if limits.max_streams_per_conn == 0 {
            return Err(err("limits.max_streams_per_conn", "must be at least 1"));
        }
        if limits.frame_timeout.is_zero() {
            return Err(err("limits.frame_timeout_ms", "must be at least 1"));
        }
        for d in downstreams.values_mut() {
            d.max_frame_size = limits.max_frame_size;
        }

        let mut listeners = Vec::new();
        for (i, l) in raw.listeners.iter().enumerate() {
            let key = |k: &str| format!("listeners[{i}].{k}");
            let address = resolve(&l.address).map_err(|m| err(key("address"), m))?;
            let cluster = match l.cluster.as_str() {
                "ttstream" => Cluster::TTStream,
                "grpc" => Cluster::Grpc,
                other => {
                    return Err(err(
                        key("cluster"),
                        format!("unknown cluster {other:?} (expected \"ttstream\" or \"grpc\")"),
                    ))
                }
            };
            let name = l.name.clone().unwrap_or_else(|| l.address.clone());
            if listeners.iter().any(|x: &Listener| x.name == name) {
                return Err(err(
                    key("name"),
                    format!("duplicate listener name {name:?}"),
                ));
            }
            let client_auth = match l.tls_client_auth.as_deref() {
                None => None,
                Some(_) if l.tls_client_ca.is_none() => {
                    return Err(err(key("tls_client_auth"), "needs tls_client_ca"))
                }
                Some("required") => Some(ClientAuth::Required),
                Some("optional") => Some(ClientAuth::Optional),
                Some(other) => {
                    return Err(err(
                        key("tls_client_auth"),
                        format!("unknown value {other:?} (expected \"optional\" or \"required\")"),
                    ))
                }
            };
            let tls = match (&l.tls_cert, &l.tls_key) {
                (None, None) => {
                    if l.tls_client_ca.is_some() {
                        return Err(err(key("tls_client_ca"), "needs tls_cert and tls_key"));
                    }
                    None
                }
                (Some(_), None) => return Err(err(key("tls_key"), "tls_cert needs tls_key")),
                (None, Some(_)) => return Err(err(key("tls_cert"), "tls_key needs tls_cert")),
                (Some(cert), Some(k)) => {
                    // gRPC negotiates h2 in ALPN; TTStream and ping-pong have no ALPN name, so
                    // those listeners offer none (and ignore what a client offers).
                    let alpn: &[&[u8]] = if cluster == Cluster::Grpc {
                        &[b"h2"]
                    } else {
                        &[]
                    };
                    let mut builder = TlsConfig::builder(cert.as_ref(), k.as_ref()).alpn(alpn);
                    let client_ca = l
                        .tls_client_ca
                        .as_ref()
                        .map(|ca| (ca.clone(), client_auth.unwrap_or_default()));
                    if let Some((ca, auth)) = &client_ca {
                        builder = builder.client_ca(ca.as_ref(), *auth);
                    }
                    let tls = builder.build().map_err(|e| {
                        let k = if e.is_cert() {
                            "tls_cert"
                        } else if e.is_client_ca() {
                            "tls_client_ca"
                        } else {
                            "tls_key"
                        };
                        err(key(k), e.to_string())
                    })?;
                    Some((tls, ((cert.clone(), k.clone()), client_ca)))
                }
            };
            let (tls, files) = tls.unzip();
            let (tls_files, tls_client_ca) = match files {
                Some((files, ca)) => (Some(files), ca),
                None => (None, None),
            };
            if let Some(r) = &l.register {
                if discovery.etcd.is_none() {
                    return Err(err(key("register"), "needs a [discovery.etcd] section"));
                }
                if r.is_empty() || r.contains('/') {
                    return Err(err(key("register"), "must be a name without '/'"));
                }
            }
            let advertise = match &l.advertise {
                None => None,
                Some(_) if l.register.is_none() => {
                    return Err(err(key("advertise"), "applies with register only"))
                }
                Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
                    err(key("advertise"), format!("{a:?} is not an ip:port address"))
                })?),
            };
            listeners.push(Listener {
                name,
                address,
                cluster,
                default_service: l.default_service.clone(),
                tls,
                tls_files,
                tls_client_ca,
                register: l.register.clone(),
                advertise,
            });
        }

        let mut routes = Vec::new();
        for (i, r) in raw.routes.iter().enumerate() {
            let key = |k: &str| format!("routes[{i}].{k}");
            let discover = match (&r.downstream, &r.discover) {
                (Some(_), Some(_)) => {
                    return Err(err(
                        key("discover"),
                        "a route takes downstream or discover, not both",
                    ))
                }
                (None, None) => return Err(err(key("downstream"), "missing (or set discover)")),
                (Some(d), None) => {
                    if !downstreams.contains_key(d) {
                        return Err(err(
                            key("downstream"),
                            format!("no [downstreams.{d}] is defined"),
                        ));
                    }
                    if r.transport.is_some() {
                        return Err(err(
                            key("transport"),
                            "applies to discovering routes only (set it on the downstream)",
                        ));
                    }
                    None
                }
                (None, Some(how)) => {
                    if how != "etcd" {
                        return Err(err(
                            key("discover"),
                            format!("unknown discover {how:?} (expected \"etcd\")"),
                        ));
                    }
                    if discovery.etcd.is_none() {
                        return Err(err(key("discover"), "needs a [discovery.etcd] section"));
                    }
                    let transport = match &r.transport {
                        None => Transport::TTHeader,
                        Some(t) => t
                            .parse::<Transport>()
                            .map_err(|e| err(key("transport"), e.to_string()))?,
                    };
                    Some(Discover { transport })
                }
            };
            let service = match r.service.as_deref() {
                None | Some("*") => None,
                Some(s) => Some(s.to_owned()),
            };
            let timeout = r.timeout_ms.map(Duration::from_millis);
            let max_timeout = r.max_timeout_ms.map(Duration::from_millis);
            if let (Some(t), Some(m)) = (timeout, max_timeout) {
                if t > m {
                    return Err(err(key("timeout_ms"), "is larger than max_timeout_ms"));
                }
            }
            let policy = route_policy(r, &key)?;
            let payload = payload_match(r, service.as_deref(), &key)?;
            refuse_pb_over_ttstream(
                payload.as_ref(),
                r.downstream.as_deref(),
                &downstreams,
                &key,
            )?;
            routes.push(Route {
                payload,
                policy: Arc::new(policy),
                service,
                method: r.method.clone(),
                header: r.header.as_ref().map(|h| HeaderMatch {
                    key: h.key.clone(),
                    value: h.value.clone(),
                }),
                downstream: r.downstream.clone().unwrap_or_default(),
                discover,
                timeout,
                max_timeout,
            });
        }
        if raw.runtime.worker_threads == Some(0) {
            return Err(err("runtime.worker_threads", "must be at least 1"));
        }
        let admin = match &raw.admin {
            None => None,
            Some(a) => Some(Admin {
                address: resolve(&a.address).map_err(|m| err("admin.address", m))?,
            }),
        };
        let defaults = sluice_metrics::MetricsConfig::default();
        let metrics = defaults
            .with_max_label_values(
                raw.metrics
                    .max_label_values
                    .unwrap_or(defaults.max_label_values),
            )
            .with_max_series(raw.metrics.max_series.unwrap_or(defaults.max_series));
        if metrics.max_label_values == 0 {
            return Err(err("metrics.max_label_values", "must be at least 1"));
        }
        if metrics.max_series == 0 {
            return Err(err("metrics.max_series", "must be at least 1"));
        }
        let access_log = match &raw.access_log {
            None => None,
            Some(a) => {
                let sample_ratio = a.sample_ratio.unwrap_or(1.0);
                if !(0.0..=1.0).contains(&sample_ratio) {
                    return Err(err("access_log.sample_ratio", "must be between 0 and 1"));
                }
                let queue = a.queue.unwrap_or(4096);
                if queue == 0 {
                    return Err(err("access_log.queue", "must be at least 1"));
                }
                if a.path.is_empty() {
                    return Err(err(
                        "access_log.path",
                        "must name a file, \"stdout\" or \"stderr\"",
                    ));
                }
                Some(AccessLog {
                    path: a.path.clone(),
                    sample_ratio,
                    queue,
                })
            }
        };
        let tracing = Tracing {
            otlp_endpoint: raw.tracing.otlp_endpoint.clone(),
            sample_ratio: raw.tracing.sample_ratio.unwrap_or(1.0),
        };
        if !(0.0..=1.0).contains(&tracing.sample_ratio) {
            return Err(err("tracing.sample_ratio", "must be between 0.0 and 1.0"));
        }
        if let Some(e) = &tracing.otlp_endpoint {
            check_otlp_endpoint(e).map_err(|m| err("tracing.otlp_endpoint", m))?;
        }
        Ok(Config {
            listeners,
            routes,
            downstreams,
            sources,
            discovery,
            limits,
            worker_threads: raw.runtime.worker_threads,
            admin,
            metrics,
            access_log,
            tracing,
        })
    }

    /// The effective configuration as TOML, every default filled in, in the file's own keys
    /// (what the admin `/config` serves). TLS files are named by path; no key material is
    /// ever included.
    pub fn to_toml(&self) -> String {
        use toml::{Table, Value};
        fn int(n: impl TryInto<i64>) -> Value {
            Value::Integer(n.try_into().unwrap_or(i64::MAX))
        }
        fn ms(d: Duration) -> Value {
            int(d.as_millis())
        }
        fn text(s: impl Into<String>) -> Value {
            Value::String(s.into())
        }
        let mut root = Table::new();
        let listeners = self
            .listeners
            .iter()
            .map(|l| {
                let mut t = Table::new();
                t.insert("name".into(), text(&l.name));
                t.insert("address".into(), text(l.address.to_string()));
                t.insert("cluster".into(), text(l.cluster.as_str()));
                if let Some(d) = &l.default_service {
                    t.insert("default_service".into(), text(d));
                }
                if let Some((cert, key)) = &l.tls_files {
                    t.insert("tls_cert".into(), text(cert));
                    t.insert("tls_key".into(), text(key));
                }
                if let Some((ca, auth)) = &l.tls_client_ca {
                    t.insert("tls_client_ca".into(), text(ca));
                    t.insert("tls_client_auth".into(), text(auth.as_str()));
                }
                if let Some(r) = &l.register {
                    t.insert("register".into(), text(r));
                }
                if let Some(a) = &l.advertise {
                    t.insert("advertise".into(), text(a.to_string()));
                }
                Value::Table(t)
            })
            .collect();
        root.insert("listeners".into(), Value::Array(listeners));
        let routes = self
            .routes
            .iter()
            .map(|r| {
                let mut t = Table::new();
                t.insert("service".into(), text(r.service.as_deref().unwrap_or("*")));
                if let Some(m) = &r.method {
                    t.insert("method".into(), text(m));
                }
                if let Some(h) = &r.header {
                    let mut m = Table::new();
                    m.insert("key".into(), text(&h.key));
                    m.insert("value".into(), text(&h.value));
                    t.insert("header".into(), Value::Table(m));
                }
                if let Some(p) = &r.payload {
                    t.insert("idl".into(), text(&p.idl));
                    if !p.include_dirs.is_empty() {
                        let dirs = p.include_dirs.iter().map(text).collect();
                        t.insert("include_dirs".into(), Value::Array(dirs));
                    }
                    t.insert("field".into(), text(&p.field));
                    t.insert("equals".into(), text(&p.equals));
                }
                match &r.discover {
                    Some(d) => {
                        t.insert("discover".into(), text("etcd"));
                        t.insert("transport".into(), text(d.transport.as_str()));
                    }
                    None => {
                        t.insert("downstream".into(), text(&r.downstream));
                    }
                }
                if let Some(d) = r.timeout {
                    t.insert("timeout_ms".into(), ms(d));
                }
                if let Some(d) = r.max_timeout {
                    t.insert("max_timeout_ms".into(), ms(d));
                }
                Value::Table(t)
            })
            .collect();
        root.insert("routes".into(), Value::Array(routes));
        let mut downstreams = Table::new();
        for (name, d) in &self.downstreams {
            let mut t = Table::new();
            let endpoints = d
                .endpoints
                .iter()
                .map(|e| {
                    let mut ep = Table::new();
                    ep.insert("address".into(), text(e.addr.to_string()));
                    ep.insert("weight".into(), int(e.weight));
                    Value::Table(ep)
                })
                .collect();
            let source = self.sources.get(name).unwrap_or(&Source::Static);
            t.insert("discovery".into(), text(source.as_str()));
            match source {
                Source::Static => {
                    t.insert("endpoints".into(), Value::Array(endpoints));
                }
                Source::Dns { names, refresh } => {
                    let names = names
                        .iter()
                        .map(|(n, w)| {
                            let mut ep = Table::new();
                            ep.insert("address".into(), text(n));
                            ep.insert("weight".into(), int(*w));
                            Value::Table(ep)
                        })
                        .collect();
                    t.insert("endpoints".into(), Value::Array(names));
                    t.insert("dns_refresh_ms".into(), ms(*refresh));
                }
                Source::Etcd { service, tags } => {
                    t.insert("service".into(), text(service));
                    let tags = tags.iter().map(|(k, v)| (k.clone(), text(v))).collect();
                    t.insert("tags".into(), Value::Table(tags));
                }
            }
            t.insert("transport".into(), text(transport_name(d)));
            if d.stream_protocol != sluice_client::StreamProtocol::Preserve {
                t.insert("stream_protocol".into(), text(d.stream_protocol.as_str()));
            }
            if d.grpc_unary == sluice_client::GrpcUnary::PingPong {
                t.insert("grpc_unary".into(), text("pingpong"));
            }
            if let Some(p) = &d.grpc_package {
                t.insert("grpc_package".into(), text(p));
            }
            t.insert("balance".into(), text(d.balance.as_str()));
            t.insert("multiplex".into(), Value::Boolean(d.multiplex));
            t.insert("connect_timeout_ms".into(), ms(d.connect_timeout));
            t.insert("request_timeout_ms".into(), ms(d.request_timeout));
            t.insert("max_idle_per_endpoint".into(), int(d.max_idle_per_endpoint));
            t.insert("idle_timeout_ms".into(), ms(d.idle_timeout));
            t.insert("failure_backoff_ms".into(), ms(d.failure_backoff));
            t.insert(
                "first_response_timeout_ms".into(),
                ms(d.first_response_timeout),
            );
            if let Some(tls) = &d.tls {
                let mut m = Table::new();
                if let Some(f) = tls.files() {
                    m.insert("ca".into(), text(f.ca.display().to_string()));
                    if let Some((c, k)) = &f.identity {
                        m.insert("cert".into(), text(c.display().to_string()));
                        m.insert("key".into(), text(k.display().to_string()));
                    }
                }
                if let Some(n) = tls.server_name() {
                    m.insert("server_name".into(), text(n));
                }
                t.insert("tls".into(), Value::Table(m));
            }
            downstreams.insert(name.clone(), Value::Table(t));
        }
        root.insert("downstreams".into(), Value::Table(downstreams));
        let l = &self.limits;
        let mut limits = Table::new();
        limits.insert("max_frame_size".into(), int(l.max_frame_size));
        limits.insert("sniff_timeout_ms".into(), ms(l.sniff_timeout));
        limits.insert("idle_timeout_ms".into(), ms(l.idle_timeout));
        limits.insert("max_connections".into(), int(l.max_connections));
        limits.insert(
            "max_in_flight_per_conn".into(),
            int(l.max_in_flight_per_conn),
        );
        limits.insert("drain_grace_ms".into(), ms(l.drain_grace));
        limits.insert("frame_timeout_ms".into(), ms(l.frame_timeout));
        limits.insert("max_streams_per_conn".into(), int(l.max_streams_per_conn));
        root.insert("limits".into(), Value::Table(limits));
        let mut runtime = Table::new();
        if let Some(n) = self.worker_threads {
            runtime.insert("worker_threads".into(), int(n));
        }
        root.insert("runtime".into(), Value::Table(runtime));
        if let Some(a) = &self.admin {
            let mut t = Table::new();
            t.insert("address".into(), text(a.address.to_string()));
            root.insert("admin".into(), Value::Table(t));
        }
        let mut metrics = Table::new();
        metrics.insert(
            "max_label_values".into(),
            int(self.metrics.max_label_values),
        );
        metrics.insert("max_series".into(), int(self.metrics.max_series));
        root.insert("metrics".into(), Value::Table(metrics));
        if let Some(a) = &self.access_log {
            let mut t = Table::new();
            t.insert("path".into(), text(&a.path));
            t.insert("sample_ratio".into(), Value::Float(a.sample_ratio));
            t.insert("queue".into(), int(a.queue));
            root.insert("access_log".into(), Value::Table(t));
        }
        let mut discovery = Table::new();
        discovery.insert("max_services".into(), int(self.discovery.max_services));
        discovery.insert(
            "service_idle_timeout_ms".into(),
            ms(self.discovery.service_idle_timeout),
        );
        if let Some(e) = &self.discovery.etcd {
            let mut t = Table::new();
            t.insert(
                "endpoints".into(),
                Value::Array(e.endpoints.iter().map(text).collect()),
            );
            t.insert("prefix".into(), text(&e.prefix));
            if let Some(u) = &e.username {
                t.insert("username".into(), text(u));
                // Never shown: the file holds it.
                t.insert("password".into(), text("<redacted>"));
            }
            t.insert("connect_timeout_ms".into(), ms(e.connect_timeout));
            t.insert("register_ttl_ms".into(), ms(e.register_ttl));
            if let Some(f) = &e.tls_files {
                t.insert("tls_ca".into(), text(&f.ca));
                if let Some((c, k)) = &f.identity {
                    t.insert("tls_cert".into(), text(c));
                    t.insert("tls_key".into(), text(k));
                }
                if let Some(n) = &f.server_name {
                    t.insert("tls_server_name".into(), text(n));
                }
            }
            discovery.insert("etcd".into(), Value::Table(t));
        }
        root.insert("discovery".into(), Value::Table(discovery));
        let mut tracing = Table::new();
        if let Some(e) = &self.tracing.otlp_endpoint {
            tracing.insert("otlp_endpoint".into(), text(e));
        }
        tracing.insert(
            "sample_ratio".into(),
            Value::Float(self.tracing.sample_ratio),
        );
        root.insert("tracing".into(), Value::Table(tracing));
        toml::to_string(&root).unwrap_or_default()
    }

    /// The effective configuration, one line per listener, route and downstream.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        for l in &self.listeners {
            let _ = writeln!(
                s,
                "listener {:<12} {:<21} cluster={}{}{}{}",
                l.name,
                l.address,
                l.cluster.as_str(),
                match (&l.tls, l.cluster) {
                    (None, _) => "",
                    (Some(_), Cluster::Grpc) => " tls=h2",
                    (Some(_), _) => " tls",
                },
                l.tls_client_ca
                    .as_ref()
                    .map(|(_, auth)| format!(" client_auth={}", auth.as_str()))
                    .unwrap_or_default(),
                l.default_service
                    .as_deref()
                    .map(|d| format!(" default_service={d}"))
                    .unwrap_or_default()
            );
        }
        for (i, r) in self.routes.iter().enumerate() {
            let _ = writeln!(
                s,
                "route[{i}] service={} method={}{}{} -> {}{}{}",
                r.service.as_deref().unwrap_or("*"),
                r.method.as_deref().unwrap_or("*"),
                r.header
                    .as_ref()
                    .map(|h| format!(" header {}={}", h.key, h.value))
                    .unwrap_or_default(),
                r.payload
                    .as_ref()
                    .map(|p| format!(" field {}={} ({})", p.field, p.equals, p.idl))
                    .unwrap_or_default(),
                match &r.discover {
                    Some(d) => format!("etcd(destination service) via {}", d.transport.as_str()),
                    None => r.downstream.clone(),
                },
                r.timeout
                    .map(|t| format!(" timeout={t:?}"))
                    .unwrap_or_default(),
                r.max_timeout
                    .map(|t| format!(" max_timeout={t:?}"))
                    .unwrap_or_default(),
            );
        }
        for (name, d) in &self.downstreams {
            let eps: Vec<String> = d
                .endpoints
                .iter()
                .map(|e| {
                    if e.weight == 1 {
                        e.addr.to_string()
                    } else {
                        format!("{}*{}", e.addr, e.weight)
                    }
                })
                .collect();
            let _ = writeln!(
                s,
                "downstream {name}: transport={} balance={:?} multiplex={} connect_timeout={:?} request_timeout={:?} endpoints=[{}]{}{}",
                transport_name(d),
                d.balance,
                d.multiplex,
                d.connect_timeout,
                d.request_timeout,
                eps.join(", "),
                match self.sources.get(name) {
                    Some(Source::Etcd { service, .. }) => format!(" discovery=etcd({service})"),
                    Some(Source::Dns { names, refresh }) => format!(
                        " discovery=dns({} every {refresh:?})",
                        names.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(",")
                    ),
                    _ => String::new(),
                },
                match &d.tls {
                    None => String::new(),
                    Some(t) => format!(
                        " tls(server_name={}{})",
                        t.server_name().unwrap_or_else(|| "the address dialled".into()),
                        if t.has_client_cert() { ", client cert" } else { "" }
                    ),
                }
            );
            match d.stream_protocol {
                sluice_client::StreamProtocol::Preserve => {}
                p => {
                    let _ = writeln!(s, "  streams leave as {}", p.as_str());
                }
            }
            if d.stream_protocol == sluice_client::StreamProtocol::TTStream {
                let _ = writeln!(
                    s,
                    "  note: gRPC protobuf streams to {name} are refused: {}; gRPC thrift streams are converted",
                    crate::convert::PB_OVER_TTSTREAM
                );
            }
            if d.grpc_unary == sluice_client::GrpcUnary::PingPong {
                let _ = writeln!(
                    s,
                    "  gRPC unary calls leave as ping-pong calls over {}",
                    d.transport.as_str()
                );
            }
        }
        let _ = writeln!(
            s,
            "runtime worker_threads={}",
            self.worker_threads
                .map_or_else(|| "one per core".to_owned(), |n| n.to_string())
        );
        if let Some(e) = &self.tracing.otlp_endpoint {
            let _ = writeln!(
                s,
                "tracing otlp_endpoint={e} sample_ratio={}",
                self.tracing.sample_ratio
            );
        }
        s
    }
}

fn check_discovery(raw: &RawDiscovery) -> Result<Discovery, ConfigError> {
    let defaults = Discovery::default();
    let etcd = match &raw.etcd {
        None => None,
        Some(e) => {
            if e.endpoints.is_empty() {
                return Err(err(
                    "discovery.etcd.endpoints",
                    "at least one endpoint is needed",
                ));
            }
            let prefix = e
                .prefix
                .clone()
                .unwrap_or_else(|| "kitex/registry-etcd".to_owned());
            if prefix.is_empty() || prefix.ends_with('/') {
                return Err(err(
                    "discovery.etcd.prefix",
                    "must not be empty or end with '/'",
                ));
            }
            if e.password.is_some() != e.username.is_some() {
                return Err(err(
                    "discovery.etcd.username",
                    "username and password go together",
                ));
            }
            let tls_files = match (&e.tls_ca, &e.tls_cert, &e.tls_key) {
                (None, None, None) => None,
                (None, _, _) => {
                    return Err(err(
                        "discovery.etcd.tls_ca",
                        "TLS to etcd needs the CA that signed its certificate",
                    ))
                }
                (Some(ca), None, None) => Some(EtcdTlsFiles {
                    ca: ca.clone(),
                    identity: None,
                    server_name: e.tls_server_name.clone(),
                }),
                (Some(ca), Some(c), Some(k)) => Some(EtcdTlsFiles {
                    ca: ca.clone(),
                    identity: Some((c.clone(), k.clone())),
                    server_name: e.tls_server_name.clone(),
                }),
                (Some(_), _, _) => {
                    return Err(err(
                        "discovery.etcd.tls_cert",
                        "tls_cert and tls_key go together",
                    ))
                }
            };
            let tls = match &tls_files {
                None => None,
                Some(f) => {
                    let mut tls = sluice_discovery::EtcdTls::from_files(
                        f.ca.as_ref(),
                        f.identity.as_ref().map(|(c, _)| c.as_ref()),
                        f.identity.as_ref().map(|(_, k)| k.as_ref()),
                    )
                    .map_err(|e| err("discovery.etcd.tls_ca", e.to_string()))?;
                    tls.server_name = f.server_name.clone();
                    Some(tls)
                }
            };
            let register_ttl = ms(e.register_ttl_ms, 60_000);
            if register_ttl < Duration::from_secs(1) {
                return Err(err(
                    "discovery.etcd.register_ttl_ms",
                    "must be at least 1000 (etcd leases count in seconds)",
                ));
            }
            let connect_timeout = ms(e.connect_timeout_ms, 2000);
            let client = sluice_discovery::EtcdConfig {
                endpoints: e.endpoints.clone(),
                prefix: prefix.clone(),
                username: e.username.clone(),
                password: e.password.clone(),
                connect_timeout,
                tls,
                ..Default::default()
            };
            client
                .validate()
                .map_err(|e| err("discovery.etcd", e.to_string()))?;
            Some(Etcd {
                client: Arc::new(client),
                tls_files,
                endpoints: e.endpoints.clone(),
                prefix,
                username: e.username.clone(),
                password: e.password.clone(),
                connect_timeout,
                register_ttl,
            })
        }
    };
    let max_services = raw.max_services.unwrap_or(defaults.max_services);
    if max_services == 0 {
        return Err(err("discovery.max_services", "must be at least 1"));
    }
    Ok(Discovery {
        etcd,
        max_services,
        service_idle_timeout: ms(raw.service_idle_timeout_ms, 300_000),
    })
}

/// A downstream's `tls` table: the files read, the name checked. Without `server_name`, the
/// host of the first endpoint when it is a name, else the address of each endpoint dialled
/// (an IP SAN).
fn check_downstream_tls(
    t: &RawDownstreamTls,
    first_host: Option<&str>,
    key: &dyn Fn(&str) -> String,
) -> Result<sluice_client::ClientTls, ConfigError> {
    use sluice_client::{ClientTls, ClientTlsPart};
    let Some(ca) = &t.ca else {
        return Err(err(
            key("tls.ca"),
            "missing: the PEM bundle of the CAs the downstream's certificate chains to (there are no built-in roots)",
        ));
    };
    let identity = match (&t.cert, &t.key) {
        (None, None) => None,
        (Some(c), Some(k)) => Some((c.as_ref(), k.as_ref())),
        (Some(_), None) => return Err(err(key("tls.key"), "cert needs key")),
        (None, Some(_)) => return Err(err(key("tls.cert"), "key needs cert")),
    };
    let part_key = |p: ClientTlsPart| {
        key(match p {
            ClientTlsPart::Ca => "tls.ca",
            ClientTlsPart::Cert => "tls.cert",
            ClientTlsPart::Key => "tls.key",
            ClientTlsPart::ServerName => "tls.server_name",
        })
    };
    let tls = ClientTls::from_files(ca.as_ref(), identity)
        .map_err(|e| err(part_key(e.part()), e.to_string()))?;
    match t.server_name.as_deref().or(first_host) {
        Some(name) => tls
            .with_server_name(name)
            .map_err(|e| err(key("tls.server_name"), e.to_string())),
        None => Ok(tls),
    }
}

/// The host of a `host:port` endpoint when it is a name rather than an IP address.
fn dns_host(address: &str) -> Option<&str> {
    let (host, _) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty() && host.parse::<std::net::IpAddr>().is_err()).then_some(host)
}

/// A DNS endpoint is `host:port`: a name (or address) and a port number.
fn check_host_port(address: &str) -> Result<(), String> {
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("{address:?} is not host:port")),
    }
}

/// An OTLP/gRPC endpoint is `http://host:port` (plain HTTP/2: TLS to the collector is not
/// offered).
fn check_otlp_endpoint(e: &str) -> Result<(), String> {
    let Some(rest) = e.strip_prefix("http://") else {
        return Err(format!(
            "{e:?}: expected http://host:port (plain HTTP/2; TLS to the collector is not offered)"
        ));
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(format!("{e:?}: expected http://host:port, with no path"));
    }
    Ok(())
}

fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = address.parse() {
        return Ok(a);
    }
    address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {address:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[[listeners]]
address = "127.0.0.1:7000"
cluster = "ttstream"
"#;

    fn load(extra: &str) -> Result<Config, ConfigError> {
        Config::from_toml(&format!("{BASE}{extra}"))
    }

    fn key_of(extra: &str) -> String {
        load(extra).expect_err("refused").key
    }

    #[test]
    fn discovery_sources_load_with_their_defaults() {
        let c = load(
            r#"
[discovery.etcd]
endpoints = ["127.0.0.1:2379"]

[downstreams.echo]
discovery = "etcd"
tags = { env = "prod" }

[downstreams.web]
discovery = "dns"
endpoints = ["localhost:8888", { address = "localhost:9999", weight = 3 }]

[[routes]]
service = "EchoService"
downstream = "echo"

[[routes]]
service = "*"
discover = "etcd"
transport = "framed"
"#,
        )
        .unwrap();
        let etcd = c.discovery.etcd.as_ref().unwrap();
        assert_eq!(etcd.prefix, "kitex/registry-etcd");
        assert_eq!(etcd.register_ttl, Duration::from_secs(60));
        assert_eq!(c.discovery.max_services, 1000);
        assert_eq!(
            c.sources["echo"],
            Source::Etcd {
                service: "echo".into(),
                tags: [("env".to_owned(), "prod".to_owned())].into(),
            }
        );
        assert_eq!(
            c.sources["web"],
            Source::Dns {
                names: vec![("localhost:8888".into(), 1), ("localhost:9999".into(), 3)],
                refresh: Duration::from_millis(5000),
            }
        );
        assert!(c.downstreams["echo"].endpoints.is_empty());
        assert_eq!(
            c.routes[1].discover,
            Some(Discover {
                transport: Transport::Framed
            })
        );
        // What /config serves loads back to the same thing.
        let again = Config::from_toml(&c.to_toml()).unwrap();
        assert_eq!(again.to_toml(), c.to_toml());
        assert_eq!(again.sources, c.sources);
    }

    #[test]
    fn discovery_mistakes_name_their_key() {
        let etcd = "[discovery.etcd]\nendpoints = [\"127.0.0.1:2379\"]\n";
        assert_eq!(
            key_of("[downstreams.e]\ndiscovery = \"etcd\"\n"),
            "downstreams.e.discovery",
            "etcd without [discovery.etcd]"
        );
        assert_eq!(
            key_of(&format!(
                "{etcd}[downstreams.e]\ndiscovery = \"etcd\"\nendpoints = [\"127.0.0.1:1\"]\n"
            )),
            "downstreams.e.endpoints"
        );
        assert_eq!(
            key_of("[downstreams.e]\ndiscovery = \"consul\"\nendpoints = [\"127.0.0.1:1\"]\n"),
            "downstreams.e.discovery"
        );
        assert_eq!(
            key_of("[downstreams.e]\ndiscovery = \"dns\"\nendpoints = [\"no-port\"]\n"),
            "downstreams.e.endpoints[0]"
        );
        assert_eq!(
            key_of("[downstreams.e]\nendpoints = [\"127.0.0.1:1\"]\ntags = { a = \"b\" }\n"),
            "downstreams.e.tags"
        );
        assert_eq!(
            key_of("[[routes]]\ndiscover = \"etcd\"\n"),
            "routes[0].discover"
        );
        assert_eq!(
            key_of(&format!(
                "{etcd}[downstreams.e]\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\ndownstream = \"e\"\ndiscover = \"etcd\"\n"
            )),
            "routes[0].discover"
        );
        assert_eq!(
            key_of("[[routes]]\nservice = \"x\"\n"),
            "routes[0].downstream"
        );
        assert_eq!(
            key_of(&format!("{etcd}[discovery]\nmax_services = 0\n")),
            "discovery.max_services"
        );
        assert_eq!(
            key_of("[discovery.etcd]\nendpoints = [\"127.0.0.1:2379\"]\nusername = \"u\"\n"),
            "discovery.etcd.username"
        );
        let register = "[[listeners]]\naddress = \"127.0.0.1:7001\"\ncluster = \"ttstream\"\nregister = \"gw\"\n";
        assert_eq!(key_of(register), "listeners[1].register");
        assert!(load(&format!("{register}{etcd}")).is_ok());
    }

    /// A CA, a certificate it signed for `localhost` and 127.0.0.1, and the key, written to a
    /// directory of the test's own; returns (ca, cert, key) paths.
    fn tls_files(tag: &str) -> (String, String, String) {
        let dir =
            std::env::temp_dir().join(format!("sluice-config-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(
            rcgen::CertificateParams::new(Vec::<String>::new()).unwrap(),
            &ca_key,
        );
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
        let paths = (
            dir.join("ca.pem"),
            dir.join("cert.pem"),
            dir.join("key.pem"),
        );
        std::fs::write(&paths.0, ca.pem()).unwrap();
        std::fs::write(&paths.1, cert.pem()).unwrap();
        std::fs::write(&paths.2, key.serialize_pem()).unwrap();
        let s = |p: std::path::PathBuf| p.display().to_string();
        (s(paths.0), s(paths.1), s(paths.2))
    }

    fn tls_listener(cluster: &str, extra: &str) -> String {
        format!("[[listeners]]\naddress = \"127.0.0.1:7001\"\ncluster = \"{cluster}\"\n{extra}\n")
    }

    #[test]
    fn listener_and_downstream_tls_load_and_show_in_config() {
        let (ca, cert, key) = tls_files("good");
        let c = load(&format!(
            "{}{}[downstreams.d]\nendpoints = [\"localhost:9\"]\ntls = {{ ca = \"{ca}\", cert = \"{cert}\", key = \"{key}\" }}\n[downstreams.ip]\nendpoints = [\"127.0.0.1:9\"]\ntls = {{ ca = \"{ca}\" }}\n",
            tls_listener(
                "ttstream",
                &format!("tls_cert = \"{cert}\"\ntls_key = \"{key}\"\ntls_client_ca = \"{ca}\"")
            ),
            tls_listener("grpc", &format!("name = \"g\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\ntls_client_ca = \"{ca}\"\ntls_client_auth = \"optional\"")).replace("7001", "7002"),
        ))
        .unwrap();
        let tt = &c.listeners[1];
        assert_eq!(
            tt.tls_client_ca.as_ref().unwrap().1,
            ClientAuth::Required,
            "the default"
        );
        let tls = tt.tls.as_ref().unwrap();
        assert!(tls.alpn().is_empty(), "ttstream listeners offer no ALPN");
        assert_eq!(tls.client_auth(), Some(ClientAuth::Required));
        let g = c.listeners[2].tls.as_ref().unwrap();
        assert_eq!(g.alpn(), [b"h2".to_vec()]);
        assert_eq!(g.client_auth(), Some(ClientAuth::Optional));
        let d = c.downstreams["d"].tls.as_ref().unwrap();
        assert_eq!(
            d.server_name().as_deref(),
            Some("localhost"),
            "the endpoint's host"
        );
        assert!(d.has_client_cert());
        let ip = c.downstreams["ip"].tls.as_ref().unwrap();
        assert_eq!(
            ip.server_name(),
            None,
            "an IP endpoint is checked as an IP SAN"
        );
        // /config names the files, and loads back to the same settings.
        let text = c.to_toml();
        assert!(text.contains("tls_client_auth = \"optional\""), "{text}");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        let again = Config::from_toml(&text).unwrap();
        assert_eq!(again.downstreams, c.downstreams);
        assert_eq!(again.to_toml(), text);
        assert!(
            c.describe().contains("tls client_auth=required"),
            "{}",
            c.describe()
        );
    }

    #[test]
    fn tls_mistakes_name_their_key() {
        let (ca, cert, key) = tls_files("bad");
        let listener = |extra: &str| key_of(&tls_listener("ttstream", extra));
        assert_eq!(
            listener(&format!(
                "tls_cert = \"{cert}\"\ntls_key = \"{key}\"\ntls_client_auth = \"required\""
            )),
            "listeners[1].tls_client_auth",
            "tls_client_auth without tls_client_ca"
        );
        assert_eq!(
            listener(&format!("tls_client_ca = \"{ca}\"")),
            "listeners[1].tls_client_ca",
            "a client CA without a certificate of the listener's own"
        );
        assert_eq!(
            listener(&format!("tls_cert = \"{cert}\"\ntls_key = \"{key}\"\ntls_client_ca = \"{ca}\"\ntls_client_auth = \"sometimes\"")),
            "listeners[1].tls_client_auth"
        );
        let e = load(&tls_listener(
            "ttstream",
            &format!("tls_cert = \"{cert}\"\ntls_key = \"{key}\"\ntls_client_ca = \"/nonexistent/ca.pem\""),
        ))
        .unwrap_err();
        assert_eq!(e.key, "listeners[1].tls_client_ca");
        assert!(e.message.contains("/nonexistent/ca.pem"), "{e}");
        let e = load(&tls_listener(
            "grpc",
            &format!("tls_cert = \"{cert}\"\ntls_key = \"{key}\"\ntls_client_ca = \"{key}\""),
        ))
        .unwrap_err();
        assert_eq!(
            e.key, "listeners[1].tls_client_ca",
            "a bundle with no certificate"
        );
        assert!(e.message.contains("no certificate"), "{e}");
        assert_eq!(
            listener(&format!(
                "tls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"{key}\""
            )),
            "listeners[1].tls_cert"
        );
        assert_eq!(
            listener(&format!("tls_cert = \"{cert}\"\ntls_key = \"{cert}\"")),
            "listeners[1].tls_key",
            "a key file with no key"
        );
        let down = |tls: &str| {
            key_of(&format!(
                "[downstreams.d]\nendpoints = [\"127.0.0.1:9\"]\ntls = {tls}\n"
            ))
        };
        assert_eq!(
            down("{ server_name = \"x\" }"),
            "downstreams.d.tls.ca",
            "ca is required"
        );
        let e = load(
            "[downstreams.d]\nendpoints = [\"127.0.0.1:9\"]\ntls = { ca = \"/nonexistent/ca.pem\" }\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "downstreams.d.tls.ca");
        assert!(
            e.message.contains("cannot read \"/nonexistent/ca.pem\""),
            "{e}"
        );
        assert_eq!(
            down(&format!("{{ ca = \"{ca}\", cert = \"{cert}\" }}")),
            "downstreams.d.tls.key"
        );
        assert_eq!(
            down(&format!("{{ ca = \"{ca}\", key = \"{key}\" }}")),
            "downstreams.d.tls.cert"
        );
        assert_eq!(
            down(&format!(
                "{{ ca = \"{ca}\", cert = \"/nonexistent/c.pem\", key = \"{key}\" }}"
            )),
            "downstreams.d.tls.cert"
        );
        assert_eq!(
            down(&format!("{{ ca = \"{key}\" }}")),
            "downstreams.d.tls.ca",
            "no certificate in the bundle"
        );
        assert_eq!(
            down(&format!(
                "{{ ca = \"{ca}\", server_name = \"not a name!\" }}"
            )),
            "downstreams.d.tls.server_name"
        );
        assert!(
            load(&format!("[downstreams.d]\nendpoints = [\"127.0.0.1:9\"]\ntls = {{ ca = \"{ca}\", sni = \"x\" }}\n")).is_err(),
            "unknown keys in the table are refused"
        );
    }
}
