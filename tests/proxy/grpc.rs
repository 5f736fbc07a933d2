//! gRPC through the `sluice` binary (h2c), and pinned clusters: every family refused in its own
//! protocol on the other cluster's listener.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_http2::{GrpcClient, GrpcClientConfig, OpenRequest};
use sluice_stream::{
    ClientRecv, Incoming, Metadata, Reset, ServerStream, StreamEnd, StreamRequest, StreamingHandler,
};
use sluice_testkit::{Capture, Dir};
use sluice_thrift::{ExceptionKind, MessageType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    assert_child_traceparent, exception, read_reply, request, start_echo, start_streaming,
    thrift_args, Shape, Sluice, TRACEPARENT,
};

fn config(down: std::net::SocketAddr) -> String {
    format!(
        r#"
[[listeners]]
name = "grpc"
address = "127.0.0.1:{{port}}"
cluster = "grpc"
[[routes]]
service = "*"
downstream = "down"
[downstreams.down]
endpoints = ["{down}"]
"#
    )
}

fn client(addr: std::net::SocketAddr) -> GrpcClient {
    GrpcClient::new(GrpcClientConfig::new(vec![addr]))
}

fn req(method: &str) -> OpenRequest {
    let mut headers = Metadata::new();
    headers.push("rpc-transit-kx-req-id", "g-1");
    headers.push("trace-bin", "AAEC");
    OpenRequest {
        path: format!("/echo.EchoService/{method}"),
        content_type: "application/grpc".into(),
        authority: "kxserver".into(),
        headers,
        deadline: None,
    }
}

