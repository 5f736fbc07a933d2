//! The stream API shared by Sluice's TTStream and gRPC drivers, clients and forwarders.
//!
//! A stream is a bidirectional sequence of raw messages with headers at the start and an end
//! status with trailers, as Kitex's binary-generic `BidiStreamingServer` sees it (gRPC unary
//! calls included). Drivers (one per protocol) translate between the wire and [`Event`]s on two
//! bounded channels; handlers and forwarders use the handles:
//!
//! * [`ServerStream`]: the server side's handle, given to a `StreamingHandler`;
//! * [`ClientStream`]: a client's handle on a stream it opened downstream.
//!
//! Channels are bounded ([`CHANNEL_DEPTH`] events), so a slow reader on one side slows the other
//! side's reads instead of growing a queue: backpressure is end to end.
//!
//! Protocol families are never converted: a TTStream stream is forwarded to a TTStream
//! downstream, a gRPC stream to a gRPC downstream, so [`StreamEnd`] and [`Metadata`] carry each
//! protocol's own values through unchanged.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

/// Events queued per direction of a stream before the sender waits.
pub const CHANNEL_DEPTH: usize = 16;

/// Ordered header or trailer key/values as bytes (TTHeader string keys, or HTTP/2 header
/// names and values; `-bin` values are kept as sent, base64 text, untouched).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(pub Vec<(Bytes, Bytes)>);

impl Metadata {
    /// Empty metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// First value of `key`.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.0
            .iter()
            .find(|(k, _)| k.as_ref() == key.as_bytes())
            .map(|(_, v)| v)
    }

    /// First value of `key` as text.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Appends a pair.
    pub fn push(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) {
        self.0.push((key.into(), value.into()));
    }

    /// Keeps the pairs for which `f` is true.
    pub fn retain(&mut self, mut f: impl FnMut(&[u8], &[u8]) -> bool) {
        self.0.retain(|(k, v)| f(k, v));
    }

    /// Pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// An error end status: a gRPC status code, or a TTStream exception type id, and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorStatus {
    /// gRPC status code (gRPC streams) or `TApplicationException` type id (TTStream).
    pub code: u32,
    /// Message (decoded, not percent-encoded).
    pub message: String,
}

/// How a stream ended, from the server's side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamEnd {
    /// `None` for success.
    pub error: Option<ErrorStatus>,
    /// Trailer key/values (TTStream trailer string keys such as `biz-status`; gRPC trailers
    /// other than `grpc-status`/`grpc-message`).
    pub trailers: Metadata,
}

impl StreamEnd {
    /// A successful end with no trailers.
    pub fn ok() -> Self {
        Self::default()
    }

    /// An error end.
    pub fn error(code: u32, message: impl Into<String>) -> Self {
        Self {
            error: Some(ErrorStatus {
                code,
                message: message.into(),
            }),
            trailers: Metadata::new(),
        }
    }
}

/// An abort: TTStream RST or HTTP/2 RST_STREAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    /// TTStream: the RST exception's type id (e.g. 12007 cancel); gRPC: the HTTP/2 error code
    /// (8 CANCEL).
    pub code: u32,
    /// Reason, for logs and for the exception payload.
    pub message: String,
    /// TTStream cascading cancel path (`ttscp`), if any.
    pub cancel_path: Option<String>,
}

/// What travels on a stream's channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Response headers (server to client only).
    Headers(Metadata),
    /// One message.
    Message(Bytes),
    /// The client will send no more messages.
    HalfClose,
    /// The server ended the stream.
    End(StreamEnd),
    /// Either side aborted the stream.
    Reset(Reset),
}

/// The protocol of a stream and what routing needs from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// TTHeader Streaming.
    TTStream,
    /// gRPC over HTTP/2.
    Grpc {
        /// `:path` as received (`/pkg.Service/Method`).
        path: String,
        /// `content-type` as received.
        content_type: String,
        /// `:authority` as received.
        authority: String,
    },
}

/// What a server knows about a new stream.
#[derive(Debug, Clone)]
pub struct StreamRequest {
    /// The caller.
    pub peer: SocketAddr,
    /// Protocol details.
    pub protocol: Protocol,
    /// Service name: TTStream header `isn`; gRPC `:path` service (without package).
    pub service: String,
    /// Method name.
    pub method: String,
    /// Request metadata: TTStream header-frame string keys; gRPC non-pseudo headers.
    pub headers: Metadata,
    /// From `grpc-timeout` (TTStream sends none).
    pub deadline: Option<Instant>,
}

