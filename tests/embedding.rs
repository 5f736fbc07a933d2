//! Embedding the proxy in-process: a layer around the stock forwarder, phase hooks, and every
//! error kind as each caller protocol receives it.
//!
//! One in-process proxy per test ([`Fixture`]), bound on port 0 from a TOML config: a
//! `ttstream`-cluster listener (ping-pong and TTStream) and a `grpc`-cluster listener, echo
//! downstreams served by `EchoHandler` over loopback, a dead endpoint, and two downstreams that
//! reset every stream (raw TTStream frames; `h2`). Callers are Sluice's own generic clients.
//!
//! The error matrix, one test per kind (the table of `sluice_server::error`):
//!
//! | kind | TTHeader / Framed / Kitex pb | TTStream | gRPC |
//! |---|---|---|---|
//! | NoRoute | 1 | 1 | 12 |
//! | Unavailable | 6 | 6 | 14 |
//! | Deadline | 6 (`sluice: timeout:`) | 12015 | 4 |
//! | DownstreamReset | - (streams only) | 12009 | 1 |
//! | WrongCluster | 20 | 20 | (GOAWAY; see tests/proxy/grpc.rs) |
//! | Refused | 6 | 6 | 7 |
//! | Internal | 6 | 6 | 13 |
//!
//! Deadlines are real time (200 ms routes): the forwarder's deadlines are `std::time::Instant`s
//! taken from the route, which tokio's paused clock does not move.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use sluice::client::{
    Call, ClientConfig, Endpoint, GenericClient, OpenStream, TTStreamClient, Transport,
};
use sluice::http2::{GrpcClient, GrpcClientConfig, OpenRequest};
use sluice::proxy::{
    CallInfo, Config, DefaultPhases, ErrorKind, Family, Metainfo, Phases, Proxy, ProxyError,
    RequestHead, Router, Target,
};
use sluice::server::echo::EchoHandler;
use sluice::server::layer::Layer;
use sluice::server::{
    DefaultHandler, Drain, DrainHandle, Request, Response, Server, ServerConfig, ServerStream,
    StreamRequest, StreamingHandler,
};
use sluice::sniff::Codec;
use sluice::stream::{Incoming, Metadata, Protocol, StatusCode};
use sluice::thrift::kitex_pb::ErrorProto;
use sluice::thrift::{ApplicationException, ExceptionKind, MessageType};
use sluice::ttheader::Header;
use sluice::ttstream::{FrameDecoder, FrameType, StreamFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// === the layer ===

/// What the counting layer saw.
#[derive(Debug, Default)]
struct Counts {
    requests: AtomicU64,
    ttstreams: AtomicU64,
    grpc: AtomicU64,
}

#[derive(Debug)]
struct Count<H> {
    inner: H,
    counts: Arc<Counts>,
}

impl<H: DefaultHandler> DefaultHandler for Count<H> {
    async fn handle(&self, req: Request) -> Response {
        self.counts.requests.fetch_add(1, Ordering::SeqCst);
        self.inner.handle(req).await
    }
}

impl<H: StreamingHandler> StreamingHandler for Count<H> {
    async fn handle(&self, req: StreamRequest, stream: ServerStream) {
        match req.protocol {
            Protocol::TTStream => &self.counts.ttstreams,
            Protocol::Grpc { .. } => &self.counts.grpc,
        }
        .fetch_add(1, Ordering::SeqCst);
        self.inner.handle(req, stream).await
    }
}

struct CountLayer(Arc<Counts>);

impl<H> Layer<H> for CountLayer {
    type Service = Count<H>;
    fn layer(self, inner: H) -> Count<H> {
        Count {
            inner,
            counts: self.0,
        }
    }
}

// === the phases ===

/// Errors `on_error` saw: family, kind, message.
type Seen = Arc<Mutex<Vec<(Family, ErrorKind, String)>>>;

const REFUSED: &str = "sluice: refused by policy";

/// Routing overrides: metainfo `x-downstream` names the downstream outright; method `Internal`
/// goes to a downstream the config does not have; method `Refuse` is routed, then refused by
/// `request_filter`. Everything else goes by the config's routes.
struct TestPhases {
    errors: Seen,
}

impl Phases for TestPhases {
    fn route<'r>(
        &self,
        head: &RequestHead<'_>,
        router: &'r Router,
    ) -> Result<Target<'r>, ProxyError> {
        let to = |d: &str| Ok(Target::new(d.to_owned(), head.deadline));
        if let Some(d) = head.metainfo("x-downstream") {
            return to(std::str::from_utf8(d).unwrap());
        }
        match head.method {
            "Internal" => to("nowhere"),
            "Refuse" => to("echo"),
            _ => DefaultPhases.route(head, router),
        }
    }

    fn request_filter(
        &self,
        info: &CallInfo<'_>,
        _target: &Target<'_>,
        _metainfo: &mut Metainfo<'_>,
    ) -> Result<(), ProxyError> {
        if info.method == "Refuse" {
            return Err(ProxyError::new(ErrorKind::Refused, REFUSED));
        }
        Ok(())
    }

    fn rewrite_method(&self, info: &CallInfo<'_>, _target: &Target<'_>) -> Option<String> {
        // The echo downstream fails any method whose name has `Fail` in it: a caller of `Alias`
        // gets that failure only if the downstream saw the new name.
        (info.method == "Alias").then(|| "EchoFail".to_owned())
    }

    fn on_error(&self, info: &CallInfo<'_>, error: ProxyError) -> ProxyError {
        self.errors
            .lock()
            .unwrap()
            .push((info.family, error.kind(), error.message().to_owned()));
        error
    }
}

