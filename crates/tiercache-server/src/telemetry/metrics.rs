//! The meter provider and its instruments: the RPC and Redis duration histograms, and the
//! per-namespace counters and gauges observed from the engine's atomics at collection time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::metrics::{
    Aggregation, Instrument, InstrumentKind, PeriodicReader, SdkMeterProvider, Stream,
};
use tiercache_core::namespace::NamespaceStats;
use tiercache_core::store::redis::{error_type, RedisObserver, RedisOp, ERROR_TYPES};
use tiercache_core::{Cache, CoreError, Mode};

use super::otel::{resource, TelemetryError, SCOPE};
use super::rpc::{ns_attr, precreate_requests, RpcLayer};
use crate::config::TelemetryConfig;

/// The bucket boundaries of every duration histogram, in seconds: 100 µs to 30 s, no step wider
/// than ×2.5, so `histogram_quantile` estimates any call in that range within a factor of 2.5
/// (a 1.5 s call lands in 1–2.5 s, not 1–10 s). Below 100 µs is an L1 hit (tens of µs); an L2
/// round trip is hundreds of µs; 30 s is past every default wait bound (lease and lock waits
/// default to 5 s). Applied by a view to every histogram whose unit is seconds, so the
/// Prometheus and OTLP exports carry the same buckets (docs/observability.md).
pub const DURATION_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 20.0, 30.0,
];

/// The view that gives every histogram in seconds the [`DURATION_BUCKETS`], whatever
/// boundaries its instrument asked for.
///
/// It also lifts the cardinality limit of `tiercache.rpc.requests` (the SDK's default is 2000
/// series per instrument), whose zero series grow with the configured namespaces (about 150
/// each).
fn duration_view(i: &Instrument) -> Option<Stream> {
    if i.name() == "tiercache.rpc.requests" {
        return Stream::builder()
            .with_cardinality_limit(20_000)
            .build()
            .ok();
    }
    if i.kind() != InstrumentKind::Histogram || i.unit() != "s" {
        return None;
    }
    Stream::builder()
        .with_aggregation(Aggregation::ExplicitBucketHistogram {
            boundaries: DURATION_BUCKETS.to_vec(),
            record_min_max: true,
        })
        .build()
        .ok()
}

