//! Interop with real third-party gRPC peers: volo-grpc generated `EchoService` clients → the
//! `sluice` binary (a `cluster = "grpc"` listener) → a volo-grpc generated `EchoService` server.
//! Each check also runs client → server directly in the same run, as a control.
//!
//! volo-grpc 0.12 behaviours these tests work around (see the fixtures in `sluice-volo-fixtures`):
//! * any `-bin` metadata key panics volo's server (and client) metadata layer, so only ASCII
//!   keys are used here;
//! * the generated server has no API for custom trailers (a fixture layer appends them), and the
//!   generated client hides the trailers of streaming replies (read below the generated client);
//! * a volo server's request stream reports a client's RST_STREAM(CANCEL) as a clean end of
//!   stream, so cancellation is observed through the server's reply stream being dropped;
//! * the client's default rpc timeout is 1 s, so the tests set their own.
#![allow(dead_code)]
// `volo_grpc::Status` (176 bytes) is the error type of every volo-grpc call.
#![allow(clippy::result_large_err)]

#[path = "proxy/support.rs"]
mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_volo_fixtures::futures::{stream, StreamExt};
use sluice_volo_fixtures::grpc::echo::EchoServiceClient;
use sluice_volo_fixtures::grpc::{
    bidi_with_trailers, call_timeout, grpc_client, grpc_client_with_timeout, grpc_request,
    grpc_request_with, open_bidi, start_grpc_server, with_metainfo_and_backward, Observed,
    BACKWARD_KEY, BIDI_FAIL, BIDI_FAIL_CODE, BIDI_FAIL_MESSAGE, FAIL_CODE, FAIL_MESSAGE,
    FAIL_META_KEY, FAIL_META_VALUE, HOLD, SERVER_HEADER, SERVER_STREAM_REPLIES, SLEEP_PREFIX,
    TRAILER_KEY,
};
use sluice_volo_fixtures::http::HeaderMap;
use sluice_volo_fixtures::tokio_stream::wrappers::ReceiverStream;
use sluice_volo_fixtures::volo_grpc::{Code, Status};
use sluice_volo_fixtures::{HOP_KEY, TENANT_KEY};
use support::Sluice;

/// How long any single step may take before the test fails.
const STEP: Duration = Duration::from_secs(20);

/// A route line matching every gRPC service.
const ANY_SERVICE: &str = r#"service = "*""#;

/// A Sluice gRPC listener with one route (`route` holds the match and timeout lines) to `volo`.
fn sluice(volo: SocketAddr, route: &str) -> Sluice {
    sluice_with(volo, "", route)
}

/// [`sluice`], with `top` (e.g. a `[limits]` table) at the start of the config.
fn sluice_with(volo: SocketAddr, top: &str, route: &str) -> Sluice {
    Sluice::start(&format!(
        r#"
{top}

[[listeners]]
name = "grpc"
address = "127.0.0.1:{{port}}"
cluster = "grpc"

[[routes]]
{route}
downstream = "volo"

[downstreams.volo]
endpoints = ["{volo}"]
"#
    ))
}

