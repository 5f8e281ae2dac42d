//! The memory scenario: how closely L1 keeps to its byte budget, and what an L1 entry costs in
//! resident memory beyond its key and value.
//!
//! A memory-only server runs in this process with two namespaces: `bench-rss`, whose budget
//! holds every entry (the process's VmRSS is read before and after writing them), and
//! `bench-evict`, whose budget is half the data written (so eviction must engage; GetStats
//! reports `l1_bytes` against `l1_budget_bytes`). The RSS namespace is filled first, so the
//! evicted namespace's freed memory cannot hide its growth.

use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt as _;
use serde_json::{json, Value};
use tiercache_proto::v1 as pb;
use tiercache_proto::v1::admin_service_client::AdminServiceClient;
use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tiercache_server::config::PolicyConfig;
use tonic::transport::Channel;

use super::env::{self, InProcessServer};

const NS_RSS: &str = "bench-rss";
const NS_EVICT: &str = "bench-evict";
const NS_UNARY: &str = "bench-rss-unary";
/// Entries written with unary Sets for the second RSS reading (unary calls are slower).
const UNARY_ENTRIES: usize = 20_000;
/// Entries per SetMany, and SetMany calls in flight, while filling.
const BATCH: usize = 200;
const IN_FLIGHT: usize = 8;

#[derive(Debug, Clone)]
pub struct MemoryResult {
    pub entries: usize,
    pub value_size: usize,
    pub key_bytes: usize,
    pub rss_before: u64,
    pub rss_after: u64,
    pub rss_per_entry: f64,
    pub overhead_per_entry: f64,
    pub l1_entries: u64,
    pub l1_bytes: u64,
    pub l1_budget_bytes: u64,
    pub l1_evictions: u64,
    pub evict_entries_written: usize,
    pub evict_l1_bytes: u64,
    pub evict_budget_bytes: u64,
    pub evict_evictions: u64,
    /// Entries written with unary Set, and the RSS they added per entry beyond key and value.
    pub unary_entries: usize,
    pub unary_overhead_per_entry: f64,
}

impl MemoryResult {
    /// L1 bytes of the evicting namespace as a fraction of its budget.
    pub fn budget_ratio(&self) -> f64 {
        self.evict_l1_bytes as f64 / self.evict_budget_bytes.max(1) as f64
    }

    pub fn ok(&self) -> bool {
        self.l1_entries == self.entries as u64 && self.evict_evictions > 0
    }

    pub fn json(&self) -> Value {
        json!({
            "entries": self.entries,
            "value_size": self.value_size,
            "avg_key_bytes": self.key_bytes as f64 / self.entries.max(1) as f64,
            "rss_before_bytes": self.rss_before,
            "rss_after_bytes": self.rss_after,
            "rss_per_entry_bytes": self.rss_per_entry,
            "rss_overhead_per_entry_bytes": self.overhead_per_entry,
            "l1_entries": self.l1_entries,
            "l1_bytes": self.l1_bytes,
            "l1_budget_bytes": self.l1_budget_bytes,
            "l1_evictions": self.l1_evictions,
            "evict": {
                "entries_written": self.evict_entries_written,
                "l1_bytes": self.evict_l1_bytes,
                "l1_budget_bytes": self.evict_budget_bytes,
                "l1_bytes_vs_budget": self.budget_ratio(),
                "evictions": self.evict_evictions,
            },
            "unary": {
                "entries": self.unary_entries,
                "rss_overhead_per_entry_bytes": self.unary_overhead_per_entry,
            },
            "ok": self.ok(),
        })
    }
}

/// Returns this process's resident set size in bytes (`VmRSS` of /proc/self/status).
pub fn vm_rss() -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/self/status")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .context("cannot parse VmRSS")?;
    Ok(kb * 1024)
}

fn key(i: usize) -> String {
    format!("m{i:09}")
}

/// Writes `count` entries of `value` into `ns`.
async fn fill(channel: &Channel, ns: &str, count: usize, value: &Bytes) -> anyhow::Result<()> {
    fill_range(channel, ns, 0, count, value).await
}

async fn stats(channel: &Channel, ns: &str) -> anyhow::Result<pb::NamespaceStats> {
    let mut admin = AdminServiceClient::new(channel.clone());
    let r = admin
        .get_stats(pb::GetStatsRequest {
            namespace: ns.to_string(),
        })
        .await
        .context("GetStats")?
        .into_inner();
    r.namespaces
        .into_iter()
        .find(|s| s.namespace == ns)
        .with_context(|| format!("GetStats has no namespace {ns}"))
}

