//! Stream forwarding: TTStream to TTStream (and gRPC to gRPC), never one into the other.
//!
//! Each side's incoming events are spliced into the other side's outgoing sink, so messages go
//! from one connection's reader to the other connection without a task in between; room is
//! bounded on both sides, so a slow reader on either side slows the other side's reads. A half-close travels as a half-close; an upstream reset becomes a
//! downstream reset (TTStream: with the cancel path `ttscp` extended by this proxy's name); a
//! downstream reset ends the upstream stream with an error; a deadline ends both.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use sluice_client::{OpenStream, TTStreamClient};
use sluice_http2::{GrpcClient, GrpcClientConfig, OpenRequest};
use sluice_stream::{
    ClientSend, ClientStream, Closed, Event, EventSink, Metadata, Protocol, Reset, ServerSend,
    ServerStream, StreamEnd, StreamRequest, StreamingHandler,
};
use sluice_thrift::ExceptionKind;
use sluice_ttheader::str_key;
use tokio::sync::oneshot;

use crate::forward::Forwarder;
use crate::silence::{FirstResponse, SilenceWatch};

/// Name this proxy adds to a TTStream cancel path.
pub(crate) const CANCEL_PATH_NAME: &str = "sluice";

/// Stream clients, created on demand per downstream and family.
#[derive(Debug, Default)]
pub(crate) struct StreamClients {
    ttstream: RwLock<HashMap<String, Arc<TTStreamClient>>>,
    grpc: RwLock<HashMap<String, Arc<GrpcClient>>>,
}

/// gRPC status codes used here.
mod grpc_code {
    pub(super) const CANCELLED: u32 = 1;
    pub(super) const DEADLINE_EXCEEDED: u32 = 4;
    pub(super) const UNIMPLEMENTED: u32 = 12;
    pub(super) const UNAVAILABLE: u32 = 14;
}

/// An error end in the upstream's protocol.
fn error_end(protocol: &Protocol, kind: ErrorKind, message: String) -> StreamEnd {
    let code = match (protocol, kind) {
        (Protocol::TTStream, ErrorKind::NoRoute) => ExceptionKind::UNKNOWN_METHOD.0 as u32,
        (Protocol::TTStream, ErrorKind::Unavailable) => ExceptionKind::INTERNAL_ERROR.0 as u32,
        // 12009: "canceled by downstream" in Kitex's TTStream codes.
        (Protocol::TTStream, ErrorKind::DownstreamReset) => 12009,
        (Protocol::TTStream, ErrorKind::Deadline) => 12015,
        (Protocol::Grpc { .. }, ErrorKind::NoRoute) => grpc_code::UNIMPLEMENTED,
        (Protocol::Grpc { .. }, ErrorKind::Unavailable) => grpc_code::UNAVAILABLE,
        (Protocol::Grpc { .. }, ErrorKind::DownstreamReset) => grpc_code::CANCELLED,
        (Protocol::Grpc { .. }, ErrorKind::Deadline) => grpc_code::DEADLINE_EXCEEDED,
    };
    StreamEnd::error(code, message)
}

#[derive(Debug, Clone, Copy)]
enum ErrorKind {
    NoRoute,
    Unavailable,
    DownstreamReset,
    Deadline,
}

/// Header keys that belong to one hop.
fn forwardable(mut md: Metadata) -> Metadata {
    md.retain(|k, _| k != str_key::CONN_RESET.as_bytes());
    md
}

impl Forwarder {
    fn ttstream_client(&self, downstream: &str) -> Option<Arc<TTStreamClient>> {
        if let Some(c) = self
            .streams
            .ttstream
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(downstream)
        {
            return Some(c.clone());
        }
        let cfg = self.config().downstreams.get(downstream)?.clone();
        let mut w = self
            .streams
            .ttstream
            .write()
            .unwrap_or_else(|e| e.into_inner());
        Some(
            w.entry(downstream.to_owned())
                .or_insert_with(|| Arc::new(TTStreamClient::new(cfg)))
                .clone(),
        )
    }

    fn grpc_client(&self, downstream: &str) -> Option<Arc<GrpcClient>> {
        if let Some(c) = self
            .streams
            .grpc
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(downstream)
        {
            return Some(c.clone());
        }
        let d = self.config().downstreams.get(downstream)?;
        let mut cfg = GrpcClientConfig::new(d.endpoints.iter().map(|e| e.addr).collect());
        cfg.connect_timeout = d.connect_timeout;
        cfg.max_message_size = d.max_frame_size;
        let mut w = self.streams.grpc.write().unwrap_or_else(|e| e.into_inner());
        Some(
            w.entry(downstream.to_owned())
                .or_insert_with(|| Arc::new(GrpcClient::new(cfg)))
                .clone(),
        )
    }

