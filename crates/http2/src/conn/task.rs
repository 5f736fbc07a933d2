//! The connection task ([`Connection`]): the socket, each stream's receiving side (kept
//! without a lock), and the loop that reads, hands on, times out and writes.
//!
//! The task's reading of frames is `recv`, its answers to control frames `control`, its
//! writing `queue`; they implement [`Connection`] further without being imported here.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_h2wire::frame::{self, Reason};
use sluice_h2wire::{hpack, FrameDecoder, DEFAULT_WINDOW, MAX_WINDOW, PREFACE};
use sluice_stream::{PipeTx, StatusCode, StreamEnd};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::status::Code;

use super::role::Role;
use super::state::{Chunk, IdMap, Shared, Side, State, Wakes};

/// How long a closing connection keeps trying to write what is queued (GOAWAY included).
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// Read size: as much as has arrived, up to several DATA frames.
const READ_CHUNK: usize = sluice_io::STREAM_READ_CHUNK;

/// Frames read per poll before the task lets others run.
const READS_PER_POLL: usize = 16;

/// Most frames this side may owe the peer in answer to its own frames (PING and SETTINGS
/// acknowledgements, RST_STREAM and refusals of streams) while they wait to be written. A peer
/// that keeps asking without reading the answers would otherwise grow the queue without bound,
/// now that reading does not wait for writing; past this the connection ends with
/// ENHANCE_YOUR_CALM (as h2 and nghttp2 end PING and SETTINGS floods).
pub(crate) const MAX_PENDING_REPLIES: usize = 1024;

/// Streams a client may open and reset in a burst, and per second after it. Each costs a
/// handler (and, in a proxy, a downstream stream) for next to nothing on the client's side:
/// beyond this the connection is ended (the "rapid reset" attack, CVE-2023-44487).
pub(super) const RESET_BURST: f64 = 1000.0;
pub(super) const RESETS_PER_SECOND: f64 = 500.0;

/// One side's settings and limits.
#[derive(Debug, Clone)]
pub(crate) struct ConnConfig {
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
}

impl ConnConfig {
    pub(super) fn stream_window(&self) -> u32 {
        self.initial_stream_window.clamp(DEFAULT_WINDOW, MAX_WINDOW)
    }

