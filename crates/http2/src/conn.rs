//! One HTTP/2 connection carrying gRPC streams, either side: the machinery the server driver
//! and the client share.
//!
//! A connection is one task ([`Connection`]) and a shared state ([`Shared`]) behind one lock.
//!
//! * The task owns the socket. It reads frames, keeps each stream's receiving side (its message
//!   decoder, its receive window, the pipe to its user) without any lock, answers SETTINGS and
//!   PING, applies WINDOW_UPDATE, and writes what is queued.
//! * What a stream sends is encoded by its sink ([`crate::server`], [`crate::client`]) in the
//!   sending task (a handler, or the reader of another connection when a forwarder splices two
//!   streams) straight into the shared output queue, within the peer's flow-control windows;
//!   what the windows do not allow waits in the stream's pending list until WINDOW_UPDATE
//!   opens them. Frame heads are held inline in the queue and payloads as the `Bytes` they
//!   arrived in: no copy, no allocation per message.
//!
//! Backpressure, end to end: a sink is not ready while its stream has data waiting for window
//! or the connection's queue holds [`OUT_LIMIT`] bytes; the task hands a received message to
//! its stream's pipe only while that pipe (or, spliced, the sink it feeds) is ready for more,
//! keeps the rest as undecoded bytes otherwise, and gives the peer new stream window only for
//! bytes it has handed on. A stream that is not read therefore stops its peer after one window
//! and the pipe's depth, without stopping the other streams of the connection (the connection
//! window is given back as data arrives).
//!
//! Lock order: the task never holds the lock while it hands an event to a pipe (a spliced
//! pipe takes the lock of another connection), and sinks never call into another connection
//! while they hold theirs.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use sluice_h2wire::frame::{self, flag, kind, Reason};
use sluice_h2wire::hpack;
use sluice_h2wire::{Frame, FrameDecoder, Settings, DEFAULT_WINDOW, HEAD_LEN, MAX_WINDOW, PREFACE};
use sluice_stream::{Closed, Event, PipeTx, Reset, StreamEnd};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::message::{encode_prefix, MessageDecoder, MessageError, PREFIX_LEN};
use crate::status::{Code, Status};

/// Bytes queued for the socket before sinks stop being ready.
pub(crate) const OUT_LIMIT: usize = 1024 * 1024;

/// How long a closing connection keeps trying to write what is queued (GOAWAY included).
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// Read size: as much as has arrived, up to several DATA frames.
const READ_CHUNK: usize = sluice_io::STREAM_READ_CHUNK;

/// Frames read per poll before the task lets others run.
const READS_PER_POLL: usize = 16;

/// How long a graceful shutdown waits for its PING to come back before the final GOAWAY.
const SHUTDOWN_PING_WAIT: Duration = Duration::from_secs(2);

/// Opaque data of the PING that times a graceful shutdown.
const SHUTDOWN_PING: [u8; 8] = *b"sluice-g";

/// Largest raw header block (HEADERS plus CONTINUATION) accepted, as a multiple of the header
/// list limit: HPACK makes blocks smaller than the lists they carry, never much larger.
const BLOCK_LIMIT_FACTOR: usize = 2;

/// Streams a client may open and reset in a burst, and per second after it. Each costs a
/// handler (and, in a proxy, a downstream stream) for next to nothing on the client's side:
/// beyond this the connection is ended (the "rapid reset" attack, CVE-2023-44487).
const RESET_BURST: f64 = 1000.0;
const RESETS_PER_SECOND: f64 = 500.0;

/// Most frames this side may owe the peer in answer to its own frames (PING and SETTINGS
/// acknowledgements, RST_STREAM and refusals of streams) while they wait to be written. A peer
/// that keeps asking without reading the answers would otherwise grow the queue without bound,
/// now that reading does not wait for writing; past this the connection ends with
/// ENHANCE_YOUR_CALM (as h2 and nghttp2 end PING and SETTINGS floods).
pub(crate) const MAX_PENDING_REPLIES: usize = 1024;

/// Most CONTINUATION frames one header block may take.
const MAX_CONTINUATIONS: usize = 64;

/// Stream ids hash to themselves: they are small, distinct and never adversarial as keys of a
/// map that only holds streams this connection accepted.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        // Multiplicative spreading keeps consecutive odd ids apart in the table.
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(crate) type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Server,
}

/// One side's settings and limits.
#[derive(Debug, Clone)]
pub(crate) struct ConnConfig {
    pub(crate) side: Side,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised (server; the client advertises none).
    pub(crate) max_concurrent_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE advertised (at least 65535).
    pub(crate) initial_stream_window: u32,
    /// Connection receive window (at least 65535).
    pub(crate) initial_connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE advertised.
    pub(crate) max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE advertised and enforced.
    pub(crate) max_header_list_size: u32,
    /// Largest gRPC message accepted.
    pub(crate) max_message_size: usize,
    /// The peer's preface (server side) and SETTINGS must arrive within this.
    pub(crate) handshake_timeout: Duration,
    /// Server: a connection without streams that receives nothing for this long is closed
    /// with GOAWAY(NO_ERROR). `None`: never.
    pub(crate) idle_timeout: Option<Duration>,
    /// Server: counters of what happened to streams and connections.
    pub(crate) stats: Option<Arc<crate::server::GrpcServerStats>>,
}

impl ConnConfig {
    fn stream_window(&self) -> u32 {
        self.initial_stream_window.clamp(DEFAULT_WINDOW, MAX_WINDOW)
    }

    fn connection_window(&self) -> u32 {
        self.initial_connection_window
            .clamp(DEFAULT_WINDOW, MAX_WINDOW)
    }

    /// The SETTINGS frame this side opens with.
    fn settings(&self) -> Settings {
        let mut s = Settings {
            initial_window_size: Some(self.stream_window()),
            max_header_list_size: Some(self.max_header_list_size),
            ..Settings::default()
        };
        if self.max_frame_size != frame::DEFAULT_MAX_FRAME_SIZE {
            s.max_frame_size = Some(self.max_frame_size);
        }
        match self.side {
            Side::Server => s.max_concurrent_streams = Some(self.max_concurrent_streams),
            // "Clients MUST NOT send a PUSH_PROMISE" is the server's rule; this client also
            // says it accepts none.
            Side::Client => s.enable_push = Some(false),
        }
        s
    }
}

/// Why a connection ended with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Http2Error {
    /// Reading or writing the socket failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol; a GOAWAY with `reason` was sent.
    #[error("{reason}: {what}")]
    Protocol {
        /// The error code sent.
        reason: Reason,
        /// What was wrong.
        what: String,
    },
    /// The peer did not send its preface (a client) or its SETTINGS in time.
    #[error("no HTTP/2 preface and SETTINGS from the peer in time")]
    HandshakeTimeout,
    /// The peer ended the connection with an error code.
    #[error("peer sent GOAWAY {reason}: {debug}")]
    GoAway {
        /// The code it sent.
        reason: Reason,
        /// Its debug data, as text.
        debug: String,
    },
}

impl Http2Error {
    fn protocol(reason: Reason, what: impl Into<String>) -> Http2Error {
        Http2Error::Protocol {
            reason,
            what: what.into(),
        }
    }
}

// === output queue ===

/// Inline room of a queued chunk: a DATA head with a gRPC prefix (14 bytes), or a whole
/// control frame (PING is the longest, 17).
const INLINE: usize = 24;

/// One piece of queued output.
pub(crate) enum Chunk {
    Inline { buf: [u8; INLINE], len: u8 },
    Shared(Bytes),
}

impl Chunk {
    fn inline(bytes: &[u8]) -> Chunk {
        let mut buf = [0u8; INLINE];
        buf[..bytes.len()].copy_from_slice(bytes);
        Chunk::Inline {
            buf,
            len: bytes.len() as u8,
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Inline { buf, len } => &buf[..usize::from(*len)],
            Chunk::Shared(b) => b,
        }
    }
}

// === shared state ===

/// What waits in a stream's pending list for flow-control window.
pub(crate) enum Pending {
    /// (The rest of) a message: `prefix[from..]`, then `body`.
    Data {
        prefix: [u8; PREFIX_LEN],
        from: u8,
        body: Bytes,
        end: bool,
    },
    /// A header block (trailers) to send once the data in front of it is out.
    Block { block: Bytes, end: bool },
    /// RST_STREAM after what is in front of it (a server's NO_ERROR after trailers).
    Rst(Reason),
}

/// The sending side of one stream.
pub(crate) struct SendStream {
    /// Peer's window for this stream (may go negative after a SETTINGS change).
    window: i64,
    pending: VecDeque<Pending>,
    /// Tasks waiting for room or for the stream to go.
    wakers: Vec<Waker>,
    /// Queued in [`State::blocked`] (waiting for the connection window).
    in_blocked: bool,
    /// This side has ended the stream (END_STREAM or RST_STREAM queued): nothing more goes out.
    pub(crate) done: bool,
    /// The peer reset the stream, or the connection ended: pushes fail.
    pub(crate) gone: bool,
    /// The peer ended its side (END_STREAM received).
    pub(crate) remote_ended: bool,
    /// Where this stream's last queued DATA head sits, while it may still take END_STREAM:
    /// (epoch, index into `State::out`).
    last_data: Option<(u64, usize)>,
    /// Response or request headers are out.
    pub(crate) headers_sent: bool,
    /// Messages this side sends carry the compressed flag (`grpc-encoding` was sent).
    pub(crate) compress: bool,
    /// Server: the response `content-type` (the request's).
    pub(crate) content_type: Bytes,
}

/// A stream a client opened, handed to the connection task.
pub(crate) struct Opened {
    pub(crate) id: u32,
    pub(crate) to_user: PipeTx,
    pub(crate) deadline: Option<Instant>,
}

/// Everything sinks and the task share.
pub(crate) struct State {
    out: Vec<Chunk>,
    /// Bytes in `out` and in the task's write under way.
    queued: usize,
    /// Frames in `out` that answer the peer's own frames (see [`MAX_PENDING_REPLIES`]).
    replies: usize,
    /// Bumped each time the task takes `out`.
    epoch: u64,
    task: Option<Waker>,
    room: Vec<Waker>,
    /// The connection is gone: nothing more is accepted.
    pub(crate) closed: bool,
    /// GOAWAY sent or received: no new streams on this connection.
    pub(crate) going_away: bool,
    conn_window: i64,
    peer_initial_window: i64,
    peer_max_frame: usize,
    peer_max_streams: usize,
    pub(crate) streams: IdMap<SendStream>,
    blocked: VecDeque<u32>,
    pub(crate) encoder: hpack::Encoder,
    /// Streams whose sending side ended: the task drops their receiving side.
    finished: Vec<u32>,
    /// Streams whose user dropped every sending handle without ending them (client).
    released: Vec<u32>,
    /// New client streams for the task.
    opened: Vec<Opened>,
    /// A graceful shutdown was asked for.
    shutdown: bool,
    /// Client: the next stream id.
    next_id: u32,
    /// Client: opens waiting for the peer's stream limit.
    open_waiters: Vec<Waker>,
    /// Client: handles on the connection other than its streams.
    handles: usize,
    side: Side,
}

