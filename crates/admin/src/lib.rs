//! Sluice's admin listener: a small HTTP/1.1 server (hyper) for operators and probes.
//!
//! | path | answer |
//! |---|---|
//! | `GET /metrics` | every series, Prometheus text format 0.0.4 |
//! | `GET /healthz` | `200 ok` while the process runs |
//! | `GET /readyz` | `200 ready` once serving; `503` while starting, draining, or while no downstream has a usable endpoint |
//! | `GET /config` | the effective configuration as TOML |
//! | `POST /reload` | reloads the configuration (when the proxy offers it): `200 reloaded`, or `422` with the reason the new one was refused (the old one stays) |
//!
//! Anything else is `404`; a method other than GET or HEAD (POST for `/reload`) is `405`. The admin listener is
//! separate from the proxy's listeners, serves at most [`MAX_CONNECTIONS`] connections at once,
//! gives each [`HEADER_TIMEOUT`] to send its request head, and keeps serving while the proxy
//! drains, so a load balancer sees `/readyz` fail before connections close.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sluice_metrics::Metrics;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Admin connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;

/// Time a connection has to send a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an admin connection may live: a scraper's keep-alive connection is closed after
/// this and it reconnects, so no connection is held for good.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

/// Why the proxy is or is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Listeners bound, configuration loaded, not draining, a downstream is usable.
    Ready,
    /// Not yet serving.
    Starting,
    /// Draining after a shutdown signal.
    Draining,
    /// No downstream has an endpoint that can be used now.
    NoUsableDownstream,
}

impl Readiness {
    /// The text `/readyz` answers with.
    pub fn as_str(self) -> &'static str {
        match self {
            Readiness::Ready => "ready",
            Readiness::Starting => "starting",
            Readiness::Draining => "draining",
            Readiness::NoUsableDownstream => "no downstream has a usable endpoint",
        }
    }
}

/// A configuration reload (see [`Admin::with_reload`]): what it answers with when it fails.
pub type ReloadError = Box<dyn std::error::Error + Send + Sync>;

/// The reload hook: starts a reload and tells how it went.
type ReloadHook = Box<
    dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<(), ReloadError>> + Send>>
        + Send
        + Sync,
>;

/// A check of the downstreams (see [`Health::with_usable`]).
type UsableCheck = Box<dyn Fn() -> bool + Send + Sync>;

/// The process's health as `/healthz` and `/readyz` report it.
#[derive(Default)]
pub struct Health {
    serving: AtomicBool,
    draining: AtomicBool,
    usable: Option<UsableCheck>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("readiness", &self.readiness())
            .finish()
    }
}

impl Health {
    /// Starting: not ready until [`set_serving`](Self::set_serving).
    pub fn new() -> Self {
        Self::default()
    }

    /// Also not ready while `usable()` is false (no downstream has a usable endpoint).
    pub fn with_usable(mut self, usable: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.usable = Some(Box::new(usable));
        self
    }

    /// Every listener is bound and the configuration loaded.
    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::Release);
    }

    /// A shutdown signal arrived: not ready from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// True once [`set_draining`](Self::set_draining) was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Ready or, if not, why.
    pub fn readiness(&self) -> Readiness {
        if self.is_draining() {
            Readiness::Draining
        } else if !self.serving.load(Ordering::Acquire) {
            Readiness::Starting
        } else if self.usable.as_ref().is_some_and(|u| !u()) {
            Readiness::NoUsableDownstream
        } else {
            Readiness::Ready
        }
    }
}

/// The effective configuration, rendered when `/config` is asked for.
type ConfigText = Box<dyn Fn() -> String + Send + Sync>;

/// What the admin endpoints serve.
pub struct Admin {
    metrics: Option<Arc<Metrics>>,
    health: Arc<Health>,
    config: Option<ConfigText>,
    reload: Option<ReloadHook>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("metrics", &self.metrics.is_some())
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Endpoints for `health`; `/metrics` and `/config` answer 404 until set.
    pub fn new(health: Arc<Health>) -> Self {
        Self {
            metrics: None,
            health,
            config: None,
            reload: None,
        }
    }

    /// Serves `metrics` at `/metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Serves `config()` (TOML) at `/config`.
    pub fn with_config(mut self, config: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.config = Some(Box::new(config));
        self
    }

