//! Test harness: a gRPC server on loopback running `serve_connection` with a scripted handler,
//! and helpers shared by the end-to-end and raw-h2 tests.
// Each test file uses a different part of this module.
#![allow(dead_code, unreachable_pub)]

pub mod raw;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_http2::{serve_connection, GrpcServerConfig};
use sluice_io::PrefixedIo;
use sluice_stream::{Metadata, Protocol, ServerStream, StreamEnd, StreamRequest, StreamingHandler};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// The status message the failing methods use: non-ASCII and a `%`.
pub const FAIL_MESSAGE: &str = "boom \u{2603} 100%";
/// Its percent-encoding.
pub const FAIL_MESSAGE_WIRE: &str = "boom %E2%98%83 100%25";

/// What the handler saw, reported to the test.
#[derive(Debug)]
pub enum Report {
    /// A request arrived.
    Request(StreamRequest),
    /// `recv` returned this.
    Recv(Result<Option<Bytes>, sluice_stream::Reset>),
    /// How long until the deadline, when the request arrived.
    DeadlineLeft(Option<Duration>),
    /// Bytes sent so far by `Flood`.
    Sent(usize),
}

/// Behaviour by method name:
///
/// * `Echo`: response headers = the request's `x-*` and `*-bin` headers, then every message
///   echoed, then OK with trailers `x-trailer: t` and the request's `*-bin` headers;
/// * `FailFirst`: Trailers-Only error 13 [`FAIL_MESSAGE`] with `biz-status`/`biz-extra`;
/// * `FailAfter`: echoes until the half-close, then the same error;
/// * `Deadline`: reports the time left to the deadline, then OK;
/// * `Stall`: never reads; ends (OK) when the client resets or the connection goes;
/// * `RecvReport`: reports every `recv` result until the end of input, then OK;
/// * `Drop`: returns without a status;
/// * `Slow`: waits 300 ms, then echoes like `Echo`;
/// * `Flood`: sends 10 MiB in 64 KiB messages, reporting the bytes sent after each.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub reports: mpsc::UnboundedSender<Report>,
    /// Handlers running now.
    pub live: Arc<AtomicUsize>,
}

