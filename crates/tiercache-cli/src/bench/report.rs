//! The bench report: a table for people, JSON for tracking. Ratios are to the health check
//! (`health`, the unary limit of this server) and to direct redis-rs GETs (`redis_get`), both
//! measured in the same run.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::external::RedisBenchmarkGet;
use super::load::Measured;
use super::memory::MemoryResult;
use super::stampede::StampedeResult;
use crate::args::{BenchArgs, Switch};

const BASE_UNARY: &str = "health";
const BASE_REDIS: &str = "redis_get";

pub struct Row {
    pub name: &'static str,
    pub about: &'static str,
    pub measured: Result<Measured, String>,
}

/// Everything one run measured.
pub struct Report {
    settings: Value,
    pub rows: Vec<Row>,
    pub redis_benchmark: Option<Result<Option<RedisBenchmarkGet>, String>>,
    pub stampede: Option<Result<StampedeResult, String>>,
    pub memory: Option<Result<MemoryResult, String>>,
}

/// Returns `nproc` and the CPU model of /proc/cpuinfo.
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    json!({ "nproc": nproc, "cpu": cpu })
}

impl Report {
    pub fn new(args: &BenchArgs) -> Self {
        let settings = json!({
            "addr": args.addr,
            "redis": args.redis,
            "concurrency": args.concurrency,
            "connections": args.connections,
            "value_size": args.value_size,
            "keys": args.keys,
            "duration_s": args.duration.as_secs_f64(),
            "warmup_s": args.warmup.as_secs_f64(),
            "telemetry": args.telemetry == Switch::On,
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        });
        Self {
            settings,
            rows: Vec::new(),
            redis_benchmark: None,
            stampede: None,
            memory: None,
        }
    }

    pub fn add(&mut self, name: &'static str, about: &'static str, m: Result<Measured, String>) {
        self.rows.push(Row {
            name,
            about,
            measured: m,
        });
    }

