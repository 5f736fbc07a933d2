//! What the connection fuzz targets share: a client scripted over an in-memory pipe, a server
//! with small limits, and a paused clock so timeouts cost no wall time.
//!
//! Each input is one connection. The client writes its steps while it drains everything the
//! server sends, then closes its side and reads until the server closes. The connection must
//! end by itself within [`CONNECTION_LIMIT`] of virtual time; if it does not, the run panics
//! (a hang is a finding like a crash).
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_server::echo::EchoHandler;
use sluice_server::{DefaultHandler, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// The peer address every fuzzed connection reports.
pub const PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000);

/// Bytes the pipe holds in each direction: small enough that reads split frames and writes
/// wait on the reader, large enough not to make every input crawl.
const PIPE_BUF: usize = 4096;

/// Virtual time a connection may take, from the first byte to the server closing. Every
/// timeout of the fuzzed servers is seconds long, and the handlers sleep at most
/// [`MAX_SLEEP_MS`] per request, so only a connection that would never end gets near it.
pub const CONNECTION_LIMIT: Duration = Duration::from_secs(3600);

/// Longest sleep the echo handler's `Sleep<N>` methods may take here: a handler that never
/// returns would hold a plain (one-at-a-time) connection for good, by design, so the fuzzed
/// handler is kept from being one.
pub const MAX_SLEEP_MS: u64 = 1000;

/// One thing the client does.
#[derive(Debug, Clone)]
pub enum Step {
    /// Writes these bytes (waiting while the pipe is full).
    Write(Bytes),
    /// Lets this much virtual time pass before the next step.
    Wait(Duration),
}

/// What the client saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    /// Bytes the server sent.
    pub received: usize,
}

/// The server side of the pipe, given to the code under test.
pub type ServerIo = DuplexStream;

/// Runs one connection on a fresh current-thread runtime with a paused clock: `serve` gets
/// the server's end of the pipe, the client plays `steps`. Panics if the connection does not
/// end within [`CONNECTION_LIMIT`] of virtual time or the server task panics.
pub fn run_connection<F, Fut>(steps: Vec<Step>, serve: F) -> Outcome
where
    F: FnOnce(ServerIo) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    // A fresh runtime per input: whatever one input leaves behind cannot leak into the next.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    rt.block_on(async move {
        let (client, server_end) = tokio::io::duplex(PIPE_BUF);
        let server = tokio::spawn(serve(server_end));
        let (mut rd, mut wr) = tokio::io::split(client);
        let write = async move {
            for step in steps {
                match step {
                    Step::Write(b) => {
                        if wr.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                    Step::Wait(d) => tokio::time::sleep(d).await,
                }
            }
            let _ = wr.shutdown().await;
            // Kept until the server closes: dropping the write half early is not the same as
            // the half-close just sent.
            wr
        };
        let read = async move {
            let mut sink = vec![0u8; 16 * 1024];
            let mut received = 0;
            loop {
                match rd.read(&mut sink).await {
                    Ok(0) | Err(_) => return received,
                    Ok(n) => received += n,
                }
            }
        };
        let whole = async {
            let (_wr, received) = tokio::join!(write, read);
            let served = server.await;
            (received, served)
        };
        match tokio::time::timeout(CONNECTION_LIMIT, whole).await {
            Ok((received, Ok(()))) => Outcome { received },
            Ok((_, Err(e))) => panic!("the connection task failed: {e}"),
            Err(_) => panic!("the connection did not end within {CONNECTION_LIMIT:?} of virtual time after the client closed"),
        }
    })
}

/// The echo handler with its `Sleep<N>` methods capped at [`MAX_SLEEP_MS`]; streams are
/// [`EchoHandler`]'s own.
#[derive(Debug, Default)]
pub struct FuzzEcho(pub EchoHandler);

impl DefaultHandler for FuzzEcho {
    async fn handle(&self, mut req: Request) -> Response {
        if let Some(ms) = req
            .method
            .strip_prefix("Sleep")
            .and_then(|n| n.parse::<u64>().ok())
        {
            req.method = format!("Sleep{}", ms.min(MAX_SLEEP_MS));
        }
        self.0.handle(req).await
    }
}

impl sluice_server::StreamingHandler for FuzzEcho {
    async fn handle(&self, req: sluice_server::StreamRequest, stream: sluice_server::ServerStream) {
        sluice_server::StreamingHandler::handle(&self.0, req, stream).await
    }
}

/// Server settings for fuzzing: small limits and short timeouts (all in virtual time).
pub fn server_config(cluster: sluice_server::Cluster) -> sluice_server::ServerConfig {
    sluice_server::ServerConfig::default()
        .with_name("fuzz")
        .with_sniff_timeout(Duration::from_secs(1))
        .with_idle_timeout(Duration::from_secs(10))
        .with_frame_timeout(Duration::from_secs(5))
        .with_max_streams_per_conn(8)
        .with_max_frame_size(64 * 1024)
        .with_max_in_flight_per_conn(4)
        .with_max_connections(1)
        .with_default_service(None)
        .with_drain_grace(Duration::from_secs(2))
        .with_cluster(cluster)
        .with_tls(None)
}

/// Serves `io` with the binary-generic server (sniffing included) and the capped echo
/// handler for requests and streams.
pub fn serve_with_server(
    cluster: sluice_server::Cluster,
) -> impl FnOnce(ServerIo) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    move |io| {
        Box::pin(async move {
            let echo = Arc::new(FuzzEcho::default());
            let server = sluice_server::Server::new(server_config(cluster), echo.clone())
                .with_streaming(echo);
            server
                .serve_connection(io, PEER, sluice_server::Drain::never())
                .await;
        })
    }
}
