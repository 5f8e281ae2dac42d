//! A soak of the real `tiercache serve` binary: a mixed workload for a while, with the server's
//! resident memory sampled, to show whether memory stays flat.
//!
//! [`run`] spawns a `redis-server` ([`RedisServer`]) and the given `tiercache` binary on it (two
//! tiers, default config, dynamic namespaces on), then for [`SoakConfig::duration`] runs, paced
//! to [`SoakConfig::rate`] calls per second over several workers: Gets, Sets (with tags),
//! Deletes, GetOrSet (filling or releasing the lease), InvalidateTags, over a pool of dynamic
//! namespaces ([`SoakConfig::namespaces`]; refusals at the server's namespace cap are expected and
//! counted apart) — and Watch streams that come and go (each reads for a random 0.5–5 s, then
//! drops). Every [`SoakConfig::sample_every`] it reads `VmRSS` from `/proc/<pid>/status`. At the
//! end the server gets SIGTERM and must exit 0.
//!
//! The [`SoakReport`] holds the samples, the call counts and every unexpected error; it renders
//! a table of RSS over time, the verdict (flat within 5 % after warm-up: the mean RSS of the last
//! quarter of the steady period against that of its first quarter), JSON and markdown.
//! `make soak` runs it (`tests/examples/soak.rs`); the test suite runs a 30-second version
//! (`crates/tiercache-cli/tests/soak.rs`) that asserts only that it completes without errors.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tiercache_proto::v1 as pb;
use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::redis::RedisServer;

/// How long the server may take to listen, and to exit after SIGTERM.
const PROCESS_BOUND: Duration = Duration::from_secs(30);
/// Connections the workload spreads its calls over.
const CHANNELS: usize = 4;
/// Tags per namespace; each Set carries two of them.
const TAGS: u64 = 32;
/// How many unexpected errors the report keeps as examples.
const EXAMPLES: usize = 20;
/// RSS may drift this much (percent) between the first and last quarter and still be flat.
pub const FLAT_PERCENT: f64 = 5.0;

/// What a soak runs; [`SoakConfig::new`] gives the defaults of `make soak`.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// The `tiercache` binary to run.
    pub binary: PathBuf,
    /// How long the workload runs.
    pub duration: Duration,
    /// How often RSS is sampled.
    pub sample_every: Duration,
    /// The warm-up excluded from the verdict; `None`: a quarter of the duration.
    pub warmup: Option<Duration>,
    /// Target calls per second, over all workers.
    pub rate: u32,
    /// Concurrent workers making calls.
    pub workers: usize,
    /// Watch streams open at once (each reopened after it ends).
    pub watchers: usize,
    /// Dynamic namespaces the workload uses (`soak-0`…): more than the server's cap shows the
    /// refusals at the cap.
    pub namespaces: usize,
    /// Keys per namespace.
    pub keys: u64,
    /// The width of a row of the RSS table.
    pub row: Duration,
}

impl SoakConfig {
    /// The defaults: 20 minutes, a sample every 5 s, 1000 calls/s over 8 workers, 4 watchers,
    /// 80 namespaces of 2000 keys, one table row per minute.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            duration: Duration::from_secs(20 * 60),
            sample_every: Duration::from_secs(5),
            warmup: None,
            rate: 1000,
            workers: 8,
            watchers: 4,
            namespaces: 80,
            keys: 2000,
            row: Duration::from_secs(60),
        }
    }

    fn warmup(&self) -> Duration {
        self.warmup.unwrap_or(self.duration / 4)
    }
}

/// One RSS sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Time since the workload started.
    pub at: Duration,
    /// `VmRSS` in KiB.
    pub rss_kib: u64,
}

/// Whether RSS stayed flat after warm-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Mean RSS (MiB) of the first quarter after warm-up.
    pub first_quarter_mib: f64,
    /// Mean RSS (MiB) of the last quarter.
    pub last_quarter_mib: f64,
    /// `(last − first) / first`, in percent.
    pub change_percent: f64,
    /// `|change| <= FLAT_PERCENT`.
    pub flat: bool,
}

