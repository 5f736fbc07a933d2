//! The cases: broken downstreams, hostile callers, floods, a full connection table, a drain.

use std::future::Future;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_client::{ClientConfig, Endpoint, OpenStream, TTStreamClient};
use sluice_http2::{GrpcClient, GrpcClientConfig, OpenRequest};
use sluice_server::DrainHandle;
use sluice_stream::{ClientStream, Incoming, Metadata};
use sluice_thrift::MessageType;
use sluice_ttheader::{str_key, Header};
use sluice_ttstream::{FrameDecoder, StreamFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::healthy::{healthy_header, Healthy};
use crate::support::{
    exception, free_port, open_fds, read_reply, request, rss_kib, start_echo, thrift_args,
    wait_listening, RawReply, Shape, Sluice,
};
use crate::{config, SERIAL};

const TTHEADER: Shape = Shape::TTHeader {
    framed: true,
    flags: 0,
};

/// How long a caller of a broken downstream may wait for its answer.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);

/// This process's soft limit on open files.
fn open_file_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(u64::MAX)
}

/// A fake downstream: every accepted connection is handed to `behave`.
async fn fake_downstream<F, Fut>(behave: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(behave(s));
        }
    });
    addr
}

/// Reads everything and never answers.
async fn silent(mut s: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
}

/// Answers the first bytes with garbage, then keeps reading.
async fn garbage(mut s: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    if s.read(&mut buf).await.is_ok_and(|n| n > 0) {
        let _ = s
            .write_all(b"\x7f\xfe\xfd HTTP/1.1 400 Bad Request\r\n\r\n garbage garbage garbage")
            .await;
    }
    while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
}

/// Answers the first bytes with the first half of a TTHeader reply head, then closes.
async fn close_mid_reply(mut s: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    if s.read(&mut buf).await.is_ok_and(|n| n > 0) {
        let _ = s
            .write_all(&[0x00, 0x00, 0x00, 0x40, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00])
            .await;
    }
}

fn faulty_header() -> Header {
    let mut h = Header::new(0, 0);
    h.str_kvs.insert(str_key::IDL_SERVICE_NAME, "Faulty");
    h
}

/// One ping-pong call to the faulty route on a fresh connection.
async fn pingpong_call(addr: SocketAddr, method: &str) -> Option<RawReply> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = request(
        TTHEADER,
        &faulty_header(),
        false,
        method,
        MessageType::Call,
        1,
        &thrift_args(b"x"),
    );
    s.write_all(&req).await.unwrap();
    let mut buf = BytesMut::new();
    read_reply(&mut s, &mut buf, TTHEADER, ANSWER_LIMIT).await
}

/// How a stream to the faulty route ended, as the caller saw it (the texts are read through
/// `Debug`, in assertion messages).
#[derive(Debug)]
#[allow(dead_code)]
enum StreamOutcome {
    Ok,
    Error(u32, String),
    Reset(u32, String),
    OpenFailed(String),
    NoAnswer,
}

/// Sends one message, half-closes, and reads until the end (or `ANSWER_LIMIT`).
async fn run_stream(opened: Result<ClientStream, String>) -> StreamOutcome {
    let stream = match opened {
        Ok(s) => s,
        Err(e) => return StreamOutcome::OpenFailed(e),
    };
    let (tx, mut rx) = stream.split();
    let _ = tx.send(thrift_args(b"x")).await;
    let _ = tx.close_send().await;
    let end = tokio::time::timeout(ANSWER_LIMIT, async {
        loop {
            match rx.recv().await {
                Incoming::Headers(_) | Incoming::Message(_) => {}
                Incoming::End(e) => {
                    return match e.error {
                        None => StreamOutcome::Ok,
                        Some(err) => StreamOutcome::Error(err.code.value() as u32, err.message),
                    }
                }
                Incoming::Reset(r) => {
                    return StreamOutcome::Reset(r.code.value() as u32, r.message)
                }
            }
        }
    })
    .await;
    end.unwrap_or(StreamOutcome::NoAnswer)
}

async fn ttstream_call(addr: SocketAddr, method: &str) -> StreamOutcome {
    let client = TTStreamClient::new(ClientConfig::new(
        "sluice",
        vec![Endpoint { addr, weight: 1 }],
    ));
    let opened = client
        .open(OpenStream {
            hash: None,
            method: method.into(),
            service: "Faulty".into(),
            headers: Metadata::new(),
        })
        .await
        .map_err(|e| e.to_string());
    run_stream(opened).await
}

