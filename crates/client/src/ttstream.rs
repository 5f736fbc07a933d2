//! The TTStream client: streams multiplexed on a few connections per endpoint.
//!
//! Like Kitex's default mux pool (kitex-wire.md 4.5), each endpoint gets up to
//! [`CONNS_PER_ENDPOINT`] connections used in turn; stream ids come from one client-wide counter
//! starting at 1 (0 is reserved), so they are unique on every connection. A reader task per
//! connection routes frames to streams by id; frames of unknown or finished streams are ignored.
//! What the user sends is encoded in the user's own task (or, for a forwarded stream, in the
//! upstream connection's reader) and queued on the connection's writer. A closed connection
//! ends each of its streams with a reset.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use sluice_io::ClientIo;
use sluice_io::QueueTx;
use sluice_stream::{
    ClientStream, Closed, Event, EventSink, Metadata, PipeTx, Reset, ResetCode, StreamEnd,
};
use sluice_thrift::{ApplicationException, ExceptionKind};
use sluice_ttheader::{str_key, Limits};
use sluice_ttstream::{FrameDecoder, FrameType, Side, Step, Stream as StreamState, StreamFrame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use sluice_resilience::{Balance, Counters, Health, InFlightLimit, Picker, StreamLoad};

use crate::{ClientConfig, Error};

/// Connections per endpoint.
pub const CONNS_PER_ENDPOINT: usize = 2;

/// What a new stream needs.
#[derive(Debug, Clone, Default)]
pub struct OpenStream {
    /// Method (integer key 9 on every frame).
    pub method: String,
    /// IDL service name, sent as `isn` on the Header frame when not empty and not already in
    /// `headers`.
    pub service: String,
    /// The consistent-hash key's hash, for [`Balance::ConsistentHash`].
    pub hash: Option<u64>,
    /// Header-frame string keys (metainfo, user headers), in order.
    pub headers: Metadata,
}

struct Slot {
    to_user: Arc<PipeTx>,
    state: Arc<Mutex<StreamState>>,
}

type Streams = Arc<Mutex<HashMap<i32, Slot>>>;

struct StreamConn {
    tx: QueueTx,
    streams: Streams,
    alive: Arc<AtomicBool>,
    /// The reader and writer, cancelled once neither this connection's handle nor any of its
    /// streams is left.
    tasks: Arc<sluice_io::TaskGroup>,
}

struct Endpoint {
    addr: SocketAddr,
    conns: tokio::sync::Mutex<Vec<Arc<StreamConn>>>,
    next: AtomicUsize,
    /// Streams open on it (p2c reads them), connect backoff, ejection.
    health: Arc<Health>,
}

impl Endpoint {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            conns: tokio::sync::Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            health: Arc::default(),
        }
    }
}

/// A client's endpoints at one moment, with the picker over them.
struct EndpointSet {
    endpoints: Vec<Arc<Endpoint>>,
    picker: Picker,
}

impl EndpointSet {
    fn new(endpoints: Vec<Arc<Endpoint>>, weights: &[crate::Endpoint], balance: Balance) -> Self {
        let weighted: Vec<_> = weights.iter().map(|e| (e.addr, e.weight)).collect();
        Self {
            picker: Picker::new(balance, &weighted),
            endpoints,
        }
    }
}

/// A TTStream client for one downstream.
pub struct TTStreamClient {
    config: Arc<ClientConfig>,
    /// Replaced whole by [`set_endpoints`](Self::set_endpoints); a stream keeps the
    /// connection it opened on.
    endpoints: arc_swap::ArcSwap<EndpointSet>,
    next_id: AtomicI32,
    in_flight: InFlightLimit,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for TTStreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TTStreamClient")
            .field("downstream", &self.config.name)
            .finish()
    }
}

/// A frame as its head (cut from the thread's head arena) and its payload `Bytes`: no
/// allocation, no payload copy. Not encodable: logged and dropped.
fn frame_chunks(f: StreamFrame) -> impl Iterator<Item = Bytes> {
    let payload = f.payload.clone();
    sluice_io::frame_chunks("TTStream frame", f.head_len(), payload, |h| {
        f.encode_head(h)
    })
    .into_iter()
    .flatten()
}

impl TTStreamClient {
    /// A client; connections are made on first use.
    pub fn new(config: ClientConfig) -> Self {
        let shared = sluice_resilience::Shared::new(config.max_in_flight);
        Self::with_shared(config, shared)
    }

