//! One accepted connection: sniff its protocol family, then run that family's driver, or refuse
//! it in its own protocol when this listener serves the other cluster.

use std::any::Any;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use sluice_sniff::{Detection, Family};

use crate::counted::Counted;
use sluice_stream::{ServerStream, StreamRequest, StreamingHandler};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::error::{ErrorKind, ProxyError};
use crate::{
    pingpong, ttstream, Cluster, DefaultHandler, Drain, Request, Response, ServerConfig,
    ServerStats,
};

/// What every connection of a server shares.
pub(crate) struct Ctx<H, S> {
    pub(crate) config: Arc<ServerConfig>,
    /// The connection's span: the parent of its log lines (given explicitly rather than
    /// entered on every poll of the connection, which would cost a subscriber call per poll).
    pub(crate) span: ConnSpan,
    pub(crate) handler: Arc<H>,
    pub(crate) streaming: Arc<S>,
    pub(crate) stats: Arc<ServerStats>,
}

/// What a protocol driver needs besides its socket and handler: the listener's settings and
/// the counters it reports refusals in.
pub(crate) struct ConnCtx {
    pub(crate) config: Arc<ServerConfig>,
    /// The connection's span (see [`Ctx::span`]).
    pub(crate) span: ConnSpan,
    pub(crate) stats: Arc<ServerStats>,
}

/// The message a caller of the wrong family gets.
fn wrong_cluster_text(config: &ServerConfig, family: Family) -> String {
    let right = match family {
        Family::Http2 => "grpc",
        Family::TTStream | Family::PingPong => "ttstream",
    };
    format!(
        "sluice: listener {:?} serves the {} cluster; {} traffic is served by a {} cluster listener",
        config.name,
        config.cluster.as_str(),
        match family {
            Family::Http2 => "gRPC",
            Family::TTStream => "TTStream",
            Family::PingPong => "ping-pong (TTHeader/Framed/Buffered)",
        },
        right
    )
}

/// Answers every ping-pong request with the wrong-cluster error.
struct RefusePingPong(String);

impl DefaultHandler for RefusePingPong {
    async fn handle(&self, _req: Request) -> Response {
        ProxyError::new(ErrorKind::WrongCluster, self.0.clone()).to_response()
    }
}

/// Ends every stream with the wrong-cluster error.
struct RefuseStreams(String);

impl StreamingHandler for RefuseStreams {
    async fn handle(&self, req: StreamRequest, stream: ServerStream) {
        let e = ProxyError::new(ErrorKind::WrongCluster, self.0.clone());
        stream.finish(e.to_stream_end(&req.protocol)).await;
    }
}

/// A connection's byte stream as the ping-pong and TTStream drivers use it: split into a read
/// and a write half (the TTStream writer runs as a task of its own), and read into a buffer
/// taken only once bytes are there where the stream allows it.
///
/// Implemented for [`TcpStream`], whose owned halves need no lock and whose readiness can be
/// awaited without a buffer, and for [`AnyIo`], any other stream (a Unix socket, an in-memory
/// pipe in tests and fuzzing) split through [`tokio::io::split`].
pub(crate) trait ConnIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The read half.
    type Reader: AsyncRead + Unpin + Send + 'static;
    /// The write half.
    type Writer: AsyncWrite + Unpin + Send + 'static;

    /// Splits the stream into its halves.
    fn split_io(self) -> (Self::Reader, Self::Writer);

    /// Reads into `buf` once bytes are there, giving `buf` room of about `chunk` bytes first
    /// (taken from the thread's spare read buffers when it has none).
    fn poll_read_some(
        rd: &mut Self::Reader,
        buf: &mut BytesMut,
        chunk: usize,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>>;
}

/// Gives `buf` room for a read of about `chunk` bytes: a spare buffer when it has none (an idle
/// connection keeps none), more room when little is left.
fn make_room(buf: &mut BytesMut, chunk: usize) {
    if buf.capacity() == 0 {
        *buf = sluice_io::take_read_buf(chunk);
    } else if buf.capacity() - buf.len() < 1024 {
        buf.reserve(chunk);
    }
}

/// One read through `AsyncRead` into `buf`'s spare room.
fn poll_read_into<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    // The `read_buf` future holds nothing but its two borrows: building one per poll costs
    // nothing, and a ready read completes within this poll.
    let mut read = std::pin::pin!(rd.read_buf(buf));
    std::future::Future::poll(read.as_mut(), cx)
}

impl ConnIo for TcpStream {
    type Reader = tokio::net::tcp::OwnedReadHalf;
    type Writer = tokio::net::tcp::OwnedWriteHalf;

    fn split_io(self) -> (Self::Reader, Self::Writer) {
        self.into_split()
    }

