//! The server driver and the client against each other over loopback TCP.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_http2::{GrpcClient, GrpcClientConfig, GrpcClientError, GrpcServerConfig, OpenRequest};
use sluice_stream::{ClientRecv, ClientStream, Incoming, Metadata, Reset, StreamEnd};
use support::{grpc_fields, within, Report, TestServer, FAIL_MESSAGE};

fn client(server: &TestServer) -> GrpcClient {
    GrpcClient::new(GrpcClientConfig::new(vec![server.addr]))
}

fn request(method: &str) -> OpenRequest {
    OpenRequest {
        path: format!("/echo.EchoService/{method}"),
        content_type: "application/grpc".into(),
        authority: "kxserver".into(),
        headers: Metadata::new(),
        deadline: None,
    }
}

async fn next(recv: &mut ClientRecv) -> Incoming {
    within("receiving from the stream", recv.recv()).await
}

async fn expect_end(recv: &mut ClientRecv) -> StreamEnd {
    match next(recv).await {
        Incoming::End(end) => end,
        other => panic!("expected the end, got {other:?}"),
    }
}

async fn open(client: &GrpcClient, req: &OpenRequest) -> ClientStream {
    within("opening a stream", client.open(req)).await.unwrap()
}

#[tokio::test]
async fn unary_echo() {
    let mut server = TestServer::start().await;
    let client = client(&server);
    let (send, mut recv) = open(&client, &request("Echo")).await.split();
    send.send(Bytes::from_static(b"\x0a\x05hello"))
        .await
        .unwrap();
    send.close_send().await.unwrap();

    let req = server.request().await;
    assert_eq!(req.service, "EchoService");
    assert_eq!(req.method, "Echo");
    assert_eq!(
        grpc_fields(&req),
        ("/echo.EchoService/Echo", "application/grpc", "kxserver")
    );
    assert!(req.deadline.is_none());
    assert!(
        req.headers.get("te").is_none(),
        "hop-by-hop headers stay behind"
    );
    assert!(req.headers.get("content-type").is_none());

    match next(&mut recv).await {
        Incoming::Headers(md) => assert!(md.get("content-type").is_none(), "{md:?}"),
        other => panic!("expected headers, got {other:?}"),
    }
    assert_eq!(
        next(&mut recv).await,
        Incoming::Message(Bytes::from_static(b"\x0a\x05hello"))
    );
    let end = expect_end(&mut recv).await;
    assert_eq!(end.error, None);
    assert_eq!(end.trailers.get_str("x-trailer"), Some("t"));
}

#[tokio::test]
async fn bidi_echo_interleaves() {
    let server = TestServer::start().await;
    let client = client(&server);
    let (send, mut recv) = open(&client, &request("Echo")).await.split();
    assert!(matches!(next(&mut recv).await, Incoming::Headers(_)));
    for i in 0..5u8 {
        // Each echo arrives before the next message is sent: the call really streams.
        let msg = Bytes::from(vec![i; 100 * usize::from(i)]);
        send.send(msg.clone()).await.unwrap();
        assert_eq!(next(&mut recv).await, Incoming::Message(msg));
    }
    send.close_send().await.unwrap();
    assert_eq!(expect_end(&mut recv).await.error, None);
}

