//! The admin listener and the access log, through the real binary: `/readyz` during a drain,
//! the cap on wire-derived label values, `/config`, and one JSON access-log line per call.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sluice_client::{ClientConfig, Endpoint, OpenStream, TTStreamClient};
use sluice_stream::{Incoming, Metadata, StreamEnd};
use sluice_thrift::MessageType;
use sluice_ttheader::{int_key, Header};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

/// `GET path` on the admin listener: the status and the body.
pub(crate) fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the admin listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: sluice\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn config(echo: SocketAddr, admin: u16, extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"

[[routes]]
service = "dead"
downstream = "dead"

[[routes]]
downstream = "echo"

[downstreams.echo]
endpoints = ["{echo}"]

[downstreams.dead]
endpoints = ["127.0.0.1:{dead}"]

[admin]
address = "127.0.0.1:{admin}"
{extra}
"#,
        dead = free_port()
    )
}

fn tt() -> Shape {
    Shape::TTHeader {
        framed: true,
        flags: 0,
    }
}

fn header(service: &str) -> Header {
    let mut h = Header::default();
    h.str_kvs.insert("isn", service.to_owned());
    h.int_kvs
        .insert(int_key::FROM_SERVICE, "caller-svc".to_owned());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_on_sigterm_while_a_request_is_still_being_answered() {
    let (echo, _h, _d) = start_echo().await;
    let admin_port = free_port();
    let mut sluice = Sluice::start(&config(
        echo,
        admin_port,
        "[limits]\ndrain_grace_ms = 5000\n",
    ));
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    wait_listening(admin, "the admin listener");
    assert_eq!(get(admin, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(get(admin, "/readyz"), (200, "ready\n".to_owned()));
    assert!(get(admin, "/metrics").1.contains("\nsluice_draining 0\n"));

    // A request the downstream answers in 1.5 s: its connection stays open through the drain
    // until the reply is written.
    let mut conn = TcpStream::connect(sluice.addr).await.unwrap();
    conn.write_all(&request(
        tt(),
        &header("EchoService"),
        false,
        "Sleep1500",
        MessageType::Call,
        1,
        &thrift_args(b"slow"),
    ))
    .await
    .unwrap();
    let reply = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let r = read_reply(&mut conn, &mut buf, tt(), Duration::from_secs(10)).await;
        (r, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    sluice.terminate();
    let deadline = Instant::now() + Duration::from_secs(5);
    let not_ready_at = loop {
        let (status, body) = tokio::task::spawn_blocking(move || get(admin, "/readyz"))
            .await
            .unwrap();
        if status == 503 {
            assert_eq!(body, "not ready: draining\n");
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {status} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (_, text) = tokio::task::spawn_blocking(move || get(admin, "/metrics"))
        .await
        .unwrap();
    assert!(text.contains("\nsluice_draining 1\n"), "{text}");
    let (reply, replied_at) = reply.await.unwrap();
    let reply = reply.expect("the in-flight request is answered during the drain");
    assert_eq!(reply.msg_type, MessageType::Reply);
    assert!(
        not_ready_at < replied_at,
        "/readyz must fail before the draining connection is answered and closed"
    );
    assert!(sluice.wait_exit(Duration::from_secs(10)).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_labels_from_the_wire_stop_at_the_cap() {
    let (echo, _h, _d) = start_echo().await;
    let admin_port = free_port();
    let sluice = Sluice::start(&config(echo, admin_port, ""));
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    wait_listening(admin, "the admin listener");
    // 5000 distinct method names on one connection, one at a time.
    let mut conn = TcpStream::connect(sluice.addr).await.unwrap();
    let mut buf = BytesMut::new();
    let h = header("EchoService");
    for i in 0..5000 {
        let method = format!("M{i}");
        conn.write_all(&request(
            tt(),
            &h,
            false,
            &method,
            MessageType::Call,
            i + 1,
            &thrift_args(b"x"),
        ))
        .await
        .unwrap();
        read_reply(&mut conn, &mut buf, tt(), Duration::from_secs(10))
            .await
            .expect("a reply");
    }
    let (status, text) = get(admin, "/metrics");
    assert_eq!(status, 200);
    let mut methods = std::collections::BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("kitex_server_throughput{"))
    {
        let at = line.find("method=\"").unwrap() + 8;
        methods.insert(line[at..at + line[at..].find('"').unwrap()].to_owned());
        assert!(line.contains("caller=\"caller-svc\""), "{line}");
    }
    assert_eq!(methods.len(), 1001, "1000 names and \"other\"");
    assert!(methods.contains("other"));
    // Each of the 4000 folded calls was folded twice: once as received, once as sent.
    assert!(
        text.contains("sluice_metric_label_folds_total{label=\"method\"} 8000\n"),
        "{}",
        text.lines()
            .filter(|l| l.contains("folds"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The same cap held on the client side.
    let client_series = text
        .lines()
        .filter(|l| l.starts_with("kitex_client_throughput{"))
        .count();
    assert_eq!(client_series, 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_the_effective_configuration_as_toml() {
    let (echo, _h, _d) = start_echo().await;
    let admin_port = free_port();
    let _sluice = Sluice::start(&config(echo, admin_port, ""));
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    wait_listening(admin, "the admin listener");
    let (status, text) = get(admin, "/config");
    assert_eq!(status, 200);
    // The defaults are filled in, and the text loads as a configuration again.
    assert!(text.contains("request_timeout_ms = 30000"), "{text}");
    assert!(text.contains(&format!("address = \"{echo}\"")), "{text}");
    let again = sluice_proxy::Config::from_toml(&text).expect("the served config loads");
    assert_eq!(again.to_toml(), text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_json_line_per_call() {
    let (echo, _h, _d) = start_echo().await;
    let admin_port = free_port();
    let path = std::env::temp_dir().join(format!(
        "sluice-access-{}-{admin_port}.log",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let mut sluice = Sluice::start(&config(
        echo,
        admin_port,
        &format!("[access_log]\npath = \"{}\"\n", path.display()),
    ));
    for i in 0..3 {
        let r = roundtrip(
            sluice.addr,
            tt(),
            &header("EchoService"),
            "Echo",
            &thrift_args(format!("hello {i}").as_bytes()),
        )
        .await;
        assert_eq!(r.msg_type, MessageType::Reply);
    }
    let failed = roundtrip(
        sluice.addr,
        tt(),
        &header("dead"),
        "Echo",
        &thrift_args(b"x"),
    )
    .await;
    assert_eq!(failed.msg_type, MessageType::Exception);
    // One TTStream bidi stream of two messages: one line, with the messages' bytes.
    let streams = TTStreamClient::new(ClientConfig::new(
        "caller",
        vec![Endpoint {
            addr: sluice.addr,
            weight: 1,
        }],
    ));
    let (tx, mut rx) = streams
        .open(OpenStream {
            hash: None,
            method: "EchoBidi".into(),
            service: "EchoService".into(),
            headers: Metadata::new(),
        })
        .await
        .unwrap()
        .split();
    let messages = [thrift_args(b"one"), thrift_args(b"two!")];
    for m in &messages {
        tx.send(m.clone()).await.unwrap();
    }
    tx.close_send().await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the stream ends")
        {
            Incoming::End(e) => {
                assert_eq!(e, StreamEnd::ok());
                break;
            }
            Incoming::Reset(r) => panic!("reset: {r:?}"),
            _ => {}
        }
    }
    drop((tx, rx, streams));
    // The writer flushes as its queue empties; the drain on SIGTERM flushes the rest.
    sluice.terminate();
    assert!(sluice.wait_exit(Duration::from_secs(15)).is_some());
    let text = std::fs::read_to_string(&path).expect("the access log was written");
    let _ = std::fs::remove_file(&path);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 5, "{text}");
    for l in &lines[..3] {
        assert_eq!(l["listener"], "main");
        assert_eq!(l["protocol"], "ttheader");
        assert_eq!(l["service"], "EchoService");
        assert_eq!(l["method"], "Echo");
        assert_eq!(l["caller"], "caller-svc");
        assert_eq!(l["downstream"], "echo");
        assert_eq!(l["endpoint"], echo.to_string());
        assert_eq!(l["status"], "succeed");
        assert!(l["error"].is_null());
        assert!(l["duration_us"].as_u64().is_some());
        assert_eq!(
            l["bytes_in"].as_u64(),
            Some(thrift_args(b"hello 0").len() as u64)
        );
        assert!(l["bytes_out"].as_u64().unwrap() > 0);
        assert!(l["time"].as_str().unwrap().ends_with('Z'));
        assert!(l["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    }
    let f = &lines[3];
    assert_eq!(f["status"], "error");
    assert_eq!(f["downstream"], "dead");
    assert_eq!(f["error_kind"], "unavailable");
    assert!(f["error"].as_str().unwrap().contains("dead"), "{f}");
    let st = &lines[4];
    assert_eq!(st["protocol"], "ttstream");
    assert_eq!(st["method"], "EchoBidi");
    assert_eq!(st["status"], "succeed");
    assert_eq!(st["downstream"], "echo");
    let sent: u64 = messages.iter().map(|m| m.len() as u64).sum();
    assert_eq!(st["bytes_in"].as_u64(), Some(sent));
    assert_eq!(
        st["bytes_out"].as_u64(),
        Some(sent),
        "the echo sends them back"
    );
}

/// The value of the series `name{labels}` (labels exactly as written) in the metrics text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_and_pool_connections_are_counted_exactly() {
    use tokio::io::AsyncReadExt;
    let (echo, _h, _d) = start_echo().await;
    let admin_port = free_port();
    let sluice = Sluice::start(&config(echo, admin_port, ""));
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    wait_listening(admin, "the admin listener");
    let (mut sent, mut received) = (0u64, 0u64);
    let mut conn = TcpStream::connect(sluice.addr).await.unwrap();
    for i in 0..20 {
        let req = request(
            tt(),
            &header("EchoService"),
            false,
            "Echo",
            MessageType::Call,
            i + 1,
            &thrift_args(&vec![b'x'; 100 * i as usize]),
        );
        sent += req.len() as u64;
        conn.write_all(&req).await.unwrap();
        // A framed TTHeader reply: a 4-byte length, then that many bytes.
        let len = conn.read_u32().await.unwrap();
        let mut frame = vec![0u8; len as usize];
        conn.read_exact(&mut frame).await.unwrap();
        received += 4 + u64::from(len);
    }
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let (_, text) = get(admin, "/metrics");
        let open = sample(
            &text,
            "sluice_connections_open{listener=\"main\",protocol=\"pingpong\"}",
        );
        if open == Some(0.0) || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        sample(&text, "sluice_bytes_received_total{listener=\"main\"}"),
        Some(sent as f64),
        "every byte the caller wrote"
    );
    assert_eq!(
        sample(&text, "sluice_bytes_sent_total{listener=\"main\"}"),
        Some(received as f64),
        "every byte the caller read"
    );
    assert_eq!(
        sample(
            &text,
            "sluice_connections_accepted_total{listener=\"main\",protocol=\"pingpong\"}"
        ),
        Some(1.0)
    );
    // Calls one at a time reuse one pooled connection to the echo, idle now.
    let pool = text
        .lines()
        .filter(|l| l.starts_with("sluice_pool"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        sample(
            &text,
            "sluice_pool_connections{downstream=\"echo\",state=\"idle\"}"
        ),
        Some(1.0),
        "{pool}"
    );
    assert_eq!(
        sample(
            &text,
            "sluice_pool_connections{downstream=\"echo\",state=\"in_use\"}"
        ),
        Some(0.0),
        "{pool}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_counted_by_reason() {
    use tokio::io::AsyncReadExt;
    let (echo, _h, _d) = start_echo().await;
    let admin_port = free_port();
    let sluice = Sluice::start(&config(echo, admin_port, ""));
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    wait_listening(admin, "the admin listener");
    // A framed TTHeader frame whose header is garbage: a protocol error.
    let mut bad = TcpStream::connect(sluice.addr).await.unwrap();
    let mut frame = vec![0, 0, 0, 16, 0x10, 0x00, 0, 0, 0, 0, 0, 1, 0xff, 0xff];
    frame.extend_from_slice(&[0xee; 6]);
    bad.write_all(&frame).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), bad.read_to_end(&mut rest)).await;
    // HTTP/2 on a ttstream listener: the other cluster's family.
    let mut grpc = TcpStream::connect(sluice.addr).await.unwrap();
    grpc.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), grpc.read_to_end(&mut rest)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text) = get(admin, "/metrics");
        let reason = |r: &str| {
            sample(
                &text,
                &format!("sluice_refusals_total{{listener=\"main\",reason=\"{r}\"}}"),
            )
        };
        if reason("protocol_error") == Some(1.0) && reason("wrong_cluster") == Some(1.0) {
            assert_eq!(reason("not_ours"), Some(0.0));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            text.lines()
                .filter(|l| l.starts_with("sluice_refusals"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