/// The shared half of a connection.
pub(crate) struct Shared {
    state: Mutex<State>,
}

/// Wakes what is collected, after the lock is released; drops streams' pipes then too (a
/// dropped pipe may tell a spliced sink on another connection, which takes that one's lock).
#[derive(Default)]
pub(crate) struct Wakes(Vec<Waker>, Vec<Opened>);

impl Wakes {
    fn extend(&mut self, w: impl IntoIterator<Item = Waker>) {
        self.0.extend(w);
    }
    fn push(&mut self, w: Option<Waker>) {
        self.0.extend(w);
    }
}

impl Drop for Wakes {
    #[inline]
    fn drop(&mut self) {
        // Most are dropped empty (a push that woke nobody): nothing to walk then.
        if !self.0.is_empty() {
            for w in self.0.drain(..) {
                w.wake();
            }
        }
        if !self.1.is_empty() {
            self.1.clear();
        }
    }
}

fn register(list: &mut Vec<Waker>, cx: &Context<'_>) {
    if !list.iter().any(|w| w.will_wake(cx.waker())) {
        list.push(cx.waker().clone());
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ready when stream `id` may take another event: nothing of it waits for window and the
    /// queue is below its limit (or the stream or connection is gone: pushing then fails).
    pub(crate) fn poll_ready(&self, id: u32, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.lock();
        if st.closed {
            return Poll::Ready(());
        }
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(());
        };
        if s.gone || s.done {
            return Poll::Ready(());
        }
        if !s.pending.is_empty() {
            register(&mut s.wakers, cx);
            return Poll::Pending;
        }
        if st.queued >= OUT_LIMIT {
            register(&mut st.room, cx);
            return Poll::Pending;
        }
        Poll::Ready(())
    }

    /// Ready once stream `id` is gone (reset by the peer, ended and flushed, or the
    /// connection closed).
    pub(crate) fn poll_closed(&self, id: u32, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.lock();
        if st.closed {
            return Poll::Ready(());
        }
        match st.streams.get_mut(&id) {
            Some(s) if !s.gone => {
                register(&mut s.wakers, cx);
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }

    /// Locks the state for an event a sink pushes on stream `id`: `Err(Closed)` if the stream
    /// or the connection is gone, `Ok(None)` if this side has ended the stream already (the
    /// event is dropped), otherwise the locked state.
    pub(crate) fn lock_for_push(&self, id: u32) -> Result<Option<MutexGuard<'_, State>>, Closed> {
        let st = self.lock();
        if st.closed {
            return Err(Closed);
        }
        match st.streams.get(&id) {
            None => Err(Closed),
            Some(s) if s.gone => Err(Closed),
            Some(s) if s.done => Ok(None),
            Some(_) => Ok(Some(st)),
        }
    }

    /// A client handle on the connection went away.
    pub(crate) fn drop_handle(&self) {
        let mut st = self.lock();
        st.handles -= 1;
        unlock_and_wake(st);
    }
}

impl State {
    fn new(side: Side) -> State {
        State {
            out: Vec::new(),
            queued: 0,
            replies: 0,
            epoch: 0,
            task: None,
            room: Vec::new(),
            closed: false,
            going_away: false,
            conn_window: i64::from(DEFAULT_WINDOW),
            peer_initial_window: i64::from(DEFAULT_WINDOW),
            peer_max_frame: frame::DEFAULT_MAX_FRAME_SIZE as usize,
            peer_max_streams: usize::MAX,
            streams: IdMap::default(),
            blocked: VecDeque::new(),
            encoder: hpack::Encoder::new(),
            finished: Vec::new(),
            released: Vec::new(),
            opened: Vec::new(),
            shutdown: false,
            next_id: match side {
                Side::Client => 1,
                Side::Server => 2,
            },
            open_waiters: Vec::new(),
            handles: 0,
            side,
        }
    }

    /// The task's waker, to be woken once the lock is released.
    fn wake_task(&mut self) -> Option<Waker> {
        self.task.take()
    }

    fn push_inline(&mut self, bytes: &[u8]) {
        self.queued += bytes.len();
        self.out.push(Chunk::inline(bytes));
    }

    /// Queues a frame that answers one of the peer's (an acknowledgement, a refusal).
    fn push_reply(&mut self, bytes: &[u8]) {
        self.replies += 1;
        self.push_inline(bytes);
    }

    fn push_bytes(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        self.queued += b.len();
        self.out.push(Chunk::Shared(b));
    }

    /// A new sending side for stream `id`.
    pub(crate) fn add_stream(&mut self, id: u32, content_type: Bytes) {
        self.streams.insert(
            id,
            SendStream {
                window: self.peer_initial_window,
                pending: VecDeque::new(),
                wakers: Vec::new(),
                in_blocked: false,
                done: false,
                gone: false,
                remote_ended: false,
                last_data: None,
                headers_sent: false,
                compress: false,
                content_type,
            },
        );
    }

    /// Queues a header block as HEADERS (and CONTINUATION frames if the peer's frame size
    /// requires), the block itself never copied.
    pub(crate) fn queue_block(&mut self, id: u32, block: Bytes, end_stream: bool) {
        let max = self.peer_max_frame;
        let mut rest = block;
        let mut first = true;
        loop {
            let n = rest.len().min(max);
            let piece = rest.split_to(n);
            let mut flags = 0;
            if rest.is_empty() {
                flags |= flag::END_HEADERS;
            }
            let kind = if first {
                if end_stream {
                    flags |= flag::END_STREAM;
                }
                kind::HEADERS
            } else {
                kind::CONTINUATION
            };
            self.push_inline(&frame::Head::encode(n, kind, flags, id));
            self.push_bytes(piece);
            first = false;
            if rest.is_empty() {
                break;
            }
        }
        if let Some(s) = self.streams.get_mut(&id) {
            s.last_data = None;
        }
    }

    /// Queues a header block behind the stream's pending data, or now if none waits.
    pub(crate) fn send_block(&mut self, id: u32, block: Bytes, end_stream: bool) {
        match self.streams.get_mut(&id) {
            Some(s) if !s.pending.is_empty() => s.pending.push_back(Pending::Block {
                block,
                end: end_stream,
            }),
            _ => self.queue_block(id, block, end_stream),
        }
    }

    /// Queues RST_STREAM behind the stream's pending frames (or now).
    pub(crate) fn send_rst_after(&mut self, id: u32, reason: Reason) {
        match self.streams.get_mut(&id) {
            Some(s) if !s.pending.is_empty() => s.pending.push_back(Pending::Rst(reason)),
            _ => self.push_inline(&frame::rst_stream(id, reason)),
        }
    }

    /// Drops what the stream has pending and queues RST_STREAM now.
    pub(crate) fn reset_now(&mut self, id: u32, reason: Reason) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.pending.clear();
            s.done = true;
        }
        self.push_inline(&frame::rst_stream(id, reason));
    }

    /// Sends one gRPC message (its prefix, with the compressed flag the stream's headers
    /// announced, then `body`) as DATA, as far as the windows allow; the rest waits in the
    /// stream's pending list. Fails, sending nothing, for a message too long for the prefix.
    pub(crate) fn send_message(&mut self, id: u32, body: Bytes) -> Result<(), MessageError> {
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        let item = Pending::Data {
            prefix: encode_prefix(body.len(), s.compress)?,
            from: 0,
            body,
            end: false,
        };
        if !s.pending.is_empty() {
            s.pending.push_back(item);
            return Ok(());
        }
        if let Some(rest) = self.emit_data(id, item) {
            if let Some(s) = self.streams.get_mut(&id) {
                s.pending.push_back(rest);
            }
        }
        Ok(())
    }

    /// Ends the sending side with END_STREAM: on the stream's last DATA frame if it is still
    /// queued (a unary request is then one DATA frame, as Kitex sends it), on the last pending
    /// message, or as an empty DATA frame.
    pub(crate) fn send_end_stream(&mut self, id: u32) {
        let epoch = self.epoch;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.done = true;
        if let Some(Pending::Data { end, .. }) = s.pending.back_mut() {
            *end = true;
            return;
        }
        if !s.pending.is_empty() {
            // Behind a header block or a reset: an empty frame of its own.
            s.pending.push_back(Pending::Data {
                prefix: [0; PREFIX_LEN],
                from: PREFIX_LEN as u8,
                body: Bytes::new(),
                end: true,
            });
            return;
        }
        if let Some((e, index)) = s.last_data.take() {
            if e == epoch {
                if let Some(Chunk::Inline { buf, .. }) = self.out.get_mut(index) {
                    buf[4] |= flag::END_STREAM;
                    return;
                }
            }
        }
        self.push_inline(&frame::Head::encode(0, kind::DATA, flag::END_STREAM, id));
    }

    /// Emits DATA frames for `item` while the windows allow; returns what is left.
    fn emit_data(&mut self, id: u32, item: Pending) -> Option<Pending> {
        let Pending::Data {
            prefix,
            mut from,
            mut body,
            end,
        } = item
        else {
            return Some(item);
        };
        let max_frame = self.peer_max_frame;
        loop {
            let prefix_left = PREFIX_LEN - usize::from(from);
            let total = prefix_left + body.len();
            let s = self.streams.get_mut(&id)?;
            if total == 0 {
                // Only ever a lone END_STREAM: no window needed.
                if end {
                    s.last_data = None;
                    self.push_inline(&frame::Head::encode(0, kind::DATA, flag::END_STREAM, id));
                }
                return None;
            }
            let allowed = s.window.min(self.conn_window).max(0) as usize;
            let n = total.min(max_frame).min(allowed);
            if n == 0 {
                if self.conn_window <= 0 && s.window > 0 && !s.in_blocked {
                    s.in_blocked = true;
                    self.blocked.push_back(id);
                }
                return Some(Pending::Data {
                    prefix,
                    from,
                    body,
                    end,
                });
            }
            s.window -= n as i64;
            self.conn_window -= n as i64;
            let last = n == total;
            let flags = if last && end { flag::END_STREAM } else { 0 };
            let from_prefix = n.min(prefix_left);
            let mut head = [0u8; HEAD_LEN + PREFIX_LEN];
            head[..HEAD_LEN].copy_from_slice(&frame::Head::encode(n, kind::DATA, flags, id));
            let start = usize::from(from);
            head[HEAD_LEN..HEAD_LEN + from_prefix]
                .copy_from_slice(&prefix[start..start + from_prefix]);
            from += from_prefix as u8;
            let index = self.out.len();
            self.push_inline(&head[..HEAD_LEN + from_prefix]);
            let piece = body.split_to(n - from_prefix);
            self.push_bytes(piece);
            let epoch = self.epoch;
            if let Some(s) = self.streams.get_mut(&id) {
                s.last_data = (flags == 0).then_some((epoch, index));
            }
            if last {
                return None;
            }
        }
    }

    /// Sends what stream `id` has pending, as far as the windows allow, and wakes its waiters
    /// once nothing is left.
    fn flush_stream(&mut self, id: u32, wakes: &mut Wakes) {
        loop {
            let Some(s) = self.streams.get_mut(&id) else {
                return;
            };
            let Some(item) = s.pending.pop_front() else {
                break;
            };
            match item {
                Pending::Data { .. } => {
                    if let Some(rest) = self.emit_data(id, item) {
                        if let Some(s) = self.streams.get_mut(&id) {
                            s.pending.push_front(rest);
                        }
                        return;
                    }
                }
                Pending::Block { block, end } => self.queue_block(id, block, end),
                Pending::Rst(reason) => self.push_inline(&frame::rst_stream(id, reason)),
            }
        }
        if let Some(s) = self.streams.get_mut(&id) {
            wakes.extend(s.wakers.drain(..));
        }
        self.forget_if_finished(id, wakes);
    }

    /// Removes a stream that is over and flushed: on a server once its response has ended
    /// (what the client still sends is dropped), on a client once the response has ended
    /// (until then a half-closed stream may still have to be reset). Its receiving side is
    /// the task's, which removes it on its own terms.
    /// Its waiters are woken through `wakes`, once the caller has released the lock.
    pub(crate) fn forget_if_finished(&mut self, id: u32, wakes: &mut Wakes) {
        let side = self.side;
        if self.streams.get(&id).is_some_and(|s| {
            s.pending.is_empty()
                && match side {
                    Side::Server => s.done || s.gone,
                    Side::Client => s.gone,
                }
        }) {
            if let Some(s) = self.streams.remove(&id) {
                wakes.extend(s.wakers);
            }
            wakes.extend(self.open_waiters.drain(..));
        }
    }

    /// Streams waiting for the connection window get it, in turn.
    fn flush_blocked(&mut self, wakes: &mut Wakes) {
        let mut rounds = self.blocked.len();
        while rounds > 0 && self.conn_window > 0 {
            rounds -= 1;
            let Some(id) = self.blocked.pop_front() else {
                break;
            };
            if let Some(s) = self.streams.get_mut(&id) {
                s.in_blocked = false;
            }
            self.flush_stream(id, wakes);
        }
    }

    /// Stream `id`'s sending side ended: the task drops its receiving side.
    pub(crate) fn finish(&mut self, id: u32) {
        self.finished.push(id);
    }

    /// The connection is gone: every stream fails, every waiter wakes.
    fn close_all(&mut self, wakes: &mut Wakes) {
        self.closed = true;
        self.going_away = true;
        for (_, s) in self.streams.drain() {
            wakes.extend(s.wakers);
        }
        self.blocked.clear();
        self.out.clear();
        wakes.extend(self.room.drain(..));
        wakes.extend(self.open_waiters.drain(..));
        wakes.push(self.task.take());
        // Streams the task never took in: their users hear that the connection is gone.
        wakes.1.append(&mut self.opened);
    }

    /// Client: the next stream id, if this connection may open another stream now.
    pub(crate) fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<Option<u32>> {
        if self.closed || self.going_away || self.next_id > MAX_WINDOW {
            return Poll::Ready(None);
        }
        if self.streams.len() >= self.peer_max_streams {
            register(&mut self.open_waiters, cx);
            return Poll::Pending;
        }
        let id = self.next_id;
        self.next_id += 2;
        Poll::Ready(Some(id))
    }

    /// Client: hands a new stream's receiving side to the task.
    pub(crate) fn opened(&mut self, o: Opened) {
        self.opened.push(o);
    }

    /// Client: the user dropped every sending handle of stream `id`.
    pub(crate) fn released(&mut self, id: u32) {
        self.released.push(id);
    }
}

