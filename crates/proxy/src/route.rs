//! The routing decision and the deadline policy, once for ping-pong and streams.
//!
//! A request or stream is described by a [`RequestHead`]: its family, service, method and a
//! lookup into its metainfo (TTHeader string keys for ping-pong, stream headers for TTStream and
//! gRPC). The [`Router`] picks the first configured [`Route`] that matches, and the route says
//! which downstream serves it and how long the call may take.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::{Route, RoutePolicy};

/// Which kind of call a [`RequestHead`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Family {
    /// A ping-pong request (TTHeader, Framed, Buffered, Kitex protobuf).
    PingPong,
    /// A TTStream stream.
    TTStream,
    /// A gRPC call (unary or streaming).
    Grpc,
}

impl Family {
    /// Short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::PingPong => "pingpong",
            Family::TTStream => "ttstream",
            Family::Grpc => "grpc",
        }
    }
}

/// What routing and the phase hooks see of a request or stream before it is forwarded.
#[derive(Clone, Copy)]
pub struct RequestHead<'a> {
    /// The caller.
    pub peer: SocketAddr,
    /// Ping-pong, TTStream or gRPC.
    pub family: Family,
    /// Service name (TTHeader `isn`, the TTStream header's service, or the gRPC path's service).
    pub service: &'a str,
    /// Method name.
    pub method: &'a str,
    /// The caller's deadline, if it sent one.
    pub deadline: Option<Instant>,
    /// The destination service the caller addressed, when it named one: TTHeader int key 6
    /// (ToService), gRPC `destination-service` (else `:authority` without its port). What a
    /// discovering route looks up, before [`service`](Self::service).
    pub destination: Option<&'a str>,
    /// The request's payload, for payload routes: a thrift args struct or a protobuf request
    /// message (a gRPC stream's first message when a protobuf payload route asked for it).
    /// `None` for other streams: payload routes never match them.
    pub payload: Option<Payload<'a>>,
    metainfo: &'a (dyn Fn(&str) -> Option<&'a [u8]> + Sync),
}

/// A request's payload as a payload route reads it.
#[derive(Debug, Clone, Copy)]
pub struct Payload<'a> {
    /// True for Kitex protobuf, false for thrift.
    pub protobuf: bool,
    /// The args struct or request message (after the envelope).
    pub bytes: &'a [u8],
}

impl std::fmt::Debug for RequestHead<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestHead")
            .field("peer", &self.peer)
            .field("family", &self.family)
            .field("service", &self.service)
            .field("method", &self.method)
            .field("deadline", &self.deadline)
            .field("destination", &self.destination)
            .finish_non_exhaustive()
    }
}

impl<'a> RequestHead<'a> {
    /// A head whose metainfo values are found with `metainfo` (a string key to its value).
    pub fn new(
        peer: SocketAddr,
        family: Family,
        service: &'a str,
        method: &'a str,
        deadline: Option<Instant>,
        metainfo: &'a (dyn Fn(&str) -> Option<&'a [u8]> + Sync),
    ) -> Self {
        Self {
            peer,
            family,
            service,
            method,
            deadline,
            destination: None,
            payload: None,
            metainfo,
        }
    }

    /// Sets the [`payload`](Self::payload) payload routes read.
    pub fn with_payload(mut self, payload: Payload<'a>) -> Self {
        self.payload = Some(payload);
        self
    }

    /// Sets the [`destination`](Self::destination) service (ignored when empty).
    pub fn with_destination(mut self, destination: Option<&'a str>) -> Self {
        self.destination = destination.filter(|d| !d.is_empty());
        self
    }

    /// The name a discovering route looks up: the destination service if the caller named
    /// one, else the service (`isn`, the stream's service, or the listener's
    /// `default_service`); `None` when neither is known.
    pub fn discovery_name(&self) -> Option<&'a str> {
        self.destination
            .or((!self.service.is_empty()).then_some(self.service))
    }

    /// The value of a metainfo key (TTHeader string key or stream header) as received.
    pub fn metainfo(&self, key: &str) -> Option<&'a [u8]> {
        (self.metainfo)(key)
    }
}

