//! Per-endpoint state: idle pooled connections, the multiplexed connection, health; and the
//! downstream's `max_connections` gate shared by its endpoints.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_io::ClientIo;
use sluice_thrift::MessageType;
use sluice_ttheader::str_key;
use tokio::io::AsyncReadExt;

use crate::codec::{self, ReplyDecoder};
use crate::mux::MuxConn;
use crate::{Call, ClientConfig, ConnectionError, Endpoint, Error, Limit, Reply, ReplyError};

/// An idle pooled connection is checked for a close by its server once idle this long.
const STALE_CHECK_AFTER: Duration = Duration::from_millis(100);

/// Read buffer taken when a reply starts arriving.
const READ_CHUNK: usize = 8 * 1024;

/// A pooled connection and its read buffer.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: ClientIo,
    buf: BytesMut,
    /// Reused list of buffers for the request's vectored write.
    iov: Vec<Bytes>,
    idle_since: Instant,
    /// Counts this connection among the endpoint's pooled connections while it lives.
    _live: Live,
}

/// One live pooled connection in its endpoint's count and, under `max_connections`, in the
/// downstream's (decremented when it is dropped, whichever way it goes).
#[derive(Debug)]
struct Live {
    count: Arc<AtomicUsize>,
    gate: Option<Arc<ConnGate>>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        if let Some(g) = &self.gate {
            g.open.fetch_sub(1, Ordering::Relaxed);
            g.freed.notify_one();
        }
    }
}

/// A downstream's `max_connections` and `max_pending`: pooled connections open over all its
/// endpoints, and calls waiting for one.
#[derive(Debug)]
pub(crate) struct ConnGate {
    max: usize,
    max_pending: usize,
    open: AtomicUsize,
    pending: AtomicUsize,
    /// A connection closed or went back to a pool.
    freed: tokio::sync::Notify,
    counters: Arc<sluice_resilience::Counters>,
}

impl ConnGate {
    /// `max` 0: no limit.
    pub(crate) fn new(
        max: usize,
        max_pending: usize,
        counters: Arc<sluice_resilience::Counters>,
    ) -> Self {
        Self {
            counters,
            max,
            max_pending,
            open: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            freed: tokio::sync::Notify::new(),
        }
    }

    fn try_open(&self) -> bool {
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }
}

/// A call waiting for a connection, counted while it waits.
struct Pending<'a>(&'a AtomicUsize);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection to use: one from the pool, or room for a new one.
enum Got {
    Idle(Conn),
    Room(Live),
}

/// An endpoint's connections at one moment (see [`crate::GenericClient::pool_counts`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolCounts {
    /// Pooled connections waiting for a call.
    pub idle: usize,
    /// Pooled connections carrying a call.
    pub in_use: usize,
    /// Multiplexed connections open.
    pub mux: usize,
}

#[derive(Debug)]
pub(crate) struct EndpointState {
    pub(crate) endpoint: Endpoint,
    config: Arc<ClientConfig>,
    idle: Mutex<Vec<Conn>>,
    /// Pooled connections alive, idle or carrying a call.
    live: Arc<AtomicUsize>,
    /// In-flight calls, failure run, ejection, connect backoff.
    pub(crate) health: sluice_resilience::Health,
    gate: Arc<ConnGate>,
    mux: tokio::sync::Mutex<Option<Arc<MuxConn>>>,
    decoder: ReplyDecoder,
}

/// How an exchange on a pooled connection failed.
enum Failure {
    /// Nothing of a reply arrived.
    BeforeReply(ConnectionError),
    Other(Error),
}

impl EndpointState {
    pub(crate) fn new(endpoint: Endpoint, config: Arc<ClientConfig>, gate: Arc<ConnGate>) -> Self {
        let decoder = ReplyDecoder::new(config.max_frame_size);
        Self {
            endpoint,
            config,
            idle: Mutex::new(Vec::new()),
            live: Arc::default(),
            health: sluice_resilience::Health::default(),
            gate,
            mux: tokio::sync::Mutex::new(None),
            decoder,
        }
    }

    /// Boxed: a connection is made once and used for many calls, and the dial's future
    /// (with a TLS handshake's state) inline would make every call's future, and every copy
    /// of it, a kilobyte and a half larger.
    pub(crate) async fn connect(&self) -> Result<ClientIo, Error> {
        Box::pin(crate::connect::connect(&self.config, self.endpoint.addr)).await
    }