/// Releases the lock, then wakes the connection task to write what was queued under it.
pub(crate) fn unlock_and_wake(mut st: MutexGuard<'_, State>) {
    let w = st.wake_task();
    drop(st);
    if let Some(w) = w {
        w.wake();
    }
}

// === the connection task ===

/// A stream's receiving side, kept by the task.
struct Recv {
    to_user: PipeTx,
    /// Bytes of a message split across DATA frames.
    partial: BytesMut,
    /// What the peer may still send on this stream.
    window: i64,
    /// Bytes taken by the user and not yet announced in WINDOW_UPDATE.
    unacked: u32,
    /// Bytes received whose window waits until they are decoded and handed on.
    uncredited: u32,
    /// Decoding stopped because the user was not ready: `held` and `partial` wait, and the
    /// stream is in `Connection::withheld`.
    paused: bool,
    /// A message decoded before the user fell behind; it goes first.
    held: Option<Bytes>,
    /// How the peer ended its side, to be told once every message before it is out.
    ending: Option<Ending>,
    /// Server: the handler stopped reading; what arrives is decoded and dropped.
    user_gone: bool,
    /// END_STREAM received.
    remote_ended: bool,
    /// Messages may carry the compressed flag (`grpc-encoding` set).
    compressed_ok: bool,
    /// Client: where the response is.
    response: ResponseState,
    deadline: Option<Instant>,
}

impl Recv {
    fn new(
        to_user: PipeTx,
        window: u32,
        compressed_ok: bool,
        response: ResponseState,
        deadline: Option<Instant>,
    ) -> Recv {
        Recv {
            to_user,
            partial: BytesMut::new(),
            window: i64::from(window),
            unacked: 0,
            uncredited: 0,
            paused: false,
            held: None,
            ending: None,
            user_gone: false,
            remote_ended: false,
            compressed_ok,
            response,
            deadline,
        }
    }
}

