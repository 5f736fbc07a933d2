//! Sluice's binary-generic server.
//!
//! A [`Server`] accepts connections, sniffs each one (with a timeout), and runs the driver of its
//! protocol family. Ping-pong traffic (TTHeader with or without the inner framed length, Framed,
//! Buffered, Kitex protobuf, mesh header) goes to a [`DefaultHandler`] one request at a time, with
//! the envelope already separated out, as Kitex's binary generic does: the handler sees the args
//! struct bytes and returns the result struct bytes (or an exception), and the server writes the
//! reply in the request's own shape with the request's seq id.
//!
//! * Requests of Kitex mux clients (TTHeader FLAGS `0x0001`, which pipeline) are served
//!   concurrently and answered by seq id; everything else is answered in order.
//! * Oneway requests run the handler and write nothing back.
//! * While draining, TTHeader replies carry `crrst: 1`, then connections close.
#![forbid(unsafe_code)]

mod conn;
mod counted;

pub use counted::IoBytes;
pub mod drain;
pub mod echo;
pub mod error;
pub mod layer;
mod pingpong;
mod request;
mod tls;
mod ttstream;

/// One outgoing frame or reply: an encoded head and the payload `Bytes` it carries.
type Chunks = Vec<bytes::Bytes>;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use sluice_sniff::Family;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use drain::{Drain, DrainHandle};
pub use error::{ErrorKind, ProxyError};
pub use sluice_http2::GrpcServerStats;
pub use sluice_io::RateLog;
pub use tls::{ClientAuth, TlsConfig, TlsConfigBuilder, TlsError};

/// Pending connections a listener's accept queue holds (the kernel caps it at
/// `net.core.somaxconn`). The standard library's 128 is too few for a burst of new connections:
/// past it the kernel drops SYNs, and each dropped one costs its client a retransmit a second
/// later (or a connect timeout). Go servers, Kitex among them, ask for `somaxconn` as well.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as the standard
/// library sets it, so a restarted server can bind while old connections are in TIME_WAIT).
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
pub use request::{DefaultHandler, Request, Response, ResponseBody, Transport};
pub use sluice_stream::{ServerStream, StreamEnd, StreamRequest, StreamingHandler};

/// Replaces the settings of a running [`Server`] (from [`Server::config_handle`]): connections
/// accepted afterwards take the new ones, open connections keep theirs; a new
/// `max_connections` changes the room at the next accept. The listener's name stays.
#[derive(Debug, Clone)]
pub struct ConfigHandle(Arc<arc_swap::ArcSwap<ServerConfig>>);

impl ConfigHandle {
    /// Puts `config` in force for new connections.
    pub fn set(&self, mut config: ServerConfig) {
        let old = self.0.load();
        config.name = old.name.clone();
        config.listener = old.listener;
        self.0.store(Arc::new(config));
    }

    /// The settings in force.
    pub fn get(&self) -> Arc<ServerConfig> {
        self.0.load_full()
    }
}

/// Which protocol family a listener serves. Proxy listeners are pinned to one cluster; an
/// embedded server serves every family on one port by default, as a Kitex server does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cluster {
    /// Every family: ping-pong, TTStream and gRPC.
    #[default]
    All,
    /// TTStream streaming and all ping-pong traffic.
    TTStream,
    /// gRPC over HTTP/2.
    Grpc,
}

impl Cluster {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Cluster::All => "all",
            Cluster::TTStream => "ttstream",
            Cluster::Grpc => "grpc",
        }
    }
}

/// Connection counts of one protocol family on one server.
#[derive(Debug, Default)]
pub struct FamilyStats {
    /// Connections sniffed as this family.
    pub accepted: AtomicU64,
    /// Connections of this family open now.
    pub open: AtomicI64,
}

