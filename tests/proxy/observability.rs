//! A real Prometheus scrapes the `sluice` binary's admin listener: a known number of calls and
//! streams of every protocol go through the proxy (ping-pong TTHeader thrift and Kitex
//! protobuf, Framed, TTStream, gRPC unary and bidi, and calls to a downstream where nothing
//! listens), then Prometheus's query API must report exactly those numbers.
//!
//! Without a `prometheus` on the `PATH` that answers `--version` the test prints why and
//! passes, unless `SLUICE_REQUIRE_PROMETHEUS` is set (as `.ci/run` does), in which case it
//! fails.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_client::{ClientConfig, Endpoint, OpenStream, TTStreamClient};
use sluice_http2::{GrpcClient, GrpcClientConfig, OpenRequest};
use sluice_server::echo::echo_result;
use sluice_stream::{ClientRecv, Incoming, Metadata, Reset, StreamEnd};
use sluice_thrift::MessageType;
use sluice_ttheader::{int_key, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    exception, free_port, read_reply, request, roundtrip, start_echo, thrift_args, Shape, Sluice,
};

/// Set to make a missing Prometheus a failure instead of a skip.
const REQUIRE_ENV: &str = "SLUICE_REQUIRE_PROMETHEUS";

/// Why the test does not run without Prometheus, and how to get it.
const MISSING: &str = "prometheus not installed (apt-get install prometheus)";

/// How long Prometheus may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long, once it is ready, its queries may take to show every expected value.
const VALUES_TIMEOUT: Duration = Duration::from_secs(30);

/// What the test sends; every expected number below is computed from these.
const PP_OK: u64 = 5; // TTHeader thrift `Echo`, service PingSvc
const PP_FAIL: u64 = 3; // TTHeader thrift `EchoFail`: the echo answers with an EXCEPTION
const FRAMED: u64 = 2; // Framed thrift `Echo`: the listener's default service, FramedSvc
const PB: u64 = 2; // Kitex protobuf over TTHeader `Echo`, service PbSvc
const TTS_OK: u64 = 3; // TTStream `EchoBidi`, service StreamSvc
const TTS_FAIL: u64 = 1; // TTStream `EchoBidiFail`: the echo ends it with an error
const GRPC_UNARY: u64 = 4; // gRPC `/grpc.GrpcSvc/Echo`
const GRPC_BIDI: u64 = 2; // gRPC `/grpc.GrpcSvc/EchoBidi`
const DEAD_PP: u64 = 3; // TTHeader thrift `Echo` to service `down`: routed to `dead`
const DEAD_TTS: u64 = 1; // TTStream `EchoBidi` to service `down`
const DEAD_GRPC: u64 = 1; // gRPC `/grpc.down/Echo`

/// The caller name sent (TTHeader FromService, gRPC `source-service`).
const CALLER: &str = "prom-caller";

fn config(echo: SocketAddr, dead: u16) -> String {
    format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"
default_service = "FramedSvc"

[[listeners]]
name = "grpc-in"
address = "127.0.0.1:{{grpc_port}}"
cluster = "grpc"

[admin]
address = "127.0.0.1:{{admin_port}}"

[[routes]]
service = "down"
downstream = "dead"

[[routes]]
service = "*"
downstream = "echo"

[downstreams.echo]
endpoints = ["{echo}"]

[downstreams.dead]
endpoints = ["127.0.0.1:{dead}"]
connect_timeout_ms = 500
"#
    )
}

/// `Ok(version line)` when `prometheus --version` runs, else why not.
fn prometheus_version() -> Result<String, String> {
    let out = Command::new("prometheus")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run prometheus: {e}"))?;
    if !out.status.success() {
        return Err(format!("`prometheus --version` failed ({})", out.status));
    }
    // Older releases print the version on stderr.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text.lines().next().unwrap_or("").trim().to_owned())
}

/// A Prometheus process scraping one target every second; killed, and its directory (config,
/// TSDB, log) removed, when dropped.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir =
            std::env::temp_dir().join(format!("sluice-prometheus-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let spawned = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn();
        match spawned {
            Ok(child) => Prometheus { child, dir, addr },
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                panic!("prometheus did not start: {e}");
            }
        }
    }

    /// The last lines Prometheus logged.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits until `/-/ready` answers 200.
    async fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = http_get(self.addr, "/-/ready").await {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status})\n{}", self.log_tail());
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "prometheus not ready on {} within {READY_TIMEOUT:?}\n{}",
                self.addr,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One HTTP/1.1 GET with `Connection: close`: the status and the body (de-chunked), within 5 s.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok::<_, String>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| format!("GET {path} from {addr} timed out"))??;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of the response head")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = &raw[split + 4..];
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The payload of a chunked body.
fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let line = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size {line:?}: {e}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// `s` percent-encoded for a query string (everything but the unreserved characters).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query's result: the values of `labels` of each series, and its value.
type Series = BTreeMap<Vec<String>, f64>;

