//! Sluice's generic clients: one per downstream service, sending raw args bytes and returning
//! the result bytes, an exception, or a biz-status reply, without IDL.
//!
//! * Transports: `ttheader` (Kitex's default: TTHeader with the inner framed length),
//!   `ttheader-unframed`, `framed`, `buffered`.
//! * Connections: a pool of long connections per endpoint with one request in flight each, as a
//!   plain Kitex server expects; or, for TTHeader, one multiplexed connection per endpoint whose
//!   requests are matched by seq id (Kitex mux servers, and any server that answers in order).
//! * Seq ids are unique per client (hence per connection) and never 0 (0 is Kitex's control
//!   frame id).
//! * A connect timeout and a request deadline; a reply carrying `crrst` retires its connection.
//! * Endpoints given at creation and replaceable while calls run (discovery), chosen by a
//!   [`Balance`] (p2c by default); an endpoint that fails to connect is skipped for a backoff
//!   period, and one that keeps failing is ejected ([`Outlier`]).
//! * Retries: a refused connection is always tried again on another endpoint; other failures
//!   before the reply only as a [`RetryPolicy`] allows, within its [`RetryBudget`].
//! * Limits: `max_in_flight` calls, `max_connections` pooled connections and `max_pending`
//!   calls waiting for one; past them a call fails at once with [`Error::Overloaded`].
//! * Plain TCP, or TLS with [`ClientConfig::tls`] (a failed handshake counts as a failed
//!   connect).
#![forbid(unsafe_code)]

pub mod codec;
mod connect;
mod mux;
mod pool;
pub mod ttstream;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use sluice_sniff::Codec;
use sluice_thrift::MessageType;
use sluice_ttheader::Header;

pub use pool::PoolCounts;
pub use sluice_io::{ClientTls, ClientTlsError, ClientTlsFiles, ClientTlsPart};
pub use sluice_resilience::{Balance, Counters, Outlier, RetryBudget, RetryReason};
pub use ttstream::{OpenStream, TTStreamClient};

/// Downstream ping-pong transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TTHeader with the inner u32 length: what Kitex clients send by default.
    TTHeader,
    /// TTHeader with the message right after the header.
    TTHeaderUnframed,
    /// `u32 length` + message.
    Framed,
    /// The bare message (thrift only).
    Buffered,
}

impl Transport {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::TTHeader => "ttheader",
            Transport::TTHeaderUnframed => "ttheader-unframed",
            Transport::Framed => "framed",
            Transport::Buffered => "buffered",
        }
    }

    /// True for both TTHeader forms.
    pub fn is_ttheader(self) -> bool {
        matches!(self, Transport::TTHeader | Transport::TTHeaderUnframed)
    }
}

impl FromStr for Transport {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ttheader" => Ok(Transport::TTHeader),
            "ttheader-unframed" => Ok(Transport::TTHeaderUnframed),
            "framed" => Ok(Transport::Framed),
            "buffered" => Ok(Transport::Buffered),
            other => Err(UnknownName {
                what: "transport",
                name: other.to_owned(),
                expected: "ttheader, ttheader-unframed, framed or buffered",
            }),
        }
    }
}

/// The family a forwarded stream leaves in, for a downstream that speaks another one than its
/// callers (`stream_protocol` in the proxy's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StreamProtocol {
    /// The caller's own: TTStream to TTStream, gRPC to gRPC.
    #[default]
    Preserve,
    /// TTStream, whatever the caller spoke (gRPC thrift streams are converted).
    TTStream,
    /// gRPC (`application/grpc+thrift`), whatever the caller spoke (TTStream streams are
    /// converted).
    Grpc,
}

impl StreamProtocol {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamProtocol::Preserve => "preserve",
            StreamProtocol::TTStream => "ttstream",
            StreamProtocol::Grpc => "grpc",
        }
    }
}

impl FromStr for StreamProtocol {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "preserve" => Ok(StreamProtocol::Preserve),
            "ttstream" => Ok(StreamProtocol::TTStream),
            "grpc" => Ok(StreamProtocol::Grpc),
            other => Err(UnknownName {
                what: "stream protocol",
                name: other.to_owned(),
                expected: "preserve, ttstream or grpc",
            }),
        }
    }
}

/// How a gRPC unary call reaches a downstream (`grpc_unary` in the proxy's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GrpcUnary {
    /// As a stream of one message, as Kitex does.
    #[default]
    Stream,
    /// As a ping-pong CALL on the downstream's `transport`: the gRPC message is the args struct
    /// (thrift) or the request message (protobuf, as Kitex protobuf).
    PingPong,
}

