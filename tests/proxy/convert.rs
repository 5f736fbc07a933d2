//! Streams converted between families (`stream_protocol` on a downstream): gRPC thrift callers
//! to a TTStream downstream and TTStream callers to a gRPC downstream, through the binary, with
//! every mode, metainfo, errors, cancel and deadlines mapped as docs/protocols.md says.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::{ClientConfig, Endpoint, OpenStream, TTStreamClient};
use sluice_http2::{GrpcClient, GrpcClientConfig, OpenRequest};
use sluice_stream::{ClientRecv, Incoming, Metadata, Reset, ResetCode, StatusCode, StreamEnd};

use sluice_server::echo::EchoHandler;

use crate::support::{start_echo, Sluice};

fn config(listener: &str, down: std::net::SocketAddr, protocol: &str) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:{{port}}"
cluster = "{listener}"
[[routes]]
service = "*"
downstream = "down"
[downstreams.down]
endpoints = ["{down}"]
stream_protocol = "{protocol}"
"#
    )
}

/// A bare `EchoRequest{1: text}`: a TTStream data payload and a thrift gRPC stream message.
fn msg(text: &str) -> Bytes {
    let mut v = vec![0x0b, 0x00, 0x01];
    v.extend_from_slice(&(text.len() as i32).to_be_bytes());
    v.extend_from_slice(text.as_bytes());
    v.push(0);
    Bytes::from(v)
}

async fn drain(rx: &mut ClientRecv) -> (Vec<Bytes>, Result<StreamEnd, Reset>) {
    let mut msgs = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the stream ends in time")
        {
            Incoming::Headers(_) => {}
            Incoming::Message(m) => msgs.push(m),
            Incoming::End(e) => return (msgs, Ok(e)),
            Incoming::Reset(r) => return (msgs, Err(r)),
        }
    }
}

/// Every stream mode: (method, messages sent, messages the echo sends back).
const MODES: [(&str, &[&str], &[&str]); 4] = [
    ("Echo", &["u"], &["u"]),
    ("EchoBidi", &["a", "b", "c"], &["a", "b", "c"]),
    ("EchoClient", &["a", "b"], &["b"]),
    ("EchoServer", &["s"], &["s", "s"]),
];

/// Sends `sent` and a half-close on `stream`, checks that `want` came back and the stream
/// ended without an error, and returns the end (for its trailers).
async fn exchange(
    stream: sluice_stream::ClientStream,
    method: &str,
    sent: &[&str],
    want: &[&str],
) -> StreamEnd {
    let (tx, mut rx) = stream.split();
    for m in sent {
        tx.send(msg(m)).await.unwrap();
    }
    tx.close_send().await.unwrap();
    let (got, end) = drain(&mut rx).await;
    let want: Vec<Bytes> = want.iter().map(|m| msg(m)).collect();
    assert_eq!(got, want, "{method}");
    let end = end.unwrap_or_else(|r| panic!("{method}: reset {r:?}"));
    assert!(end.error.is_none(), "{method}: {end:?}");
    end
}

fn grpc_open(method: &str, content_type: &str, deadline: Option<Instant>) -> OpenRequest {
    let mut headers = Metadata::new();
    headers.push("rpc-persist-tenant", "gold");
    headers.push("rpc-transit-kx-req-id", "g-1");
    headers.push("x-user", "u1");
    OpenRequest {
        path: format!("/EchoService/{method}"),
        content_type: content_type.into(),
        authority: "EchoService".into(),
        headers,
        deadline,
    }
}

fn kv(h: &[(String, String)], k: &str) -> Option<String> {
    h.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
}

/// Sends one message on an `EchoBidiFail` stream, which the echo fails after echoing it, and
/// returns the error end.
async fn failed_end(stream: sluice_stream::ClientStream) -> sluice_stream::ErrorStatus {
    let (tx, mut rx) = stream.split();
    tx.send(msg("x")).await.unwrap();
    let (got, end) = drain(&mut rx).await;
    assert_eq!(got, [msg("x")]);
    end.unwrap().error.expect("an error end")
}

