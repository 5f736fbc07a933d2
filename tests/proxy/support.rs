//! Test support: the real `sluice` binary as a child process, in-process echo downstreams, and
//! raw-socket request helpers built on the codec crates.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use sluice_server::echo::EchoHandler;
use sluice_server::{DefaultHandler, Drain, DrainHandle, Server, ServerConfig};
use sluice_thrift::{envelope, kitex_pb, MessageType};
use sluice_ttheader::Header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An in-process downstream server with `handler`.
pub(crate) async fn start_server<H: DefaultHandler>(handler: Arc<H>) -> (SocketAddr, DrainHandle) {
    let l = sluice_server::bind_listener(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = l.local_addr().unwrap();
    let (h, d): (DrainHandle, Drain) = sluice_server::drain::channel();
    let s = Server::new(ServerConfig::default().with_name("downstream"), handler);
    tokio::spawn(s.serve(l, d));
    (addr, h)
}

/// An in-process echo downstream (ping-pong and TTStream).
pub(crate) async fn start_echo() -> (SocketAddr, Arc<EchoHandler>, DrainHandle) {
    let h = Arc::new(EchoHandler::new());
    let (addr, d) = start_streaming(h.clone(), h.clone()).await;
    (addr, h, d)
}

/// An in-process downstream with a ping-pong and a streaming handler.
pub(crate) async fn start_streaming<H: DefaultHandler, S: sluice_stream::StreamingHandler>(
    handler: Arc<H>,
    streaming: Arc<S>,
) -> (SocketAddr, DrainHandle) {
    let l = sluice_server::bind_listener(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = l.local_addr().unwrap();
    let (h, d): (DrainHandle, Drain) = sluice_server::drain::channel();
    let s = Server::new(ServerConfig::default().with_name("downstream"), handler)
        .with_streaming(streaming);
    tokio::spawn(s.serve(l, d));
    (addr, h)
}

/// Waits (up to 20 s) until a process started a moment ago accepts connections on `addr`.
pub(crate) fn wait_listening(addr: SocketAddr, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} did not start listening on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `sluice` binary running `run --config` on a temporary file; killed on drop.
pub(crate) struct Sluice {
    child: Child,
    pub(crate) addr: SocketAddr,
    /// The address of `{grpc_port}`, when the config names one (the fault suite's second
    /// listener).
    #[allow(dead_code)]
    pub(crate) grpc_addr: Option<SocketAddr>,
    /// The address of `{admin_port}` (an `[admin]` listener), when the config names one.
    #[allow(dead_code)]
    pub(crate) admin_addr: Option<SocketAddr>,
    config_path: PathBuf,
    /// What the process logged so far: its stderr is read as it comes, so a chatty proxy
    /// never blocks on a full pipe.
    log: Arc<std::sync::Mutex<String>>,
    log_reader: Option<std::thread::JoinHandle<()>>,
}

impl Sluice {
    /// Starts the binary with `toml`, where `{port}` is replaced by a free port for the first
    /// listener (and `{grpc_port}` and `{admin_port}`, if present, by others); waits until it
    /// accepts connections.
    pub(crate) fn start(toml: &str) -> Sluice {
        Self::start_with(toml, &[])
    }

    /// Like [`start`](Self::start), with more arguments to `sluice run`.
    pub(crate) fn start_with(toml: &str, args: &[&str]) -> Sluice {
        let port = free_port();
        let grpc_port = toml.contains("{grpc_port}").then(free_port);
        let admin_port = toml.contains("{admin_port}").then(free_port);
        let mut toml = toml.replace("{port}", &port.to_string());
        if let Some(p) = grpc_port {
            toml = toml.replace("{grpc_port}", &p.to_string());
        }
        if let Some(p) = admin_port {
            toml = toml.replace("{admin_port}", &p.to_string());
        }
        let path =
            std::env::temp_dir().join(format!("sluice-test-{}-{}.toml", std::process::id(), port));
        std::fs::write(&path, &toml).unwrap();
        // SLUICE_BIN runs the suite against another build (an older release, say).
        let bin =
            std::env::var("SLUICE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sluice").into());
        let mut child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&path)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sluice binary starts");
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let log_reader = child.stderr.take().map(|mut stderr| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = stderr.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    log.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            })
        });
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_listening(addr, "sluice");
        Sluice {
            child,
            addr,
            grpc_addr: grpc_port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
            admin_addr: admin_port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
            config_path: path,
            log,
            log_reader,
        }
    }

    /// The configuration file it runs on (ports filled in).
    #[allow(dead_code)]
    pub(crate) fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (a graceful drain).
    pub(crate) fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits for the process to exit on its own, up to `timeout`.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Stops the process and returns what it logged.
    pub(crate) fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The reader thread ends at the EOF the exit causes.
        if let Some(r) = self.log_reader.take() {
            let _ = r.join();
        }
        let log = self.log.lock().unwrap().clone();
        log
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// Resident memory of process `pid`, in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap()
}