/// The end of a stream's incoming side, waiting for the messages in front of it.
enum Ending {
    /// Server: the client half-closed.
    HalfClose,
    /// Client: the response's trailers.
    Trailers(StreamEnd),
    /// Client: END_STREAM on DATA, without trailers.
    NoTrailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseState {
    /// Waiting for the response HEADERS (client), or a server's request side.
    Head,
    /// Headers in; messages and trailers follow.
    Body,
}

/// A header block being put together from HEADERS and CONTINUATION frames.
struct PartialBlock {
    stream: u32,
    /// CONTINUATION frames so far.
    frames: usize,
    end_stream: bool,
    self_dependent: bool,
    block: BytesMut,
}

/// Whether a field list holds a pseudo-header.
fn has_pseudo(fields: &[(Bytes, Bytes)]) -> bool {
    fields.iter().any(|(n, _)| n.first() == Some(&b':'))
}

/// A complete, decoded header block.
pub(crate) struct HeaderBlock {
    pub(crate) stream: u32,
    pub(crate) end_stream: bool,
    pub(crate) fields: Vec<(Bytes, Bytes)>,
    /// The list was larger than the limit: `fields` holds only its start.
    pub(crate) too_large: bool,
}

/// What the side-specific part decides about a header block.
pub(crate) enum Opening {
    /// A new stream: its receiving side, and whether the peer already ended its side.
    Accept {
        to_user: PipeTx,
        compressed_ok: bool,
        end_stream: bool,
    },
    /// Answered or refused already: nothing to keep.
    Done,
}

/// Server hooks: what to do with a request's header block.
pub(crate) type OnRequest = Box<dyn FnMut(&Arc<Shared>, HeaderBlock) -> Opening + Send + 'static>;

enum Role {
    Server {
        on_request: OnRequest,
        /// Highest stream id the peer opened.
        last_stream: u32,
        /// Graceful shutdown: the first GOAWAY (and its PING) went out.
        goaway_sent: bool,
        /// The final GOAWAY went out with this last stream id.
        final_goaway: Option<u32>,
        /// Streams the client may still reset before the connection is ended, and when the
        /// budget was last topped up.
        reset_budget: f64,
        reset_stamp: Instant,
    },
    Client,
}

/// How a closing connection will end, and until when it tries to write what is queued.
type Closing = (Result<(), Http2Error>, Pin<Box<tokio::time::Sleep>>);

/// The socket's side of one connection.
pub(crate) struct Connection<T> {
    io: T,
    peer: SocketAddr,
    shared: Arc<Shared>,
    cfg: ConnConfig,
    role: Role,
    buf: BytesMut,
    frames: FrameDecoder,
    hpack: hpack::Decoder,
    streams: IdMap<Recv>,
    withheld: Vec<u32>,
    recv_conn_window: i64,
    conn_unacked: u32,
    partial_block: Option<PartialBlock>,
    /// The preface has been read (server).
    preface_read: bool,
    /// The peer's first SETTINGS arrived.
    settings_received: bool,
    handshake_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Output taken from the queue and not yet written.
    writing: Vec<Chunk>,
    /// Written part of `writing`: whole chunks, then bytes of the next.
    wpos: usize,
    woff: usize,
    writing_bytes: usize,
    /// Frames in `writing` that answer the peer's (see [`MAX_PENDING_REPLIES`]).
    writing_replies: usize,
    /// A stream was refused or reset since the pending answers were last checked.
    refused: bool,
    /// Reading stopped (EOF, or closing).
    read_done: bool,
    /// The peer closed its side (EOF or reset).
    peer_closed: bool,
    /// Closing: everything queued is written and the write side shut down.
    flushed: bool,
    /// The connection is closing: write what is queued, then end with this.
    closing: Option<Closing>,
    /// When the last read brought bytes, and the idle timer (server, with an idle timeout).
    last_read: tokio::time::Instant,
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Server: how long the shutdown PING may take before the final GOAWAY goes anyway.
    shutdown_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Client: the earliest deadline of a stream, and a timer set to it.
    next_deadline: Option<Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A new stream brought the earliest deadline forward.
    rearm: bool,
}

impl<T> Drop for Connection<T> {
    fn drop(&mut self) {
        // Dropped before it ended (a drain deadline passed): every stream fails now instead of
        // waiting on a connection nobody drives.
        let mut wakes = Wakes::default();
        self.shared.lock().close_all(&mut wakes);
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Connection<T> {
    fn new(io: T, peer: SocketAddr, cfg: ConnConfig, role: Role) -> (Connection<T>, Arc<Shared>) {
        let mut state = State::new(cfg.side);
        if cfg.side == Side::Client {
            state.push_bytes(Bytes::from_static(PREFACE));
        }
        let mut settings = Vec::with_capacity(64);
        cfg.settings().encode(&mut settings);
        let extra = cfg.connection_window() - DEFAULT_WINDOW;
        if extra > 0 {
            settings.extend_from_slice(&frame::window_update(0, extra));
        }
        state.push_bytes(Bytes::from(settings));
        if cfg.side == Side::Client {
            state.handles = 1;
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
        });
        // Both sides: a peer that does not open with SETTINGS in time is not speaking HTTP/2
        // (or is stuck), and streams waiting on it must not wait forever.
        let handshake_deadline = Some(Box::pin(tokio::time::sleep(cfg.handshake_timeout)));
        let idle_timer = cfg
            .idle_timeout
            .filter(|_| cfg.side == Side::Server)
            .map(|t| Box::pin(tokio::time::sleep(t)));
        let conn = Connection {
            io,
            peer,
            shared: shared.clone(),
            frames: FrameDecoder::new(cfg.max_frame_size),
            hpack: hpack::Decoder::new(hpack::DEFAULT_TABLE_SIZE),
            recv_conn_window: i64::from(cfg.connection_window()),
            preface_read: cfg.side == Side::Client,
            cfg,
            role,
            buf: BytesMut::new(),
            streams: IdMap::default(),
            withheld: Vec::new(),
            conn_unacked: 0,
            partial_block: None,
            settings_received: false,
            handshake_deadline,
            writing: Vec::new(),
            wpos: 0,
            woff: 0,
            writing_bytes: 0,
            writing_replies: 0,
            refused: false,
            read_done: false,
            peer_closed: false,
            flushed: false,
            closing: None,
            last_read: tokio::time::Instant::now(),
            idle_timer,
            shutdown_timer: None,
            next_deadline: None,
            timer: None,
            rearm: false,
        };
        (conn, shared)
    }

    /// The server side of a connection; `on_request` sees every request's header block.
    pub(crate) fn server(
        io: T,
        peer: SocketAddr,
        cfg: ConnConfig,
        on_request: OnRequest,
    ) -> Connection<T> {
        let role = Role::Server {
            on_request,
            last_stream: 0,
            goaway_sent: false,
            final_goaway: None,
            reset_budget: RESET_BURST,
            reset_stamp: Instant::now(),
        };
        Self::new(io, peer, cfg, role).0
    }

    /// The client side of a connection, and the handle streams are opened through.
    pub(crate) fn client(io: T, peer: SocketAddr, cfg: ConnConfig) -> (Connection<T>, Arc<Shared>) {
        Self::new(io, peer, cfg, Role::Client)
    }

    /// Starts a graceful shutdown (server): GOAWAY, then streams in flight run to their end.
    pub(crate) fn shutdown(&mut self) {
        self.shared.lock().shutdown = true;
    }

    /// Drives the connection until it ends.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Http2Error>> {
        {
            let mut st = self.shared.lock();
            match &st.task {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.task = Some(cx.waker().clone()),
            }
        }
        if self.closing.is_none() {
            if let Err(e) = self.step(cx) {
                self.fail(e);
            }
        }
        if let Some((result, deadline)) = &mut self.closing {
            let timed_out = deadline.as_mut().poll(cx).is_ready();
            let failed = result.is_err();
            if !self.flushed {
                let written = match self.poll_write(cx) {
                    Poll::Ready(Ok(())) => true,
                    Poll::Ready(Err(_)) => true,
                    Poll::Pending => false,
                };
                if written {
                    self.flushed = true;
                    let _ = Pin::new(&mut self.io).poll_shutdown(cx);
                }
            }
            // After an error, what the peer still sends is read and dropped until it closes
            // (or the deadline): closing a socket with unread input makes the kernel send RST,
            // which can destroy the GOAWAY before the peer reads it.
            let done = self.flushed && (!failed || self.peer_closed || self.discard_input(cx));
            if done || timed_out {
                let (result, _) = self.closing.take().expect("closing");
                return Poll::Ready(result);
            }
            return Poll::Pending;
        }
        Poll::Pending
    }

    /// Reads and drops input; true once the peer has closed its side (or the socket failed).
    fn discard_input(&mut self, cx: &mut Context<'_>) -> bool {
        let mut scratch = [0u8; 4096];
        for _ in 0..READS_PER_POLL {
            let mut rb = tokio::io::ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return true,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return true,
                Poll::Pending => return false,
            }
        }
        cx.waker().wake_by_ref();
        false
    }

