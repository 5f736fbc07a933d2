//! The gRPC client: opens streams on one downstream over HTTP/2 (h2c, prior knowledge; or TLS
//! with ALPN `h2` when [`GrpcClientConfig::tls`] is set).
//!
//! A [`GrpcClient`] keeps one HTTP/2 connection per endpoint, dialled on first use and shared
//! by every stream opened on that endpoint; the endpoint of each stream is chosen by the
//! configured [`Balance`] (p2c on open streams by default), an endpoint that cannot be dialled
//! is skipped for a backoff and ejected after repeated failures, and at most `max_in_flight`
//! streams are open at once. A connection
//! that broke or received GOAWAY is dropped and dialled again, once, when a new stream cannot
//! be opened on it; streams already running on it are not moved. A stream waits for a slot
//! while the server's SETTINGS_MAX_CONCURRENT_STREAMS are all in use.
//!
//! Each stream behaves like a Kitex client stream (kitex-wire.md 5.2-5.4):
//!
//! * request HEADERS `:method POST`, `:scheme http` (`https` over TLS), `:path`, `:authority`, `content-type`,
//!   `te: trailers`, `grpc-timeout` (what is left of the deadline), then the metadata in order
//!   (`-bin` values untouched);
//! * each message is one length-prefixed payload in DATA, sent only as fast as the server's
//!   windows allow; a half-close puts END_STREAM on the stream's last DATA frame if that frame
//!   has not been written yet (a unary call is then one DATA frame, as Kitex sends it), and is
//!   otherwise a single empty DATA frame with END_STREAM;
//! * a reset is RST_STREAM(CANCEL);
//! * response HEADERS become [`Event::Headers`] (without `content-type`), messages
//!   [`Event::Message`], the trailers (or a Trailers-Only response) [`Event::End`] with the
//!   decoded `grpc-status`/`grpc-message` and every other trailer, a RST_STREAM from the server
//!   [`Event::Reset`]; a non-200 `:status` or a response without a gRPC `content-type` ends with
//!   the code of [`Code::from_http_status`](crate::Code::from_http_status);
//! * when the deadline passes, the stream is reset (CANCEL) and ends with grpc-status 4
//!   (DEADLINE_EXCEEDED), as a gRPC client reports it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_h2wire::frame::Reason;
use sluice_io::ClientTls;
use sluice_stream::{ClientStream, Closed, Event, EventSink, Metadata};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::conn::{
    ConnConfig, Connection, Counted, HeaderBlock, Opened, Opening, Role, Shared, Side, Wakes,
};
use crate::fields::{compressed_in_metadata, encode_metadata, valid_value};
use crate::headers::GRPC_TIMEOUT;
use crate::message::DEFAULT_MAX_MESSAGE_SIZE;
use crate::status::Status;
use crate::timeout::format_timeout;

pub use sluice_resilience::{Balance, Outlier};
use sluice_resilience::{Counters, Health, InFlightLimit, Picker, StreamLoad};

/// Settings of a [`GrpcClient`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GrpcClientConfig {
    /// The downstream's addresses, used in turn.
    pub endpoints: Vec<SocketAddr>,
    /// Limit on dialling one endpoint: the TCP connect and, with [`tls`](Self::tls), the TLS
    /// handshake.
    pub connect_timeout: Duration,
    /// Largest gRPC message accepted from the server, prefix not counted; a larger one ends the
    /// stream with grpc-status 8 (RESOURCE_EXHAUSTED) and resets it.
    pub max_message_size: usize,
    /// SETTINGS_INITIAL_WINDOW_SIZE: bytes the server may send on one stream before the user
    /// has taken them (at least 65535).
    pub initial_stream_window: u32,
    /// Connection-level receive window (at least 65535), given back as data arrives.
    pub initial_connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE.
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: bound on one response's decoded header list.
    pub max_header_list_size: u32,
    /// How long a new connection waits for the server's SETTINGS; a server that sends none
    /// (not HTTP/2, or stuck) fails the connection and its streams.
    pub handshake_timeout: Duration,
    /// Relative weights of [`endpoints`](Self::endpoints), in the same order (missing ones
    /// count as 1).
    pub weights: Vec<u32>,
    /// Endpoint choice.
    pub balance: Balance,
    /// Outlier ejection (dial failures count).
    pub outlier: Outlier,
    /// How long an endpoint that could not be dialled is skipped.
    pub failure_backoff: Duration,
    /// Streams open at most; past it an open fails with [`GrpcClientError::Overloaded`].
    /// 0: no limit.
    pub max_in_flight: usize,
    /// TLS to every endpoint, offering ALPN `h2` (set by the client) and sending
    /// `:scheme https`. Default none: h2c.
    pub tls: Option<ClientTls>,
}

