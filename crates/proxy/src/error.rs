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

/// A stream to the downstream could not be opened.
pub(crate) fn open_failed(
    downstream: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> ProxyError {
    ProxyError::new(
        ErrorKind::Unavailable,
        format!("sluice: downstream {downstream:?}: {e}"),
    )
    .with_source(e)
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
