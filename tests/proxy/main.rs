//! The ping-pong proxy end to end: the real `sluice` binary over loopback sockets, in front of
//! in-process downstreams.

mod admin;
mod convert;
mod discovery;
mod grpc;
mod kitex_replay;
mod observability;
mod otlp;
mod payload;
mod resilience;
mod support;
mod tls;
mod ttstream;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use sluice_server::echo::echo_result;
use sluice_thrift::{ExceptionKind, MessageType};
use sluice_ttheader::{int_key, Header};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn matrix_config(echo: std::net::SocketAddr, dead: u16) -> String {
    format!(
        r#"
[[listeners]]
name = "pingpong"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"
default_service = "DefaultSvc"

[[routes]]
header = {{ key = "x-route", value = "buffered" }}
downstream = "echo-buffered"

[[routes]]
service = "via-unframed"
downstream = "echo-unframed"

[[routes]]
service = "via-framed"
downstream = "echo-framed"

[[routes]]
service = "via-buffered"
downstream = "echo-buffered"

[[routes]]
service = "via-mux"
downstream = "echo-mux"

[[routes]]
service = "down"
downstream = "dead"

[[routes]]
service = "capped"
downstream = "echo"
max_timeout_ms = 150

[[routes]]
service = "*"
downstream = "echo"

[downstreams.echo]
endpoints = ["{echo}"]

[downstreams.echo-unframed]
endpoints = ["{echo}"]
transport = "ttheader-unframed"

[downstreams.echo-framed]
endpoints = ["{echo}"]
transport = "framed"

[downstreams.echo-buffered]
endpoints = ["{echo}"]
transport = "buffered"

[downstreams.echo-mux]
endpoints = ["{echo}"]
multiplex = true

[downstreams.dead]
endpoints = ["127.0.0.1:{dead}"]
connect_timeout_ms = 500
"#
    )
}

fn svc(name: &str) -> Header {
    let mut h = Header::default();
    h.str_kvs.insert("isn", name.to_owned());
    h
}

