//! Hostile and unlucky peers: bursts beyond the in-flight limit, stalled frames, idle
//! connections of every protocol, stream floods, reset floods, a full connection table and a
//! drain under load. Each case once wedged, leaked or lost requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_server::echo::EchoHandler;
use sluice_server::{
    DefaultHandler, Drain, DrainHandle, Request, Response, Server, ServerConfig, ServerStats,
    ServerStream, StreamRequest, StreamingHandler,
};
use sluice_thrift::{envelope, MessageType};
use sluice_ttheader::{flags, Header};
use sluice_ttstream::{FrameDecoder, FrameType, StreamFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Starts a server with `config` on a loopback port.
async fn start<H: DefaultHandler, S: StreamingHandler>(
    config: ServerConfig,
    handler: Arc<H>,
    streaming: Arc<S>,
) -> (SocketAddr, Arc<ServerStats>, DrainHandle) {
    let l = sluice_server::bind_listener(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = l.local_addr().unwrap();
    let (h, d): (DrainHandle, Drain) = sluice_server::drain::channel();
    let server = Server::new(config, handler).with_streaming(streaming);
    let stats = server.stats();
    tokio::spawn(server.serve(l, d));
    (addr, stats, h)
}

async fn start_echo(config: ServerConfig) -> (SocketAddr, Arc<ServerStats>, DrainHandle) {
    let echo = Arc::new(EchoHandler::new());
    start(config, echo.clone(), echo).await
}

/// A TTHeader (inner framed) request, mux flag optional.
fn request(seq: i32, method: &str, mux: bool) -> BytesMut {
    let mut msg = BytesMut::new();
    envelope::write_header(&mut msg, method, MessageType::Call, seq);
    msg.extend_from_slice(&[0x0c, 0x00, 0x01, 0x00, 0x00]);
    let mut h = Header::new(seq, 0);
    if mux {
        h.flags = flags::SUPPORT_OUT_OF_ORDER;
    }
    let mut out = BytesMut::new();
    sluice_ttheader::encode(&h, true, &msg, &mut out).unwrap();
    out
}

/// Reads TTHeader replies until `n` have arrived; their seq ids.
async fn read_replies(s: &mut TcpStream, buf: &mut BytesMut, n: usize) -> Vec<i32> {
    let dec = sluice_ttheader::Decoder::default();
    let mut seqs = Vec::new();
    while seqs.len() < n {
        while let Some(f) = dec.decode(buf).unwrap() {
            seqs.push(f.header.seq_id);
        }
        if seqs.len() >= n {
            break;
        }
        if s.read_buf(buf).await.unwrap() == 0 {
            break;
        }
    }
    seqs
}

/// Reads until the peer closes; true if it did (EOF or reset) within `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut sink = vec![0u8; 64 * 1024];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Asserts that the server closes `s` (on the test's clock) no sooner than `from` and before
/// `to` from now.
async fn assert_closed_between(s: &mut TcpStream, from: Duration, to: Duration) {
    let start = tokio::time::Instant::now();
    assert!(
        closed_within(s, Duration::from_secs(3600)).await,
        "never closed"
    );
    let took = start.elapsed();
    assert!(
        took >= from && took < to,
        "closed after {took:?}, expected {from:?}..{to:?}"
    );
}

#[tokio::test]
async fn mux_requests_beyond_an_in_flight_limit_of_one_are_all_answered() {
    // Six requests of a real Kitex mux client, written at once.
    let cap = sluice_testkit::Capture::load("ttheader-mux-unary");
    let bytes = cap.conns[0].bytes(sluice_testkit::Dir::C2s).to_vec();
    let (addr, _stats, _d) =
        start_echo(ServerConfig::default().with_max_in_flight_per_conn(1)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    let mut buf = BytesMut::new();
    let mut seqs = tokio::time::timeout(Duration::from_secs(10), read_replies(&mut s, &mut buf, 6))
        .await
        .expect("every request answered (the connection wedged)");
    seqs.sort();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mux_burst_read_late_is_answered_in_full() {
    // A Kitex mux client under a burst: thousands of requests written before any reply is read.
    let (addr, _stats, _d) = start_echo(ServerConfig::default()).await;
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    const N: i32 = 3000;
    let writer = tokio::spawn(async move {
        let mut all = BytesMut::new();
        for seq in 1..=N {
            all.extend_from_slice(&request(seq, "Echo", true));
        }
        wr.write_all(&all).await.unwrap();
        wr
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dec = sluice_ttheader::Decoder::default();
    let mut buf = BytesMut::new();
    let mut seen = vec![false; N as usize + 1];
    let mut count = 0;
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        while count < N {
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                let seq = f.header.seq_id as usize;
                assert!(!seen[seq], "seq {seq} answered twice");
                seen[seq] = true;
                count += 1;
            }
            if count < N && rd.read_buf(&mut buf).await.unwrap() == 0 {
                break;
            }
        }
    })
    .await;
    assert!(got.is_ok(), "only {count} of {N} replies arrived: wedged");
    assert_eq!(count, N);
    let _ = writer.await;
}

#[tokio::test(start_paused = true)]
async fn a_truncated_pingpong_request_is_closed_after_the_frame_timeout() {
    let (addr, stats, _d) = start_echo(ServerConfig::default()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = request(1, "Echo", false);
    s.write_all(&req[..req.len() - 3]).await.unwrap();
    assert_closed_between(&mut s, Duration::from_secs(30), Duration::from_secs(40)).await;
    assert_eq!(stats.frame_timeouts.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_slowloris_request_is_closed_even_though_bytes_keep_coming() {
    let (addr, stats, _d) = start_echo(ServerConfig::default()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = request(1, "Echo", false);
    // Enough to be recognised at once, then one byte every 5 s: each read is progress, the
    // request never completes in time.
    s.write_all(&req[..16]).await.unwrap();
    let start = tokio::time::Instant::now();
    for b in &req[16..req.len() - 1] {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        if start.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    assert!(closed_within(&mut s, Duration::from_secs(1)).await);
    assert_eq!(stats.frame_timeouts.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn idle_ttstream_connections_are_closed_like_pingpong_ones() {
    let (addr, stats, _d) =
        start_echo(ServerConfig::default().with_idle_timeout(Duration::from_secs(60))).await;
    // A TTStream connection that finished its only stream, then went quiet.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = BytesMut::new();
    StreamFrame::client_header(1, "Echo", "EchoService", Vec::<(Bytes, Bytes)>::new())
        .encode(&mut out)
        .unwrap();
    StreamFrame::trailer(1, "Echo").encode(&mut out).unwrap();
    s.write_all(&out).await.unwrap();
    assert_closed_between(&mut s, Duration::from_secs(60), Duration::from_secs(70)).await;
    assert_eq!(stats.idle_closed.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_ttstream_connection_that_sent_eight_bytes_is_closed_after_the_frame_timeout() {
    let (addr, stats, _d) = start_echo(ServerConfig::default()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0x00, 0x00, 0x00, 0x5a, 0x10, 0x00, 0x00, 0x02])
        .await
        .unwrap();
    assert_closed_between(&mut s, Duration::from_secs(30), Duration::from_secs(40)).await;
    assert_eq!(stats.frame_timeouts.load(Ordering::Relaxed), 1);
}

/// Holds every stream open until its caller ends it, counting live handlers.
#[derive(Default)]
struct Holder {
    live: AtomicI64,
    started: AtomicU64,
}

struct LiveGuard<'a>(&'a AtomicI64);
impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl StreamingHandler for Holder {
    async fn handle(&self, _req: StreamRequest, mut stream: ServerStream) {
        self.live.fetch_add(1, Ordering::SeqCst);
        self.started.fetch_add(1, Ordering::SeqCst);
        let _g = LiveGuard(&self.live);
        while let Ok(Some(_)) = stream.recv().await {}
    }
}

/// Like [`Holder`], but ignores the end of its stream: it never returns by itself.
#[derive(Default)]
struct Stuck {
    live: AtomicI64,
}

impl StreamingHandler for Stuck {
    async fn handle(&self, _req: StreamRequest, _stream: ServerStream) {
        self.live.fetch_add(1, Ordering::SeqCst);
        let _g = LiveGuard(&self.live);
        std::future::pending::<()>().await;
    }
}

fn headers(ids: impl IntoIterator<Item = i32>) -> BytesMut {
    let mut out = BytesMut::new();
    for id in ids {
        StreamFrame::client_header(id, "Echo", "EchoService", Vec::<(Bytes, Bytes)>::new())
            .encode(&mut out)
            .unwrap();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttstream_streams_beyond_the_limit_are_refused_in_ttstreams_way() {
    let holder = Arc::new(Holder::default());
    let (addr, stats, _d) = start(
        ServerConfig::default().with_max_streams_per_conn(10),
        Arc::new(EchoHandler::new()),
        holder.clone(),
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&headers(1..=11)).await.unwrap();
    // The eleventh gets a Header and a Trailer with an exception; the ten run on.
    let dec = FrameDecoder::default();
    let mut buf = BytesMut::new();
    let trailer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                if f.kind == FrameType::Trailer {
                    return f;
                }
            }
            assert!(s.read_buf(&mut buf).await.unwrap() > 0, "closed");
        }
    })
    .await
    .expect("a refusal");
    assert_eq!(trailer.stream_id, 11);
    let ex = trailer.exception().unwrap().expect("an exception");
    assert!(
        ex.message.contains("too many concurrent streams"),
        "{}",
        ex.message
    );
    assert_eq!(stats.streams_refused.load(Ordering::Relaxed), 1);
    assert_eq!(holder.started.load(Ordering::SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_ttstream_connection_ends_every_stream_handler() {
    let holder = Arc::new(Holder::default());
    let (addr, _stats, _d) = start(
        ServerConfig::default(),
        Arc::new(EchoHandler::new()),
        holder.clone(),
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&headers(1..=1000)).await.unwrap();
    let wait = |n: i64| {
        let holder = holder.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), async {
                while holder.live.load(Ordering::SeqCst) != n {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .is_ok()
        }
    };
    assert!(wait(1000).await, "1000 streams running");
    drop(s);
    assert!(
        wait(0).await,
        "{} handlers still alive after the connection closed",
        holder.live.load(Ordering::SeqCst)
    );
}

#[tokio::test(start_paused = true)]
async fn stream_handlers_that_never_return_are_aborted_after_the_drain_grace() {
    let stuck = Arc::new(Stuck::default());
    let (addr, _stats, _d) = start(
        ServerConfig::default(),
        Arc::new(EchoHandler::new()),
        stuck.clone(),
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&headers([1, 3, 5])).await.unwrap();
    while stuck.live.load(Ordering::SeqCst) != 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(s);
    // The drain grace (10 s) bounds how long the connection waits for them.
    tokio::time::sleep(Duration::from_secs(11)).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        stuck.live.load(Ordering::SeqCst),
        0,
        "handlers were detached"
    );
}

#[tokio::test(start_paused = true)]
async fn a_ttstream_reset_flood_closes_the_connection() {
    let holder = Arc::new(Holder::default());
    let (addr, stats, _d) = start(
        ServerConfig::default().with_max_streams_per_conn(5000),
        Arc::new(EchoHandler::new()),
        holder.clone(),
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = BytesMut::new();
    for id in 1..=1500 {
        StreamFrame::client_header(id, "Echo", "EchoService", Vec::<(Bytes, Bytes)>::new())
            .encode(&mut out)
            .unwrap();
        StreamFrame::rst(id, "Echo", None, None)
            .encode(&mut out)
            .unwrap();
    }
    let _ = s.write_all(&out).await;
    assert!(closed_within(&mut s, Duration::from_secs(60)).await);
    assert_eq!(stats.reset_floods.load(Ordering::Relaxed), 1);
    assert!(holder.started.load(Ordering::SeqCst) <= 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_closed_at_once_and_counted() {
    let (addr, stats, _d) = start_echo(ServerConfig::default().with_max_connections(2)).await;
    let mut held = Vec::new();
    for seq in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&request(seq, "Echo", false)).await.unwrap();
        let mut buf = BytesMut::new();
        assert_eq!(read_replies(&mut s, &mut buf, 1).await, vec![seq]);
        held.push(s);
    }
    let mut third = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(&mut third, Duration::from_secs(5)).await,
        "the connection past the limit was left unanswered"
    );
    assert_eq!(stats.connections_refused.load(Ordering::Relaxed), 1);
    // The two in use are unaffected.
    for (i, s) in held.iter_mut().enumerate() {
        s.write_all(&request(10 + i as i32, "Echo", false))
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        assert_eq!(read_replies(s, &mut buf, 1).await, vec![10 + i as i32]);
    }
}

/// Counts requests that reached the handler.
#[derive(Default)]
struct Counting {
    seen: AtomicU64,
}

impl DefaultHandler for Counting {
    async fn handle(&self, req: Request) -> Response {
        self.seen.fetch_add(1, Ordering::Relaxed);
        Response::reply(req.args)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_under_closed_loop_load_loses_no_request() {
    for round in 0..5 {
        let handler = Arc::new(Counting::default());
        let (addr, _stats, drain) = start(
            ServerConfig::default(),
            handler.clone(),
            Arc::new(sluice_server::NoStreaming),
        )
        .await;
        let mut callers = tokio::task::JoinSet::new();
        for c in 0..16 {
            callers.spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let dec = sluice_ttheader::Decoder::default();
                let mut buf = BytesMut::new();
                let (mut sent, mut answered) = (0u32, 0u32);
                // Closed loop: one request at a time, until a reply says the server drains.
                loop {
                    let seq = (c * 100_000 + sent) as i32;
                    if s.write_all(&request(seq, "Echo", false)).await.is_err() {
                        break;
                    }
                    sent += 1;
                    let reply = loop {
                        if let Some(f) = dec.decode(&mut buf).unwrap() {
                            break Some(f);
                        }
                        match s.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => break None,
                            Ok(_) => {}
                        }
                    };
                    let Some(f) = reply else { break };
                    assert_eq!(f.header.seq_id, seq);
                    answered += 1;
                    if f.header.str_kvs.get_str("crrst") == Some("1") {
                        break;
                    }
                }
                (sent, answered)
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        drain.drain();
        let mut lost = 0;
        while let Some(r) = callers.join_next().await {
            let (sent, answered) = r.unwrap();
            lost += sent - answered;
        }
        assert_eq!(
            lost, 0,
            "round {round}: {lost} requests got EOF instead of a reply"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_at_the_sniff_timeout_and_counted() {
    let (addr, stats, _d) = start_echo(ServerConfig::default()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert_closed_between(&mut s, Duration::from_secs(5), Duration::from_secs(6)).await;
    assert_eq!(stats.sniff_timeouts.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn an_idle_grpc_connection_is_closed_and_counted_in_the_listener_stats() {
    let (addr, stats, _d) =
        start_echo(ServerConfig::default().with_idle_timeout(Duration::from_secs(60))).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The client preface and an empty SETTINGS frame, then nothing.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert_closed_between(&mut s, Duration::from_secs(60), Duration::from_secs(70)).await;
    assert_eq!(
        stats.grpc.connections_idle_closed.load(Ordering::Relaxed),
        1
    );
}
