//! Span export over OTLP: the `sluice` binary with `[tracing] otlp_endpoint`, in front of an
//! in-process echo downstream, exporting to an OTLP/gRPC receiver built on the official
//! protocol definitions (Python `opentelemetry-proto` and grpcio: `tests/peers/otlp_receiver.py`).
//!
//! Without a `python3` that can import both, the tests print why and pass, unless
//! `SLUICE_REQUIRE_GRPCIO` is set (as CI does), in which case they fail.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::{ClientConfig, Endpoint, OpenStream, TTStreamClient};
use sluice_http2::{GrpcClient, GrpcClientConfig, OpenRequest};
use sluice_stream::{Incoming, Metadata};
use sluice_thrift::MessageType;
use sluice_ttheader::Header;

use crate::support::{roundtrip, start_echo, thrift_args, Shape, Sluice, TRACEPARENT};

/// Set to make a missing Python package a failure instead of a skip.
const REQUIRE_ENV: &str = "SLUICE_REQUIRE_GRPCIO";

/// What the receiver must have got by then.
const WAIT: Duration = Duration::from_secs(15);

/// Longer than the export delay (1 s): spans that would arrive late have arrived.
const SETTLE: Duration = Duration::from_millis(2500);

const TTHEADER: Shape = Shape::TTHeader {
    framed: true,
    flags: 0,
};

fn python() -> PathBuf {
    std::env::var_os("PYTHON3")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// `Ok(())` when `python` can import grpcio and the OTLP trace service definitions.
fn receiver_usable(python: &Path) -> Result<(), String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import grpc; from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    Err(format!("{}: {}", python.display(), last.trim()))
}

/// One span as the receiver printed it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    /// OTLP `SpanKind`: 2 is SERVER.
    kind: u32,
    /// OTLP `StatusCode`: 0 unset, 2 error.
    status_code: u32,
    status_message: String,
    service_name: String,
    attributes: HashMap<String, String>,
}

impl ReceivedSpan {
    fn parse(line: &str) -> Option<ReceivedSpan> {
        let mut f = line.split('\t');
        if f.next()? != "span" {
            return None;
        }
        let mut next = || f.next().map(str::to_owned);
        let span = ReceivedSpan {
            name: next()?,
            trace_id: next()?,
            span_id: next()?,
            parent_span_id: next()?,
            kind: next()?.parse().ok()?,
            status_code: next()?.parse().ok()?,
            status_message: next()?,
            service_name: next()?,
            attributes: HashMap::new(),
        };
        let attributes = f
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Some(ReceivedSpan { attributes, ..span })
    }

    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// The Python OTLP receiver; stopped on drop.
struct Receiver {
    child: Child,
    port: u16,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    /// Starts it, or says why the test is skipped (`None`).
    fn start() -> Option<Receiver> {
        let python = python();
        if let Err(why) = receiver_usable(&python) {
            if std::env::var_os(REQUIRE_ENV).is_some() {
                panic!(
                    "{REQUIRE_ENV} is set but the OTLP receiver cannot run: {why} \
                     (pip install grpcio opentelemetry-proto)"
                );
            }
            println!(
                "skipped: the OTLP receiver needs grpcio and opentelemetry-proto \
                 (pip install grpcio opentelemetry-proto): {why}"
            );
            return None;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/otlp_receiver.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the OTLP receiver");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut first = String::new();
        stdout
            .read_line(&mut first)
            .expect("the receiver's first line");
        let port = first
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the OTLP receiver did not start: {first:?}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Some(Receiver { child, port, lines })
    }

    fn spans(&self) -> Vec<ReceivedSpan> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .map(|l| ReceivedSpan::parse(l).unwrap_or_else(|| panic!("bad receiver line {l:?}")))
            .collect()
    }

