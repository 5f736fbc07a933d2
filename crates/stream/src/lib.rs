//! The stream API shared by Sluice's TTStream and gRPC drivers, clients and forwarders.
//!
//! A stream is a bidirectional sequence of raw messages with headers at the start and an end
//! status with trailers, as Kitex's binary-generic `BidiStreamingServer` sees it (gRPC unary
//! calls included). Drivers (one per protocol) translate between the wire and [`Event`]s;
//! handlers and forwarders use the handles:
//!
//! * [`ServerStream`]: the server side's handle, given to a `StreamingHandler`;
//! * [`ClientStream`]: a client's handle on a stream it opened downstream.
//!
//! Incoming events reach a handle through a bounded [`pipe`] ([`CHANNEL_DEPTH`] events) filled
//! by the connection's reader; outgoing events go to the driver's [`EventSink`], which encodes
//! them onto the connection (TTStream) or queues them for the stream's task (gRPC), and whose
//! room is bounded too. A slow reader on one side therefore slows the other side's reads instead
//! of growing a queue: backpressure is end to end.
//!
//! A forwarder splices ([`ServerRecv::splice`], [`ClientRecv::splice`]): each side's incoming
//! events then go from that side's connection reader straight into a sink that hands them to
//! the other side, with no task of its own in between.
//!
//! [`StreamEnd`] and [`Metadata`] carry each protocol's own values: a stream forwarded within
//! its family passes them through unchanged. A forwarder that converts between families (a
//! downstream's `stream_protocol` in the proxy) maps the metadata keys itself; status and reset
//! codes are typed by family ([`StatusCode`], [`ResetCode`]) and each driver turns another
//! family's code into its nearest own one when it writes it.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;

mod pipe;
pub use pipe::{pipe, PipeRx, PipeTx};

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

/// The code of an error end, typed by the protocol family that carries it, so a gRPC status
/// can never go out as a TTStream exception type or the other way round: a driver of the other
/// family converts it explicitly ([`StatusCode::to_grpc`], [`StatusCode::to_ttstream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusCode {
    /// A gRPC status code (`grpc-status`).
    Grpc(u32),
    /// A TTStream trailer exception's type id: a `TApplicationException` type (1 unknown
    /// method, 6 internal error, ...) or one of TTStream's 12001-12015 codes.
    TTStream(i32),
}

impl StatusCode {
    /// The code as a gRPC status. A TTStream type maps to its nearest status: 1 (unknown
    /// method) to 12 `UNIMPLEMENTED`, 20 (unknown service) to Kitex's 20, 12014 and 12015
    /// (timeouts) to 4 `DEADLINE_EXCEEDED`, 12007-12011 (cancellations) to 1 `CANCELLED`, any
    /// other to 2 `UNKNOWN`.
    pub fn to_grpc(self) -> u32 {
        match self {
            StatusCode::Grpc(c) => c,
            StatusCode::TTStream(1) => 12,
            StatusCode::TTStream(20) => 20,
            StatusCode::TTStream(12014 | 12015) => 4,
            StatusCode::TTStream(12007..=12011) => 1,
            StatusCode::TTStream(_) => 2,
        }
    }

    /// The code as a TTStream exception type. A gRPC status maps to its nearest type: 12
    /// `UNIMPLEMENTED` to 1 (unknown method), 20 to 20 (unknown service), 4
    /// `DEADLINE_EXCEEDED` to 12015, 1 `CANCELLED` to 12007, any other to 6 (internal error).
    pub fn to_ttstream(self) -> i32 {
        match self {
            StatusCode::TTStream(t) => t,
            StatusCode::Grpc(12) => 1,
            StatusCode::Grpc(20) => 20,
            StatusCode::Grpc(4) => 12015,
            StatusCode::Grpc(1) => 12007,
            StatusCode::Grpc(_) => 6,
        }
    }

    /// The number as its own family writes it.
    pub fn value(self) -> i64 {
        match self {
            StatusCode::Grpc(c) => i64::from(c),
            StatusCode::TTStream(t) => i64::from(t),
        }
    }
}

/// Compares the number, whichever family: for tests and logs that know the family already.
impl PartialEq<u32> for StatusCode {
    fn eq(&self, other: &u32) -> bool {
        self.value() == i64::from(*other)
    }
}

impl std::fmt::Display for StatusCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.value())
    }
}

/// An error end status: its typed code and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorStatus {
    /// gRPC status code (gRPC streams) or exception type id (TTStream).
    pub code: StatusCode,
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
    pub fn error(code: StatusCode, message: impl Into<String>) -> Self {
        Self {
            error: Some(ErrorStatus {
                code,
                message: message.into(),
            }),
            trailers: Metadata::new(),
        }
    }
}

