//! Stream forwarding: TTStream to TTStream (and gRPC to gRPC), never one into the other.
//!
//! Each side's incoming events are spliced into the other side's outgoing sink, so messages go
//! from one connection's reader to the other connection without a task in between; room is
//! bounded on both sides, so a slow reader on either side slows the other side's reads. A half-close travels as a half-close; an upstream reset becomes a
//! downstream reset (TTStream: with the cancel path `ttscp` extended by this proxy's name); a
//! downstream reset ends the upstream stream with an error; a deadline ends both.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::{Call, CallOptions, ClientConfig, GrpcUnary, OpenStream, StreamProtocol};
use sluice_http2::content_type::{GrpcCodec, GrpcContentType};
use sluice_http2::{Code, OpenRequest, Reason};
use sluice_server::ProxyError;
use sluice_sniff::Codec;
use sluice_stream::{
    ClientSend, ClientStream, Closed, ErrorStatus, Event, EventSink, Metadata, Protocol, Reset,
    ResetCode, ServerSend, ServerStream, StatusCode, StreamEnd, StreamRequest, StreamingHandler,
};
use sluice_thrift::{ExceptionKind, MessageType};
use sluice_ttheader::str_key;
use tokio::sync::oneshot;

use crate::convert;
use crate::error;
use crate::forwarder::{Done, Forwarder};
use crate::observe::Active;
use crate::phases::{CallInfo, Metainfo, Phases};
use crate::route::{Family, Payload, RequestHead, Target};
use crate::silence::FirstResponse;
use crate::trace::{self, TraceContext};

/// Name this proxy adds to a TTStream cancel path.
pub(crate) const CANCEL_PATH_NAME: &str = "sluice";

/// Header keys that belong to one hop.
fn forwardable(mut md: Metadata) -> Metadata {
    md.retain(|k, _| k != str_key::CONN_RESET.as_bytes());
    md
}

/// The code of a reset the proxy sends downstream: the TTStream exception type `kind` for a
/// TTStream stream, CANCEL for an HTTP/2 one.
fn cancel_code(protocol: &Protocol, kind: ExceptionKind) -> ResetCode {
    match protocol {
        Protocol::TTStream => ResetCode::TTStream(kind.0),
        Protocol::Grpc { .. } => ResetCode::Http2(Reason::CANCEL.into()),
    }
}

/// The keys a stream of `protocol` carries its `traceparent` in, in the order they are tried.
fn trace_keys(protocol: &Protocol) -> &'static [&'static str; 2] {
    match protocol {
        Protocol::TTStream => &trace::TTHEADER_KEYS,
        Protocol::Grpc { .. } => &trace::GRPC_KEYS,
    }
}

/// A configured downstream's client for a stream.
enum StreamClient {
    TTStream(Arc<sluice_client::TTStreamClient>),
    Grpc(Arc<sluice_http2::GrpcClient>),
    /// gRPC unary calls made ping-pong calls (`grpc_unary = "pingpong"`).
    PingPong(Arc<sluice_client::GenericClient>),
}

/// The destination service a stream names: gRPC `destination-service`, else `:authority`
/// without its port; TTStream sends none.
fn destination(req: &StreamRequest) -> Option<&str> {
    match &req.protocol {
        Protocol::TTStream => None,
        Protocol::Grpc { authority, .. } => req
            .headers
            .get(DESTINATION_SERVICE)
            .and_then(|v| std::str::from_utf8(v).ok())
            .filter(|v| !v.is_empty())
            .or_else(|| {
                let host = match authority.rsplit_once(':') {
                    // An IPv6 literal keeps its colons: only a port after `]` or in a plain
                    // name is cut.
                    Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
                    _ => authority.as_str(),
                };
                (!host.is_empty()).then_some(host)
            }),
    }
}

/// The gRPC metadata key naming the destination service (Kitex's `destination-service`).
const DESTINATION_SERVICE: &str = "destination-service";

fn family(protocol: &Protocol) -> Family {
    match protocol {
        Protocol::TTStream => Family::TTStream,
        Protocol::Grpc { .. } => Family::Grpc,
    }
}

