//! Ping-pong forwarding: one request in, one call to the routed downstream, its reply back.

use std::time::Instant;

use bytes::Bytes;
use sluice_client::{Call, CallOptions};
use sluice_http2::content_type::GrpcCodec;
use sluice_server::{DefaultHandler, Request, Response, ResponseBody, Transport};
use sluice_sniff::Codec;
use sluice_thrift::MessageType;
use sluice_ttheader::{int_key, str_key, Header, IntKvs, StrKvs};

use crate::convert;
use crate::error;
use crate::forwarder::{Done, Forwarder};
use crate::observe::Active;
use crate::phases::{CallInfo, Metainfo, Phases};
use crate::route::{Family, Payload, RequestHead};
use crate::trace::{self, TraceContext};

/// String keys that belong to one hop and are never copied across the proxy.
pub(crate) fn is_hop_str_key(k: &[u8]) -> bool {
    // `crrst` would make the other side drop a healthy connection; `crc32c`/`PV_*` checksum the
    // payload including the envelope, which is re-created with another seq id.
    k == str_key::CONN_RESET.as_bytes() || k == str_key::CRC32C.as_bytes() || k.starts_with(b"PV_")
}

/// Integer keys that are per hop: the client sets its own 1, 12 and 22 (and 9, which it keeps
/// when the caller's already names the method).
fn is_hop_int_key(k: u16) -> bool {
    matches!(
        k,
        int_key::TRANSPORT_TYPE
            | int_key::RPC_TIMEOUT
            | int_key::CONNECT_TIMEOUT
            | int_key::MSG_TYPE
            | int_key::SHORT_CONNECTION
            | int_key::FRAME_TYPE
    )
}

/// The caller's header, minus per-hop keys, for the downstream request (moved, not copied).
fn downstream_header(up: Header) -> Header {
    let mut str_kvs = up.str_kvs;
    str_kvs.retain(|k, _| !is_hop_str_key(k));
    let mut int_kvs: IntKvs = up.int_kvs;
    int_kvs.retain(|k, _| !is_hop_int_key(k));
    Header {
        acl_token: up.acl_token,
        str_kvs,
        int_kvs,
        ..Header::default()
    }
}

fn upstream_keys(down: Header) -> StrKvs {
    let mut kvs = down.str_kvs;
    kvs.retain(|k, _| !is_hop_str_key(k));
    kvs
}

/// The access log's name of a ping-pong framing.
fn protocol(t: Transport) -> &'static str {
    match t {
        Transport::TTHeader => "ttheader",
        Transport::TTHeaderUnframed => "ttheader-unframed",
        Transport::Framed => "framed",
        Transport::Buffered => "buffered",
        Transport::Mesh(_) => "mesh",
    }
}