/// The stream is gone (the other side or the connection closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stream closed")
    }
}

impl std::error::Error for Closed {}

/// A driver's ends of one stream: what it delivers to the user (`to_user`) and what it takes
/// from the user (`from_user`).
#[derive(Debug)]
pub struct DriverEnds {
    /// Events from the wire to the handle.
    pub to_user: mpsc::Sender<Event>,
    /// Events from the handle to the wire.
    pub from_user: mpsc::Receiver<Event>,
}

fn pair() -> (DriverEnds, mpsc::Receiver<Event>, mpsc::Sender<Event>) {
    let (to_user, user_rx) = mpsc::channel(CHANNEL_DEPTH);
    let (user_tx, from_user) = mpsc::channel(CHANNEL_DEPTH);
    (DriverEnds { to_user, from_user }, user_rx, user_tx)
}

/// The server side's handle on a stream (what a `StreamingHandler` gets).
#[derive(Debug)]
pub struct ServerStream {
    rx: mpsc::Receiver<Event>,
    tx: mpsc::Sender<Event>,
    recv_done: bool,
}

impl ServerStream {
    /// A handle and the driver's ends.
    pub fn new() -> (ServerStream, DriverEnds) {
        let (ends, rx, tx) = pair();
        (
            ServerStream {
                rx,
                tx,
                recv_done: false,
            },
            ends,
        )
    }

    /// The next message; `Ok(None)` once the client half-closed; `Err` if it reset the stream
    /// (or the connection went away).
    pub async fn recv(&mut self) -> Result<Option<Bytes>, Reset> {
        if self.recv_done {
            return Ok(None);
        }
        loop {
            match self.rx.recv().await {
                Some(Event::Message(m)) => return Ok(Some(m)),
                Some(Event::HalfClose) => {
                    self.recv_done = true;
                    return Ok(None);
                }
                Some(Event::Reset(r)) => {
                    self.recv_done = true;
                    return Err(r);
                }
                Some(Event::Headers(_) | Event::End(_)) => continue,
                None => {
                    self.recv_done = true;
                    return Err(Reset {
                        code: 0,
                        message: "connection closed".into(),
                        cancel_path: None,
                    });
                }
            }
        }
    }

    /// Splits into a receiving half and a sending half, for pumping both ways at once.
    pub fn split(self) -> (ServerRecv, ServerSend) {
        (
            ServerRecv(ServerStream {
                rx: self.rx,
                tx: self.tx.clone(),
                recv_done: self.recv_done,
            }),
            ServerSend { tx: self.tx },
        )
    }

    /// Sends response headers (optional: drivers send empty ones before the first message).
    pub async fn send_headers(&self, md: Metadata) -> Result<(), Closed> {
        self.tx.send(Event::Headers(md)).await.map_err(|_| Closed)
    }

    /// Sends one message, waiting while the peer is slow.
    pub async fn send(&self, msg: Bytes) -> Result<(), Closed> {
        self.tx.send(Event::Message(msg)).await.map_err(|_| Closed)
    }

    /// Ends the stream with `end`.
    pub async fn finish(self, end: StreamEnd) {
        let _ = self.tx.send(Event::End(end)).await;
    }
}

/// The receiving half of a [`ServerStream`].
#[derive(Debug)]
pub struct ServerRecv(ServerStream);

impl ServerRecv {
    /// See [`ServerStream::recv`].
    pub async fn recv(&mut self) -> Result<Option<Bytes>, Reset> {
        self.0.recv().await
    }
}

/// The sending half of a [`ServerStream`].
#[derive(Debug, Clone)]
pub struct ServerSend {
    tx: mpsc::Sender<Event>,
}

impl ServerSend {
    /// See [`ServerStream::send_headers`].
    pub async fn send_headers(&self, md: Metadata) -> Result<(), Closed> {
        self.tx.send(Event::Headers(md)).await.map_err(|_| Closed)
    }

    /// See [`ServerStream::send`].
    pub async fn send(&self, msg: Bytes) -> Result<(), Closed> {
        self.tx.send(Event::Message(msg)).await.map_err(|_| Closed)
    }

    /// See [`ServerStream::finish`].
    pub async fn finish(&self, end: StreamEnd) {
        let _ = self.tx.send(Event::End(end)).await;
    }

    /// Resolves when the driver has stopped taking events (stream or connection gone).
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// A client's handle on a stream it opened.
#[derive(Debug)]
pub struct ClientStream {
    rx: mpsc::Receiver<Event>,
    tx: mpsc::Sender<Event>,
}

/// What a client stream delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Response headers.
    Headers(Metadata),
    /// A message.
    Message(Bytes),
    /// The server ended the stream.
    End(StreamEnd),
    /// The server or the connection reset the stream.
    Reset(Reset),
}

