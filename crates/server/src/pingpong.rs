//! The ping-pong driver: TTHeader, Framed, Buffered, Kitex protobuf and mesh-header requests on
//! one connection.
//!
//! Each message is detected on its own (kitex-wire.md 2.8), its envelope read, and the request
//! handed to the [`DefaultHandler`]. Requests of Kitex mux clients (TTHeader FLAGS `0x0001`) run
//! concurrently as tasks, bounded by `max_in_flight_per_conn`, and are answered as they finish
//! (those clients match replies by seq id). Every other request (plain TTHeader clients, Framed,
//! Buffered) is served inline by the connection task, one at a time and answered in order, as
//! those clients never pipeline. The connection task writes all replies itself, batching the
//! replies of one read into one vectored write.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::Instant as TInstant;
use tracing::Instrument;

use bytes::{BufMut, Bytes, BytesMut};
use sluice_framed::{mesh, BufferedCodec, FramedCodec};
use sluice_sniff::{Codec, Detection, Message, Refusal};
use sluice_thrift::{envelope, kitex_pb, ApplicationException, ExceptionKind, MessageType};
use sluice_ttheader::{encode_head_ref, flags, int_key, str_key, HeadRef, Header, StrKvs};
use std::sync::atomic::Ordering;

use crate::conn::{ConnCtx, ConnIo};
use crate::Chunks;
use crate::{DefaultHandler, Drain, Request, Response, ResponseBody, ServerConfig, Transport};