impl<P: Phases> Forwarder<P> {
    /// The client of a configured downstream for a stream of `protocol`: of the caller's
    /// family, or of the one the downstream's `stream_protocol` names.
    fn stream_client(
        &self,
        protocol: &Protocol,
        downstream: &str,
        dc: &ClientConfig,
    ) -> StreamClient {
        if matches!(protocol, Protocol::Grpc { .. }) && dc.grpc_unary == GrpcUnary::PingPong {
            return StreamClient::PingPong(self.clients.pingpong(downstream, || dc.clone()));
        }
        let ttstream = match dc.stream_protocol {
            StreamProtocol::Preserve => matches!(protocol, Protocol::TTStream),
            StreamProtocol::TTStream => true,
            StreamProtocol::Grpc => false,
        };
        if ttstream {
            StreamClient::TTStream(self.clients.ttstream(downstream, || dc.clone()))
        } else {
            StreamClient::Grpc(self.clients.grpc(downstream, || dc.clone()))
        }
    }

    /// Opens the downstream stream of the same family as the caller's, on `client`, or for a
    /// discovered service on its client (made on its first stream).
    async fn open_downstream(
        &self,
        req: &StreamRequest,
        target: &Target<'_>,
        client: Option<StreamClient>,
        headers: Metadata,
        renamed: Option<String>,
    ) -> Result<ClientStream, ProxyError> {
        let downstream = &*target.downstream;
        let client = match client {
            Some(c) => c,
            None => match &req.protocol {
                // Boxed: only a discovering route gets here, and the wait for etcd's first
                // answer would otherwise make every stream's opening larger.
                Protocol::TTStream => {
                    StreamClient::TTStream(Box::pin(self.discovered.ttstream(downstream)).await?)
                }
                Protocol::Grpc { .. } => {
                    StreamClient::Grpc(Box::pin(self.discovered.grpc(downstream)).await?)
                }
            },
        };
        match (&req.protocol, client) {
            (Protocol::TTStream, StreamClient::TTStream(c)) => c
                .open(OpenStream {
                    method: renamed.unwrap_or_else(|| req.method.clone()),
                    service: req.service.clone(),
                    headers,
                    hash: target.hash,
                })
                .await
                .map_err(|e| error::ttstream_open_failed(downstream, e)),
            (
                Protocol::Grpc {
                    path,
                    content_type,
                    authority,
                },
                StreamClient::Grpc(c),
            ) => c
                .open_hashed(
                    &OpenRequest {
                        path: match renamed {
                            // `/package.Service/Method`: the method is the last segment.
                            Some(m) => match path.rfind('/') {
                                Some(i) => format!("{}/{m}", &path[..i]),
                                None => format!("/{m}"),
                            },
                            None => path.clone(),
                        },
                        content_type: content_type.clone(),
                        authority: authority.clone(),
                        headers,
                        // The effective deadline (caller's, route default, route cap): the
                        // downstream gets what remains of it as `grpc-timeout`.
                        deadline: target.deadline,
                    },
                    target.hash,
                )
                .await
                .map_err(|e| error::grpc_open_failed(downstream, e)),
            // Converted: a gRPC thrift stream leaves as TTStream (the message is the bare struct
            // in both), with its metadata as Kitex metainfo. The deadline stays the
            // forwarder's to enforce (TTStream carries none).
            (protocol @ Protocol::Grpc { .. }, StreamClient::TTStream(c)) => {
                if grpc_codec(protocol) != Some(GrpcCodec::Thrift) {
                    return Err(error::unsupported_conversion(
                        downstream,
                        convert::PB_OVER_TTSTREAM,
                    ));
                }
                c.open(OpenStream {
                    method: renamed.unwrap_or_else(|| req.method.clone()),
                    service: req.service.clone(),
                    headers: convert::grpc_to_ttstream(&headers),
                    hash: target.hash,
                })
                .await
                .map_err(|e| error::ttstream_open_failed(downstream, e))
            }
            (_, StreamClient::PingPong(_)) => Err(error::unsupported_conversion(
                downstream,
                "a ping-pong downstream takes gRPC unary calls only",
            )),
            // Converted: a TTStream stream leaves as gRPC thrift, `/Service/Method`.
            (Protocol::TTStream, StreamClient::Grpc(c)) => {
                let method = renamed.as_deref().unwrap_or(&req.method);
                c.open_hashed(
                    &OpenRequest {
                        path: format!("/{}/{method}", req.service),
                        content_type: GrpcCodec::Thrift.content_type().into(),
                        authority: req.service.clone(),
                        headers: convert::ttstream_to_grpc(&headers),
                        deadline: target.deadline,
                    },
                    target.hash,
                )
                .await
                .map_err(|e| error::grpc_open_failed(downstream, e))
            }
        }
    }

