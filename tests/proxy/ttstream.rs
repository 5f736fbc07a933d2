//! TTStream through the `sluice` binary: our TTStream client upstream, in-process TTStream
//! servers downstream, and real Kitex TTStream bytes replayed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_client::{ClientConfig, Endpoint, OpenStream, TTStreamClient};
use sluice_stream::{
    ClientRecv, Incoming, Metadata, Reset, ServerStream, StreamEnd, StreamRequest, StreamingHandler,
};
use sluice_testkit::{Capture, Dir, TTSTREAM};
use sluice_ttstream::{FrameDecoder, FrameType, StreamFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{
    assert_child_traceparent, free_port, rss_kib, start_echo, start_streaming, Sluice, TRACEPARENT,
};

fn config(down: std::net::SocketAddr) -> String {
    format!(
        r#"
[[listeners]]
name = "streams"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"
[[routes]]
service = "*"
downstream = "down"
[downstreams.down]
endpoints = ["{down}"]
"#
    )
}

fn client(addr: std::net::SocketAddr) -> TTStreamClient {
    TTStreamClient::new(ClientConfig::new(
        "sluice",
        vec![Endpoint { addr, weight: 1 }],
    ))
}

fn open(method: &str) -> OpenStream {
    let mut headers = Metadata::new();
    headers.push("RPC_TRANSIT_KX_REQ_ID", "s-1");
    OpenStream {
        hash: None,
        method: method.into(),
        service: "EchoService".into(),
        headers,
    }
}

fn msg(i: usize) -> Bytes {
    // A bare EchoRequest{1: "m<i>"} struct, as TTStream Data frames carry.
    let s = format!("m{i}");
    let mut v = vec![0x0b, 0x00, 0x01];
    v.extend_from_slice(&(s.len() as i32).to_be_bytes());
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    Bytes::from(v)
}

/// The first reset the downstream echo handler saw, waiting up to 5 s for one.
async fn first_reset_seen(handler: &sluice_server::echo::EchoHandler) -> Reset {
    let start = std::time::Instant::now();
    loop {
        if let Some(r) = handler.resets_seen().into_iter().next() {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "downstream never saw the reset"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads until the end; returns (headers seen, messages, end).
async fn drain(rx: &mut ClientRecv) -> (bool, Vec<Bytes>, Result<StreamEnd, Reset>) {
    let mut headers = false;
    let mut msgs = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("stream ends in time")
        {
            Incoming::Headers(_) => headers = true,
            Incoming::Message(m) => msgs.push(m),
            Incoming::End(e) => return (headers, msgs, Ok(e)),
            Incoming::Reset(r) => return (headers, msgs, Err(r)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_client_and_server_streaming_and_errors() {
    let (echo, handler, _d) = start_echo().await;
    let sluice = Sluice::start(&config(echo));
    let c = client(sluice.addr);

    let (tx, mut rx) = c.open(open("EchoBidi")).await.unwrap().split();
    for i in 0..3 {
        tx.send(msg(i)).await.unwrap();
        match rx.recv().await {
            Incoming::Headers(_) => assert_eq!(rx.recv().await, Incoming::Message(msg(i))),
            other => assert_eq!(other, Incoming::Message(msg(i))),
        }
    }
    tx.close_send().await.unwrap();
    let (_, rest, end) = drain(&mut rx).await;
    assert!(rest.is_empty());
    assert_eq!(end, Ok(StreamEnd::ok()));
    let seen: std::collections::HashMap<_, _> = handler.last_str_kvs().into_iter().collect();
    assert_eq!(
        seen.get("RPC_TRANSIT_KX_REQ_ID").map(String::as_str),
        Some("s-1"),
        "metainfo crosses"
    );
    assert_eq!(seen.get("isn").map(String::as_str), Some("EchoService"));

    let (tx, mut rx) = c.open(open("EchoClient")).await.unwrap().split();
    for i in 0..3 {
        tx.send(msg(i)).await.unwrap();
    }
    tx.close_send().await.unwrap();
    let (headers, msgs, end) = drain(&mut rx).await;
    assert!(headers);
    assert_eq!(msgs, vec![msg(2)]);
    assert_eq!(end, Ok(StreamEnd::ok()));

    let (tx, mut rx) = c.open(open("EchoServer")).await.unwrap().split();
    tx.send(msg(7)).await.unwrap();
    tx.close_send().await.unwrap();
    let (_, msgs, end) = drain(&mut rx).await;
    assert_eq!(msgs, vec![msg(7), msg(7)]);
    assert_eq!(end, Ok(StreamEnd::ok()));

    let (tx, mut rx) = c.open(open("EchoBidiFail")).await.unwrap().split();
    tx.send(msg(1)).await.unwrap();
    let (_, msgs, end) = drain(&mut rx).await;
    assert_eq!(msgs, vec![msg(1)]);
    let err = end.unwrap().error.expect("error end");
    assert_eq!(err.code, 6);
    assert_eq!(
        err.message, "biz error: echo: injected stream failure after 1 messages",
        "passed through unchanged"
    );
    // Kitex clients still send a Trailer after the stream ended; nothing breaks.
    let _ = tx.close_send().await;
}

/// Opens an `EchoBidi` stream with `headers`, echoes one message, and returns the headers the
/// downstream saw.
async fn headers_seen(
    c: &TTStreamClient,
    handler: &sluice_server::echo::EchoHandler,
    headers: &[(&str, &str)],
) -> std::collections::HashMap<String, String> {
    let mut o = open("EchoBidi");
    for (k, v) in headers {
        o.headers.push(k.to_string(), v.to_string());
    }
    let (tx, mut rx) = c.open(o).await.unwrap().split();
    tx.send(msg(0)).await.unwrap();
    tx.close_send().await.unwrap();
    let (_, msgs, end) = drain(&mut rx).await;
    assert_eq!((msgs, end), (vec![msg(0)], Ok(StreamEnd::ok())));
    handler.last_str_kvs().into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_continued_one_hop_and_invalid_ones_untouched() {
    let (echo, handler, _d) = start_echo().await;
    let sluice = Sluice::start(&config(echo));
    let c = client(sluice.addr);
    for key in ["RPC_TRANSIT_traceparent", "traceparent"] {
        let seen = headers_seen(
            &c,
            &handler,
            &[
                (key, TRACEPARENT),
                ("RPC_TRANSIT_tracestate", "congo=t61rcWkgMzE"),
            ],
        )
        .await;
        assert_child_traceparent(seen.get(key).map(String::as_str), TRACEPARENT, key);
        assert_eq!(
            seen.get("RPC_TRANSIT_tracestate").map(String::as_str),
            Some("congo=t61rcWkgMzE"),
            "{key}: tracestate passes unchanged"
        );
        assert_eq!(
            seen.get("RPC_TRANSIT_KX_REQ_ID").map(String::as_str),
            Some("s-1"),
            "{key}: the other metainfo crosses"
        );
    }
    // Both keys of one trace: both name the hop.
    let seen = headers_seen(
        &c,
        &handler,
        &[
            ("RPC_TRANSIT_traceparent", TRACEPARENT),
            ("traceparent", TRACEPARENT),
        ],
    )
    .await;
    assert_child_traceparent(
        seen.get("traceparent").map(String::as_str),
        TRACEPARENT,
        "both keys",
    );
    assert_eq!(seen.get("traceparent"), seen.get("RPC_TRANSIT_traceparent"));

    let invalid = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
    let seen = headers_seen(&c, &handler, &[("RPC_TRANSIT_traceparent", invalid)]).await;
    assert_eq!(
        seen.get("RPC_TRANSIT_traceparent").map(String::as_str),
        Some(invalid),
        "an invalid traceparent passes unchanged"
    );
    let seen = headers_seen(&c, &handler, &[]).await;
    assert!(
        !seen.contains_key("RPC_TRANSIT_traceparent") && !seen.contains_key("traceparent"),
        "no trace is started: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_interleaved_streams() {
    let (echo, _h, _d) = start_echo().await;
    let sluice = Sluice::start(&config(echo));
    let c = Arc::new(client(sluice.addr));
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..100 {
        let c = c.clone();
        tasks.spawn(async move {
            let (tx, mut rx) = c.open(open("EchoBidi")).await.unwrap().split();
            for i in 0..10 {
                tx.send(msg(s * 100 + i)).await.unwrap();
            }
            tx.close_send().await.unwrap();
            let (_, msgs, end) = drain(&mut rx).await;
            assert_eq!(msgs, (0..10).map(|i| msg(s * 100 + i)).collect::<Vec<_>>());
            assert_eq!(end, Ok(StreamEnd::ok()));
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_cancel_becomes_a_downstream_rst_with_the_cancel_path_extended() {
    let (echo, handler, _d) = start_echo().await;
    let sluice = Sluice::start(&config(echo));
    let c = client(sluice.addr);
    let (tx, mut rx) = c.open(open("EchoBidi")).await.unwrap().split();
    tx.send(msg(0)).await.unwrap();
    loop {
        if let Incoming::Message(_) = rx.recv().await {
            break;
        }
    }
    tx.reset(Reset {
        code: sluice_stream::ResetCode::TTStream(12007),
        message: "user cancel".into(),
        cancel_path: Some("ServiceA".into()),
    })
    .await;
    let r = &first_reset_seen(&handler).await;
    assert_eq!(r.code, 12007);
    assert_eq!(r.message, "user cancel");
    assert_eq!(r.cancel_path.as_deref(), Some("ServiceA,sluice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_deadline_ends_the_stream_upstream_and_resets_it_downstream() {
    let (echo, handler, _d) = start_echo().await;
    let cfg = config(echo).replace(
        "downstream = \"down\"\n[downstreams",
        "downstream = \"down\"\ntimeout_ms = 300\n[downstreams",
    );
    assert!(cfg.contains("timeout_ms = 300"));
    let sluice = Sluice::start(&cfg);
    let c = client(sluice.addr);
    let started = std::time::Instant::now();
    let (tx, mut rx) = c.open(open("EchoBidi")).await.unwrap().split();
    // One echo, then the stream stays open past the route's 300 ms.
    tx.send(msg(0)).await.unwrap();
    let (_, msgs, end) = drain(&mut rx).await;
    assert_eq!(msgs, vec![msg(0)]);
    let err = end
        .expect("an error trailer, not a reset")
        .error
        .expect("error");
    assert_eq!(
        err.code, 12015,
        "deadline, not a downstream reset: {}",
        err.message
    );
    assert!(err.message.contains("deadline exceeded"), "{}", err.message);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let r = &first_reset_seen(&handler).await;
    assert_eq!(r.code, 12015);
    assert_eq!(r.cancel_path.as_deref(), Some("sluice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downstream_that_drops_the_connection_ends_the_upstream_stream_with_an_error() {
    // A fake downstream: reads the stream's Header frame, then closes the connection.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(s);
            });
        }
    });
    let sluice = Sluice::start(&config(addr));
    let c = client(sluice.addr);
    let (tx, mut rx) = c.open(open("EchoBidi")).await.unwrap().split();
    tx.send(msg(0)).await.unwrap();
    let (_, _, end) = drain(&mut rx).await;
    let err = end
        .expect("an error trailer, not a reset")
        .error
        .expect("error");
    assert_eq!(err.code, 12009);
    assert!(err.message.contains("\"down\""), "{}", err.message);
}

/// Sends many 16 KiB messages as fast as the stream lets it, counting them.
struct Flood(Arc<AtomicU64>);

impl StreamingHandler for Flood {
    async fn handle(&self, _req: StreamRequest, stream: ServerStream) {
        let big = Bytes::from(vec![7u8; 16 * 1024]);
        for _ in 0..4000 {
            if stream.send(big.clone()).await.is_err() {
                return;
            }
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        stream.finish(StreamEnd::ok()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_slows_the_sender_and_memory_stays_bounded() {
    let sent = Arc::new(AtomicU64::new(0));
    let echo = Arc::new(sluice_server::echo::EchoHandler::new());
    let (down, _d) = start_streaming(echo, Arc::new(Flood(sent.clone()))).await;
    let sluice = Sluice::start(&config(down));
    let c = client(sluice.addr);
    let (_tx, mut rx) = c.open(open("Flood")).await.unwrap().split();
    // Read nothing for a while: the downstream must stall well short of 4000 x 16 KiB.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stalled_at = sent.load(Ordering::Relaxed);
    assert!(
        stalled_at < 2000,
        "sender was not slowed: {stalled_at} messages sent"
    );
    let rss = std::fs::read_to_string(format!("/proc/{}/status", sluice.pid()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap();
    assert!(
        rss < 64 * 1024,
        "sluice RSS {rss} KiB while a stream is stalled"
    );
    // Now read everything: nothing was lost.
    let (_, msgs, end) = drain(&mut rx).await;
    assert_eq!(msgs.len(), 4000);
    assert_eq!(end, Ok(StreamEnd::ok()));
}

/// What the downstream received on one stream.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    service: String,
    headers: std::collections::BTreeMap<String, String>,
    messages: Vec<Bytes>,
}

/// Replays, per stream, what the captured Kitex server sent, and records what it received.
struct Replay {
    /// By first request payload: the server's Data payloads and its end.
    script: std::collections::HashMap<Bytes, (Vec<Bytes>, StreamEnd)>,
    received: std::sync::Mutex<Vec<Received>>,
}

impl StreamingHandler for Replay {
    async fn handle(&self, req: StreamRequest, mut stream: ServerStream) {
        let first = match stream.recv().await {
            Ok(Some(m)) => m,
            _ => return,
        };
        let mut got = Received {
            method: req.method.clone(),
            service: req.service.clone(),
            headers: req
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(k).into(),
                        String::from_utf8_lossy(v).into(),
                    )
                })
                .collect(),
            messages: vec![first.clone()],
        };
        let Some((data, end)) = self.script.get(&first).cloned() else {
            stream
                .finish(StreamEnd::error(
                    sluice_stream::StatusCode::TTStream(6),
                    "no script",
                ))
                .await;
            return;
        };
        let fails = end.error.is_some();
        for d in data {
            let _ = stream.send(d).await;
        }
        if !fails {
            // Like Kitex's echo handlers: end once the client has half-closed.
            while let Ok(Some(m)) = stream.recv().await {
                got.messages.push(m);
            }
        }
        self.received.lock().unwrap().push(got);
        stream.finish(end).await;
    }
}

fn frames(bytes: &[u8]) -> Vec<StreamFrame> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = FrameDecoder::default().decode(&mut buf).unwrap() {
        out.push(f);
    }
    assert!(buf.is_empty());
    out
}

fn end_of(f: &StreamFrame) -> StreamEnd {
    StreamEnd {
        error: f.exception().unwrap().map(|ex| sluice_stream::ErrorStatus {
            code: sluice_stream::StatusCode::TTStream(ex.kind.0),
            message: ex.message,
        }),
        trailers: Metadata::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kitex_ttstream_captures_replayed_through_sluice() {
    for name in TTSTREAM.iter().filter(|n| !n.contains("cancel")) {
        let cap = Capture::load(name);
        let mut script = std::collections::HashMap::new();
        let mut conns = Vec::new();
        for conn in &cap.conns {
            let c2s = frames(conn.bytes(Dir::C2s));
            let s2c = frames(conn.bytes(Dir::S2c));
            let ids: std::collections::BTreeSet<i32> = c2s.iter().map(|f| f.stream_id).collect();
            for id in ids {
                let first = c2s
                    .iter()
                    .find(|f| f.stream_id == id && f.kind == FrameType::Data)
                    .unwrap()
                    .payload
                    .clone();
                let data: Vec<Bytes> = s2c
                    .iter()
                    .filter(|f| f.stream_id == id && f.kind == FrameType::Data)
                    .map(|f| f.payload.clone())
                    .collect();
                let trailer = s2c
                    .iter()
                    .find(|f| f.stream_id == id && f.kind == FrameType::Trailer)
                    .unwrap();
                script.insert(first, (data, end_of(trailer)));
            }
            conns.push((conn.bytes(Dir::C2s).to_vec(), s2c));
        }
        let replay = Arc::new(Replay {
            script,
            received: Default::default(),
        });
        let echo = Arc::new(sluice_server::echo::EchoHandler::new());
        let (down, _d) = start_streaming(echo, replay.clone()).await;
        let sluice = Sluice::start(&config(down));
        let mut client_frames = Vec::new();
        for (c2s, want) in conns {
            client_frames.extend(frames(&c2s));
            let mut s = TcpStream::connect(sluice.addr).await.unwrap();
            s.write_all(&c2s).await.unwrap();
            let want_ids: std::collections::BTreeSet<i32> =
                want.iter().map(|f| f.stream_id).collect();
            let mut got: Vec<StreamFrame> = Vec::new();
            let mut buf = BytesMut::new();
            let dec = FrameDecoder::default();
            let mut ended = std::collections::BTreeSet::new();
            while ended != want_ids {
                let n = tokio::time::timeout(Duration::from_secs(10), s.read_buf(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(n > 0, "{name}: connection closed early");
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    if f.kind == FrameType::Trailer {
                        ended.insert(f.stream_id);
                    }
                    got.push(f);
                }
            }
            for id in want_ids {
                let w: Vec<&StreamFrame> = want.iter().filter(|f| f.stream_id == id).collect();
                let g: Vec<&StreamFrame> = got.iter().filter(|f| f.stream_id == id).collect();
                let kinds = |v: &[&StreamFrame]| v.iter().map(|f| f.kind).collect::<Vec<_>>();
                assert_eq!(kinds(&g), kinds(&w), "{name} stream {id}: frame sequence");
                for (gf, wf) in g.iter().zip(&w) {
                    assert_eq!(gf.method, wf.method, "{name} stream {id}");
                    assert_eq!(gf.header.flags, wf.header.flags);
                    assert_eq!(gf.header.protocol_id, wf.header.protocol_id);
                    assert_eq!(gf.header.int_kvs.len(), 2, "only keys 9 and 27, as Kitex");
                    if gf.kind == FrameType::Data {
                        assert_eq!(gf.payload, wf.payload, "{name} stream {id}: data");
                    }
                    if gf.kind == FrameType::Trailer {
                        assert_eq!(
                            gf.exception().unwrap(),
                            wf.exception().unwrap(),
                            "{name} stream {id}: exception"
                        );
                    }
                }
            }
        }
        // What the downstream received decodes to the captured client frames.
        let received = replay.received.lock().unwrap().clone();
        let ids: std::collections::BTreeSet<i32> =
            client_frames.iter().map(|f| f.stream_id).collect();
        assert_eq!(
            received.len(),
            ids.len(),
            "{name}: one downstream stream per captured stream"
        );
        for id in ids {
            let header = client_frames
                .iter()
                .find(|f| f.stream_id == id && f.kind == FrameType::Header)
                .unwrap();
            let data: Vec<Bytes> = client_frames
                .iter()
                .filter(|f| f.stream_id == id && f.kind == FrameType::Data)
                .map(|f| f.payload.clone())
                .collect();
            let r = received
                .iter()
                .find(|r| r.messages[0] == data[0])
                .unwrap_or_else(|| panic!("{name} stream {id}: never reached the downstream"));
            assert_eq!(
                r.method.as_bytes(),
                header.method.as_ref(),
                "{name} stream {id}: method"
            );
            assert_eq!(
                Some(r.service.as_str()),
                header.service(),
                "{name} stream {id}: isn"
            );
            for (k, v) in header.header.str_kvs.iter() {
                let k = String::from_utf8_lossy(k).into_owned();
                let v = String::from_utf8_lossy(v).into_owned();
                assert_eq!(
                    r.headers.get(&k),
                    Some(&v),
                    "{name} stream {id}: header key {k}"
                );
            }
            // A failing stream stops reading after its first message, as Kitex's handler did.
            assert_eq!(
                &r.messages[..],
                &data[..r.messages.len()],
                "{name} stream {id}: payloads"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kitex_cancel_capture_cancels_downstream() {
    let cap = Capture::load("ttstream-bidi-cancel");
    let (echo, handler, _d) = start_echo().await;
    let sluice = Sluice::start(&config(echo));
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    let c2s = cap.conns[0].bytes(Dir::C2s).to_vec();
    // Header + Data first, then (after the echo) the RST and the Trailer, as Kitex sent them.
    let first_two: usize = frames(&c2s).iter().take(2).map(|f| f.encoded_len()).sum();
    s.write_all(&c2s[..first_two]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(&c2s[first_two..]).await.unwrap();
    let start = std::time::Instant::now();
    while handler.resets_seen().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the cancel never reached the downstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = &handler.resets_seen()[0];
    assert_eq!(r.code, 12007);
    assert!(
        r.message.starts_with("user code invoking stream RPC"),
        "{}",
        r.message
    );
    assert_eq!(
        r.cancel_path.as_deref(),
        Some("sluice"),
        "an empty path gains this proxy's name"
    );
    let _ = free_port();
}

/// Reads slowly: one message every 2 ms, counting them.
struct SlowReader(Arc<AtomicU64>);

impl StreamingHandler for SlowReader {
    async fn handle(&self, _req: StreamRequest, mut stream: ServerStream) {
        while let Ok(Some(_)) = stream.recv().await {
            self.0.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        stream.finish(StreamEnd::ok()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_downstream_reader_slows_the_caller_and_memory_stays_bounded() {
    let read = Arc::new(AtomicU64::new(0));
    let echo = Arc::new(sluice_server::echo::EchoHandler::new());
    let (down, _d) = start_streaming(echo, Arc::new(SlowReader(read.clone()))).await;
    let sluice = Sluice::start(&config(down));
    let c = client(sluice.addr);
    let (tx, mut rx) = c.open(open("Sink")).await.unwrap().split();
    let big = Bytes::from(vec![9u8; 16 * 1024]);
    // Send as fast as the stream allows for 1.5 s.
    let start = std::time::Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_millis(1500) {
        match tokio::time::timeout(Duration::from_millis(100), tx.send(big.clone())).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) => panic!("stream closed"),
            Err(_) => {} // the send is waiting: backpressure reached the caller
        }
    }
    let rss = rss_kib(sluice.pid());
    // At 2 ms per message the reader took at most ~750 in that time; without backpressure the
    // caller would have pushed tens of thousands of messages.
    assert!(
        sent < read.load(Ordering::Relaxed) + 2000,
        "caller was not slowed: sent {sent}"
    );
    assert!(
        rss < 64 * 1024,
        "sluice RSS {rss} KiB while the downstream reads slowly"
    );
    tx.close_send().await.unwrap();
    let (_, _, end) = drain(&mut rx).await;
    assert_eq!(end, Ok(StreamEnd::ok()));
    assert_eq!(
        read.load(Ordering::Relaxed),
        sent,
        "every message arrived once the reader caught up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downstream_that_never_answers_ends_the_stream_at_the_first_response_timeout() {
    // A downstream that accepts, reads whatever comes, and never sends a byte.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                let dec = FrameDecoder::default();
                while s.read_buf(&mut buf).await.is_ok_and(|n| n > 0) {
                    while let Ok(Some(f)) = dec.decode(&mut buf) {
                        if f.kind == FrameType::Rst {
                            seen.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let cfg = config(addr).replace(
        "[downstreams.down]\n",
        "[downstreams.down]\nfirst_response_timeout_ms = 500\n",
    );
    assert!(cfg.contains("first_response_timeout_ms = 500"));
    let sluice = Sluice::start(&cfg);
    let c = client(sluice.addr);
    let started = std::time::Instant::now();
    let (tx, mut rx) = c.open(open("EchoBidi")).await.unwrap().split();
    tx.send(msg(0)).await.unwrap();
    let (_, msgs, end) = tokio::time::timeout(Duration::from_secs(10), drain(&mut rx))
        .await
        .expect("the caller hears back instead of hanging");
    assert!(msgs.is_empty());
    let err = end
        .expect("an error trailer, not a reset")
        .error
        .expect("error");
    assert_eq!(err.code, 12015, "{}", err.message);
    assert!(err.message.contains("sent no response"), "{}", err.message);
    assert!(started.elapsed() >= Duration::from_millis(500));
    // And the downstream stream was reset.
    let start = std::time::Instant::now();
    while seen.load(Ordering::Relaxed) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no Rst downstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_keeps_sending_is_not_cut_off_by_the_first_response_timeout() {
    // A client stream: the downstream answers only after the last message, long after the
    // first-response timeout, but the caller has been sending all along.
    let (echo, _h, _d) = start_echo().await;
    let cfg = config(echo).replace(
        "[downstreams.down]\n",
        "[downstreams.down]\nfirst_response_timeout_ms = 300\n",
    );
    let sluice = Sluice::start(&cfg);
    let c = client(sluice.addr);
    let (tx, mut rx) = c.open(open("EchoClient")).await.unwrap().split();
    for i in 0..8 {
        tx.send(msg(i)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tx.close_send().await.unwrap();
    let (_, msgs, end) = drain(&mut rx).await;
    assert_eq!(msgs, vec![msg(7)]);
    assert!(end.expect("a trailer").error.is_none());
}