/// Sends one message, waits for the first thing back, then resets the stream with `code`.
async fn cancel_after_first(stream: sluice_stream::ClientStream, code: ResetCode) {
    let (tx, mut rx) = stream.split();
    tx.send(msg("c")).await.unwrap();
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap(),
        Incoming::Headers(_) | Incoming::Message(_)
    ));
    tx.reset(Reset {
        code,
        message: "cancel".into(),
        cancel_path: None,
    })
    .await;
}

/// The code of the first reset the echo sees after its `before`th, within 5 s.
async fn reset_seen(handler: &EchoHandler, before: usize) -> ResetCode {
    let deadline = Instant::now() + Duration::from_secs(5);
    while handler.resets_seen().len() == before {
        assert!(Instant::now() < deadline, "the cancel reached the server");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handler.resets_seen()[before].code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_thrift_callers_reach_a_ttstream_downstream() {
    let (echo, handler, _d) = start_echo().await;
    let sluice = Sluice::start(&config("grpc", echo, "ttstream"));
    let c = GrpcClient::new(GrpcClientConfig::new(vec![sluice.addr]));
    let thrift = "application/grpc+thrift";
    for (method, sent, want) in MODES {
        let stream = c.open(&grpc_open(method, thrift, None)).await.unwrap();
        exchange(stream, method, sent, want).await;
        // The TTStream server saw the gRPC metadata as Kitex metainfo.
        let seen = handler.last_str_kvs();
        assert_eq!(
            kv(&seen, "RPC_PERSIST_TENANT").as_deref(),
            Some("gold"),
            "{seen:?}"
        );
        assert_eq!(
            kv(&seen, "RPC_TRANSIT_KX_REQ_ID").as_deref(),
            Some("g-1"),
            "{seen:?}"
        );
        assert_eq!(kv(&seen, "x-user").as_deref(), Some("u1"), "{seen:?}");
        assert_eq!(kv(&seen, "isn").as_deref(), Some("EchoService"), "{seen:?}");
    }
    // A TTStream error end (exception type 6) is a gRPC status with its message.
    let e = failed_end(
        c.open(&grpc_open("EchoBidiFail", thrift, None))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(e.code.to_grpc(), 2, "TTStream type 6 is UNKNOWN: {e:?}");
    assert_eq!(
        e.message,
        "biz error: echo: injected stream failure after 1 messages"
    );
    // A caller's cancel (RST_STREAM CANCEL) is a TTStream RST 12007 downstream.
    let before = handler.resets_seen().len();
    let stream = c.open(&grpc_open("EchoBidi", thrift, None)).await.unwrap();
    cancel_after_first(stream, ResetCode::Http2(8)).await;
    assert_eq!(
        reset_seen(&handler, before).await,
        ResetCode::TTStream(12007)
    );
    // The caller's deadline is kept by the proxy (TTStream carries none): DEADLINE_EXCEEDED.
    let (tx, mut rx) = c
        .open(&grpc_open(
            "EchoBidi",
            thrift,
            Some(Instant::now() + Duration::from_millis(300)),
        ))
        .await
        .unwrap()
        .split();
    let started = Instant::now();
    let (_, end) = drain(&mut rx).await;
    drop(tx);
    let code = match end {
        Ok(e) => e.error.map(|e| e.code.to_grpc()),
        Err(r) => panic!("reset {r:?}"),
    };
    assert_eq!(code, Some(4), "DEADLINE_EXCEEDED");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Protobuf over TTStream is refused, naming why.
    let (tx, mut rx) = c
        .open(&grpc_open("Echo", "application/grpc", None))
        .await
        .unwrap()
        .split();
    let _ = tx.send(Bytes::from_static(&[0x0a, 0x01, b'x'])).await;
    let _ = tx.close_send().await;
    let (_, end) = drain(&mut rx).await;
    let e = end.unwrap().error.expect("refused");
    assert_eq!(e.code.to_grpc(), 12, "UNIMPLEMENTED: {e:?}");
    assert!(
        e.message
            .contains("protobuf over TTStream is not supported"),
        "{}",
        e.message
    );
}

fn tt_open(method: &str) -> OpenStream {
    let mut headers = Metadata::new();
    headers.push("RPC_PERSIST_TENANT", "gold");
    headers.push("RPC_TRANSIT_KX_REQ_ID", "t-1");
    OpenStream {
        hash: None,
        method: method.into(),
        service: "EchoService".into(),
        headers,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttstream_callers_reach_a_grpc_downstream() {
    let (echo, handler, _d) = start_echo().await;
    let sluice = Sluice::start(&config("ttstream", echo, "grpc"));
    let c = TTStreamClient::new(ClientConfig::new(
        "sluice",
        vec![Endpoint {
            addr: sluice.addr,
            weight: 1,
        }],
    ));
    for (method, sent, want) in MODES {
        exchange(c.open(tt_open(method)).await.unwrap(), method, sent, want).await;
        // The gRPC server saw the metainfo as Kitex's gRPC metadata.
        let seen = handler.last_str_kvs();
        assert_eq!(
            kv(&seen, "rpc-persist-tenant").as_deref(),
            Some("gold"),
            "{seen:?}"
        );
        assert_eq!(
            kv(&seen, "rpc-transit-kx-req-id").as_deref(),
            Some("t-1"),
            "{seen:?}"
        );
    }
    // A gRPC error status is a TTStream exception end with its message.
    let e = failed_end(c.open(tt_open("EchoBidiFail")).await.unwrap()).await;
    assert_eq!(e.code, StatusCode::TTStream(6), "{e:?}");
    assert_eq!(
        e.message,
        "biz error: echo: injected stream failure after 1 messages"
    );
    // A TTStream caller's cancel is an RST_STREAM CANCEL downstream.
    let before = handler.resets_seen().len();
    let stream = c.open(tt_open("EchoBidi")).await.unwrap();
    cancel_after_first(stream, ResetCode::TTStream(12007)).await;
    assert_eq!(reset_seen(&handler, before).await, ResetCode::Http2(8));
}

/// The grpcio raw-bytes thrift server of `tests/peers/grpcio_thrift_echo.py`, its address and
/// its stdout lines; `None` (the test skips) without grpcio unless `SLUICE_REQUIRE_GRPCIO`.
fn grpcio_thrift_echo() -> Option<(
    std::process::Child,
    std::net::SocketAddr,
    std::sync::mpsc::Receiver<String>,
)> {
    use std::io::BufRead;
    let python = std::env::var("PYTHON3").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import grpc"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var_os("SLUICE_REQUIRE_GRPCIO").is_some() {
            panic!("SLUICE_REQUIRE_GRPCIO is set but grpcio is not usable");
        }
        println!("skipped: grpcio not installed (pip install grpcio)");
        return None;
    }
    let mut child = std::process::Command::new(&python)
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/peers/grpcio_thrift_echo.py"),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the grpcio server");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("grpcio said {first:?}"))
        .parse()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    Some((child, addr, rx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttstream_callers_reach_a_grpcio_server() {
    let Some((mut peer, grpcio, said)) = grpcio_thrift_echo() else {
        return;
    };
    // TTStream carries no deadline: the route's timeout goes to grpcio as grpc-timeout.
    let toml = config("ttstream", grpcio, "grpc").replace(
        "downstream = \"down\"\n",
        "downstream = \"down\"\ntimeout_ms = 5000\n",
    );
    let sluice = Sluice::start(&toml);
    let c = TTStreamClient::new(ClientConfig::new(
        "sluice",
        vec![Endpoint {
            addr: sluice.addr,
            weight: 1,
        }],
    ));
    for (method, sent, want) in MODES {
        let end = exchange(c.open(tt_open(method)).await.unwrap(), method, sent, want).await;
        let left: f64 = end
            .trailers
            .get_str("x-time-remaining")
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (3.0..=5.0).contains(&left),
            "{method}: {left} s left of 5 s"
        );
        // grpcio's trailing metadata comes back as TTStream trailer keys.
        assert_eq!(
            end.trailers.get_str("x-seen-tenant"),
            Some("gold"),
            "{method}: {end:?}"
        );
        assert_eq!(
            end.trailers.get_str("biz-status"),
            Some("0"),
            "{method}: {end:?}"
        );
    }
    // INTERNAL from grpcio is a TTStream exception type 6 with grpcio's message.
    let e = failed_end(c.open(tt_open("EchoBidiFail")).await.unwrap()).await;
    assert_eq!(e.code, StatusCode::TTStream(6), "{e:?}");
    assert_eq!(e.message, "grpcio: bidi failure");
    // A TTStream cancel cancels the grpcio call.
    let (tx, _rx) = c.open(tt_open("EchoWait")).await.unwrap().split();
    tx.send(msg("w")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.reset(Reset {
        code: ResetCode::TTStream(12007),
        message: "cancel".into(),
        cancel_path: None,
    })
    .await;
    let line = said
        .recv_timeout(Duration::from_secs(10))
        .expect("grpcio saw the cancel");
    assert_eq!(line, "cancelled EchoWait");
    let _ = peer.kill();
    let _ = peer.wait();
}

/// One gRPC thrift call made with h2: the messages (gRPC-framed) and half-close, then what came
/// back: the messages and `grpc-status` / `grpc-message`.
async fn h2_call(
    addr: std::net::SocketAddr,
    method: &str,
    sent: &[&str],
) -> (Vec<Bytes>, String, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}/EchoService/{method}"))
        .header("content-type", "application/grpc+thrift")
        .header("te", "trailers")
        .header("rpc-persist-tenant", "h2-gold")
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(request, false).unwrap();
    let mut framed = Vec::new();
    for m in sent {
        let m = msg(m);
        framed.push(0u8);
        framed.extend_from_slice(&(m.len() as u32).to_be_bytes());
        framed.extend_from_slice(&m);
    }
    body.send_data(Bytes::from(framed), true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut recv = resp.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), recv.data())
        .await
        .unwrap()
    {
        let chunk = chunk.unwrap();
        let _ = recv.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await.unwrap().expect("trailers");
    let text = |k: &str| {
        trailers
            .get(k)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let mut got = Vec::new();
    let mut rest = &data[..];
    while rest.len() >= 5 {
        let n = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        got.push(Bytes::copy_from_slice(&rest[5..5 + n]));
        rest = &rest[5 + n..];
    }
    (got, text("grpc-status"), text("grpc-message"))
}

/// h2 (an independent HTTP/2 implementation) as the gRPC thrift caller: raw
/// `application/grpc+thrift` frames through Sluice to a TTStream downstream and back, in every
/// mode, with an error end and a cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_grpc_thrift_caller_reaches_a_ttstream_downstream() {
    let (echo, handler, _d) = start_echo().await;
    let sluice = Sluice::start(&config("grpc", echo, "ttstream"));
    for (method, sent, want) in MODES {
        let (got, status, _) = h2_call(sluice.addr, method, sent).await;
        let want: Vec<Bytes> = want.iter().map(|m| msg(m)).collect();
        assert_eq!(got, want, "{method}");
        assert_eq!(status, "0", "{method}");
        let seen = handler.last_str_kvs();
        assert_eq!(
            kv(&seen, "RPC_PERSIST_TENANT").as_deref(),
            Some("h2-gold"),
            "{seen:?}"
        );
    }
    // The TTStream error end: grpc-status 2 and the exception's message (percent-encoded).
    let (got, status, message) = h2_call(sluice.addr, "EchoBidiFail", &["x"]).await;
    assert_eq!(got, [msg("x")]);
    assert_eq!(status, "2");
    assert!(message.contains("injected stream failure"), "{message}");
    // h2's RST_STREAM CANCEL is a TTStream RST 12007 downstream.
    let before = handler.resets_seen().len();
    let tcp = tokio::net::TcpStream::connect(sluice.addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let request = http::Request::post(format!("http://{}/EchoService/EchoBidi", sluice.addr))
        .header("content-type", "application/grpc+thrift")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(request, false).unwrap();
    let m = msg("c");
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(m.len() as u32).to_be_bytes());
    framed.extend_from_slice(&m);
    body.send_data(Bytes::from(framed), false).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), resp).await;
    body.send_reset(h2::Reason::CANCEL);
    assert_eq!(
        reset_seen(&handler, before).await,
        ResetCode::TTStream(12007)
    );
}

/// `EchoRequest{1: text}` as an args struct (`0C 00 01 <req> 00`): a thrift gRPC unary message.
fn args(text: &str) -> Bytes {
    let mut v = vec![0x0c, 0x00, 0x01];
    v.extend_from_slice(&msg(text));
    v.push(0);
    Bytes::from(v)
}

/// Sends one message and a half-close on `path`, returns the messages and the end.
async fn unary(
    c: &GrpcClient,
    path: &str,
    content_type: &str,
    headers: Metadata,
    body: Bytes,
) -> (Vec<Bytes>, StreamEnd) {
    let (tx, mut rx) = c
        .open(&OpenRequest {
            path: path.into(),
            content_type: content_type.into(),
            authority: "EchoService".into(),
            headers,
            deadline: None,
        })
        .await
        .unwrap()
        .split();
    tx.send(body).await.unwrap();
    tx.close_send().await.unwrap();
    let (got, end) = drain(&mut rx).await;
    (got, end.unwrap_or_else(|r| panic!("{path}: reset {r:?}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_calls_become_pingpong_calls_to_volo_thrift() {
    let volo =
        sluice_volo_fixtures::start_server(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let toml = config("grpc", volo, "preserve").replace(
        "stream_protocol = \"preserve\"",
        "grpc_unary = \"pingpong\"\ntransport = \"ttheader\"",
    );
    let sluice = Sluice::start(&toml);
    let c = GrpcClient::new(GrpcClientConfig::new(vec![sluice.addr]));
    let thrift = "application/grpc+thrift";
    let mut md = Metadata::new();
    md.push("rpc-persist-tenant", "gold");
    // The args struct goes out as a CALL; the REPLY's result struct comes back.
    let (got, end) = unary(&c, "/EchoService/Echo", thrift, md, args("hi")).await;
    assert!(end.error.is_none(), "{end:?}");
    let mut want = args("hi|tenant=gold").to_vec();
    want[2] = 0; // field 0, success
    assert_eq!(got, [Bytes::from(want)]);
    // A TApplicationException is an error status with its message.
    let (got, end) = unary(
        &c,
        "/EchoService/EchoFail",
        thrift,
        Metadata::new(),
        args("x"),
    )
    .await;
    assert!(got.is_empty());
    let e = end.error.expect("an error status");
    assert_eq!(e.code.to_grpc(), 2, "{e:?}");
    assert_eq!(e.message, sluice_volo_fixtures::FAIL_MESSAGE);
    // A declared exception stays in the result struct: status OK, the struct as volo wrote it.
    let (got, end) = unary(
        &c,
        "/EchoService/EchoRaise",
        thrift,
        Metadata::new(),
        args("boom"),
    )
    .await;
    assert!(end.error.is_none(), "{end:?}");
    let idl = sluice_idl::ThriftIdl::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("idl/echo.thrift"),
        &[],
    )
    .unwrap();
    let raise = idl.function(None, "EchoRaise").unwrap();
    assert_eq!(
        idl.decode_result(raise, &got[0]).unwrap(),
        sluice_idl::Outcome::Exception {
            field: "err".into(),
            type_name: "EchoError".into(),
            value: serde_json::json!({"code": sluice_volo_fixtures::RAISE_CODE, "message": "boom"}),
        }
    );
    // TTHeader too: the volo server says how the call arrived.
    let (got, _) = unary(
        &c,
        "/EchoService/Echo",
        thrift,
        Metadata::new(),
        args("?transport"),
    )
    .await;
    let mut want = args("ttheader").to_vec();
    want[2] = 0;
    assert_eq!(got, [Bytes::from(want)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_calls_become_pingpong_calls_to_sluice_echo() {
    let (echo, handler, _d) = start_echo().await;
    let toml = config("grpc", echo, "preserve").replace(
        "stream_protocol = \"preserve\"",
        "grpc_unary = \"pingpong\"",
    );
    let sluice = Sluice::start(&toml);
    let c = GrpcClient::new(GrpcClientConfig::new(vec![sluice.addr]));
    // A declared exception is part of the result struct: it comes back as the message, status
    // OK (the echo sends an args struct whose field is not 1 back as it is: field 2).
    let raise = Bytes::from_static(&[0x0c, 0x00, 0x02, 0x08, 0x00, 0x01, 0, 0, 0, 7, 0x00, 0x00]);
    let (got, end) = unary(
        &c,
        "/EchoService/Raise",
        "application/grpc+thrift",
        Metadata::new(),
        raise.clone(),
    )
    .await;
    assert!(end.error.is_none(), "{end:?}");
    assert_eq!(got, [raise]);
    // Protobuf: Kitex protobuf over TTHeader, the message as it is both ways.
    let pb = Bytes::from_static(&[0x0a, 0x02, b'p', b'b']);
    let mut md = Metadata::new();
    md.push("rpc-transit-kx-req-id", "u-1");
    let (got, end) = unary(
        &c,
        "/echo.EchoService/Echo",
        "application/grpc",
        md,
        pb.clone(),
    )
    .await;
    assert!(end.error.is_none(), "{end:?}");
    assert_eq!(got, std::slice::from_ref(&pb));
    let seen = handler.last_str_kvs();
    assert_eq!(
        kv(&seen, "RPC_TRANSIT_KX_REQ_ID").as_deref(),
        Some("u-1"),
        "{seen:?}"
    );
    assert_eq!(kv(&seen, "isn").as_deref(), Some("EchoService"), "{seen:?}");
    // The gRPC deadline goes on as the TTHeader timeout (int key 12, in ms).
    let (tx, mut rx) = c
        .open(&OpenRequest {
            path: "/echo.EchoService/Echo".into(),
            content_type: "application/grpc".into(),
            authority: "EchoService".into(),
            headers: Metadata::new(),
            deadline: Some(Instant::now() + Duration::from_secs(5)),
        })
        .await
        .unwrap()
        .split();
    tx.send(pb.clone()).await.unwrap();
    tx.close_send().await.unwrap();
    let (got, end) = drain(&mut rx).await;
    assert_eq!(got, std::slice::from_ref(&pb));
    assert!(end.unwrap().error.is_none());
    let timeout: u64 = handler
        .last_int_kvs()
        .iter()
        .find(|(k, _)| *k == 12)
        .map(|(_, v)| v.parse().unwrap())
        .expect("RPCTimeout sent");
    assert!((4000..=5000).contains(&timeout), "{timeout} ms");
    // Kitex protobuf's ErrorProto is an error status.
    let (got, end) = unary(
        &c,
        "/echo.EchoService/EchoFail",
        "application/grpc",
        Metadata::new(),
        pb.clone(),
    )
    .await;
    assert!(got.is_empty());
    let e = end.error.expect("an error status");
    assert_eq!(e.code.to_grpc(), 2, "{e:?}");
    assert_eq!(e.message, "biz error: echo: injected failure for EchoFail");
    // A biz error (biz-status in the REPLY's header) is status 13 with the biz-* trailers.
    let (got, end) = unary(
        &c,
        "/echo.EchoService/EchoBizError",
        "application/grpc",
        Metadata::new(),
        pb.clone(),
    )
    .await;
    assert!(got.is_empty());
    let e = end.error.clone().expect("an error status");
    assert_eq!(e.code.to_grpc(), 13, "{e:?}");
    assert_eq!(e.message, "injected biz error");
    assert_eq!(end.trailers.get_str("biz-status"), Some("502"));
    // Two request messages are not a unary call.
    let (tx, mut rx) = c
        .open(&OpenRequest {
            path: "/echo.EchoService/Echo".into(),
            content_type: "application/grpc".into(),
            authority: "EchoService".into(),
            headers: Metadata::new(),
            deadline: None,
        })
        .await
        .unwrap()
        .split();
    tx.send(pb.clone()).await.unwrap();
    tx.send(pb.clone()).await.unwrap();
    tx.close_send().await.unwrap();
    let (_, end) = drain(&mut rx).await;
    let e = end.unwrap().error.expect("refused");
    assert_eq!(e.code.to_grpc(), 12, "{e:?}");
    assert!(e.message.contains("one request message"), "{}", e.message);
}

/// One TTHeader request (thrift or Kitex protobuf) through `addr`, and its reply.
async fn ttheader_call(
    addr: std::net::SocketAddr,
    pb: bool,
    method: &str,
    body: &[u8],
    header: &sluice_ttheader::Header,
) -> crate::support::RawReply {
    use tokio::io::AsyncWriteExt;
    let shape = crate::support::Shape::TTHeader {
        framed: true,
        flags: 0,
    };
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&crate::support::request(
        shape,
        header,
        pb,
        method,
        sluice_thrift::MessageType::Call,
        5,
        body,
    ))
    .await
    .unwrap();
    let mut buf = bytes::BytesMut::new();
    crate::support::read_reply(&mut s, &mut buf, shape, Duration::from_secs(10))
        .await
        .expect("a reply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttheader_callers_reach_a_grpc_only_downstream() {
    use sluice_thrift::MessageType;
    let Some((mut peer, grpcio, _said)) = grpcio_thrift_echo() else {
        return;
    };
    let (echo, _h, _d) = start_echo().await;
    let toml = format!(
        r#"
[[listeners]]
address = "127.0.0.1:{{port}}"
cluster = "ttstream"
[[routes]]
service = "EchoService"
method = "EchoPb"
downstream = "pb"
[[routes]]
service = "*"
downstream = "thrift"
[downstreams.thrift]
endpoints = ["{grpcio}"]
transport = "grpc"
[downstreams.pb]
endpoints = ["{echo}"]
transport = "grpc"
grpc_package = "echo"
"#
    );
    let sluice = Sluice::start(&toml);
    let mut h = sluice_ttheader::Header::default();
    h.str_kvs.insert("isn", "EchoService");
    h.str_kvs.insert("RPC_PERSIST_TENANT", "gold");
    // Thrift: the args struct is the gRPC message, the grpcio echo's answer the REPLY body,
    // its trailers the reply's string keys.
    let r = ttheader_call(sluice.addr, false, "Echo", &args("hi"), &h).await;
    assert_eq!(r.msg_type, MessageType::Reply);
    assert_eq!(r.body, args("hi"));
    let f = r.header.unwrap();
    assert_eq!(f.header.str_kvs.get_str("x-seen-tenant"), Some("gold"));
    assert_eq!(f.header.str_kvs.get_str("biz-status"), Some("0"));
    // An error status is a TApplicationException of the nearest type.
    let r = ttheader_call(sluice.addr, false, "EchoBidiFail", &args("x"), &h).await;
    assert_eq!(r.msg_type, MessageType::Exception);
    let (e, _) = sluice_thrift::ApplicationException::decode(&r.body).unwrap();
    assert_eq!(e.kind.0, 6, "INTERNAL is an internal error");
    assert_eq!(e.message, "grpcio: bidi failure");
    // Kitex protobuf: the message as it is, to `/echo.EchoService/EchoPb`.
    let pb = [0x0a, 0x02, b'p', b'b'];
    let r = ttheader_call(sluice.addr, true, "EchoPb", &pb, &h).await;
    assert_eq!(r.msg_type, MessageType::Reply, "{r:?}");
    assert_eq!(&r.body[..], &pb[..]);
    let _ = peer.kill();
    let _ = peer.wait();
}

#[test]
fn conversion_settings_are_checked_and_described() {
    let base = |extra: &str| {
        format!(
            r#"
[[listeners]]
address = "127.0.0.1:1"
cluster = "grpc"
[[routes]]
service = "*"
downstream = "d"
[downstreams.d]
endpoints = ["127.0.0.1:2"]
{extra}
"#
        )
    };
    let c = sluice_proxy::Config::from_toml(&base(
        "stream_protocol = \"ttstream\"\ngrpc_unary = \"pingpong\"",
    ))
    .unwrap();
    let d = c.describe();
    assert!(d.contains("streams leave as ttstream"), "{d}");
    assert!(d.contains("protobuf over TTStream is not supported"), "{d}");
    assert!(
        d.contains("gRPC unary calls leave as ping-pong calls over ttheader"),
        "{d}"
    );
    for (extra, want) in [
        ("stream_protocol = \"h3\"", "unknown stream protocol \"h3\""),
        ("grpc_unary = \"both\"", "unknown grpc_unary \"both\""),
        (
            "grpc_package = \"echo\"",
            "applies with transport = \"grpc\" only",
        ),
        ("transport = \"quic\"", "or grpc for a gRPC-only downstream"),
    ] {
        let e = sluice_proxy::Config::from_toml(&base(extra))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{extra}: {e}");
    }
    let c = sluice_proxy::Config::from_toml(&base("transport = \"grpc\"\ngrpc_package = \"echo\""))
        .unwrap();
    assert!(c.describe().contains("transport=grpc"), "{}", c.describe());
    // A protobuf payload route on a streaming method matches gRPC protobuf streams only: to a
    // downstream whose streams leave as TTStream, every one would be refused, so the
    // configuration is.
    let proto = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("idl/echo.proto");
    let payload_route = |method: &str, protocol: &str| {
        format!(
            r#"
[[listeners]]
address = "127.0.0.1:1"
cluster = "grpc"
[[routes]]
service = "echo.EchoService"
method = "{method}"
idl = "{}"
field = "message"
equals = "gold"
downstream = "d"
[downstreams.d]
endpoints = ["127.0.0.1:2"]
stream_protocol = "{protocol}"
"#,
            proto.display()
        )
    };
    for method in ["EchoBidi", "EchoClient", "EchoServer"] {
        let e = sluice_proxy::Config::from_toml(&payload_route(method, "ttstream"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("routes[0].downstream"), "{method}: {e}");
        assert!(
            e.contains("protobuf over TTStream is not supported")
                && e.contains("unexpected Args writer type"),
            "{method}: {e}"
        );
        // Preserved or gRPC-bound streams are fine.
        for ok in ["preserve", "grpc"] {
            sluice_proxy::Config::from_toml(&payload_route(method, ok)).unwrap();
        }
    }
    // A unary protobuf method also matches Kitex protobuf ping-pong calls, which a TTStream
    // downstream takes: allowed, with the note.
    let c = sluice_proxy::Config::from_toml(&payload_route("Echo", "ttstream")).unwrap();
    assert!(
        c.describe()
            .contains("protobuf over TTStream is not supported"),
        "{}",
        c.describe()
    );
}