/// Counters of one server.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections open now, sniffed or not.
    pub open: AtomicI64,
    /// Per protocol family (see [`ServerStats::family`]).
    pub families: [FamilyStats; 3],
    /// Bytes read from and written to this server's connections.
    pub bytes: Arc<IoBytes>,
    /// Connections of the other protocol family, refused with a pointer to the right cluster.
    pub wrong_cluster: AtomicU64,
    /// Connections that spoke no protocol Sluice serves.
    pub not_ours: AtomicU64,
    /// Connections accepted and closed at once because `max_connections` were open.
    pub connections_refused: AtomicU64,
    /// Connections closed after the idle timeout.
    pub idle_closed: AtomicU64,
    /// Connections closed because a started frame (or the HTTP/2 preface) did not complete
    /// within the frame timeout.
    pub frame_timeouts: AtomicU64,
    /// TTStream streams refused: the per-connection stream limit was reached, or the server
    /// was draining.
    pub streams_refused: AtomicU64,
    /// Connections closed because the peer reset streams faster than the reset budget allows.
    pub reset_floods: AtomicU64,
    /// Connections closed because no protocol was recognised within the sniff timeout.
    pub sniff_timeouts: AtomicU64,
    /// Connections closed for what the peer sent: a malformed or oversized frame or message,
    /// an HTTP/2 connection error.
    pub protocol_errors: AtomicU64,
    /// Connections whose TLS handshake failed: no client certificate or one that was
    /// refused, a client that refused the server's, or a client that does not speak TLS
    /// (each logged at warn with rustls's reason).
    pub tls_handshake_failures: AtomicU64,
    /// What the listener's gRPC connections counted (streams refused or reset, idle closes).
    pub grpc: Arc<GrpcServerStats>,
    /// Budgets for the per-connection log lines (a flood of bad peers logs ten a second).
    pub(crate) logs: RefusalLogs,
}

impl ServerStats {
    /// The counts of one protocol family.
    pub fn family(&self, family: Family) -> &FamilyStats {
        &self.families[match family {
            Family::PingPong => 0,
            Family::TTStream => 1,
            Family::Http2 => 2,
        }]
    }
}

/// Decrements an open-connections count when the connection ends, however it ends.
pub(crate) struct OpenGuard<'a>(&'a AtomicI64);

impl<'a> OpenGuard<'a> {
    pub(crate) fn new(open: &'a AtomicI64) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Log budgets for refusals that a flood of peers could repeat at will.
#[derive(Debug, Default)]
pub(crate) struct RefusalLogs {
    pub(crate) sniff: RateLog,
    pub(crate) frame: RateLog,
    pub(crate) tls: RateLog,
}

/// A [`StreamingHandler`] for servers that serve no streams: every stream ends with a
/// [`ErrorKind::NoRoute`] error (TTStream: `UNKNOWN_METHOD`; gRPC: `UNIMPLEMENTED`).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoStreaming;

impl StreamingHandler for NoStreaming {
    async fn handle(&self, req: StreamRequest, stream: ServerStream) {
        let e = ProxyError::new(ErrorKind::NoRoute, "this server has no streaming handler");
        stream.finish(e.to_stream_end(&req.protocol)).await;
    }
}

/// Server settings. Defaults are documented per field; start from [`ServerConfig::default`] and
/// set what differs with the `with_*` methods (or assign the public fields).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Name of the listener, for logs, and carried by every request and stream
    /// ([`Request::listener`]).
    pub name: String,
    /// `name`, shared (set by [`Server::new`]).
    pub(crate) listener: &'static str,
    /// Time a new connection has to send enough bytes to be recognised. Default 5 s.
    pub sniff_timeout: Duration,
    /// A connection with no request or stream in flight and nothing read for this long is
    /// closed, whatever its protocol. Default 10 min, as Kitex servers.
    pub idle_timeout: Duration,
    /// A request or frame whose first bytes have arrived must be whole within this time, or
    /// the connection is closed with a log line (a stalled or slowloris peer). Default 30 s.
    pub frame_timeout: Duration,
    /// TTStream streams open at once on one connection; a stream opened beyond it is refused
    /// in TTStream's own way (a Header and a Trailer carrying an exception). Default 1000, as
    /// gRPC's concurrent-stream limit.
    pub max_streams_per_conn: usize,
    /// Largest frame or message accepted, any transport. Default 16 MiB.
    pub max_frame_size: usize,
    /// Requests served at once on one TTHeader connection; reading pauses beyond it. Default 256.
    pub max_in_flight_per_conn: usize,
    /// Connections served at once. Beyond it a new connection is accepted and closed at once
    /// (counted in [`ServerStats::connections_refused`], logged at most every 10 s), so its
    /// client fails fast and can try elsewhere instead of waiting unanswered. Default 10 000.
    pub max_connections: usize,
    /// Service name given to requests that carry none (Framed, Buffered, TTHeader without
    /// `isn`). Default none (empty string).
    pub default_service: Option<String>,
    /// After a drain starts, how long connections may take to finish. Default 10 s.
    pub drain_grace: Duration,
    /// The protocol families served. Default: all of them.
    pub cluster: Cluster,
    /// TLS for every connection: after the handshake the decrypted stream is sniffed and
    /// served as a plain connection would be. Default none (plaintext, h2c).
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            name: "sluice".to_owned(),
            listener: "",
            sniff_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            frame_timeout: Duration::from_secs(30),
            max_streams_per_conn: 1000,
            max_frame_size: sluice_ttheader::DEFAULT_MAX_FRAME_SIZE,
            max_in_flight_per_conn: 256,
            max_connections: 10_000,
            default_service: None,
            drain_grace: Duration::from_secs(10),
            cluster: Cluster::All,
            tls: None,
        }
    }
}

