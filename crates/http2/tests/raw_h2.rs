//! The server driver and the client each against an independent peer: the `h2` crate driven
//! by hand (an `h2::client` talking to the server, an `h2::server` fake backend for the
//! client), raw bytes of a real Kitex client, and raw TCP for the GOAWAY refusal.

use sluice_testkit::h2frames as common;
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use h2::Reason;
use http::{HeaderMap, Request, Response, StatusCode};
use sluice_http2::{
    parse_timeout, refuse_connection, GrpcClient, GrpcClientConfig, OpenRequest, REFUSE_GOAWAY_CODE,
};
use sluice_stream::{Incoming, Metadata};
use sluice_testkit::{Capture, Dir};
use support::{framed, within, TestServer, FAIL_MESSAGE, FAIL_MESSAGE_WIRE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

// ---------------------------------------------------------------------------------------------
// An h2 client against the server driver.

async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.unwrap()
}

fn grpc_request(path: &str, content_type: &str) -> Request<()> {
    Request::builder()
        .method("POST")
        .uri(format!("http://kxserver{path}"))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(())
        .unwrap()
}

fn names_and_values(map: &HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn h2_client_sees_a_kitex_shaped_response() {
    let server = TestServer::start().await;
    let mut client = h2_client(server.addr).await;
    let mut req = grpc_request("/EchoService/Echo", "application/grpc+thrift");
    req.headers_mut().insert("x-user", "alice".parse().unwrap());
    let (response, mut body_tx) = client.send_request(req, false).unwrap();
    body_tx.send_data(framed(b"hello"), true).unwrap();

    let response = within("the response", response).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        names_and_values(response.headers()),
        pairs(&[
            ("content-type", "application/grpc+thrift"),
            ("x-user", "alice")
        ]),
        "the request's content-type comes back, then the handler's headers"
    );
    let mut body = response.into_body();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        assert!(!chunk.is_empty(), "no empty DATA frames");
        data.extend_from_slice(&chunk);
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    assert_eq!(&data[..], &framed(b"hello")[..]);
    let trailers = body.trailers().await.unwrap().expect("trailers");
    assert_eq!(
        names_and_values(&trailers),
        pairs(&[
            ("grpc-status", "0"),
            ("grpc-message", ""),
            ("x-trailer", "t")
        ]),
        "grpc-message is always present, empty on success"
    );
}

#[tokio::test]
async fn h2_client_sees_trailers_only_with_a_percent_encoded_message() {
    let server = TestServer::start().await;
    let mut client = h2_client(server.addr).await;
    let (response, mut body_tx) = client
        .send_request(
            grpc_request("/EchoService/FailFirst", "application/grpc"),
            false,
        )
        .unwrap();
    body_tx.send_data(Bytes::new(), true).unwrap();
    let response = within("the response", response).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.body().is_end_stream(),
        "one HEADERS frame with END_STREAM"
    );
    assert_eq!(
        names_and_values(response.headers()),
        pairs(&[
            ("content-type", "application/grpc"),
            ("grpc-status", "13"),
            ("grpc-message", FAIL_MESSAGE_WIRE),
            ("biz-status", "10001"),
            ("biz-extra", "{\"k\":\"v\"}"),
        ])
    );
    assert_eq!(
        sluice_http2::percent_decode(FAIL_MESSAGE_WIRE.as_bytes()),
        FAIL_MESSAGE
    );
}

#[tokio::test]
async fn rst_stream_no_error_follows_trailers_when_the_client_still_sends() {
    let server = TestServer::start().await;
    let mut client = h2_client(server.addr).await;
    let (response, mut body_tx) = client
        .send_request(
            grpc_request("/EchoService/FailFirst", "application/grpc"),
            false,
        )
        .unwrap();
    // The client never half-closes.
    body_tx.send_data(framed(b"ignored"), false).unwrap();
    let response = within("the response", response).await.unwrap();
    assert!(response.body().is_end_stream());
    let reason = within(
        "the reset",
        std::future::poll_fn(|cx| body_tx.poll_reset(cx)),
    )
    .await
    .unwrap();
    assert_eq!(reason, Reason::NO_ERROR);
}

