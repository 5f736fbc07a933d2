//! The TTStream driver: many streams per connection, each handed to the [`StreamingHandler`].
//!
//! One reader takes frames off the connection and routes them by stream id; each stream has a
//! pump task that turns the handler's events into frames. Per kitex-wire.md 4.3:
//!
//! * a client Header opens a stream; Data, Trailer (half-close) and Rst follow;
//! * the server's Header is sent lazily, before its first Data or its Trailer;
//! * frames of unknown or finished streams are ignored, late Trailer and Rst frames included;
//! * TTStream has no flow control, so backpressure is ours: a message is handed to a stream's
//!   bounded channel before the next frame is read, so a handler that does not read stops the
//!   connection's reader (memory stays bounded by the channel depth times the frame limit).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use sluice_stream::{
    Event, Metadata, Protocol, Reset, ServerStream, StreamEnd, StreamRequest, StreamingHandler,
};
use sluice_thrift::{ApplicationException, ExceptionKind};
use sluice_ttheader::{str_key, Limits};
use sluice_ttstream::{
    exception_payload, FrameDecoder, FrameType, Side, Step, Stream as StreamState, StreamFrame,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::Chunks;
use crate::{Drain, ServerConfig};

/// TTStream type id for "illegal frame" (kitex-wire.md 4.4).
const ILLEGAL_FRAME: i32 = 12004;

struct Entry {
    state: Arc<Mutex<StreamState>>,
    to_user: mpsc::Sender<Event>,
}

/// Encodes a frame as a head plus its payload `Bytes` (no payload copy).
pub(crate) fn frame_chunks(f: StreamFrame) -> Chunks {
    match f.into_chunks() {
        Ok(chunks) => chunks.into(),
        Err(e) => {
            tracing::warn!(error = %e, "TTStream frame not encodable; dropped");
            Vec::new()
        }
    }
}

fn metadata_of(f: &StreamFrame) -> Metadata {
    Metadata(
        f.header
            .str_kvs
            .iter()
            .map(|(k, v)| (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)))
            .collect(),
    )
}

