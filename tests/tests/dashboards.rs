//! The Grafana dashboards, evaluated as a Grafana user would see them: a real Prometheus (Debian's
//! `prometheus`, the package `scripts/setup.sh` installs for promtool) scrapes two replicas on one
//! Redis every second while the test sends known traffic with a Redis stall; then every target of
//! every dashboard under `helm/tiercache/dashboards/` is evaluated through Prometheus's HTTP API
//! (`/api/v1/query_range`), template variables substituted.
//!
//! Asserted: every query parses and returns at least one series; the hit ratio panel matches the
//! traffic sent; the degraded panel shows the stall; every RPC and Redis latency quantile stays
//! within 2× of the slowest call the client measured (docs/observability.md, "What the dashboard
//! shows"); no template variable is defined twice.
//!
//! `TIERCACHE_DASHBOARD_DUMP=<file.json>` writes every evaluated target and its series there, for
//! `scripts/plot-dashboard.py`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tiercache_proto::v1 as pb;
use tiercache_proto::v1::admin_service_client::AdminServiceClient;
use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tiercache_proto::v1::lock_service_client::LockServiceClient;
use tiercache_server::config::{Config, RedisConfig};
use tiercache_testkit::req::{self, InNamespace};
use tiercache_testkit::{wait_for, RedisServer, TestServer};
use tonic::transport::Channel;

/// Scrape and rule evaluation interval of the test's Prometheus.
const SCRAPE: Duration = Duration::from_secs(1);
/// What Grafana substitutes for `$__rate_interval` with a 1 s scrape interval:
/// `max($__interval + scrape, 4 × scrape)`, with `$__interval` at most the 1 s step.
const RATE_INTERVAL: &str = "4s";
/// How long one Redis call may take before a replica calls Redis unreachable (degraded mode).
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// How long Redis stops answering (`DEBUG SLEEP`).
const STALL: Duration = Duration::from_secs(4);
/// How long the lock holder keeps the lock another caller waits for: the deliberately slow call
/// of the run (the example is a 1.5 s call).
const LOCK_HOLD: Duration = Duration::from_millis(1500);
/// How long the traffic runs steadily before and after the stall: long enough for a few
/// `$__rate_interval` windows that see only steady hit-ratio traffic.
const STEADY: f64 = 8.0;
/// Hot keys and the one miss per round of the hit-ratio traffic: 3 hits, 1 miss.
const RATIO_HITS_PER_ROUND: usize = 3;
/// The namespace that gets only Gets with the known mix.
const RATIO_NS: &str = "ratio";
/// The namespace of every other operation.
const APP_NS: &str = "app";
/// Allowed difference between the hit ratio panel and the mix sent, for a step whose
/// `$__rate_interval` window lies inside a period of steady ratio traffic. A window holds whole
/// rounds of 3 hits and 1 miss plus at most one partial round per replica (≤ 3 extra hits); at
/// the paced ≥ 20 rounds/s per replica a 4 s window holds ≥ 80 rounds, so the partial rounds move
/// the ratio by less than 3/(4·80+3) ≈ 0.01; `rate()` extrapolates the hit and miss series of
/// one target by the same factor, so it adds nothing. 0.02 leaves room for a slow scrape.
const RATIO_TOLERANCE: f64 = 0.02;
/// The message when Prometheus is missing.
const INSTALL_HINT: &str =
    "install it with `apt-get install -y prometheus` (scripts/setup.sh does, for promtool)";

// ---------------------------------------------------------------------------------------------
// Prometheus

