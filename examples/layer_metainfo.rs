//! A motore layer around the stock forwarder: every request and stream through the proxy gets
//! a metainfo key added before it is forwarded, and is counted.
//!
//! * ping-pong (TTHeader, Framed, Buffered): the key goes into the request's TTHeader string
//!   keys, so a TTHeader downstream receives it as metainfo;
//! * streams (TTStream, gRPC): the key is appended to the stream's headers (TTStream header
//!   frame string keys, gRPC metadata).
//!
//! The layer implements both handler traits, because [`Proxy::serve_layered`] hands it every
//! ping-pong request and every stream. What the layer does not change (routing, deadlines,
//! error rendering) stays the forwarder's.
//!
//! ```sh
//! cargo run -- echo --listen 127.0.0.1:8888 &
//! cargo run --example layer_metainfo -- 127.0.0.1:9000 127.0.0.1:9001 127.0.0.1:8888
//! ```
//!
//! serves ping-pong and TTStream on 127.0.0.1:9000 and gRPC on 127.0.0.1:9001, all forwarded
//! to the echo service with `x-proxied-by: layer_metainfo` added.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sluice::proxy::{Config, ConfigError, Proxy};
use sluice::server::layer::Layer;
use sluice::server::{
    DefaultHandler, Request, Response, ServerStream, StreamRequest, StreamingHandler,
};
use sluice::stream::Protocol;

/// The key the layer adds.
pub const KEY: &str = "x-proxied-by";
/// Its value.
pub const VALUE: &str = "layer_metainfo";

/// What the layer has seen.
#[derive(Debug, Default)]
pub struct Counts {
    /// Ping-pong requests.
    pub requests: AtomicU64,
    /// TTStream streams.
    pub ttstreams: AtomicU64,
    /// gRPC calls (each one a stream, unary included).
    pub grpc_calls: AtomicU64,
}

/// Adds [`KEY`] to each request and stream, counts it, then hands it to the inner handler.
#[derive(Debug)]
pub struct Tag<H> {
    inner: H,
    counts: Arc<Counts>,
}

impl<H: DefaultHandler> DefaultHandler for Tag<H> {
    async fn handle(&self, mut req: Request) -> Response {
        self.counts.requests.fetch_add(1, Ordering::Relaxed);
        req.header.str_kvs.insert(KEY, VALUE);
        self.inner.handle(req).await
    }
}

impl<H: StreamingHandler> StreamingHandler for Tag<H> {
    async fn handle(&self, mut req: StreamRequest, stream: ServerStream) {
        let counter = match req.protocol {
            Protocol::TTStream => &self.counts.ttstreams,
            Protocol::Grpc { .. } => &self.counts.grpc_calls,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        req.headers.push(KEY, VALUE);
        self.inner.handle(req, stream).await
    }
}

/// The layer: makes a [`Tag`] around whatever handler it is given.
#[derive(Debug, Clone)]
pub struct TagLayer(pub Arc<Counts>);

impl<H> Layer<H> for TagLayer {
    type Service = Tag<H>;

    fn layer(self, inner: H) -> Tag<H> {
        Tag {
            inner,
            counts: self.0,
        }
    }
}

/// A proxy configuration: ping-pong and TTStream on `streams`, gRPC on `grpc`, everything
/// routed to the downstream `echo` at `downstream`.
pub fn config(
    streams: SocketAddr,
    grpc: SocketAddr,
    downstream: SocketAddr,
) -> Result<Config, ConfigError> {
    Config::from_toml(&format!(
        r#"
[[listeners]]
name = "streams"
address = "{streams}"
cluster = "ttstream"

[[listeners]]
name = "grpc"
address = "{grpc}"
cluster = "grpc"

[[routes]]
service = "*"
downstream = "echo"

[downstreams.echo]
endpoints = ["{downstream}"]
"#
    ))
}

/// Serves `proxy` with the [`TagLayer`] around its forwarder until `drain` is signalled.
pub async fn run(proxy: Proxy, counts: Arc<Counts>, drain: sluice::server::Drain) {
    proxy.serve_layered(drain, TagLayer(counts)).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init();
    let mut args = std::env::args().skip(1);
    let mut next = |default: &str| -> Result<SocketAddr, std::net::AddrParseError> {
        args.next().as_deref().unwrap_or(default).parse()
    };
    let (streams, grpc, downstream) = (
        next("127.0.0.1:9000")?,
        next("127.0.0.1:9001")?,
        next("127.0.0.1:8888")?,
    );
    let proxy = Proxy::bind(config(streams, grpc, downstream)?).await?;
    for (name, addr) in proxy.local_addrs() {
        println!("listener {name} on {addr}");
    }
    let counts = Arc::new(Counts::default());
    let (handle, drain) = sluice::server::drain::channel();
    let serving = tokio::spawn(run(proxy, counts.clone(), drain));
    tokio::signal::ctrl_c().await?;
    handle.drain();
    let _ = serving.await;
    println!(
        "requests {}, TTStream streams {}, gRPC calls {}",
        counts.requests.load(Ordering::Relaxed),
        counts.ttstreams.load(Ordering::Relaxed),
        counts.grpc_calls.load(Ordering::Relaxed)
    );
    Ok(())
}
