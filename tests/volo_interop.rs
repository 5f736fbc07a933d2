//! Interop with real third-party peers: volo-thrift generated `EchoService` clients → the
//! `sluice` binary → a volo-thrift generated `EchoService` server, over TTHeader, Framed and
//! Buffered on both sides of the proxy, plus metainfo, application errors and routing on the
//! `isn` key volo sends.
#![allow(dead_code)]

#[path = "proxy/support.rs"]
mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use sluice_volo_fixtures::echo::EchoServiceClient;
use sluice_volo_fixtures::volo_thrift::{ApplicationExceptionKind, ClientError};
use sluice_volo_fixtures::{
    client, request, start_server, with_metainfo, with_persistent, FAIL_MESSAGE, HOP_KEY,
    TENANT_KEY, TRACEPARENT_KEY, TRANSPORT_QUERY,
};
use support::Sluice;

/// The transports volo clients speak (upstream of Sluice).
const TRANSPORTS: [&str; 3] = ["ttheader", "framed", "buffered"];

/// The transports Sluice speaks downstream, to the volo server: volo's three, plus TTHeader
/// without the inner Framed length (Kitex's plain TTHeader), which volo servers accept too.
const DOWNSTREAMS: [&str; 4] = ["ttheader", "ttheader-unframed", "framed", "buffered"];

/// Echo calls per (upstream, downstream) pair.
const CALLS: usize = 5;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A Sluice config with one ping-pong listener and a catch-all route to the volo server.
fn catch_all_config(volo: SocketAddr, transport: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "pingpong"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"

[[routes]]
service = "*"
downstream = "volo"

[downstreams.volo]
endpoints = ["{volo}"]
transport = "{transport}"
"#
    )
}