impl ServerConfig {
    /// Sets [`name`](Self::name).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets [`sniff_timeout`](Self::sniff_timeout).
    pub fn with_sniff_timeout(mut self, sniff_timeout: Duration) -> Self {
        self.sniff_timeout = sniff_timeout;
        self
    }

    /// Sets [`idle_timeout`](Self::idle_timeout).
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Sets [`frame_timeout`](Self::frame_timeout).
    pub fn with_frame_timeout(mut self, frame_timeout: Duration) -> Self {
        self.frame_timeout = frame_timeout;
        self
    }

    /// Sets [`max_streams_per_conn`](Self::max_streams_per_conn).
    pub fn with_max_streams_per_conn(mut self, max_streams_per_conn: usize) -> Self {
        self.max_streams_per_conn = max_streams_per_conn;
        self
    }

    /// Sets [`max_frame_size`](Self::max_frame_size).
    pub fn with_max_frame_size(mut self, max_frame_size: usize) -> Self {
        self.max_frame_size = max_frame_size;
        self
    }

    /// Sets [`max_in_flight_per_conn`](Self::max_in_flight_per_conn).
    pub fn with_max_in_flight_per_conn(mut self, max_in_flight_per_conn: usize) -> Self {
        self.max_in_flight_per_conn = max_in_flight_per_conn;
        self
    }

    /// Sets [`max_connections`](Self::max_connections).
    pub fn with_max_connections(mut self, max_connections: usize) -> Self {
        self.max_connections = max_connections;
        self
    }

    /// Sets [`default_service`](Self::default_service).
    pub fn with_default_service(mut self, default_service: Option<String>) -> Self {
        self.default_service = default_service;
        self
    }

    /// Sets [`drain_grace`](Self::drain_grace).
    pub fn with_drain_grace(mut self, drain_grace: Duration) -> Self {
        self.drain_grace = drain_grace;
        self
    }

    /// Sets [`cluster`](Self::cluster).
    pub fn with_cluster(mut self, cluster: Cluster) -> Self {
        self.cluster = cluster;
        self
    }

    /// Sets [`tls`](Self::tls).
    pub fn with_tls(mut self, tls: Option<TlsConfig>) -> Self {
        self.tls = tls;
        self
    }
}

/// The binary-generic server.
#[derive(Debug)]
pub struct Server<H, S = NoStreaming> {
    /// Read at each accept: a [`ConfigHandle`] may replace it while the server runs.
    config: Arc<arc_swap::ArcSwap<ServerConfig>>,
    handler: Arc<H>,
    streaming: Arc<S>,
    stats: Arc<ServerStats>,
}

impl<H: DefaultHandler> Server<H> {
    /// A server that hands ping-pong requests to `handler` and serves no streams.
    pub fn new(mut config: ServerConfig, handler: Arc<H>) -> Self {
        config.listener = sluice_stream::listener_name(&config.name);
        Self {
            config: Arc::new(arc_swap::ArcSwap::from_pointee(config)),
            handler,
            streaming: Arc::new(NoStreaming),
            stats: Arc::default(),
        }
    }
}