#[tokio::test]
async fn h2_client_malformed_requests_get_a_status() {
    let server = TestServer::start().await;
    let mut client = h2_client(server.addr).await;

    let cases = [
        (
            "/EchoService",
            "application/grpc",
            StatusCode::OK,
            "malformed method name",
        ),
        (
            "/EchoService/Echo",
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type",
        ),
    ];
    for (path, content_type, http_status, message) in cases {
        let (response, mut body_tx) = client
            .send_request(grpc_request(path, content_type), false)
            .unwrap();
        body_tx.send_data(framed(b"x"), true).unwrap();
        let response = within("the response", response).await.unwrap();
        assert_eq!(response.status(), http_status, "{path} {content_type}");
        assert!(response.body().is_end_stream());
        let h = response.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "13");
        let text = h["grpc-message"].to_str().unwrap();
        assert!(text.contains(message), "{text}");
    }

    // Not POST.
    let req = Request::builder()
        .method("GET")
        .uri("http://kxserver/EchoService/Echo")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let (response, _) = client.send_request(req, true).unwrap();
    let response = within("the response", response).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["grpc-status"], "13");
}

#[tokio::test]
async fn graceful_shutdown_sends_goaway_and_finishes_the_stream_in_flight() {
    let mut server = TestServer::start().await;
    let mut client = h2_client(server.addr).await;
    let (response, mut body_tx) = client
        .send_request(grpc_request("/EchoService/Echo", "application/grpc"), false)
        .unwrap();
    body_tx.send_data(framed(b"one"), false).unwrap();
    server.request().await;

    server.shutdown();
    // After the GOAWAY, h2 refuses new streams on this connection.
    let refused = within("the GOAWAY", async {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let attempt = client.clone().ready().await.and_then(|mut c| {
                c.send_request(grpc_request("/EchoService/Echo", "application/grpc"), true)
            });
            if let Err(e) = attempt {
                return e;
            }
        }
    })
    .await;
    assert!(refused.is_go_away(), "{refused}");
    assert_eq!(refused.reason(), Some(Reason::NO_ERROR));

    // The stream that was running goes on to its end.
    body_tx.send_data(framed(b"two"), true).unwrap();
    let response = within("the response", response).await.unwrap();
    let mut body = response.into_body();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        data.extend_from_slice(&chunk.unwrap());
    }
    let mut expected = BytesMut::from(&framed(b"one")[..]);
    expected.extend_from_slice(&framed(b"two"));
    assert_eq!(data, expected);
    let trailers = body.trailers().await.unwrap().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    let result = within("the connection to close", server.results.recv()).await;
    assert_eq!(result, Some(Ok(())));
}

// ---------------------------------------------------------------------------------------------
// Raw bytes of a real Kitex client against the server driver.