    /// Waits until the socket is readable with no buffer, then takes one and reads.
    ///
    /// Polls readiness instead of awaiting `readable()`, whose future carries a waiter node of
    /// its own: this one is a few pointers, and an idle connection waits in it. The read itself
    /// goes through `AsyncRead`, which marks the socket drained after a short read: the next
    /// wait then asks epoll instead of making a `recvfrom` that can only return EAGAIN
    /// (`try_read_buf` would leave the readiness set, one wasted syscall per request).
    fn poll_read_some(
        rd: &mut Self::Reader,
        buf: &mut BytesMut,
        chunk: usize,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(rd.as_ref().poll_read_ready(cx))?;
        make_room(buf, chunk);
        // Ready readiness makes this read now; stale readiness is cleared and the task waits.
        poll_read_into(rd, buf, cx)
    }
}

/// A counted connection is served as the connection it wraps (a TCP stream keeps its owned
/// halves and its buffer-less wait for readiness).
impl<C: ConnIo> ConnIo for Counted<C> {
    type Reader = Counted<C::Reader>;
    type Writer = Counted<C::Writer>;

    fn split_io(self) -> (Self::Reader, Self::Writer) {
        let (rd, wr) = self.inner.split_io();
        (
            Counted::new(rd, self.bytes.clone()),
            Counted::new(wr, self.bytes),
        )
    }

    fn poll_read_some(
        rd: &mut Self::Reader,
        buf: &mut BytesMut,
        chunk: usize,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        let r = C::poll_read_some(&mut rd.inner, buf, chunk, cx);
        crate::counted::add(&rd.bytes.read, &r);
        r
    }
}