impl ClientStream {
    /// A handle and the driver's ends.
    pub fn new() -> (ClientStream, DriverEnds) {
        let (ends, rx, tx) = pair();
        (ClientStream { rx, tx }, ends)
    }

    /// Splits into a sending half and a receiving half.
    pub fn split(self) -> (ClientSend, ClientRecv) {
        (ClientSend { tx: self.tx }, ClientRecv { rx: self.rx })
    }
}

/// The sending half of a [`ClientStream`].
#[derive(Debug, Clone)]
pub struct ClientSend {
    tx: mpsc::Sender<Event>,
}

impl ClientSend {
    /// Sends one message, waiting while the downstream is slow.
    pub async fn send(&self, msg: Bytes) -> Result<(), Closed> {
        self.tx.send(Event::Message(msg)).await.map_err(|_| Closed)
    }

    /// Half-closes: no more messages.
    pub async fn close_send(&self) -> Result<(), Closed> {
        self.tx.send(Event::HalfClose).await.map_err(|_| Closed)
    }

    /// Aborts the stream.
    pub async fn reset(&self, r: Reset) {
        let _ = self.tx.send(Event::Reset(r)).await;
    }
}

/// The receiving half of a [`ClientStream`].
#[derive(Debug)]
pub struct ClientRecv {
    rx: mpsc::Receiver<Event>,
}

impl ClientRecv {
    /// The next thing the server sent; a closed connection reads as a reset.
    pub async fn recv(&mut self) -> Incoming {
        loop {
            return match self.rx.recv().await {
                Some(Event::Headers(m)) => Incoming::Headers(m),
                Some(Event::Message(b)) => Incoming::Message(b),
                Some(Event::End(e)) => Incoming::End(e),
                Some(Event::Reset(r)) => Incoming::Reset(r),
                Some(Event::HalfClose) => continue,
                None => Incoming::Reset(Reset {
                    code: 0,
                    message: "connection closed".into(),
                    cancel_path: None,
                }),
            };
        }
    }
}

/// Handles streams: the counterpart of Kitex's `StreamingHandler`. Every TTStream stream and
/// every gRPC call (unary included, as Kitex does in unknown-service mode) arrives here as a
/// bidirectional stream of raw messages.
pub trait StreamingHandler: Send + Sync + 'static {
    /// Handles one stream until it ends. The driver ends the stream for the handler if the
    /// handler returns without calling [`ServerStream::finish`] (with an error status).
    fn handle(
        &self,
        req: StreamRequest,
        stream: ServerStream,
    ) -> impl std::future::Future<Output = ()> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn server_stream_recv_and_send() {
        let (mut s, mut ends) = ServerStream::new();
        ends.to_user
            .send(Event::Message(Bytes::from_static(b"a")))
            .await
            .unwrap();
        ends.to_user.send(Event::HalfClose).await.unwrap();
        assert_eq!(s.recv().await, Ok(Some(Bytes::from_static(b"a"))));
        assert_eq!(s.recv().await, Ok(None));
        assert_eq!(s.recv().await, Ok(None));
        s.send(Bytes::from_static(b"b")).await.unwrap();
        s.finish(StreamEnd::ok()).await;
        assert_eq!(
            ends.from_user.recv().await,
            Some(Event::Message(Bytes::from_static(b"b")))
        );
        assert_eq!(
            ends.from_user.recv().await,
            Some(Event::End(StreamEnd::ok()))
        );
    }

    #[tokio::test]
    async fn a_full_channel_makes_the_sender_wait() {
        let (s, mut ends) = ServerStream::new();
        for _ in 0..CHANNEL_DEPTH {
            s.send(Bytes::new()).await.unwrap();
        }
        let blocked =
            tokio::time::timeout(std::time::Duration::from_millis(50), s.send(Bytes::new())).await;
        assert!(blocked.is_err(), "the 17th event waits for the reader");
        ends.from_user.recv().await.unwrap();
        s.send(Bytes::new()).await.unwrap();
    }

    #[tokio::test]
    async fn dropped_driver_reads_as_reset() {
        let (c, ends) = ClientStream::new();
        drop(ends);
        let (send, mut recv) = c.split();
        assert!(matches!(recv.recv().await, Incoming::Reset(_)));
        assert_eq!(send.send(Bytes::new()).await, Err(Closed));
    }
}