    /// The spans received, once there are at least `n` (up to [`WAIT`]) and [`SETTLE`] has
    /// passed with no more.
    async fn wait_spans(&self, n: usize) -> Vec<ReceivedSpan> {
        let start = Instant::now();
        loop {
            let got = self.lines.lock().unwrap().len();
            if got >= n {
                break;
            }
            if start.elapsed() >= WAIT {
                panic!(
                    "the receiver got {got} spans within {WAIT:?}, want {n}: {:#?}",
                    self.spans()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(SETTLE).await;
        self.spans()
    }

    fn clear(&self) {
        self.lines.lock().unwrap().clear();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Closing its standard input ends it; killing makes sure.
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(echo: SocketAddr, receiver: u16, sample_ratio: f64) -> String {
    format!(
        r#"
[[listeners]]
name = "pingpong"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"

[[listeners]]
name = "grpc"
address = "127.0.0.1:{{grpc_port}}"
cluster = "grpc"

[[routes]]
service = "EchoService"
downstream = "echo"

[downstreams.echo]
endpoints = ["{echo}"]

[tracing]
otlp_endpoint = "http://127.0.0.1:{receiver}"
sample_ratio = {sample_ratio:.1}
"#
    )
}

fn header(service: &str, traceparent: Option<&str>) -> Header {
    let mut h = Header::default();
    h.str_kvs.insert("isn", service.to_owned());
    if let Some(tp) = traceparent {
        h.str_kvs.insert("RPC_TRANSIT_traceparent", tp.to_owned());
    }
    h
}

/// The traceparent the echo downstream saw last, under `key`.
fn seen(handler: &sluice_server::echo::EchoHandler, key: &str) -> String {
    handler
        .last_str_kvs()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("the downstream saw no {key}"))
}

/// The span whose id is `span_id`, exactly one.
fn the_span<'a>(spans: &'a [ReceivedSpan], span_id: &str, what: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.span_id == span_id).collect();
    assert_eq!(
        found.len(),
        1,
        "{what}: one span with id {span_id}: {spans:#?}"
    );
    found[0]
}

/// Asserts the span of a call that arrived with [`TRACEPARENT`] and went downstream as
/// `downstream_saw`: the caller's trace and parent, the hop's span id.
fn assert_hop_span(span: &ReceivedSpan, downstream_saw: &str, what: &str) {
    assert_eq!(
        span.trace_id,
        TRACEPARENT[3..35],
        "{what}: the caller's trace"
    );
    assert_eq!(
        span.parent_span_id,
        TRACEPARENT[36..52],
        "{what}: the caller's span is the parent"
    );
    assert_eq!(
        span.span_id,
        downstream_saw[36..52],
        "{what}: the downstream's parent is this span"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_span_per_forwarded_call_and_stream() {
    let Some(receiver) = Receiver::start() else {
        return;
    };
    let (echo, handler, _d) = start_echo().await;
    let sluice = Sluice::start(&config(echo, receiver.port, 1.0));

    // Ping-pong with the caller's trace.
    let r = roundtrip(
        sluice.addr,
        TTHEADER,
        &header("EchoService", Some(TRACEPARENT)),
        "Echo",
        &thrift_args(b"traced"),
    )
    .await;
    assert_eq!(r.msg_type, MessageType::Reply);
    let pingpong_hop = seen(&handler, "RPC_TRANSIT_traceparent");

    // Ping-pong without one: three new traces, sampled at 1.0.
    for i in 0..3 {
        let args = thrift_args(format!("untraced {i}").as_bytes());
        let r = roundtrip(
            sluice.addr,
            TTHEADER,
            &header("EchoService", None),
            "Echo",
            &args,
        )
        .await;
        assert_eq!(r.msg_type, MessageType::Reply);
    }
    // The caller did not sample this one: no span.
    let unsampled = TRACEPARENT.replace("-01", "-00");
    roundtrip(
        sluice.addr,
        TTHEADER,
        &header("EchoService", Some(&unsampled)),
        "Echo",
        &thrift_args(b"unsampled"),
    )
    .await;
    // No route: Sluice answers, and the span says so.
    let r = roundtrip(
        sluice.addr,
        TTHEADER,
        &header("Nowhere", Some(TRACEPARENT)),
        "Echo",
        &thrift_args(b"lost"),
    )
    .await;
    assert_eq!(r.msg_type, MessageType::Exception);

    // A TTStream stream with the caller's trace.
    let tt = TTStreamClient::new(ClientConfig::new(
        "sluice",
        vec![Endpoint {
            addr: sluice.addr,
            weight: 1,
        }],
    ));
    let mut headers = Metadata::new();
    headers.push("RPC_TRANSIT_traceparent", TRACEPARENT);
    let (tx, mut rx) = tt
        .open(OpenStream {
            hash: None,
            method: "EchoBidi".into(),
            service: "EchoService".into(),
            headers,
        })
        .await
        .unwrap()
        .split();
    tx.send(Bytes::from_static(&[0x0b, 0, 1, 0, 0, 0, 1, b'm', 0]))
        .await
        .unwrap();
    tx.close_send().await.unwrap();
    while !matches!(
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the stream ends"),
        Incoming::End(_) | Incoming::Reset(_)
    ) {}
    let ttstream_hop = seen(&handler, "RPC_TRANSIT_traceparent");

    // A gRPC call with the caller's trace.
    let grpc = GrpcClient::new(GrpcClientConfig::new(vec![sluice.grpc_addr.unwrap()]));
    let mut headers = Metadata::new();
    headers.push("traceparent", TRACEPARENT);
    let (tx, mut rx) = grpc
        .open(&OpenRequest {
            path: "/echo.EchoService/Echo".into(),
            content_type: "application/grpc".into(),
            authority: "kxserver".into(),
            headers,
            deadline: None,
        })
        .await
        .unwrap()
        .split();
    tx.send(Bytes::from_static(b"g")).await.unwrap();
    tx.close_send().await.unwrap();
    while !matches!(
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the call ends"),
        Incoming::End(_) | Incoming::Reset(_)
    ) {}
    let grpc_hop = seen(&handler, "traceparent");

    // 1 + 3 ping-pong, 1 no route, 1 TTStream, 1 gRPC; the unsampled call has none.
    let spans = receiver.wait_spans(7).await;
    assert_eq!(spans.len(), 7, "one span per sampled call: {spans:#?}");
    for s in &spans {
        assert_eq!(s.kind, 2, "SERVER: {s:?}");
        assert_eq!(s.service_name, "sluice", "{s:?}");
        let (service, method) = s.name.split_once('/').expect("<service>/<method>");
        assert_eq!(s.attr("rpc.service"), Some(service), "{s:?}");
        assert_eq!(s.attr("rpc.method"), Some(method), "{s:?}");
        assert!(["EchoService", "Nowhere"].contains(&service), "{s:?}");
        assert_eq!(s.attr("client.address"), Some("127.0.0.1"), "{s:?}");
    }

    let s = the_span(&spans, &pingpong_hop[36..52], "ping-pong");
    assert_hop_span(s, &pingpong_hop, "ping-pong");
    assert_eq!(s.name, "EchoService/Echo");
    assert_eq!(s.attr("rpc.system"), Some("kitex"));
    assert_eq!(s.attr("sluice.protocol"), Some("pingpong"));
    assert_eq!(s.attr("sluice.downstream"), Some("echo"));
    assert_eq!(s.attr("sluice.status"), Some("ok"));
    assert_eq!(s.status_code, 0, "unset for a forwarded call");

    let roots: Vec<_> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(
        roots.len(),
        3,
        "calls without a trace start one each: {roots:#?}"
    );
    let traces: std::collections::HashSet<_> = roots.iter().map(|s| &s.trace_id).collect();
    assert_eq!(traces.len(), 3, "three new traces: {roots:#?}");
    for s in &roots {
        assert_ne!(s.trace_id, TRACEPARENT[3..35]);
        assert_eq!(s.trace_id.len(), 32);
        assert_eq!(s.name, "EchoService/Echo");
        assert_eq!(s.attr("sluice.status"), Some("ok"));
    }

    let lost: Vec<_> = spans.iter().filter(|s| s.name == "Nowhere/Echo").collect();
    assert_eq!(lost.len(), 1, "{spans:#?}");
    assert_eq!(lost[0].trace_id, TRACEPARENT[3..35]);
    assert_eq!(lost[0].attr("sluice.status"), Some("no route"));
    assert_eq!(lost[0].attr("sluice.downstream"), None);
    assert_eq!(lost[0].status_code, 2, "an error");
    assert!(
        lost[0].status_message.contains("no route"),
        "{:?}",
        lost[0].status_message
    );

    let s = the_span(&spans, &ttstream_hop[36..52], "TTStream");
    assert_hop_span(s, &ttstream_hop, "TTStream");
    assert_eq!(s.name, "EchoService/EchoBidi");
    assert_eq!(s.attr("rpc.system"), Some("kitex"));
    assert_eq!(s.attr("sluice.protocol"), Some("ttstream"));
    assert_eq!(s.attr("sluice.status"), Some("ok"));

    let s = the_span(&spans, &grpc_hop[36..52], "gRPC");
    assert_hop_span(s, &grpc_hop, "gRPC");
    assert_eq!(s.name, "EchoService/Echo");
    assert_eq!(s.attr("rpc.system"), Some("grpc"));
    assert_eq!(s.attr("sluice.protocol"), Some("grpc"));
    assert_eq!(s.attr("sluice.downstream"), Some("echo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_ratio_zero_exports_only_the_callers_sampled_traces() {
    let Some(receiver) = Receiver::start() else {
        return;
    };
    let (echo, handler, _d) = start_echo().await;
    let sluice = Sluice::start(&config(echo, receiver.port, 0.0));
    receiver.clear();
    for i in 0..5 {
        let args = thrift_args(format!("untraced {i}").as_bytes());
        roundtrip(
            sluice.addr,
            TTHEADER,
            &header("EchoService", None),
            "Echo",
            &args,
        )
        .await;
    }
    roundtrip(
        sluice.addr,
        TTHEADER,
        &header("EchoService", Some(TRACEPARENT)),
        "Echo",
        &thrift_args(b"traced"),
    )
    .await;
    let hop = seen(&handler, "RPC_TRANSIT_traceparent");
    let spans = receiver.wait_spans(1).await;
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_hop_span(&spans[0], &hop, "sampled by the caller");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_does_not_hold_up_forwarding() {
    // No Python needed: nothing listens on the collector's port.
    let (echo, handler, _d) = start_echo().await;
    let sluice = Sluice::start(&config(echo, crate::support::free_port(), 1.0));
    let start = Instant::now();
    for i in 0..20 {
        let traceparent = (i % 2 == 1).then_some(TRACEPARENT);
        let args = thrift_args(format!("call {i}").as_bytes());
        let r = roundtrip(
            sluice.addr,
            TTHEADER,
            &header("EchoService", traceparent),
            "Echo",
            &args,
        )
        .await;
        assert_eq!(r.msg_type, MessageType::Reply, "call {i}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "20 calls took {:?}",
        start.elapsed()
    );
    let hop = seen(&handler, "RPC_TRANSIT_traceparent");
    assert_eq!(&hop[..36], &TRACEPARENT[..36], "the relay still works");
}