/// Reads frames until `done` says so; returns (type, flags, stream, payload) per frame.
async fn read_frames(
    tcp: &mut TcpStream,
    done: impl Fn(u8, u8, u32) -> bool,
) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut pos = 0;
    within("the server's frames", async {
        loop {
            while buf.len() >= pos + 9 {
                let h = &buf[pos..pos + 9];
                let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                if buf.len() < pos + 9 + len {
                    break;
                }
                let (ty, flags) = (h[3], h[4]);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                frames.push((ty, flags, stream, buf[pos + 9..pos + 9 + len].to_vec()));
                pos += 9 + len;
                if done(ty, flags, stream) {
                    return;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed early");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    frames
}

#[tokio::test]
async fn a_kitex_client_request_gets_an_echo_and_trailers() {
    let capture = Capture::load("grpc-pb-unary");
    let c2s = capture.conns[0].bytes(Dir::C2s);
    // Everything the client sent up to its request's END_STREAM DATA frame, in one write, as
    // the Kitex client sends it (kitex-wire.md 5.1).
    let frames = common::split_frames(c2s, true);
    let data = frames
        .iter()
        .find(|f| f.ty == common::TYPE_DATA && f.end_stream())
        .expect("the request DATA frame");
    let request_payload = data.body().to_vec();
    let upto = data.offset + 9 + data.payload.len();

    let server = TestServer::start().await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&c2s[..upto]).await.unwrap();
    let got = read_frames(&mut tcp, |ty, flags, stream| {
        ty == common::TYPE_HEADERS && flags & common::FLAG_END_STREAM != 0 && stream == data.stream
    })
    .await;

    let on_stream: Vec<_> = got.iter().filter(|f| f.2 == data.stream).collect();
    let kinds: Vec<(u8, bool)> = on_stream
        .iter()
        .map(|f| (f.0, f.1 & common::FLAG_END_STREAM != 0))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (common::TYPE_HEADERS, false),
            (common::TYPE_DATA, false),
            (common::TYPE_HEADERS, true)
        ],
        "HEADERS, DATA, trailers"
    );
    assert_eq!(
        on_stream[1].3, request_payload,
        "the message is echoed byte for byte"
    );
    // The first server frame is its SETTINGS (RFC 9113 3.4).
    assert_eq!(got[0].0, 0x4);

    // The client half-closed, so no RST_STREAM follows the trailers: the next thing on the
    // connection is nothing at all (the server waits for the client).
    let mut extra = [0u8; 64];
    let more = tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut extra)).await;
    if let Ok(Ok(n)) = more {
        let rest = &extra[..n];
        assert!(
            !(rest.len() >= 9 && rest[3] == 0x3),
            "no RST_STREAM after a half-closed request: {rest:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// refuse_connection.

async fn refusing_listener(text: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            tokio::spawn(async move {
                refuse_connection(tcp, peer, text).await.unwrap();
            });
        }
    });
    addr
}

const REFUSAL: &str = "this listener serves TTStream; send gRPC to the grpc listener";

#[tokio::test]
async fn refused_h2_client_sees_goaway_with_the_reason() {
    let addr = refusing_listener(REFUSAL).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let err = within("the GOAWAY", conn)
        .await
        .expect_err("the connection is refused");
    assert!(err.is_go_away(), "{err}");
    assert!(err.is_remote());
    assert_eq!(err.reason(), Some(Reason::PROTOCOL_ERROR));
    assert!(err.to_string().contains(REFUSAL), "{err}");
    // No stream can be opened.
    let attempt = client.ready().await.and_then(|mut c| {
        c.send_request(grpc_request("/EchoService/Echo", "application/grpc"), true)
    });
    assert!(attempt.is_err());
}

