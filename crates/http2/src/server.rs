//! The gRPC server driver: serves one HTTP/2 (h2c, prior knowledge) connection and hands every
//! call to a [`StreamingHandler`] as a bidirectional stream of raw messages.
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
//!
//! `grpc-timeout` becomes [`StreamRequest::deadline`]; the driver does not enforce it, the
//! handler does (a forwarding handler passes it on, and the client driver enforces it).
//!
//! The connection's GOAWAY semantics are h2's: [`serve_connection`]'s `shutdown` future starts a
//! graceful shutdown (GOAWAY with the last stream id 2^31-1, then the real one after a ping
//! round trip), streams in flight run to their end, and the function returns once they have.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use sluice_stream::{
    pipe, Event, Metadata, PipeRx, PipeTx, Protocol, ServerStream, StreamEnd, StreamRequest,
    StreamingHandler,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::content_type::GrpcContentType;
use crate::driver::{
    append_metadata, compressed_in_map, compressed_in_metadata, is_connection_specific,
    metadata_from_map, read_messages, send_payload, text_value, Payload, ReadEnd, SendError,
};
use crate::headers::{GRPC_MESSAGE, GRPC_STATUS, GRPC_TIMEOUT};
use crate::message::{MessageDecoder, DEFAULT_MAX_MESSAGE_SIZE};
use crate::path::MethodPath;
use crate::status::{percent_encode, Code, Status};
use crate::timeout::parse_timeout;

/// Settings of the server side of gRPC connections.
#[derive(Debug, Clone)]
pub struct GrpcServerConfig {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams a client may have open at once.
    pub max_concurrent_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE: bytes a client may send on one stream before the handler
    /// has taken them. Also the most one stalled stream holds of the connection window.
    pub initial_stream_window: u32,
    /// Connection-level receive window. Larger than the stream window so that one stream
    /// whose handler is slow does not stop every other stream of the connection.
    pub initial_connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE (Kitex sends 16384, kitex-wire.md 5.1).
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: bound on one request's decoded header list.
    pub max_header_list_size: u32,
    /// Largest gRPC message accepted from a client, prefix not counted; a larger one ends the
    /// stream with grpc-status 8 (RESOURCE_EXHAUSTED).
    pub max_message_size: usize,
    /// How long a new connection may take to send its preface and SETTINGS.
    pub handshake_timeout: Duration,
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
        }
    }
}

/// Why a gRPC connection ended with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcServerError {
    /// The client did not complete the HTTP/2 handshake in time.
    #[error("HTTP/2 handshake with {peer} timed out after {timeout:?}")]
    HandshakeTimeout {
        /// The client.
        peer: SocketAddr,
        /// The configured limit.
        timeout: Duration,
    },
    /// The HTTP/2 handshake failed (bad preface or SETTINGS, or I/O).
    #[error("HTTP/2 handshake with {peer} failed: {source}")]
    Handshake {
        /// The client.
        peer: SocketAddr,
        /// What h2 reported.
        source: h2::Error,
    },
    /// The connection failed after the handshake (protocol error, I/O error).
    #[error("HTTP/2 connection with {peer} failed: {source}")]
    Connection {
        /// The client.
        peer: SocketAddr,
        /// What h2 reported.
        source: h2::Error,
    },
}

/// Serves one gRPC connection until the client closes it, it fails, or `shutdown` resolves and
/// the streams in flight have ended.
///
/// `io` starts with the client preface (a `PrefixedIo` replaying what the sniffer read). Each
/// request becomes a [`StreamRequest`] and a [`ServerStream`] given to `handler.handle` on a
/// task of its own; a second task per stream moves events between h2 and the handler.
///
/// Dropping the returned future closes the connection at once: every stream still running sees
/// a reset. Callers that drain with a deadline do that when the deadline passes.
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
    let mut shutdown = std::pin::pin!(shutdown);
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(config.max_concurrent_streams)
        .initial_window_size(config.initial_stream_window)
        .initial_connection_window_size(config.initial_connection_window)
        .max_frame_size(config.max_frame_size)
        .max_header_list_size(config.max_header_list_size);
    let handshake = tokio::time::timeout(
        config.handshake_timeout,
        builder.handshake::<_, Payload>(sluice_io::GatherWrites::new(io)),
    );
    let mut conn = tokio::select! {
        r = handshake => match r {
            Ok(Ok(conn)) => conn,
            Ok(Err(source)) => return Err(GrpcServerError::Handshake { peer, source }),
            Err(_) => {
                return Err(GrpcServerError::HandshakeTimeout {
                    peer,
                    timeout: config.handshake_timeout,
                })
            }
        },
        () = &mut shutdown => return Ok(()),
    };
    let max_message_size = config.max_message_size;
    let mut shutting_down = false;
    loop {
        tokio::select! {
            accepted = sluice_io::coalesce_wakeups(conn.accept()) => match accepted {
                Some(Ok((req, respond))) => {
                    tokio::spawn(serve_stream(req, respond, peer, handler.clone(), max_message_size));
                }
                Some(Err(source)) => {
                    // A client that closes the socket without GOAWAY is not worth an error.
                    if source.get_io().is_some_and(|e| {
                        matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::BrokenPipe
                                | std::io::ErrorKind::UnexpectedEof
                        )
                    }) {
                        tracing::debug!(%peer, error = %source, "gRPC connection closed by the client");
                        return Ok(());
                    }
                    return Err(GrpcServerError::Connection { peer, source });
                }
                None => return Ok(()),
            },
            () = &mut shutdown, if !shutting_down => {
                shutting_down = true;
                tracing::debug!(%peer, "gRPC connection: graceful shutdown");
                conn.graceful_shutdown();
            }
        }
    }
}

