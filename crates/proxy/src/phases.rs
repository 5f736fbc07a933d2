//! The forwarder's phases: where an embedder customises routing, metainfo and error handling
//! without forking the [`Forwarder`](crate::Forwarder).
//!
//! Every request and every stream goes through the phases in this order (each has a default,
//! so an implementation overrides only what it needs):
//!
//! ```text
//!   route ──▶ request_filter ──▶ rewrite_method ──▶ (call or stream) ──▶ response_filter ──▶ logging
//!     │              │                      │
//!     └──────────────┴──────── error ───────┴──▶ on_error ──▶ (rendered to the caller) ──▶ logging
//! ```
//!
//! * [`route`](Phases::route) picks the downstream and the deadline;
//! * [`request_filter`](Phases::request_filter) may rewrite the metainfo that goes downstream
//!   (after the per-hop keys were dropped and a W3C `traceparent` was continued, see
//!   [`CallInfo::trace`]) or refuse the request, and
//!   [`rewrite_method`](Phases::rewrite_method) may rename the method;
//! * [`response_filter`](Phases::response_filter) may rewrite the metainfo that comes back
//!   (ping-pong reply keys; stream headers and trailers);
//! * [`on_error`](Phases::on_error) sees (and may replace) every error Sluice itself answers
//!   with; errors the downstream sent pass through as they are;
//! * [`logging`](Phases::logging) runs once when the request or stream is done.
//!
//! Phases run on the request's task and must not block; they are not async so that the
//! default ones cost nothing.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use sluice_server::ProxyError;
use sluice_stream::Metadata;
use sluice_ttheader::StrKvs;

use crate::route::{Family, RequestHead, Router, Target};
use crate::trace::TraceContext;

/// The metainfo of a request or response, whichever protocol carries it: TTHeader string keys
/// (ping-pong) or stream headers and trailers (TTStream, gRPC metadata).
#[derive(Debug)]
pub enum Metainfo<'a> {
    /// TTHeader string key/values (info block `0x01`).
    TTHeader(&'a mut StrKvs),
    /// TTStream header or trailer keys, or gRPC metadata.
    Stream(&'a mut Metadata),
}

impl Metainfo<'_> {
    /// The value of `key`, if present (the first one for gRPC metadata with several).
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        match self {
            Metainfo::TTHeader(kv) => kv.get(key),
            Metainfo::Stream(md) => md.get(key),
        }
    }

    /// Sets `key` to `value`, replacing any value it had.
    pub fn insert(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) {
        let (key, value) = (key.into(), value.into());
        match self {
            Metainfo::TTHeader(kv) => kv.insert(key, value),
            Metainfo::Stream(md) => {
                md.retain(|k, _| k != key.as_ref());
                md.push(key, value);
            }
        }
    }

    /// Sets every value `key` has to `value`, where each stands; nothing if `key` is absent.
    pub fn replace(&mut self, key: &str, value: Bytes) {
        match self {
            Metainfo::TTHeader(kv) => {
                if kv.get(key).is_some() {
                    kv.insert(Bytes::copy_from_slice(key.as_bytes()), value);
                }
            }
            Metainfo::Stream(md) => {
                for (k, v) in md.0.iter_mut() {
                    if k.as_ref() == key.as_bytes() {
                        *v = value.clone();
                    }
                }
            }
        }
    }

    /// Gives this metainfo (going downstream) the hop's `traceparent`, in place, in each of
    /// `keys` that holds a `traceparent` of the hop's trace (the key it was continued from, and
    /// any other naming the same trace); other values pass unchanged.
    pub fn relay_trace(&mut self, hop: &TraceContext, keys: &[&str]) {
        let value = hop.traceparent_value();
        for key in keys {
            if self.get(key).is_some_and(|v| hop.same_trace(v)) {
                self.replace(key, value.clone());
            }
        }
    }

    /// Removes `key` (every value of it).
    pub fn remove(&mut self, key: &str) {
        match self {
            Metainfo::TTHeader(kv) => {
                kv.retain(|k, _| k != key.as_bytes());
            }
            Metainfo::Stream(md) => md.retain(|k, _| k != key.as_bytes()),
        }
    }
}

