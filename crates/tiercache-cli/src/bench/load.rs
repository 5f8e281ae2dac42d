//! The closed-loop load generator: `concurrency` tasks each issue one operation at a time, for
//! a warm-up and then a measured period; latencies go to one hdrhistogram per task, merged.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use tokio::time::Instant;

/// The result of one operation: how many items it did (keys read; 1 for a single-key call).
pub type OpResult = Result<u64, String>;

/// One operation of a scenario. `worker` picks the connection, `n` the key.
pub type Op = Arc<dyn Fn(usize, u64) -> BoxFuture<'static, OpResult> + Send + Sync>;

/// What a scenario measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Calls completed in the measured period.
    pub calls: u64,
    /// Items (keys) those calls did.
    pub items: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// Per-call latency in nanoseconds.
    pub latency: Histogram<u64>,
}

impl Measured {
    pub fn items_per_sec(&self) -> f64 {
        self.items as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn calls_per_sec(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at `q` (0..1) in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

pub fn histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant figures.
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}

struct Worker {
    calls: u64,
    items: u64,
    errors: u64,
    first_error: Option<String>,
    latency: Histogram<u64>,
}

/// Runs `op` from `concurrency` tasks for `warmup` (not recorded), then `duration` (recorded).
pub async fn drive(op: Op, concurrency: usize, warmup: Duration, duration: Duration) -> Measured {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|w| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut me = Worker {
                    calls: 0,
                    items: 0,
                    errors: 0,
                    first_error: None,
                    latency: histogram(),
                };
                // Spread the workers over the key space so they do not walk it in lockstep.
                let mut n = (w as u64).wrapping_mul(7919);
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let r = op(w, n).await;
                    n = n.wrapping_add(1);
                    if t0 < measure_from {
                        continue;
                    }
                    let t1 = Instant::now();
                    me.calls += 1;
                    match r {
                        Ok(items) => me.items += items,
                        Err(e) => {
                            me.errors += 1;
                            me.first_error.get_or_insert(e);
                        }
                    }
                    let _ = me
                        .latency
                        .record(u64::try_from((t1 - t0).as_nanos()).unwrap_or(u64::MAX));
                }
                me
            })
        })
        .collect();
    let mut out = Measured {
        calls: 0,
        items: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latency: histogram(),
    };
    for t in tasks {
        match t.await {
            Ok(w) => {
                out.calls += w.calls;
                out.items += w.items;
                out.errors += w.errors;
                if out.first_error.is_none() {
                    out.first_error = w.first_error;
                }
                let _ = out.latency.add(&w.latency);
            }
            Err(e) => {
                out.errors += 1;
                out.first_error
                    .get_or_insert(format!("worker panicked: {e}"));
            }
        }
    }
    // Calls that started before the end finish after it; count the time they took.
    out.elapsed = Instant::now().saturating_duration_since(measure_from);
    out
}