    fn base(&self, name: &str) -> Option<&Measured> {
        self.rows
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.measured.as_ref().ok())
            .filter(|m| m.items > 0)
    }

    fn ratio(&self, m: &Measured, base: &str) -> Option<f64> {
        self.base(base)
            .map(|b| m.items_per_sec() / b.items_per_sec())
    }

    /// Every error, failed scenario or broken invariant, as text; empty when the run is clean.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.rows {
            match &r.measured {
                Err(e) => out.push(format!("{}: {e}", r.name)),
                Ok(m) if m.errors > 0 => out.push(format!(
                    "{}: {} errors, first: {}",
                    r.name,
                    m.errors,
                    m.first_error.as_deref().unwrap_or("?")
                )),
                Ok(m) if m.calls == 0 => out.push(format!("{}: no call completed", r.name)),
                Ok(_) => {}
            }
        }
        if let Some(Err(e)) = &self.redis_benchmark {
            out.push(format!("redis_benchmark: {e}"));
        }
        match &self.stampede {
            Some(Err(e)) => out.push(format!("stampede: {e}")),
            Some(Ok(s)) if !s.ok() => out.push(format!(
                "stampede: origin calls per key {:?}, {} errors{}",
                s.origin_calls,
                s.errors,
                s.first_error
                    .as_deref()
                    .map(|e| format!(", first: {e}"))
                    .unwrap_or_default()
            )),
            _ => {}
        }
        match &self.memory {
            Some(Err(e)) => out.push(format!("memory: {e}")),
            Some(Ok(m)) if !m.ok() => out.push(format!(
                "memory: {} of {} entries in L1, {} evictions under the small budget",
                m.l1_entries, m.entries, m.evict_evictions
            )),
            _ => {}
        }
        out
    }

    pub fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| match &r.measured {
                Ok(m) => json!({
                    "name": r.name,
                    "about": r.about,
                    "ops_per_sec": m.items_per_sec(),
                    "calls_per_sec": m.calls_per_sec(),
                    "calls": m.calls,
                    "errors": m.errors,
                    "first_error": m.first_error,
                    "p50_us": m.quantile_us(0.5),
                    "p99_us": m.quantile_us(0.99),
                    "p999_us": m.quantile_us(0.999),
                    "vs_health": self.ratio(m, BASE_UNARY),
                    "p99_vs_health": self.base(BASE_UNARY).map(|b| m.quantile_us(0.99) / b.quantile_us(0.99)),
                    "vs_redis_get": self.ratio(m, BASE_REDIS),
                }),
                Err(e) => json!({ "name": r.name, "about": r.about, "failed": e }),
            })
            .collect();
        let redis_benchmark = match &self.redis_benchmark {
            None => Value::Null,
            Some(Ok(None)) => json!({ "skipped": "redis-benchmark is not installed" }),
            Some(Ok(Some(g))) => json!({
                "ops_per_sec": g.rps,
                "p50_us": g.p50_us,
                "p99_us": g.p99_us,
                "requests": g.requests,
                "vs_redis_get": self.base(BASE_REDIS).map(|b| g.rps / b.items_per_sec()),
            }),
            Some(Err(e)) => json!({ "failed": e }),
        };
        json!({
            "machine": machine(),
            "settings": self.settings,
            "scenarios": rows,
            "redis_benchmark": redis_benchmark,
            "stampede": match &self.stampede {
                None => Value::Null,
                Some(Ok(s)) => s.json(),
                Some(Err(e)) => json!({ "failed": e }),
            },
            "memory": match &self.memory {
                None => Value::Null,
                Some(Ok(m)) => m.json(),
                Some(Err(e)) => json!({ "failed": e }),
            },
            "problems": self.problems(),
        })
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        let m = machine();
        let _ = writeln!(
            t,
            "machine: {} CPUs, {}; settings: {}",
            m["nproc"], m["cpu"], self.settings
        );
        let _ = writeln!(
            t,
            "\n{:<18} {:>12} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9}",
            "scenario", "ops/s", "calls/s", "p50", "p99", "p99.9", "×health", "p99×hc", "×redis"
        );
        let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
        for r in &self.rows {
            match &r.measured {
                Ok(m) => {
                    let _ = writeln!(
                        t,
                        "{:<18} {:>12.0} {:>10.0} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9}{}",
                        r.name,
                        m.items_per_sec(),
                        m.calls_per_sec(),
                        us(m.quantile_us(0.5)),
                        us(m.quantile_us(0.99)),
                        us(m.quantile_us(0.999)),
                        ratio(self.ratio(m, BASE_UNARY)),
                        ratio(
                            self.base(BASE_UNARY)
                                .map(|b| m.quantile_us(0.99) / b.quantile_us(0.99))
                        ),
                        ratio(self.ratio(m, BASE_REDIS)),
                        if m.errors > 0 {
                            format!("  ({} errors)", m.errors)
                        } else {
                            String::new()
                        }
                    );
                }
                Err(e) => {
                    let _ = writeln!(t, "{:<18} failed: {e}", r.name);
                }
            }
        }
        match &self.redis_benchmark {
            None => {}
            Some(Ok(None)) => {
                let _ = writeln!(t, "{:<18} skipped: not installed", "redis_benchmark");
            }
            Some(Ok(Some(g))) => {
                let base = self.base(BASE_REDIS).map(|b| g.rps / b.items_per_sec());
                let _ = writeln!(
                    t,
                    "{:<18} {:>12.0} {:>10.0} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9}",
                    "redis_benchmark",
                    g.rps,
                    g.rps,
                    us(g.p50_us),
                    us(g.p99_us),
                    "-",
                    "-",
                    "-",
                    ratio(base)
                );
            }
            Some(Err(e)) => {
                let _ = writeln!(t, "{:<18} failed: {e}", "redis_benchmark");
            }
        }
        match &self.stampede {
            None => {}
            Some(Ok(s)) => {
                let _ = writeln!(
                    t,
                    "\nstampede: {} callers per key × {} keys over {} replicas, origin {:?}: \
                     origin calls per key {:?}; {} waiters, latency beyond the origin's time \
                     p50 {} p99 {} max {}; {} errors",
                    s.settings.callers,
                    s.settings.keys,
                    s.settings.replicas,
                    s.settings.fill,
                    s.origin_calls,
                    s.waiters,
                    us(s.waiter_p50_us),
                    us(s.waiter_p99_us),
                    us(s.waiter_max_us),
                    s.errors
                );
            }
            Some(Err(e)) => {
                let _ = writeln!(t, "\nstampede failed: {e}");
            }
        }
        match &self.memory {
            None => {}
            Some(Ok(m)) => {
                let _ = writeln!(
                    t,
                    "\nmemory: {} entries of {} B (keys {:.0} B): RSS +{:.0} B per entry, \
                     {:.0} B beyond key and value; L1 charged {} B for them.\n\
                     budget {} B, {} entries written: L1 holds {} B ({:.1}% of the budget), \
                     {} evictions.\n\
                     unary Sets: {} entries, RSS {:.0} B per entry beyond key and value",
                    m.entries,
                    m.value_size,
                    m.key_bytes as f64 / m.entries.max(1) as f64,
                    m.rss_per_entry,
                    m.overhead_per_entry,
                    m.l1_bytes,
                    m.evict_budget_bytes,
                    m.evict_entries_written,
                    m.evict_l1_bytes,
                    m.budget_ratio() * 100.0,
                    m.evict_evictions,
                    m.unary_entries,
                    m.unary_overhead_per_entry
                );
            }
            Some(Err(e)) => {
                let _ = writeln!(t, "\nmemory failed: {e}");
            }
        }
        t
    }
}

/// Formats microseconds as µs or ms.
fn us(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2}ms", v / 1000.0)
    } else {
        format!("{v:.0}µs")
    }
}
