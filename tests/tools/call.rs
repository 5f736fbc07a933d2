//! `sluice call` against real peers over loopback: a volo-thrift server (TTHeader, Framed,
//! Buffered), `sluice echo` (Kitex protobuf, TTStream streams of every kind, a declared
//! exception, a slow method), and a grpcio server built from a .proto compiled by the test
//! (protobuf unary and streams). Each test checks the JSON printed and the exit code.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::sluice;

/// Exit codes `sluice call` documents.
const OK: i32 = 0;
const USAGE: i32 = 2;
const TRANSPORT: i32 = 3;
const APPLICATION: i32 = 4;
const DECLARED: i32 = 5;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn idl(name: &str) -> String {
    root().join(name).to_string_lossy().into_owned()
}

struct Out {
    stdout: String,
    stderr: String,
    code: i32,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {}", self.describe()))
    }

    fn lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }

    /// Asserts that stderr says `what`.
    #[track_caller]
    fn stderr_has(&self, what: &str) {
        assert!(
            self.stderr.contains(what),
            "no {what:?} in:\n{}",
            self.describe()
        );
    }

    fn describe(&self) -> String {
        format!(
            "exit {}\n-- stdout --\n{}-- stderr --\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `sluice call <args>` with `stdin`, bounded to 30 s.
fn call(args: &[&str], stdin: Option<&str>) -> Out {
    let mut child = Command::new(sluice())
        .arg("call")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice call");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("sluice call {args:?} did not finish in 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    Out {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code().unwrap_or(-1),
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed when the test ends.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sluice echo` on a free loopback port.
fn sluice_echo() -> (Peer, String) {
    let addr = free_addr();
    let child = Command::new(sluice())
        .args(["echo", "--listen", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sluice echo");
    wait_listening(addr);
    (Peer(child), addr.to_string())
}

#[test]
fn call_speaks_ttheader_framed_and_buffered_to_a_volo_thrift_server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let addr = rt
        .block_on(sluice_volo_fixtures::start_server(SocketAddr::from((
            [127, 0, 0, 1],
            0,
        ))))
        .to_string();
    let echo = idl("idl/echo.thrift");
    for t in ["ttheader", "framed", "buffered"] {
        // The volo server answers "?transport" with the framing it detected.
        let out = call(
            &[
                &addr,
                "EchoService/Echo",
                "--idl",
                &echo,
                "--transport",
                t,
                "-d",
                r#"{"req":{"message":"?transport"}}"#,
            ],
            None,
        );
        assert_eq!(out.code, OK, "{t}: {}", out.describe());
        assert_eq!(out.json(), json!({"message": t}), "{t}");
        let fail = call(
            &[
                &addr,
                "EchoFail",
                "--idl",
                &echo,
                "--transport",
                t,
                "-d",
                r#"{"req":{"message":"x"}}"#,
            ],
            None,
        );
        assert_eq!(fail.code, APPLICATION, "{t}: {}", fail.describe());
        assert!(fail.stdout.is_empty(), "{}", fail.describe());
        fail.stderr_has(sluice_volo_fixtures::FAIL_MESSAGE);
        fail.stderr_has("exception: type ");
    }
    // volo's declared exception: printed as JSON, exit 5.
    let out = call(
        &[
            &addr,
            "EchoRaise",
            "--idl",
            &echo,
            "-d",
            r#"{"req":{"message":"boom"}}"#,
        ],
        None,
    );
    assert_eq!(out.code, DECLARED, "{}", out.describe());
    assert_eq!(
        out.json(),
        json!({"err": {"code": sluice_volo_fixtures::RAISE_CODE, "message": "boom"}})
    );
    out.stderr_has("declared exception err (EchoError)");
    // Metainfo reaches the server (the default transport is TTHeader), stdin carries the
    // request, and -vv shows both frames.
    let out = call(
        &[
            &addr,
            "Echo",
            "--idl",
            &echo,
            "--persistent",
            "TENANT=gold",
            "-H",
            "HOP=h1",
            "-vv",
        ],
        Some(r#"{"req": {"message": "hi"}}"#),
    );
    assert_eq!(out.code, OK, "{}", out.describe());
    assert_eq!(out.json(), json!({"message": "hi|tenant=gold|hop=h1"}));
    out.stderr_has("> RPC_PERSIST_TENANT: gold");
    assert!(
        out.stderr.contains("> request frame ("),
        "{}",
        out.describe()
    );
    assert!(out.stderr.contains("< reply frame ("), "{}", out.describe());
    // volo writes the message type as the raw byte 2, shown escaped.
    out.stderr_has("< 22 (MsgType): \\u{2}");
}

#[test]
fn call_speaks_every_stream_kind_and_kitex_protobuf_to_sluice_echo() {
    let (_echo, addr) = sluice_echo();
    let tools = idl("tests/idl/tools.thrift");
    let proto = idl("tests/idl/tools.proto");
    // Unary, every JSON type through the IDL and back.
    let req = json!({"req": {
        "message": "hi", "tenant": "gold", "numbers": [1, -2], "tiers": {"a": "GOLD"},
        "caller": {"name": "cli", "tier": "SILVER"}, "blob": {"hex": "00ff"}, "loud": true,
        "ratio": 0.25
    }});
    let out = call(
        &[
            &addr,
            "EchoService/Echo",
            "--idl",
            &tools,
            "-d",
            &req.to_string(),
        ],
        None,
    );
    assert_eq!(out.code, OK, "{}", out.describe());
    assert_eq!(out.json(), req["req"]);
    // TTStream bidi: one JSON object per line in, one per line out (the argument by name or
    // the bare struct).
    let out = call(
        &[&addr, "EchoService/EchoBidi", "--idl", &tools, "--transport", "ttstream"],
        Some("{\"req\":{\"message\":\"a\"}}\n\n{\"message\":\"b\",\"tenant\":\"t\"}\n{\"message\":\"c\"}\n"),
    );
    assert_eq!(out.code, OK, "{}", out.describe());
    assert_eq!(
        out.lines(),
        [
            json!({"message": "a"}),
            json!({"message": "b", "tenant": "t"}),
            json!({"message": "c"})
        ]
    );
    // The streaming mode comes from the IDL: TTStream by default for a thrift stream.
    let out = call(
        &[&addr, "EchoClient", "--idl", &tools],
        Some("{\"message\":\"c1\"}\n{\"message\":\"c2\"}\n"),
    );
    assert_eq!(out.code, OK, "{}", out.describe());
    assert_eq!(out.json(), json!({"message": "c2"}));
    let out = call(
        &[
            &addr,
            "EchoServer",
            "--idl",
            &tools,
            "-d",
            r#"{"message":"s"}"#,
        ],
        None,
    );
    assert_eq!(out.code, OK, "{}", out.describe());
    assert_eq!(
        out.lines(),
        [json!({"message": "s"}), json!({"message": "s"})]
    );
    // A TTStream error end: what came before it is printed, then the error, exit 4.
    let out = call(
        &[&addr, "EchoService/EchoBidiFail", "--idl", &tools],
        Some("{\"message\":\"a\"}\n{\"message\":\"b\"}\n"),
    );
    assert_eq!(out.code, APPLICATION, "{}", out.describe());
    assert_eq!(out.lines(), [json!({"message": "a"})]);
    out.stderr_has("the stream ended with error type 6 (INTERNAL_ERROR): biz error: echo: injected stream failure after 1 messages");
    // A namespaced service name finds the IDL's service.
    let out = call(
        &[
            &addr,
            "tools.EchoService/Echo",
            "--idl",
            &tools,
            "-d",
            r#"{"req":{"message":"ns"}}"#,
        ],
        None,
    );
    assert_eq!(out.code, OK, "{}", out.describe());
    assert_eq!(out.json(), json!({"message": "ns"}));
    // A reply with neither a success field nor a declared exception (the echo of empty
    // arguments) is unreadable as the IDL's result: exit 6, with what came back.
    let out = call(&[&addr, "Echo", "--idl", &tools, "-d", "{}"], None);
    assert_eq!(out.code, 6, "{}", out.describe());
    assert!(
        out.stderr
            .contains("no success field and no declared exception"),
        "{}",
        out.describe()
    );
    // The request from a file (-d @file), the service name sent as `isn`.
    let file = std::env::temp_dir().join(format!("sluice-call-{}.json", std::process::id()));
    std::fs::write(&file, r#"{"req": {"message": "from a file"}}"#).unwrap();
    let at = format!("@{}", file.display());
    let out = call(
        &[
            &addr,
            "Echo",
            "--idl",
            &tools,
            "-d",
            &at,
            "--service-name",
            "Renamed",
            "-v",
        ],
        None,
    );
    std::fs::remove_file(&file).unwrap();
    assert_eq!(out.code, OK, "{}", out.describe());
    assert_eq!(out.json(), json!({"message": "from a file"}));
    out.stderr_has("> isn: Renamed");
    // A declared exception: printed as JSON, exit 5.
    let out = call(
        &[
            &addr,
            "Raise",
            "--idl",
            &tools,
            "-d",
            r#"{"err":{"code":7,"message":"no"}}"#,
        ],
        None,
    );
    assert_eq!(out.code, DECLARED, "{}", out.describe());
    assert_eq!(out.json(), json!({"err": {"code": 7, "message": "no"}}));
    assert!(
        out.stderr
            .contains("declared exception err (base.EchoError)"),
        "{}",
        out.describe()
    );
    // A TApplicationException: exit 4 with its type and message.
    let out = call(&[&addr, "EchoFail", "--idl", &tools, "-d", "{}"], None);
    assert_eq!(out.code, APPLICATION, "{}", out.describe());
    assert!(
        out.stderr
            .contains("type 6 (INTERNAL_ERROR): biz error: echo: injected failure for EchoFail"),
        "{}",
        out.describe()
    );
    // TTHeader without the inner length, and Buffered.
    for t in ["ttheader-unframed", "buffered"] {
        let out = call(
            &[
                &addr,
                "Echo",
                "--idl",
                &tools,
                "--transport",
                t,
                "-d",
                r#"{"req":{"message":"u"}}"#,
            ],
            None,
        );
        assert_eq!(out.code, OK, "{t}: {}", out.describe());
        assert_eq!(out.json(), json!({"message": "u"}), "{t}");
    }
    // Kitex protobuf over TTHeader (the default for a .proto) and Framed.
    for t in ["ttheader", "framed"] {
        let out = call(
            &[
                &addr,
                "echo.EchoService/Echo",
                "--idl",
                &proto,
                "--transport",
                t,
                "--compact",
                "-d",
                r#"{"message":"pb","tier":"GOLD","delta":-3}"#,
            ],
            None,
        );
        assert_eq!(out.code, OK, "{t}: {}", out.describe());
        assert_eq!(
            out.stdout.trim(),
            r#"{"message":"pb","tenant":"","tier":"GOLD","delta":-3}"#,
            "{t}"
        );
    }
    let out = call(&[&addr, "EchoFail", "--idl", &proto, "-d", "{}"], None);
    assert_eq!(out.code, APPLICATION, "{}", out.describe());
    out.stderr_has("injected failure for EchoFail");
}

#[test]
fn call_errors_are_clear_and_classed_by_exit_code() {
    let (_echo, addr) = sluice_echo();
    let tools = idl("tests/idl/tools.thrift");
    // A bad IDL names the file and line; nothing is sent.
    let out = call(
        &[
            &addr,
            "Echo",
            "--idl",
            &idl("tests/idl/bad.thrift"),
            "-d",
            "{}",
        ],
        None,
    );
    assert_eq!(out.code, USAGE, "{}", out.describe());
    out.stderr_has("bad.thrift at line 7");
    let out = call(
        &[
            &addr,
            "Echo",
            "--idl",
            &idl("tests/idl/bad.proto"),
            "-d",
            "{}",
        ],
        None,
    );
    assert_eq!(out.code, USAGE, "{}", out.describe());
    out.stderr_has("bad.proto:7:");
    // A JSON field the IDL does not have, and JSON that is not JSON.
    let out = call(
        &[
            &addr,
            "Echo",
            "--idl",
            &tools,
            "-d",
            r#"{"req":{"mesage":"x"}}"#,
        ],
        None,
    );
    assert_eq!(out.code, USAGE, "{}", out.describe());
    assert!(
        out.stderr
            .contains("req: EchoRequest has no field \"mesage\" (it has: message, tenant"),
        "{}",
        out.describe()
    );
    let out = call(
        &[&addr, "Echo", "--idl", &tools, "-d", "{\"req\":\n {"],
        None,
    );
    assert_eq!(out.code, USAGE, "{}", out.describe());
    out.stderr_has("line 2");
    let out = call(
        &[
            &addr,
            "Echo",
            "--idl",
            &idl("tests/idl/tools.proto"),
            "-d",
            r#"{"mesage":"x"}"#,
        ],
        None,
    );
    assert_eq!(out.code, USAGE, "{}", out.describe());
    out.stderr_has("mesage");
    // A method the IDL does not have; a stream over a ping-pong transport.
    let out = call(&[&addr, "Nope", "--idl", &tools], None);
    assert_eq!(out.code, USAGE, "{}", out.describe());
    assert!(
        out.stderr.contains("has no method \"Nope\" (it has: Echo,"),
        "{}",
        out.describe()
    );
    let out = call(
        &[&addr, "EchoBidi", "--idl", &tools, "--transport", "framed"],
        None,
    );
    assert_eq!(out.code, USAGE, "{}", out.describe());
    out.stderr_has("streaming method");
    // A bad line in a stream stops the call and names the line.
    let out = call(
        &[&addr, "EchoBidi", "--idl", &tools],
        Some("{\"message\":\"a\"}\n{\"message\": 5}\n"),
    );
    assert_eq!(out.code, USAGE, "{}", out.describe());
    out.stderr_has("request 2: message: expected a string");
    // A downstream that is down, for ping-pong and both stream families.
    let down = free_addr().to_string();
    for t in ["ttheader", "ttstream", "grpc"] {
        let method = if t == "ttheader" { "Echo" } else { "EchoBidi" };
        let out = call(
            &[&down, method, "--idl", &tools, "--transport", t, "-d", "{}"],
            None,
        );
        assert_eq!(out.code, TRANSPORT, "{t}: {}", out.describe());
        assert!(out.stderr.contains(&down), "{t}: {}", out.describe());
    }
    // A call slower than its timeout.
    let started = Instant::now();
    let out = call(
        &[
            &addr,
            "Sleep300",
            "--idl",
            &tools,
            "--timeout",
            "100ms",
            "-d",
            "{}",
        ],
        None,
    );
    assert_eq!(out.code, TRANSPORT, "{}", out.describe());
    out.stderr_has("within the timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// The Python interpreter: `$PYTHON3` if set, else `python3`.
fn python() -> PathBuf {
    std::env::var_os("PYTHON3")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// The grpcio echo server of `tests/peers/grpcio_echo.py`, or `None` (the test skips) when
/// grpcio and grpcio-tools are not installed and `SLUICE_REQUIRE_GRPCIO` is not set.
fn grpcio_echo() -> Option<(Peer, String)> {
    let probe = Command::new(python())
        .args(["-c", "import grpc, grpc_tools"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        let why = probe
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_else(|e| e.to_string());
        if std::env::var_os("SLUICE_REQUIRE_GRPCIO").is_some() {
            panic!("SLUICE_REQUIRE_GRPCIO is set but grpcio-tools is not usable: {why}");
        }
        println!("skipped: grpcio and grpcio-tools not installed (pip install grpcio grpcio-tools): {why}");
        return None;
    }
    let mut child = Command::new(python())
        .arg(root().join("tests/peers/grpcio_echo.py"))
        .arg("--proto-dir")
        .arg(root().join("tests/idl"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the grpcio echo server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("grpcio echo said {line:?}"))
        .to_owned();
    Some((Peer(child), addr))
}

#[test]
fn call_speaks_protobuf_grpc_to_a_grpcio_server() {
    let Some((_peer, addr)) = grpcio_echo() else {
        return;
    };
    let proto = idl("tests/idl/tools.proto");
    let out = call(
        &[
            &addr,
            "echo.EchoService/Echo",
            "--idl",
            &proto,
            "--transport",
            "grpc",
            "--persistent",
            "TENANT=gold",
            "-v",
            "-d",
            r#"{"message":"hi","tier":"SILVER","delta":-7}"#,
        ],
        None,
    );
    assert_eq!(out.code, OK, "{}", out.describe());
    assert_eq!(
        out.json(),
        json!({"message": "grpcio: hi", "tenant": "gold", "tier": "SILVER", "delta": -7})
    );
    out.stderr_has("> rpc-persist-tenant: gold");
    out.stderr_has("< x-served-by: grpcio");
    // Bidi (gRPC is the default for a proto stream), client and server streams.
    let out = call(
        &[&addr, "EchoService/EchoBidi", "--idl", &proto],
        Some("{\"message\":\"a\"}\n{\"message\":\"b\"}\n{\"message\":\"c\"}\n"),
    );
    assert_eq!(out.code, OK, "{}", out.describe());
    let messages: Vec<Value> = out.lines().iter().map(|v| v["message"].clone()).collect();
    assert_eq!(messages, [json!("a!"), json!("b!"), json!("c!")]);
    let out = call(
        &[&addr, "EchoClient", "--idl", &proto, "--compact"],
        Some("{\"message\":\"x\"}\n{\"message\":\"y\"}\n"),
    );
    assert_eq!(out.code, OK, "{}", out.describe());
    assert_eq!(out.json()["message"], "x,y");
    let out = call(
        &[
            &addr,
            "EchoServer",
            "--idl",
            &proto,
            "-d",
            r#"{"message":"s"}"#,
        ],
        None,
    );
    assert_eq!(out.code, OK, "{}", out.describe());
    let messages: Vec<Value> = out.lines().iter().map(|v| v["message"].clone()).collect();
    assert_eq!(messages, [json!("s 0"), json!("s 1"), json!("s 2")]);
    // A gRPC error status: exit 4, code and message.
    let out = call(
        &[
            &addr,
            "EchoFail",
            "--idl",
            &proto,
            "--transport",
            "grpc",
            "-d",
            "{}",
        ],
        None,
    );
    assert_eq!(out.code, APPLICATION, "{}", out.describe());
    assert!(
        out.stderr
            .contains("gRPC status 3 (INVALID_ARGUMENT): grpcio echo: EchoFail always fails"),
        "{}",
        out.describe()
    );
}