    /// A gRPC unary call made a ping-pong call (`grpc_unary = "pingpong"`): the one request
    /// message becomes a CALL's body (thrift: the args struct; protobuf: the Kitex protobuf
    /// message), the REPLY's body the one response message, an EXCEPTION an error status.
    async fn unary_to_pingpong(
        &self,
        req: &StreamRequest,
        mut up: ServerStream,
        first: First,
        call: UnaryCall<'_>,
    ) {
        let UnaryCall {
            info,
            target,
            client,
            headers,
            renamed,
        } = call;
        let protocol = &req.protocol;
        let refuse = |up, e| self.refuse_stream(info, up, protocol, e, None);
        let not_unary = || {
            error::unsupported_conversion(
                &target.downstream,
                "grpc_unary = \"pingpong\" takes one request message and a half-close",
            )
        };
        let message = match first {
            First::Message(m) => m,
            First::HalfClosed => return refuse(up, not_unary()).await,
            First::NotRead => match first_message(&mut up, target.deadline).await {
                Some(First::Message(m)) => m,
                Some(_) => return refuse(up, not_unary()).await,
                None => return,
            },
        };
        // The half-close must follow: a second message means a streaming call.
        match first_message(&mut up, target.deadline).await {
            Some(First::HalfClosed) => {}
            Some(_) => return refuse(up, not_unary()).await,
            None => return,
        }
        let codec = match grpc_codec(protocol) {
            Some(GrpcCodec::Thrift) => Codec::Thrift,
            _ => Codec::KitexProtobuf,
        };
        let mut header = sluice_ttheader::Header {
            str_kvs: convert::grpc_to_str_kvs(&headers),
            ..sluice_ttheader::Header::default()
        };
        header
            .str_kvs
            .insert(str_key::IDL_SERVICE_NAME, req.service.clone());
        let bytes_in = message.len() as u64;
        let mut call = Call {
            method: renamed.unwrap_or_else(|| req.method.clone()),
            msg_type: MessageType::Call,
            codec,
            args: message,
            header,
            deadline: target.deadline,
        };
        let sent = Instant::now();
        let result = client
            .call_with(
                &mut call,
                CallOptions {
                    hash: target.hash,
                    retry: None,
                },
            )
            .await;
        let took = sent.elapsed();
        let reply = match result {
            Ok(Some(r)) => r,
            Ok(None) => return refuse(up, not_unary()).await,
            Err(e) => return refuse(up, error::call_failed(e)).await,
        };
        let trailers = convert::str_kvs_to_grpc(&reply.header.str_kvs);
        let end = if reply.msg_type == MessageType::Exception {
            // The exception's type and message as a status (mapped as a TTStream error end is).
            let (kind, message) = convert::read_exception(codec, &reply.body);
            StreamEnd {
                error: Some(ErrorStatus {
                    code: StatusCode::TTStream(kind),
                    message,
                }),
                trailers,
            }
        } else {
            match trailers.get_str("biz-status").filter(|s| *s != "0") {
                // A Kitex business error: status 13 with the biz-* trailers, as Kitex's gRPC
                // server answers one.
                Some(_) => StreamEnd {
                    error: Some(ErrorStatus {
                        code: StatusCode::Grpc(13),
                        message: trailers.get_str("biz-message").unwrap_or("").to_owned(),
                    }),
                    trailers,
                },
                None => {
                    if up.send(reply.body.clone()).await.is_err() {
                        return;
                    }
                    StreamEnd {
                        error: None,
                        trailers,
                    }
                }
            }
        };
        let ok = end.error.is_none();
        let bytes_out = if ok { reply.body.len() as u64 } else { 0 };
        up.finish(end).await;
        self.phases.logging(info, None);
        self.finish(
            info,
            Done {
                ok,
                downstream: Some((ok, took)),
                endpoint: reply.endpoint,
                bytes_in,
                bytes_out,
                retries: reply.attempts.saturating_sub(1),
                ..Done::new(protocol_name(protocol))
            },
        );
    }

    /// Ends the caller's stream with `e` (after the error phase), counts and logs it.
    /// `downstream` is how long a failed attempt to open the downstream stream took.
    async fn refuse_stream(
        &self,
        info: &CallInfo<'_>,
        up: ServerStream,
        protocol: &Protocol,
        e: ProxyError,
        downstream: Option<Duration>,
    ) {
        let e = self.fail(info, e);
        up.finish(e.to_stream_end(protocol)).await;
        self.phases.logging(info, Some(&e));
        self.finish(
            info,
            Done {
                error: Some(&e),
                downstream: downstream.map(|d| (false, d)),
                ..Done::new(protocol_name(protocol))
            },
        );
    }
}