#[tokio::test]
async fn large_messages_cross_many_frames_and_windows() {
    let server = TestServer::start().await;
    let client = client(&server);
    let (send, mut recv) = open(&client, &request("Echo")).await.split();
    let big = Bytes::from(
        (0..3 * 1024 * 1024)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let sender = tokio::spawn({
        let big = big.clone();
        async move {
            for _ in 0..3 {
                send.send(big.clone()).await.unwrap();
            }
            send.close_send().await.unwrap();
        }
    });
    assert!(matches!(next(&mut recv).await, Incoming::Headers(_)));
    for _ in 0..3 {
        assert_eq!(next(&mut recv).await, Incoming::Message(big.clone()));
    }
    assert_eq!(expect_end(&mut recv).await.error, None);
    sender.await.unwrap();
}

#[tokio::test]
async fn a_reply_larger_than_the_queue_limit_does_not_stall_the_connection() {
    // A client whose windows let the server queue most of a 4 MiB reply at once: the server's
    // queue goes far past its limit while the client's WINDOW_UPDATEs and next requests
    // arrive, and they must still be read.
    let server = TestServer::start().await;
    let mut config = GrpcClientConfig::new(vec![server.addr]);
    config.initial_stream_window = 3 * 1024 * 1024;
    config.initial_connection_window = 3 * 1024 * 1024;
    let client = GrpcClient::new(config);
    let big = Bytes::from(vec![7u8; 4 * 1024 * 1024 - 64]);
    for round in 0..20 {
        let (send, mut recv) = open(&client, &request("Echo")).await.split();
        send.send(big.clone()).await.unwrap();
        send.close_send().await.unwrap();
        assert!(
            matches!(next(&mut recv).await, Incoming::Headers(_)),
            "round {round}"
        );
        assert_eq!(next(&mut recv).await, Incoming::Message(big.clone()));
        assert_eq!(expect_end(&mut recv).await.error, None);
    }
    assert_eq!(server.conns.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_share_one_connection() {
    let server = TestServer::start().await;
    let client = client(&server);
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let (send, mut recv) = client.open(&request("Echo")).await.unwrap().split();
            let msg = Bytes::from(i.to_be_bytes().to_vec());
            send.send(msg.clone()).await.unwrap();
            send.send(msg.clone()).await.unwrap();
            send.close_send().await.unwrap();
            assert!(matches!(recv.recv().await, Incoming::Headers(_)));
            assert_eq!(recv.recv().await, Incoming::Message(msg.clone()));
            assert_eq!(recv.recv().await, Incoming::Message(msg));
            assert!(matches!(
                recv.recv().await,
                Incoming::End(StreamEnd { error: None, .. })
            ));
        }));
    }
    for t in tasks {
        within("a concurrent stream", t).await.unwrap();
    }
    assert_eq!(server.conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn trailers_only_error_with_biz_trailers() {
    let server = TestServer::start().await;
    let client = client(&server);
    let (send, mut recv) = open(&client, &request("FailFirst")).await.split();
    send.close_send().await.unwrap();
    // No headers: the error comes Trailers-Only.
    let end = expect_end(&mut recv).await;
    let err = end.error.expect("an error status");
    assert_eq!(err.code, 13);
    assert_eq!(err.message, FAIL_MESSAGE, "grpc-message is decoded back");
    assert_eq!(end.trailers.get_str("biz-status"), Some("10001"));
    assert_eq!(end.trailers.get_str("biz-extra"), Some("{\"k\":\"v\"}"));
    assert!(end.trailers.get("grpc-status").is_none());
    assert!(end.trailers.get("grpc-message").is_none());
    assert!(end.trailers.get("content-type").is_none());
}

#[tokio::test]
async fn error_after_messages() {
    let server = TestServer::start().await;
    let client = client(&server);
    let (send, mut recv) = open(&client, &request("FailAfter")).await.split();
    send.send(Bytes::from_static(b"one")).await.unwrap();
    send.send(Bytes::from_static(b"two")).await.unwrap();
    send.close_send().await.unwrap();
    assert!(matches!(next(&mut recv).await, Incoming::Headers(_)));
    assert_eq!(
        next(&mut recv).await,
        Incoming::Message(Bytes::from_static(b"one"))
    );
    assert_eq!(
        next(&mut recv).await,
        Incoming::Message(Bytes::from_static(b"two"))
    );
    let end = expect_end(&mut recv).await;
    let err = end.error.expect("an error status");
    assert_eq!(
        (err.code, err.message.as_str()),
        (sluice_stream::StatusCode::Grpc(13), FAIL_MESSAGE)
    );
    assert_eq!(end.trailers.get_str("biz-status"), Some("10001"));
    assert_eq!(end.trailers.get_str("biz-extra"), Some("{\"k\":\"v\"}"));
}

#[tokio::test]
async fn bin_metadata_passes_untouched_both_ways() {
    let mut server = TestServer::start().await;
    let client = client(&server);
    let mut req = request("Echo");
    // Unpadded and padded base64, and a value that is not base64 at all: all pass as sent.
    req.headers.push("trace-bin", "AAECAwQ");
    req.headers.push("x-user", "alice");
    req.headers.push("grpc-status-details-bin", "CAMSBGJvb20=");
    req.headers.push("odd-bin", "not base64!");
    req.headers.push("x-user", "bob");
    let (send, mut recv) = open(&client, &req).await.split();
    send.close_send().await.unwrap();

    let seen = server.request().await;
    let got: Vec<(&[u8], &[u8])> = seen
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with(b"grpc-status"))
        .collect();
    // Metadata arrives exactly in the order it was sent, repeated names included.
    assert_eq!(
        got,
        vec![
            (&b"trace-bin"[..], &b"AAECAwQ"[..]),
            (b"x-user", b"alice"),
            (b"odd-bin", b"not base64!"),
            (b"x-user", b"bob"),
        ]
    );
    assert_eq!(
        seen.headers.get_str("grpc-status-details-bin"),
        Some("CAMSBGJvb20=")
    );

    let Incoming::Headers(md) = next(&mut recv).await else {
        panic!("expected headers")
    };
    assert_eq!(md.get_str("trace-bin"), Some("AAECAwQ"));
    assert_eq!(md.get_str("odd-bin"), Some("not base64!"));
    assert_eq!(md.get_str("grpc-status-details-bin"), Some("CAMSBGJvb20="));
    let end = expect_end(&mut recv).await;
    assert_eq!(end.trailers.get_str("trace-bin"), Some("AAECAwQ"));
    assert_eq!(end.trailers.get_str("odd-bin"), Some("not base64!"));
}