    /// A client whose counts and in-flight limit are `shared` with the downstream's other
    /// clients (its own `max_in_flight` is not read: the limit's is).
    pub fn with_shared(config: ClientConfig, shared: sluice_resilience::Shared) -> Self {
        let sluice_resilience::Shared {
            counters,
            in_flight,
        } = shared;
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| Arc::new(Endpoint::new(e.addr)))
            .collect();
        let set = EndpointSet::new(endpoints, &config.endpoints, config.balance);
        Self {
            in_flight,
            config: Arc::new(config),
            endpoints: arc_swap::ArcSwap::from_pointee(set),
            next_id: AtomicI32::new(0),
            counters,
        }
    }

    /// Replaces the endpoints (discovery found others). An endpoint that stays keeps its
    /// connections and its health; streams open on a removed one run to their end, and its
    /// connections close once their last stream is done.
    pub fn set_endpoints(&self, endpoints: &[crate::Endpoint]) {
        let old = self.endpoints.load();
        let new = endpoints
            .iter()
            .map(|e| match old.endpoints.iter().find(|o| o.addr == e.addr) {
                Some(o) => o.clone(),
                None => Arc::new(Endpoint::new(e.addr)),
            })
            .collect();
        self.endpoints.store(Arc::new(EndpointSet::new(
            new,
            endpoints,
            self.config.balance,
        )));
    }

    /// The endpoints streams are opened on now.
    pub fn endpoint_addrs(&self) -> Vec<SocketAddr> {
        self.endpoints
            .load()
            .endpoints
            .iter()
            .map(|e| e.addr)
            .collect()
    }

    /// Streams open now (counted only under a `max_in_flight`).
    pub fn in_flight(&self) -> usize {
        self.in_flight.current()
    }

    fn next_stream_id(&self) -> i32 {
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if id != 0 {
                return id;
            }
        }
    }

    async fn connection(&self, ep: &Endpoint) -> Result<Arc<StreamConn>, Error> {
        let mut conns = ep.conns.lock().await;
        conns.retain(|c| c.alive.load(Ordering::Acquire));
        if conns.len() >= CONNS_PER_ENDPOINT {
            let i = ep.next.fetch_add(1, Ordering::Relaxed) % conns.len();
            return Ok(conns[i].clone());
        }
        // Boxed: connecting happens once per connection, and inline its future would make
        // every stream's opening larger.
        let stream = Box::pin(crate::connect::connect(&self.config, ep.addr)).await?;
        let conn = Arc::new(start(stream, ep.addr, self.config.max_frame_size));
        conns.push(conn.clone());
        Ok(conn)
    }

    /// Opens a stream: sends its Header frame and returns the handle. An endpoint that cannot
    /// be connected to is put in backoff and the next one tried; nothing else is retried (a
    /// stream is never sent twice).
    pub async fn open(&self, req: OpenStream) -> Result<ClientStream, Error> {
        let admitted = crate::admit(&self.in_flight, &self.counters, &self.config.name)?;
        let mut last = None;
        let mut tried = Vec::new();
        while tried.len() < crate::MAX_ATTEMPTS {
            let (ep, index) = {
                let set = self.endpoints.load();
                let now = sluice_resilience::LazyNow::new();
                match set
                    .picker
                    .pick(&set.endpoints, |e| &*e.health, req.hash, &tried, &now)
                {
                    Some(i) => (set.endpoints[i].clone(), i),
                    None => break,
                }
            };
            match self.connection(&ep).await {
                Ok(conn) => {
                    ep.health.succeeded();
                    let load = StreamLoad::new(admitted, ep.health.clone());
                    return Ok(self.open_on(conn, req, load).await);
                }
                Err(e) => {
                    self.connect_failed(&ep, &e);
                    self.counters
                        .retried(sluice_resilience::RetryReason::Refused);
                    tried.push(index);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(Error::NoEndpoint {
            downstream: self.config.name.clone(),
        }))
    }

    /// A refused connect: backoff, and a failure towards ejection.
    fn connect_failed(&self, ep: &Arc<Endpoint>, e: &Error) {
        let now = sluice_resilience::now();
        ep.health.back_off(now, self.config.failure_backoff);
        let set = self.endpoints.load();
        if let Some(i) = set.endpoints.iter().position(|x| Arc::ptr_eq(x, ep)) {
            let what = self
                .config
                .outlier
                .failed(&set.endpoints, |x| &*x.health, i, now);
            self.counters.ejection(what);
            if let sluice_resilience::Ejected::For(length) = what {
                tracing::warn!(downstream = %self.config.name, endpoint = %ep.addr, ?length, error = %e, "ejecting endpoint after consecutive failures");
            }
        }
    }

    async fn open_on(
        &self,
        conn: Arc<StreamConn>,
        req: OpenStream,
        load: StreamLoad,
    ) -> ClientStream {
        let id = self.next_stream_id();
        let mut state = StreamState::new(Side::Client, id).expect("stream id is never 0");
        let _ = state.send(FrameType::Header);
        let state = Arc::new(Mutex::new(state));
        let has_isn = req.headers.get(str_key::IDL_SERVICE_NAME).is_some();
        let service = if has_isn { "" } else { req.service.as_str() };
        let header = StreamFrame::client_header(id, req.method.clone(), service, req.headers.0);
        let sink = Arc::new(ClientSink {
            id,
            method: Bytes::from(req.method),
            state: state.clone(),
            out: conn.tx.clone(),
            streams: Arc::downgrade(&conn.streams),
            _tasks: conn.tasks.clone(),
            _load: load,
        });
        let (client, to_user) = ClientStream::new(sink);
        // A slot replaced after the ids wrapped around is dropped after the lock: dropping it
        // may run sinks that lock the map.
        let replaced = conn
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                Slot {
                    to_user: Arc::new(to_user),
                    state,
                },
            );
        drop(replaced);
        // The Header goes out before anything the stream sends: both are queued in order.
        std::future::poll_fn(|cx| conn.tx.poll_ready(cx)).await;
        let _ = conn.tx.push(frame_chunks(header));
        client
    }
}

