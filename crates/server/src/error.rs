//! The one error a caller can get from Sluice itself (as opposed to an error its downstream
//! sent, which passes through unchanged), and its rendering in each protocol family.
//!
//! A [`ProxyError`] has a [`ErrorKind`] (what went wrong, which decides the code the caller
//! sees), the message the caller reads, the typed error that caused it, and whether the
//! request can be retried safely. It is rendered exactly once, at the edge, by one function
//! per family:
//!
//! | kind | ping-pong (TApplicationException / Kitex-pb ErrorProto type) | TTStream (trailer exception type) | gRPC status |
//! |---|---|---|---|
//! | `NoRoute` | 1 `UNKNOWN_METHOD` | 1 `UNKNOWN_METHOD` | 12 `UNIMPLEMENTED` |
//! | `WrongCluster` | 20 `UNKNOWN_SERVICE` | 20 `UNKNOWN_SERVICE` | 20 (Kitex's unknown service)* |
//! | `Unavailable` | 6 `INTERNAL_ERROR` | 6 `INTERNAL_ERROR` | 14 `UNAVAILABLE` |
//! | `Deadline` | 6 `INTERNAL_ERROR` | 12015 (stream timeout) | 4 `DEADLINE_EXCEEDED` |
//! | `DownstreamReset` | 6 `INTERNAL_ERROR` | 12009 (cancelled by downstream) | 1 `CANCELLED` |
//! | `BadReply` | 6 `INTERNAL_ERROR` | 6 `INTERNAL_ERROR` | 13 `INTERNAL` |
//! | `Refused` | 6 `INTERNAL_ERROR` | 6 `INTERNAL_ERROR` | 7 `PERMISSION_DENIED` |
//! | `Overloaded` | 6 `INTERNAL_ERROR` | 6 `INTERNAL_ERROR` | 14 `UNAVAILABLE` |
//! | `RateLimited` | 6 `INTERNAL_ERROR` | 6 `INTERNAL_ERROR` | 8 `RESOURCE_EXHAUSTED` |
//! | `Internal` | 6 `INTERNAL_ERROR` | 6 `INTERNAL_ERROR` | 13 `INTERNAL` |
//!
//! \* A gRPC connection that reaches a `ttstream` listener is refused before any stream exists:
//! with a GOAWAY whose debug data carries the same text.

use std::error::Error as StdError;
use std::fmt;

use sluice_http2::Code;
use sluice_stream::{Protocol, StatusCode, StreamEnd};
use sluice_thrift::{ApplicationException, ExceptionKind};

use crate::request::Response;

/// A boxed error, the cause of a [`ProxyError`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What went wrong, from the caller's point of view. It decides the code the caller gets in
/// each protocol (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No route matches the request's service, method and metainfo.
    NoRoute,
    /// The listener serves another protocol family.
    WrongCluster,
    /// The downstream could not be reached or failed before answering: no endpoint, connect
    /// refused or timed out, connection closed, or a stream that could not be opened.
    Unavailable,
    /// The request's deadline passed, or the downstream stayed silent past the first-response
    /// timeout.
    Deadline,
    /// The downstream reset the stream.
    DownstreamReset,
    /// The downstream's reply was malformed or answered another request.
    BadReply,
    /// A policy (a phase hook or a layer) refused the request.
    Refused,
    /// A limit was reached: too many streams or requests in flight.
    Overloaded,
    /// A rate limit refused the request.
    RateLimited,
    /// Anything else: a bug or a misconfiguration (a route naming a downstream that does not
    /// exist, a request that cannot be encoded).
    Internal,
}