    async fn open_downstream(
        &self,
        req: &StreamRequest,
        downstream: &str,
        deadline: Option<std::time::Instant>,
    ) -> Result<ClientStream, String> {
        match &req.protocol {
            Protocol::TTStream => {
                let client = self
                    .ttstream_client(downstream)
                    .ok_or_else(|| format!("downstream {downstream:?} is not configured"))?;
                client
                    .open(OpenStream {
                        method: req.method.clone(),
                        service: req.service.clone(),
                        headers: forwardable(req.headers.clone()),
                    })
                    .await
                    .map_err(|e| e.to_string())
            }
            Protocol::Grpc {
                path,
                content_type,
                authority,
            } => {
                let client = self
                    .grpc_client(downstream)
                    .ok_or_else(|| format!("downstream {downstream:?} is not configured"))?;
                client
                    .open(&OpenRequest {
                        path: path.clone(),
                        content_type: content_type.clone(),
                        authority: authority.clone(),
                        headers: forwardable(req.headers.clone()),
                        // The effective deadline (caller's, route default, route cap): the
                        // downstream gets what remains of it as `grpc-timeout`.
                        deadline,
                    })
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}

impl StreamingHandler for Forwarder {
    async fn handle(&self, req: StreamRequest, up: ServerStream) {
        self.stats().streams.fetch_add(1, Ordering::Relaxed);
        let route = self
            .route_by(&req.service, &req.method, |k| {
                req.headers.get(k).map(|v| v.as_ref())
            })
            .cloned();
        let Some(route) = route else {
            self.stats().unrouted.fetch_add(1, Ordering::Relaxed);
            let msg = format!(
                "sluice: no route for service {:?} method {:?}",
                req.service, req.method
            );
            up.finish(error_end(&req.protocol, ErrorKind::NoRoute, msg))
                .await;
            return;
        };
        let now = std::time::Instant::now();
        let mut deadline = req.deadline.or(route.timeout.map(|t| now + t));
        if let Some(max) = route.max_timeout {
            deadline = Some(deadline.map_or(now + max, |d| d.min(now + max)));
        }
        let down = match self
            .open_downstream(&req, &route.downstream, deadline)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                self.stats()
                    .downstream_errors
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.downstream_log.allow() {
                    tracing::warn!(peer = %req.peer, service = %req.service, downstream = %route.downstream, kind = "unavailable", error = %e, suppressed, "downstream stream could not be opened");
                }
                let msg = format!("sluice: downstream {:?}: {e}", route.downstream);
                up.finish(error_end(&req.protocol, ErrorKind::Unavailable, msg))
                    .await;
                return;
            }
        };
        let first_response_timeout = self
            .config()
            .downstreams
            .get(&route.downstream)
            .map_or(std::time::Duration::ZERO, |d| d.first_response_timeout);
        let outcome = pump(
            &req.protocol,
            up,
            down,
            deadline,
            &route.downstream,
            first_response_timeout,
            &self.silence,
        )
        .await;
        if outcome != Outcome::Ended {
            self.stats()
                .downstream_errors
                .fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.downstream_log.allow() {
                let kind = match outcome {
                    Outcome::NoResponse => "no first response",
                    _ => "deadline exceeded",
                };
                tracing::warn!(peer = %req.peer, service = %req.service, downstream = %route.downstream, kind, suppressed, "stream ended by the proxy");
            }
        }
    }
}

/// Upstream events, handed to the downstream stream as they are read.
struct ToDownstream {
    down: ClientSend,
    /// Set once the downstream ended the stream: later messages from the caller are dropped.
    down_ended: Arc<std::sync::atomic::AtomicBool>,
    /// The first-response clock, restarted by each caller message until the downstream answers.
    first: Arc<FirstResponse>,
}

impl EventSink for ToDownstream {
    fn push(&self, ev: Event) -> Result<(), Closed> {
        match ev {
            Event::Message(_) | Event::HalfClose if self.down_ended.load(Ordering::Acquire) => {
                Ok(())
            }
            Event::Message(_) | Event::HalfClose => {
                self.first.caller_active();
                self.down.push(ev)
            }
            Event::Reset(reset) => {
                // The caller reset the stream (or its connection went away, code 0): reset it
                // downstream, with this proxy added to the cancel path.
                let cancel_path = sluice_ttstream::extend_cancel_path(
                    reset.cancel_path.as_deref(),
                    CANCEL_PATH_NAME,
                );
                self.down.push(Event::Reset(Reset {
                    cancel_path,
                    ..reset
                }))
            }
            // Not sent by callers.
            Event::Headers(_) | Event::End(_) => Ok(()),
        }
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.down.poll_ready(cx)
    }
}

/// Downstream events, handed to the upstream stream as they are read.
struct ToUpstream {
    up: ServerSend,
    down: ClientSend,
    protocol: Protocol,
    downstream: String,
    /// Told when the stream has ended on the upstream side.
    done: Mutex<Option<oneshot::Sender<()>>>,
    /// Set when the forwarder ended the upstream side itself (deadline): what the downstream
    /// sends or how it ends no longer reaches the caller.
    cut: std::sync::atomic::AtomicBool,
    /// Shared with `ToDownstream`: set when the downstream ended the stream.
    down_ended: Arc<std::sync::atomic::AtomicBool>,
    first: Arc<FirstResponse>,
}

impl ToUpstream {
    fn finished(&self) {
        self.down_ended.store(true, Ordering::Release);
        if let Some(tx) = self.done.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(());
        }
    }
}

