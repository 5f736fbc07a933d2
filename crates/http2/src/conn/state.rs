//! The state a connection's task and its streams' sinks share, behind one lock ([`Shared`]):
//! the output queue, each stream's sending side, the peer's windows and settings, the HPACK
//! encoder, and the requests sinks leave for the task (streams finished, released, opened).
//!
//! The lowest layer of the engine: it imports no other part of it. How the sending side
//! frames and flow-controls is `send`, how the queue is pushed to and written is `queue`.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use sluice_h2wire::frame::{self, Reason};
use sluice_h2wire::{hpack, DEFAULT_WINDOW, MAX_WINDOW};
use sluice_stream::PipeTx;

use crate::message::PREFIX_LEN;

/// Bytes queued for the socket before sinks stop being ready.
pub(crate) const OUT_LIMIT: usize = 1024 * 1024;

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

/// Inline room of a queued chunk: a DATA head with a gRPC prefix (14 bytes), or a whole
/// control frame (PING is the longest, 17).
const INLINE: usize = 24;

/// One piece of queued output.
pub(crate) enum Chunk {
    Inline { buf: [u8; INLINE], len: u8 },
    Shared(Bytes),
}

impl Chunk {
    pub(super) fn inline(bytes: &[u8]) -> Chunk {
        let mut buf = [0u8; INLINE];
        buf[..bytes.len()].copy_from_slice(bytes);
        Chunk::Inline {
            buf,
            len: bytes.len() as u8,
        }
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Inline { buf, len } => &buf[..usize::from(*len)],
            Chunk::Shared(b) => b,
        }
    }
}

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
    pub(super) window: i64,
    pub(super) pending: VecDeque<Pending>,
    /// Tasks waiting for room or for the stream to go.
    pub(super) wakers: Vec<Waker>,
    /// Queued in [`State::blocked`] (waiting for the connection window).
    pub(super) in_blocked: bool,
    /// This side has ended the stream (END_STREAM or RST_STREAM queued): nothing more goes out.
    pub(crate) done: bool,
    /// The peer reset the stream, or the connection ended: pushes fail.
    pub(crate) gone: bool,
    /// The peer ended its side (END_STREAM received).
    pub(crate) remote_ended: bool,
    /// Where this stream's last queued DATA head sits, while it may still take END_STREAM:
    /// (epoch, index into `State::out`).
    pub(super) last_data: Option<(u64, usize)>,
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
    pub(super) out: Vec<Chunk>,
    /// Bytes in `out` and in the task's write under way.
    pub(super) queued: usize,
    /// Frames in `out` that answer the peer's own frames (see
    /// [`MAX_PENDING_REPLIES`](super::task::MAX_PENDING_REPLIES)).
    pub(super) replies: usize,
    /// Bumped each time the task takes `out`.
    pub(super) epoch: u64,
    pub(super) task: Option<Waker>,
    pub(super) room: Vec<Waker>,
    /// The connection is gone: nothing more is accepted.
    pub(crate) closed: bool,
    /// GOAWAY sent or received: no new streams on this connection.
    pub(crate) going_away: bool,
    pub(super) conn_window: i64,
    pub(super) peer_initial_window: i64,
    pub(super) peer_max_frame: usize,
    pub(super) peer_max_streams: usize,
    pub(crate) streams: IdMap<SendStream>,
    pub(super) blocked: VecDeque<u32>,
    pub(crate) encoder: hpack::Encoder,
    /// Streams whose sending side ended: the task drops their receiving side.
    pub(super) finished: Vec<u32>,
    /// Streams whose user dropped every sending handle without ending them (client).
    pub(super) released: Vec<u32>,
    /// New client streams for the task.
    pub(super) opened: Vec<Opened>,
    /// A graceful shutdown was asked for.
    pub(super) shutdown: bool,
    /// Client: the next stream id.
    pub(super) next_id: u32,
    /// Client: opens waiting for the peer's stream limit.
    pub(super) open_waiters: Vec<Waker>,
    /// Client: handles on the connection other than its streams.
    pub(super) handles: usize,
    pub(super) side: Side,
}

/// The shared half of a connection.
pub(crate) struct Shared {
    pub(super) state: Mutex<State>,
}

/// Wakes what is collected, after the lock is released; drops streams' pipes then too (a
/// dropped pipe may tell a spliced sink on another connection, which takes that one's lock).
#[derive(Default)]
pub(crate) struct Wakes(Vec<Waker>, Vec<Opened>);

impl Wakes {
    pub(super) fn extend(&mut self, w: impl IntoIterator<Item = Waker>) {
        self.0.extend(w);
    }
    pub(super) fn push(&mut self, w: Option<Waker>) {
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

pub(super) fn register(list: &mut Vec<Waker>, cx: &Context<'_>) {
    if !list.iter().any(|w| w.will_wake(cx.waker())) {
        list.push(cx.waker().clone());
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A client handle on the connection went away.
    pub(crate) fn drop_handle(&self) {
        let mut st = self.lock();
        st.handles -= 1;
        unlock_and_wake(st);
    }
}

impl State {
    pub(super) fn new(side: Side) -> State {
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

    /// Stream `id`'s sending side ended: the task drops its receiving side.
    pub(crate) fn finish(&mut self, id: u32) {
        self.finished.push(id);
    }

    /// The connection is gone: every stream fails, every waiter wakes.
    pub(super) fn close_all(&mut self, wakes: &mut Wakes) {
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