/// A fresh volo-grpc echo server on a free loopback port.
async fn volo_server() -> (SocketAddr, Arc<Observed>) {
    start_grpc_server(SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// The two ways to reach the volo server: directly (the control) and through `sluice`.
fn paths(volo: SocketAddr, sluice: &Sluice) -> [(&'static str, SocketAddr); 2] {
    [("direct", volo), ("via sluice", sluice.addr)]
}

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {STEP:?}"))
}

/// Waits until `cond` holds, up to `limit`.
async fn eventually(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header<'a>(h: &'a HeaderMap, key: &str) -> Option<&'a str> {
    h.get(key).and_then(|v| v.to_str().ok())
}

/// `Echo(message)`, expecting success; returns the echoed message.
async fn echo(c: &EchoServiceClient, what: &str, message: &str) -> String {
    within(what, c.echo(grpc_request(message)))
        .await
        .unwrap_or_else(|s| panic!("{what}: Echo failed: {s:?}"))
        .into_inner()
        .message
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_client_server_and_bidi_streaming() {
    let (volo, _) = volo_server().await;
    let sluice = sluice(volo, ANY_SERVICE);
    for (what, addr) in paths(volo, &sluice) {
        let c = grpc_client(addr);

        // Unary.
        for i in 0..3 {
            let msg = format!("{what} unary #{i} {}", "u".repeat(i * 1000));
            assert_eq!(echo(&c, what, &msg).await, msg, "{what}");
        }

        // Client streaming: 5 messages in, their concatenation back.
        let sent: Vec<_> = (0..5).map(|i| grpc_request(&format!("c{i}"))).collect();
        let r = within(what, c.echo_client(stream::iter(sent)))
            .await
            .unwrap_or_else(|s| panic!("{what}: EchoClient failed: {s:?}"));
        assert_eq!(r.get_ref().message, "c0,c1,c2,c3,c4", "{what}");

        // Server streaming: 1 message in, SERVER_STREAM_REPLIES back, in order.
        let r = within(what, c.echo_server(grpc_request("s")))
            .await
            .unwrap_or_else(|s| panic!("{what}: EchoServer failed: {s:?}"));
        let got: Vec<String> = within(what, r.into_inner().collect::<Vec<_>>())
            .await
            .into_iter()
            .map(|m| m.expect("a reply").message.to_string())
            .collect();
        let want: Vec<String> = (0..SERVER_STREAM_REPLIES)
            .map(|i| format!("s#{i}"))
            .collect();
        assert_eq!(got, want, "{what}");

        // Bidi, in lock step: each message is echoed before the next one is sent, so the
        // replies really interleave with the requests; then a half-close ends the call cleanly.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let r = within(what, c.echo_bidi(ReceiverStream::new(rx)))
            .await
            .unwrap_or_else(|s| panic!("{what}: EchoBidi failed: {s:?}"));
        let mut replies = r.into_inner();
        for i in 0..10 {
            let msg = format!("{what} bidi #{i}");
            tx.send(grpc_request(&msg)).await.unwrap();
            let got = within(what, replies.next())
                .await
                .unwrap_or_else(|| panic!("{what}: bidi ended early"))
                .unwrap_or_else(|s| panic!("{what}: bidi failed: {s:?}"));
            assert_eq!(got.message, msg, "{what}");
        }
        drop(tx);
        assert!(
            within(what, replies.next()).await.is_none(),
            "{what}: bidi should end after the half-close"
        );

        // Bidi, all requests up front.
        let sent: Vec<_> = (0..20).map(|i| grpc_request(&format!("b{i}"))).collect();
        let r = within(what, c.echo_bidi(stream::iter(sent))).await.unwrap();
        let got: Vec<String> = within(what, r.into_inner().collect::<Vec<_>>())
            .await
            .into_iter()
            .map(|m| m.expect("a reply").message.to_string())
            .collect();
        let want: Vec<String> = (0..20).map(|i| format!("b{i}")).collect();
        assert_eq!(got, want, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_headers_trailers_and_metainfo_both_ways() {
    let (volo, _) = volo_server().await;
    // A route on the service name (without the package), as Sluice matches gRPC services.
    let sluice = sluice(volo, r#"service = "EchoService""#);
    for (what, addr) in paths(volo, &sluice) {
        let c = grpc_client(addr);

        // Unary: request metadata and metainfo reach the server; the server's response header,
        // trailer and backward metainfo reach the client. The generated unary client merges the
        // trailers into the response metadata.
        let req = grpc_request_with("meta", &[("x-tenant", "t1"), ("x-multi", "a")]);
        let (resp, backward) = within(
            what,
            with_metainfo_and_backward(&[(TENANT_KEY, "acme")], &[(HOP_KEY, "one")], c.echo(req)),
        )
        .await;
        let resp = resp.unwrap_or_else(|s| panic!("{what}: Echo failed: {s:?}"));
        assert_eq!(resp.get_ref().message, "meta", "{what}");
        let h = resp.metadata().headers();
        assert_eq!(header(h, "echo-x-tenant"), Some("t1"), "{what}: {h:?}");
        assert_eq!(header(h, "echo-x-multi"), Some("a"), "{what}: {h:?}");
        assert_eq!(
            header(h, "echo-persist-tenant"),
            Some("acme"),
            "{what}: {h:?}"
        );
        assert_eq!(header(h, "echo-transit-hop"), Some("one"), "{what}: {h:?}");
        assert_eq!(
            header(h, SERVER_HEADER.0),
            Some(SERVER_HEADER.1),
            "{what}: {h:?}"
        );
        assert_eq!(header(h, TRAILER_KEY), Some("Echo"), "{what}: {h:?}");
        assert_eq!(
            backward,
            vec![(BACKWARD_KEY.to_owned(), "meta".len().to_string())],
            "{what}: backward metainfo"
        );

        // Client streaming: the trailer (the message count) comes back too.
        let req = sluice_volo_fixtures::volo_grpc::Request::new(stream::iter(
            (0..5).map(|i| grpc_request(&i.to_string())),
        ));
        let resp = within(what, c.echo_client(req)).await.unwrap();
        assert_eq!(header(resp.metadata().headers(), TRAILER_KEY), Some("5"));

        // Bidi, read below the generated client: headers and trailers apart.
        let sent = stream::iter((0..3).map(|i| grpc_request(&format!("m{i}"))));
        let out = within(what, bidi_with_trailers(&c, &[("x-tenant", "t2")], sent))
            .await
            .unwrap_or_else(|s| panic!("{what}: EchoBidi failed: {s:?}"));
        assert_eq!(out.messages, ["m0", "m1", "m2"], "{what}");
        let h = &out.headers;
        assert_eq!(header(h, "echo-x-tenant"), Some("t2"), "{what}: {h:?}");
        assert_eq!(
            header(h, SERVER_HEADER.0),
            Some(SERVER_HEADER.1),
            "{what}: {h:?}"
        );
        assert_eq!(
            header(h, TRAILER_KEY),
            None,
            "{what}: a trailer in the headers"
        );
        let trailers = out
            .end
            .unwrap_or_else(|s| panic!("{what}: EchoBidi ended with {s:?}"))
            .unwrap_or_else(|| panic!("{what}: EchoBidi reply without trailers"));
        assert_eq!(header(&trailers, "grpc-status"), Some("0"), "{what}");
        assert_eq!(header(&trailers, TRAILER_KEY), Some("EchoBidi"), "{what}");
        assert_eq!(header(&trailers, SERVER_HEADER.0), None, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_status_reaches_the_client() {
    let (volo, _) = volo_server().await;
    let sluice = sluice(volo, ANY_SERVICE);
    for (what, addr) in paths(volo, &sluice) {
        let c = grpc_client(addr);

        // A unary error: a trailers-only response with code, message and custom metadata.
        let status = within(what, c.echo_fail(grpc_request("please fail")))
            .await
            .expect_err("EchoFail succeeded");
        assert_eq!(status.code(), FAIL_CODE, "{what}: {status:?}");
        assert_eq!(status.message(), FAIL_MESSAGE, "{what}: {status:?}");
        assert_eq!(
            header(status.metadata().headers(), FAIL_META_KEY),
            Some(FAIL_META_VALUE),
            "{what}: status metadata {:?}",
            status.metadata()
        );

        // A streaming error after replies: the status comes in the trailers, after the messages.
        let sent = stream::iter(["a", "b", BIDI_FAIL, "never"].map(grpc_request));
        let out = within(what, bidi_with_trailers(&c, &[], sent))
            .await
            .unwrap_or_else(|s| panic!("{what}: EchoBidi failed to start: {s:?}"));
        assert_eq!(out.messages, ["a", "b"], "{what}");
        let status = out.end.expect_err("the bidi call should fail");
        assert_eq!(status.code(), BIDI_FAIL_CODE, "{what}: {status:?}");
        assert_eq!(status.message(), BIDI_FAIL_MESSAGE, "{what}: {status:?}");

        // The same error through the generated streaming client.
        let sent = stream::iter(["x", BIDI_FAIL].map(grpc_request));
        let r = within(what, c.echo_bidi(sent)).await.unwrap();
        let got: Vec<Result<String, Status>> = within(what, r.into_inner().collect::<Vec<_>>())
            .await
            .into_iter()
            .map(|m| m.map(|m| m.message.to_string()))
            .collect();
        assert_eq!(got.len(), 2, "{what}: {got:?}");
        assert_eq!(got[0].as_deref().ok(), Some("x"), "{what}");
        let status = got[1].as_ref().expect_err("an error status last");
        assert_eq!(
            (status.code(), status.message()),
            (BIDI_FAIL_CODE, BIDI_FAIL_MESSAGE),
            "{what}"
        );
    }
}

/// Expects `call` to fail with DEADLINE_EXCEEDED within `limit`.
async fn expect_deadline<T: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    call: impl Future<Output = Result<T, Status>>,
) {
    let start = Instant::now();
    let status = within(what, call)
        .await
        .expect_err("the call should time out");
    let took = start.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{what}: {status:?}");
    assert!(
        took < limit,
        "{what}: DEADLINE_EXCEEDED only after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_deadline_expires_and_cancels_the_server_call() {
    let (volo, observed) = volo_server().await;
    let sluice = sluice(volo, ANY_SERVICE);
    let sleep = format!("{SLEEP_PREFIX}10000");
    for (what, addr) in paths(volo, &sluice) {
        // The client's per-call timeout (sent as `grpc-timeout: 300m`) is shorter than the
        // server's sleep: the client gets DEADLINE_EXCEEDED promptly, and the server's handler
        // is dropped (its HTTP/2 stream was reset).
        let before = observed.cancelled();
        let c = grpc_client(addr);
        let call = c
            .clone()
            .with_callopt(call_timeout(Duration::from_millis(300)));
        expect_deadline(
            what,
            Duration::from_secs(3),
            call.echo(grpc_request(&sleep)),
        )
        .await;
        eventually(what, Duration::from_secs(5), || {
            observed.cancelled() > before
        })
        .await;

        // The server saw the deadline the client sent.
        let resp = within(
            what,
            c.clone()
                .with_callopt(call_timeout(Duration::from_secs(7)))
                .echo(grpc_request("deadline?")),
        )
        .await
        .unwrap();
        let sent = header(resp.metadata().headers(), "echo-grpc-timeout")
            .unwrap_or_else(|| panic!("{what}: the server saw no grpc-timeout"))
            .to_owned();
        let ms = grpc_timeout_ms(&sent);
        assert!(ms > 0 && ms <= 7000, "{what}: grpc-timeout {sent}");

        // The client is still usable afterwards.
        assert_eq!(echo(&c, what, "after").await, "after", "{what}");
    }
}

/// A `grpc-timeout` value in milliseconds.
fn grpc_timeout_ms(v: &str) -> u64 {
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n
        .parse()
        .unwrap_or_else(|_| panic!("bad grpc-timeout {v:?}"));
    match unit {
        "H" => n * 3_600_000,
        "M" => n * 60_000,
        "S" => n * 1000,
        "m" => n,
        "u" => n / 1000,
        "n" => n / 1_000_000,
        _ => panic!("bad grpc-timeout unit in {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_deadlines_apply_to_volo_calls() {
    let (volo, observed) = volo_server().await;
    let sleep = format!("{SLEEP_PREFIX}10000");
    // Sluice enforces a route's deadline itself: the caller gets DEADLINE_EXCEEDED from Sluice
    // and the downstream stream is reset. The downstream also gets the effective deadline
    // (the route's default or cap) as `grpc-timeout`.

    // `timeout_ms`: the deadline Sluice applies when the caller sends none (a volo client built
    // without an rpc timeout sends no `grpc-timeout`).
    let default = sluice(volo, "service = \"*\"\ntimeout_ms = 400");
    let what = "route timeout_ms";
    let c = grpc_client_with_timeout(default.addr, None);
    let before = observed.cancelled();
    expect_deadline(what, Duration::from_secs(3), c.echo(grpc_request(&sleep))).await;
    eventually(what, Duration::from_secs(5), || {
        observed.cancelled() > before
    })
    .await;
    assert_eq!(echo(&c, what, "after").await, "after", "{what}");
    let resp = within(what, c.echo(grpc_request("deadline?")))
        .await
        .unwrap();
    let sent = header(resp.metadata().headers(), "echo-grpc-timeout")
        .unwrap_or_else(|| panic!("{what}: the server saw no grpc-timeout"));
    assert!(grpc_timeout_ms(sent) <= 400, "{what}: grpc-timeout {sent}");

    // `max_timeout_ms`: caps a longer deadline from the caller (30 s here).
    let capped = sluice(volo, "service = \"*\"\nmax_timeout_ms = 400");
    let what = "route max_timeout_ms";
    let c = grpc_client_with_timeout(capped.addr, Some(Duration::from_secs(30)));
    let before = observed.cancelled();
    expect_deadline(what, Duration::from_secs(3), c.echo(grpc_request(&sleep))).await;
    eventually(what, Duration::from_secs(5), || {
        observed.cancelled() > before
    })
    .await;
    let resp = within(what, c.echo(grpc_request("deadline?")))
        .await
        .unwrap();
    let sent = header(resp.metadata().headers(), "echo-grpc-timeout")
        .unwrap_or_else(|| panic!("{what}: the server saw no grpc-timeout"));
    assert!(
        grpc_timeout_ms(sent) <= 400,
        "{what}: the cap reaches the downstream: grpc-timeout {sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cancel_of_a_bidi_stream_reaches_the_server() {
    let (volo, observed) = volo_server().await;
    let sluice = sluice(volo, ANY_SERVICE);
    for (what, addr) in paths(volo, &sluice) {
        let c = grpc_client(addr);

        // 1. The client drops a bidi call mid-way (reply stream and request sender) while the
        // server holds it open (HOLD). volo's client (hyper) keeps the HTTP/2 stream while its
        // request body is still open, so it half-closes the request side first and then resets
        // the stream (RST_STREAM CANCEL) because the reply is no longer wanted: the server's
        // request stream ends cleanly, and its reply stream is dropped.
        let before = observed.cancelled();
        let ends_before = observed.bidi_ends().len();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let r = within(what, c.echo_bidi(ReceiverStream::new(rx)))
            .await
            .unwrap_or_else(|s| panic!("{what}: EchoBidi failed: {s:?}"));
        let mut replies = r.into_inner();
        for msg in [HOLD, "mid-way"] {
            tx.send(grpc_request(msg)).await.unwrap();
            let got = within(what, replies.next()).await.unwrap().unwrap();
            assert_eq!(got.message, msg, "{what}");
        }
        drop(replies);
        drop(tx);
        eventually(what, Duration::from_secs(5), || {
            observed.cancelled() > before
        })
        .await;
        eventually(what, Duration::from_secs(5), || {
            observed.bidi_ends().len() > ends_before
        })
        .await;
        assert_eq!(observed.bidi_ends()[ends_before], "eof", "{what}");

        // 2. The client aborts its request stream with an error mid-way, the way a volo client
        // resets a stream whose request side is still open (hyper sends RST_STREAM). The
        // server's reply stream is dropped. Its request stream reports the reset as an error
        // directly; through Sluice, which resets the downstream stream with CANCEL, volo's
        // server reports it as a clean end (volo maps a CANCEL on a request stream to "eof").
        let before = observed.cancelled();
        let ends_before = observed.bidi_ends().len();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<_, Status>>(4);
        let (_, mut replies) = within(what, open_bidi(&c, &[], ReceiverStream::new(rx)))
            .await
            .unwrap_or_else(|s| panic!("{what}: EchoBidi failed: {s:?}"));
        tx.send(Ok(grpc_request(HOLD))).await.unwrap();
        let got = within(what, replies.next()).await.unwrap().unwrap();
        assert_eq!(got.message, HOLD, "{what}");
        tx.send(Err(Status::cancelled("the client gave up")))
            .await
            .unwrap();
        eventually(what, Duration::from_secs(5), || {
            observed.cancelled() > before
        })
        .await;
        eventually(what, Duration::from_secs(5), || {
            observed.bidi_ends().len() > ends_before
        })
        .await;
        let end = observed.bidi_ends()[ends_before].clone();
        if what == "direct" {
            assert!(end.starts_with("error: "), "{what}: {end}");
        } else {
            assert!(end == "eof" || end.starts_with("error: "), "{what}: {end}");
        }
        // The client's own reply stream fails rather than ending cleanly.
        let last = within(what, replies.next()).await;
        assert!(matches!(last, Some(Err(_))), "{what}: {last:?}");

        // The connection is still usable.
        assert_eq!(
            echo(&c, what, "after cancel").await,
            "after cancel",
            "{what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mib_unary_message_is_echoed_intact() {
    // volo-grpc 0.12 has no maximum message size to raise, on either side: its decoder takes
    // whatever length the 5-byte prefix announces. Sluice's gRPC limit is
    // `[limits] max_frame_size`, 16 MiB by default.
    let (volo, _) = volo_server().await;
    let sluice = sluice(volo, ANY_SERVICE);
    // 4 MiB of varied text, so a shifted or dropped chunk shows.
    let big: String = (0..4 * 1024 * 1024u32)
        .map(|i| char::from(b'a' + ((i * 7 + i / 4099) % 26) as u8))
        .collect();
    for (what, addr) in paths(volo, &sluice) {
        let c = grpc_client(addr);
        let got = echo(&c, what, &big).await;
        assert_eq!(got.len(), big.len(), "{what}");
        assert!(got == big, "{what}: the 4 MiB message came back altered");
    }

    // With a 1 MiB limit, Sluice refuses the same message with RESOURCE_EXHAUSTED, and the
    // client's connection stays usable.
    let what = "1 MiB limit";
    let small = sluice_with(volo, "[limits]\nmax_frame_size = 1048576", ANY_SERVICE);
    let c = grpc_client(small.addr);
    let status = within(what, c.echo(grpc_request(&big)))
        .await
        .expect_err("a message over the limit should fail");
    assert_eq!(status.code(), Code::ResourceExhausted, "{what}: {status:?}");
    assert!(status.message().contains("1048576"), "{what}: {status:?}");
    assert_eq!(echo(&c, what, "small").await, "small", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_bidi_streams() {
    let (volo, _) = volo_server().await;
    let sluice = sluice(volo, ANY_SERVICE);
    for (what, addr) in paths(volo, &sluice) {
        let c = grpc_client(addr);
        let mut tasks = tokio::task::JoinSet::new();
        for call in 0..100 {
            let c = c.clone();
            tasks.spawn(async move {
                let sent: Vec<String> = (0..5).map(|i| format!("call {call} msg {i}")).collect();
                let requests = stream::iter(sent.clone().into_iter().map(|m| grpc_request(&m)));
                let r = c.echo_bidi(requests).await?;
                let got: Vec<String> = r
                    .into_inner()
                    .map(|m| m.map(|m| m.message.to_string()))
                    .collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .collect::<Result<_, Status>>()?;
                assert_eq!(got, sent, "call {call}");
                Ok::<_, Status>(())
            });
        }
        let mut ok = 0;
        while let Some(r) = within(what, tasks.join_next()).await {
            r.unwrap()
                .unwrap_or_else(|s| panic!("{what}: a concurrent bidi call failed: {s:?}"));
            ok += 1;
        }
        assert_eq!(ok, 100, "{what}");
    }
}
