//! W3C trace context propagation (feature `otel`): the `traceparent` of the current span.

use opentelemetry::trace::TraceContextExt;
use tonic::metadata::{MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Returns `00-<trace id>-<span id>-<flags>` for the current `tracing` span, or `None` when it
/// carries no valid OpenTelemetry span context (no `tracing_opentelemetry` layer, or no trace).
pub(crate) fn traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Adds `traceparent` to outgoing metadata when the current span has a trace context.
pub(crate) fn inject(meta: &mut MetadataMap) {
    if let Some(tp) = traceparent() {
        if let Ok(v) = MetadataValue::try_from(tp.as_str()) {
            meta.insert("traceparent", v);
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry::Context;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn traceparent_comes_from_the_current_span() {
        let subscriber = tracing_subscriber::registry().with(tracing_opentelemetry::layer());
        tracing::subscriber::with_default(subscriber, || {
            assert_eq!(traceparent(), None, "no span, no header");
            let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
            let parent = SpanId::from_hex("00f067aa0ba902b7").unwrap();
            let remote = SpanContext::new(
                trace,
                parent,
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            );
            let span = tracing::info_span!("request");
            span.set_parent(Context::new().with_remote_span_context(remote))
                .unwrap();
            let _entered = span.enter();
            let mut meta = MetadataMap::new();
            inject(&mut meta);
            let tp = meta
                .get("traceparent")
                .expect("traceparent")
                .to_str()
                .unwrap();
            assert!(
                tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp.ends_with("-01"),
                "{tp}"
            );
            assert_eq!(tp.len(), 55);
        });
    }
}
