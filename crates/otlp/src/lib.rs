//! Sluice's OTLP export: one span per forwarded call or stream, sent in batches to an
//! OpenTelemetry collector over OTLP/gRPC, off the request path.
//!
//! The span stands for the proxy's hop. When the call arrived with a W3C trace context, the
//! span has the caller's trace id, the caller's span as its parent, and as its own id the span
//! id the downstream received as its parent ([`TraceContext`]), so the three join up in one
//! trace. When no trace arrived, a share of the calls ([`Tracing::sample_ratio`]) is exported
//! as the root of a new trace; that trace is not sent downstream (the relay never starts one).
//!
//! Spans are built when the call or stream is done ([`Phases::logging`]) and handed to a
//! bounded queue ([`QUEUE_SIZE`] spans, dropped when full) that a background thread exports
//! at least every [`EXPORT_DELAY`]: forwarding never waits for the collector.
//!
//! | attribute | value |
//! | --- | --- |
//! | span name | `<service>/<method>` |
//! | `rpc.system` | `kitex` (ping-pong, TTStream) or `grpc` |
//! | `rpc.service`, `rpc.method` | the caller's service and method |
//! | `sluice.protocol` | `pingpong`, `ttstream` or `grpc` |
//! | `sluice.downstream` | the downstream's name (absent if routing failed) |
//! | `sluice.status` | `ok`, or the kind of error Sluice answered with (the span status is then an error with its message) |
//! | `client.address`, `client.port` | the caller |
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use sluice_proxy::route::{RequestHead, Router, Target};
use sluice_proxy::{CallInfo, Family, Metainfo, Phases, ProxyError, TraceContext, Tracing};

/// Spans waiting to be exported at most; more are dropped (and counted by the exporter's
/// diagnostics) rather than slowing forwarding down.
pub const QUEUE_SIZE: usize = 2048;

/// Spans per export request at most.
pub const BATCH_SIZE: usize = 512;

/// The longest a span waits in the queue before its batch is exported.
pub const EXPORT_DELAY: Duration = Duration::from_secs(1);

/// How long one export request may take.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `service.name` of the exported spans' resource.
pub const SERVICE_NAME: &str = "sluice";

/// The export could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("OTLP export to {endpoint:?}: {message}")]
pub struct Error {
    endpoint: String,
    message: String,
}

/// A running span export: a bounded queue and the thread that empties it to the collector.
/// Cheap to clone; [`shutdown`](Self::shutdown) flushes what is queued.
#[derive(Debug, Clone)]
pub struct SpanExport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
    sample_ratio: f64,
}

/// Phases that run `P` and export a span for each call and stream when they are done
/// ([`Phases::logging`]); with no [`SpanExport`] they are `P` and one branch.
#[derive(Debug)]
pub struct Exporting<P> {
    inner: P,
    export: Option<SpanExport>,
}

// === impl SpanExport ===

impl SpanExport {
    /// Starts exporting to `tracing.otlp_endpoint`; `Ok(None)` when it is unset. Must be
    /// called within a tokio runtime, which then carries the exporter's connection: the
    /// collector need not be up yet (the connection is made when the first batch goes out, and
    /// a failed export is dropped and logged at debug level).
    pub fn start(tracing: &Tracing) -> Result<Option<SpanExport>, Error> {
        let Some(endpoint) = &tracing.otlp_endpoint else {
            return Ok(None);
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| Error {
                endpoint: endpoint.clone(),
                message: e.to_string(),
            })?;
        let config = BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE_SIZE)
            .with_max_export_batch_size(BATCH_SIZE)
            .with_scheduled_delay(EXPORT_DELAY)
            .build();
        let mut processor = BatchSpanProcessor::new(exporter, config);
        processor.set_resource(&Resource::builder().with_service_name(SERVICE_NAME).build());
        let scope = InstrumentationScope::builder(SERVICE_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        Ok(Some(SpanExport {
            inner: Arc::new(Inner {
                processor,
                scope,
                sample_ratio: tracing.sample_ratio,
            }),
        }))
    }

    /// Hands the span of a finished call or stream to the queue, if it is sampled: a call
    /// that came with a trace when its caller sampled it, one without at the configured ratio.
    /// Never blocks.
    pub fn record(&self, info: &CallInfo<'_>, error: Option<&ProxyError>) {
        let (context, parent) = match info.trace {
            Some(t) if t.sampled() => (t, t.parent()),
            Some(_) => return,
            None => {
                if !sampled(self.inner.sample_ratio) {
                    return;
                }
                (TraceContext::new_root(), None)
            }
        };
        let span = self.span(info, error, &context, parent);
        self.inner.processor.on_end(span);
    }