#[tokio::test]
async fn refusal_frames_on_the_wire() {
    let addr = refusing_listener(REFUSAL).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut hello = common::PREFACE.to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    tcp.write_all(&hello).await.unwrap();
    let mut got = Vec::new();
    within("the server to close", tcp.read_to_end(&mut got))
        .await
        .unwrap();
    let frames = common::split_frames(&got, false);
    assert_eq!(frames.len(), 2, "SETTINGS then GOAWAY");
    assert_eq!(
        (frames[0].ty, frames[0].flags, frames[0].payload.len()),
        (4, 0, 0)
    );
    let goaway = frames[1];
    assert_eq!((goaway.ty, goaway.stream), (7, 0));
    assert_eq!(
        &goaway.payload[..4],
        &[0, 0, 0, 0],
        "last stream id 0: nothing processed"
    );
    assert_eq!(
        u32::from_be_bytes(goaway.payload[4..8].try_into().unwrap()),
        REFUSE_GOAWAY_CODE
    );
    assert_eq!(&goaway.payload[8..], REFUSAL.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// An h2 server as a fake backend for the client.

/// What the fake backend saw of one request.
#[derive(Debug)]
struct Seen {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    /// Every DATA frame's payload, in order.
    data: Vec<Bytes>,
    /// Whether the request ended with END_STREAM.
    ended: bool,
}

struct Backend {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    seen: mpsc::UnboundedReceiver<Seen>,
    /// Sends GOAWAY (graceful) on every open connection.
    goaway: tokio::sync::watch::Sender<bool>,
    /// Releases `/svc.S/Hold` requests.
    release: tokio::sync::watch::Sender<bool>,
}

async fn read_request(body: &mut h2::RecvStream) -> (Vec<Bytes>, bool) {
    let mut data = Vec::new();
    loop {
        match body.data().await {
            Some(Ok(chunk)) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                data.push(chunk);
            }
            Some(Err(_)) => return (data, false),
            None => return (data, true),
        }
    }
}

fn grpc_response(extra: &[(&str, &str)]) -> Response<()> {
    let mut b = Response::builder()
        .status(200)
        .header("content-type", "application/grpc");
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

fn trailer_map(list: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in list {
        map.append(
            http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    map
}

async fn backend_stream(
    req: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    seen: mpsc::UnboundedSender<Seen>,
    mut release: tokio::sync::watch::Receiver<bool>,
) {
    let (parts, mut body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let record = |data: Vec<Bytes>, ended: bool| Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: names_and_values(&parts.headers),
        data,
        ended,
    };
    match path.as_str() {
        "/svc.S/Unary" => {
            let (data, ended) = read_request(&mut body).await;
            let _ = seen.send(record(data, ended));
            let mut send = respond
                .send_response(
                    grpc_response(&[("x-resp", "1"), ("trace-bin", "AAEC")]),
                    false,
                )
                .unwrap();
            send.send_data(framed(b"pong"), false).unwrap();
            send.send_trailers(trailer_map(&[
                ("grpc-status", "0"),
                ("grpc-message", ""),
                ("x-trailer", "t"),
            ]))
            .unwrap();
        }
        "/svc.S/Reset" => {
            let mut send = respond.send_response(grpc_response(&[]), false).unwrap();
            send.send_data(framed(b"one"), false).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            send.send_reset(Reason::REFUSED_STREAM);
        }
        "/svc.S/Http503" => {
            let resp = Response::builder()
                .status(503)
                .header("content-type", "text/plain")
                .body(())
                .unwrap();
            respond.send_response(resp, true).unwrap();
        }
        "/svc.S/TrailersOnly" => {
            let resp = grpc_response(&[
                ("grpc-status", "5"),
                ("grpc-message", "not%20found"),
                ("biz-status", "7"),
            ]);
            respond.send_response(resp, true).unwrap();
        }
        "/svc.S/NoTrailers" => {
            let mut send = respond.send_response(grpc_response(&[]), false).unwrap();
            send.send_data(framed(b"x"), true).unwrap();
        }
        "/svc.S/Hold" => {
            let _ = release.wait_for(|r| *r).await;
            let (data, ended) = read_request(&mut body).await;
            let mut send = respond.send_response(grpc_response(&[]), false).unwrap();
            for d in &data {
                if !d.is_empty() {
                    send.send_data(d.clone(), false).unwrap();
                }
            }
            send.send_trailers(trailer_map(&[("grpc-status", "0"), ("grpc-message", "")]))
                .unwrap();
            let _ = seen.send(record(data, ended));
            // Keep the handles until the client has read everything.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        _ => {
            respond
                .send_response(
                    grpc_response(&[("grpc-status", "12"), ("grpc-message", "")]),
                    true,
                )
                .unwrap();
        }
    }
}

async fn start_backend() -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let (goaway, _) = tokio::sync::watch::channel(false);
    let (release, _) = tokio::sync::watch::channel(false);
    let counter = conns.clone();
    let goaway_tx = goaway.clone();
    let release_tx = release.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let seen = seen_tx.clone();
            let mut goaway = goaway_tx.subscribe();
            // Only connections open when GOAWAY is asked for get it.
            goaway.mark_unchanged();
            let release = release_tx.subscribe();
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(tcp).await.unwrap();
                let mut going_away = false;
                loop {
                    tokio::select! {
                        accepted = conn.accept() => match accepted {
                            Some(Ok((req, respond))) => {
                                tokio::spawn(backend_stream(req, respond, seen.clone(), release.clone()));
                            }
                            _ => return,
                        },
                        changed = goaway.changed(), if !going_away => {
                            if changed.is_ok() {
                                going_away = true;
                                conn.graceful_shutdown();
                            }
                        }
                    }
                }
            });
        }
    });
    Backend {
        addr,
        conns,
        seen,
        goaway,
        release,
    }
}