impl<P: Phases> DefaultHandler for Forwarder<P> {
    async fn handle(&self, req: Request) -> Response {
        self.stats.count_request();
        let start = Instant::now();
        let _active = Active::new(self.metrics.as_ref().map(|m| m.active(Family::PingPong)));
        // Only metrics and the access log read the caller's name: a clone of the value (not
        // of its bytes), kept because the header moves downstream.
        let caller = if self.observed() {
            req.header.int_kvs.get(int_key::FROM_SERVICE).cloned()
        } else {
            None
        };
        let caller = caller
            .as_deref()
            .and_then(|c| std::str::from_utf8(c).ok())
            .unwrap_or("");
        let done = Done::new(protocol(req.transport));
        let lookup = |k: &str| req.header.str_kvs.get(k).map(|v| v.as_ref());
        // The snapshot this request routes on, kept to its end (a reload meanwhile does not
        // change it).
        let state = self.state.load();
        // Only a discovering route reads the destination service (ToService, int key 6).
        let destination = if state.router.discovers() {
            req.header
                .int_kvs
                .get(int_key::TO_SERVICE)
                .and_then(|v| std::str::from_utf8(v).ok())
        } else {
            None
        };
        let head = RequestHead::new(
            req.peer,
            Family::PingPong,
            &req.service,
            &req.method,
            req.deadline,
            &lookup,
        )
        .with_destination(destination)
        .with_payload(Payload {
            protobuf: req.codec == Codec::KitexProtobuf,
            bytes: &req.args,
        });
        let mut info = CallInfo::new(req.peer, Family::PingPong, &req.service, &req.method, start)
            .with_caller(caller)
            .with_listener(req.listener);
        info.trace = TraceContext::continue_from(&trace::TTHEADER_KEYS, lookup);
        let _in_flight = match self.admit(&state) {
            Ok(g) => g,
            Err(e) => return self.refuse(&info, e, done),
        };
        let from = || {
            req.header
                .int_kvs
                .get(int_key::FROM_SERVICE)
                .map(|v| &v[..])
        };
        let (target, dc) = match self.route(&state, &head, info.trace.as_ref(), from) {
            Ok(routed) => routed,
            Err(e) => return self.refuse(&info, e, done),
        };
        info.downstream = Some(&target.downstream);
        let mut header = downstream_header(req.header);
        if let Some(hop) = &info.trace {
            Metainfo::TTHeader(&mut header.str_kvs).relay_trace(hop, &trace::TTHEADER_KEYS);
        }
        if let Err(e) =
            self.phases
                .request_filter(&info, &target, &mut Metainfo::TTHeader(&mut header.str_kvs))
        {
            return self.refuse(&info, e, done);
        }
        let client = match target.discovered {
            Some(transport) => match self
                .discovered
                .pingpong(&target.downstream, transport)
                .await
            {
                Ok(c) => c,
                Err(e) => return self.refuse(&info, e, done),
            },
            None => self.clients.pingpong(&target.downstream, || dc.clone()),
        };
        let trace = info.trace;
        let method = match self.phases.rewrite_method(&info, &target) {
            Some(renamed) => renamed,
            None => req.method,
        };
        let mut call = Call {
            method,
            msg_type: req.msg_type,
            codec: req.codec,
            args: req.args,
            header,
            deadline: target.deadline,
        };
        let sent = self.observed().then(Instant::now);
        let options = CallOptions {
            hash: target.hash,
            retry: target.policy.and_then(|p| p.retry.as_ref()),
        };
        let result = if dc.grpc_only {
            // Boxed: only calls to a gRPC-only downstream carry the stream's state.
            Box::pin(self.call_over_grpc(&target, dc, &call, &req.service)).await
        } else {
            client
                .call_with(&mut call, options)
                .await
                .map_err(error::call_failed)
        };
        // One clock read serves both the downstream call's and the whole request's duration.
        let answered = sent.map(|t| (t, Instant::now()));
        let took = answered.map(|(t, now)| now - t).unwrap_or_default();
        // The method now lives in the call (moved, not copied): the phases after the call see
        // it there.
        let info = CallInfo {
            method: &call.method,
            service: &req.service,
            downstream: Some(&target.downstream),
            peer: req.peer,
            family: Family::PingPong,
            start,
            caller,
            listener: req.listener,
            trace,
        };
        let done = Done {
            bytes_in: call.args.len() as u64,
            end: answered.map(|(_, now)| now),
            ..done
        };
        match result {
            Ok(Some(reply)) => {
                let mut str_kvs = upstream_keys(reply.header);
                self.phases
                    .response_filter(&info, &mut Metainfo::TTHeader(&mut str_kvs));
                self.phases.logging(&info, None);
                // An EXCEPTION is an error to Kitex's metrics; a REPLY (declared exceptions
                // included) is a success.
                let ok = reply.msg_type != MessageType::Exception;
                self.finish(
                    &info,
                    Done {
                        ok,
                        downstream: Some((ok, took)),
                        endpoint: reply.endpoint,
                        bytes_out: reply.body.len() as u64,
                        retries: reply.attempts.saturating_sub(1),
                        ..done
                    },
                );
                Response {
                    body: if ok {
                        ResponseBody::Reply(reply.body)
                    } else {
                        ResponseBody::RawException(reply.body)
                    },
                    str_kvs,
                }
            }
            // Oneway: the server writes nothing back.
            Ok(None) => {
                self.phases.logging(&info, None);
                self.finish(
                    &info,
                    Done {
                        ok: true,
                        downstream: Some((true, took)),
                        ..done
                    },
                );
                Response::reply(Bytes::new())
            }
            Err(e) => self.refuse(
                &info,
                e,
                Done {
                    downstream: Some((false, took)),
                    ..done
                },
            ),
        }
    }
}

