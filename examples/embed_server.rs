//! Embedding Sluice's binary-generic server with your own `DefaultHandler`.
//!
//! This handler answers every thrift request by echoing it, except method `Hello`, which it
//! answers from the header: the reply says which service and transport the caller used. Run it
//! and point any Kitex/Volo client (TTHeader, Framed, Buffered) at 127.0.0.1:9999:
//!
//! ```sh
//! cargo run --example embed_server
//! ```

use std::sync::Arc;

use bytes::Bytes;
use sluice::server::{DefaultHandler, Request, Response, Server, ServerConfig};

/// Echoes, except `Hello`.
#[derive(Debug)]
pub struct Handler;

impl DefaultHandler for Handler {
    async fn handle(&self, req: Request) -> Response {
        tracing::info!(
            service = %req.service,
            method = %req.method,
            transport = req.transport.as_str(),
            seq = req.seq_id,
            "request"
        );
        match req.method.as_str() {
            // The result struct `{0: string}`: a method returning a string.
            "Hello" => {
                let text = format!("hello from {} over {}", req.service, req.transport.as_str());
                let mut b = vec![0x0b, 0x00, 0x00];
                b.extend_from_slice(&(text.len() as i32).to_be_bytes());
                b.extend_from_slice(text.as_bytes());
                b.push(0x00);
                Response::reply(Bytes::from(b))
            }
            _ => Response::reply(sluice::server::echo::echo_result(&req.args)),
        }
    }
}

/// Serves [`Handler`] on `listener` until `drain` is signalled.
pub async fn run(listener: tokio::net::TcpListener, drain: sluice::server::Drain) {
    Server::new(
        ServerConfig::default().with_name("embedded"),
        Arc::new(Handler),
    )
    .serve(listener, drain)
    .await
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt::init();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:9999").await?;
    let (handle, drain) = sluice::server::drain::channel();
    let serving = tokio::spawn(run(listener, drain));
    tokio::signal::ctrl_c().await?;
    handle.drain();
    let _ = serving.await;
    Ok(())
}