/// Why a stream was aborted, typed by the protocol family that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetCode {
    /// A TTStream RST's exception type id (12007 user cancel, ...).
    TTStream(i32),
    /// An HTTP/2 RST_STREAM error code (8 CANCEL, ...).
    Http2(u32),
    /// The other side went away (its connection closed, or its handle was dropped) without a
    /// code of its own.
    Gone,
}

impl ResetCode {
    /// The code of a TTStream RST: an HTTP/2 code, or none, is a cancel (12007).
    pub fn to_ttstream(self) -> i32 {
        match self {
            ResetCode::TTStream(t) => t,
            ResetCode::Http2(_) | ResetCode::Gone => 12007,
        }
    }

    /// The code of an HTTP/2 RST_STREAM: a TTStream code, or none, is CANCEL (8).
    pub fn to_http2(self) -> u32 {
        match self {
            ResetCode::Http2(c) => c,
            ResetCode::TTStream(_) | ResetCode::Gone => 8,
        }
    }

    /// The number as its own family writes it (0 for [`ResetCode::Gone`]).
    pub fn value(self) -> i64 {
        match self {
            ResetCode::TTStream(t) => i64::from(t),
            ResetCode::Http2(c) => i64::from(c),
            ResetCode::Gone => 0,
        }
    }
}

/// Compares the number, whichever family: for tests and logs that know the family already.
impl PartialEq<u32> for ResetCode {
    fn eq(&self, other: &u32) -> bool {
        self.value() == i64::from(*other)
    }
}

impl std::fmt::Display for ResetCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.value())
    }
}

/// An abort: TTStream RST or HTTP/2 RST_STREAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    /// Why, in the family that aborted it.
    pub code: ResetCode,
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
    /// The name of the listener the stream arrived on (see [`listener_name`]); empty when
    /// the server was given none.
    pub listener: &'static str,
}

/// `name` as a `&'static str` shared by every request of a listener, so that requests carry
/// their listener's name at no cost per request. Each distinct name is allocated once for the
/// life of the process (names come from configuration, so there are few).
pub fn listener_name(name: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(n) = names.get(name) {
        return n;
    }
    let n: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(n);
    n
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

/// Where a stream's events go: a driver's encoder (frames straight onto the connection's write
/// queue), a [`pipe`] read by a task, or a forwarder's mapping into another stream.
///
/// `push` never waits: it takes the event or fails. Room is awaited separately with
/// `poll_ready`, so a producer can wait first and then push without holding anything across
/// the wait, and a sink can be called from inside another sink (a spliced pipe).
pub trait EventSink: Send + Sync + 'static {
    /// Takes one event now. `Err(Closed)` once the stream or its connection takes no more.
    fn push(&self, ev: Event) -> Result<(), Closed>;

    /// Ready when there is room for another event (or the sink is closed: `push` then fails).
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()>;

    /// Ready once the other side stopped taking events, where the sink can tell (a pipe whose
    /// reader is gone). Sinks that cannot tell never resolve; their stream's end shows on the
    /// receiving side.
    fn poll_closed(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }

    /// The user dropped its last handle on the stream. A sink whose stream has not ended
    /// ends it here: a server stream with an error status, a client stream with a reset.
    fn release(&self) {}
}

/// A user's handle on a stream's outgoing side; the last one dropped releases the sink.
struct OutboundInner(Arc<dyn EventSink>);

impl Drop for OutboundInner {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[derive(Clone)]
struct Outbound(Arc<OutboundInner>);

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outbound")
    }
}

impl Outbound {
    fn new(sink: Arc<dyn EventSink>) -> Self {
        Self(Arc::new(OutboundInner(sink)))
    }

    async fn send(&self, ev: Event) -> Result<(), Closed> {
        std::future::poll_fn(|cx| self.0 .0.poll_ready(cx)).await;
        self.0 .0.push(ev)
    }

    fn push(&self, ev: Event) -> Result<(), Closed> {
        self.0 .0.push(ev)
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.0 .0.poll_ready(cx)
    }

    async fn closed(&self) {
        std::future::poll_fn(|cx| self.0 .0.poll_closed(cx)).await
    }
}

/// The server side's handle on a stream (what a `StreamingHandler` gets).
#[derive(Debug)]
pub struct ServerStream {
    rx: PipeRx,
    tx: Outbound,
    recv_done: bool,
}

/// The next message of a server stream's incoming side (see [`ServerStream::recv`]).
async fn recv_message(rx: &mut PipeRx, done: &mut bool) -> Result<Option<Bytes>, Reset> {
    if *done {
        return Ok(None);
    }
    loop {
        match rx.recv().await {
            Some(Event::Message(m)) => return Ok(Some(m)),
            Some(Event::HalfClose) => {
                *done = true;
                return Ok(None);
            }
            Some(Event::Reset(r)) => {
                *done = true;
                return Err(r);
            }
            Some(Event::Headers(_) | Event::End(_)) => continue,
            None => {
                *done = true;
                return Err(closed_reset());
            }
        }
    }
}

