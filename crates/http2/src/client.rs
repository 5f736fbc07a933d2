//! The gRPC client: opens streams on one downstream over HTTP/2 (h2c, prior knowledge).
//!
//! A [`GrpcClient`] keeps one HTTP/2 connection per endpoint, dialled on first use and shared
//! by every stream opened on that endpoint; endpoints take turns (round robin). A connection
//! that broke or received GOAWAY is dropped and dialled again, once, when a new stream cannot
//! be opened on it; streams already running on it are not moved.
//!
//! Each stream behaves like a Kitex client stream (kitex-wire.md 5.2-5.4):
//!
//! * request HEADERS `:method POST`, `:scheme http`, `:path`, `:authority`, `content-type`,
//!   `te: trailers`, `grpc-timeout` (what is left of the deadline), then the metadata in order
//!   (`-bin` values untouched);
//! * each message is one length-prefixed payload in DATA, sent only as fast as the server's
//!   window allows; a half-close is a single empty DATA frame with END_STREAM, or the END_STREAM
//!   flag on the last message when the half-close was already queued behind it (a unary call
//!   is then one DATA frame, as Kitex sends it);
//! * a reset is RST_STREAM(CANCEL);
//! * response HEADERS become [`Event::Headers`] (without `content-type`), messages
//!   [`Event::Message`], the trailers (or a Trailers-Only response) [`Event::End`] with the
//!   decoded `grpc-status`/`grpc-message` and every other trailer, a RST_STREAM from the server
//!   [`Event::Reset`]; a non-200 `:status` or a response without a gRPC `content-type` ends with
//!   the code of [`Code::from_http_status`];
//! * when the deadline passes, the stream is reset (CANCEL) and ends with grpc-status 4
//!   (DEADLINE_EXCEEDED), as a gRPC client reports it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use h2::client::{ResponseFuture, SendRequest};
use h2::{Reason, SendStream};
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE, TE};
use http::{Method, Request, Uri};
use sluice_stream::{pipe, ClientStream, Event, Metadata, PipeRx, PipeTx, StreamEnd};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::content_type::GrpcContentType;
use crate::driver::{
    append_metadata, compressed_in_map, compressed_in_metadata, metadata_from_map, read_messages,
    reset_from, send_payload, text_value, Payload, ReadEnd,
};
use crate::headers::{GRPC_MESSAGE, GRPC_STATUS, GRPC_TIMEOUT};
use crate::message::{MessageDecoder, DEFAULT_MAX_MESSAGE_SIZE};
use crate::status::{Code, Status};
use crate::timeout::format_timeout;

/// Settings of a [`GrpcClient`].
#[derive(Debug, Clone)]
pub struct GrpcClientConfig {
    /// The downstream's addresses, used in turn.
    pub endpoints: Vec<SocketAddr>,
    /// Limit on dialling one endpoint (TCP connect and sending the HTTP/2 preface).
    pub connect_timeout: Duration,
    /// Largest gRPC message accepted from the server, prefix not counted; a larger one ends the
    /// stream with grpc-status 8 (RESOURCE_EXHAUSTED) and resets it.
    pub max_message_size: usize,
    /// SETTINGS_INITIAL_WINDOW_SIZE: bytes the server may send on one stream before the user
    /// has taken them.
    pub initial_stream_window: u32,
    /// Connection-level receive window (larger than the stream window, so that one slow stream
    /// does not stop the others).
    pub initial_connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE.
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: bound on one response's decoded header list.
    pub max_header_list_size: u32,
}