async fn drain(rx: &mut ClientRecv) -> (Vec<Bytes>, Result<StreamEnd, Reset>) {
    let mut msgs = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("ends in time")
        {
            Incoming::Headers(_) => {}
            Incoming::Message(m) => msgs.push(m),
            Incoming::End(e) => return (msgs, Ok(e)),
            Incoming::Reset(r) => return (msgs, Err(r)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_bidi_server_streaming_and_errors() {
    let (echo, handler, _d) = start_echo().await;
    let sluice = Sluice::start(&config(echo));
    let c = client(sluice.addr);
    // Unary, the way Kitex sends it: one message with END_STREAM.
    let (tx, mut rx) = c.open(&req("Echo")).await.unwrap().split();
    let pb = Bytes::from_static(&[0x0a, 0x05, b'h', b'e', b'l', b'l', b'o']);
    tx.send(pb.clone()).await.unwrap();
    tx.close_send().await.unwrap();
    let (msgs, end) = drain(&mut rx).await;
    assert_eq!(msgs, vec![pb.clone()]);
    assert_eq!(end.unwrap().error, None);
    let seen: std::collections::HashMap<_, _> = handler.last_str_kvs().into_iter().collect();
    assert_eq!(
        seen.get("rpc-transit-kx-req-id").map(String::as_str),
        Some("g-1")
    );
    assert_eq!(
        seen.get("trace-bin").map(String::as_str),
        Some("AAEC"),
        "-bin metadata untouched"
    );

    let (tx, mut rx) = c.open(&req("EchoBidi")).await.unwrap().split();
    for i in 0..5u8 {
        tx.send(Bytes::from(vec![i; 100])).await.unwrap();
    }
    tx.close_send().await.unwrap();
    let (msgs, end) = drain(&mut rx).await;
    assert_eq!(msgs.len(), 5);
    assert_eq!(msgs[4], Bytes::from(vec![4u8; 100]));
    assert_eq!(end.unwrap().error, None);

    let (tx, mut rx) = c.open(&req("EchoServer")).await.unwrap().split();
    tx.send(pb.clone()).await.unwrap();
    tx.close_send().await.unwrap();
    assert_eq!(drain(&mut rx).await.0, vec![pb.clone(), pb.clone()]);

    let (tx, mut rx) = c.open(&req("EchoBidiFail")).await.unwrap().split();
    tx.send(pb.clone()).await.unwrap();
    let (msgs, end) = drain(&mut rx).await;
    assert_eq!(msgs, vec![pb]);
    let err = end.unwrap().error.unwrap();
    assert_eq!(err.code, 6);
    assert_eq!(
        err.message,
        "biz error: echo: injected stream failure after 1 messages"
    );
}

/// One unary `Echo` call with `headers` added; returns the metadata the downstream saw.
async fn metadata_seen(
    c: &GrpcClient,
    handler: &sluice_server::echo::EchoHandler,
    headers: &[(&str, &str)],
) -> std::collections::HashMap<String, String> {
    let mut r = req("Echo");
    for (k, v) in headers {
        r.headers.push(k.to_string(), v.to_string());
    }
    let (tx, mut rx) = c.open(&r).await.unwrap().split();
    tx.send(Bytes::from_static(b"t")).await.unwrap();
    tx.close_send().await.unwrap();
    let (msgs, end) = drain(&mut rx).await;
    assert_eq!(msgs, vec![Bytes::from_static(b"t")]);
    assert_eq!(end.unwrap().error, None);
    handler.last_str_kvs().into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_continued_one_hop_and_invalid_ones_untouched() {
    let (echo, handler, _d) = start_echo().await;
    let sluice = Sluice::start(&config(echo));
    let c = client(sluice.addr);
    // The standard metadata and Kitex's transient metainfo form.
    for key in ["traceparent", "rpc-transit-traceparent"] {
        let seen = metadata_seen(
            &c,
            &handler,
            &[(key, TRACEPARENT), ("tracestate", "congo=t61rcWkgMzE")],
        )
        .await;
        assert_child_traceparent(seen.get(key).map(String::as_str), TRACEPARENT, key);
        assert_eq!(
            seen.get("tracestate").map(String::as_str),
            Some("congo=t61rcWkgMzE"),
            "{key}: tracestate passes unchanged"
        );
        assert_eq!(
            seen.get("rpc-transit-kx-req-id").map(String::as_str),
            Some("g-1"),
            "{key}: the other metadata crosses"
        );
    }
    let invalid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1";
    let seen = metadata_seen(&c, &handler, &[("traceparent", invalid)]).await;
    assert_eq!(
        seen.get("traceparent").map(String::as_str),
        Some(invalid),
        "an invalid traceparent passes unchanged"
    );
    let seen = metadata_seen(&c, &handler, &[]).await;
    assert!(
        !seen.contains_key("traceparent") && !seen.contains_key("rpc-transit-traceparent"),
        "no trace is started: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_and_empty_half_closes_on_one_connection() {
    let (echo, _h, _d) = start_echo().await;
    let sluice = Sluice::start(&config(echo));
    let c = Arc::new(client(sluice.addr));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..250u32 {
        let c = c.clone();
        tasks.spawn(async move {
            let (tx, mut rx) = c.open(&req("EchoBidi")).await.unwrap().split();
            let m = Bytes::from(i.to_be_bytes().to_vec());
            tx.send(m.clone()).await.unwrap();
            // A streaming client's half-close is an empty DATA with END_STREAM: more than 100
            // of them per connection must not trip h2's empty-frame limit anywhere.
            tx.close_send().await.unwrap();
            let (msgs, end) = drain(&mut rx).await;
            assert_eq!(msgs, vec![m]);
            assert_eq!(end.unwrap().error, None);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// Records each stream's deadline and reset, never answers on its own.
#[derive(Default)]
struct Hold {
    deadlines: Mutex<Vec<Option<Instant>>>,
    resets: Mutex<Vec<Reset>>,
}

impl StreamingHandler for Hold {
    async fn handle(&self, req: StreamRequest, mut stream: ServerStream) {
        self.deadlines.lock().unwrap().push(req.deadline);
        loop {
            match stream.recv().await {
                Ok(Some(_)) => {}
                Ok(None) => tokio::time::sleep(Duration::from_secs(30)).await,
                Err(r) => {
                    self.resets.lock().unwrap().push(r);
                    return;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_propagates_and_cancel_travels_downstream() {
    let hold = Arc::new(Hold::default());
    let echo = Arc::new(sluice_server::echo::EchoHandler::new());
    let (down, _d) = start_streaming(echo, hold.clone()).await;
    let sluice = Sluice::start(&config(down));
    let c = client(sluice.addr);
    let mut r = req("Slow");
    r.deadline = Some(Instant::now() + Duration::from_millis(300));
    let (tx, mut rx) = c.open(&r).await.unwrap().split();
    tx.send(Bytes::from_static(b"x")).await.unwrap();
    let (_, end) = drain(&mut rx).await;
    let err = end.expect("a status").error.expect("an error");
    assert_eq!(err.code, 4, "DEADLINE_EXCEEDED: {}", err.message);
    let d = hold.deadlines.lock().unwrap()[0].expect("the downstream got a grpc-timeout");
    assert!(d <= Instant::now() + Duration::from_millis(300));

    // An explicit cancel becomes RST_STREAM(CANCEL) downstream.
    let (tx, _rx) = c.open(&req("Slow")).await.unwrap().split();
    tx.send(Bytes::from_static(b"y")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tx.reset(Reset {
        code: sluice_stream::ResetCode::Http2(8),
        message: "cancel".into(),
        cancel_path: None,
    })
    .await;
    let start = Instant::now();
    while hold.resets.lock().unwrap().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "downstream never saw the cancel"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(hold.resets.lock().unwrap().last().unwrap().code, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_unreachable_is_unavailable() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sluice = Sluice::start(&config(dead));
    let c = client(sluice.addr);
    let (tx, mut rx) = c.open(&req("Echo")).await.unwrap().split();
    let _ = tx.send(Bytes::from_static(b"x")).await;
    let _ = tx.close_send().await;
    let err = drain(&mut rx).await.1.unwrap().error.unwrap();
    assert_eq!(err.code, 14);
    assert!(err.message.contains("\"down\""), "{}", err.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kitex_grpc_client_bytes_through_sluice() {
    let (echo, _h, _d) = start_echo().await;
    let sluice = Sluice::start(&config(echo));
    for name in ["grpc-pb-unary", "grpc-thrift-unary"] {
        let cap = Capture::load(name);
        let c2s = cap.conns[0].bytes(Dir::C2s).to_vec();
        // The request's gRPC message, as the DATA payload the Kitex client sent.
        let msg = request_message(&c2s);
        let mut s = TcpStream::connect(sluice.addr).await.unwrap();
        s.write_all(&c2s).await.unwrap();
        let mut got = BytesMut::new();
        let start = Instant::now();
        while !contains(&got, &msg) && start.elapsed() < Duration::from_secs(5) {
            let _ = tokio::time::timeout(Duration::from_millis(500), s.read_buf(&mut got)).await;
        }
        assert!(
            contains(&got, &msg),
            "{name}: the echoed message comes back in a DATA frame"
        );
    }
}

/// The first DATA frame's payload on stream 1 of a client byte stream.
fn request_message(c2s: &[u8]) -> Vec<u8> {
    let mut pos = 24;
    while pos + 9 <= c2s.len() {
        let len = u32::from_be_bytes([0, c2s[pos], c2s[pos + 1], c2s[pos + 2]]) as usize;
        let kind = c2s[pos + 3];
        if kind == 0 {
            return c2s[pos + 9..pos + 9 + len].to_vec();
        }
        pos += 9 + len;
    }
    panic!("no DATA frame")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_family_is_refused_in_its_own_protocol_on_the_other_cluster() {
    let (echo, _h, _d) = start_echo().await;
    let grpc = Sluice::start(&config(echo));
    let ttstream =
        Sluice::start(&config(echo).replace("cluster = \"grpc\"", "cluster = \"ttstream\""));

    // Ping-pong TTHeader on the grpc listener: an exception naming the cluster that serves it.
    let shape = Shape::TTHeader {
        framed: true,
        flags: 0,
    };
    let mut s = TcpStream::connect(grpc.addr).await.unwrap();
    s.write_all(&request(
        shape,
        &Default::default(),
        false,
        "Echo",
        MessageType::Call,
        5,
        &thrift_args(b"x"),
    ))
    .await
    .unwrap();
    let r = read_reply(&mut s, &mut BytesMut::new(), shape, Duration::from_secs(5))
        .await
        .unwrap();
    let ex = exception(&r);
    assert_eq!(ex.kind, ExceptionKind::UNKNOWN_SERVICE);
    assert!(ex.message.contains("ttstream cluster"), "{}", ex.message);

    // TTStream on the grpc listener: an error Trailer naming the cluster.
    let c = sluice_client::TTStreamClient::new(sluice_client::ClientConfig::new(
        "g",
        vec![sluice_client::Endpoint {
            addr: grpc.addr,
            weight: 1,
        }],
    ));
    let (tx, mut rx) = c
        .open(sluice_client::OpenStream {
            hash: None,
            method: "EchoBidi".into(),
            service: "EchoService".into(),
            headers: Metadata::new(),
        })
        .await
        .unwrap()
        .split();
    let _ = tx.send(Bytes::from_static(&[0])).await;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
        {
            Incoming::End(e) => break e,
            Incoming::Reset(r) => panic!("reset: {r:?}"),
            _ => {}
        }
    };
    assert!(end.error.unwrap().message.contains("ttstream cluster"));

    // gRPC on the ttstream listener: GOAWAY with the text as debug data.
    let tcp = TcpStream::connect(ttstream.addr).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn_task = tokio::spawn(conn);
    let request = http::Request::post("/echo.EchoService/Echo")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let outcome = match send.send_request(request, true) {
        Ok((resp, _)) => resp.await.map(|_| ()),
        Err(e) => Err(e),
    };
    let conn_err = conn_task.await.unwrap();
    let text = format!("{outcome:?} {conn_err:?}");
    assert!(outcome.is_err(), "the call must fail");
    assert!(
        text.contains("grpc cluster"),
        "GOAWAY debug text names the cluster: {text}"
    );
    let log = ttstream.stop();
    assert!(
        log.contains("refusing a connection of the other cluster's family"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_with_alpn_h2() {
    use std::sync::Arc as StdArc;
    let (echo, _h, _d) = start_echo().await;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir();
    let tag = format!("{}-{}", std::process::id(), crate::support::free_port());
    let cert_path = dir.join(format!("sluice-test-cert-{tag}.pem"));
    let key_path = dir.join(format!("sluice-test-key-{tag}.pem"));
    std::fs::write(&cert_path, ck.cert.pem()).unwrap();
    std::fs::write(&key_path, ck.signing_key.serialize_pem()).unwrap();
    let toml = config(echo).replace(
        "cluster = \"grpc\"",
        &format!(
            "cluster = \"grpc\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
            cert_path.display(),
            key_path.display()
        ),
    );
    let sluice = Sluice::start(&toml);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = StdArc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(StdArc::new(tls));
    let tcp = TcpStream::connect(sluice.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.expect("TLS handshake");
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN h2 negotiated"
    );

    let (send, conn) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let request = http::Request::post("https://localhost/echo.EchoService/Echo")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(request, false).unwrap();
    let msg = [0x0a, 0x05, b'h', b'e', b'l', b'l', b'o'];
    let mut framed = vec![0, 0, 0, 0, msg.len() as u8];
    framed.extend_from_slice(&msg);
    body.send_data(Bytes::from(framed.clone()), true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut rbody = resp.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = rbody.data().await {
        let chunk = chunk.unwrap();
        let _ = rbody.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, framed, "the echo comes back over TLS");
    let trailers = rbody.trailers().await.unwrap().unwrap();
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    let _ = std::fs::remove_file(cert_path);
    let _ = std::fs::remove_file(key_path);
}