impl EventSink for ToUpstream {
    fn push(&self, ev: Event) -> Result<(), Closed> {
        if self.cut.load(Ordering::Acquire) {
            return Err(Closed);
        }
        self.first.downstream_answered();
        match ev {
            Event::Headers(md) => {
                let _ = self.up.push(Event::Headers(forwardable(md)));
                Ok(())
            }
            Event::Message(m) => {
                if self.up.push(Event::Message(m)).is_err() {
                    // The upstream is gone: cancel downstream.
                    let _ = self.down.push(Event::Reset(Reset {
                        code: 12007,
                        message: "upstream went away".into(),
                        cancel_path: Some(CANCEL_PATH_NAME.into()),
                    }));
                    self.finished();
                    return Err(Closed);
                }
                Ok(())
            }
            Event::End(mut end) => {
                end.trailers = forwardable(std::mem::take(&mut end.trailers));
                let _ = self.up.push(Event::End(end));
                self.finished();
                Ok(())
            }
            Event::Reset(r) => {
                let msg = format!(
                    "sluice: downstream {:?} reset the stream: {} (code {})",
                    self.downstream, r.message, r.code
                );
                let _ = self.up.push(Event::End(error_end(
                    &self.protocol,
                    ErrorKind::DownstreamReset,
                    msg,
                )));
                self.finished();
                Ok(())
            }
            Event::HalfClose => Ok(()),
        }
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.up.poll_ready(cx)
    }
}

/// Forwards one stream until it ends on both sides.
///
/// No task of its own carries messages: each side's incoming events are spliced into a sink
/// that hands them to the other side, so a message goes from one connection's reader straight
/// onto the other connection's write queue (TTStream) or stream task (gRPC). This task only
/// waits for the end, the deadline, and the downstream's first response.
async fn pump(
    protocol: &Protocol,
    up: ServerStream,
    down: ClientStream,
    deadline: Option<std::time::Instant>,
    downstream: &str,
    first_response_timeout: std::time::Duration,
    silence: &SilenceWatch,
) -> Outcome {
    let (up_rx, up_tx) = up.split();
    let (down_tx, down_rx) = down.split();
    let (done_tx, done_rx) = oneshot::channel();
    let down_ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let first = Arc::new(FirstResponse::new(first_response_timeout));
    // Watched only while the stream runs (and not at all with the timeout off).
    let _watched = (!first_response_timeout.is_zero()).then(|| silence.watch(first.clone()));
    up_rx.splice(Arc::new(ToDownstream {
        down: down_tx.clone(),
        down_ended: down_ended.clone(),
        first: first.clone(),
    }));
    let to_up = Arc::new(ToUpstream {
        up: up_tx.clone(),
        down: down_tx.clone(),
        protocol: protocol.clone(),
        downstream: downstream.to_owned(),
        done: Mutex::new(Some(done_tx)),
        cut: std::sync::atomic::AtomicBool::new(false),
        down_ended,
        first: first.clone(),
    });
    down_rx.splice(to_up.clone());
    let outcome = wait_end(done_rx, deadline, &first, !first_response_timeout.is_zero()).await;
    let message = match outcome {
        Outcome::Ended => return outcome,
        Outcome::Deadline => {
            format!("sluice: timeout: downstream {downstream:?}: deadline exceeded")
        }
        Outcome::NoResponse => format!(
            "sluice: timeout: downstream {downstream:?} sent no response within {first_response_timeout:?}"
        ),
    };
    // The caller hears of the deadline, not of the downstream reset that follows from it
    // (resetting the downstream stream ends its incoming side, which `ToUpstream` would
    // otherwise report as a downstream reset).
    to_up.cut.store(true, Ordering::Release);
    up_tx
        .finish(error_end(protocol, ErrorKind::Deadline, message))
        .await;
    down_tx
        .reset(Reset {
            code: 12015,
            message: "deadline exceeded".into(),
            cancel_path: Some(CANCEL_PATH_NAME.into()),
        })
        .await;
    outcome
}

/// How a forwarded stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// On its own: both sides finished, or one reset it.
    Ended,
    /// The stream's deadline passed.
    Deadline,
    /// The downstream stayed silent past the first-response timeout.
    NoResponse,
}

/// Waits for the stream to end, its deadline, or the downstream's silence to run out (told by
/// the proxy's [`SilenceWatch`]).
async fn wait_end(
    done_rx: oneshot::Receiver<()>,
    deadline: Option<std::time::Instant>,
    first: &FirstResponse,
    watched: bool,
) -> Outcome {
    // `done_rx` also resolves (with an error) when the downstream stream is dropped without an
    // end reaching the upstream: it was reset from the upstream side.
    let mut done_rx = std::pin::pin!(done_rx);
    let mut deadline_sleep = std::pin::pin!(async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    });
    loop {
        let watching = watched && !first.seen();
        tokio::select! {
            _ = &mut done_rx => return Outcome::Ended,
            () = &mut deadline_sleep => return Outcome::Deadline,
            () = first.notify.notified(), if watching => {
                if first.expired() && !first.seen() {
                    return Outcome::NoResponse;
                }
            }
        }
    }
}
