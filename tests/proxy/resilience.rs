//! Failure handling through the binary: outlier ejection, retries and their budget, circuit
//! breaking, rate limits, consistent hash and p2c, against downstreams that misbehave on cue.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_client::{Call, ClientConfig, Endpoint, GenericClient};
use sluice_sniff::Codec;
use sluice_thrift::MessageType;
use sluice_ttheader::Header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::discovery::{http_request, series};
use crate::support::*;

/// What a [`Relay`] does with each request it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    /// Passes it to its echo server and the reply back.
    Pass = 0,
    /// Resets the connection (RST) once the whole request was read.
    Reset = 1,
    /// Passes it on, sends back the first bytes of the reply, then resets.
    HalfReply = 2,
    /// Passes it on after 20 ms.
    Slow = 3,
    /// Never answers (the connection stays open).
    Stall = 4,
}

/// A TCP relay in front of a downstream that misbehaves as told, and counts the requests it
/// read (one TTHeader frame each).
struct Relay {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    requests: Arc<AtomicU64>,
    _task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let requests = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (mode, requests) = (mode.clone(), requests.clone());
            async move {
                while let Ok((c, _)) = l.accept().await {
                    tokio::spawn(relay_conn(c, to, mode.clone(), requests.clone()));
                }
            }
        });
        Relay {
            addr,
            mode,
            requests,
            _task: task,
        }
    }

    fn set(&self, m: Mode) {
        self.mode.store(m as u8, Ordering::SeqCst);
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

/// One length-prefixed frame (TTHeader's and Framed's first four bytes), or `None` at the end.
async fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let mut frame = len.to_vec();
    frame.resize(4 + u32::from_be_bytes(len) as usize, 0);
    s.read_exact(&mut frame[4..]).await.ok()?;
    Some(frame)
}