fn open_request(method: &str) -> OpenRequest {
    OpenRequest {
        path: format!("/svc.S/{method}"),
        content_type: "application/grpc".into(),
        authority: "kxserver".into(),
        headers: Metadata::new(),
        deadline: None,
    }
}

async fn end_of(recv: &mut sluice_stream::ClientRecv) -> sluice_stream::StreamEnd {
    loop {
        match within("the stream's end", recv.recv()).await {
            Incoming::End(end) => return end,
            Incoming::Reset(r) => panic!("unexpected reset {r:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn client_request_is_kitex_shaped() {
    let mut backend = start_backend().await;
    let client = GrpcClient::new(GrpcClientConfig::new(vec![backend.addr]));
    let mut req = open_request("Unary");
    req.headers.push("x-a", "1");
    req.headers.push("trace-bin", "AAECAw");
    req.headers.push("te", "gzip"); // this client's to set: left out
    req.headers.push("x-b", "2");
    req.deadline = Some(Instant::now() + Duration::from_secs(3));
    let (send, mut recv) = within("open", client.open(&req)).await.unwrap().split();
    // Queued together (the current-thread runtime runs the driver only when this task waits):
    // the half-close rides on the message's frame, as a Kitex unary request does.
    send.send(Bytes::from_static(b"ping")).await.unwrap();
    send.close_send().await.unwrap();

    let seen = within("the request", backend.seen.recv()).await.unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "http://kxserver/svc.S/Unary");
    let names: Vec<&str> = seen.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "content-type",
            "te",
            "grpc-timeout",
            "x-a",
            "trace-bin",
            "x-b"
        ]
    );
    assert_eq!(seen.headers[0].1, "application/grpc");
    assert_eq!(seen.headers[1].1, "trailers");
    let timeout = parse_timeout(seen.headers[2].1.as_bytes()).unwrap();
    assert!(
        timeout <= Duration::from_secs(3) && timeout > Duration::from_millis(2500),
        "{timeout:?}"
    );
    assert_eq!(
        seen.headers[4].1, "AAECAw",
        "-bin metadata is sent as given"
    );
    assert_eq!(seen.data, vec![framed(b"ping")], "one DATA frame");
    assert!(seen.ended);

    match within("headers", recv.recv()).await {
        Incoming::Headers(md) => {
            let got: Vec<(&[u8], &[u8])> = md.iter().collect();
            assert_eq!(
                got,
                vec![(&b"x-resp"[..], &b"1"[..]), (b"trace-bin", b"AAEC")]
            );
        }
        other => panic!("expected headers, got {other:?}"),
    }
    assert_eq!(
        within("message", recv.recv()).await,
        Incoming::Message(Bytes::from_static(b"pong"))
    );
    let end = end_of(&mut recv).await;
    assert_eq!(end.error, None);
    let got: Vec<(&[u8], &[u8])> = end.trailers.iter().collect();
    assert_eq!(got, vec![(&b"x-trailer"[..], &b"t"[..])]);
}

#[tokio::test]
async fn client_half_close_alone_is_one_empty_end_stream_frame() {
    let mut backend = start_backend().await;
    let client = GrpcClient::new(GrpcClientConfig::new(vec![backend.addr]));
    let (send, mut recv) = client.open(&open_request("Unary")).await.unwrap().split();
    send.send(Bytes::from_static(b"a")).await.unwrap();
    // Let the message go out alone before the half-close.
    tokio::time::sleep(Duration::from_millis(50)).await;
    send.close_send().await.unwrap();
    let seen = within("the request", backend.seen.recv()).await.unwrap();
    // h2 hands over every DATA frame as one chunk, the empty END_STREAM one included.
    assert_eq!(seen.data, vec![framed(b"a"), Bytes::new()]);
    assert!(seen.ended);
    assert_eq!(end_of(&mut recv).await.error, None);
}

