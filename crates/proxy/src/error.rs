//! The forwarder's errors, as [`ProxyError`]s with the texts callers (and the docs) rely on;
//! a phase of one's own can answer with the same ones.

use std::time::Duration;

use sluice_client::Error as ClientError;
use sluice_server::{ErrorKind, ProxyError};

/// No route matched.
pub fn no_route(service: &str, method: &str) -> ProxyError {
    ProxyError::new(
        ErrorKind::NoRoute,
        format!("sluice: no route for service {service:?} method {method:?}"),
    )
}

/// A route (or a phase) named a downstream that is not configured.
pub fn not_configured(downstream: &str) -> ProxyError {
    ProxyError::new(
        ErrorKind::Internal,
        format!("sluice: downstream {downstream:?} is not configured"),
    )
}

/// A stream that cannot be converted to the family the downstream's `stream_protocol` names
/// (answered as UNIMPLEMENTED, as a call nothing serves).
pub(crate) fn unsupported_conversion(downstream: &str, why: &str) -> ProxyError {
    ProxyError::new(
        ErrorKind::NoRoute,
        format!("sluice: downstream {downstream:?} cannot take this stream: {why}"),
    )
}

/// A ping-pong call to the downstream failed.
pub(crate) fn call_failed(e: ClientError) -> ProxyError {
    let (kind, retry_safe) = match &e {
        ClientError::NoEndpoint { .. }
        | ClientError::Connect { .. }
        | ClientError::ConnectTimeout { .. }
        | ClientError::Tls { .. } => (ErrorKind::Unavailable, true),
        ClientError::Io { source, .. } => (ErrorKind::Unavailable, source.before_reply()),
        ClientError::Timeout { .. } => (ErrorKind::Deadline, false),
        ClientError::Protocol { .. } => (ErrorKind::BadReply, false),
        // Nothing was sent.
        ClientError::Overloaded { .. } => (ErrorKind::Overloaded, true),
        _ => (ErrorKind::Internal, true),
    };
    // Kitex callers match on "timeout" in the message of a call that ran out of time.
    let message = if matches!(e, ClientError::Timeout { .. }) {
        format!("sluice: timeout: {e}")
    } else {
        format!("sluice: {e}")
    };
    ProxyError::new(kind, message)
        .with_source(e)
        .retry_safe(retry_safe)
}

/// A stream to the downstream could not be opened; `overloaded` when a limit refused it.
pub(crate) fn open_failed(
    downstream: &str,
    e: impl std::error::Error + Send + Sync + 'static,
    overloaded: bool,
) -> ProxyError {
    let kind = if overloaded {
        ErrorKind::Overloaded
    } else {
        ErrorKind::Unavailable
    };
    let text = e.to_string();
    // The ping-pong client's errors name the downstream already.
    let message = if text.starts_with("downstream ") {
        format!("sluice: {text}")
    } else {
        format!("sluice: downstream {downstream:?}: {text}")
    };
    ProxyError::new(kind, message)
        .with_source(e)
        .retry_safe(true)
}

/// A TTStream stream to the downstream could not be opened.
pub(crate) fn ttstream_open_failed(downstream: &str, e: ClientError) -> ProxyError {
    let overloaded = matches!(e, ClientError::Overloaded { .. });
    open_failed(downstream, e, overloaded)
}

/// A gRPC stream to the downstream could not be opened.
pub(crate) fn grpc_open_failed(downstream: &str, e: sluice_http2::GrpcClientError) -> ProxyError {
    let overloaded = matches!(e, sluice_http2::GrpcClientError::Overloaded { .. });
    open_failed(downstream, e, overloaded)
}

/// A route's rate limit refused the request.
pub(crate) fn rate_limited(downstream: &str, limiter: &crate::config::RateLimiter) -> ProxyError {
    ProxyError::new(
        ErrorKind::RateLimited,
        format!(
            "sluice: rate limited: requests to {downstream:?} are over the route's rate_limit of {} per second (burst {})",
            limiter.limit.rps, limiter.limit.burst
        ),
    )
    .retry_safe(true)
}

/// The whole process has `[limits] max_in_flight` requests and streams in flight.
pub(crate) fn process_overloaded(max: usize) -> ProxyError {
    ProxyError::new(
        ErrorKind::Overloaded,
        format!("sluice: overloaded: {max} requests and streams in flight (limits.max_in_flight)"),
    )
    .retry_safe(true)
}

/// The downstream reset a forwarded stream.
pub(crate) fn downstream_reset(
    downstream: &str,
    message: &str,
    code: sluice_stream::ResetCode,
) -> ProxyError {
    ProxyError::new(
        ErrorKind::DownstreamReset,
        format!("sluice: downstream {downstream:?} reset the stream: {message} (code {code})"),
    )
}

/// A forwarded stream's deadline passed.
pub(crate) fn stream_deadline(downstream: &str) -> ProxyError {
    ProxyError::new(
        ErrorKind::Deadline,
        format!("sluice: timeout: downstream {downstream:?}: deadline exceeded"),
    )
}

/// The downstream of a forwarded stream stayed silent past the first-response timeout.
pub(crate) fn no_first_response(downstream: &str, after: Duration) -> ProxyError {
    ProxyError::new(
        ErrorKind::Deadline,
        format!("sluice: timeout: downstream {downstream:?} sent no response within {after:?}"),
    )
}