/// Closes with a TCP reset instead of a FIN.
fn reset(s: TcpStream) {
    let s = s.into_std().unwrap();
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

async fn relay_conn(mut c: TcpStream, to: SocketAddr, mode: Arc<AtomicU8>, n: Arc<AtomicU64>) {
    let mut up: Option<TcpStream> = None;
    while let Some(req) = read_frame(&mut c).await {
        n.fetch_add(1, Ordering::SeqCst);
        let m = mode.load(Ordering::SeqCst);
        if m == Mode::Reset as u8 {
            return reset(c);
        }
        if m == Mode::Slow as u8 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if m == Mode::Stall as u8 {
            let mut rest = Vec::new();
            let _ = c.read_to_end(&mut rest).await;
            return;
        }
        if up.is_none() {
            up = Some(TcpStream::connect(to).await.unwrap());
        }
        let u = up.as_mut().unwrap();
        u.write_all(&req).await.unwrap();
        let Some(reply) = read_frame(u).await else {
            return;
        };
        if m == Mode::HalfReply as u8 {
            let _ = c.write_all(&reply[..6]).await;
            let _ = c.flush().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            return reset(c);
        }
        if c.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// `n` echo servers, each behind a [`Relay`] in `mode` (the drains keep the servers up).
async fn relays(n: usize, mode: Mode) -> (Vec<Relay>, Vec<sluice_server::DrainHandle>) {
    let mut relays = Vec::new();
    let mut drains = Vec::new();
    for _ in 0..n {
        let (echo, _h, d) = start_echo().await;
        let r = Relay::start(echo).await;
        r.set(mode);
        relays.push(r);
        drains.push(d);
    }
    (relays, drains)
}

fn client_to(proxy: SocketAddr) -> Arc<GenericClient> {
    Arc::new(GenericClient::new(
        ClientConfig::new(
            "sluice",
            vec![Endpoint {
                addr: proxy,
                weight: 1,
            }],
        )
        .with_request_timeout(Duration::from_secs(10)),
    ))
}

fn call(service: &str, method: &str, kv: Option<(&str, &str)>) -> Call {
    let mut header = Header::default();
    header.str_kvs.insert(
        sluice_ttheader::str_key::IDL_SERVICE_NAME,
        service.to_owned(),
    );
    if let Some((k, v)) = kv {
        header.str_kvs.insert(k.to_owned(), v.to_owned());
    }
    Call {
        method: method.into(),
        msg_type: MessageType::Call,
        codec: Codec::Thrift,
        args: thrift_args(b"hi"),
        header,
        deadline: None,
    }
}

/// `Ok` for a reply, `Err(message)` for an exception (Sluice's errors reach a ping-pong caller
/// as exceptions) or a failed call.
async fn outcome(c: &GenericClient, call: Call) -> Result<(), String> {
    match c.call(call).await {
        Ok(Some(r)) if r.msg_type == MessageType::Reply => Ok(()),
        Ok(Some(r)) => Err(sluice_thrift::ApplicationException::decode(&r.body)
            .map(|(e, _)| e.message)
            .unwrap_or_default()),
        Ok(None) => Err("no reply".into()),
        Err(e) => Err(e.to_string()),
    }
}

async fn metric(admin: SocketAddr, name_and_labels: &str) -> f64 {
    let (status, body) = http_request(admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    series(&body, name_and_labels).unwrap_or(0.0)
}

fn endpoints(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    list.join(", ")
}

fn config(downstream: &str, routes: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "pingpong"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"

[admin]
address = "127.0.0.1:{{admin_port}}"

{downstream}
{routes}
"#
    )
}

/// A proxy with a `ttstream` and a `grpc` listener, downstream `web` at `echo` (with `extra`
/// keys), and `routes`.
fn both_clusters(echo: SocketAddr, extra: &str, routes: &str) -> String {
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

[downstreams.web]
endpoints = ["{echo}"]
{extra}

{routes}
"#
    )
}

/// Sluice's TTStream client, to the proxy.
fn ttstream_to(proxy: SocketAddr) -> sluice_client::TTStreamClient {
    sluice_client::TTStreamClient::new(ClientConfig::new(
        "sluice",
        vec![Endpoint {
            addr: proxy,
            weight: 1,
        }],
    ))
}

/// A TTStream `EchoBidi` stream of `EchoService`.
fn bidi() -> sluice_client::OpenStream {
    sluice_client::OpenStream {
        method: "EchoBidi".into(),
        service: "EchoService".into(),
        headers: sluice_stream::Metadata::new(),
        hash: None,
    }
}

const ROUTE_ALL: &str = "[[routes]]\nservice = \"*\"\ndownstream = \"web\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resetting_endpoint_is_ejected_after_its_failures_and_returns_when_healthy() {
    let (relays, _drains) = relays(3, Mode::Pass).await;
    let addrs: Vec<_> = relays.iter().map(|r| r.addr).collect();
    let proxy = Sluice::start(&config(
        &format!(
            "[downstreams.web]\nendpoints = [{}]\nbalance = \"round-robin\"\nconsecutive_failures = 3\nbase_ejection_ms = 1500\n",
            endpoints(&addrs)
        ),
        ROUTE_ALL,
    ));
    let admin = proxy.admin_addr.unwrap();
    let c = client_to(proxy.addr);
    for _ in 0..30 {
        outcome(&c, call("EchoService", "Echo", None))
            .await
            .unwrap();
    }
    relays[1].set(Mode::Reset);
    let before = relays[1].requests();
    let mut errors = 0;
    for _ in 0..60 {
        if outcome(&c, call("EchoService", "Echo", None))
            .await
            .is_err()
        {
            errors += 1;
        }
    }
    assert_eq!(
        errors, 3,
        "the callers see the failures that eject it, no more"
    );
    assert_eq!(
        relays[1].requests() - before,
        3,
        "ejected after consecutive_failures: no traffic since"
    );
    assert_eq!(
        metric(admin, "sluice_outlier_ejections_total{downstream=\"web\"}").await,
        1.0
    );
    assert_eq!(
        metric(admin, "sluice_endpoints_ejected{downstream=\"web\"}").await,
        1.0
    );
    // Healthy again: after the ejection time it takes its share.
    relays[1].set(Mode::Pass);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let before = relays[1].requests();
    for _ in 0..30 {
        outcome(&c, call("EchoService", "Echo", None))
            .await
            .unwrap();
    }
    let back = relays[1].requests() - before;
    assert!(
        (9..=11).contains(&back),
        "it returns to its turn: {back} of 30"
    );
    assert_eq!(
        metric(admin, "sluice_endpoints_ejected{downstream=\"web\"}").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_endpoint_fails_no_more_than_max_ejection_percent_are_ejected() {
    let (relays, _drains) = relays(4, Mode::Reset).await;
    let addrs: Vec<_> = relays.iter().map(|r| r.addr).collect();
    let proxy = Sluice::start(&config(
        &format!(
            "[downstreams.web]\nendpoints = [{}]\nbalance = \"round-robin\"\nconsecutive_failures = 2\nbase_ejection_ms = 30000\nmax_ejection_percent = 50\n",
            endpoints(&addrs)
        ),
        ROUTE_ALL,
    ));
    let admin = proxy.admin_addr.unwrap();
    let c = client_to(proxy.addr);
    for _ in 0..40 {
        assert!(outcome(&c, call("EchoService", "Echo", None))
            .await
            .is_err());
    }
    assert_eq!(
        metric(admin, "sluice_endpoints_ejected{downstream=\"web\"}").await,
        2.0,
        "50% of 4"
    );
    let before: Vec<u64> = relays.iter().map(Relay::requests).collect();
    for _ in 0..20 {
        assert!(outcome(&c, call("EchoService", "Echo", None))
            .await
            .is_err());
    }
    let used = relays
        .iter()
        .zip(&before)
        .filter(|(r, b)| r.requests() > **b)
        .count();
    assert_eq!(used, 2, "the two endpoints left in use still get the calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_cost_no_error_and_resets_are_retried_only_where_a_route_opts_in() {
    let (a, ha, _da) = start_echo().await;
    let (b, hb, _db) = start_echo().await;
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let resetting = Relay::start(a).await;
    resetting.set(Mode::Reset);
    let proxy = Sluice::start(&config(
        &format!(
            r#"
[downstreams.refusing]
endpoints = [{}]

[downstreams.web]
endpoints = [{}]
balance = "round-robin"
consecutive_failures = 0
"#,
            endpoints(&[dead, a, b]),
            endpoints(&[resetting.addr, b])
        ),
        r#"
[[routes]]
service = "Refusing"
downstream = "refusing"

[[routes]]
service = "Retrying"
downstream = "web"
retry_on = ["reset"]
# Round-robin's turn moves with every attempt, so each of these calls meets the resetting
# endpoint first: a budget of one retry per call.
retry_budget_percent = 100

[[routes]]
service = "*"
downstream = "web"
"#,
    ));
    let admin = proxy.admin_addr.unwrap();
    let c = client_to(proxy.addr);
    for i in 0..60 {
        outcome(&c, call("Refusing", "Echo", None))
            .await
            .unwrap_or_else(|e| panic!("call {i} failed: {e}"));
    }
    assert_eq!(ha.requests_seen() + hb.requests_seen(), 60);
    assert!(
        metric(
            admin,
            "sluice_retries_total{downstream=\"refusing\",reason=\"refused\"}"
        )
        .await
            >= 1.0
    );

    let mut errors = 0;
    for _ in 0..20 {
        if let Err(e) = outcome(&c, call("Plain", "Echo", None)).await {
            assert!(e.contains("reset") || e.contains("closed"), "{e}");
            errors += 1;
        }
    }
    assert_eq!(
        errors, 10,
        "without retry_on every call on the resetting endpoint fails"
    );
    let before = resetting.requests();
    for i in 0..20 {
        outcome(&c, call("Retrying", "Echo", None))
            .await
            .unwrap_or_else(|e| panic!("retried call {i} failed: {e}"));
    }
    let reached = resetting.requests() - before;
    assert!(
        reached >= 10,
        "the opted-in route did reach the resetting endpoint ({reached} times)"
    );
    assert_eq!(
        metric(
            admin,
            "sluice_retries_total{downstream=\"web\",reason=\"reset\"}"
        )
        .await,
        reached as f64,
        "each of those calls was retried elsewhere"
    );
    // Kitex's client series carry the retries a call took in their `retry` label.
    assert_eq!(
        metric(
            admin,
            "kitex_client_throughput{callee=\"web\",caller=\"unknown\",method=\"Echo\",retry=\"1\",status=\"succeed\"}"
        )
        .await,
        reached as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_reply_had_started_is_never_retried() {
    let (x, hx, _dx) = start_echo().await;
    let (y, hy, _dy) = start_echo().await;
    let half = Relay::start(x).await;
    half.set(Mode::HalfReply);
    let proxy = Sluice::start(&config(
        &format!(
            "[downstreams.web]\nendpoints = [{}]\nbalance = \"round-robin\"\nconsecutive_failures = 0\n",
            endpoints(&[half.addr, y])
        ),
        "[[routes]]\nservice = \"*\"\ndownstream = \"web\"\nretry_on = [\"reset\", \"unavailable\"]\nmax_retries = 3\n",
    ));
    let c = client_to(proxy.addr);
    let mut errors = 0;
    for _ in 0..20 {
        if let Err(e) = outcome(&c, call("EchoService", "Echo", None)).await {
            // A reset after part of the reply: a read error, or an early close.
            assert!(
                e.contains("read failed") || e.contains("middle of the reply"),
                "{e}"
            );
            errors += 1;
        }
    }
    assert_eq!(errors, 10);
    assert_eq!(hx.requests_seen(), 10, "each failed call ran once");
    assert_eq!(
        hx.requests_seen() + hy.requests_seen(),
        20,
        "no call ran twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_total_outage_the_retry_budget_caps_the_attempts() {
    let (relays, _drains) = relays(3, Mode::Reset).await;
    let addrs: Vec<_> = relays.iter().map(|r| r.addr).collect();
    let proxy = Sluice::start(&config(
        &format!(
            "[downstreams.web]\nendpoints = [{}]\nconsecutive_failures = 0\n",
            endpoints(&addrs)
        ),
        "[[routes]]\nservice = \"*\"\ndownstream = \"web\"\nretry_on = [\"reset\"]\nmax_retries = 2\nretry_budget_percent = 20\n",
    ));
    let admin = proxy.admin_addr.unwrap();
    let c = client_to(proxy.addr);
    for _ in 0..200 {
        assert!(outcome(&c, call("EchoService", "Echo", None))
            .await
            .is_err());
    }
    let attempts: u64 = relays.iter().map(Relay::requests).sum();
    // 200 calls, 20% of them in retries, plus the budget's reserve of 10 (less the share
    // of the first call, which found the budget full): 249.
    assert!(
        (245..=250).contains(&attempts),
        "{attempts} attempts for 200 calls (max_retries alone would allow 600)"
    );
    assert!(
        metric(
            admin,
            "sluice_retry_budget_exhausted_total{downstream=\"web\"}"
        )
        .await
            > 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_in_flight_a_caller_is_refused_at_once_and_memory_stays_flat() {
    let (echo, _h, _d) = start_echo().await;
    let proxy = Sluice::start(&config(
        &format!("[downstreams.web]\nendpoints = [\"{echo}\"]\nmax_in_flight = 10\n"),
        ROUTE_ALL,
    ));
    let admin = proxy.admin_addr.unwrap();
    let c = client_to(proxy.addr);
    outcome(&c, call("EchoService", "Echo", None))
        .await
        .unwrap();
    let slow: Vec<_> = (0..10)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { outcome(&c, call("EchoService", "Sleep3000", None)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let e = outcome(&c, call("EchoService", "Echo", None))
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert!(
        e.contains("\"web\" is overloaded") && e.contains("max_in_flight"),
        "{e}"
    );
    assert!(
        took < Duration::from_millis(500),
        "refused at once: {took:?}"
    );
    let rss_before = rss_kib(proxy.pid());
    let refused: Vec<_> = (0..20)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut n = 0;
                for _ in 0..100 {
                    if outcome(&c, call("EchoService", "Echo", None))
                        .await
                        .is_err()
                    {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let mut n = 0;
    for r in refused {
        n += r.await.unwrap();
    }
    assert_eq!(n, 2000, "every call beyond the limit is refused");
    let grown = rss_kib(proxy.pid()).saturating_sub(rss_before);
    assert!(
        grown < 8 * 1024,
        "RSS grew by {grown} KiB over 2000 refusals"
    );
    assert_eq!(
        metric(
            admin,
            "sluice_downstream_overloaded_total{downstream=\"web\",limit=\"max_in_flight\"}"
        )
        .await,
        2001.0
    );
    for s in slow {
        s.await.unwrap().unwrap();
    }
    outcome(&c, call("EchoService", "Echo", None))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_accepts_its_rate_and_refuses_the_rest_in_each_protocol() {
    let (echo, _h, _d) = start_echo().await;
    let proxy = Sluice::start(&both_clusters(
        echo,
        "",
        r#"
[[routes]]
service = "Limited"
downstream = "web"
rate_limit = { rps = 100, burst = 10 }

[[routes]]
service = "*"
downstream = "web"
rate_limit = { rps = 5, burst = 5 }
"#,
    ));
    let c = client_to(proxy.addr);
    // 1000 requests at 1000 per second: 10x the limit.
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..1000u32 {
        tokio::time::sleep_until(start + Duration::from_millis(u64::from(i))).await;
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            outcome(&c, call("Limited", "Echo", None)).await
        }));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut accepted = 0.0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => accepted += 1.0,
            Err(e) => assert!(
                e.starts_with("sluice: rate limited") && e.contains("rate_limit of 100"),
                "{e}"
            ),
        }
    }
    let expected = 100.0 * elapsed + 10.0;
    assert!(
        (accepted - expected).abs() <= expected * 0.05,
        "{accepted} accepted, {expected:.1} expected over {elapsed:.3} s"
    );

    // TTStream: 5 at once, then refused with a trailer exception.
    let ts = ttstream_to(proxy.addr);
    let mut ok = 0;
    for _ in 0..20 {
        let s = ts.open(bidi()).await.unwrap();
        match crate::discovery::stream_echo(s).await {
            Ok(()) => ok += 1,
            Err(e) => assert!(e.contains("sluice: rate limited"), "{e}"),
        }
    }
    assert!((5..=6).contains(&ok), "{ok} TTStream streams accepted");

    // gRPC: RESOURCE_EXHAUSTED. The same route: its bucket is full again after a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let g = sluice_http2::GrpcClient::new(sluice_http2::GrpcClientConfig::new(vec![proxy
        .grpc_addr
        .unwrap()]));
    let mut ok = 0;
    for _ in 0..20 {
        let s = g
            .open(&crate::discovery::grpc_open("EchoService", None))
            .await
            .unwrap();
        match crate::discovery::stream_echo(s).await {
            Ok(()) => ok += 1,
            Err(e) => assert!(
                e.contains("sluice: rate limited") && e.contains("code: Grpc(8)"),
                "{e}"
            ),
        }
    }
    assert!((5..=6).contains(&ok), "{ok} gRPC streams accepted");
}

/// Which of `handlers` served one call, by their counts before and after.
async fn served_by(
    c: &GenericClient,
    handlers: &[Arc<sluice_server::echo::EchoHandler>],
    key: &str,
) -> usize {
    let before: Vec<u64> = handlers.iter().map(|h| h.requests_seen()).collect();
    outcome(c, call("EchoService", "Echo", Some(("user", key))))
        .await
        .unwrap();
    handlers
        .iter()
        .zip(before)
        .position(|(h, b)| h.requests_seen() > b)
        .expect("some instance served it")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_moves_only_the_keys_of_a_removed_instance() {
    let mut addrs = Vec::new();
    let mut handlers = Vec::new();
    let mut _drains = Vec::new();
    for _ in 0..5 {
        let (a, h, d) = start_echo().await;
        addrs.push(a);
        handlers.push(h);
        _drains.push(d);
    }
    let conf = |eps: &[SocketAddr]| {
        config(
            &format!(
                "[downstreams.web]\nendpoints = [{}]\nbalance = \"consistent-hash\"\nhash_key = \"user\"\n",
                endpoints(eps)
            ),
            ROUTE_ALL,
        )
    };
    let proxy = Sluice::start(&conf(&addrs));
    let c = client_to(proxy.addr);
    let mut owner = Vec::new();
    for k in 0..10_000 {
        owner.push(served_by(&c, &handlers, &format!("user-{k}")).await);
    }
    let mut per = [0usize; 5];
    for o in &owner {
        per[*o] += 1;
    }
    assert!(per.iter().all(|&n| n > 1000), "spread: {per:?}");
    // Instance 3 leaves (a reload with the other four).
    let kept: Vec<_> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, a)| *a)
        .collect();
    let next = conf(&kept)
        .replace("{port}", &proxy.addr.port().to_string())
        .replace(
            "{admin_port}",
            &proxy.admin_addr.unwrap().port().to_string(),
        );
    std::fs::write(proxy.config_path(), next).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status();
    // The reload is in force once instance 3 gets no more calls.
    let t = Instant::now();
    loop {
        let before = handlers[3].requests_seen();
        for k in 0..50 {
            served_by(&c, &handlers, &format!("user-{k}")).await;
        }
        if handlers[3].requests_seen() == before {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "reload not applied");
    }
    let mut moved = 0;
    for (k, was) in owner.iter().enumerate() {
        let now = served_by(&c, &handlers, &format!("user-{k}")).await;
        if now != *was {
            assert_eq!(*was, 3, "key user-{k} moved from a staying instance");
            moved += 1;
        }
    }
    assert_eq!(
        moved, per[3],
        "every key of the removed instance moved, no other"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_gives_a_slow_instance_a_smaller_share() {
    let (relays, _drains) = relays(3, Mode::Pass).await;
    relays[2].set(Mode::Slow);
    let addrs: Vec<_> = relays.iter().map(|r| r.addr).collect();
    let proxy = Sluice::start(&config(
        &format!("[downstreams.web]\nendpoints = [{}]\n", endpoints(&addrs)),
        ROUTE_ALL,
    ));
    let c = client_to(proxy.addr);
    outcome(&c, call("EchoService", "Echo", None))
        .await
        .unwrap();
    let stop = Instant::now() + Duration::from_secs(2);
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                while Instant::now() < stop {
                    outcome(&c, call("EchoService", "Echo", None))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in callers {
        t.await.unwrap();
    }
    let counts: Vec<u64> = relays.iter().map(Relay::requests).collect();
    let total: u64 = counts.iter().sum();
    let slow_share = counts[2] as f64 / total as f64;
    eprintln!("p2c shares (fast, fast, slow 20 ms): {counts:?}, slow {slow_share:.3}");
    assert!(
        slow_share < 0.1,
        "the slow instance got {slow_share:.3} of {total} calls: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_try_timeout_moves_a_stalled_call_to_another_endpoint_where_a_route_opts_in() {
    let (a, _ha, _da) = start_echo().await;
    let (b, hb, _db) = start_echo().await;
    let stalled = Relay::start(a).await;
    stalled.set(Mode::Stall);
    let proxy = Sluice::start(&config(
        &format!(
            "[downstreams.web]\nendpoints = [{}]\nbalance = \"round-robin\"\nconsecutive_failures = 0\n",
            endpoints(&[stalled.addr, b])
        ),
        r#"
[[routes]]
service = "Retrying"
downstream = "web"
retry_on = ["timeout"]
per_try_timeout_ms = 200
retry_budget_percent = 100
timeout_ms = 2000

[[routes]]
service = "*"
downstream = "web"
per_try_timeout_ms = 200
timeout_ms = 1000
"#,
    ));
    let admin = proxy.admin_addr.unwrap();
    let c = client_to(proxy.addr);
    for i in 0..6 {
        let t = Instant::now();
        outcome(&c, call("Retrying", "Echo", None))
            .await
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
    }
    assert!(stalled.requests() >= 3, "the stalled endpoint was tried");
    assert_eq!(hb.requests_seen(), 6);
    assert_eq!(
        metric(
            admin,
            "sluice_retries_total{downstream=\"web\",reason=\"timeout\"}"
        )
        .await,
        stalled.requests() as f64
    );
    // Without retry_on the per-try timeout ends the call with its own error.
    let mut errors = 0;
    for _ in 0..4 {
        if let Err(e) = outcome(&c, call("Plain", "Echo", None)).await {
            assert!(e.contains("per-try timeout"), "{e}");
            errors += 1;
        }
    }
    assert_eq!(errors, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_wide_in_flight_limit_refuses_at_once() {
    let (echo, _h, _d) = start_echo().await;
    let proxy = Sluice::start(&format!(
        "[[listeners]]\nname = \"pingpong\"\naddress = \"127.0.0.1:{{port}}\"\ncluster = \"ttstream\"\n\n[limits]\nmax_in_flight = 4\n\n[downstreams.web]\nendpoints = [\"{echo}\"]\n\n{ROUTE_ALL}"
    ));
    let c = client_to(proxy.addr);
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { outcome(&c, call("EchoService", "Sleep1500", None)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = outcome(&c, call("EchoService", "Echo", None))
        .await
        .unwrap_err();
    assert!(
        e.contains("sluice: overloaded: 4 requests and streams in flight (limits.max_in_flight)"),
        "{e}"
    );
    for s in slow {
        s.await.unwrap().unwrap();
    }
    outcome(&c, call("EchoService", "Echo", None))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_max_in_flight_are_refused_at_once_in_ttstream_and_grpc() {
    let (echo, _h, _d) = start_echo().await;
    let proxy = Sluice::start(&both_clusters(echo, "max_in_flight = 2", ROUTE_ALL));
    let ts = ttstream_to(proxy.addr);
    // Two streams held open (a message each way proves they reached the downstream).
    let mut held = Vec::new();
    for _ in 0..2 {
        let (tx, mut rx) = ts.open(bidi()).await.unwrap().split();
        tx.send(bytes::Bytes::from_static(
            b"\x0b\x00\x01\x00\x00\x00\x01x\x00",
        ))
        .await
        .unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
            {
                sluice_stream::Incoming::Message(_) => break,
                sluice_stream::Incoming::Headers(_) => {}
                other => panic!("{other:?}"),
            }
        }
        held.push((tx, rx));
    }
    let t = Instant::now();
    let third = crate::discovery::stream_echo(ts.open(bidi()).await.unwrap()).await;
    let e = third.unwrap_err();
    // (The end is shown with Debug: the downstream's name is in escaped quotes.)
    assert!(
        e.contains("web\\\" is overloaded: 2 calls in flight (max_in_flight)")
            && e.contains("TTStream(6)"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    let g = sluice_http2::GrpcClient::new(sluice_http2::GrpcClientConfig::new(vec![proxy
        .grpc_addr
        .unwrap()]));
    let e = crate::discovery::stream_echo(
        g.open(&crate::discovery::grpc_open("EchoService", None))
            .await
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("max_in_flight") && e.contains("code: Grpc(14)"),
        "{e}"
    );
    // Once the held streams end, new ones are served again.
    for (tx, mut rx) in held {
        tx.close_send().await.unwrap();
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(5), async {
            match rx.recv().await {
                sluice_stream::Incoming::End(_) | sluice_stream::Incoming::Reset(_) => None,
                other => Some(other),
            }
        })
        .await
        {
            let _ = ev;
        }
    }
    let t = Instant::now();
    loop {
        match crate::discovery::stream_echo(ts.open(bidi()).await.unwrap()).await {
            Ok(()) => break,
            Err(e) => assert!(t.elapsed() < Duration::from_secs(5), "still refused: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
