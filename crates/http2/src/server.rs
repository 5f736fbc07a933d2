//! The gRPC server driver: serves one HTTP/2 (h2c, prior knowledge, or inside TLS) connection
//! and hands every call to a [`StreamingHandler`] as a bidirectional stream of raw messages.
//!
//! Wire behaviour follows Kitex's server (kitex-wire.md 5.4, 5.5, 7.9):
//!
//! * response HEADERS are `:status 200`, the request's `content-type`, then the handler's
//!   metadata; messages follow in DATA, then trailers `grpc-status`, `grpc-message` (always
//!   present, percent-encoded, empty on success) and the handler's trailers (`biz-status`,
//!   `biz-extra`, `grpc-status-details-bin`, ...);
//! * a stream that ends before any header was sent is answered Trailers-Only: one HEADERS frame
//!   with END_STREAM carrying `:status`, `content-type` and the status fields;
//! * once the trailers are out, a client that has not half-closed gets RST_STREAM(NO_ERROR);
//! * a client's RST_STREAM reaches the handler as [`Event::Reset`]; the server then sends
//!   nothing more on the stream;
//! * a malformed `:path` is answered like Kitex answers it: grpc-status 13 "malformed method
//!   name".
//!
//! Requests this driver refuses before any handler runs (each Trailers-Only, with
//! `content-type: application/grpc` unless the request had a gRPC one):
//!
//! | request | `:status` | `grpc-status` |
//! |---|---|---|
//! | `content-type` not `application/grpc[+...]` | 415 | 13 (as grpc-go) |
//! | `:method` other than POST | 405 | 13 |
//! | malformed `:path` | 200 | 13 (as Kitex) |
//! | malformed `grpc-timeout` | 200 | 13 (as grpc-go) |
//! | header list over `max_header_list_size` | 200 | 8 |
//!
//! A request HTTP/2 calls malformed (pseudo-headers missing, repeated, unknown or after a
//! regular field, upper-case or connection-specific names, `te` other than `trailers`,
//! forbidden bytes in a value) is reset with RST_STREAM(PROTOCOL_ERROR), as RFC 9113 8.1.1
//! asks.
//!
//! `grpc-timeout` becomes [`StreamRequest::deadline`]; the driver does not enforce it, the
//! handler does (a forwarding handler passes it on, and the client driver enforces it).
//!
//! [`serve_connection`]'s `shutdown` future starts a graceful shutdown: GOAWAY with the last
//! stream id 2^31-1 and a PING, then, when the PING comes back, GOAWAY with the real last
//! stream id; streams in flight run to their end, and the function returns once they have.
//!
//! Each request runs its handler on a task of its own. What the handler sends is encoded into
//! frames in the handler's task (or, when a forwarder splices streams, in the task that
//! produced the message) and queued on the connection; see the `conn` module.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_h2wire::frame::Reason;
use sluice_stream::{
    Closed, Event, EventSink, Metadata, Protocol, ServerStream, StatusCode, StreamEnd,
    StreamRequest, StreamingHandler,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::Instrument;

use crate::conn::{
    ConnConfig, Connection, Counted, HeaderBlock, Http2Error, Opening, Role, Shared, Side, State,
    Wakes,
};
use crate::content_type::GrpcContentType;
use crate::fields::{
    compressed_in_fields, compressed_in_metadata, encode_metadata, field, is_connection_specific,
    metadata_from_fields, valid_name, valid_value,
};
use crate::headers::{GRPC_MESSAGE, GRPC_STATUS, GRPC_TIMEOUT};
use crate::message::DEFAULT_MAX_MESSAGE_SIZE;
use crate::path::MethodPath;
use crate::status::{percent_encode, Code, Status};
use crate::timeout::parse_timeout;

/// How long [`serve_connection`] waits, once its connection has ended, for handler tasks still
/// running before it aborts them.
pub const HANDLER_GRACE: Duration = Duration::from_secs(5);

/// Settings of the server side of gRPC connections.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GrpcServerConfig {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams a client may have open at once.
    pub max_concurrent_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE: bytes a client may send on one stream before the handler
    /// has taken them (at least 65535).
    pub initial_stream_window: u32,
    /// Connection-level receive window (at least 65535). It is given back as data arrives:
    /// the stream windows are what bound memory.
    pub initial_connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE (Kitex sends 16384, kitex-wire.md 5.1).
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: bound on one request's decoded header list.
    pub max_header_list_size: u32,
    /// Largest gRPC message accepted from a client, prefix not counted; a larger one ends the
    /// stream with grpc-status 8 (RESOURCE_EXHAUSTED).
    pub max_message_size: usize,
    /// How long a new connection may take to send its preface and SETTINGS; past it the
    /// connection is closed (also after part of the preface).
    pub handshake_timeout: Duration,
    /// A connection with no open stream that receives nothing for this long is closed with
    /// GOAWAY(NO_ERROR). Default 10 minutes (as `ServerConfig::idle_timeout`).
    pub idle_timeout: Duration,
    /// Counters of refused and reset streams and idle-closed connections, shared by every
    /// connection given this config; `None` counts nothing.
    pub stats: Option<Arc<GrpcServerStats>>,
    /// The connection's span: the parent of each stream's `stream` span (debug level, so it
    /// costs nothing unless asked for). Default: none.
    pub span: tracing::Span,
    /// The listener's name, given to every [`StreamRequest`] (see
    /// [`sluice_stream::listener_name`]). Default empty.
    pub listener: &'static str,
}

