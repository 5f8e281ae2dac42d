//! Measures what telemetry costs on the hot path: N sequential unary Gets (L1 hits) against an
//! in-process server, with telemetry `on` or `off`. Not a test: timing belongs in a report, not
//! in an assertion. The method and the figures are in docs/observability.md.
//!
//! ```sh
//! cargo run --release -p tiercache-e2e --example telemetry_overhead -- off 20000
//! cargo run --release -p tiercache-e2e --example telemetry_overhead -- on 20000
//! ```
//!
//! `on`: OTLP export of traces (sampler always_on, L1 spans included) and metrics (every 1 s) to
//! an in-process OTLP receiver, the tracing subscriber with the OpenTelemetry layer, `/metrics`
//! served. `off`: no subscriber, no OTLP, no admin port; the RPC layer still records its
//! histogram in-process (it is always installed).

use std::time::{Duration, Instant};

use tiercache_proto::v1 as pb;
use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tiercache_server::{telemetry, Config};
use tiercache_testkit::{OtlpReceiver, TestServer};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "off".into());
    let n: u32 = args.next().map(|a| a.parse().unwrap()).unwrap_or(20_000);
    let mut config = Config::default();
    let receiver = OtlpReceiver::start().await;
    let mut tracer = None;
    match mode.as_str() {
        "on" => {
            config.telemetry.otlp_endpoint = Some(receiver.endpoint());
            config.telemetry.traces_sampler = Some("always_on".into());
            config.telemetry.metrics_export_interval = Some(Duration::from_secs(1));
            let t = telemetry::tracer_provider(&config.telemetry).unwrap();
            tracing_subscriber::registry()
                .with(telemetry::otel_layer(&t, true))
                .init();
            tracer = Some(t);
        }
        "off" => config.telemetry.metrics = false,
        other => panic!("mode must be on or off, not {other}"),
    }
    let server = TestServer::start(config).await;
    let mut client = CacheServiceClient::new(server.channel());
    client
        .set(pb::SetRequest {
            namespace: "default".into(),
            key: "k".into(),
            value: vec![0u8; 100].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let get = || pb::GetRequest {
        namespace: "default".into(),
        key: "k".into(),
        ..Default::default()
    };
    for _ in 0..1000 {
        client.get(get()).await.unwrap();
    }
    let start = Instant::now();
    for _ in 0..n {
        client.get(get()).await.unwrap();
    }
    let elapsed = start.elapsed();
    println!(
        "mode={mode} n={n} total={:.3}s per_call={:.1}us",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / f64::from(n)
    );
    if let Some(t) = tracer {
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
        println!("spans received: {}", receiver.spans().len());
    }
    server.shutdown().await.unwrap();
}
