//! An echo [`DefaultHandler`]: the downstream behind `sluice demo`, the tests and benchmarks.
//!
//! For thrift it turns the args struct `0C 00 01 <req> 00` into the result struct
//! `0C 00 00 <req> 00` (the request struct comes back as the success field), so a generated
//! `EchoResponse Echo(1: EchoRequest req)` client gets its request back. For Kitex protobuf it
//! returns the request message. Method names change the behaviour, for tests:
//!
//! * `EchoFail`: an exception `biz error: echo: injected failure for EchoFail` (type 6), as
//!   Kitex's test server sends;
//! * `EchoBizError`: a REPLY with `biz-status` 502 and `biz-message`;
//! * `Sleep<N>` (e.g. `Sleep250`): waits N ms, then echoes;
//! * anything else: echoes.
//!
//! Oneway requests are counted in [`EchoHandler::oneway_seen`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_sniff::Codec;
use sluice_thrift::{ApplicationException, ExceptionKind, MessageType};

use crate::{DefaultHandler, Request, Response};

/// Resets an [`EchoHandler`] remembers: the first ones, so memory stays flat under a flood.
pub const MAX_RESETS_KEPT: usize = 64;

/// Echoes requests back; see the module docs.
#[derive(Debug, Default)]
pub struct EchoHandler {
    oneway: AtomicU64,
    requests: AtomicU64,
    last_str_kvs: std::sync::Mutex<Vec<(String, String)>>,
    last_int_kvs: std::sync::Mutex<Vec<(u16, String)>>,
    resets: std::sync::Mutex<Vec<sluice_stream::Reset>>,
}

impl EchoHandler {
    /// A new handler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Oneway requests received.
    pub fn oneway_seen(&self) -> u64 {
        self.oneway.load(Ordering::Relaxed)
    }

    /// Requests received, oneway included.
    pub fn requests_seen(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Stream resets received from callers (the first [`MAX_RESETS_KEPT`]).
    pub fn resets_seen(&self) -> Vec<sluice_stream::Reset> {
        self.resets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The integer key/values of the last request.
    pub fn last_int_kvs(&self) -> Vec<(u16, String)> {
        self.last_int_kvs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The string key/values of the last request or stream (to check what a proxy forwarded).
    pub fn last_str_kvs(&self) -> Vec<(String, String)> {
        self.last_str_kvs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The echo of a thrift args struct: field 1 becomes field 0 (`success`).
pub fn echo_result(args: &Bytes) -> Bytes {
    if args.len() >= 3 && args[0] == 0x0c && args[1] == 0 && args[2] == 1 {
        let mut b = BytesMut::from(&args[..]);
        b[2] = 0;
        b.freeze()
    } else {
        args.clone()
    }
}

impl DefaultHandler for EchoHandler {
    async fn handle(&self, req: Request) -> Response {
        self.requests.fetch_add(1, Ordering::Relaxed);
        *self.last_str_kvs.lock().unwrap_or_else(|e| e.into_inner()) = req
            .header
            .str_kvs
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into(),
                    String::from_utf8_lossy(v).into(),
                )
            })
            .collect();
        *self.last_int_kvs.lock().unwrap_or_else(|e| e.into_inner()) = req
            .header
            .int_kvs
            .iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(v).into()))
            .collect();
        if req.msg_type == MessageType::Oneway {
            self.oneway.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(ms) = req
            .method
            .strip_prefix("Sleep")
            .and_then(|n| n.parse::<u64>().ok())
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        match req.method.as_str() {
            "EchoFail" => Response::error(ApplicationException::new(
                ExceptionKind::INTERNAL_ERROR,
                "biz error: echo: injected failure for EchoFail",
            )),
            "EchoBizError" => {
                let mut r = Response::reply(Bytes::from_static(&[0]));
                r.str_kvs.insert("biz-status", "502");
                r.str_kvs.insert("biz-message", "injected biz error");
                r
            }
            _ => match req.codec {
                Codec::Thrift => Response::reply(echo_result(&req.args)),
                Codec::KitexProtobuf => Response::reply(req.args),
            },
        }
    }
}

/// Streams: the same echo service, as Kitex's test server behaves per method name.
///
/// * `EchoClient`: reads every message, then sends the last one back and ends;
/// * `EchoServer`: for each message sends it back twice;
/// * a method containing `Fail` (e.g. `EchoBidiFail`): echoes one message, then ends with the
///   error `biz error: echo: injected stream failure after 1 messages` (type 6);
/// * anything else (`EchoBidi`): echoes each message; ends when the client half-closes.
///
/// Resets from the caller are recorded in [`EchoHandler::resets_seen`].
impl sluice_stream::StreamingHandler for EchoHandler {
    async fn handle(
        &self,
        req: sluice_stream::StreamRequest,
        mut stream: sluice_stream::ServerStream,
    ) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        *self.last_str_kvs.lock().unwrap_or_else(|e| e.into_inner()) = req
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into(),
                    String::from_utf8_lossy(v).into(),
                )
            })
            .collect();
        let mut last = None;
        let mut count = 0u64;
        loop {
            match stream.recv().await {
                Ok(Some(m)) => {
                    count += 1;
                    match req.method.as_str() {
                        "EchoClient" => last = Some(m),
                        "EchoServer" => {
                            if stream.send(m.clone()).await.is_err()
                                || stream.send(m).await.is_err()
                            {
                                return;
                            }
                        }
                        _ => {
                            if stream.send(m).await.is_err() {
                                return;
                            }
                            if req.method.contains("Fail") {
                                stream
                                    .finish(sluice_stream::StreamEnd::error(
                                        // 6 in the stream's own family (a TTStream internal
                                        // error; for gRPC the number the echo always sent).
                                        match req.protocol {
                                            sluice_stream::Protocol::TTStream => {
                                                sluice_stream::StatusCode::TTStream(6)
                                            }
                                            sluice_stream::Protocol::Grpc { .. } => {
                                                sluice_stream::StatusCode::Grpc(6)
                                            }
                                        },
                                        format!("biz error: echo: injected stream failure after {count} messages"),
                                    ))
                                    .await;
                                return;
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(reset) => {
                    let mut resets = self.resets.lock().unwrap_or_else(|e| e.into_inner());
                    // The first ones are kept for tests; a long-running echo keeps no more.
                    if resets.len() < MAX_RESETS_KEPT {
                        resets.push(reset);
                    }
                    return;
                }
            }
        }
        if let Some(m) = last {
            let _ = stream.send(m).await;
        }
        stream.finish(sluice_stream::StreamEnd::ok()).await;
    }
}
