//! The load scenarios. Each one prepares its data and returns an [`Op`] that the load generator
//! calls from every worker; adding a scenario is one `prepare` function and one line in
//! [`SCENARIOS`] (the Rust SDK's near-cache hit will be one such line).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt as _;
use parking_lot::Mutex;
use tiercache_proto::v1 as pb;
use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

use super::env::{NS_L1, NS_L2};
use super::load::Op;

/// Everything a scenario may use.
pub struct Ctx {
    /// Connections to the tiercache server; worker `w` uses `channels[w % len]`.
    pub channels: Vec<Channel>,
    pub redis_url: String,
    pub connections: usize,
    pub keys: Arc<[String]>,
    pub value: Bytes,
}

impl Ctx {
    fn channel(&self, w: usize) -> Channel {
        self.channels[w % self.channels.len()].clone()
    }

    fn clients(&self) -> Arc<[CacheServiceClient<Channel>]> {
        self.channels
            .iter()
            .map(|c| CacheServiceClient::new(c.clone()))
            .collect()
    }
}

/// A load scenario.
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub prepare: for<'a> fn(&'a Ctx) -> BoxFuture<'a, anyhow::Result<Op>>,
}

/// Every load scenario, in the order they run. The first is the unary baseline (`health`),
/// `redis_get` the direct-Redis baseline.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "health",
        about: "grpc.health.v1 Check: the server's empty unary RPC",
        prepare: |c| health(c).boxed(),
    },
    Scenario {
        name: "get_l1",
        about: "unary Get, L1 hit",
        prepare: |c| get(c, NS_L1, pb::Tier::L1).boxed(),
    },
    Scenario {
        name: "get_l2",
        about: "unary Get, L2 hit (namespace with l1_enabled = false)",
        prepare: |c| get(c, NS_L2, pb::Tier::L2).boxed(),
    },
    Scenario {
        name: "getorset_hit",
        about: "unary GetOrSet, hit",
        prepare: |c| get_or_set_hit(c).boxed(),
    },
    Scenario {
        name: "set",
        about: "unary Set (Redis script, then L1)",
        prepare: |c| set(c).boxed(),
    },
    Scenario {
        name: "pipeline_get_l1",
        about: "Get through the Pipeline stream (one stream per connection), L1 hit",
        prepare: |c| pipeline_get(c, NS_L1, pb::Tier::L1).boxed(),
    },
    Scenario {
        name: "pipeline_get_l2",
        about: "Get through the Pipeline stream, L2 hit",
        prepare: |c| pipeline_get(c, NS_L2, pb::Tier::L2).boxed(),
    },
    Scenario {
        name: "getmany_100",
        about: "GetMany of 100 keys, L1 hits (ops = keys)",
        prepare: |c| get_many(c, 100).boxed(),
    },
    Scenario {
        name: "redis_get",
        about: "direct Redis GET with redis-rs (multiplexed connection)",
        prepare: |c| redis_get(c).boxed(),
    },
];