/// What a soak saw; see the module docs.
#[derive(Debug, Clone)]
pub struct SoakReport {
    /// The config it ran with.
    pub config: SoakConfig,
    /// How long the workload actually ran.
    pub elapsed: Duration,
    /// RSS samples, in order.
    pub samples: Vec<Sample>,
    /// Successful calls by kind.
    pub calls: BTreeMap<&'static str, u64>,
    /// Refusals at the namespace cap (RESOURCE_EXHAUSTED), expected with more namespaces than
    /// the cap.
    pub refusals: u64,
    /// One refusal message, to show what the cap said.
    pub refusal_example: Option<String>,
    /// Unexpected errors (any other failed call), in total.
    pub errors: u64,
    /// The first few unexpected errors.
    pub error_examples: Vec<String>,
    /// Watch streams opened, and events they received.
    pub watch_streams: u64,
    /// Events received by Watch streams.
    pub watch_events: u64,
    /// How the server exited after SIGTERM (`exit status: 0` is clean).
    pub exit: String,
    /// Whether the server exited 0.
    pub clean_exit: bool,
    /// The end of the server's log, for a failed run.
    pub log_tail: Vec<String>,
}

impl SoakReport {
    /// Returns whether the run had no unexpected error and the server exited cleanly.
    pub fn ok(&self) -> bool {
        self.errors == 0 && self.clean_exit
    }

    /// Returns the verdict, or `None` when the steady period holds too few samples (fewer than
    /// two per quarter).
    pub fn verdict(&self) -> Option<Verdict> {
        let warmup = self.config.warmup();
        let end = self.elapsed;
        if end <= warmup {
            return None;
        }
        let quarter = (end - warmup) / 4;
        let mean = |from: Duration, to: Duration| {
            let v: Vec<f64> = self
                .samples
                .iter()
                .filter(|s| s.at >= from && s.at <= to)
                .map(|s| s.rss_kib as f64 / 1024.0)
                .collect();
            (v.len() >= 2).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let first = mean(warmup, warmup + quarter)?;
        let last = mean(end - quarter, end)?;
        let change_percent = (last - first) / first * 100.0;
        Some(Verdict {
            first_quarter_mib: first,
            last_quarter_mib: last,
            change_percent,
            flat: change_percent.abs() <= FLAT_PERCENT,
        })
    }

    /// Rows of the RSS table: (row start, mean, min, max MiB).
    fn rows(&self) -> Vec<(Duration, f64, f64, f64)> {
        let width = self.config.row.max(Duration::from_secs(1));
        let mut rows: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for s in &self.samples {
            let i = s.at.as_millis() as u64 / width.as_millis() as u64;
            rows.entry(i).or_default().push(s.rss_kib as f64 / 1024.0);
        }
        rows.into_iter()
            .map(|(i, v)| {
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                let min = v.iter().copied().fold(f64::INFINITY, f64::min);
                let max = v.iter().copied().fold(0.0, f64::max);
                (width * i as u32, mean, min, max)
            })
            .collect()
    }

    fn verdict_line(&self) -> String {
        match self.verdict() {
            Some(v) => format!(
                "RSS after a {:?} warm-up: first quarter {:.1} MiB, last quarter {:.1} MiB, \
                 change {:+.1} % -> {}",
                self.config.warmup(),
                v.first_quarter_mib,
                v.last_quarter_mib,
                v.change_percent,
                if v.flat {
                    format!("flat (within {FLAT_PERCENT} %)")
                } else {
                    format!("NOT flat (more than {FLAT_PERCENT} %)")
                }
            ),
            None => "too short for a verdict (fewer than two samples per quarter)".into(),
        }
    }

    /// The markdown table of RSS over time, the counts and the verdict.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Soak: {:?} at {} calls/s ({} workers, {} watchers, {} namespaces × {} keys), \
             RSS every {:?}\n",
            self.elapsed,
            self.config.rate,
            self.config.workers,
            self.config.watchers,
            self.config.namespaces,
            self.config.keys,
            self.config.sample_every
        );
        let unit = if self.config.row >= Duration::from_secs(60) {
            "minute"
        } else {
            "second"
        };
        let _ = writeln!(out, "| {unit} | RSS MiB (mean) | min | max |");
        let _ = writeln!(out, "|---:|---:|---:|---:|");
        for (at, mean, min, max) in self.rows() {
            let t = if unit == "minute" {
                at.as_secs() / 60
            } else {
                at.as_secs()
            };
            let _ = writeln!(out, "| {t} | {mean:.1} | {min:.1} | {max:.1} |");
        }
        let _ = writeln!(out);
        let calls: Vec<String> = self.calls.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let total: u64 = self.calls.values().sum();
        let _ = writeln!(
            out,
            "Calls: {total} ({}); Watch streams {} with {} events; namespace-cap refusals {}; \
             unexpected errors {}; server exit: {}.\n",
            calls.join(", "),
            self.watch_streams,
            self.watch_events,
            self.refusals,
            self.errors,
            self.exit
        );
        let _ = writeln!(out, "{}", self.verdict_line());
        if let Some(r) = &self.refusal_example {
            let _ = writeln!(out, "\nA refusal at the namespace cap: {r}");
        }
        if !self.error_examples.is_empty() {
            let _ = writeln!(
                out,
                "\nUnexpected errors (first {}):",
                self.error_examples.len()
            );
            for e in &self.error_examples {
                let _ = writeln!(out, "- {e}");
            }
        }
        if !self.log_tail.is_empty() {
            let _ = writeln!(
                out,
                "\nEnd of the server log:\n```\n{}\n```",
                self.log_tail.join("\n")
            );
        }
        out
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        let samples: Vec<String> = self
            .samples
            .iter()
            .map(|s| format!("[{:.3},{}]", s.at.as_secs_f64(), s.rss_kib))
            .collect();
        let calls: Vec<String> = self
            .calls
            .iter()
            .map(|(k, v)| format!("{}:{v}", json_string(k)))
            .collect();
        let verdict = match self.verdict() {
            Some(v) => format!(
                "{{\"first_quarter_mib\":{:.3},\"last_quarter_mib\":{:.3},\"change_percent\":{:.3},\"flat\":{}}}",
                v.first_quarter_mib, v.last_quarter_mib, v.change_percent, v.flat
            ),
            None => "null".into(),
        };
        let errors: Vec<String> = self.error_examples.iter().map(|e| json_string(e)).collect();
        format!(
            "{{\"duration_s\":{:.3},\"warmup_s\":{:.3},\"rate\":{},\"workers\":{},\"watchers\":{},\
             \"namespaces\":{},\"keys\":{},\"sample_every_s\":{:.3},\"samples\":[{}],\
             \"calls\":{{{}}},\"watch_streams\":{},\"watch_events\":{},\"refusals\":{},\
             \"errors\":{},\"error_examples\":[{}],\"exit\":{},\"clean_exit\":{},\
             \"flat_percent\":{FLAT_PERCENT},\"verdict\":{}}}",
            self.elapsed.as_secs_f64(),
            self.config.warmup().as_secs_f64(),
            self.config.rate,
            self.config.workers,
            self.config.watchers,
            self.config.namespaces,
            self.config.keys,
            self.config.sample_every.as_secs_f64(),
            samples.join(","),
            calls.join(","),
            self.watch_streams,
            self.watch_events,
            self.refusals,
            self.errors,
            errors.join(","),
            json_string(&self.exit),
            self.clean_exit,
            verdict
        )
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What the workload counts, shared by its tasks.
#[derive(Default)]
struct Tally {
    calls: Mutex<BTreeMap<&'static str, u64>>,
    refusals: AtomicU64,
    refusal_example: Mutex<Option<String>>,
    errors: AtomicU64,
    error_examples: Mutex<Vec<String>>,
    watch_streams: AtomicU64,
    watch_events: AtomicU64,
}

impl Tally {
    fn ok(&self, kind: &'static str) {
        *lock(&self.calls).entry(kind).or_default() += 1;
    }