impl GrpcClientConfig {
    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn with_connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    /// Sets [`max_message_size`](Self::max_message_size).
    pub fn with_max_message_size(mut self, max_message_size: usize) -> Self {
        self.max_message_size = max_message_size;
        self
    }

    /// Sets [`initial_stream_window`](Self::initial_stream_window).
    pub fn with_initial_stream_window(mut self, initial_stream_window: u32) -> Self {
        self.initial_stream_window = initial_stream_window;
        self
    }

    /// Sets [`initial_connection_window`](Self::initial_connection_window).
    pub fn with_initial_connection_window(mut self, initial_connection_window: u32) -> Self {
        self.initial_connection_window = initial_connection_window;
        self
    }

    /// Sets [`max_frame_size`](Self::max_frame_size).
    pub fn with_max_frame_size(mut self, max_frame_size: u32) -> Self {
        self.max_frame_size = max_frame_size;
        self
    }

    /// Sets [`max_header_list_size`](Self::max_header_list_size).
    pub fn with_max_header_list_size(mut self, max_header_list_size: u32) -> Self {
        self.max_header_list_size = max_header_list_size;
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

    /// Sets [`failure_backoff`](Self::failure_backoff).
    pub fn with_failure_backoff(mut self, failure_backoff: Duration) -> Self {
        self.failure_backoff = failure_backoff;
        self
    }

    /// Sets [`max_in_flight`](Self::max_in_flight).
    pub fn with_max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight;
        self
    }

    /// Sets [`handshake_timeout`](Self::handshake_timeout).
    pub fn with_handshake_timeout(mut self, handshake_timeout: Duration) -> Self {
        self.handshake_timeout = handshake_timeout;
        self
    }