/// A request refused before any handler ran.
struct Refusal {
    http_status: StatusCode,
    status: Status,
}

impl Refusal {
    fn new(http_status: StatusCode, message: String) -> Refusal {
        Refusal {
            http_status,
            status: Status::new(Code::INTERNAL, message),
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
fn check(parts: &http::request::Parts) -> Result<Call, Refusal> {
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| GrpcContentType::parse(v).is_some())
        .ok_or_else(|| {
            let got = parts
                .headers
                .get(CONTENT_TYPE)
                .map_or_else(String::new, |v| {
                    String::from_utf8_lossy(v.as_bytes()).into_owned()
                });
            Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unexpected content-type {got:?}"),
            )
        })?;
    if parts.method != Method::POST {
        return Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("unexpected method {}: gRPC uses POST", parts.method),
        ));
    }
    let path = parts.uri.path_and_query().map_or("", |p| p.as_str());
    let method_path = MethodPath::parse(path).map_err(|_| {
        // Kitex's wording (kitex-wire.md 5.4).
        Refusal::new(
            StatusCode::OK,
            format!("malformed method name, method={path}"),
        )
    })?;
    let deadline = match parts.headers.get(GRPC_TIMEOUT) {
        None => None,
        Some(v) => {
            let d = parse_timeout(v.as_bytes()).map_err(|e| {
                Refusal::new(StatusCode::OK, format!("malformed grpc-timeout: {e}"))
            })?;
            // A timeout too far away to be an `Instant` is no deadline at all.
            Instant::now().checked_add(d)
        }
    };
    Ok(Call {
        path: path.to_owned(),
        content_type: content_type.to_owned(),
        service: method_path.service.to_owned(),
        method: method_path.method.to_owned(),
        deadline,
    })
}

/// Checks one request and, if it is a gRPC call, runs it.
async fn serve_stream<H: StreamingHandler>(
    req: Request<RecvStream>,
    mut respond: SendResponse<Payload>,
    peer: SocketAddr,
    handler: Arc<H>,
    max_message_size: usize,
) {
    let (parts, body) = req.into_parts();
    let call = match check(&parts) {
        Ok(call) => call,
        Err(r) => {
            tracing::debug!(%peer, path = %parts.uri, http_status = %r.http_status, message = %r.status.message, "refusing gRPC request");
            // The request's content-type is mirrored when it is a gRPC one.
            let content_type = parts
                .headers
                .get(CONTENT_TYPE)
                .filter(|v| {
                    v.to_str()
                        .is_ok_and(|v| GrpcContentType::parse(v).is_some())
                })
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("application/grpc"));
            let resp = trailers_only(r.http_status, &content_type, &r.status, &Metadata::new());
            let _ = respond.send_response(resp, true);
            // Dropping `body` and `respond` makes h2 follow up with RST_STREAM(NO_ERROR) if
            // the client is still sending.
            return;
        }
    };
    let reply_content_type = text_value(&call.content_type);
    let compressed_in = compressed_in_map(&parts.headers);
    let request = StreamRequest {
        peer,
        protocol: Protocol::Grpc {
            path: call.path,
            content_type: call.content_type,
            authority: parts
                .uri
                .authority()
                .map_or_else(String::new, |a| a.as_str().to_owned()),
        },
        service: call.service,
        method: call.method,
        headers: metadata_from_map(&parts.headers, |name| {
            // `content-type` travels in `Protocol::Grpc`, `grpc-timeout` as the deadline; the
            // rest is about this hop only.
            matches!(name, "content-type" | "grpc-timeout" | "content-length")
                || is_connection_specific(name.as_bytes())
        }),
        deadline: call.deadline,
    };
    // The handler's events are queued for this stream's task, which waits on h2's flow control.
    let (out_tx, from_user) = pipe(sluice_stream::CHANNEL_DEPTH);
    let (stream, to_user) = ServerStream::new(std::sync::Arc::new(out_tx));
    // The handler runs in this task beside the stream's driver (one task per stream, not two);
    // when the driver is done first, its h2 handles are dropped at once all the same.
    tokio::join!(
        handler.handle(request, stream),
        drive(
            body,
            respond,
            to_user,
            from_user,
            reply_content_type,
            compressed_in,
            MessageDecoder::with_max_message_size(max_message_size),
        )
    );
}