async fn grpc_call(addr: SocketAddr, method: &str) -> StreamOutcome {
    let client = GrpcClient::new(GrpcClientConfig::new(vec![addr]));
    let opened = client
        .open(&OpenRequest {
            path: format!("/Faulty/{method}"),
            content_type: "application/grpc".into(),
            authority: "sluice".into(),
            headers: Metadata::new(),
            deadline: None,
        })
        .await
        .map_err(|e| e.to_string());
    run_stream(opened).await
}

/// Starts the healthy downstream, the proxy and the healthy callers.
/// The healthy downstream serves until its handle (the third value) is dropped.
async fn setup(
    faulty: SocketAddr,
    limits: &str,
    route_extra: &str,
    faulty_extra: &str,
) -> (Sluice, Healthy, DrainHandle) {
    let (healthy, _h, serving) = start_echo().await;
    let sluice = Sluice::start(&config(faulty, healthy, limits, route_extra, faulty_extra));
    let callers = Healthy::start(sluice.addr, sluice.grpc_addr.unwrap());
    // Let every caller get going before the fault.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (sluice, callers, serving)
}

/// Whether the next read from `s` finds it closed (EOF or reset) within `limit`.
async fn eof_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut sink = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, s.read(&mut sink)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// A broken downstream: every protocol's caller gets an error in its own protocol, in time.
async fn broken_downstream_case<F, Fut>(case: &str, behave: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let _serial = SERIAL.lock().await;
    let faulty = fake_downstream(behave).await;
    let (sluice, healthy, _healthy_down) = setup(
        faulty,
        "",
        "timeout_ms = 1000",
        "first_response_timeout_ms = 1000",
    )
    .await;
    for round in 0..3 {
        let r = pingpong_call(sluice.addr, "Echo")
            .await
            .unwrap_or_else(|| panic!("{case}: no ping-pong answer (round {round})"));
        let ex = exception(&r);
        assert!(ex.message.starts_with("sluice: "), "{case}: {}", ex.message);
        match ttstream_call(sluice.addr, "EchoBidi").await {
            StreamOutcome::Error(..) => {}
            other => panic!("{case}: TTStream caller got {other:?}"),
        }
        match grpc_call(sluice.grpc_addr.unwrap(), "Echo").await {
            StreamOutcome::Error(code, _) => assert_ne!(code, 0, "{case}"),
            other => panic!("{case}: gRPC caller got {other:?}"),
        }
    }
    healthy.assert_unaffected(case).await;
    drop(sluice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_silent() {
    broken_downstream_case("silent downstream", silent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_answering_garbage() {
    broken_downstream_case("garbage downstream", garbage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_closing_mid_reply() {
    broken_downstream_case("downstream closing mid-reply", close_mid_reply).await;
}

/// A `sluice echo` child process, killed on drop.
struct EchoProcess(std::process::Child);

impl EchoProcess {
    fn start() -> (EchoProcess, SocketAddr) {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["echo", "--listen", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(addr, "sluice echo");
        (EchoProcess(child), addr)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Exchanges one message on an open stream, then waits for its end.
async fn one_message_then_end(stream: ClientStream) -> (Bytes, StreamOutcome) {
    let (tx, mut rx) = stream.split();
    tx.send(thrift_args(b"first")).await.unwrap();
    let echoed = loop {
        match tokio::time::timeout(ANSWER_LIMIT, rx.recv()).await.unwrap() {
            Incoming::Headers(_) => {}
            Incoming::Message(m) => break m,
            other => panic!("expected an echo, got {other:?}"),
        }
    };
    let end = tokio::time::timeout(ANSWER_LIMIT, async {
        loop {
            match rx.recv().await {
                Incoming::Headers(_) | Incoming::Message(_) => {}
                Incoming::End(e) => {
                    return match e.error {
                        None => StreamOutcome::Ok,
                        Some(err) => StreamOutcome::Error(err.code.value() as u32, err.message),
                    }
                }
                Incoming::Reset(r) => {
                    return StreamOutcome::Reset(r.code.value() as u32, r.message)
                }
            }
        }
    })
    .await
    .unwrap_or(StreamOutcome::NoAnswer);
    drop(tx);
    (echoed, end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_killed_mid_stream() {
    let _serial = SERIAL.lock().await;
    let (mut echo, echo_addr) = EchoProcess::start();
    let (sluice, healthy, _healthy_down) = setup(echo_addr, "", "", "").await;
    let ttc = TTStreamClient::new(ClientConfig::new(
        "sluice",
        vec![Endpoint {
            addr: sluice.addr,
            weight: 1,
        }],
    ));
    let tts = ttc
        .open(OpenStream {
            hash: None,
            method: "EchoBidi".into(),
            service: "Faulty".into(),
            headers: Metadata::new(),
        })
        .await
        .unwrap();
    let gc = GrpcClient::new(GrpcClientConfig::new(vec![sluice.grpc_addr.unwrap()]));
    let gs = gc
        .open(&OpenRequest {
            path: "/Faulty/EchoBidi".into(),
            content_type: "application/grpc".into(),
            authority: "sluice".into(),
            headers: Metadata::new(),
            deadline: None,
        })
        .await
        .unwrap();
    let tt = tokio::spawn(one_message_then_end(tts));
    let g = tokio::spawn(one_message_then_end(gs));
    // Both streams are mid-flight (their first echo is back) when the downstream dies.
    tokio::time::sleep(Duration::from_millis(500)).await;
    echo.kill();
    let (first, end) = tt.await.unwrap();
    assert_eq!(first, thrift_args(b"first"));
    assert!(
        matches!(end, StreamOutcome::Error(12009, _)),
        "TTStream caller: {end:?}"
    );
    let (first, end) = g.await.unwrap();
    assert_eq!(first, thrift_args(b"first"));
    assert!(
        matches!(end, StreamOutcome::Error(c, _) if c != 0)
            || matches!(end, StreamOutcome::Reset(..)),
        "gRPC caller: {end:?}"
    );
    healthy
        .assert_unaffected("downstream killed mid-stream")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_slow_under_200_callers_with_bounded_memory() {
    let _serial = SERIAL.lock().await;
    let (slow, _h, _slow_serving) = start_echo().await;
    let (sluice, healthy, _healthy_down) = setup(slow, "", "", "").await;
    let pid = sluice.pid();
    let peak = Arc::new(AtomicU64::new(0));
    let mut callers = tokio::task::JoinSet::new();
    for c in 0..200 {
        let addr = sluice.addr;
        callers.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut buf = BytesMut::new();
            for i in 0..10 {
                let seq = c * 100 + i;
                let req = request(
                    TTHEADER,
                    &faulty_header(),
                    false,
                    "Sleep100",
                    MessageType::Call,
                    seq,
                    &thrift_args(b"slow"),
                );
                s.write_all(&req).await.unwrap();
                let r = read_reply(&mut s, &mut buf, TTHEADER, ANSWER_LIMIT)
                    .await
                    .expect("a reply from the slow downstream");
                assert_eq!((r.msg_type, r.seq), (MessageType::Reply, seq));
            }
        });
    }
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    while let Some(r) = callers.join_next().await {
        r.unwrap();
    }
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak < 64 * 1024, "proxy RSS peaked at {peak} KiB");
    healthy
        .assert_unaffected("slow downstream under 200 callers")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_slowloris_half_open_and_truncated_frames() {
    let _serial = SERIAL.lock().await;
    let (echo, _h, _echo_serving) = start_echo().await;
    let (sluice, healthy, _healthy_down) = setup(echo, "frame_timeout_ms = 1000", "", "").await;
    let full = request(
        TTHEADER,
        &faulty_header(),
        false,
        "Echo",
        MessageType::Call,
        1,
        &thrift_args(b"x"),
    );
    // 100 slowloris callers: a recognisable start, then a byte every 200 ms.
    let mut lorises = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let addr = sluice.addr;
        let full = full.clone();
        lorises.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&full[..16]).await.unwrap();
            let start = Instant::now();
            for b in &full[16..full.len() - 1] {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // Closed by the proxy well before the request could complete.
            assert!(
                eof_within(&mut s, Duration::from_secs(5)).await,
                "a slowloris connection stayed open"
            );
            start.elapsed()
        });
    }
    // Truncated frames: a head with nothing after it, closed by the frame timeout.
    let mut truncated = TcpStream::connect(sluice.addr).await.unwrap();
    truncated.write_all(&full[..full.len() / 2]).await.unwrap();
    // Half-open: the request, then the caller's FIN: the reply still comes, then EOF.
    let mut half = TcpStream::connect(sluice.addr).await.unwrap();
    half.write_all(&full).await.unwrap();
    half.shutdown().await.unwrap();
    let mut buf = BytesMut::new();
    let r = read_reply(&mut half, &mut buf, TTHEADER, ANSWER_LIMIT)
        .await
        .expect("a half-closed caller still gets its reply");
    assert_eq!(r.msg_type, MessageType::Reply);
    assert!(
        eof_within(&mut half, Duration::from_secs(5)).await,
        "a half-closed caller's connection stayed open after its reply"
    );
    let started = Instant::now();
    assert!(
        eof_within(&mut truncated, Duration::from_secs(5)).await,
        "a truncated frame held its connection"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    while let Some(r) = lorises.join_next().await {
        let took = r.unwrap();
        assert!(
            took < Duration::from_secs(4),
            "slowloris closed after {took:?}"
        );
    }
    healthy
        .assert_unaffected("slowloris, half-open and truncated callers")
        .await;
    let log = sluice.stop();
    assert!(
        log.contains("did not complete within the frame timeout"),
        "no log line for the frame timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_at_max_connections() {
    let _serial = SERIAL.lock().await;
    let (echo, _h, _echo_serving) = start_echo().await;
    let (sluice, healthy, _healthy_down) = setup(
        echo,
        "max_connections = 10000\nsniff_timeout_ms = 3000",
        "",
        "",
    )
    .await;
    // Both ends of every connection live on this machine: this process and the proxy each
    // need an fd per connection.
    let limit = open_file_limit();
    assert!(
        limit >= 10_500,
        "the open-file limit is {limit}: this case holds 10 000 connections; raise it \
         (ulimit -n 20000, as .ci/run does)"
    );
    let baseline_fds = open_fds(sluice.pid());
    // 10 000 connections that never send a byte.
    let mut idle = Vec::with_capacity(10_000);
    for batch in 0..20 {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..500 {
            let addr = sluice.addr;
            set.spawn(async move { TcpStream::connect(addr).await });
        }
        while let Some(r) = set.join_next().await {
            idle.push(r.unwrap().unwrap_or_else(|e| panic!("batch {batch}: {e}")));
        }
    }
    assert_eq!(idle.len(), 10_000);
    // The listener is full: a new caller is closed at once, not left waiting.
    let mut late = TcpStream::connect(sluice.addr).await.unwrap();
    assert!(
        eof_within(&mut late, Duration::from_secs(2)).await,
        "a caller past max_connections was left unanswered"
    );
    // The silent ones are reaped within the sniff timeout, and new callers are served again.
    let started = Instant::now();
    loop {
        let mut s = TcpStream::connect(sluice.addr).await.unwrap();
        let req = request(
            TTHEADER,
            &healthy_header(),
            false,
            "Echo",
            MessageType::Call,
            5,
            &thrift_args(b"after"),
        );
        let mut buf = BytesMut::new();
        let served = s.write_all(&req).await.is_ok()
            && read_reply(&mut s, &mut buf, TTHEADER, Duration::from_secs(2))
                .await
                .is_some();
        if served {
            break;
        }
        if started.elapsed() > Duration::from_secs(15) {
            let fds = open_fds(sluice.pid());
            let log = sluice.stop();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!("the idle connections were never reaped ({fds} fds open): {tail:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(idle);
    healthy
        .assert_unaffected("10 000 idle connections at max_connections")
        .await;
    // The proxy closes its ends as it reads each EOF: thousands of them take a moment on a busy
    // machine, so wait (boundedly) for the count to come back rather than sampling it once.
    let closing = Instant::now();
    let mut fds = open_fds(sluice.pid());
    while fds >= baseline_fds + 100 && closing.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        fds = open_fds(sluice.pid());
    }
    assert!(
        fds < baseline_fds + 100,
        "proxy fds {fds} 20 s after the callers left, {baseline_fds} before the flood"
    );
    let log = sluice.stop();
    assert!(
        log.contains("max_connections reached"),
        "no log line at the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttstream_stream_flood() {
    let _serial = SERIAL.lock().await;
    let (echo, _h, _echo_serving) = start_echo().await;
    let (sluice, healthy, _healthy_down) = setup(echo, "", "", "").await;
    let pid = sluice.pid();
    let s = TcpStream::connect(sluice.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    // The flooder reads what comes back (refusals), counting the Trailers.
    let reader = tokio::spawn(async move {
        let dec = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut trailers = 0u64;
        while rd.read_buf(&mut buf).await.is_ok_and(|n| n > 0) {
            while let Ok(Some(f)) = dec.decode(&mut buf) {
                if f.kind == sluice_ttstream::FrameType::Trailer {
                    trailers += 1;
                }
            }
        }
        trailers
    });
    let mut peak = 0;
    for chunk in 0..50 {
        let mut out = BytesMut::new();
        for i in 0..1000 {
            let id = (chunk * 1000 + i) * 2 + 1;
            StreamFrame::client_header(id, "EchoBidi", "Faulty", Vec::<(Bytes, Bytes)>::new())
                .encode(&mut out)
                .unwrap();
        }
        wr.write_all(&out).await.unwrap();
        peak = peak.max(rss_kib(pid));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    peak = peak.max(rss_kib(pid));
    assert!(peak < 96 * 1024, "proxy RSS peaked at {peak} KiB");
    drop(wr);
    let refused = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the proxy closes after the flooder leaves")
        .unwrap();
    assert!(
        refused >= 49_000,
        "{refused} streams refused of 50 000 (limit 1000)"
    );
    healthy.assert_unaffected("TTStream stream flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_reset_flood() {
    let _serial = SERIAL.lock().await;
    let (echo, _h, _echo_serving) = start_echo().await;
    let (sluice, healthy, _healthy_down) = setup(echo, "", "", "").await;
    let pid = sluice.pid();
    let tcp = TcpStream::connect(sluice.grpc_addr.unwrap()).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut reset = 0;
    for _ in 0..5000 {
        let req = http::Request::post("http://sluice/Faulty/EchoBidi")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let ready = match tokio::time::timeout(Duration::from_secs(5), send.ready()).await {
            Ok(Ok(s)) => s,
            _ => break,
        };
        send = ready;
        let Ok((_resp, mut body)) = send.send_request(req, false) else {
            break;
        };
        body.send_reset(h2::Reason::CANCEL);
        reset += 1;
    }
    // Past the reset budget the proxy ends the connection.
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "the connection outlived {reset} resets");
    let rss = rss_kib(pid);
    assert!(rss < 64 * 1024, "proxy RSS {rss} KiB after the flood");
    healthy.assert_unaffected("gRPC reset flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_under_load_answers_every_request() {
    let _serial = SERIAL.lock().await;
    let (echo, _h, _echo_serving) = start_echo().await;
    let sluice = Sluice::start(&config(echo, echo, "", "", ""));
    let addr = sluice.addr;
    let mut callers = tokio::task::JoinSet::new();
    for c in 0..16 {
        callers.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut buf = BytesMut::new();
            let (mut sent, mut answered) = (0u32, 0u32);
            loop {
                let seq = (c * 1_000_000 + sent) as i32;
                let req = request(
                    TTHEADER,
                    &healthy_header(),
                    false,
                    "Echo",
                    MessageType::Call,
                    seq,
                    &thrift_args(b"d"),
                );
                if s.write_all(&req).await.is_err() {
                    break;
                }
                sent += 1;
                let Some(r) = read_reply(&mut s, &mut buf, TTHEADER, ANSWER_LIMIT).await else {
                    break;
                };
                assert_eq!(r.seq, seq);
                answered += 1;
                // Kitex callers stop using a connection whose reply carries crrst.
                if r.header
                    .is_some_and(|f| f.header.str_kvs.get_str("crrst") == Some("1"))
                {
                    break;
                }
            }
            (sent, answered)
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    sluice.terminate();
    let (mut sent, mut lost) = (0, 0);
    while let Some(r) = callers.join_next().await {
        let (s, a) = r.unwrap();
        sent += s;
        lost += s - a;
    }
    assert!(sent > 1000, "only {sent} requests before the drain");
    assert_eq!(
        lost, 0,
        "{lost} of {sent} requests got EOF instead of a reply"
    );
}

/// Opens streams and resets each at once, at about `per_second`, on one new connection.
async fn reset_round(addr: SocketAddr, n: usize, per_second: u64) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut pace = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
    for _ in 0..n {
        pace.tick().await;
        let req = http::Request::post("http://sluice/Faulty/EchoBidi")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        send = send.ready().await.unwrap();
        let (_resp, mut body) = send.send_request(req, false).unwrap();
        body.send_reset(h2::Reason::CANCEL);
    }
    drop(send);
    conn.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_resets_below_the_budget_leave_no_memory_behind() {
    let _serial = SERIAL.lock().await;
    let (echo, _h, _echo_serving) = start_echo().await;
    let (sluice, healthy, _healthy_down) = setup(echo, "", "", "").await;
    let pid = sluice.pid();
    let grpc = sluice.grpc_addr.unwrap();
    // Within the budget (500 a second): nothing stops this caller, so nothing may pile up.
    reset_round(grpc, 2000, 400).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_one = rss_kib(pid);
    reset_round(grpc, 2000, 400).await;
    reset_round(grpc, 2000, 400).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_three = rss_kib(pid);
    assert!(
        after_three < after_one + 2048,
        "proxy RSS grew from {after_one} to {after_three} KiB over 4000 more resets"
    );
    healthy
        .assert_unaffected("gRPC resets below the budget")
        .await;
}