const SHAPES: [Shape; 5] = [
    Shape::TTHeader {
        framed: true,
        flags: 0,
    },
    Shape::TTHeader {
        framed: false,
        flags: 0,
    },
    Shape::TTHeader {
        framed: true,
        flags: 1,
    },
    Shape::Framed,
    Shape::Buffered,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_shape_through_every_downstream_transport() {
    let (echo, _h, _d) = start_echo().await;
    let sluice = Sluice::start(&matrix_config(echo, free_port()));
    for shape in SHAPES {
        for service in [
            "EchoService",
            "via-unframed",
            "via-framed",
            "via-buffered",
            "via-mux",
        ] {
            // Framed/Buffered carry no service name: they all take the default route.
            let args = thrift_args(format!("{shape:?} {service}").as_bytes());
            let r = roundtrip(sluice.addr, shape, &svc(service), "Echo", &args).await;
            assert_eq!(r.msg_type, MessageType::Reply, "{shape:?} {service}");
            assert_eq!(r.seq, 7, "the caller's seq id comes back");
            assert_eq!(r.method, "Echo");
            assert_eq!(r.body, echo_result(&args), "{shape:?} {service}");
            if let Some(f) = &r.header {
                assert_eq!(f.header.seq_id, 7);
                assert_eq!(f.header.flags, 0, "replies carry flags 0, as Kitex's");
                assert_eq!(f.header.int_kvs.get_str(int_key::MSG_TYPE), Some("2"));
                let Shape::TTHeader { framed, .. } = shape else {
                    unreachable!()
                };
                assert_eq!(
                    f.inner_framed, framed,
                    "reply mirrors the request's framing"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kitex_protobuf_over_ttheader_and_framed() {
    let (echo, _h, _d) = start_echo().await;
    let sluice = Sluice::start(&matrix_config(echo, free_port()));
    let pb = [0x0a, 0x05, b'h', b'e', b'l', b'l', b'o'];
    for (shape, service) in [
        (
            Shape::TTHeader {
                framed: true,
                flags: 0,
            },
            "EchoService",
        ),
        (
            Shape::TTHeader {
                framed: true,
                flags: 0,
            },
            "via-buffered",
        ),
        (
            Shape::TTHeader {
                framed: true,
                flags: 0,
            },
            "via-unframed",
        ),
        (Shape::Framed, ""),
    ] {
        let mut s = TcpStream::connect(sluice.addr).await.unwrap();
        s.write_all(&request(
            shape,
            &svc(service),
            true,
            "Echo",
            MessageType::Call,
            3,
            &pb,
        ))
        .await
        .unwrap();
        let r = read_reply(&mut s, &mut BytesMut::new(), shape, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            (r.msg_type, r.seq),
            (MessageType::Reply, 3),
            "{shape:?} {service}"
        );
        assert_eq!(&r.body[..], &pb[..]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metainfo_goes_down_backward_keys_come_back_hop_keys_stay() {
    let (echo, handler, _d) = start_echo().await;
    let sluice = Sluice::start(&matrix_config(echo, free_port()));
    let mut h = svc("EchoService");
    h.str_kvs.insert("RPC_TRANSIT_REQ_ID", "r-1");
    h.str_kvs.insert("RPC_PERSIST_TENANT", "t-9");
    h.str_kvs.insert("custom", "c");
    h.str_kvs.insert("crrst", "1");
    h.str_kvs.insert("crc32c", "deadbeef");
    h.int_kvs.insert(int_key::FROM_SERVICE, "caller");
    h.int_kvs.insert(int_key::CONNECT_TIMEOUT, "1000");
    h.int_kvs.insert(int_key::RPC_TIMEOUT, "4000");
    let shape = Shape::TTHeader {
        framed: true,
        flags: 0,
    };
    let r = roundtrip(sluice.addr, shape, &h, "EchoBizError", &thrift_args(b"x")).await;
    let got: std::collections::HashMap<_, _> = handler.last_str_kvs().into_iter().collect();
    assert_eq!(
        got.get("RPC_TRANSIT_REQ_ID").map(String::as_str),
        Some("r-1")
    );
    assert_eq!(
        got.get("RPC_PERSIST_TENANT").map(String::as_str),
        Some("t-9")
    );
    assert_eq!(got.get("custom").map(String::as_str), Some("c"));
    assert_eq!(got.get("isn").map(String::as_str), Some("EchoService"));
    assert!(!got.contains_key("crrst"), "crrst is per hop");
    assert!(
        !got.contains_key("crc32c"),
        "the checksum covers a re-created envelope"
    );
    let ints: std::collections::HashMap<_, _> = handler.last_int_kvs().into_iter().collect();
    assert_eq!(
        ints.get(&int_key::FROM_SERVICE).map(String::as_str),
        Some("caller")
    );
    assert!(
        !ints.contains_key(&int_key::CONNECT_TIMEOUT),
        "connect timeout is per hop"
    );
    let left: u64 = ints[&int_key::RPC_TIMEOUT].parse().unwrap();
    assert!(
        left <= 4000 && left > 3000,
        "the downstream gets what remains: {left}"
    );
    assert_eq!(ints.get(&int_key::MSG_TYPE).map(String::as_str), Some("1"));
    // biz-status keys from the downstream reach the caller unchanged.
    let f = r.header.unwrap();
    assert_eq!(r.msg_type, MessageType::Reply);
    assert_eq!(f.header.str_kvs.get_str("biz-status"), Some("502"));
    assert_eq!(
        f.header.str_kvs.get_str("biz-message"),
        Some("injected biz error")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_continued_one_hop_tracestate_and_invalid_ones_untouched() {
    let (echo, handler, _d) = start_echo().await;
    let sluice = Sluice::start(&matrix_config(echo, free_port()));
    let shape = Shape::TTHeader {
        framed: true,
        flags: 0,
    };
    let not_sampled = TRACEPARENT.replace("-01", "-00");
    // Kitex obs-opentelemetry's transient metainfo key and the plain W3C name, sampled or not,
    // straight to the downstream and through a multiplexed one.
    for (key, sent, service) in [
        ("RPC_TRANSIT_traceparent", TRACEPARENT, "EchoService"),
        ("RPC_TRANSIT_traceparent", not_sampled.as_str(), "via-mux"),
        ("traceparent", TRACEPARENT, "EchoService"),
    ] {
        let what = format!("{key} {sent} via {service}");
        let mut h = svc(service);
        h.str_kvs.insert(key, sent.to_owned());
        h.str_kvs.insert(
            "RPC_TRANSIT_tracestate",
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        );
        let r = roundtrip(sluice.addr, shape, &h, "Echo", &thrift_args(b"t")).await;
        assert_eq!(r.msg_type, MessageType::Reply, "{what}");
        let got: std::collections::HashMap<_, _> = handler.last_str_kvs().into_iter().collect();
        assert_child_traceparent(got.get(key).map(String::as_str), sent, &what);
        assert_eq!(
            got.get("RPC_TRANSIT_tracestate").map(String::as_str),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
            "{what}: tracestate passes unchanged"
        );
        let other = if key == "traceparent" {
            "RPC_TRANSIT_traceparent"
        } else {
            "traceparent"
        };
        assert!(!got.contains_key(other), "{what}: no other key is added");
    }
    // Two requests of one trace are two hops: two span ids.
    let mut h = svc("EchoService");
    h.str_kvs.insert("RPC_TRANSIT_traceparent", TRACEPARENT);
    let mut parents = std::collections::HashSet::new();
    for _ in 0..2 {
        roundtrip(sluice.addr, shape, &h, "Echo", &thrift_args(b"t")).await;
        let got: std::collections::HashMap<_, _> = handler.last_str_kvs().into_iter().collect();
        parents.insert(got["RPC_TRANSIT_traceparent"][36..52].to_owned());
    }
    assert_eq!(parents.len(), 2, "a new span id per hop: {parents:?}");

    // Invalid ones pass as they came (and start no trace); so does a request without one.
    for invalid in [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "not a traceparent",
    ] {
        let mut h = svc("EchoService");
        h.str_kvs.insert("RPC_TRANSIT_traceparent", invalid);
        let r = roundtrip(sluice.addr, shape, &h, "Echo", &thrift_args(b"t")).await;
        assert_eq!(r.msg_type, MessageType::Reply, "{invalid}");
        let got: std::collections::HashMap<_, _> = handler.last_str_kvs().into_iter().collect();
        assert_eq!(
            got.get("RPC_TRANSIT_traceparent").map(String::as_str),
            Some(invalid),
            "an invalid traceparent passes unchanged"
        );
        assert!(!got.contains_key("traceparent"), "{invalid}");
    }
    roundtrip(
        sluice.addr,
        shape,
        &svc("EchoService"),
        "Echo",
        &thrift_args(b"t"),
    )
    .await;
    let got: std::collections::HashMap<_, _> = handler.last_str_kvs().into_iter().collect();
    assert!(
        !got.contains_key("RPC_TRANSIT_traceparent") && !got.contains_key("traceparent"),
        "no trace is started: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_by_header_and_default_service() {
    let (echo, handler, _d) = start_echo().await;
    let sluice = Sluice::start(&matrix_config(echo, free_port()));
    let mut h = svc("Anything");
    h.str_kvs.insert("x-route", "buffered");
    let shape = Shape::TTHeader {
        framed: true,
        flags: 0,
    };
    let r = roundtrip(sluice.addr, shape, &h, "Echo", &thrift_args(b"hdr")).await;
    assert_eq!(r.msg_type, MessageType::Reply);
    // Buffered downstreams carry no header at all: the header route was taken.
    assert!(handler.last_str_kvs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_unknown_method_naming_service_and_method() {
    let (echo, _h, _d) = start_echo().await;
    let toml = format!(
        r#"
[[listeners]]
address = "127.0.0.1:{{port}}"
cluster = "ttstream"
[[routes]]
service = "EchoService"
method = "Echo"
downstream = "echo"
[downstreams.echo]
endpoints = ["{echo}"]
"#
    );
    let sluice = Sluice::start(&toml);
    for shape in SHAPES {
        let r = roundtrip(
            sluice.addr,
            shape,
            &svc("Nope"),
            "Missing",
            &thrift_args(b"x"),
        )
        .await;
        let ex = exception(&r);
        assert_eq!(ex.kind, ExceptionKind::UNKNOWN_METHOD, "{shape:?}");
        assert!(ex.message.contains("Missing"), "{}", ex.message);
        if matches!(shape, Shape::TTHeader { .. }) {
            assert!(ex.message.contains("Nope"), "{}", ex.message);
            let f = r.header.unwrap();
            assert_eq!(f.header.int_kvs.get_str(int_key::MSG_TYPE), Some("3"));
        }
        assert_eq!((r.seq, r.method.as_str()), (7, "Missing"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_down_names_the_downstream_and_cause() {
    let (echo, _h, _d) = start_echo().await;
    let sluice = Sluice::start(&matrix_config(echo, free_port()));
    let shape = Shape::TTHeader {
        framed: true,
        flags: 0,
    };
    let r = roundtrip(sluice.addr, shape, &svc("down"), "Echo", &thrift_args(b"x")).await;
    let ex = exception(&r);
    assert_eq!(ex.kind, ExceptionKind::INTERNAL_ERROR);
    assert!(ex.message.contains("\"dead\""), "{}", ex.message);
    assert!(ex.message.contains("connect"), "{}", ex.message);
    // The proxy itself keeps working.
    let r = roundtrip(
        sluice.addr,
        shape,
        &svc("EchoService"),
        "Echo",
        &thrift_args(b"y"),
    )
    .await;
    assert_eq!(r.msg_type, MessageType::Reply);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_from_int_key_12_and_route_maximum() {
    let (echo, _h, _d) = start_echo().await;
    let sluice = Sluice::start(&matrix_config(echo, free_port()));
    let shape = Shape::TTHeader {
        framed: true,
        flags: 0,
    };
    let mut h = svc("EchoService");
    h.int_kvs.insert(int_key::RPC_TIMEOUT, "100");
    let start = Instant::now();
    let r = roundtrip(sluice.addr, shape, &h, "Sleep2000", &thrift_args(b"x")).await;
    let took = start.elapsed();
    let ex = exception(&r);
    assert!(ex.message.contains("timeout"), "{}", ex.message);
    assert!(
        took < Duration::from_millis(1500),
        "answered at the deadline, took {took:?}"
    );
    // A route maximum applies when the caller sets no deadline.
    let start = Instant::now();
    let r = roundtrip(
        sluice.addr,
        shape,
        &svc("capped"),
        "Sleep2000",
        &thrift_args(b"x"),
    )
    .await;
    assert!(exception(&r).message.contains("timeout"));
    assert!(start.elapsed() < Duration::from_millis(3000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneway_reaches_the_downstream_and_nothing_comes_back() {
    let (echo, handler, _d) = start_echo().await;
    let sluice = Sluice::start(&matrix_config(echo, free_port()));
    for (i, shape) in [
        Shape::Framed,
        Shape::TTHeader {
            framed: true,
            flags: 0,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = TcpStream::connect(sluice.addr).await.unwrap();
        let req = request(
            shape,
            &svc("EchoService"),
            false,
            "EchoOneway",
            MessageType::Oneway,
            2,
            &thrift_args(b"ow"),
        );
        s.write_all(&req).await.unwrap();
        let mut buf = BytesMut::new();
        assert!(
            read_reply(&mut s, &mut buf, shape, Duration::from_millis(400))
                .await
                .is_none(),
            "no reply to a oneway call"
        );
        let start = Instant::now();
        while handler.oneway_seen() < i as u64 + 1 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "downstream never saw the oneway call"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_payload() {
    let (echo, _h, _d) = start_echo().await;
    let sluice = Sluice::start(&matrix_config(echo, free_port()));
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let args = thrift_args(&big);
    for shape in [
        Shape::TTHeader {
            framed: true,
            flags: 0,
        },
        Shape::Framed,
        Shape::Buffered,
    ] {
        let r = roundtrip(sluice.addr, shape, &svc("EchoService"), "Echo", &args).await;
        assert_eq!(r.msg_type, MessageType::Reply);
        assert_eq!(r.body, echo_result(&args), "{shape:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kitex_mux_pipeline_answered_out_of_order_by_seq() {
    let (echo, _h, _d) = start_echo().await;
    let sluice = Sluice::start(&matrix_config(echo, free_port()));
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    let shape = Shape::TTHeader {
        framed: true,
        flags: 1,
    };
    // Six pipelined requests in one write; the first sleeps longest.
    let mut all = BytesMut::new();
    for (i, seq) in [3, 1, 2, 4, 6, 5].into_iter().enumerate() {
        let method = format!("Sleep{}", (6 - i) * 60);
        all.extend_from_slice(&request(
            shape,
            &svc("EchoService"),
            false,
            &method,
            MessageType::Call,
            seq,
            &thrift_args(format!("m{seq}").as_bytes()),
        ));
    }
    s.write_all(&all).await.unwrap();
    let mut buf = BytesMut::new();
    let mut order = Vec::new();
    for _ in 0..6 {
        let r = read_reply(&mut s, &mut buf, shape, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.msg_type, MessageType::Reply);
        assert_eq!(r.header.as_ref().unwrap().header.seq_id, r.seq);
        assert_eq!(
            r.body,
            echo_result(&thrift_args(format!("m{}", r.seq).as_bytes())),
            "reply {} carries its own request's payload",
            r.seq
        );
        order.push(r.seq);
    }
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, vec![1, 2, 3, 4, 5, 6]);
    assert_ne!(
        order,
        vec![3, 1, 2, 4, 6, 5],
        "served concurrently, answered as they finish"
    );
    assert_eq!(order[0], 5, "the shortest sleep answers first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frame_closes_only_its_connection_with_a_log_line() {
    let (echo, _h, _d) = start_echo().await;
    let sluice = Sluice::start(&matrix_config(echo, free_port()));
    let shape = Shape::TTHeader {
        framed: true,
        flags: 0,
    };
    let mut good = TcpStream::connect(sluice.addr).await.unwrap();
    let mut bad = TcpStream::connect(sluice.addr).await.unwrap();
    let bad_port = bad.local_addr().unwrap().port();
    let mut req = request(
        shape,
        &svc("EchoService"),
        false,
        "Echo",
        MessageType::Call,
        1,
        &thrift_args(b"x"),
    );
    req[16] = 0x07; // info id 0x07 does not exist
    bad.write_all(&req).await.unwrap();
    let mut sink = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), bad.read_to_end(&mut sink))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the bad connection is closed without a reply");
    // Oversized frame: refused from its first bytes.
    let mut huge = TcpStream::connect(sluice.addr).await.unwrap();
    huge.write_all(&[
        0x7f, 0xff, 0xff, 0xff, 0x10, 0x00, 0x00, 0x00, 0, 0, 0, 1, 0, 1,
    ])
    .await
    .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), huge.read_to_end(&mut sink))
        .await
        .unwrap();
    for i in 0..3 {
        good.write_all(&request(
            shape,
            &svc("EchoService"),
            false,
            "Echo",
            MessageType::Call,
            i + 1,
            &thrift_args(b"ok"),
        ))
        .await
        .unwrap();
        let r = read_reply(
            &mut good,
            &mut BytesMut::new(),
            shape,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(r.msg_type, MessageType::Reply);
    }
    let log = sluice.stop();
    let line = log
        .lines()
        .find(|l| l.contains(&format!(":{bad_port}")) && l.contains("closing connection"))
        .unwrap_or_else(|| panic!("no log line naming the peer: {log}"));
    assert!(
        line.contains("unknown info id"),
        "the reason is named: {line}"
    );
    assert!(log.contains("exceeds"), "oversized frame logged: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_connections() {
    let (echo, handler, _d) = start_echo().await;
    let sluice = Sluice::start(&matrix_config(echo, free_port()));
    let addr = sluice.addr;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..200 {
        tasks.spawn(async move {
            let shape = SHAPES[c % SHAPES.len()];
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut buf = BytesMut::new();
            for i in 0..5 {
                let args = thrift_args(format!("c{c} i{i}").as_bytes());
                s.write_all(&request(
                    shape,
                    &svc("EchoService"),
                    false,
                    "Echo",
                    MessageType::Call,
                    i + 1,
                    &args,
                ))
                .await
                .unwrap();
                let r = read_reply(&mut s, &mut buf, shape, Duration::from_secs(20))
                    .await
                    .expect("reply");
                assert_eq!(r.body, echo_result(&args));
                assert_eq!(r.seq, i + 1);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(handler.requests_seen(), 1000);
}

/// Runs `sluice check` on `text` written to a file of its own.
fn check_text(dir: &std::path::Path, tag: &str, text: &str) -> std::process::Output {
    let path = dir.join(format!("sluice-check-{tag}-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    out
}

#[test]
fn check_reports_the_effective_config_or_the_bad_key() {
    let dir = std::env::temp_dir();
    let good = dir.join(format!("sluice-check-good-{}.toml", std::process::id()));
    std::fs::write(
        &good,
        matrix_config("127.0.0.1:8888".parse().unwrap(), 9).replace("{port}", "7000"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("listener pingpong"), "{stdout}");
    assert!(
        stdout.contains("route[7] service=* method=* -> echo"),
        "{stdout}"
    );
    assert!(
        stdout.contains("downstream echo-buffered: transport=buffered"),
        "{stdout}"
    );
    assert!(
        stdout.contains("runtime worker_threads=one per core"),
        "{stdout}"
    );
    // `[runtime] worker_threads` is shown when set, and must be at least 1.
    for (threads, expect_ok, expect) in [
        (2, true, "runtime worker_threads=2"),
        (0, false, "runtime.worker_threads: must be at least 1"),
    ] {
        let text = std::fs::read_to_string(&good).unwrap()
            + &format!("\n[runtime]\nworker_threads = {threads}\n");
        let out = check_text(&dir, "rt", &text);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.success(), expect_ok, "{all}");
        assert!(all.contains(expect), "{all}");
    }
    // `[tracing]` is shown when it exports, and checked.
    for (section, expect_ok, expect) in [
        (
            "otlp_endpoint = \"http://127.0.0.1:4317\"",
            true,
            "tracing otlp_endpoint=http://127.0.0.1:4317 sample_ratio=1",
        ),
        (
            "otlp_endpoint = \"http://127.0.0.1:4317\"\nsample_ratio = 0.25",
            true,
            "sample_ratio=0.25",
        ),
        (
            "sample_ratio = 1.5",
            false,
            "tracing.sample_ratio: must be between 0.0 and 1.0",
        ),
        (
            "otlp_endpoint = \"https://collector:4317\"",
            false,
            "tracing.otlp_endpoint: \"https://collector:4317\": expected http://host:port",
        ),
        (
            "otlp_endpoint = \"http://collector:4317/v1/traces\"",
            false,
            "expected http://host:port, with no path",
        ),
        ("otlp = true", false, "unknown field `otlp`"),
    ] {
        let text = std::fs::read_to_string(&good).unwrap() + &format!("\n[tracing]\n{section}\n");
        let out = check_text(&dir, "tracing", &text);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.success(), expect_ok, "{section}: {all}");
        assert!(all.contains(expect), "{section}: {all}");
    }
    assert!(
        !stdout.contains("tracing"),
        "nothing exported by default: {stdout}"
    );
    // TLS files are read when the file is checked, and a missing one is named by its key.
    let text = std::fs::read_to_string(&good).unwrap().replacen(
        "default_service = \"DefaultSvc\"",
        "tls_cert = \"/nonexistent.pem\"\ntls_key = \"/nonexistent.key\"",
        1,
    );
    let out = check_text(&dir, "tls", &text);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("listeners[0].tls_cert: cannot read \"/nonexistent.pem\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (bad, key) in [
        ("transport = \"ttheader\"", "transport = \"tcp\""),
        ("cluster = \"ttstream\"", "cluster = \"http\""),
        ("downstream = \"dead\"", "downstream = \"nowhere\""),
    ] {
        let text = std::fs::read_to_string(&good).unwrap();
        let changed = if bad.starts_with("transport") {
            text.replacen("transport = \"ttheader-unframed\"", key, 1)
        } else {
            text.replacen(bad, key, 1)
        };
        let out = check_text(&dir, "bad", &changed);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        let expect = if key.starts_with("transport") {
            "downstreams.echo-unframed.transport"
        } else if key.starts_with("cluster") {
            "listeners[0].cluster"
        } else {
            "routes[5].downstream"
        };
        assert!(err.contains(expect), "{err}");
    }
    let _ = std::fs::remove_file(&good);
}

#[test]
fn demo_prints_a_table_with_every_request_ok() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["demo", "--exit", "--requests", "200", "--concurrency", "4"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "TTHeader + Framed",
        "TTHeader unframed",
        "Framed ",
        "Buffered",
        "TTHeader + Kitex protobuf",
        "Framed Kitex protobuf",
        "TTStream bidi",
        "gRPC unary",
        "gRPC bidi",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row}: {stdout}"));
        // ... requests ok p50 p99, the latencies written for people: "230 µs", "1.2 ms".
        let cols: Vec<&str> = line.split_whitespace().collect();
        let n = cols.len();
        assert_eq!(cols[n - 6], "200", "{line}");
        assert_eq!(cols[n - 5], "200", "all ok: {line}");
        for (value, unit) in [(cols[n - 4], cols[n - 3]), (cols[n - 2], cols[n - 1])] {
            assert!(["ns", "µs", "ms", "s"].contains(&unit), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(!value.contains('.') || value.len() <= 4, "{line}");
        }
    }
    assert!(
        stdout.contains("[downstreams.echo]"),
        "prints a ready config"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_drain_marks_replies_with_crrst_then_closes() {
    let (echo, _h, _d) = start_echo().await;
    let mut sluice = Sluice::start(&matrix_config(echo, free_port()));
    let shape = Shape::TTHeader {
        framed: true,
        flags: 0,
    };
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    let mut buf = BytesMut::new();
    // A reply before the drain has no crrst.
    s.write_all(&request(
        shape,
        &svc("EchoService"),
        false,
        "Echo",
        MessageType::Call,
        1,
        &thrift_args(b"a"),
    ))
    .await
    .unwrap();
    let r = read_reply(&mut s, &mut buf, shape, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(r.header.unwrap().header.str_kvs.get("crrst").is_none());
    // A request in flight when the drain starts is answered, with crrst.
    s.write_all(&request(
        shape,
        &svc("EchoService"),
        false,
        "Sleep400",
        MessageType::Call,
        2,
        &thrift_args(b"b"),
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    sluice.terminate();
    let r = read_reply(&mut s, &mut buf, shape, Duration::from_secs(5))
        .await
        .expect("in-flight request answered");
    assert_eq!((r.msg_type, r.seq), (MessageType::Reply, 2));
    assert_eq!(r.header.unwrap().header.str_kvs.get_str("crrst"), Some("1"));
    // Then the connection closes and the process exits.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        sluice
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success()),
        "sluice exits after draining"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_header_request_gets_a_plain_framed_reply() {
    let (echo, handler, _d) = start_echo().await;
    let sluice = Sluice::start(&matrix_config(echo, free_port()));
    // kitex-wire.md 8.6: FF AF, header length 20, {isn: EchoService}, framed CALL Echo seq 1.
    let v = sluice_testkit::hex(
        "ff af 00 14 00 01 00 03 69 73 6e 00 0b 45 63 68
         6f 53 65 72 76 69 63 65 00 00 00 21 80 01 00 01
         00 00 00 04 45 63 68 6f 00 00 00 01 0c 00 01 0b
         00 01 00 00 00 05 68 65 6c 6c 6f 00 00",
    );
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    s.write_all(&v).await.unwrap();
    let r = read_reply(
        &mut s,
        &mut BytesMut::new(),
        Shape::Framed,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(
        (r.msg_type, r.seq, r.method.as_str()),
        (MessageType::Reply, 1, "Echo")
    );
    assert_eq!(r.body, echo_result(&thrift_args(b"hello")));
    let got: std::collections::HashMap<_, _> = handler.last_str_kvs().into_iter().collect();
    assert_eq!(
        got.get("isn").map(String::as_str),
        Some("EchoService"),
        "mesh pairs are forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_default_service_routes_framed_and_buffered() {
    let (echo, _h, _d) = start_echo().await;
    let toml = |default: &str| {
        format!(
            r#"
[[listeners]]
address = "127.0.0.1:{{port}}"
cluster = "ttstream"
{default}
[[routes]]
service = "Billing"
downstream = "echo"
[downstreams.echo]
endpoints = ["{echo}"]
"#
        )
    };
    let with = Sluice::start(&toml("default_service = \"Billing\""));
    let without = Sluice::start(&toml(""));
    for shape in [Shape::Framed, Shape::Buffered] {
        let r = roundtrip(
            with.addr,
            shape,
            &Header::default(),
            "Echo",
            &thrift_args(b"d"),
        )
        .await;
        assert_eq!(
            r.msg_type,
            MessageType::Reply,
            "{shape:?} takes the listener's default service"
        );
        let r = roundtrip(
            without.addr,
            shape,
            &Header::default(),
            "Echo",
            &thrift_args(b"d"),
        )
        .await;
        assert_eq!(
            exception(&r).kind,
            ExceptionKind::UNKNOWN_METHOD,
            "{shape:?} without a default"
        );
    }
}

#[test]
fn example_configs_stay_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(["check", "--config"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 1);
}
