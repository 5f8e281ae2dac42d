//! Traces, metrics and trace-aware logs (DESIGN §8, docs/observability.md).
//!
//! # Components
//! - [`RpcLayer`]: the tower layer on the tonic server. One span per RPC (OpenTelemetry RPC
//!   conventions), continued from the caller's W3C `traceparent`/`tracestate` metadata, and the
//!   `rpc.server.call.duration` histogram. The services add the namespace, outcome and tier with
//!   [`note_namespace`] and [`note_lookup`]; nothing else in them changes.
//! - [`Metrics`]: the OpenTelemetry meter provider. Per-namespace counters are *observable*
//!   instruments that read the engine's atomics at collection time, so the hit path does no
//!   extra work. Exported as Prometheus text (the admin port's `/metrics`) and, with an endpoint,
//!   pushed by OTLP/gRPC.
//! - [`tracer_provider`], [`otel_layer`] and [`JsonWithTraceIds`]: what the CLI installs in its
//!   `tracing` subscriber (the subscriber is process-wide, so `run` does not install it).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry::metrics::{Histogram, Meter, MeterProvider as _};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::{KeyValue, Value};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use prost::Message as _;
use tiercache_core::l2::{error_type, RedisObserver, RedisOp};
use tiercache_core::namespace::NamespaceStats;
use tiercache_core::{Cache, CoreError, Lookup, Tier};
use tonic::Code;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::config::TelemetryConfig;

/// Histogram buckets in seconds: 50 µs to 10 s, fine enough below a millisecond to tell an L1
/// hit (tens of µs) from an L2 round trip (hundreds of µs).
pub const DURATION_BUCKETS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 10.0,
];

/// The instrumentation scope of every instrument and span.
const SCOPE: &str = "tiercache";

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

// ---- traces ----

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

// ---- per-RPC notes from the services ----

tokio::task_local! {
    /// What the service learned about the RPC in flight; read when the RPC ends.
    static RPC_NOTES: Arc<RpcNotes>;
}

#[derive(Debug, Default)]
struct RpcNotes(parking_lot::Mutex<Notes>);

#[derive(Debug, Default)]
struct Notes {
    namespace: Option<Arc<str>>,
    outcome: Option<&'static str>,
    tier: Option<&'static str>,
}

/// Records the namespace of the RPC in flight (the first one noted wins). Only namespaces the
/// engine resolved should be noted, which keeps label cardinality bounded. A no-op outside an RPC.
pub fn note_namespace(name: &Arc<str>) {
    let _ = RPC_NOTES.try_with(|n| {
        let mut n = n.0.lock();
        if n.namespace.is_none() {
            n.namespace = Some(name.clone());
        }
    });
}

/// Records a lookup's result (`hit`, `stale`, `miss`) and tier as the RPC's outcome; an RPC with
/// several different results (GetMany) gets `mixed`.
pub fn note_lookup(lookup: &Lookup) {
    let (outcome, tier) = match lookup {
        Lookup::Miss => ("miss", None),
        Lookup::Hit(f) => (
            if f.stale { "stale" } else { "hit" },
            Some(match f.tier {
                Tier::L1 => "l1",
                Tier::L2 => "l2",
            }),
        ),
    };
    let _ = RPC_NOTES.try_with(|n| {
        let mut n = n.0.lock();
        n.outcome = match n.outcome {
            None => Some(outcome),
            Some(o) if o == outcome => Some(o),
            Some(_) => Some("mixed"),
        };
        n.tier = match (n.tier, tier) {
            (None, t) => t,
            (Some(a), Some(b)) if a != b => Some("mixed"),
            (t, _) => t,
        };
    });
}

// ---- metrics ----

/// The meter provider and its instruments. Dropping it without [`Metrics::shutdown`] loses the
/// last OTLP push.
pub struct Metrics {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    rpc_duration: Histogram<f64>,
    redis_duration: Histogram<f64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Builds the meter provider (Prometheus always, OTLP with an endpoint) and registers every
    /// instrument over `cache`. Must be called inside a tokio runtime when an endpoint is set.
    pub fn start(config: &TelemetryConfig, cache: &Cache) -> Result<Metrics, TelemetryError> {
        let registry = prometheus::Registry::new();
        let prometheus = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .map_err(|e| TelemetryError::Prometheus(e.to_string()))?;
        let mut builder = SdkMeterProvider::builder()
            .with_resource(resource(config))
            .with_reader(prometheus);
        if let Some(endpoint) = &config.otlp_endpoint {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
            builder = builder.with_reader(
                PeriodicReader::builder(exporter)
                    .with_interval(config.metrics_export_interval())
                    .build(),
            );
        }
        let provider = builder.build();
        let meter = provider.meter(SCOPE);
        let rpc_duration = meter
            .f64_histogram("rpc.server.call.duration")
            .with_description("Duration of RPCs handled by the server, to the end of the response")
            .with_unit("s")
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build();
        let redis_duration = meter
            .f64_histogram("db.client.operation.duration")
            .with_description("Duration of Redis calls; failed calls carry error.type")
            .with_unit("s")
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build();
        register_cache_instruments(&meter, cache);
        Ok(Metrics {
            provider,
            registry,
            rpc_duration,
            redis_duration,
        })
    }

