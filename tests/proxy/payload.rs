//! Routing on a payload field, from a runtime IDL: `idl`, `field`, `equals` on a route send
//! requests whose `req.tenant` (thrift) or `tenant` (Kitex protobuf) is "gold" to their own
//! downstream, over every ping-pong transport; requests without the field, with another value,
//! or with bytes that are not the IDL's go on to the next route.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use sluice_idl::{Idl, ThriftIdl};
use sluice_thrift::MessageType;
use sluice_ttheader::Header;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{read_reply, request, start_echo, Shape, Sluice};

fn idl(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/idl")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn config(gold: std::net::SocketAddr, rest: std::net::SocketAddr) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:{{port}}"
cluster = "ttstream"
default_service = "EchoService"

[downstreams.gold]
endpoints = ["{gold}"]

[downstreams.rest]
endpoints = ["{rest}"]

[[routes]]
service = "EchoService"
method = "Echo"
idl = "{thrift}"
field = "req.tenant"
equals = "gold"
downstream = "gold"

[[routes]]
service = "EchoService"
method = "Echo"
idl = "{proto}"
field = "tenant"
equals = "gold"
downstream = "gold"

[[routes]]
service = "*"
downstream = "rest"
"#,
        thrift = idl("tools.thrift"),
        proto = idl("tools.proto"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_routes_send_each_tenant_to_its_downstream_on_every_transport() {
    let (gold, gold_seen, _d1) = start_echo().await;
    let (rest, rest_seen, _d2) = start_echo().await;
    let sluice = Sluice::start(&config(gold, rest));
    let thrift = ThriftIdl::load(Path::new(&idl("tools.thrift")), &[]).unwrap();
    let echo = thrift.function(None, "Echo").unwrap();
    let Idl::Proto(proto) = Idl::load(Path::new(&idl("tools.proto")), &[]).unwrap() else {
        panic!("a proto IDL")
    };
    let pb_echo = proto.method(None, "Echo").unwrap();
    let mut h = Header::default();
    h.str_kvs.insert("isn", "EchoService");
    let shapes = [
        Shape::TTHeader {
            framed: true,
            flags: 0,
        },
        Shape::TTHeader {
            framed: false,
            flags: 0,
        },
        Shape::Framed,
        Shape::Buffered,
    ];
    let (mut want_gold, mut want_rest) = (0, 0);
    let mut seq = 0;
    for shape in shapes {
        for pb in [false, true] {
            if pb && !matches!(shape, Shape::TTHeader { framed: true, .. } | Shape::Framed) {
                continue; // Kitex protobuf needs a length
            }
            // Fields before and after the tenant, so the route has to skip some.
            for tenant in [Some("gold"), Some("silver"), None, Some("golden")] {
                let args: Vec<u8> = if pb {
                    let mut v = json!({"message": "m", "tier": "SILVER", "delta": 5});
                    if let Some(t) = tenant {
                        v["tenant"] = json!(t);
                    }
                    pb_echo.encode_request(&v.to_string()).unwrap()
                } else {
                    let mut req = json!({"message": "m", "numbers": [1, 2, 3],
                        "caller": {"name": "c", "tier": "GOLD"}});
                    if let Some(t) = tenant {
                        req["tenant"] = json!(t);
                    }
                    thrift
                        .encode_args(echo, &json!({ "req": req }))
                        .unwrap()
                        .to_vec()
                };
                seq += 1;
                let mut s = TcpStream::connect(sluice.addr).await.unwrap();
                s.write_all(&request(
                    shape,
                    &h,
                    pb,
                    "Echo",
                    MessageType::Call,
                    seq,
                    &args,
                ))
                .await
                .unwrap();
                let mut buf = bytes::BytesMut::new();
                let r = read_reply(&mut s, &mut buf, shape, Duration::from_secs(5))
                    .await
                    .unwrap_or_else(|| panic!("{shape:?} pb={pb} {tenant:?}: no reply"));
                assert_eq!(
                    r.msg_type,
                    MessageType::Reply,
                    "{shape:?} pb={pb} {tenant:?}"
                );
                if tenant == Some("gold") {
                    want_gold += 1;
                } else {
                    want_rest += 1;
                }
                assert_eq!(
                    (gold_seen.requests_seen(), rest_seen.requests_seen()),
                    (want_gold, want_rest),
                    "{shape:?} pb={pb} tenant {tenant:?}"
                );
            }
        }
    }
    assert_eq!(want_gold, 6, "4 thrift shapes and 2 protobuf ones");
    // Bytes that are not the IDL's args (a list where the struct should be) match nothing.
    let junk = [
        0x0f, 0, 1, 0x0b, 0, 0, 0, 1, 0, 0, 0, 4, b'g', b'o', b'l', b'd', 0,
    ];
    let shape = Shape::Framed;
    let mut s = TcpStream::connect(sluice.addr).await.unwrap();
    s.write_all(&request(
        shape,
        &h,
        false,
        "Echo",
        MessageType::Call,
        99,
        &junk,
    ))
    .await
    .unwrap();
    let mut buf = bytes::BytesMut::new();
    assert!(read_reply(&mut s, &mut buf, shape, Duration::from_secs(5))
        .await
        .is_some());
    assert_eq!(gold_seen.requests_seen(), want_gold);
    assert_eq!(rest_seen.requests_seen(), want_rest + 1);
}

#[test]
fn payload_route_settings_are_checked_when_the_configuration_loads() {
    let base = |extra: &str| {
        format!(
            r#"
[[listeners]]
address = "127.0.0.1:1"
cluster = "ttstream"
[downstreams.d]
endpoints = ["127.0.0.1:2"]
[[routes]]
service = "EchoService"
downstream = "d"
{extra}
"#
        )
    };
    let thrift = idl("tools.thrift");
    let cases = [
        (
            format!("method = \"Echo\"\nidl = \"{thrift}\"\nfield = \"req.tenant\""),
            "routes[0].equals: missing",
        ),
        (
            format!("idl = \"{thrift}\"\nfield = \"req.tenant\"\nequals = \"x\""),
            "routes[0].method: missing",
        ),
        (
            format!(
                "method = \"Echo\"\nidl = \"{thrift}\"\nfield = \"req.tennant\"\nequals = \"x\""
            ),
            "EchoRequest has no field \"tennant\"",
        ),
        (
            format!(
                "method = \"Nope\"\nidl = \"{thrift}\"\nfield = \"req.tenant\"\nequals = \"x\""
            ),
            "has no method \"Nope\"",
        ),
        (
            format!(
                "method = \"Echo\"\nidl = \"{thrift}\"\nfield = \"req.loud\"\nequals = \"maybe\""
            ),
            "true or false",
        ),
        (
            format!(
                "method = \"Echo\"\nidl = \"{}\"\nfield = \"req.tenant\"\nequals = \"x\"",
                idl("bad.thrift")
            ),
            "line 7",
        ),
    ];
    for (extra, want) in cases {
        let e = sluice_proxy::Config::from_toml(&base(&extra))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{extra}: {e}");
    }
    let ok = sluice_proxy::Config::from_toml(&base(&format!(
        "method = \"Echo\"\nidl = \"{thrift}\"\nfield = \"req.caller.tier\"\nequals = \"GOLD\""
    )))
    .unwrap();
    assert!(
        ok.describe().contains("field req.caller.tier=GOLD"),
        "{}",
        ok.describe()
    );
    // The effective configuration (`/config`) reads back with its include directories.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/idl");
    let with_dirs = sluice_proxy::Config::from_toml(&base(&format!(
        "method = \"Echo\"\nidl = \"{thrift}\"\ninclude_dirs = [\"{}\"]\nfield = \"req.tenant\"\nequals = \"x\"",
        dir.display()
    )))
    .unwrap();
    let toml = with_dirs.to_toml();
    assert!(toml.contains("include_dirs"), "{toml}");
    let again = sluice_proxy::Config::from_toml(&toml).unwrap();
    assert_eq!(again.to_toml(), toml);
}

/// gRPC with protobuf: the route reads the stream's first message, and that message (and
/// every later one) still reaches the downstream it picked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_payload_routes_read_the_first_message() {
    use sluice_http2::{GrpcClient, GrpcClientConfig, OpenRequest};
    use sluice_stream::{Incoming, Metadata};

    let (gold, gold_seen, _d1) = start_echo().await;
    let (rest, rest_seen, _d2) = start_echo().await;
    let toml = format!(
        r#"
[[listeners]]
address = "127.0.0.1:{{port}}"
cluster = "grpc"

[downstreams.gold]
endpoints = ["{gold}"]

[downstreams.rest]
endpoints = ["{rest}"]

[[routes]]
service = "EchoService"
method = "EchoBidi"
idl = "{proto}"
field = "tenant"
equals = "gold"
downstream = "gold"

[[routes]]
service = "*"
downstream = "rest"
"#,
        proto = idl("tools.proto"),
    );
    let sluice = Sluice::start(&toml);
    let Idl::Proto(proto) = Idl::load(Path::new(&idl("tools.proto")), &[]).unwrap() else {
        panic!("a proto IDL")
    };
    let m = proto.method(None, "EchoBidi").unwrap();
    let msg = |tenant: &str, text: &str| {
        bytes::Bytes::from(
            m.encode_request(&json!({"message": text, "tenant": tenant}).to_string())
                .unwrap(),
        )
    };
    let client = GrpcClient::new(GrpcClientConfig::new(vec![sluice.addr]));
    let open = |method: &str| OpenRequest {
        path: format!("/echo.EchoService/{method}"),
        content_type: "application/grpc".into(),
        authority: "EchoService".into(),
        headers: Metadata::new(),
        deadline: None,
    };
    // (tenant of the first message, how many messages, downstream expected)
    let cases = [
        ("gold", 3, "gold"),
        ("silver", 2, "rest"),
        ("", 0, "rest"),
        ("gold", 1, "gold"),
    ];
    let (mut want_gold, mut want_rest) = (0, 0);
    for (tenant, n, want) in cases {
        let (tx, mut rx) = client.open(&open("EchoBidi")).await.unwrap().split();
        let sent: Vec<bytes::Bytes> = (0..n).map(|i| msg(tenant, &format!("m{i}"))).collect();
        for s in &sent {
            tx.send(s.clone()).await.unwrap();
        }
        tx.close_send().await.unwrap();
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("the stream ends in time")
            {
                Incoming::Headers(_) => {}
                Incoming::Message(b) => got.push(b),
                Incoming::End(e) => {
                    assert!(e.error.is_none(), "{tenant}: {e:?}");
                    break;
                }
                Incoming::Reset(r) => panic!("{tenant}: reset {r:?}"),
            }
        }
        assert_eq!(got, sent, "{tenant}: every message echoed, in order");
        if want == "gold" {
            want_gold += 1;
        } else {
            want_rest += 1;
        }
        assert_eq!(
            (gold_seen.requests_seen(), rest_seen.requests_seen()),
            (want_gold, want_rest),
            "first message tenant {tenant:?}, {n} messages"
        );
    }
    // Another method is routed on its headers alone (and a gold tenant there means nothing).
    let (tx, mut rx) = client.open(&open("EchoServer")).await.unwrap().split();
    tx.send(msg("gold", "s")).await.unwrap();
    tx.close_send().await.unwrap();
    while !matches!(
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap(),
        Incoming::End(_) | Incoming::Reset(_)
    ) {}
    assert_eq!(rest_seen.requests_seen(), want_rest + 1);
    assert_eq!(gold_seen.requests_seen(), want_gold);
}