impl<P: Phases> StreamingHandler for Forwarder<P> {
    // An `async move` block rather than an `async fn`: an `async fn` keeps its arguments in
    // its future twice (as captured and as moved into the body), and the request is 208 bytes.
    #[allow(clippy::manual_async_fn)]
    fn handle(
        &self,
        mut req: StreamRequest,
        up: ServerStream,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            self.stats.count_stream();
            let family = family(&req.protocol);
            let _active = Active::new(self.metrics.as_ref().map(|m| m.active(family)));
            // Metrics and rate limits by caller read the caller's name (gRPC `source-service`;
            // TTStream sends none): a clone of the value, not of its bytes.
            let caller = match &req.protocol {
                Protocol::Grpc { .. } => {
                    req.headers.get(SOURCE_SERVICE).cloned().unwrap_or_default()
                }
                _ => Bytes::new(),
            };
            let mut info =
                CallInfo::new(req.peer, family, &req.service, &req.method, Instant::now())
                    .with_caller(utf8(&caller))
                    .with_listener(req.listener);
            let keys = trace_keys(&req.protocol);
            // A protobuf payload route for this method routes on the first message: it is read
            // now (boxed: only these streams pay for the wait's state) and sent on first.
            let mut up = up;
            let first = match &req.protocol {
                protocol @ Protocol::Grpc { .. }
                    if grpc_codec(protocol) == Some(GrpcCodec::Protobuf)
                        && self
                            .state
                            .load()
                            .router
                            .wants_pb_payload(&req.service, &req.method) =>
                {
                    match Box::pin(first_message(&mut up, req.deadline)).await {
                        Some(f) => f,
                        // The caller reset the stream: nothing to answer.
                        None => return,
                    }
                }
                _ => First::NotRead,
            };
            // Routing happens in a block with no await: the request head and the configuration
            // snapshot live only there, and what the stream needs afterwards (the target, its
            // client, its first-response timeout) is taken out. What lives across an await is
            // kept in the handler's future for the whole stream; `routed` too, were it not in
            // this block (a local a match moves out of keeps its storage in later states).
            let (target, client, first_response_timeout, _in_flight) = {
                let routed = {
                    let state = self.state.load();
                    let lookup = |k: &str| req.headers.get(k).map(|v| v.as_ref());
                    info.trace = TraceContext::continue_from(keys, lookup);
                    let destination = if state.router.discovers() {
                        destination(&req)
                    } else {
                        None
                    };
                    let head = RequestHead::new(
                        req.peer,
                        family,
                        &req.service,
                        &req.method,
                        req.deadline,
                        &lookup,
                    )
                    .with_destination(destination);
                    let head = match &first {
                        First::Message(m) => head.with_payload(Payload {
                            protobuf: true,
                            bytes: m,
                        }),
                        _ => head,
                    };
                    let from = || (!caller.is_empty()).then_some(&caller[..]);
                    self.admit(&state)
                        .and_then(|g| {
                            self.route(&state, &head, info.trace.as_ref(), from)
                                .map(|r| (r, g))
                        })
                        .map(|((target, dc), g)| {
                            let client = match target.discovered {
                                Some(_) => None,
                                None => {
                                    Some(self.stream_client(&req.protocol, &target.downstream, dc))
                                }
                            };
                            // Owned: the stream outlives this configuration snapshot. Streams are
                            // never retried, so the route's policy is not needed past here.
                            let target = Target {
                                downstream: std::borrow::Cow::Owned(target.downstream.into_owned()),
                                policy: None,
                                ..target
                            };
                            (target, client, dc.first_response_timeout, g)
                        })
                };
                match routed {
                    Ok(routed) => routed,
                    Err(e) => {
                        return Box::pin(self.refuse_stream(&info, up, &req.protocol, e, None))
                            .await
                    }
                }
            };
            info.downstream = Some(&target.downstream);
            let mut headers = forwardable(req.headers.clone());
            if let Some(hop) = &info.trace {
                Metainfo::Stream(&mut headers).relay_trace(hop, keys);
            }
            if let Err(e) =
                self.phases
                    .request_filter(&info, &target, &mut Metainfo::Stream(&mut headers))
            {
                return Box::pin(self.refuse_stream(&info, up, &req.protocol, e, None)).await;
            }
            // The opening and the splice run inline: the stream's state is one allocation (its
            // task's). Boxing each measured dearer per stream with 50 callers: past a few streams
            // at once, every allocation of a kilobyte goes past the allocator's per-thread cache.
            let renamed = self.phases.rewrite_method(&info, &target);
            // What leaves in the other family has its metadata mapped on the way back.
            let convert = match (&req.protocol, &client) {
                (Protocol::Grpc { .. }, Some(StreamClient::TTStream(_))) => Convert::FromTTStream,
                (Protocol::TTStream, Some(StreamClient::Grpc(_))) => Convert::FromGrpc,
                _ => Convert::No,
            };
            let client = match client {
                Some(StreamClient::PingPong(c)) => {
                    let call = UnaryCall {
                        info: &info,
                        target: &target,
                        client: c,
                        headers,
                        renamed,
                    };
                    return Box::pin(self.unary_to_pingpong(&req, up, first, call)).await;
                }
                other => other,
            };
            let opening = self.observed().then(Instant::now);
            let down = match self
                .open_downstream(&req, &target, client, headers, renamed)
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    let took = opening.map(|t| t.elapsed());
                    return Box::pin(self.refuse_stream(&info, up, &req.protocol, e, took)).await;
                }
            };
            let (deadline, start, trace) = (target.deadline, info.start, info.trace);
            // The sinks outlive this borrow of the request: they own its names (moved, not copied).
            let info = OwnedInfo {
                peer: req.peer,
                family,
                service: std::mem::take(&mut req.service),
                method: std::mem::take(&mut req.method),
                downstream: target.downstream.into_owned(),
                start,
                opened: opening.unwrap_or(start),
                caller,
                listener: req.listener,
                trace,
            };
            let splice = Splice {
                forwarder: self,
                protocol: &req.protocol,
                deadline,
                first_response_timeout,
                first,
                convert,
            };
            // Only the splice is awaited: what it returns is reported here, so the future holds
            // the stream's state once.
            let to_up = splice.splice(info, up, down).await;
            splice.report(&to_up);
        }
    }
}