    /// Sets [`tls`](Self::tls).
    pub fn with_tls(mut self, tls: Option<ClientTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Defaults for these endpoints: 1 s connect timeout, 4 MiB messages, 1 MiB stream and
    /// 8 MiB connection windows, 16 KiB frames, 64 KiB header lists, 10 s for the server's
    /// SETTINGS; equal weights, p2c, the default [`Outlier`], 1 s failure backoff, no stream
    /// limit.
    pub fn new(endpoints: Vec<SocketAddr>) -> Self {
        Self {
            weights: Vec::new(),
            balance: Balance::P2c,
            outlier: Outlier::default(),
            failure_backoff: Duration::from_secs(1),
            max_in_flight: 0,
            endpoints,
            connect_timeout: Duration::from_secs(1),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            initial_stream_window: 1024 * 1024,
            initial_connection_window: 8 * 1024 * 1024,
            max_frame_size: 16 * 1024,
            max_header_list_size: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// What a new stream is.
#[derive(Debug, Clone)]
pub struct OpenRequest {
    /// `:path`, `/<package>.<Service>/<Method>`.
    pub path: String,
    /// `content-type` (`application/grpc`, `application/grpc+thrift`, ...); empty means
    /// `application/grpc`.
    pub content_type: String,
    /// `:authority` (Kitex puts the service name here); empty means the endpoint's address.
    pub authority: String,
    /// Request metadata, sent in order after the gRPC headers. Pseudo headers, `content-type`,
    /// `te`, `grpc-timeout` and connection-specific headers are this client's to set and are
    /// left out.
    pub headers: Metadata,
    /// When the call must be over; sent as `grpc-timeout` and enforced.
    pub deadline: Option<Instant>,
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcClientError {
    /// The client has no endpoints.
    #[error("the gRPC downstream has no endpoints")]
    NoEndpoints,
    /// Dialling an endpoint failed.
    #[error("connecting to {addr} failed: {source}")]
    Connect {
        /// The endpoint.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Dialling an endpoint took longer than the connect timeout.
    #[error("connecting to {addr} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The endpoint.
        addr: SocketAddr,
        /// The configured limit.
        timeout: Duration,
    },
    /// The TLS handshake with an endpoint failed (its certificate was refused, or it refused
    /// the client's). Treated like a refused connection: the next endpoint is tried.
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        /// The endpoint.
        addr: SocketAddr,
        /// Rustls's reason.
        source: std::io::Error,
    },
    /// The connection closed or went away before the stream could be opened, also after a
    /// redial.
    #[error("the HTTP/2 connection to {addr} closed before the stream could be opened")]
    Closed {
        /// The endpoint.
        addr: SocketAddr,
    },
    /// The request cannot be expressed in HTTP/2 (bad path, authority or content-type).
    #[error("invalid gRPC request: {0}")]
    InvalidRequest(InvalidRequest),
    /// `max_in_flight` streams are open; nothing was sent.
    #[error("overloaded: {max_in_flight} streams in flight (max_in_flight)")]
    Overloaded {
        /// The limit.
        max_in_flight: usize,
    },
}

/// Which part of an [`OpenRequest`] cannot be sent as an HTTP/2 header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidRequest {
    /// `:path` does not start with `/` or holds bytes a header value cannot.
    #[error("path {0:?}")]
    Path(String),
    /// `:authority` holds bytes a header value cannot.
    #[error("authority {0:?}")]
    Authority(String),
    /// `content-type` holds bytes a header value cannot.
    #[error("content-type {0:?}")]
    ContentType(String),
}

/// A client for one gRPC downstream. Cheap to clone; clones share the connections.
///
/// The connections belong to the client: when the last clone is dropped, their tasks are
/// cancelled, and streams still open on them fail as if the connection had closed.
#[derive(Debug, Clone)]
pub struct GrpcClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: GrpcClientConfig,
    /// `config.tls` offering ALPN `h2`.
    tls: Option<ClientTls>,
    /// Replaced whole by [`GrpcClient::set_endpoints`]; a stream keeps the connection it
    /// opened on.
    slots: arc_swap::ArcSwap<Slots>,
    in_flight: InFlightLimit,
    counters: Arc<Counters>,
    /// The connections' tasks; dropped with the client, which cancels them.
    tasks: sluice_io::TaskGroup,
}

/// The endpoints at one moment, with the picker over them.
#[derive(Debug)]
struct Slots {
    slots: Vec<Arc<Slot>>,
    picker: Picker,
}

impl Slots {
    fn new(slots: Vec<Arc<Slot>>, weights: &[u32], balance: Balance) -> Self {
        let weighted: Vec<_> = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.addr, weights.get(i).copied().unwrap_or(1)))
            .collect();
        Self {
            picker: Picker::new(balance, &weighted),
            slots,
        }
    }
}

/// One endpoint and its connection, if any. The lock is held while dialling, so concurrent
/// opens wait for one connection instead of each dialling their own.
#[derive(Debug)]
struct Slot {
    addr: SocketAddr,
    conn: Mutex<Option<Arc<Handle>>>,
    /// Streams open on it (p2c reads them), dial backoff, ejection.
    health: Arc<Health>,
}

impl Slot {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            conn: Mutex::new(None),
            health: Arc::default(),
        }
    }
}

/// The client's hold on a connection: while one exists, an idle connection stays open.
struct Handle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handle")
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.drop_handle();
    }
}