async fn query(prometheus: SocketAddr, promql: &str, labels: &[&str]) -> Result<Series, String> {
    let path = format!("/api/v1/query?query={}", urlencode(promql));
    let (status, body) = http_get(prometheus, &path).await?;
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
    if v["status"] != "success" {
        return Err(format!("HTTP {status}: {body}"));
    }
    let result = v["data"]["result"]
        .as_array()
        .ok_or_else(|| format!("no result vector: {body}"))?;
    let mut out = Series::new();
    for r in result {
        let key = labels
            .iter()
            .map(|l| r["metric"][*l].as_str().unwrap_or("").to_owned())
            .collect();
        let value = r["value"][1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or_else(|| format!("no value in {r}"))?;
        out.insert(key, value);
    }
    Ok(out)
}

/// A query and exactly the series it must return.
struct Check {
    promql: &'static str,
    labels: &'static [&'static str],
    expected: Series,
}

/// A query whose result must be exactly `expected` (zeros included).
fn exactly(
    promql: &'static str,
    labels: &'static [&'static str],
    expected: &[(&[&str], u64)],
) -> Check {
    Check {
        promql,
        labels,
        expected: expected
            .iter()
            .map(|(k, n)| (k.iter().map(|s| s.to_string()).collect(), *n as f64))
            .collect(),
    }
}

/// A query over Kitex's RPC series, which has no series for a label set never observed: an
/// expected count of 0 is an absent series.
fn counted(
    promql: &'static str,
    labels: &'static [&'static str],
    expected: &[(&[&str], u64)],
) -> Check {
    let nonzero: Vec<_> = expected.iter().filter(|(_, n)| *n > 0).copied().collect();
    exactly(promql, labels, &nonzero)
}

fn ttheader(service: &str) -> Header {
    let mut h = Header::default();
    h.str_kvs.insert("isn", service.to_owned());
    h.int_kvs.insert(int_key::FROM_SERVICE, CALLER);
    h
}

const TTHEADER: Shape = Shape::TTHeader {
    framed: true,
    flags: 0,
};

/// Reads a stream until its end: (messages, end or reset), within 10 s.
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

/// A bare thrift struct `{1: "m<i>"}`, as TTStream data frames carry.
fn stream_msg(i: u64) -> Bytes {
    let s = format!("m{i}");
    let mut v = vec![0x0b, 0x00, 0x01];
    v.extend_from_slice(&(s.len() as i32).to_be_bytes());
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    Bytes::from(v)
}

fn ttstream_open(service: &str, method: &str) -> OpenStream {
    OpenStream {
        hash: None,
        method: method.into(),
        service: service.into(),
        headers: Metadata::new(),
    }
}

fn grpc_open(path: &str) -> OpenRequest {
    let mut headers = Metadata::new();
    headers.push("source-service", CALLER);
    OpenRequest {
        path: path.into(),
        content_type: "application/grpc".into(),
        authority: "sluice".into(),
        headers,
        deadline: None,
    }
}

