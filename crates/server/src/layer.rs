//! Layers: handlers wrapped around handlers, for what every request or stream should go
//! through (metrics, authentication, metainfo rewriting, routing of one's own).
//!
//! The layer model is motore's, as Volo uses it: a [`Layer`] turns an inner handler into an
//! outer one, [`Stack`] composes layers, [`Identity`] is the layer that adds nothing. A
//! layer's handler implements [`DefaultHandler`] (ping-pong), [`StreamingHandler`] (TTStream
//! and gRPC), or both, and calls the inner handler's `handle` when it wants the request to go
//! on. [`handler_fn`] and [`stream_handler_fn`] make handlers of async closures.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//! use sluice_server::layer::{handler_fn, Layer};
//! use sluice_server::{DefaultHandler, Request, Response};
//!
//! /// Counts requests, then hands them on.
//! struct Count<H> { inner: H, seen: Arc<AtomicU64> }
//!
//! impl<H: DefaultHandler> DefaultHandler for Count<H> {
//!     async fn handle(&self, req: Request) -> Response {
//!         self.seen.fetch_add(1, Ordering::Relaxed);
//!         self.inner.handle(req).await
//!     }
//! }
//!
//! struct CountLayer(Arc<AtomicU64>);
//!
//! impl<H> Layer<H> for CountLayer {
//!     type Service = Count<H>;
//!     fn layer(self, inner: H) -> Count<H> { Count { inner, seen: self.0 } }
//! }
//!
//! let seen = Arc::new(AtomicU64::new(0));
//! let echo = handler_fn(|req: Request| async move { Response::reply(req.args) });
//! let _handler = CountLayer(seen.clone()).layer(echo);
//! ```

use std::future::Future;

pub use motore::layer::{layer_fn, Identity, Layer, LayerFn, Stack};

use crate::request::{DefaultHandler, Request, Response};
use sluice_stream::{ServerStream, StreamRequest, StreamingHandler};

/// A [`DefaultHandler`] that calls an async function: see [`handler_fn`].
#[derive(Debug, Clone, Copy)]
pub struct HandlerFn<F>(F);

/// A [`DefaultHandler`] made of an async function from [`Request`] to [`Response`].
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send,
{
    HandlerFn(f)
}

impl<F, Fut> DefaultHandler for HandlerFn<F>
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send,
{
    fn handle(&self, req: Request) -> impl Future<Output = Response> + Send {
        (self.0)(req)
    }
}

/// A [`StreamingHandler`] that calls an async function: see [`stream_handler_fn`].
#[derive(Debug, Clone, Copy)]
pub struct StreamHandlerFn<F>(F);

/// A [`StreamingHandler`] made of an async function that serves one stream until it ends.
pub fn stream_handler_fn<F, Fut>(f: F) -> StreamHandlerFn<F>
where
    F: Fn(StreamRequest, ServerStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    StreamHandlerFn(f)
}

impl<F, Fut> StreamingHandler for StreamHandlerFn<F>
where
    F: Fn(StreamRequest, ServerStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    fn handle(&self, req: StreamRequest, stream: ServerStream) -> impl Future<Output = ()> + Send {
        (self.0)(req, stream)
    }
}