    /// Returns the tower layer that traces and times every RPC.
    pub fn rpc_layer(&self) -> RpcLayer {
        RpcLayer::new(self.rpc_duration.clone())
    }

    /// Returns the observer the engine reports Redis calls to.
    pub fn redis_observer(&self) -> Arc<dyn RedisObserver> {
        Arc::new(RedisMetrics(self.redis_duration.clone()))
    }

    /// Collects every instrument now and returns the Prometheus text exposition.
    pub fn prometheus_text(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }

    /// Pushes the last OTLP batch and stops the readers. Blocks; call it off the runtime's
    /// worker threads (`spawn_blocking`).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "meter provider shutdown");
        }
    }
}

struct RedisMetrics(Histogram<f64>);

impl RedisObserver for RedisMetrics {
    fn record(&self, op: RedisOp, elapsed: Duration, error: Option<&CoreError>) {
        let base = [
            KeyValue::new("db.system.name", "redis"),
            KeyValue::new("db.operation.name", op.command),
            KeyValue::new("tiercache.redis.operation", op.name),
        ];
        match error {
            None => self.0.record(elapsed.as_secs_f64(), &base),
            Some(e) => {
                let [a, b, c] = base;
                let attrs = [a, b, c, KeyValue::new("error.type", error_type(e))];
                self.0.record(elapsed.as_secs_f64(), &attrs)
            }
        }
    }
}

fn ns_attr(name: &Arc<str>) -> KeyValue {
    KeyValue::new("tiercache.namespace", Value::from(name.clone()))
}

/// A per-namespace counter read from [`NamespaceStats`] at collection time.
fn stat_counter(
    meter: &Meter,
    cache: &Cache,
    name: &'static str,
    description: &'static str,
    read: fn(&NamespaceStats) -> u64,
) {
    let cache = cache.clone();
    meter
        .u64_observable_counter(name)
        .with_description(description)
        .with_callback(move |o| {
            for ns in cache.namespaces() {
                o.observe(read(&ns.stats), &[ns_attr(&ns.name)]);
            }
        })
        .build();
}