impl GrpcServerConfig {
    /// Sets [`max_concurrent_streams`](Self::max_concurrent_streams).
    pub fn with_max_concurrent_streams(mut self, max_concurrent_streams: u32) -> Self {
        self.max_concurrent_streams = max_concurrent_streams;
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

    /// Sets [`max_message_size`](Self::max_message_size).
    pub fn with_max_message_size(mut self, max_message_size: usize) -> Self {
        self.max_message_size = max_message_size;
        self
    }

    /// Sets [`handshake_timeout`](Self::handshake_timeout).
    pub fn with_handshake_timeout(mut self, handshake_timeout: Duration) -> Self {
        self.handshake_timeout = handshake_timeout;
        self
    }

    /// Sets [`idle_timeout`](Self::idle_timeout).
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Sets [`stats`](Self::stats).
    pub fn with_stats(mut self, stats: Option<Arc<GrpcServerStats>>) -> Self {
        self.stats = stats;
        self
    }

    /// Sets [`span`](Self::span).
    pub fn with_span(mut self, span: tracing::Span) -> Self {
        self.span = span;
        self
    }

    /// Sets [`listener`](Self::listener).
    pub fn with_listener(mut self, listener: &'static str) -> Self {
        self.listener = listener;
        self
    }
}

/// What gRPC connections counted (see [`GrpcServerConfig::stats`]).
#[derive(Debug, Default)]
pub struct GrpcServerStats {
    /// Streams refused before a handler ran: over the concurrency limit (RST_STREAM
    /// REFUSED_STREAM), malformed (RST_STREAM PROTOCOL_ERROR), or answered with a status
    /// (header list too large: grpc-status 8; bad content-type, method, path or timeout).
    pub streams_refused: AtomicU64,
    /// Streams the client reset (RST_STREAM) while they were running.
    pub streams_reset_by_peer: AtomicU64,
    /// Connections closed after the idle timeout.
    pub connections_idle_closed: AtomicU64,
}

impl Default for GrpcServerConfig {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 1000,
            initial_stream_window: 1024 * 1024,
            initial_connection_window: 8 * 1024 * 1024,
            max_frame_size: 16 * 1024,
            max_header_list_size: 64 * 1024,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            stats: None,
            span: tracing::Span::none(),
            listener: "",
        }
    }
}

/// Why a gRPC connection ended with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcServerError {
    /// The client did not send the HTTP/2 preface and SETTINGS in time.
    #[error("HTTP/2 handshake with {peer} timed out after {timeout:?}")]
    HandshakeTimeout {
        /// The client.
        peer: SocketAddr,
        /// The configured limit.
        timeout: Duration,
    },
    /// The connection failed (protocol error, I/O error, GOAWAY with an error).
    #[error("HTTP/2 connection with {peer} failed: {source}")]
    Connection {
        /// The client.
        peer: SocketAddr,
        /// What went wrong.
        source: Http2Error,
    },
}