impl GrpcClient {
    /// HTTP/2 connections the client holds now (one being dialled counts).
    pub fn open_connections(&self) -> usize {
        self.inner
            .slots
            .load()
            .slots
            .iter()
            .map(|s| match s.conn.try_lock() {
                Ok(c) => usize::from(c.is_some()),
                Err(_) => 1,
            })
            .sum()
    }

    /// A client; nothing is dialled until the first stream.
    pub fn new(config: GrpcClientConfig) -> Self {
        let shared = sluice_resilience::Shared::new(config.max_in_flight);
        Self::with_shared(config, shared)
    }

    /// A client whose counts and in-flight limit are `shared` with the downstream's other
    /// clients (its own `max_in_flight` is not read: the limit's is).
    pub fn with_shared(config: GrpcClientConfig, shared: sluice_resilience::Shared) -> Self {
        let sluice_resilience::Shared {
            counters,
            in_flight,
        } = shared;
        let slots = config
            .endpoints
            .iter()
            .map(|&addr| Arc::new(Slot::new(addr)))
            .collect();
        let slots = Slots::new(slots, &config.weights, config.balance);
        let tls = config.tls.clone().map(|t| t.with_alpn(&[b"h2"]));
        Self {
            inner: Arc::new(Inner {
                in_flight,
                config,
                tls,
                slots: arc_swap::ArcSwap::from_pointee(slots),
                counters,
                tasks: sluice_io::TaskGroup::new(),
            }),
        }
    }

