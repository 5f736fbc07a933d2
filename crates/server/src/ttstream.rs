//! The TTStream driver: many streams per connection, each handed to the [`StreamingHandler`].
//!
//! One reader takes frames off the connection and routes them by stream id into each stream's
//! incoming pipe; what a handler sends is encoded into frames in the handler's own task (or, for
//! a forwarded stream, in the other connection's reader) and queued on the connection's writer.
//! Per kitex-wire.md 4.3:
//!
//! * a client Header opens a stream; Data, Trailer (half-close) and Rst follow;
//! * the server's Header is sent lazily, before its first Data or its Trailer;
//! * frames of unknown or finished streams are ignored, late Trailer and Rst frames included;
//! * TTStream has no flow control, so backpressure is ours: a message is handed to a stream's
//!   bounded pipe before the next frame is read, so a handler that does not read stops the
//!   connection's reader (memory stays bounded by the pipe depth times the frame limit).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use sluice_io::QueueTx;
use sluice_stream::{
    Closed, Event, EventSink, Metadata, PipeTx, Protocol, Reset, ResetCode, ServerStream,
    StreamEnd, StreamRequest, StreamingHandler,
};
use sluice_thrift::{ApplicationException, ExceptionKind};
use sluice_ttheader::{str_key, Limits};
use sluice_ttstream::{
    exception_payload, FrameDecoder, FrameType, Side, Step, Stream as StreamState, StreamFrame,
};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::conn::{ConnCtx, ConnIo};
use crate::error::{ErrorKind, ProxyError};
use crate::Drain;

/// TTStream type id for "illegal frame" (kitex-wire.md 4.4).
const ILLEGAL_FRAME: i32 = 12004;

struct Entry {
    side: Arc<Mutex<ServerSide>>,
    to_user: PipeTx,
}

/// One stream's state, shared by the connection's reader (frames received) and the stream's
/// sink (frames sent).
struct ServerSide {
    state: StreamState,
    /// The server's Header went out (once, before the first Data or the Trailer).
    header_sent: bool,
}

impl ServerSide {
    /// Whether the state machine lets this side send `kind` now (and records it).
    fn may_send(&mut self, kind: FrameType) -> bool {
        !matches!(self.state.send(kind), Err(_) | Ok(Step::Ignored))
    }
}

/// A frame as its head (cut from the thread's head arena) and its payload `Bytes`: no
/// allocation, no payload copy. Not encodable: logged and dropped.
pub(crate) fn frame_chunks(f: StreamFrame) -> impl Iterator<Item = Bytes> {
    let payload = f.payload.clone();
    sluice_io::frame_chunks("TTStream frame", f.head_len(), payload, |h| {
        f.encode_head(h)
    })
    .into_iter()
    .flatten()
}