/// The phases' view of a stream, owned by the sinks that outlive the handler's borrow.
#[derive(Debug)]
struct OwnedInfo {
    peer: std::net::SocketAddr,
    family: Family,
    service: String,
    method: String,
    downstream: String,
    start: Instant,
    /// When the downstream stream was opened (metrics and access log only; else `start`).
    opened: Instant,
    caller: Bytes,
    listener: &'static str,
    trace: Option<TraceContext>,
}

/// The access log's name of a stream protocol.
fn protocol_name(protocol: &Protocol) -> &'static str {
    match protocol {
        Protocol::TTStream => "ttstream",
        Protocol::Grpc { .. } => "grpc",
    }
}

/// The gRPC metadata naming the calling service.
const SOURCE_SERVICE: &str = "source-service";

/// `b` as text, or empty when it is not UTF-8.
fn utf8(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("")
}

impl OwnedInfo {
    fn borrow(&self) -> CallInfo<'_> {
        CallInfo {
            peer: self.peer,
            family: self.family,
            service: &self.service,
            method: &self.method,
            downstream: Some(&self.downstream),
            start: self.start,
            caller: utf8(&self.caller),
            listener: self.listener,
            trace: self.trace,
        }
    }
}

/// Upstream events, handed to the downstream stream as they are read.
struct ToDownstream {
    down: ClientSend,
    /// Set once the downstream ended the stream: later messages from the caller are dropped.
    down_ended: Arc<AtomicBool>,
    /// The first-response clock, restarted by each caller message until the downstream answers.
    first: Arc<FirstResponse>,
    /// Payload bytes from the caller (`[0]`) and to it (`[1]`), shared with `ToUpstream`;
    /// counted only for the access log.
    bytes: Option<Arc<[AtomicU64; 2]>>,
}