/// A `prometheus` server on a free port scraping `targets`, with its storage in a temporary
/// directory; killed (and the directory removed) on drop. Its log is printed if the test panics.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(targets: &[SocketAddr]) -> Self {
        let binary = which("prometheus")
            .unwrap_or_else(|| panic!("the prometheus binary is not on PATH: {INSTALL_HINT}"));
        let dir = std::env::temp_dir().join(format!(
            "tiercache-dashboards-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: {s}s\n  scrape_timeout: {s}s\n\
             \x20 evaluation_interval: {s}s\nscrape_configs:\n  - job_name: tiercache\n\
             \x20   static_configs:\n      - targets: [{}]\n",
            targets.join(", "),
            s = SCRAPE.as_secs()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start prometheus: {e}; {INSTALL_HINT}"));
        let mut p = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!(
                    "prometheus exited during start ({status}); log:\n{}",
                    p.log()
                );
            }
            if http_get(addr, "/-/ready").is_ok_and(|(code, _)| code == 200) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 20 s; log:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>?<params>`; returns the `data` of a successful answer, or the error.
    fn api(&self, path: &str, params: &[(&str, String)]) -> Result<Value, String> {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        let (code, body) = http_get(self.addr, &format!("/api/v1/{path}?{}", query.join("&")))
            .map_err(|e| format!("request failed: {e}"))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| format!("HTTP {code}, not JSON ({e}): {body}"))?;
        if v["status"] != "success" {
            return Err(format!("HTTP {code}: {} {}", v["errorType"], v["error"]));
        }
        Ok(v["data"].clone())
    }

    fn query_range(&self, expr: &str, start: f64, end: f64) -> Result<Vec<Series>, String> {
        let data = self.api(
            "query_range",
            &[
                ("query", expr.to_string()),
                ("start", format!("{start:.3}")),
                ("end", format!("{end:.3}")),
                ("step", format!("{}", SCRAPE.as_secs())),
            ],
        )?;
        Ok(data["result"]
            .as_array()
            .ok_or_else(|| format!("no result array: {data}"))?
            .iter()
            .map(|s| Series {
                labels: s["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect(),
                points: s["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        let v = p[1].as_str().unwrap();
                        (p[0].as_f64().unwrap(), v.parse().unwrap_or(f64::NAN))
                    })
                    .collect(),
            })
            .collect())
    }

    fn instant(&self, expr: &str) -> Vec<Value> {
        self.api("query", &[("query", expr.to_string())])
            .map(|d| d["result"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- prometheus log ---\n{}--- end of prometheus log ---",
                self.log()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// A plain HTTP/1.0 GET (so the body is not chunked and ends with the connection).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// Percent-encodes a query parameter value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A series as the dump file holds it: labels and `[time, value]` pairs, `null` for NaN.
fn series_json(s: &Series) -> Value {
    let points: Vec<Value> = s
        .points
        .iter()
        .map(|(t, v)| json!([t, if v.is_finite() { json!(v) } else { Value::Null }]))
        .collect();
    json!({"labels": s.labels, "points": points})
}

/// One series of a range query: labels and (unix time, value) points.
#[derive(Debug, Clone)]
struct Series {
    labels: BTreeMap<String, String>,
    points: Vec<(f64, f64)>,
}

// ---------------------------------------------------------------------------------------------
// Dashboards

/// One query of a dashboard panel.
#[derive(Debug)]
struct Target {
    dashboard: String,
    panel: String,
    ref_id: String,
    legend: String,
    expr: String,
}

fn dashboard_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/tiercache/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboard in {}", dir.display());
    files
}

/// Every target with an `expr` of every panel, rows and nested panels included.
fn targets(file: &Path, dashboard: &Value) -> Vec<Target> {
    fn walk(name: &str, panels: &Value, out: &mut Vec<Target>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or_default();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push(Target {
                        dashboard: name.to_string(),
                        panel: title.to_string(),
                        ref_id: t["refId"].as_str().unwrap_or_default().to_string(),
                        legend: t["legendFormat"].as_str().unwrap_or_default().to_string(),
                        expr: expr.to_string(),
                    });
                }
            }
            walk(name, &p["panels"], out);
        }
    }
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let mut out = Vec::new();
    walk(&name, &dashboard["panels"], &mut out);
    out
}

/// Values for the dashboard's template variables, as Grafana would substitute them with every
/// variable at "All" (or its current value): `(name, value)`, in the dashboard's order.
fn variables(prom: &Prometheus, dashboard: &Value, range_s: u64) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = vec![
        ("__rate_interval".into(), RATE_INTERVAL.into()),
        ("__interval".into(), format!("{}s", SCRAPE.as_secs())),
        ("__interval_ms".into(), format!("{}", SCRAPE.as_millis())),
        ("__range".into(), format!("{range_s}s")),
        ("__range_s".into(), format!("{range_s}")),
        ("__range_ms".into(), format!("{}", range_s * 1000)),
    ];
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = v["name"].as_str().unwrap_or_default().to_string();
        let current = current_value(&v["current"]["value"]);
        let value = match v["type"].as_str().unwrap_or_default() {
            // Data sources appear only in `datasource` fields, never in an expr.
            "datasource" => continue,
            "query" => {
                if v["includeAll"].as_bool() == Some(true) {
                    match v["allValue"].as_str() {
                        Some(all) if !all.is_empty() => all.to_string(),
                        _ => regex_of(&label_values(prom, v, &vars)),
                    }
                } else if let Some(c) = current {
                    c
                } else {
                    regex_of(&label_values(prom, v, &vars))
                }
            }
            "adhoc" => String::new(),
            _ => current
                .or_else(|| {
                    v["query"]
                        .as_str()
                        .and_then(|q| q.split(',').next())
                        .map(|q| q.trim().to_string())
                })
                .unwrap_or_default(),
        };
        vars.push((name, value));
    }
    vars
}

fn current_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if s == "$__all" => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => Some(regex_of(
            &a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect::<Vec<_>>(),
        )),
        _ => None,
    }
}

/// Grafana's regex format of a multi-value variable: `(a|b)`.
fn regex_of(values: &[String]) -> String {
    match values {
        [] => ".*".into(),
        [one] => one.clone(),
        many => format!("({})", many.join("|")),
    }
}

/// The values of a `label_values(...)` query variable, from Prometheus's label API.
fn label_values(prom: &Prometheus, var: &Value, vars: &[(String, String)]) -> Vec<String> {
    let q = var["query"]["query"]
        .as_str()
        .or_else(|| var["query"].as_str())
        .or_else(|| var["definition"].as_str())
        .unwrap_or_default();
    let q = substitute(q, vars);
    let inner = q
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("variable {}: unsupported query {q:?}", var["name"]));
    let (matcher, label) = match inner.rsplit_once(',') {
        Some((m, l)) => (Some(m.trim().to_string()), l.trim().to_string()),
        None => (None, inner.trim().to_string()),
    };
    let params: Vec<(&str, String)> = matcher.into_iter().map(|m| ("match[]", m)).collect();
    let data = prom
        .api(&format!("label/{label}/values"), &params)
        .unwrap_or_else(|e| panic!("variable {}: {e}", var["name"]));
    data.as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect()
}

/// Replaces `${name}`, `${name:format}`, `[[name]]` and `$name` (longest names first).
fn substitute(expr: &str, vars: &[(String, String)]) -> String {
    let mut out = expr.to_string();
    let mut sorted: Vec<&(String, String)> = vars.iter().collect();
    sorted.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    for (name, value) in &sorted {
        out = out.replace(&format!("[[{name}]]"), value);
        out = out.replace(&format!("${{{name}}}"), value);
        while let Some(start) = out.find(&format!("${{{name}:")) {
            let end = start + out[start..].find('}').expect("a closed ${var:format}");
            out.replace_range(start..=end, value);
        }
    }
    for (name, value) in &sorted {
        let pat = format!("${name}");
        let mut i = 0;
        while let Some(pos) = out[i..].find(&pat) {
            let at = i + pos;
            let after = at + pat.len();
            let boundary = out[after..]
                .chars()
                .next()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            if boundary {
                out.replace_range(at..after, value);
                i = at + value.len();
            } else {
                i = after;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Traffic

/// The slowest call the client saw, and what it was.
#[derive(Default)]
struct Slowest(Mutex<(Duration, String)>);

impl Slowest {
    /// Runs `call`, timing it; the result is passed through.
    async fn time<T>(&self, what: &str, call: impl std::future::Future<Output = T>) -> T {
        let start = Instant::now();
        let out = call.await;
        let took = start.elapsed();
        let mut s = self.0.lock().unwrap();
        if took > s.0 {
            *s = (took, what.to_string());
        }
        out
    }

    fn get(&self) -> (Duration, String) {
        self.0.lock().unwrap().clone()
    }
}

/// What the traffic did, as the client saw it.
#[derive(Default)]
struct Counts {
    ratio_hits: AtomicU64,
    ratio_misses: AtomicU64,
    ratio_errors: AtomicU64,
    app_calls: AtomicU64,
    app_errors: AtomicU64,
    invalid: AtomicU64,
    stampede_leases: AtomicU64,
    stampede_filled: AtomicU64,
}

fn n(a: &AtomicU64) -> u64 {
    a.load(Ordering::SeqCst)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

async fn replica(redis: &RedisServer) -> TestServer {
    TestServer::start(Config {
        redis: Some(RedisConfig {
            response_timeout: REDIS_TIMEOUT,
            connect_timeout: REDIS_TIMEOUT,
            ..RedisConfig::new(redis.url())
        }),
        ..Config::default()
    })
    .await
}

async fn degraded(server: &TestServer) -> bool {
    AdminServiceClient::new(server.channel())
        .get_stats(pb::GetStatsRequest::default())
        .await
        .map(|r| r.into_inner().degraded)
        .unwrap_or(true)
}

/// Gets with a known mix in `ratio`: per round, `RATIO_HITS_PER_ROUND` hot keys then one key
/// never written; paused while `pause` is set.
async fn ratio_traffic(
    mut c: CacheServiceClient<Channel>,
    replica: usize,
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    counts: Arc<Counts>,
    slowest: Arc<Slowest>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    let mut round = 0u64;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        if pause.load(Ordering::SeqCst) {
            continue;
        }
        round += 1;
        for i in 0..=RATIO_HITS_PER_ROUND {
            let key = if i < RATIO_HITS_PER_ROUND {
                format!("hot{i}")
            } else {
                format!("cold-{replica}-{round}")
            };
            let r = slowest
                .time("Get", c.get(req::get(&key).in_namespace(RATIO_NS)))
                .await;
            match r.map(|r| r.into_inner().outcome()) {
                Ok(pb::GetOutcome::Hit) if i < RATIO_HITS_PER_ROUND => &counts.ratio_hits,
                Ok(pb::GetOutcome::Miss) if i == RATIO_HITS_PER_ROUND => &counts.ratio_misses,
                _ => &counts.ratio_errors,
            }
            .fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Sets, Gets, Deletes and InvalidateTags in `app`, paced; errors (refusals during the stall)
/// are expected and counted.
async fn app_traffic(
    mut c: CacheServiceClient<Channel>,
    replica: usize,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    slowest: Arc<Slowest>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        i += 1;
        let key = format!("item-{replica}-{}", i % 40);
        let ok = match i % 10 {
            0 => slowest
                .time("Delete", c.delete(req::delete(&key).in_namespace(APP_NS)))
                .await
                .is_ok(),
            5 if i % 40 == 5 => slowest
                .time(
                    "InvalidateTags",
                    c.invalidate_tags(
                        req::invalidate_tags(&[&format!("group:{replica}")]).in_namespace(APP_NS),
                    ),
                )
                .await
                .is_ok(),
            1 | 4 | 7 => slowest
                .time(
                    "Set",
                    c.set(pb::SetRequest {
                        tags: req::tags(&[&format!("group:{replica}")]),
                        ..req::set(&key, "value").in_namespace(APP_NS)
                    }),
                )
                .await
                .is_ok(),
            // Keys this replica never wrote: during the stall these go to Redis and time out.
            3 => slowest
                .time(
                    "Get",
                    c.get(req::get(&format!("fresh-{replica}-{i}")).in_namespace(APP_NS)),
                )
                .await
                .is_ok(),
            _ => slowest
                .time("Get", c.get(req::get(&key).in_namespace(APP_NS)))
                .await
                .is_ok(),
        };
        counts.app_calls.fetch_add(1, Ordering::SeqCst);
        if !ok {
            counts.app_errors.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A stampede: `callers` GetOrSets of one cold key spread over both replicas; the lease holder
/// computes for 200 ms and Fills, the others wait and are served its value.
async fn stampede(
    clients: &[CacheServiceClient<Channel>],
    key: &str,
    callers: usize,
    counts: &Counts,
    slowest: &Slowest,
) {
    let calls = (0..callers).map(|i| {
        let mut c = clients[i % clients.len()].clone();
        async move {
            let r = slowest
                .time(
                    "GetOrSet",
                    c.get_or_set(req::get_or_set(key).in_namespace(APP_NS)),
                )
                .await
                .expect("GetOrSet")
                .into_inner();
            match r.outcome() {
                pb::GetOrSetOutcome::Lease => {
                    counts.stampede_leases.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let token = r.lease.expect("a lease").token;
                    slowest
                        .time(
                            "Fill",
                            c.fill(req::fill(key, &token, "computed").in_namespace(APP_NS)),
                        )
                        .await
                        .expect("Fill");
                }
                pb::GetOrSetOutcome::Filled | pb::GetOrSetOutcome::Hit => {
                    counts.stampede_filled.fetch_add(1, Ordering::SeqCst);
                }
                other => panic!("GetOrSet of {key}: {other:?}"),
            }
        }
    });
    futures::future::join_all(calls).await;
}

/// One caller holds the lock `job` for `LOCK_HOLD` while another waits for it on the other
/// replica: that wait is the slow call the latency quantiles must reflect.
async fn lock_contention(locks: &[LockServiceClient<Channel>], slowest: &Slowest) {
    let (mut a, mut b) = (locks[0].clone(), locks[1].clone());
    let ttl = Duration::from_secs(10);
    let held = slowest
        .time(
            "AcquireLock",
            a.acquire_lock(req::acquire_lock("job", ttl, Duration::ZERO).in_namespace(APP_NS)),
        )
        .await
        .expect("AcquireLock")
        .into_inner();
    assert_eq!(held.outcome(), pb::AcquireLockOutcome::Acquired);
    let waiter = async {
        let r = slowest
            .time(
                "AcquireLock (waiting)",
                b.acquire_lock(
                    req::acquire_lock("job", ttl, Duration::from_secs(5)).in_namespace(APP_NS),
                ),
            )
            .await
            .expect("AcquireLock")
            .into_inner();
        assert_eq!(r.outcome(), pb::AcquireLockOutcome::Acquired);
        r.owner_token
    };
    let holder = async {
        tokio::time::sleep(LOCK_HOLD).await;
        slowest
            .time(
                "ReleaseLock",
                a.release_lock(req::release_lock("job", &held.owner_token).in_namespace(APP_NS)),
            )
            .await
            .expect("ReleaseLock");
    };
    let (token, ()) = tokio::join!(waiter, holder);
    slowest
        .time(
            "ReleaseLock",
            b.release_lock(req::release_lock("job", &token).in_namespace(APP_NS)),
        )
        .await
        .expect("ReleaseLock");
}

async fn invalid_get(c: &mut CacheServiceClient<Channel>, counts: &Counts, slowest: &Slowest) {
    let e = slowest
        .time(
            "Get (invalid)",
            c.get(req::get("k").in_namespace("Not Valid")),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    counts.invalid.fetch_add(1, Ordering::SeqCst);
}

// ---------------------------------------------------------------------------------------------
// The test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_show_known_traffic_through_prometheus() {
    let wall = Instant::now();
    let redis = RedisServer::start();
    let servers = [replica(&redis).await, replica(&redis).await];
    let admin: Vec<SocketAddr> = servers.iter().map(|s| s.admin_addr().unwrap()).collect();
    let prom = tokio::task::block_in_place(|| Prometheus::start(&admin));
    // Both replicas scraped before the traffic starts, so every counter has a sample before it.
    wait_for(Duration::from_secs(15), Duration::from_millis(200), || {
        let up = tokio::task::block_in_place(|| prom.instant("up == 1"));
        async move { up.len() == 2 }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "prometheus does not scrape both replicas; log:\n{}",
            prom.log()
        )
    });

    let cache: Vec<_> = servers
        .iter()
        .map(|s| CacheServiceClient::new(s.channel()))
        .collect();
    let locks: Vec<_> = servers
        .iter()
        .map(|s| LockServiceClient::new(s.channel()))
        .collect();
    let counts = Arc::new(Counts::default());
    let slowest = Arc::new(Slowest::default());
    for i in 0..RATIO_HITS_PER_ROUND {
        cache[0]
            .clone()
            .set(req::set(&format!("hot{i}"), "hot").in_namespace(RATIO_NS))
            .await
            .unwrap();
    }

    let start = unix_now();
    let stop = Arc::new(AtomicBool::new(false));
    let pause = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (i, c) in cache.iter().enumerate() {
        workers.push(tokio::spawn(ratio_traffic(
            c.clone(),
            i,
            stop.clone(),
            pause.clone(),
            counts.clone(),
            slowest.clone(),
        )));
        workers.push(tokio::spawn(app_traffic(
            c.clone(),
            i,
            stop.clone(),
            counts.clone(),
            slowest.clone(),
        )));
    }
    let sleep = |s: f64| tokio::time::sleep(Duration::from_secs_f64(s));
    let sleep_until =
        |t: f64| tokio::time::sleep(Duration::from_secs_f64((t - unix_now()).max(0.0)));
    let mut c0 = cache[0].clone();

    // Healthy: stampedes, an invalid request, lock contention.
    sleep(1.0).await;
    invalid_get(&mut c0, &counts, &slowest).await;
    stampede(&cache, "report-1", 8, &counts, &slowest).await;
    lock_contention(&locks, &slowest).await;
    stampede(&cache, "report-2", 8, &counts, &slowest).await;
    invalid_get(&mut c0, &counts, &slowest).await;
    sleep_until(start + STEADY).await;

    // The stall: the hit-ratio traffic pauses (its Gets of never-written keys would be refused);
    // the app traffic goes on and sends both replicas into degraded mode.
    pause.store(true, Ordering::SeqCst);
    let ratio_paused = unix_now();
    let stall_start = unix_now();
    let sleeping = redis.debug_sleep(STALL).await;
    sleeping.await.unwrap();
    let stall_end = unix_now();
    wait_for(
        Duration::from_secs(15),
        Duration::from_millis(50),
        || async { !degraded(&servers[0]).await && !degraded(&servers[1]).await },
    )
    .await
    .expect("both replicas leave degraded mode after the stall");
    pause.store(false, Ordering::SeqCst);
    let ratio_resumed = unix_now();

    // Healthy again: more of everything, a flush, a last invalid request.
    stampede(&cache, "report-3", 8, &counts, &slowest).await;
    invalid_get(&mut c0, &counts, &slowest).await;
    sleep(1.0).await;
    slowest
        .time(
            "FlushNamespace",
            c0.flush_namespace(req::flush().in_namespace(APP_NS)),
        )
        .await
        .expect("FlushNamespace");
    lock_contention(&locks, &slowest).await;
    sleep_until(ratio_resumed + STEADY).await;
    stop.store(true, Ordering::SeqCst);
    let ratio_stopped = unix_now();
    for w in workers {
        w.await.unwrap();
    }
    // Two more scrapes, so the last traffic is in Prometheus.
    sleep(2.5).await;
    let end = unix_now();
    let (slow, slow_what) = slowest.get();
    let (hits, misses) = (n(&counts.ratio_hits), n(&counts.ratio_misses));
    assert_eq!(
        n(&counts.ratio_errors),
        0,
        "every hot Get hits, every cold Get misses"
    );
    assert!(
        n(&counts.app_errors) > 0,
        "the stall refused some app calls"
    );
    assert!(n(&counts.stampede_leases) >= 3 && n(&counts.stampede_filled) >= 3);
    let expected_ratio = hits as f64 / (hits + misses) as f64;
    eprintln!(
        "traffic: {:.1} s; ratio namespace {hits} hits, {misses} misses ({expected_ratio:.4}); \
         app calls {} ({} refused or failed); stampede leases {} / filled {}; invalid {}; \
         slowest call {slow:?} ({slow_what}); stall {:.1}–{:.1} s",
        end - start,
        n(&counts.app_calls),
        n(&counts.app_errors),
        n(&counts.stampede_leases),
        n(&counts.stampede_filled),
        n(&counts.invalid),
        stall_start - start,
        stall_end - start,
    );

    // Every target of every dashboard.
    let range_start = start - 2.0;
    let mut failures = Vec::new();
    let mut dump = Vec::new();
    let mut evaluated = 0;
    let mut hit_ratio = None;
    let mut degraded_panel = None;
    let mut quantiles = Vec::new();
    for file in dashboard_files() {
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", file.display()));
        let mut names = BTreeSet::new();
        for v in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = v["name"].as_str().unwrap_or_default();
            if !names.insert(name.to_string()) {
                failures.push(format!(
                    "{}: the template variable {name:?} is defined twice",
                    file.display()
                ));
            }
        }
        let vars = tokio::task::block_in_place(|| {
            variables(&prom, &dashboard, (end - range_start).ceil() as u64)
        });
        for t in targets(&file, &dashboard) {
            let expr = substitute(&t.expr, &vars);
            let name = format!("{} / {} / {}", t.dashboard, t.panel, t.ref_id);
            assert!(
                !expr.contains('$'),
                "{name}: a variable is left after substitution: {expr}"
            );
            evaluated += 1;
            let result = tokio::task::block_in_place(|| prom.query_range(&expr, range_start, end));
            let series = match result {
                Ok(s) if s.is_empty() => {
                    failures.push(format!("{name}: no series\n    {expr}"));
                    continue;
                }
                Ok(s) => s,
                Err(e) => {
                    failures.push(format!("{name}: {e}\n    {expr}"));
                    continue;
                }
            };
            let title = t.panel.to_lowercase();
            if title.contains("hit ratio") && hit_ratio.is_none() {
                hit_ratio = Some((name.clone(), series.clone()));
            }
            if title.contains("degraded") && degraded_panel.is_none() {
                degraded_panel = Some((name.clone(), series.clone()));
            }
            if expr.contains("histogram_quantile")
                && (expr.contains("rpc_server_call_duration")
                    || expr.contains("db_client_operation_duration"))
            {
                quantiles.push((name.clone(), series.clone()));
            }
            dump.push(json!({
                "dashboard": t.dashboard, "panel": t.panel, "refId": t.ref_id,
                "legendFormat": t.legend, "expr": expr,
                "series": series.iter().map(series_json).collect::<Vec<_>>(),
            }));
        }
    }
    if let Some(path) = std::env::var_os("TIERCACHE_DASHBOARD_DUMP") {
        let doc = json!({
            "start": range_start, "end": end, "traffic_start": start,
            "stall": [stall_start, stall_end], "slowest_call_s": slow.as_secs_f64(),
            "expected_hit_ratio": expected_ratio, "targets": dump,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        eprintln!("wrote {}", Path::new(&path).display());
    }
    assert!(evaluated >= 10, "only {evaluated} targets found");
    assert!(
        failures.is_empty(),
        "{} problems in the dashboards ({evaluated} targets evaluated):\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The hit ratio panel: per namespace (and instance, if the panel splits by it) the tiers add
    // up to the hit ratio; for `ratio` it must be the mix sent, at every step whose window lies in
    // a period of steady ratio traffic.
    let (name, series) = hit_ratio.expect("a panel titled \"hit ratio\"");
    let mut by_group: BTreeMap<(String, String), BTreeMap<i64, f64>> = BTreeMap::new();
    for s in series
        .iter()
        .filter(|s| s.labels.get("tiercache_namespace").map(String::as_str) == Some(RATIO_NS))
    {
        let instance = s.labels.get("instance").cloned().unwrap_or_default();
        for (t, v) in &s.points {
            if v.is_finite() {
                *by_group
                    .entry((RATIO_NS.to_string(), instance.clone()))
                    .or_default()
                    .entry((*t * 1000.0).round() as i64)
                    .or_default() += v;
            }
        }
    }
    assert!(
        !by_group.is_empty(),
        "{name}: no series for namespace {RATIO_NS}"
    );
    let window: f64 = RATE_INTERVAL.trim_end_matches('s').parse().unwrap();
    let steady = |t: f64| {
        (t - window >= start && t <= ratio_paused)
            || (t - window >= ratio_resumed && t <= ratio_stopped)
    };
    let mut checked = 0;
    let mut worst: f64 = 0.0;
    let mut seen = Vec::new();
    for ((_, instance), points) in &by_group {
        for (t, v) in points {
            let t = *t as f64 / 1000.0;
            if steady(t) {
                checked += 1;
                seen.push(format!("+{:.0}s {v:.3}", t - start));
                worst = worst.max((v - expected_ratio).abs());
                assert!(
                    (v - expected_ratio).abs() <= RATIO_TOLERANCE,
                    "{name}: at +{:.0} s ({instance}) the hit ratio is {v:.4}, the traffic's is \
                     {expected_ratio:.4}",
                    t - start
                );
            }
        }
    }
    assert!(checked >= 5, "{name}: only {checked} steady steps to check");
    eprintln!(
        "hit ratio ({name}): expected {expected_ratio:.4}, {checked} steady steps, worst \
         difference {worst:.4}: {}",
        seen.join(", ")
    );

    // The degraded panel: 0 before the stall, 1 during it for every replica, 0 at the end.
    let (name, series) = degraded_panel.expect("a panel titled \"degraded\"");
    assert_eq!(
        series.len(),
        2,
        "{name}: one series per replica: {series:?}"
    );
    for s in &series {
        let at = |from: f64, to: f64| {
            s.points
                .iter()
                .filter(move |(t, _)| *t >= from && *t <= to)
                .map(|(_, v)| *v)
        };
        let label = format!("{:?}", s.labels);
        assert!(
            at(start, stall_start).all(|v| v == 0.0),
            "{name} {label}: degraded before the stall: {:?}",
            s.points
        );
        assert!(
            at(stall_start, stall_end + 2.0).any(|v| v == 1.0),
            "{name} {label}: no 1 during the stall ({:.0}–{:.0}): {:?}",
            stall_start,
            stall_end,
            s.points
        );
        assert_eq!(
            s.points.last().map(|p| p.1),
            Some(0.0),
            "{name} {label}: still degraded at the end"
        );
    }

    // Latency quantiles: never above 2× the slowest call the client measured.
    let limit = 2.0 * slow.as_secs_f64();
    let mut highest = (0.0, String::new());
    let mut over = Vec::new();
    for (name, series) in &quantiles {
        for s in series {
            for (t, v) in &s.points {
                if v.is_finite() && *v > highest.0 {
                    highest = (*v, format!("{name} {:?} at +{:.0} s", s.labels, t - start));
                }
                if v.is_finite() && *v > limit {
                    over.push(format!(
                        "{name} {:?}: {v:.3} s at +{:.0} s",
                        s.labels,
                        t - start
                    ));
                }
            }
        }
    }
    assert!(
        quantiles
            .iter()
            .any(|(_, s)| s.iter().any(|s| s.labels.contains_key("rpc_method"))),
        "no RPC latency quantile target"
    );
    eprintln!(
        "latency: slowest call {slow:?} ({slow_what}); highest RPC or Redis quantile {:.3} s ({}); \
         {} targets evaluated; wall {:.1} s",
        highest.0,
        highest.1,
        evaluated,
        wall.elapsed().as_secs_f64()
    );
    let over: BTreeSet<String> = over.into_iter().collect();
    assert!(
        over.is_empty(),
        "latency quantiles above 2× the slowest call ({slow:?}, limit {limit:.3} s):\n{}",
        over.into_iter().collect::<Vec<_>>().join("\n")
    );
}