pub(crate) async fn run<C: ConnIo, S: StreamingHandler>(
    stream: C,
    peer: SocketAddr,
    mut buf: BytesMut,
    ctx: ConnCtx,
    handler: Arc<S>,
    drain: Drain,
) {
    let ConnCtx {
        config,
        span,
        stats,
    } = ctx;
    let (mut rd, wr) = stream.split_io();
    let (tx, queue_writer) = sluice_io::out_queue(sluice_io::OUT_QUEUE_LIMIT);
    // Owned here: awaited, then aborted, when the connection ends.
    let mut writer = tokio::spawn(queue_writer.run(wr));
    // Every stream's handler task, owned by the connection: awaited (within the drain grace)
    // and then cancelled when the connection ends, or at once if this future is dropped.
    let handlers = sluice_io::TaskGroup::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<i32>();
    let decoder = FrameDecoder::new(Limits {
        max_frame_size: config.max_frame_size,
        ..Limits::default()
    });
    let mut streams: HashMap<i32, Entry> = HashMap::new();
    let mut draining = false;
    let mut resets = ResetBudget::new();
    // When the bytes now buffered started waiting to become a whole frame.
    let mut partial_since: Option<Instant> = None;
    // Last time a frame arrived: the idle clock.
    let mut last_active = Instant::now();
    // One timer for both clocks, armed lazily: it is moved earlier when a deadline needs it,
    // never later. Progress only pushes deadlines later, so a busy connection re-arms nothing
    // per frame; when the timer fires, the deadlines are checked and it is armed afresh.
    let mut timer = std::pin::pin!(tokio::time::sleep_until(last_active));
    let mut armed: Option<Instant> = None;

    let reason: Option<String> = 'conn: loop {
        let mut progress = false;
        loop {
            let mut frame = match decoder.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    break 'conn Some(format!("malformed TTStream frame: {e}"));
                }
            };
            progress = true;
            let id = frame.stream_id;
            if let Some(entry) = streams.get(&id) {
                let step = entry
                    .side
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .state
                    .recv(frame.kind);
                let event = match step {
                    Ok(Step::Ignored) => None,
                    Ok(_) => match frame.kind {
                        FrameType::Data => Some(Event::Message(frame.payload)),
                        FrameType::Trailer => Some(Event::HalfClose),
                        FrameType::Rst => {
                            if !resets.spend() {
                                stats.reset_floods.fetch_add(1, Ordering::Relaxed);
                                break 'conn Some(format!(
                                    "too many streams reset by the peer (more than {RESET_BURST} at once or {RESETS_PER_SECOND} per second)"
                                ));
                            }
                            let ex = frame.exception().ok().flatten();
                            Some(Event::Reset(Reset {
                                code: ex
                                    .as_ref()
                                    .map_or(ResetCode::Gone, |e| ResetCode::TTStream(e.kind.0)),
                                message: ex.map_or_else(|| "rst".to_owned(), |e| e.message),
                                cancel_path: frame.cancel_path().map(str::to_owned),
                            }))
                        }
                        _ => None,
                    },
                    Err(e) => {
                        tracing::debug!(parent: span.get(), stream = id, error = %e, "frame not allowed in this stream state");
                        let _ = entry
                            .to_user
                            .send(Event::Reset(Reset {
                                code: ResetCode::TTStream(ILLEGAL_FRAME),
                                message: format!("illegal frame: {e}"),
                                cancel_path: None,
                            }))
                            .await;
                        None
                    }
                };
                if let Some(ev) = event {
                    // Awaiting here is the backpressure: a slow handler stops this reader.
                    let _ = entry.to_user.send(ev).await;
                }
                continue;
            }
            if frame.kind != FrameType::Header {
                // Frames of unknown or finished streams are ignored (late Trailer / Rst).
                continue;
            }
            let Ok(mut state) = StreamState::new(Side::Server, id) else {
                continue;
            };
            if state.recv(FrameType::Header).is_err() {
                continue;
            }
            let method = frame.method.clone();
            let refusal = if draining {
                Some(ProxyError::new(
                    ErrorKind::Overloaded,
                    "server is draining; retry on another connection",
                ))
            } else if streams.len() >= config.max_streams_per_conn {
                Some(ProxyError::new(
                    ErrorKind::Overloaded,
                    format!(
                        "too many concurrent streams on this connection (limit {})",
                        config.max_streams_per_conn
                    ),
                ))
            } else {
                None
            };
            if let Some(e) = refusal {
                // The stream reached no handler: the caller may safely retry it elsewhere.
                let e = e.retry_safe(true);
                stats.streams_refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(parent: span.get(), stream = id, reason = %e, "refusing a stream");
                let ex = e.to_exception();
                // Within the queue's limit like any other frame: a peer that opens streams
                // and does not read its refusals stops being read.
                std::future::poll_fn(|cx| tx.poll_ready(cx)).await;
                let mut frames: Vec<Bytes> =
                    frame_chunks(StreamFrame::server_header(id, method.clone())).collect();
                frames.extend(frame_chunks(StreamFrame::trailer_with_exception(
                    id, method, &ex,
                )));
                if tx.push(frames).is_err() {
                    break 'conn None;
                }
                continue;
            }
            let req = StreamRequest {
                peer,
                protocol: Protocol::TTStream,
                service: frame.service().unwrap_or_default().to_owned(),
                method: String::from_utf8_lossy(&method).into_owned(),
                headers: Metadata(frame.take_str_kvs()),
                deadline: None,
                listener: config.listener,
            };
            let side = Arc::new(Mutex::new(ServerSide {
                state,
                header_sent: false,
            }));
            let sink = Arc::new(ServerSink {
                id,
                method,
                side: side.clone(),
                out: tx.clone(),
                done: done_tx.clone(),
            });
            let (server_stream, to_user) = ServerStream::new(sink);
            streams.insert(id, Entry { side, to_user });
            let h = handler.clone();
            // The stream's span (debug level: free unless asked for) inside the connection's.
            let stream_span = tracing::debug_span!(
                parent: span.get(),
                "stream",
                service = %req.service,
                method = %req.method,
                stream = id,
                downstream = tracing::field::Empty,
                trace_id = tracing::field::Empty,
            );
            handlers
                .spawn(async move { h.handle(req, server_stream).await }.instrument(stream_span));
        }
        if draining && streams.is_empty() && buf.is_empty() {
            break None;
        }
        let now = Instant::now();
        if progress {
            last_active = now;
        }
        if buf.is_empty() {
            partial_since = None;
        } else if progress || partial_since.is_none() {
            partial_since = Some(now);
        }
        // The frame timeout while a frame is incomplete; the idle timeout while no stream is
        // open.
        let deadline = match partial_since {
            Some(since) => Some(since + config.frame_timeout),
            None if streams.is_empty() => Some(last_active + config.idle_timeout),
            None => None,
        };
        if deadline.is_some_and(|at| at <= now) {
            if partial_since.is_some() {
                stats.frame_timeouts.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = stats.logs.frame.allow() {
                    tracing::info!(parent: span.get(), bytes = buf.len(), timeout = ?config.frame_timeout, suppressed, "closing connection: a frame did not complete within the frame timeout");
                }
            } else {
                stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(parent: span.get(), "closing idle connection");
            }
            break None;
        }
        if let Some(at) = deadline {
            if armed.is_none_or(|a| a > at) {
                timer.as_mut().reset(at);
                armed = Some(at);
            }
        }
        tokio::select! {
            r = async {
                sluice_io::reserve_read(&mut buf, sluice_io::STREAM_READ_CHUNK);
                rd.read_buf(&mut buf).await
            } => match r {
                Ok(0) => {
                    if !buf.is_empty() {
                        tracing::info!(parent: span.get(), bytes = buf.len(), "peer closed in the middle of a frame");
                    }
                    break None;
                }
                Ok(_) => {}
                Err(e) => break Some(format!("read failed: {e}")),
            },
            Some(id) = done_rx.recv() => {
                streams.remove(&id);
            }
            _ = drain.signaled(), if !draining => draining = true,
            () = &mut timer, if armed.is_some() => armed = None,
        }
    };
    if let Some(r) = reason {
        tracing::warn!(parent: span.get(), reason = %r, "closing connection");
    }
    // Dropping the streams' senders tells every handler the connection is gone.
    streams.clear();
    drop(tx);
    let grace = Instant::now() + config.drain_grace;
    let cancelled = handlers.finish(config.drain_grace).await;
    if cancelled > 0 {
        // Their sinks (and queue senders) went with them, which lets the writer finish.
        tracing::debug!(parent: span.get(),
            cancelled,
            "cancelled stream handlers still running at close"
        );
    }
    if tokio::time::timeout_at(grace, &mut writer).await.is_err() {
        writer.abort();
    }
}