fn register_cache_instruments(meter: &Meter, cache: &Cache) {
    use std::sync::atomic::Ordering::Relaxed;
    let c = cache.clone();
    meter
        .u64_observable_counter("tiercache.cache.lookups")
        .with_description(
            "Key lookups by namespace, tier that answered (none for a miss) and result",
        )
        .with_callback(move |o| {
            for ns in c.namespaces() {
                let s = &ns.stats;
                for (tier, result, n) in [
                    ("l1", "hit", &s.hits_l1),
                    ("l1", "stale", &s.stale_hits_l1),
                    ("l2", "hit", &s.hits_l2),
                    ("l2", "stale", &s.stale_hits_l2),
                    ("none", "miss", &s.misses),
                ] {
                    o.observe(
                        n.load(Relaxed),
                        &[
                            ns_attr(&ns.name),
                            KeyValue::new("tiercache.tier", tier),
                            KeyValue::new("tiercache.result", result),
                        ],
                    );
                }
            }
        })
        .build();
    let c = cache.clone();
    meter
        .u64_observable_counter("tiercache.cache.writes")
        .with_description("Writes by namespace and kind (set, delete)")
        .with_callback(move |o| {
            for ns in c.namespaces() {
                for (kind, n) in [("set", &ns.stats.sets), ("delete", &ns.stats.deletes)] {
                    o.observe(
                        n.load(Relaxed),
                        &[ns_attr(&ns.name), KeyValue::new("tiercache.kind", kind)],
                    );
                }
            }
        })
        .build();
    stat_counter(
        meter,
        cache,
        "tiercache.fills",
        "Values written by GetOrSet lease holders (Fill)",
        |s| s.fills.load(Relaxed),
    );
    stat_counter(
        meter,
        cache,
        "tiercache.leases.granted",
        "GetOrSet leases granted: callers told to compute the value",
        |s| s.leases_granted.load(Relaxed),
    );
    stat_counter(
        meter,
        cache,
        "tiercache.leases.coalesced",
        "GetOrSet callers served by another caller's fill instead of computing (stampede coalescing)",
        |s| s.coalesced.load(Relaxed),
    );
    stat_counter(
        meter,
        cache,
        "tiercache.leases.waits",
        "GetOrSet callers that waited for another caller's fill",
        |s| s.lease_waits.load(Relaxed),
    );
    stat_counter(
        meter,
        cache,
        "tiercache.invalidations",
        "Invalidations applied (tags and namespace flushes)",
        |s| s.invalidations.load(Relaxed),
    );
    stat_counter(
        meter,
        cache,
        "tiercache.l1.evictions",
        "L1 entries evicted to stay within the namespace's byte budget",
        |s| s.l1_evictions.load(Relaxed),
    );
    stat_counter(
        meter,
        cache,
        "tiercache.l1.clears",
        "Times a namespace's whole L1 was dropped (event gap, lost subscription)",
        |s| s.l1_clears.load(Relaxed),
    );
    let c = cache.clone();
    meter
        .u64_observable_gauge("tiercache.l1.entries")
        .with_description("Entries in L1")
        .with_unit("{entry}")
        .with_callback(move |o| {
            for ns in c.namespaces() {
                o.observe(ns.l1_usage().0, &[ns_attr(&ns.name)]);
            }
        })
        .build();
    let c = cache.clone();
    meter
        .u64_observable_gauge("tiercache.l1.size")
        .with_description("Bytes charged to L1 (keys, values, tags and per-entry overhead)")
        .with_unit("By")
        .with_callback(move |o| {
            for ns in c.namespaces() {
                o.observe(ns.l1_usage().1, &[ns_attr(&ns.name)]);
            }
        })
        .build();
    let c = cache.clone();
    meter
        .u64_observable_gauge("tiercache.l1.budget")
        .with_description("The namespace's L1 byte budget (l1_max_bytes)")
        .with_unit("By")
        .with_callback(move |o| {
            for ns in c.namespaces() {
                o.observe(ns.policy.l1_max_bytes, &[ns_attr(&ns.name)]);
            }
        })
        .build();
    let c = cache.clone();
    meter
        .u64_observable_gauge("tiercache.degraded")
        .with_description("1 while the server cannot rely on Redis events and bypasses L1, else 0")
        .with_callback(move |o| o.observe(u64::from(c.degraded()), &[]))
        .build();
}

// ---- the RPC layer ----

/// The semantic-conventions name of a gRPC status code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Server-side gRPC codes that mark the span as an error (OpenTelemetry gRPC conventions).
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// Reads W3C trace context from gRPC request metadata (HTTP/2 headers).
struct MetadataExtractor<'a>(&'a http::HeaderMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Returns every method the server serves, as `/pkg.Service/Method` → `pkg.Service/Method`.
fn known_methods() -> HashMap<String, Arc<str>> {
    let mut out = HashMap::new();
    let mut add = |full: String| {
        out.insert(format!("/{full}"), Arc::from(full));
    };
    if let Ok(set) = prost_types::FileDescriptorSet::decode(tiercache_proto::FILE_DESCRIPTOR_SET) {
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                for method in service.method {
                    add(format!(
                        "{package}.{}/{}",
                        service.name.as_deref().unwrap_or_default(),
                        method.name.as_deref().unwrap_or_default()
                    ));
                }
            }
        }
    }
    for m in [
        "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Watch",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ] {
        add(m.to_string());
    }
    out
}

struct RpcShared {
    duration: Histogram<f64>,
    methods: HashMap<String, Arc<str>>,
    other: Arc<str>,
    propagator: TraceContextPropagator,
}

/// Traces and times every RPC; see the module docs.
#[derive(Clone)]
pub struct RpcLayer(Arc<RpcShared>);

impl std::fmt::Debug for RpcLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcLayer").finish_non_exhaustive()
    }
}

impl RpcLayer {
    fn new(duration: Histogram<f64>) -> Self {
        RpcLayer(Arc::new(RpcShared {
            duration,
            methods: known_methods(),
            // Unknown paths share one label value, so clients cannot blow up cardinality.
            other: Arc::from("_OTHER"),
            propagator: TraceContextPropagator::new(),
        }))
    }
}

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            shared: self.0.clone(),
        }
    }
}

