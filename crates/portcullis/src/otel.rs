//! OpenTelemetry traces, exported over OTLP/HTTP when `telemetry.otlp_endpoint` is set (off by
//! default). Each request is a span (`request`, at the edge) continuing the caller's
//! `traceparent`, with child spans for the gateway's stages — `authenticate`, `authorize`,
//! `upstream` — and the upstream receives a `traceparent` naming the request span. Spans leave
//! through a batch processor on its own thread: a bounded queue (spans beyond it are dropped,
//! never waited for), sent every half second.

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The tracer for the `tracing-opentelemetry` layer: spans to `endpoint`
/// (`http://collector:4318/v1/traces`) as `service`. Builds its HTTP client, so it must run
/// outside the async runtime.
pub fn tracer(endpoint: &str, service: &str) -> Result<opentelemetry_sdk::trace::Tracer, String> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_millis(500))
                .with_max_queue_size(8192)
                .build(),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        // A caller that says "not sampled" is not; every other request is.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer("portcullis");
    let _ = PROVIDER.set(provider);
    portcullis_gateway::set_stage_spans(true);
    Ok(tracer)
}

/// Whether traces are exported.
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// Sends what is queued (at exit).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get()
        && let Err(e) = p.shutdown()
    {
        eprintln!("portcullis: exporting the last traces failed: {e}");
    }
}

/// Makes `span` continue the trace of the request's `traceparent` (if any), then writes the
/// span's own context as the `traceparent` the upstream receives. Returns the trace id.
pub fn continue_trace(span: &tracing::Span, headers: &mut HeaderMap) -> String {
    let propagator = TraceContextPropagator::new();
    let parent = propagator.extract(&opentelemetry_http::HeaderExtractor(headers));
    let _ = span.set_parent(parent);
    let cx = span.context();
    headers.remove("traceparent");
    propagator.inject_context(&cx, &mut opentelemetry_http::HeaderInjector(headers));
    cx.span().span_context().trace_id().to_string()
}