/// A Trailers-Only response: one HEADERS frame with the status fields.
fn trailers_only(
    http_status: StatusCode,
    content_type: &HeaderValue,
    status: &Status,
    trailers: &Metadata,
) -> Response<()> {
    let mut resp = Response::new(());
    *resp.status_mut() = http_status;
    let map = resp.headers_mut();
    map.insert(CONTENT_TYPE, content_type.clone());
    append_status(map, status, trailers);
    resp
}

/// `grpc-status`, `grpc-message` (always, as Kitex sends it), then the other trailers.
fn append_status(map: &mut HeaderMap, status: &Status, trailers: &Metadata) {
    map.append(GRPC_STATUS, text_value(&status.code.to_string()));
    map.append(GRPC_MESSAGE, text_value(&percent_encode(&status.message)));
    append_metadata(map, trailers, |k| {
        k.eq_ignore_ascii_case(GRPC_STATUS.as_bytes())
            || k.eq_ignore_ascii_case(GRPC_MESSAGE.as_bytes())
            || k.eq_ignore_ascii_case(b"content-type")
    });
}

/// How the sending side of a stream ended.
enum Outcome {
    /// The stream ended from this side: trailers or RST_STREAM(CANCEL) were sent.
    Finished,
    /// The client reset the stream or the connection failed.
    Gone,
}

/// Moves one stream's events both ways until the response side is done.
async fn drive(
    body: RecvStream,
    respond: SendResponse<Payload>,
    to_user: PipeTx,
    from_user: PipeRx,
    content_type: HeaderValue,
    compressed_in: bool,
    decoder: MessageDecoder,
) {
    let (abort_tx, abort_rx) = oneshot::channel();
    let mut inbound = std::pin::pin!(inbound(body, to_user, decoder, compressed_in, abort_tx));
    let mut outbound = std::pin::pin!(outbound(respond, from_user, abort_rx, content_type));
    let mut inbound_done = false;
    let outcome = loop {
        tokio::select! {
            outcome = &mut outbound => break outcome,
            () = &mut inbound, if !inbound_done => inbound_done = true,
        }
    };
    if let Outcome::Gone = outcome {
        if !inbound_done {
            // The reset reaches the handler through the receiving side, which sees it too.
            inbound.await;
        }
    }
    // Returning drops the h2 handles. When the trailers went out while the client was still
    // sending, h2 then sends RST_STREAM(NO_ERROR) after them (RFC 9113 8.1), as Kitex does.
}

/// The client-to-handler direction.
async fn inbound(
    mut body: RecvStream,
    to_user: PipeTx,
    decoder: MessageDecoder,
    compressed_in: bool,
    abort: oneshot::Sender<Status>,
) {
    match read_messages(&mut body, &to_user, &decoder, compressed_in, true).await {
        ReadEnd::Eof => {
            let _ = to_user.send(Event::HalfClose).await;
        }
        ReadEnd::Reset | ReadEnd::UserGone => {}
        ReadEnd::Bad(status) => {
            tracing::debug!(message = %status.message, "bad gRPC request stream");
            let message = status.message.clone();
            // The status goes to the sending side first, so that whatever the handler sends
            // after it learns of the failure cannot end the stream with a different status.
            let _ = abort.send(status);
            let _ = to_user
                .send(Event::Reset(sluice_stream::Reset {
                    code: u32::from(Reason::PROTOCOL_ERROR),
                    message,
                    cancel_path: None,
                }))
                .await;
        }
    }
}

/// The sending side of one stream: response HEADERS (sent once), DATA, and the end.
struct Responder {
    respond: SendResponse<Payload>,
    send: Option<SendStream<Payload>>,
    content_type: HeaderValue,
    compress: bool,
}

