//! A custom routing phase: requests and streams go to one of two downstreams by the value of
//! a metainfo key, `x-tenant` (a TTHeader string key for ping-pong, a TTStream header key or
//! gRPC metadata for streams).
//!
//! Tenant `a` goes to downstream `tenant-a`, tenant `b` to `tenant-b`. A request without the
//! key falls back to the configured routes; one naming another tenant is answered with a
//! no-route error in the caller's own protocol. The deadline policy stays the configured one:
//! the route that would have matched still decides the timeout.
//!
//! ```sh
//! cargo run -- echo --listen 127.0.0.1:8881 &
//! cargo run -- echo --listen 127.0.0.1:8882 &
//! cargo run --example custom_route -- 127.0.0.1:9000 127.0.0.1:8881 127.0.0.1:8882
//! ```

use std::net::SocketAddr;
use std::time::Instant;

use sluice::proxy::{
    Config, ConfigError, DefaultPhases, ErrorKind, Phases, Proxy, ProxyError, RequestHead, Router,
    Target,
};

/// The metainfo key that names the tenant.
pub const TENANT_KEY: &str = "x-tenant";

/// Routes by [`TENANT_KEY`]: each known tenant to its own downstream.
#[derive(Debug, Clone)]
pub struct TenantRoute {
    /// Tenant name and the downstream that serves it.
    pub tenants: Vec<(String, String)>,
}

impl Phases for TenantRoute {
    fn route<'r>(
        &self,
        head: &RequestHead<'_>,
        router: &'r Router,
    ) -> Result<Target<'r>, ProxyError> {
        let Some(tenant) = head.metainfo(TENANT_KEY) else {
            // No tenant: the configured routes decide.
            return DefaultPhases.route(head, router);
        };
        let Some((_, downstream)) = self.tenants.iter().find(|(t, _)| t.as_bytes() == tenant)
        else {
            return Err(ProxyError::new(
                ErrorKind::NoRoute,
                format!(
                    "sluice: unknown tenant {:?}",
                    String::from_utf8_lossy(tenant)
                ),
            ));
        };
        // The timeout policy of the route that matches, if any; else the caller's deadline.
        let deadline = match router.find(head) {
            Some(route) => route.deadline(head.deadline, Instant::now()),
            None => head.deadline,
        };
        Ok(Target::new(downstream.clone(), deadline))
    }
}

/// Ping-pong and TTStream on `listen`; downstreams `tenant-a` and `tenant-b`; requests without
/// a tenant go to `tenant-a`.
pub fn config(listen: SocketAddr, a: SocketAddr, b: SocketAddr) -> Result<Config, ConfigError> {
    Config::from_toml(&format!(
        r#"
[[listeners]]
name = "tenants"
address = "{listen}"
cluster = "ttstream"

[[routes]]
service = "*"
downstream = "tenant-a"
timeout_ms = 5000

[downstreams.tenant-a]
endpoints = ["{a}"]

[downstreams.tenant-b]
endpoints = ["{b}"]
"#
    ))
}

/// The phases: tenant `a` to `tenant-a`, `b` to `tenant-b`.
pub fn phases() -> TenantRoute {
    TenantRoute {
        tenants: vec![
            ("a".into(), "tenant-a".into()),
            ("b".into(), "tenant-b".into()),
        ],
    }
}

/// Serves `proxy` until `drain` is signalled.
pub async fn run(proxy: Proxy<TenantRoute>, drain: sluice::server::Drain) {
    proxy.serve(drain).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init();
    let mut args = std::env::args().skip(1);
    let mut next = |default: &str| -> Result<SocketAddr, std::net::AddrParseError> {
        args.next().as_deref().unwrap_or(default).parse()
    };
    let (listen, a, b) = (
        next("127.0.0.1:9000")?,
        next("127.0.0.1:8881")?,
        next("127.0.0.1:8882")?,
    );
    let proxy = Proxy::bind_with(config(listen, a, b)?, phases()).await?;
    for (name, addr) in proxy.local_addrs() {
        println!("listener {name} on {addr}");
    }
    let (handle, drain) = sluice::server::drain::channel();
    let serving = tokio::spawn(run(proxy, drain));
    tokio::signal::ctrl_c().await?;
    handle.drain();
    let _ = serving.await;
    Ok(())
}
