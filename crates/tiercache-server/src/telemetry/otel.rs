//! OpenTelemetry setup: the resource and sampler, the tracer provider and its OTLP exporter,
//! and what the CLI installs in its `tracing` subscriber ([`otel_layer`], [`JsonWithTraceIds`]).

use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::config::TelemetryConfig;

/// The instrumentation scope of every instrument and span.
pub(crate) const SCOPE: &str = "tiercache";

/// A telemetry pipeline that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP exporter: {0}")]
    Otlp(String),
    #[error("cannot build the Prometheus exporter: {0}")]
    Prometheus(String),
}

/// Returns the resource (`service.name` and the configured attributes) of spans and metrics.
pub fn resource(config: &TelemetryConfig) -> Resource {
    Resource::builder_empty()
        .with_service_name(config.service_name().to_string())
        .with_attributes(
            config
                .resource_attributes
                .iter()
                .filter(|(k, _)| k.as_str() != "service.name")
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build()
}

fn sampler(config: &TelemetryConfig) -> Sampler {
    let ratio = config.traces_sampler_arg();
    match config.traces_sampler() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
        _ => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
    }
}

/// Builds the tracer provider: spans go to the OTLP endpoint with the configured sampler. Without
/// an endpoint nothing is recorded (every span is sampled out), but spans still get trace and
/// span ids, so logs carry the caller's trace id.
///
/// Must be called inside a tokio runtime when an endpoint is set (the exporter's channel).
pub fn tracer_provider(config: &TelemetryConfig) -> Result<SdkTracerProvider, TelemetryError> {
    let builder = SdkTracerProvider::builder().with_resource(resource(config));
    Ok(match &config.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
            builder
                .with_sampler(sampler(config))
                .with_batch_exporter(exporter)
                .build()
        }
        None => builder.with_sampler(Sampler::AlwaysOff).build(),
    })
}

/// Returns the `tracing` layer that turns spans into OpenTelemetry spans of `provider`.
///
/// With `detailed` (an OTLP endpoint is set) it also takes the engine's debug-level spans (one
/// per L1 lookup); otherwise only info-level spans, which is all the log correlation needs.
pub fn otel_layer<S>(
    provider: &SdkTracerProvider,
    detailed: bool,
) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;
    let mut targets = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::INFO)
        // Transport internals are noise in a cache's traces.
        .with_target("h2", tracing::Level::WARN)
        .with_target("hyper", tracing::Level::WARN)
        .with_target("tower", tracing::Level::WARN);
    if detailed {
        targets = targets.with_target("tiercache_core", tracing::Level::DEBUG);
    }
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SCOPE))
        .with_location(false)
        .with_threads(false)
        .with_filter(targets)
}

/// A log formatter that puts the current OpenTelemetry `trace_id` and `span_id` first in each
/// JSON line, so logs join traces. Wraps `tracing_subscriber`'s JSON format.
#[derive(Debug, Clone)]
pub struct JsonWithTraceIds<F>(pub F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JsonWithTraceIds<F>
where
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.0.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{}\",\"span_id\":\"{}\",{rest}",
                sc.trace_id(),
                sc.span_id()
            ),
            None => writer.write_str(&line),
        }
    }
}