impl FromStr for GrpcUnary {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stream" => Ok(GrpcUnary::Stream),
            "pingpong" => Ok(GrpcUnary::PingPong),
            other => Err(UnknownName {
                what: "grpc_unary",
                name: other.to_owned(),
                expected: "stream or pingpong",
            }),
        }
    }
}

/// A configuration name (a transport) that is not one of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?} (expected {expected})")]
pub struct UnknownName {
    /// What was named.
    pub what: &'static str,
    /// The name given.
    pub name: String,
    /// The names that are known.
    pub expected: &'static str,
}

/// One downstream address and its weight (for the weighted balances).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// Address.
    pub addr: SocketAddr,
    /// Relative weight, at least 1.
    pub weight: u32,
}

/// Client settings; defaults are documented per field. Start from [`ClientConfig::new`] and
/// set what differs with the `with_*` methods (or assign the public fields).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Downstream name, for errors and logs.
    pub name: String,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Wire transport. Default `ttheader`.
    pub transport: Transport,
    /// Endpoint choice. Default p2c.
    pub balance: Balance,
    /// Outlier ejection. Default: 5 failures in a row eject an endpoint for 30 s (growing by
    /// 30 s with each ejection up to 300 s), never more than 50% of the endpoints.
    pub outlier: Outlier,
    /// The metainfo or header key whose value a proxy hashes for
    /// [`Balance::ConsistentHash`] (the client itself is given the hash, in
    /// [`CallOptions::hash`]). Default none.
    pub hash_key: Option<String>,
    /// Calls (and streams) in flight to this downstream at most; past it a call fails at once
    /// with [`Error::Overloaded`]. 0: no limit. Default 10 000.
    pub max_in_flight: usize,
    /// Pooled connections to this downstream at most, over all its endpoints (multiplexed
    /// and streaming connections are a fixed few per endpoint). 0: no limit. Default 0.
    pub max_connections: usize,
    /// Calls waiting for a pooled connection while `max_connections` are open; past it a
    /// call fails at once with [`Error::Overloaded`]. Default 1024.
    pub max_pending: usize,
    /// Connect timeout. Default 1 s.
    pub connect_timeout: Duration,
    /// Deadline for a call when the caller gives none. Default 30 s.
    pub request_timeout: Duration,
    /// One multiplexed TTHeader connection per endpoint instead of a pool. Default false.
    pub multiplex: bool,
    /// Idle pooled connections kept per endpoint. Default 64.
    pub max_idle_per_endpoint: usize,
    /// Pooled connections idle longer than this are closed instead of reused. Default 60 s.
    pub idle_timeout: Duration,
    /// How long an endpoint that failed to connect is skipped. Default 1 s.
    pub failure_backoff: Duration,
    /// Largest reply accepted. Default 16 MiB.
    pub max_frame_size: usize,
    /// Streams forwarded to this downstream: how long it may stay silent (no Header, message
    /// or end) after the caller's last message before the stream is ended with a deadline
    /// error and reset downstream. TTStream servers send their Header only with their first
    /// message, so a stream that legitimately waits longer for its first event needs a larger
    /// value, or zero to turn it off. Default 30 s.
    pub first_response_timeout: Duration,
    /// TLS to every endpoint (ping-pong, multiplexed and TTStream connections alike): the CAs
    /// the server's certificate must chain to, the name it is checked against, and an
    /// optional client certificate. The handshake is part of connecting (within
    /// [`connect_timeout`](Self::connect_timeout)). Default none: plain TCP.
    pub tls: Option<ClientTls>,
    /// The family streams to this downstream leave in (read by a proxy: each client speaks
    /// its own family). Default [`StreamProtocol::Preserve`].
    pub stream_protocol: StreamProtocol,
    /// How gRPC unary calls reach this downstream (read by a proxy). Default
    /// [`GrpcUnary::Stream`].
    pub grpc_unary: GrpcUnary,
    /// The downstream speaks gRPC only (`transport = "grpc"` in the proxy's configuration):
    /// a proxy makes each ping-pong call to it a gRPC unary call (read by a proxy; this
    /// client does not). Default false.
    pub grpc_only: bool,
    /// With [`grpc_only`](Self::grpc_only): the protobuf package put before the service name in
    /// a converted Kitex protobuf call's `:path` (`/<package>.<Service>/<Method>`; TTHeader
    /// carries the service name alone). Default none.
    pub grpc_package: Option<String>,
}