// === downstreams ===

async fn start_downstream(echo: Arc<EchoHandler>) -> (SocketAddr, DrainHandle) {
    let l = sluice::server::bind_listener(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = l.local_addr().unwrap();
    let (h, d): (DrainHandle, Drain) = sluice::server::drain::channel();
    let s = Server::new(
        ServerConfig::default().with_name("downstream"),
        echo.clone(),
    )
    .with_streaming(echo);
    tokio::spawn(s.serve(l, d));
    (addr, h)
}

/// A TTStream server that answers each stream's Header frame with an Rst.
async fn ttstream_resetter() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let dec = FrameDecoder::default();
                let mut buf = BytesMut::new();
                while s.read_buf(&mut buf).await.is_ok_and(|n| n > 0) {
                    while let Ok(Some(f)) = dec.decode(&mut buf) {
                        if f.kind == FrameType::Header {
                            let ex = ApplicationException::new(
                                ExceptionKind::INTERNAL_ERROR,
                                "downstream gave up",
                            );
                            let rst = StreamFrame::rst(f.stream_id, f.method, Some(&ex), None);
                            if s.write_all(&rst.to_bytes().unwrap()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// An HTTP/2 server that resets every stream with CANCEL.
async fn grpc_resetter() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    respond.send_reset(h2::Reason::CANCEL);
                }
            });
        }
    });
    addr
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

// === the fixture ===

struct Fixture {
    /// The `ttstream`-cluster listener: ping-pong and TTStream.
    tt: SocketAddr,
    /// The `grpc`-cluster listener.
    grpc: SocketAddr,
    /// Downstream `echo` (and `slow`, the same server behind a 200 ms route).
    echo: Arc<EchoHandler>,
    /// Downstream `b`, reached only by a routing override.
    b: Arc<EchoHandler>,
    counts: Arc<Counts>,
    errors: Seen,
    forwarder: Arc<sluice::proxy::Forwarder<TestPhases>>,
    _drains: Vec<DrainHandle>,
}