impl EventSink for ToDownstream {
    fn push(&self, ev: Event) -> Result<(), Closed> {
        match ev {
            Event::Message(_) | Event::HalfClose if self.down_ended.load(Ordering::Acquire) => {
                Ok(())
            }
            Event::Message(_) | Event::HalfClose => {
                self.first.caller_active();
                if let (Event::Message(m), Some(bytes)) = (&ev, &self.bytes) {
                    bytes[0].fetch_add(m.len() as u64, Ordering::Relaxed);
                }
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
struct ToUpstream<P> {
    /// The downstream's metadata mapped to the caller's family, for a converted stream.
    convert: Convert,
    up: ServerSend,
    down: ClientSend,
    protocol: Protocol,
    phases: Arc<P>,
    info: OwnedInfo,
    /// Told when the stream has ended on the upstream side.
    done: Mutex<Option<oneshot::Sender<()>>>,
    /// Set once the caller's side has been ended, by the forwarder itself (deadline) or by the
    /// downstream's end or reset passed on: whichever sets it first answers the caller, and
    /// nothing the downstream sends after reaches the caller.
    cut: AtomicBool,
    /// Shared with `ToDownstream`: set when the downstream ended the stream.
    down_ended: Arc<AtomicBool>,
    first: Arc<FirstResponse>,
    /// The stream's deadline, which the gRPC client enforces downstream too.
    deadline: Option<Instant>,
    /// The error the caller was answered with, when the downstream reset the stream (or ended
    /// it for the deadline).
    error: Mutex<Option<ProxyError>>,
    /// Set when the downstream's end reached the caller with no error status: the stream
    /// succeeded (for the metrics).
    ended_ok: AtomicBool,
    /// Payload bytes from the caller (`[0]`) and to it (`[1]`), when counted.
    bytes: Option<Arc<[AtomicU64; 2]>>,
}

impl<P: Phases> ToUpstream<P> {
    /// True for a gRPC end with DEADLINE_EXCEEDED once the stream's deadline has passed: the
    /// downstream gRPC client enforces the same deadline as the forwarder's timer, and
    /// whichever fires first must read the same to the caller.
    fn ends_for_the_deadline(&self, end: &StreamEnd) -> bool {
        matches!(self.protocol, Protocol::Grpc { .. })
            && end
                .error
                .as_ref()
                .is_some_and(|e| e.code == StatusCode::Grpc(Code::DEADLINE_EXCEEDED.as_u32()))
            && self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Claims the caller's end; false if it was already ended.
    fn claim_end(&self) -> bool {
        !self.cut.swap(true, Ordering::AcqRel)
    }

    /// Ends the caller's stream with Sluice's own error `e` (after the error phase).
    fn fail(&self, e: ProxyError) {
        let e = self.phases.on_error(&self.info.borrow(), e);
        let _ = self.up.push(Event::End(e.to_stream_end(&self.protocol)));
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        self.finished();
    }
}

impl<P> ToUpstream<P> {
    fn finished(&self) {
        self.down_ended.store(true, Ordering::Release);
        if let Some(tx) = self.done.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(());
        }
    }
}

impl<P: Phases> EventSink for ToUpstream<P> {
    fn push(&self, ev: Event) -> Result<(), Closed> {
        if self.cut.load(Ordering::Acquire) {
            return Err(Closed);
        }
        self.first.downstream_answered();
        match ev {
            Event::Headers(md) => {
                let mut md = forwardable(self.convert.metadata(md));
                self.phases
                    .response_filter(&self.info.borrow(), &mut Metainfo::Stream(&mut md));
                let _ = self.up.push(Event::Headers(md));
                Ok(())
            }
            Event::Message(m) => {
                if let Some(bytes) = &self.bytes {
                    bytes[1].fetch_add(m.len() as u64, Ordering::Relaxed);
                }
                if self.up.push(Event::Message(m)).is_err() {
                    // The upstream is gone: cancel downstream.
                    let _ = self.down.push(Event::Reset(Reset {
                        code: cancel_code(&self.protocol, ExceptionKind::TTSTREAM_USER_CANCEL),
                        message: "upstream went away".into(),
                        cancel_path: Some(CANCEL_PATH_NAME.into()),
                    }));
                    self.finished();
                    return Err(Closed);
                }
                Ok(())
            }
            Event::End(_) | Event::Reset(_) if !self.claim_end() => Err(Closed),
            Event::End(end) if self.ends_for_the_deadline(&end) => {
                self.fail(error::stream_deadline(&self.info.downstream));
                Ok(())
            }
            Event::End(mut end) => {
                if end.error.is_none() {
                    self.ended_ok.store(true, Ordering::Relaxed);
                }
                end.trailers =
                    forwardable(self.convert.metadata(std::mem::take(&mut end.trailers)));
                self.phases.response_filter(
                    &self.info.borrow(),
                    &mut Metainfo::Stream(&mut end.trailers),
                );
                let _ = self.up.push(Event::End(end));
                self.finished();
                Ok(())
            }
            Event::Reset(r) => {
                self.fail(error::downstream_reset(
                    &self.info.downstream,
                    &r.message,
                    r.code,
                ));
                Ok(())
            }
            Event::HalfClose => Ok(()),
        }
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.up.poll_ready(cx)
    }
}

/// One forwarded stream: the caller's side spliced to the downstream's until it ends.
struct Splice<'a, P> {
    forwarder: &'a Forwarder<P>,
    protocol: &'a Protocol,
    deadline: Option<Instant>,
    first_response_timeout: Duration,
    /// What routing read of the caller's side: sent on before the rest.
    first: First,
    /// How the downstream's headers and trailers reach the caller.
    convert: Convert,
}

impl<P: Phases> Splice<'_, P> {
    /// Once [`splice`](Self::splice) returned: counts and logs the error the caller was
    /// answered with, if the forwarder (not the downstream) ended the stream, reports the
    /// stream to the metrics and the access log, and runs the logging phase.
    fn report(&self, to_up: &ToUpstream<P>) {
        let error = to_up.error.lock().unwrap_or_else(|e| e.into_inner()).take();
        let info = to_up.info.borrow();
        if let Some(e) = &error {
            self.forwarder.record(&info, e);
        }
        if self.forwarder.observed() {
            // A stream counts once, with its whole duration; it succeeded only if the
            // downstream ended it without an error status (not reset by either side, not cut
            // by the deadline).
            let ok = error.is_none() && to_up.ended_ok.load(Ordering::Relaxed);
            // One clock read ends both the stream's and its downstream stream's duration.
            let end = Instant::now();
            let took = end - to_up.info.opened;
            self.forwarder.finish(
                &info,
                Done {
                    ok,
                    error: error.as_ref(),
                    downstream: Some((ok, took)),
                    end: Some(end),
                    bytes_in: to_up
                        .bytes
                        .as_ref()
                        .map_or(0, |b| b[0].load(Ordering::Relaxed)),
                    bytes_out: to_up
                        .bytes
                        .as_ref()
                        .map_or(0, |b| b[1].load(Ordering::Relaxed)),
                    ..Done::new(protocol_name(self.protocol))
                },
            );
        }
        self.forwarder.phases.logging(&info, error.as_ref());
    }

    /// Splices the two streams together, then waits until the stream ends on both sides, its
    /// deadline passes or the downstream stays silent too long, and ends it then; the error
    /// the caller got, if the forwarder ended the stream, is left in the returned sink (see
    /// [`report`](Self::report)).
    ///
    /// No task of its own carries messages: each side's incoming events are spliced into a
    /// sink that hands them to the other side, so a message goes from one connection's reader
    /// straight onto the other connection's write queue (TTStream) or stream task (gRPC). This
    /// task only waits for the end, the deadline, and the downstream's first response.
    async fn splice(
        &self,
        info: OwnedInfo,
        up: ServerStream,
        down: ClientStream,
    ) -> Arc<ToUpstream<P>> {
        let (up_rx, up_tx) = up.split();
        let (down_tx, down_rx) = down.split();
        // Before the splice, so it stays first downstream. A downstream gone already shows in
        // its incoming side, spliced below.
        match &self.first {
            First::Message(m) => {
                let _ = down_tx.send(m.clone()).await;
            }
            First::HalfClosed => {
                let _ = down_tx.close_send().await;
            }
            First::NotRead => {}
        }
        let (done_tx, done_rx) = oneshot::channel();
        let down_ended = Arc::new(AtomicBool::new(false));
        let watched = !self.first_response_timeout.is_zero();
        let (first, mut silent_rx) = FirstResponse::new(self.first_response_timeout);
        let first = Arc::new(first);
        // Watched only while the stream runs (and not at all with the timeout off).
        let _watched = watched.then(|| self.forwarder.silence.watch(first.clone()));
        let bytes = self
            .forwarder
            .access_log
            .is_some()
            .then(|| Arc::new([AtomicU64::new(0), AtomicU64::new(0)]));
        up_rx.splice(Arc::new(ToDownstream {
            down: down_tx.clone(),
            down_ended: down_ended.clone(),
            first: first.clone(),
            bytes: bytes.clone(),
        }));
        let to_up = Arc::new(ToUpstream {
            convert: self.convert,
            up: up_tx.clone(),
            down: down_tx.clone(),
            protocol: self.protocol.clone(),
            phases: self.forwarder.phases.clone(),
            info,
            done: Mutex::new(Some(done_tx)),
            cut: AtomicBool::new(false),
            down_ended,
            first: first.clone(),
            deadline: self.deadline,
            error: Mutex::new(None),
            ended_ok: AtomicBool::new(false),
            bytes,
        });
        down_rx.splice(to_up.clone());
        let downstream = to_up.info.downstream.as_str();
        let mut done_rx = done_rx;
        let silence = watched.then_some((&mut silent_rx, &*first));
        let e = match wait_end(&mut done_rx, self.deadline, silence).await {
            Outcome::Ended => return to_up,
            Outcome::Deadline => error::stream_deadline(downstream),
            Outcome::NoResponse => {
                error::no_first_response(downstream, self.first_response_timeout)
            }
        };
        // The caller hears of the deadline, not of the downstream reset that follows from it
        // (resetting the downstream stream ends its incoming side, which `ToUpstream` would
        // otherwise report as a downstream reset).
        if !to_up.claim_end() {
            // The downstream's end (or reset) reached the caller at the same moment: that is
            // the answer. Wait until `ToUpstream` has recorded it.
            let _ = done_rx.await;
            return to_up;
        }
        let e = self.forwarder.phases.on_error(&to_up.info.borrow(), e);
        up_tx.finish(e.to_stream_end(self.protocol)).await;
        down_tx
            .reset(Reset {
                code: cancel_code(self.protocol, ExceptionKind::TTSTREAM_TIMEOUT),
                message: "deadline exceeded".into(),
                cancel_path: Some(CANCEL_PATH_NAME.into()),
            })
            .await;
        *to_up.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        to_up
    }
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

/// Waits for the stream to end, its deadline, or the downstream's silence to run out (told
/// through `silent_rx` by the proxy's [`SilenceWatch`](crate::silence::SilenceWatch)).
async fn wait_end(
    done_rx: &mut oneshot::Receiver<()>,
    deadline: Option<Instant>,
    silence: Option<(&mut oneshot::Receiver<()>, &FirstResponse)>,
) -> Outcome {
    // `done_rx` also resolves (with an error) when the downstream stream is dropped without an
    // end reaching the upstream: it was reset from the upstream side.
    let mut deadline_sleep = std::pin::pin!(async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    });
    let (mut silent_rx, first) = match silence {
        Some((rx, first)) => (Some(rx), Some(first)),
        None => (None, None),
    };
    loop {
        tokio::select! {
            _ = &mut *done_rx => return Outcome::Ended,
            () = &mut deadline_sleep => return Outcome::Deadline,
            Some(Ok(())) = async { Some((&mut **silent_rx.as_mut()?).await) }, if silent_rx.is_some() => {
                // The downstream may have answered just after the check: then it is not silent.
                if !first.is_some_and(FirstResponse::seen) {
                    return Outcome::NoResponse;
                }
                silent_rx = None;
            }
        }
    }
}

/// The longest a payload route waits for a gRPC stream's first message (less when the
/// caller's deadline is nearer).
const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(10);

/// The codec of a gRPC stream, by Kitex's rule (thrift for the subtype `thrift`, else
/// protobuf); `None` for TTStream.
fn grpc_codec(protocol: &Protocol) -> Option<GrpcCodec> {
    match protocol {
        Protocol::Grpc { content_type, .. } => {
            Some(GrpcContentType::parse(content_type).map_or(GrpcCodec::Protobuf, |c| c.codec()))
        }
        Protocol::TTStream => None,
    }
}

/// What routing read of a caller's stream before routing it.
#[derive(Debug)]
enum First {
    /// Nothing (no payload route wanted it, or nothing came in time).
    NotRead,
    /// The first message.
    Message(Bytes),
    /// The caller half-closed without a message.
    HalfClosed,
}

/// The caller's first message, for a payload route; [`First::NotRead`] when nothing comes
/// within [`FIRST_MESSAGE_WAIT`] (payload routes then do not match); `None` when the caller
/// resets the stream.
async fn first_message(up: &mut ServerStream, deadline: Option<Instant>) -> Option<First> {
    let wait = deadline
        .map(|d| d.saturating_duration_since(Instant::now()))
        .map_or(FIRST_MESSAGE_WAIT, |left| left.min(FIRST_MESSAGE_WAIT));
    match tokio::time::timeout(wait, up.recv()).await {
        Ok(Ok(Some(m))) => Some(First::Message(m)),
        Ok(Ok(None)) => Some(First::HalfClosed),
        Ok(Err(_reset)) => None,
        Err(_) => Some(First::NotRead),
    }
}

/// How a downstream's metadata reaches the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Convert {
    /// Same family: as it is.
    No,
    /// A TTStream downstream, a gRPC caller.
    FromTTStream,
    /// A gRPC downstream, a TTStream caller.
    FromGrpc,
}

impl Convert {
    fn metadata(self, md: Metadata) -> Metadata {
        match self {
            Convert::No => md,
            Convert::FromTTStream => convert::ttstream_to_grpc(&md),
            Convert::FromGrpc => convert::grpc_to_ttstream(&md),
        }
    }
}

/// What [`Forwarder::unary_to_pingpong`] needs of a routed gRPC unary call.
struct UnaryCall<'a> {
    info: &'a CallInfo<'a>,
    target: &'a Target<'a>,
    client: Arc<sluice_client::GenericClient>,
    headers: Metadata,
    renamed: Option<String>,
}