impl GrpcClientConfig {
    /// Defaults for these endpoints: 1 s connect timeout, 4 MiB messages, 1 MiB stream and
    /// 8 MiB connection windows, 16 KiB frames, 64 KiB header lists.
    pub fn new(endpoints: Vec<SocketAddr>) -> Self {
        Self {
            endpoints,
            connect_timeout: Duration::from_secs(1),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            initial_stream_window: 1024 * 1024,
            initial_connection_window: 8 * 1024 * 1024,
            max_frame_size: 16 * 1024,
            max_header_list_size: 64 * 1024,
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
    /// HTTP/2 refused the connection or the stream (also after a redial).
    #[error("HTTP/2 error with {addr}: {source}")]
    H2 {
        /// The endpoint.
        addr: SocketAddr,
        /// What h2 reported.
        source: h2::Error,
    },
    /// The request cannot be expressed in HTTP/2 (bad path or authority).
    #[error("invalid gRPC request: {0}")]
    InvalidRequest(String),
}

/// A client for one gRPC downstream. Cheap to clone; clones share the connections.
#[derive(Debug, Clone)]
pub struct GrpcClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: GrpcClientConfig,
    next: AtomicUsize,
    slots: Vec<Slot>,
    conn_ids: AtomicU64,
}

/// One endpoint and its connection, if any. The lock is held while dialling, so concurrent
/// opens wait for one connection instead of each dialling their own.
#[derive(Debug)]
struct Slot {
    addr: SocketAddr,
    conn: Mutex<Option<Conn>>,
}

#[derive(Debug, Clone)]
struct Conn {
    id: u64,
    send: SendRequest<Payload>,
    /// Set when the connection task has ended.
    closed: Arc<AtomicBool>,
}

impl GrpcClient {
    /// A client; nothing is dialled until the first stream.
    pub fn new(config: GrpcClientConfig) -> Self {
        let slots = config
            .endpoints
            .iter()
            .map(|&addr| Slot {
                addr,
                conn: Mutex::new(None),
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                config,
                next: AtomicUsize::new(0),
                slots,
                conn_ids: AtomicU64::new(0),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GrpcClientConfig {
        &self.inner.config
    }

    /// Opens a stream: sends the request HEADERS and starts the task that moves the stream's
    /// events. The next endpoint in turn is used; if it cannot be dialled, the following ones
    /// are tried, each once.
    pub async fn open(&self, req: &OpenRequest) -> Result<ClientStream, GrpcClientError> {
        let inner = &self.inner;
        let n = inner.slots.len();
        if n == 0 {
            return Err(GrpcClientError::NoEndpoints);
        }
        let first = inner.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut last_err = None;
        for i in 0..n {
            let slot = &inner.slots[(first + i) % n];
            match self.open_on(slot, req).await {
                Ok(s) => return Ok(s),
                Err(
                    e @ (GrpcClientError::Connect { .. } | GrpcClientError::ConnectTimeout { .. }),
                ) => {
                    tracing::debug!(addr = %slot.addr, error = %e, "gRPC endpoint unreachable, trying the next one");
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or(GrpcClientError::NoEndpoints))
    }

    async fn open_on(
        &self,
        slot: &Slot,
        req: &OpenRequest,
    ) -> Result<ClientStream, GrpcClientError> {
        let mut request = Some(build_request(req, slot.addr)?);
        let compress_out = compressed_in_metadata(&req.headers);
        let mut redialled = false;
        loop {
            let conn = self.connection(slot).await?;
            // Moved, not cloned: a redial (rare) builds the request again.
            let head = match request.take() {
                Some(r) => r,
                None => build_request(req, slot.addr)?,
            };
            let started = async {
                let mut send = conn.send.clone().ready().await?;
                send.send_request(head, false)
            }
            .await;
            match started {
                Ok((response, send_stream)) => {
                    // The user's events are queued for the stream's task, which waits on h2's
                    // flow control.
                    let (out_tx, from_user) = pipe(sluice_stream::CHANNEL_DEPTH);
                    let (stream, to_user) = ClientStream::new(std::sync::Arc::new(out_tx));
                    let decoder =
                        MessageDecoder::with_max_message_size(self.inner.config.max_message_size);
                    tokio::spawn(drive(
                        response,
                        send_stream,
                        to_user,
                        from_user,
                        compress_out,
                        decoder,
                        req.deadline,
                    ));
                    return Ok(stream);
                }
                // Nothing was sent on this connection, so a fresh one may be tried.
                Err(e) if !redialled => {
                    tracing::debug!(addr = %slot.addr, error = %e, "gRPC connection unusable, redialling");
                    redialled = true;
                    let mut guard = slot.conn.lock().await;
                    if guard.as_ref().is_some_and(|c| c.id == conn.id) {
                        *guard = None;
                    }
                }
                Err(source) => {
                    return Err(GrpcClientError::H2 {
                        addr: slot.addr,
                        source,
                    })
                }
            }
        }
    }

    /// The endpoint's connection, dialled if there is none or it has closed.
    async fn connection(&self, slot: &Slot) -> Result<Conn, GrpcClientError> {
        let mut guard = slot.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            if !c.closed.load(Ordering::Acquire) {
                return Ok(c.clone());
            }
        }
        let conn = self.dial(slot.addr).await?;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    async fn dial(&self, addr: SocketAddr) -> Result<Conn, GrpcClientError> {
        let config = &self.inner.config;
        let timeout = config.connect_timeout;
        let dialled = tokio::time::timeout(timeout, async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|source| GrpcClientError::Connect { addr, source })?;
            // Messages are written whole; Nagle would only delay the last segment of each.
            let _ = tcp.set_nodelay(true);
            let mut builder = h2::client::Builder::new();
            builder
                .enable_push(false)
                .initial_window_size(config.initial_stream_window)
                .initial_connection_window_size(config.initial_connection_window)
                .max_frame_size(config.max_frame_size)
                .max_header_list_size(config.max_header_list_size);
            builder
                .handshake::<_, Payload>(sluice_io::GatherWrites::new(tcp))
                .await
                .map_err(|source| GrpcClientError::H2 { addr, source })
        })
        .await
        .map_err(|_| GrpcClientError::ConnectTimeout { addr, timeout })??;
        let (send, connection) = dialled;
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        tokio::spawn(async move {
            if let Err(e) = sluice_io::coalesce_wakeups(connection).await {
                tracing::debug!(%addr, error = %e, "gRPC client connection ended");
            }
            flag.store(true, Ordering::Release);
        });
        let id = self.inner.conn_ids.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%addr, id, "gRPC client connection established");
        Ok(Conn { id, send, closed })
    }
}

/// The request head; the body is the stream's DATA.
fn build_request(req: &OpenRequest, addr: SocketAddr) -> Result<Request<()>, GrpcClientError> {
    let authority = if req.authority.is_empty() {
        addr.to_string()
    } else {
        req.authority.clone()
    };
    let uri = Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(req.path.as_str())
        .build()
        .map_err(|e| {
            GrpcClientError::InvalidRequest(format!(
                "path {:?} / authority {authority:?}: {e}",
                req.path
            ))
        })?;
    let content_type = if req.content_type.is_empty() {
        HeaderValue::from_static("application/grpc")
    } else {
        HeaderValue::from_str(&req.content_type).map_err(|_| {
            GrpcClientError::InvalidRequest(format!("content-type {:?}", req.content_type))
        })?
    };
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    let map = request.headers_mut();
    map.insert(CONTENT_TYPE, content_type);
    map.insert(TE, HeaderValue::from_static("trailers"));
    if let Some(deadline) = req.deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        map.insert(GRPC_TIMEOUT, text_value(&format_timeout(left)));
    }
    append_metadata(map, &req.headers, |k| {
        k.eq_ignore_ascii_case(b"content-type")
            || k.eq_ignore_ascii_case(GRPC_TIMEOUT.as_bytes())
            || k.eq_ignore_ascii_case(b"content-length")
            || k.eq_ignore_ascii_case(b"host")
    });
    Ok(request)
}

/// Why a client stream's driver stopped.
enum Stop {
    /// The response ended and the user was told.
    Done,
    /// The deadline passed.
    Expired,
    /// The user dropped its receiving half.
    UserGone,
}

/// Moves one stream's events both ways until the response has ended.
async fn drive(
    response: ResponseFuture,
    mut send: SendStream<Payload>,
    to_user: PipeTx,
    from_user: PipeRx,
    compress_out: bool,
    decoder: MessageDecoder,
    deadline: Option<Instant>,
) {
    let stop = {
        let mut inbound = std::pin::pin!(inbound(response, &to_user, decoder));
        let mut outbound = std::pin::pin!(outbound(&mut send, from_user, &to_user, compress_out));
        let mut timer = std::pin::pin!(async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        });
        let mut outbound_done = false;
        loop {
            tokio::select! {
                () = &mut inbound => break Stop::Done,
                () = &mut outbound, if !outbound_done => outbound_done = true,
                () = &mut timer => break Stop::Expired,
                () = to_user.closed() => break Stop::UserGone,
            }
        }
    };
    match stop {
        Stop::Done => {}
        Stop::Expired => {
            send.send_reset(Reason::CANCEL);
            let end = StreamEnd::error(Code::DEADLINE_EXCEEDED.as_u32(), "deadline exceeded");
            let _ = to_user.send(Event::End(end)).await;
        }
        Stop::UserGone => send.send_reset(Reason::CANCEL),
    }
    // Returning drops the h2 handles: a stream whose response is complete but whose request
    // side is still open is reset (CANCEL) by h2, which ends it for the server too.
}

/// The user-to-server direction. Ends when the user reset the stream or has no sender left;
/// after a half-close it keeps listening, for a reset.
async fn outbound(
    send: &mut SendStream<Payload>,
    mut from_user: PipeRx,
    to_user: &PipeTx,
    compress: bool,
) {
    let mut half_closed = false;
    let mut queued: Option<Event> = None;
    loop {
        let event = match queued.take() {
            Some(e) => Some(e),
            None => from_user.recv().await,
        };
        match event {
            Some(Event::Message(m)) if !half_closed => {
                // A half-close already waiting behind the message rides on its last frame.
                let mut end = false;
                match from_user.try_recv() {
                    Some(Event::HalfClose) => end = true,
                    Some(other) => queued = Some(other),
                    None => {}
                }
                let payload = match Payload::message(m, compress) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot frame a gRPC message; resetting the stream");
                        send.send_reset(Reason::CANCEL);
                        return;
                    }
                };
                if let Err(e) = send_payload(send, payload, end).await {
                    // The response side reports how the stream ended.
                    if let crate::driver::SendError::H2(e) = e {
                        tracing::debug!(error = %e, "sending a gRPC request message failed");
                    }
                    return;
                }
                half_closed = end;
            }
            None if !half_closed && to_user.is_closed() => {
                // The whole handle was dropped: the user gave up on the call.
                send.send_reset(Reason::CANCEL);
                return;
            }
            event @ (Some(Event::HalfClose) | None) if !half_closed => {
                // A user that drops only its sending half is done sending.
                if send.send_data(Payload::empty(), true).is_err() || event.is_none() {
                    return;
                }
                half_closed = true;
            }
            Some(Event::Reset(r)) => {
                tracing::debug!(code = r.code, message = %r.message, "user reset the gRPC stream");
                send.send_reset(Reason::CANCEL);
                return;
            }
            None => return,
            // Messages after the half-close, and events only a server sends.
            Some(_) => {}
        }
    }
}