#[tokio::test]
async fn server_reset_reaches_the_client() {
    let backend = start_backend().await;
    let client = GrpcClient::new(GrpcClientConfig::new(vec![backend.addr]));
    let (_send, mut recv) = client.open(&open_request("Reset")).await.unwrap().split();
    assert!(matches!(
        within("headers", recv.recv()).await,
        Incoming::Headers(_)
    ));
    assert_eq!(
        within("message", recv.recv()).await,
        Incoming::Message(Bytes::from_static(b"one"))
    );
    match within("reset", recv.recv()).await {
        Incoming::Reset(r) => assert_eq!(r.code, u32::from(Reason::REFUSED_STREAM), "{r:?}"),
        other => panic!("expected a reset, got {other:?}"),
    }
}

#[tokio::test]
async fn client_maps_non_grpc_and_trailers_only_responses() {
    let backend = start_backend().await;
    let client = GrpcClient::new(GrpcClientConfig::new(vec![backend.addr]));

    let (_send, mut recv) = client.open(&open_request("Http503")).await.unwrap().split();
    let err = end_of(&mut recv).await.error.unwrap();
    assert_eq!(err.code, 14, "503 is UNAVAILABLE: {}", err.message);

    let (_send, mut recv) = client
        .open(&open_request("TrailersOnly"))
        .await
        .unwrap()
        .split();
    let end = end_of(&mut recv).await;
    let err = end.error.unwrap();
    assert_eq!(
        (err.code, err.message.as_str()),
        (sluice_stream::StatusCode::Grpc(5), "not found")
    );
    let got: Vec<(&[u8], &[u8])> = end.trailers.iter().collect();
    assert_eq!(got, vec![(&b"biz-status"[..], &b"7"[..])]);

    let (_send, mut recv) = client
        .open(&open_request("NoTrailers"))
        .await
        .unwrap()
        .split();
    let err = end_of(&mut recv).await.error.unwrap();
    assert_eq!(err.code, 13, "{}", err.message);
}

#[tokio::test]
async fn client_redials_after_goaway_and_lets_old_streams_finish() {
    let mut backend = start_backend().await;
    let client = GrpcClient::new(GrpcClientConfig::new(vec![backend.addr]));
    // A stream that stays open across the GOAWAY.
    let (held_send, mut held_recv) = client.open(&open_request("Hold")).await.unwrap().split();
    held_send.send(Bytes::from_static(b"held")).await.unwrap();
    held_send.close_send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(backend.conns.load(Ordering::SeqCst), 1);

    backend.goaway.send(true).unwrap();
    // Time for the GOAWAY to reach the client.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The old connection refuses new streams; the client dials again, once.
    let (send, mut recv) = within("open after GOAWAY", client.open(&open_request("Unary")))
        .await
        .unwrap()
        .split();
    send.close_send().await.unwrap();
    assert_eq!(end_of(&mut recv).await.error, None);
    assert_eq!(backend.conns.load(Ordering::SeqCst), 2);
    let _ = within("the request", backend.seen.recv()).await.unwrap();

    // The held stream is still served by the first connection.
    backend.release.send(true).unwrap();
    assert!(matches!(
        within("headers", held_recv.recv()).await,
        Incoming::Headers(_)
    ));
    assert_eq!(
        within("message", held_recv.recv()).await,
        Incoming::Message(Bytes::from_static(b"held"))
    );
    assert_eq!(end_of(&mut held_recv).await.error, None);
    assert_eq!(backend.conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn client_redials_when_the_connection_closed() {
    let mut backend = start_backend().await;
    let client = GrpcClient::new(GrpcClientConfig::new(vec![backend.addr]));
    let (send, mut recv) = client.open(&open_request("Unary")).await.unwrap().split();
    send.close_send().await.unwrap();
    assert_eq!(end_of(&mut recv).await.error, None);
    // With no stream left, the backend's GOAWAY closes the connection.
    backend.goaway.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (send, mut recv) = within("open after the close", client.open(&open_request("Unary")))
        .await
        .unwrap()
        .split();
    send.close_send().await.unwrap();
    assert_eq!(end_of(&mut recv).await.error, None);
    assert_eq!(backend.conns.load(Ordering::SeqCst), 2);
    for _ in 0..2 {
        let _ = within("the request", backend.seen.recv()).await.unwrap();
    }
}
