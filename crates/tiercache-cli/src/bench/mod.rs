//! `tiercache bench`: tiercache measured side by side with direct Redis calls, in one run on
//! one machine (docs/performance.md).
//!
//! # Layout
//! - `env`: the `redis-server` child and the in-process servers the run measures.
//! - `load`: the closed-loop load generator and its histograms.
//! - `scenarios`: the load scenarios (health check, unary Get L1/L2, GetOrSet, Set, Pipeline,
//!   GetMany, direct redis-rs GET); one `prepare` function and one list entry each.
//! - `external`: `redis-benchmark`, parsed from its CSV.
//! - `stampede`, `memory`: the two scenarios that count rather than time.
//! - `report`: the table and the JSON.

mod env;
mod external;
mod load;
mod memory;
mod report;
mod scenarios;
mod stampede;

use std::io::Write as _;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use bytes::Bytes;

use crate::args::{BenchArgs, Switch};
use crate::exit::{Exit, Failure};
use crate::out::outln;

pub use report::Report;

/// Scenarios that are not load scenarios, in the order they run after them.
const EXTRA: [&str; 3] = ["redis_benchmark", "stampede", "memory"];

/// Returns every scenario name, in run order.
pub fn scenario_names() -> Vec<&'static str> {
    scenarios::SCENARIOS
        .iter()
        .map(|s| s.name)
        .chain(EXTRA)
        .collect()
}

/// `tiercache bench`: runs the selected scenarios and prints the table or JSON. Exits 3 when
/// any scenario had errors (or the stampede/memory scenario failed its invariant).
pub async fn bench(args: BenchArgs) -> Result<Exit, Failure> {
    if args.scenarios.iter().any(|s| s == "list") {
        for s in scenarios::SCENARIOS {
            outln!("{:<18} {}", s.name, s.about)?;
        }
        outln!(
            "{:<18} redis-benchmark -t get (when installed)",
            "redis_benchmark"
        )?;
        outln!(
            "{:<18} concurrent GetOrSet per cold key over replicas",
            "stampede"
        )?;
        outln!("{:<18} L1 bytes vs budget, RSS per entry", "memory")?;
        return Ok(Exit::Ok);
    }
    let names = scenario_names();
    if let Some(bad) = args.scenarios.iter().find(|s| !names.contains(&s.as_str())) {
        return Err(Failure::usage(anyhow::anyhow!(
            "unknown scenario {bad:?}; known: {}",
            names.join(", ")
        )));
    }
    if args.concurrency == 0 || args.connections == 0 || args.keys == 0 {
        return Err(Failure::usage(anyhow::anyhow!(
            "--concurrency, --connections and --keys must be at least 1"
        )));
    }
    if args.telemetry == Switch::On {
        crate::serve::init_bench_telemetry().map_err(Failure::usage)?;
    }
    let report = run(&args).await.map_err(Failure::server)?;
    if args.json {
        outln!("{}", report.json())?;
    } else {
        crate::out::write(|out| out.write_all(report.table().as_bytes()))?;
    }
    match report.problems() {
        problems if problems.is_empty() => Ok(Exit::Ok),
        problems => Err(Failure::server(anyhow::anyhow!(
            "bench finished with problems: {}",
            problems.join("; ")
        ))),
    }
}

/// Runs the selected scenarios and returns what they measured.
pub async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    let selected =
        |name: &str| args.scenarios.is_empty() || args.scenarios.iter().any(|s| s == name);
    let mut report = Report::new(args);

    let spawned = match &args.redis {
        Some(_) => None,
        None => Some(env::RedisProcess::start().await?),
    };
    let redis_url = match (&args.redis, &spawned) {
        (Some(url), _) => url.clone(),
        (None, Some(r)) => r.url(),
        (None, None) => unreachable!("a Redis was spawned"),
    };
    let redis_addr = match &spawned {
        Some(r) => Some(("127.0.0.1".to_string(), r.port())),
        None => tcp_addr(&redis_url),
    };

    let server = match &args.addr {
        Some(_) => None,
        None => Some(env::InProcessServer::start(env::server_config(Some(&redis_url))).await?),
    };
    let url = match (&args.addr, &server) {
        (Some(a), _) => a.clone(),
        (None, Some(s)) => s.url(),
        (None, None) => unreachable!("a server was started"),
    };
    let ctx = scenarios::Ctx {
        channels: env::channels(&url, args.connections).await?,
        redis_url: redis_url.clone(),
        connections: args.connections,
        keys: (0..args.keys)
            .map(|i| format!("k{i:08}"))
            .collect::<Arc<[_]>>(),
        value: Bytes::from(vec![b'x'; args.value_size]),
    };

    for s in scenarios::SCENARIOS.iter().filter(|s| selected(s.name)) {
        eprintln!("bench: {} ({})", s.name, s.about);
        let measured = match (s.prepare)(&ctx).await {
            Ok(op) => Ok(load::drive(op, args.concurrency, args.warmup, args.duration).await),
            Err(e) => Err(format!("{e:#}")),
        };
        report.add(s.name, s.about, measured);
    }
    drop(ctx);

    if selected("redis_benchmark") {
        eprintln!("bench: redis_benchmark");
        let (concurrency, size, keys, duration) =
            (args.concurrency, args.value_size, args.keys, args.duration);
        report.redis_benchmark = Some(match redis_addr {
            Some((host, port)) => tokio::task::spawn_blocking(move || {
                external::run(&host, port, concurrency, size, keys, duration)
            })
            .await
            .context("redis-benchmark task")?
            .map_err(|e| format!("{e:#}")),
            None => Err("the Redis URL names no TCP port".to_string()),
        });
    }

    if selected("stampede") {
        eprintln!("bench: stampede");
        let settings = stampede::StampedeSettings {
            callers: args.stampede_callers,
            replicas: args.stampede_replicas,
            keys: args.stampede_keys,
            fill: args.stampede_fill,
            connections: args.connections,
        };
        report.stampede = Some(
            stampede::run(&redis_url, settings)
                .await
                .map_err(|e| format!("{e:#}")),
        );
    }

    if let Some(s) = server {
        s.stop().await.context("stopping the bench server")?;
    }

    if selected("memory") {
        eprintln!("bench: memory ({} entries)", args.memory_entries);
        if args.memory_entries == 0 {
            bail!("--memory-entries must be at least 1");
        }
        report.memory = Some(
            memory::run(args.memory_entries, args.value_size)
                .await
                .map_err(|e| format!("{e:#}")),
        );
    }
    drop(spawned);
    Ok(report)
}

/// Returns host and port of a `redis://` URL (`redis://[user:pass@]host[:port][/db]`).
fn tcp_addr(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("redis://")?;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hostport = rest.split('/').next()?;
    match hostport.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((hostport.to_string(), 6379)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_addr_reads_redis_urls() {
        assert_eq!(
            tcp_addr("redis://127.0.0.1:7001"),
            Some(("127.0.0.1".into(), 7001))
        );
        assert_eq!(tcp_addr("redis://u:p@h/0"), Some(("h".into(), 6379)));
        assert_eq!(tcp_addr("unix:///tmp/r.sock"), None);
    }
}