/// The server-to-user direction: response head, messages, trailers.
async fn inbound(response: ResponseFuture, to_user: &PipeTx, decoder: MessageDecoder) {
    let response = match response.await {
        Ok(r) => r,
        Err(e) => {
            let _ = to_user.send(Event::Reset(reset_from(&e))).await;
            return;
        }
    };
    let (parts, mut body) = response.into_parts();
    let grpc_content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| GrpcContentType::parse(v).is_some());
    if parts.status != http::StatusCode::OK || !grpc_content_type {
        // Not a gRPC response: kitex-wire.md 5.4, HTTPStatusConvTab.
        let code = Code::from_http_status(parts.status.as_u16());
        let mut message = format!("unexpected HTTP status {}", parts.status.as_u16());
        if !grpc_content_type {
            message.push_str(" without a gRPC content-type");
        }
        if let Some(m) = parts.headers.get(GRPC_MESSAGE) {
            message.push_str(": ");
            message.push_str(&crate::status::percent_decode(m.as_bytes()));
        }
        let _ = to_user
            .send(Event::End(StreamEnd::error(code.as_u32(), message)))
            .await;
        return;
    }
    if body.is_end_stream() {
        // Trailers-Only.
        let _ = to_user.send(Event::End(end_from(&parts.headers))).await;
        return;
    }
    let headers = metadata_from_map(&parts.headers, |name| name == "content-type");
    if to_user.send(Event::Headers(headers)).await.is_err() {
        return;
    }
    let compressed_in = compressed_in_map(&parts.headers);
    match read_messages(&mut body, to_user, &decoder, compressed_in, false).await {
        ReadEnd::Eof => {}
        ReadEnd::Reset | ReadEnd::UserGone => return,
        ReadEnd::Bad(status) => {
            // The stream is reset (CANCEL) when the driver drops it.
            let end = StreamEnd::error(status.code.as_u32(), status.message);
            let _ = to_user.send(Event::End(end)).await;
            return;
        }
    }
    let event = match body.trailers().await {
        Ok(Some(trailers)) => Event::End(end_from(&trailers)),
        Ok(None) => Event::End(StreamEnd::error(
            Code::INTERNAL.as_u32(),
            "server closed the stream without sending trailers",
        )),
        Err(e) => Event::Reset(reset_from(&e)),
    };
    let _ = to_user.send(event).await;
}

/// The end of a stream from its trailers (or Trailers-Only headers).
fn end_from(map: &HeaderMap) -> StreamEnd {
    let status = match map.get(GRPC_STATUS) {
        None => Status::new(Code::UNKNOWN, "grpc-status missing from the trailers"),
        Some(v) => {
            Status::from_header_values(v.as_bytes(), map.get(GRPC_MESSAGE).map(|m| m.as_bytes()))
                .unwrap_or_else(|e| {
                    Status::new(Code::INTERNAL, format!("bad grpc-status {v:?}: {e}"))
                })
        }
    };
    let trailers = metadata_from_map(map, |name| {
        matches!(name, "grpc-status" | "grpc-message" | "content-type")
    });
    StreamEnd {
        error: (!status.is_ok()).then(|| sluice_stream::ErrorStatus {
            code: status.code.as_u32(),
            message: status.message,
        }),
        trailers,
    }
}
