//! The examples in `examples/`, run in-process against an echo downstream (the `sluice echo`
//! binary, or `EchoHandler` served over loopback), each checked for what it claims to do.

#[allow(dead_code)]
#[path = "proxy/support.rs"]
mod support;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/custom_route.rs"]
mod custom_route;
#[allow(dead_code, unreachable_pub)]
#[path = "../examples/custom_streaming_handler.rs"]
mod custom_streaming_handler;
#[allow(dead_code, unreachable_pub)]
#[path = "../examples/embed_server.rs"]
mod embed_server;
#[allow(dead_code, unreachable_pub)]
#[path = "../examples/generic_clients.rs"]
mod generic_clients;
#[allow(dead_code, unreachable_pub)]
#[path = "../examples/layer_metainfo.rs"]
mod layer_metainfo;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice::client::{
    Call, ClientConfig, Endpoint, GenericClient, OpenStream, TTStreamClient, Transport,
};
use sluice::http2::{GrpcClient, GrpcClientConfig, OpenRequest};
use sluice::proxy::Proxy;
use sluice::sniff::Codec;
use sluice::stream::{ClientStream, Incoming, Metadata, StreamEnd};
use sluice::thrift::{ApplicationException, ExceptionKind, MessageType};
use sluice::ttheader::Header;

use support::{free_port, start_echo, wait_listening};

/// `sluice echo` as a child process; killed on drop.
struct EchoProcess {
    child: Child,
    addr: SocketAddr,
}