    /// The endpoint's connections now (the multiplexed one counts while its slot holds it).
    pub(crate) fn counts(&self) -> PoolCounts {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).len();
        let live = self.live.load(Ordering::Relaxed);
        let mux = match self.mux.try_lock() {
            Ok(slot) => usize::from(slot.is_some()),
            // Being connected or replaced right now.
            Err(_) => 1,
        };
        PoolCounts {
            idle,
            in_use: live.saturating_sub(idle),
            mux,
        }
    }

    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(c) = idle.pop() {
            let idle_for = c.idle_since.elapsed();
            // A connection back in the pool a moment ago is taken as it is: servers close
            // idle connections after seconds or minutes, and under load the check would be
            // paid on every call for nothing. (A close racing with a request is a failure
            // before the reply either way, the caller's to retry.)
            if idle_for < self.config.idle_timeout
                && (idle_for < STALE_CHECK_AFTER || !closed_by_peer(&c.stream))
            {
                return Some(c);
            }
        }
        None
    }

    /// A new connection's place in the counts (`gate`: under `max_connections`).
    fn live(&self, gate: Option<Arc<ConnGate>>) -> Live {
        self.live.fetch_add(1, Ordering::Relaxed);
        Live {
            count: self.live.clone(),
            gate,
        }
    }

    /// Closes one idle pooled connection, making room under `max_connections` for another
    /// endpoint's call; false when it has none.
    pub(crate) fn close_one_idle(&self) -> bool {
        let c = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        c.is_some()
    }

    /// A pooled connection, or room for a new one; under `max_connections`, waits (as one of
    /// at most `max_pending`) for a connection to close or come back, after closing an idle
    /// one of another endpoint (`evict`) if there is one.
    async fn get(&self, idle_ok: bool, evict: &(dyn Fn() -> bool + Sync)) -> Result<Got, Error> {
        let live = |gate| self.live(gate);
        let mut waiting = None;
        loop {
            if idle_ok {
                if let Some(c) = self.take_idle() {
                    return Ok(Got::Idle(c));
                }
            }
            if self.gate.max == 0 {
                return Ok(Got::Room(live(None)));
            }
            // Registered before the checks, so a connection freed between them still wakes us.
            let freed = self.gate.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.gate.try_open() {
                return Ok(Got::Room(live(Some(self.gate.clone()))));
            }
            if evict() {
                continue;
            }
            if waiting.is_none() {
                if self.gate.pending.fetch_add(1, Ordering::Relaxed) >= self.gate.max_pending {
                    self.gate.pending.fetch_sub(1, Ordering::Relaxed);
                    self.gate
                        .counters
                        .over_max_pending
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(Error::Overloaded {
                        downstream: self.config.name.clone(),
                        limit: Limit::MaxPending(self.gate.max_pending),
                    });
                }
                waiting = Some(Pending(&self.gate.pending));
            }
            freed.await;
        }
    }

    /// `read` is how many bytes the reply took: its buffer is still in use by the reply.
    fn put_idle(&self, mut c: Conn, read: usize) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.config.max_idle_per_endpoint {
            c.idle_since = Instant::now();
            // An idle pooled connection keeps no read buffer; the next reply takes one.
            sluice_io::give_back_read_buf_in_use(std::mem::take(&mut c.buf), read);
            idle.push(c);
            drop(idle);
            if self.gate.max != 0 {
                self.gate.freed.notify_one();
            }
        }
    }

    /// One request on a pooled connection, one in flight per connection. A reused connection
    /// that fails while the request is written (the server closed it while idle) is replaced
    /// by a new one once: the server cannot have seen the whole request. Any other failure is
    /// the caller's to retry or not.
    pub(crate) async fn call_pooled(
        &self,
        call: &mut Call,
        seq: i32,
        per_try: Option<Duration>,
        evict: &(dyn Fn() -> bool + Sync),
    ) -> Result<Option<Reply>, Error> {
        let mut idle_ok = true;
        loop {
            let (conn, reused) = self.acquire(idle_ok, evict).await?;
            match self.exchange(conn, call, seq, per_try).await {
                Ok(r) => return Ok(r),
                Err(Failure::BeforeReply(why @ ConnectionError::Write(_))) if reused => {
                    tracing::debug!(addr = %self.endpoint.addr, %why, "pooled connection went stale; sending on a new one");
                    idle_ok = false;
                }
                Err(Failure::BeforeReply(why)) => return Err(self.io_error(why)),
                Err(Failure::Other(e)) => return Err(e),
            }
        }
    }

    /// A pooled connection (`true`: reused), or a new one in the room there is; under
    /// `max_connections` it waits for room (boxed, so that the wait does not grow every call's
    /// future). Its own future, so that nothing of this step stays in the call's future while
    /// the exchange runs.
    async fn acquire(
        &self,
        idle_ok: bool,
        evict: &(dyn Fn() -> bool + Sync),
    ) -> Result<(Conn, bool), Error> {
        if idle_ok {
            if let Some(c) = self.take_idle() {
                return Ok((c, true));
            }
        }
        let live = if self.gate.max == 0 {
            self.live(None)
        } else {
            match Box::pin(self.get(idle_ok, evict)).await? {
                Got::Idle(c) => return Ok((c, true)),
                Got::Room(live) => live,
            }
        };
        let conn = Conn {
            stream: self.connect().await?,
            buf: BytesMut::new(),
            iov: Vec::with_capacity(2),
            idle_since: Instant::now(),
            _live: live,
        };
        Ok((conn, false))
    }

    fn io_error(&self, source: ConnectionError) -> Error {
        Error::Io {
            downstream: self.config.name.clone(),
            addr: self.endpoint.addr,
            source,
        }
    }

    fn protocol_error(&self, source: ReplyError) -> Error {
        Error::Protocol {
            downstream: self.config.name.clone(),
            addr: self.endpoint.addr,
            source,
        }
    }

    async fn exchange(
        &self,
        mut conn: Conn,
        call: &mut Call,
        seq: i32,
        per_try: Option<Duration>,
    ) -> Result<Option<Reply>, Failure> {
        let transport = codec::effective(self.config.transport, call.codec);
        let head = codec::encode_request(call, transport, seq, false).map_err(|e| {
            Failure::Other(Error::Encode {
                downstream: self.config.name.clone(),
                source: e,
            })
        })?;
        conn.iov.push(head);
        conn.iov.push(call.args.clone());
        if let Err(e) = sluice_io::write_all_vectored(&mut conn.stream, &mut conn.iov).await {
            return Err(Failure::BeforeReply(ConnectionError::Write(e)));
        }
        if call.msg_type == MessageType::Oneway {
            // No reply comes; like Kitex, do not reuse the connection (a binary-generic server
            // may still answer, and that answer must not be read as the next call's reply).
            return Ok(None);
        }
        conn.buf.clear();
        let mut read = 0usize;
        loop {
            match self.decoder.decode(&mut conn.buf, transport) {
                Ok(Some(raw)) => {
                    if raw.reply.msg_type == MessageType::Reply
                        && (raw.envelope_seq != seq || raw.frame_seq != seq)
                    {
                        return Err(Failure::Other(self.protocol_error(
                            ReplyError::SeqMismatch {
                                got: raw.envelope_seq,
                                want: seq,
                            },
                        )));
                    }
                    if raw.reply.msg_type == MessageType::Reply
                        && raw.method != call.method.as_bytes()
                    {
                        return Err(Failure::Other(self.protocol_error(
                            ReplyError::MethodMismatch {
                                got: String::from_utf8_lossy(&raw.method).into_owned(),
                                want: call.method.clone(),
                            },
                        )));
                    }
                    let retire = raw.reply.header.str_kvs.get(str_key::CONN_RESET).is_some();
                    if !retire && conn.buf.is_empty() {
                        self.put_idle(conn, read);
                    }
                    return Ok(Some(raw.reply));
                }
                Ok(None) => {}
                Err(reason) => return Err(Failure::Other(self.protocol_error(reason))),
            }
            // Idle connections hold no buffer: take a real one before reading, or the first read
            // would fill only a small default reservation (and a Buffered reply, whose length
            // is unknown until parsed, would grow it in many small reads).
            if conn.buf.capacity() == 0 {
                conn.buf = sluice_io::take_read_buf(READ_CHUNK);
            } else if conn.buf.capacity() - conn.buf.len() < 1024 {
                conn.buf.reserve(READ_CHUNK);
            }
            // The per-try timeout covers the wait for the reply's first byte only (the first
            // read after the request: a read that returns bytes ends the wait); once the reply
            // started, it is read to its end (or the call's deadline). Boxed: only routes with
            // a per-try timeout pay for the timer's state.
            let got = match per_try {
                Some(within) if conn.buf.is_empty() => {
                    match Box::pin(tokio::time::timeout(
                        within,
                        conn.stream.read_buf(&mut conn.buf),
                    ))
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => {
                            return Err(Failure::BeforeReply(ConnectionError::TryTimeout(within)))
                        }
                    }
                }
                _ => conn.stream.read_buf(&mut conn.buf).await,
            };
            match got {
                Ok(0) if conn.buf.is_empty() => {
                    return Err(Failure::BeforeReply(ConnectionError::ClosedBeforeReply))
                }
                Ok(0) => {
                    return Err(Failure::Other(
                        self.io_error(ConnectionError::ClosedMidReply),
                    ))
                }
                Ok(n) => read += n,
                Err(e) if conn.buf.is_empty() => {
                    return Err(Failure::BeforeReply(ConnectionError::ResetBeforeReply(e)))
                }
                Err(e) => return Err(Failure::Other(self.io_error(ConnectionError::Read(e)))),
            }
        }
    }

    /// One request on the endpoint's multiplexed connection.
    pub(crate) async fn call_mux(
        &self,
        call: &mut Call,
        seq: i32,
        per_try: Option<Duration>,
    ) -> Result<Option<Reply>, Error> {
        let conn = {
            let mut slot = self.mux.lock().await;
            match slot.as_ref() {
                Some(c) if c.is_usable() => c.clone(),
                _ => {
                    let stream = self.connect().await?;
                    let c = MuxConn::start(stream, self.config.clone(), self.endpoint.addr);
                    *slot = Some(c.clone());
                    c
                }
            }
        };
        conn.call(call, seq, per_try).await
    }
}

/// True when an idle connection was closed or reset by the server (or it sent something
/// unasked), so it must not carry a request. `try_read` asks the reactor's readiness first and
/// reads only when the socket turned readable: on the hot path no system call is made and no
/// waker registered. Over TLS the check is left out: a server may send TLS records (session
/// tickets) on an idle connection, which says nothing about its state.
fn closed_by_peer(stream: &ClientIo) -> bool {
    match stream {
        ClientIo::Tcp(s) => {
            let mut probe = [0u8; 1];
            !matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
        ClientIo::Tls(_) => false,
    }
}