    /// Streams open now (counted only under a `max_in_flight`).
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.current()
    }

    /// The configuration it was made with (its endpoints are the first ones: see
    /// [`endpoints`](Self::endpoints) for the current ones).
    pub fn config(&self) -> &GrpcClientConfig {
        &self.inner.config
    }

    /// The endpoints streams are opened on now.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.inner
            .slots
            .load()
            .slots
            .iter()
            .map(|s| s.addr)
            .collect()
    }

    /// Replaces the endpoints (discovery found others), all of weight 1.
    pub fn set_endpoints(&self, endpoints: &[SocketAddr]) {
        let weighted: Vec<_> = endpoints.iter().map(|&a| (a, 1)).collect();
        self.set_weighted_endpoints(&weighted);
    }

    /// Replaces the endpoints, as (address, weight). An endpoint that stays keeps its
    /// connection and its health; a removed one's connection finishes the streams it carries
    /// and closes when it has none left (the client no longer holds it open).
    pub fn set_weighted_endpoints(&self, endpoints: &[(SocketAddr, u32)]) {
        let old = self.inner.slots.load();
        let new = endpoints
            .iter()
            .map(
                |&(addr, _)| match old.slots.iter().find(|s| s.addr == addr) {
                    Some(s) => s.clone(),
                    None => Arc::new(Slot::new(addr)),
                },
            )
            .collect();
        let weights: Vec<u32> = endpoints.iter().map(|e| e.1).collect();
        self.inner.slots.store(Arc::new(Slots::new(
            new,
            &weights,
            self.inner.config.balance,
        )));
    }

    /// Opens a stream: queues the request HEADERS on the endpoint's connection.
    pub async fn open(&self, req: &OpenRequest) -> Result<ClientStream, GrpcClientError> {
        self.open_hashed(req, None).await
    }

    /// Opens a stream like [`open`](Self::open), on the endpoint the balance picks for
    /// `hash` (a consistent-hash key's hash) when it has one. An endpoint that cannot be
    /// dialled is put in backoff and the next one tried; nothing else is retried (a stream is
    /// never sent twice).
    pub async fn open_hashed(
        &self,
        req: &OpenRequest,
        hash: Option<u64>,
    ) -> Result<ClientStream, GrpcClientError> {
        let inner = &self.inner;
        let head = RequestHead::new(req, inner.tls.is_some())?;
        let mut admitted = Some(inner.in_flight.admit().ok_or_else(|| {
            inner
                .counters
                .over_max_in_flight
                .fetch_add(1, Ordering::Relaxed);
            GrpcClientError::Overloaded {
                max_in_flight: inner.in_flight.max(),
            }
        })?);
        let mut last_err = None;
        let mut tried = Vec::new();
        loop {
            // The slots in force now; a set replaced meanwhile does not cut this open.
            let (slot, index) = {
                let set = inner.slots.load();
                let now = sluice_resilience::LazyNow::new();
                match set
                    .picker
                    .pick(&set.slots, |s| &*s.health, hash, &tried, &now)
                {
                    Some(i) => (set.slots[i].clone(), i),
                    None => break,
                }
            };
            match self.open_on(&slot, req, &head, &mut admitted).await {
                Ok(s) => {
                    slot.health.succeeded();
                    return Ok(s);
                }
                Err(
                    e @ (GrpcClientError::Connect { .. }
                    | GrpcClientError::ConnectTimeout { .. }
                    | GrpcClientError::Tls { .. }),
                ) => {
                    tracing::debug!(addr = %slot.addr, error = %e, "gRPC endpoint unreachable, trying the next one");
                    self.dial_failed(&slot, &e);
                    inner
                        .counters
                        .retried(sluice_resilience::RetryReason::Refused);
                    tried.push(index);
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or(GrpcClientError::NoEndpoints))
    }

    /// A failed dial: backoff, and a failure towards ejection.
    fn dial_failed(&self, slot: &Arc<Slot>, e: &GrpcClientError) {
        let inner = &self.inner;
        let now = sluice_resilience::now();
        slot.health.back_off(now, inner.config.failure_backoff);
        let set = inner.slots.load();
        if let Some(i) = set.slots.iter().position(|s| Arc::ptr_eq(s, slot)) {
            let what = inner
                .config
                .outlier
                .failed(&set.slots, |s| &*s.health, i, now);
            inner.counters.ejection(what);
            if let sluice_resilience::Ejected::For(length) = what {
                tracing::warn!(endpoint = %slot.addr, ?length, error = %e, "ejecting gRPC endpoint after consecutive failures");
            }
        }
    }

    async fn open_on(
        &self,
        slot: &Arc<Slot>,
        req: &OpenRequest,
        head: &RequestHead,
        admitted: &mut Option<sluice_resilience::Admitted>,
    ) -> Result<ClientStream, GrpcClientError> {
        let mut redialled = false;
        loop {
            let conn = self.connection(slot).await?;
            let opened = std::future::poll_fn(|cx| {
                start_stream(&conn.shared, cx, req, head, slot, admitted)
            })
            .await;
            match opened {
                Some(stream) => return Ok(stream),
                // Nothing was sent on this connection, so a fresh one may be tried.
                None if !redialled => {
                    tracing::debug!(addr = %slot.addr, "gRPC connection unusable, redialling");
                    redialled = true;
                    let mut guard = slot.conn.lock().await;
                    if guard.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn)) {
                        *guard = None;
                    }
                }
                None => return Err(GrpcClientError::Closed { addr: slot.addr }),
            }
        }
    }

    /// The endpoint's connection, dialled if there is none or it no longer takes streams.
    async fn connection(&self, slot: &Slot) -> Result<Arc<Handle>, GrpcClientError> {
        let mut guard = slot.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            let st = c.shared.lock();
            if !st.closed && !st.going_away {
                drop(st);
                return Ok(c.clone());
            }
        }
        // Boxed: dialling happens once per connection, and inline its future would make every
        // stream's opening larger.
        let conn = Arc::new(Box::pin(self.dial(slot.addr)).await?);
        *guard = Some(conn.clone());
        Ok(conn)
    }

    async fn dial(&self, addr: SocketAddr) -> Result<Handle, GrpcClientError> {
        let config = &self.inner.config;
        let timeout = config.connect_timeout;
        let dial = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|source| GrpcClientError::Connect { addr, source })?;
            // Frames are written whole; Nagle would only delay the last segment of each batch.
            let _ = tcp.set_nodelay(true);
            match &self.inner.tls {
                None => Ok(sluice_io::ClientIo::Tcp(tcp)),
                Some(tls) => match tls.handshake(tcp, addr).await {
                    Ok(s) => Ok(sluice_io::ClientIo::Tls(Box::new(s))),
                    Err(source) => Err(GrpcClientError::Tls { addr, source }),
                },
            }
        };
        let io = tokio::time::timeout(timeout, dial)
            .await
            .map_err(|_| GrpcClientError::ConnectTimeout { addr, timeout })??;
        let cfg = ConnConfig {
            max_concurrent_streams: 0,
            initial_stream_window: config.initial_stream_window,
            initial_connection_window: config.initial_connection_window,
            max_frame_size: config.max_frame_size,
            max_header_list_size: config.max_header_list_size,
            max_message_size: config.max_message_size,
            handshake_timeout: config.handshake_timeout,
            idle_timeout: None,
        };
        // The engine is generic over its stream: plain TCP runs on the TcpStream itself.
        let shared = match io {
            sluice_io::ClientIo::Tcp(tcp) => self.spawn_conn(tcp, addr, cfg),
            sluice_io::ClientIo::Tls(tls) => self.spawn_conn(*tls, addr, cfg),
        };
        tracing::debug!(%addr, "gRPC client connection established");
        Ok(Handle { shared })
    }
}