/// The service [`RpcLayer`] wraps around the tonic router.
#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    shared: Arc<RpcShared>,
}

impl<S> std::fmt::Debug for RpcService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcService").finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqBody> tower_service::Service<http::Request<ReqBody>> for RpcService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let shared = self.shared.clone();
        let method = shared
            .methods
            .get(req.uri().path())
            .unwrap_or(&shared.other)
            .clone();
        // Health checks are polled every few seconds by orchestrators; they get metrics, not
        // spans.
        let span = if method.starts_with("grpc.health.") {
            tracing::Span::none()
        } else {
            let span = tracing::info_span!(
                "rpc",
                otel.name = %method,
                otel.kind = "server",
                rpc.system.name = "grpc",
                rpc.method = %method,
                rpc.response.status_code = tracing::field::Empty,
                tiercache.namespace = tracing::field::Empty,
                tiercache.outcome = tracing::field::Empty,
                tiercache.tier = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            if !span.is_disabled() {
                let parent = shared.propagator.extract(&MetadataExtractor(req.headers()));
                if parent.span().span_context().is_valid() {
                    let _ = span.set_parent(parent);
                }
            }
            span
        };
        let notes = Arc::new(RpcNotes::default());
        let mut guard = RpcGuard {
            shared,
            method,
            span: span.clone(),
            notes: notes.clone(),
            start: Instant::now(),
            status: None,
        };
        // The router was polled ready; take it and leave a fresh clone (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = span.in_scope(|| inner.call(req));
        let fut = RPC_NOTES.scope(notes, call.instrument(span));
        Box::pin(async move {
            let response = fut.await?;
            // A trailers-only response (every error) carries the status in its headers.
            guard.status = grpc_status(response.headers());
            let (parts, body) = response.into_parts();
            Ok(http::Response::from_parts(
                parts,
                tonic::body::Body::new(RpcBody {
                    inner: body,
                    guard: Some(guard),
                }),
            ))
        })
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let v = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from(v))
}

/// Ends the RPC's span and records its duration when the response body is done or dropped.
struct RpcGuard {
    shared: Arc<RpcShared>,
    method: Arc<str>,
    span: tracing::Span,
    notes: Arc<RpcNotes>,
    start: Instant,
    status: Option<Code>,
}

impl Drop for RpcGuard {
    fn drop(&mut self) {
        // No status seen: the client went away before the trailers.
        let code = self.status.unwrap_or(Code::Cancelled);
        let notes = self.notes.0.lock();
        let outcome = notes
            .outcome
            .unwrap_or(if code == Code::Ok { "ok" } else { "error" });
        let mut attrs = Vec::with_capacity(5);
        attrs.push(KeyValue::new("rpc.system.name", "grpc"));
        attrs.push(KeyValue::new(
            "rpc.method",
            Value::from(self.method.clone()),
        ));
        attrs.push(KeyValue::new("rpc.response.status_code", code_name(code)));
        attrs.push(KeyValue::new("tiercache.outcome", outcome));
        if let Some(ns) = &notes.namespace {
            attrs.push(ns_attr(ns));
            self.span.record("tiercache.namespace", &**ns);
        }
        self.shared
            .duration
            .record(self.start.elapsed().as_secs_f64(), &attrs);
        self.span
            .record("rpc.response.status_code", code_name(code));
        self.span.record("tiercache.outcome", outcome);
        if let Some(tier) = notes.tier {
            self.span.record("tiercache.tier", tier);
        }
        if is_server_error(code) {
            self.span.record("otel.status_code", "ERROR");
        }
    }
}

/// The response body, watched for the trailers that carry the gRPC status.
struct RpcBody {
    inner: tonic::body::Body,
    guard: Option<RpcGuard>,
}

impl http_body::Body for RpcBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let polled = match &this.guard {
            // Streaming handlers do their work while the body is polled: keep them in the span
            // and let them note things.
            Some(g) => {
                let _entered = g.span.enter();
                let notes = g.notes.clone();
                RPC_NOTES.sync_scope(notes, || Pin::new(&mut this.inner).poll_frame(cx))
            }
            None => Pin::new(&mut this.inner).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(g)) = (frame.trailers_ref(), this.guard.as_mut()) {
                    g.status = grpc_status(trailers).or(g.status);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                if let Some(g) = this.guard.as_mut() {
                    g.status = Some(status.code());
                }
            }
            Poll::Ready(None) => {
                if let Some(mut g) = this.guard.take() {
                    g.status = g.status.or(Some(Code::Unknown));
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