/// Starts a connection's reader and writer tasks.
fn start(stream: ClientIo, addr: SocketAddr, max_frame_size: usize) -> StreamConn {
    match stream {
        // TCP keeps its owned halves; only TLS pays for the shared halves' lock.
        ClientIo::Tcp(tcp) => {
            let (rd, wr) = tcp.into_split();
            start_halves(rd, wr, addr, max_frame_size)
        }
        ClientIo::Tls(tls) => {
            let (rd, wr) = tokio::io::split(*tls);
            start_halves(rd, wr, addr, max_frame_size)
        }
    }
}

fn start_halves<R, W>(mut rd: R, wr: W, addr: SocketAddr, max_frame_size: usize) -> StreamConn
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, writer) = sluice_io::out_queue(sluice_io::OUT_QUEUE_LIMIT);
    let streams: Streams = Arc::default();
    let alive = Arc::new(AtomicBool::new(true));
    let tasks = sluice_io::TaskGroup::new();
    {
        let alive = alive.clone();
        tasks.spawn(async move {
            let _ = writer.run(wr).await;
            alive.store(false, Ordering::Release);
        });
    }
    {
        let streams = streams.clone();
        let alive = alive.clone();
        tasks.spawn(async move {
            let decoder = FrameDecoder::new(Limits {
                max_frame_size,
                ..Limits::default()
            });
            let mut buf = BytesMut::new();
            'read: loop {
                loop {
                    let mut f = match decoder.decode(&mut buf) {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(%addr, error = %e, "bad TTStream frame from downstream; closing the connection");
                            break 'read;
                        }
                    };
                    let (to_user, step) = {
                        let map = streams.lock().unwrap_or_else(|e| e.into_inner());
                        let Some(slot) = map.get(&f.stream_id) else {
                            continue;
                        };
                        let step = slot
                            .state
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .recv(f.kind);
                        (slot.to_user.clone(), step)
                    };
                    let ev = match step {
                        Ok(Step::Ignored) => continue,
                        Err(e) => {
                            tracing::debug!(%addr, stream = f.stream_id, error = %e, "frame not allowed in this stream state");
                            continue;
                        }
                        Ok(_) => match f.kind {
                            FrameType::Header => Event::Headers(Metadata(f.take_str_kvs())),
                            FrameType::Data => Event::Message(f.payload.clone()),
                            FrameType::Trailer => {
                                let error = f.exception().ok().flatten().map(|ex| {
                                    sluice_stream::ErrorStatus {
                                        code: sluice_stream::StatusCode::TTStream(ex.kind.0),
                                        message: ex.message,
                                    }
                                });
                                Event::End(StreamEnd {
                                    error,
                                    trailers: Metadata(f.take_str_kvs()),
                                })
                            }
                            FrameType::Rst => {
                                let ex = f.exception().ok().flatten();
                                Event::Reset(Reset {
                                    code: ex.as_ref().map_or(ResetCode::Gone, |e| {
                                        ResetCode::TTStream(e.kind.0)
                                    }),
                                    message: ex.map_or_else(|| "rst".to_owned(), |e| e.message),
                                    cancel_path: f.cancel_path().map(str::to_owned),
                                })
                            }
                            FrameType::Meta => continue,
                        },
                    };
                    let ends = matches!(ev, Event::End(_) | Event::Reset(_));
                    // Awaiting is the backpressure: a slow reader of one stream stops this
                    // connection's reader (TTStream has no per-stream flow control).
                    let _ = to_user.send(ev).await;
                    if ends {
                        // Dropped after the lock: dropping a slot may run sinks that lock it.
                        let slot = streams
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&f.stream_id);
                        drop(slot);
                    }
                }
                sluice_io::reserve_read(&mut buf, sluice_io::STREAM_READ_CHUNK);
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            alive.store(false, Ordering::Release);
            // Dropping the senders ends every open stream with a reset (after the lock:
            // dropping a slot may run sinks that lock it).
            let slots: Vec<Slot> = streams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain()
                .map(|(_, slot)| slot)
                .collect();
            drop(slots);
        });
    }
    StreamConn {
        tx,
        streams,
        alive,
        tasks: Arc::new(tasks),
    }
}