impl GrpcClient {
    /// Runs a dialled connection as a task of the client; returns its shared state.
    fn spawn_conn<T>(&self, io: T, addr: SocketAddr, cfg: ConnConfig) -> Arc<Shared>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (conn, shared) = Connection::new(io, addr, cfg, ClientRole);
        self.inner.tasks.spawn(async move {
            if let Err(e) = crate::conn::run(conn).await {
                tracing::debug!(%addr, error = %e, "gRPC client connection ended");
            }
        });
        shared
    }
}

/// The client end of a connection, as the engine sees it: nothing to decide beyond HTTP/2
/// itself (responses are read by the engine through `crate::fields`), nothing counted.
struct ClientRole;

impl Role for ClientRole {
    const SIDE: Side = Side::Client;

    fn open(&mut self, _: &Arc<Shared>, _: HeaderBlock) -> Opening {
        // Never asked: the server cannot open streams (push is disabled).
        Opening::Done
    }

    fn abort(_: &Shared, _: u32, _: &Status) {
        // Never asked: the engine ends a client stream whose response cannot be read towards
        // its user itself.
    }

    fn count(&self, _: Counted) {}
}

/// The parts of the request HEADERS that do not change between attempts.
struct RequestHead {
    /// `:scheme`: `https` over TLS.
    scheme: &'static [u8],
    content_type: Bytes,
    compress: bool,
}

impl RequestHead {
    fn new(req: &OpenRequest, tls: bool) -> Result<RequestHead, GrpcClientError> {
        if !req.path.starts_with('/') || !valid_value(req.path.as_bytes()) {
            return Err(GrpcClientError::InvalidRequest(InvalidRequest::Path(
                req.path.clone(),
            )));
        }
        if !valid_value(req.authority.as_bytes()) {
            return Err(GrpcClientError::InvalidRequest(InvalidRequest::Authority(
                req.authority.clone(),
            )));
        }
        let content_type = if req.content_type.is_empty() {
            Bytes::from_static(b"application/grpc")
        } else if valid_value(req.content_type.as_bytes()) {
            Bytes::copy_from_slice(req.content_type.as_bytes())
        } else {
            return Err(GrpcClientError::InvalidRequest(
                InvalidRequest::ContentType(req.content_type.clone()),
            ));
        };
        Ok(RequestHead {
            scheme: if tls { b"https" } else { b"http" },
            content_type,
            compress: compressed_in_metadata(&req.headers),
        })
    }
}