    pub(super) fn connection_window(&self) -> u32 {
        self.initial_connection_window
            .clamp(DEFAULT_WINDOW, MAX_WINDOW)
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
    pub(super) fn protocol(reason: Reason, what: impl Into<String>) -> Http2Error {
        Http2Error::Protocol {
            reason,
            what: what.into(),
        }
    }
}

/// A stream's receiving side, kept by the task.
pub(super) struct Recv {
    pub(super) to_user: PipeTx,
    /// Bytes of a message split across DATA frames.
    pub(super) partial: BytesMut,
    /// What the peer may still send on this stream.
    pub(super) window: i64,
    /// Bytes taken by the user and not yet announced in WINDOW_UPDATE.
    pub(super) unacked: u32,
    /// Bytes received whose window waits until they are decoded and handed on.
    pub(super) uncredited: u32,
    /// Decoding stopped because the user was not ready: `held` and `partial` wait, and the
    /// stream is in `Connection::withheld`.
    pub(super) paused: bool,
    /// A message decoded before the user fell behind; it goes first.
    pub(super) held: Option<Bytes>,
    /// How the peer ended its side, to be told once every message before it is out.
    pub(super) ending: Option<Ending>,
    /// Server: the handler stopped reading; what arrives is decoded and dropped.
    pub(super) user_gone: bool,
    /// END_STREAM received.
    pub(super) remote_ended: bool,
    /// Messages may carry the compressed flag (`grpc-encoding` set).
    pub(super) compressed_ok: bool,
    /// Client: where the response is.
    pub(super) response: ResponseState,
    pub(super) deadline: Option<Instant>,
}

impl Recv {
    pub(super) fn new(
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
pub(super) enum Ending {
    /// Server: the client half-closed.
    HalfClose,
    /// Client: the response's trailers.
    Trailers(StreamEnd),
    /// Client: END_STREAM on DATA, without trailers.
    NoTrailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ResponseState {
    /// Waiting for the response HEADERS (client), or a server's request side.
    Head,
    /// Headers in; messages and trailers follow.
    Body,
}

/// A header block being put together from HEADERS and CONTINUATION frames.
pub(super) struct PartialBlock {
    pub(super) stream: u32,
    /// CONTINUATION frames so far.
    pub(super) frames: usize,
    pub(super) end_stream: bool,
    pub(super) self_dependent: bool,
    pub(super) block: BytesMut,
}

/// What the engine keeps for the end it plays beyond the streams: a server's last stream,
/// graceful shutdown and reset budget. (What a server *does* with a request is its
/// [`Role`]'s.)
pub(super) enum EndState {
    Server {
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
pub(super) type Closing = (Result<(), Http2Error>, Pin<Box<tokio::time::Sleep>>);

/// The socket's side of one connection.
pub(crate) struct Connection<T, R> {
    pub(super) io: T,
    pub(super) peer: SocketAddr,
    pub(super) shared: Arc<Shared>,
    pub(super) cfg: ConnConfig,
    /// The gRPC end this connection serves: the engine's calls out of HTTP/2.
    pub(super) role: R,
    pub(super) end: EndState,
    pub(super) buf: BytesMut,
    pub(super) frames: FrameDecoder,
    pub(super) hpack: hpack::Decoder,
    pub(super) streams: IdMap<Recv>,
    pub(super) withheld: Vec<u32>,
    pub(super) recv_conn_window: i64,
    pub(super) conn_unacked: u32,
    pub(super) partial_block: Option<PartialBlock>,
    /// The preface has been read (server).
    pub(super) preface_read: bool,
    /// The peer's first SETTINGS arrived.
    pub(super) settings_received: bool,
    pub(super) handshake_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Output taken from the queue and not yet written.
    pub(super) writing: Vec<Chunk>,
    /// Written part of `writing`: whole chunks, then bytes of the next.
    pub(super) wpos: usize,
    pub(super) woff: usize,
    pub(super) writing_bytes: usize,
    /// Frames in `writing` that answer the peer's (see [`MAX_PENDING_REPLIES`]).
    pub(super) writing_replies: usize,
    /// A stream was refused or reset since the pending answers were last checked.
    pub(super) refused: bool,
    /// Reading stopped (EOF, or closing).
    pub(super) read_done: bool,
    /// The peer closed its side (EOF or reset).
    pub(super) peer_closed: bool,
    /// Closing: everything queued is written and the write side shut down.
    pub(super) flushed: bool,
    /// The connection is closing: write what is queued, then end with this.
    pub(super) closing: Option<Closing>,
    /// When the last read brought bytes, and the idle timer (server, with an idle timeout).
    pub(super) last_read: tokio::time::Instant,
    pub(super) idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Server: how long the shutdown PING may take before the final GOAWAY goes anyway.
    pub(super) shutdown_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Client: the earliest deadline of a stream, and a timer set to it.
    pub(super) next_deadline: Option<Instant>,
    pub(super) timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A new stream brought the earliest deadline forward.
    pub(super) rearm: bool,
}

impl<T, R> Drop for Connection<T, R> {
    fn drop(&mut self) {
        // Dropped before it ended (a drain deadline passed): every stream fails now instead of
        // waiting on a connection nobody drives.
        let mut wakes = Wakes::default();
        self.shared.lock().close_all(&mut wakes);
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin, R: Role> Connection<T, R> {
    /// A connection playing `role`, and the handle its streams are opened and fed through.
    pub(crate) fn new(io: T, peer: SocketAddr, cfg: ConnConfig, role: R) -> (Self, Arc<Shared>) {
        let mut state = State::new(R::SIDE);
        if R::SIDE == Side::Client {
            state.push_bytes(Bytes::from_static(PREFACE));
        }
        let mut settings = Vec::with_capacity(64);
        cfg.settings(R::SIDE).encode(&mut settings);
        let extra = cfg.connection_window() - DEFAULT_WINDOW;
        if extra > 0 {
            settings.extend_from_slice(&frame::window_update(0, extra));
        }
        state.push_bytes(Bytes::from(settings));
        if R::SIDE == Side::Client {
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
            .filter(|_| R::SIDE == Side::Server)
            .map(|t| Box::pin(tokio::time::sleep(t)));
        let conn = Connection {
            io,
            peer,
            shared: shared.clone(),
            frames: FrameDecoder::new(cfg.max_frame_size),
            hpack: hpack::Decoder::new(hpack::DEFAULT_TABLE_SIZE),
            recv_conn_window: i64::from(cfg.connection_window()),
            preface_read: R::SIDE == Side::Client,
            cfg,
            role,
            end: match R::SIDE {
                Side::Server => EndState::Server {
                    last_stream: 0,
                    goaway_sent: false,
                    final_goaway: None,
                    reset_budget: RESET_BURST,
                    reset_stamp: Instant::now(),
                },
                Side::Client => EndState::Client,
            },
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
        if self.buf.is_empty() && self.buf.capacity() > 0 && self.streams.is_empty() {
            // An idle connection keeps no read buffer; one with a stream still receiving does,
            // for the rest of that stream is on its way (a unary call's response comes in two
            // or three reads, and taking a buffer for each cost an allocation each). (Giving
            // it to the thread's stock even while its messages are still being forwarded, to
            // be reused once they are gone, cost more instructions per call in measurement
            // than allocating a new one.)
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

    /// Whether the connection is done (nothing left to serve and no one to serve it for); if
    /// so it takes no new stream from now on (decided under the lock an open takes).
    fn close_if_done(&self) -> bool {
        let mut st = self.shared.lock();
        let idle = self.streams.is_empty() && st.streams.is_empty() && st.opened.is_empty();
        let done = match &self.end {
            EndState::Server { final_goaway, .. } => {
                idle && (self.read_done || final_goaway.is_some())
            }
            EndState::Client => self.read_done || (idle && (st.handles == 0 || st.going_away)),
        };
        if done {
            st.closed = true;
            st.going_away = true;
        }
        done
    }

    /// Ends the connection with an error: GOAWAY if it is a protocol error, every stream told.
    pub(super) fn fail(&mut self, e: Http2Error) {
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

    pub(super) fn last_peer_stream(&self) -> u32 {
        match &self.end {
            EndState::Server { last_stream, .. } => *last_stream,
            EndState::Client => 0,
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
            self.start_shutdown();
        }
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
                StreamEnd::error(
                    StatusCode::Grpc(Code::DEADLINE_EXCEEDED.as_u32()),
                    "deadline exceeded",
                ),
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
}

/// A connection future: polls the connection until it ends.
pub(crate) async fn run<T: AsyncRead + AsyncWrite + Unpin, R: Role>(
    mut conn: Connection<T, R>,
) -> Result<(), Http2Error> {
    std::future::poll_fn(|cx| conn.poll(cx)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::role::{Counted, HeaderBlock, Opening};
    use sluice_h2wire::frame::{flag, kind};
    use sluice_stream::{pipe, Event, PipeRx, CHANNEL_DEPTH};
    use tokio::io::AsyncWriteExt;

    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = frame::Head::encode(payload.len(), ty, flags, stream).to_vec();
        f.extend_from_slice(payload);
        f
    }

    /// A server end whose requests all go to one pipe the test reads.
    struct OnePipe(Arc<Mutex<Option<PipeRx>>>);

    impl Role for OnePipe {
        const SIDE: Side = Side::Server;

        fn open(&mut self, shared: &Arc<Shared>, block: HeaderBlock) -> Opening {
            shared.lock().add_stream(block.stream, Bytes::new());
            let (tx, rx) = pipe(CHANNEL_DEPTH);
            *self.0.lock().unwrap() = Some(rx);
            Opening::Accept {
                to_user: tx,
                compressed_ok: false,
                end_stream: false,
            }
        }

        fn abort(_: &Shared, _: u32, _: &crate::status::Status) {}

        fn count(&self, _: Counted) {}
    }

    /// A server connection whose requests all go to one pipe the test reads.
    fn server(io: tokio::io::DuplexStream, window: u32) -> Arc<Mutex<Option<PipeRx>>> {
        let slot: Arc<Mutex<Option<PipeRx>>> = Arc::default();
        let cfg = ConnConfig {
            max_concurrent_streams: 10,
            initial_stream_window: window,
            initial_connection_window: window,
            max_frame_size: frame::DEFAULT_MAX_FRAME_SIZE,
            max_header_list_size: 4096,
            max_message_size: 1 << 20,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: None,
        };
        let role = OnePipe(slot.clone());
        let (conn, _) = Connection::new(io, "127.0.0.1:1".parse().unwrap(), cfg, role);
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
