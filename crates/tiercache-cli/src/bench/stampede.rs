//! The stampede scenario: many concurrent GetOrSet calls per cold key, spread over several
//! in-process replicas on one Redis. Counts origin calls per key (the design promises exactly
//! one) and how long the waiters waited.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use serde_json::{json, Value};
use tiercache_proto::v1 as pb;
use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::env::{self, InProcessServer, NS_L1};
use super::load::histogram;

#[derive(Debug, Clone)]
pub struct StampedeSettings {
    pub callers: usize,
    pub replicas: usize,
    pub keys: usize,
    pub fill: Duration,
    pub connections: usize,
}

#[derive(Debug, Clone)]
pub struct StampedeResult {
    pub settings: StampedeSettings,
    pub origin_calls: Vec<u64>,
    pub waiters: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Waiters' latency minus the origin's compute time, µs.
    pub waiter_p50_us: f64,
    pub waiter_p99_us: f64,
    pub waiter_max_us: f64,
}

impl StampedeResult {
    pub fn ok(&self) -> bool {
        self.errors == 0 && self.origin_calls.iter().all(|&n| n == 1)
    }

    pub fn json(&self) -> Value {
        json!({
            "callers_per_key": self.settings.callers,
            "replicas": self.settings.replicas,
            "keys": self.settings.keys,
            "fill_ms": self.settings.fill.as_secs_f64() * 1e3,
            "origin_calls_per_key": self.origin_calls,
            "waiters": self.waiters,
            "errors": self.errors,
            "first_error": self.first_error,
            "waiter_latency_minus_fill_p50_us": self.waiter_p50_us,
            "waiter_latency_minus_fill_p99_us": self.waiter_p99_us,
            "waiter_latency_minus_fill_max_us": self.waiter_max_us,
            "ok": self.ok(),
        })
    }
}

enum CallerOutcome {
    Origin,
    Waited(Duration),
}

/// Runs the stampede against `settings.replicas` fresh servers on `redis_url`.
pub async fn run(redis_url: &str, settings: StampedeSettings) -> anyhow::Result<StampedeResult> {
    let mut servers = Vec::new();
    let mut channels: Vec<Channel> = Vec::new();
    for _ in 0..settings.replicas.max(1) {
        let server = InProcessServer::start(env::server_config(Some(redis_url)))
            .await
            .context("cannot start a stampede replica")?;
        channels.extend(env::channels(&server.url(), settings.connections).await?);
        servers.push(server);
    }
    // Keys nobody has used: a run id keeps repeated runs on one Redis cold.
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let keys: Vec<String> = (0..settings.keys)
        .map(|k| format!("stampede:{run_id}:{k}"))
        .collect();
    let origin: Arc<Vec<AtomicU64>> =
        Arc::new((0..keys.len()).map(|_| AtomicU64::new(0)).collect());
    let barrier = Arc::new(tokio::sync::Barrier::new(settings.callers * keys.len()));
    let mut tasks = Vec::new();
    for (ki, key) in keys.iter().enumerate() {
        for i in 0..settings.callers {
            let channel = channels[(i + ki) % channels.len()].clone();
            let (key, origin, barrier, fill) =
                (key.clone(), origin.clone(), barrier.clone(), settings.fill);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                caller(channel, key, ki, &origin, fill).await
            }));
        }
    }
    let mut latency = histogram();
    let (mut waiters, mut errors, mut first_error) = (0, 0, None);
    for t in tasks {
        match t.await.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(CallerOutcome::Origin) => {}
            Ok(CallerOutcome::Waited(d)) => {
                waiters += 1;
                let beyond_fill = d.saturating_sub(settings.fill);
                let _ = latency.record(
                    u64::try_from(beyond_fill.as_nanos())
                        .unwrap_or(u64::MAX)
                        .max(1000),
                );
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    drop(channels);
    for s in servers {
        s.stop().await?;
    }
    Ok(StampedeResult {
        origin_calls: origin.iter().map(|n| n.load(Ordering::Relaxed)).collect(),
        waiters,
        errors,
        first_error,
        waiter_p50_us: latency.value_at_quantile(0.5) as f64 / 1e3,
        waiter_p99_us: latency.value_at_quantile(0.99) as f64 / 1e3,
        waiter_max_us: latency.max() as f64 / 1e3,
        settings,
    })
}

/// One caller: GetOrSet; with a lease it is the origin (computes for `fill`, then Fills);
/// otherwise it must get the value someone else filled.
async fn caller(
    channel: Channel,
    key: String,
    ki: usize,
    origin: &[AtomicU64],
    fill: Duration,
) -> Result<CallerOutcome, String> {
    let mut c = CacheServiceClient::new(channel);
    let t0 = Instant::now();
    let req = pb::GetOrSetRequest {
        namespace: NS_L1.to_string(),
        key: key.clone(),
        max_wait: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
        ..Default::default()
    };
    let r = c
        .get_or_set(req)
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    match pb::GetOrSetOutcome::try_from(r.outcome) {
        Ok(pb::GetOrSetOutcome::Lease) => {
            origin[ki].fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(fill).await;
            let token = r.lease.map(|l| l.token).unwrap_or_default();
            let f = c
                .fill(pb::FillRequest {
                    namespace: NS_L1.to_string(),
                    key,
                    lease_token: token,
                    value: Bytes::from_static(b"computed by the origin"),
                    ..Default::default()
                })
                .await
                .map_err(|s| format!("fill: {:?}: {}", s.code(), s.message()))?
                .into_inner();
            if f.outcome != pb::FillOutcome::Stored as i32 {
                return Err(format!("fill outcome {}", f.outcome));
            }
            Ok(CallerOutcome::Origin)
        }
        Ok(pb::GetOrSetOutcome::Filled | pb::GetOrSetOutcome::Hit) => {
            Ok(CallerOutcome::Waited(t0.elapsed()))
        }
        other => Err(format!("unexpected GetOrSet outcome {other:?}")),
    }
}