impl EchoProcess {
    fn start() -> EchoProcess {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["echo", "--listen", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sluice echo starts");
        wait_listening(addr, "sluice echo");
        EchoProcess { child, addr }
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything a stream delivered: headers, messages, and its end.
#[derive(Debug)]
struct Received {
    headers: Option<Metadata>,
    messages: Vec<Bytes>,
    end: StreamEnd,
}

/// Sends `messages`, half-closes and reads the stream to its end (a reset fails the test).
async fn exchange(stream: ClientStream, messages: &[&str]) -> Received {
    let (tx, mut rx) = stream.split();
    for m in messages {
        tx.send(Bytes::copy_from_slice(m.as_bytes())).await.unwrap();
    }
    tx.close_send().await.unwrap();
    let mut headers = None;
    let mut received = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the stream ends in time")
        {
            Incoming::Headers(h) => headers = Some(h),
            Incoming::Message(m) => received.push(m),
            Incoming::End(end) => {
                return Received {
                    headers,
                    messages: received,
                    end,
                }
            }
            Incoming::Reset(r) => panic!("stream reset: {r:?}"),
        }
    }
}

fn client_config(addr: SocketAddr) -> ClientConfig {
    ClientConfig::new("under-test", vec![Endpoint { addr, weight: 1 }])
}

fn ttstream_open(method: &str, headers: Metadata) -> OpenStream {
    OpenStream {
        hash: None,
        method: method.into(),
        service: "EchoService".into(),
        headers,
    }
}

fn grpc_open(method: &str, headers: Metadata) -> OpenRequest {
    OpenRequest {
        path: format!("/echo.EchoService/{method}"),
        content_type: "application/grpc".into(),
        authority: String::new(),
        headers,
        deadline: None,
    }
}

/// A thrift call of `method` with the echo's `EchoRequest{1: "x"}`-style args for `text`.
fn thrift_call(method: &str, text: &str, header: Header) -> Call {
    Call {
        method: method.into(),
        msg_type: MessageType::Call,
        codec: Codec::Thrift,
        args: generic_clients::echo_args(text),
        header,
        deadline: None,
    }
}

/// Drains a server or proxy started by an example and checks that it stops `within` this.
async fn stops_once_drained(
    handle: sluice::server::DrainHandle,
    serving: tokio::task::JoinHandle<()>,
    within: Duration,
) {
    handle.drain();
    tokio::time::timeout(within, serving)
        .await
        .expect("the server stops once drained")
        .unwrap();
}

/// A TTHeader thrift call of `Echo` with `str_kvs` as metainfo.
async fn echo_call(addr: SocketAddr, text: &str, str_kvs: &[(&str, &str)]) -> Bytes {
    let mut header = Header::default();
    header.str_kvs.insert("isn", "EchoService");
    for (k, v) in str_kvs {
        header.str_kvs.insert(k.to_string(), v.to_string());
    }
    let reply = GenericClient::new(client_config(addr))
        .call(thrift_call("Echo", text, header))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.msg_type, MessageType::Reply);
    reply.body
}

/// The echo's result struct for `text`: `{0: EchoRequest{1: text}}`.
fn echo_result(text: &str) -> Bytes {
    sluice::server::echo::echo_result(&generic_clients::echo_args(text))
}

fn kvs(pairs: Vec<(String, String)>) -> HashMap<String, String> {
    pairs.into_iter().collect()
}

/// The string in a result struct `{0: string}`.
fn result_string(body: &[u8]) -> String {
    assert_eq!(&body[..3], &[0x0b, 0x00, 0x00], "field 0, a string");
    let len = i32::from_be_bytes(body[3..7].try_into().unwrap()) as usize;
    assert_eq!(body.len(), 7 + len + 1, "one field, then STOP");
    String::from_utf8(body[7..7 + len].to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_server_answers_hello_from_the_header_and_echoes_the_rest() {
    let listener = sluice::server::bind_listener(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (handle, drain) = sluice::server::drain::channel();
    let serving = tokio::spawn(embed_server::run(listener, drain));
    for (transport, service, expected) in [
        (
            Transport::TTHeader,
            "Greeter",
            "hello from Greeter over ttheader",
        ),
        (Transport::Framed, "", "hello from  over framed"),
    ] {
        let mut header = Header::default();
        if !service.is_empty() {
            header.str_kvs.insert("isn", service);
        }
        let client = GenericClient::new(client_config(addr).with_transport(transport));
        let call = |method: &str, header: Header| thrift_call(method, "x", header);
        let reply = client.call(call("Hello", header)).await.unwrap().unwrap();
        assert_eq!(reply.msg_type, MessageType::Reply);
        assert_eq!(result_string(&reply.body), expected, "{transport:?}");
        let reply = client
            .call(call("Echo", Header::default()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reply.body, echo_result("x"), "{transport:?}");
    }
    stops_once_drained(handle, serving, Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_streaming_handler_upper_cases_over_ttstream_and_grpc() {
    let listener = sluice::server::bind_listener(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (handle, drain) = sluice::server::drain::channel();
    let serving = tokio::spawn(custom_streaming_handler::run(listener, drain));

    let tt = TTStreamClient::new(client_config(addr));
    let got = exchange(
        tt.open(ttstream_open("Shout", Metadata::new()))
            .await
            .unwrap(),
        &["hello", "world"],
    )
    .await;
    assert_eq!(got.messages, vec!["HELLO", "WORLD"]);
    assert_eq!(got.end.error, None);
    assert_eq!(got.end.trailers.get_str("x-message-count"), Some("2"));
    assert_eq!(
        got.headers.unwrap().get_str("x-handler"),
        Some("shout"),
        "the handler's response headers reach a TTStream caller"
    );

    let grpc = GrpcClient::new(GrpcClientConfig::new(vec![addr]));
    let got = exchange(
        grpc.open(&grpc_open("Shout", Metadata::new()))
            .await
            .unwrap(),
        &["abc", "", "x1y"],
    )
    .await;
    assert_eq!(got.messages, vec!["ABC", "", "X1Y"]);
    assert_eq!(got.end.error, None, "grpc-status 0");
    assert_eq!(got.end.trailers.get_str("x-message-count"), Some("3"));
    assert_eq!(got.headers.unwrap().get_str("x-handler"), Some("shout"));

    // Ping-pong on the same port: refused, this server serves streams only.
    let reply = GenericClient::new(client_config(addr))
        .call(thrift_call("Echo", "x", Header::default()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.msg_type, MessageType::Exception);
    let (ex, _) = ApplicationException::decode(&reply.body).unwrap();
    assert_eq!(ex.kind, ExceptionKind::UNKNOWN_METHOD, "{}", ex.message);

    stops_once_drained(handle, serving, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_clients_call_sluice_echo_by_name() {
    let echo = EchoProcess::start();
    let out = generic_clients::run(echo.addr, &["one", "two", "three"])
        .await
        .unwrap();
    assert_eq!(out.reply, echo_result("hello"));
    let sent: Vec<Bytes> = ["one", "two", "three"]
        .iter()
        .map(|m| generic_clients::echo_request(m))
        .collect();
    assert_eq!(out.stream_messages, sent, "EchoBidi echoes each message");
    assert_eq!(out.stream_end, StreamEnd::ok());

    // A dead downstream is an error naming it, not a hang.
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let err = generic_clients::run(dead, &["x"]).await.unwrap_err();
    assert!(
        err.to_string().contains(generic_clients::DOWNSTREAM),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_metainfo_adds_the_key_and_counts_every_request_and_stream() {
    let (echo, handler, _echo_drain) = start_echo().await;
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let proxy = Proxy::bind(layer_metainfo::config(any, any, echo).unwrap())
        .await
        .unwrap();
    let addrs: HashMap<String, SocketAddr> = proxy.local_addrs().into_iter().collect();
    let (streams, grpc) = (addrs["streams"], addrs["grpc"]);
    let counts = Arc::new(layer_metainfo::Counts::default());
    let (handle, drain) = sluice::server::drain::channel();
    let serving = tokio::spawn(layer_metainfo::run(proxy, counts.clone(), drain));

    // Ping-pong: the downstream sees the caller's key and the layer's.
    for i in 0..3 {
        let text = format!("m{i}");
        assert_eq!(
            echo_call(streams, &text, &[("RPC_TRANSIT_caller", "yes")]).await,
            echo_result(&text)
        );
        let seen = kvs(handler.last_str_kvs());
        assert_eq!(
            seen.get(layer_metainfo::KEY).map(String::as_str),
            Some(layer_metainfo::VALUE)
        );
        assert_eq!(
            seen.get("RPC_TRANSIT_caller").map(String::as_str),
            Some("yes")
        );
    }

    // TTStream: the key is in the downstream's stream headers.
    let tt = TTStreamClient::new(client_config(streams));
    for _ in 0..2 {
        let got = exchange(
            tt.open(ttstream_open("EchoBidi", Metadata::new()))
                .await
                .unwrap(),
            &["a", "b"],
        )
        .await;
        assert_eq!(got.messages, vec!["a", "b"]);
        assert_eq!(got.end, StreamEnd::ok());
        let seen = kvs(handler.last_str_kvs());
        assert_eq!(
            seen.get(layer_metainfo::KEY).map(String::as_str),
            Some(layer_metainfo::VALUE)
        );
    }

    // gRPC: the key is in the downstream's metadata.
    let g = GrpcClient::new(GrpcClientConfig::new(vec![grpc]));
    for _ in 0..4 {
        let got = exchange(
            g.open(&grpc_open("EchoBidi", Metadata::new()))
                .await
                .unwrap(),
            &["u"],
        )
        .await;
        assert_eq!(got.messages, vec!["u"]);
        assert_eq!(got.end.error, None);
        let seen = kvs(handler.last_str_kvs());
        assert_eq!(
            seen.get(layer_metainfo::KEY).map(String::as_str),
            Some(layer_metainfo::VALUE)
        );
    }

    assert_eq!(counts.requests.load(Ordering::Relaxed), 3);
    assert_eq!(counts.ttstreams.load(Ordering::Relaxed), 2);
    assert_eq!(counts.grpc_calls.load(Ordering::Relaxed), 4);
    assert_eq!(handler.requests_seen(), 9, "each went downstream once");

    stops_once_drained(handle, serving, Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_route_sends_each_tenant_to_its_own_downstream() {
    let (a, handler_a, _da) = start_echo().await;
    let (b, handler_b, _db) = start_echo().await;
    let proxy = Proxy::bind_with(
        custom_route::config(([127, 0, 0, 1], 0).into(), a, b).unwrap(),
        custom_route::phases(),
    )
    .await
    .unwrap();
    let addr = proxy.local_addrs()[0].1;
    let (handle, drain) = sluice::server::drain::channel();
    let serving = tokio::spawn(custom_route::run(proxy, drain));

    // Ping-pong, by TTHeader string key.
    echo_call(addr, "to-b", &[(custom_route::TENANT_KEY, "b")]).await;
    assert_eq!(
        (handler_a.requests_seen(), handler_b.requests_seen()),
        (0, 1)
    );
    echo_call(addr, "to-a", &[(custom_route::TENANT_KEY, "a")]).await;
    assert_eq!(
        (handler_a.requests_seen(), handler_b.requests_seen()),
        (1, 1)
    );
    // No tenant: the configured route (tenant-a).
    echo_call(addr, "none", &[]).await;
    assert_eq!(
        (handler_a.requests_seen(), handler_b.requests_seen()),
        (2, 1)
    );

    // TTStream, by stream header.
    let tt = TTStreamClient::new(client_config(addr));
    let mut headers = Metadata::new();
    headers.push(custom_route::TENANT_KEY, "b");
    let got = exchange(
        tt.open(ttstream_open("EchoBidi", headers)).await.unwrap(),
        &["s"],
    )
    .await;
    assert_eq!(got.messages, vec!["s"]);
    assert_eq!(
        (handler_a.requests_seen(), handler_b.requests_seen()),
        (2, 2)
    );
    assert_eq!(
        kvs(handler_b.last_str_kvs())
            .get(custom_route::TENANT_KEY)
            .map(String::as_str),
        Some("b"),
        "the key travels on"
    );

    // An unknown tenant: no route, in the caller's protocol.
    let mut header = Header::default();
    header.str_kvs.insert(custom_route::TENANT_KEY, "zzz");
    let reply = GenericClient::new(client_config(addr))
        .call(thrift_call("Echo", "x", header))
        .await
        .unwrap()
        .unwrap();
    let (ex, _) = ApplicationException::decode(&reply.body).unwrap();
    assert_eq!(ex.kind, ExceptionKind::UNKNOWN_METHOD);
    assert_eq!(ex.message, "sluice: unknown tenant \"zzz\"");
    assert_eq!(
        (handler_a.requests_seen(), handler_b.requests_seen()),
        (2, 2)
    );

    stops_once_drained(handle, serving, Duration::from_secs(15)).await;
}