/// Open file descriptors of process `pid` (used by the fault suite).
#[allow(dead_code)]
pub(crate) fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `Echo_args{1: EchoRequest{1: msg}}`.
pub(crate) fn thrift_args(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_slice(&[0x0c, 0x00, 0x01, 0x0b, 0x00, 0x01]);
    b.put_i32(msg.len() as i32);
    b.put_slice(msg);
    b.put_slice(&[0, 0]);
    b.freeze()
}

/// The ping-pong framings a raw test client can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    TTHeader { framed: bool, flags: u16 },
    Framed,
    Buffered,
}

/// Encodes one request message (thrift or Kitex pb) in `shape`.
pub(crate) fn request(
    shape: Shape,
    header: &Header,
    pb: bool,
    method: &str,
    msg_type: MessageType,
    seq: i32,
    args: &[u8],
) -> BytesMut {
    let mut msg = BytesMut::new();
    if pb {
        kitex_pb::write_header(&mut msg, method, msg_type, seq);
    } else {
        envelope::write_header(&mut msg, method, msg_type, seq);
    }
    msg.put_slice(args);
    let mut out = BytesMut::new();
    match shape {
        Shape::TTHeader { framed, flags } => {
            let mut h = header.clone();
            h.seq_id = seq;
            h.flags = flags;
            sluice_ttheader::encode(&h, framed, &msg, &mut out).unwrap();
        }
        Shape::Framed => {
            out.put_u32(msg.len() as u32);
            out.put_slice(&msg);
        }
        Shape::Buffered => out.put_slice(&msg),
    }
    out
}

/// A decoded reply.
#[derive(Debug)]
pub(crate) struct RawReply {
    pub(crate) header: Option<sluice_ttheader::Frame>,
    pub(crate) method: String,
    pub(crate) msg_type: MessageType,
    pub(crate) seq: i32,
    pub(crate) body: Bytes,
}

/// Reads one reply of `shape` from `stream`, within `timeout`.
pub(crate) async fn read_reply(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    shape: Shape,
    timeout: Duration,
) -> Option<RawReply> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let message = match shape {
            Shape::TTHeader { .. } => sluice_ttheader::Decoder::default()
                .decode(buf)
                .unwrap()
                .map(|f| (Some(f.clone()), f.payload)),
            Shape::Framed => sluice_framed::FramedCodec::default()
                .decode(buf)
                .unwrap()
                .map(|m| (None, m.message)),
            Shape::Buffered => sluice_framed::BufferedCodec::default()
                .decode(buf)
                .unwrap()
                .map(|m| (None, m)),
        };
        if let Some((header, message)) = message {
            let env = if message[0] == 0x90 {
                kitex_pb::decode_header(&message).unwrap()
            } else {
                envelope::decode_header(&message).unwrap()
            };
            return Some(RawReply {
                header,
                method: env.name.to_owned(),
                msg_type: env.msg_type,
                seq: env.seq_id,
                body: message.slice(env.body_offset..),
            });
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends one request and reads its reply on a fresh connection.
pub(crate) async fn roundtrip(
    addr: SocketAddr,
    shape: Shape,
    header: &Header,
    method: &str,
    args: &[u8],
) -> RawReply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&request(
        shape,
        header,
        false,
        method,
        MessageType::Call,
        7,
        args,
    ))
    .await
    .unwrap();
    let mut buf = BytesMut::new();
    read_reply(&mut s, &mut buf, shape, Duration::from_secs(10))
        .await
        .expect("a reply")
}

/// The TApplicationException in a thrift EXCEPTION reply.
pub(crate) fn exception(r: &RawReply) -> sluice_thrift::ApplicationException {
    assert_eq!(r.msg_type, MessageType::Exception, "expected an exception");
    sluice_thrift::ApplicationException::decode(&r.body)
        .unwrap()
        .0
}

/// The W3C spec's example `traceparent` (sampled).
#[allow(dead_code)]
pub(crate) const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Asserts that `got` continues the trace of `sent` as a child: the same trace id and flags,
/// another parent id (non-zero, lower-case hex), version 00.
#[allow(dead_code)]
pub(crate) fn assert_child_traceparent(got: Option<&str>, sent: &str, what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: the downstream saw no traceparent"));
    assert_eq!(got.len(), 55, "{what}: {got:?}");
    assert_eq!(
        &got[..36],
        &sent[..36],
        "{what}: the same trace id: {got:?}"
    );
    assert_eq!(&got[52..], &sent[52..], "{what}: the same flags: {got:?}");
    let parent = &got[36..52];
    assert_ne!(parent, &sent[36..52], "{what}: a new parent id: {got:?}");
    assert!(
        parent
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            && parent != "0000000000000000",
        "{what}: a valid parent id: {got:?}"
    );
}