/// Where a request or stream goes: a downstream by name, and the deadline it runs under.
///
/// The name is borrowed from the [`Router`]'s routes when a route picked it (no allocation per
/// request); a phase of one's own may give any name (`Cow::Owned`, or a `&'static str`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'r> {
    /// The downstream (a key of the config's `[downstreams]`), or for a discovering route the
    /// service found in etcd.
    pub downstream: Cow<'r, str>,
    /// Set when `downstream` is a service a discovering route looks up in etcd, not a
    /// configured downstream: the ping-pong transport its instances are reached with.
    pub discovered: Option<sluice_client::Transport>,
    /// The effective deadline: see [`Route::deadline`].
    pub deadline: Option<Instant>,
    /// The route's retries and rate limit; `None` (a target a phase made up): refused
    /// connections are retried, nothing else, and nothing is rate limited.
    pub policy: Option<&'r RoutePolicy>,
    /// The consistent-hash key's hash, set by the forwarder from the downstream's `hash_key`.
    pub hash: Option<u64>,
}

impl<'r> Target<'r> {
    /// A configured downstream, with the deadline the call runs under.
    pub fn new(downstream: impl Into<Cow<'r, str>>, deadline: Option<Instant>) -> Self {
        Self {
            downstream: downstream.into(),
            discovered: None,
            deadline,
            policy: None,
            hash: None,
        }
    }
}

impl Route {
    /// The deadline a call on this route runs under: the caller's, or `timeout` from now when
    /// the caller sent none, and never later than `max_timeout` from now.
    pub fn deadline(&self, caller: Option<Instant>, now: Instant) -> Option<Instant> {
        cap_deadline(
            caller.or(self.timeout.map(|t| now + t)),
            self.max_timeout,
            now,
        )
    }

    /// True when the route matches `head`.
    pub fn matches(&self, head: &RequestHead<'_>) -> bool {
        self.service.as_deref().is_none_or(|s| s == head.service)
            && self.method.as_deref().is_none_or(|m| m == head.method)
            && self.header.as_ref().is_none_or(|h| {
                head.metainfo(&h.key)
                    .is_some_and(|v| v == h.value.as_bytes())
            })
            // Last: only a request that matched everything else pays for reading its payload.
            && self.payload.as_ref().is_none_or(|p| {
                head.payload.is_some_and(|b| {
                    b.protobuf == p.matcher.is_protobuf() && p.matcher.matches(b.bytes)
                })
            })
    }
}

fn cap_deadline(deadline: Option<Instant>, max: Option<Duration>, now: Instant) -> Option<Instant> {
    match max {
        Some(max) => Some(deadline.map_or(now + max, |d| d.min(now + max))),
        None => deadline,
    }
}

/// The configured routes, in match order.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
    /// Some route discovers: only then do requests read their destination service.
    discovers: bool,
    /// Some route matches a protobuf payload: only then may a gRPC stream's first message be
    /// read before it is routed.
    pb_payload: bool,
}

impl Router {
    /// A router over `routes` (first match wins).
    pub fn new(routes: Vec<Route>) -> Self {
        let discovers = routes.iter().any(|r| r.discover.is_some());
        let pb_payload = routes
            .iter()
            .any(|r| r.payload.as_ref().is_some_and(|p| p.matcher.is_protobuf()));
        Self {
            routes,
            discovers,
            pb_payload,
        }
    }

    /// The first route matching `head`.
    pub fn find(&self, head: &RequestHead<'_>) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(head))
    }