/// A fresh volo server on a free loopback port.
async fn volo_server() -> SocketAddr {
    start_server(SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// One Sluice per downstream transport, all in front of `volo`.
fn sluices(volo: SocketAddr) -> Vec<(&'static str, Sluice)> {
    DOWNSTREAMS
        .iter()
        .map(|t| (*t, Sluice::start(&catch_all_config(volo, t))))
        .collect()
}

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {CALL_TIMEOUT:?}"))
}

/// `Echo(message)` through `c`, expecting success; returns the echoed message.
async fn echo(c: &EchoServiceClient, what: &str, message: &str) -> String {
    let resp = within(what, c.echo(request(message)))
        .await
        .unwrap_or_else(|e| panic!("{what}: Echo({message:?}) failed: {e}"));
    resp.message
        .unwrap_or_else(|| panic!("{what}: Echo reply without a message"))
        .to_string()
}

/// `EchoFail` through `c`; returns the application exception's kind and message.
async fn echo_fail(c: &EchoServiceClient, what: &str) -> (ApplicationExceptionKind, String) {
    match within(what, c.echo_fail(request("please fail"))).await {
        Ok(r) => panic!("{what}: EchoFail succeeded: {r:?}"),
        Err(ClientError::Application(e)) => (e.kind(), e.message().to_string()),
        Err(e) => panic!("{what}: EchoFail gave a non-application error: {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volo_direct_control() {
    let volo = volo_server().await;
    for up in TRANSPORTS {
        let what = format!("direct {up}");
        let c = client(volo, up);
        for i in 0..CALLS {
            let msg = format!("direct-{up}-{i}");
            assert_eq!(echo(&c, &what, &msg).await, msg, "{what}");
        }
        assert_eq!(echo(&c, &what, TRANSPORT_QUERY).await, up, "{what}");
        let (kind, message) = echo_fail(&c, &what).await;
        assert_eq!(kind, ApplicationExceptionKind::INTERNAL_ERROR, "{what}");
        assert!(message.contains(FAIL_MESSAGE), "{what}: {message:?}");

        // Only TTHeader carries metainfo; volo's Framed and Buffered codecs drop it silently.
        let got = within(
            &what,
            with_metainfo(
                &[(TENANT_KEY, "acme")],
                &[(HOP_KEY, "one")],
                c.echo(request("mi")),
            ),
        )
        .await
        .unwrap()
        .message
        .unwrap()
        .to_string();
        let want = if up == "ttheader" {
            "mi|tenant=acme|hop=one"
        } else {
            "mi"
        };
        assert_eq!(got, want, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volo_transport_matrix_through_sluice() {
    let volo = volo_server().await;

    // Control: the same peers without Sluice in between, in the same run.
    let direct = client(volo, "ttheader");
    assert_eq!(echo(&direct, "control", "control").await, "control");

    let sluices = sluices(volo);
    for (down, sluice) in &sluices {
        for up in TRANSPORTS {
            let what = format!("volo {up} -> sluice -> {down} volo");
            let c = client(sluice.addr, up);
            for i in 0..CALLS {
                let msg = format!("{up}->{down} #{i} {}", "x".repeat(i * 100));
                assert_eq!(echo(&c, &what, &msg).await, msg, "{what}");
            }
            // The volo server saw the downstream framing, whatever the upstream one.
            let seen = down.trim_end_matches("-unframed");
            assert_eq!(echo(&c, &what, TRANSPORT_QUERY).await, seen, "{what}");
            // Two clients at once on the same Sluice.
            let c2 = client(sluice.addr, up);
            let (a, b) = tokio::join!(
                echo(&c, &what, "concurrent-a"),
                echo(&c2, &what, "concurrent-b")
            );
            assert_eq!((a.as_str(), b.as_str()), ("concurrent-a", "concurrent-b"));
        }
    }

    assert_eq!(
        echo(&direct, "control", "control again").await,
        "control again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volo_persistent_metainfo_through_sluice() {
    let volo = volo_server().await;

    let direct = client(volo, "ttheader");
    let got = within(
        "control",
        with_persistent(TENANT_KEY, "acme", direct.echo(request("mi"))),
    )
    .await
    .unwrap();
    assert_eq!(got.message.unwrap().as_str(), "mi|tenant=acme", "control");

    let sluices = sluices(volo);
    for (down, sluice) in &sluices {
        let what = format!("volo ttheader -> sluice -> {down} volo");
        let c = client(sluice.addr, "ttheader");
        for i in 0..CALLS {
            let tenant = format!("tenant-{i}");
            let msg = format!("mi-{i}");
            let got = within(
                &what,
                with_persistent(TENANT_KEY, &tenant, c.echo(request(&msg))),
            )
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .message
            .unwrap()
            .to_string();
            // Framed and Buffered have no header to carry metainfo in, by protocol.
            let want = if down.starts_with("ttheader") {
                format!("{msg}|tenant={tenant}")
            } else {
                msg.clone()
            };
            assert_eq!(got, want, "{what}");
        }
        // A call without metainfo on the same connection carries none (nothing sticks).
        assert_eq!(echo(&c, &what, "plain").await, "plain", "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volo_transient_metainfo_through_sluice() {
    // Sluice forwards `RPC_TRANSIT_*` keys as they are (it is not a metainfo hop), so a volo
    // server behind it sees the client's transient value as its upstream value, as it would
    // directly.
    let volo = volo_server().await;
    let sluice = Sluice::start(&catch_all_config(volo, "ttheader"));
    for (what, addr) in [("direct", volo), ("through sluice", sluice.addr)] {
        let c = client(addr, "ttheader");
        let got = within(
            what,
            with_metainfo(&[], &[(HOP_KEY, "edge")], c.echo(request("t"))),
        )
        .await
        .unwrap()
        .message
        .unwrap()
        .to_string();
        assert_eq!(got, "t|hop=edge", "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volo_trace_context_continued_through_sluice() {
    // A volo client sends the transient metainfo `traceparent` as `RPC_TRANSIT_traceparent`
    // (what Kitex's OpenTelemetry tracer sends); the volo server reports what it received.
    // Directly it sees the caller's value; through Sluice, a child of it: the same trace id
    // and flags, Sluice's own span as the parent.
    const SENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const INVALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1x";
    let volo = volo_server().await;
    let sluice = Sluice::start(&catch_all_config(volo, "ttheader"));
    let seen = |addr: SocketAddr, value: &'static str, what: &'static str| async move {
        let c = client(addr, "ttheader");
        let got = within(
            what,
            with_metainfo(&[], &[(TRACEPARENT_KEY, value)], c.echo(request("t"))),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .message
        .unwrap()
        .to_string();
        got.strip_prefix("t|traceparent=")
            .unwrap_or_else(|| panic!("{what}: the server saw no traceparent: {got:?}"))
            .to_owned()
    };
    assert_eq!(seen(volo, SENT, "direct").await, SENT, "control");
    let got = seen(sluice.addr, SENT, "through sluice").await;
    assert_eq!(got.len(), SENT.len(), "{got:?}");
    assert_eq!(&got[..36], &SENT[..36], "the same trace id: {got:?}");
    assert_eq!(&got[52..], &SENT[52..], "the same flags: {got:?}");
    assert_ne!(&got[36..52], &SENT[36..52], "a new parent id: {got:?}");
    assert_eq!(
        seen(sluice.addr, INVALID, "invalid through sluice").await,
        INVALID,
        "an invalid traceparent passes unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volo_application_error_through_sluice() {
    let volo = volo_server().await;
    let (direct_kind, direct_message) = echo_fail(&client(volo, "ttheader"), "control").await;
    assert!(direct_message.contains(FAIL_MESSAGE), "{direct_message:?}");

    let sluices = sluices(volo);
    for (down, sluice) in &sluices {
        for up in TRANSPORTS {
            let what = format!("volo {up} -> sluice -> {down} volo");
            let c = client(sluice.addr, up);
            let (kind, message) = echo_fail(&c, &what).await;
            assert_eq!(kind, direct_kind, "{what}: {message:?}");
            assert_eq!(message, direct_message, "{what}");
            // The connection stays usable after the exception.
            assert_eq!(echo(&c, &what, "after").await, "after", "{what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volo_routes_on_service_and_method() {
    // volo clients send the IDL service name as the TTHeader `isn` key; Framed and Buffered
    // requests carry no service name, so only the listener's `default_service` can route them.
    let volo = volo_server().await;
    let config = format!(
        r#"
[[listeners]]
name = "pingpong"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"

[[routes]]
service = "EchoService"
method = "Echo"
downstream = "volo"

[downstreams.volo]
endpoints = ["{volo}"]
transport = "framed"
"#
    );
    let sluice = Sluice::start(&config);

    let tt = client(sluice.addr, "ttheader");
    assert_eq!(echo(&tt, "isn route", "routed").await, "routed");

    let (kind, message) = echo_fail(&tt, "method mismatch").await;
    assert_eq!(
        kind,
        ApplicationExceptionKind::UNKNOWN_METHOD,
        "{message:?}"
    );
    assert!(
        message.contains("sluice: no route") && message.contains("EchoFail"),
        "{message:?}"
    );

    for up in ["framed", "buffered"] {
        let c = client(sluice.addr, up);
        match within(up, c.echo(request("no isn"))).await {
            Err(ClientError::Application(e)) => {
                assert_eq!(
                    e.kind(),
                    ApplicationExceptionKind::UNKNOWN_METHOD,
                    "{up}: {e}"
                );
                assert!(e.message().contains("sluice: no route"), "{up}: {e}");
            }
            other => panic!("{up}: expected a no-route exception, got {other:?}"),
        }
    }

    let with_default = Sluice::start(&config.replace(
        "cluster = \"ttstream\"",
        "cluster = \"ttstream\"\ndefault_service = \"EchoService\"",
    ));
    for up in ["framed", "buffered"] {
        let c = client(with_default.addr, up);
        assert_eq!(echo(&c, up, "defaulted").await, "defaulted", "{up}");
    }
}