impl<P: Phases> Forwarder<P> {
    /// Answers a ping-pong caller with `e`, after the error and logging phases; `done` says
    /// whether a downstream call was made.
    fn refuse(
        &self,
        info: &CallInfo<'_>,
        e: sluice_server::ProxyError,
        done: Done<'_>,
    ) -> Response {
        let e = self.fail(info, e);
        self.phases.logging(info, Some(&e));
        self.finish(
            info,
            Done {
                ok: false,
                error: Some(&e),
                ..done
            },
        );
        e.to_response()
    }
}

impl<P: Phases> Forwarder<P> {
    /// A ping-pong call to a gRPC-only downstream (`transport = "grpc"`), made a gRPC unary
    /// call: `/<Service>/<Method>` (protobuf: with the downstream's `grpc_package`), the args
    /// struct (thrift, `application/grpc+thrift`) or the request message (Kitex protobuf,
    /// `application/grpc`) as the one message, the string keys as metadata (metainfo as Kitex
    /// maps it). The response message is the REPLY's body; an error status becomes an
    /// EXCEPTION (`TApplicationException` or `ErrorProto`) of the status's nearest type.
    async fn call_over_grpc(
        &self,
        target: &crate::route::Target<'_>,
        dc: &sluice_client::ClientConfig,
        call: &Call,
        service: &str,
    ) -> Result<Option<sluice_client::Reply>, sluice_server::ProxyError> {
        use sluice_stream::{Incoming, StatusCode};

        let downstream = &*target.downstream;
        let client = self.clients.grpc(downstream, || dc.clone());
        let (path, codec) = match call.codec {
            Codec::Thrift => (format!("/{service}/{}", call.method), GrpcCodec::Thrift),
            Codec::KitexProtobuf => (
                match &dc.grpc_package {
                    Some(p) => format!("/{p}.{service}/{}", call.method),
                    None => format!("/{service}/{}", call.method),
                },
                GrpcCodec::Protobuf,
            ),
        };
        let req = sluice_http2::OpenRequest {
            path,
            content_type: codec.content_type().into(),
            authority: service.to_owned(),
            headers: convert::str_kvs_to_grpc(&call.header.str_kvs),
            deadline: target.deadline,
        };
        let stream = client
            .open_hashed(&req, target.hash)
            .await
            .map_err(|e| error::grpc_open_failed(downstream, e))?;
        let (tx, mut rx) = stream.split();
        let gone =
            |why: &str| error::downstream_reset(downstream, why, sluice_stream::ResetCode::Gone);
        if tx.send(call.args.clone()).await.is_err() || tx.close_send().await.is_err() {
            return Err(gone("the gRPC stream closed before the request was sent"));
        }
        let mut message = None;
        let end = loop {
            match rx.recv().await {
                Incoming::Headers(_) => {}
                Incoming::Message(m) => {
                    if message.replace(m).is_some() {
                        return Err(gone("a unary call answered with more than one message"));
                    }
                }
                Incoming::End(end) => break end,
                Incoming::Reset(r) => {
                    return Err(error::downstream_reset(downstream, &r.message, r.code))
                }
            }
        };
        let header = Header {
            str_kvs: convert::grpc_to_str_kvs(&end.trailers),
            ..Header::default()
        };
        let (msg_type, body) = match (end.error, message) {
            (None, Some(m)) => (MessageType::Reply, m),
            (None, None) => return Err(gone("the gRPC call ended without a response message")),
            (Some(e), _) => (
                MessageType::Exception,
                convert::exception_body(call.codec, StatusCode::to_ttstream(e.code), e.message),
            ),
        };
        Ok(Some(sluice_client::Reply {
            msg_type,
            body,
            header,
            endpoint: None,
            attempts: 1,
        }))
    }
}