/// Opens a stream on a connection: a stream id within the server's limit, the request HEADERS
/// queued, the receiving side handed to the connection task. `Ready(None)`: the connection
/// takes no new streams.
fn start_stream(
    shared: &Arc<Shared>,
    cx: &mut Context<'_>,
    req: &OpenRequest,
    head: &RequestHead,
    slot: &Arc<Slot>,
    admitted: &mut Option<sluice_resilience::Admitted>,
) -> Poll<Option<ClientStream>> {
    let addr = slot.addr;
    let mut st = shared.lock();
    let id = match st.poll_open(cx) {
        Poll::Ready(Some(id)) => id,
        Poll::Ready(None) => return Poll::Ready(None),
        Poll::Pending => return Poll::Pending,
    };
    let mut out = BytesMut::with_capacity(256);
    st.encoder.begin(&mut out);
    let enc = &st.encoder;
    enc.field(b":method", b"POST", &mut out);
    enc.field(b":scheme", head.scheme, &mut out);
    enc.field(b":path", req.path.as_bytes(), &mut out);
    if req.authority.is_empty() {
        enc.field(b":authority", addr.to_string().as_bytes(), &mut out);
    } else {
        enc.field(b":authority", req.authority.as_bytes(), &mut out);
    }
    enc.field(b"content-type", &head.content_type, &mut out);
    enc.field(b"te", b"trailers", &mut out);
    if let Some(deadline) = req.deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        enc.field(
            GRPC_TIMEOUT.as_bytes(),
            format_timeout(left).as_bytes(),
            &mut out,
        );
    }
    encode_metadata(
        enc,
        &req.headers,
        |k| {
            matches!(
                k,
                b"content-type" | b"grpc-timeout" | b"content-length" | b"host" | b"te"
            )
        },
        &mut out,
    );
    st.add_stream(id, Bytes::new());
    if let Some(s) = st.streams.get_mut(&id) {
        s.headers_sent = true;
        s.compress = head.compress;
    }
    st.queue_block(id, out.freeze(), false);
    let sink = Arc::new(ClientSink {
        shared: shared.clone(),
        id,
        _load: admitted
            .take()
            .map(|a| StreamLoad::new(a, slot.health.clone())),
    });
    let (stream, to_user) = ClientStream::new(sink);
    st.opened(Opened {
        id,
        to_user,
        deadline: req.deadline,
    });
    crate::conn::unlock_and_wake(st);
    Poll::Ready(Some(stream))
}

/// The sending side of one client stream.
struct ClientSink {
    shared: Arc<Shared>,
    id: u32,
    /// The stream's place under `max_in_flight` and on its endpoint's count.
    _load: Option<StreamLoad>,
}

impl EventSink for ClientSink {
    fn push(&self, ev: Event) -> Result<(), Closed> {
        let id = self.id;
        // Declared before the lock: woken after it is released.
        let mut wakes = Wakes::default();
        let Some(mut st) = self.shared.lock_for_push(id)? else {
            return Ok(());
        };
        match ev {
            Event::Message(m) => {
                if let Err(e) = st.send_message(id, m) {
                    tracing::warn!(error = %e, "cannot frame a gRPC message; resetting the stream");
                    st.reset_now(id, Reason::CANCEL);
                }
            }
            Event::HalfClose => {
                st.send_end_stream(id);
                st.forget_if_finished(id, &mut wakes);
            }
            Event::Reset(r) => {
                tracing::debug!(code = %r.code, message = %r.message, "user reset the gRPC stream");
                st.reset_now(id, Reason::CANCEL);
                if let Some(s) = st.streams.get_mut(&id) {
                    s.gone = true;
                }
                st.finish(id);
                st.forget_if_finished(id, &mut wakes);
            }
            // Events only a server sends.
            Event::Headers(_) | Event::End(_) => return Ok(()),
        }
        crate::conn::unlock_and_wake(st);
        Ok(())
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.poll_ready(self.id, cx)
    }

    fn release(&self) {
        // The task decides: a user that still reads is done sending (half-close), one that
        // dropped everything gave up on the call (reset).
        let mut st = self.shared.lock();
        st.released(self.id);
        crate::conn::unlock_and_wake(st);
    }
}
