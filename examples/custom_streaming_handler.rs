//! A `StreamingHandler` of your own, served by Sluice's server for TTStream and gRPC on one
//! port.
//!
//! The handler answers each message with the message upper-cased, sends response headers
//! (`x-handler: shout`) first, and when the caller half-closes ends the stream successfully
//! with a trailer saying how many messages it answered (`x-message-count`). A caller that
//! resets the stream is logged and left. Ping-pong requests on the same port get an
//! `UNKNOWN_METHOD` exception: this server serves streams only.
//!
//! The same handler serves both protocols: the driver translates TTStream frames and gRPC
//! HTTP/2 streams into the same messages, headers and end status.
//!
//! ```sh
//! cargo run --example custom_streaming_handler -- 127.0.0.1:9998
//! ```
//!
//! then open a TTStream stream (any Kitex streaming client) or a gRPC call
//! (`/any.Service/Method`) to 127.0.0.1:9998.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use sluice::server::layer::handler_fn;
use sluice::server::{
    ErrorKind, ProxyError, Request, Server, ServerConfig, ServerStream, StreamEnd, StreamRequest,
    StreamingHandler,
};
use sluice::stream::Metadata;

/// Answers each message upper-cased; ends with `x-message-count` when the caller half-closes.
#[derive(Debug, Default)]
pub struct Shout;

impl StreamingHandler for Shout {
    async fn handle(&self, req: StreamRequest, mut stream: ServerStream) {
        let mut headers = Metadata::new();
        headers.push("x-handler", "shout");
        if stream.send_headers(headers).await.is_err() {
            return;
        }
        let mut answered = 0u64;
        loop {
            match stream.recv().await {
                Ok(Some(msg)) => {
                    if stream
                        .send(Bytes::from(msg.to_ascii_uppercase()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    answered += 1;
                }
                // The caller half-closed: nothing more will come.
                Ok(None) => break,
                Err(reset) => {
                    tracing::info!(method = %req.method, code = %reset.code, reason = %reset.message, "caller reset the stream");
                    return;
                }
            }
        }
        let mut end = StreamEnd::ok();
        end.trailers.push("x-message-count", answered.to_string());
        stream.finish(end).await;
    }
}

/// Serves [`Shout`] (and refuses ping-pong requests) on `listener` until `drain` is signalled.
pub async fn run(listener: tokio::net::TcpListener, drain: sluice::server::Drain) {
    let pingpong = handler_fn(|req: Request| async move {
        ProxyError::new(
            ErrorKind::NoRoute,
            format!(
                "shout: {:?} is not a stream; this server serves streams only",
                req.method
            ),
        )
        .to_response()
    });
    Server::new(
        ServerConfig::default().with_name("shout"),
        Arc::new(pingpong),
    )
    .with_streaming(Arc::new(Shout))
    .serve(listener, drain)
    .await
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt::init();
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:9998")
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = sluice::server::bind_listener(addr)?;
    println!("serving TTStream and gRPC on {}", listener.local_addr()?);
    let (handle, drain) = sluice::server::drain::channel();
    let serving = tokio::spawn(run(listener, drain));
    tokio::signal::ctrl_c().await?;
    handle.drain();
    let _ = serving.await;
    Ok(())
}