/// What a closed connection looks like to a receiver.
fn closed_reset() -> Reset {
    Reset {
        code: ResetCode::Gone,
        message: "connection closed".into(),
        cancel_path: None,
    }
}

impl ServerStream {
    /// A handle whose outgoing events go to `outbound`, and the producer of its incoming
    /// events (the driver's end).
    pub fn new(outbound: Arc<dyn EventSink>) -> (ServerStream, PipeTx) {
        let (in_tx, rx) = pipe(CHANNEL_DEPTH);
        (
            ServerStream {
                rx,
                tx: Outbound::new(outbound),
                recv_done: false,
            },
            in_tx,
        )
    }

    /// The next message; `Ok(None)` once the client half-closed; `Err` if it reset the stream
    /// (or the connection went away).
    pub async fn recv(&mut self) -> Result<Option<Bytes>, Reset> {
        recv_message(&mut self.rx, &mut self.recv_done).await
    }

    /// Splits into a receiving half and a sending half, for pumping both ways at once.
    pub fn split(self) -> (ServerRecv, ServerSend) {
        (
            ServerRecv {
                rx: self.rx,
                recv_done: self.recv_done,
            },
            ServerSend { tx: self.tx },
        )
    }

    /// Sends response headers (optional: drivers send empty ones before the first message).
    pub async fn send_headers(&self, md: Metadata) -> Result<(), Closed> {
        self.tx.send(Event::Headers(md)).await
    }

    /// Sends one message, waiting while the peer is slow.
    pub async fn send(&self, msg: Bytes) -> Result<(), Closed> {
        self.tx.send(Event::Message(msg)).await
    }

    /// Ends the stream with `end`.
    pub async fn finish(self, end: StreamEnd) {
        let _ = self.tx.send(Event::End(end)).await;
    }
}

/// The receiving half of a [`ServerStream`].
#[derive(Debug)]
pub struct ServerRecv {
    rx: PipeRx,
    recv_done: bool,
}

impl ServerRecv {
    /// See [`ServerStream::recv`].
    pub async fn recv(&mut self) -> Result<Option<Bytes>, Reset> {
        recv_message(&mut self.rx, &mut self.recv_done).await
    }

    /// Hands every later incoming event (messages, the half-close, a reset, or a "connection
    /// closed" reset if the connection goes away first) to `target`, directly from the
    /// connection's reader; events already received but not yet read go first.
    pub fn splice(self, target: Arc<dyn EventSink>) {
        if self.recv_done {
            // Nothing more will be read from this side.
            return;
        }
        self.rx.splice(target);
    }
}

/// The sending half of a [`ServerStream`].
#[derive(Debug, Clone)]
pub struct ServerSend {
    tx: Outbound,
}

impl ServerSend {
    /// See [`ServerStream::send_headers`].
    pub async fn send_headers(&self, md: Metadata) -> Result<(), Closed> {
        self.tx.send(Event::Headers(md)).await
    }

    /// See [`ServerStream::send`].
    pub async fn send(&self, msg: Bytes) -> Result<(), Closed> {
        self.tx.send(Event::Message(msg)).await
    }

    /// See [`ServerStream::finish`].
    pub async fn finish(&self, end: StreamEnd) {
        let _ = self.tx.send(Event::End(end)).await;
    }

    /// Hands `ev` over now, without waiting for room (see [`EventSink::push`]).
    pub fn push(&self, ev: Event) -> Result<(), Closed> {
        self.tx.push(ev)
    }

    /// Ready when there is room for another event (see [`EventSink::poll_ready`]).
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.tx.poll_ready(cx)
    }

    /// Resolves when the driver has stopped taking events, where it can tell (see
    /// [`EventSink::poll_closed`]).
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// A client's handle on a stream it opened.
#[derive(Debug)]
pub struct ClientStream {
    rx: PipeRx,
    tx: Outbound,
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
    /// A handle whose outgoing events go to `outbound`, and the producer of its incoming
    /// events (the driver's end).
    pub fn new(outbound: Arc<dyn EventSink>) -> (ClientStream, PipeTx) {
        let (in_tx, rx) = pipe(CHANNEL_DEPTH);
        (
            ClientStream {
                rx,
                tx: Outbound::new(outbound),
            },
            in_tx,
        )
    }

    /// Splits into a sending half and a receiving half.
    pub fn split(self) -> (ClientSend, ClientRecv) {
        (ClientSend { tx: self.tx }, ClientRecv { rx: self.rx })
    }
}

/// The sending half of a [`ClientStream`].
#[derive(Debug, Clone)]
pub struct ClientSend {
    tx: Outbound,
}