    /// Answers `POST /reload` by running `reload`.
    pub fn with_reload<F>(mut self, reload: impl Fn() -> F + Send + Sync + 'static) -> Self
    where
        F: Future<Output = Result<(), ReloadError>> + Send + 'static,
    {
        self.reload = Some(Box::new(move || Box::pin(reload())));
        self
    }

    /// The answer to `POST /reload`.
    pub async fn reload(&self) -> Response<Full<Bytes>> {
        match &self.reload {
            None => text(StatusCode::NOT_FOUND, "reload is not offered\n"),
            Some(hook) => match hook().await {
                Ok(()) => text(StatusCode::OK, "reloaded\n"),
                Err(e) => text(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("reload refused, the configuration in force stays: {e}\n"),
                ),
            },
        }
    }

    /// The health the probes report.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// The answer to one request.
    pub fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        }
        match path {
            "/metrics" => match &self.metrics {
                Some(m) => {
                    let mut r = Response::new(Full::new(Bytes::from(m.encode())));
                    r.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static(sluice_metrics::CONTENT_TYPE),
                    );
                    r
                }
                None => text(StatusCode::NOT_FOUND, "metrics are off\n"),
            },
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => match self.health.readiness() {
                Readiness::Ready => text(StatusCode::OK, "ready\n"),
                not => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}\n", not.as_str()),
                ),
            },
            "/config" => match &self.config {
                Some(c) => {
                    let mut r = Response::new(Full::new(Bytes::from(c())));
                    r.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/toml; charset=utf-8"),
                    );
                    r
                }
                None => text(StatusCode::NOT_FOUND, "no configuration\n"),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz, /readyz or /config\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serves the admin endpoints on `listener` until `shutdown` completes; then every admin
/// connection is closed.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Reap finished connections so the set holds only live ones.
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        conns.spawn(async move {
            let _permit = permit;
            serve_connection(stream, peer, admin).await;
        });
    }
    conns.shutdown().await;
}

async fn serve_connection(stream: tokio::net::TcpStream, peer: SocketAddr, admin: Arc<Admin>) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let admin = admin.clone();
        async move {
            let r = if req.uri().path() == "/reload" {
                if req.method() == Method::POST {
                    admin.reload().await
                } else {
                    text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n")
                }
            } else {
                admin.respond(req.method(), req.uri().path())
            };
            Ok::<_, Infallible>(r)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "admin connection closed"),
        Err(_) => tracing::debug!(%peer, "admin connection closed after its lifetime"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap();
        (status, body)
    }

    #[tokio::test]
    async fn every_endpoint_answers() {
        let downstream_up = Arc::new(AtomicBool::new(true));
        let up = downstream_up.clone();
        let health = Arc::new(Health::new().with_usable(move || up.load(Ordering::Relaxed)));
        let metrics = Metrics::new(sluice_metrics::MetricsConfig::default());
        metrics.server().record(
            &sluice_metrics::Rpc {
                caller: "",
                callee: "svc",
                method: "M",
                retry: 0,
            },
            sluice_metrics::Status::Succeed,
            Duration::from_micros(10),
        );
        let admin = Arc::new(
            Admin::new(health.clone())
                .with_metrics(metrics)
                .with_config(|| "[admin]\naddress = \"127.0.0.1:1\"\n".to_owned()),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, admin, async {
            let _ = stopped.await;
        }));

        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
        assert_eq!(
            get(addr, "/readyz").await,
            (503, "not ready: starting\n".into())
        );
        health.set_serving();
        assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));
        downstream_up.store(false, Ordering::Relaxed);
        assert_eq!(
            get(addr, "/readyz").await,
            (
                503,
                "not ready: no downstream has a usable endpoint\n".into()
            )
        );
        downstream_up.store(true, Ordering::Relaxed);
        health.set_draining();
        assert_eq!(
            get(addr, "/readyz").await,
            (503, "not ready: draining\n".into())
        );
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("kitex_server_throughput{callee=\"svc\""),
            "{body}"
        );
        assert_eq!(
            get(addr, "/config").await,
            (200, "[admin]\naddress = \"127.0.0.1:1\"\n".into())
        );
        assert_eq!(get(addr, "/nope").await.0, 404);
        stop.send(()).unwrap();
        server.await.unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn methods_other_than_get_are_refused() {
        let admin = Admin::new(Arc::new(Health::new()));
        assert_eq!(
            admin.respond(&Method::POST, "/healthz").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            admin.respond(&Method::GET, "/metrics").status(),
            StatusCode::NOT_FOUND
        );
    }
}
