//! The fault suite: hostile callers and broken downstreams against the real `sluice` binary
//! over loopback, with a healthy caller of every protocol (TTHeader, TTStream, gRPC) running
//! beside each case through the same proxy to a healthy downstream, and asserting that it
//! never noticed.
//!
//! Cases run one at a time (they share two cores and measure the proxy's memory).

#[allow(dead_code)]
#[path = "../proxy/support.rs"]
mod support;

mod cases;
mod healthy;

use std::net::SocketAddr;

/// Serialises the cases: each starts its own proxy and measures it.
pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A proxy with a ttstream listener (`{port}`) and a grpc listener (`{grpc_port}`): service
/// `Healthy` goes to `healthy`, anything else to `faulty`. `limits` and `faulty_extra` are
/// added to the `[limits]` and `[downstreams.faulty]` tables.
pub(crate) fn config(
    faulty: SocketAddr,
    healthy: SocketAddr,
    limits: &str,
    route_extra: &str,
    faulty_extra: &str,
) -> String {
    format!(
        r#"
[[listeners]]
name = "streams"
address = "127.0.0.1:{{port}}"
cluster = "ttstream"

[[listeners]]
name = "grpc"
address = "127.0.0.1:{{grpc_port}}"
cluster = "grpc"

[[routes]]
service = "Healthy"
downstream = "healthy"

[[routes]]
service = "*"
downstream = "faulty"
{route_extra}

[downstreams.healthy]
endpoints = ["{healthy}"]

[downstreams.faulty]
endpoints = ["{faulty}"]
{faulty_extra}

[limits]
{limits}
"#
    )
}