/// Why a connection is closed. Each names the peer's mistake for the log line.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Refused(Refusal),
    #[error("TTStream frame on a ping-pong connection")]
    StreamFrame,
    #[error("malformed TTHeader: {0}")]
    TTHeader(#[from] sluice_ttheader::Error),
    #[error("malformed message: {0}")]
    Framing(#[from] sluice_framed::Error),
    #[error("malformed envelope: {0}")]
    Envelope(#[from] sluice_thrift::Error),
    #[error("message of at least {0} bytes exceeds the frame limit")]
    TooLarge(usize),
}

/// What the reply to a request needs to know about it.
#[derive(Debug, Clone)]
struct ReplyTo {
    method: String,
    seq_id: i32,
    codec: Codec,
    transport: Transport,
}

enum Incoming {
    Request(Request),
    /// Understood well enough to answer with an exception, then close (as Kitex does after a
    /// decode error).
    Reject(ReplyTo, ApplicationException),
}

/// After a drain starts, a connection is closed once it has been quiet (nothing in flight,
/// nothing read) for this long. A caller that wrote a request just as the drain began (it saw
/// a reply without `crrst` a moment before) gets it answered, with `crrst`, instead of an EOF.
pub(crate) const DRAIN_QUIET: Duration = Duration::from_millis(500);

// A plain fn returning an `async move` block rather than an `async fn`: the arguments are then
// the future's captures, where an `async fn` keeps each argument twice (as argument and as the
// body's local), and every idle connection holds this future.
#[allow(clippy::manual_async_fn)]
pub(crate) fn run<C: ConnIo, H: DefaultHandler>(
    stream: C,
    peer: SocketAddr,
    mut buf: BytesMut,
    ctx: ConnCtx,
    handler: Arc<H>,
    drain: Drain,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let ConnCtx {
            config,
            span,
            stats,
        } = ctx;
        let (mut rd, mut wr) = stream.split_io();
        let max = config.max_in_flight_per_conn.max(1);
        // Requests of Kitex mux clients run as tasks owned by this set; each task's output is
        // its encoded reply, taken by this task with `join_next` and written here. A task
        // counts against the in-flight limit until its reply has been taken, so the set can
        // never hold more than `max` replies, and nothing a handler does waits on this task
        // (a reply is a task's return value, not a send into a queue that could be full).
        // Boxed and created on the first mux request: most connections never need it.
        let mut mux: Option<Box<tokio::task::JoinSet<Option<Chunks>>>> = None;
        let codecs = Codecs::new(config.max_frame_size);
        let mut draining = drain.is_draining();
        // Replies waiting to be written: flushed with one vectored write per batch.
        let mut out: Vec<Bytes> = Vec::new();
        // When the bytes now buffered started waiting to become a whole request: the frame
        // timeout runs from there (reset whenever a request completes).
        let mut partial_since: Option<TInstant> = None;
        // Last time a request arrived or the drain began: the idle and drain-quiet clocks.
        let mut last_active = TInstant::now();
        // One timer for every clock, armed lazily: moved earlier when a deadline needs it, never
        // later. Requests only push deadlines later, so a busy connection re-arms nothing per
        // request; when the timer fires, the deadlines are checked and it is armed afresh.
        let mut timer = std::pin::pin!(tokio::time::sleep_until(last_active));
        let mut armed: Option<TInstant> = None;

        let outcome: Result<(), ConnError> = 'conn: loop {
            let mut progress = false;
            // Serve every whole request already buffered, while the in-flight limit allows
            // (beyond it the bytes wait in `buf` and reading pauses).
            while mux.as_ref().is_none_or(|m| m.len() < max) {
                let incoming = match next_request(&mut buf, &codecs, peer, &config) {
                    Ok(Some(i)) => i,
                    Ok(None) => break,
                    Err(e) => break 'conn Err(e),
                };
                progress = true;
                match incoming {
                    Incoming::Reject(to, ex) => {
                        encode_reply_into(&to, Response::error(ex.clone()), true, &mut out);
                        let _ = sluice_io::write_all_vectored(&mut wr, &mut out).await;
                        tracing::warn!(parent: span.get(), method = %to.method, reason = %ex.message, "closing connection after rejecting a request");
                        break 'conn Ok(());
                    }
                    Incoming::Request(req)
                        if req.transport.is_ttheader()
                            && req.header.flags & flags::SUPPORT_OUT_OF_ORDER != 0 =>
                    {
                        // A Kitex mux client pipelines and matches replies by seq id: serve its
                        // requests concurrently, up to the in-flight limit.
                        let handler = handler.clone();
                        let drain = drain.clone();
                        let span = request_span(&req, &span);
                        mux.get_or_insert_with(Box::default).spawn(
                            async move {
                                let (to, oneway) = reply_to(&req);
                                let resp = handler.handle(req).await;
                                (!oneway).then(|| encode_reply(&to, resp, drain.is_draining()))
                            }
                            .instrument(span),
                        );
                    }
                    Incoming::Request(req) => {
                        // Plain clients have one request in flight (Framed and Buffered callers also
                        // match by order): serve it right here, no task.
                        let (to, oneway) = reply_to(&req);
                        // Boxed so the connection's future stays small while it is idle: the
                        // handler's future (a whole downstream call) exists only per request.
                        let request = request_span(&req, &span);
                        // Instrumented after boxing: wrapping first would copy the whole
                        // handler future once more on its way into the box.
                        let resp = Box::pin(handler.handle(req)).instrument(request).await;
                        if !oneway {
                            encode_reply_into(&to, resp, drain.is_draining(), &mut out);
                        }
                    }
                }
                if out.len() >= sluice_io::MAX_IOV
                    && sluice_io::write_all_vectored(&mut wr, &mut out)
                        .await
                        .is_err()
                {
                    break 'conn Ok(());
                }
            }
            // Replies of mux requests that are already done go out in this batch too.
            if let Some(m) = mux.as_mut() {
                while out.len() < sluice_io::MAX_IOV {
                    match m.try_join_next() {
                        Some(r) => take_reply(r, &span, &mut out),
                        None => break,
                    }
                }
            }
            if !out.is_empty()
                && sluice_io::write_all_vectored(&mut wr, &mut out)
                    .await
                    .is_err()
            {
                break Ok(());
            }

            let in_flight = mux.as_ref().map_or(0, |m| m.len());
            let full = in_flight >= max;
            let now = TInstant::now();
            if progress {
                last_active = now;
            }
            if buf.is_empty() || full {
                // Nothing started, or the bytes wait on us, not on the peer.
                partial_since = None;
            } else if progress || partial_since.is_none() {
                partial_since = Some(now);
            }
            let idle = in_flight == 0 && buf.is_empty();
            // What ends the wait for bytes: the frame timeout while a request is incomplete,
            // the idle timeout (or, draining, the quiet time) while nothing is in flight.
            let deadline = match (partial_since, idle) {
                (Some(since), _) => Some((since + config.frame_timeout, Expiry::Frame)),
                (None, true) if draining => Some((last_active + DRAIN_QUIET, Expiry::Drained)),
                (None, true) => Some((last_active + config.idle_timeout, Expiry::Idle)),
                (None, false) => None,
            };
            if let Some((at, why)) = deadline {
                if at <= now {
                    match why {
                        Expiry::Frame => {
                            stats.frame_timeouts.fetch_add(1, Ordering::Relaxed);
                            if let Some(suppressed) = stats.logs.frame.allow() {
                                tracing::info!(parent: span.get(), bytes = buf.len(), timeout = ?config.frame_timeout, suppressed, "closing connection: a request did not complete within the frame timeout");
                            }
                        }
                        Expiry::Idle => {
                            stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(parent: span.get(), "closing idle connection");
                        }
                        Expiry::Drained => {
                            tracing::debug!(parent: span.get(), "closing drained connection");
                        }
                    }
                    break Ok(());
                }
            }
            // An idle connection keeps no read buffer: wait for readability with none, and only
            // then take one (a few KiB per idle connection matters at tens of thousands of them).
            if buf.is_empty() && buf.capacity() > 0 {
                sluice_io::give_back_read_buf(std::mem::take(&mut buf));
            }
            if let Some((at, _)) = deadline {
                if armed.is_none_or(|a| a > at) {
                    timer.as_mut().reset(at);
                    armed = Some(at);
                }
            }
            let read = tokio::select! {
                // Reading pauses while the in-flight limit is reached (bytes stay in the
                // socket, and the caller's writes stop in turn).
                r = read_some::<C>(&mut rd, &mut buf), if !full => r,
                Some(done) = async {
                    match mux.as_mut() {
                        Some(m) => m.join_next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    take_reply(done, &span, &mut out);
                    continue;
                }
                _ = drain.signaled(), if !draining => {
                    draining = true;
                    last_active = TInstant::now();
                    continue;
                }
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    continue;
                }
            };
            match read {
                Ok(0) => {
                    if !buf.is_empty() {
                        tracing::info!(parent: span.get(), bytes = buf.len(), "peer closed in the middle of a message");
                    }
                    break Ok(());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(parent: span.get(), error = %e, "read failed");
                    break Ok(());
                }
            }
        };
        if let Err(e) = outcome {
            stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(parent: span.get(), reason = %e, "closing connection");
        }
        // Let in-flight handlers finish and write their replies, bounded by the drain grace;
        // then the set is dropped, which aborts whatever still runs.
        if let Some(mut m) = mux.take() {
            let deadline = tokio::time::Instant::now() + config.drain_grace;
            while let Ok(Some(done)) = tokio::time::timeout_at(deadline, m.join_next()).await {
                take_reply(done, &span, &mut out);
                if sluice_io::write_all_vectored(&mut wr, &mut out)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            if !m.is_empty() {
                tracing::debug!(parent: span.get(), left = m.len(), "aborting requests still running at close");
            }
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
    }
}

/// What a wait for bytes gives up on.
#[derive(Debug, Clone, Copy)]
enum Expiry {
    /// A started request did not complete within the frame timeout.
    Frame,
    /// Nothing in flight and nothing read for the idle timeout.
    Idle,
    /// Draining, and quiet for [`DRAIN_QUIET`].
    Drained,
}

/// The span of one request: debug level, so that it costs nothing unless asked for (then every
/// line logged while the request is served names it). `downstream` and `trace_id` are
/// recorded by a forwarding handler.
fn request_span(req: &Request, conn: &crate::conn::ConnSpan) -> tracing::Span {
    if !tracing::level_enabled!(tracing::Level::DEBUG) {
        return tracing::Span::none();
    }
    tracing::debug_span!(
        parent: conn.get(),
        "request",
        service = %req.service,
        method = %req.method,
        seq = req.seq_id,
        downstream = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    )
}

/// Appends a finished mux task's reply (none for oneway) to `out`.
fn take_reply(
    done: Result<Option<Chunks>, tokio::task::JoinError>,
    span: &crate::conn::ConnSpan,
    out: &mut Vec<Bytes>,
) {
    match done {
        Ok(Some(reply)) => out.extend(reply),
        Ok(None) => {}
        Err(e) => {
            tracing::error!(parent: span.get(), error = %e, "request handler failed; its caller gets no reply");
        }
    }
}

/// Size of the read buffer taken when bytes arrive on an idle connection.
const READ_CHUNK: usize = 8 * 1024;

/// Waits for bytes, then reads them into `buf`, taking a read buffer only then where the
/// stream allows it (TCP: see [`ConnIo::poll_read_some`]).
fn read_some<'a, C: ConnIo>(
    rd: &'a mut C::Reader,
    buf: &'a mut BytesMut,
) -> impl std::future::Future<Output = std::io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| C::poll_read_some(rd, buf, READ_CHUNK, cx))
}