/// The meter provider and its instruments. Dropping it without [`Metrics::shutdown`] loses the
/// last OTLP push.
pub struct Metrics {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    rpc_duration: Histogram<f64>,
    rpc_requests: Counter<u64>,
    redis_duration: Histogram<f64>,
    redis_errors: Counter<u64>,
    security: crate::auth::SecurityCounters,
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
            .with_view(duration_view)
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
        let rpc_requests = meter
            .u64_counter("tiercache.rpc.requests")
            .with_description(
                "RPCs handled, by method, status code and namespace; the series of known methods \
                 and codes exist at 0 from the start, so rate() and increase() count the first one",
            )
            .build();
        let namespaces: Vec<Arc<str>> = cache.namespaces().iter().map(|n| n.name.clone()).collect();
        precreate_requests(&rpc_requests, &namespaces);
        let redis_errors = meter
            .u64_counter("tiercache.redis.errors")
            .with_description(
                "Failed Redis calls, by operation and error.type; at 0 while Redis is healthy",
            )
            .build();
        if cache.mode() == Mode::TwoTier {
            for op in RedisOp::ALL {
                for kind in ERROR_TYPES {
                    redis_errors.add(0, &redis_error_attrs(op, kind));
                }
            }
        }
        register_cache_instruments(&meter, cache);
        let security = crate::auth::SecurityCounters {
            auth_refusals: meter
                .u64_counter("tiercache.auth.refusals")
                .with_description(
                    "Requests refused by auth, by reason: missing_credential, \
                     unknown_credential (UNAUTHENTICATED), permission_denied",
                )
                .build(),
            rate_limited: meter
                .u64_counter("tiercache.rate_limited")
                .with_description(
                    "Requests refused by a rate limit (RESOURCE_EXHAUSTED, RATE_LIMITED), by \
                     tiercache.limit (principal or namespace) and namespace",
                )
                .build(),
        };
        Ok(Metrics {
            security,
            provider,
            registry,
            rpc_duration,
            rpc_requests,
            redis_duration,
            redis_errors,
        })
    }

    /// Returns the tower layer that traces and times every RPC.
    pub fn rpc_layer(&self) -> RpcLayer {
        RpcLayer::new(self.rpc_duration.clone(), self.rpc_requests.clone())
    }

    /// Returns the counters of auth and rate-limit refusals.
    pub fn security_counters(&self) -> crate::auth::SecurityCounters {
        self.security.clone()
    }

    /// Returns the observer the engine reports Redis calls to.
    pub fn redis_observer(&self) -> Arc<dyn RedisObserver> {
        Arc::new(RedisMetrics {
            duration: self.redis_duration.clone(),
            errors: self.redis_errors.clone(),
        })
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

struct RedisMetrics {
    duration: Histogram<f64>,
    errors: Counter<u64>,
}

fn redis_error_attrs(op: RedisOp, kind: &'static str) -> [KeyValue; 2] {
    [
        KeyValue::new("tiercache.redis.operation", op.name),
        KeyValue::new("error.type", kind),
    ]
}

impl RedisObserver for RedisMetrics {
    fn record(&self, op: RedisOp, elapsed: Duration, error: Option<&CoreError>) {
        let base = [
            KeyValue::new("db.system.name", "redis"),
            KeyValue::new("db.operation.name", op.command),
            KeyValue::new("tiercache.redis.operation", op.name),
        ];
        match error {
            None => self.duration.record(elapsed.as_secs_f64(), &base),
            Some(e) => {
                let [a, b, c] = base;
                let attrs = [a, b, c, KeyValue::new("error.type", error_type(e))];
                self.duration.record(elapsed.as_secs_f64(), &attrs);
                self.errors.add(1, &redis_error_attrs(op, error_type(e)));
            }
        }
    }
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
            "Key lookups by namespace, tier that answered (none for a miss or a fill) and result \
             (hit, stale, miss, filled: a GetOrSet served by another caller's fill)",
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
                    // A GetOrSet served by another caller's fill: neither a hit nor a miss.
                    ("none", "filled", &s.coalesced),
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
        .with_description(
            "The namespace's L1 byte budget (l1_max_bytes, within the shared l1.max_bytes)",
        )
        .with_unit("By")
        .with_callback(move |o| {
            for ns in c.namespaces() {
                o.observe(ns.l1_budget(), &[ns_attr(&ns.name)]);
            }
        })
        .build();
    let c = cache.clone();
    meter
        .u64_observable_gauge("tiercache.degraded")
        .with_description("1 while the server cannot rely on Redis events and bypasses L1, else 0")
        .with_callback(move |o| o.observe(u64::from(c.degraded()), &[]))
        .build();
    let c = cache.clone();
    meter
        .u64_observable_gauge("tiercache.waiters")
        .with_description(
            "Callers waiting now, by kind (lease: GetOrSet waiters, lock: lock waiters)",
        )
        .with_callback(move |o| {
            let (lease, lock) = c.waiters();
            o.observe(lease as u64, &[KeyValue::new("tiercache.kind", "lease")]);
            o.observe(lock as u64, &[KeyValue::new("tiercache.kind", "lock")]);
        })
        .build();
}

/// Streams open now, by kind; each open stream holds a [`StreamGuard`].
#[derive(Debug, Default)]
pub struct Streams {
    watch: AtomicU64,
    pipeline: AtomicU64,
}

/// Which stream a [`StreamGuard`] counts.
#[derive(Debug, Clone, Copy)]
pub enum StreamKind {
    Watch,
    Pipeline,
}

impl Streams {
    fn counter(&self, kind: StreamKind) -> &AtomicU64 {
        match kind {
            StreamKind::Watch => &self.watch,
            StreamKind::Pipeline => &self.pipeline,
        }
    }

    /// Counts one open stream until the guard drops (when the stream's task ends).
    pub fn open(self: &Arc<Self>, kind: StreamKind) -> StreamGuard {
        self.counter(kind).fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone(), kind)
    }

    /// How many streams of `kind` are open now.
    pub fn count(&self, kind: StreamKind) -> u64 {
        self.counter(kind).load(Ordering::Relaxed)
    }
}

/// One open stream, counted in [`Streams`] while it lives.
#[derive(Debug)]
pub struct StreamGuard(Arc<Streams>, StreamKind);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.counter(self.1).fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Reports the open Watch and Pipeline streams as `tiercache.streams`.
    pub fn observe_streams(&self, streams: Arc<Streams>) {
        self.provider
            .meter(SCOPE)
            .u64_observable_gauge("tiercache.streams")
            .with_description("Streams open now, by kind (watch, pipeline)")
            .with_callback(move |o| {
                for (kind, name) in [
                    (StreamKind::Watch, "watch"),
                    (StreamKind::Pipeline, "pipeline"),
                ] {
                    o.observe(
                        streams.count(kind),
                        &[KeyValue::new("tiercache.kind", name)],
                    );
                }
            })
            .build();
    }
}

impl Metrics {
    /// Reports the TLS listener's handshake and reload failures (at 0 from the start) and the
    /// serving certificate's expiry.
    pub fn observe_tls(&self, stats: Arc<crate::tls::TlsStats>) {
        let meter = self.provider.meter(SCOPE);
        let s = stats.clone();
        meter
            .u64_observable_counter("tiercache.tls.handshake.failures")
            .with_description("TLS handshakes on the gRPC port that failed or timed out")
            .with_callback(move |o| o.observe(s.handshake_failures.load(Ordering::Relaxed), &[]))
            .build();
        let s = stats.clone();
        meter
            .u64_observable_counter("tiercache.tls.reload.failures")
            .with_description(
                "Changed TLS certificate files that did not load; the previous certificate \
                 keeps serving",
            )
            .with_callback(move |o| o.observe(s.reload_failures.load(Ordering::Relaxed), &[]))
            .build();
        meter
            .i64_observable_gauge("tiercache.tls.cert.expiry_timestamp")
            .with_description("The notAfter of the serving TLS certificate, in Unix seconds")
            .with_unit("s")
            .with_callback(move |o| o.observe(stats.cert_not_after.load(Ordering::Relaxed), &[]))
            .build();
    }
}