pub(crate) async fn run<S: StreamingHandler>(
    stream: TcpStream,
    peer: SocketAddr,
    mut buf: BytesMut,
    config: Arc<ServerConfig>,
    handler: Arc<S>,
    drain: Drain,
) {
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Chunks>(256);
    let writer = tokio::spawn(sluice_io::write_queued(wr, rx));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<i32>();
    let decoder = FrameDecoder::new(Limits {
        max_frame_size: config.max_frame_size,
        ..Limits::default()
    });
    let mut streams: HashMap<i32, Entry> = HashMap::new();
    let mut draining = false;

    let reason: Option<String> = 'conn: loop {
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => break 'conn Some(format!("malformed TTStream frame: {e}")),
            };
            let id = frame.stream_id;
            if let Some(entry) = streams.get(&id) {
                let step = entry
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .recv(frame.kind);
                let event = match step {
                    Ok(Step::Ignored) => None,
                    Ok(_) => match frame.kind {
                        FrameType::Data => Some(Event::Message(frame.payload)),
                        FrameType::Trailer => Some(Event::HalfClose),
                        FrameType::Rst => {
                            let ex = frame.exception().ok().flatten();
                            Some(Event::Reset(Reset {
                                code: ex.as_ref().map_or(0, |e| e.kind.0 as u32),
                                message: ex.map_or_else(|| "rst".to_owned(), |e| e.message),
                                cancel_path: frame.cancel_path().map(str::to_owned),
                            }))
                        }
                        _ => None,
                    },
                    Err(e) => {
                        tracing::debug!(%peer, stream = id, error = %e, "frame not allowed in this stream state");
                        let _ = entry
                            .to_user
                            .send(Event::Reset(Reset {
                                code: ILLEGAL_FRAME as u32,
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
            if draining {
                let ex = ApplicationException::new(
                    ExceptionKind::INTERNAL_ERROR,
                    "server is draining; retry on another connection",
                );
                let _ = tx
                    .send(frame_chunks(StreamFrame::server_header(id, method.clone())))
                    .await;
                let _ = tx
                    .send(frame_chunks(StreamFrame::trailer_with_exception(
                        id, method, &ex,
                    )))
                    .await;
                continue;
            }
            let req = StreamRequest {
                peer,
                protocol: Protocol::TTStream,
                service: frame.service().unwrap_or_default().to_owned(),
                method: String::from_utf8_lossy(&method).into_owned(),
                headers: metadata_of(&frame),
                deadline: None,
            };
            let (server_stream, ends) = ServerStream::new();
            let state = Arc::new(Mutex::new(state));
            streams.insert(
                id,
                Entry {
                    state: state.clone(),
                    to_user: ends.to_user,
                },
            );
            let h = handler.clone();
            tokio::spawn(async move { h.handle(req, server_stream).await });
            tokio::spawn(pump(
                id,
                method,
                ends.from_user,
                state,
                tx.clone(),
                done_tx.clone(),
            ));
        }
        if draining && streams.is_empty() && buf.is_empty() {
            break None;
        }
        tokio::select! {
            r = async {
                sluice_io::reserve_read(&mut buf, sluice_io::STREAM_READ_CHUNK);
                rd.read_buf(&mut buf).await
            } => match r {
                Ok(0) => break None,
                Ok(_) => {}
                Err(e) => break Some(format!("read failed: {e}")),
            },
            Some(id) = done_rx.recv() => {
                streams.remove(&id);
            }
            _ = drain.signaled(), if !draining => draining = true,
        }
    };
    if let Some(r) = reason {
        tracing::warn!(%peer, listener = %config.name, reason = %r, "closing connection");
    }
    // Dropping the streams' senders tells every handler the connection is gone.
    streams.clear();
    drop(tx);
    let _ = tokio::time::timeout(config.drain_grace, writer).await;
}

/// Turns one stream's handler events into frames, keeping the server's side of the state.
async fn pump(
    id: i32,
    method: Bytes,
    mut from_user: mpsc::Receiver<Event>,
    state: Arc<Mutex<StreamState>>,
    tx: mpsc::Sender<Chunks>,
    done: mpsc::UnboundedSender<i32>,
) {
    let send = |kind: FrameType| -> bool {
        !matches!(
            state.lock().unwrap_or_else(|e| e.into_inner()).send(kind),
            Err(_) | Ok(Step::Ignored)
        )
    };
    let mut header_sent = false;
    loop {
        let ev = from_user.recv().await;
        let mut frames: Vec<StreamFrame> = Vec::with_capacity(2);
        let header =
            |frames: &mut Vec<StreamFrame>, md: Option<Metadata>, header_sent: &mut bool| {
                if !*header_sent && send(FrameType::Header) {
                    let mut f = StreamFrame::server_header(id, method.clone());
                    for (k, v) in md.unwrap_or_default().0 {
                        f.header.str_kvs.insert(k, v);
                    }
                    frames.push(f);
                }
                *header_sent = true;
            };
        let finished = match ev {
            Some(Event::Headers(md)) => {
                header(&mut frames, Some(md), &mut header_sent);
                false
            }
            Some(Event::Message(m)) => {
                header(&mut frames, None, &mut header_sent);
                if send(FrameType::Data) {
                    frames.push(StreamFrame::data(id, method.clone(), m));
                }
                false
            }
            Some(Event::End(end)) => {
                header(&mut frames, None, &mut header_sent);
                if send(FrameType::Trailer) {
                    frames.push(trailer(id, &method, end));
                }
                true
            }
            Some(Event::Reset(r)) => {
                if send(FrameType::Rst) {
                    let ex = ApplicationException::new(ExceptionKind(r.code as i32), r.message);
                    frames.push(StreamFrame::rst(
                        id,
                        method.clone(),
                        Some(&ex),
                        r.cancel_path.as_deref(),
                    ));
                }
                true
            }
            Some(Event::HalfClose) => false,
            None => {
                // The handler returned without ending the stream: end it for it.
                header(&mut frames, None, &mut header_sent);
                if send(FrameType::Trailer) {
                    frames.push(trailer(
                        id,
                        &method,
                        StreamEnd::error(
                            ExceptionKind::INTERNAL_ERROR.0 as u32,
                            "stream handler ended without a status",
                        ),
                    ));
                }
                true
            }
        };
        for f in frames {
            if tx.send(frame_chunks(f)).await.is_err() {
                let _ = done.send(id);
                return;
            }
        }
        if finished {
            let _ = done.send(id);
            return;
        }
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
        let ex = ApplicationException::new(ExceptionKind(err.code as i32), err.message);
        f.payload = exception_payload(&String::from_utf8_lossy(method), id, &ex);
    }
    f
}
