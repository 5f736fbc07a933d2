//! The forwarding handler: route, pick the downstream client, call, map the outcome.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sluice_client::{Call, ClientCache, Error as ClientError};
use sluice_server::{DefaultHandler, Request, Response, ResponseBody};
use sluice_thrift::{ApplicationException, ExceptionKind, MessageType};
use sluice_ttheader::{int_key, str_key, Header, IntKvs, StrKvs};

use crate::config::{Config, Route};

/// Counters, for logs and the demo.
#[derive(Debug, Default)]
pub struct Stats {
    /// Streams handled.
    pub streams: AtomicU64,
    /// Requests handled.
    pub requests: AtomicU64,
    /// Requests with no route.
    pub unrouted: AtomicU64,
    /// Requests whose downstream call failed (connect, I/O, timeout, bad reply).
    pub downstream_errors: AtomicU64,
}

/// Joins the server to the clients: one per proxy, shared by all ping-pong listeners.
#[derive(Debug)]
pub struct Forwarder {
    config: Arc<Config>,
    clients: ClientCache,
    pub(crate) streams: crate::stream::StreamClients,
    /// Forwarded streams waiting for their downstream's first response.
    pub(crate) silence: crate::silence::SilenceWatch,
    stats: Stats,
    /// Budget of warn lines for failed downstream calls and streams.
    pub(crate) downstream_log: sluice_server::RateLog,
}

impl Forwarder {
    /// A forwarder for `config`.
    pub fn new(config: Arc<Config>) -> Self {
        Self {
            config,
            clients: ClientCache::new(),
            streams: Default::default(),
            silence: Default::default(),
            stats: Stats::default(),
            downstream_log: Default::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The generic clients created so far.
    pub fn clients(&self) -> &ClientCache {
        &self.clients
    }

    /// The first route matching `req`.
    pub fn route(&self, req: &Request) -> Option<&Route> {
        self.route_by(&req.service, &req.method, |k| {
            req.header.str_kvs.get(k).map(|v| v.as_ref())
        })
    }

    /// The first route matching a service, a method and a header lookup.
    pub fn route_by<'a>(
        &self,
        service: &str,
        method: &str,
        header: impl Fn(&str) -> Option<&'a [u8]>,
    ) -> Option<&Route> {
        self.config.routes.iter().find(|r| {
            r.service.as_deref().is_none_or(|s| s == service)
                && r.method.as_deref().is_none_or(|m| m == method)
                && r.header
                    .as_ref()
                    .is_none_or(|h| header(&h.key).is_some_and(|v| v == h.value.as_bytes()))
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// String keys that belong to one hop and are never copied across the proxy.
fn is_hop_str_key(k: &[u8]) -> bool {
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

/// A short name for the kind of a failed downstream call, for logs.
fn error_kind(e: &ClientError) -> &'static str {
    match e {
        ClientError::NoEndpoint { .. } => "no endpoint",
        ClientError::Connect { .. } => "connect failed",
        ClientError::ConnectTimeout { .. } => "connect timeout",
        ClientError::Io { .. } => "connection failed",
        ClientError::Timeout { .. } => "deadline exceeded",
        ClientError::Protocol { .. } => "bad reply",
        ClientError::Encode { .. } => "request not encodable",
        _ => "other",
    }
}

fn error(kind: ExceptionKind, message: String) -> Response {
    Response::error(ApplicationException::new(kind, message))
}

impl DefaultHandler for Forwarder {
    async fn handle(&self, req: Request) -> Response {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let Some(route) = self.route(&req) else {
            self.stats.unrouted.fetch_add(1, Ordering::Relaxed);
            return error(
                ExceptionKind::UNKNOWN_METHOD,
                format!(
                    "sluice: no route for service {:?} method {:?}",
                    req.service, req.method
                ),
            );
        };
        let Some(dc) = self.config.downstreams.get(&route.downstream) else {
            return error(
                ExceptionKind::INTERNAL_ERROR,
                format!(
                    "sluice: downstream {:?} is not configured",
                    route.downstream
                ),
            );
        };
        let client = self.clients.get_or_create(&route.downstream, || dc.clone());
        let now = Instant::now();
        let mut deadline = req.deadline.or(route.timeout.map(|t| now + t));
        if let Some(max) = route.max_timeout {
            deadline = Some(deadline.map_or(now + max, |d| d.min(now + max)));
        }
        let call = Call {
            method: req.method,
            msg_type: req.msg_type,
            codec: req.codec,
            args: req.args,
            header: downstream_header(req.header),
            deadline,
        };
        match client.call(call).await {
            Ok(Some(reply)) => Response {
                body: match reply.msg_type {
                    MessageType::Exception => ResponseBody::RawException(reply.body),
                    _ => ResponseBody::Reply(reply.body),
                },
                str_kvs: upstream_keys(reply.header),
            },
            // Oneway: the server writes nothing back.
            Ok(None) => Response::reply(Bytes::new()),
            Err(e) => {
                self.stats.downstream_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.downstream_log.allow() {
                    tracing::warn!(
                        peer = %req.peer,
                        service = %req.service,
                        downstream = %route.downstream,
                        kind = error_kind(&e),
                        error = %e,
                        suppressed,
                        "downstream call failed"
                    );
                }
                let what = if matches!(e, ClientError::Timeout { .. }) {
                    format!("sluice: timeout: {e}")
                } else {
                    format!("sluice: {e}")
                };
                error(ExceptionKind::INTERNAL_ERROR, what)
            }
        }
    }
}
