//! One accepted connection: sniff its protocol family, then run that family's driver, or refuse
//! it in its own protocol when this listener serves the other cluster.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use sluice_sniff::{Detection, Family};
use sluice_stream::{ServerStream, StreamEnd, StreamRequest, StreamingHandler};
use sluice_thrift::{ApplicationException, ExceptionKind};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::{
    pingpong, ttstream, Cluster, DefaultHandler, Drain, Request, Response, ServerConfig,
    ServerStats,
};

/// What every connection of a server shares.
pub(crate) struct Ctx<H, S> {
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) handler: Arc<H>,
    pub(crate) streaming: Arc<S>,
    pub(crate) stats: Arc<ServerStats>,
}

/// What a protocol driver needs besides its socket and handler: the listener's settings and
/// the counters it reports refusals in.
#[derive(Clone)]
pub(crate) struct ConnCtx {
    pub(crate) config: Arc<ServerConfig>,
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

/// Answers every ping-pong request with the wrong-cluster exception.
struct RefusePingPong(String);

impl DefaultHandler for RefusePingPong {
    async fn handle(&self, _req: Request) -> Response {
        Response::error(ApplicationException::new(
            ExceptionKind::UNKNOWN_SERVICE,
            self.0.clone(),
        ))
    }
}

/// Ends every stream with the wrong-cluster exception.
struct RefuseStreams(String);

impl StreamingHandler for RefuseStreams {
    async fn handle(&self, _req: StreamRequest, stream: ServerStream) {
        stream
            .finish(StreamEnd::error(
                ExceptionKind::UNKNOWN_SERVICE.0 as u32,
                self.0.clone(),
            ))
            .await;
    }
}

pub(crate) async fn serve_connection<H: DefaultHandler, S: StreamingHandler>(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctx: Ctx<H, S>,
    drain: Drain,
) {
    let config = ctx.config.clone();
    ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
    if let Some(tls) = config.tls.clone() {
        Box::pin(serve_tls(stream, peer, tls, ctx, drain)).await;
        return;
    }
    // Sniffing needs only the first bytes; drivers grow the buffer as frames need.
    let mut buf = BytesMut::with_capacity(512);
    let family = match tokio::time::timeout(config.sniff_timeout, sniff(&mut stream, &mut buf))
        .await
    {
        Err(_) => {
            tracing::info!(%peer, listener = %config.name, "closing connection: no protocol recognised within the sniff timeout");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, listener = %config.name, error = %e, "connection closed before sniffing");
            return;
        }
        Ok(Ok(Detection::NotOurs(reason))) => {
            ctx.stats.not_ours.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, listener = %config.name, %reason, "closing connection: not a protocol this listener serves");
            return;
        }
        Ok(Ok(Detection::Protocol(f))) => f,
    };
    let wrong = matches!(
        (config.cluster, family),
        (Cluster::TTStream, Family::Http2) | (Cluster::Grpc, Family::PingPong | Family::TTStream)
    );
    if wrong {
        ctx.stats.wrong_cluster.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, listener = %config.name, cluster = config.cluster.as_str(), ?family, "refusing a connection of the other cluster's family");
    }
    // The driver's future is built and boxed outside this async fn, so the connection task holds
    // only a pointer to it: a task is as large as its largest state, and every idle connection
    // keeps one.
    driver(family, wrong, stream, peer, buf, config, ctx, drain).await
}

type Driver = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The boxed driver future for a sniffed connection (or the refusal of the other family).
#[allow(clippy::too_many_arguments)]
fn driver<H: DefaultHandler, S: StreamingHandler>(
    family: Family,
    wrong: bool,
    stream: TcpStream,
    peer: SocketAddr,
    buf: BytesMut,
    config: Arc<ServerConfig>,
    ctx: Ctx<H, S>,
    drain: Drain,
) -> Driver {
    let cctx = ConnCtx {
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
            Family::Http2 => Box::pin(async move { refuse_http2(stream, peer, buf, &text).await }),
        };
    }
    match family {
        Family::PingPong => Box::pin(pingpong::run(stream, peer, buf, cctx, ctx.handler, drain)),
        Family::TTStream => Box::pin(ttstream::run(stream, peer, buf, cctx, ctx.streaming, drain)),
        Family::Http2 => Box::pin(serve_http2(stream, peer, buf, config, ctx.streaming, drain)),
    }
}