/// Streams a peer may reset in a burst, and per second after it; beyond it the connection is
/// closed. Each reset costs a handler (and, in a proxy, a downstream stream) for next to
/// nothing on the peer's side. The same budget as the HTTP/2 server's rapid-reset guard.
const RESET_BURST: f64 = 1000.0;
const RESETS_PER_SECOND: f64 = 500.0;

/// A token bucket of stream resets.
struct ResetBudget {
    tokens: f64,
    stamp: Instant,
}

impl ResetBudget {
    fn new() -> Self {
        Self {
            tokens: RESET_BURST,
            stamp: Instant::now(),
        }
    }

    /// Spends one reset; false once the budget is exhausted.
    fn spend(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.stamp).as_secs_f64() * RESETS_PER_SECOND;
        self.tokens = (self.tokens + refill).min(RESET_BURST) - 1.0;
        self.stamp = now;
        self.tokens >= 0.0
    }
}

/// The outgoing side of one server stream: encodes the handler's events into frames, keeping
/// the server's side of the stream state, and queues them on the connection's writer.
struct ServerSink {
    id: i32,
    method: Bytes,
    /// Locked for a whole push: events pushed from two tasks at once (the forwarder ending a
    /// stream at its deadline while the other side's reader forwards a message) are encoded
    /// and queued one after the other, never interleaved.
    side: Arc<Mutex<ServerSide>>,
    out: QueueTx,
    /// Tells the reader the stream has ended on this side.
    done: mpsc::UnboundedSender<i32>,
}

