//! The client against a hand-driven server speaking raw frames: flow control and limits the
//! server sets, and responses that break the rules. Frames are written and read here by hand,
//! independently of the production encoders.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use sluice_http2::{GrpcClient, GrpcClientConfig, OpenRequest};
use sluice_stream::{Incoming, Metadata};
use support::raw::*;
use support::within;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// Response headers: `:status 200` (static index 8), gRPC content-type.
fn response_head() -> Vec<u8> {
    let mut b = vec![0x88];
    literal("content-type", "application/grpc", &mut b);
    b
}

fn trailers(status: &str) -> Vec<u8> {
    let mut b = Vec::new();
    literal("grpc-status", status, &mut b);
    literal("grpc-message", "", &mut b);
    b
}

fn framed(msg: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    v.extend_from_slice(msg);
    v
}

/// Accepts the client's connection, reads its preface and sends `server_settings`.
async fn accept(listener: &TcpListener, server_settings: &[(u16, u32)]) -> FrameIo {
    let (tcp, _) = within("the client's connection", listener.accept())
        .await
        .unwrap();
    let mut p = FrameIo::new(tcp);
    let mut preface = [0u8; 24];
    within("the preface", p.tcp.read_exact(&mut preface))
        .await
        .unwrap();
    assert_eq!(&preface[..], PREFACE);
    p.send(&settings(server_settings)).await;
    p
}

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn request(method: &str) -> OpenRequest {
    OpenRequest {
        path: format!("/svc.S/{method}"),
        content_type: "application/grpc".into(),
        authority: "kxserver".into(),
        headers: Metadata::new(),
        deadline: None,
    }
}

async fn next(recv: &mut sluice_stream::ClientRecv) -> Incoming {
    within("an event", recv.recv()).await
}

#[tokio::test]
async fn the_client_keeps_to_the_server_window_and_frame_size() {
    let (l, addr) = listener().await;
    let client = GrpcClient::new(GrpcClientConfig::new(vec![addr]));
    let opening =
        tokio::spawn(async move { client.open(&request("Big")).await.map(|s| (s, client)) });
    // A stream window of 10 bytes, a connection window left at 65535.
    let mut p = accept(&l, &[(0x4, 10)]).await;
    let ((send, _recv), _client) = {
        let (s, c) = opening.await.unwrap().unwrap();
        (s.split(), c)
    };
    // Until the client has the server's SETTINGS it may assume the default window; once it
    // acknowledges them, the 10 bytes hold.
    p.until("SETTINGS ACK", |f| f.ty == SETTINGS && f.flags == 0x1)
        .await;
    let msg = vec![1u8; 100];
    let sender = tokio::spawn(async move {
        send.send(Bytes::from(msg)).await.unwrap();
        send.close_send().await.unwrap();
        send
    });
    let mut got = Vec::new();
    while got.len() < 10 {
        let f = p.until("DATA", |f| f.ty == DATA).await;
        assert!(got.len() + f.payload.len() <= 10, "within the window");
        got.extend_from_slice(&f.payload);
    }
    assert!(
        !p.sees(Duration::from_millis(200), |f| f.ty == DATA).await,
        "nothing beyond the window"
    );
    p.send(&frame(WINDOW_UPDATE, 0, 1, &200u32.to_be_bytes()))
        .await;
    let mut ended = false;
    while !ended {
        let f = p.until("DATA", |f| f.ty == DATA).await;
        got.extend_from_slice(&f.payload);
        ended = f.flags & END_STREAM != 0;
    }
    assert_eq!(got, framed(&[1u8; 100]));
    let _send = sender.await.unwrap();
}

#[tokio::test]
async fn the_client_waits_for_a_stream_slot_under_the_server_limit() {
    let (l, addr) = listener().await;
    let client = GrpcClient::new(GrpcClientConfig::new(vec![addr]));
    let c1 = client.clone();
    let first = tokio::spawn(async move { c1.open(&request("One")).await });
    let mut p = accept(&l, &[(0x3, 1)]).await;
    let (_s1, mut r1) = first.await.unwrap().unwrap().split();
    p.until("the first request", |f| f.ty == HEADERS && f.stream == 1)
        .await;
    // The SETTINGS has surely been read by now: the second open waits.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let c2 = client.clone();
    let second = tokio::spawn(async move { c2.open(&request("Two")).await });
    assert!(
        !p.sees(Duration::from_millis(200), |f| f.ty == HEADERS)
            .await,
        "no second stream while the first runs"
    );
    // The first ends: the second goes out.
    let mut end = response_head();
    end.extend_from_slice(&trailers("0"));
    p.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &end))
        .await;
    assert!(matches!(next(&mut r1).await, Incoming::End(e) if e.error.is_none()));
    p.until("the second request", |f| f.ty == HEADERS && f.stream == 3)
        .await;
    let _ = second.await.unwrap().unwrap();
}

