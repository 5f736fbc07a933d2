//! `sluice demo`: echo services and the proxy on loopback, traffic of every ping-pong protocol
//! through it, a table, then a ready config for pointing a Kitex client at it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use sluice_client::Transport;
use sluice_proxy::{Config, Proxy};
use sluice_server::echo::EchoHandler;
use sluice_server::{Server, ServerConfig};
use sluice_sniff::Codec;
use tokio::net::TcpListener;

use crate::bench::{BenchArgs, StreamProto};

/// Binds `preferred` if free, else any loopback port.
async fn bind(preferred: &str) -> std::io::Result<TcpListener> {
    let preferred: SocketAddr = preferred
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    match sluice_server::bind_listener(preferred) {
        Ok(l) => Ok(l),
        Err(_) => sluice_server::bind_listener(SocketAddr::from(([127, 0, 0, 1], 0))),
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

/// One row of the table: `requests` calls (or one-message streams) through the proxy, with the
/// load generator of `sluice bench`, which checks every echo.
async fn row(
    name: &str,
    target: SocketAddr,
    transport: Transport,
    codec: Codec,
    stream: Option<StreamProto>,
    requests: usize,
    concurrency: usize,
) -> bool {
    let args = BenchArgs {
        target,
        transport,
        codec,
        size: 64,
        concurrency,
        duration: Duration::ZERO,
        requests: Some(requests as u64),
        rate: None,
        warmup: Duration::ZERO,
        json: false,
        stream,
        messages: 1,
        connections: 1,
        traceparent: false,
    };
    let r = crate::bench::run(args).await;
    println!(
        "{:<36} {:>9} {:>9} {:>10} {:>10}",
        name,
        r.ok + r.errors,
        r.ok,
        crate::human::duration(r.p50),
        crate::human::duration(r.p99)
    );
    r.errors == 0 && r.ok == requests as u64
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
    let (echo_handle, echo_drain) = sluice_server::drain::channel();
    let handler = Arc::new(EchoHandler::new());
    let echo = Server::new(ServerConfig::default().with_name("echo"), handler.clone())
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
    let (proxy_handle, proxy_drain) = sluice_server::drain::channel();
    let serving = tokio::spawn(proxy.serve(proxy_drain));

    println!("sluice demo: echo service on {echo_addr}, proxy on {proxy_addr} (ping-pong and TTStream) and {grpc_addr} (gRPC)");
    println!("sending {requests} requests per protocol with {concurrency} concurrent callers\n");
    println!(
        "{:<36} {:>9} {:>9} {:>10} {:>10}",
        "protocol", "requests", "ok", "p50", "p99"
    );
    let thrift = Codec::Thrift;
    let pb = Codec::KitexProtobuf;
    let cases: [(&str, SocketAddr, Transport, Codec, Option<StreamProto>); 9] = [
        (
            "TTHeader + Framed (Kitex default)",
            proxy_addr,
            Transport::TTHeader,
            thrift,
            None,
        ),
        (
            "TTHeader unframed",
            proxy_addr,
            Transport::TTHeaderUnframed,
            thrift,
            None,
        ),
        ("Framed", proxy_addr, Transport::Framed, thrift, None),
        ("Buffered", proxy_addr, Transport::Buffered, thrift, None),
        (
            "TTHeader + Kitex protobuf",
            proxy_addr,
            Transport::TTHeader,
            pb,
            None,
        ),
        (
            "Framed Kitex protobuf",
            proxy_addr,
            Transport::Framed,
            pb,
            None,
        ),
        (
            "TTStream bidi (1 message per stream)",
            proxy_addr,
            Transport::TTHeader,
            thrift,
            Some(StreamProto::TTStream),
        ),
        (
            "gRPC unary",
            grpc_addr,
            Transport::TTHeader,
            thrift,
            Some(StreamProto::GrpcUnary),
        ),
        (
            "gRPC bidi (thrift, 1 message)",
            grpc_addr,
            Transport::TTHeader,
            thrift,
            Some(StreamProto::Grpc),
        ),
    ];
    let mut all_ok = true;
    for (name, target, transport, codec, stream) in cases {
        all_ok &= row(
            name,
            target,
            transport,
            codec,
            stream,
            requests,
            concurrency,
        )
        .await;
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