/// Serves one gRPC connection until the client closes it, it fails, or `shutdown` resolves and
/// the streams in flight have ended.
///
/// `io` starts with the client preface (a `PrefixedIo` replaying what the sniffer read). Each
/// request becomes a [`StreamRequest`] and a [`ServerStream`] given to `handler.handle` on a
/// task of its own.
///
/// The handler tasks belong to the connection: once it has ended, the function waits up to
/// [`HANDLER_GRACE`] for those still running (their streams have all ended or failed by then)
/// and aborts the rest.
///
/// Dropping the returned future closes the connection at once: every stream still running sees
/// a reset, and every handler task still running is aborted. Callers that drain with a
/// deadline do that when the deadline passes.
pub async fn serve_connection<T, H, F>(
    io: T,
    peer: SocketAddr,
    config: &GrpcServerConfig,
    handler: Arc<H>,
    shutdown: F,
) -> Result<(), GrpcServerError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: StreamingHandler,
    F: Future<Output = ()>,
{
    let cfg = ConnConfig {
        max_concurrent_streams: config.max_concurrent_streams,
        initial_stream_window: config.initial_stream_window,
        initial_connection_window: config.initial_connection_window,
        max_frame_size: config.max_frame_size,
        max_header_list_size: config.max_header_list_size,
        max_message_size: config.max_message_size,
        handshake_timeout: config.handshake_timeout,
        idle_timeout: Some(config.idle_timeout),
    };
    // The handler tasks' owner: dropped with this future, it cancels them.
    let tasks = Arc::new(sluice_io::TaskGroup::new());
    let role = ServerRole {
        peer,
        handler,
        max_header_list_size: config.max_header_list_size,
        tasks: tasks.clone(),
        stats: config.stats.clone(),
        span: config.span.clone(),
        listener: config.listener,
    };
    let (mut conn, _) = Connection::new(io, peer, cfg, role);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut shutting_down = false;
    let result = std::future::poll_fn(|cx| {
        if !shutting_down && shutdown.as_mut().poll(cx).is_ready() {
            shutting_down = true;
            conn.shutdown();
        }
        conn.poll(cx)
    })
    .await;
    // The socket closes first; then the handlers still running get a moment to end.
    drop(conn);
    let cancelled = tasks.finish(HANDLER_GRACE).await;
    if cancelled > 0 {
        tracing::debug!(%peer, cancelled, "gRPC handlers still running after the connection ended were cancelled");
    }
    match result {
        Ok(()) => Ok(()),
        Err(Http2Error::HandshakeTimeout) => Err(GrpcServerError::HandshakeTimeout {
            peer,
            timeout: config.handshake_timeout,
        }),
        Err(source) => Err(GrpcServerError::Connection { peer, source }),
    }
}

/// The server end of a connection, as the engine sees it: requests become handler tasks,
/// unreadable requests are answered with a status, and the counters are this server's.
struct ServerRole<H> {
    peer: SocketAddr,
    handler: Arc<H>,
    max_header_list_size: u32,
    tasks: Arc<sluice_io::TaskGroup>,
    stats: Option<Arc<GrpcServerStats>>,
    span: tracing::Span,
    listener: &'static str,
}

impl<H: StreamingHandler> Role for ServerRole<H> {
    const SIDE: Side = Side::Server;

    fn open(&mut self, shared: &Arc<Shared>, block: HeaderBlock) -> Opening {
        open_stream(shared, block, self)
    }

    fn abort(shared: &Shared, id: u32, status: &Status) {
        abort(shared, id, status);
    }

