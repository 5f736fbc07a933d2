//! A healthy caller of every protocol, running beside a fault case and recording anything that
//! went wrong for it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_client::{ClientConfig, Endpoint, OpenStream, TTStreamClient};
use sluice_http2::{GrpcClient, GrpcClientConfig, OpenRequest};
use sluice_stream::{ClientStream, Incoming, Metadata};
use sluice_thrift::MessageType;
use sluice_ttheader::{str_key, Header};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::support::{read_reply, request, thrift_args, Shape};

/// How long one healthy call may take. Generous: the cases load the machine's two cores.
const CALL_LIMIT: Duration = Duration::from_secs(5);
/// Pause between a caller's calls.
const PACE: Duration = Duration::from_millis(20);

/// What one protocol's caller saw.
#[derive(Debug)]
pub(crate) struct Tally {
    pub(crate) protocol: &'static str,
    pub(crate) ok: u64,
    pub(crate) errors: Vec<String>,
}

/// The running callers.
pub(crate) struct Healthy {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<Tally>,
}

/// A header naming the healthy service.
pub(crate) fn healthy_header() -> Header {
    let mut h = Header::new(0, 0);
    h.str_kvs.insert(str_key::IDL_SERVICE_NAME, "Healthy");
    h
}

impl Healthy {
    /// Starts one caller per protocol: ping-pong and TTStream on `streams`, gRPC on `grpc`.
    pub(crate) fn start(streams: SocketAddr, grpc: SocketAddr) -> Healthy {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        tasks.spawn(pingpong(streams, stop.clone()));
        tasks.spawn(ttstream(streams, stop.clone()));
        tasks.spawn(grpc_unary(grpc, stop.clone()));
        Healthy { stop, tasks }
    }

    /// Stops the callers and asserts that every call of every protocol succeeded.
    pub(crate) async fn assert_unaffected(mut self, case: &str) {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(t) = self.tasks.join_next().await {
            let t = t.unwrap();
            assert!(
                t.errors.is_empty(),
                "{case}: the healthy {} caller saw {} errors (of {} calls), first: {}",
                t.protocol,
                t.errors.len(),
                t.ok + t.errors.len() as u64,
                t.errors[0]
            );
            assert!(
                t.ok > 0,
                "{case}: the healthy {} caller made no call",
                t.protocol
            );
        }
    }
}

async fn pingpong(addr: SocketAddr, stop: Arc<AtomicBool>) -> Tally {
    let mut t = Tally {
        protocol: "TTHeader",
        ok: 0,
        errors: Vec::new(),
    };
    let shape = Shape::TTHeader {
        framed: true,
        flags: 0,
    };
    let header = healthy_header();
    let mut conn: Option<(TcpStream, BytesMut)> = None;
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        if conn.is_none() {
            match TcpStream::connect(addr).await {
                Ok(s) => conn = Some((s, BytesMut::new())),
                Err(e) => {
                    t.errors.push(format!("connect: {e}"));
                    continue;
                }
            }
        }
        let (s, buf) = conn.as_mut().unwrap();
        let args = thrift_args(format!("healthy {seq}").as_bytes());
        let req = request(shape, &header, false, "Echo", MessageType::Call, seq, &args);
        let outcome = match s.write_all(&req).await {
            Err(e) => Err(format!("write: {e}")),
            Ok(()) => match read_reply(s, buf, shape, CALL_LIMIT).await {
                None => Err("no reply".to_owned()),
                Some(r) if r.msg_type != MessageType::Reply || r.seq != seq => {
                    Err(format!("unexpected reply {:?} seq {}", r.msg_type, r.seq))
                }
                Some(_) => Ok(()),
            },
        };
        match outcome {
            Ok(()) => t.ok += 1,
            Err(e) => {
                t.errors.push(e);
                conn = None;
            }
        }
        tokio::time::sleep(PACE).await;
    }
    t
}

/// Reads a stream to its end: the messages, and whether it ended without an error.
async fn finish(stream: ClientStream, msg: Bytes) -> Result<(), String> {
    let (tx, mut rx) = stream.split();
    tx.send(msg.clone())
        .await
        .map_err(|_| "send failed".to_owned())?;
    tx.close_send()
        .await
        .map_err(|_| "close_send failed".to_owned())?;
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(CALL_LIMIT, rx.recv()).await {
            Err(_) => return Err("no end within the limit".to_owned()),
            Ok(Incoming::Headers(_)) => {}
            Ok(Incoming::Message(m)) => got.push(m),
            Ok(Incoming::End(end)) => {
                if let Some(e) = end.error {
                    return Err(format!("ended with error {}: {}", e.code, e.message));
                }
                if got != vec![msg] {
                    return Err(format!("echo mismatch: {got:?}"));
                }
                return Ok(());
            }
            Ok(Incoming::Reset(r)) => return Err(format!("reset {}: {}", r.code, r.message)),
        }
    }
}

async fn ttstream(addr: SocketAddr, stop: Arc<AtomicBool>) -> Tally {
    let mut t = Tally {
        protocol: "TTStream",
        ok: 0,
        errors: Vec::new(),
    };
    let client = TTStreamClient::new(ClientConfig::new(
        "sluice",
        vec![Endpoint { addr, weight: 1 }],
    ));
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let open = OpenStream {
            hash: None,
            method: "EchoBidi".into(),
            service: "Healthy".into(),
            headers: Metadata::new(),
        };
        let outcome = match tokio::time::timeout(CALL_LIMIT, client.open(open)).await {
            Err(_) => Err("open timed out".to_owned()),
            Ok(Err(e)) => Err(format!("open: {e}")),
            Ok(Ok(s)) => finish(s, thrift_args(format!("stream {i}").as_bytes())).await,
        };
        match outcome {
            Ok(()) => t.ok += 1,
            Err(e) => t.errors.push(e),
        }
        tokio::time::sleep(PACE).await;
    }
    t
}

async fn grpc_unary(addr: SocketAddr, stop: Arc<AtomicBool>) -> Tally {
    let mut t = Tally {
        protocol: "gRPC",
        ok: 0,
        errors: Vec::new(),
    };
    let client = GrpcClient::new(GrpcClientConfig::new(vec![addr]));
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let req = OpenRequest {
            path: "/Healthy/Echo".into(),
            content_type: "application/grpc".into(),
            authority: "sluice".into(),
            headers: Metadata::new(),
            deadline: None,
        };
        let pb = Bytes::from(format!("\x0a\x04{:04}", i % 10_000).into_bytes());
        let outcome = match tokio::time::timeout(CALL_LIMIT, client.open(&req)).await {
            Err(_) => Err("open timed out".to_owned()),
            Ok(Err(e)) => Err(format!("open: {e}")),
            Ok(Ok(s)) => finish(s, pb).await,
        };
        match outcome {
            Ok(()) => t.ok += 1,
            Err(e) => t.errors.push(e),
        }
        tokio::time::sleep(PACE).await;
    }
    t
}