    /// One round: control requests, reads, credits, deadlines, writes.
    fn step(&mut self, cx: &mut Context<'_>) -> Result<(), Http2Error> {
        if let Some(d) = &mut self.handshake_deadline {
            if d.as_mut().poll(cx).is_ready() {
                tracing::debug!(peer = %self.peer, preface = self.preface_read, "HTTP/2 handshake timed out; closing the connection");
                return Err(Http2Error::HandshakeTimeout);
            }
        }
        self.take_requests();
        let mut reads = 0;
        // Reading never waits for writing: a peer doing the same would wait for this side's
        // reads while this side waits for its reads, and both would stop for good. What the
        // queue holds is bounded elsewhere: DATA by the sinks' readiness and the peer's
        // windows, what the peer's frames make this side answer by [`MAX_PENDING_REPLIES`].
        while !self.read_done && reads < READS_PER_POLL {
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                if self.buf.is_empty() {
                    self.buf = sluice_io::take_read_buf(READ_CHUNK);
                } else {
                    sluice_io::reserve_read(&mut self.buf, READ_CHUNK);
                }
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf) {
                Poll::Ready(Ok(0)) => {
                    self.read_done = true;
                    self.peer_closed = true;
                    self.on_eof();
                }
                Poll::Ready(Ok(_)) => {
                    reads += 1;
                    if self.idle_timer.is_some() {
                        self.last_read = tokio::time::Instant::now();
                    }
                    self.process(cx)?;
                    self.take_requests();
                }
                Poll::Ready(Err(e)) => {
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::BrokenPipe
                            | std::io::ErrorKind::UnexpectedEof
                    ) {
                        tracing::debug!(peer = %self.peer, error = %e, "HTTP/2 connection reset by the peer");
                        self.read_done = true;
                        self.peer_closed = true;
                        self.on_eof();
                    } else {
                        return Err(e.into());
                    }
                }
                Poll::Pending => break,
            }
        }
        if reads == READS_PER_POLL {
            cx.waker().wake_by_ref();
        }
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            // An idle connection keeps no read buffer. (Giving it to the thread's stock even
            // while its messages are still being forwarded, to be reused once they are gone,
            // cost more instructions per call in measurement than allocating a new one.)
            sluice_io::give_back_read_buf(std::mem::take(&mut self.buf));
        }
        self.recheck_withheld(cx);
        if std::mem::take(&mut self.rearm) {
            self.arm_timer(cx);
        }
        self.check_deadlines(cx);
        self.maybe_finish_shutdown(cx);
        match self.poll_write(cx) {
            Poll::Ready(Err(e)) => return Err(e.into()),
            Poll::Ready(Ok(())) | Poll::Pending => {}
        }
        if self.close_if_done() || self.idle_expired(cx) {
            self.closing = Some((Ok(()), Box::pin(tokio::time::sleep(CLOSE_FLUSH))));
        }
        Ok(())
    }

    /// Server: whether the connection has had no stream and received nothing for the idle
    /// timeout; if so, GOAWAY(NO_ERROR) is queued and no new stream is taken. The timer is
    /// moved on only when it fires, not per read.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let (Some(timeout), Some(timer)) = (self.cfg.idle_timeout, &mut self.idle_timer) else {
            return false;
        };
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        let now = tokio::time::Instant::now();
        let busy = !self.streams.is_empty() || !self.shared.lock().streams.is_empty();
        let quiet_until = self.last_read + timeout;
        if busy || quiet_until > now {
            let next = if busy { now + timeout } else { quiet_until };
            timer.as_mut().reset(next);
            let _ = timer.as_mut().poll(cx);
            return false;
        }
        tracing::debug!(peer = %self.peer, ?timeout, "idle gRPC connection: closing with GOAWAY");
        if let Some(stats) = &self.cfg.stats {
            stats
                .connections_idle_closed
                .fetch_add(1, Ordering::Relaxed);
        }
        let last = self.last_peer_stream();
        let mut st = self.shared.lock();
        st.closed = true;
        st.going_away = true;
        let mut g = Vec::new();
        frame::goaway(last, Reason::NO_ERROR, b"idle", &mut g);
        st.push_bytes(Bytes::from(g));
        drop(st);
        self.read_done = true;
        true
    }

    /// Whether the connection is done (nothing left to serve and no one to serve it for); if
    /// so it takes no new stream from now on (decided under the lock an open takes).
    fn close_if_done(&self) -> bool {
        let mut st = self.shared.lock();
        let idle = self.streams.is_empty() && st.streams.is_empty() && st.opened.is_empty();
        let done = match &self.role {
            Role::Server { final_goaway, .. } => idle && (self.read_done || final_goaway.is_some()),
            Role::Client => self.read_done || (idle && (st.handles == 0 || st.going_away)),
        };
        if done {
            st.closed = true;
            st.going_away = true;
        }
        done
    }

    /// Ends the connection with an error: GOAWAY if it is a protocol error, every stream told.
    fn fail(&mut self, e: Http2Error) {
        self.read_done = true;
        let mut wakes = Wakes::default();
        {
            let mut st = self.shared.lock();
            let queued = std::mem::take(&mut st.out);
            st.close_all(&mut wakes);
            // What was queued before the failure still goes out (it may answer requests the
            // peer is waiting on), then the GOAWAY.
            st.out = queued;
            if let Http2Error::Protocol { reason, what } = &e {
                let mut g = Vec::new();
                frame::goaway(self.last_peer_stream(), *reason, what.as_bytes(), &mut g);
                st.push_bytes(Bytes::from(g));
            }
        }
        self.streams.clear();
        self.closing = Some((Err(e), Box::pin(tokio::time::sleep(CLOSE_FLUSH))));
    }

    fn last_peer_stream(&self) -> u32 {
        match &self.role {
            Role::Server { last_stream, .. } => *last_stream,
            Role::Client => 0,
        }
    }

    /// The peer closed its side.
    fn on_eof(&mut self) {
        if !self.buf.is_empty() || self.partial_block.is_some() {
            tracing::debug!(peer = %self.peer, "HTTP/2 connection closed in the middle of a frame");
        }
        // Every stream still running hears that the connection is gone.
        self.streams.clear();
        let mut wakes = Wakes::default();
        self.shared.lock().close_all(&mut wakes);
    }

    /// Requests queued by sinks and handles: ended streams, released streams, new streams,
    /// a shutdown.
    fn take_requests(&mut self) {
        let (finished, released, opened, shutdown) = {
            let mut st = self.shared.lock();
            if st.finished.is_empty()
                && st.released.is_empty()
                && st.opened.is_empty()
                && !st.shutdown
            {
                return;
            }
            (
                std::mem::take(&mut st.finished),
                std::mem::take(&mut st.released),
                std::mem::take(&mut st.opened),
                std::mem::take(&mut st.shutdown),
            )
        };
        for o in opened {
            let deadline = o.deadline;
            self.streams.insert(
                o.id,
                Recv::new(
                    o.to_user,
                    self.cfg.stream_window(),
                    false,
                    ResponseState::Head,
                    deadline,
                ),
            );
            if let Some(d) = deadline {
                if self.next_deadline.is_none_or(|n| d < n) {
                    self.next_deadline = Some(d);
                    self.rearm = true;
                }
            }
        }
        // After `opened`: a stream its user reset (or ended) before this task took it in is
        // in both lists, and its receiving side must not outlive it.
        for id in finished {
            // Dropping the pipe tells a user still reading that the stream is over.
            self.streams.remove(&id);
        }
        for id in released {
            // A user that dropped its receiving half too gave up on the call; one that still
            // reads is only done sending.
            let gave_up = self.streams.get(&id).is_none_or(|r| r.to_user.is_closed());
            let mut wakes = Wakes::default();
            let mut st = self.shared.lock();
            if st.streams.get(&id).is_some_and(|s| !s.done && !s.gone) {
                if gave_up {
                    st.reset_now(id, Reason::CANCEL);
                } else {
                    st.send_end_stream(id);
                }
            }
            st.forget_if_finished(id, &mut wakes);
            if gave_up {
                drop(st);
                self.streams.remove(&id);
            }
        }
        if shutdown {
            if let Role::Server { goaway_sent, .. } = &mut self.role {
                if !*goaway_sent {
                    *goaway_sent = true;
                    tracing::debug!(peer = %self.peer, "gRPC connection: graceful shutdown");
                    let mut st = self.shared.lock();
                    st.going_away = true;
                    // RFC 9113 6.8: a GOAWAY with the largest stream id first, then, a round
                    // trip later, the real last stream: requests already on their way are
                    // still served.
                    let mut g = Vec::new();
                    frame::goaway(MAX_WINDOW, Reason::NO_ERROR, b"", &mut g);
                    g.extend_from_slice(&frame::ping(false, SHUTDOWN_PING));
                    st.push_bytes(Bytes::from(g));
                }
            }
        }
    }

    /// Server: the final GOAWAY once the shutdown PING came back (a round trip after the
    /// first GOAWAY: every request the client sent before it saw that one has arrived), or
    /// after [`SHUTDOWN_PING_WAIT`] if the PING is not answered. Not sooner, even with no
    /// stream open: a request already on its way would be lost.
    fn maybe_finish_shutdown(&mut self, cx: &mut Context<'_>) {
        if let Role::Server {
            goaway_sent: true,
            final_goaway: None,
            ..
        } = &self.role
        {
            let timer = self
                .shutdown_timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(SHUTDOWN_PING_WAIT)));
            if timer.as_mut().poll(cx).is_ready() {
                tracing::debug!(peer = %self.peer, "shutdown PING not answered; sending the final GOAWAY");
                self.send_final_goaway();
            }
        }
    }

    fn send_final_goaway(&mut self) {
        if let Role::Server {
            last_stream,
            final_goaway,
            ..
        } = &mut self.role
        {
            if final_goaway.is_none() {
                *final_goaway = Some(*last_stream);
                let mut g = Vec::new();
                frame::goaway(*last_stream, Reason::NO_ERROR, b"", &mut g);
                self.shared.lock().push_bytes(Bytes::from(g));
            }
        }
    }

    /// Decodes and handles every whole frame in the read buffer.
    fn process(&mut self, cx: &mut Context<'_>) -> Result<(), Http2Error> {
        if !self.preface_read {
            let n = self.buf.len().min(PREFACE.len());
            if self.buf[..n] != PREFACE[..n] {
                return Err(Http2Error::protocol(
                    Reason::PROTOCOL_ERROR,
                    "not an HTTP/2 client preface",
                ));
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            self.buf.advance(PREFACE.len());
            self.preface_read = true;
        }
        loop {
            let frame = match self.frames.decode(&mut self.buf) {
                Ok(Some(f)) => f,
                // Checked once per read, and only if a refusal was queued (no lock otherwise).
                Ok(None) if std::mem::take(&mut self.refused) => {
                    return self.check_replies(&self.shared.lock())
                }
                Ok(None) => return Ok(()),
                Err(e) => match e.stream {
                    Some(id) => {
                        tracing::debug!(peer = %self.peer, stream = id, error = %e, "HTTP/2 stream error");
                        self.reset_stream(id, e.reason, &e.to_string());
                        continue;
                    }
                    None => return Err(Http2Error::protocol(e.reason, e.what)),
                },
            };
            if !self.settings_received {
                // "The first frame sent ... MUST be a SETTINGS frame" (RFC 9113 3.4).
                if !matches!(frame, Frame::Settings { ack: false, .. }) {
                    return Err(Http2Error::protocol(
                        Reason::PROTOCOL_ERROR,
                        "first frame is not SETTINGS",
                    ));
                }
                self.settings_received = true;
                self.handshake_deadline = None;
            }
            if let Some(p) = &self.partial_block {
                // "A HEADERS frame without the END_HEADERS flag set MUST be followed by a
                // CONTINUATION frame for the same stream" (RFC 9113 6.2).
                match &frame {
                    Frame::Continuation { stream, .. } if *stream == p.stream => {}
                    _ => {
                        return Err(Http2Error::protocol(
                            Reason::PROTOCOL_ERROR,
                            "header block interrupted by another frame",
                        ))
                    }
                }
            }
            self.on_frame(frame, cx)?;
        }
    }

    fn on_frame(&mut self, frame: Frame, cx: &mut Context<'_>) -> Result<(), Http2Error> {
        match frame {
            Frame::Data(d) => self.on_data(d, cx),
            Frame::Headers(h) => {
                if self.cfg.side == Side::Server && h.stream % 2 == 0 {
                    return Err(Http2Error::protocol(
                        Reason::PROTOCOL_ERROR,
                        "client opened an even stream id",
                    ));
                }
                // Copied out of the read buffer: decoded literals are slices of the block and
                // live as long as the stream's metadata, which must not pin a whole read buffer.
                let p = PartialBlock {
                    stream: h.stream,
                    frames: 0,
                    end_stream: h.end_stream,
                    self_dependent: h.depends_on_itself(),
                    block: BytesMut::from(&h.block[..]),
                };
                self.check_block_size(p.block.len())?;
                if h.end_headers {
                    self.on_block(p, cx)
                } else {
                    self.partial_block = Some(p);
                    Ok(())
                }
            }
            Frame::Continuation {
                stream,
                end_headers,
                block,
            } => {
                let Some(mut p) = self.partial_block.take() else {
                    return Err(Http2Error::protocol(
                        Reason::PROTOCOL_ERROR,
                        "CONTINUATION without a header block",
                    ));
                };
                debug_assert_eq!(p.stream, stream);
                p.frames += 1;
                // Empty or tiny CONTINUATION frames cost a frame each without growing the
                // block: their number is bounded too.
                if p.frames > MAX_CONTINUATIONS {
                    return Err(Http2Error::protocol(
                        Reason::ENHANCE_YOUR_CALM,
                        format!(
                            "header block in more than {MAX_CONTINUATIONS} CONTINUATION frames"
                        ),
                    ));
                }
                p.block.extend_from_slice(&block);
                self.check_block_size(p.block.len())?;
                if end_headers {
                    self.on_block(p, cx)
                } else {
                    self.partial_block = Some(p);
                    Ok(())
                }
            }
            Frame::Priority { .. } | Frame::Unknown { .. } => Ok(()),
            Frame::RstStream { stream, reason } => {
                if self.streams.contains_key(&stream) {
                    self.spend_reset_budget()?;
                }
                self.on_reset(stream, reason)
            }
            Frame::Settings { ack: true, .. } => Ok(()),
            Frame::Settings {
                ack: false,
                settings,
            } => self.on_settings(settings),
            Frame::PushPromise { .. } => Err(Http2Error::protocol(
                Reason::PROTOCOL_ERROR,
                "PUSH_PROMISE: push is disabled",
            )),
            Frame::Ping {
                ack: false,
                payload,
            } => {
                let mut st = self.shared.lock();
                st.push_reply(&frame::ping(true, payload));
                self.check_replies(&st)
            }
            Frame::Ping { ack: true, payload } => {
                if payload == SHUTDOWN_PING {
                    self.send_final_goaway();
                }
                Ok(())
            }
            Frame::GoAway {
                last_stream,
                reason,
                debug,
            } => self.on_goaway(last_stream, reason, &debug),
            Frame::WindowUpdate { stream, increment } => self.on_window_update(stream, increment),
        }
    }

    /// Fails the connection once the peer is owed more than [`MAX_PENDING_REPLIES`] frames it
    /// has not read.
    fn check_replies(&self, st: &State) -> Result<(), Http2Error> {
        let pending = st.replies + self.writing_replies;
        if pending > MAX_PENDING_REPLIES {
            tracing::debug!(peer = %self.peer, pending, "HTTP/2 peer does not read the answers to its frames");
            return Err(Http2Error::protocol(
                Reason::ENHANCE_YOUR_CALM,
                format!("more than {MAX_PENDING_REPLIES} acknowledgements and refusals unread"),
            ));
        }
        Ok(())
    }

    /// Frames other than HEADERS and PRIORITY on a stream that was never opened are a
    /// connection error PROTOCOL_ERROR (RFC 9113 5.1, "idle").
    /// `next_id` is the client's next stream id (the caller holds the lock it is read under).
    fn check_not_idle(&self, id: u32, what: &str, next_id: u32) -> Result<(), Http2Error> {
        let opened = match &self.role {
            // Push is disabled: no even stream is ever opened on a server connection.
            Role::Server { last_stream, .. } => id % 2 == 1 && id <= *last_stream,
            Role::Client => id % 2 == 1 && id < next_id,
        };
        if opened {
            return Ok(());
        }
        Err(Http2Error::protocol(
            Reason::PROTOCOL_ERROR,
            format!("{what} on idle stream {id}"),
        ))
    }

    /// Server: a client reset a running stream.
    fn spend_reset_budget(&mut self) -> Result<(), Http2Error> {
        if let Role::Server {
            reset_budget,
            reset_stamp,
            ..
        } = &mut self.role
        {
            let now = Instant::now();
            let refill = now.duration_since(*reset_stamp).as_secs_f64() * RESETS_PER_SECOND;
            *reset_budget = (*reset_budget + refill).min(RESET_BURST) - 1.0;
            *reset_stamp = now;
            if *reset_budget < 0.0 {
                return Err(Http2Error::protocol(
                    Reason::ENHANCE_YOUR_CALM,
                    "too many streams reset by the client",
                ));
            }
        }
        Ok(())
    }

    fn check_block_size(&self, len: usize) -> Result<(), Http2Error> {
        let limit = (self.cfg.max_header_list_size as usize).saturating_mul(BLOCK_LIMIT_FACTOR);
        if len > limit {
            // The block cannot be skipped without decoding it (the HPACK table would drift),
            // and decoding it is what the limit is there to avoid.
            return Err(Http2Error::protocol(
                Reason::ENHANCE_YOUR_CALM,
                format!("header block larger than {limit} bytes"),
            ));
        }
        Ok(())
    }

    /// A complete header block.
    fn on_block(&mut self, p: PartialBlock, cx: &mut Context<'_>) -> Result<(), Http2Error> {
        let block = p.block.freeze();
        let mut fields = Vec::with_capacity(16);
        let decoded = self
            .hpack
            .decode(&block, self.cfg.max_header_list_size as usize, |n, v| {
                fields.push((n, v))
            })
            .map_err(|e| Http2Error::protocol(Reason::COMPRESSION_ERROR, e.to_string()))?;
        let id = p.stream;
        if p.self_dependent {
            self.reset_stream(id, Reason::PROTOCOL_ERROR, "stream depends on itself");
            return Ok(());
        }
        let hb = HeaderBlock {
            stream: id,
            end_stream: p.end_stream,
            fields,
            too_large: decoded.too_large,
        };
        if self.streams.contains_key(&id) {
            return self.on_stream_block(hb, cx);
        }
        match &mut self.role {
            Role::Client => {
                // A stream this side has reset or finished: its late headers are ignored.
                Ok(())
            }
            Role::Server {
                on_request,
                last_stream,
                final_goaway,
                ..
            } => {
                if id <= *last_stream {
                    // A closed stream, or a new one below the highest used: "the identifier
                    // of a newly established stream MUST be numerically greater than all
                    // streams that the initiating endpoint has opened" (RFC 9113 5.1.1).
                    // (gRPC clients send no trailers, so no HEADERS is in flight after a
                    // stream this side closed.)
                    return Err(Http2Error::protocol(
                        Reason::PROTOCOL_ERROR,
                        format!("HEADERS on closed or reused stream {id}"),
                    ));
                }
                *last_stream = id;
                if final_goaway.is_some_and(|last| id > last) {
                    // Sent after the final GOAWAY: refused, so the client knows it was not
                    // processed and retries it elsewhere.
                    tracing::debug!(peer = %self.peer, stream = id, "refusing gRPC stream: connection shutting down");
                    if let Some(stats) = &self.cfg.stats {
                        stats.streams_refused.fetch_add(1, Ordering::Relaxed);
                    }
                    self.shared
                        .lock()
                        .push_reply(&frame::rst_stream(id, Reason::REFUSED_STREAM));
                    self.refused = true;
                    return Ok(());
                }
                let active = self.streams.len();
                if active >= self.cfg.max_concurrent_streams as usize {
                    tracing::debug!(peer = %self.peer, stream = id, limit = self.cfg.max_concurrent_streams, "refusing gRPC stream: concurrent stream limit");
                    if let Some(stats) = &self.cfg.stats {
                        stats.streams_refused.fetch_add(1, Ordering::Relaxed);
                    }
                    self.shared
                        .lock()
                        .push_reply(&frame::rst_stream(id, Reason::REFUSED_STREAM));
                    self.refused = true;
                    return Ok(());
                }
                match on_request(&self.shared, hb) {
                    Opening::Done => {
                        // Refused (and logged): the answer is queued already.
                        if let Some(stats) = &self.cfg.stats {
                            stats.streams_refused.fetch_add(1, Ordering::Relaxed);
                        }
                        self.shared.lock().replies += 1;
                        self.refused = true;
                        Ok(())
                    }
                    Opening::Accept {
                        to_user,
                        compressed_ok,
                        end_stream,
                    } => {
                        let mut r = Recv::new(
                            to_user,
                            self.cfg.stream_window(),
                            compressed_ok,
                            ResponseState::Body,
                            None,
                        );
                        if end_stream {
                            r.remote_ended = true;
                            let _ = sluice_stream::EventSink::push(&r.to_user, Event::HalfClose);
                            self.mark_remote_ended(id);
                        }
                        self.streams.insert(id, r);
                        Ok(())
                    }
                }
            }
        }
    }

    /// A header block on a stream that has a receiving side.
    fn on_stream_block(&mut self, hb: HeaderBlock, cx: &mut Context<'_>) -> Result<(), Http2Error> {
        let id = hb.stream;
        match self.cfg.side {
            Side::Server => {
                // Trailers from a client: gRPC clients send none; they end the request side.
                let Some(r) = self.streams.get_mut(&id) else {
                    return Ok(());
                };
                if r.remote_ended {
                    // Half-closed (remote): RFC 9113 5.1, a stream error STREAM_CLOSED.
                    self.reset_stream(id, Reason::STREAM_CLOSED, "HEADERS after END_STREAM");
                    return Ok(());
                }
                if !hb.end_stream {
                    self.reset_stream(
                        id,
                        Reason::PROTOCOL_ERROR,
                        "request headers after the first",
                    );
                    return Ok(());
                }
                if has_pseudo(&hb.fields) {
                    // "Pseudo-header fields MUST NOT appear in a trailer section" (RFC 9113
                    // 8.1): the request is malformed.
                    self.reset_stream(id, Reason::PROTOCOL_ERROR, "pseudo-header in trailers");
                    return Ok(());
                }
                r.remote_ended = true;
                r.ending = Some(Ending::HalfClose);
                self.drain(id, None, cx);
                Ok(())
            }
            Side::Client => {
                let Some(r) = self.streams.get_mut(&id) else {
                    return Ok(());
                };
                if hb.too_large {
                    let msg = format!(
                        "response header list larger than {} bytes",
                        self.cfg.max_header_list_size
                    );
                    self.client_end(
                        id,
                        StreamEnd::error(Code::RESOURCE_EXHAUSTED.as_u32(), msg),
                        true,
                    );
                    return Ok(());
                }
                match r.response {
                    ResponseState::Head => {
                        match crate::fields::response_head(hb.fields, hb.end_stream) {
                            crate::fields::Head::Informational => Ok(()),
                            crate::fields::Head::Headers { md, compressed } => {
                                r.response = ResponseState::Body;
                                r.compressed_ok = compressed;
                                if sluice_stream::EventSink::push(&r.to_user, Event::Headers(md))
                                    .is_err()
                                {
                                    self.client_end_quiet(id);
                                }
                                Ok(())
                            }
                            crate::fields::Head::End(end) => {
                                let reset = !hb.end_stream;
                                self.client_end(id, end, reset);
                                Ok(())
                            }
                        }
                    }
                    ResponseState::Body => {
                        let malformed = if has_pseudo(&hb.fields) {
                            Some("pseudo-header in the response trailers")
                        } else if !hb.end_stream {
                            Some("response headers after the first, without END_STREAM")
                        } else {
                            None
                        };
                        if let Some(why) = malformed {
                            self.client_end(
                                id,
                                StreamEnd::error(Code::INTERNAL.as_u32(), why),
                                true,
                            );
                            return Ok(());
                        }
                        r.remote_ended = true;
                        r.ending = Some(Ending::Trailers(crate::fields::end_from(hb.fields)));
                        self.drain(id, None, cx);
                        Ok(())
                    }
                }
            }
        }
    }

    fn decoder(&self) -> MessageDecoder {
        MessageDecoder::with_max_message_size(self.cfg.max_message_size)
    }

    /// Client: the response ended with `end`. The user hears it; the request side, if still
    /// open, is reset (CANCEL) when `reset` or when it has not ended.
    fn client_end(&mut self, id: u32, end: StreamEnd, reset: bool) {
        if let Some(r) = self.streams.remove(&id) {
            let _ = sluice_stream::EventSink::push(&r.to_user, Event::End(end));
        }
        let mut wakes = Wakes::default();
        let mut st = self.shared.lock();
        if st.streams.get(&id).is_some_and(|s| !s.done || reset) {
            st.reset_now(id, Reason::CANCEL);
        }
        if let Some(s) = st.streams.get_mut(&id) {
            s.gone = true;
        }
        st.forget_if_finished(id, &mut wakes);
    }

    /// Client: the user is gone; the stream is reset.
    fn client_end_quiet(&mut self, id: u32) {
        self.streams.remove(&id);
        let mut wakes = Wakes::default();
        let mut st = self.shared.lock();
        if st.streams.get(&id).is_some_and(|s| !s.done) {
            st.reset_now(id, Reason::CANCEL);
        }
        if let Some(s) = st.streams.get_mut(&id) {
            s.gone = true;
        }
        st.forget_if_finished(id, &mut wakes);
    }

    fn mark_remote_ended(&mut self, id: u32) {
        if let Some(s) = self.shared.lock().streams.get_mut(&id) {
            s.remote_ended = true;
        }
    }

    /// Server: the request's messages could not be decoded. The client gets `status` (the
    /// sending side ends first, so nothing the handler sends later can change it), then the
    /// handler hears that its input broke off.
    fn bad_request_stream(&mut self, id: u32, status: Status) {
        tracing::debug!(peer = %self.peer, stream = id, message = %status.message, "bad gRPC request stream");
        crate::server::abort(&self.shared, id, &status);
        if let Some(r) = self.streams.remove(&id) {
            let _ = sluice_stream::EventSink::push(
                &r.to_user,
                Event::Reset(Reset {
                    code: u32::from(Reason::PROTOCOL_ERROR),
                    message: status.message,
                    cancel_path: None,
                }),
            );
        }
    }

    fn on_data(&mut self, d: sluice_h2wire::Data, cx: &mut Context<'_>) -> Result<(), Http2Error> {
        let flow = d.flow_len as i64;
        self.recv_conn_window -= flow;
        if self.recv_conn_window < 0 {
            return Err(Http2Error::protocol(
                Reason::FLOW_CONTROL_ERROR,
                "DATA beyond the connection window",
            ));
        }
        // The connection window is given back as data arrives: per-stream windows are what
        // bound memory, and one stalled stream must not stop the others.
        self.conn_unacked += d.flow_len as u32;
        self.credit_connection();
        let id = d.stream;
        let Some(r) = self.streams.get_mut(&id) else {
            let known = match &self.role {
                Role::Server { last_stream, .. } => id <= *last_stream,
                Role::Client => id < self.shared.lock().next_id,
            };
            if !known {
                return Err(Http2Error::protocol(
                    Reason::PROTOCOL_ERROR,
                    "DATA on a stream that was never opened",
                ));
            }
            // A stream already over (reset or finished here): dropped.
            return Ok(());
        };
        if r.remote_ended {
            self.reset_stream(id, Reason::STREAM_CLOSED, "DATA after END_STREAM");
            return Ok(());
        }
        if self.cfg.side == Side::Client && r.response == ResponseState::Head {
            self.reset_stream(
                id,
                Reason::PROTOCOL_ERROR,
                "DATA before the response headers",
            );
            return Ok(());
        }
        r.window -= flow;
        if r.window < 0 {
            self.reset_stream(
                id,
                Reason::FLOW_CONTROL_ERROR,
                "DATA beyond the stream window",
            );
            return Ok(());
        }
        // Padding is nobody's to consume.
        r.unacked += (d.flow_len - d.payload.len()) as u32;
        r.uncredited += d.payload.len() as u32;
        if d.end_stream {
            r.remote_ended = true;
            r.ending = Some(match self.cfg.side {
                Side::Server => Ending::HalfClose,
                Side::Client => Ending::NoTrailers,
            });
        }
        self.drain(id, Some(d.payload), cx);
        Ok(())
    }

    /// Decodes what stream `id` has received (what waits in it, then `chunk`) and hands the
    /// messages to its user, one at a time and only while the user is ready for more. When
    /// the user falls behind, the rest waits as raw bytes (at most a window of them: their
    /// window is given back only once they are handed on) and the stream is rechecked when
    /// the user makes room. The stream's end goes out after its last message.
    fn drain(&mut self, id: u32, chunk: Option<Bytes>, cx: &mut Context<'_>) {
        let decoder = self.decoder();
        let Some(r) = self.streams.get_mut(&id) else {
            return;
        };
        let mut chunk = chunk.unwrap_or_default();
        let mut bad: Option<Status> = None;
        let mut client_user_gone = false;
        'decode: loop {
            let message = match r.held.take() {
                Some(m) => m,
                None => {
                    // Whole messages come straight out of the frame's bytes (no copy); only a
                    // message split across frames, or bytes waiting for the user, are
                    // gathered in `partial`.
                    let next = if r.partial.is_empty() {
                        match decoder.decode_bytes(&mut chunk) {
                            Ok(None) if !chunk.is_empty() => {
                                r.partial.extend_from_slice(&chunk);
                                chunk.clear();
                                decoder.decode(&mut r.partial)
                            }
                            other => other,
                        }
                    } else {
                        if !chunk.is_empty() {
                            r.partial.extend_from_slice(&chunk);
                            chunk.clear();
                        }
                        decoder.decode(&mut r.partial)
                    };
                    match next {
                        Ok(Some(m)) if m.compressed && !r.compressed_ok => {
                            bad = Some(Status::new(
                                Code::INTERNAL,
                                "compressed flag set on a message but grpc-encoding is missing or identity",
                            ));
                            break 'decode;
                        }
                        Ok(Some(m)) => m.data,
                        Ok(None) => break 'decode,
                        Err(e) => {
                            let code = match e {
                                MessageError::TooLarge { .. } => Code::RESOURCE_EXHAUSTED,
                                _ => Code::INTERNAL,
                            };
                            bad = Some(Status::new(code, e.to_string()));
                            break 'decode;
                        }
                    }
                }
            };
            if r.user_gone {
                continue;
            }
            if sluice_stream::EventSink::poll_ready(&r.to_user, cx).is_pending() {
                // The user is behind: this message and the bytes after it wait.
                r.held = Some(message);
                if !chunk.is_empty() {
                    r.partial.extend_from_slice(&chunk);
                }
                if !r.paused {
                    r.paused = true;
                    self.withheld.push(id);
                }
                return;
            }
            if sluice_stream::EventSink::push(&r.to_user, Event::Message(message)).is_err() {
                match self.cfg.side {
                    // The handler stopped reading: what the client still sends is dropped,
                    // and its window stays open so the client is not blocked on it.
                    Side::Server => r.user_gone = true,
                    Side::Client => {
                        client_user_gone = true;
                        break 'decode;
                    }
                }
            }
        }
        r.paused = false;
        if r.partial.is_empty() && r.partial.capacity() > sluice_io::STREAM_READ_CHUNK {
            // What is left of a large message's buffer is not kept for the stream's lifetime.
            r.partial = BytesMut::new();
        }
        if client_user_gone {
            self.client_end_quiet(id);
            return;
        }
        if let Some(status) = bad {
            match self.cfg.side {
                Side::Server => self.bad_request_stream(id, status),
                Side::Client => self.client_end(
                    id,
                    StreamEnd::error(status.code.as_u32(), status.message),
                    true,
                ),
            }
            return;
        }
        // Everything received is decoded and handed on: its window is the peer's again.
        r.unacked += std::mem::take(&mut r.uncredited);
        let ending = r.ending.take();
        let truncated = decoder.finish(&r.partial).err();
        self.flush_stream_credit(id);
        let Some(ending) = ending else {
            return;
        };
        if let Some(e) = truncated {
            // The stream ended inside a message.
            let status = Status::new(Code::INTERNAL, e.to_string());
            match self.cfg.side {
                Side::Server => self.bad_request_stream(id, status),
                Side::Client => self.client_end(
                    id,
                    StreamEnd::error(status.code.as_u32(), status.message),
                    false,
                ),
            }
            return;
        }
        match ending {
            Ending::HalfClose => {
                if let Some(r) = self.streams.get(&id) {
                    let _ = sluice_stream::EventSink::push(&r.to_user, Event::HalfClose);
                }
                self.mark_remote_ended(id);
            }
            Ending::Trailers(end) => self.client_end(id, end, false),
            Ending::NoTrailers => self.client_end(
                id,
                StreamEnd::error(
                    Code::INTERNAL.as_u32(),
                    "server closed the stream without sending trailers",
                ),
                false,
            ),
        }
    }

    /// Announces the stream window the user has made room for, in batches of half a window.
    fn flush_stream_credit(&mut self, id: u32) {
        let half = self.cfg.stream_window() / 2;
        let Some(r) = self.streams.get_mut(&id) else {
            return;
        };
        if r.remote_ended || r.unacked < half.max(1) {
            return;
        }
        let n = std::mem::take(&mut r.unacked);
        r.window += i64::from(n);
        self.shared.lock().push_inline(&frame::window_update(id, n));
    }

    fn credit_connection(&mut self) {
        let half = self.cfg.connection_window() / 2;
        if self.conn_unacked >= half {
            let n = std::mem::take(&mut self.conn_unacked);
            self.recv_conn_window += i64::from(n);
            self.shared.lock().push_inline(&frame::window_update(0, n));
        }
    }

    /// Streams whose users were not ready: go on with those that are now.
    fn recheck_withheld(&mut self, cx: &mut Context<'_>) {
        if self.withheld.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.withheld);
        for id in ids {
            let Some(r) = self.streams.get_mut(&id) else {
                continue;
            };
            if sluice_stream::EventSink::poll_ready(&r.to_user, cx).is_ready() {
                r.paused = false;
                self.drain(id, None, cx);
            } else {
                self.withheld.push(id);
            }
        }
    }

    /// Resets stream `id` from this side: RST_STREAM, and its user hears of it.
    fn reset_stream(&mut self, id: u32, reason: Reason, why: &str) {
        let mut st = self.shared.lock();
        st.reset_now(id, reason);
        st.replies += 1;
        self.refused = true;
        if let Some(s) = st.streams.get_mut(&id) {
            s.gone = true;
        }
        let mut wakes = Wakes::default();
        if let Some(s) = st.streams.remove(&id) {
            wakes.extend(s.wakers);
        }
        drop(st);
        if let Some(r) = self.streams.remove(&id) {
            let _ = sluice_stream::EventSink::push(
                &r.to_user,
                Event::Reset(Reset {
                    code: reason.0,
                    message: why.to_owned(),
                    cancel_path: None,
                }),
            );
        }
    }

    /// RST_STREAM from the peer.
    fn on_reset(&mut self, id: u32, reason: Reason) -> Result<(), Http2Error> {
        let mut wakes = Wakes::default();
        {
            let mut st = self.shared.lock();
            self.check_not_idle(id, "RST_STREAM", st.next_id)?;
            if let Some(mut s) = st.streams.remove(&id) {
                s.gone = true;
                wakes.extend(s.wakers);
            }
            wakes.extend(st.open_waiters.drain(..));
        }
        if let Some(r) = self.streams.remove(&id) {
            if let Some(stats) = &self.cfg.stats {
                stats.streams_reset_by_peer.fetch_add(1, Ordering::Relaxed);
            }
            let who = match self.cfg.side {
                Side::Server => "client",
                Side::Client => "server",
            };
            let _ = sluice_stream::EventSink::push(
                &r.to_user,
                Event::Reset(Reset {
                    code: reason.0,
                    message: format!("stream reset by the {who}: {reason}"),
                    cancel_path: None,
                }),
            );
        }
        Ok(())
    }

    fn on_settings(&mut self, s: Settings) -> Result<(), Http2Error> {
        let mut wakes = Wakes::default();
        let mut st = self.shared.lock();
        if let Some(v) = s.initial_window_size {
            let delta = i64::from(v) - st.peer_initial_window;
            st.peer_initial_window = i64::from(v);
            for stream in st.streams.values_mut() {
                stream.window += delta;
                // "A change to SETTINGS_INITIAL_WINDOW_SIZE can cause any flow-control window
                // to exceed the maximum size ... a connection error of type
                // FLOW_CONTROL_ERROR."
                if stream.window > i64::from(MAX_WINDOW) {
                    return Err(Http2Error::protocol(
                        Reason::FLOW_CONTROL_ERROR,
                        "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream window",
                    ));
                }
            }
        }
        if let Some(v) = s.max_frame_size {
            st.peer_max_frame = v as usize;
        }
        if let Some(v) = s.max_concurrent_streams {
            st.peer_max_streams = v as usize;
            wakes.extend(st.open_waiters.drain(..));
        }
        if s.header_table_size.is_some() {
            st.encoder.peer_table_size_changed();
        }
        st.push_reply(&frame::SETTINGS_ACK);
        self.check_replies(&st)?;
        if s.initial_window_size.is_some() {
            let ids: Vec<u32> = st.streams.keys().copied().collect();
            for id in ids {
                st.flush_stream(id, &mut wakes);
            }
        }
        Ok(())
    }

    fn on_window_update(&mut self, id: u32, increment: u32) -> Result<(), Http2Error> {
        let mut wakes = Wakes::default();
        let mut st = self.shared.lock();
        if id == 0 {
            st.conn_window += i64::from(increment);
            if st.conn_window > i64::from(MAX_WINDOW) {
                return Err(Http2Error::protocol(
                    Reason::FLOW_CONTROL_ERROR,
                    "connection window above 2^31-1",
                ));
            }
            st.flush_blocked(&mut wakes);
            return Ok(());
        }
        let Some(s) = st.streams.get_mut(&id) else {
            return self.check_not_idle(id, "WINDOW_UPDATE", st.next_id);
        };
        s.window += i64::from(increment);
        if s.window > i64::from(MAX_WINDOW) {
            drop(st);
            self.reset_stream(id, Reason::FLOW_CONTROL_ERROR, "stream window above 2^31-1");
            return Ok(());
        }
        st.flush_stream(id, &mut wakes);
        Ok(())
    }

    fn on_goaway(&mut self, last: u32, reason: Reason, debug: &[u8]) -> Result<(), Http2Error> {
        let text = String::from_utf8_lossy(debug).into_owned();
        if reason != Reason::NO_ERROR {
            tracing::debug!(peer = %self.peer, %reason, debug = %text, "peer sent GOAWAY");
        }
        let mut refused = Vec::new();
        {
            let mut wakes = Wakes::default();
            let mut st = self.shared.lock();
            st.going_away = true;
            wakes.extend(st.open_waiters.drain(..));
            if self.cfg.side == Side::Client {
                // Streams above `last` were not processed: they fail, safe to retry.
                let ids: Vec<u32> = st.streams.keys().copied().filter(|&id| id > last).collect();
                for id in ids {
                    if let Some(s) = st.streams.remove(&id) {
                        wakes.extend(s.wakers);
                    }
                    refused.push(id);
                }
            }
        }
        for id in refused {
            if let Some(r) = self.streams.remove(&id) {
                let _ = sluice_stream::EventSink::push(
                    &r.to_user,
                    Event::Reset(Reset {
                        code: Reason::REFUSED_STREAM.0,
                        message: format!(
                            "server went away ({reason}) before the stream was processed"
                        ),
                        cancel_path: None,
                    }),
                );
            }
        }
        if reason != Reason::NO_ERROR && self.streams.is_empty() {
            return Err(Http2Error::GoAway {
                reason,
                debug: text,
            });
        }
        Ok(())
    }

    /// Client: streams past their deadline are reset and end with DEADLINE_EXCEEDED.
    fn check_deadlines(&mut self, cx: &mut Context<'_>) {
        let Some(next) = self.next_deadline else {
            return;
        };
        let now = Instant::now();
        if next > now {
            if let Some(timer) = &mut self.timer {
                if timer.as_mut().poll(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
            }
            return;
        }
        let mut earliest: Option<Instant> = None;
        let mut expired = Vec::new();
        for (&id, r) in &self.streams {
            if let Some(d) = r.deadline {
                if d <= now {
                    expired.push(id);
                } else {
                    earliest = Some(earliest.map_or(d, |e| e.min(d)));
                }
            }
        }
        for id in expired {
            self.client_end(
                id,
                StreamEnd::error(Code::DEADLINE_EXCEEDED.as_u32(), "deadline exceeded"),
                true,
            );
        }
        self.next_deadline = earliest;
        self.arm_timer(cx);
    }

    /// Sets the timer to the earliest deadline.
    fn arm_timer(&mut self, cx: &mut Context<'_>) {
        match self.next_deadline {
            Some(d) => {
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(d.into())));
                if timer.deadline() != tokio::time::Instant::from_std(d) {
                    timer.as_mut().reset(d.into());
                }
                if timer.as_mut().poll(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
            }
            None => self.timer = None,
        }
    }

    /// Writes what is queued; `Ready(Ok)` once everything is out.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            if self.wpos == self.writing.len() {
                if self.writing_bytes > 0 {
                    let mut wakes = Wakes::default();
                    let mut st = self.shared.lock();
                    st.queued -= self.writing_bytes;
                    if st.queued < OUT_LIMIT {
                        wakes.extend(st.room.drain(..));
                    }
                    self.writing_bytes = 0;
                }
                self.writing.clear();
                self.wpos = 0;
                self.woff = 0;
                self.writing_replies = 0;
                let mut st = self.shared.lock();
                if st.out.is_empty() {
                    drop(st);
                    return Pin::new(&mut self.io).poll_flush(cx);
                }
                std::mem::swap(&mut st.out, &mut self.writing);
                st.epoch += 1;
                self.writing_replies = std::mem::take(&mut st.replies);
                self.writing_bytes = self.writing.iter().map(|c| c.as_slice().len()).sum();
            }
            let mut slices = [IoSlice::new(&[]); sluice_io::MAX_IOV];
            let mut n = 0;
            for (i, c) in self.writing[self.wpos..].iter().enumerate() {
                if n == slices.len() {
                    break;
                }
                let s = c.as_slice();
                let s = if i == 0 { &s[self.woff..] } else { s };
                if !s.is_empty() {
                    slices[n] = IoSlice::new(s);
                    n += 1;
                }
            }
            if n == 0 {
                self.wpos = self.writing.len();
                continue;
            }
            let written = match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(w)) => w,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            let mut left = written;
            while left > 0 {
                let len = self.writing[self.wpos].as_slice().len() - self.woff;
                if left >= len {
                    left -= len;
                    self.wpos += 1;
                    self.woff = 0;
                } else {
                    self.woff += left;
                    left = 0;
                }
            }
            while self.wpos < self.writing.len()
                && self.writing[self.wpos].as_slice().len() == self.woff
            {
                self.wpos += 1;
                self.woff = 0;
            }
        }
    }
}