    /// The target of `head`: its route's downstream and effective deadline, or `None` when no
    /// route matches.
    pub fn target(&self, head: &RequestHead<'_>) -> Option<Target<'_>> {
        let r = self.find(head)?;
        let (downstream, discovered) = match &r.discover {
            // A discovering route with no name to look up matches nothing.
            Some(d) => (
                Cow::Owned(head.discovery_name()?.to_owned()),
                Some(d.transport),
            ),
            None => (Cow::Borrowed(r.downstream.as_str()), None),
        };
        Some(Target {
            downstream,
            discovered,
            deadline: r.deadline(head.deadline, Instant::now()),
            policy: Some(&r.policy),
            hash: None,
        })
    }

    /// True when a protobuf payload route could match a call to `service`.`method`: then a
    /// gRPC stream's first message is read before routing, so the route can see it. Streams
    /// of other services and methods are routed on their headers as ever.
    pub fn wants_pb_payload(&self, service: &str, method: &str) -> bool {
        self.pb_payload
            && self.routes.iter().any(|r| {
                r.payload.as_ref().is_some_and(|p| p.matcher.is_protobuf())
                    && r.service.as_deref().is_none_or(|s| s == service)
                    && r.method.as_deref().is_none_or(|m| m == method)
            })
    }

    /// True when some route discovers (then requests carry their destination service).
    pub fn discovers(&self) -> bool {
        self.discovers
    }

    /// The routes.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HeaderMatch;

    fn route(service: Option<&str>, header: Option<(&str, &str)>, downstream: &str) -> Route {
        Route {
            payload: None,
            service: service.map(Into::into),
            method: None,
            header: header.map(|(k, v)| HeaderMatch {
                key: k.into(),
                value: v.into(),
            }),
            downstream: downstream.into(),
            discover: None,
            timeout: None,
            max_timeout: None,
            policy: Default::default(),
        }
    }

    #[test]
    fn first_matching_route_wins_and_header_matches_exactly() {
        let router = Router::new(vec![
            route(Some("echo"), Some(("env", "canary")), "canary"),
            route(Some("echo"), None, "stable"),
            route(None, None, "default"),
        ]);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let canary = |k: &str| (k == "env").then_some(&b"canary"[..]);
        let other = |k: &str| (k == "env").then_some(&b"canaryx"[..]);
        let none = |_: &str| None;
        let head = |service, md| RequestHead::new(peer, Family::PingPong, service, "m", None, md);
        let pick = |h| router.target(&h).map(|t| t.downstream);
        assert_eq!(pick(head("echo", &canary)).as_deref(), Some("canary"));
        assert_eq!(pick(head("echo", &other)).as_deref(), Some("stable"));
        assert_eq!(pick(head("echo", &none)).as_deref(), Some("stable"));
        assert_eq!(pick(head("other", &canary)).as_deref(), Some("default"));
        assert!(Router::new(vec![]).target(&head("echo", &none)).is_none());
    }

    #[test]
    fn a_discovering_route_targets_the_destination_then_the_service() {
        let mut r = route(None, None, "");
        r.discover = Some(crate::config::Discover {
            transport: sluice_client::Transport::Framed,
        });
        let router = Router::new(vec![r]);
        assert!(router.discovers());
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let none = |_: &str| None;
        let head = |service, dest| {
            RequestHead::new(peer, Family::PingPong, service, "m", None, &none)
                .with_destination(dest)
        };
        let t = router
            .target(&head("EchoService", Some("kxserver")))
            .unwrap();
        assert_eq!(t.downstream, "kxserver", "ToService names the destination");
        assert_eq!(t.discovered, Some(sluice_client::Transport::Framed));
        let t = router.target(&head("EchoService", Some(""))).unwrap();
        assert_eq!(t.downstream, "EchoService", "else the IDL service");
        assert!(
            router.target(&head("", None)).is_none(),
            "nothing to look up: no match"
        );
        assert!(!Router::new(vec![route(None, None, "d")]).discovers());
    }

    #[test]
    fn deadline_policy_default_then_cap() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let mut r = route(None, None, "d");
        assert_eq!(
            r.deadline(None, now),
            None,
            "no caller deadline, no default"
        );
        assert_eq!(r.deadline(Some(now + s(5)), now), Some(now + s(5)));
        r.timeout = Some(s(2));
        assert_eq!(r.deadline(None, now), Some(now + s(2)), "default applies");
        assert_eq!(
            r.deadline(Some(now + s(9)), now),
            Some(now + s(9)),
            "the caller's deadline wins over the default"
        );
        r.max_timeout = Some(s(3));
        assert_eq!(
            r.deadline(Some(now + s(9)), now),
            Some(now + s(3)),
            "capped"
        );
        assert_eq!(r.deadline(Some(now + s(1)), now), Some(now + s(1)));
        r.timeout = None;
        assert_eq!(
            r.deadline(None, now),
            Some(now + s(3)),
            "the cap bounds no deadline"
        );
    }
}