#[tokio::test]
async fn responses_that_break_the_rules_end_the_stream_with_an_error() {
    let (l, addr) = listener().await;
    let client = GrpcClient::new(GrpcClientConfig::new(vec![addr]));
    let c = client.clone();
    let opening = tokio::spawn(async move { c.open(&request("A")).await });
    let mut p = accept(&l, &[]).await;
    let (_send, mut recv) = opening.await.unwrap().unwrap().split();

    // DATA before the response headers: the stream is reset and ends in error.
    p.send(&frame(DATA, 0, 1, &framed(b"early"))).await;
    match next(&mut recv).await {
        Incoming::Reset(r) => assert_eq!(r.code, 1, "PROTOCOL_ERROR: {r:?}"),
        other => panic!("expected a reset, got {other:?}"),
    }
    let rst = p
        .until("RST_STREAM", |f| f.ty == RST_STREAM && f.stream == 1)
        .await;
    assert_eq!(rst.payload, 1u32.to_be_bytes());

    // A second header block without END_STREAM.
    let (_send, mut recv) = client.open(&request("B")).await.unwrap().split();
    p.until("the request", |f| f.ty == HEADERS && f.stream == 3)
        .await;
    p.send(&frame(HEADERS, END_HEADERS, 3, &response_head()))
        .await;
    p.send(&frame(HEADERS, END_HEADERS, 3, &trailers("0")))
        .await;
    assert!(matches!(next(&mut recv).await, Incoming::Headers(_)));
    match next(&mut recv).await {
        Incoming::End(e) => assert_eq!(e.error.unwrap().code, 13),
        other => panic!("expected an error end, got {other:?}"),
    }

    // A message cut short by END_STREAM.
    let (_send, mut recv) = client.open(&request("C")).await.unwrap().split();
    p.until("the request", |f| f.ty == HEADERS && f.stream == 5)
        .await;
    p.send(&frame(HEADERS, END_HEADERS, 5, &response_head()))
        .await;
    p.send(&frame(DATA, END_STREAM, 5, &framed(b"whole")[..7]))
        .await;
    assert!(matches!(next(&mut recv).await, Incoming::Headers(_)));
    match next(&mut recv).await {
        Incoming::End(e) => {
            let e = e.error.unwrap();
            assert_eq!(e.code, 13);
            assert!(e.message.contains("inside a gRPC message"), "{}", e.message);
        }
        other => panic!("expected an error end, got {other:?}"),
    }

    // PUSH_PROMISE (push is disabled): the connection ends, the streams with it.
    let (_send, mut recv) = client.open(&request("D")).await.unwrap().split();
    p.until("the request", |f| f.ty == HEADERS && f.stream == 7)
        .await;
    let mut promise = 2u32.to_be_bytes().to_vec();
    promise.extend_from_slice(&response_head());
    p.send(&frame(PUSH_PROMISE, END_HEADERS, 7, &promise)).await;
    assert_eq!(p.goaway().await.1, 1, "PROTOCOL_ERROR");
    assert!(matches!(next(&mut recv).await, Incoming::Reset(_)));
}

#[tokio::test]
async fn goaway_refuses_the_streams_past_its_last_id() {
    let (l, addr) = listener().await;
    let client = GrpcClient::new(GrpcClientConfig::new(vec![addr]));
    let c = client.clone();
    let opening = tokio::spawn(async move { c.open(&request("A")).await });
    let mut p = accept(&l, &[]).await;
    let (_s1, mut r1) = opening.await.unwrap().unwrap().split();
    let (_s2, mut r2) = client.open(&request("B")).await.unwrap().split();
    p.until("both requests", |f| f.ty == HEADERS && f.stream == 3)
        .await;
    // Only stream 1 will be processed.
    let mut g = 1u32.to_be_bytes().to_vec();
    g.extend_from_slice(&0u32.to_be_bytes());
    p.send(&frame(GOAWAY, 0, 0, &g)).await;
    match next(&mut r2).await {
        Incoming::Reset(r) => assert_eq!(r.code, 7, "REFUSED_STREAM: {r:?}"),
        other => panic!("expected a reset, got {other:?}"),
    }
    let mut end = response_head();
    end.extend_from_slice(&trailers("0"));
    p.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &end))
        .await;
    assert!(matches!(next(&mut r1).await, Incoming::End(e) if e.error.is_none()));
    // A new stream goes to a new connection.
    let c = client.clone();
    let opening = tokio::spawn(async move { c.open(&request("C")).await });
    let mut p2 = accept(&l, &[]).await;
    let _ = opening.await.unwrap().unwrap();
    p2.until("the request on the new connection", |f| {
        f.ty == HEADERS && f.stream == 1
    })
    .await;
}

#[tokio::test]
async fn a_server_that_never_speaks_http2_fails_the_stream() {
    let (l, addr) = listener().await;
    let mut config = GrpcClientConfig::new(vec![addr]);
    config.handshake_timeout = Duration::from_millis(300);
    let client = GrpcClient::new(config);
    let opening = tokio::spawn(async move { client.open(&request("A")).await });
    // Accepts, reads, answers nothing.
    let (mut tcp, _) = within("the connection", l.accept()).await.unwrap();
    let (_send, mut recv) = opening.await.unwrap().unwrap().split();
    let started = std::time::Instant::now();
    match next(&mut recv).await {
        Incoming::Reset(_) => {}
        other => panic!("expected a reset, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.read_to_end(&mut rest)).await;
}