fn reply_to(req: &Request) -> (ReplyTo, bool) {
    (
        ReplyTo {
            method: req.method.clone(),
            seq_id: req.seq_id,
            codec: req.codec,
            transport: req.transport,
        },
        req.msg_type == MessageType::Oneway,
    )
}

struct Codecs {
    ttheader: sluice_ttheader::Decoder,
    framed: FramedCodec,
    buffered: BufferedCodec,
    max: usize,
}

impl Codecs {
    fn new(max: usize) -> Self {
        Self {
            ttheader: sluice_ttheader::Decoder::new(sluice_ttheader::Limits {
                max_frame_size: max,
                ..Default::default()
            }),
            framed: FramedCodec::new(max),
            buffered: BufferedCodec::new(max),
            max,
        }
    }
}

/// Takes the next whole request off `buf`, if there is one.
fn next_request(
    buf: &mut BytesMut,
    c: &Codecs,
    peer: SocketAddr,
    config: &ServerConfig,
) -> Result<Option<Incoming>, ConnError> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Refuse an oversized TTHeader frame from its first 8 bytes, before the sniffer (which needs
    // the header to decide the payload shape) waits for more.
    if sluice_ttheader::is_ttheader(buf) {
        c.ttheader.frame_len(buf)?;
    }
    let shape = match sluice_sniff::sniff_message(buf) {
        Err(inc) if inc.needed > c.max => return Err(ConnError::TooLarge(inc.needed)),
        Err(_) => return Ok(None),
        Ok(Detection::NotOurs(r)) => return Err(ConnError::Refused(r)),
        Ok(Detection::Protocol(m)) => m,
    };
    let read_at = Instant::now();
    let (header, message, transport, codec) = match shape {
        Message::TTStream => return Err(ConnError::StreamFrame),
        Message::TTHeader { codec, .. } => {
            let Some(frame) = c.ttheader.decode(buf)? else {
                return Ok(None);
            };
            let transport = if frame.inner_framed {
                Transport::TTHeader
            } else {
                Transport::TTHeaderUnframed
            };
            (frame.header, frame.payload, transport, codec)
        }
        Message::Framed { codec } => {
            let Some(m) = c.framed.decode(buf)? else {
                return Ok(None);
            };
            (Header::default(), m.message, Transport::Framed, codec)
        }
        Message::Buffered => {
            let Some(m) = c.buffered.decode(buf)? else {
                return Ok(None);
            };
            (Header::default(), m, Transport::Buffered, Codec::Thrift)
        }
        Message::Mesh { framed, codec } => {
            // Consume nothing until the mesh header and the message after it are both whole.
            let Some(hl) = mesh::header_len(buf)? else {
                return Ok(None);
            };
            let rest = &buf[hl..];
            let whole = if framed {
                c.framed.frame_len(rest)?.is_some_and(|n| rest.len() >= n)
            } else {
                c.buffered.message_len(rest)?.is_some()
            };
            if !whole {
                return Ok(None);
            }
            let mh = mesh::decode(buf)?.ok_or(sluice_framed::Error::Mesh("vanished"))?;
            let message = if framed {
                c.framed.decode(buf)?.map(|m| m.message)
            } else {
                c.buffered.decode(buf)?
            }
            .ok_or(sluice_framed::Error::Mesh("message vanished"))?;
            let header = Header {
                str_kvs: mh.str_kvs,
                ..Header::default()
            };
            (header, message, Transport::Mesh(framed), codec)
        }
    };
    let env = match codec {
        Codec::Thrift => envelope::decode_header(&message)?,
        Codec::KitexProtobuf => kitex_pb::decode_header(&message)?,
    };
    let method = env.name.to_owned();
    if !env.msg_type.is_request() {
        let to = ReplyTo {
            method,
            seq_id: env.seq_id,
            codec,
            transport,
        };
        let ex = ApplicationException::new(
            ExceptionKind::INVALID_MESSAGE_TYPE,
            format!("message type {} is not a request", env.msg_type.as_str()),
        );
        return Ok(Some(Incoming::Reject(to, ex)));
    }
    let service = header
        .str_kvs
        .get_str(str_key::IDL_SERVICE_NAME)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .or_else(|| config.default_service.clone())
        .unwrap_or_default();
    let deadline = header
        .int_kvs
        .get_str(int_key::RPC_TIMEOUT)
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(|ms| read_at + Duration::from_millis(ms));
    let args = message.slice(env.body_offset..);
    Ok(Some(Incoming::Request(Request {
        peer,
        service,
        method,
        seq_id: env.seq_id,
        msg_type: env.msg_type,
        codec,
        transport,
        header,
        deadline,
        args,
        listener: config.listener,
    })))
}