impl ClientConfig {
    /// A config for `name` with `endpoints` and every other setting at its default.
    pub fn new(name: impl Into<String>, endpoints: Vec<Endpoint>) -> Self {
        Self {
            name: name.into(),
            endpoints,
            transport: Transport::TTHeader,
            balance: Balance::P2c,
            outlier: Outlier::default(),
            hash_key: None,
            max_in_flight: 10_000,
            max_connections: 0,
            max_pending: 1024,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            multiplex: false,
            max_idle_per_endpoint: 64,
            idle_timeout: Duration::from_secs(60),
            failure_backoff: Duration::from_secs(1),
            max_frame_size: sluice_ttheader::DEFAULT_MAX_FRAME_SIZE,
            first_response_timeout: Duration::from_secs(30),
            tls: None,
            stream_protocol: StreamProtocol::Preserve,
            grpc_unary: GrpcUnary::Stream,
            grpc_only: false,
            grpc_package: None,
        }
    }

    /// Sets [`transport`](Self::transport).
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Sets [`balance`](Self::balance).
    pub fn with_balance(mut self, balance: Balance) -> Self {
        self.balance = balance;
        self
    }

    /// Sets [`outlier`](Self::outlier).
    pub fn with_outlier(mut self, outlier: Outlier) -> Self {
        self.outlier = outlier;
        self
    }

    /// Sets [`max_in_flight`](Self::max_in_flight).
    pub fn with_max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight;
        self
    }

    /// Sets [`max_connections`](Self::max_connections).
    pub fn with_max_connections(mut self, max_connections: usize) -> Self {
        self.max_connections = max_connections;
        self
    }

    /// Sets [`max_pending`](Self::max_pending).
    pub fn with_max_pending(mut self, max_pending: usize) -> Self {
        self.max_pending = max_pending;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn with_connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    /// Sets [`request_timeout`](Self::request_timeout).
    pub fn with_request_timeout(mut self, request_timeout: Duration) -> Self {
        self.request_timeout = request_timeout;
        self
    }

    /// Sets [`multiplex`](Self::multiplex).
    pub fn with_multiplex(mut self, multiplex: bool) -> Self {
        self.multiplex = multiplex;
        self
    }

    /// Sets [`max_idle_per_endpoint`](Self::max_idle_per_endpoint).
    pub fn with_max_idle_per_endpoint(mut self, max_idle_per_endpoint: usize) -> Self {
        self.max_idle_per_endpoint = max_idle_per_endpoint;
        self
    }

    /// Sets [`idle_timeout`](Self::idle_timeout).
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Sets [`failure_backoff`](Self::failure_backoff).
    pub fn with_failure_backoff(mut self, failure_backoff: Duration) -> Self {
        self.failure_backoff = failure_backoff;
        self
    }

    /// Sets [`max_frame_size`](Self::max_frame_size).
    pub fn with_max_frame_size(mut self, max_frame_size: usize) -> Self {
        self.max_frame_size = max_frame_size;
        self
    }

    /// Sets [`first_response_timeout`](Self::first_response_timeout).
    pub fn with_first_response_timeout(mut self, first_response_timeout: Duration) -> Self {
        self.first_response_timeout = first_response_timeout;
        self
    }

    /// Sets [`tls`](Self::tls).
    pub fn with_tls(mut self, tls: Option<ClientTls>) -> Self {
        self.tls = tls;
        self
    }
}

/// One call: what to send.
#[derive(Debug, Clone)]
pub struct Call {
    /// Method name.
    pub method: String,
    /// [`MessageType::Call`] or [`MessageType::Oneway`].
    pub msg_type: MessageType,
    /// Thrift or Kitex protobuf.
    pub codec: Codec,
    /// Args struct / request message bytes (after the envelope).
    pub args: Bytes,
    /// Key/values to send (TTHeader only). Flags and seq id are the client's own; int keys 1
    /// (transport type), 9 (method), 22 (message type) and 12 (timeout, from `deadline`) are
    /// set by the client.
    pub header: Header,
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
}

/// A reply: REPLY or EXCEPTION, body after the envelope, and the reply header (TTHeader only).
#[derive(Debug, Clone)]
pub struct Reply {
    /// [`MessageType::Reply`] or [`MessageType::Exception`].
    pub msg_type: MessageType,
    /// Result struct / response message / exception body.
    pub body: Bytes,
    /// Reply header as received (`biz-*`, backward metainfo, `crrst`).
    pub header: Header,
    /// The endpoint that answered (set by [`GenericClient`]).
    pub endpoint: Option<std::net::SocketAddr>,
    /// Attempts the call took, this one included (1 when it was not retried).
    pub attempts: u32,
}

