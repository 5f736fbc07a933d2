//! `sluice demo`: echo services and the proxy on loopback, traffic of every ping-pong protocol
//! through it, a table, then a ready config for pointing a Kitex client at it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use sluice_client::{Call, ClientConfig, Endpoint, GenericClient, Transport};
use sluice_proxy::{Config, Proxy};
use sluice_server::echo::EchoHandler;
use sluice_server::{DrainHandle, Server, ServerConfig};
use sluice_sniff::Codec;
use sluice_thrift::MessageType;
use sluice_ttheader::{str_key, Header};
use tokio::net::TcpListener;

/// Binds `preferred` if free, else any loopback port.
async fn bind(preferred: &str) -> std::io::Result<TcpListener> {
    match TcpListener::bind(preferred).await {
        Ok(l) => Ok(l),
        Err(_) => TcpListener::bind("127.0.0.1:0").await,
    }
}

fn demo_config(proxy: &str, grpc: &str, echo: SocketAddr) -> String {
    format!(
        r#"[[listeners]]
name = "pingpong"
address = "{proxy}"
cluster = "ttstream"      # TTStream + all ping-pong; "grpc" listeners serve gRPC

[[listeners]]
name = "grpc"
address = "{grpc}"
cluster = "grpc"

[[routes]]
service = "*"             # any service name, including none (Framed/Buffered carry none)
downstream = "echo"

[downstreams.echo]
endpoints = ["{echo}"]
transport = "ttheader"    # ttheader | ttheader-unframed | framed | buffered
"#
    )
}

/// `Echo_args{1: EchoRequest{1: msg}}`.
fn thrift_args(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(msg.len() + 12);
    b.put_slice(&[0x0c, 0x00, 0x01, 0x0b, 0x00, 0x01]);
    b.put_i32(msg.len() as i32);
    b.put_slice(msg);
    b.put_slice(&[0, 0]);
    b.freeze()
}

/// `EchoRequest{message: msg}` in protobuf.
fn pb_args(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(msg.len() + 4);
    b.put_u8(0x0a);
    let mut n = msg.len();
    while n >= 0x80 {
        b.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    b.put_u8(n as u8);
    b.put_slice(msg);
    b.freeze()
}

struct Row {
    name: &'static str,
    requests: usize,
    ok: usize,
    latencies: Vec<Duration>,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn traffic(
    name: &'static str,
    proxy: SocketAddr,
    transport: Transport,
    codec: Codec,
    requests: usize,
    concurrency: usize,
) -> Row {
    let mut cfg = ClientConfig::new(
        name,
        vec![Endpoint {
            addr: proxy,
            weight: 1,
        }],
    );
    cfg.transport = transport;
    cfg.request_timeout = Duration::from_secs(5);
    let client = Arc::new(GenericClient::new(cfg));
    let per = requests.div_ceil(concurrency);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let client = client.clone();
        tasks.spawn(async move {
            let mut ok = 0;
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let msg = format!("demo {name} caller {w} call {i}");
                let args = match codec {
                    Codec::Thrift => thrift_args(msg.as_bytes()),
                    Codec::KitexProtobuf => pb_args(msg.as_bytes()),
                };
                let mut header = Header::default();
                header
                    .str_kvs
                    .insert(str_key::IDL_SERVICE_NAME, "EchoService");
                header.str_kvs.insert("RPC_TRANSIT_DEMO", "1");
                let call = Call {
                    method: "Echo".to_owned(),
                    msg_type: MessageType::Call,
                    codec,
                    args: args.clone(),
                    header,
                    deadline: None,
                };
                let start = Instant::now();
                let res = client.call(call).await;
                lat.push(start.elapsed());
                if let Ok(Some(r)) = res {
                    let expect = match codec {
                        Codec::Thrift => sluice_server::echo::echo_result(&args),
                        Codec::KitexProtobuf => args,
                    };
                    if r.msg_type == MessageType::Reply && r.body == expect {
                        ok += 1;
                    }
                }
            }
            (ok, lat)
        });
    }
    let mut row = Row {
        name,
        requests: per * concurrency,
        ok: 0,
        latencies: Vec::new(),
    };
    while let Some(Ok((ok, lat))) = tasks.join_next().await {
        row.ok += ok;
        row.latencies.extend(lat);
    }
    row.latencies.sort();
    row
}