/// A connection future: polls the connection until it ends.
pub(crate) async fn run<T: AsyncRead + AsyncWrite + Unpin>(
    mut conn: Connection<T>,
) -> Result<(), Http2Error> {
    std::future::poll_fn(|cx| conn.poll(cx)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_stream::{pipe, PipeRx, CHANNEL_DEPTH};
    use tokio::io::AsyncWriteExt;

    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = frame::Head::encode(payload.len(), ty, flags, stream).to_vec();
        f.extend_from_slice(payload);
        f
    }

    /// A server connection whose requests all go to one pipe the test reads.
    fn server(io: tokio::io::DuplexStream, window: u32) -> Arc<Mutex<Option<PipeRx>>> {
        let slot: Arc<Mutex<Option<PipeRx>>> = Arc::default();
        let keep = slot.clone();
        let cfg = ConnConfig {
            side: Side::Server,
            max_concurrent_streams: 10,
            initial_stream_window: window,
            initial_connection_window: window,
            max_frame_size: frame::DEFAULT_MAX_FRAME_SIZE,
            max_header_list_size: 4096,
            max_message_size: 1 << 20,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: None,
            stats: None,
        };
        let on_request: OnRequest = Box::new(move |shared, block| {
            shared.lock().add_stream(block.stream, Bytes::new());
            let (tx, rx) = pipe(CHANNEL_DEPTH);
            *keep.lock().unwrap() = Some(rx);
            Opening::Accept {
                to_user: tx,
                compressed_ok: false,
                end_stream: false,
            }
        });
        let conn = Connection::server(io, "127.0.0.1:1".parse().unwrap(), cfg, on_request);
        tokio::spawn(run(conn));
        slot
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_holds_bytes_not_events() {
        let (mut client, io) = tokio::io::duplex(1 << 20);
        let slot = server(io, 1 << 20);
        let mut hello = PREFACE.to_vec();
        hello.extend_from_slice(&frame(kind::SETTINGS, 0, 0, &[]));
        // A request block the fake hook does not look at: `:method POST`.
        hello.extend_from_slice(&frame(kind::HEADERS, flag::END_HEADERS, 1, &[0x83]));
        // 60 frames of 16380 bytes: 196 560 empty messages (5-byte prefixes), within one
        // window.
        let empties = vec![0u8; 16_380];
        for _ in 0..60 {
            hello.extend_from_slice(&frame(kind::DATA, 0, 1, &empties));
        }
        client.write_all(&hello).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut rx = slot.lock().unwrap().take().expect("the request arrived");
        // What the pipe holds now, without letting the connection run: at most its depth.
        let mut queued = 0;
        while rx.try_recv().is_some() {
            queued += 1;
        }
        assert!(queued <= CHANNEL_DEPTH, "{queued} events queued");
        // Reading on gets every message, in turn.
        let mut total = queued;
        while total < 60 * 16_380 / 5 {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(Event::Message(m))) => {
                    assert!(m.is_empty());
                    total += 1;
                }
                other => panic!("after {total} messages: {other:?}"),
            }
        }
    }
}