impl ErrorKind {
    /// Short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no route",
            ErrorKind::WrongCluster => "wrong cluster",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Deadline => "deadline exceeded",
            ErrorKind::DownstreamReset => "downstream reset",
            ErrorKind::BadReply => "bad reply",
            ErrorKind::Refused => "refused",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::Internal => "internal",
        }
    }

    /// The `TApplicationException` type a ping-pong caller gets.
    pub fn exception_kind(self) -> ExceptionKind {
        match self {
            ErrorKind::NoRoute => ExceptionKind::UNKNOWN_METHOD,
            ErrorKind::WrongCluster => ExceptionKind::UNKNOWN_SERVICE,
            _ => ExceptionKind::INTERNAL_ERROR,
        }
    }

    /// The exception type of the trailer a TTStream caller gets.
    pub fn ttstream_kind(self) -> ExceptionKind {
        match self {
            ErrorKind::Deadline => ExceptionKind::TTSTREAM_TIMEOUT,
            ErrorKind::DownstreamReset => ExceptionKind::TTSTREAM_CANCELED_BY_DOWNSTREAM,
            other => other.exception_kind(),
        }
    }

    /// The `grpc-status` a gRPC caller gets.
    pub fn grpc_code(self) -> Code {
        match self {
            ErrorKind::NoRoute => Code::UNIMPLEMENTED,
            ErrorKind::WrongCluster => Code::KITEX_UNKNOWN_SERVICE,
            ErrorKind::Unavailable | ErrorKind::Overloaded => Code::UNAVAILABLE,
            ErrorKind::Deadline => Code::DEADLINE_EXCEEDED,
            ErrorKind::DownstreamReset => Code::CANCELLED,
            ErrorKind::Refused => Code::PERMISSION_DENIED,
            ErrorKind::RateLimited => Code::RESOURCE_EXHAUSTED,
            ErrorKind::BadReply | ErrorKind::Internal => Code::INTERNAL,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error Sluice answers a caller with. See the [module docs](self) for how it is rendered.
#[derive(Debug)]
pub struct ProxyError {
    kind: ErrorKind,
    message: String,
    source: Option<BoxError>,
    retry_safe: bool,
}

impl ProxyError {
    /// An error of `kind` whose caller reads `message` (conventionally starting `sluice: `).
    /// Not safe to retry unless [`retry_safe`](Self::retry_safe) says so.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
            retry_safe: false,
        }
    }

    /// Keeps `source` as the typed cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Marks whether the request certainly reached no downstream handler (so sending it again,
    /// elsewhere, cannot duplicate work).
    pub fn retry_safe(mut self, safe: bool) -> Self {
        self.retry_safe = safe;
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message the caller reads.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// True when the request certainly reached no downstream handler.
    pub fn is_retry_safe(&self) -> bool {
        self.retry_safe
    }

    /// True when `T` is somewhere in the chain of causes.
    pub fn is_caused_by<T: StdError + 'static>(&self) -> bool {
        self.cause_ref::<T>().is_some()
    }

    /// The first cause of type `T` in the chain of causes.
    pub fn cause_ref<T: StdError + 'static>(&self) -> Option<&T> {
        let mut next: Option<&(dyn StdError + 'static)> = self.source.as_deref().map(|e| e as _);
        while let Some(e) = next {
            if let Some(t) = e.downcast_ref::<T>() {
                return Some(t);
            }
            next = e.source();
        }
        None
    }

    /// Rendered for a ping-pong caller: a `TApplicationException` (thrift) or `ErrorProto`
    /// (Kitex protobuf) EXCEPTION in the request's own codec and framing.
    pub fn to_response(&self) -> Response {
        Response::error(self.to_exception())
    }

    /// The exception a ping-pong caller gets.
    pub fn to_exception(&self) -> ApplicationException {
        ApplicationException::new(self.kind.exception_kind(), self.message.clone())
    }

    /// Rendered as the end of a stream: a TTStream trailer exception or a gRPC status,
    /// whichever `protocol` the stream speaks.
    pub fn to_stream_end(&self, protocol: &Protocol) -> StreamEnd {
        match protocol {
            Protocol::TTStream => StreamEnd::error(
                StatusCode::TTStream(self.kind.ttstream_kind().0),
                self.message.clone(),
            ),
            Protocol::Grpc { .. } => StreamEnd::error(
                StatusCode::Grpc(self.kind.grpc_code().as_u32()),
                self.message.clone(),
            ),
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for ProxyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

impl From<ProxyError> for Response {
    fn from(e: ProxyError) -> Self {
        e.to_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::ResponseBody;

    #[test]
    fn each_kind_renders_in_each_family() {
        let grpc = Protocol::Grpc {
            path: "/s/m".into(),
            content_type: "application/grpc".into(),
            authority: String::new(),
        };
        let cases = [
            (ErrorKind::NoRoute, 1, 1, 12),
            (ErrorKind::WrongCluster, 20, 20, 20),
            (ErrorKind::Unavailable, 6, 6, 14),
            (ErrorKind::Deadline, 6, 12015, 4),
            (ErrorKind::DownstreamReset, 6, 12009, 1),
            (ErrorKind::BadReply, 6, 6, 13),
            (ErrorKind::Refused, 6, 6, 7),
            (ErrorKind::Overloaded, 6, 6, 14),
            (ErrorKind::RateLimited, 6, 6, 8),
            (ErrorKind::Internal, 6, 6, 13),
        ];
        for (kind, pingpong, ttstream, grpc_code) in cases {
            let e = ProxyError::new(kind, "sluice: x");
            let ResponseBody::Error(ex) = e.to_response().body else {
                panic!("{kind}: not an exception");
            };
            assert_eq!(
                (ex.kind.0, ex.message.as_str()),
                (pingpong, "sluice: x"),
                "{kind}"
            );
            let end = e.to_stream_end(&Protocol::TTStream).error.unwrap();
            assert_eq!(end.code, StatusCode::TTStream(ttstream), "{kind}");
            let end = e.to_stream_end(&grpc).error.unwrap();
            assert_eq!(
                (end.code, end.message.as_str()),
                (StatusCode::Grpc(grpc_code), "sluice: x"),
                "{kind}"
            );
        }
    }

    #[test]
    fn causes_are_kept_typed() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = ProxyError::new(ErrorKind::Unavailable, "sluice: down")
            .with_source(io)
            .retry_safe(true);
        assert!(e.is_caused_by::<std::io::Error>());
        assert_eq!(
            e.cause_ref::<std::io::Error>().map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
        assert!(!e.is_caused_by::<std::fmt::Error>());
        assert!(e.is_retry_safe());
        assert_eq!(e.to_string(), "sluice: down");
    }
}