/// The outgoing side of one client stream: encodes the user's events into frames, keeping the
/// client's side of the stream state, and queues them on the connection's writer.
struct ClientSink {
    id: i32,
    method: Bytes,
    /// Shared with the connection's reader. Locked for a whole push, so that events pushed from
    /// two tasks at once (a forwarded message and a deadline's reset) leave in the order they
    /// were encoded.
    state: Arc<Mutex<StreamState>>,
    out: QueueTx,
    /// Weak: the map holds this stream's incoming pipe, which a forwarder may have spliced into
    /// a sink that holds this one.
    streams: Weak<Mutex<HashMap<i32, Slot>>>,
    /// Keeps the connection's reader and writer running while this stream lives.
    _tasks: Arc<sluice_io::TaskGroup>,
    /// The stream's place under `max_in_flight` and on its endpoint's count.
    _load: StreamLoad,
}

/// Whether the state machine lets the client send `kind` now (and records it).
fn may_send(state: &mut StreamState, kind: FrameType) -> bool {
    matches!(state.send(kind), Ok(s) if s != Step::Ignored)
}

impl ClientSink {
    fn forget(&self) {
        if let Some(streams) = self.streams.upgrade() {
            // Taken out under the lock, dropped after it: dropping the slot may run sinks.
            let slot = streams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.id);
            drop(slot);
        }
    }

    fn queue(&self, frames: Vec<StreamFrame>) -> Result<(), Closed> {
        let mut bufs = Vec::with_capacity(frames.len() * 2);
        for f in frames {
            bufs.extend(frame_chunks(f));
        }
        self.out.push(bufs).map_err(|_| Closed)
    }

    /// An Rst with `code` and `message` (nothing once the stream has ended), followed by a
    /// Trailer when `then_trailer` is set and the client had not half-closed yet.
    fn reset_frames(
        &self,
        state: &mut StreamState,
        code: i32,
        message: String,
        cancel_path: Option<&str>,
        then_trailer: bool,
    ) -> Vec<StreamFrame> {
        let half_closed = state.client_done();
        // An ended stream takes no Rst: the state machine ignores it.
        if !may_send(state, FrameType::Rst) {
            return Vec::new();
        }
        let ex = ApplicationException::new(ExceptionKind(code), message);
        let mut frames = vec![StreamFrame::rst(
            self.id,
            self.method.clone(),
            Some(&ex),
            cancel_path,
        )];
        if then_trailer && !half_closed {
            frames.push(StreamFrame::trailer(self.id, self.method.clone()));
        }
        frames
    }
}

impl EventSink for ClientSink {
    fn push(&self, ev: Event) -> Result<(), Closed> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match ev {
            Event::Message(m) => {
                if !may_send(&mut state, FrameType::Data) {
                    return Ok(());
                }
                // One Data frame: its head and payload go on the queue without building a list.
                let (id, method, len) = (self.id, &self.method[..], m.len());
                let chunks =
                    sluice_io::frame_chunks("TTStream Data frame", 64 + method.len(), m, |h| {
                        sluice_ttstream::encode_data_head(id, method, len, h)
                    });
                match chunks {
                    Some(chunks) => self.out.push(chunks).map_err(|_| Closed),
                    None => Ok(()),
                }
            }
            Event::HalfClose => {
                if !may_send(&mut state, FrameType::Trailer) {
                    return Ok(());
                }
                self.queue(vec![StreamFrame::trailer(self.id, self.method.clone())])
            }
            Event::Reset(r) => {
                let code = r.code.to_ttstream();
                // Kitex clients follow an Rst with a Trailer for peers that wait for one.
                let frames =
                    self.reset_frames(&mut state, code, r.message, r.cancel_path.as_deref(), true);
                let result = self.queue(frames);
                // Forgetting the stream may run other sinks: not under the state's lock.
                drop(state);
                self.forget();
                result
            }
            Event::Headers(_) | Event::End(_) => Ok(()),
        }
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.out.poll_ready(cx)
    }

    fn release(&self) {
        // The user dropped the stream: cancel it downstream unless it already ended.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let frames = self.reset_frames(
            &mut state,
            12007,
            "stream dropped by the caller".into(),
            None,
            false,
        );
        let _ = self.queue(frames);
        drop(state);
        self.forget();
    }
}