/// Writes the bench keys into `ns` with SetMany, then reads them once with GetMany: a write
/// leaves L1 alone when another write's event lands meanwhile, and the read fills it.
pub async fn preload(ctx: &Ctx, ns: &str, keys: &[String]) -> anyhow::Result<()> {
    let mut client = CacheServiceClient::new(ctx.channel(0));
    write_keys(&mut client, ctx, ns, keys).await?;
    for chunk in keys.chunks(500) {
        client
            .get_many(pb::GetManyRequest {
                namespace: ns.to_string(),
                keys: chunk.to_vec(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot read back namespace {ns}"))?;
    }
    Ok(())
}

async fn write_keys(
    client: &mut CacheServiceClient<Channel>,
    ctx: &Ctx,
    ns: &str,
    keys: &[String],
) -> anyhow::Result<()> {
    for chunk in keys.chunks(500) {
        let requests = chunk
            .iter()
            .map(|k| pb::SetRequest {
                namespace: ns.to_string(),
                key: k.clone(),
                value: ctx.value.clone(),
                ttl: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .collect();
        client
            .set_many(pb::SetManyRequest { requests })
            .await
            .with_context(|| format!("cannot preload namespace {ns}"))?;
    }
    Ok(())
}

fn status(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Checks that a Get hit. An L1 scenario may see an occasional L2 answer (L1 is bypassed or
/// refilled after an invalidation event or a resync, which the engine is free to do); an L2
/// scenario (L1 off) must never see L1.
fn check_hit(r: &pb::GetResponse, tier: pb::Tier) -> Result<u64, String> {
    if r.outcome != pb::GetOutcome::Hit as i32 {
        return Err(format!("expected a hit, got outcome {}", r.outcome));
    }
    match &r.entry {
        Some(e) if e.tier == tier as i32 => Ok(1),
        Some(e) if tier == pb::Tier::L1 && e.tier == pb::Tier::L2 as i32 => Ok(1),
        Some(e) => Err(format!("expected tier {tier:?}, got {}", e.tier)),
        None => Err("hit without an entry".into()),
    }
}

async fn health(ctx: &Ctx) -> anyhow::Result<Op> {
    use tonic_health::pb::health_client::HealthClient;
    let clients: Arc<[_]> = ctx
        .channels
        .iter()
        .map(|c| HealthClient::new(c.clone()))
        .collect();
    Ok(Arc::new(move |w, _| {
        let mut c = clients[w % clients.len()].clone();
        async move {
            let req = tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            };
            c.check(req).await.map(|_| 1).map_err(status)
        }
        .boxed()
    }))
}

async fn get(ctx: &Ctx, ns: &'static str, tier: pb::Tier) -> anyhow::Result<Op> {
    preload(ctx, ns, &ctx.keys).await?;
    let clients = ctx.clients();
    let keys = ctx.keys.clone();
    Ok(Arc::new(move |w, n| {
        let mut c = clients[w % clients.len()].clone();
        let key = keys[(n % keys.len() as u64) as usize].clone();
        async move {
            let req = pb::GetRequest {
                namespace: ns.to_string(),
                key,
                ..Default::default()
            };
            let r = c.get(req).await.map_err(status)?.into_inner();
            check_hit(&r, tier)
        }
        .boxed()
    }))
}

async fn get_or_set_hit(ctx: &Ctx) -> anyhow::Result<Op> {
    preload(ctx, NS_L1, &ctx.keys).await?;
    let clients = ctx.clients();
    let keys = ctx.keys.clone();
    Ok(Arc::new(move |w, n| {
        let mut c = clients[w % clients.len()].clone();
        let key = keys[(n % keys.len() as u64) as usize].clone();
        async move {
            let req = pb::GetOrSetRequest {
                namespace: NS_L1.to_string(),
                key,
                ..Default::default()
            };
            let r = c.get_or_set(req).await.map_err(status)?.into_inner();
            if r.outcome == pb::GetOrSetOutcome::Hit as i32 {
                Ok(1)
            } else {
                Err(format!("expected a hit, got outcome {}", r.outcome))
            }
        }
        .boxed()
    }))
}

async fn set(ctx: &Ctx) -> anyhow::Result<Op> {
    let clients = ctx.clients();
    // Keys of their own, so the read scenarios' keys keep their versions.
    let keys: Arc<[String]> = ctx.keys.iter().map(|k| format!("set:{k}")).collect();
    let value = ctx.value.clone();
    Ok(Arc::new(move |w, n| {
        let mut c = clients[w % clients.len()].clone();
        let key = keys[(n % keys.len() as u64) as usize].clone();
        let value = value.clone();
        async move {
            let req = pb::SetRequest {
                namespace: NS_L1.to_string(),
                key,
                value,
                ..Default::default()
            };
            let r = c.set(req).await.map_err(status)?.into_inner();
            if r.outcome == pb::SetOutcome::Stored as i32 {
                Ok(1)
            } else {
                Err(format!("expected stored, got outcome {}", r.outcome))
            }
        }
        .boxed()
    }))
}

async fn get_many(ctx: &Ctx, batch: usize) -> anyhow::Result<Op> {
    preload(ctx, NS_L1, &ctx.keys).await?;
    let clients = ctx.clients();
    let keys = ctx.keys.clone();
    Ok(Arc::new(move |w, n| {
        let mut c = clients[w % clients.len()].clone();
        let start = (n as usize).wrapping_mul(batch);
        let batch_keys = (0..batch)
            .map(|i| keys[(start + i) % keys.len()].clone())
            .collect();
        async move {
            let req = pb::GetManyRequest {
                namespace: NS_L1.to_string(),
                keys: batch_keys,
                ..Default::default()
            };
            let r = c.get_many(req).await.map_err(status)?.into_inner();
            for g in &r.results {
                check_hit(g, pb::Tier::L1)?;
            }
            Ok(r.results.len() as u64)
        }
        .boxed()
    }))
}

/// One Pipeline stream: requests carry ids, a reader task hands each response to its caller.
struct PipeClient {
    tx: mpsc::Sender<pb::PipelineRequest>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<pb::PipelineResponse>>>>,
    next_id: AtomicU64,
}

impl PipeClient {
    async fn open(channel: Channel) -> anyhow::Result<Arc<Self>> {
        let (tx, rx) = mpsc::channel(1024);
        let mut client = CacheServiceClient::new(channel);
        let mut responses = client
            .pipeline(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .context("cannot open a Pipeline stream")?
            .into_inner();
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<pb::PipelineResponse>>>> =
            Arc::default();
        let p = pending.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = responses.message().await {
                if let Some(waiter) = p.lock().remove(&r.id) {
                    let _ = waiter.send(r);
                }
            }
            // The stream ended: fail whoever still waits.
            p.lock().clear();
        });
        Ok(Arc::new(Self {
            tx,
            pending,
            next_id: AtomicU64::new(1),
        }))
    }

    async fn call(
        &self,
        op: pb::pipeline_request::Operation,
    ) -> Result<pb::pipeline_response::Result, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        let req = pb::PipelineRequest {
            id,
            operation: Some(op),
        };
        if self.tx.send(req).await.is_err() {
            self.pending.lock().remove(&id);
            return Err("pipeline stream closed".into());
        }
        let resp = rx.await.map_err(|_| "pipeline stream ended".to_string())?;
        resp.result
            .ok_or_else(|| "response without a result".into())
    }
}

async fn pipeline_get(ctx: &Ctx, ns: &'static str, tier: pb::Tier) -> anyhow::Result<Op> {
    use pb::pipeline_response::Result as R;
    preload(ctx, ns, &ctx.keys).await?;
    let mut pipes = Vec::new();
    for c in &ctx.channels {
        pipes.push(PipeClient::open(c.clone()).await?);
    }
    let pipes: Arc<[Arc<PipeClient>]> = pipes.into();
    let keys = ctx.keys.clone();
    Ok(Arc::new(move |w, n| {
        let pipe = pipes[w % pipes.len()].clone();
        let key = keys[(n % keys.len() as u64) as usize].clone();
        async move {
            let op = pb::pipeline_request::Operation::Get(pb::GetRequest {
                namespace: ns.to_string(),
                key,
                ..Default::default()
            });
            match pipe.call(op).await? {
                R::Get(r) => check_hit(&r, tier),
                R::Error(e) => Err(format!("pipeline error {}: {}", e.code, e.message)),
                other => Err(format!("unexpected pipeline result {other:?}")),
            }
        }
        .boxed()
    }))
}

async fn redis_get(ctx: &Ctx) -> anyhow::Result<Op> {
    let client = redis::Client::open(ctx.redis_url.as_str())?;
    let mut conns = Vec::new();
    for _ in 0..ctx.connections.max(1) {
        conns.push(client.get_multiplexed_async_connection().await?);
    }
    let keys: Arc<[String]> = ctx.keys.iter().map(|k| format!("bench:{k}")).collect();
    let mut pipe = redis::pipe();
    for k in keys.iter() {
        pipe.set(k, ctx.value.as_ref()).ignore();
    }
    pipe.query_async::<()>(&mut conns[0])
        .await
        .context("cannot preload Redis")?;
    let conns: Arc<[_]> = conns.into();
    let size = ctx.value.len();
    Ok(Arc::new(move |w, n| {
        let mut c = conns[w % conns.len()].clone();
        let key = keys[(n % keys.len() as u64) as usize].clone();
        async move {
            let v: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            match v {
                Some(v) if v.len() == size => Ok(1),
                other => Err(format!("unexpected GET reply {other:?}")),
            }
        }
        .boxed()
    }))
}