/// Which failures before the reply a call may be retried on, how often, and with what budget.
/// A refused connection (nothing written) is retried on another endpoint whatever this says.
#[derive(Debug)]
pub struct RetryPolicy {
    /// The connection closed or was reset after the request and before any byte of the reply.
    pub on_reset: bool,
    /// The request could not be written whole.
    pub on_unavailable: bool,
    /// [`per_try_timeout`](Self::per_try_timeout) passed before any byte of the reply.
    pub on_timeout: bool,
    /// Retries at most, per call (refused connections not counted).
    pub max_retries: u32,
    /// How long one attempt may wait for the first byte of its reply; `None`: the call's
    /// whole deadline.
    pub per_try_timeout: Option<Duration>,
    /// The budget every retry is paid from; shared by the calls of a route.
    pub budget: RetryBudget,
}

impl RetryPolicy {
    fn allows(&self, why: RetryReason) -> bool {
        match why {
            RetryReason::Refused => true,
            RetryReason::Reset => self.on_reset,
            RetryReason::Unavailable => self.on_unavailable,
            RetryReason::Timeout => self.on_timeout,
        }
    }
}

impl CallOptions<'_> {
    fn per_try_timeout(&self) -> Option<Duration> {
        self.retry.and_then(|r| r.per_try_timeout)
    }
}

/// How one call is balanced and retried (beyond the client's own settings).
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions<'a> {
    /// The consistent-hash key's hash ([`sluice_resilience::hash_key`]), for
    /// [`Balance::ConsistentHash`].
    pub hash: Option<u64>,
    /// Retries beyond refused connections.
    pub retry: Option<&'a RetryPolicy>,
}

/// Why a call failed. Each variant names the downstream and, where there is one, the endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No endpoint is configured.
    #[error("downstream {downstream:?} has no endpoints")]
    NoEndpoint {
        /// Downstream name.
        downstream: String,
    },
    /// Connecting failed.
    #[error("downstream {downstream:?} at {addr}: connect failed: {source}")]
    Connect {
        /// Downstream name.
        downstream: String,
        /// Endpoint.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Connecting took longer than the connect timeout.
    #[error("downstream {downstream:?} at {addr}: connect timed out after {after:?}")]
    ConnectTimeout {
        /// Downstream name.
        downstream: String,
        /// Endpoint.
        addr: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// The TLS handshake failed: the server's certificate was refused (an unknown issuer,
    /// expired, another name), or the server refused the client's. Treated like a refused
    /// connection: the endpoint is skipped for the backoff period.
    #[error("downstream {downstream:?} at {addr}: TLS handshake failed: {source}")]
    Tls {
        /// Downstream name.
        downstream: String,
        /// Endpoint.
        addr: SocketAddr,
        /// Rustls's reason.
        source: std::io::Error,
    },
    /// The connection failed or closed before the reply.
    #[error("downstream {downstream:?} at {addr}: {source}")]
    Io {
        /// Downstream name.
        downstream: String,
        /// Endpoint.
        addr: SocketAddr,
        /// What happened to the connection.
        source: ConnectionError,
    },
    /// The deadline passed before the reply.
    #[error("downstream {downstream:?}: deadline exceeded after {after:?}")]
    Timeout {
        /// Downstream name.
        downstream: String,
        /// Time spent.
        after: Duration,
    },
    /// The reply was not a well-formed reply to this call.
    #[error("downstream {downstream:?} at {addr}: bad reply: {source}")]
    Protocol {
        /// Downstream name.
        downstream: String,
        /// Endpoint.
        addr: SocketAddr,
        /// Why.
        source: ReplyError,
    },
    /// A limit of this downstream was reached; the call was not sent.
    #[error("downstream {downstream:?} is overloaded: {limit}")]
    Overloaded {
        /// Downstream name.
        downstream: String,
        /// Which limit.
        limit: Limit,
    },
    /// The request could not be encoded (e.g. a header too large for Kitex).
    #[error("downstream {downstream:?}: request not encodable: {source}")]
    Encode {
        /// Downstream name.
        downstream: String,
        /// Why.
        source: sluice_ttheader::Error,
    },
}

/// A downstream limit that refused a call (see [`Error::Overloaded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Limit {
    /// `max_in_flight` calls were in flight.
    #[error("{0} calls in flight (max_in_flight)")]
    MaxInFlight(usize),
    /// `max_connections` were open and `max_pending` calls already waited for one.
    #[error("{0} calls waiting for a connection (max_pending)")]
    MaxPending(usize),
}

