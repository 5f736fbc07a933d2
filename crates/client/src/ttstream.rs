//! The TTStream client: streams multiplexed on a few connections per endpoint.
//!
//! Like Kitex's default mux pool (kitex-wire.md 4.5), each endpoint gets up to
//! [`CONNS_PER_ENDPOINT`] connections used in turn; stream ids come from one client-wide counter
//! starting at 1 (0 is reserved), so they are unique on every connection. A reader task per
//! connection routes frames to streams by id; frames of unknown or finished streams are ignored.
//! A closed connection ends each of its streams with a reset.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use sluice_stream::{ClientStream, Event, Metadata, Reset, StreamEnd};
use sluice_thrift::{ApplicationException, ExceptionKind};
use sluice_ttheader::{str_key, Limits};
use sluice_ttstream::{FrameDecoder, FrameType, Side, Step, Stream as StreamState, StreamFrame};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

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
    /// Header-frame string keys (metainfo, user headers), in order.
    pub headers: Metadata,
}

type Chunks = Vec<Bytes>;

struct Slot {
    to_user: mpsc::Sender<Event>,
    state: Arc<Mutex<StreamState>>,
}

struct StreamConn {
    tx: mpsc::Sender<Chunks>,
    streams: Arc<Mutex<HashMap<i32, Slot>>>,
    alive: Arc<AtomicBool>,
}

struct Endpoint {
    addr: SocketAddr,
    conns: tokio::sync::Mutex<Vec<Arc<StreamConn>>>,
    next: AtomicUsize,
}

/// A TTStream client for one downstream.
pub struct TTStreamClient {
    config: Arc<ClientConfig>,
    endpoints: Vec<Endpoint>,
    rr: AtomicUsize,
    next_id: AtomicI32,
}

impl std::fmt::Debug for TTStreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TTStreamClient")
            .field("downstream", &self.config.name)
            .finish()
    }
}

fn frame_chunks(f: StreamFrame) -> Chunks {
    match f.into_chunks() {
        Ok(chunks) => chunks.into(),
        Err(e) => {
            tracing::warn!(error = %e, "TTStream frame not encodable; dropped");
            Vec::new()
        }
    }
}

impl TTStreamClient {
    /// A client; connections are made on first use.
    pub fn new(config: ClientConfig) -> Self {
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| Endpoint {
                addr: e.addr,
                conns: tokio::sync::Mutex::new(Vec::new()),
                next: AtomicUsize::new(0),
            })
            .collect();
        Self {
            config: Arc::new(config),
            endpoints,
            rr: AtomicUsize::new(0),
            next_id: AtomicI32::new(0),
        }
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
        let stream =
            match tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(ep.addr))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(source)) => {
                    return Err(Error::Connect {
                        downstream: self.config.name.clone(),
                        addr: ep.addr,
                        source,
                    })
                }
                Err(_) => {
                    return Err(Error::ConnectTimeout {
                        downstream: self.config.name.clone(),
                        addr: ep.addr,
                        after: self.config.connect_timeout,
                    })
                }
            };
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(start(stream, ep.addr, self.config.max_frame_size));
        conns.push(conn.clone());
        Ok(conn)
    }

    /// Opens a stream: sends its Header frame and returns the handle.
    pub async fn open(&self, req: OpenStream) -> Result<ClientStream, Error> {
        if self.endpoints.is_empty() {
            return Err(Error::NoEndpoint {
                downstream: self.config.name.clone(),
            });
        }
        let mut last = None;
        for attempt in 0..self.endpoints.len() {
            let ep = &self.endpoints
                [(self.rr.fetch_add(1, Ordering::Relaxed) + attempt) % self.endpoints.len()];
            match self.connection(ep).await {
                Ok(conn) => return Ok(self.open_on(conn, req).await),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(Error::NoEndpoint {
            downstream: self.config.name.clone(),
        }))
    }

    async fn open_on(&self, conn: Arc<StreamConn>, req: OpenStream) -> ClientStream {
        let id = self.next_stream_id();
        let mut state = StreamState::new(Side::Client, id).expect("stream id is never 0");
        let _ = state.send(FrameType::Header);
        let state = Arc::new(Mutex::new(state));
        let (client, ends) = ClientStream::new();
        conn.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id,
                Slot {
                    to_user: ends.to_user,
                    state: state.clone(),
                },
            );
        let has_isn = req.headers.get(str_key::IDL_SERVICE_NAME).is_some();
        let service = if has_isn { "" } else { req.service.as_str() };
        let header = StreamFrame::client_header(id, req.method.clone(), service, req.headers.0);
        let method = Bytes::from(req.method);
        let _ = conn.tx.send(frame_chunks(header)).await;
        tokio::spawn(pump(
            id,
            method,
            ends.from_user,
            state,
            conn.tx.clone(),
            conn.streams.clone(),
        ));
        client
    }
}