/// Encodes a reply in the request's own shape and appends it to `out`: the head (framing,
/// header, envelope) as one buffer, then the body as the handler's own `Bytes`.
fn encode_reply_into(to: &ReplyTo, resp: Response, draining: bool, out: &mut Vec<Bytes>) {
    let (msg_type, body) = match resp.body {
        ResponseBody::Reply(b) => (MessageType::Reply, b),
        ResponseBody::RawException(b) => (MessageType::Exception, b),
        ResponseBody::Error(ex) => (MessageType::Exception, render_error(to.codec, &ex)),
    };
    let env_len = envelope::header_len(&to.method);
    let message_len = env_len + body.len();
    let mut str_kvs = resp.str_kvs;
    if draining && to.transport.is_ttheader() {
        str_kvs.insert(str_key::CONN_RESET, Bytes::from_static(b"1"));
    }
    // Cut from the thread's head arena, from a borrowed header: a reply head costs no
    // allocation of its own.
    let hint = 64 + env_len + str_kvs.len() * 32;
    let head = sluice_io::carve_head::<std::convert::Infallible>(hint, |head| {
        match to.transport {
            Transport::TTHeader | Transport::TTHeaderUnframed => {
                let mt: &[u8] = if msg_type == MessageType::Reply {
                    b"2"
                } else {
                    b"3"
                };
                let int_kvs = [(int_key::MSG_TYPE, mt)];
                let framed = to.transport == Transport::TTHeader;
                let mut h = HeadRef {
                    flags: 0,
                    seq_id: to.seq_id,
                    protocol_id: 0,
                    str_kvs: &str_kvs,
                    int_kvs: &int_kvs,
                };
                if let Err(e) = encode_head_ref(&h, framed, message_len, head) {
                    // Only oversized handler-supplied keys can fail here: answer without them.
                    tracing::warn!(error = %e, "reply header not encodable; sending it without its string keys");
                    head.clear();
                    let mut only_reset = StrKvs::new();
                    if draining {
                        only_reset.insert(str_key::CONN_RESET, Bytes::from_static(b"1"));
                    }
                    h.str_kvs = &only_reset;
                    let _ = encode_head_ref(&h, framed, message_len, head);
                }
            }
            Transport::Framed | Transport::Mesh(true) => head.put_u32(message_len as u32),
            Transport::Buffered | Transport::Mesh(false) => {}
        }
        match to.codec {
            Codec::Thrift => envelope::write_header(head, &to.method, msg_type, to.seq_id),
            Codec::KitexProtobuf => kitex_pb::write_header(head, &to.method, msg_type, to.seq_id),
        }
        Ok(())
    })
    .unwrap_or_else(|never| match never {});
    out.push(head);
    out.push(body);
}

fn encode_reply(to: &ReplyTo, resp: Response, draining: bool) -> Chunks {
    let mut out = Vec::with_capacity(2);
    encode_reply_into(to, resp, draining, &mut out);
    out
}

/// An exception body in the request's codec.
fn render_error(codec: Codec, ex: &ApplicationException) -> Bytes {
    let mut b = BytesMut::new();
    match codec {
        Codec::Thrift => ex.encode(&mut b),
        Codec::KitexProtobuf => kitex_pb::ErrorProto {
            type_id: ex.kind.0,
            message: ex.message.clone(),
        }
        .encode(&mut b),
    }
    b.freeze()
}