/// Runs the memory scenario with `entries` entries of `value_size` bytes.
pub async fn run(entries: usize, value_size: usize) -> anyhow::Result<MemoryResult> {
    let key_bytes: usize = (0..entries).map(|i| key(i).len()).sum();
    // What the engine charges per entry (key + value + its fixed overhead).
    let weight = (key_bytes / entries.max(1) + value_size) as u64
        + tiercache_core::namespace::L1_ENTRY_OVERHEAD;
    let mut config = env::server_config(None);
    config.namespaces.insert(
        NS_RSS.to_string(),
        PolicyConfig {
            l1_max_bytes: Some(weight * entries as u64 * 2 + (1 << 20)),
            ..PolicyConfig::default()
        },
    );
    // Memory-only mode: L1 is bounded by the server-wide budget alone, so the eviction part runs
    // on a server of its own whose whole budget is the one measured.
    let evict_budget = (weight * entries as u64 / 2).max(1 << 16);
    let mut evict_config = config.clone();
    evict_config.l1.max_bytes = evict_budget;
    evict_config
        .namespaces
        .insert(NS_EVICT.to_string(), PolicyConfig::default());
    config.l1.max_bytes = 1 << 36;
    config.namespaces.insert(
        NS_UNARY.to_string(),
        PolicyConfig {
            l1_max_bytes: Some(1 << 34),
            ..PolicyConfig::default()
        },
    );
    let server = InProcessServer::start(config).await?;
    let channel = env::connect(&server.url()).await?;
    let value = Bytes::from(vec![b'v'; value_size]);
    // Warm the connection, the allocator and the namespace before the first reading.
    fill(&channel, NS_RSS, BATCH * IN_FLIGHT, &value).await?;
    let mut admin = AdminServiceClient::new(channel.clone());
    admin
        .get_stats(pb::GetStatsRequest::default())
        .await
        .context("GetStats")?;
    let warm = BATCH * IN_FLIGHT;
    let rss_before = vm_rss()?;
    // The warm-up keys are the first ones again, so `entries` entries exist afterwards.
    fill_range(&channel, NS_RSS, warm, entries, &value).await?;
    let rss_after = vm_rss()?;
    let rss = stats(&channel, NS_RSS).await?;
    let new_entries = entries.saturating_sub(warm).max(1);
    let rss_per_entry = rss_after.saturating_sub(rss_before) as f64 / new_entries as f64;
    let overhead_per_entry =
        rss_per_entry - (key_bytes as f64 / entries.max(1) as f64) - value_size as f64;

    // The same with unary Sets (the per-request buffers differ from SetMany's).
    let unary_entries = UNARY_ENTRIES.min(entries);
    fill_unary(&channel, 0, 64.min(unary_entries), &value).await?;
    let before = vm_rss()?;
    fill_unary(&channel, 64.min(unary_entries), unary_entries, &value).await?;
    let unary_overhead_per_entry = vm_rss()?.saturating_sub(before) as f64
        / unary_entries.saturating_sub(64).max(1) as f64
        - (key_bytes as f64 / entries.max(1) as f64)
        - value_size as f64;

    drop(admin);
    drop(channel);
    server.stop().await?;
    let server = InProcessServer::start(evict_config).await?;
    let channel = env::connect(&server.url()).await?;
    fill(&channel, NS_EVICT, entries, &value).await?;
    let evict = stats(&channel, NS_EVICT).await?;
    drop(channel);
    server.stop().await?;
    Ok(MemoryResult {
        entries,
        value_size,
        key_bytes,
        rss_before,
        rss_after,
        rss_per_entry,
        overhead_per_entry,
        l1_entries: rss.l1_entries,
        l1_bytes: rss.l1_bytes,
        l1_budget_bytes: rss.l1_budget_bytes,
        l1_evictions: rss.l1_evictions,
        evict_entries_written: entries,
        evict_l1_bytes: evict.l1_bytes,
        evict_budget_bytes: evict.l1_budget_bytes,
        evict_evictions: evict.l1_evictions,
        unary_entries,
        unary_overhead_per_entry,
    })
}

/// [`fill`] for keys `from..to`.
async fn fill_range(
    channel: &Channel,
    ns: &str,
    from: usize,
    to: usize,
    value: &Bytes,
) -> anyhow::Result<()> {
    let starts: Vec<usize> = (from..to).step_by(BATCH).collect();
    let mut calls = futures::stream::iter(starts.into_iter().map(|start| {
        let mut client = CacheServiceClient::new(channel.clone());
        let requests = (start..(start + BATCH).min(to))
            .map(|i| pb::SetRequest {
                namespace: ns.to_string(),
                key: key(i),
                value: value.clone(),
                ttl: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .collect();
        async move { client.set_many(pb::SetManyRequest { requests }).await }
    }))
    .buffer_unordered(IN_FLIGHT);
    while let Some(r) = calls.next().await {
        r.with_context(|| format!("SetMany into {ns}"))?;
    }
    Ok(())
}

/// Writes keys `from..to` of the unary namespace with unary Sets, 64 in flight.
async fn fill_unary(
    channel: &Channel,
    from: usize,
    to: usize,
    value: &Bytes,
) -> anyhow::Result<()> {
    let mut calls = futures::stream::iter((from..to).map(|i| {
        let mut client = CacheServiceClient::new(channel.clone());
        let req = pb::SetRequest {
            namespace: NS_UNARY.to_string(),
            key: key(i),
            value: value.clone(),
            ttl: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            ..Default::default()
        };
        async move { client.set(req).await }
    }))
    .buffer_unordered(64);
    while let Some(r) = calls.next().await {
        r.context("Set into the unary namespace")?;
    }
    Ok(())
}