    fn count(&self, what: Counted) {
        let Some(stats) = &self.stats else {
            return;
        };
        let counter = match what {
            Counted::Refused => &stats.streams_refused,
            Counted::ResetByPeer => &stats.streams_reset_by_peer,
            Counted::IdleClosed => &stats.connections_idle_closed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The pseudo-headers of a request and its regular fields.
struct RequestHead {
    method: Bytes,
    path: Bytes,
    authority: Option<Bytes>,
    fields: Vec<(Bytes, Bytes)>,
}

/// Checks a request's field list as RFC 9113 8.3.1 asks; `Err` says why it is malformed.
fn request_head(fields: Vec<(Bytes, Bytes)>) -> Result<RequestHead, &'static str> {
    let (mut method, mut scheme, mut path, mut authority) = (None, None, None, None);
    let mut regular_seen = false;
    for (k, v) in &fields {
        if !valid_name(k) {
            return Err("invalid header name");
        }
        if !valid_value(v) {
            return Err("invalid header value");
        }
        if k.first() == Some(&b':') {
            if regular_seen {
                return Err("pseudo-header after a regular header");
            }
            let slot = match &k[..] {
                b":method" => &mut method,
                b":scheme" => &mut scheme,
                b":path" => &mut path,
                b":authority" => &mut authority,
                _ => return Err("unknown pseudo-header"),
            };
            if slot.replace(v.clone()).is_some() {
                return Err("repeated pseudo-header");
            }
        } else {
            regular_seen = true;
            if is_connection_specific(k) {
                return Err("connection-specific header");
            }
            if &k[..] == b"te" && &v[..] != b"trailers" {
                return Err("te other than trailers");
            }
        }
    }
    let (Some(method), Some(_), Some(path)) = (method, scheme, path) else {
        return Err(":method, :scheme or :path missing");
    };
    if path.is_empty() {
        return Err("empty :path");
    }
    Ok(RequestHead {
        method,
        path,
        authority,
        fields,
    })
}

/// A request refused before any handler ran.
struct Refusal {
    http_status: u16,
    status: Status,
}

impl Refusal {
    fn new(http_status: u16, code: Code, message: String) -> Refusal {
        Refusal {
            http_status,
            status: Status::new(code, message),
        }
    }
}

/// What a valid gRPC request says about itself.
struct Call {
    path: String,
    content_type: String,
    service: String,
    method: String,
    deadline: Option<Instant>,
}

/// Checks the request head, in the order the refusal table in the module docs lists.
fn check(head: &RequestHead) -> Result<Call, Refusal> {
    let content_type = field(&head.fields, "content-type")
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|v| GrpcContentType::parse(v).is_some())
        .ok_or_else(|| {
            let got = field(&head.fields, "content-type")
                .map_or_else(String::new, |v| String::from_utf8_lossy(v).into_owned());
            Refusal::new(
                415,
                Code::INTERNAL,
                format!("unexpected content-type {got:?}"),
            )
        })?;
    if &head.method[..] != b"POST" {
        return Err(Refusal::new(
            405,
            Code::INTERNAL,
            format!(
                "unexpected method {}: gRPC uses POST",
                String::from_utf8_lossy(&head.method)
            ),
        ));
    }
    let path = String::from_utf8_lossy(&head.path).into_owned();
    let method_path = MethodPath::parse(&path).map_err(|_| {
        // Kitex's wording (kitex-wire.md 5.4).
        Refusal::new(
            200,
            Code::INTERNAL,
            format!("malformed method name, method={path}"),
        )
    })?;
    let deadline = match field(&head.fields, GRPC_TIMEOUT) {
        None => None,
        Some(v) => {
            let d = parse_timeout(v).map_err(|e| {
                Refusal::new(200, Code::INTERNAL, format!("malformed grpc-timeout: {e}"))
            })?;
            // A timeout too far away to be an `Instant` is no deadline at all.
            Instant::now().checked_add(d)
        }
    };
    let (service, method) = (
        method_path.service.to_owned(),
        method_path.method.to_owned(),
    );
    Ok(Call {
        content_type: content_type.to_owned(),
        path,
        service,
        method,
        deadline,
    })
}

/// A new request: refused (answered at once), or handed to the handler on a task of its own.
fn open_stream<H: StreamingHandler>(
    shared: &Arc<Shared>,
    block: HeaderBlock,
    role: &ServerRole<H>,
) -> Opening {
    let ServerRole {
        peer,
        handler,
        max_header_list_size,
        tasks,
        span: conn_span,
        listener,
        ..
    } = role;
    let (peer, max_header_list_size, listener) = (*peer, *max_header_list_size, *listener);
    let id = block.stream;
    if block.too_large {
        tracing::debug!(%peer, stream = id, limit = max_header_list_size, "refusing gRPC request: header list too large");
        let status = Status::new(
            Code::RESOURCE_EXHAUSTED,
            format!("request header list larger than {max_header_list_size} bytes"),
        );
        refuse(
            shared,
            id,
            200,
            b"application/grpc",
            &status,
            block.end_stream,
        );
        return Opening::Done;
    }
    let head = match request_head(block.fields) {
        Ok(h) => h,
        Err(why) => {
            tracing::debug!(%peer, stream = id, why, "malformed HTTP/2 request");
            let mut st = shared.lock();
            st.reset_now(id, Reason::PROTOCOL_ERROR);
            return Opening::Done;
        }
    };
    let call = match check(&head) {
        Ok(c) => c,
        Err(r) => {
            tracing::debug!(%peer, path = %String::from_utf8_lossy(&head.path), http_status = r.http_status, message = %r.status.message, "refusing gRPC request");
            // The request's content-type is mirrored when it is a gRPC one.
            let content_type = field(&head.fields, "content-type")
                .filter(|v| {
                    std::str::from_utf8(v).is_ok_and(|v| GrpcContentType::parse(v).is_some())
                })
                .cloned()
                .unwrap_or_else(|| Bytes::from_static(b"application/grpc"));
            refuse(
                shared,
                id,
                r.http_status,
                &content_type,
                &r.status,
                block.end_stream,
            );
            return Opening::Done;
        }
    };
    let compressed_ok = compressed_in_fields(&head.fields);
    let authority = head
        .authority
        .as_ref()
        .map_or_else(String::new, |a| String::from_utf8_lossy(a).into_owned());
    // The response's content-type is the request's own value, shared rather than copied.
    let content_type_bytes = field(&head.fields, "content-type")
        .cloned()
        .unwrap_or_default();
    let request = StreamRequest {
        peer,
        protocol: Protocol::Grpc {
            path: call.path,
            content_type: call.content_type,
            authority,
        },
        service: call.service,
        method: call.method,
        // `content-type` travels in `Protocol::Grpc`, `grpc-timeout` as the deadline; the rest
        // of what is left out is about this hop only.
        headers: metadata_from_fields(head.fields, |name| {
            matches!(
                name,
                b"content-type" | b"grpc-timeout" | b"content-length" | b"te"
            )
        }),
        deadline: call.deadline,
        listener,
    };
    shared.lock().add_stream(id, content_type_bytes);
    let sink = Arc::new(ServerSink {
        shared: shared.clone(),
        id,
    });
    let (stream, to_user) = ServerStream::new(sink);
    let handler = handler.clone();
    let span = tracing::debug_span!(
        parent: conn_span,
        "stream",
        service = %request.service,
        method = %request.method,
        stream = id,
        downstream = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    tasks.spawn(async move { handler.handle(request, stream).await }.instrument(span));
    Opening::Accept {
        to_user,
        compressed_ok,
        end_stream: block.end_stream,
    }
}

/// Answers a request Trailers-Only with `status`, and, if the client is still sending, asks
/// it to stop with RST_STREAM(NO_ERROR).
fn refuse(
    shared: &Shared,
    id: u32,
    http_status: u16,
    content_type: &[u8],
    status: &Status,
    client_ended: bool,
) {
    let mut st = shared.lock();
    let block = trailers_only(&mut st, http_status, content_type, status, &Metadata::new());
    st.queue_block(id, block, true);
    if !client_ended {
        st.send_rst_after(id, Reason::NO_ERROR);
    }
    crate::conn::unlock_and_wake(st);
}

/// `:status` as text.
fn status_text(code: u16) -> Bytes {
    match code {
        200 => Bytes::from_static(b"200"),
        other => Bytes::from(other.to_string()),
    }
}

/// A Trailers-Only response: one header block with the status fields.
fn trailers_only(
    st: &mut State,
    http_status: u16,
    content_type: &[u8],
    status: &Status,
    trailers: &Metadata,
) -> Bytes {
    let mut out = BytesMut::with_capacity(128);
    st.encoder.begin(&mut out);
    st.encoder
        .field(b":status", &status_text(http_status), &mut out);
    st.encoder.field(b"content-type", content_type, &mut out);
    status_fields(st, status, trailers, &mut out);
    out.freeze()
}

/// `grpc-status`, `grpc-message` (always, as Kitex sends it), then the other trailers.
fn status_fields(st: &State, status: &Status, trailers: &Metadata, out: &mut BytesMut) {
    let mut digits = [0u8; 10];
    st.encoder.field(
        GRPC_STATUS.as_bytes(),
        decimal(status.code.as_u32(), &mut digits),
        out,
    );
    st.encoder.field(
        GRPC_MESSAGE.as_bytes(),
        percent_encode(&status.message).as_bytes(),
        out,
    );
    encode_metadata(
        &st.encoder,
        trailers,
        |k| k == GRPC_STATUS.as_bytes() || k == GRPC_MESSAGE.as_bytes() || k == b"content-type",
        out,
    );
}

/// `n` in decimal, written into `buf`.
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Ends stream `id` from the connection task with `status` (its request could not be read):
/// trailers (or Trailers-Only), then RST_STREAM(NO_ERROR) if the client is still sending.
fn abort(shared: &Shared, id: u32, status: &Status) {
    let end = StreamEnd::error(
        StatusCode::Grpc(status.code.as_u32()),
        status.message.clone(),
    );
    let mut wakes = Wakes::default();
    let mut st = shared.lock();
    end_stream(&mut st, id, &end, &mut wakes);
}

/// The sending side of one server stream.
struct ServerSink {
    shared: Arc<Shared>,
    id: u32,
}

/// Sends the response headers unless they are out already.
fn start(st: &mut State, id: u32, md: &Metadata) {
    let Some(s) = st.streams.get_mut(&id) else {
        return;
    };
    if s.headers_sent {
        return;
    }
    s.headers_sent = true;
    s.compress = compressed_in_metadata(md);
    let content_type = s.content_type.clone();
    let mut out = BytesMut::with_capacity(128);
    st.encoder.begin(&mut out);
    st.encoder.field(b":status", b"200", &mut out);
    st.encoder.field(b"content-type", &content_type, &mut out);
    encode_metadata(
        &st.encoder,
        md,
        |k| k == b"content-type" || k == b"content-length",
        &mut out,
    );
    st.queue_block(id, out.freeze(), false);
}

/// Ends the stream with `end`: trailers, or Trailers-Only if nothing was sent yet; then, if
/// the client has not half-closed, RST_STREAM(NO_ERROR) (RFC 9113 8.1, as Kitex does).
fn end_stream(st: &mut State, id: u32, end: &StreamEnd, wakes: &mut Wakes) {
    let Some(s) = st.streams.get_mut(&id) else {
        return;
    };
    if s.done || s.gone {
        return;
    }
    s.done = true;
    let headers_sent = s.headers_sent;
    let remote_ended = s.remote_ended;
    let content_type = s.content_type.clone();
    let status = match &end.error {
        None => Status::ok(),
        // A TTStream code (a handler of the other family) is mapped to its nearest status.
        Some(e) => Status::new(Code::new(e.code.to_grpc()), e.message.clone()),
    };
    let block = if headers_sent {
        let mut out = BytesMut::with_capacity(128);
        st.encoder.begin(&mut out);
        status_fields(st, &status, &end.trailers, &mut out);
        out.freeze()
    } else {
        trailers_only(st, 200, &content_type, &status, &end.trailers)
    };
    st.send_block(id, block, true);
    if !remote_ended {
        st.send_rst_after(id, Reason::NO_ERROR);
    }
    st.finish(id);
    st.forget_if_finished(id, wakes);
}

impl EventSink for ServerSink {
    fn push(&self, ev: Event) -> Result<(), Closed> {
        let id = self.id;
        // Declared before the lock: woken after it is released.
        let mut wakes = Wakes::default();
        let Some(mut st) = self.shared.lock_for_push(id)? else {
            return Ok(());
        };
        match ev {
            Event::Message(m) => {
                if !st.streams[&id].headers_sent {
                    start(&mut st, id, &Metadata::new());
                }
                if let Err(e) = st.send_message(id, m) {
                    let end =
                        StreamEnd::error(StatusCode::Grpc(Code::INTERNAL.as_u32()), e.to_string());
                    end_stream(&mut st, id, &end, &mut wakes);
                }
            }
            Event::Headers(md) => {
                if st.streams[&id].headers_sent {
                    tracing::debug!("ignoring response headers sent after the first ones");
                } else {
                    start(&mut st, id, &md);
                }
            }
            Event::End(end) => end_stream(&mut st, id, &end, &mut wakes),
            Event::Reset(reset) => {
                tracing::debug!(code = %reset.code, message = %reset.message, "handler reset the gRPC stream");
                st.reset_now(id, Reason::CANCEL);
                st.finish(id);
                st.forget_if_finished(id, &mut wakes);
            }
            Event::HalfClose => return Ok(()),
        }
        crate::conn::unlock_and_wake(st);
        Ok(())
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.poll_ready(self.id, cx)
    }

    fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.poll_closed(self.id, cx)
    }

    fn release(&self) {
        // The handler returned without ending the stream: end it for it. (A stream that has
        // ended takes nothing more; nothing is sent then.)
        let _ = self.push(Event::End(StreamEnd::error(
            StatusCode::Grpc(Code::INTERNAL.as_u32()),
            "stream handler ended without a status",
        )));
    }
}

/// Error code of the GOAWAY sent by [`refuse_connection`]: PROTOCOL_ERROR.
///
/// The connection speaks a protocol this listener does not serve, which is what PROTOCOL_ERROR
/// ("unspecific protocol error") says; ENHANCE_YOUR_CALM would tell the client it is sending
/// too much, which is not the case, and grpc-go reads it as a keepalive complaint. What makes
/// the refusal safe to retry elsewhere is the last stream id 0: no stream was processed.
pub const REFUSE_GOAWAY_CODE: u32 = 0x1;

/// The client connection preface (RFC 9113 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Refuses an HTTP/2 connection that reached a listener that does not serve gRPC: reads the
/// client preface, answers with an empty SETTINGS frame and a GOAWAY (last stream id 0, error
/// [`REFUSE_GOAWAY_CODE`], debug data `debug`), and closes.
///
/// The frames are written by hand because h2's GOAWAY cannot carry debug data, and the text is
/// what tells the operator of the client which listener to use.
pub async fn refuse_connection<T>(mut io: T, peer: SocketAddr, debug: &str) -> std::io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    const IO_TIMEOUT: Duration = Duration::from_secs(5);
    let mut preface = [0u8; PREFACE.len()];
    tokio::time::timeout(IO_TIMEOUT, io.read_exact(&mut preface))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    if preface != PREFACE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not an HTTP/2 client preface",
        ));
    }
    let frames = refusal_frames(debug);
    tracing::debug!(%peer, "refusing HTTP/2 connection with GOAWAY");
    tokio::time::timeout(IO_TIMEOUT, async {
        io.write_all(&frames).await?;
        io.flush().await?;
        io.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    // Read what the client still sends until it closes: closing a socket with unread input
    // makes the kernel send RST, which can destroy the GOAWAY before the client reads it.
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while io.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    Ok(())
}

/// SETTINGS (empty) then GOAWAY(last stream 0, [`REFUSE_GOAWAY_CODE`], `debug`).
fn refusal_frames(debug: &str) -> Vec<u8> {
    // The peer's SETTINGS_MAX_FRAME_SIZE is unknown but at least the default 16384.
    let debug = &debug.as_bytes()[..debug.len().min(16384 - 8)];
    let mut out = Vec::with_capacity(9 + 9 + 8 + debug.len());
    out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    let len = u32::try_from(8 + debug.len())
        .unwrap_or(16384)
        .to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], 0x7, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&REFUSE_GOAWAY_CODE.to_be_bytes());
    out.extend_from_slice(debug);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_status_codes() {
        let mut buf = [0u8; 10];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(13, &mut buf), b"13");
        assert_eq!(decimal(u32::MAX, &mut buf), b"4294967295");
    }

    #[test]
    fn refusal_frames_layout() {
        let f = refusal_frames("use port 8888");
        assert_eq!(&f[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(&f[9..18], &[0, 0, 21, 7, 0, 0, 0, 0, 0]);
        assert_eq!(&f[18..22], &[0, 0, 0, 0]);
        assert_eq!(&f[22..26], &[0, 0, 0, 1]);
        assert_eq!(&f[26..], b"use port 8888");
    }

    #[test]
    fn long_debug_text_fits_one_frame() {
        let long = "x".repeat(20_000);
        let f = refusal_frames(&long);
        let len = (usize::from(f[9]) << 16) | (usize::from(f[10]) << 8) | usize::from(f[11]);
        assert_eq!(len, 16384);
        assert_eq!(f.len(), 18 + 16384);
    }
}