impl Fixture {
    async fn start() -> Fixture {
        let echo = Arc::new(EchoHandler::new());
        let b = Arc::new(EchoHandler::new());
        let (echo_addr, d1) = start_downstream(echo.clone()).await;
        let (b_addr, d2) = start_downstream(b.clone()).await;
        let dead = free_addr();
        let ttreset = ttstream_resetter().await;
        let grpcreset = grpc_resetter().await;
        let config = Config::from_toml(&format!(
            r#"
[[listeners]]
name = "tt"
address = "127.0.0.1:0"
cluster = "ttstream"

[[listeners]]
name = "grpc"
address = "127.0.0.1:0"
cluster = "grpc"

[[routes]]
method = "Dead"
downstream = "dead"

[[routes]]
method = "Sleep2000"
downstream = "slow"
timeout_ms = 200

[[routes]]
method = "EchoClient"
downstream = "slow"
timeout_ms = 200

[[routes]]
method = "ResetTT"
downstream = "ttreset"

[[routes]]
method = "ResetGrpc"
downstream = "grpcreset"

[[routes]]
method = "Echo"
downstream = "echo"

[[routes]]
method = "EchoBidi"
downstream = "echo"

[downstreams.echo]
endpoints = ["{echo_addr}"]

[downstreams.slow]
endpoints = ["{echo_addr}"]

[downstreams.b]
endpoints = ["{b_addr}"]

[downstreams.dead]
endpoints = ["{dead}"]
connect_timeout_ms = 200

[downstreams.ttreset]
endpoints = ["{ttreset}"]

[downstreams.grpcreset]
endpoints = ["{grpcreset}"]
"#
        ))
        .unwrap();
        let errors = Seen::default();
        let proxy = Proxy::bind_with(
            config,
            TestPhases {
                errors: errors.clone(),
            },
        )
        .await
        .unwrap();
        let addrs: HashMap<String, SocketAddr> = proxy.local_addrs().into_iter().collect();
        let counts = Arc::new(Counts::default());
        let forwarder = proxy.forwarder();
        let (h, d) = sluice::server::drain::channel();
        tokio::spawn(proxy.serve_layered(d, CountLayer(counts.clone())));
        Fixture {
            tt: addrs["tt"],
            grpc: addrs["grpc"],
            echo,
            b,
            counts,
            errors,
            forwarder,
            _drains: vec![d1, d2, h],
        }
    }

    fn errors(&self) -> Vec<(Family, ErrorKind, String)> {
        self.errors.lock().unwrap().clone()
    }
}

// === callers ===

/// What a caller got: a reply (or a successful stream end), or an error code and text in its
/// own protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Ok,
    Error(u32, String),
}

impl Answer {
    fn error(self) -> (u32, String) {
        match self {
            Answer::Error(code, message) => (code, message),
            Answer::Ok => panic!("expected an error, got a successful answer"),
        }
    }
}

/// The ping-pong caller shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PingPong {
    TTHeader,
    Framed,
    /// Kitex protobuf over TTHeader.
    KitexPb,
}

const PINGPONG: [PingPong; 3] = [PingPong::TTHeader, PingPong::Framed, PingPong::KitexPb];

/// `EchoRequest{1: text}` as a thrift struct.
fn thrift_struct(text: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_slice(&[0x0b, 0x00, 0x01]);
    b.put_i32(text.len() as i32);
    b.put_slice(text.as_bytes());
    b.put_u8(0);
    b.freeze()
}