impl ServerSink {
    fn header(&self, side: &mut ServerSide, frames: &mut Vec<Bytes>, md: Option<Metadata>) {
        if !side.header_sent && side.may_send(FrameType::Header) {
            let mut f = StreamFrame::server_header(self.id, self.method.clone());
            for (k, v) in md.unwrap_or_default().0 {
                f.header.str_kvs.insert(k, v);
            }
            frames.extend(frame_chunks(f));
        }
        side.header_sent = true;
    }
}

impl EventSink for ServerSink {
    fn push(&self, ev: Event) -> Result<(), Closed> {
        let mut guard = self.side.lock().unwrap_or_else(|e| e.into_inner());
        let side = &mut *guard;
        let ev = match ev {
            // The common case, a message once the Header is out: one Data frame, queued as its
            // head and payload without building a list.
            Event::Message(m) if side.header_sent => {
                let chunks = side
                    .may_send(FrameType::Data)
                    .then(|| {
                        let (id, method, len) = (self.id, &self.method[..], m.len());
                        sluice_io::frame_chunks("TTStream Data frame", 64 + method.len(), m, |h| {
                            sluice_ttstream::encode_data_head(id, method, len, h)
                        })
                    })
                    .flatten();
                let result = match chunks {
                    Some(chunks) => self.out.push(chunks).map_err(|_| Closed),
                    None => Ok(()),
                };
                drop(guard);
                if result.is_err() {
                    let _ = self.done.send(self.id);
                }
                return result;
            }
            ev => ev,
        };
        let mut frames: Vec<Bytes> = Vec::new();
        let finished = match ev {
            Event::Headers(md) => {
                self.header(side, &mut frames, Some(md));
                false
            }
            Event::Message(m) => {
                self.header(side, &mut frames, None);
                if side.may_send(FrameType::Data) {
                    frames.extend(frame_chunks(StreamFrame::data(
                        self.id,
                        self.method.clone(),
                        m,
                    )));
                }
                false
            }
            Event::End(end) => {
                self.header(side, &mut frames, None);
                if side.may_send(FrameType::Trailer) {
                    frames.extend(frame_chunks(trailer(self.id, &self.method, end)));
                }
                true
            }
            Event::Reset(r) => {
                if side.may_send(FrameType::Rst) {
                    let ex =
                        ApplicationException::new(ExceptionKind(r.code.to_ttstream()), r.message);
                    frames.extend(frame_chunks(StreamFrame::rst(
                        self.id,
                        self.method.clone(),
                        Some(&ex),
                        r.cancel_path.as_deref(),
                    )));
                }
                true
            }
            Event::HalfClose => false,
        };
        let result = if frames.is_empty() {
            Ok(())
        } else {
            self.out.push(frames).map_err(|_| Closed)
        };
        drop(guard);
        if finished || result.is_err() {
            let _ = self.done.send(self.id);
        }
        result
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.out.poll_ready(cx)
    }

    fn release(&self) {
        // The handler returned without ending the stream: end it for it. (A stream that has
        // ended refuses the Trailer; nothing is sent then.)
        let e = ProxyError::new(ErrorKind::Internal, "stream handler ended without a status");
        let _ = self.push(Event::End(e.to_stream_end(&Protocol::TTStream)));
    }
}

/// The server Trailer for `end`: trailer keys, and an exception payload for an error.
pub(crate) fn trailer(id: i32, method: &Bytes, end: StreamEnd) -> StreamFrame {
    let mut f = StreamFrame::trailer(id, method.clone());
    for (k, v) in end.trailers.0 {
        if k.as_ref() != str_key::CONN_RESET.as_bytes() {
            f.header.str_kvs.insert(k, v);
        }
    }
    if let Some(err) = end.error {
        // A gRPC status (a handler of the other family) is mapped to its nearest type.
        let ex = ApplicationException::new(ExceptionKind(err.code.to_ttstream()), err.message);
        f.payload = exception_payload(&String::from_utf8_lossy(method), id, &ex);
    }
    f
}
