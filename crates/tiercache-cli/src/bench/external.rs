//! `redis-benchmark -t get`, when it is installed: the Redis project's own load generator, as
//! a second direct-Redis reference beside redis-rs.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};

/// The GET row of `redis-benchmark --csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisBenchmarkGet {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests: u64,
}

/// Runs `redis-benchmark` against `host:port` with `clients` connections: SETs first (so the GETs
/// find values of `value_size` bytes among `keys` random keys), then GETs; returns the GET row.
/// `Ok(None)` when `redis-benchmark` is not installed.
pub fn run(
    host: &str,
    port: u16,
    clients: usize,
    value_size: usize,
    keys: usize,
    duration: Duration,
) -> anyhow::Result<Option<RedisBenchmarkGet>> {
    // redis-benchmark has no duration option: ask for about `duration` at 150k requests/s.
    let requests = ((duration.as_secs_f64() * 150_000.0) as u64).max(10_000);
    let out = match Command::new("redis-benchmark")
        .args(["-h", host, "-p", &port.to_string()])
        .args(["-c", &clients.to_string(), "-n", &requests.to_string()])
        .args(["-d", &value_size.to_string(), "-r", &keys.to_string()])
        .args(["-t", "set,get", "--csv"])
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("cannot run redis-benchmark"),
    };
    if !out.status.success() {
        bail!(
            "redis-benchmark failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut row = parse_csv(&String::from_utf8_lossy(&out.stdout), "GET")?;
    row.requests = requests;
    Ok(Some(row))
}

/// Parses the `test` row of `redis-benchmark --csv` output (header names the columns).
pub fn parse_csv(csv: &str, test: &str) -> anyhow::Result<RedisBenchmarkGet> {
    let split = |l: &str| -> Vec<String> {
        l.split(',')
            .map(|f| f.trim().trim_matches('"').to_string())
            .collect()
    };
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let header = split(lines.next().context("redis-benchmark printed nothing")?);
    let row = lines
        .map(split)
        .find(|r| r.first().map(String::as_str) == Some(test))
        .with_context(|| format!("no {test} row in redis-benchmark output"))?;
    let col = |name: &str| -> anyhow::Result<f64> {
        let i = header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("no {name} column in redis-benchmark output"))?;
        row.get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("bad {name} value in redis-benchmark output"))
    };
    Ok(RedisBenchmarkGet {
        rps: col("rps")?,
        p50_us: col("p50_latency_ms")? * 1e3,
        p99_us: col("p99_latency_ms")? * 1e3,
        requests: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_get_row_of_redis_benchmark_7() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"SET\",\"90909.09\",\"0.3\",\"0.1\",\"0.3\",\"0.5\",\"0.7\",\"2.0\"\n\
                   \"GET\",\"125000.00\",\"0.26\",\"0.08\",\"0.255\",\"0.4\",\"0.519\",\"1.2\"\n";
        let r = parse_csv(csv, "GET").unwrap();
        assert_eq!(r.rps, 125000.0);
        assert!((r.p50_us - 255.0).abs() < 1e-6);
        assert!((r.p99_us - 519.0).abs() < 1e-6);
        assert!(parse_csv(csv, "INCR").is_err());
    }
}