/// Starts a connection's reader and writer tasks.
fn start(stream: TcpStream, addr: SocketAddr, max_frame_size: usize) -> StreamConn {
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Chunks>(256);
    let streams: Arc<Mutex<HashMap<i32, Slot>>> = Arc::default();
    let alive = Arc::new(AtomicBool::new(true));
    {
        let alive = alive.clone();
        tokio::spawn(async move {
            let _ = sluice_io::write_queued(wr, rx).await;
            alive.store(false, Ordering::Release);
        });
    }
    {
        let streams = streams.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let decoder = FrameDecoder::new(Limits {
                max_frame_size,
                ..Limits::default()
            });
            let mut buf = BytesMut::new();
            'read: loop {
                loop {
                    let f = match decoder.decode(&mut buf) {
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
                            FrameType::Header => Event::Headers(str_metadata(&f)),
                            FrameType::Data => Event::Message(f.payload.clone()),
                            FrameType::Trailer => {
                                let error = f.exception().ok().flatten().map(|ex| {
                                    sluice_stream::ErrorStatus {
                                        code: ex.kind.0 as u32,
                                        message: ex.message,
                                    }
                                });
                                Event::End(StreamEnd {
                                    error,
                                    trailers: str_metadata(&f),
                                })
                            }
                            FrameType::Rst => {
                                let ex = f.exception().ok().flatten();
                                Event::Reset(Reset {
                                    code: ex.as_ref().map_or(0, |e| e.kind.0 as u32),
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
                        streams
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&f.stream_id);
                    }
                }
                sluice_io::reserve_read(&mut buf, sluice_io::STREAM_READ_CHUNK);
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            alive.store(false, Ordering::Release);
            // Dropping the senders ends every open stream with a reset.
            streams.lock().unwrap_or_else(|e| e.into_inner()).clear();
        });
    }
    StreamConn { tx, streams, alive }
}

fn str_metadata(f: &StreamFrame) -> Metadata {
    Metadata(
        f.header
            .str_kvs
            .iter()
            .map(|(k, v)| (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)))
            .collect(),
    )
}

/// Turns the user's events into frames for stream `id`.
async fn pump(
    id: i32,
    method: Bytes,
    mut from_user: mpsc::Receiver<Event>,
    state: Arc<Mutex<StreamState>>,
    tx: mpsc::Sender<Chunks>,
    streams: Arc<Mutex<HashMap<i32, Slot>>>,
) {
    let send = |kind: FrameType| -> bool {
        matches!(
            state.lock().unwrap_or_else(|e| e.into_inner()).send(kind),
            Ok(s) if s != Step::Ignored
        )
    };
    let mut half_closed = false;
    loop {
        let frames: Vec<StreamFrame> = match from_user.recv().await {
            Some(Event::Message(m)) => {
                if !send(FrameType::Data) {
                    continue;
                }
                vec![StreamFrame::data(id, method.clone(), m)]
            }
            Some(Event::HalfClose) => {
                if half_closed || !send(FrameType::Trailer) {
                    continue;
                }
                half_closed = true;
                vec![StreamFrame::trailer(id, method.clone())]
            }
            Some(Event::Reset(r)) => {
                let mut v = Vec::new();
                if send(FrameType::Rst) {
                    let code = if r.code == 0 { 12007 } else { r.code as i32 };
                    let ex = ApplicationException::new(ExceptionKind(code), r.message);
                    v.push(StreamFrame::rst(
                        id,
                        method.clone(),
                        Some(&ex),
                        r.cancel_path.as_deref(),
                    ));
                    // Kitex clients follow an Rst with a Trailer for peers that wait for one.
                    if !half_closed {
                        v.push(StreamFrame::trailer(id, method.clone()));
                    }
                }
                streams
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                for f in v {
                    let _ = tx.send(frame_chunks(f)).await;
                }
                return;
            }
            Some(Event::Headers(_) | Event::End(_)) => continue,
            None => {
                // The user dropped the stream: cancel it downstream unless it already ended.
                let ended = state.lock().unwrap_or_else(|e| e.into_inner()).is_ended();
                if !ended && send(FrameType::Rst) {
                    let ex = ApplicationException::new(
                        ExceptionKind(12007),
                        "stream dropped by the caller",
                    );
                    let _ = tx
                        .send(frame_chunks(StreamFrame::rst(
                            id,
                            method.clone(),
                            Some(&ex),
                            None,
                        )))
                        .await;
                }
                streams
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                return;
            }
        };
        for f in frames {
            if tx.send(frame_chunks(f)).await.is_err() {
                return;
            }
        }
    }
}