/// GOAWAY with `text` as debug data, so the caller sees why and where to go.
async fn refuse_http2(stream: TcpStream, peer: SocketAddr, buf: BytesMut, text: &str) {
    let io = sluice_io::PrefixedIo::new(buf.freeze(), stream);
    if let Err(e) = sluice_http2::refuse_connection(io, peer, text).await {
        tracing::debug!(%peer, error = %e, "refusing an HTTP/2 connection failed");
    }
}

async fn serve_http2<S: StreamingHandler>(
    stream: TcpStream,
    peer: SocketAddr,
    buf: BytesMut,
    config: Arc<ServerConfig>,
    handler: Arc<S>,
    drain: Drain,
) {
    let io = sluice_io::PrefixedIo::new(buf.freeze(), stream);
    let grpc = sluice_http2::GrpcServerConfig {
        max_message_size: config.max_frame_size,
        // The preface is what the sniffer waits for; SETTINGS follows it at once.
        handshake_timeout: config.sniff_timeout,
        idle_timeout: config.idle_timeout,
        ..Default::default()
    };
    let shutdown = async move { drain.signaled().await };
    if let Err(e) = sluice_http2::serve_connection(io, peer, &grpc, handler, shutdown).await {
        tracing::warn!(%peer, listener = %config.name, reason = %e, "closing HTTP/2 connection");
    }
}

/// A TLS connection: handshake (within the sniff timeout), then HTTP/2 on the decrypted stream.
/// TLS is offered on gRPC listeners only, so anything but the HTTP/2 preface is refused.
async fn serve_tls<H: DefaultHandler, S: StreamingHandler>(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    ctx: Ctx<H, S>,
    drain: Drain,
) {
    let config = ctx.config.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut tls_stream = match tokio::time::timeout(config.sniff_timeout, acceptor.accept(stream))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(%peer, listener = %config.name, reason = %e, "closing connection: TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, listener = %config.name, "closing connection: TLS handshake timed out");
            return;
        }
    };
    let alpn = tls_stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let mut buf = BytesMut::with_capacity(64);
    let sniffed = tokio::time::timeout(config.sniff_timeout, async {
        while buf.len() < sluice_sniff::CONNECTION_SNIFF_LEN {
            if tls_stream.read_buf(&mut buf).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
        }
        Ok(sluice_sniff::sniff_connection(&buf))
    })
    .await;
    match sniffed {
        Ok(Ok(Ok(Detection::Protocol(Family::Http2)))) => {}
        other => {
            ctx.stats.not_ours.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, listener = %config.name, ?alpn, outcome = ?other, "closing TLS connection: not HTTP/2");
            return;
        }
    }
    let io = sluice_io::PrefixedIo::new(buf.freeze(), tls_stream);
    let grpc = sluice_http2::GrpcServerConfig {
        max_message_size: config.max_frame_size,
        // The preface is what the sniffer waits for; SETTINGS follows it at once.
        handshake_timeout: config.sniff_timeout,
        idle_timeout: config.idle_timeout,
        ..Default::default()
    };
    let shutdown = async move { drain.signaled().await };
    if let Err(e) = sluice_http2::serve_connection(io, peer, &grpc, ctx.streaming, shutdown).await {
        tracing::warn!(%peer, listener = %config.name, reason = %e, "closing HTTP/2 connection");
    }
}

/// Reads until the connection-level sniffer decides.
async fn sniff(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<Detection<Family>> {
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