#[derive(Debug, Clone, Copy)]
enum StreamKind {
    TTStream,
    GrpcUnary,
    GrpcBidi,
}

/// One stream per request: open, one message, half-close, read the echo and the end.
async fn stream_traffic(
    name: &'static str,
    addr: SocketAddr,
    kind: StreamKind,
    requests: usize,
    concurrency: usize,
) -> Row {
    let tt = Arc::new(sluice_client::TTStreamClient::new(ClientConfig::new(
        name,
        vec![Endpoint { addr, weight: 1 }],
    )));
    let grpc = Arc::new(sluice_http2::GrpcClient::new(
        sluice_http2::GrpcClientConfig::new(vec![addr]),
    ));
    let per = requests.div_ceil(concurrency);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let (tt, grpc) = (tt.clone(), grpc.clone());
        tasks.spawn(async move {
            let mut ok = 0;
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let msg = Bytes::from(format!("demo {name} caller {w} stream {i}"));
                let start = Instant::now();
                let opened = match kind {
                    StreamKind::TTStream => tt
                        .open(sluice_client::OpenStream {
                            method: "EchoBidi".into(),
                            service: "EchoService".into(),
                            headers: sluice_stream::Metadata::new(),
                        })
                        .await
                        .map_err(|e| e.to_string()),
                    StreamKind::GrpcUnary | StreamKind::GrpcBidi => {
                        let (path, ct) = if matches!(kind, StreamKind::GrpcUnary) {
                            ("/echo.EchoService/Echo", "application/grpc")
                        } else {
                            ("/EchoService/EchoBidi", "application/grpc+thrift")
                        };
                        grpc.open(&sluice_http2::OpenRequest {
                            path: path.into(),
                            content_type: ct.into(),
                            authority: "EchoService".into(),
                            headers: sluice_stream::Metadata::new(),
                            deadline: Some(Instant::now() + Duration::from_secs(5)),
                        })
                        .await
                        .map_err(|e| e.to_string())
                    }
                };
                let Ok(stream) = opened else {
                    lat.push(start.elapsed());
                    continue;
                };
                let (tx, mut rx) = stream.split();
                let sent = tx.send(msg.clone()).await.is_ok() && tx.close_send().await.is_ok();
                let mut echoed = false;
                let mut good_end = false;
                while sent && !good_end {
                    match rx.recv().await {
                        sluice_stream::Incoming::Headers(_) => {}
                        sluice_stream::Incoming::Message(m) => echoed = m == msg,
                        sluice_stream::Incoming::End(e) => {
                            good_end = e.error.is_none();
                            break;
                        }
                        sluice_stream::Incoming::Reset(_) => break,
                    }
                }
                lat.push(start.elapsed());
                if echoed && good_end {
                    ok += 1;
                }
            }
            (ok, lat)
        });
    }
    let mut row = Row {
        name,
        requests: per * concurrency,
        ok: 0,
        latencies: Vec::new(),
    };
    while let Some(Ok((ok, lat))) = tasks.join_next().await {
        row.ok += ok;
        row.latencies.extend(lat);
    }
    row.latencies.sort();
    row
}