/// Any byte stream other than a [`TcpStream`], served through the generic halves of
/// [`tokio::io::split`] (a lock per poll, which TCP's owned halves avoid).
#[derive(Debug)]
pub(crate) struct AnyIo<T>(pub(crate) T);

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ConnIo for AnyIo<T> {
    type Reader = tokio::io::ReadHalf<T>;
    type Writer = tokio::io::WriteHalf<T>;

    fn split_io(self) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self.0)
    }

    /// Takes a buffer and reads: a generic stream has no readiness to wait on without one, so
    /// an idle connection over it keeps its read buffer.
    fn poll_read_some(
        rd: &mut Self::Reader,
        buf: &mut BytesMut,
        chunk: usize,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        make_room(buf, chunk);
        poll_read_into(rd, buf, cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AnyIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AnyIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The span of one connection: every line logged while it is served (its requests' and
/// streams' included) names the listener, the peer and, once sniffed, the protocol family.
///
/// Made the first time a line is logged (or a debug span needs a parent): a span costs about
/// a kilobyte of the subscriber's memory for as long as the connection lives, and most
/// connections never log a line.
pub(crate) struct ConnSpan {
    config: Arc<ServerConfig>,
    peer: SocketAddr,
    protocol: std::sync::OnceLock<&'static str>,
    span: std::sync::OnceLock<tracing::Span>,
}

impl ConnSpan {
    pub(crate) fn new(config: Arc<ServerConfig>, peer: SocketAddr) -> Self {
        Self {
            config,
            peer,
            protocol: std::sync::OnceLock::new(),
            span: std::sync::OnceLock::new(),
        }
    }

    /// The span, made now if it was not yet.
    pub(crate) fn get(&self) -> &tracing::Span {
        self.span.get_or_init(|| {
            tracing::info_span!(
                "conn",
                listener = %self.config.name,
                peer = %self.peer,
                protocol = self.protocol.get().copied().unwrap_or_default(),
            )
        })
    }

    /// Records the protocol family once it is sniffed.
    pub(crate) fn set_protocol(&self, protocol: &'static str) {
        let _ = self.protocol.set(protocol);
        if let Some(span) = self.span.get() {
            span.record("protocol", protocol);
        }
    }

    /// The parent of a request's or stream's debug span: the connection's span when debug
    /// spans can exist at all, else none (and nothing is made).
    pub(crate) fn for_children(&self) -> tracing::Span {
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            self.get().clone()
        } else {
            tracing::Span::none()
        }
    }
}

/// Serves a connection over any byte stream: a [`TcpStream`] keeps TCP's own path, anything
/// else goes through [`AnyIo`].
pub(crate) async fn serve_any<T, H, S>(stream: T, peer: SocketAddr, ctx: Ctx<H, S>, drain: Drain)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: DefaultHandler,
    S: StreamingHandler,
{
    // Rust has no specialisation, so a TcpStream is recognised by its type id (decided at
    // compile time for each `T`); the caller of the public API then needs no wrapper to get
    // the lock-free halves and the buffer-less idle wait.
    let mut slot = Some(stream);
    let tcp = (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<TcpStream>>()
        .and_then(Option::take);
    match (tcp, slot) {
        (Some(tcp), _) => serve_connection(tcp, peer, ctx, drain).await,
        (None, Some(other)) => serve_connection(AnyIo(other), peer, ctx, drain).await,
        (None, None) => {}
    }
}

/// Serves one connection: counts it, then sniffs it and runs its driver, after a TLS
/// handshake when the listener has TLS.
pub(crate) async fn serve_connection<C: ConnIo, H: DefaultHandler, S: StreamingHandler>(
    stream: C,
    peer: SocketAddr,
    ctx: Ctx<H, S>,
    drain: Drain,
) {
    ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
    let stats = ctx.stats.clone();
    // TLS connections count the bytes on the wire (encrypted), as TCP carries them.
    let stream = Counted::new(stream, stats.bytes.clone());
    let _open = crate::OpenGuard::new(&stats.open);
    if let Some(tls) = ctx.config.tls.clone() {
        // Boxed: the TLS state is large, and a plain connection's task should not carry it.
        Box::pin(serve_tls(stream, peer, tls, ctx, drain)).await;
        return;
    }
    serve_sniffed(stream, peer, ctx, drain).await
}

/// Sniffs a connection (plain, or the decrypted stream of a TLS one) and runs its driver, or
/// refuses it in its own protocol when this listener serves the other cluster.
async fn serve_sniffed<C: ConnIo, H: DefaultHandler, S: StreamingHandler>(
    mut stream: C,
    peer: SocketAddr,
    ctx: Ctx<H, S>,
    drain: Drain,
) {
    let config = ctx.config.clone();
    let stats = ctx.stats.clone();
    // Sniffing needs only the first bytes; drivers grow the buffer as frames need.
    let mut buf = BytesMut::with_capacity(512);
    let family = match tokio::time::timeout(config.sniff_timeout, sniff(&mut stream, &mut buf))
        .await
    {
        Err(_) => {
            ctx.stats.sniff_timeouts.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = ctx.stats.logs.sniff.allow() {
                tracing::info!(parent: ctx.span.get(),
                    suppressed,
                    "closing connection: no protocol recognised within the sniff timeout"
                );
            }
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(parent: ctx.span.get(), error = %e, "connection closed before sniffing");
            return;
        }
        Ok(Ok(Detection::NotOurs(reason))) => {
            ctx.stats.not_ours.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(parent: ctx.span.get(), %reason, "closing connection: not a protocol this listener serves");
            return;
        }
        Ok(Ok(Detection::Protocol(f))) => f,
    };
    ctx.span.set_protocol(family.as_str());
    let counts = stats.family(family);
    counts.accepted.fetch_add(1, Ordering::Relaxed);
    let _open_family = crate::OpenGuard::new(&counts.open);
    let wrong = matches!(
        (config.cluster, family),
        (Cluster::TTStream, Family::Http2) | (Cluster::Grpc, Family::PingPong | Family::TTStream)
    );
    if wrong {
        ctx.stats.wrong_cluster.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(parent: ctx.span.get(),
            cluster = config.cluster.as_str(),
            ?family,
            "refusing a connection of the other cluster's family"
        );
    }
    // The driver's future is built and boxed outside this async fn, so the connection task holds
    // only a pointer to it: a task is as large as its largest state, and every idle connection
    // keeps one.
    driver(family, wrong, stream, peer, buf, config, ctx, drain).await
}

type Driver = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The boxed driver future for a sniffed connection (or the refusal of the other family).
#[allow(clippy::too_many_arguments)]
fn driver<C: ConnIo, H: DefaultHandler, S: StreamingHandler>(
    family: Family,
    wrong: bool,
    stream: C,
    peer: SocketAddr,
    buf: BytesMut,
    config: Arc<ServerConfig>,
    ctx: Ctx<H, S>,
    drain: Drain,
) -> Driver {
    let cctx = ConnCtx {
        span: ctx.span,
        config: config.clone(),
        stats: ctx.stats.clone(),
    };
    if wrong {
        let text = wrong_cluster_text(&config, family);
        return match family {
            Family::PingPong => Box::pin(pingpong::run(
                stream,
                peer,
                buf,
                cctx,
                Arc::new(RefusePingPong(text)),
                drain,
            )),
            Family::TTStream => Box::pin(ttstream::run(
                stream,
                peer,
                buf,
                cctx,
                Arc::new(RefuseStreams(text)),
                drain,
            )),
            Family::Http2 => {
                Box::pin(async move { refuse_http2(stream, peer, buf, &text, cctx.span).await })
            }
        };
    }
    match family {
        Family::PingPong => Box::pin(pingpong::run(stream, peer, buf, cctx, ctx.handler, drain)),
        Family::TTStream => Box::pin(ttstream::run(stream, peer, buf, cctx, ctx.streaming, drain)),
        Family::Http2 => Box::pin(serve_http2(stream, peer, buf, cctx, ctx.streaming, drain)),
    }
}

/// GOAWAY with `text` as debug data, so the caller sees why and where to go.
async fn refuse_http2<C: ConnIo>(
    stream: C,
    peer: SocketAddr,
    buf: BytesMut,
    text: &str,
    span: ConnSpan,
) {
    let io = sluice_io::PrefixedIo::new(buf.freeze(), stream);
    if let Err(e) = sluice_http2::refuse_connection(io, peer, text).await {
        tracing::debug!(parent: span.get(), error = %e, "refusing an HTTP/2 connection failed");
    }
}

async fn serve_http2<C: ConnIo, S: StreamingHandler>(
    stream: C,
    peer: SocketAddr,
    buf: BytesMut,
    ctx: ConnCtx,
    handler: Arc<S>,
    drain: Drain,
) {
    let ConnCtx {
        config,
        span,
        stats,
    } = ctx;
    let io = sluice_io::PrefixedIo::new(buf.freeze(), stream);
    let grpc = grpc_config(&config, &stats, &span);
    let shutdown = async move { drain.signaled().await };
    if let Err(e) = sluice_http2::serve_connection(io, peer, &grpc, handler, shutdown).await {
        stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(parent: span.get(), reason = %e, "closing HTTP/2 connection");
    }
}

/// A TLS connection: the handshake (within the sniff timeout), then the decrypted stream is
/// served as a plain connection would be: sniffed, and refused if of the other cluster.
async fn serve_tls<C: ConnIo, H: DefaultHandler, S: StreamingHandler>(
    stream: C,
    peer: SocketAddr,
    tls: crate::TlsConfig,
    ctx: Ctx<H, S>,
    drain: Drain,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.inner);
    match tokio::time::timeout(ctx.config.sniff_timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => {
            tracing::debug!(parent: ctx.span.get(),
                alpn = ?s.get_ref().1.alpn_protocol().map(String::from_utf8_lossy),
                client_cert = s.get_ref().1.peer_certificates().is_some(),
                "TLS handshake done"
            );
            serve_sniffed(AnyIo(s), peer, ctx, drain).await;
        }
        Ok(Err(e)) => match handshake_failure(&e) {
            Some(kind) => {
                ctx.stats
                    .tls_handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = ctx.stats.logs.tls.allow() {
                    tracing::warn!(parent: ctx.span.get(),
                        kind,
                        reason = %e,
                        suppressed,
                        "closing connection: TLS handshake failed"
                    );
                }
            }
            // Closed or reset by the peer (a TCP health check, a client that gave up): as
            // quiet as a plain connection closed before sniffing.
            None => {
                tracing::debug!(parent: ctx.span.get(), error = %e, "connection closed during the TLS handshake");
            }
        },
        Err(_) => {
            ctx.stats.sniff_timeouts.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = ctx.stats.logs.sniff.allow() {
                tracing::info!(parent: ctx.span.get(),
                    suppressed,
                    "closing connection: TLS handshake not done within the sniff timeout"
                );
            }
        }
    }
}

/// A short name for why a handshake failed, from rustls's error; `None` when rustls found
/// nothing wrong and the connection itself ended.
fn handshake_failure(e: &std::io::Error) -> Option<&'static str> {
    use tokio_rustls::rustls::Error as E;
    Some(match e.get_ref()?.downcast_ref::<E>()? {
        E::NoCertificatesPresented => "no client certificate",
        E::InvalidCertificate(_) => "client certificate refused",
        E::AlertReceived(_) => "the client sent an alert",
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => "not TLS",
        E::PeerIncompatible(_) | E::NoApplicationProtocol => "nothing in common",
        _ => "other",
    })
}

/// The HTTP/2 settings of a gRPC connection on this listener.
fn grpc_config(
    config: &ServerConfig,
    stats: &ServerStats,
    span: &ConnSpan,
) -> sluice_http2::GrpcServerConfig {
    sluice_http2::GrpcServerConfig::default()
        .with_max_message_size(config.max_frame_size)
        // The preface is what the sniffer waits for; SETTINGS follows it at once.
        .with_handshake_timeout(config.sniff_timeout)
        .with_idle_timeout(config.idle_timeout)
        .with_stats(Some(stats.grpc.clone()))
        .with_span(span.for_children())
        .with_listener(config.listener)
}

/// Reads until the connection-level sniffer decides.
async fn sniff<C: ConnIo>(
    stream: &mut C,
    buf: &mut BytesMut,
) -> std::io::Result<Detection<Family>> {
    loop {
        match sluice_sniff::sniff_connection(buf) {
            Ok(d) => return Ok(d),
            Err(_) => {
                if stream.read_buf(buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
    }
}