/// Calls `method` on `addr` in `shape`, with `kvs` as TTHeader string keys (the service name
/// `EchoService` as `isn` for TTHeader; Framed carries neither).
async fn pingpong(addr: SocketAddr, shape: PingPong, method: &str, kvs: &[(&str, &str)]) -> Answer {
    let config = ClientConfig::new("proxy", vec![Endpoint { addr, weight: 1 }]).with_transport(
        match shape {
            PingPong::Framed => Transport::Framed,
            _ => Transport::TTHeader,
        },
    );
    let mut header = Header::default();
    if shape != PingPong::Framed {
        header.str_kvs.insert("isn", "EchoService");
        for (k, v) in kvs {
            header.str_kvs.insert(k.to_string(), v.to_string());
        }
    }
    let (codec, args) = match shape {
        PingPong::KitexPb => (
            Codec::KitexProtobuf,
            Bytes::from_static(&[0x0a, 0x02, b'h', b'i']),
        ),
        _ => {
            let mut args = BytesMut::from(&[0x0c, 0x00, 0x01][..]);
            args.put_slice(&thrift_struct("hi"));
            args.put_u8(0);
            (Codec::Thrift, args.freeze())
        }
    };
    let reply = GenericClient::new(config)
        .call(Call {
            method: method.into(),
            msg_type: MessageType::Call,
            codec,
            args,
            header,
            deadline: None,
        })
        .await
        .unwrap_or_else(|e| panic!("{shape:?} {method}: the proxy answers: {e}"))
        .unwrap();
    match (reply.msg_type, shape) {
        (MessageType::Exception, PingPong::KitexPb) => {
            let e = ErrorProto::decode(&reply.body).unwrap();
            Answer::Error(e.type_id as u32, e.message)
        }
        (MessageType::Exception, _) => {
            let (ex, _) = ApplicationException::decode(&reply.body).unwrap();
            Answer::Error(ex.kind.0 as u32, ex.message)
        }
        _ => Answer::Ok,
    }
}

/// Reads a stream to its end: its status, or a panic on a reset or on a status code of the
/// other family (`grpc`: a gRPC status; else a TTStream exception type).
async fn stream_end(mut rx: sluice::stream::ClientRecv, grpc: bool) -> Answer {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the stream ends in time")
        {
            Incoming::Headers(_) | Incoming::Message(_) => {}
            Incoming::End(end) => {
                return match end.error {
                    None => Answer::Ok,
                    Some(e) => match e.code {
                        StatusCode::Grpc(c) if grpc => Answer::Error(c, e.message),
                        StatusCode::TTStream(t) if !grpc => Answer::Error(t as u32, e.message),
                        other => panic!("a status of the other family: {other:?}"),
                    },
                }
            }
            Incoming::Reset(r) => panic!("a reset instead of an end status: {r:?}"),
        }
    }
}

fn metadata(kvs: &[(&str, &str)]) -> Metadata {
    let mut md = Metadata::new();
    for (k, v) in kvs {
        md.push(k.to_string(), v.to_string());
    }
    md
}

/// A TTStream stream of `method` on `addr` (service `EchoService`): one message, and a
/// half-close when `close`.
async fn ttstream(addr: SocketAddr, method: &str, kvs: &[(&str, &str)], close: bool) -> Answer {
    let c = TTStreamClient::new(ClientConfig::new(
        "proxy",
        vec![Endpoint { addr, weight: 1 }],
    ));
    let (tx, rx) = c
        .open(OpenStream {
            hash: None,
            method: method.into(),
            service: "EchoService".into(),
            headers: metadata(kvs),
        })
        .await
        .unwrap()
        .split();
    // The stream may already be over (refused); what matters is how it ended.
    let _ = tx.send(thrift_struct("hi")).await;
    if close {
        let _ = tx.close_send().await;
    }
    stream_end(rx, false).await
}

/// A gRPC call `/echo.EchoService/<method>` on `addr`: one message, and a half-close when
/// `close`.
async fn grpc(addr: SocketAddr, method: &str, kvs: &[(&str, &str)], close: bool) -> Answer {
    let c = GrpcClient::new(GrpcClientConfig::new(vec![addr]));
    let (tx, rx) = c
        .open(&OpenRequest {
            path: format!("/echo.EchoService/{method}"),
            content_type: "application/grpc".into(),
            authority: String::new(),
            headers: metadata(kvs),
            deadline: None,
        })
        .await
        .unwrap()
        .split();
    let _ = tx.send(Bytes::from_static(b"hi")).await;
    if close {
        let _ = tx.close_send().await;
    }
    stream_end(rx, true).await
}