impl Responder {
    /// Sends the response HEADERS unless they are out already.
    fn start(&mut self, md: &Metadata) -> Result<&mut SendStream<Payload>, h2::Error> {
        if self.send.is_none() {
            let mut resp = Response::new(());
            let map = resp.headers_mut();
            map.insert(CONTENT_TYPE, self.content_type.clone());
            append_metadata(map, md, |k| {
                k.eq_ignore_ascii_case(b"content-type") || k.eq_ignore_ascii_case(b"content-length")
            });
            self.compress = compressed_in_metadata(md);
            self.send = Some(self.respond.send_response(resp, false)?);
        }
        Ok(self.send.as_mut().expect("response started"))
    }

    /// Ends the stream with `end`: trailers, or Trailers-Only if nothing was sent yet.
    fn finish(&mut self, end: &StreamEnd) -> Result<(), h2::Error> {
        let status = match &end.error {
            None => Status::ok(),
            Some(e) => Status::new(Code::new(e.code), e.message.clone()),
        };
        match &mut self.send {
            Some(send) => {
                let mut map = HeaderMap::new();
                append_status(&mut map, &status, &end.trailers);
                send.send_trailers(map)
            }
            None => {
                let resp =
                    trailers_only(StatusCode::OK, &self.content_type, &status, &end.trailers);
                self.respond.send_response(resp, true).map(drop)
            }
        }
    }

    fn reset(&mut self, reason: Reason) {
        match &mut self.send {
            Some(send) => send.send_reset(reason),
            None => self.respond.send_reset(reason),
        }
    }

    /// Gives up on a stream h2 would not take a frame for. Usually the client reset it (then
    /// this sends nothing more); otherwise the reset makes sure the receiving side ends too.
    fn fail(&mut self) -> Outcome {
        self.reset(Reason::INTERNAL_ERROR);
        Outcome::Gone
    }

    /// Ready once the client reset the stream or the connection failed.
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let r = match &mut self.send {
            Some(send) => send.poll_reset(cx),
            None => self.respond.poll_reset(cx),
        };
        r.map(drop)
    }
}

/// The handler-to-client direction.
async fn outbound(
    respond: SendResponse<Payload>,
    mut from_user: PipeRx,
    mut abort: oneshot::Receiver<Status>,
    content_type: HeaderValue,
) -> Outcome {
    let mut r = Responder {
        respond,
        send: None,
        content_type,
        compress: false,
    };
    let mut abort_live = true;
    loop {
        let event = tokio::select! {
            biased;
            status = &mut abort, if abort_live => match status {
                Ok(status) => Event::End(StreamEnd::error(status.code.as_u32(), status.message)),
                Err(_) => {
                    abort_live = false;
                    continue;
                }
            },
            () = poll_fn(|cx| r.poll_gone(cx)) => return Outcome::Gone,
            event = from_user.recv() => event.unwrap_or_else(|| {
                Event::End(StreamEnd::error(
                    Code::INTERNAL.as_u32(),
                    "stream handler ended without a status",
                ))
            }),
        };
        match event {
            Event::Headers(md) => {
                if r.send.is_some() {
                    tracing::debug!("ignoring response headers sent after the first ones");
                } else if r.start(&md).is_err() {
                    return r.fail();
                }
            }
            Event::Message(m) => {
                let compress = r.compress;
                let payload = match Payload::message(m, compress) {
                    Ok(p) => p,
                    Err(e) => {
                        let end = StreamEnd::error(Code::INTERNAL.as_u32(), e.to_string());
                        let _ = r.finish(&end);
                        return Outcome::Finished;
                    }
                };
                let send = match r.start(&Metadata::new()) {
                    Ok(send) => send,
                    Err(_) => return r.fail(),
                };
                match send_payload(send, payload, false).await {
                    Ok(()) => {}
                    Err(SendError::Closed) => return r.fail(),
                    Err(SendError::H2(e)) => {
                        tracing::debug!(error = %e, "sending a gRPC response message failed");
                        return r.fail();
                    }
                }
            }
            Event::End(end) => {
                return match r.finish(&end) {
                    Ok(()) => Outcome::Finished,
                    Err(_) => r.fail(),
                };
            }
            Event::Reset(reset) => {
                tracing::debug!(code = reset.code, message = %reset.message, "handler reset the gRPC stream");
                r.reset(Reason::CANCEL);
                return Outcome::Finished;
            }
            Event::HalfClose => {}
        }
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