/// Counts a running handler until it is dropped (returned or aborted).
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(n: &Arc<AtomicUsize>) -> Live {
        n.fetch_add(1, Ordering::SeqCst);
        Live(n.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl StreamingHandler for Scripted {
    async fn handle(&self, req: StreamRequest, stream: ServerStream) {
        let _live = Live::new(&self.live);
        let method = req.method.clone();
        let _ = self.reports.send(Report::Request(req.clone()));
        match method.as_str() {
            "Echo" => echo(req, stream).await,
            "Slow" => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                echo(req, stream).await
            }
            "FailFirst" => stream.finish(fail_end()).await,
            "FailAfter" => {
                let mut stream = stream;
                while let Ok(Some(m)) = stream.recv().await {
                    if stream.send(m).await.is_err() {
                        return;
                    }
                }
                stream.finish(fail_end()).await
            }
            "Deadline" => {
                let left = req
                    .deadline
                    .map(|d| d.saturating_duration_since(Instant::now()));
                let _ = self.reports.send(Report::DeadlineLeft(left));
                stream.finish(StreamEnd::ok()).await
            }
            "Stall" => {
                let (_recv, send) = stream.split();
                send.closed().await;
            }
            "RecvReport" => {
                let mut stream = stream;
                loop {
                    let r = stream.recv().await;
                    let done = !matches!(r, Ok(Some(_)));
                    let _ = self.reports.send(Report::Recv(r));
                    if done {
                        break;
                    }
                }
                stream.finish(StreamEnd::ok()).await
            }
            "Drop" => drop(stream),
            "Forever" => {
                // Never returns, not even when the stream or the connection goes.
                let _keep = stream;
                std::future::pending::<()>().await
            }
            "Flood" => {
                let msg = Bytes::from(vec![9u8; 64 * 1024]);
                let mut sent = 0;
                for _ in 0..160 {
                    if stream.send(msg.clone()).await.is_err() {
                        return;
                    }
                    sent += msg.len();
                    let _ = self.reports.send(Report::Sent(sent));
                }
                stream.finish(StreamEnd::ok()).await
            }
            other => {
                stream
                    .finish(StreamEnd::error(
                        sluice_stream::StatusCode::Grpc(12),
                        format!("unknown method {other}"),
                    ))
                    .await
            }
        }
    }
}

fn passed_on(name: &[u8]) -> bool {
    name.starts_with(b"x-") || name.ends_with(b"-bin")
}

async fn echo(req: StreamRequest, mut stream: ServerStream) {
    let mut headers = Metadata::new();
    let mut trailers = Metadata::new();
    trailers.push("x-trailer", "t");
    for (k, v) in req.headers.iter() {
        if passed_on(k) {
            headers.push(Bytes::copy_from_slice(k), Bytes::copy_from_slice(v));
        }
        if k.ends_with(b"-bin") {
            trailers.push(Bytes::copy_from_slice(k), Bytes::copy_from_slice(v));
        }
    }
    if stream.send_headers(headers).await.is_err() {
        return;
    }
    loop {
        match stream.recv().await {
            Ok(Some(m)) => {
                if stream.send(m).await.is_err() {
                    return;
                }
            }
            Ok(None) => break,
            Err(_) => return,
        }
    }
    stream
        .finish(StreamEnd {
            error: None,
            trailers,
        })
        .await
}

pub fn fail_end() -> StreamEnd {
    let mut end = StreamEnd::error(sluice_stream::StatusCode::Grpc(13), FAIL_MESSAGE);
    end.trailers.push("biz-status", "10001");
    end.trailers.push("biz-extra", "{\"k\":\"v\"}");
    end
}

/// A running test server.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub conns: Arc<AtomicUsize>,
    /// What the handler saw.
    pub reports: mpsc::UnboundedReceiver<Report>,
    /// Each connection's `serve_connection` result, as it ends.
    pub results: mpsc::UnboundedReceiver<Result<(), String>>,
    /// Handlers running now.
    pub live: Arc<AtomicUsize>,
    shutdown: watch::Sender<bool>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(GrpcServerConfig::default()).await
    }

    pub async fn start_with(config: GrpcServerConfig) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let (results_tx, results) = mpsc::unbounded_channel();
        let (shutdown, _) = watch::channel(false);
        let conns = Arc::new(AtomicUsize::new(0));
        let live = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(Scripted {
            reports: reports_tx,
            live: live.clone(),
        });
        let shutdown_tx = shutdown.clone();
        let counter = conns.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, peer)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let config = config.clone();
                let mut stop = shutdown_tx.subscribe();
                let results = results_tx.clone();
                tokio::spawn(async move {
                    // Like the real listener: the sniffer has read the start of the preface,
                    // which the driver gets back through `PrefixedIo`.
                    let mut head = vec![0u8; 10];
                    if tcp.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let io = PrefixedIo::new(Bytes::from(head), tcp);
                    let stopped = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    let r = serve_connection(io, peer, &config, handler, stopped).await;
                    let _ = results.send(r.map_err(|e| e.to_string()));
                });
            }
        });
        TestServer {
            addr,
            conns,
            reports,
            results,
            live,
            shutdown,
        }
    }

    /// Starts a graceful shutdown of every connection.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// The next report, failing after 5 s.
    pub async fn report(&mut self) -> Report {
        tokio::time::timeout(Duration::from_secs(5), self.reports.recv())
            .await
            .expect("a handler report within 5 s")
            .expect("reports open")
    }

    /// The next request report, skipping others.
    pub async fn request(&mut self) -> StreamRequest {
        loop {
            if let Report::Request(r) = self.report().await {
                return r;
            }
        }
    }
}

/// `Protocol::Grpc` fields of a request.
pub fn grpc_fields(req: &StreamRequest) -> (&str, &str, &str) {
    match &req.protocol {
        Protocol::Grpc {
            path,
            content_type,
            authority,
        } => (path, content_type, authority),
        other => panic!("not gRPC: {other:?}"),
    }
}

/// A gRPC message with its prefix.
pub fn framed(msg: &[u8]) -> Bytes {
    let mut v = vec![0u8, 0, 0, 0, 0];
    v[1..5].copy_from_slice(&(msg.len() as u32).to_be_bytes());
    v.extend_from_slice(msg);
    Bytes::from(v)
}

/// Fails a test that would otherwise hang.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 10 s"))
}