impl ClientSend {
    /// Sends one message, waiting while the downstream is slow.
    pub async fn send(&self, msg: Bytes) -> Result<(), Closed> {
        self.tx.send(Event::Message(msg)).await
    }

    /// Half-closes: no more messages.
    pub async fn close_send(&self) -> Result<(), Closed> {
        self.tx.send(Event::HalfClose).await
    }

    /// Aborts the stream.
    pub async fn reset(&self, r: Reset) {
        let _ = self.tx.send(Event::Reset(r)).await;
    }

    /// Hands `ev` over now, without waiting for room (see [`EventSink::push`]).
    pub fn push(&self, ev: Event) -> Result<(), Closed> {
        self.tx.push(ev)
    }

    /// Ready when there is room for another event (see [`EventSink::poll_ready`]).
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.tx.poll_ready(cx)
    }
}

/// The receiving half of a [`ClientStream`].
#[derive(Debug)]
pub struct ClientRecv {
    rx: PipeRx,
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
                None => Incoming::Reset(closed_reset()),
            };
        }
    }

    /// Hands every later incoming event (headers, messages, the end or a reset; a "connection
    /// closed" reset if the connection goes away first) to `target`, directly from the
    /// connection's reader; events already received but not yet read go first.
    pub fn splice(self, target: Arc<dyn EventSink>) {
        self.rx.splice(target);
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

/// A shared handler handles streams as the handler it points to (so a layer can wrap an
/// `Arc` of a handler that is also used elsewhere).
impl<S: StreamingHandler> StreamingHandler for Arc<S> {
    fn handle(
        &self,
        req: StreamRequest,
        stream: ServerStream,
    ) -> impl std::future::Future<Output = ()> + Send {
        (**self).handle(req, stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle's outgoing side read by a test through a pipe, as a driver with a task would.
    fn server() -> (ServerStream, PipeTx, PipeRx) {
        let (out_tx, out_rx) = pipe(CHANNEL_DEPTH);
        let (s, in_tx) = ServerStream::new(Arc::new(out_tx));
        (s, in_tx, out_rx)
    }

    #[tokio::test]
    async fn server_stream_recv_and_send() {
        let (mut s, in_tx, mut out) = server();
        in_tx
            .send(Event::Message(Bytes::from_static(b"a")))
            .await
            .unwrap();
        in_tx.send(Event::HalfClose).await.unwrap();
        assert_eq!(s.recv().await, Ok(Some(Bytes::from_static(b"a"))));
        assert_eq!(s.recv().await, Ok(None));
        assert_eq!(s.recv().await, Ok(None));
        s.send(Bytes::from_static(b"b")).await.unwrap();
        s.finish(StreamEnd::ok()).await;
        assert_eq!(
            out.recv().await,
            Some(Event::Message(Bytes::from_static(b"b")))
        );
        assert_eq!(out.recv().await, Some(Event::End(StreamEnd::ok())));
        // The handle is gone: the driver's side ends.
        assert_eq!(out.recv().await, None);
    }

    #[tokio::test]
    async fn a_full_channel_makes_the_sender_wait() {
        let (s, _in_tx, mut out) = server();
        for _ in 0..CHANNEL_DEPTH {
            s.send(Bytes::new()).await.unwrap();
        }
        let blocked =
            tokio::time::timeout(std::time::Duration::from_millis(50), s.send(Bytes::new())).await;
        assert!(blocked.is_err(), "the 17th event waits for the reader");
        out.recv().await.unwrap();
        s.send(Bytes::new()).await.unwrap();
    }

    #[tokio::test]
    async fn dropped_driver_reads_as_reset() {
        let (out_tx, out_rx) = pipe(CHANNEL_DEPTH);
        let (c, in_tx) = ClientStream::new(Arc::new(out_tx));
        drop(in_tx);
        drop(out_rx);
        let (send, mut recv) = c.split();
        assert!(matches!(recv.recv().await, Incoming::Reset(_)));
        assert_eq!(send.send(Bytes::new()).await, Err(Closed));
    }

    /// Counts releases.
    #[derive(Default)]
    struct Releases(std::sync::atomic::AtomicUsize);

    impl EventSink for Releases {
        fn push(&self, _: Event) -> Result<(), Closed> {
            Ok(())
        }
        fn poll_ready(&self, _: &mut Context<'_>) -> Poll<()> {
            Poll::Ready(())
        }
        fn release(&self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn the_sink_is_released_once_when_the_last_handle_goes() {
        let sink = Arc::new(Releases::default());
        let (s, _in_tx) = ServerStream::new(sink.clone());
        let (recv, send) = s.split();
        let send2 = send.clone();
        drop(recv);
        drop(send);
        assert_eq!(sink.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        drop(send2);
        assert_eq!(sink.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