/// What happened to a downstream connection that failed or closed before its reply was whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// Writing the request failed.
    #[error("write failed: {0}")]
    Write(#[source] std::io::Error),
    /// Reading the reply failed after part of it had arrived.
    #[error("read failed: {0}")]
    Read(#[source] std::io::Error),
    /// Reading failed (a reset) before any byte of the reply.
    #[error("connection reset before the reply: {0}")]
    ResetBeforeReply(#[source] std::io::Error),
    /// No byte of the reply came within the retry policy's per-try timeout.
    #[error("no reply within the per-try timeout of {0:?}")]
    TryTimeout(Duration),
    /// The peer closed the connection before any byte of the reply.
    #[error("connection closed before the reply")]
    ClosedBeforeReply,
    /// The peer closed the connection after part of the reply.
    #[error("connection closed in the middle of the reply")]
    ClosedMidReply,
    /// The endpoint's multiplexed connection closed before the request was sent.
    #[error("multiplexed connection closed")]
    MuxClosed,
    /// The endpoint's multiplexed connection closed after the request was sent.
    #[error("multiplexed connection closed before the reply")]
    MuxClosedBeforeReply,
}

impl ConnectionError {
    /// True when no byte of the reply had arrived, so the request may not have reached the
    /// server's handler (and a retry on a new connection is the caller's choice). A failed
    /// write is in this class too: the server never saw a whole request.
    pub fn before_reply(&self) -> bool {
        matches!(
            self,
            ConnectionError::Write(_)
                | ConnectionError::ClosedBeforeReply
                | ConnectionError::ResetBeforeReply(_)
                | ConnectionError::MuxClosed
        )
    }
}

/// Why a downstream's reply was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The TTHeader frame is malformed or too large.
    #[error(transparent)]
    TTHeader(#[from] sluice_ttheader::Error),
    /// The Framed or Buffered message is malformed or too large.
    #[error(transparent)]
    Framed(#[from] sluice_framed::Error),
    /// The message envelope (thrift or Kitex protobuf) is malformed.
    #[error("reply envelope: {0}")]
    Envelope(#[source] sluice_thrift::Error),
    /// The message is a CALL or ONEWAY, not a reply.
    #[error("reply has message type {0}")]
    NotAReply(&'static str),
    /// The reply answers another request.
    #[error("reply seq id {got} does not match request seq id {want}")]
    SeqMismatch {
        /// Seq id of the reply's envelope.
        got: i32,
        /// Seq id of the request.
        want: i32,
    },
    /// The reply names another method.
    #[error("reply method {got:?} does not match {want:?}")]
    MethodMismatch {
        /// Method of the reply (lossy UTF-8).
        got: String,
        /// Method of the request.
        want: String,
    },
}

impl Error {
    /// True for a timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. } | Error::ConnectTimeout { .. })
    }

    /// How a failed attempt may be retried, if at all: `None` when it must not be (the reply
    /// had started, or the failure says nothing about the endpoint).
    fn retry_reason(&self) -> Option<RetryReason> {
        match self {
            // A refused TLS handshake: nothing of the request was sent either.
            Error::Connect { .. } | Error::ConnectTimeout { .. } | Error::Tls { .. } => {
                Some(RetryReason::Refused)
            }
            Error::Io { source, .. } => match source {
                // Nothing was queued on the connection.
                ConnectionError::MuxClosed => Some(RetryReason::Refused),
                ConnectionError::Write(_) => Some(RetryReason::Unavailable),
                ConnectionError::ClosedBeforeReply
                | ConnectionError::ResetBeforeReply(_)
                | ConnectionError::MuxClosedBeforeReply => Some(RetryReason::Reset),
                ConnectionError::TryTimeout(_) => Some(RetryReason::Timeout),
                ConnectionError::Read(_) | ConnectionError::ClosedMidReply => None,
            },
            _ => None,
        }
    }

    /// True when the failure counts against the endpoint's health (outlier ejection).
    fn is_endpoint_failure(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::ConnectTimeout { .. }
                | Error::Tls { .. }
                | Error::Io { .. }
                | Error::Timeout { .. }
                | Error::Protocol { .. }
        )
    }
}

/// A place under `limit`, or the overloaded error naming `downstream`.
pub(crate) fn admit(
    limit: &sluice_resilience::InFlightLimit,
    counters: &Counters,
    downstream: &str,
) -> Result<sluice_resilience::Admitted, Error> {
    limit
        .admit()
        .ok_or_else(|| overloaded(limit, counters, downstream))
}

/// The refusal past `limit`, counted.
fn overloaded(
    limit: &sluice_resilience::InFlightLimit,
    counters: &Counters,
    downstream: &str,
) -> Error {
    counters.over_max_in_flight.fetch_add(1, Ordering::Relaxed);
    Error::Overloaded {
        downstream: downstream.to_owned(),
        limit: Limit::MaxInFlight(limit.max()),
    }
}

/// Attempts a call makes at most (a refused connection moves on to another endpoint, each
/// tried once).
pub(crate) const MAX_ATTEMPTS: usize = 16;

/// A generic client for one downstream service.
#[derive(Debug)]
pub struct GenericClient {
    config: Arc<ClientConfig>,
    /// The endpoints in use and their balancer, replaced whole by
    /// [`set_endpoints`](Self::set_endpoints); a call keeps the endpoint it picked.
    set: ArcSwap<EndpointSet>,
    seq: AtomicI32,
    in_flight: sluice_resilience::InFlightLimit,
    counters: Arc<Counters>,
    /// `max_connections`, shared by the endpoints' pools.
    gate: Arc<pool::ConnGate>,
}

/// A client's endpoints at one moment, with the picker over them.
#[derive(Debug)]
struct EndpointSet {
    /// The endpoints as given (with their current weights).
    list: Vec<Endpoint>,
    endpoints: Vec<Arc<pool::EndpointState>>,
    picker: sluice_resilience::Picker,
}

impl EndpointSet {
    fn new(
        list: Vec<Endpoint>,
        endpoints: Vec<Arc<pool::EndpointState>>,
        balance: Balance,
    ) -> Self {
        let weighted: Vec<_> = list.iter().map(|e| (e.addr, e.weight)).collect();
        Self {
            picker: sluice_resilience::Picker::new(balance, &weighted),
            list,
            endpoints,
        }
    }
}

impl GenericClient {
    /// A client; no connection is made until the first call.
    pub fn new(config: ClientConfig) -> Self {
        let shared = sluice_resilience::Shared::new(config.max_in_flight);
        Self::with_shared(config, shared)
    }

    /// A client whose counts and in-flight limit are `shared` with the downstream's other
    /// clients (its own `max_in_flight` is not read: the limit's is).
    pub fn with_shared(config: ClientConfig, shared: sluice_resilience::Shared) -> Self {
        let sluice_resilience::Shared {
            counters,
            in_flight,
        } = shared;
        let config = Arc::new(config);
        let gate = Arc::new(pool::ConnGate::new(
            config.max_connections,
            config.max_pending,
            counters.clone(),
        ));
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| Arc::new(pool::EndpointState::new(*e, config.clone(), gate.clone())))
            .collect();
        let set = ArcSwap::from_pointee(EndpointSet::new(
            config.endpoints.clone(),
            endpoints,
            config.balance,
        ));
        Self {
            in_flight,
            config,
            set,
            seq: AtomicI32::new(0),
            counters,
            gate,
        }
    }

    /// The settings it was made with (its endpoints are the first ones: see
    /// [`endpoints`](Self::endpoints) for the current ones).
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Its retry, ejection and refusal counts.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// The endpoints calls go to now.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.set.load().list.clone()
    }

    /// Replaces the endpoints (discovery found others). An endpoint that stays keeps its
    /// pooled connections, its failure backoff and its ejection; a new weight takes effect at
    /// once. Calls in flight on a removed endpoint finish on their connections, which are
    /// closed afterwards instead of going back to a pool: removed endpoints are drained, not
    /// cut.
    pub fn set_endpoints(&self, endpoints: &[Endpoint]) {
        let old = self.set.load();
        let states = endpoints
            .iter()
            .map(|e| {
                // Weights live in the picker: an endpoint keeps its state whatever its weight.
                match old.endpoints.iter().find(|s| s.endpoint.addr == e.addr) {
                    Some(s) => s.clone(),
                    None => Arc::new(pool::EndpointState::new(
                        *e,
                        self.config.clone(),
                        self.gate.clone(),
                    )),
                }
            })
            .collect();
        self.set.store(Arc::new(EndpointSet::new(
            endpoints.to_vec(),
            states,
            self.config.balance,
        )));
    }

    /// Its connections now, over every endpoint.
    pub fn pool_counts(&self) -> PoolCounts {
        self.set
            .load()
            .endpoints
            .iter()
            .map(|e| e.counts())
            .fold(PoolCounts::default(), |a, c| PoolCounts {
                idle: a.idle + c.idle,
                in_use: a.in_use + c.in_use,
                mux: a.mux + c.mux,
            })
    }

    /// True while at least one endpoint is neither ejected nor in its failure backoff.
    pub fn has_usable_endpoint(&self) -> bool {
        let now = sluice_resilience::now();
        self.set
            .load()
            .endpoints
            .iter()
            .any(|e| e.health.is_available(now))
    }

    /// Endpoints ejected now.
    pub fn ejected(&self) -> usize {
        let now = sluice_resilience::now();
        self.set
            .load()
            .endpoints
            .iter()
            .filter(|e| e.health.is_ejected(now))
            .count()
    }

    /// Calls in flight now (counted only under a `max_in_flight`).
    pub fn in_flight(&self) -> usize {
        self.in_flight.current()
    }

    /// Next seq id: unique across this client's connections, never 0, wrapping to negative
    /// values like Kitex's counter.
    fn next_seq(&self) -> i32 {
        loop {
            let s = self.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if s != 0 {
                return s;
            }
        }
    }

    /// Sends `call` and waits for its reply (`None` for oneway calls, which get none).
    pub async fn call(&self, mut call: Call) -> Result<Option<Reply>, Error> {
        self.call_with(&mut call, CallOptions::default()).await
    }

    /// Sends `call` and waits for its reply, like [`call`](Self::call), and leaves the call
    /// with the caller: its method and header (completed with the keys the client set) stay
    /// available after the reply, for logging or a retry, without a copy.
    pub async fn call_mut(&self, call: &mut Call) -> Result<Option<Reply>, Error> {
        self.call_with(call, CallOptions::default()).await
    }

    /// Like [`call_mut`](Self::call_mut), balanced and retried as `options` say.
    pub async fn call_with(
        &self,
        call: &mut Call,
        options: CallOptions<'_>,
    ) -> Result<Option<Reply>, Error> {
        let start = Instant::now();
        // The caller's deadline wins; the configured timeout is the default when there is none.
        // Only a caller's deadline travels downstream (TTHeader key 12): the default is this
        // client's own safety bound, as a Kitex client sends key 12 only when a timeout was set.
        let deadline = call.deadline.unwrap_or(start + self.config.request_timeout);
        let _admitted = self.admit()?;
        if let Some(r) = options.retry {
            r.budget.deposit();
        }
        // The endpoint of the attempt under way, so that a call out of time still counts
        // against it. One timeout around every attempt rather than one per attempt: a timeout
        // wrapped around each attempt would move the attempt's whole future into it each time.
        let current = AtomicUsize::new(usize::MAX);
        match tokio::time::timeout_at(deadline.into(), self.call_inner(call, &options, &current))
            .await
        {
            Ok(r) => r,
            Err(_) => {
                let e = Error::Timeout {
                    downstream: self.config.name.clone(),
                    after: start.elapsed(),
                };
                let ep = self
                    .set
                    .load()
                    .endpoints
                    .get(current.load(Ordering::Relaxed))
                    .cloned();
                if let Some(ep) = ep {
                    self.endpoint_failed(&ep, &e);
                }
                Err(e)
            }
        }
    }

    /// Counts the call in flight, or refuses it past `max_in_flight`.
    fn admit(&self) -> Result<sluice_resilience::AdmittedRef<'_>, Error> {
        self.in_flight
            .admit_ref()
            .ok_or_else(|| overloaded(&self.in_flight, &self.counters, &self.config.name))
    }

    async fn call_inner(
        &self,
        call: &mut Call,
        options: &CallOptions<'_>,
        current: &AtomicUsize,
    ) -> Result<Option<Reply>, Error> {
        // Indexes into the set in force when each was tried; a set replaced meanwhile may
        // let an endpoint be tried twice, which is harmless. Empty (no allocation) unless
        // an attempt failed.
        let mut tried: Vec<usize> = Vec::new();
        let mut retries = 0u32;
        // Boxed: kept only after a failure, and inline it would grow every call's future.
        let mut last_err: Option<Box<Error>> = None;
        while tried.len() < MAX_ATTEMPTS {
            // The endpoint is picked from the set in force now, and held by the call: a set
            // replaced meanwhile does not cut it.
            let (ep, index) = {
                let set = self.set.load();
                let now = sluice_resilience::LazyNow::new();
                match set
                    .picker
                    .pick(&set.endpoints, |e| &e.health, options.hash, &tried, &now)
                {
                    Some(i) => (set.endpoints[i].clone(), i),
                    None => break,
                }
            };
            let seq = self.next_seq();
            current.store(index, Ordering::Relaxed);
            let in_flight = ep.health.start();
            let result = if self.config.multiplex && self.config.transport.is_ttheader() {
                ep.call_mux(call, seq, options.per_try_timeout()).await
            } else {
                ep.call_pooled(call, seq, options.per_try_timeout(), &|| {
                    self.close_idle_elsewhere(&ep)
                })
                .await
            };
            drop(in_flight);
            let e = match result {
                Ok(mut reply) => {
                    ep.health.succeeded();
                    if let Some(r) = reply.as_mut() {
                        r.endpoint = Some(ep.endpoint.addr);
                        r.attempts = u32::try_from(tried.len()).unwrap_or(u32::MAX) + 1;
                    }
                    return Ok(reply);
                }
                Err(e) => e,
            };
            if e.is_endpoint_failure() {
                self.endpoint_failed(&ep, &e);
            }
            let Some(why) = e.retry_reason() else {
                return Err(e);
            };
            if why != RetryReason::Refused {
                let Some(policy) = options.retry.filter(|p| p.allows(why)) else {
                    return Err(e);
                };
                if call.msg_type == MessageType::Oneway || retries >= policy.max_retries {
                    return Err(e);
                }
                if !policy.budget.withdraw() {
                    self.counters
                        .budget_exhausted
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "retry budget exhausted; not retrying");
                    return Err(e);
                }
                retries += 1;
            }
            self.counters.retried(why);
            tracing::debug!(error = %e, reason = why.as_str(), "trying another endpoint");
            tried.push(index);
            last_err = Some(Box::new(e));
        }
        Err(last_err.map_or_else(
            || Error::NoEndpoint {
                downstream: self.config.name.clone(),
            },
            |e| *e,
        ))
    }

    /// Closes one idle pooled connection of an endpoint other than `ep` (room under
    /// `max_connections`); false when there is none.
    fn close_idle_elsewhere(&self, ep: &Arc<pool::EndpointState>) -> bool {
        self.set
            .load()
            .endpoints
            .iter()
            .any(|e| !Arc::ptr_eq(e, ep) && e.close_one_idle())
    }

    /// Records a failure of `ep`: a refused connect puts it in backoff; any failure counts
    /// towards its ejection.
    fn endpoint_failed(&self, ep: &Arc<pool::EndpointState>, e: &Error) {
        let now = sluice_resilience::now();
        if matches!(
            e,
            Error::Connect { .. } | Error::ConnectTimeout { .. } | Error::Tls { .. }
        ) {
            ep.health.back_off(now, self.config.failure_backoff);
        }
        let set = self.set.load();
        let Some(index) = set.endpoints.iter().position(|s| Arc::ptr_eq(s, ep)) else {
            // Removed meanwhile: nothing to eject.
            return;
        };
        let what = self
            .config
            .outlier
            .failed(&set.endpoints, |s| &s.health, index, now);
        self.counters.ejection(what);
        match what {
            sluice_resilience::Ejected::For(length) => tracing::warn!(
                downstream = %self.config.name,
                endpoint = %ep.endpoint.addr,
                ?length,
                error = %e,
                "ejecting endpoint after consecutive failures"
            ),
            sluice_resilience::Ejected::CapReached => tracing::debug!(
                downstream = %self.config.name,
                endpoint = %ep.endpoint.addr,
                "not ejecting: max_ejection_percent reached"
            ),
            sluice_resilience::Ejected::No => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_ids_skip_zero_and_wrap_to_negative() {
        let c = GenericClient::new(ClientConfig::new("t", vec![]));
        c.seq.store(i32::MAX - 1, Ordering::Relaxed);
        assert_eq!(c.next_seq(), i32::MAX);
        assert_eq!(c.next_seq(), i32::MIN);
        c.seq.store(-2, Ordering::Relaxed);
        assert_eq!(c.next_seq(), -1);
        assert_eq!(c.next_seq(), 1, "0 is reserved for control frames");
        let a = c.next_seq();
        assert_ne!(a, c.next_seq());
    }

    #[test]
    fn transport_names_round_trip() {
        for t in [
            Transport::TTHeader,
            Transport::TTHeaderUnframed,
            Transport::Framed,
            Transport::Buffered,
        ] {
            assert_eq!(t.as_str().parse::<Transport>(), Ok(t));
        }
        assert!("tcp".parse::<Transport>().is_err());
    }
}
