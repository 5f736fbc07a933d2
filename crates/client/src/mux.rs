//! A multiplexed TTHeader connection: many requests in flight, replies matched by seq id.
//!
//! Requests carry FLAGS `0x0001` like a Kitex mux client's. A writer task sends queued requests;
//! a reader task routes each reply to its waiting call by the TTHeader seq id. When the
//! connection fails every waiting call fails with it; a reply with `crrst` stops new calls from
//! using the connection while the replies still owed on it are read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use sluice_io::ClientIo;
use sluice_thrift::MessageType;
use sluice_ttheader::str_key;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{self, RawReply, ReplyDecoder};
use crate::{Call, ClientConfig, ConnectionError, Error, Reply, ReplyError};

type Waiters = Arc<Mutex<HashMap<i32, oneshot::Sender<RawReply>>>>;

#[derive(Debug)]
pub(crate) struct MuxConn {
    tx: mpsc::Sender<Vec<Bytes>>,
    waiters: Waiters,
    usable: Arc<AtomicBool>,
    config: Arc<ClientConfig>,
    addr: SocketAddr,
    /// The reader and writer, cancelled with the last handle to this connection.
    _tasks: sluice_io::TaskGroup,
}

/// Removes a waiter when its call is dropped (deadline) before the reply came.
struct WaiterGuard<'a>(&'a Waiters, i32);

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

impl MuxConn {
    pub(crate) fn start(
        stream: ClientIo,
        config: Arc<ClientConfig>,
        addr: SocketAddr,
    ) -> Arc<Self> {
        match stream {
            // TCP keeps its owned halves; only TLS pays for the shared halves' lock.
            ClientIo::Tcp(tcp) => {
                let (rd, wr) = tcp.into_split();
                Self::start_halves(rd, wr, config, addr)
            }
            ClientIo::Tls(tls) => {
                let (rd, wr) = tokio::io::split(*tls);
                Self::start_halves(rd, wr, config, addr)
            }
        }
    }

    fn start_halves<R, W>(
        mut rd: R,
        wr: W,
        config: Arc<ClientConfig>,
        addr: SocketAddr,
    ) -> Arc<Self>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Vec<Bytes>>(1024);
        let waiters: Waiters = Arc::default();
        let usable = Arc::new(AtomicBool::new(true));
        let tasks = sluice_io::TaskGroup::new();
        {
            let usable = usable.clone();
            tasks.spawn(async move {
                let _ = sluice_io::write_queued(wr, rx).await;
                usable.store(false, Ordering::Release);
            });
        }
        {
            let waiters = waiters.clone();
            let usable = usable.clone();
            let decoder = ReplyDecoder::new(config.max_frame_size);
            let transport = config.transport;
            tasks.spawn(async move {
                let mut buf = BytesMut::new();
                'read: loop {
                    loop {
                        match decoder.decode(&mut buf, transport) {
                            Ok(Some(raw)) => {
                                if raw.reply.header.str_kvs.get(str_key::CONN_RESET).is_some() {
                                    usable.store(false, Ordering::Release);
                                }
                                let w = waiters
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .remove(&raw.frame_seq);
                                match w {
                                    Some(w) => {
                                        let _ = w.send(raw);
                                    }
                                    None => {
                                        tracing::debug!(%addr, seq = raw.frame_seq, "reply for no waiting call (late or unknown seq id)")
                                    }
                                }
                            }
                            Ok(None) => break,
                            Err(reason) => {
                                tracing::warn!(%addr, %reason, "bad reply on multiplexed connection; closing it");
                                break 'read;
                            }
                        }
                    }
                    sluice_io::reserve_read(&mut buf, sluice_io::STREAM_READ_CHUNK);
                    match rd.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                usable.store(false, Ordering::Release);
                // Dropping the senders fails every call still waiting on this connection.
                waiters.lock().unwrap_or_else(|e| e.into_inner()).clear();
            });
        }
        Arc::new(Self {
            tx,
            waiters,
            usable,
            config,
            addr,
            _tasks: tasks,
        })
    }

    pub(crate) fn is_usable(&self) -> bool {
        self.usable.load(Ordering::Acquire)
    }

    fn io_error(&self, source: ConnectionError) -> Error {
        Error::Io {
            downstream: self.config.name.clone(),
            addr: self.addr,
            source,
        }
    }

    pub(crate) async fn call(
        &self,
        call: &mut Call,
        seq: i32,
        per_try: Option<std::time::Duration>,
    ) -> Result<Option<Reply>, Error> {
        let head = codec::encode_request(call, self.config.transport, seq, true).map_err(|e| {
            Error::Encode {
                downstream: self.config.name.clone(),
                source: e,
            }
        })?;
        let chunks = vec![head, call.args.clone()];
        if call.msg_type == MessageType::Oneway {
            self.tx
                .send(chunks)
                .await
                .map_err(|_| self.io_error(ConnectionError::MuxClosed))?;
            return Ok(None);
        }
        let (wtx, wrx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seq, wtx);
        let _guard = WaiterGuard(&self.waiters, seq);
        self.tx
            .send(chunks)
            .await
            .map_err(|_| self.io_error(ConnectionError::MuxClosed))?;
        // Replies arrive whole: a per-try timeout that passes means none of it came.
        let raw = match per_try {
            Some(d) => match tokio::time::timeout(d, wrx).await {
                Ok(r) => r,
                Err(_) => return Err(self.io_error(ConnectionError::TryTimeout(d))),
            },
            None => wrx.await,
        }
        .map_err(|_| self.io_error(ConnectionError::MuxClosedBeforeReply))?;
        if raw.reply.msg_type == MessageType::Reply && raw.envelope_seq != seq {
            return Err(Error::Protocol {
                downstream: self.config.name.clone(),
                addr: self.addr,
                source: ReplyError::SeqMismatch {
                    got: raw.envelope_seq,
                    want: seq,
                },
            });
        }
        Ok(Some(raw.reply))
    }
}
