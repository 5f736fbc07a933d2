//! Per-endpoint state: idle pooled connections, the multiplexed connection, failure backoff.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use sluice_io::ClientIo;
use sluice_thrift::MessageType;
use sluice_ttheader::str_key;
use tokio::io::AsyncReadExt;

use crate::codec::{self, ReplyDecoder};
use crate::mux::MuxConn;
use crate::{Call, ClientConfig, ConnectionError, Endpoint, Error, Reply, ReplyError};

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

/// One live pooled connection in its endpoint's count (decremented when it is dropped,
/// whichever way it goes).
#[derive(Debug)]
struct Live(Arc<std::sync::atomic::AtomicUsize>);

impl Live {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
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
    live: Arc<std::sync::atomic::AtomicUsize>,
    down_until: Mutex<Option<Instant>>,
    mux: tokio::sync::Mutex<Option<Arc<MuxConn>>>,
    decoder: ReplyDecoder,
}

/// How an exchange on a pooled connection failed.
enum Failure {
    /// Nothing of a reply arrived: on a reused connection the server most likely closed it
    /// while idle, and one retry on a fresh connection is safe enough.
    BeforeReply(ConnectionError),
    Other(Error),
}

impl EndpointState {
    pub(crate) fn new(endpoint: Endpoint, config: Arc<ClientConfig>) -> Self {
        let decoder = ReplyDecoder::new(config.max_frame_size);
        Self {
            endpoint,
            config,
            idle: Mutex::new(Vec::new()),
            live: Arc::default(),
            down_until: Mutex::new(None),
            mux: tokio::sync::Mutex::new(None),
            decoder,
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        match *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(t) => Instant::now() >= t,
            None => true,
        }
    }

    pub(crate) fn mark_down(&self) {
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + self.config.failure_backoff);
    }

    pub(crate) async fn connect(&self) -> Result<ClientIo, Error> {
        let stream = crate::connect::connect(&self.config, self.endpoint.addr).await?;
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(stream)
    }

    /// The endpoint's connections now (the multiplexed one counts while its slot holds it).
    pub(crate) fn counts(&self) -> PoolCounts {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).len();
        let live = self.live.load(std::sync::atomic::Ordering::Relaxed);
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
            if c.idle_since.elapsed() < self.config.idle_timeout {
                return Some(c);
            }
        }
        None
    }

    /// `read` is how many bytes the reply took: its buffer is still in use by the reply.
    fn put_idle(&self, mut c: Conn, read: usize) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.config.max_idle_per_endpoint {
            c.idle_since = Instant::now();
            // An idle pooled connection keeps no read buffer; the next reply takes one.
            sluice_io::give_back_read_buf_in_use(std::mem::take(&mut c.buf), read);
            idle.push(c);
        }
    }

    /// One request on a pooled connection, one in flight per connection.
    pub(crate) async fn call_pooled(
        &self,
        call: &mut Call,
        seq: i32,
    ) -> Result<Option<Reply>, Error> {
        if let Some(conn) = self.take_idle() {
            match self.exchange(conn, call, seq).await {
                Err(Failure::BeforeReply(why)) => {
                    tracing::debug!(addr = %self.endpoint.addr, %why, "pooled connection went stale; retrying on a new one");
                }
                Err(Failure::Other(e)) => return Err(e),
                Ok(r) => return Ok(r),
            }
        }
        let conn = Conn {
            stream: self.connect().await?,
            buf: BytesMut::new(),
            iov: Vec::with_capacity(2),
            idle_since: Instant::now(),
            _live: Live::new(&self.live),
        };
        match self.exchange(conn, call, seq).await {
            Ok(r) => Ok(r),
            Err(Failure::BeforeReply(what)) => Err(self.io_error(what)),
            Err(Failure::Other(e)) => Err(e),
        }
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
            match conn.stream.read_buf(&mut conn.buf).await {
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
                    return Err(Failure::BeforeReply(ConnectionError::Read(e)))
                }
                Err(e) => return Err(Failure::Other(self.io_error(ConnectionError::Read(e)))),
            }
        }
    }

    /// One request on the endpoint's multiplexed connection.
    pub(crate) async fn call_mux(&self, call: &mut Call, seq: i32) -> Result<Option<Reply>, Error> {
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
        conn.call(call, seq).await
    }
}