impl<H: DefaultHandler, S: StreamingHandler> Server<H, S> {
    /// The same server, handing streams (TTStream, and gRPC) to `streaming`.
    pub fn with_streaming<S2: StreamingHandler>(self, streaming: Arc<S2>) -> Server<H, S2> {
        Server {
            config: self.config,
            handler: self.handler,
            streaming,
            stats: self.stats,
        }
    }

    /// Counters, shared with the running server.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    /// A handle that replaces the settings of the running server (a configuration reload).
    pub fn config_handle(&self) -> ConfigHandle {
        ConfigHandle(self.config.clone())
    }

    /// Accepts and serves connections on `listener` until `drain` is signalled, then lets the
    /// open connections finish (up to the grace period) and returns.
    pub async fn serve(self, listener: TcpListener, drain: Drain) {
        let local = listener.local_addr().ok();
        let mut max = self.config.load().max_connections;
        let limit = Arc::new(Semaphore::new(max));
        let mut tasks = tokio::task::JoinSet::new();
        // Reaching the limit is logged once per interval, with how many were refused.
        let refusals = RateLog::new(1, Duration::from_secs(10));
        tracing::info!(listener = %self.config.load().name, addr = ?local, "listening");
        loop {
            let accepted = tokio::select! {
                _ = drain.signaled() => break,
                a = listener.accept() => a,
            };
            // The settings in force now: a new connection takes them and keeps them.
            let config = self.config.load_full();
            if config.max_connections != max {
                // A reload moved the limit: connections open now stay, the room changes.
                if config.max_connections > max {
                    limit.add_permits(config.max_connections - max);
                } else {
                    limit.forget_permits(max - config.max_connections);
                }
                max = config.max_connections;
            }
            match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        // At the limit: close it now, so the client sees a refusal rather than
                        // a connection nobody will read.
                        self.stats
                            .connections_refused
                            .fetch_add(1, Ordering::Relaxed);
                        if let Some(suppressed) = refusals.allow() {
                            tracing::warn!(
                                listener = %config.name,
                                %peer,
                                limit = config.max_connections,
                                refused = suppressed + 1,
                                "max_connections reached: closing new connections at once"
                            );
                        }
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let ctx = self.ctx_with(config, peer);
                    let drain = drain.clone();
                    tasks.spawn(async move {
                        conn::serve_connection(stream, peer, ctx, drain).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Accept errors (EMFILE, ECONNABORTED...) are per connection: log, back off
                    // a moment so a full fd table does not spin, and keep serving.
                    tracing::warn!(listener = %config.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            while tasks.try_join_next().is_some() {}
        }
        drop(listener);
        let config = self.config.load();
        let grace = config.drain_grace;
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::warn!(listener = %config.name, open = tasks.len(), "drain grace ended; closing connections");
            tasks.abort_all();
        }
    }

    /// Serves one already-accepted connection (for embedding with a custom accept loop), over
    /// any byte stream: a [`tokio::net::TcpStream`], or anything else that reads and writes (a
    /// Unix socket, an in-memory [`tokio::io::duplex`] pipe). Sniffing, TLS (when configured)
    /// and every protocol driver work the same on each.
    ///
    /// A `TcpStream` is recognised and served through its owned halves, with no read buffer
    /// while idle; another stream is split with [`tokio::io::split`] and keeps its read buffer
    /// between requests.
    pub async fn serve_connection<T>(&self, stream: T, peer: SocketAddr, drain: Drain)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        conn::serve_any(stream, peer, self.ctx(peer), drain).await;
    }

    fn ctx(&self, peer: SocketAddr) -> conn::Ctx<H, S> {
        self.ctx_with(self.config.load_full(), peer)
    }

    fn ctx_with(&self, config: Arc<ServerConfig>, peer: SocketAddr) -> conn::Ctx<H, S> {
        conn::Ctx {
            span: conn::ConnSpan::new(config.clone(), peer),
            config,
            handler: self.handler.clone(),
            streaming: self.streaming.clone(),
            stats: self.stats.clone(),
        }
    }
}