/// Sends every call and stream the expected numbers count, checking each answer.
async fn send_traffic(sluice: &Sluice) {
    let addr = sluice.addr;
    for i in 0..PP_OK {
        let args = thrift_args(format!("ok {i}").as_bytes());
        let r = roundtrip(addr, TTHEADER, &ttheader("PingSvc"), "Echo", &args).await;
        assert_eq!(r.msg_type, MessageType::Reply);
        assert_eq!(r.body, echo_result(&args));
    }
    for _ in 0..PP_FAIL {
        let r = roundtrip(
            addr,
            TTHEADER,
            &ttheader("PingSvc"),
            "EchoFail",
            &thrift_args(b"fail"),
        )
        .await;
        assert!(exception(&r).message.contains("injected failure"));
    }
    for _ in 0..FRAMED {
        let args = thrift_args(b"framed");
        let r = roundtrip(addr, Shape::Framed, &Header::default(), "Echo", &args).await;
        assert_eq!(r.msg_type, MessageType::Reply);
        assert_eq!(r.body, echo_result(&args));
    }
    let pb = [0x0a, 0x05, b'h', b'e', b'l', b'l', b'o'];
    for seq in 0..PB as i32 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&request(
            TTHEADER,
            &ttheader("PbSvc"),
            true,
            "Echo",
            MessageType::Call,
            seq,
            &pb,
        ))
        .await
        .unwrap();
        let r = read_reply(
            &mut s,
            &mut BytesMut::new(),
            TTHEADER,
            Duration::from_secs(10),
        )
        .await
        .expect("a Kitex protobuf reply");
        assert_eq!((r.msg_type, r.seq), (MessageType::Reply, seq));
        assert_eq!(&r.body[..], &pb[..]);
    }
    for _ in 0..DEAD_PP {
        let r = roundtrip(
            addr,
            TTHEADER,
            &ttheader("down"),
            "Echo",
            &thrift_args(b"x"),
        )
        .await;
        assert!(
            exception(&r).message.contains("dead"),
            "names the downstream: {:?}",
            exception(&r).message
        );
    }

    let tts = TTStreamClient::new(ClientConfig::new(
        "prom-test",
        vec![Endpoint { addr, weight: 1 }],
    ));
    for s in 0..TTS_OK {
        let (tx, mut rx) = tts
            .open(ttstream_open("StreamSvc", "EchoBidi"))
            .await
            .unwrap()
            .split();
        let sent: Vec<Bytes> = (0..3).map(|i| stream_msg(s * 10 + i)).collect();
        for m in &sent {
            tx.send(m.clone()).await.unwrap();
        }
        tx.close_send().await.unwrap();
        let (msgs, end) = drain(&mut rx).await;
        assert_eq!(msgs, sent);
        assert_eq!(end, Ok(StreamEnd::ok()));
    }
    for _ in 0..TTS_FAIL {
        let (tx, mut rx) = tts
            .open(ttstream_open("StreamSvc", "EchoBidiFail"))
            .await
            .unwrap()
            .split();
        tx.send(stream_msg(0)).await.unwrap();
        let (msgs, end) = drain(&mut rx).await;
        assert_eq!(msgs, vec![stream_msg(0)]);
        assert!(end.unwrap().error.is_some(), "ends with an error");
    }
    for _ in 0..DEAD_TTS {
        let (tx, mut rx) = tts
            .open(ttstream_open("down", "EchoBidi"))
            .await
            .unwrap()
            .split();
        let _ = tx.send(stream_msg(0)).await;
        let (msgs, end) = drain(&mut rx).await;
        assert!(msgs.is_empty());
        assert!(
            end.map_or(true, |e| e.error.is_some()),
            "the dead downstream's stream fails"
        );
    }

    let grpc_addr = sluice.grpc_addr.expect("a gRPC listener");
    let grpc = GrpcClient::new(GrpcClientConfig::new(vec![grpc_addr]));
    let hello = Bytes::from_static(&[0x0a, 0x05, b'h', b'e', b'l', b'l', b'o']);
    for _ in 0..GRPC_UNARY {
        let (tx, mut rx) = grpc
            .open(&grpc_open("/grpc.GrpcSvc/Echo"))
            .await
            .unwrap()
            .split();
        tx.send(hello.clone()).await.unwrap();
        tx.close_send().await.unwrap();
        let (msgs, end) = drain(&mut rx).await;
        assert_eq!(msgs, vec![hello.clone()]);
        assert_eq!(end.unwrap().error, None);
    }
    for _ in 0..GRPC_BIDI {
        let (tx, mut rx) = grpc
            .open(&grpc_open("/grpc.GrpcSvc/EchoBidi"))
            .await
            .unwrap()
            .split();
        for i in 0..4u8 {
            tx.send(Bytes::from(vec![i; 32])).await.unwrap();
        }
        tx.close_send().await.unwrap();
        let (msgs, end) = drain(&mut rx).await;
        assert_eq!(msgs.len(), 4);
        assert_eq!(end.unwrap().error, None);
    }
    for _ in 0..DEAD_GRPC {
        let (tx, mut rx) = grpc
            .open(&grpc_open("/grpc.down/Echo"))
            .await
            .unwrap()
            .split();
        let _ = tx.send(hello.clone()).await;
        let _ = tx.close_send().await;
        let (msgs, end) = drain(&mut rx).await;
        assert!(msgs.is_empty());
        assert!(
            end.map_or(true, |e| e.error.is_some()),
            "the dead downstream's call fails"
        );
    }
}