pub(crate) async fn run(requests: usize, concurrency: usize, exit: bool) -> ExitCode {
    // The downstream: an echo service speaking every ping-pong protocol on one port.
    let echo_listener = match bind("127.0.0.1:8888").await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sluice demo: cannot bind the echo service: {e}");
            return ExitCode::FAILURE;
        }
    };
    let echo_addr = echo_listener.local_addr().expect("bound");
    let (echo_handle, echo_drain) = DrainHandle::new();
    let handler = Arc::new(EchoHandler::new());
    let echo = Server::new(
        ServerConfig {
            name: "echo".into(),
            ..ServerConfig::default()
        },
        handler.clone(),
    )
    .with_streaming(handler);
    tokio::spawn(echo.serve(echo_listener, echo_drain));

    // The proxy, configured from the same TOML a user would write.
    let mut addrs = Vec::new();
    for preferred in ["127.0.0.1:7000", "127.0.0.1:7001"] {
        let probe = bind(preferred).await;
        addrs.push(match &probe {
            Ok(l) => l.local_addr().expect("bound").to_string(),
            Err(_) => "127.0.0.1:0".into(),
        });
    }
    let toml = demo_config(&addrs[0], &addrs[1], echo_addr);
    let cfg = match Config::from_toml(&toml) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice demo: built-in config rejected: {e}");
            return ExitCode::FAILURE;
        }
    };
    let proxy = match Proxy::bind(cfg).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sluice demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let proxy_addr = proxy.local_addrs()[0].1;
    let grpc_addr = proxy.local_addrs()[1].1;
    let (proxy_handle, proxy_drain) = DrainHandle::new();
    let serving = tokio::spawn(proxy.serve(proxy_drain));

    println!("sluice demo: echo service on {echo_addr}, proxy on {proxy_addr} (ping-pong and TTStream) and {grpc_addr} (gRPC)");
    println!("sending {requests} requests per protocol with {concurrency} concurrent callers\n");
    let cases: [(&'static str, Transport, Codec); 6] = [
        (
            "TTHeader + Framed (Kitex default)",
            Transport::TTHeader,
            Codec::Thrift,
        ),
        (
            "TTHeader unframed",
            Transport::TTHeaderUnframed,
            Codec::Thrift,
        ),
        ("Framed", Transport::Framed, Codec::Thrift),
        ("Buffered", Transport::Buffered, Codec::Thrift),
        (
            "TTHeader + Kitex protobuf",
            Transport::TTHeader,
            Codec::KitexProtobuf,
        ),
        (
            "Framed Kitex protobuf",
            Transport::Framed,
            Codec::KitexProtobuf,
        ),
    ];
    println!(
        "{:<36} {:>9} {:>9} {:>10} {:>10}",
        "protocol", "requests", "ok", "p50", "p99"
    );
    let mut all_ok = true;
    for (name, transport, codec) in cases {
        let row = traffic(name, proxy_addr, transport, codec, requests, concurrency).await;
        all_ok &= row.ok == row.requests;
        println!(
            "{:<36} {:>9} {:>9} {:>10.3?} {:>10.3?}",
            row.name,
            row.requests,
            row.ok,
            pct(&row.latencies, 0.50),
            pct(&row.latencies, 0.99)
        );
    }
    for (name, kind) in [
        ("TTStream bidi (1 message per stream)", StreamKind::TTStream),
        ("gRPC unary (protobuf)", StreamKind::GrpcUnary),
        ("gRPC bidi (thrift, 1 message)", StreamKind::GrpcBidi),
    ] {
        let addr = if matches!(kind, StreamKind::TTStream) {
            proxy_addr
        } else {
            grpc_addr
        };
        let row = stream_traffic(name, addr, kind, requests, concurrency).await;
        all_ok &= row.ok == row.requests;
        println!(
            "{:<36} {:>9} {:>9} {:>10.3?} {:>10.3?}",
            row.name,
            row.requests,
            row.ok,
            pct(&row.latencies, 0.50),
            pct(&row.latencies, 0.99)
        );
    }
    println!(
        "\nPoint a Kitex client at {proxy_addr} (ping-pong and TTStream) or {grpc_addr} (gRPC). The config in use:\n"
    );
    println!(
        "{}",
        demo_config(&proxy_addr.to_string(), &grpc_addr.to_string(), echo_addr)
    );
    if exit {
        proxy_handle.drain();
        echo_handle.drain();
        let _ = serving.await;
    } else {
        println!("serving; Ctrl-C to stop");
        crate::shutdown_signal().await;
        proxy_handle.drain();
        echo_handle.drain();
        let _ = serving.await;
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("sluice demo: some requests failed");
        ExitCode::FAILURE
    }
}