/// What the phases after routing know of a request or stream.
#[derive(Debug, Clone, Copy)]
pub struct CallInfo<'a> {
    /// The caller.
    pub peer: SocketAddr,
    /// Ping-pong, TTStream or gRPC.
    pub family: Family,
    /// Service name.
    pub service: &'a str,
    /// Method name.
    pub method: &'a str,
    /// The downstream, once routed.
    pub downstream: Option<&'a str>,
    /// When the request or stream arrived at the forwarder.
    pub start: Instant,
    /// The calling service as the caller named it (TTHeader `FromService`, gRPC
    /// `source-service`), when metrics or the access log are on; empty otherwise or when the
    /// caller named none.
    pub caller: &'a str,
    /// The listener the request or stream arrived on (empty when not known).
    pub listener: &'static str,
    /// This hop of the caller's W3C trace, when the request or stream arrived with a valid
    /// `traceparent` (see [`trace`](crate::trace)); the metainfo sent downstream already
    /// carries the hop's own `traceparent`. `None` when no trace came: none is started.
    pub trace: Option<TraceContext>,
}

impl<'a> CallInfo<'a> {
    /// A request or stream not yet routed, arrived at `start`, with no trace context.
    pub fn new(
        peer: SocketAddr,
        family: Family,
        service: &'a str,
        method: &'a str,
        start: Instant,
    ) -> Self {
        Self {
            peer,
            family,
            service,
            method,
            downstream: None,
            start,
            caller: "",
            listener: "",
            trace: None,
        }
    }

    /// The same, with the listener's name.
    pub fn with_listener(mut self, listener: &'static str) -> Self {
        self.listener = listener;
        self
    }

    /// The same, with the caller's service name.
    pub fn with_caller(mut self, caller: &'a str) -> Self {
        self.caller = caller;
        self
    }
}

/// The forwarder's phase hooks. See the [module docs](self) for the order they run in.
pub trait Phases: Send + Sync + 'static {
    /// Chooses where a request or stream goes, once, before anything is sent. Default: the
    /// first matching configured route ([`Router::target`]); no match is
    /// [`ErrorKind::NoRoute`](sluice_server::ErrorKind::NoRoute). An `Err` answers the caller
    /// with that error (after [`on_error`](Self::on_error)).
    fn route<'r>(
        &self,
        head: &RequestHead<'_>,
        router: &'r Router,
    ) -> Result<Target<'r>, ProxyError> {
        router
            .target(head)
            .ok_or_else(|| crate::error::no_route(head.service, head.method))
    }

    /// Rewrites the metainfo sent downstream (per-hop keys are already gone), or refuses the
    /// request with an `Err`. Default: leaves it as it is.
    fn request_filter(
        &self,
        info: &CallInfo<'_>,
        target: &Target<'_>,
        metainfo: &mut Metainfo<'_>,
    ) -> Result<(), ProxyError> {
        let _ = (info, target, metainfo);
        Ok(())
    }

    /// Renames the method sent downstream: the ping-pong envelope (and TTHeader key 9), the
    /// TTStream method key, the last segment of the gRPC `:path`. `None` keeps the caller's.
    /// The caller's reply still names the caller's method, and the phases after it see the
    /// caller's. Runs after [`request_filter`](Self::request_filter). Default: `None`.
    fn rewrite_method(&self, info: &CallInfo<'_>, target: &Target<'_>) -> Option<String> {
        let _ = (info, target);
        None
    }

    /// Rewrites the metainfo coming back: a ping-pong reply's keys, a stream's headers and its
    /// trailers (called for each). Default: leaves it as it is.
    fn response_filter(&self, info: &CallInfo<'_>, metainfo: &mut Metainfo<'_>) {
        let _ = (info, metainfo);
    }

    /// Sees every error Sluice answers the caller with (not the downstream's own exceptions
    /// and statuses, which pass through), and may replace it. Default: returns it.
    fn on_error(&self, info: &CallInfo<'_>, error: ProxyError) -> ProxyError {
        let _ = info;
        error
    }

    /// Runs once when the request or stream is done: `error` is what the caller was answered
    /// with if Sluice ended it. Default: nothing.
    fn logging(&self, info: &CallInfo<'_>, error: Option<&ProxyError>) {
        let _ = (info, error);
    }
}

/// The stock phases: configured routes, metainfo forwarded as it is.
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultPhases;

impl Phases for DefaultPhases {}