/// Every query and the exact series it must return, from the numbers sent.
fn checks() -> Vec<Check> {
    let dead = DEAD_PP + DEAD_TTS + DEAD_GRPC;
    let total = PP_OK + PP_FAIL + FRAMED + PB + TTS_OK + TTS_FAIL + GRPC_UNARY + GRPC_BIDI + dead;
    let pingpong_conns = PP_OK + PP_FAIL + FRAMED + PB + DEAD_PP;
    vec![
        exactly("up{job=\"sluice\"}", &[], &[(&[], 1)]),
        counted(
            "sum by (method, status) (kitex_server_throughput)",
            &["method", "status"],
            &[
                (&["Echo", "succeed"], PP_OK + FRAMED + PB + GRPC_UNARY),
                (&["Echo", "error"], DEAD_PP + DEAD_GRPC),
                (&["EchoFail", "error"], PP_FAIL),
                (&["EchoBidi", "succeed"], TTS_OK + GRPC_BIDI),
                (&["EchoBidi", "error"], DEAD_TTS),
                (&["EchoBidiFail", "error"], TTS_FAIL),
            ],
        ),
        counted(
            "sum by (callee) (kitex_server_throughput)",
            &["callee"],
            &[
                (&["PingSvc"], PP_OK + PP_FAIL),
                (&["FramedSvc"], FRAMED),
                (&["PbSvc"], PB),
                (&["StreamSvc"], TTS_OK + TTS_FAIL),
                (&["GrpcSvc"], GRPC_UNARY + GRPC_BIDI),
                (&["down"], dead),
            ],
        ),
        counted(
            "sum by (caller) (kitex_server_throughput)",
            &["caller"],
            &[
                (
                    &[CALLER],
                    PP_OK + PP_FAIL + PB + DEAD_PP + GRPC_UNARY + GRPC_BIDI + DEAD_GRPC,
                ),
                (&["unknown"], FRAMED + TTS_OK + TTS_FAIL + DEAD_TTS),
            ],
        ),
        counted("sum(kitex_server_latency_us_count)", &[], &[(&[], total)]),
        counted(
            "sum by (callee, status) (kitex_client_throughput)",
            &["callee", "status"],
            &[
                (
                    &["echo", "succeed"],
                    PP_OK + FRAMED + PB + TTS_OK + GRPC_UNARY + GRPC_BIDI,
                ),
                (&["echo", "error"], PP_FAIL + TTS_FAIL),
                (&["dead", "error"], dead),
            ],
        ),
        counted("sum(kitex_client_latency_us_count)", &[], &[(&[], total)]),
        counted(
            "sum by (downstream, kind) (sluice_downstream_errors_total)",
            &["downstream", "kind"],
            &[(&["dead", "unavailable"], dead)],
        ),
        exactly(
            "sluice_connections_accepted_total{listener=\"main\", protocol=\"pingpong\"}",
            &[],
            &[(&[], pingpong_conns)],
        ),
        exactly(
            "sum(sluice_connections_open{protocol=\"pingpong\"})",
            &[],
            &[(&[], 0)],
        ),
        exactly("sluice_requests_in_flight", &[], &[(&[], 0)]),
        exactly("sum(sluice_streams_active)", &[], &[(&[], 0)]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_kitex_and_sluice_series() {
    let version = match prometheus_version() {
        Ok(v) => v,
        Err(why) => {
            if std::env::var_os(REQUIRE_ENV).is_some() {
                panic!("{REQUIRE_ENV} is set but {MISSING}: {why}");
            }
            println!("skipped: {MISSING}: {why}");
            return;
        }
    };
    println!("{version}");
    let started = Instant::now();

    let (echo, _handler, _drain) = start_echo().await;
    let sluice = Sluice::start(&config(echo, free_port()));
    let admin = sluice.admin_addr.expect("an admin listener");
    let mut prometheus = Prometheus::start(admin);

    send_traffic(&sluice).await;
    let sent = started.elapsed();
    prometheus.wait_ready().await;

    let checks = checks();
    let polling = Instant::now();
    loop {
        let mut wrong = Vec::new();
        for c in &checks {
            match query(prometheus.addr, c.promql, c.labels).await {
                Ok(got) if got == c.expected => {}
                Ok(got) => wrong.push(format!(
                    "{}\n    expected {:?}\n    got      {got:?}",
                    c.promql, c.expected
                )),
                Err(e) => wrong.push(format!("{}\n    query failed: {e}", c.promql)),
            }
        }
        if wrong.is_empty() {
            break;
        }
        if polling.elapsed() >= VALUES_TIMEOUT {
            let metrics = http_get(admin, "/metrics")
                .await
                .map(|(s, b)| format!("HTTP {s}\n{b}"))
                .unwrap_or_else(|e| e);
            let targets = http_get(prometheus.addr, "/api/v1/targets")
                .await
                .map(|(_, b)| b)
                .unwrap_or_else(|e| e);
            panic!(
                "after {VALUES_TIMEOUT:?} Prometheus still reports:\n  {}\n\
                 ---- sluice /metrics ----\n{metrics}\n---- targets ----\n{targets}\n\
                 ---- prometheus log ----\n{}",
                wrong.join("\n  "),
                prometheus.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for c in &checks {
        println!("{} == {:?}", c.promql, c.expected);
    }
    println!(
        "traffic sent in {sent:?}; Prometheus agreed {:?} later; {:?} in all",
        polling.elapsed(),
        started.elapsed()
    );
    drop(prometheus);
    sluice.stop();
}