// === a layer sees everything once ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_around_the_forwarder_sees_every_request_and_stream_exactly_once() {
    let fx = Fixture::start().await;
    let (n, m, k) = (5, 3, 4);
    for _ in 0..n {
        assert_eq!(
            pingpong(fx.tt, PingPong::TTHeader, "Echo", &[]).await,
            Answer::Ok
        );
    }
    for _ in 0..m {
        assert_eq!(ttstream(fx.tt, "EchoBidi", &[], true).await, Answer::Ok);
    }
    for _ in 0..k {
        assert_eq!(grpc(fx.grpc, "EchoBidi", &[], true).await, Answer::Ok);
    }
    assert_eq!(fx.counts.requests.load(Ordering::SeqCst), n);
    assert_eq!(fx.counts.ttstreams.load(Ordering::SeqCst), m);
    assert_eq!(fx.counts.grpc.load(Ordering::SeqCst), k);
    // And each went through the forwarder, and downstream, once.
    assert_eq!(fx.forwarder.stats().requests(), n);
    assert_eq!(fx.forwarder.stats().streams(), m + k);
    assert_eq!(fx.echo.requests_seen(), n + m + k);
    assert!(fx.errors().is_empty(), "{:?}", fx.errors());
}

// === phase hooks ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_phase_overrides_the_configured_routes_in_every_family() {
    let fx = Fixture::start().await;
    let to_b = [("x-downstream", "b")];
    assert_eq!(
        pingpong(fx.tt, PingPong::TTHeader, "Echo", &to_b).await,
        Answer::Ok
    );
    assert_eq!((fx.echo.requests_seen(), fx.b.requests_seen()), (0, 1));
    assert_eq!(ttstream(fx.tt, "EchoBidi", &to_b, true).await, Answer::Ok);
    assert_eq!((fx.echo.requests_seen(), fx.b.requests_seen()), (0, 2));
    assert_eq!(grpc(fx.grpc, "EchoBidi", &to_b, true).await, Answer::Ok);
    assert_eq!((fx.echo.requests_seen(), fx.b.requests_seen()), (0, 3));
    // Without the key, the configured route (`echo`) wins; a method with no configured route
    // reaches `b` through the override alone.
    assert_eq!(
        pingpong(fx.tt, PingPong::TTHeader, "Echo", &[]).await,
        Answer::Ok
    );
    assert_eq!(
        pingpong(fx.tt, PingPong::TTHeader, "Unrouted", &to_b).await,
        Answer::Ok
    );
    assert_eq!((fx.echo.requests_seen(), fx.b.requests_seen()), (1, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_rewrite_phase_renames_the_method_downstream_in_every_family() {
    let fx = Fixture::start().await;
    // Routed by the override (the configured routes name no `Alias`).
    let to_echo = [("x-downstream", "echo")];
    // Ping-pong: the echo's EchoFail exception comes back to a caller of `Alias`.
    let (code, text) = pingpong(fx.tt, PingPong::TTHeader, "Alias", &to_echo)
        .await
        .error();
    assert_eq!(
        (code, text.as_str()),
        (6, "biz error: echo: injected failure for EchoFail")
    );
    // Without the rename the same method is echoed.
    assert_eq!(
        pingpong(fx.tt, PingPong::TTHeader, "EchoBidi", &to_echo).await,
        Answer::Ok
    );
    // Streams: the echo ends a stream whose method names `Fail` with an error.
    for (what, answer) in [
        ("ttstream", ttstream(fx.tt, "Alias", &to_echo, true).await),
        ("grpc", grpc(fx.grpc, "Alias", &to_echo, true).await),
    ] {
        let (code, text) = answer.error();
        assert_eq!(code, 6, "{what}: {text}");
        assert!(text.contains("injected stream failure"), "{what}: {text}");
    }
    assert_eq!(
        ttstream(fx.tt, "EchoBidi", &to_echo, true).await,
        Answer::Ok
    );
}

// === the error matrix: one test per kind ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route() {
    let fx = Fixture::start().await;
    let text = "sluice: no route for service \"EchoService\" method \"Missing\"";
    for shape in PINGPONG {
        let service = if shape == PingPong::Framed {
            ""
        } else {
            "EchoService"
        };
        assert_eq!(
            pingpong(fx.tt, shape, "Missing", &[]).await.error(),
            (
                1,
                format!("sluice: no route for service {service:?} method \"Missing\"")
            ),
            "{shape:?}"
        );
    }
    assert_eq!(
        ttstream(fx.tt, "Missing", &[], false).await.error(),
        (1, text.into())
    );
    assert_eq!(
        grpc(fx.grpc, "Missing", &[], false).await.error(),
        (12, text.into())
    );
    let kinds: Vec<ErrorKind> = fx.errors().into_iter().map(|e| e.1).collect();
    assert_eq!(kinds, vec![ErrorKind::NoRoute; 5], "on_error saw each");
    assert_eq!(fx.forwarder.stats().unrouted(), 5);
}

/// Asserts `(code, message)` is `code` with a message that starts `sluice: ` and names `name`.
fn names_downstream(got: (u32, String), code: u32, name: &str, what: &str) {
    assert_eq!(got.0, code, "{what}: {}", got.1);
    assert!(got.1.starts_with("sluice: "), "{what}: {}", got.1);
    assert!(got.1.contains(&format!("{name:?}")), "{what}: {}", got.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable() {
    let fx = Fixture::start().await;
    for shape in PINGPONG {
        let got = pingpong(fx.tt, shape, "Dead", &[]).await.error();
        names_downstream(got, 6, "dead", &format!("{shape:?}"));
    }
    let got = ttstream(fx.tt, "Dead", &[], false).await.error();
    names_downstream(got, 6, "dead", "TTStream");
    let got = grpc(fx.grpc, "Dead", &[], false).await.error();
    names_downstream(got, 14, "dead", "gRPC");
    assert!(fx
        .errors()
        .iter()
        .all(|(_, kind, _)| *kind == ErrorKind::Unavailable));
    assert_eq!(fx.errors().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline() {
    let fx = Fixture::start().await;
    // Ping-pong: the echo sleeps 2 s on `Sleep2000`; the route allows 200 ms.
    for shape in PINGPONG {
        let start = Instant::now();
        let (code, message) = pingpong(fx.tt, shape, "Sleep2000", &[]).await.error();
        let took = start.elapsed();
        assert_eq!(code, 6, "{shape:?}: {message}");
        assert!(
            message.starts_with("sluice: timeout: "),
            "{shape:?}: {message}"
        );
        assert!(message.contains("\"slow\""), "{shape:?}: {message}");
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_millis(1500),
            "{shape:?}: answered at the route's deadline, took {took:?}"
        );
    }
    // Streams: `EchoClient` answers only after the half-close, which never comes.
    let start = Instant::now();
    let (code, message) = ttstream(fx.tt, "EchoClient", &[], false).await.error();
    assert_eq!(
        (code, message.as_str()),
        (
            12015,
            "sluice: timeout: downstream \"slow\": deadline exceeded"
        )
    );
    assert!(start.elapsed() >= Duration::from_millis(200));
    let start = Instant::now();
    let (code, message) = grpc(fx.grpc, "EchoClient", &[], false).await.error();
    // The downstream gRPC client enforces the same deadline; whichever fires first, the
    // caller reads Sluice's deadline error and `on_error` sees it.
    assert_eq!(
        (code, message.as_str()),
        (4, "sluice: timeout: downstream \"slow\": deadline exceeded")
    );
    assert!(start.elapsed() >= Duration::from_millis(200));
    let seen = fx.errors();
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(seen.iter().all(|(_, kind, _)| *kind == ErrorKind::Deadline));
    assert_eq!(seen[4].0, Family::Grpc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_reset() {
    let fx = Fixture::start().await;
    let (code, message) = ttstream(fx.tt, "ResetTT", &[], false).await.error();
    assert_eq!(
        (code, message.as_str()),
        (
            12009,
            "sluice: downstream \"ttreset\" reset the stream: downstream gave up (code 6)"
        )
    );
    let (code, message) = grpc(fx.grpc, "ResetGrpc", &[], false).await.error();
    assert_eq!(code, 1, "{message}");
    assert!(
        message.starts_with("sluice: downstream \"grpcreset\" reset the stream: "),
        "{message}"
    );
    assert!(message.ends_with("(code 8)"), "HTTP/2 CANCEL: {message}");
    let kinds: Vec<ErrorKind> = fx.errors().into_iter().map(|e| e.1).collect();
    assert_eq!(kinds, vec![ErrorKind::DownstreamReset; 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_cluster() {
    let fx = Fixture::start().await;
    let text = "sluice: listener \"grpc\" serves the grpc cluster; ";
    for shape in PINGPONG {
        let (code, message) = pingpong(fx.grpc, shape, "Echo", &[]).await.error();
        assert_eq!(code, 20, "{shape:?}: {message}");
        assert_eq!(
            message,
            format!("{text}ping-pong (TTHeader/Framed/Buffered) traffic is served by a ttstream cluster listener"),
            "{shape:?}"
        );
    }
    let (code, message) = ttstream(fx.grpc, "EchoBidi", &[], false).await.error();
    assert_eq!(code, 20, "{message}");
    assert_eq!(
        message,
        format!("{text}TTStream traffic is served by a ttstream cluster listener")
    );
    // Refused before the forwarder: nothing reached the layer or a downstream.
    assert_eq!(fx.counts.requests.load(Ordering::SeqCst), 0);
    assert_eq!(fx.counts.ttstreams.load(Ordering::SeqCst), 0);
    assert_eq!(fx.echo.requests_seen(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_by_a_request_filter() {
    let fx = Fixture::start().await;
    for shape in PINGPONG {
        assert_eq!(
            pingpong(fx.tt, shape, "Refuse", &[]).await.error(),
            (6, REFUSED.into()),
            "{shape:?}"
        );
    }
    assert_eq!(
        ttstream(fx.tt, "Refuse", &[], false).await.error(),
        (6, REFUSED.into())
    );
    assert_eq!(
        grpc(fx.grpc, "Refuse", &[], false).await.error(),
        (7, REFUSED.into())
    );
    assert_eq!(fx.echo.requests_seen(), 0, "nothing went downstream");
    // `on_error` saw each refusal, in each family.
    let seen = fx.errors();
    let families: Vec<Family> = seen.iter().map(|e| e.0).collect();
    assert_eq!(
        families,
        vec![
            Family::PingPong,
            Family::PingPong,
            Family::PingPong,
            Family::TTStream,
            Family::Grpc
        ]
    );
    assert!(seen
        .iter()
        .all(|(_, kind, message)| *kind == ErrorKind::Refused && message == REFUSED));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_for_a_route_to_an_unconfigured_downstream() {
    let fx = Fixture::start().await;
    let text = "sluice: downstream \"nowhere\" is not configured";
    for shape in PINGPONG {
        assert_eq!(
            pingpong(fx.tt, shape, "Internal", &[]).await.error(),
            (6, text.into()),
            "{shape:?}"
        );
    }
    assert_eq!(
        ttstream(fx.tt, "Internal", &[], false).await.error(),
        (6, text.into())
    );
    assert_eq!(
        grpc(fx.grpc, "Internal", &[], false).await.error(),
        (13, text.into())
    );
    let kinds: Vec<ErrorKind> = fx.errors().into_iter().map(|e| e.1).collect();
    assert_eq!(kinds, vec![ErrorKind::Internal; 5]);
}
