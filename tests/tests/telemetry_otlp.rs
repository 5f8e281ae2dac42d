//! Traces and metrics reach an OTLP collector: a real OTLP/gRPC receiver in the test process
//! (`tiercache_testkit::OtlpReceiver`), a real Redis and the real server.
//!
//! One test in this file on purpose: it installs the process-wide `tracing` subscriber.

use std::time::Duration;

use tiercache_proto::v1 as pb;
use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tiercache_server::{telemetry, Config};
use tiercache_testkit::opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tiercache_testkit::opentelemetry_proto::tonic::trace::v1::Span;
use tiercache_testkit::otlp::attr;
use tiercache_testkit::{redis_config, req, wait_for, OtlpReceiver, RedisServer, TestServer};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn traced<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
            .parse()
            .unwrap(),
    );
    r.metadata_mut()
        .insert("tracestate", "vendor=opaque".parse().unwrap());
    r
}

fn find<'a>(spans: &'a [Span], name: &str, outcome: Option<&str>) -> Option<&'a Span> {
    spans.iter().find(|s| {
        s.name == name
            && hex(&s.trace_id) == TRACE_ID
            && outcome.is_none_or(|o| attr(&s.attributes, "tiercache.outcome") == Some(o))
    })
}

fn children<'a>(spans: &'a [Span], parent: &Span, name: &str) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.name == name && s.parent_span_id == parent.span_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_continue_the_callers_trace_and_metrics_arrive() {
    let receiver = OtlpReceiver::start().await;
    let redis = RedisServer::start();
    let mut config = Config {
        redis: Some(redis_config(&redis.url())),
        ..Config::default()
    };
    config.telemetry.otlp_endpoint = Some(receiver.endpoint());
    config.telemetry.service_name = Some("tiercache-test".into());
    config.telemetry.metrics_export_interval = Some(Duration::from_millis(200));

    let tracer = telemetry::tracer_provider(&config.telemetry).unwrap();
    tracing_subscriber::registry()
        .with(telemetry::otel_layer(&tracer, true))
        .init();

    let server = TestServer::start(config).await;
    let mut client = CacheServiceClient::new(server.channel());
    client
        .set(traced(req::set("user:42", "ada")))
        .await
        .unwrap();
    // Served from L1 (the Set filled it), then a miss that goes to Redis.
    let hit = client
        .get(traced(req::get("user:42")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hit.outcome, pb::GetOutcome::Hit as i32);
    let miss = client
        .get(traced(req::get("nobody")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(miss.outcome, pb::GetOutcome::Miss as i32);
    // A GetOrSet that waits for another caller's lease runs its wait in a `lease wait` span.
    let lease = client
        .get_or_set(req::get_or_set("cold"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lease.outcome(), pb::GetOrSetOutcome::Lease);
    let waited = client
        .get_or_set(traced(pb::GetOrSetRequest {
            max_wait: req::duration(Duration::from_millis(100)),
            ..req::get_or_set("cold")
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(waited.outcome(), pb::GetOrSetOutcome::Compute);

    // The batch processor exports every few seconds; flush instead of waiting (blocking call).
    let flusher = tracer.clone();
    tokio::task::spawn_blocking(move || flusher.force_flush())
        .await
        .unwrap()
        .unwrap();
    wait_for(
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            let spans = receiver.spans();
            find(&spans, "tiercache.v1.CacheService/Get", Some("miss")).is_some()
                && find(&spans, "tiercache.v1.CacheService/Set", None).is_some()
                && find(&spans, "lease wait", None).is_some()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; spans: {:#?}", receiver.spans()));

    let spans = receiver.spans();
    let gos = find(&spans, "tiercache.v1.CacheService/GetOrSet", None).unwrap();
    let waits = children(&spans, gos, "lease wait");
    assert_eq!(waits.len(), 1, "{spans:#?}");
    assert_eq!(
        attr(&waits[0].attributes, "tiercache.wait.outcome"),
        Some("timeout")
    );
    assert_eq!(
        attr(&waits[0].attributes, "tiercache.namespace"),
        Some("default")
    );
    let spans = receiver.spans();
    let get = find(&spans, "tiercache.v1.CacheService/Get", Some("miss")).unwrap();
    assert_eq!(hex(&get.parent_span_id), PARENT_SPAN_ID, "{get:#?}");
    assert_eq!(get.kind, SpanKind::Server as i32);
    assert_eq!(get.trace_state, "vendor=opaque");
    let a = &get.attributes;
    assert_eq!(attr(a, "rpc.system.name"), Some("grpc"));
    assert_eq!(attr(a, "rpc.method"), Some("tiercache.v1.CacheService/Get"));
    assert_eq!(attr(a, "rpc.response.status_code"), Some("OK"));
    assert_eq!(attr(a, "tiercache.namespace"), Some("default"));
    // The miss looked in L1, then asked Redis, both as children of the RPC span.
    assert_eq!(children(&spans, get, "l1.lookup").len(), 1, "{spans:#?}");
    let reads = children(&spans, get, "read");
    assert_eq!(reads.len(), 1, "{spans:#?}");
    assert_eq!(attr(&reads[0].attributes, "db.system.name"), Some("redis"));
    assert_eq!(
        attr(&reads[0].attributes, "db.operation.name"),
        Some("EVALSHA")
    );
    assert_eq!(reads[0].kind, SpanKind::Client as i32);

    let hit = find(&spans, "tiercache.v1.CacheService/Get", Some("hit")).unwrap();
    assert_eq!(hex(&hit.parent_span_id), PARENT_SPAN_ID);
    assert_eq!(attr(&hit.attributes, "tiercache.tier"), Some("l1"));
    assert!(
        children(&spans, hit, "read").is_empty(),
        "an L1 hit reads no Redis"
    );

    let set = find(&spans, "tiercache.v1.CacheService/Set", None).unwrap();
    assert_eq!(hex(&set.parent_span_id), PARENT_SPAN_ID);
    assert_eq!(children(&spans, set, "set").len(), 1, "{spans:#?}");
    assert!(receiver
        .span_resources()
        .iter()
        .all(|r| attr(r, "service.name") == Some("tiercache-test")));

    // Metrics are pushed every 200 ms.
    let wanted = [
        "rpc.server.call.duration",
        "tiercache.cache.lookups",
        "db.client.operation.duration",
        "tiercache.l1.size",
        "tiercache.degraded",
    ];
    wait_for(
        Duration::from_secs(20),
        Duration::from_millis(50),
        || async {
            let names: Vec<String> = receiver.metrics().into_iter().map(|m| m.name).collect();
            wanted.iter().all(|w| names.iter().any(|n| n == w))
        },
    )
    .await
    .unwrap_or_else(|e| {
        let names: Vec<String> = receiver.metrics().into_iter().map(|m| m.name).collect();
        panic!("{e}; metrics: {names:?}")
    });
    use tiercache_testkit::opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let rpc = receiver
        .metrics()
        .into_iter()
        .rfind(|m| m.name == "rpc.server.call.duration")
        .unwrap();
    assert_eq!(rpc.unit, "s");
    let Some(Data::Histogram(h)) = rpc.data else {
        panic!("rpc.server.call.duration is not a histogram: {rpc:?}")
    };
    let gets: u64 = h
        .data_points
        .iter()
        .filter(|p| attr(&p.attributes, "rpc.method") == Some("tiercache.v1.CacheService/Get"))
        .map(|p| p.count)
        .sum();
    assert_eq!(gets, 2);
    // Every duration histogram is pushed with the same buckets as /metrics serves.
    for name in ["rpc.server.call.duration", "db.client.operation.duration"] {
        let m = receiver
            .metrics()
            .into_iter()
            .rfind(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} was not pushed"));
        let Some(Data::Histogram(h)) = m.data else {
            panic!("{name} is not a histogram: {m:?}")
        };
        assert!(!h.data_points.is_empty(), "{name}");
        for p in &h.data_points {
            assert_eq!(
                p.explicit_bounds,
                tiercache_server::telemetry::DURATION_BUCKETS,
                "{name}"
            );
        }
    }

    server.shutdown().await.unwrap();
    let _ = tokio::task::spawn_blocking(move || tracer.shutdown()).await;
}