    fn failed(&self, kind: &'static str, status: &tonic::Status) {
        if status.code() == Code::ResourceExhausted {
            self.refusals.fetch_add(1, Ordering::Relaxed);
            lock(&self.refusal_example).get_or_insert_with(|| format!("{kind}: {status:?}"));
            return;
        }
        self.error(format!("{kind}: {:?}: {}", status.code(), status.message()));
    }

    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut examples = lock(&self.error_examples);
        if examples.len() < EXAMPLES {
            examples.push(what);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// xorshift64*: cheap per-worker randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The `tiercache serve` child process; killed on drop if still running.
struct ServerProcess {
    child: Child,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    fn start(binary: &std::path::Path, redis_url: &str) -> Self {
        let mut child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--admin-listen", "127.0.0.1:0", "--redis-url", redis_url])
            .env_remove("TIERCACHE_CONFIG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = log.clone();
        // Drains stderr for the life of the child so it never blocks on a full pipe; keeps the
        // last lines for the report.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = listening_addr(&line) {
                    let _ = tx.send(addr);
                }
                let mut log = lock(&sink);
                log.push(line);
                if log.len() > 200 {
                    log.remove(0);
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(PROCESS_BOUND) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tiercache serve did not log \"listening\" within {PROCESS_BOUND:?}; log:\n{}",
                lock(&log).join("\n")
            );
        };
        Self { child, addr, log }
    }

    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns it and whether it was clean.
    fn terminate(&mut self) -> (String, bool) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + PROCESS_BOUND;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return (status.to_string(), status.success()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return (
                        format!("killed: no exit within {PROCESS_BOUND:?} of SIGTERM"),
                        false,
                    );
                }
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The address in a JSON `listening` log line (`"message":"listening"` … `"addr":"…"`).
fn listening_addr(line: &str) -> Option<String> {
    if !line.contains("\"message\":\"listening\"") {
        return None;
    }
    let rest = &line[line.find("\"addr\":\"")? + "\"addr\":\"".len()..];
    Some(rest[..rest.find('"')?].to_string())
}

/// Runs the soak; see the module docs.
///
/// # Panics
///
/// Panics if Redis or the server cannot start, or a connection cannot be made.
pub async fn run(config: SoakConfig) -> SoakReport {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("redis-server starts");
    let binary = config.binary.clone();
    let url = redis.url();
    let mut server = tokio::task::spawn_blocking(move || ServerProcess::start(&binary, &url))
        .await
        .expect("tiercache serve starts");
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        let channel = Endpoint::from_shared(format!("http://{}", server.addr))
            .expect("a valid endpoint")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to tiercache serve: {e}"));
        channels.push(channel);
    }

    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + config.duration;
    let mut tasks = Vec::new();
    let per_worker = f64::from(config.rate.max(1)) / config.workers.max(1) as f64;
    for w in 0..config.workers {
        let client = CacheServiceClient::new(channels[w % CHANNELS].clone());
        let every = Duration::from_secs_f64(1.0 / per_worker);
        tasks.push(tokio::spawn(worker(
            client,
            tally.clone(),
            config.clone(),
            deadline,
            every,
            0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1),
        )));
    }
    for w in 0..config.watchers {
        let client = CacheServiceClient::new(channels[w % CHANNELS].clone());
        tasks.push(tokio::spawn(watcher(
            client,
            tally.clone(),
            config.namespaces,
            deadline,
            0x51_7cc1_b727_220a ^ (w as u64 + 1),
        )));
    }

    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(config.sample_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while tokio::time::Instant::now() < deadline {
        tick.tick().await;
        if let Some(rss_kib) = server.rss_kib() {
            samples.push(Sample {
                at: started.elapsed(),
                rss_kib,
            });
        }
    }
    for t in tasks {
        if let Err(e) = t.await {
            tally.error(format!("a workload task failed: {e}"));
        }
    }
    let elapsed = started.elapsed();
    drop(channels);
    let (exit, clean_exit, log) = tokio::task::spawn_blocking(move || {
        let (exit, clean) = server.terminate();
        let log = lock(&server.log).clone();
        (exit, clean, log)
    })
    .await
    .expect("terminate the server");
    drop(redis);
    let tally = Arc::try_unwrap(tally).unwrap_or_else(|_| panic!("every task has ended"));
    let errors = tally.errors.into_inner();
    // The end of the log explains a failed run; a clean one needs none of it.
    let log_tail = if errors > 0 || !clean_exit {
        log[log.len().saturating_sub(30)..].to_vec()
    } else {
        Vec::new()
    };
    SoakReport {
        config,
        elapsed,
        samples,
        calls: tally.calls.into_inner().unwrap_or_else(|e| e.into_inner()),
        refusals: tally.refusals.into_inner(),
        refusal_example: tally
            .refusal_example
            .into_inner()
            .unwrap_or_else(|e| e.into_inner()),
        errors,
        error_examples: tally
            .error_examples
            .into_inner()
            .unwrap_or_else(|e| e.into_inner()),
        watch_streams: tally.watch_streams.into_inner(),
        watch_events: tally.watch_events.into_inner(),
        exit,
        clean_exit,
        log_tail,
    }
}

fn value(rng: &mut Rng) -> Bytes {
    let len = 64 + rng.below(1984) as usize;
    Bytes::from(vec![b'x'; len])
}

/// One worker: calls paced to `every` until the deadline.
async fn worker(
    mut c: CacheServiceClient<Channel>,
    tally: Arc<Tally>,
    config: SoakConfig,
    deadline: tokio::time::Instant,
    every: Duration,
    seed: u64,
) {
    let mut rng = Rng(seed);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while tokio::time::Instant::now() < deadline {
        tick.tick().await;
        let namespace = format!("soak-{}", rng.below(config.namespaces as u64));
        // A hot tenth of the keys takes most calls.
        let k = if rng.below(10) < 8 {
            rng.below(config.keys / 10 + 1)
        } else {
            rng.below(config.keys)
        };
        let key = format!("k{k}");
        let tags = vec![
            format!("tag-{}", rng.below(TAGS)),
            format!("tag-{}", rng.below(TAGS)),
        ];
        match rng.below(100) {
            0..=39 => {
                let r = c
                    .get(pb::GetRequest {
                        namespace,
                        key,
                        ..Default::default()
                    })
                    .await;
                record(&tally, "get", r.map(|_| ()));
            }
            40..=59 => {
                let r = c
                    .set(pb::SetRequest {
                        namespace,
                        key,
                        value: value(&mut rng),
                        tags,
                        ..Default::default()
                    })
                    .await;
                record(&tally, "set", r.map(|_| ()));
            }
            60..=64 => {
                let r = c
                    .delete(pb::DeleteRequest {
                        namespace,
                        key,
                        if_version: None,
                    })
                    .await;
                record(&tally, "delete", r.map(|_| ()));
            }
            65..=94 => get_or_set(&mut c, &tally, &mut rng, namespace, key, tags).await,
            _ => {
                let r = c
                    .invalidate_tags(pb::InvalidateTagsRequest {
                        namespace,
                        tags: vec![format!("tag-{}", rng.below(TAGS))],
                    })
                    .await;
                record(&tally, "invalidate_tags", r.map(|_| ()));
            }
        }
    }
}

fn record<T>(tally: &Tally, kind: &'static str, r: Result<T, tonic::Status>) {
    match r {
        Ok(_) => tally.ok(kind),
        Err(s) => tally.failed(kind, &s),
    }
}

/// A GetOrSet; a lease is filled (or, one time in ten, released) as a caller would.
async fn get_or_set(
    c: &mut CacheServiceClient<Channel>,
    tally: &Tally,
    rng: &mut Rng,
    namespace: String,
    key: String,
    tags: Vec<String>,
) {
    let request = pb::GetOrSetRequest {
        namespace: namespace.clone(),
        key: key.clone(),
        max_wait: Some(prost_types::Duration {
            seconds: 0,
            nanos: 200_000_000,
        }),
        ..Default::default()
    };
    let response = match c.get_or_set(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => return tally.failed("get_or_set", &s),
    };
    tally.ok("get_or_set");
    if response.outcome() != pb::GetOrSetOutcome::Lease {
        return;
    }
    let Some(lease) = response.lease else { return };
    if rng.below(10) == 0 {
        let r = c
            .release_lease(pb::ReleaseLeaseRequest {
                namespace,
                key,
                lease_token: lease.token,
            })
            .await;
        return record(tally, "release_lease", r.map(|_| ()));
    }
    let r = c
        .fill(pb::FillRequest {
            namespace,
            key,
            lease_token: lease.token,
            value: value(rng),
            tags,
            ..Default::default()
        })
        .await;
    record(tally, "fill", r.map(|_| ()));
}

/// One watcher: opens a Watch on a random namespace, reads it for 0.5–5 s, drops it, again.
async fn watcher(
    mut c: CacheServiceClient<Channel>,
    tally: Arc<Tally>,
    namespaces: usize,
    deadline: tokio::time::Instant,
    seed: u64,
) {
    let mut rng = Rng(seed);
    while tokio::time::Instant::now() < deadline {
        let namespace = format!("soak-{}", rng.below(namespaces as u64));
        let lasts = Duration::from_millis(500 + rng.below(4500));
        let until = (tokio::time::Instant::now() + lasts).min(deadline);
        let mut stream = match c.watch(pb::WatchRequest { namespace }).await {
            Ok(s) => s.into_inner(),
            Err(s) => {
                tally.failed("watch", &s);
                // A refusal at the cap: try another namespace after a pause.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tally.watch_streams.fetch_add(1, Ordering::Relaxed);
        loop {
            match tokio::time::timeout_at(until, stream.message()).await {
                Err(_) => break,
                Ok(Ok(Some(_))) => {
                    tally.watch_events.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(None)) => {
                    tally.error("watch: the server ended a stream".into());
                    break;
                }
                Ok(Err(s)) => {
                    tally.failed("watch", &s);
                    break;
                }
            }
        }
        tally.ok("watch");
    }
}