    fn span(
        &self,
        info: &CallInfo<'_>,
        error: Option<&ProxyError>,
        context: &TraceContext,
        parent: Option<[u8; 8]>,
    ) -> SpanData {
        let end_time = SystemTime::now();
        let start_time = end_time
            .checked_sub(info.start.elapsed())
            .unwrap_or(end_time);
        let mut attributes = Vec::with_capacity(8);
        attributes.push(KeyValue::new(
            "rpc.system",
            if info.family == Family::Grpc {
                "grpc"
            } else {
                "kitex"
            },
        ));
        attributes.push(KeyValue::new("rpc.service", info.service.to_owned()));
        attributes.push(KeyValue::new("rpc.method", info.method.to_owned()));
        attributes.push(KeyValue::new("sluice.protocol", info.family.as_str()));
        if let Some(d) = info.downstream {
            attributes.push(KeyValue::new("sluice.downstream", d.to_owned()));
        }
        attributes.push(KeyValue::new(
            "sluice.status",
            error.map_or("ok", |e| e.kind().as_str()),
        ));
        attributes.push(KeyValue::new("client.address", info.peer.ip().to_string()));
        attributes.push(KeyValue::new("client.port", i64::from(info.peer.port())));
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(context.trace_id),
                SpanId::from_bytes(context.span_id),
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: parent.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: parent.is_some(),
            span_kind: SpanKind::Server,
            name: Cow::Owned(format!("{}/{}", info.service, info.method)),
            start_time,
            end_time,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match error {
                Some(e) => Status::error(e.to_string()),
                None => Status::Unset,
            },
            instrumentation_scope: self.inner.scope.clone(),
        }
    }

    /// Exports what is queued (waiting up to `timeout`) and stops the export thread. Blocks:
    /// call it from a blocking context (`tokio::task::spawn_blocking`) or after the runtime's
    /// work is done.
    pub fn shutdown(&self, timeout: Duration) {
        if let Err(e) = self.inner.processor.shutdown_with_timeout(timeout) {
            tracing::warn!(error = %e, "OTLP span export did not shut down cleanly");
        }
    }
}

/// True for a share `ratio` of the calls.
fn sampled(ratio: f64) -> bool {
    ratio >= 1.0 || (ratio > 0.0 && rand::random::<f64>() < ratio)
}

// === impl Exporting ===

impl<P: Phases> Exporting<P> {
    /// `inner`, exporting to `export` (none: nothing is exported).
    pub fn new(inner: P, export: Option<SpanExport>) -> Self {
        Self { inner, export }
    }

    /// The wrapped phases.
    pub fn inner(&self) -> &P {
        &self.inner
    }
}

impl<P: Phases> Phases for Exporting<P> {
    fn route<'r>(
        &self,
        head: &RequestHead<'_>,
        router: &'r Router,
    ) -> Result<Target<'r>, ProxyError> {
        self.inner.route(head, router)
    }

    fn request_filter(
        &self,
        info: &CallInfo<'_>,
        target: &Target<'_>,
        metainfo: &mut Metainfo<'_>,
    ) -> Result<(), ProxyError> {
        self.inner.request_filter(info, target, metainfo)
    }

    fn rewrite_method(&self, info: &CallInfo<'_>, target: &Target<'_>) -> Option<String> {
        self.inner.rewrite_method(info, target)
    }

    fn response_filter(&self, info: &CallInfo<'_>, metainfo: &mut Metainfo<'_>) {
        self.inner.response_filter(info, metainfo)
    }

    fn on_error(&self, info: &CallInfo<'_>, error: ProxyError) -> ProxyError {
        self.inner.on_error(info, error)
    }

    fn logging(&self, info: &CallInfo<'_>, error: Option<&ProxyError>) {
        self.inner.logging(info, error);
        if let Some(export) = &self.export {
            export.record(info, error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_ratio_bounds_and_share() {
        assert!((0..1000).all(|_| sampled(1.0)));
        assert!((0..1000).all(|_| !sampled(0.0)));
        let hits = (0..10_000).filter(|_| sampled(0.25)).count();
        assert!((2000..3000).contains(&hits), "{hits} of 10000 at 0.25");
    }

    #[test]
    fn no_endpoint_no_export() {
        assert!(SpanExport::start(&Tracing::default()).unwrap().is_none());
    }
}