#[tokio::test]
async fn deadline_travels_as_grpc_timeout() {
    let mut server = TestServer::start().await;
    let client = client(&server);
    let mut req = request("Deadline");
    req.deadline = Some(Instant::now() + Duration::from_secs(5));
    let (send, mut recv) = open(&client, &req).await.split();
    send.close_send().await.unwrap();
    let seen = server.request().await;
    assert!(seen.deadline.is_some());
    assert!(
        seen.headers.get("grpc-timeout").is_none(),
        "the deadline is not metadata"
    );
    let Report::DeadlineLeft(Some(left)) = server.report().await else {
        panic!("expected the deadline report")
    };
    assert!(left <= Duration::from_secs(5), "{left:?}");
    assert!(left > Duration::from_millis(4500), "{left:?}");
    assert_eq!(expect_end(&mut recv).await.error, None);
}

#[tokio::test]
async fn client_enforces_the_deadline() {
    let server = TestServer::start().await;
    let client = client(&server);
    let mut req = request("Stall");
    req.deadline = Some(Instant::now() + Duration::from_millis(200));
    let (_send, mut recv) = open(&client, &req).await.split();
    let started = Instant::now();
    loop {
        match next(&mut recv).await {
            Incoming::End(end) => {
                assert_eq!(
                    end.error.map(|e| e.code),
                    Some(sluice_stream::StatusCode::Grpc(4)),
                    "DEADLINE_EXCEEDED"
                );
                break;
            }
            Incoming::Headers(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn client_reset_reaches_the_handler() {
    let mut server = TestServer::start().await;
    let client = client(&server);
    let (send, _recv) = open(&client, &request("RecvReport")).await.split();
    send.send(Bytes::from_static(b"first")).await.unwrap();
    server.request().await;
    let Report::Recv(Ok(Some(m))) = server.report().await else {
        panic!("expected the first message")
    };
    assert_eq!(&m[..], b"first");
    send.reset(Reset {
        code: sluice_stream::ResetCode::Http2(8),
        message: "cancelled by the caller".into(),
        cancel_path: None,
    })
    .await;
    match server.report().await {
        Report::Recv(Err(reset)) => assert_eq!(reset.code, 8, "RST_STREAM(CANCEL): {reset:?}"),
        other => panic!("expected a reset, got {other:?}"),
    }
}

#[tokio::test]
async fn dropping_the_client_stream_cancels_it() {
    let mut server = TestServer::start().await;
    let client = client(&server);
    let stream = open(&client, &request("RecvReport")).await;
    server.request().await;
    drop(stream);
    match server.report().await {
        Report::Recv(Err(reset)) => assert_eq!(reset.code, 8, "{reset:?}"),
        other => panic!("expected a reset, got {other:?}"),
    }
}

#[tokio::test]
async fn dropping_only_the_sender_half_closes() {
    let mut server = TestServer::start().await;
    let client = client(&server);
    let (send, mut recv) = open(&client, &request("RecvReport")).await.split();
    server.request().await;
    drop(send);
    assert!(matches!(server.report().await, Report::Recv(Ok(None))));
    assert_eq!(expect_end(&mut recv).await.error, None);
}

#[tokio::test]
async fn handler_without_status_ends_with_internal() {
    let server = TestServer::start().await;
    let client = client(&server);
    let (send, mut recv) = open(&client, &request("Drop")).await.split();
    let _ = send.close_send().await;
    let end = expect_end(&mut recv).await;
    let err = end.error.expect("an error");
    assert_eq!(err.code, 13);
    assert_eq!(err.message, "stream handler ended without a status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handler_backpressures_the_client() {
    // A small stream window keeps the bound tight: what can be in flight is the client's
    // channel, one message in each pump, the window, and the handler's channel.
    let config = GrpcServerConfig::default().with_initial_stream_window(64 * 1024);
    let server = TestServer::start_with(config).await;
    let client = client(&server);
    let (send, _recv) = open(&client, &request("Stall")).await.split();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let sender = tokio::spawn(async move {
        let msg = Bytes::from(vec![7u8; 64 * 1024]);
        for _ in 0..160 {
            // 10 MiB in all.
            if send.send(msg.clone()).await.is_err() {
                return;
            }
            counter.fetch_add(msg.len(), Ordering::SeqCst);
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let first = sent.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = sent.load(Ordering::SeqCst);
    assert_eq!(first, second, "the sender is stalled");
    assert!(
        second < 2560 * 1024,
        "at most ~2.5 MiB accepted, got {second}"
    );
    assert!(
        second >= 1024 * 1024,
        "the channels fill before the stall, got {second}"
    );
    assert!(!sender.is_finished());
    sender.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_reader_backpressures_the_handler() {
    let mut config = GrpcClientConfig::new(vec![]);
    config.initial_stream_window = 64 * 1024;
    let mut server = TestServer::start().await;
    config.endpoints = vec![server.addr];
    let client = GrpcClient::new(config);
    let (_send, _recv) = open(&client, &request("Flood")).await.split();
    server.request().await;
    let mut sent = 0;
    // Take reports until none has come for 500 ms.
    while let Ok(Some(report)) =
        tokio::time::timeout(Duration::from_millis(500), server.reports.recv()).await
    {
        if let Report::Sent(n) = report {
            sent = n;
        }
    }
    // The same stages as the other way round: channel, pump, window, pump, channel.
    assert!(sent < 2560 * 1024, "at most ~2.5 MiB sent, got {sent}");
    assert!(
        sent >= 1024 * 1024,
        "the channels fill before the stall, got {sent}"
    );
}

#[tokio::test]
async fn two_hundred_half_closes_do_not_trip_the_empty_frame_limit() {
    let server = TestServer::start().await;
    let client = client(&server);
    for i in 0..200u32 {
        let (send, mut recv) = open(&client, &request("Echo")).await.split();
        assert!(matches!(next(&mut recv).await, Incoming::Headers(_)));
        let msg = Bytes::from(i.to_be_bytes().to_vec());
        send.send(msg.clone()).await.unwrap();
        assert_eq!(next(&mut recv).await, Incoming::Message(msg));
        // Nothing is queued behind this half-close: it goes out as an empty END_STREAM frame.
        send.close_send().await.unwrap();
        assert_eq!(expect_end(&mut recv).await.error, None, "stream {i}");
    }
    assert_eq!(
        server.conns.load(Ordering::SeqCst),
        1,
        "no GOAWAY, no redial"
    );
}

#[tokio::test]
async fn malformed_path_and_content_type_get_a_status() {
    let server = TestServer::start().await;
    let client = client(&server);

    let mut req = request("Echo");
    req.path = "/a/b/c".into();
    let (send, mut recv) = open(&client, &req).await.split();
    let _ = send.close_send().await;
    let err = expect_end(&mut recv).await.error.expect("an error");
    assert_eq!(err.code, 13);
    assert!(
        err.message.starts_with("malformed method name"),
        "{}",
        err.message
    );

    let mut req = request("Echo");
    req.content_type = "application/json".into();
    let (send, mut recv) = open(&client, &req).await.split();
    let _ = send.close_send().await;
    let err = expect_end(&mut recv).await.error.expect("an error");
    // HTTP 415 maps to UNKNOWN (kitex-wire.md 5.4), and the message says why.
    assert_eq!(err.code, 2, "{}", err.message);
    assert!(err.message.contains("415"), "{}", err.message);
    assert!(err.message.contains("content-type"), "{}", err.message);
}

#[tokio::test]
async fn graceful_shutdown_lets_a_stream_finish() {
    let mut server = TestServer::start().await;
    let client = client(&server);
    let (send, mut recv) = open(&client, &request("Slow")).await.split();
    send.send(Bytes::from_static(b"in flight")).await.unwrap();
    server.request().await;
    server.shutdown();
    send.close_send().await.unwrap();
    assert!(matches!(next(&mut recv).await, Incoming::Headers(_)));
    assert_eq!(
        next(&mut recv).await,
        Incoming::Message(Bytes::from_static(b"in flight"))
    );
    assert_eq!(expect_end(&mut recv).await.error, None);
    let result = within("the connection to close", server.results.recv()).await;
    assert_eq!(result, Some(Ok(())));
}

#[tokio::test]
async fn client_errors_are_typed() {
    let client = GrpcClient::new(GrpcClientConfig::new(vec![]));
    assert!(matches!(
        client.open(&request("Echo")).await,
        Err(GrpcClientError::NoEndpoints)
    ));

    // A port nothing listens on.
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = GrpcClient::new(GrpcClientConfig::new(vec![unused]));
    match client.open(&request("Echo")).await {
        Err(GrpcClientError::Connect { addr, .. }) => assert_eq!(addr, unused),
        other => panic!("expected a connect error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_endpoint_is_skipped() {
    let server = TestServer::start().await;
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = GrpcClient::new(GrpcClientConfig::new(vec![unused, server.addr]));
    for _ in 0..4 {
        let (send, mut recv) = open(&client, &request("Echo")).await.split();
        send.close_send().await.unwrap();
        assert!(matches!(next(&mut recv).await, Incoming::Headers(_)));
        assert_eq!(expect_end(&mut recv).await.error, None);
    }
}

#[tokio::test]
async fn oversized_message_ends_with_resource_exhausted() {
    let config = GrpcServerConfig::default().with_max_message_size(1024);
    let mut server = TestServer::start_with(config).await;
    let client = client(&server);
    let (send, mut recv) = open(&client, &request("RecvReport")).await.split();
    send.send(Bytes::from(vec![1u8; 1024])).await.unwrap();
    send.send(Bytes::from(vec![2u8; 1025])).await.unwrap();
    server.request().await;
    assert!(matches!(server.report().await, Report::Recv(Ok(Some(m))) if m.len() == 1024));
    // The handler learns that its input broke off...
    assert!(matches!(server.report().await, Report::Recv(Err(_))));
    // ...and the client gets the status the driver ended the stream with.
    let err = expect_end(&mut recv).await.error.expect("an error");
    assert_eq!(err.code, 8, "{}", err.message);
    assert!(err.message.contains("1025"), "{}", err.message);
}

/// The server crate spawns `serve_connection` on the runtime, so it must be `Send` for the
/// I/O type the listener hands over.
#[allow(dead_code)]
fn serve_connection_is_send<H: sluice_stream::StreamingHandler>(
    io: sluice_io::PrefixedIo<tokio::net::TcpStream>,
    handler: Arc<H>,
    config: &GrpcServerConfig,
) {
    fn is_send<T: Send>(_: T) {}
    let peer = "127.0.0.1:1".parse().unwrap();
    is_send(sluice_http2::serve_connection(
        io,
        peer,
        config,
        handler,
        std::future::pending::<()>(),
    ));
}

/// Two Sluice peers with large messages in flight both ways on many streams: each side's
/// queue fills with DATA the other's windows allowed, and neither may stop reading because of
/// it (a side that stops reading while its own writes wait starves the other of WINDOW_UPDATEs
/// and of reads, and both wait for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_large_unary_calls_do_not_deadlock() {
    let server = TestServer::start().await;
    let client = client(&server);
    let msg = Bytes::from(vec![0x5au8; 1024 * 1024]);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let client = client.clone();
        let msg = msg.clone();
        calls.spawn(async move {
            for _ in 0..3 {
                let (send, mut recv) = client.open(&request("Echo")).await.unwrap().split();
                send.send(msg.clone()).await.unwrap();
                send.close_send().await.unwrap();
                assert!(matches!(recv.recv().await, Incoming::Headers(_)));
                assert_eq!(recv.recv().await, Incoming::Message(msg.clone()));
                assert!(matches!(
                    recv.recv().await,
                    Incoming::End(StreamEnd { error: None, .. })
                ));
            }
        });
    }
    let all = async {
        while let Some(r) = calls.join_next().await {
            r.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("600 calls of 1 MiB each way within 30 s (the connection deadlocked)");
    assert_eq!(server.conns.load(Ordering::SeqCst), 1);
}

/// Streams the caller resets leave nothing behind: every handler ends, and the connection
/// still serves (its per-stream state is gone, or the next calls would find stale entries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reset_by_the_caller_leave_no_handler_behind() {
    let mut server = TestServer::start().await;
    let client = client(&server);
    for i in 0..600u32 {
        let (send, mut recv) = open(&client, &request("Echo")).await.split();
        let msg = Bytes::from(i.to_be_bytes().to_vec());
        send.send(msg.clone()).await.unwrap();
        if i % 2 == 0 {
            assert!(matches!(next(&mut recv).await, Incoming::Headers(_)));
            assert_eq!(next(&mut recv).await, Incoming::Message(msg));
        }
        send.reset(Reset {
            code: sluice_stream::ResetCode::Http2(8),
            message: "cancelled".into(),
            cancel_path: None,
        })
        .await;
    }
    while server.reports.try_recv().is_ok() {}
    let live = within("every handler to end", async {
        loop {
            let n = server.live.load(Ordering::SeqCst);
            if n == 0 {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(live, 0);
    assert_eq!(server.conns.load(Ordering::SeqCst), 1);
}

/// A stream reset by its user before the connection task has taken it in (a forwarder whose
/// caller resets right after the downstream stream was opened) leaves nothing on the client's
/// connection: once the client is dropped, the idle connection closes.
#[tokio::test]
async fn a_stream_reset_right_after_opening_leaves_nothing_on_the_client_connection() {
    let mut server = TestServer::start().await;
    let client = client(&server);
    // The receiving halves are kept, as a forwarder keeps them spliced into its caller's
    // stream: only the reset says the stream is over.
    let mut kept = Vec::new();
    for _ in 0..3 {
        let (send, recv) = open(&client, &request("Echo")).await.split();
        // Pushed at once, before the connection task runs again.
        send.push(sluice_stream::Event::Reset(Reset {
            code: sluice_stream::ResetCode::Http2(8),
            message: "caller went away".into(),
            cancel_path: None,
        }))
        .unwrap();
        kept.push(recv);
    }
    // The connection still works, and closes once the client goes.
    let (send, mut recv) = open(&client, &request("Echo")).await.split();
    send.close_send().await.unwrap();
    assert!(matches!(next(&mut recv).await, Incoming::Headers(_)));
    assert_eq!(expect_end(&mut recv).await.error, None);
    drop((send, recv));
    drop(client);
    let result = within("the client's connection to close", server.results.recv()).await;
    assert_eq!(result, Some(Ok(())));
}

/// Handler tasks belong to their connection: dropping `serve_connection`'s future (a drain
/// deadline passed) aborts a handler that would never return.
#[tokio::test]
async fn dropping_the_serve_future_aborts_handlers_that_never_return() {
    use sluice_http2::serve_connection;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let live = Arc::new(AtomicUsize::new(0));
    let (reports, _reports_rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = Arc::new(support::Scripted {
        reports,
        live: live.clone(),
    });
    let serving = tokio::spawn(async move {
        let (tcp, peer) = listener.accept().await.unwrap();
        let config = GrpcServerConfig::default();
        let _ = serve_connection(tcp, peer, &config, handler, std::future::pending()).await;
    });
    let client = GrpcClient::new(GrpcClientConfig::new(vec![addr]));
    let stream = open(&client, &request("Forever")).await;
    within("the handler to start", async {
        while live.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    serving.abort();
    let _ = serving.await;
    within("the handler to be aborted", async {
        while live.load(Ordering::SeqCst) != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    drop(stream);
}

/// A client's connections belong to it: dropping the last clone ends them, even with a stream
/// still open (which then fails instead of keeping a connection nobody owns).
#[tokio::test]
async fn dropping_the_last_client_ends_its_connections() {
    let mut server = TestServer::start().await;
    let client = client(&server);
    let (send, mut recv) = open(&client, &request("Stall")).await.split();
    server.request().await;
    let other = client.clone();
    drop(client);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), server.results.recv())
            .await
            .is_err(),
        "a clone still owns the connection"
    );
    drop(other);
    within("the connection to close", server.results.recv()).await;
    assert!(!matches!(
        next(&mut recv).await,
        Incoming::Message(_) | Incoming::Headers(_)
    ));
    drop(send);
}
